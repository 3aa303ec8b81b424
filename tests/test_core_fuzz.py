"""A time-bounded fuzzer of the sans-I/O core (hypothesis).

Random and mutated messages go to a server ``Connection`` after a HELLO, once with each
frame codec (the compiled ``fastrpc._frames`` and the pure ``fastrpc._frames_py``); see
tests/_core_fuzz.py. Both must give the same transcript (events, bytes sent, error),
and nothing but :class:`fastrpc.exceptions.ProtocolError` (or a subclass) may escape.

The fuzzing tests share a time budget: ``FASTRPC_FUZZ_SECONDS`` (10 s by default, for
CI; set it higher to fuzz longer). ``test_found_*`` replay the inputs fuzzing found.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from _core_fuzz import CODECS, SERVER_SETTINGS, App, converse, hello, undocumented
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_frames_fuzz import mutate, mutations

from fastrpc import _frames_py as P
from fastrpc.protocol import Connection, Role, Settings, encode_error

BUDGET = float(os.environ.get("FASTRPC_FUZZ_SECONDS", "10"))
VARINT_MAX = (1 << 62) - 1
ROUND = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def fuzz_for(seconds: float, body: Callable[[], None]) -> int:
    """Run ``body`` (a hypothesis test of a few dozen examples) again and again, each
    time with new random examples, for ``seconds``; return how many rounds ran."""
    end = time.monotonic() + seconds
    rounds = 0
    while True:
        body()
        rounds += 1
        if time.monotonic() >= end:
            return rounds


def check(transcripts: dict[str, list[tuple[Any, ...]]], what: Any) -> None:
    """The same transcript from every codec, and no undocumented exception."""
    items = list(transcripts.items())
    for name, t in items:
        bad = undocumented(t)
        assert bad is None, f"{name} codec: undocumented exception {bad} for {what!r}"
    for (n1, t1), (n2, t2) in zip(items, items[1:]):
        assert t1 == t2, f"{n1} and {n2} codecs differ for {what!r}:\n{t1}\n{t2}"


def run_both(server: dict[str, int], messages: list[bytes], app: tuple[bool, ...], **kw: Any) -> None:
    transcripts = {name: converse(codec, server, messages, App(*app), **kw) for name, codec in CODECS.items()}
    check(transcripts, (server, messages, app, kw))


# ----------------------------------------------------------------- strategies

FRAME_TYPES = [
    P.HELLO,
    P.REQUEST,
    P.RESPONSE,
    P.ERROR,
    P.NOTIFY,
    P.CANCEL,
    P.STREAM_DATA,
    P.STREAM_END,
    P.STREAM_ERROR,
    P.STREAM_ABORT,
    P.STREAM_CLOSE,
    P.CREDIT,
    P.STREAMS,
    P.PING,
    P.PONG,
    P.GOAWAY,
    P.RESUME,
    P.RESUME_OK,
    P.ACK,
    0x00,
    0x07,
    0x3F,
    0x40,
    0xFF,
]
FLAGS = st.one_of(
    st.sampled_from(
        [
            0,
            P.FLAG_OPEN,
            P.FLAG_MORE,
            P.FLAG_OPEN | P.FLAG_MORE,
            P.FLAG_COMPRESSED,
            P.FLAG_OPEN | P.FLAG_COMPRESSED,
            P.FLAG_OPEN | P.FLAG_MORE | P.FLAG_COMPRESSED,
            P.FLAG_STREAM,
            P.FLAG_CHANNEL,
            P.FLAG_STREAM | P.FLAG_CHANNEL,
            P.FLAG_DEADLINE,
            P.FLAG_DEADLINE | P.FLAG_STREAM,
            0x40,
            0x40 | P.FLAG_OPEN,
        ]
    ),
    st.integers(0, 255),
)
# Mostly a few small ids, so that frames meet the calls and streams of other frames.
IDS = st.one_of(
    st.sampled_from([1, 3, 5, 2, 0]),
    st.integers(0, 12),
    st.sampled_from([63, 64, 1001, 1 << 30, VARINT_MAX]),
    st.integers(0, VARINT_MAX),
)
NUMBERS = st.one_of(
    st.integers(0, 70),
    st.sampled_from([1023, 1024, 1025, 4096, 1 << 16, 1 << 18, (1 << 18) + 1, 1 << 20, 1 << 24, 1 << 40, VARINT_MAX]),
    st.integers(0, VARINT_MAX),
)
varint = NUMBERS.map(P.encode_varint)
small_bytes = st.binary(max_size=48)
METHODS = st.sampled_from([b"add", b"", b"x" * 40, b"\xff\xfe", "é".encode()])


@st.composite
def payloads(draw: st.DrawFn, ftype: int, flags: int) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    if ftype in (P.REQUEST, P.NOTIFY):
        head = draw(varint) if flags & P.FLAG_DEADLINE and ftype == P.REQUEST else b""
        method = draw(METHODS)
        n = draw(st.one_of(st.just(len(method)), st.integers(0, 80)))
        return head + P.encode_varint(n) + method + draw(small_bytes)
    if ftype in (P.CREDIT, P.STREAMS, P.ACK, P.GOAWAY):
        return draw(varint) + draw(st.sampled_from([b"", b"bye", b"\xff"]))
    if ftype == P.STREAM_DATA:
        size = draw(st.sampled_from([0, 1, 7, 100, 500, 1000, 1500, 4000]))
        data = b"\x01" * size
        if flags & P.FLAG_COMPRESSED and draw(st.booleans()):
            return zlib.compress(draw(st.sampled_from([data, b"\0" * 50_000])))
        return data
    if ftype in (P.ERROR, P.STREAM_ERROR):
        if draw(st.booleans()):
            return encode_error(
                "E", "m", draw(st.one_of(st.none(), st.integers(0, 5))), draw(st.one_of(st.none(), st.just("tb")))
            )
        return draw(varint) + draw(varint) + draw(small_bytes)
    if ftype in (P.RESUME, P.RESUME_OK):
        return draw(st.binary(min_size=32, max_size=32)) + draw(varint)
    if ftype == P.HELLO:
        return P.encode_settings(1, draw(st.dictionaries(st.integers(0, 12), NUMBERS, max_size=4)))
    if ftype in (P.PING, P.PONG, P.STREAM_ABORT):
        return draw(st.binary(max_size=100))
    return draw(small_bytes)


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, int, int, bytes]:
    ftype = draw(st.sampled_from(FRAME_TYPES))
    flags = draw(FLAGS)
    return ftype, flags, draw(IDS), draw(payloads(ftype, flags))


# Frames that meet each other's calls and streams (ids 1, 3, 5), as building blocks.
TOKENS = [
    (P.REQUEST, 0, 1, b"\x03add\x92\x01\x02"),
    (P.REQUEST, P.FLAG_STREAM, 1, b"\x03add\x90"),
    (P.REQUEST, P.FLAG_STREAM | P.FLAG_CHANNEL, 3, b"\x03add\x90"),
    (P.CANCEL, 0, 1, b""),
    (P.CANCEL, 0, 3, b""),
    (P.STREAM_DATA, P.FLAG_OPEN, 1, b"x" * 10),
    (P.STREAM_DATA, P.FLAG_OPEN, 3, b"x" * 10),
    (P.STREAM_DATA, P.FLAG_OPEN | P.FLAG_MORE, 5, b"x" * 10),
    (P.STREAM_DATA, P.FLAG_MORE, 5, b"x" * 10),
    (P.STREAM_DATA, 0, 5, b"x"),
    (P.STREAM_DATA, P.FLAG_OPEN | P.FLAG_COMPRESSED, 5, zlib.compress(bytes(3000))),
    (P.STREAM_END, 0, 1, b""),
    (P.STREAM_END, 0, 3, b""),
    (P.STREAM_CLOSE, 0, 1, b""),
    (P.CREDIT, 0, 1, b"\x44\x00"),
    (P.CREDIT, 0, 0, b"\x44\x00"),
]


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(min_size=0, max_size=64))
    if kind <= 3:
        return P.encode_batch(draw(st.lists(st.one_of(st.sampled_from(TOKENS), frames()), min_size=1, max_size=10)))
    batch = draw(st.lists(frames(), min_size=1, max_size=8))
    data = P.encode_batch(batch)
    if kind == 1:
        return mutate(data, draw(mutations))
    return data


client_settings = st.builds(
    Settings,
    max_frame_size=st.sampled_from([1024, 4096, 1 << 20]),
    max_message_size=st.just(4 << 20),
    initial_stream_window=st.sampled_from([1024, 256 << 10]),
    max_streams=st.sampled_from([1, 4, 1024]),
    max_pending_calls=st.sampled_from([1, 4, 1024]),
    compression=st.sampled_from([0, 1, 3]),
    resume=st.sampled_from([0, 1]),
    codec=st.sampled_from([0, 1]),
)
apps = st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans())
server_settings = st.sampled_from(SERVER_SETTINGS)


# ------------------------------------------------------------- conversations


@st.composite
def conversations(draw: st.DrawFn) -> list[bytes]:
    """What a real client core sends: calls, streams, pings, cancels, in some order."""
    core = Connection(Role.CLIENT, draw(client_settings))
    out = [core.handshake()]
    core.receive_message(P.encode_frame(P.HELLO, 0, 0, Settings(compression=1, resume=1).to_wire()))
    opened: list[int] = []
    calls: list[int] = []
    for op in draw(st.lists(st.integers(0, 7), min_size=1, max_size=12)):
        try:
            if op == 0 and core.can_call():
                calls.append(
                    core.send_request(
                        "add", b"\x92\x01\x02", stream=draw(st.booleans()), timeout=draw(st.sampled_from([None, 0.5]))
                    )
                )
            elif op == 1 and core.can_call():
                cid = core.send_request("chan", b"\x90", stream=True, channel=True)
                calls.append(cid)
                opened.append(cid)
            elif op == 2 and core.can_open_stream():
                opened.append(core.open_stream())
            elif op == 3 and opened:
                sid = draw(st.sampled_from(opened))
                if core.writable(sid):
                    core.send_item(sid, b"\x03" * draw(st.sampled_from([0, 1, 100, 3000])))
            elif op == 4 and opened:
                sid = opened.pop(draw(st.integers(0, len(opened) - 1)))
                if core.writable(sid):
                    draw(st.sampled_from([core.end_stream, lambda s: core.abort_stream(s, "no")]))(sid)
            elif op == 5 and calls:
                core.cancel_call(draw(st.sampled_from(calls)))
            elif op == 6:
                core.send_ping(draw(st.binary(max_size=8)))
            elif op == 7:
                core.send_notification("note", b"\x90")
        except Exception:
            continue
        msg = core.next_message()
        if msg is not None:
            out.append(msg)
    return out


# --------------------------------------------------------------------- fuzzing


def test_fuzz_random_frames() -> None:
    @ROUND
    @given(server_settings, client_settings, st.lists(messages(), min_size=1, max_size=8), apps)
    def one(server: dict[str, int], client: Settings, msgs: list[bytes], app: tuple[bool, ...]) -> None:
        run_both(server, [hello(client), *msgs], app)

    fuzz_for(BUDGET * 0.35, one)


def test_fuzz_mutated_conversations() -> None:
    @ROUND
    @given(server_settings, conversations(), st.lists(st.tuples(st.integers(0, 100), mutations), max_size=3), apps)
    def one(server: dict[str, int], msgs: list[bytes], changes: list[Any], app: tuple[bool, ...]) -> None:
        msgs = list(msgs)
        for where, change in changes:
            i = 1 + where % max(1, len(msgs) - 1) if len(msgs) > 1 else 0
            msgs[i] = mutate(msgs[i], change)
        run_both(server, msgs, app)

    fuzz_for(BUDGET * 0.35, one)


def test_fuzz_hello_and_raw_bytes() -> None:
    @ROUND
    @given(
        server_settings,
        st.one_of(
            client_settings.map(hello),
            st.builds(
                lambda v, d: P.encode_frame(P.HELLO, 0, 0, P.encode_settings(v, d)),
                st.sampled_from([0, 1, 2, VARINT_MAX]),
                st.dictionaries(st.integers(0, 12), NUMBERS, max_size=6),
            ),
            st.binary(max_size=40),
        ),
        st.lists(st.binary(max_size=80), max_size=4),
        apps,
    )
    def one(server: dict[str, int], first: bytes, rest: list[bytes], app: tuple[bool, ...]) -> None:
        run_both(server, [first, *rest], app)

    fuzz_for(BUDGET * 0.15, one)


def test_fuzz_resume_handshakes() -> None:
    # A session that moves to a new transport, with a handshake of any position and
    # token (the right one, a wrong one, a truncated one).
    @ROUND
    @given(
        conversations(),
        st.integers(0, 6),
        st.one_of(NUMBERS, st.integers(0, 20)),
        st.sampled_from(["right", "wrong", "short", "none"]),
        apps,
    )
    def one(msgs: list[bytes], at: int, pos: int, token: str, app: tuple[bool, ...]) -> None:
        server = {"resume": 1}
        # The token the fuzz driver gives the first session (see _core_fuzz._Tokens).
        tok = {"right": b"\x01" * 32, "wrong": b"\x07" * 32, "short": b"\x01" * 5, "none": b""}[token]
        extra = P.encode_frame(P.RESUME, 0, 0, tok + P.encode_varint(pos)) if token != "none" else b""
        handshake = P.encode_frame(P.HELLO, 0, 0, Settings(resume=1).to_wire()) + extra
        msgs = [hello(Settings(resume=1)), *msgs[1:]]
        run_both(server, msgs, app, resume_at=min(at, len(msgs)), resume_with=handshake)

    fuzz_for(BUDGET * 0.15, one)


# ------------------------------------------------------- what fuzzing found
#
# No exception other than ProtocolError escaped, and the two codecs always agreed (the
# fuzzers above for minutes, tests/fuzz_atheris.py for several more). What follows are
# bounds the core does not keep (issue 11): the hostile tests showed them through the
# server; here each is cut down to the smallest input, at the core, checked by
# _core_fuzz.invariants (atheris with FASTRPC_FUZZ_INVARIANTS=1 and
# tests/fuzz_atheris.dict finds the first within seconds). They fail until the core
# keeps these bounds.


def assert_bounded(server: dict[str, int], msgs: list[bytes], **app: bool) -> None:
    transcripts = {
        name: converse(codec, server, msgs, App(**app), check_invariants=True) for name, codec in CODECS.items()
    }
    check(transcripts, msgs)
    last = next(iter(transcripts.values()))[-1]
    assert last[0] != "INVARIANT", f"after message {last[1]}: {last[2]}"


def test_found_resume_past_the_sent_position_is_a_protocol_error() -> None:
    # A RESUME at a position the server never reached is refused in the handshake (it
    # was found raising later, in take_replay(), inside the I/O layer's writer task where
    # nothing caught it: tests/test_hostile.py, RESUME past the sent position: no close).
    handshake = P.encode_frame(P.HELLO, 0, 0, Settings(resume=1).to_wire()) + P.encode_frame(
        P.RESUME, 0, 0, b"\x01" * 32 + P.encode_varint(1000)
    )
    msgs = [hello(Settings(resume=1)), P.encode_frame(P.PING, 0, 0, b"")]
    for codec in CODECS.values():
        t = converse(codec, {"resume": 1}, msgs, resume_at=1, resume_with=handshake)
        assert t[-1][0] == "protocol-error" and "past the 0 frames sent" in t[-1][2], t


def test_found_a_plain_call_keeps_the_stream_opened_on_its_id() -> None:
    # REQUEST (no CHANNEL flag) and STREAM_DATA with OPEN on its id: taken as the call's
    # input; after the call is answered the stream stays, with its data, for ever.
    msg = P.encode_batch([(P.REQUEST, 0, 1, b"\x03add\x92\x01\x02"), (P.STREAM_DATA, P.FLAG_OPEN, 1, b"x" * 100)])
    assert_bounded({}, [hello(), msg], read=False)


def test_found_compressed_items_are_held_inflated_past_the_window() -> None:
    bomb = zlib.compress(bytes(100_000))
    msg = P.encode_batch(
        [(P.STREAM_DATA, P.FLAG_OPEN | P.FLAG_COMPRESSED, 1, bomb), (P.STREAM_DATA, P.FLAG_COMPRESSED, 1, bomb)]
    )
    server = {"compression": 1, "max_item_size": 100_000, "initial_stream_window": 1024}
    assert_bounded(server, [hello(Settings(compression=1)), msg], read=False)


@pytest.mark.parametrize("kind", ["stream_call_cancelled", "channel_input_never_sent"])
def test_found_refused_stream_ids_grow_with_the_calls(kind: str) -> None:
    # Ids refused before their stream arrived are kept until the stream's end arrives,
    # which the peer may never send: one per call (the hostile test: 200,000 calls).
    msgs = [hello()]
    for i in range(5):
        cid = 2 * i + 1
        if kind == "stream_call_cancelled":
            msgs.append(P.encode_batch([(P.REQUEST, P.FLAG_STREAM, cid, b"\x03add\x90"), (P.CANCEL, 0, cid, b"")]))
        else:
            msgs.append(P.encode_frame(P.REQUEST, P.FLAG_STREAM | P.FLAG_CHANNEL, cid, b"\x03add\x90"))
    assert_bounded({"max_pending_calls": 2, "max_streams": 2}, msgs, answer=kind != "stream_call_cancelled")


def test_found_unclaimed_streams_hold_more_than_the_connection_window() -> None:
    # Every stream may hold its window unread; the connection window is given back on
    # arrival, so nothing bounds the sum but max_streams x window (256 MiB by default).
    server = {"initial_stream_window": 1024, "connection_window": 1024, "max_item_size": 100}
    msg = P.encode_batch([(P.STREAM_DATA, P.FLAG_OPEN, sid, b"x" * 990) for sid in (1, 3, 5)])
    assert_bounded(server, [hello(), msg], read=False)


def test_found_fragments_of_many_streams_are_held_together() -> None:
    # Fragments are credited on arrival: each stream may hold max_item_size of an
    # unfinished item, all streams together max_streams x max_item_size (16 GiB).
    server = {"initial_stream_window": 1024, "connection_window": 1024, "max_item_size": 4096}
    frames = []
    for sid in (1, 3, 5):
        frames.append((P.STREAM_DATA, P.FLAG_OPEN | P.FLAG_MORE, sid, b"x" * 900))
        frames += [(P.STREAM_DATA, P.FLAG_MORE, sid, b"x" * 900)] * 3
    assert_bounded(server, [hello(), P.encode_batch(frames)], read=False)
