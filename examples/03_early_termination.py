"""Early termination: abort_stream, close_receiving_stream, and break.

Seed document, "Early Termination":

* the *sender* aborts an outgoing stream: ``peer.abort_stream(id)`` -- the
  receiver's loop raises :class:`fastrpc.StreamAborted`;
* the *receiver* closes an incoming stream: ``peer.close_receiving_stream(id)`` --
  the sender is told to stop and its generator is closed (its ``finally`` runs);
* the receiver just ``break``s out of its ``async for`` (optionally calling
  ``close_receiving_stream`` first, as in the seed).

The server's feeds record when their generator is closed; the client asks for
that record over RPC (``feed_closed``) to show that the sender really stopped.

Run: python examples/03_early_termination.py
"""

from __future__ import annotations

import asyncio

import fastrpc

DELAY = 0.005

router = fastrpc.Router()
closed: dict[str, asyncio.Future[int]] = {}  # feed name -> items produced when closed


def _closed_future(name: str) -> asyncio.Future[int]:
    if name not in closed:
        closed[name] = asyncio.get_running_loop().create_future()
    return closed[name]


async def endless_feed(name: str):
    """Never ends by itself: only the receiver or the sender can stop it."""
    done = _closed_future(name)
    n = 0
    try:
        while True:
            await asyncio.sleep(DELAY)
            yield {"feed": name, "n": n}
            n += 1
    finally:
        print(f"server: feed {name!r} closed after {n} items")
        if not done.done():
            done.set_result(n)


@router.method
async def start_feed(name: str) -> dict:
    stream_id = await fastrpc.current_peer().send_stream(endless_feed(name))
    return {"streamId": stream_id}


@router.method
def stop_feed(stream_id: int) -> bool:
    """Sender-side abort: ``abort_stream`` on the server's own outgoing stream."""
    return fastrpc.current_peer().abort_stream(stream_id)


@router.method
async def ticker(name: str):
    """A streaming method: breaking out of ``peer.stream(...)`` cancels it."""
    async for item in endless_feed(name):
        yield item


@router.method
async def feed_closed(name: str) -> int:
    """How many items feed ``name`` produced before it was closed (waits for it)."""
    return await asyncio.wait_for(_closed_future(name), 5)


async def main() -> None:
    async with fastrpc.serve(router, "127.0.0.1", 0) as server:
        async with fastrpc.connect(server.url) as peer:
            # 1. The sender aborts: the receiver gets StreamAborted.
            info = await peer.call("start_feed", "A")
            stream_id, stream = peer.receive_stream(info["streamId"])
            got = 0
            try:
                async for item in stream:
                    got += 1
                    if got == 5:
                        print("client: asking the server to abort stream", stream_id)
                        print("client: stop_feed ->", await peer.call("stop_feed", stream_id))
            except fastrpc.StreamAborted as exc:
                print(f"client: abort_stream -> StreamAborted({exc}) after {got} items")
            else:
                raise AssertionError("expected StreamAborted")
            print("client: feed A produced", await peer.call("feed_closed", "A"), "items")

            # 2. The receiver closes: the sender's generator is closed.
            info = await peer.call("start_feed", "B")
            stream_id, stream = peer.receive_stream(info["streamId"])
            got = 0
            async for item in stream:
                got += 1
                if got == 5:
                    peer.close_receiving_stream(stream_id)
                    print(f"client: close_receiving_stream({stream_id}) after {got} items")
                    # The stream is now closed: the loop ends at the next step.
            print("client: feed B produced", await peer.call("feed_closed", "B"), "items")

            # 3a. The seed's pattern: close_receiving_stream, then break.
            info = await peer.call("start_feed", "C")
            stream_id, stream = peer.receive_stream(info["streamId"])
            async for data in stream:
                if data["n"] >= 3:  # shouldStop(data)
                    peer.close_receiving_stream(stream_id)
                    break
            print(f"client: break at n={data['n']}; feed C produced", await peer.call("feed_closed", "C"), "items")

            # 3b. A plain break out of a streaming call also stops the sender.
            async for data in peer.stream("ticker", "D"):
                if data["n"] >= 3:
                    break
            print(f"client: break at n={data['n']}; feed D produced", await peer.call("feed_closed", "D"), "items")

            # 3c. Or, explicitly, async with / aclose().
            async with peer.stream("ticker", "E") as ticks:
                async for data in ticks:
                    if data["n"] >= 3:
                        break
            print(
                f"client: async with + break at n={data['n']}; feed E produced",
                await peer.call("feed_closed", "E"),
                "items",
            )
            assert peer.streams.active_streams == 0, peer.streams.active_streams
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
