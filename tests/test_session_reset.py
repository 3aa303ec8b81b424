"""A client whose session could not be resumed starts a new one (RpcPeer.reset_session):
what the old session's handlers do while they are cancelled goes nowhere; the new
session's calls get their own answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _proxy import proxy
from _util import run, until

import fastrpc

QUIET = {"keepalive_interval": None, "ws_ping_interval": None}
FAST = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05)


def _server_router(peers: list[Any]) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def hello() -> int:
        peers.append(fastrpc.current_peer())  # the session's server side, to call the client
        return len(peers)

    return router


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("kind", ["call", "stream", "lazy_stream", "notify"])
def test_old_session_handlers_cancelled_by_a_reset_send_nothing_to_the_new_session(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The server calls a slow handler of the client; the connection drops and the
    # session expires on the server, so the client's resume fails and it starts a new
    # session. The old handler is cancelled then: its end (CancelledError, or its
    # stream's error) belongs to the old session, never to the new one, where the
    # server's call ids start again (the old call's id is the new session's first).
    caplog.set_level(logging.DEBUG, logger="fastrpc")

    async def main() -> None:
        peers: list[Any] = []
        started = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []

        async def slow() -> str:
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            started.set()
            await _forever()
            return "late"

        async def gen() -> AsyncIterator[int]:
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            yield 1
            started.set()
            await _forever()

        async def lazy() -> AsyncIterator[int]:  # cancelled before its stream opened
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            started.set()
            await _forever()
            return gen()

        async def note() -> None:
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            started.set()
            await _forever()

        def echo(x: Any) -> Any:
            return x

        opts = {"resume": True, "session_grace": 0.2, **QUIET}
        async with fastrpc.serve(_server_router(peers), "127.0.0.1", 0, **opts) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=FAST, **QUIET) as peer:
                    for name, fn in (("slow", slow), ("gen", gen), ("lazy", lazy), ("note", note), ("echo", echo)):
                        peer.register(name, fn)
                    assert await peer.call("hello") == 1
                    old = peers[0]
                    pending: asyncio.Future[Any] | None = None
                    if kind == "call":
                        pending = asyncio.ensure_future(old.call("slow"))
                    elif kind in ("stream", "lazy_stream"):
                        results = old.stream("gen" if kind == "stream" else "lazy")

                        async def drain() -> list[Any]:
                            return [x async for x in results]

                        pending = asyncio.ensure_future(drain())
                    else:
                        old.notify("note")
                    await asyncio.wait_for(started.wait(), 5)
                    assert len(tasks) == 1 and not tasks[0].done()
                    old_core = peer.core

                    px.refusing = True  # the client cannot come back...
                    px.cut()
                    await until(lambda: not server.peers, 5, "the session to expire")  # ...so it is gone
                    if pending is not None:
                        with pytest.raises(fastrpc.ConnectionClosed):
                            await asyncio.wait_for(pending, 5)
                    px.refusing = False

                    # The client comes back: its resume fails, a new session starts.
                    await until(lambda: peer.connected and peer.core is not old_core, 5, "a new session")
                    assert await asyncio.wait_for(peer.call("hello"), 5) == 2
                    # The old handler ended with its cancellation, nothing else: what
                    # it sent on its way out went to the old session's core, not the
                    # new one's (where the call id is unknown, or another call's).
                    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
                    assert tasks[0].cancelled(), f"the old handler ended with {tasks[0].exception()!r}"

                    # The new session: the server's calls get the client's answers (its
                    # first one has the old session's call's id).
                    new = peers[1]
                    assert new is not old
                    assert await asyncio.wait_for(new.call("echo", "first"), 5) == "first"
                    assert await asyncio.wait_for(new.call("echo", "second"), 5) == "second"
                    assert new.connected and peer.connected
                    assert len(server.peers) == 1
                    assert px.cuts == 1

    run(main(), 30)
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("fastrpc")]
    assert not bad, [r.getMessage() for r in bad]
