"""Chunk size: many small items vs. fewer batched items.

Seed document, "Performance Considerations / 1. Chunk Size": yielding each number
on its own costs one stream item (framing, encoding, a receiver wake-up) per
number; yielding lists of 100 amortises that overhead at the price of latency
(the first number of a batch waits for the other 99).

fastrpc already coalesces the frames queued in one event-loop iteration into one
WebSocket message, so small items are cheap, but batching still wins by a wide
margin. Items/s below counts *numbers* delivered, whichever way they travel.

Run: python examples/06_chunk_size.py [count]
"""

from __future__ import annotations

import sys
import time

import fastrpc

router = fastrpc.Router()


@router.method
async def small_chunks(count: int):
    # Small chunks - lower latency, more overhead
    for i in range(count):
        yield i  # a few bytes per item


@router.method
async def larger_chunks(count: int, batch_size: int):
    # Larger chunks - less overhead, higher latency
    batch: list[int] = []
    for i in range(count):
        batch.append(i)
        if len(batch) == batch_size:
            yield batch  # ~batch_size * 3 bytes per item
            batch = []
    if batch:
        yield batch


async def measure(peer: fastrpc.RpcPeer, label: str, method: str, *args: int) -> float:
    count = args[0]
    start = time.perf_counter()
    total = 0
    last = -1
    messages = 0
    async for item in peer.stream(method, *args):
        messages += 1
        if isinstance(item, list):
            total += len(item)
            last = item[-1]
        else:
            total += 1
            last = item
    elapsed = time.perf_counter() - start
    assert total == count and last == count - 1, (total, last)
    rate = total / elapsed
    print(f"{label:<28} {total:>8} numbers in {messages:>6} items  {elapsed:6.3f} s  {rate:>12,.0f} items/s")
    return rate


async def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"codec implementation: {fastrpc.IMPLEMENTATION}")
    async with fastrpc.serve(router, "127.0.0.1", 0) as server, fastrpc.connect(server.url) as peer:
        await measure(peer, "warm-up", "larger_chunks", 1000, 100)
        small = await measure(peer, "small chunks (1 per item)", "small_chunks", count)
        for size in (10, 100, 1000):
            rate = await measure(peer, f"batched ({size} per item)", "larger_chunks", count, size)
            if size == 100:
                batched = rate
    print(f"batching 100 per item: {batched / small:.1f}x the items/s of single items")
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
