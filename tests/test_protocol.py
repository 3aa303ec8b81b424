"""The sans-I/O connection core (``fastrpc.protocol.Connection``), with no sockets and
no event loop: two cores wired back to back (one's ``next_message()`` fed to the
other's ``receive_message()``), plus hand-built frames to provoke protocol errors.

Runs against whichever frame codec is live (compiled, or pure with
``FASTRPC_NO_EXTENSIONS=1``). The wire format is ``docs/protocol.md``.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

import pytest

from fastrpc import compression as C
from fastrpc import frames as F
from fastrpc import options as O
from fastrpc import protocol as protocol_module
from fastrpc.budget import PingLimit
from fastrpc.events import (
    CallCancelled,
    CallFailed,
    CreditGranted,
    Event,
    GoAwayReceived,
    HelloReceived,
    NotificationReceived,
    PongReceived,
    RequestReceived,
    ResponseReceived,
    StreamClosedByPeer,
    StreamOpened,
    StreamReadable,
)
from fastrpc.exceptions import (
    ConnectionClosed,
    ErrorCode,
    LimitExceeded,
    PayloadTooLarge,
    ProtocolError,
    RemoteError,
    RemoteStreamError,
    StreamAborted,
    StreamClosed,
)
from fastrpc.protocol import (
    ACK_BYTES,
    ACK_FRAMES,
    FLAG_RAW,
    FRAME_CHARGE,
    TOKEN_SIZE,
    Connection,
    Role,
    SessionLost,
    Settings,
    decode_error,
    encode_error,
)
from fastrpc.stream_state import SHORT_QUEUE

FrameTuple = tuple[int, int, int, bytes]
V = F.encode_varint


# --------------------------------------------------------------------------- helpers


def frames_of(msg: bytes | None) -> list[FrameTuple]:
    """The frames of one message as ``(type, flags, id, payload bytes)`` tuples."""
    assert msg is not None, "a message was expected"
    return [(f.type, f.flags, f.id, bytes(f.payload)) for f in F.decode_message(msg, F.VARINT_MAX)]


def batch(*frames: FrameTuple | tuple[int, int, int, Any]) -> bytes:
    return F.encode_batch(list(frames))


def hello(settings: dict[int, int] | None = None, version: int = F.PROTOCOL_VERSION) -> bytes:
    """A hand-built HELLO message (default: every setting at its default)."""
    if settings is None:
        return F.encode_frame(F.HELLO, 0, 0, Settings().to_wire())
    return F.encode_frame(F.HELLO, 0, 0, F.encode_settings(version, settings))


def method_head(name: bytes) -> bytes:
    return V(len(name)) + name


def connect(
    client: Settings | None = None,
    server: Settings | None = None,
    *,
    client_kw: dict[str, Any] | None = None,
    server_kw: dict[str, Any] | None = None,
) -> tuple[Connection, Connection]:
    """A client core and a server core after the HELLO exchange."""
    c = Connection(Role.CLIENT, client or Settings(), **(client_kw or {}))
    s = Connection(Role.SERVER, server or Settings(), **(server_kw or {}))
    ev = s.receive_message(c.next_message())
    assert ev == [HelloReceived(c.settings)]
    ev = c.receive_message(s.next_message())
    assert ev == [HelloReceived(s.settings)]
    assert c.ready and s.ready and not c.awaiting_hello and not s.awaiting_hello
    return c, s


def server_after_hello(settings: Settings | None = None, **kw: Any) -> Connection:
    """A server core that got a default client HELLO: ready for hand-built frames."""
    s = Connection(Role.SERVER, settings or Settings(), **kw)
    s.receive_message(hello())
    s.next_message()  # its own HELLO
    return s


def client_after_hello(settings: Settings | None = None, **kw: Any) -> Connection:
    c = Connection(Role.CLIENT, settings or Settings(), **kw)
    c.next_message()  # its HELLO
    c.receive_message(hello())
    return c


def deliver(src: Connection, dst: Connection) -> list[Event]:
    """Every message ``src`` has queued, received by ``dst``; the events, in order."""
    events: list[Event] = []
    while (msg := src.next_message()) is not None:
        events += dst.receive_message(msg)
    return events


def messages(conn: Connection) -> list[bytes]:
    out = []
    while (msg := conn.next_message()) is not None:
        out.append(msg)
    return out


def read_all(conn: Connection, stream_id: int) -> list[tuple[bytes, bool]]:
    out = []
    while (item := conn.read_item(stream_id)) is not None:
        out.append((bytes(item[0]), item[1]))
    return out


def protocol_error(conn: Connection, msg: bytes, reason: str, code: ErrorCode, close_code: int) -> ProtocolError:
    """``conn`` rejects ``msg`` with a ProtocolError of this reason, code and close code."""
    with pytest.raises(ProtocolError) as info:
        conn.receive_message(msg)
    err = info.value
    assert reason in err.reason, err.reason
    assert err.code == code, (err.code, err.reason)
    assert err.close_code == close_code
    return err


def read_error(conn: Connection, msg: bytes, stream_id: int, reason: str) -> None:
    """``conn`` takes ``msg`` (its compressed items are held as received), then reading
    ``stream_id`` fails with a COMPRESSION_ERROR of this reason: that stream ends (its
    sender is told to stop), the connection goes on."""
    conn.receive_message(msg)
    with pytest.raises(ProtocolError) as info:
        read_all(conn, stream_id)
    assert reason in info.value.reason, info.value.reason
    assert info.value.code == ErrorCode.COMPRESSION_ERROR
    assert (F.STREAM_CLOSE, 0, stream_id, b"") in frames_of(conn.next_message())
    assert not conn.has_incoming(stream_id)


def assert_remote(
    err: RemoteError, type_name: str, message: str, code: int | None = None, tb: str | None = None
) -> None:
    assert (err.type_name, err.message, err.code, err.remote_traceback) == (type_name, message, code, tb)


# ------------------------------------------------------------------------- handshake


def test_hello_exchange_and_settings_round_trip() -> None:
    cs = Settings(
        max_frame_size=2048,
        max_message_size=8192,
        initial_stream_window=4096,
        max_streams=7,
        max_pending_calls=9,
        max_item_size=12345,
        compression=1,
        codec=1,
        resume=1,
        connection_window=65536,
    )
    c = Connection(Role.CLIENT, cs)
    s = Connection(Role.SERVER)
    assert not c.ready and c.awaiting_hello and c.has_output() is False
    first = c.next_message()
    # The handshake is one HELLO frame on id 0: version, then (key, value) pairs.
    # A client's HELLO ends with key 11 = 1 ("sent by a client": an echo is recognised).
    assert frames_of(first) == [(F.HELLO, 0, 0, cs.to_wire() + b"\x0b\x01")]
    version, values = F.decode_settings(cs.to_wire())
    assert version == F.PROTOCOL_VERSION == 1
    assert values == {1: 2048, 2: 8192, 3: 4096, 4: 7, 5: 9, 6: 12345, 7: 1, 8: 1, 9: 1, 10: 65536, 12: 1}
    assert s.receive_message(first) == [HelloReceived(cs)]
    assert s.peer_settings == cs and s.ready
    # Handshake frames are not counted in positions.
    assert s.traffic.frames_in == 0 and c.traffic.frames_out == 0
    reply = s.next_message()
    assert frames_of(reply) == [(F.HELLO, 0, 0, Settings().to_wire())]
    assert c.receive_message(reply) == [HelloReceived(Settings())]
    assert c.peer_settings == Settings()
    assert Settings.from_wire(cs.to_wire()) == cs
    # Nothing else is queued on either side.
    assert c.next_message() is None and s.next_message() is None


def test_unknown_setting_keys_are_ignored() -> None:
    s = Connection(Role.SERVER)
    events = s.receive_message(hello({1: 2048, 11: 5, 4: 3, 200: 1 << 40}))
    # No key 12 (features): a peer that reads no extension, such as an older one.
    expected = Settings(max_frame_size=2048, max_streams=3, features=0)
    assert events == [HelloReceived(expected)]
    assert s.peer_settings == expected


def test_repeated_setting_key_is_rejected() -> None:
    s = Connection(Role.SERVER)
    payload = V(1) + V(1) + V(2048) + V(1) + V(4096)
    protocol_error(s, F.encode_frame(F.HELLO, 0, 0, payload), "duplicate setting", ErrorCode.PROTOCOL_ERROR, 1002)


def test_unsupported_version_is_answered_with_goaway() -> None:
    s = Connection(Role.SERVER)
    err = protocol_error(s, hello({}, version=2), "unsupported protocol version 2", ErrorCode.UNSUPPORTED_VERSION, 1002)
    assert "speaks 1" in err.reason  # our own version, in the reason
    assert not s.ready
    # The I/O layer closes with the error: our HELLO still goes first, then GOAWAY.
    s.close(err.code, err.reason)
    c = Connection(Role.CLIENT)
    c.next_message()
    assert c.receive_message(s.next_message()) == [HelloReceived(Settings())]
    goaway = s.next_message()
    assert frames_of(goaway) == [(F.GOAWAY, 0, 0, V(ErrorCode.UNSUPPORTED_VERSION) + err.reason.encode())]
    assert c.receive_message(goaway) == [GoAwayReceived(ErrorCode.UNSUPPORTED_VERSION, err.reason)]
    assert s.next_message() is None


def test_first_frame_must_be_hello() -> None:
    s = Connection(Role.SERVER)
    protocol_error(
        s, F.encode_frame(F.PING, 0, 0, b"x"), "expected HELLO as the first frame", ErrorCode.PROTOCOL_ERROR, 1002
    )
    # A HELLO that is not first does not count either.
    s = Connection(Role.SERVER)
    msg = batch((F.REQUEST, 0, 1, method_head(b"m")), (F.HELLO, 0, 0, Settings().to_wire()))
    protocol_error(s, msg, "expected HELLO as the first frame", ErrorCode.PROTOCOL_ERROR, 1002)
    assert not s.ready
    # The client side checks it too.
    c = Connection(Role.CLIENT)
    c.next_message()
    protocol_error(
        c, F.encode_frame(F.RESPONSE, 0, 1, b""), "expected HELLO as the first frame", ErrorCode.PROTOCOL_ERROR, 1002
    )


def test_hello_twice_is_rejected() -> None:
    # In the same message...
    s = Connection(Role.SERVER)
    protocol_error(s, hello() + hello(), "HELLO after the handshake", ErrorCode.PROTOCOL_ERROR, 1002)
    # ...or in a later one.
    s = Connection(Role.SERVER)
    s.receive_message(hello())
    protocol_error(s, hello(), "HELLO after the handshake", ErrorCode.PROTOCOL_ERROR, 1002)


@pytest.mark.parametrize(
    "values, reason",
    [
        ({1: 1023}, "max_frame_size below 1024"),
        ({1: 4096, 2: 2048}, "max_message_size below max_frame_size"),
        ({2: 1 << 19}, "max_message_size below max_frame_size"),
        ({3: 1023}, "initial_stream_window below 1024"),
        ({10: 1023}, "connection_window below 1024"),
        ({6: 0}, "max_item_size below 1"),
        ({8: 2}, "unknown payload codec 2"),
    ],
)
def test_settings_below_the_minimums_are_rejected(values: dict[int, int], reason: str) -> None:
    s = Connection(Role.SERVER)
    protocol_error(s, hello(values), reason, ErrorCode.PROTOCOL_ERROR, 1002)
    # The minimums themselves are fine.
    s = Connection(Role.SERVER)
    s.receive_message(hello({1: 1024, 2: 1024, 3: 1024, 10: 1024, 6: 1}))
    assert s.peer_settings == Settings(1024, 1024, 1024, max_item_size=1, connection_window=1024, features=0)


# ------------------------------------------------------------------------------ calls


def test_call_ids_client_odd_server_even_and_request_response() -> None:
    c, s = connect()
    assert [c.send_request("add", b"\x92\x01\x02") for _ in range(3)] == [1, 3, 5]
    assert c.open_stream() == 7  # one counter for calls and streams
    assert c.pending_calls == 3
    msg = c.next_message()
    assert frames_of(msg) == [(F.REQUEST, 0, i, method_head(b"add") + b"\x92\x01\x02") for i in (1, 3, 5)]
    assert s.receive_message(msg) == [RequestReceived(i, "add", b"\x92\x01\x02") for i in (1, 3, 5)]
    assert s.running_calls == 3
    s.send_response(3, b"\x03")
    s.send_response(1, b"\x04")
    assert c.receive_message(s.next_message()) == [ResponseReceived(3, b"\x03"), ResponseReceived(1, b"\x04")]
    assert c.pending_calls == 1 and s.running_calls == 1
    # The server's ids are even.
    assert [s.send_request("back", b"") for _ in range(2)] == [2, 4]
    assert c.receive_message(s.next_message()) == [RequestReceived(2, "back", b""), RequestReceived(4, "back", b"")]
    with pytest.raises(KeyError):
        s.send_response(1, b"")  # already answered


def test_deadline_flag_is_parsed_into_the_request() -> None:
    c, s = connect()
    cid = c.send_request("slow", b"", timeout=1.5)
    plain = c.send_request("fast", b"\xc0")
    msg = c.next_message()
    assert frames_of(msg) == [
        (F.REQUEST, F.FLAG_DEADLINE, cid, V(1500) + method_head(b"slow")),
        (F.REQUEST, 0, plain, method_head(b"fast") + b"\xc0"),
    ]
    assert s.receive_message(msg) == [
        RequestReceived(cid, "slow", b"", deadline=1.5),
        RequestReceived(plain, "fast", b"\xc0", deadline=None),
    ]
    # A hand-built deadline of 0 ms is a deadline too (already passed).
    ev = s.receive_message(F.encode_frame(F.REQUEST, F.FLAG_DEADLINE | F.FLAG_STREAM, 5, V(0) + method_head(b"x")))
    assert ev == [RequestReceived(5, "x", b"", stream=True, deadline=0.0)]


def test_method_name_not_utf8_is_rejected() -> None:
    s = server_after_hello()
    protocol_error(
        s,
        F.encode_frame(F.REQUEST, 0, 1, method_head(b"\xff\xfe")),
        "method name is not UTF-8",
        ErrorCode.PROTOCOL_ERROR,
        1002,
    )
    s = server_after_hello()
    protocol_error(s, F.encode_frame(F.NOTIFY, 0, 0, method_head(b"\xc3")), "not UTF-8", ErrorCode.PROTOCOL_ERROR, 1002)


def test_truncated_method_name_is_rejected() -> None:
    s = server_after_hello()
    protocol_error(
        s, F.encode_frame(F.REQUEST, 0, 1, V(10) + b"abc"), "truncated method name", ErrorCode.PROTOCOL_ERROR, 1002
    )
    s = server_after_hello()
    protocol_error(
        s, F.encode_frame(F.NOTIFY, 0, 0, V(4) + b"ab"), "truncated method name", ErrorCode.PROTOCOL_ERROR, 1002
    )
    # An empty REQUEST payload has no method length at all.
    s = server_after_hello()
    with pytest.raises(ProtocolError):
        s.receive_message(F.encode_frame(F.REQUEST, 0, 1, b""))


def test_method_names_are_remembered_within_a_bound() -> None:
    # Received method names are decoded once and shared (calls.METHOD_NAMES): the same name
    # arrives as the same str; distinct names from a peer never grow it past its bound,
    # long names are not kept, and a name that is not UTF-8 is refused every time.
    from fastrpc import calls

    s = server_after_hello()
    names = [f"m{i}" for i in range(calls.MAX_METHOD_NAMES + 100)] + ["n" * 100]
    seen = []
    for i, name in enumerate(names):
        cid = 2 * i + 1
        (ev,) = s.receive_message(F.encode_frame(F.REQUEST, FLAG_RAW, cid, method_head(name.encode()) + b"a"))
        assert ev == RequestReceived(cid, name, b"a", raw=True)
        seen.append(ev.method)
        s.send_response(cid, b"")
        assert len(calls.METHOD_NAMES) <= calls.MAX_METHOD_NAMES
    assert "n" * 100 not in calls.METHOD_NAMES.values()
    (ev,) = s.receive_message(F.encode_frame(F.REQUEST, 0, 99999, method_head(names[-2].encode())))
    assert ev.method is seen[-2]  # remembered: the same object
    for _ in range(2):
        protocol_error(
            server_after_hello(),
            F.encode_frame(F.REQUEST, 0, 1, method_head(b"\xff\xfe")),
            "method name is not UTF-8",
            ErrorCode.PROTOCOL_ERROR,
            1002,
        )


def test_calls_wait_for_the_peers_hello_and_its_call_limit() -> None:
    # can_call reads the peer's max_pending_calls, as its HELLO said (none before it).
    c = Connection(Role.CLIENT, Settings())
    assert not c.can_call()
    with pytest.raises(LimitExceeded):
        c.send_request("m", b"")
    c, s = connect(server=Settings(max_pending_calls=2))
    ids = [c.send_request("m", b""), c.send_request("m", b"")]
    assert not c.can_call()
    with pytest.raises(LimitExceeded):
        c.send_request("m", b"")
    s.receive_message(c.next_message())
    s.send_response(ids[0], b"")
    c.receive_message(s.next_message())
    assert c.can_call() and c.next_id() not in ids
    c.close()
    assert c.closed
    with pytest.raises(ConnectionClosed):
        c.send_request("m", b"")


def test_send_call_is_send_request_of_a_plain_call() -> None:
    # send_call (peer.call's path) queues the frame send_request queues for a call
    # without stream, channel, timeout or keyword arguments, under the same rules.
    frames = []
    for send in ("send_request", "send_call"):
        c, s = connect(server=Settings(max_pending_calls=3))
        calls = [getattr(c, send)("add", b"\x92\x01\x02"), getattr(c, send)("raw", b"bytes", raw=True)]
        stream = c.open_stream()  # ids in use are skipped
        calls.append(getattr(c, send)("m", b""))
        assert calls == [1, 3, 7] and stream == 5
        with pytest.raises(LimitExceeded):
            getattr(c, send)("m", b"")
        msg = c.next_message()
        frames.append(frames_of(msg))
        assert s.receive_message(msg)[:3] == [
            RequestReceived(1, "add", b"\x92\x01\x02"),
            RequestReceived(3, "raw", b"bytes", raw=True),
            RequestReceived(7, "m", b""),
        ]
        with pytest.raises(PayloadTooLarge, match="max_frame_size"):
            c2, _ = connect(server=Settings(max_frame_size=1024))
            getattr(c2, send)("big", b"x" * 2000)
        c.close()
        with pytest.raises(ConnectionClosed):
            getattr(c, send)("m", b"")
    assert frames[0] == frames[1]


def test_wrong_parity_call_id_is_rejected() -> None:
    s = server_after_hello()
    protocol_error(
        s,
        F.encode_frame(F.REQUEST, 0, 2, method_head(b"m")),
        "call id of the wrong parity",
        ErrorCode.PROTOCOL_ERROR,
        1002,
    )
    c = client_after_hello()
    protocol_error(
        c,
        F.encode_frame(F.REQUEST, 0, 3, method_head(b"m")),
        "call id of the wrong parity",
        ErrorCode.PROTOCOL_ERROR,
        1002,
    )
    s = server_after_hello()
    protocol_error(
        s, F.encode_frame(F.REQUEST, 0, 0, method_head(b"m")), "wrong parity", ErrorCode.PROTOCOL_ERROR, 1002
    )


def test_duplicate_call_id_is_rejected() -> None:
    s = server_after_hello()
    req = F.encode_frame(F.REQUEST, 0, 1, method_head(b"m"))
    assert s.receive_message(req) == [RequestReceived(1, "m", b"")]
    protocol_error(s, req, "call id in use", ErrorCode.PROTOCOL_ERROR, 1002)
    # Once answered, the id is free again (ids are never reused by a correct peer,
    # but the core only tracks what is running).
    s = server_after_hello()
    s.receive_message(req)
    s.send_response(1, b"")
    assert s.receive_message(req) == [RequestReceived(1, "m", b"")]


def test_max_pending_calls_exceeded() -> None:
    s = server_after_hello(Settings(max_pending_calls=2))
    ok = batch((F.REQUEST, 0, 1, method_head(b"m")), (F.REQUEST, 0, 3, method_head(b"m")))
    assert len(s.receive_message(ok)) == 2
    err = protocol_error(
        s, F.encode_frame(F.REQUEST, 0, 5, method_head(b"m")), "too many pending calls", ErrorCode.LIMIT_EXCEEDED, 1008
    )
    assert isinstance(err, LimitExceeded)
    # A finished call frees its slot.
    s = server_after_hello(Settings(max_pending_calls=2))
    s.receive_message(ok)
    s.send_error(1, "ValueError", "no")
    assert s.receive_message(F.encode_frame(F.REQUEST, 0, 5, method_head(b"m"))) == [RequestReceived(5, "m", b"")]
    # The caller's core refuses to go past the limit it was told.
    c, s = connect(server=Settings(max_pending_calls=2))
    c.send_request("a", b"")
    c.send_request("b", b"")
    assert not c.can_call()
    with pytest.raises(LimitExceeded, match="too many pending calls"):
        c.send_request("c", b"")


def test_cancel_keeps_the_callers_slot_until_the_final_error() -> None:
    c, s = connect(server=Settings(max_pending_calls=1))
    cid = c.send_request("slow", b"")
    assert s.receive_message(c.next_message()) == [RequestReceived(cid, "slow", b"")]
    c.cancel_call(cid)
    c.cancel_call(cid)  # twice: one CANCEL
    assert c.pending_calls == 1 and not c.can_call()
    with pytest.raises(LimitExceeded):
        c.send_request("other", b"")
    msg = c.next_message()
    assert frames_of(msg) == [(F.CANCEL, 0, cid, b"")]
    assert s.receive_message(msg) == [CallCancelled(cid)]
    assert s.running_calls == 1  # the handler still runs until it finishes
    s.send_error(cid, "CancelledError", "")
    # The final ERROR frees the slot; the caller gave up, so no event.
    assert c.receive_message(s.next_message()) == []
    assert c.pending_calls == 0 and c.can_call()
    # A RESPONSE that crossed the CANCEL frees it the same way.
    cid = c.send_request("slow", b"")
    s.receive_message(c.next_message())
    c.cancel_call(cid)
    s.send_response(cid, b"\x01")
    assert c.receive_message(s.next_message()) == []
    assert s.receive_message(c.next_message()) == []  # CANCEL for a finished call: ignored
    assert c.pending_calls == 0


def test_response_or_error_for_unknown_call() -> None:
    c = client_after_hello()
    protocol_error(
        c, F.encode_frame(F.RESPONSE, 0, 1, b""), "response to an unknown call", ErrorCode.STREAM_STATE_ERROR, 1002
    )
    c = client_after_hello()
    protocol_error(
        c,
        F.encode_frame(F.ERROR, 0, 1, encode_error("E", "m")),
        "error for an unknown call",
        ErrorCode.STREAM_STATE_ERROR,
        1002,
    )
    # A second answer to one call is an unknown call too.
    c, s = connect()
    cid = c.send_request("m", b"")
    s.receive_message(c.next_message())
    s.send_response(cid, b"")
    c.receive_message(s.next_message())
    protocol_error(
        c, F.encode_frame(F.RESPONSE, 0, cid, b""), "response to an unknown call", ErrorCode.STREAM_STATE_ERROR, 1002
    )


def test_notify() -> None:
    c, s = connect()
    c.send_notification("log", b"\xa2hi")
    c.send_notification("raw", b"\x00\x01", raw=True)
    msg = c.next_message()
    assert frames_of(msg) == [
        (F.NOTIFY, 0, 0, method_head(b"log") + b"\xa2hi"),
        (F.NOTIFY, FLAG_RAW, 0, method_head(b"raw") + b"\x00\x01"),
    ]
    assert s.receive_message(msg) == [
        NotificationReceived("log", b"\xa2hi", False, cost=F.payload_cost(b"\xa2hi")),
        NotificationReceived("raw", b"\x00\x01", True, cost=2),
    ]
    # Nothing comes back, and no call is pending on either side.
    assert s.next_message() is None and c.pending_calls == 0 and s.running_calls == 0


def test_raw_flag_round_trip() -> None:
    c, s = connect()
    raw_id = c.send_request("r", b"\x00bytes", raw=True)
    enc_id = c.send_request("e", b"\xc0")
    msg = c.next_message()
    assert [f[1] for f in frames_of(msg)] == [FLAG_RAW, 0]
    assert s.receive_message(msg) == [
        RequestReceived(raw_id, "r", b"\x00bytes", raw=True),
        RequestReceived(enc_id, "e", b"\xc0", raw=False),
    ]
    s.send_response(raw_id, b"\xffraw", raw=True)
    s.send_response(enc_id, b"\xc0")
    msg = s.next_message()
    assert [f[1] for f in frames_of(msg)] == [FLAG_RAW, 0]
    assert c.receive_message(msg) == [
        ResponseReceived(raw_id, b"\xffraw", True),
        ResponseReceived(enc_id, b"\xc0", False),
    ]
    # Stream items carry it per item.
    sid = c.open_stream()
    c.send_item(sid, b"r", raw=True)
    c.send_item(sid, b"e")
    msg = c.next_message()
    assert frames_of(msg) == [(F.STREAM_DATA, F.FLAG_OPEN | FLAG_RAW, sid, b"r"), (F.STREAM_DATA, 0, sid, b"e")]
    s.receive_message(msg)
    assert read_all(s, sid) == [(b"r", True), (b"e", False)]


def test_response_too_large_for_the_callers_frame_limit() -> None:
    c, s = connect(client=Settings(max_frame_size=1024, max_message_size=2048))
    big = c.send_request("big", b"")
    fits = c.send_request("fits", b"")
    s.receive_message(c.next_message())
    s.send_response(big, b"x" * 1025)
    s.send_response(fits, b"y" * 1024)
    msg = s.next_message()
    assert [(f[0], f[2]) for f in frames_of(msg)] == [(F.ERROR, big), (F.RESPONSE, fits)]
    events = c.receive_message(msg)
    assert len(events) == 2
    failed, ok = events
    assert isinstance(failed, CallFailed) and failed.call_id == big
    assert_remote(
        failed.error,
        "ResponseTooLarge",
        "response of 1025 bytes exceeds the caller's frame limit of 1024 bytes (its max_frame_size): "
        "return large results as a stream (an async generator method, called with peer.stream)",
    )
    assert ok == ResponseReceived(fits, b"y" * 1024)
    assert s.running_calls == 0 and c.pending_calls == 0


def test_encode_decode_error_round_trip() -> None:
    payload = encode_error("ValueError", "bad välue", 42, "Traceback (most recent call last):\n  boom\n")
    err = decode_error(payload)
    assert type(err) is RemoteError
    assert_remote(err, "ValueError", "bad välue", 42, "Traceback (most recent call last):\n  boom\n")
    assert str(err) == "ValueError: bad välue"
    # Code 0 is a code (varint 1); no code is varint 0; no traceback is None.
    assert encode_error("E", "m", 0)[:1] == b"\x01" and encode_error("E", "m")[:1] == b"\x00"
    assert_remote(decode_error(encode_error("E", "m", 0)), "E", "m", 0, None)
    assert_remote(decode_error(encode_error("E", "")), "E", "", None, None)
    assert encode_error("E", "m") == b"\x00\x01E\x01m"
    err = decode_error(encode_error("KeyError", "'k'", 7), RemoteStreamError)
    assert type(err) is RemoteStreamError
    assert_remote(err, "KeyError", "'k'", 7, None)
    for cut in (encode_error("LongTypeName", "message")[:5], encode_error("T", "long message")[:6]):
        with pytest.raises(ProtocolError, match="truncated error payload"):
            decode_error(cut)
    # Through the cores: code and traceback arrive.
    c, s = connect()
    cid = c.send_request("m", b"")
    s.receive_message(c.next_message())
    s.send_error(cid, "KeyError", "'missing'", 3, "tb line\n")
    (ev,) = c.receive_message(s.next_message())
    assert isinstance(ev, CallFailed) and ev.call_id == cid
    assert_remote(ev.error, "KeyError", "'missing'", 3, "tb line\n")


def test_error_with_a_message_longer_than_the_frame_limit_still_decodes() -> None:
    # send_error cuts the ERROR payload to the caller's frame limit; what arrives must
    # still be a well-formed error (a cut message), not a protocol error that kills
    # the connection because a handler raised an exception with a long message.
    c, s = connect(client=Settings(max_frame_size=1024, max_message_size=2048))
    cid = c.send_request("m", b"")
    s.receive_message(c.next_message())
    long_message = "m" * 5000
    s.send_error(cid, "ValueError", long_message)
    msg = s.next_message()
    (ev,) = c.receive_message(msg)
    assert isinstance(ev, CallFailed) and ev.error.type_name == "ValueError"
    assert ev.error.message and long_message.startswith(ev.error.message)


# ---------------------------------------------------------------------------- streams


def test_stream_opens_with_its_first_frame() -> None:
    c, s = connect()
    sid = c.open_stream()
    assert sid == 1
    assert c.next_message() is None  # opening sends nothing by itself
    assert c.send_item(sid, b"a") is True
    c.send_item(sid, b"b")
    c.end_stream(sid)
    msg = c.next_message()
    assert frames_of(msg) == [
        (F.STREAM_DATA, F.FLAG_OPEN, sid, b"a"),
        (F.STREAM_DATA, 0, sid, b"b"),
        (F.STREAM_END, 0, sid, b""),
    ]
    assert s.receive_message(msg) == [StreamOpened(sid), StreamReadable(sid)]
    assert read_all(s, sid) == [(b"a", False), (b"b", False)]
    assert s.incoming(sid).state == 1  # ENDED
    # An empty stream: its END carries OPEN.
    e = c.open_stream()
    c.end_stream(e)
    msg = c.next_message()
    assert frames_of(msg) == [(F.STREAM_END, F.FLAG_OPEN, e, b"")]
    assert s.receive_message(msg) == [StreamOpened(e), StreamReadable(e)]
    assert s.read_item(e) is None and s.incoming(e).state == 1
    with pytest.raises(StreamClosed):
        c.send_item(e, b"late")


def test_data_without_open_for_an_unknown_stream_is_dropped() -> None:
    s = server_after_hello()
    msg = batch(
        (F.STREAM_DATA, 0, 1, b"stale"),
        (F.STREAM_END, 0, 3, b""),
        (F.STREAM_ERROR, 0, 5, encode_error("E", "")),
        (F.STREAM_ABORT, 0, 7, b""),
        (F.STREAM_DATA, 0, 2, b"x"),
    )
    assert s.receive_message(msg) == []
    assert s.incoming(1) is None and s.next_message() is None


def test_second_open_is_a_stream_state_error() -> None:
    s = server_after_hello()
    assert s.receive_message(F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN, 1, b"a")) == [
        StreamOpened(1),
        StreamReadable(1),
    ]
    protocol_error(
        s,
        F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN, 1, b"b"),
        "stream opened twice",
        ErrorCode.STREAM_STATE_ERROR,
        1002,
    )
    s = server_after_hello()
    s.receive_message(F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN, 1, b"a"))
    protocol_error(
        s, F.encode_frame(F.STREAM_END, F.FLAG_OPEN, 1, b""), "stream opened twice", ErrorCode.STREAM_STATE_ERROR, 1002
    )


def test_data_after_the_end_is_a_stream_state_error() -> None:
    s = server_after_hello()
    s.receive_message(batch((F.STREAM_DATA, F.FLAG_OPEN, 1, b"a"), (F.STREAM_END, 0, 1, b"")))
    protocol_error(
        s,
        F.encode_frame(F.STREAM_DATA, 0, 1, b"b"),
        "data after the end of the stream",
        ErrorCode.STREAM_STATE_ERROR,
        1002,
    )
    s = server_after_hello()
    s.receive_message(batch((F.STREAM_DATA, F.FLAG_OPEN, 1, b"a"), (F.STREAM_END, 0, 1, b"")))
    protocol_error(s, F.encode_frame(F.STREAM_END, 0, 1, b""), "stream ended twice", ErrorCode.STREAM_STATE_ERROR, 1002)


def test_end_inside_a_fragmented_item_is_a_stream_state_error() -> None:
    s = server_after_hello()
    protocol_error(
        s,
        batch((F.STREAM_DATA, F.FLAG_OPEN | F.FLAG_MORE, 1, b"abc"), (F.STREAM_END, 0, 1, b"")),
        "stream ended inside an item",
        ErrorCode.STREAM_STATE_ERROR,
        1002,
    )


def test_stream_error_fails_the_incoming_stream() -> None:
    c, s = connect()
    sid = c.open_stream()
    c.send_item(sid, b"a")
    c.error_stream(sid, "ValueError", "generator broke", 7)
    msg = c.next_message()
    assert frames_of(msg)[1] == (F.STREAM_ERROR, 0, sid, encode_error("ValueError", "generator broke", 7))
    assert s.receive_message(msg) == [StreamOpened(sid), StreamReadable(sid)]
    assert read_all(s, sid) == [(b"a", False)]  # items before the error stay readable
    st = s.incoming(sid)
    assert st.state == 2  # FAILED
    assert isinstance(st.error, RemoteStreamError)
    assert_remote(st.error, "ValueError", "generator broke", 7)
    with pytest.raises(StreamClosed):
        c.send_item(sid, b"b")


def test_stream_abort_fails_the_incoming_stream_and_drops_a_partial_item() -> None:
    c, s = connect(server=Settings(max_frame_size=1024, initial_stream_window=2048))
    sid = c.open_stream()
    # One whole 1 KiB frame; the next waits for the credit to go whole (whole_limit).
    assert c.send_item(sid, b"x" * 3000) is False
    assert s.receive_message(c.next_message()) == [StreamOpened(sid)]
    assert len(s.incoming(sid).partial) == 1024
    c.abort_stream(sid, "gave up")
    msg = c.next_message()
    assert frames_of(msg)[-1] == (F.STREAM_ABORT, 0, sid, b"gave up")
    assert s.receive_message(msg) == [StreamReadable(sid)]
    st = s.incoming(sid)
    assert s.read_item(sid) is None
    assert st.state == 2 and type(st.error) is StreamAborted and str(st.error) == "gave up"
    assert st.partial is None
    # Without a reason.
    sid = c.open_stream()
    c.abort_stream(sid)
    assert s.receive_message(c.next_message()) == [StreamOpened(sid), StreamReadable(sid)]
    err = s.incoming(sid).error
    assert type(err) is StreamAborted and str(err) == "stream aborted by the sender"


def test_stream_close_from_the_receiver_closes_the_senders_stream() -> None:
    c, s = connect()
    sid = c.open_stream()
    c.send_item(sid, b"a")
    s.receive_message(c.next_message())
    c.send_item(sid, b"in flight")
    in_flight = c.next_message()
    s.close_stream(sid)
    msg = s.next_message()
    # STREAM_CLOSE, and the slot granted back.
    assert frames_of(msg) == [(F.STREAM_CLOSE, 0, sid, b""), (F.STREAMS, 0, 0, V(1))]
    assert s.receive_message(in_flight) == []  # dropped: the stream is gone
    assert s.incoming(sid) is None
    assert c.receive_message(msg) == [StreamClosedByPeer(sid), CreditGranted(0)]
    assert c.writable(sid)  # lets the sender find out...
    with pytest.raises(StreamClosed):  # ...here
        c.send_item(sid, b"b")
    c.end_stream(sid)  # a no-op now
    assert c.next_message() is None


def test_stream_close_gives_back_the_connection_credit_of_frames_never_sent() -> None:
    # Frames queued on a stream (charged to the connection's credit) when its
    # receiver's STREAM_CLOSE arrives are dropped unsent: the receiver never counts
    # them, so their charge comes back at once (it was lost for good, one stream after
    # another, until every stream of the connection stalled).
    window = 64 * 1024
    c, s = connect(Settings(connection_window=window), Settings(connection_window=window))
    for _ in range(3):
        sid = c.open_stream()
        c.send_item(sid, b"a")
        s.receive_message(c.next_message())
        s.close_stream(sid)
        c.send_item(sid, b"x" * 1000)  # a frame
        c.send_items(sid, [b"y" * 100] * 5)  # a run of frames
        assert c._flow.conn_credit < window - 1000
        closed = s.next_message()  # the queued frames are still to go: they never will
        assert c.receive_message(closed) == [StreamClosedByPeer(sid), CreditGranted(0), CreditGranted(0)]
        deliver(c, s)
        deliver(s, c)
        # Nothing in flight: the sender's credit is what the receiver will take (the
        # first items' 33 bytes a round are counted there, their grant still batched).
        assert c._flow.conn_credit == s._flow.conn_recv >= window - 3 * 33
    sid = c.open_stream()
    assert c.writable(sid)


def test_close_stream_before_it_arrives_refuses_it() -> None:
    c, s = connect()
    sid = 1
    s.close_stream(sid)
    assert s.next_message() is None  # nothing to tell yet
    assert c.open_stream() == sid
    c.send_item(sid, b"unwanted")
    assert s.receive_message(c.next_message()) == []  # no StreamOpened
    assert s.incoming(sid) is None
    msg = s.next_message()
    assert frames_of(msg) == [(F.STREAM_CLOSE, 0, sid, b""), (F.STREAMS, 0, 0, V(1))]
    assert c.receive_message(msg) == [StreamClosedByPeer(sid), CreditGranted(0)]
    with pytest.raises(StreamClosed):
        c.send_item(sid, b"more")


def test_stream_slots_run_out_and_come_back_with_streams_grants() -> None:
    c, s = connect(server=Settings(max_streams=2))
    a, b = c.open_stream(), c.open_stream()
    assert not c.can_open_stream()
    with pytest.raises(LimitExceeded, match="peer's stream limit reached"):
        c.open_stream()
    for sid in (a, b):
        c.send_item(sid, b"x")
        c.end_stream(sid)
    assert s.receive_message(c.next_message()) == [
        StreamOpened(a),
        StreamReadable(a),
        StreamOpened(b),
        StreamReadable(b),
    ]
    # Ending a stream does not free its slot: the receiving application must finish.
    assert s.next_message() is None
    read_all(s, a)
    read_all(s, b)
    s.release_stream(a)
    s.release_stream(b)
    s.release_stream(b)  # twice: counted once
    msg = s.next_message()
    assert frames_of(msg) == [(F.STREAMS, 0, 0, V(2))]  # summed into one frame
    assert c.receive_message(msg) == [CreditGranted(0)]
    assert c.can_open_stream()
    x, y = c.open_stream(), c.open_stream()
    c.send_item(x, b"1")
    c.send_item(y, b"2")
    assert s.receive_message(c.next_message()) == [
        StreamOpened(x),
        StreamReadable(x),
        StreamOpened(y),
        StreamReadable(y),
    ]
    assert not c.can_open_stream()


def test_streams_bound_to_calls_do_not_take_slots() -> None:
    c, s = connect(server=Settings(max_streams=1), client=Settings(max_streams=1))
    a = c.open_stream()
    cid = c.send_request("ch", b"", stream=True, channel=True)
    c.send_item(cid, b"in")
    c.send_item(a, b"free")
    ev = s.receive_message(c.next_message())
    assert ev == [
        RequestReceived(cid, "ch", b"", stream=True, channel=True),
        StreamReadable(cid),
        StreamOpened(a),
        StreamReadable(a),
    ]
    s.open_response_stream(cid)
    s.send_item(cid, b"out")
    assert s.can_open_stream()  # the response stream took no slot
    assert c.receive_message(s.next_message()) == [StreamReadable(cid)]
    assert read_all(c, cid) == [(b"out", False)]


def test_peer_opening_more_than_max_streams_is_limit_exceeded() -> None:
    s = server_after_hello(Settings(max_streams=2))
    ok = batch((F.STREAM_DATA, F.FLAG_OPEN, 1, b""), (F.STREAM_DATA, F.FLAG_OPEN, 3, b""))
    assert len(s.receive_message(ok)) == 4
    err = protocol_error(
        s,
        F.encode_frame(F.STREAM_END, F.FLAG_OPEN, 5, b""),
        "too many concurrent streams",
        ErrorCode.LIMIT_EXCEEDED,
        1008,
    )
    assert isinstance(err, LimitExceeded)


def test_stream_id_of_the_wrong_parity_is_rejected() -> None:
    s = server_after_hello()
    protocol_error(
        s,
        F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN, 2, b""),
        "stream id of the wrong parity",
        ErrorCode.STREAM_STATE_ERROR,
        1002,
    )


# ----------------------------------------------------------------------- flow control


def test_window_exhaustion_and_credit() -> None:
    c, s = connect(server=Settings(initial_stream_window=1024))
    sid = c.open_stream()
    assert c.send_item(sid, b"a" * 400) is True  # 432 of 1024
    assert c.writable(sid)
    assert c.send_item(sid, b"b" * (1024 - 432 - FRAME_CHARGE)) is False  # exactly the window
    assert not c.writable(sid)
    assert c.stream_stats(sid, True)[2] == 0
    s.receive_message(c.next_message())
    assert s.stream_stats(sid, False)[2] == 0
    assert s.next_message() is None  # nothing read: no credit
    assert read_all(s, sid) == [(b"a" * 400, False), (b"b" * 560, False)]
    msg = s.next_message()
    # Each read was at least a quarter of the window: one CREDIT per item.
    assert frames_of(msg) == [(F.CREDIT, 0, sid, V(432)), (F.CREDIT, 0, sid, V(592))]
    assert c.receive_message(msg) == [CreditGranted(sid), CreditGranted(sid)]
    assert c.writable(sid) and c.stream_stats(sid, True)[2] == 1024
    # An item larger than the credit is accepted, and only what the credit allows is
    # sent (the rest waits for more credit).
    assert c.send_item(sid, b"c" * 1000) is False
    assert not c.writable(sid)
    sent = frames_of(c.next_message())
    assert sent == [(F.STREAM_DATA, F.FLAG_MORE, sid, b"c" * (1024 - FRAME_CHARGE))]
    assert c.next_message() is None
    s.receive_message(F.encode_batch(sent))
    with pytest.raises(RuntimeError):
        c.send_item(sid, b"d")  # the previous item is still being sent


def test_credit_goes_back_in_batches_of_a_quarter_window() -> None:
    c, s = connect(server=Settings(initial_stream_window=4096))
    sid = c.open_stream()
    for _ in range(10):
        c.send_item(sid, b"x" * 100)  # 132 each
    s.receive_message(c.next_message())
    for _ in range(7):  # 924 < 1024
        assert s.read_item(sid) is not None
    assert s.next_message() is None
    s.read_item(sid)  # 1056 >= 1024
    msg = s.next_message()
    assert frames_of(msg) == [(F.CREDIT, 0, sid, V(8 * 132))]
    assert c.receive_message(msg) == [CreditGranted(sid)]
    assert c.stream_stats(sid, True)[2] == 4096 - 2 * 132


def test_receiver_seeing_more_than_the_window_is_a_flow_control_error() -> None:
    s = server_after_hello(Settings(initial_stream_window=1024))
    s.receive_message(F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN, 1, b"x" * (1024 - FRAME_CHARGE)))
    assert s.stream_stats(1, False)[2] == 0
    protocol_error(
        s, F.encode_frame(F.STREAM_DATA, 0, 1, b"y"), "flow-control window exceeded", ErrorCode.FLOW_CONTROL_ERROR, 1008
    )


def test_frame_charge_makes_an_empty_frame_flood_exhaust_the_window() -> None:
    # Receiver: 32 empty frames cost exactly a 1024-byte window; the 33rd is too many.
    s = server_after_hello(Settings(initial_stream_window=1024))
    flood = [(F.STREAM_DATA, F.FLAG_OPEN, 1, b"")] + [(F.STREAM_DATA, 0, 1, b"")] * 31
    assert s.receive_message(F.encode_batch(flood)) == [StreamOpened(1), StreamReadable(1)]
    assert s.stream_stats(1, False) == (1024, 32, 0, 1024)
    protocol_error(
        s, F.encode_frame(F.STREAM_DATA, 0, 1, b""), "flow-control window exceeded", ErrorCode.FLOW_CONTROL_ERROR, 1008
    )
    # Sender: empty items run out of credit too, and never past it.
    c, s = connect(server=Settings(initial_stream_window=1024))
    sid = c.open_stream()
    results = [c.send_item(sid, b"") for _ in range(32)]
    assert results == [True] * 30 + [False, False]
    c.send_item(sid, b"")  # accepted, held back: no credit left
    assert len(frames_of(c.next_message())) == 32
    assert not c.writable(sid) and c.next_message() is None


def test_runs_of_items_in_one_message_queue_as_frames_one_by_one_would() -> None:
    # Runs of STREAM_DATA on one stream are taken in one step (take_items): the items,
    # their order, the ledger's counts and the raw flag come out as frame by frame.
    s = server_after_hello(Settings(initial_stream_window=4096))
    frames = [(F.STREAM_DATA, F.FLAG_OPEN, 1, b"a0"), (F.STREAM_DATA, 0, 1, b"a1"), (F.STREAM_DATA, 0, 1, b"a2")]
    frames += [(F.STREAM_DATA, F.FLAG_OPEN, 3, b"b0"), (F.STREAM_DATA, 0x40, 3, b"b1"), (F.STREAM_DATA, 0x40, 3, b"b2")]
    frames += [
        (F.STREAM_DATA, 0, 1, b"a3"),
        (F.PING, 0, 0, b""),
        (F.STREAM_DATA, 0, 1, b"a4"),
        (F.STREAM_DATA, 0, 1, b"a5"),
    ]
    frames += [(F.STREAM_DATA, 0, 3, b"")]
    events = s.receive_message(F.encode_batch(frames))
    assert events == [StreamOpened(1), StreamReadable(1), StreamOpened(3), StreamReadable(3)]
    got = 12 + 6 * FRAME_CHARGE
    assert s.stream_stats(1, False) == (got, 6, 4096 - got, got)
    assert s.stream_stats(3, False)[1] == 4
    assert read_all(s, 1) == [(b"a%d" % i, False) for i in range(6)]
    s.receive_message(F.encode_batch([(F.STREAM_DATA, 0x40, 3, b"b3")] * 3))
    assert s.stream_stats(3, False)[1] == 7
    assert read_all(s, 3) == [(b"b0", False), (b"b1", True), (b"b2", True), (b"", False)] + [(b"b3", True)] * 3


def test_a_run_past_the_window_fails_the_connection() -> None:
    # 40 empty frames after the opening one in one message: the run as a whole is
    # past the 1024-byte window (32 frames), a FLOW_CONTROL_ERROR as frame by frame.
    s = server_after_hello(Settings(initial_stream_window=1024))
    flood = [(F.STREAM_DATA, F.FLAG_OPEN, 1, b"")] + [(F.STREAM_DATA, 0, 1, b"")] * 40
    protocol_error(s, F.encode_batch(flood), "flow-control window exceeded", ErrorCode.FLOW_CONTROL_ERROR, 1008)


def test_send_run_queues_what_send_item_would_and_stops_where_it_must() -> None:
    # A run takes the items that fit the credit whole, with the same bytes, counts and
    # credit as send_item one by one; the next item is send_item's.
    c, s = connect(server=Settings(initial_stream_window=1024))
    a, b = c.open_stream(), c.open_stream()
    assert c.send_run(a, [b"x"], 10**6) == 0  # the opening frame is still to go
    assert c.send_item(a, b"first") and c.send_item(b, b"first")
    items = [b"%03d" % i + b"." * 97 for i in range(12)]  # 100 bytes, 132 charged each
    assert c.send_run(a, items, 10**6) == 7  # 1024 - 37 = 987 of credit: 7 x 132 = 924
    for item in items[:7]:
        assert c.send_item(b, item)
    assert c.stream_stats(a, True) == c.stream_stats(b, True)
    assert c.buffered_amount == 2 * (2 + 1 + 1 + 5 + 7 * (2 + 1 + 2 + 100))  # (a 2-byte length)
    assert c.send_item(a, items[7]) is False  # 63 bytes of credit: it waits for more
    deliver(c, s)
    assert read_all(s, a) == [(b"first", False)] + [(item, False) for item in items[:7]]
    deliver(s, c)  # the credit back
    assert c.writable(a)


@pytest.mark.parametrize("compress", [False, True])
def test_send_run_leaves_large_items_to_send_item(compress: bool) -> None:
    # Past the peer's frame limit (split by send_item), or past the compression
    # threshold (compressed by send_item): the run stops before it.
    algorithm = C.ZLIB if compress else 0
    c, s = connect(
        Settings(compression=algorithm),
        Settings(compression=algorithm, max_frame_size=1024),
        client_kw={"compression_threshold": 600},
    )
    sid = c.open_stream()
    c.send_item(sid, b"open")
    items = [b"a" * 500, b"b" * (700 if compress else 1100), b"c"]
    assert c.send_run(sid, items, 10**6) == 1
    assert c.send_item(sid, items[1])
    deliver(c, s)
    assert [p for p, _ in read_all(s, sid)] == [b"open", *items[:2]]


def test_send_run_stops_at_the_stream_buffer_and_the_room() -> None:
    c, s = connect()
    sid = c.open_stream()
    c.send_item(sid, b"open")
    item = b"z" * 1000
    assert c.send_run(sid, [item] * 10, 2500) == 3  # the one that crosses the room goes too
    assert c.send_run(sid, [], 10**6) == 0
    c._outbound.stream_buffer_size = len(c._outbound.streams[sid].writer) + 1
    assert c.send_run(sid, [item] * 10, 10**6) == 1  # at least one, then the buffer is full
    c.end_stream(sid)
    with pytest.raises(StreamClosed):
        c.send_item(sid, item)
    assert c.send_run(sid, [item], 10**6) == 0  # closed: send_item raises, the run takes none


def test_read_items_takes_a_run_of_one_kind_as_read_item_would() -> None:
    # Two receivers get the same message: one reads item by item, the other in runs.
    # Same items, same credit granted back, same window growth, same memory held.
    frames = [(F.STREAM_DATA, F.FLAG_OPEN, 1, b"p0")]
    frames += [(F.STREAM_DATA, 0, 1, b"p%d" % i) for i in range(1, 40)]
    frames += [(F.STREAM_DATA, FLAG_RAW, 1, b"r%d" % i) for i in range(20)]
    frames += [(F.STREAM_DATA, F.FLAG_COMPRESSED, 1, zlib.compress(b"z" * 3000))]
    frames += [(F.STREAM_DATA, 0, 1, b"q%d" % i) for i in range(5)]
    msg = F.encode_batch(frames)
    one, run = (server_after_hello(Settings(initial_stream_window=4096, compression=C.ZLIB)) for _ in range(2))
    for s in (one, run):
        s._algorithm = C.ZLIB  # as if negotiated: the frames above are hand-built
        s.receive_message(msg)
    items = read_all(one, 1)
    got: list[tuple[bytes, bool]] = []
    sizes = []
    while True:
        payloads, raw, _ = run.read_items(1, 16)
        if not payloads:
            item = run.read_item(1)  # the compressed one
            if item is None:
                break
            got.append((bytes(item[0]), item[1]))
            continue
        sizes.append((len(payloads), raw))
        got += [(bytes(p), raw) for p in payloads]
    assert got == items and len(items) == 66
    assert sizes == [(16, False), (16, False), (8, False), (16, True), (4, True), (5, False)]
    ran, each = run.stream_stats(1, False), one.stream_stats(1, False)
    assert ran[:2] == each[:2] and ran[3] == each[3] == 0  # bytes, items; nothing buffered
    # Credit goes back in batches either way (a grant once a share of the window was
    # read): the runs reach each threshold at another item, so windows differ by less
    # than a batch; both sent CREDIT.
    assert abs(ran[2] - each[2]) < 4096 // 4
    assert [f[0] for f in frames_of(run.next_message())] == [f[0] for f in frames_of(one.next_message())]
    assert run.stats()["memory"] == one.stats()["memory"] == 0
    assert run.read_items(1, 16) == ([], False, 0) and run.read_items(99, 16) == ([], False, 0)


def test_connection_window_credit_on_id_zero() -> None:
    c, s = connect(server=Settings(connection_window=4096))
    a, b = c.open_stream(), c.open_stream()
    item = b"x" * (1000 - FRAME_CHARGE)
    assert [c.send_item(sid, item) for sid in (a, b, a, b)] == [True] * 4  # 96 left
    # Not cut to the 64 bytes the connection allows: it waits to go whole (whole_limit,
    # 3/4 of the smallest window: 3,072 bytes here).
    assert c.send_item(a, item) is False
    assert c.send_item(b, item) is False  # every stream waits for the connection window
    msg = c.next_message()
    assert [(f[2], len(f[3])) for f in frames_of(msg)] == [(a, 968), (a, 968), (b, 968), (b, 968)]
    # The receiver grants connection credit as frames come off the wire, in batches
    # of a quarter window, before anything is read.
    s.receive_message(msg)
    reply = s.next_message()
    assert frames_of(reply) == [(F.CREDIT, 0, 0, V(2000)), (F.CREDIT, 0, 0, V(2000))]
    assert c.receive_message(reply) == [CreditGranted(0), CreditGranted(0)]
    assert c.writable(a) and c.writable(b)  # the waiting items go now, whole
    rest = frames_of(c.next_message())
    assert rest == [(F.STREAM_DATA, 0, a, item), (F.STREAM_DATA, 0, b, item)]
    s.receive_message(F.encode_batch(rest))
    assert read_all(s, a) == [(item, False), (item, False), (item, False)]
    assert read_all(s, b) == [(item, False), (item, False), (item, False)]


def test_an_item_past_three_quarters_of_the_window_goes_in_pieces() -> None:
    """Only an item (a frame) that 3/4 of the peer's smallest window takes waits for
    its credit whole: a larger one could wait for ever (credit comes back in quarters
    of a window), so it goes as the credit allows, in pieces, as before."""
    c, s = connect(server=Settings(initial_stream_window=2048))
    sid = c.open_stream()
    big = bytes(range(256)) * 7  # 1,792 bytes: more than 3/4 of 2,048
    assert c.send_item(sid, b"a" * 500) is True
    assert c.send_item(sid, big) is False  # cut to the credit left
    first = frames_of(c.next_message())
    assert [len(f[3]) for f in first] == [500, 2048 - 500 - 2 * FRAME_CHARGE]
    assert first[1][1] & F.FLAG_MORE
    s.receive_message(F.encode_batch(first))
    assert s.read_item(sid) is not None  # the small item: its credit goes back (a quarter)
    c.receive_message(s.next_message())
    assert c.writable(sid)  # the rest went
    s.receive_message(c.next_message())
    payload, raw, _ = s.read_item(sid)
    assert bytes(payload) == big and not raw


def test_receiver_seeing_more_than_the_connection_window_is_a_flow_control_error() -> None:
    s = server_after_hello(Settings(connection_window=2048))
    protocol_error(
        s,
        F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN, 1, b"x" * (2048 - FRAME_CHARGE + 1)),
        "connection flow-control window exceeded",
        ErrorCode.FLOW_CONTROL_ERROR,
        1008,
    )


def test_fragmentation_and_reassembly() -> None:
    c, s = connect(server=Settings(max_frame_size=1024, max_message_size=4096))
    sid = c.open_stream()
    data = bytes(range(256)) * 12  # 3072 bytes
    assert c.send_item(sid, data, raw=True) is False  # two fragments fill the stream's queue
    out = []
    for msg in messages(c):
        assert len(msg) <= 4096
        out += frames_of(msg)
    assert [(t, fl, i, len(p)) for t, fl, i, p in out[:3]] == [
        (F.STREAM_DATA, F.FLAG_OPEN | F.FLAG_MORE | FLAG_RAW, sid, 1024),
        (F.STREAM_DATA, F.FLAG_MORE | FLAG_RAW, sid, 1024),
        (F.STREAM_DATA, FLAG_RAW, sid, 1024),
    ]
    assert b"".join(f[3] for f in out[:3]) == data
    s.receive_message(F.encode_batch(out))
    assert read_all(s, sid)[0] == (data, True)


def test_an_item_larger_than_the_window_passes_because_fragments_are_credited_at_once() -> None:
    c, s = connect(server=Settings(initial_stream_window=1024))
    sid = c.open_stream()
    data = b"z" * 3000
    assert c.send_item(sid, data) is False
    rounds = 0
    while True:
        msg = c.next_message()
        if msg is None:
            break
        for t, fl, _, p in frames_of(msg):
            assert t == F.STREAM_DATA and len(p) + FRAME_CHARGE <= 1024
        s.receive_message(msg)
        credit = s.next_message()
        if credit is not None:
            c.receive_message(credit)
        c.writable(sid)
        rounds += 1
    assert rounds == 4  # 992 + 992 + 992 + 24
    assert read_all(s, sid) == [(data, False)]


def test_a_reader_behind_holds_fragments_credit_so_large_items_stay_within_the_window() -> None:
    # Fragments are credited at once only while the reader has caught up (it waits for
    # that item, however large); behind, their credit rides on the last item queued, so
    # a sender of items larger than the window cannot fill a paused reader's memory.
    c, s = connect(server=Settings(initial_stream_window=1024))
    sid = c.open_stream()
    data = [bytes([i]) * 3000 for i in range(20)]
    sent = 0
    for _ in range(200):  # exchange until the sender stalls (nothing is read)
        if sent < len(data) and c.writable(sid):
            c.send_item(sid, data[sent])
            sent += 1
        msg = c.next_message()
        if msg is None:
            break
        s.receive_message(msg)
        credit = s.next_message()
        if credit is not None:
            c.receive_message(credit)
    assert not c.writable(sid)
    # One whole item, credited as it came while the queue was empty, and less than a
    # window of the next; before, the sender went on with every item (a paused reader's
    # memory was bounded by max_connection_memory alone).
    assert 2 <= sent <= 3, sent
    held = s.stats()["memory"]
    assert isinstance(held, int) and 3000 < held <= 3000 + 1024, held
    # Reading gives the held credit back: every item arrives, whole and in order.
    got: list[bytes] = []
    for _ in range(1000):  # (about six exchanges an item: 1024-byte window, no growth)
        got += [p for p, _raw in read_all(s, sid)]
        if len(got) == len(data):
            break
        if c.writable(sid) and sent < len(data):  # (writable moves what credit allows)
            c.send_item(sid, data[sent])
            sent += 1
        deliver(s, c)
        deliver(c, s)
    assert got == data


def test_item_larger_than_max_item_size_is_limit_exceeded() -> None:
    c, s = connect(server=Settings(max_frame_size=1024, max_item_size=2000))
    sid = c.open_stream()
    assert c.send_item(sid, b"x" * 2000) is True  # exactly the limit: fine
    # Our sender refuses an item the receiver would not take (only that item fails).
    with pytest.raises(PayloadTooLarge, match="max_item_size of 2000 bytes"):
        c.send_item(sid, b"y" * 2001)
    msgs = messages(c)
    frames = [f for m in msgs for f in frames_of(m)]
    s.receive_message(F.encode_batch(frames))
    assert read_all(s, sid) == [(b"x" * 2000, False)]
    # A sender that ignores the limit: the receiver closes the connection.
    parts = [(F.STREAM_DATA, F.FLAG_MORE, sid, b"y" * 1000)] * 2 + [(F.STREAM_DATA, 0, sid, b"y")]
    err = protocol_error(s, F.encode_batch(parts), "item larger than max_item_size", ErrorCode.LIMIT_EXCEEDED, 1008)
    assert isinstance(err, LimitExceeded)


def test_grow_window_sends_extra_credit() -> None:
    c, s = connect()
    sid = c.open_stream()
    c.send_item(sid, b"x")
    s.receive_message(c.next_message())
    s.grow_window(sid, 1 << 20)
    msg = s.next_message()
    assert frames_of(msg) == [(F.CREDIT, 0, sid, V((1 << 20) - (256 << 10)))]
    assert c.receive_message(msg) == [CreditGranted(sid)]
    assert c.stream_stats(sid, True)[2] == (1 << 20) - 1 - FRAME_CHARGE
    s.grow_window(sid, 1 << 19)  # shrinking is not a thing: nothing sent
    assert s.next_message() is None


def test_credit_for_unknown_stream_is_ignored_and_connection_credit_overflow_is_an_error() -> None:
    c = client_after_hello()
    assert c.receive_message(F.encode_frame(F.CREDIT, 0, 9, V(100))) == []
    protocol_error(
        c,
        F.encode_frame(F.CREDIT, 0, 0, V(F.VARINT_MAX)),
        "flow-control window overflow",
        ErrorCode.FLOW_CONTROL_ERROR,
        1008,
    )


# ------------------------------------------------------------------------- scheduling


def test_control_frames_go_first() -> None:
    c, s = connect()
    sid = c.open_stream()
    c.send_item(sid, b"data")
    cid = c.send_request("m", b"")
    c.send_ping(b"p")
    c.send_notification("n", b"")
    kinds = [(f[0], f[2]) for f in frames_of(c.next_message())]
    assert kinds == [(F.REQUEST, cid), (F.PING, 0), (F.NOTIFY, 0), (F.STREAM_DATA, sid)]


def test_ping_is_answered_with_pong() -> None:
    c, s = connect()
    c.send_ping(b"12345678")
    assert s.receive_message(c.next_message()) == []
    msg = s.next_message()
    assert frames_of(msg) == [(F.PONG, 0, 0, b"12345678")]
    assert c.receive_message(msg) == [PongReceived(b"12345678")]


def _ping_until_refused(s: Connection, count: int) -> int:
    """Send ``s`` PINGs in messages of 512, reading its PONGs between them; the number
    it answered before it refused one (all of them if none was refused)."""
    answered = 0
    ping = F.encode_frame(F.PING, 0, 0, b"12345678")
    for _ in range(count // 512):
        try:
            s.receive_message(ping * 512)
        except LimitExceeded as e:
            assert "max_ping_rate" in str(e) and "1000 a second" in str(e)
            return answered + sum(f[0] == F.PONG for m in messages(s) for f in frames_of(m))
        answered += sum(f[0] == F.PONG for m in messages(s) for f in frames_of(m))
    return answered


def test_pings_past_max_ping_rate_are_refused() -> None:
    # A peer that reads its PONGs may still not ask for them as fast as it writes:
    # bursts of PING_BURST, then MAX_PING_RATE a second. 4096 PINGs take a few ms
    # here, far less than the 3 s the bucket would need to refill them.
    answered = _ping_until_refused(server_after_hello(), 4096)
    assert O.PING_BURST <= answered < 2 * O.PING_BURST
    assert _ping_until_refused(server_after_hello(max_ping_rate=None), 4096) == 4096


def test_ping_limit_refills_at_its_rate() -> None:
    now = [0.0]
    limit = PingLimit(10.0, 4, clock=lambda: now[0])
    assert [limit.take() for _ in range(5)] == [True, True, True, True, False]
    now[0] += 0.1  # one PING's worth
    assert [limit.take(), limit.take()] == [True, False]
    now[0] += 60  # refills to the burst, no further
    assert sum(limit.take() for _ in range(10)) == 4


def test_urgency_order() -> None:
    c, s = connect()
    low, mid, high = c.open_stream(urgency=7), c.open_stream(), c.open_stream(urgency=0)
    for sid in (low, mid, high):
        c.send_item(sid, b"%d" % sid)
    assert [f[2] for f in frames_of(c.next_message())] == [high, mid, low]
    # set_urgency moves a queued stream.
    for sid in (low, mid, high):
        c.send_item(sid, b"again")
    c.set_urgency(low, 1)
    assert c.urgency(low) == 1
    assert [f[2] for f in frames_of(c.next_message())] == [high, low, mid]
    with pytest.raises(ValueError):
        c.open_stream(urgency=8)


def test_round_robin_within_an_urgency() -> None:
    # batch_size 2500: each message takes one stream's whole queue (three items).
    c, s = connect(client_kw={"batch_size": 2500})
    a, b, d = c.open_stream(), c.open_stream(), c.open_stream()
    for sid in (a, b, d):
        for _ in range(3):
            c.send_item(sid, b"%d" % sid * 1000)
    order = [[f[2] for f in frames_of(c.next_message())]]
    assert order == [[a, a, a]]
    c.send_item(a, b"more")  # a goes to the back of the ring
    order += [[f[2] for f in frames_of(m)] for m in messages(c)]
    assert order == [[a, a, a], [b, b, b], [d, d, d], [a]]


@pytest.mark.parametrize("seed", range(20))
def test_has_output_says_whether_a_message_would_go(seed: int) -> None:
    # has_output (asked after every read and every write) and next_message's fast path
    # count the streams waiting in the urgency rings instead of walking them: queued,
    # moved between urgencies, taken in part (batch_size), closed, mixed with calls.
    rnd = random.Random(seed)
    c, s = connect(client_kw={"batch_size": 3000})
    sids = [c.open_stream(urgency=rnd.randrange(8)) for _ in range(6)]
    sent = received = 0
    for _ in range(200):
        op = rnd.random()
        sid = rnd.choice(sids)
        if op < 0.5 and sid in sids:
            try:
                c.send_item(sid, b"x" * rnd.choice((10, 900, 2000)))
                sent += 1
            except LimitExceeded:
                pass  # the stream's window: the next messages make room
        elif op < 0.6:
            c.set_urgency(sid, rnd.randrange(8))
        elif op < 0.65:
            c.send_request("m", b"")
        expected = c.has_output()
        msg = c.next_message()
        assert expected == (msg is not None)
        if msg is not None:
            received += sum(1 for f in frames_of(msg) if f[0] == F.STREAM_DATA)
            for ev in s.receive_message(msg):
                if isinstance(ev, StreamReadable):
                    while s.read_item(ev.stream_id) is not None:
                        pass
            for m in messages(s):
                c.receive_message(m)
    while c.has_output():
        msg = c.next_message()
        assert msg is not None
        received += sum(1 for f in frames_of(msg) if f[0] == F.STREAM_DATA)
    assert c.next_message() is None and received == sent


def test_batch_size_limits_stream_data_per_message() -> None:
    c, s = connect(client_kw={"batch_size": 4096})
    sids = [c.open_stream() for _ in range(5)]
    for sid in sids:
        c.send_item(sid, b"x" * 1500)
    msgs = messages(c)
    assert [[f[2] for f in frames_of(m)] for m in msgs] == [sids[0:2], sids[2:4], sids[4:]]
    assert all(len(m) <= 4096 for m in msgs)
    # Control frames count against the batch too.
    cid = c.send_request("m", b"y" * 3000)
    c.send_item(sids[0], b"z" * 1500)
    msgs = messages(c)
    assert [[f[0] for f in frames_of(m)] for m in msgs] == [[F.REQUEST], [F.STREAM_DATA]]
    assert frames_of(msgs[0])[0][2] == cid


def test_a_huge_control_backlog_is_split_into_messages_within_the_peers_limit() -> None:
    c, s = connect(client=Settings(max_frame_size=1024, max_message_size=2048))
    ids = [c.send_request("m", b"") for _ in range(10)]
    s.receive_message(c.next_message())
    for i, cid in enumerate(ids):
        s.send_response(cid, bytes([i]) * 1000)
    s.send_ping(b"last")
    msgs = messages(s)
    # Two responses per message; the PING fits with the last two.
    assert [[f[0] for f in frames_of(m)] for m in msgs] == [[F.RESPONSE] * 2] * 4 + [[F.RESPONSE, F.RESPONSE, F.PING]]
    assert all(len(m) <= 2048 for m in msgs)
    events = [ev for m in msgs for ev in c.receive_message(m)]
    assert events == [ResponseReceived(cid, bytes([i]) * 1000) for i, cid in enumerate(ids)]
    assert s.traffic.frames_out == 11 and s.traffic.messages_out == 5
    assert c.traffic.frames_in == 11


def test_a_message_never_exceeds_the_peers_max_message_size() -> None:
    # Peer limits: 1 KiB frames, 2 KiB messages. The sender's stream queue holds up to
    # half a message (stream_buffer_size) and the frame limit is half a message too,
    # so a queue just under the buffer size plus one full frame plus its header must
    # not produce a message over 2048 bytes.
    limit = 2048
    c, s = connect(server=Settings(max_frame_size=1024, max_message_size=limit))
    sid = c.open_stream()
    # A frame one byte short of the stream's buffer size: the queue still has room.
    first = b"a" * (c.stream_buffer_size - 1 - 2 - 1 - F.varint_size(c.stream_buffer_size))
    assert c.send_item(sid, first) is True
    assert c.writable(sid)
    c.send_item(sid, b"b" * 1024)  # then a full frame
    msgs = messages(c)
    assert all(len(m) <= limit for m in msgs), [len(m) for m in msgs]
    for m in msgs:
        s.receive_message(m)
    assert read_all(s, sid) == [(first, False), (b"b" * 1024, False)]


def test_items_of_about_the_stream_buffer_size_go_up_to_four_to_a_message() -> None:
    # A 64 KiB item fills a stream's 64 KiB buffer alone (its frame header takes it
    # past): one message per item would cost both sides a message (and the sender a
    # system call) each. A stream holding fewer than four items takes another while
    # its queue is under two batches' worth.
    c, s = connect(server=Settings(initial_stream_window=4 << 20))  # credit for all of it
    assert c.stream_buffer_size == 64 << 10 and c.batch_size == 128 << 10
    sid = c.open_stream()
    chunk = b"x" * (64 << 10)
    for _ in range(3):
        assert c.send_item(sid, chunk) is True and c.writable(sid)  # room for another
    assert c.send_item(sid, chunk) is False and not c.writable(sid)  # four: the sender waits
    msgs = messages(c)
    assert len(msgs) == 1 and c.writable(sid)
    assert 4 * len(chunk) < len(msgs[0]) < 4 * len(chunk) + 64
    # Items of a batch's worth: two (the first leaves the queue under two batches).
    big = b"y" * (128 << 10)
    assert c.send_item(sid, big) is True and c.send_item(sid, big) is False and not c.writable(sid)
    msgs += messages(c)
    assert len(msgs) == 2
    # An item of two batches' worth takes no second one.
    huge = b"h" * (256 << 10)
    assert c.send_item(sid, huge) is False and not c.writable(sid)
    msgs += messages(c)
    assert len(msgs) == 3
    # Small items fill the buffer, as before: the four-item room is not theirs.
    small = b"z" * (16 << 10)
    assert [c.send_item(sid, small) for _ in range(4)] == [True, True, True, False]
    msgs += messages(c)
    assert len(msgs) == 4
    for m in msgs:
        s.receive_message(m)
    assert read_all(s, sid) == [(chunk, False)] * 4 + [(big, False)] * 2 + [(huge, False)] + [(small, False)] * 4


def test_a_pair_of_items_never_exceeds_the_peers_max_message_size() -> None:
    # The second item's room is bounded by the peer's message limit, as the buffer is:
    # a first item just under it plus a full frame fit in one message. (A 512-byte
    # buffer: every second item here is let in by the pair rule.)
    limit = 4096
    paired = 0
    for first_size in range(400, 2049, 29):
        c, s = connect(
            server=Settings(max_frame_size=2048, max_message_size=limit), client_kw={"stream_buffer_size": 512}
        )
        sid = c.open_stream()
        items = [b"a" * first_size]
        c.send_item(sid, items[0])
        if c.writable(sid):
            items.append(b"b" * 2048)
            c.send_item(sid, items[1])
            paired += 1
        msgs = messages(c)
        assert len(msgs) == 1 and len(msgs[0]) <= limit, (first_size, [len(m) for m in msgs])
        s.receive_message(msgs[0])
        assert read_all(s, sid) == [(i, False) for i in items]
    assert paired > 40


def test_messages_stay_within_the_peers_limit_under_mixed_load() -> None:
    # Many streams, calls and items of random sizes, the sender honouring writable():
    # every message is within the peer's max_message_size and everything arrives.
    limit = 4096
    c, s = connect(server=Settings(max_frame_size=1024, max_message_size=limit, initial_stream_window=8192))
    rnd = random.Random(7)
    sids = [c.open_stream(urgency=rnd.randrange(8)) for _ in range(6)]
    sent: dict[int, list[bytes]] = {sid: [] for sid in sids}
    got: dict[int, list[bytes]] = {sid: [] for sid in sids}
    for _ in range(300):
        for sid in sids:
            if c.writable(sid) and len(sent[sid]) < 40:
                item = bytes([len(sent[sid])]) * rnd.choice([0, 1, 100, 1000, 1019, 1024, 1500, 5000])
                sent[sid].append(item)
                c.send_item(sid, item)
        if rnd.random() < 0.2:
            c.send_notification("n", b"q" * rnd.randrange(1000))  # within the peer's frame limit
        for msg in messages(c):
            assert len(msg) <= limit
            s.receive_message(msg)
        for sid in sids:
            got[sid] += [x for x, _ in read_all(s, sid)]
        for msg in messages(s):
            c.receive_message(msg)
    assert got == sent and all(len(v) == 40 for v in sent.values())


# ------------------------------------------------------------------------ compression


@pytest.mark.parametrize(
    "local, remote, expected",
    [
        (0, 0, 0),
        (1, 0, 0),
        (0, 3, 0),
        (1, 1, C.ZLIB),
        (3, 1, C.ZLIB),
        (1, 3, C.ZLIB),
        (2, 1, 0),
        (3, 3, C.ZSTD),
        (2, 2, C.ZSTD),
    ],
)
def test_compression_is_negotiated(local: int, remote: int, expected: int) -> None:
    if expected == C.ZSTD and not C.available() & C.ZSTD:
        pytest.skip("zstandard is not installed")
    assert C.choose(local, remote) == expected == C.choose(remote, local)
    c, s = connect(Settings(compression=local), Settings(compression=remote))
    assert c.compression == s.compression == expected


@pytest.mark.parametrize("algorithm", [C.ZLIB, C.ZSTD])
def test_compressed_frames_are_flagged_and_decoded(algorithm: int) -> None:
    if not C.available() & algorithm:
        pytest.skip("zstandard is not installed")
    c, s = connect(Settings(compression=algorithm), Settings(compression=algorithm))
    sid = c.open_stream()
    big = b"abc" * 1000
    small = b"abc" * 100  # under the 1 KiB threshold
    noise = random.Random(1).randbytes(2000)  # does not get smaller
    for item in (big, small, noise):
        c.send_item(sid, item)
    frames = frames_of(c.next_message())
    assert [f[1] for f in frames] == [F.FLAG_OPEN | F.FLAG_COMPRESSED, 0, 0]
    assert len(frames[0][3]) < 200
    assert C.decompress(algorithm, frames[0][3], 1 << 20) == big
    # Credit counts the compressed size.
    assert c.stream_stats(sid, True)[0] == sum(len(f[3]) + FRAME_CHARGE for f in frames)
    s.receive_message(F.encode_batch(frames))
    assert read_all(s, sid) == [(big, False), (small, False), (noise, False)]
    # A compressed item larger than the frame limit: every fragment is flagged, the
    # whole is inflated once reassembled.
    c, s = connect(Settings(compression=algorithm), Settings(compression=algorithm, max_frame_size=1024))
    sid = c.open_stream()
    item = bytes(random.Random(2).choices(b"ab", k=40_000))
    c.send_item(sid, item, raw=True)
    frames = [f for m in messages(c) for f in frames_of(m)]
    assert len(frames) > 2
    assert all(f[1] & (F.FLAG_COMPRESSED | FLAG_RAW) == F.FLAG_COMPRESSED | FLAG_RAW for f in frames)
    s.receive_message(F.encode_batch(frames))
    assert read_all(s, sid) == [(item, True)]


@pytest.mark.parametrize("algorithm", [C.ZLIB, C.ZSTD])
def test_corrupt_compressed_payload_is_a_compression_error(algorithm: int) -> None:
    if not C.available() & algorithm:
        pytest.skip("zstandard is not installed")
    c, s = connect(Settings(compression=algorithm), Settings(compression=algorithm))
    bad = F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN | F.FLAG_COMPRESSED, 1, b"this is not compressed")
    read_error(s, bad, 1, "corrupt compressed payload")
    # COMPRESSED without negotiated compression.
    s = server_after_hello()
    protocol_error(
        s,
        F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN | F.FLAG_COMPRESSED, 1, zlib.compress(b"x")),
        "without negotiated compression",
        ErrorCode.COMPRESSION_ERROR,
        1007,
    )


@pytest.mark.parametrize("algorithm", [C.ZLIB, C.ZSTD])
def test_decompression_bomb_is_bounded_by_max_item_size(algorithm: int) -> None:
    if not C.available() & algorithm:
        pytest.skip("zstandard is not installed")
    limit = 64 << 10
    c, s = connect(Settings(compression=algorithm), Settings(compression=algorithm, max_item_size=limit))
    comp = C.Compressor(algorithm)
    at_limit = comp.compress(b"\0" * limit)
    bomb = comp.compress(b"\0" * (4 << 20))
    assert len(bomb) * 100 < 4 << 20
    s.receive_message(F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN | F.FLAG_COMPRESSED, 1, at_limit))
    assert read_all(s, 1) == [(b"\0" * limit, False)]
    read_error(s, F.encode_frame(F.STREAM_DATA, F.FLAG_COMPRESSED, 1, bomb), 1, "inflates past max_item_size (65536)")


# ---------------------------------------------------------------- unknown frame types


@pytest.mark.parametrize("ftype", [0x40, 0x41, 0x7F, 0x80, 0xFF])
def test_unknown_extension_frames_are_skipped(ftype: int) -> None:
    s = server_after_hello()
    msg = batch((ftype, 0x5A, 77, b"whatever"), (F.NOTIFY, 0, 0, method_head(b"n")))
    assert s.receive_message(msg) == [NotificationReceived("n", b"", cost=F.payload_cost(b""))]
    assert s.next_message() is None


@pytest.mark.parametrize("ftype", [0x00, 0x07, 0x0F, 0x17, 0x1F, 0x23, 0x2F, 0x33, 0x3F])
def test_unknown_core_frame_types_are_errors(ftype: int) -> None:
    s = server_after_hello()
    protocol_error(
        s, F.encode_frame(ftype, 0, 0, b""), f"unknown frame type 0x{ftype:02x}", ErrorCode.PROTOCOL_ERROR, 1002
    )


def test_resume_and_ack_without_negotiated_resumption_are_errors() -> None:
    token = bytes(TOKEN_SIZE)
    for ftype, payload, reason in [
        (F.ACK, V(0), "ACK without session resumption"),
        (F.RESUME, token + V(0), "RESUME was not negotiated"),
        (F.RESUME_OK, token + V(0), "RESUME was not negotiated"),
    ]:
        c, s = connect()
        protocol_error(s, F.encode_frame(ftype, 0, 0, payload), reason, ErrorCode.PROTOCOL_ERROR, 1002)
        protocol_error(c, F.encode_frame(ftype, 0, 0, payload), reason, ErrorCode.PROTOCOL_ERROR, 1002)
    # In the handshake, to a server that does not resume.
    s = Connection(Role.SERVER)
    protocol_error(
        s,
        batch((F.HELLO, 0, 0, Settings(resume=1).to_wire()), (F.RESUME, 0, 0, token + V(0))),
        "RESUME was not negotiated",
        ErrorCode.PROTOCOL_ERROR,
        1002,
    )
    # One side only opting in: not negotiated.
    c, s = connect(Settings(resume=1), Settings())
    assert not c.session.enabled and not s.session.enabled
    protocol_error(
        s, F.encode_frame(F.ACK, 0, 0, V(0)), "ACK without session resumption", ErrorCode.PROTOCOL_ERROR, 1002
    )


# ------------------------------------------------------------------------- resumption


def resumable_pair(**settings: Any) -> tuple[Connection, Connection]:
    return connect(Settings(resume=1, **settings), Settings(resume=1, **settings))


def test_new_session_token_is_issued() -> None:
    c = Connection(Role.CLIENT, Settings(resume=1))
    s = Connection(Role.SERVER, Settings(resume=1))
    hs = c.next_message()
    assert frames_of(hs) == [(F.HELLO, 0, 0, Settings(resume=1).to_wire() + b"\x0b\x01")]  # nothing to resume yet
    s.receive_message(hs)
    reply = frames_of(s.next_message())
    assert [(t, fl, i) for t, fl, i, _ in reply] == [(F.HELLO, 0, 0), (F.RESUME_OK, F.FLAG_NEW, 0)]
    token = reply[1][3][:TOKEN_SIZE]
    assert len(token) == TOKEN_SIZE == 32 and reply[1][3][TOKEN_SIZE:] == V(0)
    assert s.session.token == token and s.session.enabled and s.resumable
    assert c.receive_message(F.encode_batch(reply)) == [HelloReceived(Settings(resume=1))]
    assert c.session.token == token and c.session.enabled and c.resumable
    assert c.take_replay() == [] and s.take_replay() == []
    # Another session gets another token.
    c2, _ = resumable_pair()
    assert c2.session.token is not None and len(c2.session.token) == TOKEN_SIZE and c2.session.token != token


def test_ack_after_ack_frames_trims_the_replay_buffer() -> None:
    c, s = resumable_pair()
    for i in range(ACK_FRAMES - 1):
        c.send_notification("n", bytes([i]))
        s.receive_message(c.next_message())
    assert len(c.session.replay or ()) == ACK_FRAMES - 1
    assert s.next_message() is None  # no ACK yet
    c.send_notification("n", b"last")
    s.receive_message(c.next_message())
    ack = s.next_message()
    assert frames_of(ack) == [(F.ACK, 0, 0, V(ACK_FRAMES))]
    assert c.receive_message(ack) == []
    assert len(c.session.replay or ()) == 0 and c.session.replay_bytes == 0
    # The ACK is a frame of the session like any other: the server keeps it until acknowledged.
    assert len(s.session.replay or ()) == 1 and s.traffic.frames_out == 1
    # Bytes count as well: one large message is acknowledged at once.
    c.send_notification("big", b"b" * ACK_BYTES)
    s.receive_message(c.next_message())
    assert frames_of(s.next_message()) == [(F.ACK, 0, 0, V(ACK_FRAMES + 1))]
    # Acknowledging frames never sent is a protocol error.
    protocol_error(
        c,
        F.encode_frame(F.ACK, 0, 0, V(1000)),
        "acknowledged frames that were never sent",
        ErrorCode.PROTOCOL_ERROR,
        1002,
    )


def test_a_resumable_session_whose_link_keeps_dropping_pairs_no_items() -> None:
    # A link that dropped with nothing of what was outstanding getting through has its
    # frames capped at half a message (ResumeState.chunk): items go one to a message
    # again, however they would pair on a healthy link.
    c, s = resumable_pair(initial_stream_window=1 << 20)
    chunk = b"x" * (64 << 10)
    healthy = c.open_stream()
    assert c.send_item(healthy, chunk) is True  # paired
    c.next_message()  # lost with the link
    c.new_transport()
    s.new_transport()
    assert s.receive_message(c.next_message()) == []
    assert c.receive_message(s.next_message()) == []
    assert c.take_replay()  # nothing got through: smaller messages from now on
    sid = c.open_stream()
    assert c.send_item(sid, chunk) is False and not c.writable(sid)


def test_resume_replays_exactly_the_missed_frames() -> None:
    c, s = resumable_pair()
    old_token = c.session.token
    # Server -> client: m1 arrives, m2 (three frames) arrives cut after its first
    # frame, m3 is lost. Client -> server: n1 arrives, n2 is lost.
    s.send_notification("m1", b"")
    m1 = s.next_message()
    for name in ("m2a", "m2b", "m2c"):
        s.send_notification(name, b"")
    m2 = s.next_message()
    s.send_notification("m3", b"")
    m3 = s.next_message()
    c.send_notification("n1", b"")
    n1 = c.next_message()
    c.send_notification("n2", b"")
    c.send_notification("n2b", b"")
    n2 = c.next_message()
    assert c.receive_message(m1) == [NotificationReceived("m1", b"")]
    m2_frames = frames_of(m2)
    assert c.receive_message(F.encode_batch(m2_frames[:1])) == [NotificationReceived("m2a", b"")]
    assert s.receive_message(n1) == [NotificationReceived("n1", b"")]
    assert (c.traffic.frames_in, c.traffic.frames_out, s.traffic.frames_in, s.traffic.frames_out) == (2, 3, 1, 5)
    # The drop.
    c.new_transport()
    s.new_transport()
    assert c.awaiting_hello and s.awaiting_hello
    hs = c.next_message()
    assert frames_of(hs) == [(F.HELLO, 0, 0, c.settings.to_wire() + b"\x0b\x01"), (F.RESUME, 0, 0, old_token + V(2))]
    assert s.receive_message(hs) == []
    assert not s.awaiting_hello
    reply = s.next_message()
    reply_frames = frames_of(reply)
    assert [(t, fl, i) for t, fl, i, _ in reply_frames] == [(F.HELLO, 0, 0), (F.RESUME_OK, 0, 0)]
    new_token = reply_frames[1][3][:TOKEN_SIZE]
    assert new_token != old_token and s.session.token == new_token
    assert reply_frames[1][3][TOKEN_SIZE:] == V(1)  # the server's received position
    replay_s = s.take_replay()
    # m2 cut to the two frames the client lacks, then m3.
    assert [frames_of(m) for m in replay_s] == [m2_frames[1:], frames_of(m3)]
    assert s.take_replay() == []  # once
    assert c.receive_message(reply) == []
    assert c.session.token == new_token and not c.awaiting_hello
    replay_c = c.take_replay()
    assert replay_c == [n2]
    # Delivered: nothing missing, nothing twice.
    events = [ev for m in replay_s for ev in c.receive_message(m)]
    assert events == [NotificationReceived(n, b"") for n in ("m2b", "m2c", "m3")]
    assert [ev for m in replay_c for ev in s.receive_message(m)] == [
        NotificationReceived("n2", b""),
        NotificationReceived("n2b", b""),
    ]
    assert (c.traffic.frames_in, s.traffic.frames_in) == (s.traffic.frames_out, c.traffic.frames_out) == (5, 3)
    # Both carry on.
    cid = c.send_request("after", b"")
    assert s.receive_message(c.next_message()) == [RequestReceived(cid, "after", b"")]
    s.send_response(cid, b"\x01")
    assert c.receive_message(s.next_message()) == [ResponseReceived(cid, b"\x01")]
    # The replayed messages stay buffered until acknowledged (the new connection may drop too).
    assert len(s.session.replay or ()) == 3 and len(c.session.replay or ()) == 2


def test_wrong_token_is_a_protocol_error() -> None:
    c, s = resumable_pair()
    c.new_transport()
    s.new_transport()
    c.session.token = bytes(TOKEN_SIZE)
    protocol_error(s, c.next_message(), "wrong session token", ErrorCode.PROTOCOL_ERROR, 1002)
    # A RESUME frame too short to hold a token.
    c, s = resumable_pair()
    c.new_transport()
    s.new_transport()
    msg = batch((F.HELLO, 0, 0, c.settings.to_wire()), (F.RESUME, 0, 0, b"short"))
    protocol_error(s, msg, "truncated session frame", ErrorCode.PROTOCOL_ERROR, 1002)


def test_fresh_server_answers_new_and_the_client_raises_session_lost() -> None:
    c, s = resumable_pair()
    c.send_notification("x", b"")
    s.receive_message(c.next_message())
    c.new_transport()
    fresh = Connection(Role.SERVER, Settings(resume=1))  # e.g. the server restarted
    hs = c.next_message()
    assert frames_of(hs)[1][0] == F.RESUME
    assert fresh.receive_message(hs) == [HelloReceived(c.settings)]
    reply = fresh.next_message()
    reply_frames = frames_of(reply)
    assert [(t, fl) for t, fl, _, _ in reply_frames] == [(F.HELLO, 0), (F.RESUME_OK, F.FLAG_NEW)]
    assert reply_frames[1][3][TOKEN_SIZE:] == V(0) and reply_frames[1][3][:TOKEN_SIZE] != c.session.token
    assert fresh.take_replay() == []
    with pytest.raises(SessionLost, match="did not resume"):
        c.receive_message(reply)
    # A server that does not resume at all: lost too.
    c, s = resumable_pair()
    c.new_transport()
    plain = Connection(Role.SERVER)
    with pytest.raises(ProtocolError):  # it refuses the RESUME...
        plain.receive_message(c.next_message())
    c2, s2 = resumable_pair()
    c2.new_transport()
    c2.next_message()
    with pytest.raises(SessionLost, match="does not resume"):  # ...or answers a bare HELLO
        c2.receive_message(hello())


class _End:
    """One side of the numbered-items test: sends ``n`` items on its stream, reads the
    peer's, and passes messages through a link that may lose or cut them."""

    def __init__(self, core: Connection, n: int) -> None:
        self.core = core
        self.n = n
        self.sent = 0
        self.ended = False
        self.out = core.open_stream()
        self.peer_out = 0
        self.got: list[int] = []

    def feed(self) -> None:
        core = self.core
        while self.sent < self.n and core.writable(self.out):
            core.send_item(self.out, _item(self.sent))
            self.sent += 1
        if self.sent == self.n and not self.ended and core.writable(self.out):
            core.end_stream(self.out)
            self.ended = True

    def take(self, msg: bytes) -> None:
        for ev in self.core.receive_message(msg):
            if isinstance(ev, StreamOpened):
                assert self.peer_out == 0
                self.peer_out = ev.stream_id
        if self.peer_out:
            for payload, _ in read_all(self.core, self.peer_out):
                number = int.from_bytes(payload[:4], "big")
                assert payload == _item(number)
                self.got.append(number)

    def done(self) -> bool:
        st = self.core.incoming(self.peer_out) if self.peer_out else None
        return self.ended and st is not None and st.state == 1 and not st.items


def _item(i: int) -> bytes:
    return i.to_bytes(4, "big") * 10


def _resume(c: _End, s: _End) -> tuple[list[bytes], list[bytes]]:
    """Both sides move to a new transport and handshake; return the replays
    ``(server's, client's)``, not yet delivered."""
    c.core.new_transport()
    s.core.new_transport()
    hs = c.core.next_message()
    assert frames_of(hs)[1] == (F.RESUME, 0, 0, c.core.session.token + V(c.core.traffic.frames_in))
    s.take(hs)
    reply = s.core.next_message()
    assert frames_of(reply)[1] == (F.RESUME_OK, 0, 0, s.core.session.token + V(s.core.traffic.frames_in))
    replay_s = s.core.take_replay()
    c.take(reply)
    return replay_s, c.core.take_replay()


def test_numbered_items_cross_drops_with_nothing_lost_or_duplicated() -> None:
    n = 400
    cc, sc = resumable_pair(initial_stream_window=2048)
    c, s = _End(cc, n), _End(sc, n)
    # "client": the client's message is lost and the server's arrives cut in the
    # middle; "server": the other way round; "both": both arrive cut.
    plan = ["client", "server", "both"]
    next_at = 3
    for rnd in range(5000):
        c.feed()
        s.feed()
        mc, ms = cc.next_message(), sc.next_message()
        if (
            plan
            and rnd >= next_at
            and mc is not None
            and ms is not None
            and len(frames_of(mc)) > 1
            and len(frames_of(ms)) > 1
        ):
            kind = plan.pop(0)
            fs, fc = frames_of(ms), frames_of(mc)
            if kind in ("client", "both"):
                c.take(F.encode_batch(fs[: len(fs) // 2]))
            if kind in ("server", "both"):
                s.take(F.encode_batch(fc[: len(fc) // 2]))
            replay_s, replay_c = _resume(c, s)
            # A side that got a cut message is sent exactly its rest first; a lost
            # message is sent whole, last.
            if kind in ("client", "both"):
                assert frames_of(replay_s[0]) == fs[len(fs) // 2 :]
            else:
                assert replay_s[-1] == ms
            if kind in ("server", "both"):
                assert frames_of(replay_c[0]) == fc[len(fc) // 2 :]
            else:
                assert replay_c[-1] == mc
            for m in replay_c:
                s.take(m)
            for m in replay_s:
                c.take(m)
            next_at = rnd + 6
            continue
        if mc is not None:
            s.take(mc)
        if ms is not None:
            c.take(ms)
        if c.done() and s.done() and mc is None and ms is None:
            break
    assert plan == []
    assert c.got == list(range(n)) and s.got == list(range(n))
    assert cc.session.transports == sc.session.transports == 4
    assert cc.resumable and sc.resumable
    assert (cc.traffic.frames_in, sc.traffic.frames_in) == (sc.traffic.frames_out, cc.traffic.frames_out)
    # ACKs kept the replay buffers short.
    assert len(cc.session.replay or ()) <= ACK_FRAMES and len(sc.session.replay or ()) <= ACK_FRAMES


def test_compressed_items_are_held_as_received_so_the_window_bounds_them() -> None:
    # Highly compressible items (64 KiB of zeros: ~100 bytes of zlib) sent until the
    # credit is used up: the receiver holds what the window counted (the compressed
    # bytes), not 600x that; each item is inflated as it is read.
    c, s = connect(Settings(compression=C.ZLIB), Settings(compression=C.ZLIB))
    sid = c.open_stream()
    item = bytes(64 << 10)
    sent = 0
    while c.writable(sid) and sent < 100_000:
        c.send_item(sid, item, raw=True)
        sent += 1
    for m in messages(c):
        s.receive_message(m)
    held = s.stats()["memory"]
    window = s.settings.initial_stream_window
    assert sent * len(item) > 20 * window  # far more than the window, once inflated
    assert held <= window, (held, window)
    got = read_all(s, sid)
    assert len(got) == sent and all(x == (item, True) for x in got)
    assert s.stats()["memory"] == 0


@pytest.mark.parametrize("count", [0, 1, SHORT_QUEUE, SHORT_QUEUE + 1, 200])
def test_held_items_keep_their_order_as_their_queue_grows(count: int) -> None:
    # Held items live in a list while few (an idle stream's is small) and move to a
    # deque past SHORT_QUEUE: reads interleaved with arrivals see every item in order.
    c, s = connect()
    sid = c.open_stream()
    sent = [b"%d" % i for i in range(count)]
    got: list[bytes] = []
    for i, item in enumerate(sent):
        c.send_item(sid, item, raw=True)
        if i % 7 == 3:  # a partial read now and then
            deliver(c, s)
            item_read = s.read_item(sid)
            assert item_read is not None
            got.append(bytes(item_read[0]))
    deliver(c, s)
    got += [p for p, _ in read_all(s, sid)]
    assert got == sent


# ------------------------------------------------- a long message, a slice at a time


def _pings(n: int) -> bytes:
    return b"".join(F.encode_frame(F.PING, 0, 0, i.to_bytes(4, "big")) for i in range(n))


@pytest.mark.parametrize("as_view", [False, True], ids=["bytes", "read_buffer_view"])
def test_a_long_message_decodes_a_slice_at_a_time(as_view: bool) -> None:
    # More than FRAMES_PER_SLICE frames: decode gives the first slice, decode_more the
    # next ones, and the counters count the message once. A view of the read buffer
    # is copied from: the buffer may be reused before the rest is decoded.
    step = O.FRAMES_PER_SLICE
    s = server_after_hello()
    buf = bytearray(_pings(2 * step + 5))
    data: Any = memoryview(buf) if as_view else bytes(buf)
    before = (s.traffic.messages_in, s.traffic.bytes_in)
    got = s.decode(data)
    assert len(got) == step and s.decoding
    buf[:] = bytes(len(buf))  # the read buffer is reused
    got += s.decode_more()
    assert s.decoding
    got += s.decode_more()
    assert not s.decoding and s.decode_more() == []
    assert [bytes(f.payload) for f in got] == [i.to_bytes(4, "big") for i in range(2 * step + 5)]
    assert (s.traffic.messages_in, s.traffic.bytes_in) == (before[0] + 1, before[1] + len(buf))


def _given_until_refused(s: Connection, data: bytes) -> list[F.Frame]:
    """decode and decode_more on ``data`` until they raise: the frames given before."""
    given = s.decode(data)
    while s.decoding:
        given += s.decode_more()
    return given


@pytest.mark.parametrize("walk_step", [None, 1000], ids=["codec_step", "step_1000"])
def test_a_long_message_is_checked_whole_before_its_first_slice(walk_step: int | None, monkeypatch: Any) -> None:
    # A broken message is refused before any of it is given, as decode_message
    # refuses it: a frame cut short, too large, or more than MAX_FRAMES, past the first
    # slice. The check walks WALK_STEP headers a step (all of them compiled; the pure
    # codec in steps, and here 1,000 in either): a slice is [] until it is done.
    if walk_step is not None:
        monkeypatch.setattr(protocol_module, "_WALK_STEP", walk_step)
    s = server_after_hello()
    long = _pings(3 * O.FRAMES_PER_SLICE)
    with pytest.raises(ProtocolError, match="truncated frame"):
        _given_until_refused(s, long + F.encode_frame(F.PING, 0, 0, b"x")[:-1])
    assert not s.decoding
    with pytest.raises(ProtocolError, match="too many frames") as info:
        _given_until_refused(s, F.encode_frame(0x40, 0, 0) * (F.MAX_FRAMES + 1))
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED and not s.decoding
    with pytest.raises(ProtocolError, match="frame too large"):
        _given_until_refused(s, long + F.encode_frame(F.PING, 0, 0, bytes(s.settings.max_frame_size + 1)))
    assert not s.decoding
    # Refused as they happen: nothing was given before the error.
    given: list[F.Frame] = []
    with pytest.raises(ProtocolError, match="truncated frame"):
        given += s.decode(long + F.encode_frame(F.PING, 0, 0, b"x")[:-1])
        while s.decoding:
            given += s.decode_more()
    assert given == []


def test_a_long_message_is_checked_a_step_a_pass_then_decoded_in_slices(monkeypatch: Any) -> None:
    # With WALK_STEP 1,000 (the pure codec takes 8,192 a step), a message of 3 slices
    # and 5 frames: its first slice is decoded from the read, the rest checked 1,000
    # headers a step (decode and decode_more give [] meanwhile), then the slices come.
    monkeypatch.setattr(protocol_module, "_WALK_STEP", 1000)
    step = O.FRAMES_PER_SLICE
    n = 3 * step + 5
    s = server_after_hello()
    buf = bytearray(_pings(n))
    before = (s.traffic.messages_in, s.traffic.bytes_in)
    parts = [s.decode(memoryview(buf))]
    buf[:] = bytes(len(buf))  # the read buffer is reused while the rest is checked
    while s.decoding:
        parts.append(s.decode_more())
    checks = -(-(n - step) // 1000)  # steps over the rest's headers
    assert [len(p) for p in parts] == [0] * (checks - 1) + [step, step, step, 5]
    got = [bytes(f.payload) for p in parts for f in p]
    assert got == [i.to_bytes(4, "big") for i in range(n)]
    assert (s.traffic.messages_in, s.traffic.bytes_in) == (before[0] + 1, before[1] + len(buf))
    assert s.decode_more() == [] and s.receive_frames([]) == []
    # A new transport drops a message still being checked, as one being decoded.
    assert s.decode(_pings(n)) == [] and s.decoding
    s.new_transport()
    assert not s.decoding and s.decode_more() == []


def test_receive_message_takes_a_long_message_whole_and_a_new_transport_drops_the_rest() -> None:
    s = server_after_hello()
    n = 2 * O.FRAMES_PER_SLICE + 1
    skipped = F.encode_frame(0x40, 0, 0, b"ext") * n  # extension frames, skipped
    before = s.traffic.frames_in
    assert s.receive_message(skipped) == []
    assert not s.decoding and s.traffic.frames_in == before + n
    s.decode(skipped)
    assert s.decoding
    s.new_transport()  # what was not processed is the peer's to replay
    assert not s.decoding and s.decode_more() == []
