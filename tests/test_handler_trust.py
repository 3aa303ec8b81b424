"""Trust and correctness of running handlers (handlers.py): a notification refused by
``authorize`` is logged as a refused call is, the bound on running notification
handlers, a caller's deadline counted from its call's receipt, and a handler that
ignores its cancellation cannot hold a connection's close (or a session reset) open.
Real connections over 127.0.0.1, raw frames where a fastrpc client would not send them
(each test bounded by ``run``'s timeout)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
import pytest
from _util import pair, raw_client, run, server_peer, until

import fastrpc
import fastrpc.handlers
import fastrpc.log
from fastrpc import frames as F


@pytest.fixture(autouse=True)
def fresh_warning_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a fresh rate limit for peer-caused warnings."""
    monkeypatch.setattr(fastrpc.log, "_windows", {})


def _records(caplog: pytest.LogCaptureFixture, name: str, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name and r.levelno == level]


def _frame(ftype: int, flags: int, fid: int, payload: bytes = b"") -> bytes:
    return F.encode_frame(ftype, flags, fid, payload)


def _head(method: str) -> bytes:
    m = method.encode()
    return F.encode_varint(len(m)) + m


def _args(*args: Any) -> bytes:
    return msgspec.msgpack.encode(list(args))


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


# ---------------------------------------------------------------- 1. authorize


def test_a_notification_refused_by_authorize_is_a_rate_limited_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A refused notification has no answer: the log is its only trace, a WARNING as
    for a refused call (docs/security.md), rate-limited so that a hostile peer
    cannot flood the log; the handler never runs."""
    ran: list[Any] = []
    router = fastrpc.Router()

    @router.method(authorize=lambda peer, method: False)
    def secret(x: int) -> None:
        ran.append(x)

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    async def main() -> None:
        async with pair(router) as (_, peer):
            caplog.clear()
            for i in range(50):
                peer.notify("secret", i)
            assert await peer.call("add", 1, 2) == 3  # a barrier: the notifications were handled
            warned = _records(caplog, "fastrpc.server", logging.WARNING)
            assert 1 <= len(warned) <= fastrpc.log.WARNINGS_PER_SECOND + 1, [r.getMessage() for r in warned]
            assert all(r.exc_info is None for r in warned)
            first = warned[0].getMessage()
            assert "notification" in first and "'secret'" in first and "authorize" in first, first
            assert _records(caplog, "fastrpc.server", logging.ERROR) == []
            assert ran == []

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 10)


# ---------------------------------------------------------- 2. notification bound


def test_running_notification_handlers_are_bounded_by_max_pending_calls() -> None:
    """Async notification handlers running at once are bounded (max_pending_calls of
    them, as documented, besides the calls): one more closes that connection with
    LIMIT_EXCEEDED / 1008, the reason naming the option; the server's other
    connections go on."""
    limit = 8
    router = fastrpc.Router()

    @router.method
    async def hang() -> None:
        await _forever()

    @router.method
    async def slow_call() -> None:
        await _forever()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    async def main() -> None:
        opts = {"keepalive_interval": None, "ws_ping_interval": None, "max_pending_calls": limit}
        async with fastrpc.serve(router, "127.0.0.1", 0, **opts) as server:
            async with raw_client(server.url) as c:
                sp = await server_peer(server)
                async with fastrpc.connect(server.url, keepalive_interval=None, ws_ping_interval=None) as other:
                    # As many calls as the limit, and as many notification handlers: allowed.
                    msg = b"".join(_frame(F.REQUEST, 0, 2 * i + 1, _head("slow_call") + b"\x90") for i in range(limit))
                    msg += b"".join(_frame(F.NOTIFY, 0, 0, _head("hang") + b"\x90") for _ in range(limit))
                    await c.send(msg)
                    stats = sp.stats
                    await until(
                        lambda: len(stats()["peer.tasks"]) == limit and stats()["notify_tasks"] == limit,
                        5,
                        "the handlers to run",
                    )
                    assert not sp.closed
                    # One notification handler more: the connection is closed.
                    await c.send(_frame(F.NOTIFY, 0, 0, _head("hang") + b"\x90"))
                    code, reason = await c.drain(5)
                    assert code == 1008, (code, reason)
                    assert "max_pending_calls" in reason, reason
                    await until(lambda: sp.closed, 5, "the connection's end")
                    assert await asyncio.wait_for(other.call("add", 1, 2), 5) == 3

    run(main(), 15)


# -------------------------------------------------------------- 3. deadlines


def test_a_deadline_counts_from_the_calls_receipt_not_from_when_its_handler_first_ran() -> None:
    """A caller's deadline (DEADLINE flag) is the time the handler has from when the
    call arrived: time the handler's task waited to start (here, behind a slow sync
    handler in the same message) counts against it."""
    router = fastrpc.Router()

    @router.method
    async def slow() -> str:
        await asyncio.sleep(0.25)
        return "done"

    @router.method
    def block() -> None:
        time.sleep(0.25)  # holds the loop: slow's task cannot start meanwhile

    async def main() -> None:
        async with fastrpc.serve(router, "127.0.0.1", 0, keepalive_interval=None) as server:
            async with raw_client(server.url) as c:
                deadline = F.encode_varint(300)  # ms
                msg = _frame(F.REQUEST, F.FLAG_DEADLINE, 1, deadline + _head("slow") + b"\x90")
                msg += _frame(F.REQUEST, 0, 3, _head("block") + b"\x90")
                await c.send(msg)
                answers: dict[int, F.Frame] = {}
                while len(answers) < 2:
                    for f in await c.recv_frames(5):
                        answers[f.id] = f
                assert answers[3].type == F.RESPONSE
                # Received at 0, started at ~0.25 s, would finish at ~0.5 s: past 0.3 s.
                assert answers[1].type == F.ERROR, bytes(answers[1].payload)
                assert b"TimeoutError" in bytes(answers[1].payload)

    run(main(), 10)


# ------------------------------------------------- 4. handlers ignoring cancel


STUBBORN = 1.0  # seconds a stubborn handler runs on after its first cancellation


async def _stubborn(started: asyncio.Event) -> None:
    """A handler that swallows its cancellation and keeps running: for STUBBORN
    seconds after its first one (bounded, so that a test that hangs on it ends)."""
    started.set()
    loop = asyncio.get_running_loop()
    until_t: float | None = None
    while until_t is None or loop.time() < until_t:
        try:
            await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            if until_t is None:
                until_t = loop.time() + STUBBORN


@pytest.mark.parametrize("kind", ["call", "notify"])
def test_closing_does_not_wait_forever_for_a_handler_that_ignores_its_cancellation(
    kind: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler swallows CancelledError: the connection's close waits for it at
    most HANDLER_STOP_TIMEOUT, then goes on, and says so (a WARNING naming the
    method)."""
    monkeypatch.setattr(fastrpc.handlers, "HANDLER_STOP_TIMEOUT", 0.2, raising=False)
    started = asyncio.Event()
    done: list[asyncio.Task[Any]] = []
    router = fastrpc.Router()

    @router.method
    async def stubborn() -> None:
        done.append(asyncio.current_task())  # type: ignore[arg-type]
        await _stubborn(started)

    async def main() -> None:
        async with fastrpc.serve(router, "127.0.0.1", 0, keepalive_interval=None, ws_ping_interval=None) as server:
            async with fastrpc.connect(server.url, keepalive_interval=None, ws_ping_interval=None) as peer:
                if kind == "call":
                    pending = asyncio.ensure_future(peer.call("stubborn"))
                else:
                    peer.notify("stubborn")
                await asyncio.wait_for(started.wait(), 5)
                sp = await server_peer(server)
                t0 = time.monotonic()
                await asyncio.wait_for(sp.close(), 5)
                assert time.monotonic() - t0 < 0.7  # (STUBBORN when the close waits for the handler)
                if kind == "call":
                    with pytest.raises(fastrpc.ConnectionClosed):
                        await asyncio.wait_for(pending, 5)
        warned = [r.getMessage() for r in _records(caplog, "fastrpc.server", logging.WARNING)]
        assert any("stubborn" in m and "did not stop" in m for m in warned), warned
        await asyncio.wait_for(asyncio.gather(*done, return_exceptions=True), 5)  # (for run's check)

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 10)


def test_a_session_reset_does_not_wait_forever_for_a_handler_that_ignores_its_cancellation(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's session cannot be resumed while the server's call to one of its
    handlers runs, and that handler swallows its cancellation: the reset waits for it
    at most HANDLER_STOP_TIMEOUT (a WARNING naming it), the new session starts, and
    what the abandoned handler answers once it ends goes nowhere (the new session's
    first call from the server has the old call's id)."""
    from _proxy import proxy

    monkeypatch.setattr(fastrpc.handlers, "HANDLER_STOP_TIMEOUT", 0.2, raising=False)
    started = asyncio.Event()
    done: list[asyncio.Task[Any]] = []
    peers: list[Any] = []
    server_router = fastrpc.Router()

    @server_router.method
    def hello() -> int:
        peers.append(fastrpc.current_peer())
        return len(peers)

    async def stubborn() -> str:
        done.append(asyncio.current_task())  # type: ignore[arg-type]
        await _stubborn(started)
        return "late"

    async def slow_echo(x: Any) -> Any:
        await asyncio.sleep(STUBBORN)  # still running when the abandoned handler ends
        return x

    quiet = {"keepalive_interval": None, "ws_ping_interval": None}
    retry = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05)

    async def main() -> None:
        async with fastrpc.serve(server_router, "127.0.0.1", 0, resume=True, session_grace=0.1, **quiet) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=retry, **quiet) as peer:
                    peer.register("stubborn", stubborn)
                    peer.register("slow_echo", slow_echo)
                    assert await peer.call("hello") == 1
                    pending = asyncio.ensure_future(peers[0].call("stubborn"))
                    await asyncio.wait_for(started.wait(), 5)
                    old_core = peer.core
                    px.refusing = True
                    px.cut()
                    await until(lambda: not server.peers, 5, "the session to expire")
                    with pytest.raises(fastrpc.ConnectionClosed):
                        await asyncio.wait_for(pending, 5)
                    px.refusing = False
                    t0 = time.monotonic()
                    await until(lambda: peer.connected and peer.core is not old_core, 5, "a new session")
                    assert time.monotonic() - t0 < 0.7  # (STUBBORN when the reset waits for the handler)
                    assert await asyncio.wait_for(peer.call("hello"), 5) == 2
                    # The new session's first call from the server: the old call's id.
                    assert await asyncio.wait_for(peers[1].call("slow_echo", "mine"), 5) == "mine"
                    assert done[0].done()  # (it ended meanwhile: its "late" went nowhere)
                    assert await asyncio.wait_for(peers[1].call("slow_echo", "again"), 5) == "again"

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 15)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("fastrpc")]
    assert len(warned) == 1 and "'stubborn'" in warned[0] and "did not stop" in warned[0], warned
