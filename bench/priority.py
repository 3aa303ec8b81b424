"""Stream priority under load: latency of small items beside a saturating bulk stream.

The server (a child process) sends a bulk stream of 64 KiB chunks as fast as the
connection takes them and, beside it, a small timestamped item every 2 ms; the client
reads both and records each small item's delivery latency. Run once with the small
items at urgency 0 and once at the bulk's own urgency (3):

    python bench/priority.py [--chunks 3000] [--ticks 300]

Both processes read CLOCK_MONOTONIC (time.perf_counter on Linux), so latencies are
comparable across them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
from typing import Any

import fastrpc


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
        async with fastrpc.serve(handler, "127.0.0.1", 0) as server:
            port_pipe.send(server.port)
            await asyncio.Event().wait()

    fastrpc.run(main())


async def _measure(port: int, urgency: int) -> dict[str, float]:
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
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for urgency in (0, 3):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_serve, args=(send, args.chunks, args.ticks, args.bulk_streams), daemon=True)
        proc.start()
        try:
            port = recv.recv()
            rows.append((urgency, fastrpc.run(_measure(port, urgency))))
        finally:
            proc.kill()
            proc.join()
    print(f"small items beside {args.bulk_streams} bulk streams of 64 KiB chunks ({fastrpc.IMPLEMENTATION} codec)")
    print(f"{'urgency':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for urgency, r in rows:
        print(f"{urgency:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}")
    (_, hi), (_, eq) = rows
    print(f"p99 latency at urgency 0 is {eq['p99_ms'] / hi['p99_ms']:.1f}x lower than at the bulk's urgency")


if __name__ == "__main__":
    main()
