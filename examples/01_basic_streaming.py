"""Basic streaming: the server sends an async generator, the client iterates it.

Seed document, "Usage Example / Basic Streaming": ``peer.sendStream(numberStream())``
on one side, ``peer.receiveStream(streamId)`` + ``for await`` on the other.

Here the server's connection handler sends the stream as soon as a client connects;
the client claims it with ``peer.receive_stream()`` (no id: the next stream to
arrive), then reads it with ``async for``. The second half shows the same feed as
a streaming *method* (an async-generator handler called with ``peer.stream``),
which is usually the simplest way to ask for a stream.

Run: python examples/01_basic_streaming.py
"""

from __future__ import annotations

import asyncio

import fastrpc

DELAY = 0.01  # the seed uses 100 ms between items; kept short here


async def number_stream(n: int = 10):
    for i in range(1, n + 1):
        await asyncio.sleep(DELAY)
        yield i


router = fastrpc.Router()


@router.method
async def numbers(n: int):
    """A streaming method: each yielded value is one stream item."""
    async for i in number_stream(n):
        yield i


async def on_connect(peer: fastrpc.RpcPeer) -> None:
    """Server side, run once per connection: push a stream to the client."""
    stream_id = await peer.send_stream(number_stream())
    print(f"server: sending stream {stream_id}")
    await peer.wait_closed()  # keep the connection until the client leaves


async def main() -> None:
    # 1. Push style (seed): the server sends, the client receives.
    async with fastrpc.serve(on_connect, "127.0.0.1", 0) as server, fastrpc.connect(server.url) as peer:
        _, stream = peer.receive_stream()  # the next stream that arrives
        received = []
        async for num in stream:
            print("Received:", num)
            received.append(num)
        print(f"client: stream {stream.stream_id} ended after {len(received)} items")
        assert received == list(range(1, 11))

    # 2. Pull style: call a streaming method.
    async with fastrpc.serve(router, "127.0.0.1", 0) as server, fastrpc.connect(server.url) as peer:
        got = [num async for num in peer.stream("numbers", 5)]
        print("numbers(5) ->", got)
        assert got == [1, 2, 3, 4, 5]
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
