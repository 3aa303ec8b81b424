"""More trust of running handlers (handlers.py, streams.py): the arguments of running
notification handlers count against ``max_connection_memory`` as running calls' do
(and past it the connection fails as for calls), and a streaming handler given up on
after a session reset touches nothing of the new session's streams when it finally
ends. Real connections over 127.0.0.1 (each test bounded by ``run``'s timeout, the
stop timeouts made small)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _proxy import proxy
from _util import QUIET, pair, raw_client, run, server_peer, until

import fastrpc
import fastrpc.handlers
import fastrpc.log
from fastrpc import frames as F
from fastrpc.calls import FLAG_RAW

KiB = 1024


@pytest.fixture(autouse=True)
def fresh_warning_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a fresh rate limit for peer-caused warnings."""
    monkeypatch.setattr(fastrpc.log, "_windows", {})


def _head(method: str) -> bytes:
    m = method.encode()
    return F.encode_varint(len(m)) + m


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


def _fastrpc_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("fastrpc") and r.levelno >= level]


# ------------------------------------------ 1. notification arguments, budgeted


def test_running_notification_handlers_hold_their_arguments_until_they_end(caplog: pytest.LogCaptureFixture) -> None:
    """While an async notification handler runs, its arguments are charged to the
    connection's memory budget (as a running call's are), and given back however the
    handler ends: it returns, raises, or is cancelled."""
    size = 40 * KiB  # raw bytes: charged at their length
    gates = {name: asyncio.Event() for name in ("returns", "raises", "cancelled")}
    tasks: dict[str, asyncio.Task[Any]] = {}
    router = fastrpc.Router()

    def handler(name: str) -> Any:
        async def hold(data: bytes) -> None:
            assert len(data) == size
            tasks[name] = asyncio.current_task()  # type: ignore[assignment]
            await gates[name].wait()
            if name == "raises":
                raise RuntimeError("the handler failed")

        return hold

    for name in gates:
        router.method(name)(handler(name))

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    async def main() -> None:
        async with pair(router, server_opts={"max_connection_memory": 256 * KiB}) as (server, peer):
            sp = await server_peer(server)
            for name in gates:
                peer.notify(name, b"n" * size)
            assert await peer.call("add", 1, 2) == 3  # (a barrier: the notifications were handled)
            await until(lambda: len(tasks) == 3, 2, "the handlers to run")
            assert sp.stats()["notify_tasks"] == 3
            assert sp.stats()["memory"] == 3 * size, sp.stats()["memory"]
            gates["returns"].set()
            await until(lambda: tasks["returns"].done(), 2, "the handler's return")
            await until(lambda: sp.stats()["memory"] == 2 * size, 2, "its arguments given back")
            gates["raises"].set()
            await until(lambda: tasks["raises"].done(), 2, "the handler's error")
            await until(lambda: sp.stats()["memory"] == size, 2, "its arguments given back")
            tasks["cancelled"].cancel()
            await until(lambda: tasks["cancelled"].done(), 2, "the handler's cancellation")
            await until(lambda: sp.stats()["memory"] == 0, 2, "its arguments given back")
            assert sp.stats()["notify_tasks"] == 0
            # Given back, the budget takes as much again, many times over (the old
            # code never charged them at all: this alone proves nothing about it).
            for _ in range(3):
                tasks.clear()
                for gate in gates.values():
                    gate.clear()
                for name in gates:
                    peer.notify(name, b"n" * size)
                await until(lambda: len(tasks) == 3 and sp.stats()["memory"] == 3 * size, 2, "charged again")
                gates["returns"].set()
                gates["raises"].set()
                tasks["cancelled"].cancel()
                await until(lambda: sp.stats()["memory"] == 0 and sp.stats()["notify_tasks"] == 0, 2, "released")
            assert not sp.closed and await peer.call("add", 2, 3) == 5

    with caplog.at_level(logging.ERROR, logger="fastrpc"):
        run(main(), 10)
    # The raising handler's error is logged (and only that).
    errors = _fastrpc_records(caplog, logging.ERROR)
    assert errors and all("'raises'" in m for m in errors), errors


@pytest.mark.parametrize("kind", ["call", "notify"])
def test_notification_arguments_past_max_connection_memory_close_the_connection_as_calls_do(kind: str) -> None:
    """Eight running handlers holding 40 KiB of arguments each, on a connection whose
    max_connection_memory is 256 KiB: the seventh goes past it. For calls that closes
    the connection (LIMIT_EXCEEDED, 1008, the reason naming the option); a
    notification has no answer to carry an error, so the same rule holds for it, with
    the same code and reason. The server's other connections go on."""
    size = 40 * KiB
    router = fastrpc.Router()

    @router.method
    async def hang(data: bytes) -> None:
        await _forever()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    async def main() -> None:
        opts = {**QUIET, "max_connection_memory": 256 * KiB}
        async with fastrpc.serve(router, "127.0.0.1", 0, **opts) as server:
            async with raw_client(server.url) as c:
                sp = await server_peer(server)  # (c's: before the other connection comes)
                async with fastrpc.connect(server.url, **QUIET) as other:
                    ftype = F.REQUEST if kind == "call" else F.NOTIFY
                    body = _head("hang") + b"h" * size
                    msg = b"".join(
                        F.encode_frame(ftype, FLAG_RAW, 2 * i + 1 if kind == "call" else 0, body) for i in range(8)
                    )
                    # A call after them: answered only while the connection is up.
                    msg += F.encode_frame(F.REQUEST, 0, 101, _head("add") + b"\x92\x01\x02")
                    await c.send(msg)
                    code, reason = await c.drain(2)  # (the old code: never closed, a timeout)
                    assert code == 1008, (code, reason)
                    assert "max_connection_memory (262144)" in reason, reason
                    assert reason.startswith("the peer made this connection hold "), reason
                    await asyncio.wait_for(sp.wait_closed(), 2)  # (its handlers cancelled, and done)
                    assert sp.stats()["notify_tasks"] == 0 and sp.stats()["peer.tasks"] == []
                    assert await asyncio.wait_for(other.call("add", 1, 2), 2) == 3

    run(main(), 10)


# ------------------------------- 2. a given-up streaming handler, and a new session


@pytest.mark.parametrize("end", ["yields_and_returns", "raises_its_cancellation"])
def test_a_streaming_handler_given_up_on_at_a_reset_leaves_the_new_sessions_stream_alone(
    end: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server streams from a handler of its client (``feed``), whose source takes
    its cancellation late: the session cannot be resumed, the reset gives the handler
    up after HANDLER_STOP_TIMEOUT, and the new session's first streaming call from the
    server (``fill``) has the old call's id, hence the old stream's. ``fill`` waits
    for credit (the server does not read yet) when the abandoned ``feed`` finally
    goes on, yielding one more item or raising its CancelledError: what its sender
    does then must not drop or replace the new sender's wait for credit (kept by the
    bare stream id), nor abort or feed the new stream; the server reads all of
    ``fill``'s items, and only those."""
    monkeypatch.setattr(fastrpc.handlers, "HANDLER_STOP_TIMEOUT", 0.2, raising=False)
    peers: list[Any] = []
    server_router = fastrpc.Router()

    @server_router.method
    def hello() -> int:
        peers.append(fastrpc.current_peer())
        return len(peers)

    started, cancelled, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    old_tasks: list[asyncio.Task[Any]] = []
    item, count = b"f" * 64 * KiB, 16  # 1 MiB: past the stream's 256 KiB window

    async def feed() -> AsyncIterator[bytes]:
        old_tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        yield b"first"
        started.set()
        try:
            await _forever()
        except asyncio.CancelledError:
            cancelled.set()
            await release.wait()  # a clean-up that outlasts HANDLER_STOP_TIMEOUT
            if end == "raises_its_cancellation":
                raise
        yield b"late"

    async def fill() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield item

    retry = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05)

    async def main() -> None:
        async with fastrpc.serve(server_router, "127.0.0.1", 0, resume=True, session_grace=0.1, **QUIET) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=retry, **QUIET) as peer:
                    try:
                        peer.register("feed", feed)
                        peer.register("fill", fill)
                        assert await peer.call("hello") == 1
                        old = peers[0].stream("feed")
                        assert await asyncio.wait_for(old.__anext__(), 2) == b"first"
                        await asyncio.wait_for(started.wait(), 2)
                        (cid,) = peer.stats()["peer.tasks"]
                        old_core = peer.core
                        px.refusing = True
                        px.cut()
                        await until(lambda: not server.peers, 2, "the session to expire")
                        with pytest.raises(fastrpc.ConnectionClosed):
                            await asyncio.wait_for(old.__anext__(), 2)
                        px.refusing = False
                        await until(lambda: peer.connected and peer.core is not old_core, 2, "a new session")
                        assert await asyncio.wait_for(peer.call("hello"), 2) == 2
                        assert cancelled.is_set() and not old_tasks[0].done()  # given up on, running on
                        new = peers[1].stream("fill")
                        assert await asyncio.wait_for(new.__anext__(), 2) == item
                        assert peer.stats()["peer.tasks"] == [cid]  # the new session's call: the old id
                        # fill's sender waits for credit, on its stream's id.
                        await until(lambda: cid in peer.streams._writable, 2, "fill to wait for credit")
                        waiting = peer.streams._writable[cid]
                    finally:
                        release.set()  # (the old handler ends, whatever happened)
                    await asyncio.wait(old_tasks, timeout=1)
                    await asyncio.sleep(0.05)  # (whatever the abandoned handler does next)
                    # Its end left the new sender's wait in place (neither dropped nor
                    # replaced by a wait of its own on the old session's stream)...
                    assert peer.streams._writable.get(cid) is waiting, (waiting, peer.streams._writable)
                    assert old_tasks[0].done()
                    # ...so the new stream goes on when the server reads: all of it.
                    rest = await asyncio.wait_for(_drain(new), 2)
                    assert rest == [item] * (count - 1), (len(rest), {bytes(x[:8]) for x in rest})
                    assert await asyncio.wait_for(peer.call("hello"), 2) == 3

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), 10)
    warned = _fastrpc_records(caplog, logging.WARNING)
    assert len(warned) == 1 and "'feed'" in warned[0] and "did not stop" in warned[0], warned


async def _drain(stream: Any) -> list[Any]:
    return [x async for x in stream]
