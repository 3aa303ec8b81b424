"""The driver shared by the fuzzers of the sans-I/O core (tests/test_core_fuzz.py, with
hypothesis, and tests/fuzz_atheris.py, with atheris).

:func:`converse` feeds a server :class:`fastrpc.protocol.Connection` a client's HELLO
and then a list of messages, with one frame codec (the compiled ``fastrpc._frames`` or
the pure ``fastrpc._frames_py``), playing a simple deterministic application between
messages (answering calls, reading and releasing streams, as the I/O layer would), and
taking every message the core queues. It returns a transcript: per message, the events
(normalised to plain values) and the bytes sent, or how it failed. Transcripts of the
two codecs must be equal, and only :class:`fastrpc.exceptions.ProtocolError` (and its
subclasses) may come out of the core.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import zlib
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from fastrpc import _frames_py as pure
from fastrpc import calls, calltable, flow, inbound, outbound, protocol, resume, scheduler, settings, stream_state
from fastrpc import events as E
from fastrpc.exceptions import ProtocolError, RemoteError
from fastrpc.protocol import Connection, Role, Settings

__all__ = [
    "CODECS",
    "SERVER_SETTINGS",
    "App",
    "converse",
    "hello",
    "invariants",
    "undocumented",
]


def _codecs() -> dict[str, ModuleType]:
    found = {"python": pure}
    if os.environ.get("FASTRPC_NO_EXTENSIONS", "") in ("", "0"):
        try:
            found["cython"] = importlib.import_module("fastrpc._frames")
        except ImportError:
            pass
    return found


CODECS = _codecs()

# Server settings the fuzzers pick from: the defaults, small limits (so that limits are
# reached), compression and resumption on.
SERVER_SETTINGS: list[dict[str, int]] = [
    {},
    {
        "max_frame_size": 1024,
        "max_message_size": 2048,
        "initial_stream_window": 1024,
        "max_streams": 2,
        "max_pending_calls": 2,
        "max_item_size": 100,
        "connection_window": 1024,
    },
    {"compression": 1, "max_item_size": 4096},
    {"resume": 1},
    {"resume": 1, "compression": 1, "max_streams": 3, "initial_stream_window": 2048},
]


class App:
    """What the I/O layer would do with the events, deterministically.

    ``answer``: reply to calls (alternately RESPONSE and ERROR; a stream of one item
    and its end for streaming calls); ``read``: read stream items and release ended
    streams; ``close``: close every stream that opens (STREAM_CLOSE); ``ping``: send a
    PING after each message.
    """

    def __init__(self, answer: bool = True, read: bool = True, close: bool = False, ping: bool = False) -> None:
        self.answer = answer
        self.read = read
        self.close = close
        self.ping = ping
        self.n = 0
        self.pending: dict[int, bool] = {}  # calls left unanswered: id -> streaming

    def _fail_stream_call(self, core: Connection, cid: int) -> None:
        core.open_response_stream(cid)
        core.error_stream(cid, "CancelledError", "call cancelled")
        core.finish_call(cid)

    def act(self, core: Connection, events: Sequence[E.Event]) -> None:
        for ev in events:
            t = type(ev)
            if t is E.RequestReceived and self.answer:
                cid = ev.call_id  # type: ignore[attr-defined]
                self.n += 1
                if ev.stream or ev.channel:  # type: ignore[attr-defined]
                    core.open_response_stream(cid)
                    if core.send_item(cid, b"\x01" * (self.n % 3)) or core.writable(cid):
                        core.end_stream(cid)
                    else:
                        core.abort_stream(cid, "busy")
                    if ev.channel:  # type: ignore[attr-defined]
                        core.close_stream(cid)  # its input: as the peer does, before finishing
                    core.finish_call(cid)
                elif self.n % 2:
                    core.send_response(cid, b"\x02" * (self.n % 5))
                else:
                    core.send_error(cid, "Boom", "x" * (self.n % 7), self.n)
            elif t is E.RequestReceived:
                self.pending[ev.call_id] = bool(ev.stream or ev.channel)  # type: ignore[attr-defined]
            elif t is E.CallCancelled and ev.call_id in self.pending:  # type: ignore[attr-defined]
                # As the I/O layer does for a handler cancelled before it ran: refuse
                # the call's input stream, then fail the call.
                cid = ev.call_id  # type: ignore[attr-defined]
                if self.pending.pop(cid):
                    core.close_stream(cid)
                    self._fail_stream_call(core, cid)
                else:
                    core.send_error(cid, "CancelledError", "call cancelled")
            elif t is E.StreamOpened and self.close:
                core.close_stream(ev.stream_id)  # type: ignore[attr-defined]
            elif t in (E.StreamOpened, E.StreamReadable) and self.read:
                sid = ev.stream_id  # type: ignore[attr-defined]
                while core.read_item(sid) is not None:
                    pass
                if core.has_incoming(sid) and core.stream_end(sid)[0]:
                    core.release_stream(sid)
        if self.ping and not core.closed:
            core.send_ping(b"fuzz")


def hello(settings: Settings | None = None, extra: bytes = b"") -> bytes:
    """A client's handshake message (HELLO, plus ``extra`` frames)."""
    return pure.encode_frame(pure.HELLO, 0, 0, (settings or Settings()).to_wire()) + extra


class _Tokens:
    """Stands in for the ``secrets`` module in the core: tokens are not random, so the
    two codecs' transcripts can be compared byte for byte."""

    def __init__(self) -> None:
        self.n = 0

    def token_bytes(self, n: int) -> bytes:
        self.n += 1
        return bytes([self.n % 256]) * n


# The core's modules that use the frame codec (each imports it as ``F``); the compiled
# call table is a module of its own. With each codec goes its call table: the compiled
# codec's run compares compiled against pure in both.
_CORE = (protocol, calls, calltable, flow, inbound, outbound, resume, scheduler, settings, stream_state) + (
    (importlib.import_module("fastrpc._calltable"),) if calltable.COMPILED else ()
)
_CALL_TABLES = {"python": calltable.PyCallTable, "cython": calltable.CallTable}


@contextlib.contextmanager
def _codec(codec: ModuleType) -> Iterator[None]:
    saved = [m.F for m in _CORE], resume.secrets, protocol.CallTable
    for m in _CORE:
        m.F = codec  # type: ignore[attr-defined]
    resume.secrets = _Tokens()  # type: ignore[assignment]
    protocol.CallTable = _CALL_TABLES[codec.IMPLEMENTATION]  # type: ignore[misc]
    try:
        yield
    finally:
        for m, f in zip(_CORE, saved[0]):
            m.F = f  # type: ignore[attr-defined]
        resume.secrets = saved[1]  # type: ignore[assignment]
        protocol.CallTable = saved[2]  # type: ignore[misc]


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, RemoteError):
        return (type(value).__name__, value.type_name, value.message, value.code, value.remote_traceback)
    if isinstance(value, Settings):
        return repr(value)
    return value


def _event(ev: E.Event) -> tuple[Any, ...]:
    return (type(ev).__name__, *(_plain(getattr(ev, k)) for k in ev.__slots__))


MAX_OUTPUT_MESSAGES = 5000


def invariants(core: Connection) -> list[str]:
    """Bounds the server core should keep whatever the peer sends (issue 11); the
    descriptions of those it does not. Only checked on demand (``invariants=True``):
    today's core breaks some of them (see the hostile tests)."""
    found = []
    limit = core.settings.max_pending_calls + core.settings.max_streams
    view = core.stats()
    refused = len(view["refused"]) + len(view["refused_inputs"])  # type: ignore[arg-type]
    if refused > limit:
        found.append(f"{refused} refused stream ids (more than max_pending_calls + max_streams = {limit})")
    running = set(view["calls_in"])  # type: ignore[call-overload]
    for sid in view["in"]:  # type: ignore[attr-defined]
        s = core.incoming(sid)
        assert s is not None
        if s.bound and s.id not in running and s.id not in view["calls_out"]:  # type: ignore[operator]
            found.append(f"input stream {s.id} kept after its call ended")
    # Everything the peer made the connection hold (unread items as held, partial items,
    # running calls' arguments) stays within its memory budget: converse() gives the
    # core connection_window + max_item_size; past it the core must fail the connection
    # (LimitExceeded) rather than hold more.
    bound = core.settings.connection_window + core.settings.max_item_size
    held = view["memory"]
    if held > bound:  # type: ignore[operator]
        found.append(f"the connection holds {held} bytes (budget connection_window + max_item_size = {bound})")
    return found


def converse(
    codec: ModuleType,
    settings: dict[str, int],
    messages: Sequence[bytes],
    app: App | None = None,
    resume_at: int | None = None,
    resume_with: bytes | None = None,
    check_invariants: bool = False,
) -> list[tuple[Any, ...]]:
    """Feed ``messages`` (the first is the client's handshake) to a server core using
    ``codec``; return the transcript. ``resume_at``: before message number
    ``resume_at``, the transport is replaced (``new_transport()``) and ``resume_with``
    is the client's new handshake; the replay is taken after it.

    Entries: ``("ok", events, output)``, ``("protocol-error", type, reason, code,
    stage)`` (the transcript ends there), ``("UNDOCUMENTED", stage, type, message)``,
    or with ``check_invariants``, ``("INVARIANT", message number, [what])``.
    """
    app = app or App()
    out: list[tuple[Any, ...]] = []
    with _codec(codec):
        terms = Settings(**settings)
        # The budget the invariants hold the core to (see invariants()).
        core = Connection(Role.SERVER, terms, max_connection_memory=terms.connection_window + terms.max_item_size)
        stage = "receive_message"
        try:
            for i, msg in enumerate(messages):
                if resume_at is not None and i == resume_at and resume_with is not None:
                    stage = "new_transport"
                    core.new_transport()
                    stage = "receive_message (resume handshake)"
                    events = core.receive_message(resume_with)
                    stage = "handshake"
                    sent = [core.handshake()]
                    stage = "take_replay"
                    sent += core.take_replay()
                    out.append(("resumed", [_event(ev) for ev in events], sent))
                stage = "receive_message"
                events = core.receive_message(msg)
                stage = "application"
                app.act(core, events)
                stage = "next_message"
                sent = []
                while len(sent) < MAX_OUTPUT_MESSAGES:
                    m = core.next_message()
                    if m is None:
                        break
                    sent.append(m)
                else:
                    out.append(("UNDOCUMENTED", stage, "OutputFlood", f"more than {MAX_OUTPUT_MESSAGES} messages"))
                    return out
                stage = "take_unblocked"
                core.take_unblocked()
                out.append(("ok", [_event(ev) for ev in events], sent))
                if check_invariants:
                    broken = invariants(core)
                    if broken:
                        out.append(("INVARIANT", i, broken))
                        return out
        except ProtocolError as exc:
            out.append(("protocol-error", type(exc).__name__, exc.reason, int(exc.code), stage))
        except Exception as exc:
            out.append(("UNDOCUMENTED", stage, type(exc).__name__, str(exc)[:300]))
    return out


def undocumented(transcript: list[tuple[Any, ...]]) -> tuple[Any, ...] | None:
    """The entry of an exception that is not a ProtocolError, if any."""
    for entry in transcript:
        if entry[0] == "UNDOCUMENTED":
            return entry
    return None


def compressed(data: bytes) -> bytes:
    return zlib.compress(data)
