"""Trust and correctness of the call path (handlers.py, calltable.py, api.py,
arguments.py, router.py): notifications whose arguments do not decode, notifications
to streaming methods, an awaitable a sync handler returns cancelled before it ran, a
channel call refused for the cost of its arguments. Real connections over 127.0.0.1,
raw frames where a fastrpc client would not send them (each test bounded by ``run``'s
timeout)."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from _util import leftovers, pair, raw_client, run, server_peer, until

import fastrpc
import fastrpc.log
from fastrpc import frames as F


@pytest.fixture(autouse=True)
def fresh_warning_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a fresh rate limit for peer-caused warnings."""
    monkeypatch.setattr(fastrpc.log, "_windows", {})


def server_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fastrpc.server" and r.levelno == level]


def _frame(ftype: int, flags: int, fid: int, payload: bytes = b"") -> bytes:
    return F.encode_frame(ftype, flags, fid, payload)


def _head(method: str) -> bytes:
    m = method.encode()
    return F.encode_varint(len(m)) + m


def trust_router() -> fastrpc.Router:
    r = fastrpc.Router()

    @r.method
    def echo(x: Any) -> Any:
        return x

    @r.method
    def add(a: int, b: int) -> int:
        return a + b

    @r.method
    async def ticks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @r.method
    def later() -> Any:  # a sync handler answering with an awaitable
        return asyncio.sleep(30)

    @r.method
    async def relay(items: AsyncIterator[Any], *rest: Any) -> AsyncIterator[Any]:
        async for x in items:
            yield x

    return r


def test_notifications_whose_arguments_do_not_decode_are_not_logged_as_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Malformed arguments, too deeply nested ones: the sender's mistake, which it can
    repeat at will; a rate-limited WARNING without traceback (docs/security.md), as for
    arguments that do not fit, never an ERROR with a traceback each."""

    async def main() -> None:
        async with fastrpc.serve(trust_router(), "127.0.0.1", 0, keepalive_interval=None) as server:
            async with raw_client(server.url) as c:
                caplog.clear()
                bad = [b"\xc1", b"\x91" * 5000 + b"\xc0"]  # malformed; nested past msgspec's depth
                for _ in range(30):
                    for args in bad:
                        await c.send(_frame(F.NOTIFY, 0, 0, _head("echo") + args))  # untyped
                        await c.send(_frame(F.NOTIFY, 0, 0, _head("add") + args))  # typed
                # A barrier: the notifications before it were handled.
                await c.send(_frame(F.REQUEST, 0, 1, _head("add") + msgspec.msgpack.encode([1, 2])))
                (answer,) = await c.recv_frames()
                assert answer.type == F.RESPONSE
                errors = server_records(caplog, logging.ERROR)
                assert errors == [], [r.getMessage() for r in errors]
                warned = server_records(caplog, logging.WARNING)
                assert 1 <= len(warned) <= fastrpc.log.WARNINGS_PER_SECOND + 1
                assert all(rec.exc_info is None for rec in warned)
                assert "invalid arguments" in warned[0].getMessage()

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main())


def test_a_notification_to_a_streaming_method_is_refused_not_awaited(caplog: pytest.LogCaptureFixture) -> None:
    """An async generator is not awaitable: a notification to a streaming method is
    the sender's mistake (a rate-limited WARNING naming it), never an ERROR with a
    TypeError's traceback for each one."""

    async def main() -> None:
        async with pair(trust_router()) as (_, peer):
            caplog.clear()
            for _ in range(30):
                peer.notify("ticks", 3)
            assert await peer.call("add", 1, 2) == 3  # a barrier
            await asyncio.sleep(0)  # a task started for a notification runs its first step
            assert await peer.call("add", 1, 2) == 3
            errors = server_records(caplog, logging.ERROR)
            assert errors == [], [r.getMessage() for r in errors]
            warned = server_records(caplog, logging.WARNING)
            assert 1 <= len(warned) <= fastrpc.log.WARNINGS_PER_SECOND + 1
            assert all(rec.exc_info is None for rec in warned)
            assert "streaming method" in warned[0].getMessage()

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main())


def test_an_awaitable_of_a_sync_handler_cancelled_before_it_ran_is_closed() -> None:
    """CANCEL in the message of its REQUEST: the call is answered CancelledError, and
    the coroutine the sync handler returned, never awaited, is closed (no 'coroutine
    ... was never awaited' RuntimeWarning)."""

    async def main() -> None:
        async with fastrpc.serve(trust_router(), "127.0.0.1", 0, keepalive_interval=None) as server:
            async with raw_client(server.url) as c:
                sp = await server_peer(server)
                await c.send(_frame(F.REQUEST, 0, 1, _head("later") + b"\x90") + _frame(F.CANCEL, 0, 1))
                (answer,) = await c.recv_frames()
                assert answer.type == F.ERROR
                assert b"CancelledError" in bytes(answer.payload)
                await until(lambda: not leftovers(sp), what="the call's end on the server")

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run(main())
        gc.collect()
    never = [str(w.message) for w in seen if "never awaited" in str(w.message)]
    assert never == []


def test_a_channel_refused_for_its_arguments_refuses_its_input_too() -> None:
    """A channel call whose arguments would cost more than max_connection_memory is
    answered PayloadTooLarge by the call table; its input stream is refused too
    (STREAM_CLOSE): the caller's sender stops and the callee holds none of its items,
    no stream slot, nothing (docs/protocol.md: the connection stays up)."""

    async def main() -> None:
        async with pair(trust_router(), server_opts={"max_connection_memory": 1 << 20}) as (server, peer):
            sp = await server_peer(server)

            async def items() -> AsyncIterator[bytes]:
                for _ in range(1000):
                    yield b"x" * 1000

            stream = peer.channel("relay", items(), *([[]] * 30000))  # ~56 bytes a byte decoded
            with pytest.raises(fastrpc.RemoteError) as err:
                async for _ in stream:
                    pass
            assert err.value.type_name == "PayloadTooLarge"
            assert "max_connection_memory" in err.value.message
            await until(lambda: not leftovers(sp) and not leftovers(peer), what="both sides idle")
            assert sp.stats()["memory"] == 0
            assert await peer.call("add", 1, 2) == 3  # the connection is up

    run(main())
