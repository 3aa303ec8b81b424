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
from collections.abc import AsyncIterator

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
            yield b"late"
        finally:
            self.ended.set()


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


def test_a_session_reset_does_not_wait_forever_for_a_stream_source_that_ignores_its_cancellation(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's session cannot be resumed while one of its streams' source swallows
    its cancellation: the reset waits for that sender at most SENDER_STOP_TIMEOUT (a
    WARNING naming it), the new session starts, and once the abandoned source gives
    an item and ends, nothing of it reaches the new session, whose first stream has
    the old stream's id: the server reads that stream's own items only, and its
    sender is still tracked."""
    from _proxy import proxy

    monkeypatch.setattr(fastrpc.streams, "SENDER_STOP_TIMEOUT", STOP, raising=False)
    src = Stubborn()
    more = asyncio.Event()

    async def fresh() -> AsyncIterator[bytes]:
        yield b"new-1"
        await more.wait()
        yield b"new-2"

    retry = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05)

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, resume=True, session_grace=0.1, **QUIET) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=retry, **QUIET) as peer:
                    try:
                        sp = await server_peer(server)
                        sid = await peer.send_stream(src.source())
                        _, stream = sp.receive_stream(sid)
                        assert await asyncio.wait_for(stream.__anext__(), 5) == b"first"
                        await asyncio.wait_for(src.waiting.wait(), 5)
                        old_core = peer.core
                        px.refusing = True
                        px.cut()
                        await until(lambda: not server.peers, 5, "the session to expire")
                        px.refusing = False
                        t0 = time.monotonic()
                        await until(lambda: peer.connected and peer.core is not old_core, STOP + 2, "a new session")
                        await until(lambda: server.peers, 5, "the server's new peer")
                        # (The reset is over once the manager takes streams again.)
                        await until(lambda: peer.streams._closed is None, STOP + 2, "the reset's end")
                        assert time.monotonic() - t0 < STOP + 1
                        assert src.cancelled.is_set()
                        sp2 = await server_peer(server)
                        sid2 = await peer.send_stream(fresh())
                        assert sid2 == sid  # the new session's ids start again
                        _, stream2 = sp2.receive_stream(sid2)
                        assert await asyncio.wait_for(stream2.__anext__(), 5) == b"new-1"
                    finally:
                        src.release.set()
                    await asyncio.wait_for(src.ended.wait(), 5)
                    await asyncio.sleep(0.05)  # (whatever the abandoned sender does next)
                    assert peer.stats()["senders"] == [sid2]  # (its end did not untrack the new one)
                    more.set()
                    rest = [item async for item in stream2]
                    assert rest == [b"new-2"], rest  # (no b"late")
        warned = [m for m in _warnings(caplog) if "did not stop" in m]
        assert len(warned) == 1, _warnings(caplog)
        assert f"stream {sid}" in warned[0], warned[0]
        assert _errors(caplog) == []

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 20)
