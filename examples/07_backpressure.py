"""Backpressure tuning: StreamManager(max_buffered_amount, backpressure_delay).

Seed document, "Key Features / 1. Backpressure Handling" and "Performance
Considerations / 2. Backpressure Tuning": a sender pauses while more than
``max_buffered_amount`` bytes wait to be written (fastrpc's queue plus the
socket's write buffer) and re-checks every ``backpressure_delay`` seconds (it is
also woken as soon as the buffer drains). Each stream also has a flow-control
window (``initial_window``): a slow *receiver* stops its sender, so nothing piles
up in memory on either side ("3. Memory Usage").

The server (the sender here) is started once per profile with
``streams=fastrpc.StreamManager(...)``; the sender samples
``peer.streams.buffered_amount`` to report the peak it saw.

Run: python examples/07_backpressure.py
"""

from __future__ import annotations

import asyncio
import time

import fastrpc

CHUNK = 16 << 10  # 16 KiB per item
TOTAL = 16 << 20  # 16 MiB per run
STREAMS = 4  # concurrent streams sharing the connection

PROFILES = {
    # High-throughput, reliable network (larger per-stream window and queue too,
    # or the per-stream limits stop the sender long before 16 MiB)
    "fast (16 MiB, 5 ms)": dict(
        max_buffered_amount=16_777_216, backpressure_delay=0.005, initial_window=4 << 20, stream_buffer_size=4 << 20
    ),
    # Low-bandwidth or unreliable network
    "slow (256 KiB, 50 ms)": dict(max_buffered_amount=262_144, backpressure_delay=0.050),
}

router = fastrpc.Router()
peak = {"buffered": 0}


@router.method
async def blob(total: int, chunk: int):
    streams = fastrpc.current_peer().streams
    data = bytes(chunk)
    for _ in range(total // chunk):
        peak["buffered"] = max(peak["buffered"], streams.buffered_amount)
        yield data


@router.method
def buffered() -> int:
    return fastrpc.current_peer().streams.buffered_amount


async def run_profile(name: str, options: dict) -> None:
    manager = fastrpc.StreamManager(**options)
    peak["buffered"] = 0
    async with fastrpc.serve(router, "127.0.0.1", 0, streams=manager) as server:
        async with fastrpc.connect(server.url, streams=fastrpc.StreamManager(**options)) as peer:

            async def consume() -> int:
                n = 0
                async for item in peer.stream("blob", TOTAL // STREAMS, CHUNK):
                    n += len(item)
                return n

            start = time.perf_counter()
            sizes = await asyncio.gather(*(consume() for _ in range(STREAMS)))
            elapsed = time.perf_counter() - start
            assert sum(sizes) == TOTAL
            print(
                f"{name:<24} {TOTAL / elapsed / 1e6:8.1f} MB/s   peak buffered on the sender "
                f"{peak['buffered'] / 1024:8.0f} KiB (limit {manager.max_buffered_amount // 1024} KiB)"
            )


async def slow_receiver() -> None:
    """A receiver that stops reading pauses the sender: its credit runs out."""
    options = dict(max_buffered_amount=262_144, backpressure_delay=0.050, initial_window=64 << 10)
    produced = {"n": 0}

    async def on_connect(peer: fastrpc.RpcPeer) -> None:
        async def source():
            while True:
                produced["n"] += 1
                yield bytes(4096)

        sid = await peer.send_stream(source())
        await asyncio.sleep(0.2)  # the receiver is not reading
        stats = peer.streams.stats(sid)
        # The credit left is less than the next item costs (4 KiB + 32 bytes a frame):
        # the item waits for credit to go whole.
        left = "out of credit for the next item" if stats.window < 4096 + 32 else "credit left"
        print(
            f"slow receiver: after 0.2 s the sender has produced {produced['n']} items "
            f"({produced['n'] * 4} KiB); stats: window={stats.window} buffered={stats.buffered} ({left})"
        )
        await peer.wait_closed()

    async with fastrpc.serve(on_connect, "127.0.0.1", 0, streams=fastrpc.StreamManager(**options)) as server:
        async with fastrpc.connect(server.url, streams=fastrpc.StreamManager(**options)) as peer:
            sid, stream = await peer.accept_stream()
            await asyncio.sleep(0.3)
            paused_at = produced["n"]
            got = 0
            async for item in stream:
                got += 1
                if got == paused_at + 100:
                    break
            print(f"slow receiver: reading resumed the sender ({produced['n']} items produced, {got} read)")
            assert paused_at * 4096 < 1 << 20, "the sender should have paused"
            assert produced["n"] > paused_at


async def main() -> None:
    print(
        f"{STREAMS} streams x {TOTAL // STREAMS >> 20} MiB in {CHUNK >> 10} KiB items, codec {fastrpc.IMPLEMENTATION}"
    )
    for name, options in PROFILES.items():
        await run_profile(name, options)
    print("(on loopback a bigger buffer buys nothing: it pays off when the link's bandwidth x delay is large)")
    await slow_receiver()
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
