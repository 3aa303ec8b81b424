"""Trust review of session resumption (resume.py, sessions.py and how server.py and
client.py use them): what a hostile RESUME, ACK or first message can make a server
hold or do, against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tracemalloc
from typing import Any

import msgspec
import pytest
from _util import NO_PROXY, QUIET, recv_binary, run, until
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed as WSClosed

import fastrpc
from fastrpc import frames as F
from fastrpc.protocol import ACK_FRAMES, TOKEN_SIZE, Connection, Role, Settings

MiB = 1 << 20


def _router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    return router


def test_a_first_message_of_many_tiny_frames_is_not_decoded_whole_to_find_its_token() -> None:
    # A server with resumable sessions looks the token of a client's first message up
    # before any core sees the message. That look-up decoded the whole message with no
    # frame limit: 4 MiB of 4-byte frames made a million Frame objects (~72 MiB, and
    # the loop held for seconds in the pure codec) before the core refused the message
    # for its MAX_FRAMES. Only the first two frames (HELLO, RESUME) are needed.
    hello = F.encode_frame(F.HELLO, 0, 0, Settings(resume=1).to_wire())
    resume = F.encode_frame(F.RESUME, 0, 0, os.urandom(TOKEN_SIZE) + F.encode_varint(0))
    tiny = F.encode_frame(F.PING, 0, 0, b"")
    limit = 4 * MiB
    head = hello + resume
    msg = head + tiny * ((limit - len(head)) // len(tiny))

    async def main() -> None:
        async with fastrpc.serve(_router(), resume=True, max_message_size=limit, **QUIET) as server:
            async with fastrpc.connect(server.url, resume=True, **QUIET) as client:
                assert await client.call("add", 1, 2) == 3
                assert len(server.sessions) >= 1  # the look-up runs
                async with ws_connect(
                    server.url, compression=None, max_size=None, ping_interval=None, **NO_PROXY
                ) as ws:
                    tracemalloc.start()
                    try:
                        base = tracemalloc.get_traced_memory()[0]
                        await ws.send(msg)
                        # The core refuses it: more than MAX_FRAMES frames.
                        await asyncio.wait_for(ws.wait_closed(), 60)
                        peak = tracemalloc.get_traced_memory()[1] - base
                    finally:
                        tracemalloc.stop()
                    assert ws.close_code in (1008, 1009), (ws.close_code, ws.close_reason)
                # ~5 copies of the message at most (the client's masked one, the
                # server's read buffer and message, the core's rest): not a Frame
                # object per 4 bytes.
                size = len(msg)
                assert peak < 8 * size, f"{peak / MiB:.1f} MiB to refuse a {size / MiB:.1f} MiB message"
                assert await client.call("add", 2, 3) == 5

    run(main(), 120)


class _FakeServer:
    """A server that speaks the handshake with a core of its own: the first connection
    opens a session and takes one call (never answered), then is cut; every later one
    is answered with ``answer(core, first_message)`` (a RESUME_OK of its choosing)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.firsts: list[list[F.Frame]] = []  # the frames of each connection's first message
        self.got_call = asyncio.Event()
        self.core: Connection | None = None

    async def handler(self, ws: ServerConnection) -> None:
        first = await ws.recv()
        assert isinstance(first, bytes)
        self.firsts.append(F.decode_message(first))
        if len(self.firsts) == 1:
            core = self.core = Connection(Role.SERVER, Settings(resume=1))
            core.receive_message(first)
            await ws.send(core.next_message())
            core.receive_message(await ws.recv())  # the call
            self.got_call.set()
            ws.transport.abort()
            return
        reply = self.answer(self.core, first)
        if reply is not None:
            await ws.send(reply)
        with contextlib.suppress(Exception):
            await ws.wait_closed()


def _resume_ok(core: Connection, pos: int, token: bytes | None = None) -> bytes:
    token = token if token is not None else os.urandom(TOKEN_SIZE)
    return F.encode_batch([(F.HELLO, 0, 0, core.settings.to_wire()), (F.RESUME_OK, 0, 0, token + F.encode_varint(pos))])


@pytest.mark.parametrize(
    "bad",
    ["position_past_sent", "truncated"],
)
def test_a_resume_refused_for_a_protocol_error_ends_the_session_not_the_retries(bad: str) -> None:
    # A server that answers a resume with a RESUME_OK the client must refuse (a
    # position past what the client sent; a payload too short for a token) broke the
    # protocol: the session ends for good (docs/protocol.md, "Resuming a session"). The
    # client's reconnect loop took the failure as a plain failed attempt: it presented
    # the same token again and again, and the call in flight waited for ever.
    def answer(core: Connection, first: bytes) -> bytes:
        if bad == "truncated":
            return F.encode_batch([(F.HELLO, 0, 0, core.settings.to_wire()), (F.RESUME_OK, 0, 0, b"short")])
        return _resume_ok(core, 1_000_000)

    fake = _FakeServer(answer)

    async def main() -> None:
        async with ws_serve(fake.handler, "127.0.0.1", 0, compression=None, ping_interval=None) as srv:
            port = srv.sockets[0].getsockname()[1]
            policy = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05)
            async with fastrpc.connect(f"ws://127.0.0.1:{port}", reconnect=policy, **QUIET) as peer:
                call = asyncio.ensure_future(peer.call("add", 1, 2))
                await asyncio.wait_for(fake.got_call.wait(), 10)
                # The refused resume (the second connection), then one more attempt.
                await until(lambda: len(fake.firsts) >= 3, 10, "the attempt after the refused resume")
                assert [f.type for f in fake.firsts[1]] == [F.HELLO, F.RESUME]
                # The session is over: the next attempt starts a new one, and the call
                # in flight failed with the protocol error (it does not wait for ever).
                assert [f.type for f in fake.firsts[2]] == [F.HELLO], "the broken session was presented again"
                with pytest.raises(fastrpc.ConnectionClosed, match="protocol error"):
                    await asyncio.wait_for(call, 10)

    run(main(), 30)


def test_closing_a_client_while_its_resume_waits_for_the_server_ends_the_reconnects() -> None:
    # close() while a reconnect waits for the server's answer to its RESUME. The
    # teardown settles the handshake's future with ConnectionClosed and then cancels
    # the reconnect task; asyncio.wait_for (3.11) then raises the future's exception
    # instead of CancelledError, the reconnect loop took it for a failed attempt and
    # went on connecting for ever, and close() waited for it for ever.
    fake = _FakeServer(lambda core, first: None)  # later connections: never answered

    async def main() -> None:
        async with ws_serve(fake.handler, "127.0.0.1", 0, compression=None, ping_interval=None) as srv:
            port = srv.sockets[0].getsockname()[1]
            policy = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05)
            peer = await fastrpc.connect(f"ws://127.0.0.1:{port}", reconnect=policy, **QUIET)
            call = asyncio.ensure_future(peer.call("add", 1, 2))
            await asyncio.wait_for(fake.got_call.wait(), 10)
            await until(lambda: len(fake.firsts) >= 2, 10, "the resume")
            assert [f.type for f in fake.firsts[1]] == [F.HELLO, F.RESUME]
            await asyncio.wait_for(peer.close(), 10)
            assert peer.closed
            task = peer.session_task
            assert task is None or task.done()
            attempts = len(fake.firsts)
            with pytest.raises(fastrpc.ConnectionClosed):
                await asyncio.wait_for(call, 10)
            await asyncio.sleep(0.2)  # (several retry delays)
            assert len(fake.firsts) == attempts, "the closed client went on reconnecting"

    run(main(), 30)


def test_a_resume_from_before_what_the_client_acknowledged_is_a_protocol_error() -> None:
    # A client acknowledged frames (the server freed them from its replay buffer),
    # then asks to resume from an earlier position. The server cannot replay what it
    # freed: it replayed from where its buffer began, and the frames in between were
    # lost without a word (the two sides' positions no longer matched). Like a
    # position past what was sent, it is a protocol error (1002).
    add = msgspec.msgpack.encode([1, 2])

    async def main() -> None:
        async with fastrpc.serve(_router(), resume=True, **QUIET) as server:
            core = Connection(Role.CLIENT, Settings(resume=1))
            async with ws_connect(server.url, compression=None, ping_interval=None, **NO_PROXY) as ws:
                await ws.send(core.handshake())
                core.receive_message(await recv_binary(ws))
                for _ in range(3 * ACK_FRAMES):  # answers enough for ACKs to go back
                    core.send_request("add", add)
                    await ws.send(_one(core.next_message()))
                    while core.pending_calls:
                        core.receive_message(await recv_binary(ws))
                    out = core.next_message()  # ACKs, credit
                    if out is not None:
                        await ws.send(_one(out))
                sp = (await until(lambda: list(server.peers)))[0]
                await until(lambda: sp.core.session.replay_bytes < 1024, 5, "the ACKs to free the replay")
            await until(lambda: server.detached, 5, "the session to be kept")
            assert core.traffic.frames_in > ACK_FRAMES
            core.new_transport()
            core.traffic.frames_in = 0  # claims to have received nothing
            async with ws_connect(server.url, compression=None, ping_interval=None, **NO_PROXY) as ws:
                await ws.send(_one(core.next_message()))
                frames: list[F.Frame] = []
                try:
                    while True:
                        frames += F.decode_message(await recv_binary(ws, 10))
                except WSClosed:
                    pass
                except asyncio.TimeoutError:
                    types = [f.type for f in frames]
                    raise AssertionError(f"resumed from a position it had freed (frames {types})") from None
                assert ws.close_code == 1002, (ws.close_code, ws.close_reason)
                assert "acknowledged" in (ws.close_reason or "")

    run(main(), 30)


def _one(msg: bytes | list[bytes] | None) -> bytes:
    assert msg is not None
    return msg if isinstance(msg, bytes) else b"".join(msg)


def test_an_empty_session_survives_a_resume_whose_answer_was_lost() -> None:
    # A session dropped before any frame came or left is kept as a token (a
    # tombstone); a client presenting it gets the same empty session back, with a new
    # token. When that answer (RESUME_OK) is lost in a cut too, the client presents
    # the token it has once more: the server had buried only the new token, which the
    # client never got, and answered NEW (ResumeFailed for what the client queued)
    # where "a cut that loses RESUME_OK costs one retry, not the session".

    async def handshake(url: str, token: bytes | None) -> F.Frame:
        core = Connection(Role.CLIENT, Settings(resume=1))
        if token is not None:
            core.session.token = token
            core.session.transports = 2
        async with ws_connect(url, compression=None, ping_interval=None, **NO_PROXY) as ws:
            await ws.send(core.handshake())
            frames = F.decode_message(await recv_binary(ws))
            ws.transport.abort()  # nothing sent after the handshake: the session is empty
        assert [f.type for f in frames[:2]] == [F.HELLO, F.RESUME_OK], frames
        return frames[1]

    async def main() -> None:
        async with fastrpc.serve(_router(), resume=True, **QUIET) as server:
            ok = await handshake(server.url, None)
            assert ok.flags & F.FLAG_NEW
            token = bytes(ok.payload[:TOKEN_SIZE])
            await until(lambda: not server.peers, 5, "the server to see the drop")
            ok = await handshake(server.url, token)
            assert not ok.flags & F.FLAG_NEW, "the empty session was not resumed"
            await until(lambda: not server.peers, 5, "the server to see the drop")
            # That RESUME_OK (and its new token) never reached the client: it retries
            # with the token it has.
            ok = await handshake(server.url, token)
            assert not ok.flags & F.FLAG_NEW, "a lost RESUME_OK cost the session"

    run(main(), 30)


def test_an_empty_session_resumes_only_for_the_identity_that_opened_it() -> None:
    # With authenticate, a token presented by another identity is as unknown: a
    # leaked token hands nothing over. A session dropped before any frame came or
    # left is kept as a token alone, and that one was handed to whoever presented it
    # first: another identity got it "resumed", and its own client, coming back,
    # found it gone (NEW: ResumeFailed for what it had queued).
    users = {"a": "alice", "m": "mallory"}

    async def handshake(url: str, who: str, token: bytes | None) -> F.Frame:
        core = Connection(Role.CLIENT, Settings(resume=1))
        if token is not None:
            core.session.token = token
            core.session.transports = 2
        headers = {"X-Token": who}
        async with ws_connect(url, compression=None, ping_interval=None, additional_headers=headers, **NO_PROXY) as ws:
            await ws.send(core.handshake())
            frames = F.decode_message(await recv_binary(ws))
            ws.transport.abort()
        assert [f.type for f in frames[:2]] == [F.HELLO, F.RESUME_OK], frames
        return frames[1]

    async def main() -> None:
        async with fastrpc.serve(
            _router(), resume=True, authenticate=lambda r: users.get(r.headers.get("X-Token", "")), **QUIET
        ) as server:
            ok = await handshake(server.url, "a", None)
            token = bytes(ok.payload[:TOKEN_SIZE])
            await until(lambda: not server.peers, 5, "the server to see the drop")
            ok = await handshake(server.url, "m", token)
            assert ok.flags & F.FLAG_NEW, "another identity got the session"
            await until(lambda: not server.peers, 5, "the server to see the drop")
            ok = await handshake(server.url, "a", token)
            assert not ok.flags & F.FLAG_NEW, "its own client lost the session"

    run(main(), 30)
