"""Stream priority, per-stream rate limits and compression.

The seed document lists these under "Future Enhancements" (stream priority,
flow control / per-stream rate limiting, compression); fastrpc has them:

* ``send_stream(source, priority=0..7)``: lower is more urgent (default 3). When
  the connection is the bottleneck, the more urgent stream's frames go first.
  A congested link is simulated with a small ``max_buffered_amount`` on the
  sender; a bulk stream (priority 7) is started, then at once an urgent one
  (priority 0) of the same size: the urgent one should finish first.
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

BULK, URGENT = 400, 400  # 16 KiB items: 6.25 MiB each
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


async def send_bulk_then_urgent(peer: fastrpc.RpcPeer) -> None:
    await peer.send_stream(chunks("bulk", BULK, 16 << 10), priority=7)
    await peer.send_stream(chunks("urgent", URGENT, 16 << 10), priority=0)
    await peer.wait_closed()


async def send_rate_limited(peer: fastrpc.RpcPeer) -> None:
    await peer.send_stream(ticks(50), rate=fastrpc.RateLimit(500, burst=1))
    await peer.wait_closed()


async def send_text(peer: fastrpc.RpcPeer) -> None:
    await peer.send_stream(texts(20))
    await peer.wait_closed()


async def priority() -> None:
    async with fastrpc.serve(send_bulk_then_urgent, "127.0.0.1", 0, streams=CONGESTED) as server:
        async with fastrpc.connect(server.url) as peer:
            start = time.perf_counter()
            finished: dict[str, float] = {}
            counts = {"bulk": 0, "urgent": 0}
            at_first_finish: dict[str, int] = {}

            async def drain(stream: fastrpc.ReceiveStream) -> None:
                async for item in stream:
                    counts[item["stream"]] += 1
                finished[item["stream"]] = time.perf_counter() - start
                if not at_first_finish:
                    at_first_finish.update(counts)

            await asyncio.gather(*(drain(peer.receive_stream()[1]) for _ in range(2)))
            for name, t in sorted(finished.items(), key=lambda kv: kv[1]):
                size = (BULK if name == "bulk" else URGENT) * 16 / 1024
                print(f"priority: {name:<6} stream ({size:4.2f} MiB) finished after {t * 1e3:6.1f} ms")
            print(f"priority: items received when the first stream finished: {at_first_finish}")
            assert finished["urgent"] < finished["bulk"], "the urgent stream should finish first"


async def rate_limit() -> None:
    async with fastrpc.serve(send_rate_limited, "127.0.0.1", 0) as server:
        async with fastrpc.connect(server.url) as peer:
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
                print(f"compression={compression!s:<5}: {total / 1e6:.2f} MB of text crossed the wire as {wire / 1e6:.3f} MB")
                assert total == 20 * 65536 and (wire < total / 10 if compression else wire >= total)


async def main() -> None:
    await rate_limit()
    await compression()
    await priority()
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
