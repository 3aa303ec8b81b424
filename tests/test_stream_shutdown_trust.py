"""A stream source that ignores its cancellation cannot hold a connection's close (or
a client's session reset) open: :meth:`StreamManager.shutdown` waits for the senders
it cancelled at most ``streams.SENDER_STOP_TIMEOUT``, then gives up on those still
running (a WARNING naming each), and nothing such a sender does later reaches the
connection (closed) or the session after it (its ids are the new session's).
Real connections over 127.0.0.1 (each test bounded by ``run``'s timeout)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import pytest
from _util import QUIET, run, server_peer, until

import fastrpc
import fastrpc.streams

STOP = 0.2  # SENDER_STOP_TIMEOUT in these tests


class Stubborn:
    """A stream source that yields one item, then swallows every cancellation (and
    any closing of it) until ``release`` is set: then it yields ``b"late"`` and
    ends. ``waiting`` is set once it waits, ``cancelled`` at its first cancellation,
    ``ended`` once it is over (however it ends)."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.ended = asyncio.Event()

    async def source(self) -> AsyncIterator[bytes]:
        try:
            yield b"first"
            self.waiting.set()
            while not self.release.is_set():
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    self.cancelled.set()  # ... and runs on
            self.released()
            yield b"late"
        finally:
            self.ended.set()

    def released(self) -> None:
        """(Subclasses) what the source does once released, before its last yield."""


class BoundStubborn(Stubborn):
    """A Stubborn source bound to its stream (``bind_stream``, as a topic subscription
    is): once released it puts ``b"late-now"`` on the stream through the stream's
    ``send_now`` it was given (``taken``: what each such call took)."""

    def __init__(self) -> None:
        super().__init__()
        self.outlet: Callable[[list[Any]], int] | None = None
        self.taken: list[int] = []

    def bind_stream(self, send_now: Callable[[list[Any]], int]) -> None:
        self.outlet = send_now

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.source()

    def released(self) -> None:
        assert self.outlet is not None
        self.taken.append(self.outlet([b"late-now"]))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("fastrpc") and r.levelno == logging.WARNING]


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("side", ["client", "server"])
def test_closing_does_not_wait_forever_for_a_stream_source_that_ignores_its_cancellation(
    side: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The side sending a stream closes its connection while the stream's source
    swallows its CancelledError: the close waits for that sender at most
    SENDER_STOP_TIMEOUT, then goes on, and says so (one WARNING naming the stream and
    its source). What the source gives once released goes nowhere, quietly."""
    monkeypatch.setattr(fastrpc.streams, "SENDER_STOP_TIMEOUT", STOP, raising=False)
    src = Stubborn()

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as client:
                sp = await server_peer(server)
                sender, receiver = (client, sp) if side == "client" else (sp, client)
                try:
                    sid = await sender.send_stream(src.source())
                    _, stream = receiver.receive_stream(sid)
                    assert await asyncio.wait_for(stream.__anext__(), 5) == b"first"
                    await asyncio.wait_for(src.waiting.wait(), 5)
                    t0 = time.monotonic()
                    await asyncio.wait_for(sender.close(), STOP + 2)
                    took = time.monotonic() - t0
                    assert took < STOP + 1, took
                    assert src.cancelled.is_set()
                    assert sender.stats()["senders"] == []
                finally:
                    src.release.set()  # (even when the close timed out: the test ends)
                await asyncio.wait_for(src.ended.wait(), 5)
                await asyncio.sleep(0.05)  # (whatever the abandoned sender does next)
        warned = [m for m in _warnings(caplog) if "did not stop" in m]
        assert len(warned) == 1, _warnings(caplog)
        assert f"stream {sid}" in warned[0] and "source" in warned[0], warned[0]
        assert "SENDER_STOP_TIMEOUT" in warned[0], warned[0]
        assert _errors(caplog) == []

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 15)


def _nothing() -> None:
    pass


async def _a_reset_gives_up_on(
    src: Stubborn,
    source: AsyncIterable[bytes],
    wait: float,
    *,
    reset_within: float | None = None,
    in_the_new_session: Callable[[], None] = _nothing,
    once_it_ended: Callable[[], None] = _nothing,
) -> Any:
    """A client streams ``source`` (``src``'s) to a server that resumes sessions,
    through a proxy, which cuts the connection and refuses it until the session
    expires: the client's new session resets the old one, giving up on ``src``'s
    sender (if ``reset_within`` is given, in less than that many seconds since the
    client could connect again). The new session's first stream has the old stream's
    id and gives its first item (then ``in_the_new_session`` runs). Once ``src`` is
    released and has ended (then ``once_it_ended`` runs), the new stream's sender is
    still tracked and the server reads that stream's own items only. Each wait is
    bounded by ``wait`` seconds (the reset's by STOP + 2). Returns the old stream's
    id."""
    from _proxy import proxy

    more = asyncio.Event()

    async def fresh() -> AsyncIterator[bytes]:
        yield b"new-1"
        await more.wait()
        yield b"new-2"

    retry = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05)
    async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, resume=True, session_grace=0.1, **QUIET) as server:
        async with proxy(server.port) as px:
            async with fastrpc.connect(px.url, reconnect=retry, **QUIET) as peer:
                try:
                    sp = await server_peer(server)
                    sid = await peer.send_stream(source)
                    _, stream = sp.receive_stream(sid)
                    assert await asyncio.wait_for(stream.__anext__(), wait) == b"first"
                    await asyncio.wait_for(src.waiting.wait(), wait)
                    old_core = peer.core
                    px.refusing = True
                    px.cut()
                    await until(lambda: not server.peers, wait, "the session to expire")
                    px.refusing = False
                    t0 = time.monotonic()
                    await until(lambda: peer.connected and peer.core is not old_core, STOP + 2, "a new session")
                    await until(lambda: server.peers, wait, "the server's new peer")
                    # (The reset is over once the manager takes streams again.)
                    await until(lambda: peer.streams._closed is None, STOP + 2, "the reset's end")
                    if reset_within is not None:
                        assert time.monotonic() - t0 < reset_within
                    assert src.cancelled.is_set()
                    sp2 = await server_peer(server)
                    sid2 = await peer.send_stream(fresh())
                    assert sid2 == sid  # the new session's ids start again
                    _, stream2 = sp2.receive_stream(sid2)
                    assert await asyncio.wait_for(stream2.__anext__(), wait) == b"new-1"
                    in_the_new_session()
                finally:
                    src.release.set()  # (even when a step failed: the test ends)
                await asyncio.wait_for(src.ended.wait(), wait)
                once_it_ended()
                await asyncio.sleep(0.05)  # (whatever the abandoned sender does next)
                assert peer.stats()["senders"] == [sid2]  # (its end did not untrack the new one)
                more.set()
                rest = [item async for item in stream2]
                assert rest == [b"new-2"], rest  # (nothing of the old source's: no b"late")
    return sid


def test_a_session_reset_does_not_wait_forever_for_a_stream_source_that_ignores_its_cancellation(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's session cannot be resumed while one of its streams' source swallows
    its cancellation: the reset waits for that sender at most SENDER_STOP_TIMEOUT (a
    WARNING naming it), the new session starts, and once the abandoned source gives
    an item and ends, nothing of it reaches the new session, whose first stream has
    the old stream's id: the server reads that stream's own items only, and its
    sender is still tracked."""
    monkeypatch.setattr(fastrpc.streams, "SENDER_STOP_TIMEOUT", STOP, raising=False)
    src = Stubborn()

    async def main() -> None:
        sid = await _a_reset_gives_up_on(src, src.source(), 5, reset_within=STOP + 1)
        warned = [m for m in _warnings(caplog) if "did not stop" in m]
        assert len(warned) == 1, _warnings(caplog)
        assert f"stream {sid}" in warned[0], warned[0]
        assert _errors(caplog) == []

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 20)


def test_a_given_up_bound_source_cannot_send_now_on_the_new_sessions_stream(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source bound to its stream (``bind_stream``: it puts items on it at once with
    the stream's ``send_now``, as a topic subscription does) swallows its cancellation
    and is given up on by a session reset. Once released, its ``send_now``, called from
    its given-up sender or from any other task (a topic's fan-out calls it from the
    publisher's), takes nothing: the new session's first stream, which has the old
    stream's id, gets its own items only (no b"stale", no b"late-now", no b"late")."""
    monkeypatch.setattr(fastrpc.streams, "SENDER_STOP_TIMEOUT", STOP, raising=False)
    src = BoundStubborn()

    def in_the_new_session() -> None:
        assert src.outlet is not None
        assert src.outlet([b"stale"]) == 0  # (from another task than its sender's)

    def once_it_ended() -> None:
        assert src.taken == [0]  # (from its given-up sender's task)

    async def main() -> None:
        await _a_reset_gives_up_on(src, src, 2, in_the_new_session=in_the_new_session, once_it_ended=once_it_ended)
        warned = [m for m in _warnings(caplog) if "did not stop" in m]
        assert len(warned) == 1, _warnings(caplog)
        assert _errors(caplog) == []

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 5)


class Keeper:
    """A source bound to its stream that keeps the stream's ``send_now`` after its
    stream ended (an object that outlives its stream)."""

    def __init__(self, *items: bytes) -> None:
        self.items = items
        self.outlet: Callable[[list[Any]], int] | None = None

    def bind_stream(self, send_now: Callable[[list[Any]], int]) -> None:
        self.outlet = send_now

    async def _items(self) -> AsyncIterator[bytes]:
        for item in self.items:
            yield item

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._items()


@pytest.mark.parametrize("side", ["client", "server"])
def test_send_now_of_a_finished_sender_does_not_reach_a_later_stream_of_its_id(side: str) -> None:
    """A stream's ``send_now``, kept by its source after the stream ended, takes
    nothing: not onto a later stream of the same id (a named stream sent again), nor
    after the connection closed."""

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as client:
                sp = await server_peer(server)
                sender, receiver = (client, sp) if side == "client" else (sp, client)
                old = Keeper(b"a", b"b")
                await sender.send_stream(old, "feed")
                _, stream = receiver.receive_stream("feed")
                assert [x async for x in stream] == [b"a", b"b"]
                await until(lambda: sender.stats()["senders"] == [], 2, "the first sender's end")
                go = asyncio.Event()

                async def fresh() -> AsyncIterator[bytes]:
                    await go.wait()
                    yield b"new"

                await sender.send_stream(fresh(), "feed")  # the same wire id, again
                _, stream2 = receiver.receive_stream("feed")
                assert old.outlet is not None
                assert old.outlet([b"stale"]) == 0
                go.set()
                assert [x async for x in stream2] == [b"new"]
                await sender.close()
                assert old.outlet([b"closed"]) == 0

    run(main(), 5)
