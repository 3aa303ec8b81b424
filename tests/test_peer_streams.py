"""Streams over a real loopback connection: ids, ordering, errors, early termination,
channels, large items and backpressure."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _services import stop
from _util import assert_idle, pair, raw_client, run, server_peer, until

import fastrpc
from fastrpc import frames as F
from fastrpc.calls import decode_error
from fastrpc.peer_io import PeerIO
from fastrpc.protocol import FRAME_CHARGE


async def agen(n: int, tag: Any = None) -> AsyncIterator[Any]:
    for i in range(n):
        yield i if tag is None else [tag, i]


class Watch:
    """Events a sending generator sets: started, and finally ran."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.cancelled = False
        self.sent = 0

    async def forever(self, item: Any = 0) -> AsyncIterator[Any]:
        try:
            self.started.set()
            while True:
                yield item if item != 0 else self.sent
                self.sent += 1
                await asyncio.sleep(0)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled = True
            raise
        finally:
            self.finished.set()


def stream_router(watch: Watch | None = None) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def ticks(n: int, tag: Any = None) -> AsyncIterator[Any]:
        for i in range(n):
            yield i if tag is None else [tag, i]
            if i % 7 == 0:
                await asyncio.sleep(0)

    @router.method
    async def forever() -> AsyncIterator[Any]:
        assert watch is not None
        async for x in watch.forever():
            yield x

    @router.method
    async def produce(n: int) -> int:
        """Send a stream from the server; return its id for the client to receive."""
        peer = fastrpc.current_peer()
        return await peer.send_stream(agen(n))

    @router.method
    async def produce_forever() -> int:
        assert watch is not None
        return await fastrpc.current_peer().send_stream(watch.forever())

    @router.method
    async def consume(sid: int) -> list[Any]:
        """Receive the client's stream ``sid`` (claimed before or after it arrives)."""
        _, stream = fastrpc.current_peer().receive_stream(sid)
        return [x async for x in stream]

    @router.method
    async def consume_summary(sid: int) -> list[Any]:
        """Receive stream ``sid``; return ``[count, the distinct items]``."""
        _, stream = fastrpc.current_peer().receive_stream(sid)
        n, distinct = 0, set()
        async for x in stream:
            n += 1
            distinct.add(x)
        return [n, sorted(distinct)]

    @router.method
    async def echo(items: fastrpc.ReceiveStream[Any], k: int) -> AsyncIterator[Any]:
        async for x in items:
            yield x * k

    @router.method
    async def fails_after(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise ValueError(f"failed after {n}")

    @router.method
    async def big(n: int, size: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield bytes([i % 256]) * size

    @router.method
    async def sum_sizes(items: fastrpc.ReceiveStream[Any]) -> AsyncIterator[Any]:
        total = []
        async for x in items:
            assert x == bytes([len(total) % 256]) * len(x)
            total.append(len(x))
        yield total

    return router


# ----------------------------------------------------------------- basics


def test_streaming_call() -> None:
    async def main() -> None:
        async with pair(stream_router()) as (_, peer):
            assert [x async for x in peer.stream("ticks", 100)] == list(range(100))
            assert [x async for x in peer.stream("ticks", 0)] == []
            async with peer.stream("ticks", 3, "t") as s:
                assert [x async for x in s] == [["t", 0], ["t", 1], ["t", 2]]

    run(main())


def test_a_sender_of_many_items_asks_for_a_flush_once_a_pass_not_once_an_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # While a flush is scheduled for the end of the loop pass (StreamLink.flush_pending),
    # asking for another does nothing: a sender does not, item after item.
    asked: list[Any] = []
    flush = PeerIO.flush

    def counted(self: PeerIO) -> None:
        asked.append(self)
        flush(self)

    monkeypatch.setattr(PeerIO, "flush", counted)

    async def main() -> None:
        async with pair(stream_router()) as (_, peer):

            async def items() -> AsyncIterator[bytes]:
                for _ in range(2000):
                    yield b"x"

            sid = await peer.send_stream(items())
            assert await peer.call("consume_summary", sid) == [2000, [b"x"]]
            mine = sum(1 for p in asked if p is peer)
            assert 0 < mine < 100, mine

    run(main())


def test_get_nowait_takes_what_has_arrived_without_waiting() -> None:
    async def main() -> None:
        async with pair(stream_router()) as (_, peer):
            s = peer.stream("ticks", 50)
            with pytest.raises(asyncio.QueueEmpty):
                s.get_nowait()  # not even called yet
            assert s.get_nowait("none") == "none"
            got = [await s.__anext__()]  # sends the call, waits for the first item
            await until(lambda: s.stats() is None or s.stats().items == 50, 5.0, "all 50 items")  # type: ignore[union-attr]
            while (x := s.get_nowait(None)) is not None:
                got.append(x)
            assert got == list(range(50))
            with pytest.raises(asyncio.QueueEmpty):
                s.get_nowait()  # over: __anext__ says how
            assert [x async for x in s] == []
            assert s.closed and s.get_nowait(-1) == -1

    run(main())


def test_get_many_nowait_takes_what_has_arrived_in_one_step() -> None:
    async def main() -> None:
        async with pair(stream_router()) as (_, peer):
            s = peer.stream("ticks", 50)
            assert s.get_many_nowait() == []  # not even called yet
            got = [await s.__anext__()]  # sends the call, waits for the first item
            await until(lambda: s.stats() is None or s.stats().items == 50, 5.0, "all 50 items")  # type: ignore[union-attr]
            assert s.get_many_nowait(0) == []
            got += s.get_many_nowait(10)
            assert got == list(range(11))
            while more := s.get_many_nowait():
                got += more
            assert got == list(range(50))
            assert s.get_many_nowait() == []  # over: __anext__ says how
            assert [x async for x in s] == []
            assert s.closed and s.get_many_nowait() == []

    run(main())


def test_send_stream_with_id_from_a_call_items_held_before_claim() -> None:
    async def main() -> None:
        async with pair(stream_router()) as (_, peer):
            sid = await peer.call("produce", 50)
            assert isinstance(sid, int) and sid % 2 == 0  # a server-allocated id
            # Let the whole stream arrive (and end) before anybody claims it.
            await until(
                lambda: (s := peer.core.incoming(sid)) is not None and len(s.items) == 50 and s.state != 0,
                5,
                "the whole unclaimed stream",
            )
            got_sid, stream = peer.receive_stream(sid)
            assert got_sid == sid
            assert [x async for x in stream] == list(range(50))
            # Again, claiming right away (items may be in flight or already here).
            sid2 = await peer.call("produce", 500)
            _, stream2 = peer.receive_stream(sid2)
            assert [x async for x in stream2] == list(range(500))
            await until(lambda: peer.streams.active_streams == 0, 5, "streams forgotten")

    run(main())


def test_receive_stream_claimed_before_it_arrives() -> None:

    async def main() -> None:
        async with pair(stream_router()) as (server, peer):
            sid = peer.new_stream_id()
            result = asyncio.ensure_future(peer.call("consume", sid))
            sp = await server_peer(server)
            await until(lambda: sid in sp.stats()["claims"], 5, "the server's claim")
            assert await peer.send_stream(agen(300), sid) == sid
            assert await asyncio.wait_for(result, 5) == list(range(300))
            sid = await peer.send_stream(agen(20))
            await until(lambda: (s := sp.core.incoming(sid)) is not None and s.state != 0, 5, "the stream's arrival")
            assert await peer.call("consume", sid) == list(range(20))
            with pytest.raises(ValueError):
                await peer.send_stream(agen(1), sid + 1)  # the client allocates odd ids only

    run(main())


def test_receive_stream_none_and_accept_stream() -> None:
    async def main() -> None:
        results: asyncio.Queue[Any] = asyncio.Queue()

        async def handler(peer: fastrpc.RpcPeer) -> None:
            # Claimed before any stream arrives: bound to the next one.
            sid0, first = peer.receive_stream(None)
            assert sid0 is None and first.stream_id is None
            sid1, second = await peer.accept_stream()
            await results.put(("first", first.stream_id, [x async for x in first]))
            await results.put(("second", sid1, [x async for x in second]))
            # A stream that arrived while nobody waited: receive_stream(None) takes it.
            await until(lambda: peer.stats()["held"], 5, "a held stream")
            sid3, third = peer.receive_stream(None)
            await results.put(("third", sid3, [x async for x in third]))
            await peer.wait_closed()

        async with pair(handler) as (_, peer):
            a = await peer.send_stream(agen(5, "a"))
            b = await peer.send_stream(agen(5, "b"))
            got1 = await asyncio.wait_for(results.get(), 5)
            got2 = await asyncio.wait_for(results.get(), 5)
            assert got1 == ("first", a, [["a", i] for i in range(5)])
            assert got2 == ("second", b, [["b", i] for i in range(5)])
            c = await peer.send_stream(agen(3, "c"))
            assert await asyncio.wait_for(results.get(), 5) == ("third", c, [["c", i] for i in range(3)])

    run(main())


def test_many_streams_and_calls_multiplexed() -> None:
    router = stream_router()

    @router.method
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async def main() -> None:
        async with pair(router) as (_, peer):

            async def one_stream(k: int) -> None:
                n = 50 + k % 17 * 20
                got = [x async for x in peer.stream("ticks", n, k)]
                assert got == [[k, i] for i in range(n)]

            async def one_channel(k: int) -> None:
                got = [x async for x in peer.channel("echo", agen(40 + k), 3)]
                assert got == [3 * i for i in range(40 + k)]

            async def one_sent(k: int) -> None:
                sid = await peer.send_stream(agen(60 + k, k))
                assert await peer.call("consume", sid) == [[k, i] for i in range(60 + k)]

            async def one_received(k: int) -> None:
                sid = await peer.call("produce", 30 + k)
                _, s = peer.receive_stream(sid)
                assert [x async for x in s] == list(range(30 + k))

            jobs = []
            for k in range(120):
                jobs.append(one_stream(k))
                jobs.append(peer.call("add", k, k))
                if k % 4 == 0:
                    jobs.append(one_channel(k))
                    jobs.append(one_sent(k))
                    jobs.append(one_received(k))
            results = await asyncio.gather(*jobs)
            sums = [r for r in results if r is not None]
            assert sums == [2 * k for k in range(120)]
            await until(lambda: peer.streams.active_streams == 0, 5, "all streams forgotten")

    run(main(), timeout=30)


def test_sender_exception_reaches_receiver() -> None:
    async def failing(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise KeyError("gone")

    async def main() -> None:
        async with pair(stream_router()) as (server, peer):
            got: list[int] = []
            with pytest.raises(fastrpc.RemoteStreamError) as ei:
                async for x in peer.stream("fails_after", 5):
                    got.append(x)
            assert got == [0, 1, 2, 3, 4]
            assert ei.value.type_name == "ValueError" and ei.value.message == "failed after 5"
            assert isinstance(ei.value, fastrpc.RemoteError)
            # A stream sent with send_stream, server to client.
            sp = await server_peer(server)
            sid = await sp.send_stream(failing(3))
            _, s = peer.receive_stream(sid)
            got = []
            with pytest.raises(fastrpc.RemoteStreamError) as ei:
                async for x in s:
                    got.append(x)
            assert got == [0, 1, 2]
            assert ei.value.type_name == "KeyError" and ei.value.message == "'gone'"
            # And client to server.
            sid = await peer.send_stream(failing(2))
            with pytest.raises(fastrpc.RemoteError) as ei2:
                await peer.call("consume", sid)
            assert ei2.value.type_name == "RemoteStreamError"
            assert "gone" in ei2.value.message

    run(main())


# --------------------------------------------------------- early termination


def test_break_out_of_stream_cancels_the_sender() -> None:
    async def main() -> None:
        watch = Watch()
        async with pair(stream_router(watch)) as (server, peer):
            async for x in peer.stream("forever"):
                if x == 10:
                    break  # the stream is dropped here
            await asyncio.wait_for(watch.finished.wait(), 5)
            assert watch.cancelled
            sp = await server_peer(server)
            await until(lambda: not sp.stats()["peer.tasks"] and not sp.stats()["senders"], 5, "the server to stop")
            await until(lambda: peer.core.pending_calls == 0, 5, "the call's slot to be freed")
            assert [x async for x in peer.stream("ticks", 3)] == [0, 1, 2]

    run(main())


def test_aclose_cancels_the_sender() -> None:
    async def main() -> None:
        watch = Watch()
        async with pair(stream_router(watch)) as (server, peer):
            s = peer.stream("forever")
            assert await s.__anext__() == 0
            await s.aclose()
            assert s.closed
            with pytest.raises(StopAsyncIteration):
                await s.__anext__()
            await asyncio.wait_for(watch.finished.wait(), 5)
            assert watch.cancelled
            sp = await server_peer(server)
            await until(lambda: not sp.stats()["peer.tasks"] and not sp.stats()["senders"], 5, "the server to stop")
            await until(lambda: peer.core.pending_calls == 0, 5, "the call's slot to be freed")
            # async with does the same.
            watch2 = Watch()
            sp.register("forever2", lambda: watch2.forever())
            async with peer.stream("forever2") as s2:
                async for x in s2:
                    if x == 5:
                        break
            await asyncio.wait_for(watch2.finished.wait(), 5)

    run(main())


def test_close_receiving_stream_stops_the_sender() -> None:
    async def main() -> None:
        watch = Watch()
        async with pair(stream_router(watch)) as (server, peer):
            sid = await peer.call("produce_forever")
            _, s = peer.receive_stream(sid)
            seen = []
            async for x in s:
                seen.append(x)
                if len(seen) == 20:
                    peer.close_receiving_stream(sid)
            assert seen == list(range(20))
            await asyncio.wait_for(watch.finished.wait(), 5)
            assert watch.cancelled
            sp = await server_peer(server)
            await until(lambda: not sp.stats()["senders"], 5, "the server's sender to stop")
            # Unclaimed: closing it by id refuses it, too.
            watch2 = Watch()
            sp.register("produce2", lambda: sp.send_stream(watch2.forever()))
            sid2 = await peer.call("produce2")
            peer.close_receiving_stream(sid2)
            await asyncio.wait_for(watch2.finished.wait(), 5)
            await until(lambda: not sp.stats()["senders"], 5, "the server's sender to stop")
            await until(lambda: peer.streams.active_streams == 0, 5, "nothing left open")

    run(main())


def test_dropping_a_received_stream_stops_the_sender() -> None:
    async def main() -> None:
        async with pair(stream_router()) as (server, peer):
            sp = await server_peer(server)
            # receive_stream(id), not kept: break drops it.
            watch = Watch()
            sid = await sp.send_stream(watch.forever())
            async for x in peer.receive_stream(sid)[1]:
                if x == 5:
                    break
            await asyncio.wait_for(watch.finished.wait(), 5)
            # accept_stream(), likewise (server side).
            watch2 = Watch()
            await peer.send_stream(watch2.forever())

            async def accept_and_drop() -> None:
                async for x in (await sp.accept_stream())[1]:
                    if x == 5:
                        break

            await accept_and_drop()
            await asyncio.wait_for(watch2.finished.wait(), 5)
            await until(lambda: not sp.stats()["senders"] and not peer.stats()["senders"], 5, "senders to stop")

    run(main())


def test_close_receiving_stream_before_it_arrives() -> None:
    async def main() -> None:
        watch = Watch()

        async def handler(sp: fastrpc.RpcPeer) -> None:
            await sp.wait_closed()

        async with pair(handler) as (server, peer):
            sp = await server_peer(server)
            sid = peer.new_stream_id()
            sp.close_receiving_stream(sid)  # refused in advance
            await until(lambda: sid in sp.core.stats()["refused"], 5, "refusal")
            await peer.send_stream(watch.forever(), sid)
            await asyncio.wait_for(watch.finished.wait(), 5)
            await until(lambda: not peer.stats()["senders"], 5, "the client's sender to stop")

    run(main())


def test_abort_stream_stops_the_receiver() -> None:
    async def main() -> None:
        watch = Watch()
        async with pair(stream_router(watch)) as (server, peer):
            sp = await server_peer(server)
            sid = await sp.send_stream(watch.forever())
            _, s = peer.receive_stream(sid)
            seen = []
            with pytest.raises(fastrpc.StreamAborted):
                async for x in s:
                    seen.append(x)
                    if len(seen) == 10:
                        assert sp.abort_stream(sid)
            assert seen[:10] == list(range(10))
            await asyncio.wait_for(watch.finished.wait(), 5)
            assert watch.cancelled
            assert not sp.abort_stream(sid)  # already gone
            await until(lambda: not sp.stats()["senders"], 5, "the server's sender to stop")
            await until(lambda: peer.streams.active_streams == 0, 5, "nothing left open")
            # Client side abort: the server's consumer gets StreamAborted.
            watch2 = Watch()
            sid = await peer.send_stream(watch2.forever())
            result = asyncio.ensure_future(peer.call("consume", sid))
            await until(lambda: watch2.sent > 10, 5, "some items sent")
            assert peer.abort_stream(sid)
            with pytest.raises(fastrpc.RemoteError) as ei:
                await asyncio.wait_for(result, 5)
            assert ei.value.type_name == "StreamAborted"
            await asyncio.wait_for(watch2.finished.wait(), 5)

    run(main())


def test_sender_blocked_on_credit_is_stopped_by_close() -> None:
    # The receiver never reads: the sender is stalled on flow control when it is told
    # to stop; it must still stop and run its finally.
    async def main() -> None:
        watch = Watch()
        async with pair(stream_router(watch)) as (server, peer):
            sp = await server_peer(server)
            sid = await sp.send_stream(watch.forever(b"x" * 1000))
            _, s = peer.receive_stream(sid)
            await until(
                lambda: sp.streams.stats(sid) is not None and sp.streams.stats(sid).window <= FRAME_CHARGE + 1000,
                5,
                "credit exhausted",
            )
            await s.aclose()
            await asyncio.wait_for(watch.finished.wait(), 5)
            await until(lambda: not sp.stats()["senders"], 5, "the server's sender to stop")

    run(main())


# ------------------------------------------------------------------- channel


def test_bidirectional_channel() -> None:
    async def main() -> None:
        async with pair(stream_router()) as (server, peer):
            got = [x async for x in peer.channel("echo", agen(200), 2)]
            assert got == [2 * i for i in range(200)]
            # Interleaved: each answer is read before the next item is produced.
            q: asyncio.Queue[int] = asyncio.Queue()

            async def source() -> AsyncIterator[int]:
                for i in range(20):
                    yield i
                    assert await asyncio.wait_for(q.get(), 5) == 10 * i

            async for y in peer.channel("echo", source(), 10, priority=1):
                await q.put(y)
            # Server calls the client's channel method too.
            client_router_echo = stream_router()
            sp = await server_peer(server)
            peer.register("echo", client_router_echo.methods["echo"][0])
            assert [x async for x in sp.channel("echo", agen(5), 7)] == [0, 7, 14, 21, 28]

    run(main())


def test_channel_break_stops_both_directions() -> None:
    async def main() -> None:
        watch = Watch()
        async with pair(stream_router()) as (server, peer):
            async for y in peer.channel("echo", watch.forever(), 1):
                if y >= 10:
                    break
            await asyncio.wait_for(watch.finished.wait(), 5)
            sp = await server_peer(server)
            await until(lambda: not sp.stats()["peer.tasks"] and not peer.stats()["senders"], 5, "both sides to stop")

    run(main())


def test_channel_break_stops_a_source_that_waits() -> None:
    # The input's source waits (for a user, a queue) when the results loop is left:
    # its sender is stopped and the source closed at once, not when it next yields or
    # the connection closes (no STREAM_CLOSE comes for an input aborted with the call).
    async def main() -> None:
        finished = asyncio.Event()

        async def source() -> AsyncIterator[int]:
            try:
                yield 1
                await asyncio.Event().wait()
                yield 2
            finally:
                finished.set()

        async with pair(stream_router()) as (server, peer):
            async for y in peer.channel("echo", source(), 10):
                assert y == 10
                break
            await asyncio.wait_for(finished.wait(), 5)
            sp = await server_peer(server)
            await until(lambda: not sp.stats()["peer.tasks"] and not peer.stats()["senders"], 5, "both sides to stop")

    run(main())


# ----------------------------------------------------------------- timeouts


def test_a_streaming_calls_timeout_bounds_the_whole_call() -> None:
    # timeout= of peer.stream()/channel() bounds the call, its last item included: the
    # reader gets the items that came, then CallTimeout; the handler is cancelled.
    async def main() -> None:
        watch = Watch()
        async with pair(stream_router(watch)) as (server, peer):
            got: list[Any] = []
            t0 = time.monotonic()
            with pytest.raises(fastrpc.CallTimeout, match=r"'forever' did not finish within 0.3 s \(its timeout="):
                async for x in peer.stream("forever", timeout=0.3):
                    got.append(x)
                    await asyncio.sleep(0.01)
            assert 0.25 < time.monotonic() - t0 < 3 and got[:3] == [0, 1, 2]
            await asyncio.wait_for(watch.finished.wait(), 5)
            sp = await server_peer(server)
            await until(lambda: not sp.stats()["peer.tasks"], 5, "the server's handler to end")

            async def source() -> AsyncIterator[int]:
                yield 1
                await asyncio.Event().wait()  # the channel's input never ends

            with pytest.raises(fastrpc.CallTimeout):
                async for y in peer.channel("echo", source(), 10, timeout=0.2):
                    assert y == 10
            await until(lambda: not sp.stats()["peer.tasks"] and not peer.stats()["senders"], 5, "both sides to stop")
            # Within its timeout a call is untouched; the connection goes on.
            assert [x async for x in peer.stream("ticks", 3, timeout=5)] == [0, 1, 2]
            assert not peer.closed

    run(main())


def test_a_streaming_calls_deadline_is_enforced_by_the_handlers_side() -> None:
    # A caller that keeps reading past the deadline it sent (a raw one: fastrpc's own
    # gives up at its deadline too): the server cancels the handler and ends the
    # stream with TimeoutError, after the items it sent.
    async def main() -> None:
        watch = Watch()
        async with pair(stream_router(watch)) as (server, _):
            async with raw_client(server.url) as raw:
                raw.core.send_request("forever", raw.core_payload(()), stream=True, timeout=0.2)
                await raw.send(raw.core.next_message())
                frames: list[Any] = []
                while not any(f.type != F.STREAM_DATA and f.type != F.CREDIT for f in frames):
                    frames += await raw.recv_frames(5)
            end = [f for f in frames if f.type not in (F.STREAM_DATA, F.CREDIT)]
            assert [f.type for f in end] == [F.STREAM_ERROR]
            error = decode_error(end[0].payload)
            assert error.type_name == "TimeoutError"
            assert "'forever' did not finish within the caller's timeout of 0.2 s" in error.message
            assert sum(f.type == F.STREAM_DATA for f in frames) > 0
            await asyncio.wait_for(watch.finished.wait(), 5)
            assert watch.cancelled

    run(main())


# --------------------------------------------------------------- large items


def test_large_items_are_fragmented_and_arrive_intact() -> None:
    size = 5 << 20

    async def main() -> None:
        async with pair(stream_router()) as (server, peer):
            n = 0
            async for item in peer.stream("big", 3, size):
                assert type(item) is bytes and len(item) == size
                assert item == bytes([n]) * size
                n += 1
            assert n == 3

            async def up() -> AsyncIterator[bytes]:
                for i in range(3):
                    yield bytes([i]) * (size + i)

            assert [x async for x in peer.channel("sum_sizes", up())] == [[size, size + 1, size + 2]]
            # send_stream from the server.
            sp = await server_peer(server)

            async def mixed() -> AsyncIterator[Any]:
                yield b"\x07" * size
                yield {"small": 1}
                yield b"\x08" * (size // 2)

            sid = await sp.send_stream(mixed())
            _, s = peer.receive_stream(sid)
            got = [x async for x in s]
            assert got[0] == b"\x07" * size and got[1] == {"small": 1} and got[2] == b"\x08" * (size // 2)

    run(main(), timeout=30)


def test_a_paused_reader_of_large_items_holds_about_one_item_not_the_connection_budget() -> None:
    # Items larger than the window come in fragments, credited at once while the reader
    # waits for that item; a reader that stops reading holds one whole item and about a
    # window more, not items until max_connection_memory (32 MiB) closes the connection.
    size, n = 6 << 20, 12  # 72 MiB in all

    async def main() -> None:
        async with pair(stream_router()) as (_, peer):
            got = 0
            async with peer.stream("big", n, size) as s:
                async for item in s:
                    assert item == bytes([got]) * size
                    got += 1
                    if got == 1:
                        await asyncio.sleep(1.0)  # paused: the sender must stop too
                        held = peer.stats()["memory"]
                        assert held <= size + (4 << 20) + (1 << 20), held
                        assert not peer.closed
            assert got == n and not peer.closed

    run(main(), timeout=60)


def test_item_larger_than_max_item_size_fails_only_that_stream() -> None:
    # The sender refuses an item the receiver would not take (issue 12): the
    # PayloadTooLarge is raised in the sending generator, that stream fails, and the
    # connection stays up.
    seen: list[BaseException] = []

    async def main() -> None:
        async with pair(stream_router(), server_opts={"max_item_size": 1 << 20}) as (_, peer):
            with pytest.raises(fastrpc.RemoteStreamError, match="max_item_size of 1048576 bytes"):
                async for _ in peer.channel("sum_sizes", agen_bytes(2 << 20)):
                    pass
            assert [type(e) for e in seen] == [fastrpc.PayloadTooLarge]
            assert [x async for x in peer.stream("big", 2, 10)] == [b"\x00" * 10, b"\x01" * 10]
            assert not peer.closed

    async def agen_bytes(size: int) -> AsyncIterator[bytes]:
        try:
            yield b"z" * size
        except fastrpc.PayloadTooLarge as e:
            seen.append(e)
            raise

    run(main())


# ---------------------------------------------------------------- backpressure


def test_stalled_consumer_stalls_only_its_stream() -> None:
    window = 64 << 10
    item = 1000

    async def main() -> None:
        watch = Watch()
        opts = {"streams": fastrpc.StreamManager(initial_window=window)}
        async with pair(stream_router(watch), client_opts=opts) as (server, peer):
            sp = await server_peer(server)
            sid = await sp.send_stream(watch.forever(b"s" * item))
            _, stalled = peer.receive_stream(sid)  # claimed, never read (for now)

            def full() -> bool:
                st = peer.streams.stats(sid, outgoing=False)
                return st is not None and st.buffered >= window - 2 * (item + FRAME_CHARGE + 16)

            await until(full, 5, "the stalled stream's window to fill")
            sent_at_full = watch.sent
            # The other streams on the connection keep flowing, in full.
            for _ in range(3):
                assert [x async for x in peer.stream("ticks", 2000)] == list(range(2000))
            sid2 = await peer.call("produce", 3000)
            _, other = peer.receive_stream(sid2)
            assert [x async for x in other] == list(range(3000))
            # Meanwhile the stalled stream stayed within its window.
            st = peer.streams.stats(sid, outgoing=False)
            assert st is not None and st.buffered <= window, st
            assert len(peer.core.incoming(sid).items) * (item + FRAME_CHARGE) <= window
            out = sp.streams.stats(sid)
            assert out is not None and out.window <= item + FRAME_CHARGE, out
            # Its sender stalled: at most the items that still fitted when it filled.
            assert watch.sent - sent_at_full <= 3, (watch.sent, sent_at_full)
            # Reading again resumes it, in order.
            n = 0
            async for x in stalled:
                assert x == b"s" * item
                n += 1
                if n == 500:
                    break
            await stalled.aclose()
            await asyncio.wait_for(watch.finished.wait(), 5)

    run(main(), timeout=20)


def test_max_buffered_amount_makes_senders_wait() -> None:
    limit = 32 << 10
    item = 2000
    n_streams = 6
    count = 600

    async def main() -> None:
        manager = fastrpc.StreamManager(max_buffered_amount=limit, initial_window=4 << 20)
        async with pair(
            stream_router(),
            client_opts={"streams": manager},
            server_opts={"streams": fastrpc.StreamManager(initial_window=4 << 20)},
        ) as (server, peer):
            observed: list[int] = []
            stop = False

            async def monitor() -> None:
                while not stop:
                    observed.append(peer.streams.buffered_amount)
                    await asyncio.sleep(0)

            async def fast(k: int) -> AsyncIterator[bytes]:
                for _ in range(count):
                    observed.append(peer.streams.buffered_amount)
                    yield bytes([k]) * item

            mon = asyncio.ensure_future(monitor())
            sids = [await peer.send_stream(fast(k)) for k in range(n_streams)]
            results = await asyncio.gather(*(peer.call("consume_summary", sid) for sid in sids))
            stop = True
            await mon
            for k, got in enumerate(results):
                assert got == [count, [bytes([k]) * item]]
            # Without the limit, each stream could queue stream_buffer_size (64 KiB).
            slack = n_streams * (item + FRAME_CHARGE + 16) + (64 << 10)  # + transport buffer
            assert max(observed) <= limit + slack, (max(observed), limit + slack)

    run(main(), timeout=20)


def test_channel_handler_that_stops_early() -> None:
    router = fastrpc.Router()

    @router.method
    async def first_only(items: fastrpc.ReceiveStream[Any]) -> AsyncIterator[Any]:
        async for x in items:
            yield ["first", x]
            break

    @router.method
    async def ignore_input(items: fastrpc.ReceiveStream[Any]) -> AsyncIterator[Any]:
        yield "done"

    @router.method
    async def fail_at_once(items: fastrpc.ReceiveStream[Any]) -> AsyncIterator[Any]:
        raise RuntimeError("no")
        yield  # pragma: no cover

    async def main() -> None:
        async with pair(router) as (server, peer):
            sp = await server_peer(server)
            for _ in range(5):
                w = Watch()
                assert [x async for x in peer.channel("first_only", w.forever())] == [["first", 0]]
                await asyncio.wait_for(w.finished.wait(), 5)
                w = Watch()
                assert [x async for x in peer.channel("ignore_input", w.forever())] == ["done"]
                await asyncio.wait_for(w.finished.wait(), 5)
                w = Watch()
                with pytest.raises(fastrpc.RemoteError) as ei:
                    async for _ in peer.channel("fail_at_once", w.forever()):
                        pass
                assert ei.value.type_name == "RuntimeError"
                await asyncio.wait_for(w.finished.wait(), 5)
                await assert_idle(peer, sp)

    run(main())


def test_channel_handler_done_before_its_input_arrives() -> None:
    # The handler finishes before the caller's first input item was even sent: the
    # caller's sender is told to stop, and no stream slot is granted by mistake.
    router = fastrpc.Router()

    @router.method
    async def ignore_input(items: fastrpc.ReceiveStream[Any]) -> AsyncIterator[Any]:
        yield "done"

    async def main() -> None:
        async with pair(router) as (server, peer):
            sp = await server_peer(server)
            for late in (False, True):
                go, finished = asyncio.Event(), asyncio.Event()

                async def slow_source() -> AsyncIterator[int]:
                    try:
                        await go.wait()
                        for i in range(5):
                            yield i
                    finally:
                        finished.set()

                assert [x async for x in peer.channel("ignore_input", slow_source())] == ["done"]
                if late:
                    go.set()  # items sent after the call ended are dropped
                await asyncio.wait_for(finished.wait(), 5)
                await assert_idle(peer, sp)

    run(main())


def test_cancel_channel_before_the_handler_started() -> None:
    router = stream_router()

    async def main() -> None:
        async with pair(router) as (server, peer):
            sp = await server_peer(server)
            for _ in range(5):
                w = Watch()
                s = peer.channel("echo", w.forever(), 1)
                nxt = asyncio.ensure_future(s.__anext__())
                await asyncio.sleep(0)
                nxt.cancel()
                await s.aclose()
                with pytest.raises(asyncio.CancelledError):
                    await nxt
                await assert_idle(peer, sp)
            assert [x async for x in peer.channel("echo", agen(3), 2)] == [0, 2, 4]

    run(main())


def test_messages_held_while_one_is_sliced_keep_their_bytes() -> None:
    """A message of more frames than FRAMES_PER_SLICE is processed in slices; the
    messages of the same read are held meanwhile. They arrived as views of the read
    buffer, which later reads overwrite: held, they must be copies (every item checked,
    in order, on several streams at once)."""
    router = fastrpc.Router()

    @router.method
    async def tagged(tag: int, n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield bytes([tag]) + i.to_bytes(3, "big")  # small: a message has several slices' worth

    async def main() -> None:
        async with pair(router) as (server, peer), fastrpc.connect(server.url) as other:
            # Two clients in this process: each one's reads reuse the read buffer while
            # the other holds messages.

            async def read(client: fastrpc.RpcPeer, tag: int, n: int) -> None:
                got = 0
                async for item in client.stream("tagged", tag, n):
                    assert item == bytes([tag]) + got.to_bytes(3, "big")
                    got += 1
                assert got == n

            n = 8 * fastrpc.options.FRAMES_PER_SLICE
            readers = [read(client, tag, n) for client in (peer, other) for tag in range(4)]
            await asyncio.wait_for(asyncio.gather(*readers), 30)

    run(main(), 40)


_ITEMS_SERVER = """
import asyncio, uvloop, fastrpc
router = fastrpc.Router()
@router.method
async def items(n: int, size: int):
    item = bytes(range(256)) * (size // 256)
    for _ in range(n):
        yield item
async def main():
    server = await fastrpc.serve(router, "127.0.0.1", 0).start()
    print("port", server.port, flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def test_large_items_from_a_server_process_to_a_reader_that_pauses() -> None:
    """64 KiB items from a server in another process to a reader that now and then
    blocks or sleeps: every item arrives, whatever the timing (a sender waiting for
    its stream to drain was once never woken: the flush in _wait_writable sent at once
    and woke it before it waited)."""
    pytest.importorskip("uvloop")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _ITEMS_SERVER], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("port "), line
        url = f"ws://127.0.0.1:{int(line.split()[1])}"
        item = bytes(range(256)) * 256
        rnd = random.Random(1)

        async def main() -> None:
            async with fastrpc.connect(url) as peer:
                for _ in range(30):
                    n = rnd.choice([16, 100, 500, 2000])
                    mode = rnd.choice(["reads", "blocks", "sleeps"])
                    got = 0
                    async for x in peer.stream("items", n, len(item)):
                        assert x == item
                        got += 1
                        if mode == "blocks" and rnd.random() < 0.5:
                            time.sleep(0.0001)
                        elif mode == "sleeps" and rnd.random() < 0.02:
                            await asyncio.sleep(0.005)
                    assert got == n

        run(main(), 60)
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
