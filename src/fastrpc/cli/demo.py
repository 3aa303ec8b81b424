"""``fastrpc demo``: two processes, one live feed, and calls.

``demo`` starts a server in a child process and a client in this one, streams a
live feed of small msgpack records across the loopback connection with a progress
bar, then measures sequential and concurrent calls::

    python -m fastrpc demo                 # stream for 4 seconds
    python -m fastrpc demo --items 500000  # stream exactly 500,000 records
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, TextIO

import fastrpc
from fastrpc.addresses import ws_url

__all__ = ["DEFAULT_BATCH", "DEFAULT_CALLS", "DEFAULT_SECONDS", "run_demo"]

DEFAULT_SECONDS = 4.0
DEFAULT_BATCH = 1000
DEFAULT_CALLS = 1000
STARTUP_TIMEOUT = 30.0


# ---------------------------------------------------------------- server (child)


def _make_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def info() -> dict[str, Any]:
        return {"pid": os.getpid(), "implementation": fastrpc.IMPLEMENTATION, "version": fastrpc.__version__}

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    async def feed(items: int | None, seconds: float | None, batch: int) -> AsyncIterator[list[dict[str, Any]]]:
        """A live price feed: lists of ``batch`` records ``{"seq", "price"}`` until
        ``items`` records were sent or ``seconds`` have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds if seconds else None
        limit = items if items is not None else 1 << 62
        seq = 0
        price = 100.0
        while seq < limit:
            end = min(limit, seq + batch)
            records: list[dict[str, Any]] = []
            append = records.append
            for i in range(seq, end):
                # a cheap deterministic random walk
                price += ((i * 7919) % 11 - 5) * 0.01
                append({"seq": i, "price": price})
            seq = end
            yield records
            if deadline is not None and loop.time() >= deadline:
                break

    return router


async def _serve(conn: Any, host: str) -> None:
    async with fastrpc.serve(_make_router(), host, 0) as server:
        conn.send(("ready", server.port, os.getpid(), fastrpc.IMPLEMENTATION))
        # Serve until the parent says stop (or goes away: EOF on the pipe).
        while not conn.poll():
            await asyncio.sleep(0.05)


def _server_process(conn: Any, host: str) -> None:
    """Entry point of the child process."""
    try:
        fastrpc.run(_serve(conn, host))
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass
        if not isinstance(exc, (KeyboardInterrupt, EOFError)):
            raise
    finally:
        conn.close()


class _ServerProcess:
    """The demo server, in a child process started with the spawn method."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_server_process, args=(child_conn, host), name="fastrpc-demo-server", daemon=True
        )
        self.host = host
        self.port = 0
        self.pid = 0
        self.implementation = "?"
        self.process.start()
        child_conn.close()

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the server process did not start within {timeout:.0f} s")
        try:
            msg = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the server process exited (code {self.process.exitcode})") from None
        if msg[0] != "ready":
            raise RuntimeError(f"the server process failed: {msg[1]}")
        _, self.port, self.pid, self.implementation = msg

    @property
    def url(self) -> str:
        return ws_url(self.host, self.port)

    def stop(self) -> None:
        try:
            self._conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self._conn.close()


# --------------------------------------------------------------- client (parent)


class _Progress:
    """A plain-text progress bar on a tty (redrawn with \\r), or a line per second."""

    WIDTH = 24

    def __init__(self, stream: TextIO, total_items: int | None, seconds: float | None) -> None:
        self.stream = stream
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.columns = shutil.get_terminal_size((80, 24)).columns if self.tty else 0
        self.total_items = total_items
        self.seconds = seconds
        self.start = time.perf_counter()
        self.interval = 0.1 if self.tty else 1.0
        self.next_draw = self.start + self.interval
        self.drawn = 0

    def update(self, items: int, nbytes: int, now: float) -> None:
        if now < self.next_draw:
            return
        self.next_draw = now + self.interval
        elapsed = now - self.start
        fraction = 0.0
        if self.total_items:
            fraction = items / self.total_items
        if self.seconds:
            fraction = max(fraction, elapsed / self.seconds)
        fraction = min(1.0, fraction)
        rate = items / elapsed if elapsed > 0 else 0.0
        text = f"{fraction * 100:3.0f}% {items:>10,} items {nbytes / 1e6:6.1f} MB {rate / 1e6:4.1f}M items/s {elapsed:4.1f}s"
        if self.tty:
            filled = int(fraction * self.WIDTH)
            line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {text}"[: max(10, self.columns - 1)]
            self.stream.write("\r" + line.ljust(self.drawn))
            self.drawn = len(line)
        else:
            self.stream.write(f"feed: {text}\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    module = type(loop).__module__.split(".")[0]
    return "uvloop" if module == "uvloop" else f"asyncio ({type(loop).__name__})"


async def _client(url: str, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    async with fastrpc.connect(url) as peer:
        server = await peer.call("info")
        print(
            f"client: pid {os.getpid()}, codec implementation {fastrpc.IMPLEMENTATION}, event loop {_loop_name()}",
            file=out,
        )
        print(f"server: pid {server['pid']}, codec implementation {server['implementation']}, {url}", file=out)
        out.flush()

        # 1. The feed
        items = args.items
        seconds = args.seconds
        if items is None and seconds is None:
            seconds = DEFAULT_SECONDS
        what = " and ".join(
            x for x in (f"{items:,} records" if items is not None else "", f"{seconds:g} s" if seconds else "") if x
        )
        print(f"feed: streaming {what} in batches of {args.batch} ...", file=out)
        out.flush()
        progress = _Progress(err, items, seconds)
        count = 0
        nbytes = 0
        messages = 0
        last_seq = -1
        perf = time.perf_counter
        start = perf()
        stream = peer.stream("feed", items, seconds, args.batch)
        async for records in stream:
            count += len(records)
            messages += 1
            last_seq = records[-1]["seq"]
            stats = stream.stats()
            if stats is not None:
                nbytes = stats.bytes
            progress.update(count, nbytes, perf())
        elapsed = perf() - start
        progress.finish()
        if last_seq != count - 1 or (items is not None and seconds is None and count != items):
            raise RuntimeError(f"feed lost records: got {count}, last seq {last_seq}")
        print(
            f"feed: {count:,} items in {elapsed:.2f} s: {count / elapsed:,.0f} items/s, "
            f"{nbytes / elapsed / 1e6:,.1f} MB/s ({nbytes / 1e6:,.1f} MB in {messages:,} stream items)",
            file=out,
        )
        out.flush()

        # 2. Calls
        n = args.calls
        await peer.call("add", 0, 0)
        start = perf()
        for i in range(n):
            if await peer.call("add", i, 1) != i + 1:
                raise RuntimeError("wrong result")
        elapsed = perf() - start
        print(
            f"calls: {n:,} sequential in {elapsed:.3f} s: {n / elapsed:,.0f} calls/s "
            f"({elapsed / n * 1e6:,.0f} us per round trip)",
            file=out,
        )
        start = perf()
        results = await asyncio.gather(*(peer.call("add", i, 1) for i in range(n)))
        elapsed = perf() - start
        if results != [i + 1 for i in range(n)]:
            raise RuntimeError("wrong results")
        print(f"calls: {n:,} concurrent in {elapsed:.3f} s: {n / elapsed:,.0f} calls/s", file=out)
        out.flush()


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo (``fastrpc demo``); the exit status."""
    out, err = sys.stdout, sys.stderr
    print(f"fastrpc {fastrpc.__version__} demo (codec implementation: {fastrpc.IMPLEMENTATION})", file=out)
    out.flush()
    server = _ServerProcess(args.host)
    try:
        server.wait_ready()
        fastrpc.run(_client(server.url, args, out, err))
    except KeyboardInterrupt:
        print("\ninterrupted", file=err)
        return 130
    except Exception as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=err)
        return 1
    finally:
        server.stop()
    return 0
