"""Reconnect and resume: a TCP proxy cuts the connection over and over while streams,
channels and calls run; a restarted server is reported as ResumeFailed."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

import pytest
from _proxy import Proxy, proxy
from _util import NO_PROXY, recv_binary, run, until
from websockets.asyncio.client import connect as ws_connect

import fastrpc
from fastrpc import frames as F
from fastrpc.protocol import FLAG_RAW, TOKEN_SIZE, Connection, Role, Settings

QUIET = {"keepalive_interval": None, "ws_ping_interval": None}
FAST = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05)
N = 1_000_000


def make_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def count(n: int):
        for i in range(n):
            yield i

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    async def consume(stream_id: int) -> int:
        _, stream = fastrpc.current_peer().receive_stream(stream_id)
        expected = 0
        async for x in stream:
            assert x == expected, (x, expected)
            expected += 1
        return expected

    @router.method
    async def double(items):
        async for x in items:
            yield 2 * x

    @router.method
    async def slow_add(a: int, b: int) -> int:
        await asyncio.sleep(0.05)
        return a + b

    return router


async def cut_every(px: Proxy, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        px.cut()


async def with_cuts(coro, px: Proxy, interval: float = 0.1):
    cutter = asyncio.ensure_future(cut_every(px, interval))
    try:
        return await coro
    finally:
        cutter.cancel()
        await asyncio.gather(cutter, return_exceptions=True)


def test_server_to_client_stream_survives_cuts_every_100ms() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, resume=True, **QUIET) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=FAST, **QUIET) as peer:

                    async def read() -> int:
                        expected = 0
                        async for x in peer.stream("count", N):
                            assert x == expected, (x, expected)  # in order, none lost or repeated
                            expected += 1
                        return expected

                    assert await with_cuts(read(), px) == N
                    assert px.cuts >= 3, "the stream outran the cuts: not a test of resumption"

    run(main(), 120)


def test_client_to_server_stream_survives_cuts_every_100ms() -> None:
    async def main() -> None:
        async def numbers():
            for i in range(N):
                yield i

        async with fastrpc.serve(make_router(), "127.0.0.1", 0, resume=True, **QUIET) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=FAST, **QUIET) as peer:

                    async def send() -> int:
                        sid = await peer.send_stream(numbers())
                        return await peer.call("consume", sid)  # a call in flight across cuts

                    assert await with_cuts(send(), px) == N
                    assert px.cuts >= 3

    run(main(), 120)


def test_channel_and_concurrent_calls_survive_repeated_cuts() -> None:
    async def main() -> None:
        async def numbers(n: int):
            for i in range(n):
                yield i
                if i % 1000 == 0:
                    await asyncio.sleep(0)

        async with fastrpc.serve(make_router(), "127.0.0.1", 0, resume=True, **QUIET) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=FAST, **QUIET) as peer:

                    async def channel() -> list[int]:
                        return [x async for x in peer.channel("double", numbers(200_000))]

                    async def calls() -> list[int]:
                        out = []
                        for i in range(40):
                            batch = await asyncio.gather(*(peer.call("slow_add", i, j) for j in range(50)))
                            out += batch
                        return out

                    got, results = await with_cuts(asyncio.gather(channel(), calls()), px, 0.05)
                    assert got == [2 * i for i in range(200_000)]
                    assert results == [i + j for i in range(40) for j in range(50)]
                    assert px.cuts >= 3

    run(main(), 120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_server(port: int) -> asyncio.subprocess.Process:
    here = os.path.dirname(__file__)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        os.path.join(here, "_resume_server.py"),
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready"
    return proc


def test_server_restart_is_reported_as_resume_failed_then_calls_work() -> None:
    async def main() -> None:
        port = _free_port()
        proc = await _start_server(port)
        events: list[str] = []
        policy = fastrpc.RetryPolicy(
            initial_delay=0.02,
            max_delay=0.1,
            on_disconnected=lambda p, e: events.append("disconnected"),
            on_connected=lambda p: events.append("connected"),
        )
        try:
            async with fastrpc.connect(f"ws://127.0.0.1:{port}", reconnect=policy, **QUIET) as peer:
                got = 0
                with pytest.raises(fastrpc.ResumeFailed):
                    async for _ in peer.stream("count", 10_000_000):
                        got += 1
                        if got == 1000:
                            proc.kill()  # the server process dies mid-stream
                            await proc.wait()
                            proc = await _start_server(port)
                assert got >= 1000
                # The new session works.
                assert await asyncio.wait_for(peer.call("add", 2, 3), 10) == 5
                assert events[0] == "connected" and "disconnected" in events and events[-1] == "connected"
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    run(main(), 90)


def test_a_session_resumes_only_for_the_identity_that_opened_it() -> None:
    # With authenticate, a session token is bound to the identity its connection was
    # given: a connection that authenticates as another (a leaked token, a revoked
    # user) gets a new session (ResumeFailed for what was in flight), not the old one.
    users = {"t": "alice"}
    router = fastrpc.Router()

    @router.method
    async def whoami() -> Any:
        return fastrpc.current_peer().identity

    @router.method
    async def wait() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        async with fastrpc.serve(
            router, "127.0.0.1", 0, resume=True, authenticate=lambda r: users.get(r.headers.get("X-Token", "")), **QUIET
        ) as server:
            policy = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05, resume=True)
            async with fastrpc.connect(server.url, reconnect=policy, additional_headers={"X-Token": "t"}, **QUIET) as c:
                assert await c.call("whoami") == "alice"
                c.transport.abort()  # a cut: the same identity resumes
                assert await asyncio.wait_for(c.call("whoami"), 10) == "alice"
                pending = asyncio.ensure_future(c.call("wait"))
                await until(lambda: any(p.core.running_calls for p in server.peers), 5)
                users["t"] = "mallory"  # the same token now authenticates someone else
                c.transport.abort()
                with pytest.raises(fastrpc.ResumeFailed):
                    await asyncio.wait_for(pending, 10)
                assert await asyncio.wait_for(c.call("whoami"), 10) == "mallory"

    run(main(), 30)


def test_connections_dropped_right_after_they_come_back_meet_the_backoff() -> None:
    # Something that drops every connection a moment after its handshake (a sick
    # proxy, a server that accepts and fails): each drop counted as a first one, so
    # the client reconnected at once, again and again, a storm. A connection that
    # did not stay up counts as a failed attempt: the delays grow.
    async def main() -> None:
        policy = fastrpc.RetryPolicy(initial_delay=0.05, max_delay=0.2, jitter=0)
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, resume=True, **QUIET) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=policy, **QUIET) as peer:
                    assert await peer.call("add", 1, 2) == 3

                    async def cutter() -> None:
                        seen = px.connections
                        while True:
                            await until(lambda: px.connections > seen, 10)
                            seen = px.connections
                            await asyncio.sleep(0.03)  # just after its resume
                            px.cut()

                    task = asyncio.ensure_future(cutter())
                    px.cut()
                    await asyncio.sleep(2.0)
                    task.cancel()
                    # At 0, 0.05, 0.1, 0.2, 0.2 ... s after each: about 10 in 2 s (a
                    # storm made one every 30 ms or so: 50 and more).
                    assert 3 <= px.connections <= 25, px.connections
                    assert await asyncio.wait_for(peer.call("add", 2, 3), 10) == 5  # it recovers

    run(main(), 30)


def test_session_expires_after_the_grace_period() -> None:
    async def main() -> None:
        opts = {"resume": True, "session_grace": 0.2, **QUIET}
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **opts) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=FAST, **QUIET) as peer:
                    assert await peer.call("add", 1, 1) == 2
                    stream = peer.stream("count", 10_000_000)
                    assert await stream.__anext__() == 0
                    px.refusing = True  # the client cannot come back...
                    px.cut()
                    await until(lambda: not server.peers, 5, "the session to expire")  # ...it costs nothing now
                    px.refusing = False
                    with pytest.raises(fastrpc.ResumeFailed):
                        async for _ in stream:
                            pass
                    assert await peer.call("add", 2, 2) == 4
                    await until(lambda: len(server.peers) == 1, 5, "one session")

    run(main(), 30)


async def _handshake(url: str, token: bytes | None) -> F.Frame:
    """A raw client asking to resume ``token``: returns the server's RESUME_OK."""
    core = Connection(Role.CLIENT, Settings(resume=1))
    core.session.token = token
    core.session.transports = 2 if token is not None else 1
    async with ws_connect(url, compression=None, ping_interval=None) as ws:
        await ws.send(core.handshake())
        frames = F.decode_message(await recv_binary(ws))
    assert frames[0].type == F.HELLO and frames[1].type == F.RESUME_OK
    return frames[1]


def test_tokens_are_random_rotated_and_refused_when_wrong_or_expired() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, resume=True, session_grace=0.2, **QUIET) as server:
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=FAST, **QUIET) as peer:
                    first = peer.session_token
                    assert first is not None and len(first) == TOKEN_SIZE
                    px.cut()
                    await until(lambda: peer.connected and peer.session_token != first, 5, "a resume")
                    second = peer.session_token
                    assert await peer.call("add", 1, 2) == 3
                    # The old token is no longer accepted: a new session is offered instead.
                    ok = await _handshake(server.url, first)
                    assert ok.flags & F.FLAG_NEW
                    # A made-up token neither.
                    ok = await _handshake(server.url, os.urandom(TOKEN_SIZE))
                    assert ok.flags & F.FLAG_NEW
                    assert bytes(ok.payload[:TOKEN_SIZE]) not in (first, second)
                    # A stolen token that expired: refused too.
                    px.refusing = True
                    px.cut()
                    await until(lambda: len(server.peers) <= 2, 5, "the session to expire")
                    await asyncio.sleep(0.3)
                    ok = await _handshake(server.url, second)
                    assert ok.flags & F.FLAG_NEW
                    px.refusing = False

    run(main(), 30)


def test_reconnect_gives_up_with_a_clear_error() -> None:
    async def main() -> None:
        gave_up: list[BaseException] = []
        attempts: list[int] = []
        policy = fastrpc.RetryPolicy(
            initial_delay=0.01,
            max_delay=0.02,
            max_attempts=3,
            on_reconnecting=lambda p, n, d: attempts.append(n),
            on_give_up=lambda p, e: gave_up.append(e),
        )
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, resume=True, **QUIET) as server:
            async with proxy(server.port) as px:
                peer = await fastrpc.connect(px.url, reconnect=policy, **QUIET)
                call = asyncio.ensure_future(peer.call("slow_add", 1, 2))
                await asyncio.sleep(0.01)
                px.refusing = True
                px.cut()
                with pytest.raises(fastrpc.ConnectionClosed, match="gave up reconnecting after 3 attempts"):
                    await call
                await peer.wait_closed()
                assert attempts == [1, 2, 3] and len(gave_up) == 1

    run(main(), 30)


def test_without_resume_a_reconnecting_client_fails_in_flight_work_and_carries_on() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:  # no resume
            async with proxy(server.port) as px:
                async with fastrpc.connect(px.url, reconnect=FAST, **QUIET) as peer:
                    stream = peer.stream("count", 10_000_000)
                    assert await stream.__anext__() == 0
                    px.cut()
                    with pytest.raises(fastrpc.ConnectionClosed):
                        async for _ in stream:
                            pass
                    assert await asyncio.wait_for(peer.call("add", 1, 2), 5) == 3

    run(main(), 30)


def test_replay_buffer_is_bounded() -> None:
    # A peer that acknowledges nothing cannot make us buffer without limit: past
    # max_replay_bytes the session stops being resumable.
    core = Connection(Role.SERVER, Settings(resume=1), max_replay_bytes=100_000)
    peer = Connection(Role.CLIENT, Settings(resume=1))
    core.receive_message(peer.next_message())
    peer.receive_message(core.next_message())
    assert core.session.enabled and core.resumable
    sid = core.open_stream()
    for _ in range(20):
        while not core.writable(sid):
            peer.receive_message(core.next_message())  # never answered: no ACK comes back
            for ev in peer.stats()["in"]:
                while peer.read_item(ev):
                    pass
            core.receive_message(_credit_only(peer))
        core.send_item(sid, b"x" * 10_000)
        msg = core.next_message()
        if msg:
            peer.receive_message(msg)
    assert not core.resumable and "replay buffer" in core.session.broken
    assert core.session.replay_bytes == 0


def test_a_session_past_its_replay_bound_keeps_no_replay() -> None:
    # A client that reads every answer and acknowledges nothing: past
    # max_replay_bytes the session stops being resumable and its replay buffer is
    # freed. It was then filled again, up to max_replay_bytes each time, for a replay
    # that can never happen.
    router = fastrpc.Router()

    @router.method
    def echo(x: bytes) -> bytes:
        return x

    blob = bytes(8 << 10)
    m = b"echo"

    async def main() -> None:
        async with fastrpc.serve(router, "127.0.0.1", 0, resume=True, max_replay_bytes=64 << 10, **QUIET) as server:
            async with ws_connect(server.url, compression=None, max_size=None, ping_interval=None, **NO_PROXY) as ws:
                await ws.send(Connection(Role.CLIENT, Settings(resume=1)).handshake())
                await recv_binary(ws)
                core = (await until(lambda: list(server.peers)))[0].core
                most = 0  # the replay held once the session broke
                for i in range(24):
                    frame = F.encode_frame(F.REQUEST, FLAG_RAW, 2 * i + 1, F.encode_varint(len(m)) + m + blob)
                    await ws.send(frame)  # never an ACK
                    while not any(f.type == F.RESPONSE for f in F.decode_message(await recv_binary(ws), 1 << 30)):
                        pass
                    if core.session.broken:
                        most = max(most, core.session.replay_bytes)
                assert "replay buffer" in core.session.broken and not core.resumable
                assert most == 0, f"{most} bytes kept for a session that cannot be resumed"

    run(main())


@pytest.mark.parametrize("bound", ["memory", "count"])
def test_sessions_kept_for_absent_clients_are_bounded(bound: str) -> None:
    # A client that opens a session, makes it hold data (running calls' arguments),
    # vanishes and starts again: what the kept sessions hold counts against
    # max_detached_replay (only their replay buffers did: 40 such sessions held 117
    # MiB against a 1 MiB bound), and at most max_detached_sessions are kept; the
    # oldest are given up.
    router = fastrpc.Router()

    @router.method
    async def hold(data: bytes) -> int:
        await asyncio.sleep(3600)
        return len(data)

    limits = {"max_detached_replay": 2 << 20} if bound == "memory" else {"max_detached_sessions": 3}
    blob = b"x" * (900 << 10) if bound == "memory" else b"x"

    async def main() -> None:
        async with fastrpc.serve(router, "127.0.0.1", 0, resume=True, **limits, **QUIET) as server:
            for _ in range(8):
                c = await fastrpc.connect(server.url, resume=True, **QUIET)
                tasks = [asyncio.ensure_future(c.call("hold", blob)) for _ in range(2)]
                await until(lambda: any(p.connected and p.core.held >= 2 * len(blob) for p in server.peers), 5)
                c.transport.abort()  # vanishes, no GOAWAY
                await c.wait_closed()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await until(lambda: not any(p.connected for p in server.peers), 5, "the server to see the drops")
            kept = server.detached
            if bound == "memory":
                assert 1 <= len(kept) <= 2, len(kept)
                assert sum(p.core.held for p in kept) <= (2 << 20), [p.core.held for p in kept]
            else:
                assert len(kept) == 3
            for p in kept:
                await p.teardown(fastrpc.ConnectionClosed("test over"))

    run(main(), 30)


def _credit_only(peer: Connection) -> bytes:
    """The peer's queued frames minus its ACKs."""
    msg = peer.next_message()
    if msg is None:
        return F.encode_frame(F.PING, 0, 0, b"")
    frames = [f for f in F.decode_message(msg) if f.type != F.ACK]
    return (
        F.encode_batch([(f.type, f.flags, f.id, f.payload) for f in frames])
        if frames
        else F.encode_frame(F.PING, 0, 0, b"")
    )
