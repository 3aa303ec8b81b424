"""Coordinated stream ids: a request returns the id of the stream it started.

Seed document, "Coordinated Stream IDs": the server's ``match`` handler starts
``sendStream(dataFeed(), streamId)`` in the background and returns
``{"streamId": streamId}``; the client calls ``receiveStream(response.data.streamId)``.

fastrpc stream ids are integers allocated by the sending side
(``peer.new_stream_id()``) rather than UUIDs. ``send_stream`` returns as soon as
the stream is open, and items that arrive before the client claims the id are
held for it, so the order of "reply" and "first item" does not matter.

Run: python examples/02_coordinated_stream_ids.py
"""

from __future__ import annotations

import asyncio
import logging

import fastrpc

# A handler below fails on purpose; fastrpc logs each handler failure at ERROR with its
# traceback (logger "fastrpc.server", docs/security.md): kept quiet in this example.
logging.getLogger("fastrpc.server").setLevel(logging.CRITICAL)

DELAY = 0.01


async def data_feed(symbol: str, n: int):
    price = 100.0
    for seq in range(n):
        await asyncio.sleep(DELAY)
        price = round(price * (1.001 if seq % 3 else 0.999), 4)
        yield {"symbol": symbol, "seq": seq, "price": price}


router = fastrpc.Router()


@router.match
async def handle(data):
    """Seed-style catch-all: ``peer.request(data)`` lands here."""
    if isinstance(data, dict) and data.get("method") == "requestData":
        peer = fastrpc.current_peer()  # the connection this request came on
        stream_id = peer.new_stream_id()
        # Start streaming in the background (send_stream returns once it is open)...
        await peer.send_stream(data_feed(data.get("symbol", "ACME"), data.get("count", 5)), stream_id)
        print(f"server: requestData -> streaming on id {stream_id}")
        # ...and return the stream id to the client.
        return {"streamId": stream_id}
    raise ValueError(f"unknown request {data!r}")


@router.method
async def subscribe(symbol: str, count: int):
    """The same with a named method and ``peer.call``; the id may also be picked
    by the sender itself (``send_stream`` returns it)."""
    peer = fastrpc.current_peer()
    stream_id = await peer.send_stream(data_feed(symbol, count))
    return {"streamId": stream_id}


async def main() -> None:
    async with fastrpc.serve(router, "127.0.0.1", 0) as server, fastrpc.connect(server.url) as peer:
        # Seed style: request + Response.data
        response = await peer.request({"method": "requestData", "symbol": "ACME", "count": 5})
        print("client: response.data =", response.data)
        stream_id, stream = peer.receive_stream(response.data["streamId"])
        n = 0
        async for data in stream:
            print("Received:", data)
            n += 1
        assert n == 5

        # Named method + call()
        info = await peer.call("subscribe", "INIT", 3)
        print("client: subscribe ->", info)
        _, stream = peer.receive_stream(info["streamId"])
        seqs = [item["seq"] async for item in stream]
        print("client: INIT seqs", seqs)
        assert seqs == [0, 1, 2]

        # Claiming late is fine: items that arrived first were held for the id.
        response = await peer.request({"method": "requestData", "symbol": "LATE", "count": 4})
        await asyncio.sleep(0.1)  # the whole feed has arrived by now
        _, stream = peer.receive_stream(response.data["streamId"])
        late = [item["seq"] async for item in stream]
        print("client: claimed late, still got seqs", late)
        assert late == [0, 1, 2, 3]

        # Unknown requests come back as RemoteError
        try:
            await peer.request({"method": "nope"})
        except fastrpc.RemoteError as exc:
            print(f"client: request failed as expected: {exc.type_name}: {exc.message}")
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
