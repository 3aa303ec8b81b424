"""Two shutdown paths that could fail a peer quietly:

* JSON mode's close waits for the tasks it cancelled (request handlers, stream
  senders) at most ``handlers.HANDLER_STOP_TIMEOUT`` / ``streams.SENDER_STOP_TIMEOUT``,
  as the binary protocol's close does: a handler or a stream source that swallows
  its CancelledError cannot hold the close open (a WARNING names what was given up
  on), and nothing it does later reaches the closed connection.
* A binary client that stops reading is closed for it (1008, output_stall_timeout)
  with the same sequence under ``fastrpc.asgi`` (uvicorn) as under ``serve``: the
  GOAWAY saying why, then the close frame.

Real connections over 127.0.0.1 and a real uvicorn; each test bounds its own time
(``run``'s timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _util import NO_PROXY, QUIET, run, until, uvicorn_send_waits

import fastrpc
import fastrpc.asgi
import fastrpc.handlers
import fastrpc.streams
from fastrpc.exceptions import ErrorCode

# ------------------------------------------ JSON mode: code that will not stop

STOP = 0.2  # HANDLER_STOP_TIMEOUT and SENDER_STOP_TIMEOUT in these tests


class Stubborn:
    """Code that swallows every cancellation until ``release`` is set: a request
    handler (:meth:`handler`, then returns "late") or a stream source
    (:meth:`source`: one item, then, once released, ``"late"``). ``waiting`` is set
    once it waits, ``cancelled`` at its first cancellation, ``ended`` once it is
    over (however it ends)."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.ended = asyncio.Event()

    async def _hold(self) -> None:
        self.waiting.set()
        while not self.release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.cancelled.set()  # ... and runs on

    async def handler(self) -> str:
        try:
            await self._hold()
            return "late"
        finally:
            self.ended.set()

    async def source(self) -> AsyncIterator[str]:
        try:
            yield "first"
            await self._hold()
            yield "late"
        finally:
            self.ended.set()


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@contextlib.asynccontextmanager
async def _json_pair() -> AsyncIterator[tuple[Any, Any]]:
    """A server on 127.0.0.1 and a JSON-mode client: ``(server's JsonPeer, client)``."""
    async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, **QUIET) as server:
        async with fastrpc.connect(server.url, protocol="json", **QUIET, **NO_PROXY) as client:
            sp = await until(lambda: next(iter(server.json_peers.values()), None), 5, "the server's JSON peer")
            yield sp, client


@pytest.mark.parametrize("side", ["server", "client"])
def test_json_close_does_not_wait_forever_for_a_handler_that_ignores_its_cancellation(
    side: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The side running a request's handler closes its JSON connection while the
    handler swallows its CancelledError: the close waits for it at most
    HANDLER_STOP_TIMEOUT, then goes on, and says so (one WARNING naming the method).
    The caller's request fails with ConnectionClosed; the handler's late answer,
    once it is released, goes nowhere, quietly."""
    monkeypatch.setattr(fastrpc.handlers, "HANDLER_STOP_TIMEOUT", STOP, raising=False)
    code = Stubborn()

    async def main() -> None:
        async with _json_pair() as (sp, client):
            callee, caller = (sp, client) if side == "server" else (client, sp)
            callee.register("stubborn", code.handler)
            pending = asyncio.ensure_future(caller.call("stubborn"))
            try:
                await asyncio.wait_for(code.waiting.wait(), 5)
                t0 = time.monotonic()
                await asyncio.wait_for(callee.close(), STOP + 2)
                took = time.monotonic() - t0
                assert took < STOP + 1, took
                assert code.cancelled.is_set() and not code.ended.is_set()
                with pytest.raises(fastrpc.ConnectionClosed):
                    await asyncio.wait_for(pending, 5)
            finally:
                code.release.set()  # (even when the close timed out: the test ends)
                pending.cancel()
            await asyncio.wait_for(code.ended.wait(), 5)
            await asyncio.sleep(0.05)  # (the abandoned handler's answer, refused)
        warned = [m for m in _records(caplog, logging.WARNING) if "did not stop" in m]
        assert len(warned) == 1, _records(caplog, logging.WARNING)
        assert "handler for 'stubborn'" in warned[0] and "HANDLER_STOP_TIMEOUT" in warned[0], warned[0]
        assert _records(caplog, logging.ERROR) == []

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 15)


@pytest.mark.parametrize("side", ["server", "client"])
def test_json_close_does_not_wait_forever_for_a_stream_source_that_ignores_its_cancellation(
    side: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The side sending a stream closes its JSON connection while the stream's
    source swallows its CancelledError: the close waits for that sender at most
    SENDER_STOP_TIMEOUT, then goes on, and says so (one WARNING naming the stream and
    its source). The reader's stream fails with ConnectionClosed; what the source
    gives once released goes nowhere, quietly, and the sender is no longer tracked."""
    monkeypatch.setattr(fastrpc.streams, "SENDER_STOP_TIMEOUT", STOP, raising=False)
    src = Stubborn()

    async def main() -> None:
        async with _json_pair() as (sp, client):
            sender, receiver = (sp, client) if side == "server" else (client, sp)
            try:
                sid = await sender.send_stream(src.source())
                _, stream = receiver.receive_stream(sid)
                assert await asyncio.wait_for(stream.__anext__(), 5) == "first"
                await asyncio.wait_for(src.waiting.wait(), 5)
                t0 = time.monotonic()
                await asyncio.wait_for(sender.close(), STOP + 2)
                took = time.monotonic() - t0
                assert took < STOP + 1, took
                assert src.cancelled.is_set() and not src.ended.is_set()
                assert sid not in sender._senders
                with pytest.raises(fastrpc.ConnectionClosed):
                    await asyncio.wait_for(stream.__anext__(), 5)
            finally:
                src.release.set()  # (even when the close timed out: the test ends)
            await asyncio.wait_for(src.ended.wait(), 5)
            await asyncio.sleep(0.05)  # (whatever the abandoned sender does next)
        warned = [m for m in _records(caplog, logging.WARNING) if "did not stop" in m]
        assert len(warned) == 1, _records(caplog, logging.WARNING)
        assert f"stream {sid!r}" in warned[0] and "Stubborn.source" in warned[0], warned[0]
        assert "SENDER_STOP_TIMEOUT" in warned[0], warned[0]
        assert _records(caplog, logging.ERROR) == []

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 15)


# ------------------------------------------------- a client that stops reading

READ_LATER = 1.5  # seconds between the server's close for not reading and our reading


@contextlib.asynccontextmanager
async def _server(kind: str, router: fastrpc.Router, **options: Any) -> AsyncIterator[str]:
    """``router`` served on 127.0.0.1 by ``serve`` or by uvicorn through
    ``fastrpc.asgi``; yields the URL."""
    if kind == "serve":
        async with fastrpc.serve(router, "127.0.0.1", 0, **QUIET, **options) as server:
            yield server.url
        return
    import uvicorn

    config = uvicorn.Config(
        fastrpc.asgi.app(router, keepalive_interval=None, **options), host="127.0.0.1", port=0,
        log_level="critical", lifespan="on", ws="websockets-sansio", ws_ping_interval=None,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), 10, "uvicorn to start")
        assert not task.done(), task.exception()
        yield f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("kind", ["serve", pytest.param("asgi", marks=pytest.mark.external)])
def test_a_client_that_does_not_read_gets_the_goaway_before_the_close(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A binary client sends echo calls and reads none of the answers: the server
    closes it for not reading (output_stall_timeout). Once the client reads again it
    finds, last, the GOAWAY (LIMIT_EXCEEDED, the reason naming the option), then the
    close frame (1008, the same reason cut to 120 characters): under fastrpc.asgi as
    under serve, where the GOAWAY goes into the socket's buffer at once, ahead of the
    close frame, however full that buffer is."""
    if kind == "asgi":
        pytest.importorskip("uvicorn")
        if not uvicorn_send_waits():
            pytest.skip("this uvicorn's send never waits for a client that does not read (docs/json-mode.md)")
    from _hostile import Attacker, request

    router = fastrpc.Router()

    @router.method
    def echo(blob: bytes) -> bytes:
        return blob

    blob = bytes(256 << 10)

    def stalled() -> bool:
        return any("output_stall_timeout" in r.getMessage() for r in caplog.records)

    async def main() -> None:
        async with _server(kind, router, output_stall_timeout=0.5) as url:
            a = await Attacker.open(url, reading=False)
            try:
                cid = 1
                # Echo calls until the server stops reading us (once it closes, it
                # reads and drops what we send: stop then).
                while a.sent < 64 and not stalled():
                    msg = b"".join(request(cid + 2 * i, "echo", blob, 0x40) for i in range(12))
                    cid += 24
                    if not await a.send(msg, timeout=1):
                        break
                await until(stalled, 5, "the close for not reading")
                # The client reads again a while later: past the second the closing
                # side gives the GOAWAY alone (Transport.fail), well within the
                # close's patience (10 s: no keepalive_timeout here).
                await asyncio.sleep(READ_LATER)
                outcome = await a.outcome(5)  # read now: what waited, then the close
            finally:
                await a.abort()
        assert outcome.code == 1008 and "(output_stall_" in outcome.reason, outcome
        assert outcome.goaway is not None, f"no GOAWAY before the close frame ({kind}): {outcome}"
        code, reason = outcome.goaway
        assert code == ErrorCode.LIMIT_EXCEEDED and "output_stall_timeout" in reason, outcome.goaway
        assert reason[:120] == outcome.reason, (reason, outcome.reason)

    with caplog.at_level(logging.WARNING, logger="fastrpc"):
        run(main(), 20)
