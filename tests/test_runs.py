"""Small stream items in runs: a sender loop gathers the small bytes items its source
yields and queues them in one step (``Connection.send_items``), and ``async for``
takes the items that have arrived in one step (``Connection.read_items``). Nothing a
user sees changes: the items, their order, when each leaves, the errors, the bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _util import pair, run, server_peer, until

import fastrpc
from fastrpc import frames as F
from fastrpc import options as O
from fastrpc.calls import FLAG_RAW
from fastrpc.outbound import OutboundStreams
from fastrpc.protocol import FRAME_CHARGE, Connection, Role
from fastrpc.settings import Settings

SMALL = b"0123456789abcdef"


def _count(monkeypatch: pytest.MonkeyPatch, cls: Any, name: str) -> list[int]:
    """Calls of ``cls.name`` (bound by a core made after this), counted in a list."""
    calls: list[int] = []
    real = getattr(cls, name)

    def counted(self: Any, *args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(self, *args, **kw)

    monkeypatch.setattr(cls, name, counted)
    return calls


def _router(**sources: Any) -> fastrpc.Router:
    router = fastrpc.Router()
    for name, fn in sources.items():
        router.method(name)(fn)
    return router


def _runs_past_the_credit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that find less credit when they are queued than they saw at their start,
    as when another stream used the connection's credit in between: room_for_run
    reports room past the stream's credit, so a run leaves a tail."""
    real = Connection.room_for_run

    def past_the_credit(self: Connection, sid: int, cap: int) -> tuple[int, int]:
        room, item_max = real(self, sid, cap)
        return (cap, item_max) if room else (0, 0)

    monkeypatch.setattr(Connection, "room_for_run", past_the_credit)


def _small_window() -> dict[str, Any]:
    """A client's options: a stream window of 1 KiB (the server's credit)."""
    return {"streams": fastrpc.StreamManager(initial_window=1024)}


def test_small_items_cross_in_runs_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    one = _count(monkeypatch, OutboundStreams, "send_item")
    runs = _count(monkeypatch, OutboundStreams, "send_items")
    reads = _count(monkeypatch, Connection, "read_items")
    single = _count(monkeypatch, Connection, "read_item")

    async def items(n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield SMALL + i.to_bytes(4, "big")

    async def main() -> None:
        async with pair(_router(items=items)) as (_, peer):
            got = [x async for x in peer.stream("items", 5000)]
            assert got == [SMALL + i.to_bytes(4, "big") for i in range(5000)]

    run(main())
    # 5,000 items, ~150 to a run (SEND_RUN_BYTES of charges): the first item goes
    # alone (it opens the stream), a few more when the credit ran out.
    assert 5000 // 200 <= len(runs) < 5000 // 20, len(runs)
    assert len(one) < 50, len(one)
    assert len(reads) < 5000 // 10 and len(single) < 5000 // 10, (len(reads), len(single))


@pytest.mark.parametrize("compression", [False, True])
def test_runs_keep_every_item_its_order_and_type(compression: bool) -> None:
    mixed: list[Any] = []
    for i in range(600):
        k = i % 9
        mixed.append(
            b""
            if k == 0
            else SMALL
            if k in (1, 2, 3)
            else i
            if k == 4
            else f"s{i}"
            if k == 5
            else bytes([i % 256]) * O.SEND_RUN_ITEM
            if k == 6
            else bytes([i % 256]) * (O.SEND_RUN_ITEM + 1)
            if k == 7
            else b"z" * 5000  # compressed when compression is on
        )

    async def items() -> AsyncIterator[Any]:
        for x in mixed:
            yield x

    async def main() -> None:
        opts = {"compression": "zlib"} if compression else {}
        async with pair(_router(items=items), server_opts=opts, client_opts=opts) as (_, peer):
            got = [x async for x in peer.stream("items")]
            assert got == mixed
            assert [type(x) for x in got] == [type(x) for x in mixed]

    run(main())


def test_an_item_leaves_before_its_source_yields_the_next() -> None:
    # The source waits, after each item, for the client to have received it: an item
    # kept back until the next one (or the end) would never arrive.
    received = asyncio.Event()

    async def lockstep(n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            received.clear()
            yield SMALL + bytes([i])
            await received.wait()

    async def main() -> None:
        async with pair(_router(lockstep=lockstep)) as (_, peer):
            got = []
            async for x in peer.stream("lockstep", 30):
                got.append(x)
                received.set()
            assert got == [SMALL + bytes([i]) for i in range(30)]

    run(main(), timeout=20)


def test_a_run_the_credit_cannot_take_whole_goes_as_credit_comes() -> None:
    # Core level: a run past the stream's credit is accepted whole; what the credit
    # does not take waits as the stream's tail and goes, in order, as credit comes.
    c = Connection(Role.CLIENT, Settings())
    s = Connection(Role.SERVER, Settings(initial_stream_window=1024))
    s.receive_message(c.next_message())
    c.receive_message(s.next_message())
    sid = c.open_stream()
    assert c.room_for_run(sid, 1 << 20) == (0, 0)  # its first frame (OPEN) goes alone
    assert c.send_item(sid, b"first", raw=True)
    room, item_max = c.room_for_run(sid, 1 << 20)
    assert room == 1024 - len(b"first") - FRAME_CHARGE and item_max >= O.SEND_RUN_ITEM
    assert c.room_for_run(sid, 100) == (100, item_max)
    run_ = [bytes([i]) * 40 for i in range(60)]  # 60 x 72 bytes of charges: past 1,024
    assert c.send_items(sid, list(run_)) is False  # (the list is the stream's now)
    assert c.room_for_run(sid, 1 << 20) == (0, 0)  # a tail: no run until it is gone
    with pytest.raises(RuntimeError, match="still being sent"):
        c.send_item(sid, b"next", raw=True)
    got: list[bytes] = []
    for _ in range(20):
        msg = c.next_message()
        if msg is None:
            break
        s.receive_message(msg)
        while (item := s.read_item(sid)) is not None:  # read: the credit goes back
            assert item[1] is True  # raw, as send_item(raw=True) sends it
            got.append(bytes(item[0]))
        reply = s.next_message()
        if reply is not None:
            c.receive_message(reply)
        c.writable(sid)  # (what a waiting sender calls when credit comes)
    assert got == [b"first", *run_]
    assert c.writable(sid) and c.room_for_run(sid, 1 << 20)[0] > 0


def test_send_items_refuses_what_send_item_refuses() -> None:
    c = Connection(Role.CLIENT, Settings())
    s = Connection(Role.SERVER, Settings())
    s.receive_message(c.next_message())
    c.receive_message(s.next_message())
    sid = c.open_stream()
    with pytest.raises(RuntimeError):
        c.send_items(sid, [SMALL])  # its OPEN frame is still to go: send_item's
    c.send_item(sid, SMALL, raw=True)
    c.end_stream(sid)
    with pytest.raises(fastrpc.StreamClosed):
        c.send_items(sid, [SMALL])
    frames = F.decode_message(c.next_message(), 1 << 20)
    assert [(f.type, f.flags & FLAG_RAW) for f in frames] == [(F.STREAM_DATA, FLAG_RAW), (F.STREAM_END, 0)]


def test_runs_of_streams_that_share_a_small_connection_window() -> None:
    # Two streams whose sources wait between bursts share a connection window of a
    # few runs: a run gathered while its source waited may find the connection's credit
    # taken by the other stream's, and go as credit comes. Every item arrives, in order.
    async def bursts(tag: int, n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield bytes([tag]) + i.to_bytes(3, "big") + SMALL
            if i % 37 == 0:
                await asyncio.sleep(0)

    async def main() -> None:
        small = {"connection_window": 4096}
        async with pair(_router(bursts=bursts), server_opts=small, client_opts=small) as (_, peer):

            async def read(tag: int) -> list[bytes]:
                return [x async for x in peer.stream("bursts", tag, 3000)]

            a, b = await asyncio.gather(read(1), read(2))
            assert a == [bytes([1]) + i.to_bytes(3, "big") + SMALL for i in range(3000)]
            assert b == [bytes([2]) + i.to_bytes(3, "big") + SMALL for i in range(3000)]

    run(main(), timeout=30)


def test_items_before_the_source_fails_arrive_before_its_error() -> None:
    async def failing(n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield SMALL + bytes([i])
        raise ValueError("source broke")

    async def main() -> None:
        async with pair(_router(failing=failing)) as (_, peer):
            got = []
            with pytest.raises(fastrpc.RemoteStreamError, match="source broke"):
                async for x in peer.stream("failing", 100):
                    got.append(x)
            assert got == [SMALL + bytes([i]) for i in range(100)]

    run(main())


def test_a_tail_left_as_the_source_fails_arrives_before_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A run can find less credit when it is queued than it saw when it started: a
    # source that sends on other streams between its items uses the connection's
    # credit. (Simulated: room_for_run reports room past the stream's window.) What the
    # credit does not take waits as the stream's tail; a source that fails right then
    # must not have it dropped by its STREAM_ERROR: it goes first, then the error.
    _runs_past_the_credit(monkeypatch)
    tails: list[int] = []  # the length of each tail a run left
    send_items = OutboundStreams.send_items

    def noting_tails(self: OutboundStreams, sid: int, payloads: list[bytes]) -> bool:
        ok = send_items(self, sid, payloads)
        tail = self.streams[sid].tail
        if tail is not None:
            tails.append(len(tail))
        return ok

    monkeypatch.setattr(OutboundStreams, "send_items", noting_tails)

    async def failing(n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield SMALL + i.to_bytes(2, "big")
        raise ValueError("source broke")

    async def main() -> None:
        async with pair(_router(failing=failing), client_opts=_small_window()) as (_, peer):
            got = []
            # 100 items: one run (past the first, which goes alone), still open when
            # the source fails, and more than a 1 KiB window takes.
            with pytest.raises(fastrpc.RemoteStreamError, match="source broke"):
                async for x in peer.stream("failing", 100):
                    got.append(x)
            assert got == [SMALL + i.to_bytes(2, "big") for i in range(100)]
            assert tails and tails[0] > 50, tails  # the run did leave a tail

    run(main(), timeout=20)


@pytest.mark.parametrize("then", ["fails", "waits"])
def test_a_sender_waiting_for_a_tail_can_be_cancelled(monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    # A source gives a run that leaves a tail, then fails (its sender waits for the
    # tail to go before the error) or waits (flush_runs queued the run; the tail goes
    # as credit comes). The client reads one item and drops the stream: the server's
    # sender is cancelled while the tail waits for credit that never comes, and must
    # abort the stream and end, not wait on. Neither side keeps the call or the stream.
    _runs_past_the_credit(monkeypatch)
    reached = asyncio.Event()

    async def source(n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield SMALL + i.to_bytes(2, "big")
        reached.set()
        if then == "fails":
            raise ValueError("source broke")
        await asyncio.sleep(3600)

    async def main() -> None:
        async with pair(_router(source=source), client_opts=_small_window()) as (server, peer):
            s = peer.stream("source", 100)
            assert await s.__anext__() == SMALL + bytes(2)
            await asyncio.wait_for(reached.wait(), 5)
            sp = await server_peer(server)
            if then == "waits":
                await until(lambda: bool(sp.streams._tails), 5, "the run queued by flush_runs to leave a tail")
            await s.aclose()
            await until(lambda: not sp.stats()["peer.tasks"], 5, "the server's handler to end")
            # (pair then checks that neither side tracks the call or the stream)

    run(main(), timeout=20)


def test_a_run_read_holds_at_most_read_run_bytes_past_the_stream() -> None:
    async def held(n: int, size: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield bytes([i % 256]) * size

    async def main() -> None:
        async with pair(_router(held=held)) as (_, peer):
            # 700-byte items: READ_RUN_BYTES (8 KiB) takes 11; 16-byte ones:
            # READ_RUN_ITEMS (128) takes 128.
            for n, size in ((300, 700), (400, 16)):
                s = peer.stream("held", n, size)
                got = [await s.__anext__()]
                await until(lambda: s.stats() is None or s.stats().items == n, 5.0, "every item")
                got += s.get_many_nowait(len(s._ready or ()))  # the first run's rest
                got.append(await s.__anext__())  # takes a run of what has arrived
                rest = s.get_many_nowait(n)  # that run's rest, before the core's
                want = min(O.READ_RUN_ITEMS, O.READ_RUN_BYTES // size)
                assert 1 + len(rest) == want, (size, 1 + len(rest))
                got += rest
                got += [x async for x in s]
                assert got == [bytes([i % 256]) * size for i in range(n)]

    run(main())


def test_closing_a_stream_drops_the_run_it_took() -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield SMALL
            await asyncio.sleep(0)

    async def main() -> None:
        async with pair(_router(endless=endless)) as (_, peer):
            s = peer.stream("endless")
            assert await s.__anext__() == SMALL
            await until(lambda: s.get_many_nowait(1), 5.0, "a run")
            s.close()
            assert s.get_nowait(None) is None and s.get_many_nowait() == []
            with pytest.raises(StopAsyncIteration):
                await s.__anext__()

    run(main())


def test_a_sender_cancelled_once_a_drain_woke_it_leaves_the_others_their_runs() -> None:
    # A sender waiting for the buffer to drain is woken (its turn: the others let it in
    # first) and cancelled before it runs: the stream aborted in the same loop pass. The
    # connection's other streams must still gather their items in runs, many to a
    # message; a wake left counted made every later item go alone, one loop pass and
    # one message each, for the rest of the connection.
    limit = 4 << 10
    n = 1000

    async def consume(sid: int) -> int:
        _, stream = fastrpc.current_peer().receive_stream(sid)
        got = 0
        try:
            async for _ in stream:
                got += 1
        except fastrpc.StreamAborted:
            pass
        return got

    async def big() -> AsyncIterator[bytes]:
        while True:  # each item past the limit: the sender waits for a drain after it
            yield b"x" * (2 * limit)

    async def small() -> AsyncIterator[bytes]:
        for i in range(n):
            yield SMALL + i.to_bytes(4, "big")

    async def main() -> None:
        opts = {"streams": fastrpc.StreamManager(max_buffered_amount=limit)}
        async with pair(_router(consume=consume), client_opts=opts) as (_, peer):
            manager = peer.streams
            drained = manager.on_drained
            victim: list[int] = []

            def on_drained() -> None:
                # The drain that wakes the victim (the only sender) aborts it before
                # its task runs (the wake is counted in _woken until it does).
                drained()
                if victim and manager._woken:
                    assert manager.abort_stream(victim.pop())

            manager.on_drained = on_drained  # type: ignore[method-assign]
            sid = await peer.send_stream(big())
            victim.append(sid)
            assert await asyncio.wait_for(peer.call("consume", sid), 5) >= 1
            assert not victim, "the victim was not woken by a drain"
            await until(lambda: not manager.tracked()["senders"], 5.0, "the victim's end")

            before = peer.core.traffic.messages_out
            sid = await peer.send_stream(small())
            assert await asyncio.wait_for(peer.call("consume", sid), 5) == n
            sent = peer.core.traffic.messages_out - before
            # In runs: a few messages for the 1,000 items (one per drain of the 4 KiB
            # limit at most); alone: one message per item.
            assert sent < n // 10, f"{sent} messages for {n} small items"

    run(main(), timeout=20)
