"""Error handling: a sender's exception reaches the receiver.

Seed document, "Key Features / 4. Error Handling": errors raised by a stream's
iterator are caught and sent as a StreamError; the receiver sees them. In
fastrpc the receiver's ``async for`` raises :class:`fastrpc.RemoteStreamError`
(``type_name``, ``message``) after the items sent before the error.

Also shown ("3. Resource Cleanup"): when the connection closes, incoming streams
fail with :class:`fastrpc.ConnectionClosed` ("Connection closed") and outgoing
streams' iterators are closed.

Run: python examples/05_error_handling.py
"""

from __future__ import annotations

import asyncio
import logging

import fastrpc

# A handler below fails on purpose; fastrpc logs each handler failure at ERROR with its
# traceback (logger "fastrpc.server", docs/security.md): kept quiet in this example.
logging.getLogger("fastrpc.server").setLevel(logging.CRITICAL)


async def may_fail():
    yield 1
    yield 2
    raise RuntimeError("Something went wrong")


router = fastrpc.Router()
cleanup: list[str] = []


@router.method
async def failing_stream():
    """A streaming method whose generator raises half-way."""
    async for x in may_fail():
        yield x


@router.method
async def start_failing_stream() -> int:
    """Seed style: send_stream(may_fail()) and hand out the id."""
    return await fastrpc.current_peer().send_stream(may_fail())


@router.method
async def endless():
    try:
        n = 0
        while True:
            await asyncio.sleep(0.005)
            yield n
            n += 1
    finally:
        cleanup.append(f"server: endless() closed after {n} items (connection gone)")


@router.method
def divide(a: float, b: float) -> float:
    return a / b


async def main() -> None:
    async with fastrpc.serve(router, "127.0.0.1", 0) as server:
        async with fastrpc.connect(server.url) as peer:
            # 1. send_stream(may_fail()): the receiver gets 1, 2, then the error.
            stream_id = await peer.call("start_failing_stream")
            _, stream = peer.receive_stream(stream_id)
            received = []
            try:
                async for item in stream:
                    received.append(item)
            except fastrpc.RemoteStreamError as exc:
                print(
                    f"client: stream {stream_id} received {received}, then "
                    f"RemoteStreamError type_name={exc.type_name!r} message={exc.message!r}"
                )
            assert received == [1, 2]

            # 2. The same from a streaming method.
            received = []
            try:
                async for item in peer.stream("failing_stream"):
                    received.append(item)
            except fastrpc.RemoteStreamError as exc:
                print(f"client: failing_stream() received {received}, then RemoteStreamError: {exc}")
            assert received == [1, 2]

            # 3. A plain call's exception is a RemoteError (RemoteStreamError's base).
            try:
                await peer.call("divide", 1, 0)
            except fastrpc.RemoteError as exc:
                print(f"client: divide(1, 0) -> RemoteError: {exc.type_name}: {exc.message}")

            # The connection is still fine after all of that.
            assert await peer.call("divide", 6, 3) == 2

        # 4. Resource cleanup: the connection drops while a stream is running.
        async with fastrpc.connect(server.url) as peer:
            got = []
            try:
                async for n in peer.stream("endless"):
                    got.append(n)
                    if n == 3:
                        # Simulate a lost server: close every server-side connection.
                        for server_peer in list(server.peers):
                            await server_peer.close(1001, "going away")
            except fastrpc.ConnectionClosed as exc:
                print(f"client: after {len(got)} items the stream failed with ConnectionClosed({exc})")
            else:
                raise AssertionError("expected ConnectionClosed")
            await peer.wait_closed()
        await asyncio.sleep(0.05)
        print("\n".join(cleanup))
        assert cleanup
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
