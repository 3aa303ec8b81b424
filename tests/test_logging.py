"""Logging (issue 12): fastrpc.server / fastrpc.client / fastrpc.protocol, no handlers
installed; a handler's exception at ERROR once with its traceback, the method and the
peer's address; unknown notifications at WARNING; connections at INFO/DEBUG; broken
limits at WARNING naming the option. Real connections over 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from _util import NO_PROXY, QUIET, pair, raw_client, run, until
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import fastrpc
import fastrpc.log
from fastrpc import frames as F


def failing_router() -> fastrpc.Router:
    r = fastrpc.Router()

    @r.method
    def sync_boom(x):  # type: ignore[no-untyped-def]
        raise ValueError(f"sync boom {x}")

    @r.method
    async def async_boom(x):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        raise KeyError(x)

    @r.method
    async def stream_boom(n):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield i
        raise RuntimeError("stream boom")

    @r.method
    async def note_boom():  # type: ignore[no-untyped-def]
        raise LookupError("note boom")

    @r.method
    def ok(x):  # type: ignore[no-untyped-def]
        return x

    return r


@pytest.fixture(autouse=True)
def fresh_warning_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a fresh rate limit for peer-caused warnings (other test
    modules may have used up this second's)."""
    monkeypatch.setattr(fastrpc.log, "_windows", {})


def records(caplog: pytest.LogCaptureFixture, name: str, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name and (level is None or r.levelno == level)]


def test_loggers_exist_without_handlers() -> None:
    for name in ("fastrpc.server", "fastrpc.client", "fastrpc.protocol"):
        assert logging.getLogger(name).handlers == []


def test_handler_exceptions_are_logged_once_with_traceback_method_and_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastrpc")

    async def main() -> None:
        async with pair(failing_router()) as (_, peer):
            local = peer.transport.get_extra_info("sockname")  # type: ignore[union-attr]
            for method in ("sync_boom", "async_boom"):
                with pytest.raises(fastrpc.RemoteError):
                    await peer.call(method, 7)
            with pytest.raises(fastrpc.RemoteStreamError):
                async for _ in peer.stream("stream_boom", 2):
                    pass
            peer.notify("note_boom")
            await until(lambda: len(records(caplog, "fastrpc.server", logging.ERROR)) >= 4)
            assert await peer.call("ok", 1) == 1
        errors = records(caplog, "fastrpc.server", logging.ERROR)
        assert len(errors) == 4, [r.getMessage() for r in errors]
        for rec, method, exc_type in zip(
            errors,
            ("sync_boom", "async_boom", "stream_boom", "note_boom"),
            (ValueError, KeyError, RuntimeError, LookupError),
        ):
            text = rec.getMessage()
            assert repr(method) in text and str(local) in text, text
            assert rec.exc_info is not None and rec.exc_info[0] is exc_type
        assert "notification handler for 'note_boom'" in errors[3].getMessage()
        # Nothing is logged twice (not by asyncio either).
        assert not records(caplog, "asyncio")

    run(main())


def test_refused_arguments_are_not_handler_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fastrpc")

    async def main() -> None:
        async with pair(failing_router()) as (_, peer):
            with pytest.raises(fastrpc.InvalidArguments):
                await peer.call("ok", 1, 2)
        assert not records(caplog, "fastrpc.server", logging.ERROR)
        assert any("invalid arguments" in r.getMessage() for r in records(caplog, "fastrpc.server", logging.DEBUG))

    run(main())


def test_unknown_notification_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fastrpc")

    async def main() -> None:
        async with pair(failing_router()) as (_, peer):
            peer.notify("nobody_home", 1)
            await until(lambda: records(caplog, "fastrpc.server", logging.WARNING))
        (rec,) = records(caplog, "fastrpc.server", logging.WARNING)
        assert "notification to unknown method 'nobody_home'" in rec.getMessage()

    run(main())


def test_connections_open_and_close_at_info_and_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fastrpc")

    async def main() -> None:
        async with fastrpc.serve(failing_router(), **QUIET) as server:
            url = server.url
            async with fastrpc.connect(url + "/rpc", **QUIET) as peer:
                assert await peer.call("ok", 1) == 1
                await until(lambda: server.peers)
                (sp,) = server.peers
                address = sp.remote_address
            await until(lambda: not server.peers)
        infos = [r.getMessage() for r in records(caplog, "fastrpc.server", logging.INFO)]
        assert f"connection from {address} opened (/rpc)" in infos
        assert any(m.startswith(f"connection from {address} closed") for m in infos), infos
        debug = [r.getMessage() for r in records(caplog, "fastrpc.client", logging.DEBUG)]
        assert any(m.startswith(f"connected to {url}/rpc") for m in debug), debug
        assert any(m.startswith(f"connection to {url}/rpc closed") for m in debug), debug

    run(main())


def test_a_broken_limit_is_a_warning_naming_the_option(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fastrpc")

    async def main() -> None:
        r = fastrpc.Router()

        @r.method
        async def hold() -> None:
            await asyncio.sleep(10)

        async with fastrpc.serve(r, max_pending_calls=2, **QUIET) as server:
            async with raw_client(server.url) as client:
                head = F.encode_varint(4) + b"hold" + client.core_payload(())
                frames = [(F.REQUEST, 0, cid, head) for cid in (1, 3, 5)]
                await client.send(F.encode_batch(frames))
                code, _ = await client.drain()
                assert code == 1008
        (rec,) = records(caplog, "fastrpc.protocol", logging.WARNING)
        assert "too many pending calls (our max_pending_calls is 2)" in rec.getMessage()

    run(main())


def test_notification_handler_failure_does_not_log_asyncio_noise(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[Any] = []

    async def main() -> None:
        r = fastrpc.Router()

        @r.method
        def note(x):  # type: ignore[no-untyped-def]
            seen.append(x)
            raise ValueError("sync note")

        async with pair(r) as (_, peer):
            peer.notify("note", 5)
            await until(lambda: seen)
            await peer.ping()
        (rec,) = records(caplog, "fastrpc.server", logging.ERROR)
        assert "notification handler for 'note'" in rec.getMessage()

    run(main())


def test_a_silent_client_is_a_warning_naming_handshake_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), handshake_timeout=0.2, **QUIET) as server:
            async with ws_connect(server.url, **NO_PROXY) as ws:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
        (rec,) = records(caplog, "fastrpc.protocol", logging.WARNING)
        assert "no handshake within 0.2 s (handshake_timeout)" in rec.getMessage()

    run(main())


def test_server_url_brackets_an_ipv6_host() -> None:
    async def main() -> None:
        async with fastrpc.serve(failing_router(), "::1", **QUIET) as server:
            assert server.url.startswith("ws://[::1]:")
            async with fastrpc.connect(server.url, **QUIET) as peer:
                assert await peer.call("ok", 2) == 2

    run(main())


def test_peer_caused_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with pair(failing_router()) as (_, peer):
            for i in range(50):
                peer.notify(f"nobody_{i}")
            await peer.ping()
        warnings = records(caplog, "fastrpc.server", logging.WARNING)
        assert 1 <= len(warnings) <= fastrpc.log.WARNINGS_PER_SECOND + 1, len(warnings)

    run(main())
