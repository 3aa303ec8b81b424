"""The receiving side of streams and topics against a peer it does not trust, over real
loopback connections: what a peer makes us hold for streams nobody reads counts against
the memory budget, the records of calls we gave up on are forgotten however the peer
ends them, one publisher's cancellation leaves the others alone, and bad subscription
arguments or events are the documented errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _util import QUIET, Redirect, assert_idle, frames_server, raw_client, run, server_peer, until
from websockets.asyncio.server import serve

import fastrpc
from fastrpc import frames as F
from fastrpc.broker import History, MemoryBroker
from fastrpc.calls import encode_error
from fastrpc.protocol import Settings

KiB = 1 << 10


@pytest.mark.parametrize("kind", ["error", "abort"])
def test_the_errors_of_streams_nobody_reads_count_against_the_memory_budget(kind: str) -> None:
    # A peer opens streams and ends each at once with a STREAM_ERROR (or STREAM_ABORT)
    # carrying a large message: nobody claims them, and each record kept its error (up
    # to max_frame_size a stream, max_streams streams: 1 GiB with the defaults) outside
    # max_connection_memory. The error's bytes are charged like unread items now.
    async def main() -> None:
        opts = {"max_connection_memory": 1 << 20, "max_streams": 64}
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, **{**QUIET, **opts}) as server:
            async with raw_client(server.url) as raw:
                sp = await server_peer(server)
                text = "x" * (64 * KiB)
                if kind == "error":
                    payload = encode_error("RuntimeError", text)
                    ftype = F.STREAM_ERROR
                else:
                    payload = text.encode()
                    ftype = F.STREAM_ABORT
                sid = 1
                for _ in range(4):  # 4 messages of 8 streams: 2 MiB of errors in all
                    msg = b""
                    for _ in range(8):
                        msg += F.encode_frame(ftype, F.FLAG_OPEN, sid, payload)
                        sid += 2
                    await raw.send(msg)
                code, reason = await raw.drain(5)
                assert code == 1008, (code, reason)
                assert "max_connection_memory" in reason, reason
                await until(lambda: sp.closed, 5, "the server's peer closed")

    run(main(), 20)


def test_the_error_of_a_read_stream_is_released_from_the_budget() -> None:
    # The charge of a stream's error goes back when the stream is read to its end
    # (or closed): many such streams one after the other hold nothing.
    async def main() -> None:
        opts = {"max_connection_memory": 1 << 20}
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, **{**QUIET, **opts}) as server:
            async with raw_client(server.url) as raw:
                sp = await server_peer(server)
                payload = encode_error("RuntimeError", "x" * (64 * KiB))
                for i in range(40):  # 2.5 MiB of errors in all, 64 KiB at a time
                    sid = 2 * i + 1
                    await raw.send(F.encode_frame(F.STREAM_ERROR, F.FLAG_OPEN, sid, payload))
                    got, stream = await asyncio.wait_for(sp.accept_stream(), 5)
                    assert got == sid
                    with pytest.raises(fastrpc.RemoteStreamError):
                        async for _ in stream:
                            pass
                    await until(lambda: sp.core.held == 0, 5, "the error's bytes released")
                assert not sp.closed
                await assert_idle(sp)

    run(main(), 20)


def test_an_error_answer_to_a_cancelled_streaming_call_frees_its_stream() -> None:
    # The callee of a streaming call may answer it with ERROR (docs/protocol.md,
    # "Calls"), also once the caller cancelled it. The caller's record of the call's
    # stream was left behind (state FAILED, its ledger entry open): one more per
    # cancelled call, for the connection's life.
    async def on_frame(ws: Any, f: F.Frame) -> None:  # a server of hand-built frames
        if f.type == F.CANCEL:
            await ws.send(F.encode_frame(F.ERROR, 0, f.id, encode_error("CancelledError", "call cancelled")))

    async def main() -> None:
        async with serve(frames_server(Settings(), on_frame), "127.0.0.1", 0) as srv:
            url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
            async with fastrpc.connect(url, **QUIET) as peer:
                for _ in range(5):
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.01):
                            async for _ in peer.stream("m"):
                                pass
                await until(lambda: not peer.core.pending_calls, 5, "the calls' slots back")
                await assert_idle(peer)

    run(main(), 10)


def test_cancelling_one_blocked_publisher_leaves_the_others_waiting() -> None:
    # Without topic_block_timeout, publishers held back by a full `block` queue all
    # awaited the same future: cancelling one of them (a timeout around publish())
    # cancelled that future, and with it every other publisher (CancelledError in a
    # task nobody cancelled).
    big = b"x" * (16 * KiB)

    async def main() -> None:
        opts = {"topic_queue_size": 2, "topic_block_timeout": None}
        async with fastrpc.serve(fastrpc.Router(), **{**QUIET, **opts}) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("t", policy="block").start()
                published = 0

                async def publisher(tag: str) -> None:
                    nonlocal published
                    i = 0
                    while True:
                        await server.publish("t", [tag, i, big])
                        published += 1
                        i += 1
                        await asyncio.sleep(0)  # (a topic without subscribers never waits)

                a = asyncio.ensure_future(publisher("a"))
                b = asyncio.ensure_future(publisher("b"))
                t = server.topics._topics["t"]
                await until(lambda: t.full and t.room is not None, 5, "the publishers held back")
                count = published
                await asyncio.sleep(0.05)
                assert published == count  # (held back: nothing taken)
                a.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await a
                for _ in range(20):
                    await asyncio.sleep(0)
                assert not b.done(), b  # still waiting, not cancelled
                # The reader takes items: the publisher left goes on.
                got = 0
                async for _ in sub:
                    got += 1
                    if published > count + 10:
                        break
                assert not b.done()
                b.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await b
                await sub.aclose()

    run(main(), 20)


@pytest.mark.parametrize(
    "args",
    [
        ("t", None, None, "block", None, [4]),  # queue_size of the wrong type
        ("t", None, None, "block", None, float("inf")),
        ("t", None, None, "block", None, "many"),
        ("t", None, None, ["block"], None, None),  # an unhashable policy
    ],
)
def test_bad_subscribe_arguments_end_the_stream_with_value_error(args: tuple[Any, ...]) -> None:
    # docs/protocol.md, "Topics": a bad argument ends the stream with STREAM_ERROR
    # ValueError. A queue_size of the wrong type made a TypeError, an infinite one an
    # OverflowError.
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                with pytest.raises(fastrpc.RemoteStreamError) as e:
                    await asyncio.wait_for(c.stream("fastrpc.subscribe", *args).__anext__(), 5)
                assert e.value.type_name == "ValueError", e.value
                assert await c.call("fastrpc.methods") is not None  # the connection lives on

    run(main(), 10)


@pytest.mark.parametrize("bad", [[9, 1, 2], [-1], "xyz", b"xyz", [0, "1", "a"], [0, None, "a"], [5, 1.5, ["a"]]])
def test_an_event_of_no_known_shape_is_a_protocol_error(bad: Any) -> None:
    # docs/protocol.md, "Topics": an event of no shape in the table ends the
    # subscription with ProtocolError. An unknown kind (or a string, whose first
    # character is no kind) was skipped in silence, and the subscriber waited for the
    # next event; an item's offset that is no integer was handed out as one.
    router = fastrpc.Router()

    @router.method
    async def evil(*args: Any) -> AsyncIterator[Any]:
        yield [1, "e", 0, False]
        yield [0, 1, "a"]
        yield bad
        await asyncio.sleep(10)

    async def main() -> None:
        async with fastrpc.serve(router, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as client:
                sub = fastrpc.Subscription(Redirect(client, "evil"), "t")  # type: ignore[arg-type]
                first = await asyncio.wait_for(sub.__anext__(), 5)
                assert (first.offset, first.value) == (1, "a")  # type: ignore[union-attr]
                with pytest.raises(fastrpc.ProtocolError, match="malformed event"):
                    await asyncio.wait_for(sub.__anext__(), 5)
                with pytest.raises(StopAsyncIteration):
                    await sub.__anext__()

    run(main(), 10)


class _FillingBroker(MemoryBroker):
    """A memory broker whose history reads wait for the test (``gate``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None

    async def history(self, topic: str, after: int | None) -> History:
        if self.gate is not None:
            await self.gate.wait()
        return await super().history(topic, after)


def test_a_topic_whose_last_subscription_ends_during_a_fill_is_forgotten() -> None:
    # A broker that reconnects makes the hub read each topic's history (a fill). A
    # subscription that ended meanwhile left its topic's record behind for good (one
    # per topic name a client had subscribed to).
    async def main() -> None:
        broker = _FillingBroker()
        async with fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("t").start()
                await server.publish("t", 1)
                assert [e.value async for e in _first(sub, 1)] == [1]
                broker.gate = asyncio.Event()
                server.topics.reconnected()  # the fill waits on the gate
                await sub.aclose()
                await until(lambda: server.topics.subscribers("t") == 0, 5, "the subscription gone")
                broker.gate.set()
                await until(lambda: not server.topics._tasks, 5, "the fill done")
                assert "t" not in server.topics._topics

    run(main(), 10)


async def _first(sub: fastrpc.Subscription, n: int) -> AsyncIterator[Any]:
    for _ in range(n):
        yield await asyncio.wait_for(sub.__anext__(), 5)


class _BackwardsBroker(MemoryBroker):
    """A memory broker whose history, once ``back`` is set, says its offsets went back
    (a Redis restored from an older snapshot): same epoch, last offset ``back``."""

    def __init__(self) -> None:
        super().__init__()
        self.back: int | None = None

    async def history(self, topic: str, after: int | None) -> History:
        h = await super().history(topic, after)
        if self.back is None:
            return h
        return History(h.epoch, 1, self.back, [])


def test_a_broker_whose_offsets_went_back_is_a_lost_history_not_a_silent_gap() -> None:
    # After a broker reconnect the hub re-reads each topic (a fill). A history in the
    # same epoch whose last offset is below what this process delivered means offsets
    # will be given out again, and the items under them dropped as delivered already:
    # the subscriber must get HistoryLost, not a silent gap (any broker, not only Redis).
    async def main() -> None:
        broker = _BackwardsBroker()
        async with fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("t").start()
                for i in range(6):
                    await server.publish("t", i)
                assert [e.value async for e in _first(sub, 6)] == list(range(6))
                broker.back = 3
                server.topics.reconnected()
                with pytest.raises(fastrpc.HistoryLost, match="went back"):
                    await asyncio.wait_for(sub.__anext__(), 5)

    run(main(), 10)
