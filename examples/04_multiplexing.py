"""Multiplexing: several streams (and calls) share one WebSocket connection.

Seed document, "Key Features / 2. Multiplexing": the server sends three feeds with
``sendStream``; the client takes them with three ``receiveStream()`` calls.

The three feeds run at different speeds; the client reads all three at once and
prints the order in which items arrived, which interleaves the streams. A plain
RPC call made while the streams run is answered right away.

The second part sends two large streams at once over a congested connection
(a small ``max_buffered_amount`` on the sender, so backpressure is on all the
time): they should share it, each making progress while the other runs.

Note that ``receive_stream()`` without an id hands out streams in the order their
first item arrives, not the order the sender called ``send_stream``; use ids
(see 02_coordinated_stream_ids.py) when that matters.

Run: python examples/04_multiplexing.py
"""

from __future__ import annotations

import asyncio
import time

import fastrpc


async def data_feed(name: str, count: int, delay: float):
    for i in range(count):
        await asyncio.sleep(delay)
        yield f"{name}-{i}"


def ping() -> str:
    return "pong"


async def on_connect(peer: fastrpc.RpcPeer) -> None:
    peer.register("ping", ping)  # a method on this connection, next to the streams
    # Server side - send multiple streams (each send_stream returns at once)
    id1 = await peer.send_stream(data_feed("feed1", 10, 0.010))
    id2 = await peer.send_stream(data_feed("feed2", 10, 0.015))
    id3 = await peer.send_stream(data_feed("feed3", 10, 0.005))
    print(f"server: sending streams {id1}, {id2}, {id3} on one connection")
    await peer.wait_closed()


async def main() -> None:
    async with fastrpc.serve(on_connect, "127.0.0.1", 0) as server, fastrpc.connect(server.url) as peer:
        # Client side - receive all three streams
        streams = [peer.receive_stream() for _ in range(3)]
        arrivals: list[str] = []

        async def consume(stream: fastrpc.ReceiveStream) -> list[str]:
            items = []
            async for item in stream:
                items.append(item)
                arrivals.append(item)
            return items

        start = time.perf_counter()
        consumers = asyncio.gather(*(consume(s) for _, s in streams))
        # A regular call travels alongside the streams.
        await asyncio.sleep(0.02)
        t = time.perf_counter()
        assert await peer.call("ping") == "pong"
        print(f"client: call during streaming answered in {(time.perf_counter() - t) * 1e3:.1f} ms")
        results = await consumers
        elapsed = time.perf_counter() - start

        for (_, s), items in zip(streams, results):
            print(f"client: stream {s.stream_id}: {len(items)} items, {items[0]} .. {items[-1]}")
            assert items == sorted(items, key=lambda x: int(x.split("-")[1]))  # ordered within a stream
        print("client: arrival order:", " ".join(a.replace("feed", "f") for a in arrivals[:15]), "...")
        switches = sum(1 for a, b in zip(arrivals, arrivals[1:]) if a.split("-")[0] != b.split("-")[0])
        print(f"client: {len(arrivals)} items from 3 streams in {elapsed:.2f} s, {switches} switches between streams")
        assert len(arrivals) == 30 and switches > 3
        # Sequential would take 10*(10+15+5) ms = 0.3 s; concurrent ~0.15 s

    await congested()
    print("done")


async def big_feed(name: str, count: int):
    data = bytes(16 << 10)
    for i in range(count):
        yield {"feed": name, "i": i, "data": data}


async def send_two_big_streams(peer: fastrpc.RpcPeer) -> None:
    await peer.send_stream(big_feed("A", 400))
    await peer.send_stream(big_feed("B", 400))
    await peer.wait_closed()


async def congested() -> None:
    """Two 6.25 MiB streams at once while the sender is under backpressure."""
    manager = fastrpc.StreamManager(max_buffered_amount=64 << 10)
    async with fastrpc.serve(send_two_big_streams, "127.0.0.1", 0, streams=manager) as server:
        async with fastrpc.connect(server.url) as peer:
            counts = {"A": 0, "B": 0}
            at_first_end: dict[str, int] = {}

            async def consume(stream: fastrpc.ReceiveStream) -> None:
                async for item in stream:
                    counts[item["feed"]] += 1
                if not at_first_end:
                    at_first_end.update(counts)

            await asyncio.gather(*(consume(peer.receive_stream()[1]) for _ in range(2)))
            print(f"congested: items of each stream when the first one ended: {at_first_end} (of 400 each)")
            assert min(at_first_end.values()) >= 100, "one stream was starved while the other ran"


if __name__ == "__main__":
    fastrpc.run(main())
