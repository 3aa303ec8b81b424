"""``fastrpc bench``: fastrpc against raw ``websockets``, measured in one run.

In a checkout of the repository ``fastrpc bench`` runs ``bench/compare.py`` (every
peer library, memory, the targets; see bench/README.md). An installed package has no
``bench/`` directory: then the scenarios below run from here, against the WebSocket
library fastrpc is built on (always installed), so that the figures come with a
peer measured on the same machine in the same run:

* ``small``: N x 16-byte items streamed server -> client (items/s);
* ``bulk``: 64 KiB chunks streamed server -> client (MB/s);
* ``seq_calls``: sequential calls with a 16-byte payload (calls/s);
* ``inflight_calls``: calls with 100 in flight (calls/s).

Both servers run in one spawned child process (uvloop where installed), the client in
this process; raw websockets sends one WebSocket message per item or call, with
permessage-deflate off as fastrpc has it. Each library gets one connection, a warm-up
run (5 % of the work), then ``repeat`` timed runs; the best is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import fastrpc

__all__ = ["SCENARIOS", "find_compare", "main_from_cli", "run_builtin"]

HOST = "127.0.0.1"
_ID = struct.Struct("!I")

# name -> (title, unit, full parameters, quick parameters)
SCENARIOS: dict[str, tuple[str, str, dict[str, int], dict[str, int]]] = {
    "small": ("16 B items, server -> client", "items/s", {"n": 200_000, "size": 16}, {"n": 50_000, "size": 16}),
    "bulk": ("64 KiB chunks, server -> client", "MB/s", {"n": 2048, "size": 65536}, {"n": 256, "size": 65536}),
    "seq_calls": ("sequential calls, 16 B", "calls/s", {"n": 5000, "size": 16}, {"n": 1000, "size": 16}),
    "inflight_calls": (
        "calls, 100 in flight, 16 B",
        "calls/s",
        {"n": 20_000, "size": 16, "window": 100},
        {"n": 5000, "size": 16, "window": 100},
    ),
}
LIBS = ("fastrpc", "websockets")


# ------------------------------------------------------------------ servers (child)


def _router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def items(n: int, size: int) -> AsyncIterator[bytes]:
        item = b"x" * size
        for _ in range(n):
            yield item

    @router.method
    def echo(payload: bytes) -> bytes:
        return payload

    return router


async def _ws_handler(ws: Any) -> None:
    # Text: a command {"n", "size"} (stream n items); binary: echoed back.
    async for msg in ws:
        if type(msg) is str:
            cmd = json.loads(msg)
            item = b"x" * cmd["size"]
            for _ in range(cmd["n"]):
                await ws.send(item)
        else:
            await ws.send(msg)


async def _servers(conn: Any) -> None:
    from websockets.asyncio.server import serve as ws_serve

    async with fastrpc.serve(_router(), HOST, 0) as server:
        raw = await ws_serve(_ws_handler, HOST, 0, compression=None)
        conn.send((server.port, raw.sockets[0].getsockname()[1]))
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_reader(conn.fileno(), done.set)
        await done.wait()
        loop.remove_reader(conn.fileno())
        raw.close()
        await raw.wait_closed()


def _server_child(conn: Any) -> None:
    fastrpc.run(_servers(conn))


# ------------------------------------------------------------------ clients


async def _inflight(call: Callable[[bytes], Awaitable[bytes]], n: int, window: int, payload: bytes) -> None:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if len(await call(payload)) != len(payload):
                raise AssertionError("bad echo")

    await asyncio.gather(*(worker() for _ in range(window)))


async def _fastrpc_run(peer: fastrpc.RpcPeer, scenario: str, p: dict[str, int]) -> float:
    payload = b"x" * p["size"]
    start = time.perf_counter()
    if scenario in ("small", "bulk"):
        got = 0
        async for item in peer.stream("items", p["n"], p["size"]):
            got += len(item)
        if got != p["n"] * p["size"]:
            raise AssertionError("items lost")
    elif scenario == "seq_calls":
        for _ in range(p["n"]):
            await peer.call("echo", payload)
    else:
        await _inflight(lambda b: peer.call("echo", b), p["n"], p["window"], payload)
    return time.perf_counter() - start


async def _fastrpc(port: int, scenario: str, p: dict[str, int], repeat: int) -> float:
    async with fastrpc.connect(f"ws://{HOST}:{port}") as peer:
        await _fastrpc_run(peer, scenario, _warm_up(p))
        return min([await _fastrpc_run(peer, scenario, p) for _ in range(repeat)])


async def _websockets_run(ws: Any, scenario: str, p: dict[str, int]) -> float:
    payload = b"x" * p["size"]
    start = time.perf_counter()
    if scenario in ("small", "bulk"):
        await ws.send(json.dumps({"n": p["n"], "size": p["size"]}))
        got = 0
        for _ in range(p["n"]):
            got += len(await ws.recv())
    elif scenario == "seq_calls":
        for i in range(p["n"]):
            await ws.send(_ID.pack(i) + payload)
            if _ID.unpack_from(await ws.recv(decode=False))[0] != i:
                raise AssertionError("bad echo")
    else:
        pending: dict[int, asyncio.Future[bytes]] = {}
        loop = asyncio.get_running_loop()

        async def read() -> None:
            async for msg in ws:
                fut = pending.pop(_ID.unpack_from(msg)[0], None)
                if fut is not None:
                    fut.set_result(msg[4:])

        reader = loop.create_task(read())
        counter = 0

        async def call(b: bytes) -> bytes:
            nonlocal counter
            counter += 1
            fut: asyncio.Future[bytes] = loop.create_future()
            pending[counter] = fut
            await ws.send(_ID.pack(counter) + b)
            return await fut

        try:
            await _inflight(call, p["n"], p["window"], payload)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return time.perf_counter() - start


async def _websockets(port: int, scenario: str, p: dict[str, int], repeat: int) -> float:
    from websockets.asyncio.client import connect as ws_connect

    async with ws_connect(f"ws://{HOST}:{port}", compression=None) as ws:
        await _websockets_run(ws, scenario, _warm_up(p))
        return min([await _websockets_run(ws, scenario, p) for _ in range(repeat)])


def _warm_up(p: dict[str, int]) -> dict[str, int]:
    """5 % of the work, on the same connection, before the timed runs."""
    return {**p, "n": max(1, p["n"] // 20)}


def _value(scenario: str, p: dict[str, int], seconds: float) -> float:
    if scenario == "bulk":
        return p["n"] * p["size"] / seconds / 1e6
    return p["n"] / seconds


async def _measure(ports: dict[str, int], names: list[str], quick: bool, scale: float, repeat: int) -> list[str]:
    rows = []
    for scenario in names:
        title, unit, full, small = SCENARIOS[scenario]
        p = dict(small if quick else full)
        p["n"] = max(1, round(p["n"] * scale))
        best: dict[str, float] = {}
        for lib in LIBS:
            run = _fastrpc if lib == "fastrpc" else _websockets
            seconds = await run(ports[lib], scenario, p, repeat)
            best[lib] = _value(scenario, p, seconds)
        ratio = best["fastrpc"] / best["websockets"]
        rows.append(
            f"{scenario:<15} {unit:<8} {best['fastrpc']:>14,.0f} {best['websockets']:>14,.0f} "
            f"{ratio:>7.2f}x  {title}, n={p['n']:,}"
        )
        print(rows[-1], flush=True)
    return rows


def run_builtin(quick: bool = False, scale: float = 1.0, only: list[str] | None = None, repeat: int = 3) -> int:
    """Run the built-in scenarios; print a table (fastrpc, websockets, ratio)."""
    names = only or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"error: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    import websockets

    print(
        f"fastrpc {fastrpc.__version__} (codec {fastrpc.IMPLEMENTATION}) vs websockets "
        f"{getattr(websockets, '__version__', '?')}; best of {repeat}, client here, servers in a child process"
    )
    print(f"{'scenario':<15} {'unit':<8} {'fastrpc':>14} {'websockets':>14} {'ratio':>8}")
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_child, args=(child,), daemon=True, name="fastrpc-bench-servers")
    proc.start()
    child.close()
    try:
        if not parent.poll(60):
            raise RuntimeError("the benchmark servers did not start within 60 s")
        fast_port, raw_port = parent.recv()
        fastrpc.run(_measure({"fastrpc": fast_port, "websockets": raw_port}, names, quick, scale, repeat))
    finally:
        try:
            parent.send("stop")
        except (OSError, ValueError):
            pass
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        parent.close()
    return 0


def find_compare() -> Path | None:
    """bench/compare.py of the checkout this fastrpc is imported from, if any."""
    here = Path(fastrpc.__file__).resolve().parent  # <root>/src/fastrpc in a checkout
    candidate = here.parent.parent / "bench" / "compare.py"
    return candidate if candidate.is_file() else None


def main_from_cli(args: argparse.Namespace) -> int:
    """``fastrpc bench``: bench/compare.py in a checkout, else the built-in scenarios."""
    compare = None if args.builtin else find_compare()
    if compare is None:
        only = [s for s in (args.only or "").split(",") if s] or None
        return run_builtin(args.quick, args.scale, only, repeat=1 if args.quick else 3)
    cmd = [sys.executable, str(compare), "--scale", str(args.scale)]
    if args.quick:
        cmd.append("--quick")
    if args.only:
        cmd += ["--only", args.only]
    cmd += list(args.extra)
    print(f"running {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd, cwd=str(compare.parent.parent), env=dict(os.environ))
