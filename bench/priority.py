"""Stream priority under load: latency of small items beside saturating bulk streams.

The server (a child process) sends 16 bulk streams of 64 KiB chunks as fast as the
connection takes them and, beside them, a small timestamped item every 2 ms; the
client reads both and records each small item's delivery latency. Run once with the
small items at urgency 0 and once at the bulk's own urgency (3):

    python bench/priority.py [--chunks 3000] [--ticks 300] [--rate 10] [--calls 3000] [--json F]

First, latency under load: p50/p99/p99.9 of sequential calls while 10 bulk streams
run on the same connection, on another connection, and with no bulk at all (bare
loopback, default settings: calls leave before stream data).

``--rate MB/s`` (default 10; 0: none) puts a throttling TCP proxy between client and
server, a WAN link of that bandwidth: the sender's queue, where urgency decides what
leaves first, is then the bottleneck. The proxy reads the server's side with a small
socket receive buffer, so the server's kernel cannot queue megabytes ahead of the
scheduler. Over bare loopback the receiver's CPU is the bottleneck instead and
urgency can do little (every item waits in the same receive queue).

Both processes read CLOCK_MONOTONIC (time.perf_counter on Linux), so latencies are
comparable across them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import statistics
import time
from typing import Any

import fastrpc


class _Throttle:
    """A TCP proxy that forwards server -> client at ``rate`` bytes/s (client ->
    server unthrottled)."""

    def __init__(self, upstream: int, rate: float) -> None:
        self.upstream, self.rate = upstream, rate
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: Any = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 10)  # before connect: the window
        up.setblocking(False)
        await loop.sock_connect(up, ("127.0.0.1", self.upstream))
        up_reader, up_writer = await asyncio.open_connection(sock=up, limit=2 << 10)

        async def down() -> None:  # server -> client, paced
            start, sent = time.perf_counter(), 0
            while data := await up_reader.read(4 << 10):
                writer.write(data)
                await writer.drain()
                sent += len(data)
                ahead = sent / self.rate - (time.perf_counter() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            writer.close()

        async def upward() -> None:
            while data := await reader.read(1 << 16):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        for coro in (down(), upward()):
            task = asyncio.ensure_future(coro)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.server.close()


def _serve(port_pipe: Any, chunks: int, ticks: int, streams: int) -> None:
    async def handler(peer: fastrpc.RpcPeer) -> None:
        urgency = await peer.call("urgency")

        async def bulk():
            chunk = b"b" * 65536
            for _ in range(chunks):
                yield chunk

        async def timed():
            for _ in range(ticks):
                await asyncio.sleep(0.002)
                yield time.perf_counter()

        await peer.call("ticks", await peer.send_stream(timed(), priority=urgency))
        for _ in range(streams):
            await peer.send_stream(bulk(), priority=3)
        await peer.wait_closed()

    async def main() -> None:
        # A sender for a slow link: little written ahead of the scheduler.
        streams = fastrpc.StreamManager(batch_size=16 << 10)
        async with fastrpc.serve(
            handler, "127.0.0.1", 0, write_limit=16 << 10, notsent_lowat=16 << 10, streams=streams
        ) as server:
            port_pipe.send(server.port)
            await asyncio.Event().wait()

    fastrpc.run(main())


def _serve_calls(port_pipe: Any) -> None:
    """Bare loopback, default settings: an echo method and a bulk streaming method."""
    router = fastrpc.Router()

    @router.method
    def echo(payload: bytes) -> bytes:
        return payload

    @router.method
    async def bulk(n: int) -> Any:
        chunk = b"b" * 65536
        for _ in range(n):
            yield chunk

    async def main() -> None:
        async with fastrpc.serve(router, "127.0.0.1", 0) as server:
            port_pipe.send(server.port)
            await asyncio.Event().wait()

    fastrpc.run(main())


async def _calls_under_load(port: int, where: str, calls: int) -> dict[str, float]:
    """Sequential calls (urgency 0: calls go before stream data) while 10 bulk
    streams run on the same connection, on another one, or not at all."""
    url = f"ws://127.0.0.1:{port}"
    async with fastrpc.connect(url) as peer, fastrpc.connect(url) as other:
        loaded = {"same": peer, "other": other}.get(where)

        async def read() -> None:
            assert loaded is not None
            async for _ in loaded.stream("bulk", 1 << 30):
                pass

        readers = [asyncio.ensure_future(read()) for _ in range(10 if loaded is not None else 0)]
        await asyncio.sleep(0.2)  # the bulk streams at full speed
        lat = []
        payload = b"x" * 16
        for _ in range(calls):
            t = time.perf_counter()
            await peer.call("echo", payload)
            lat.append((time.perf_counter() - t) * 1e3)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    lat.sort()
    return {
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[int(len(lat) * 0.99) - 1],
        "p999_ms": lat[int(len(lat) * 0.999) - 1],
        "max_ms": lat[-1],
    }


async def _measure(port: int, urgency: int, rate: float = 0.0) -> dict[str, float]:
    proxy = None
    if rate:
        proxy = _Throttle(port, rate * 1e6)
        port = await proxy.start()
    try:
        return await _measure_at(port, urgency)
    finally:
        if proxy is not None:
            await proxy.close()


async def _measure_at(port: int, urgency: int) -> dict[str, float]:
    router = fastrpc.Router()
    router.add("urgency", lambda: urgency)
    ticks_id: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    router.add("ticks", ticks_id.set_result)
    async with fastrpc.connect(f"ws://127.0.0.1:{port}", router=router) as peer:
        _, ticks = peer.receive_stream(await ticks_id)
        start = time.perf_counter()

        async def drain() -> None:
            while True:
                _, bulk = await peer.accept_stream()
                readers.append(asyncio.ensure_future(read(bulk)))

        async def read(bulk: fastrpc.ReceiveStream[Any]) -> None:
            try:
                async for _ in bulk:
                    pass
            except fastrpc.ConnectionClosed:
                pass

        readers: list[asyncio.Future[None]] = []
        acceptor = asyncio.ensure_future(drain())
        lat = [(time.perf_counter() - sent) * 1e3 async for sent in ticks]
        for task in (acceptor, *readers):
            task.cancel()
        await asyncio.gather(acceptor, *readers, return_exceptions=True)
        elapsed = time.perf_counter() - start
    lat.sort()
    return {
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[int(len(lat) * 0.99) - 1],
        "max_ms": lat[-1],
        "seconds": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=3000, help="64 KiB bulk chunks (default 3000: 188 MiB)")
    ap.add_argument("--ticks", type=int, default=300, help="small timed items (default 300)")
    ap.add_argument("--bulk-streams", type=int, default=16, help="concurrent bulk streams (default 16)")
    ap.add_argument(
        "--rate", type=float, default=10.0, help="throttle the link to this many MB/s (default 10; 0: none)"
    )
    ap.add_argument("--calls", type=int, default=3000, help="sequential calls per latency-under-load run")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {
        "calls_under_load": {},
        "ticks": {},
        "rate_mb_s": args.rate,
        "fastrpc": fastrpc.__file__,
        "codec": fastrpc.IMPLEMENTATION,
    }
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_serve_calls, args=(send,), daemon=True)
    proc.start()
    try:
        port = recv.recv()
        print(f"sequential calls beside 10 bulk streams of 64 KiB chunks (bare loopback, {args.calls} calls)")
        print(f"{'bulk on':>18} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} {'max ms':>8}")
        for where in ("none", "same", "other"):
            r = out["calls_under_load"][where] = fastrpc.run(_calls_under_load(port, where, args.calls))
            label = {"none": "(no bulk)", "same": "same connection", "other": "another connection"}[where]
            print(f"{label:>18} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['p999_ms']:>8.2f} {r['max_ms']:>8.2f}")
    finally:
        proc.kill()
        proc.join()
    rows = []
    for urgency in (0, 3):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_serve, args=(send, args.chunks, args.ticks, args.bulk_streams), daemon=True)
        proc.start()
        try:
            port = recv.recv()
            rows.append((urgency, fastrpc.run(_measure(port, urgency, args.rate))))
        finally:
            proc.kill()
            proc.join()
    link = f"a {args.rate:g} MB/s link" if args.rate else "bare loopback"
    print(
        f"small items beside {args.bulk_streams} bulk streams of 64 KiB chunks over {link} ({fastrpc.IMPLEMENTATION} codec)"
    )
    print(f"{'urgency':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for urgency, r in rows:
        print(f"{urgency:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}")
    (_, hi), (_, eq) = rows
    print(f"p99 latency at urgency 0 is {eq['p99_ms'] / hi['p99_ms']:.1f}x lower than at the bulk's urgency")
    out["ticks"] = {str(urgency): r for urgency, r in rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
