"""Bidirectional streams: one call, a stream in each direction.

Seed document, "Overview: Bidirectional streams (chat applications, collaborative
editing)" and "vs. Server-Sent Events: bidirectional". ``peer.channel(method,
items, *args)`` sends ``items`` (any async iterable) to the handler, whose first
argument is that incoming stream; what the handler yields comes back.

1. A transform: every number sent is answered scaled by ``k``.
2. A chat: the client sends a message only after the answer to the previous one
   came back -- both directions are open at the same time on one call.
3. Full duplex without a call: both sides ``send_stream`` at once and each
   ``accept_stream``s the other's.

Run: python examples/08_bidirectional_channel.py
"""

from __future__ import annotations

import asyncio

import fastrpc

router = fastrpc.Router()


@router.method
async def scale(items, k: int):
    async for x in items:
        yield x * k


@router.method
async def chat(messages, name: str):
    yield f"[bot] hello {name}"
    async for text in messages:
        yield f"[bot] {name} said {text!r} ({len(text)} chars)"
    yield f"[bot] bye {name}"


@router.method
async def exchange(count: int) -> int:
    """Send a stream to the caller and read the caller's stream, concurrently."""
    peer = fastrpc.current_peer()

    async def ours():
        for i in range(count):
            await asyncio.sleep(0.002)
            yield f"server-{i}"

    await peer.send_stream(ours())
    _, theirs = await peer.accept_stream()
    got = [item async for item in theirs]
    print(f"server: received {len(got)} items from the client: {got[0]} .. {got[-1]}")
    return len(got)


async def numbers(n: int):
    for i in range(n):
        await asyncio.sleep(0.002)
        yield i


async def main() -> None:
    async with fastrpc.serve(router, "127.0.0.1", 0) as server, fastrpc.connect(server.url) as peer:
        # 1. Transform
        result = [y async for y in peer.channel("scale", numbers(10), 10)]
        print("client: scale(numbers(10), 10) ->", result)
        assert result == [i * 10 for i in range(10)]

        # 2. Chat: the outgoing generator waits for each answer before sending more.
        answered = asyncio.Queue()

        async def my_messages():
            for text in ("hi", "how are you?", "streams both ways!"):
                await answered.get()  # wait for the previous answer
                print("client  ->", text)
                yield text

        replies = []
        async for reply in peer.channel("chat", my_messages(), "alice"):
            print("client <- ", reply)
            replies.append(reply)
            answered.put_nowait(None)
        assert replies[0] == "[bot] hello alice" and replies[-1] == "[bot] bye alice"
        assert len(replies) == 5

        # 3. Full duplex: both sides send a stream at the same time.
        async def mine():
            for i in range(20):
                await asyncio.sleep(0.002)
                yield f"client-{i}"

        call = asyncio.ensure_future(peer.call("exchange", 20))
        await peer.send_stream(mine())
        _, theirs = await peer.accept_stream()
        got = [item async for item in theirs]
        assert await call == 20 and len(got) == 20  # the server has printed its line by now
        print(f"client: received {len(got)} items from the server: {got[0]} .. {got[-1]}")
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
