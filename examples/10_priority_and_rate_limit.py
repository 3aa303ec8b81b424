"""Stream priority, per-stream rate limits and compression.

The seed document lists these under "Future Enhancements" (stream priority,
flow control / per-stream rate limiting, compression); fastrpc has them:

* ``send_stream(source, priority=0..7)``: lower is more urgent (default 3). When
  the link is the bottleneck, the more urgent stream's frames go first and its
  sender is woken first when the buffer drains. Here 4 bulk streams (priority 3)
  cross a 10 MB/s link (a small throttling proxy, as a WAN would be) beside small
  timed items, at priority 0 and at the bulk's own priority. The sender is set up
  for a slow link: little is written ahead of its scheduler (``write_limit``,
  ``notsent_lowat``, a small ``batch_size``), so urgent items overtake the backlog.
* ``send_stream(source, rate=fastrpc.RateLimit(items_per_s))`` (or
  ``RateLimit(bytes_per_s, per="bytes")``) paces one stream.
* ``serve(..., compression=True)`` / ``connect(..., compression=True)``
  compresses items above ``compression_threshold`` bytes; the stream's
  ``stats().bytes`` counts what crossed the wire.

Run: python examples/10_priority_and_rate_limit.py
"""

from __future__ import annotations

import asyncio
import socket
import time

import fastrpc

TICKS = 60  # small timed items, one every 2 ms
LINK = 10e6  # bytes/s
SLOW_LINK = {"write_limit": 16 << 10, "notsent_lowat": 16 << 10}


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
        await peer.send_stream(timed_ticks(TICKS), priority=tick_priority)
        for i in range(4):
            await peer.send_stream(chunks(f"bulk{i}", 10_000, 64 << 10), priority=3)
        await peer.wait_closed()

    return handler


async def timed_ticks(count: int):
    for _ in range(count):
        await asyncio.sleep(0.002)
        yield {"sent": time.perf_counter()}


async def throttle(upstream: int):
    """A TCP proxy that forwards server -> client at LINK bytes/s: a slow link."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float | None) -> None:
        start, sent = time.perf_counter(), 0
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
                sent += len(data)
                if rate is not None:
                    await asyncio.sleep(max(0.0, sent / rate - (time.perf_counter() - start)))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    tasks: set[asyncio.Task] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up = socket.socket()
        up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the link holds little
        up.setblocking(False)
        await asyncio.get_running_loop().sock_connect(up, ("127.0.0.1", upstream))
        up_reader, up_writer = await asyncio.open_connection(sock=up, limit=2048)
        for task in (pipe(up_reader, writer, LINK), pipe(reader, up_writer, None)):
            tasks.add(asyncio.ensure_future(task))

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    return server, tasks


async def send_rate_limited(peer: fastrpc.RpcPeer) -> None:
    await peer.send_stream(ticks(50), rate=fastrpc.RateLimit(500, burst=1))
    await peer.wait_closed()


async def send_text(peer: fastrpc.RpcPeer) -> None:
    await peer.send_stream(texts(20))
    await peer.wait_closed()


async def priority() -> None:
    # 4 bulk streams saturate a 10 MB/s link with 64 KiB chunks; a trickle of small
    # timestamped items runs beside them, once as urgent (0) and once at the bulk's
    # own priority (3). Urgent items overtake the bulk backlog at the sender.
    p50s = {}
    for tick_priority in (0, 3):
        streams = fastrpc.StreamManager(batch_size=16 << 10)
        handler = send_bulk_and_ticks(tick_priority)
        async with fastrpc.serve(handler, "127.0.0.1", 0, streams=streams, **SLOW_LINK) as server:
            proxy, tasks = await throttle(server.port)
            port = proxy.sockets[0].getsockname()[1]
            async with fastrpc.connect(f"ws://127.0.0.1:{port}") as peer:
                latencies: list[float] = []
                all_ticks = asyncio.get_running_loop().create_future()
                readers = []

                async def accept() -> None:
                    while True:
                        _, stream = await peer.accept_stream()
                        readers.append(asyncio.ensure_future(read(stream)))

                async def read(stream: fastrpc.ReceiveStream) -> None:
                    async for item in stream:
                        if "sent" in item:  # a tick (the others are bulk chunks)
                            latencies.append(time.perf_counter() - item["sent"])
                    if latencies and not all_ticks.done():
                        all_ticks.set_result(None)

                acceptor = asyncio.ensure_future(accept())
                await all_ticks
                latencies.sort()
                assert len(latencies) == TICKS
                for task in (acceptor, *readers):
                    task.cancel()
                await asyncio.gather(acceptor, *readers, return_exceptions=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            proxy.close()
        p50 = p50s[tick_priority] = latencies[len(latencies) // 2] * 1e3
        p99 = latencies[int(len(latencies) * 0.99)] * 1e3
        print(
            f"priority: small items at priority {tick_priority} beside 4 bulk streams on a 10 MB/s link: "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
    print(f"priority: urgent items arrive {p50s[3] / p50s[0]:.0f}x sooner (median)")
    assert p50s[0] * 3 < p50s[3], p50s


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
