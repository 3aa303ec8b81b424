"""Stream priority, per-stream rate limits and compression.

The seed document lists these under "Future Enhancements" (stream priority,
flow control / per-stream rate limiting, compression); fastrpc has them:

* ``send_stream(source, priority=0..7)``: lower is more urgent (default 3). When
  the connection is the bottleneck, the more urgent stream's frames go first and
  its sender is woken first when the buffer drains. A bulk stream (priority 7)
  fills a small ``max_buffered_amount``; small timed items beside it show their
  delivery latency at priority 0 and at the bulk's own priority.
* ``send_stream(source, rate=fastrpc.RateLimit(items_per_s))`` (or
  ``RateLimit(bytes_per_s, per="bytes")``) paces one stream.
* ``serve(..., compression=True)`` / ``connect(..., compression=True)``
  compresses items above ``compression_threshold`` bytes; the stream's
  ``stats().bytes`` counts what crossed the wire.

Run: python examples/10_priority_and_rate_limit.py
"""

from __future__ import annotations

import asyncio
import time

import fastrpc

BULK, TICKS = 400, 100  # 64 KiB bulk items: 25 MiB; 100 small timed items
CONGESTED = fastrpc.StreamManager(max_buffered_amount=64 << 10, backpressure_delay=0.010)


async def chunks(name: str, count: int, size: int):
    data = bytes(size)
    for i in range(count):
        yield {"stream": name, "i": i, "data": data}


async def ticks(count: int):
    for i in range(count):
        yield i


async def texts(count: int):
    text = "fastrpc streams " * 4096  # 64 KiB of very compressible text
    for _ in range(count):
        yield text


def send_bulk_and_ticks(tick_priority: int):
    async def handler(peer: fastrpc.RpcPeer) -> None:
        await peer.send_stream(chunks("bulk", BULK, 64 << 10), priority=7)
        await peer.send_stream(timed_ticks(TICKS), priority=tick_priority)
        await peer.wait_closed()

    return handler


async def timed_ticks(count: int):
    for _ in range(count):
        await asyncio.sleep(0.001)
        yield time.perf_counter()


async def send_rate_limited(peer: fastrpc.RpcPeer) -> None:
    await peer.send_stream(ticks(50), rate=fastrpc.RateLimit(500, burst=1))
    await peer.wait_closed()


async def send_text(peer: fastrpc.RpcPeer) -> None:
    await peer.send_stream(texts(20))
    await peer.wait_closed()


async def priority() -> None:
    # A bulk stream saturates the connection with 64 KiB chunks; a trickle of small
    # timestamped items runs beside it, once as urgent (0) and once at the bulk's own
    # priority (7). Urgent items overtake the bulk backlog at the sender.
    for tick_priority in (0, 7):
        async with fastrpc.serve(send_bulk_and_ticks(tick_priority), "127.0.0.1", 0, streams=CONGESTED) as server:
            async with fastrpc.connect(server.url) as peer:
                _, bulk = await peer.accept_stream()
                _, ticks_stream = await peer.accept_stream()

                async def drain_bulk() -> int:
                    return len([item async for item in bulk])

                reader = asyncio.ensure_future(drain_bulk())
                latencies = sorted([time.perf_counter() - sent async for sent in ticks_stream])
                assert await reader == BULK and len(latencies) == TICKS
                p50 = latencies[len(latencies) // 2] * 1e3
                p99 = latencies[int(len(latencies) * 0.99)] * 1e3
                print(
                    f"priority: small items at priority {tick_priority} beside a 64 KiB bulk stream: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
                )


async def rate_limit() -> None:
    async with fastrpc.serve(send_rate_limited, "127.0.0.1", 0) as server, fastrpc.connect(server.url) as peer:
        _, stream = await peer.accept_stream()
        start = time.perf_counter()
        n = len([x async for x in stream])
        elapsed = time.perf_counter() - start
        print(f"rate limit: {n} items with RateLimit(500 items/s) took {elapsed:.3f} s ({n / elapsed:.0f} items/s)")
        assert 0.07 < elapsed < 2.0, elapsed


async def compression() -> None:
    for compression in (False, True):
        async with fastrpc.serve(send_text, "127.0.0.1", 0, compression=compression) as server:
            async with fastrpc.connect(server.url, compression=compression) as peer:
                _, stream = await peer.accept_stream()
                total = wire = 0
                async for text in stream:
                    total += len(text)
                    stats = stream.stats()
                    if stats is not None:
                        wire = stats.bytes
                print(
                    f"compression={compression!s:<5}: {total / 1e6:.2f} MB of text crossed the wire as {wire / 1e6:.3f} MB"
                )
                assert total == 20 * 65536 and (wire < total / 10 if compression else wire >= total)


async def main() -> None:
    await rate_limit()
    await compression()
    await priority()
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
