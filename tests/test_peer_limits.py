"""Limits against misbehaving clients: hand-built frames over a bare websockets
connection. Each abuse closes only the offending connection, with a clear code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from _util import NO_PROXY, assert_idle, frame, pair, raw_client, recv_binary, run, until
from websockets.asyncio.client import connect as ws_connect

import fastrpc
from fastrpc import frames as F
from fastrpc import protocol as protocol_module
from fastrpc.protocol import FRAME_CHARGE, Connection, Role, Settings


def request(cid: int, method: str, *args: Any, flags: int = 0) -> bytes:
    m = method.encode()
    return frame(F.REQUEST, flags, cid, F.encode_varint(len(m)) + m + msgspec.msgpack.encode(list(args)))


class Counters:
    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0
        self.started = 0
        self.stopped = 0


def make_router(c: Counters, cleanup_delay: float = 0.0) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def slow() -> str:
        c.started += 1
        c.running += 1
        c.max_running = max(c.max_running, c.running)
        try:
            await asyncio.sleep(30)
            return "late"
        finally:
            try:
                if cleanup_delay:
                    # Slow to stop: the handler keeps running a while after CANCEL.
                    await asyncio.sleep(cleanup_delay)
            finally:
                c.running -= 1
                c.stopped += 1

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    async def ticks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    return router


async def check_good_client(url: str) -> None:
    async with fastrpc.connect(url, keepalive_interval=None) as peer:
        assert await peer.call("add", 2, 3) == 5
        assert [x async for x in peer.stream("ticks", 5)] == [0, 1, 2, 3, 4]


def test_too_many_pending_calls_closes_only_that_connection() -> None:
    async def main() -> None:
        c = Counters()
        limit = 8
        async with pair(make_router(c), server_opts={"max_pending_calls": limit}) as (server, good):
            # A well-behaved client is held to the limit by the server's HELLO: it waits.
            got = await asyncio.gather(*(good.call("add", i, 1) for i in range(3 * limit)))
            assert got == [i + 1 for i in range(3 * limit)]
            slow_ok = [asyncio.ensure_future(good.call("slow")) for _ in range(limit // 2)]
            await until(lambda: c.running == limit // 2, 5, "the good client's slow calls")

            async with raw_client(server.url) as raw:
                assert raw.core.peer_settings.max_pending_calls == limit
                await raw.send(b"".join(request(2 * i + 1, "slow") for i in range(limit + 1)))
                code, reason = await raw.drain()
                assert code == 1008
                assert "pending calls" in reason
            # Its handlers were cancelled; the good connection is untouched.
            await until(lambda: c.running == limit // 2, 5, "the bad connection's handlers to stop")
            assert c.max_running <= limit // 2 + limit
            assert await good.call("add", 1, 1) == 2
            await check_good_client(server.url)
            for t in slow_ok:
                t.cancel()
            await asyncio.gather(*slow_ok, return_exceptions=True)
            await until(lambda: c.running == 0, 5, "the slow calls to stop")

    run(main())


def test_oversized_frame_is_rejected_with_1009() -> None:
    async def main() -> None:
        c = Counters()
        max_frame = 64 << 10
        async with pair(make_router(c), server_opts={"max_frame_size": max_frame}) as (server, good):
            async with raw_client(server.url) as raw:
                await raw.send(request(1, "add", b"x" * (max_frame + 1), 1))
                code, reason = await raw.drain()
                assert code == 1009, (code, reason)
                assert "too large" in reason
            async with raw_client(server.url) as raw:
                # A header announcing more than the limit is enough.
                await raw.send(bytes([F.STREAM_DATA, F.FLAG_OPEN, 1]) + F.encode_varint(max_frame + 1) + b"abc")
                code, _ = await raw.drain()
                assert code == 1009
            async with raw_client(server.url) as raw:
                # Larger than the WebSocket message limit: websockets itself refuses it.
                await raw.send(b"\x00" * (server.options.max_message_size + 1024))
                code, _ = await raw.drain()
                assert code == 1009
            assert await good.call("add", 1, 2) == 3
            await check_good_client(server.url)

    run(main())


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",  # a truncated frame
        b"",  # an empty message
        frame(F.REQUEST, 0, 1, b"\x05ab"),  # method name runs past the payload
        frame(F.REQUEST, 0, 2, b"\x01a"),  # a call id of the server's parity
        frame(0x3F, 0, 0, b""),  # an unknown (non-extension) frame type
        frame(F.HELLO, 0, 0, b"\x01"),  # a second HELLO
        frame(F.REQUEST, 0, 1, b"\x01a") + b"\x10",  # trailing garbage
        frame(F.STREAM_DATA, F.FLAG_OPEN, 2, b"x"),  # a stream id of the server's parity
        frame(F.STREAM_DATA, F.FLAG_OPEN, 1, b"x") + frame(F.STREAM_DATA, F.FLAG_OPEN, 1, b"y"),  # opened twice
        frame(F.REQUEST, 0, 1, b"\x02\xff\xfe"),  # method name is not UTF-8
    ],
    ids=[
        "truncated",
        "empty",
        "bad-method",
        "wrong-parity",
        "unknown-type",
        "hello-twice",
        "trailing",
        "stream-parity",
        "open-twice",
        "not-utf8",
    ],
)
def test_malformed_bytes_close_with_1002(data: bytes) -> None:
    async def main() -> None:
        c = Counters()
        async with pair(make_router(c)) as (server, good):
            async with raw_client(server.url) as raw:
                await raw.send(data)
                code, reason = await raw.drain()
                assert code == 1002, (code, reason)
                assert reason
            assert await good.call("add", 1, 2) == 3

    run(main())


def test_frames_of_unknown_streams_are_dropped() -> None:
    # Frames of a stream nobody opened are dropped (it may be one the server stopped
    # reading): the connection stays up and answers.
    async def main() -> None:
        async with pair(make_router(Counters())) as (server, _):
            async with raw_client(server.url) as raw:
                await raw.send(
                    frame(F.STREAM_DATA, 0, 1, b"x") + frame(F.STREAM_END, 0, 1) + frame(F.CREDIT, 0, 5, b"\x10")
                )
                await raw.send(request(3, "add", 1, 2))
                frames = await raw.recv_frames()
                assert [(f.type, f.id) for f in frames] == [(F.RESPONSE, 3)]

    run(main())


def test_text_message_garbage() -> None:
    # Text messages are the seed's JSON compatibility mode: garbage there either gets an
    # answer or closes the connection; it must not hang it or hurt other connections.
    async def main() -> None:
        c = Counters()
        async with pair(make_router(c)) as (server, good):
            async with raw_client(server.url) as raw:
                await raw.send("}{ not json at all")

                async def outcome() -> str:
                    try:
                        await raw.ws.recv()
                        return "answered"
                    except Exception:
                        return "closed"

                assert await asyncio.wait_for(outcome(), 5) in ("answered", "closed")
            assert await good.call("add", 1, 2) == 3
            await check_good_client(server.url)

    run(main())


@pytest.mark.parametrize("mode", ["one-message", "separate-messages", "handler-started"])
@pytest.mark.parametrize("cleanup_delay", [0.0, 0.05], ids=["prompt", "lingering"])
def test_rapid_reset_flood_stays_bounded(cleanup_delay: float, mode: str) -> None:
    # REQUEST then CANCEL, over and over, against a slow handler. Running handlers never
    # exceed max_pending_calls: once cancelled calls pile up past it (handlers that
    # linger after CANCEL), the server closes the connection (1008) rather than
    # accumulate them; otherwise every call is answered and forgotten.
    async def main() -> None:
        c = Counters()
        limit = 16
        n = 300 if mode == "handler-started" else 2000
        async with pair(make_router(c, cleanup_delay), server_opts={"max_pending_calls": limit}) as (server, good):
            async with raw_client(server.url) as raw:
                answered: set[int] = set()

                async def reader() -> None:
                    with contextlib.suppress(Exception):
                        async for msg in raw.ws:
                            for f in F.decode_message(msg, 1 << 30):
                                assert f.type == F.ERROR
                                answered.add(f.id)

                rd = asyncio.ensure_future(reader())
                started = asyncio.get_running_loop().time()
                try:
                    for i in range(n):
                        cid = 2 * i + 1
                        if mode == "one-message":
                            await raw.send(request(cid, "slow") + frame(F.CANCEL, 0, cid))
                        elif mode == "handler-started":
                            # Reset each call only once its handler runs.
                            await raw.send(request(cid, "slow"))
                            await until(lambda: c.started > i or rd.done(), 5, "the handler to start")
                            await raw.send(frame(F.CANCEL, 0, cid))
                        else:
                            await raw.send(request(cid, "slow"))
                            await raw.send(frame(F.CANCEL, 0, cid))
                        assert c.running <= limit
                        if i % 50 == 49:
                            await asyncio.sleep(0.001)  # let answers flow (and a close arrive)
                except Exception:
                    pass
                if cleanup_delay:
                    code, reason = await raw.drain()
                    assert code == 1008 and "pending calls" in reason, (code, reason)
                    # Promptly: the server does not wait out a close timeout on a peer
                    # that keeps sending.
                    assert asyncio.get_running_loop().time() - started < 1.5
                else:
                    await until(lambda: len(answered) == n or rd.done(), 10, "every call answered")
                    if mode == "handler-started":
                        assert not rd.done() and c.started == n
                    if rd.done():  # closed: only for exceeding the limit
                        code, reason = await raw.drain()
                        assert code == 1008 and "pending calls" in reason, (code, reason)
                        assert asyncio.get_running_loop().time() - started < 1.5
                    else:
                        sp = next(p for p in server.peers if p.remote_address == raw.ws.local_address)
                        await assert_idle(sp)
                await raw.ws.close()
                await rd
            assert c.max_running <= limit
            await until(lambda: c.running == 0, 5, "every handler to stop")
            assert await good.call("add", 1, 2) == 3
            await check_good_client(server.url)

    run(main(), timeout=30)


def test_rapid_reset_within_the_limit_is_answered_and_forgotten() -> None:
    # A client that counts cancelled calls as pending until they are answered (as
    # fastrpc's own client does) may REQUEST+CANCEL as fast as it likes: every call is
    # answered, nothing piles up and the connection stays open.
    async def main() -> None:
        c = Counters()
        limit = 8
        async with pair(make_router(c), server_opts={"max_pending_calls": limit}) as (server, good):
            async with raw_client(server.url) as raw:
                n = 500
                answered: set[int] = set()
                sent = 0
                while len(answered) < n:
                    while sent < n and sent - len(answered) < limit:
                        cid = 2 * sent + 1
                        await raw.send(request(cid, "slow") + frame(F.CANCEL, 0, cid))
                        sent += 1
                    for f in await raw.recv_frames():
                        assert f.type == F.ERROR
                        answered.add(f.id)
                assert answered == {2 * i + 1 for i in range(n)}
                assert c.max_running <= limit
                sp = next(p for p in server.peers if p.remote_address == raw.ws.local_address)
                await assert_idle(sp)
                assert not sp.closed
            await until(lambda: c.running == 0, 5, "every handler to stop")

    run(main())


def test_notification_flood_is_bounded() -> None:
    # Running notification handlers share the pending-calls limit.
    async def main() -> None:
        c = Counters()
        limit = 8
        async with pair(make_router(c), server_opts={"max_pending_calls": limit}) as (server, good):
            async with raw_client(server.url) as raw:
                m = b"slow"
                notify = frame(F.NOTIFY, 0, 0, F.encode_varint(len(m)) + m + msgspec.msgpack.encode([]))
                await raw.send(notify * (limit + 1))
                code, reason = await raw.drain()
                assert code == 1008 and "notification" in reason, (code, reason)
            await until(lambda: c.running == 0, 5, "the notification handlers to stop")
            assert await good.call("add", 1, 2) == 3

    run(main())


def test_empty_stream_data_flood_exhausts_credit() -> None:
    async def main() -> None:
        c = Counters()
        window = 64 << 10
        async with pair(make_router(c), server_opts={"streams": fastrpc.StreamManager(initial_window=window)}) as (
            server,
            good,
        ):
            async with raw_client(server.url) as raw:
                assert raw.core.peer_settings.initial_stream_window == window
                n = window // FRAME_CHARGE + 1
                flood = frame(F.STREAM_DATA, F.FLAG_OPEN, 1) + frame(F.STREAM_DATA, 0, 1) * n
                await raw.send(flood)
                code, reason = await raw.drain()
                assert code == 1008, (code, reason)
                assert "flow-control" in reason
            # Within the window the same frames are fine (and are read as empty items).
            async with raw_client(server.url) as raw:
                await raw.send(frame(F.STREAM_DATA, F.FLAG_OPEN, 1) + frame(F.STREAM_DATA, 0, 1) * 100)
                await raw.send(request(3, "add", 1, 2))
                frames = await raw.recv_frames()
                assert (F.RESPONSE, 3) in [(f.type, f.id) for f in frames]
            assert await good.call("add", 1, 2) == 3

    run(main())


def test_too_many_streams_closes_with_1008() -> None:
    async def main() -> None:
        c = Counters()
        async with pair(make_router(c), server_opts={"max_streams": 4}) as (server, good):
            # A good client waits for stream slots.
            got = []

            async def src(k: int) -> AsyncIterator[int]:
                yield k

            sids = [await good.send_stream(src(k)) for k in range(4)]
            more = asyncio.ensure_future(good.send_stream(src(99)))
            await asyncio.sleep(0.05)
            assert not more.done()
            sp = next(iter(server.peers))
            for sid in sids:
                _, s = sp.receive_stream(sid)
                got.extend([x async for x in s])
            sid = await asyncio.wait_for(more, 5)
            _, s = sp.receive_stream(sid)
            got.extend([x async for x in s])
            assert got == [0, 1, 2, 3, 99]
            async with raw_client(server.url) as raw:
                await raw.send(b"".join(frame(F.STREAM_DATA, F.FLAG_OPEN, 2 * i + 1, b"\x01") for i in range(5)))
                code, reason = await raw.drain()
                assert code == 1008 and "streams" in reason
            assert await good.call("add", 1, 2) == 3

    run(main())


def test_arguments_too_costly_to_decode_fail_that_call_only() -> None:
    # 700,000 empty lists: ~2 MiB on the wire, ~40 MB once decoded (over the 32 MiB
    # default max_connection_memory). The server answers PayloadTooLarge without
    # decoding them; the connection stays up, and so does the notification rule.
    async def main() -> None:
        router = make_router(Counters())

        @router.method
        def count(items: list[Any]) -> int:
            return len(items)

        async with pair(router, client_opts={"max_message_size": 8 << 20}) as (server, good):
            dense = [[]] * 700_000
            with pytest.raises(fastrpc.RemoteError) as info:
                await good.call("count", dense, timeout=5)
            assert info.value.type_name == "PayloadTooLarge"
            assert "max_connection_memory" in info.value.message and "'count'" in info.value.message
            assert await good.call("count", [[]] * 1000, timeout=5) == 1000  # within the budget
            assert await good.call("add", 1, 1) == 2
            # The same as a notification: no answer to carry the error, so that
            # connection fails (1008, naming the option); the server goes on.
            async with raw_client(server.url) as raw:
                m = b"count"
                args = msgspec.msgpack.encode([dense])
                await raw.send(frame(F.NOTIFY, 0, 0, F.encode_varint(len(m)) + m + args))
                code, reason = await raw.drain()
                assert code == 1008
                assert "max_connection_memory" in reason
            await check_good_client(server.url)

    run(main())


@pytest.mark.parametrize("walk_step", [None, 1000], ids=["codec_step", "step_1000"])
@pytest.mark.parametrize("with_hello", [True, False], ids=["first_message", "after_the_handshake"])
def test_a_message_of_many_frames_is_handled_a_slice_a_loop_pass(
    with_hello: bool, walk_step: int | None, monkeypatch: Any
) -> None:
    # One message of five slices' worth of notifications (FRAMES_PER_SLICE frames a
    # slice): decoded and handled a slice a loop iteration, so one peer cannot hold the
    # loop for long; all of them, in order, before the call sent after them. With its
    # HELLO in front, the message is the one the server's handshake hands to attach.
    # With a walk step of 1,000 headers (the pure codec's is 8,192), the message is
    # checked over several loop passes first, its HELLO included.
    if walk_step is not None:
        monkeypatch.setattr(protocol_module, "_WALK_STEP", walk_step)
    router = fastrpc.Router()
    seen: list[tuple[int, int]] = []
    passes = [0]

    @router.method
    def note(i: int) -> None:
        seen.append((i, passes[0]))

    @router.method
    def count() -> int:
        return len(seen)

    n = 5 * fastrpc.options.FRAMES_PER_SLICE

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:  # counts loop iterations
            passes[0] += 1
            ticker[0] = loop.call_soon(tick)

        ticker = [loop.call_soon(tick)]
        try:
            async with pair(router) as (server, _):
                core = Connection(Role.CLIENT, Settings())
                ws = await ws_connect(server.url, compression=None, ping_interval=None, max_size=None, **NO_PROXY)
                try:
                    hello = core.next_message()
                    assert isinstance(hello, bytes)
                    if not with_hello:
                        await ws.send(hello)
                        core.receive_message(await recv_binary(ws))
                    for i in range(n):
                        core.send_notification("note", msgspec.msgpack.encode([i]))
                    notes = b""
                    while (part := core.next_message()) is not None:
                        notes += part if isinstance(part, bytes) else b"".join(part)
                    await ws.send((hello + notes) if with_hello else notes)
                    if with_hello:
                        core.receive_message(await recv_binary(ws))
                    cid = core.send_call("count", msgspec.msgpack.encode([]))
                    await ws.send(core.next_message())
                    answers = []
                    while not answers:
                        frames = F.decode_message(await recv_binary(ws, 10), 1 << 30)
                        answers = [f for f in frames if f.type == F.RESPONSE and f.id == cid]
                    assert msgspec.msgpack.decode(answers[0].payload) == n
                finally:
                    await ws.close()
        finally:
            ticker[0].cancel()
        assert [i for i, _ in seen] == list(range(n))
        assert len({p for _, p in seen}) >= 5, "the message was handled in fewer loop passes than slices"

    run(main(), 30)


def test_a_long_message_broken_at_its_end_runs_none_of_its_notifications(monkeypatch: Any) -> None:
    # Five slices' worth of notifications and a last frame cut short, in one message,
    # checked 1,000 headers a loop pass (as the pure codec checks 8,192): none of
    # them runs; that connection closes with 1002, and the server serves the next.
    monkeypatch.setattr(protocol_module, "_WALK_STEP", 1000)
    router = make_router(Counters())
    ran: list[int] = []

    @router.method
    def note(i: int) -> None:
        ran.append(i)

    async def main() -> None:
        async with pair(router) as (server, good):
            async with raw_client(server.url) as raw:
                m = b"note"
                notes = b"".join(
                    frame(F.NOTIFY, 0, 0, F.encode_varint(len(m)) + m + msgspec.msgpack.encode([i]))
                    for i in range(5 * fastrpc.options.FRAMES_PER_SLICE)
                )
                await raw.send(notes + frame(F.NOTIFY, 0, 0, m)[:-2])
                code, reason = await raw.drain()
                assert code == 1002 and "truncated frame" in reason
            assert ran == []
            assert await good.call("add", 1, 2) == 3
            await check_good_client(server.url)

    run(main())
