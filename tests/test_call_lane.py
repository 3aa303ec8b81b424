"""The call lane (``Connection.take_call`` / ``take_answer``, ``Handlers.call``): a
message that is one plain REQUEST or one RESPONSE skips ``receive_frames`` and its
events; so does a message of plain REQUESTs alone (``Connection.take_calls``) or of
RESPONSEs to pending plain calls alone (``Connection.take_answers``): calls in flight. These tests check that sequential calls take it, that it keeps the same
books (counters, running calls, the memory budget), and that every outcome a caller
can see is the one the general path gives: the same calls are made on a connection
without resumption (the lane) and on one with it (``receive_frames``, always), over
real loopback connections, and the answers compared."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from _util import pair, raw_client, run, server_peer, ws_message, ws_open
from hypothesis import event, given, settings
from hypothesis import strategies as st

import fastrpc
from fastrpc import frames as F
from fastrpc.calls import FLAG_RAW
from fastrpc.events import ResponseReceived
from fastrpc.exceptions import ProtocolError
from fastrpc.protocol import Connection, Role, Settings

SEEN: list[Any] = []  # the peer current_peer() gave to the handler "whoami"


class Oops(Exception):
    pass


def make_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def echo(x):  # type: ignore[no-untyped-def]  # no annotations: no spec, the whole lane
        return x

    @router.method
    def add(a, b):  # type: ignore[no-untyped-def]
        return a + b

    @router.method
    def typed(a: int, b: int) -> int:  # a spec: its arguments converted (on_request's)
        return a * b

    @router.method
    def fails():  # type: ignore[no-untyped-def]
        raise Oops("it failed")

    @router.method
    def later():  # type: ignore[no-untyped-def]
        async def inner() -> str:
            await asyncio.sleep(0)
            return "awaited"

        return inner()

    @router.method
    def unencodable():  # type: ignore[no-untyped-def]
        return object()

    @router.method
    def whoami():  # type: ignore[no-untyped-def]
        SEEN.append(fastrpc.current_peer())
        return "seen"

    @router.method
    async def slow(x):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return x

    @router.method(authorize=lambda peer, method: False)
    def guarded(x):  # type: ignore[no-untyped-def]
        return x

    return router


# (method, args): every outcome a plain call can have.
CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("echo", (b"raw bytes",)),
    ("echo", (b"",)),
    ("echo", ({"a": [1, 2.5, None]},)),
    ("add", (1, 2)),
    ("add", (1,)),  # the arguments do not bind: InvalidArguments
    ("typed", (6, 7)),
    ("typed", ("x", 7)),
    ("fails", ()),
    ("later", ()),
    ("unencodable", ()),
    ("whoami", ()),
    ("slow", (b"async",)),
    ("guarded", (b"raw",)),
    ("guarded", (1,)),
    ("missing", (1,)),
    ("echo", (b"x" * 20_000,)),  # over max_connection_memory below: PayloadTooLarge
]


def _outcome(result: Any) -> Any:
    if isinstance(result, fastrpc.RemoteError):
        return (type(result).__name__, result.type_name, result.message)
    return result


async def _outcome_of(peer: fastrpc.RpcPeer, method: str, args: tuple[Any, ...]) -> Any:
    try:
        return await asyncio.wait_for(peer.call(method, *args), 5)
    except fastrpc.RemoteError as e:
        return _outcome(e)


async def _outcomes(peer: fastrpc.RpcPeer, together: bool = False) -> list[Any]:
    """Every call of CALLS: one after the other, or all in flight at once (made in one
    loop pass: one message of REQUESTs)."""
    if together:
        return list(await asyncio.gather(*(_outcome_of(peer, m, a) for m, a in CALLS)))
    return [await _outcome_of(peer, m, a) for m, a in CALLS]


def _count(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the core's calls of the lane and of the general path (instrumentation of
    the real methods: they still run)."""
    seen: Counter[str] = Counter()
    for name in ("take_call", "take_answer", "take_answers", "take_calls", "receive_frames"):
        real = getattr(Connection, name)

        def counted(self: Connection, arg: Any, _real: Any = real, _name: str = name) -> Any:
            seen[_name] += 1
            return _real(self, arg)

        monkeypatch.setattr(Connection, name, counted)
    return seen


def _count_admitted(monkeypatch: pytest.MonkeyPatch, seen: Counter[str]) -> None:
    """Count the admissions of take_calls messages' REQUESTs (``seen["admit"]``): the
    function take_calls returns is wrapped (it still runs)."""
    real = Connection.take_calls

    def counting(self: Connection, frames: Any) -> Any:
        admit = real(self, frames)
        if admit is None:
            return None

        def counted(f: Any) -> Any:
            seen["admit"] += 1
            return admit(f)

        return counted

    monkeypatch.setattr(Connection, "take_calls", counting)


OPTS = {"max_connection_memory": 16_384}


def _compiled_lane(peer: fastrpc.RpcPeer) -> Any:
    """The compiled call lane (frames.CallLane) reading ``peer``'s transport, or None."""
    return getattr(peer.transport, "_lane", None)


def _served(server: fastrpc.Server) -> int:
    """The calls the compiled lanes of all of ``server``'s connections took."""
    return sum(lane.served for lane in map(_compiled_lane, server.peers) if lane is not None)


def test_sequential_calls_take_the_lane_and_keep_the_books(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequential plain calls go through take_call / take_answer, not receive_frames;
    both sides count every message, frame and byte as before; nothing stays running
    or charged once they are answered."""

    async def main() -> None:
        async with pair(make_router(), server_opts=OPTS) as (server, peer):
            await peer.call("echo", b"warm")
            sp = await server_peer(server)
            core, score = peer.core, sp.core
            t, st = core.traffic, score.traffic
            before = (t.messages_out, t.frames_out, t.messages_in, t.frames_in, t.bytes_out)
            sbefore = (st.messages_in, st.frames_in, st.messages_out, st.frames_out, st.bytes_in)
            seen = _count(monkeypatch)
            lane, client_lane = _compiled_lane(sp), _compiled_lane(peer)
            served = lane.served if lane is not None else 0
            settled = client_lane.settled if client_lane is not None else 0
            sent = client_lane.sent if client_lane is not None else 0
            n = 50
            for i in range(n):
                assert await peer.call("echo", b"%d" % i) == b"%d" % i
                assert await peer.call("add", i, 1) == i + 1
            calls = 2 * n
            # The raw echo calls take the compiled lane where it is built (frames.CallLane,
            # in C: no take_call, no take_answer), both ways; the others take_call and
            # take_answer.
            compiled = lane.served - served if lane is not None else 0
            answers = client_lane.settled - settled if client_lane is not None else 0
            assert compiled == answers == (n if F.CallLane is not None else 0)
            assert (client_lane.sent - sent if client_lane is not None else 0) == compiled
            assert seen["take_call"] + compiled == calls and seen["take_answer"] + answers == calls
            assert seen["receive_frames"] == 0
            after = (t.messages_out, t.frames_out, t.messages_in, t.frames_in)
            assert [a - b for a, b in zip(after, before)] == [calls] * 4
            safter = (st.messages_in, st.frames_in, st.messages_out, st.frames_out)
            assert [a - b for a, b in zip(safter, sbefore)] == [calls] * 4
            assert st.bytes_in - sbefore[4] == t.bytes_out - before[4] > 0
            for c in (core, score):
                stats = c.stats()
                assert stats["calls_in"] == [] and stats["calls_out"] == {} and stats["memory"] == 0

    run(main(), timeout=30)


def test_calls_in_flight_take_the_lane_and_keep_the_books(monkeypatch: pytest.MonkeyPatch) -> None:
    """100 plain calls made together: the server takes the message of REQUESTs through
    take_calls and the function it returns, the client the message of answers through
    take_answers, neither through receive_frames; both sides count every message and
    frame, and nothing stays running or charged."""

    async def main() -> None:
        async with pair(make_router(), server_opts=OPTS) as (server, peer):
            await peer.call("echo", b"warm")
            sp = await server_peer(server)
            core, score = peer.core, sp.core
            before = (
                core.traffic.frames_out,
                core.traffic.frames_in,
                score.traffic.frames_in,
                score.traffic.frames_out,
            )
            messages = (
                core.traffic.messages_out,
                score.traffic.messages_in,
                score.traffic.messages_out,
                core.traffic.messages_in,
            )
            seen = _count(monkeypatch)
            _count_admitted(monkeypatch, seen)
            n = 100
            got = await asyncio.gather(*(peer.call("echo", b"%d" % i) for i in range(n)))
            assert got == [b"%d" % i for i in range(n)]
            got = await asyncio.gather(*(peer.call("add", i, 1) for i in range(n)))
            assert got == [i + 1 for i in range(n)]
            # (a batch's first call may leave alone, at once: a message of its own)
            assert seen["take_calls"] >= 2 and seen["admit"] + seen["take_call"] == 2 * n
            assert seen["take_answers"] >= 2 and seen["take_answer"] == 0
            assert seen["receive_frames"] == 0
            after = (core.traffic.frames_out, core.traffic.frames_in, score.traffic.frames_in, score.traffic.frames_out)
            assert [a - b for a, b in zip(after, before)] == [2 * n] * 4
            sent, read, answered, got_back = (
                a - b
                for a, b in zip(
                    (
                        core.traffic.messages_out,
                        score.traffic.messages_in,
                        score.traffic.messages_out,
                        core.traffic.messages_in,
                    ),
                    messages,
                )
            )
            assert sent == read >= 2 and answered == got_back >= 2
            for c in (core, score):
                stats = c.stats()
                assert stats["calls_in"] == [] and stats["calls_out"] == {} and stats["memory"] == 0

    run(main(), timeout=30)


@pytest.mark.parametrize("together", [False, True], ids=["sequential", "in flight"])
@pytest.mark.parametrize("resume", [False, True], ids=["lane", "general path"])
def test_every_outcome_is_the_general_paths(monkeypatch: pytest.MonkeyPatch, resume: bool, together: bool) -> None:
    """The same calls, with the lane (no resumption) and without it (resumption on:
    every message goes through receive_frames), one after the other or all in flight
    at once, give the same answers and errors, and a handler sees its own peer as
    current_peer()."""
    expected = [
        b"raw bytes",
        b"",
        {"a": [1, 2.5, None]},
        3,
        ("InvalidArguments", "InvalidArguments", "add(): missing a required argument: 'b'"),
        42,
        ("InvalidArguments", "InvalidArguments", None),
        ("RemoteError", "Oops", "it failed"),
        "awaited",
        ("RemoteError", None, None),
        "seen",
        b"async",
        ("PermissionDenied", "PermissionDenied", "not allowed to call 'guarded'"),
        ("PermissionDenied", "PermissionDenied", "not allowed to call 'guarded'"),
        ("MethodNotFound", "MethodNotFound", "no method 'missing'"),
        ("RemoteError", "PayloadTooLarge", "would take about 20000 bytes once decoded"),
    ]

    async def main() -> list[Any]:
        SEEN.clear()
        opts = {**OPTS, "resume": resume}
        async with pair(make_router(), server_opts=opts, client_opts={"resume": resume}) as (server, peer):
            await peer.call("echo", b"warm")
            seen = _count(monkeypatch)
            sp = await server_peer(server)
            _count_admitted(monkeypatch, seen)
            lane = _compiled_lane(sp)
            served = lane.served if lane is not None else 0
            got = await _outcomes(peer, together)
            compiled = lane.served - served if lane is not None else 0
            assert [sp] == SEEN
            if resume:
                assert seen["take_call"] == 0 and seen["take_answer"] == 0 and seen["receive_frames"] > 0
                assert seen["take_calls"] == 0 and seen["take_answers"] == 0 and seen["admit"] == 0
                assert compiled == 0
            elif together:  # one message of REQUESTs: take_calls, then each admitted
                assert seen["take_calls"] >= 1 and seen["admit"] + seen["take_call"] == len(CALLS)
                assert compiled == 0
            else:
                # The two small raw echo calls take the compiled lane where it is built
                # (frames.CallLane): raw bytes to a plain sync handler, in one small frame.
                assert compiled == (2 if F.CallLane is not None else 0)
                assert seen["take_call"] + compiled == len(CALLS) and seen["take_answer"] >= 1
            for c in (peer.core, sp.core):
                assert c.stats()["calls_in"] == [] and c.stats()["memory"] == 0
            return got

    got = run(main(), timeout=30)
    assert len(got) == len(expected)
    for have, want in zip(got, expected):
        if isinstance(want, tuple):
            assert isinstance(have, tuple) and have[0] == want[0], (have, want)
            assert want[1] is None or have[1] == want[1], (have, want)
            assert want[2] is None or want[2] in have[2], (have, want)
        else:
            assert have == want


@pytest.mark.parametrize(
    ("fid", "why"), [(2, "call id of the wrong parity"), (0, "call id of the wrong parity")], ids=["even", "zero"]
)
def test_a_lone_request_with_a_bad_id_closes_that_connection_alone(fid: int, why: str) -> None:
    """The lane checks a REQUEST's id as receive_frames does: a client's call with an
    even id is a protocol error (1002, the reason named); the other connection's
    calls go on."""

    async def main() -> None:
        async with pair(make_router()) as (server, peer):
            async with raw_client(server.url) as bad:
                assert await peer.call("echo", b"before") == b"before"
                await bad.send(F.encode_frame(F.REQUEST, 0x40, fid, b"\x04echo" + b"x"))
                code, reason = await bad.drain()
                assert code == 1002 and why in reason, (code, reason)
            assert await peer.call("echo", b"after") == b"after"

    run(main(), 30)


def test_a_lone_request_reusing_a_running_calls_id_closes_the_connection() -> None:
    """Two REQUESTs with one id, the first still running (an async handler): the
    second is refused as receive_frames refuses it ("call id in use", 1002)."""

    async def main() -> None:
        router = make_router()
        gate = asyncio.Event()

        @router.method
        async def wait():  # type: ignore[no-untyped-def]
            await gate.wait()
            return b"done"

        async with pair(router, check_idle=False) as (server, _):
            async with raw_client(server.url) as bad:
                await bad.send(F.encode_frame(F.REQUEST, 0, 1, b"\x04wait"))  # no arguments
                await asyncio.sleep(0.05)
                await bad.send(F.encode_frame(F.REQUEST, 0x40, 1, b"\x04echo" + b"x"))
                code, reason = await bad.drain()
                assert code == 1002 and "call id in use" in reason, (code, reason)
                gate.set()

    run(main(), 30)


def test_a_message_of_calls_repeating_an_id_is_refused_as_before() -> None:
    """Two sync calls with one id in one message: the lane would answer the first
    before admitting the second, whose id would be free by then; receive_frames
    admits both first and refuses the second ("call id in use", 1002). The message
    goes to receive_frames (ids must rise for the lane): refused as before."""

    async def main() -> None:
        async with pair(make_router()) as (server, peer):
            async with raw_client(server.url) as client:
                head = F.encode_varint(4) + b"echo"
                await client.send(F.encode_batch([(F.REQUEST, FLAG_RAW, c, head + b"x") for c in (1, 3, 1)]))
                code, reason = await client.drain()
                assert code == 1002 and "call id in use" in reason, (code, reason)
            assert await peer.call("echo", b"after") == b"after"

    run(main(), 30)


def test_a_message_of_more_calls_than_max_pending_calls_is_refused_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane admits a message's calls one by one, each as the one before it is
    handled, so it takes a message of plain calls only when max_pending_calls has a
    slot for every one of them. A message of two sync calls under a limit of two takes
    it and is answered; one of three goes through receive_frames, which refuses it as
    it always did (1008, the option named), though sync handlers would have ended one
    by one. So does a message that repeats an id (below)."""
    seen = _count(monkeypatch)

    async def main() -> None:
        async with pair(make_router(), server_opts={"max_pending_calls": 2}) as (server, _):
            async with raw_client(server.url) as client:
                await asyncio.sleep(0.05)  # the handshakes' messages counted
                seen.clear()
                head = F.encode_varint(4) + b"echo"
                await client.send(F.encode_batch([(F.REQUEST, FLAG_RAW, c, head + b"%d" % c) for c in (1, 3)]))
                got = [(f.type, f.id, bytes(f.payload)) for f in await client.recv_frames()]
                assert got == [(F.RESPONSE, c, b"%d" % c) for c in (1, 3)]
                assert seen["take_calls"] == 1 and seen["receive_frames"] == 0
                await client.send(F.encode_batch([(F.REQUEST, FLAG_RAW, c, head + b"%d" % c) for c in (5, 7, 9)]))
                code, reason = await client.drain()
                assert code == 1008 and "max_pending_calls is 2" in reason, (code, reason)
                assert seen["take_calls"] == 2 and seen["receive_frames"] == 1  # the server's, refusing it

    run(main(), 30)


async def _ws_messages(reader: asyncio.StreamReader, n: int) -> list[list[tuple[int, int, bytes]]]:
    """The next ``n`` messages from a server, each as its frames' ``(type, id, payload)``."""
    out = []
    for _ in range(n):
        msg = await ws_message(reader)
        out.append([(f.type, f.id, bytes(f.payload)) for f in F.decode_message(msg, 1 << 20, 1 << 16, True)])
    return out


def _call(cid: int, arg: bytes) -> bytes:
    """A raw echo call as a client's WebSocket frame (masked)."""
    return F.mask_frame(F.encode_frame(F.REQUEST, 0x40, cid, b"\x04echo" + arg), b"\x05\x06\x07\x08")


def test_an_answer_alone_leaves_at_once_and_a_reads_answers_leave_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that is one plain call: its answer is written at once, as a message of
    its own (``Connection.answer_now``), before the rest of the read's handling. A
    read of several calls, each a message of its own: their answers still leave
    together, as one message, at the end of the read."""
    at_once: list[int] = []
    real = Connection.answer_now

    def counted(self: Connection, call_id: int, payload: bytes) -> bytes | None:
        msg = real(self, call_id, payload)
        if msg is not None:
            at_once.append(call_id)
        return msg

    monkeypatch.setattr(Connection, "answer_now", counted)

    async def main() -> None:
        async with pair(make_router()) as (server, _):
            reader, writer = await ws_open(server.port)
            try:
                writer.write(b"".join(_call(2 * i + 1, b"%d" % i) for i in range(5)))  # one write, one read
                got = await asyncio.wait_for(_ws_messages(reader, 1), 5)
                assert got == [[(F.RESPONSE, 2 * i + 1, b"%d" % i) for i in range(5)]]
                assert at_once == []
                served = _served(server)
                for cid in (11, 13, 15):  # reads of one call each
                    writer.write(_call(cid, b"alone"))
                    got = await asyncio.wait_for(_ws_messages(reader, 1), 5)
                    assert got == [[(F.RESPONSE, cid, b"alone")]]
                if F.CallLane is not None:  # the compiled lane answers each from its read
                    assert _served(server) - served == 3 and at_once == []
                else:
                    assert at_once == [11, 13, 15]
            finally:
                writer.close()
                await writer.wait_closed()

    run(main(), 30)


# ------------------------------------------------------- a message of answers, sans-I/O


def _caller(n: int, cancelled: frozenset[int]) -> tuple[Connection, list[int]]:
    """A client core after the HELLO exchange with ``n`` plain calls made, those at
    the indexes in ``cancelled`` cancelled; the same every time for the same input."""
    c = Connection(Role.CLIENT, Settings())
    c.next_message()
    c.receive_message(F.encode_frame(F.HELLO, 0, 0, Settings().to_wire()))
    ids = [c.send_call("echo", b"x", True) for _ in range(n)]
    for i in sorted(cancelled):
        c.cancel_call(ids[i])
    while c.next_message() is not None:
        pass
    return c, ids


_ANSWER = st.one_of(
    st.tuples(st.just("call"), st.integers(0, 7), st.sampled_from([0, FLAG_RAW])),
    st.tuples(st.just("unknown"), st.integers(0, 7), st.just(FLAG_RAW)),
    st.tuples(st.just("flag"), st.integers(0, 7), st.just(FLAG_RAW | F.FLAG_STREAM)),
    st.tuples(st.just("credit"), st.integers(0, 7), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 8),
    cancelled=st.frozensets(st.integers(0, 7), max_size=3),
    answers=st.lists(_ANSWER, min_size=1, max_size=8),
)
def test_take_answers_takes_a_message_whole_or_leaves_it_to_receive_frames(
    n: int, cancelled: frozenset[int], answers: list[tuple[str, int, int]]
) -> None:
    """``Connection.take_answers`` against ``receive_frames`` on a twin core, for
    messages of answers to pending, cancelled and unknown calls, answers with other
    flags, other frames and ids answered twice: it takes the message only when every
    frame is the RESPONSE to a pending plain call, and then leaves the core as
    receive_frames does, whose events would have been exactly one ResponseReceived
    a frame; otherwise it does nothing (the twin's books equal), or raises the
    ProtocolError receive_frames raises."""
    cancelled = frozenset(i for i in cancelled if i < n)
    core, ids = _caller(n, cancelled)
    twin, _ = _caller(n, cancelled)
    rows = []
    for kind, i, flags in answers:
        if kind == "unknown":
            rows.append((F.RESPONSE, flags, 2 * n + 2 * i + 1, b"r"))
        elif kind == "credit":
            rows.append((F.CREDIT, 0, ids[i % n], F.encode_varint(16)))
        else:
            rows.append((F.RESPONSE, flags, ids[i % n], b"r%d" % i))
    frames = F.decode_message(F.encode_batch(rows), F.VARINT_MAX)
    pending = {ids[i] for i in range(n) if i not in cancelled}
    whole = all(t == F.RESPONSE and fl in (0, FLAG_RAW) and cid in pending for t, fl, cid, _ in rows)
    before = (core.stats(), core.traffic.frames_in)
    try:
        took = core.take_answers(frames)
    except ProtocolError as e:
        with pytest.raises(ProtocolError) as want:
            twin.receive_frames(frames)
        assert (str(e), e.code) == (str(want.value), want.value.code)
        assert whole and len({r[2] for r in rows}) < len(rows)  # an id answered twice
        event("an id answered twice")
        return
    assert took == (whole and len({r[2] for r in rows}) == len(rows))
    event(f"taken: {took}")
    if not took:
        assert (core.stats(), core.traffic.frames_in) == before
        return
    events = twin.receive_frames(frames)
    assert events == [ResponseReceived(f.id, f.payload, f.flags != 0) for f in frames]
    assert (core.stats(), core.traffic.frames_in) == (twin.stats(), twin.traffic.frames_in)


def test_take_calls_takes_a_message_of_plain_calls_alone() -> None:
    """``Connection.take_calls``: a message of plain REQUESTs alone is counted once,
    its frames each, and its calls are then admitted one by one by the function it
    returns (``CallTable.take``); a message with any other frame or flag is left
    whole to ``receive_frames`` (None), nothing counted."""
    s = Connection(Role.SERVER, Settings())
    s.receive_message(F.encode_frame(F.HELLO, 0, 0, Settings().to_wire()))
    s.next_message()
    head = F.encode_varint(4) + b"echo"

    def message(*rows: tuple[int, int, int, bytes]) -> list[Any]:
        return F.decode_message(F.encode_batch(list(rows)), F.VARINT_MAX)  # type: ignore[no-any-return]

    for other in (
        (F.REQUEST, FLAG_RAW | F.FLAG_STREAM, 5, head),  # a streaming call
        (F.NOTIFY, FLAG_RAW, 0, head),
        (F.CANCEL, 0, 1, b""),
        (F.REQUEST, FLAG_RAW, 1, head + b"b"),  # an id twice: receive_frames refuses it
    ):
        frames = message((F.REQUEST, FLAG_RAW, 1, head + b"a"), other)
        before = (s.traffic.frames_in, s.stats())
        assert s.take_calls(frames) is None
        assert (s.traffic.frames_in, s.stats()) == before
    frames = message(*((F.REQUEST, FLAG_RAW, c, head + b"%d" % c) for c in (1, 3, 5)))
    before = s.traffic.frames_in
    admit = s.take_calls(frames)
    assert admit is not None
    assert s.traffic.frames_in == before + 3
    assert s.stats()["calls_in"] == []  # none admitted yet
    got = [admit(f) for f in frames]
    assert [(m, bytes(p)) for m, p, _ in got] == [("echo", b"1"), ("echo", b"3"), ("echo", b"5")]
    assert sorted(s.stats()["calls_in"]) == [1, 3, 5]  # type: ignore[arg-type]
