"""The sans-I/O connection core: bytes in, events out; method calls in, bytes out.

No asyncio and no sockets here. The I/O layer (``fastrpc.peer``) feeds every received
WebSocket message to :meth:`Connection.receive_message`, acts on the events it
returns, and writes whatever :meth:`Connection.next_message` hands it.

The core owns: the HELLO handshake and negotiated settings, call ids and their limits,
the state of every stream in both directions, per-stream flow-control windows (kept in
the codec's :class:`StreamLedger`), reassembly of fragmented items, compression, and
the scheduler that packs queued frames into outgoing messages by priority.
See ``docs/protocol.md`` for the wire format.
"""

from __future__ import annotations

import enum
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, fields
from typing import Union

from . import compression as _compression
from . import frames as F
from .events import (
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
from .exceptions import (
    ErrorCode,
    LimitExceeded,
    PayloadTooLarge,
    ProtocolError,
    RemoteError,
    RemoteStreamError,
    StreamAborted,
    StreamClosed,
)

Payload = Union[bytes, bytearray, memoryview]

__all__ = ["FRAME_CHARGE", "Connection", "Role", "SessionLost", "Settings", "decode_error", "encode_error"]

TOKEN_SIZE = 32
# A receiver acknowledges (ACK) after this many frames or bytes, so that the sender's
# replay buffer holds little more than what is in flight.
ACK_FRAMES = 64
ACK_BYTES = 256 << 10


class SessionLost(Exception):
    """Raised by a client core when the server did not resume its session (it expired,
    or the server restarted): the connection's state is gone; start a new one."""


# Every STREAM_DATA frame costs its payload plus this many bytes of credit: it is about
# what the receiver spends holding one more item, and it makes floods of empty frames
# run out of credit like data does.
FRAME_CHARGE = 32
# Flag bit private to fastrpc's payloads: the payload is raw bytes, not codec-encoded.
FLAG_RAW = 0x40
URGENCY_LEVELS = 8
_NO_RINGS = (None,) * URGENCY_LEVELS  # Connection._ready until a stream queues
DEFAULT_URGENCY = 3

# HELLO setting keys (docs/protocol.md, "HELLO").
SETTING_MAX_FRAME_SIZE = 1
SETTING_MAX_MESSAGE_SIZE = 2
SETTING_INITIAL_STREAM_WINDOW = 3
SETTING_MAX_STREAMS = 4
SETTING_MAX_PENDING_CALLS = 5
SETTING_MAX_ITEM_SIZE = 6
SETTING_COMPRESSION = 7
SETTING_CODEC = 8
SETTING_RESUME = 9
SETTING_CONNECTION_WINDOW = 10

CODEC_MSGPACK = 0
CODEC_JSON = 1


class Role(enum.IntEnum):
    """Which end of the WebSocket: the client allocates odd ids, the server even ones."""

    CLIENT = 1
    SERVER = 2


_DEFAULT_WINDOW = 256 << 10


@dataclass(slots=True)
class Settings:
    """Limits one side announces in its HELLO: what it is willing to receive."""

    max_frame_size: int = 1 << 20
    max_message_size: int = 4 << 20
    initial_stream_window: int = _DEFAULT_WINDOW
    max_streams: int = 1024
    max_pending_calls: int = 1024
    max_item_size: int = 16 << 20
    compression: int = 0
    codec: int = CODEC_MSGPACK
    resume: int = 0
    connection_window: int = 16 << 20

    _KEYS = {
        "max_frame_size": SETTING_MAX_FRAME_SIZE,
        "max_message_size": SETTING_MAX_MESSAGE_SIZE,
        "initial_stream_window": SETTING_INITIAL_STREAM_WINDOW,
        "max_streams": SETTING_MAX_STREAMS,
        "max_pending_calls": SETTING_MAX_PENDING_CALLS,
        "max_item_size": SETTING_MAX_ITEM_SIZE,
        "compression": SETTING_COMPRESSION,
        "codec": SETTING_CODEC,
        "resume": SETTING_RESUME,
        "connection_window": SETTING_CONNECTION_WINDOW,
    }

    def __post_init__(self) -> None:
        self.validate(ValueError)

    def validate(self, error: type[Exception]) -> None:
        if self.max_frame_size < 1024:
            raise error("max_frame_size below 1024")
        if self.max_message_size < self.max_frame_size:
            raise error("max_message_size below max_frame_size")
        if self.initial_stream_window < 1024:
            raise error("initial_stream_window below 1024")
        if self.connection_window < 1024:
            raise error("connection_window below 1024")
        if self.max_item_size < 1:
            raise error("max_item_size below 1")
        if self.codec not in (CODEC_MSGPACK, CODEC_JSON):
            raise error(f"unknown payload codec {self.codec}")

    def to_wire(self) -> bytes:
        return F.encode_settings(
            F.PROTOCOL_VERSION,
            {key: getattr(self, name) for name, key in self._KEYS.items()},
        )

    @classmethod
    def from_wire(cls, payload: Payload) -> Settings:
        version, values = F.decode_settings(payload)
        if version != F.PROTOCOL_VERSION:
            raise ProtocolError(
                f"unsupported protocol version {version} (this side speaks {F.PROTOCOL_VERSION})",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        self = cls.__new__(cls)
        for f in fields(cls):
            setattr(self, f.name, f.default)
        by_key = {key: name for name, key in cls._KEYS.items()}
        for key, value in values.items():
            name = by_key.get(key)
            if name is not None:  # unknown settings are ignored
                setattr(self, name, value)
        self.validate(ProtocolError)
        return self


def encode_error(
    type_name: str,
    message: str,
    code: int | None = None,
    traceback: str | None = None,
    limit: int = 1 << 20,
) -> bytes:
    """ERROR / STREAM_ERROR payload: varint code+1 (0: none), type, message, traceback.

    Fits in ``limit`` bytes: an over-long type name, message or traceback is cut
    (each field still says its true length, so the result always decodes)."""
    room = max(limit - 24, 0)  # the three varints take at most 8 + 8 + 8 bytes
    t = type_name.encode("utf-8", "replace")[: min(256, room)]
    room -= len(t)
    m = message.encode("utf-8", "replace")[:room]
    room -= len(m)
    out = bytearray(F.encode_varint(0 if code is None else min(code, F.VARINT_MAX - 1) + 1))
    out += F.encode_varint(len(t)) + t + F.encode_varint(len(m)) + m
    if traceback and room > 0:
        out += traceback.encode("utf-8", "replace")[:room]
    return bytes(out)


def decode_error(payload: Payload, cls: type[RemoteError] = RemoteError) -> RemoteError:
    data = memoryview(payload).cast("B")
    code, pos = F.decode_varint(data, 0)
    n, pos = F.decode_varint(data, pos)
    if pos + n > len(data):
        raise ProtocolError("truncated error payload")
    type_name = bytes(data[pos : pos + n]).decode("utf-8", "replace")
    pos += n
    n, pos = F.decode_varint(data, pos)
    if pos + n > len(data):
        raise ProtocolError("truncated error payload")
    message = bytes(data[pos : pos + n]).decode("utf-8", "replace")
    pos += n
    tb = bytes(data[pos:]).decode("utf-8", "replace") if pos < len(data) else None
    return cls(type_name, message, None if code == 0 else code - 1, tb)


class _Out:
    """An outgoing stream: its queued frames and the part of an item not yet sent."""

    __slots__ = ("bound", "flags", "id", "queued", "state", "tail", "tail_flags", "urgency", "writer")

    def __init__(self, stream_id: int, urgency: int, bound: bool) -> None:
        self.id = stream_id
        self.urgency = urgency
        self.writer = F.FrameWriter()
        self.state = 0  # 0 open, 1 ended (terminal frame queued), 2 closed by the peer
        self.bound = bound  # bound to a call: not counted against max_streams
        self.flags = F.FLAG_OPEN  # flags for the next frame: OPEN until the first one
        self.tail: Payload | None = None
        self.tail_flags = 0
        self.queued = False  # in the scheduler's ring


class _In:
    """An incoming stream: items received and not yet read, and its end state."""

    __slots__ = ("bound", "epoch", "error", "id", "items", "opened", "partial", "partial_flags", "starved", "state")

    OPEN = 0
    ENDED = 1
    FAILED = 2

    def __init__(self, stream_id: int, bound: bool) -> None:
        self.id = stream_id
        # (payload, raw, charge): charge is the credit given back once it is read.
        self.items: deque[tuple[Payload, bool, int]] = deque()
        self.state = _In.OPEN
        self.error: BaseException | None = None
        self.partial: bytearray | None = None
        self.partial_flags = 0
        self.bound = bound
        self.opened = False
        self.epoch = -1
        # The sender used up its credit (seen on receipt): the window limits the
        # stream. The I/O layer reads and resets it to decide on window growth.
        self.starved = False


class Connection:
    """State of one fastrpc connection, independent of any I/O.

    ``settings`` are the local limits, announced in our HELLO; :attr:`peer_settings`
    are the peer's, known once its HELLO arrived (:attr:`ready`).
    """

    # Slots, and structures made on first use: an idle connection costs little memory.
    __slots__ = (
        "_algorithm",
        "_awaiting_hello",
        "_calls_in",
        "_calls_out",
        "_compressor",
        "_conn_credit",
        "_conn_recv",
        "_conn_unacked",
        "_control",
        "_epoch",
        "_frame_limit",
        "_free_in",
        "_handshake_sent",
        "_in",
        "_ledger_in",
        "_ledger_out",
        "_message_limit",
        "_new_session",
        "_next_id",
        "_out",
        "_peer_parity",
        "_ready",
        "_refused",
        "_refused_inputs",
        "_replay",
        "_replay_bytes",
        "_replay_from",
        "_slot_grants",
        "_stream_bytes",
        "_stream_calls_out",
        "_stream_slots",
        "_unacked_bytes",
        "_unacked_frames",
        "_unblocked",
        "batch_size",
        "bytes_in",
        "bytes_out",
        "closed",
        "compression_threshold",
        "frames_in",
        "frames_out",
        "max_replay_bytes",
        "messages_in",
        "messages_out",
        "peer_settings",
        "resume_broken",
        "resume_enabled",
        "role",
        "settings",
        "stream_buffer_size",
        "token",
        "transports",
    )

    def __init__(
        self,
        role: Role,
        settings: Settings | None = None,
        *,
        compression_threshold: int = 1024,
        stream_buffer_size: int = 64 << 10,
        max_replay_bytes: int = 32 << 20,
        batch_size: int = 128 << 10,
    ) -> None:
        self.role = role
        self.settings = settings or Settings()
        self.peer_settings: Settings | None = None
        self.compression_threshold = compression_threshold
        self.stream_buffer_size = stream_buffer_size
        self.batch_size = batch_size
        self.closed = False
        self._next_id = 1 if role is Role.CLIENT else 2
        self._peer_parity = 0 if role is Role.CLIENT else 1
        self._control = F.FrameWriter()
        # One ring per urgency level, made when a stream of that urgency first queues.
        self._ready: list[deque[_Out] | None] = _NO_RINGS  # type: ignore[assignment]
        self._unblocked: list[int] = []
        self._out: dict[int, _Out] = {}
        self._in: dict[int, _In] = {}
        self._ledger_out = F.StreamLedger(_DEFAULT_WINDOW)
        self._ledger_in = F.StreamLedger(self.settings.initial_stream_window)
        # Connection-wide windows: credit we may still send on all streams together,
        # and what the peer may still send us / what we read and have not granted back.
        self._conn_credit = 0
        self._conn_recv = self.settings.connection_window
        self._conn_unacked = 0
        self._calls_out: dict[int, int] = {}  # id -> 0 pending, 1 cancelled (awaiting its end)
        # Id sets are dicts (id -> None): an empty dict is 64 bytes, an empty set 216.
        self._stream_calls_out: dict[int, None] = {}
        self._calls_in: dict[int, None] = {}
        self._stream_slots = 0  # streams we may still open (peer's max_streams, then grants)
        self._free_in = 0  # free (not call-bound) incoming streams not yet released
        self._slot_grants = 0
        self._stream_bytes = 0  # bytes queued in the streams' writers
        self._refused: dict[int, None] = {}
        self._refused_inputs: dict[int, None] = {}  # channel inputs refused before they arrived
        self._epoch = 0
        self._frame_limit = 0
        self._message_limit = 0
        self._compressor: _compression.Compressor | None = None
        # Traffic counters (tests and benchmarks read them).
        self.messages_out = self.frames_out = self.bytes_out = 0
        self.messages_in = self.frames_in = self.bytes_in = 0
        self._algorithm = 0
        # Handshake and session resumption (docs/protocol.md, "Resuming a session").
        self._handshake_sent = False
        self._awaiting_hello = True
        self.transports = 1
        self.token: bytes | None = None
        self.resume_enabled = False
        self.resume_broken = ""  # why this session can no longer be resumed
        self.max_replay_bytes = max_replay_bytes
        # (first, end position, message); made when the first message is recorded.
        self._replay: deque[tuple[int, int, bytes]] | None = None
        self._replay_bytes = 0
        self._replay_from: int | None = None
        self._unacked_frames = 0
        self._unacked_bytes = 0
        self._new_session = False

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        """True once the peer's HELLO has been received."""
        return self.peer_settings is not None

    @property
    def compression(self) -> int:
        """The negotiated compression algorithm (0: none)."""
        return self._algorithm

    @property
    def pending_calls(self) -> int:
        """Our calls the peer has not finished (cancelled ones included)."""
        return len(self._calls_out)

    @property
    def running_calls(self) -> int:
        """Calls from the peer whose handlers have not finished."""
        return len(self._calls_in)

    def can_call(self) -> bool:
        peer = self.peer_settings
        return peer is not None and len(self._calls_out) < peer.max_pending_calls

    def can_open_stream(self) -> bool:
        return self._stream_slots > 0

    def next_id(self) -> int:
        """Allocate a call or stream id of our parity, skipping ids still in use."""
        fid = self._next_id
        while fid in self._out or fid in self._calls_out:
            fid += 2
        self._next_id = fid + 2
        return fid

    def is_own_id(self, fid: int) -> bool:
        return fid > 0 and fid & 1 != self._peer_parity

    # ----------------------------------------------------------------- output

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in the core and not yet taken by :meth:`next_message`."""
        return self._stream_bytes + len(self._control)

    def has_output(self) -> bool:
        return bool(len(self._control)) or any(self._ready) or self._slot_grants > 0

    def next_message(self) -> bytes | None:
        """The next WebSocket message to send, or None when nothing is queued.

        Control frames and calls go first, then streams by urgency (0 first), round
        robin among the streams of one urgency, each turn taking a stream's whole
        queue (bounded by ``stream_buffer_size``). A message stays within the peer's
        ``max_message_size``.
        """
        if not self._handshake_sent:
            return self.handshake()
        if self._slot_grants:
            self._control.add(F.STREAMS, 0, 0, F.encode_varint(self._slot_grants))
            self._slot_grants = 0
        first = self.frames_out
        parts: list[bytes] = []
        size = 0
        limit = self._message_limit or self.settings.max_message_size
        # Streams fill a message up to batch_size: larger messages would make an urgent
        # item queued next wait for all of one to cross the wire.
        batch = min(self.batch_size, limit)
        control = self._control
        if len(control):
            frames = control.count
            part = control.take()
            if len(part) > limit:
                part, frames = self._split_control(part, limit)
            self.frames_out += frames
            parts.append(part)
            size = len(part)
        if self.peer_settings is not None:
            for ring in self._ready:
                while ring:
                    s = ring[0]
                    n = len(s.writer)
                    if size and size + n > batch:
                        break
                    ring.popleft()
                    s.queued = False
                    if n:
                        self.frames_out += s.writer.count
                        parts.append(s.writer.take())
                        size += n
                        self._stream_bytes -= n
                    if s.state == 0 and s.tail is not None:
                        self._pump(s)
                    elif s.state == 0:
                        self._unblocked.append(s.id)
                else:
                    continue
                break
        if not parts:
            return None
        self.messages_out += 1
        self.bytes_out += size
        msg = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.resume_enabled:
            self._record(first, msg)
        return msg

    # ----------------------------------------------------- handshake and resume

    def handshake(self) -> bytes:
        """The first message on a transport: HELLO, plus RESUME (a client with a
        session to resume) or RESUME_OK (a server answering a client that asked for
        resumption). Sent before anything else; not counted in positions."""
        self._handshake_sent = True
        frames: list[tuple[int, int, int, bytes]] = [(F.HELLO, 0, 0, self.settings.to_wire())]
        if self.role is Role.CLIENT:
            if self.token is not None and self.transports > 1:
                frames.append((F.RESUME, 0, 0, self.token + F.encode_varint(self.frames_in)))
        elif self.resume_enabled and self.token is not None:
            flags = F.FLAG_NEW if self._new_session else 0
            frames.append((F.RESUME_OK, flags, 0, self.token + F.encode_varint(self.frames_in)))
        return F.encode_batch(frames)

    def new_transport(self) -> None:
        """The session moves to a new connection: expect the peer's handshake again,
        send ours again, then replay what the peer has not received."""
        self.transports += 1
        self._handshake_sent = False
        self._awaiting_hello = True
        self._replay_from = None

    @property
    def awaiting_hello(self) -> bool:
        """True until the peer's handshake on the current transport was processed."""
        return self._awaiting_hello

    @property
    def resumable(self) -> bool:
        """Whether the session can survive the loss of its connection."""
        return self.resume_enabled and not self.resume_broken and not self.closed

    def take_replay(self) -> list[bytes]:
        """After a resumed handshake: the messages the peer missed, in order (they
        stay buffered until acknowledged, in case this connection drops too)."""
        pos = self._replay_from
        self._replay_from = None
        if pos is None:
            return []
        self._ack(pos)
        out = []
        for i, (first, end, msg) in enumerate(self._replay or ()):
            if first < pos:
                # The peer has the start of this message: resend the rest of it.
                frames = F.decode_message(msg, F.VARINT_MAX)[pos - first :]
                msg = F.encode_batch([(f.type, f.flags, f.id, f.payload) for f in frames])
                self._replay_bytes -= len(self._replay[i][2]) - len(msg)  # type: ignore[index]
                self._replay[i] = (pos, end, msg)  # type: ignore[index]
            out.append(msg)
        return out

    def _record(self, first: int, msg: bytes) -> None:
        if self._replay is None:
            self._replay = deque()
        self._replay.append((first, self.frames_out, msg))
        self._replay_bytes += len(msg)
        if self._replay_bytes > self.max_replay_bytes:
            self.resume_broken = "replay buffer overflow: the peer acknowledged too little"
            self._replay.clear()
            self._replay_bytes = 0

    def _ack(self, pos: int) -> None:
        """The peer has received every frame before position ``pos``: forget them."""
        if pos > self.frames_out:
            raise ProtocolError("acknowledged frames that were never sent")
        replay = self._replay
        while replay and replay[0][1] <= pos:
            self._replay_bytes -= len(replay.popleft()[2])

    def _on_handshake(self, frames: list[F.Frame], events: list[Event]) -> int:
        """Process the handshake frames at the start of a transport; return how many."""
        first = frames[0]
        if first.type != F.HELLO:
            raise ProtocolError("expected HELLO as the first frame")
        self._awaiting_hello = False
        if self.peer_settings is None:
            self._on_hello(first, events)
        else:
            Settings.from_wire(first.payload)  # validated; the session keeps its terms
        used = 1
        nxt = frames[1] if len(frames) > 1 else None
        if self.role is Role.SERVER:
            resume = nxt is not None and nxt.type == F.RESUME
            if resume:
                used += 1
            if self.resume_enabled:
                if resume and self.transports > 1:
                    token, pos = self._session_frame(nxt)  # type: ignore[arg-type]
                    if self.token is None or not hmac.compare_digest(token, self.token):
                        raise ProtocolError("wrong session token")
                    self._replay_from = pos
                    self._new_session = False
                else:
                    # A new session, or one we do not know (expired, or another server).
                    self._new_session = True
                self.token = secrets.token_bytes(TOKEN_SIZE)  # a fresh token every time
            elif resume:
                raise ProtocolError("RESUME was not negotiated")
        else:
            if nxt is not None and nxt.type == F.RESUME_OK:
                used += 1
                token, pos = self._session_frame(nxt)
                if nxt.flags & F.FLAG_NEW and self.transports > 1:
                    raise SessionLost("the server did not resume the session")
                self.token = token
                if not nxt.flags & F.FLAG_NEW:
                    self._replay_from = pos
            elif self.transports > 1 and self.resume_enabled:
                raise SessionLost("the server does not resume sessions")
        return used

    def _session_frame(self, f: F.Frame) -> tuple[bytes, int]:
        data = bytes(f.payload)
        if len(data) < TOKEN_SIZE + 1:
            raise ProtocolError("truncated session frame")
        pos, _ = F.decode_varint(data, TOKEN_SIZE)
        return data[:TOKEN_SIZE], pos

    def _split_control(self, data: bytes, limit: int) -> tuple[bytes, int]:
        """A control backlog larger than one message: send what fits, requeue the rest
        in order (rare: many large responses queued in one loop iteration)."""
        frames = F.decode_message(data, F.VARINT_MAX)
        size = 0
        head: list[tuple[int, int, int, Payload]] = []
        for i, f in enumerate(frames):
            n = 2 + F.varint_size(f.id) + F.varint_size(len(f.payload)) + len(f.payload)
            if head and size + n > limit:
                for g in frames[i:]:
                    self._control.add(g.type, g.flags, g.id, g.payload)
                break
            head.append((f.type, f.flags, f.id, f.payload))
            size += n
        return F.encode_batch(head), len(head)

    def take_unblocked(self) -> list[int]:
        """Outgoing streams whose queue was emptied since the last call: they may send."""
        out = self._unblocked
        self._unblocked = []
        return out

    def _queue(self, s: _Out) -> None:
        if not s.queued:
            s.queued = True
            self._ring(s.urgency).append(s)

    def _ring(self, urgency: int) -> deque[_Out]:
        if self._ready is _NO_RINGS:  # type: ignore[comparison-overlap]
            self._ready = [None] * URGENCY_LEVELS
        ring = self._ready[urgency]
        if ring is None:
            ring = self._ready[urgency] = deque()
        return ring

    # ----------------------------------------------------------------- calls

    def send_request(
        self,
        method: str,
        payload: Payload,
        *,
        raw: bool = False,
        stream: bool = False,
        channel: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Queue a REQUEST; return its call id.

        ``stream``: results come back as a stream on the call id (read it with
        :meth:`read_item`). ``channel``: we send an input stream on the call id
        (write it with :meth:`send_item`).
        """
        self._check_open()
        if not self.can_call():
            raise LimitExceeded("too many pending calls")
        call_id = self.next_id()
        flags = (FLAG_RAW if raw else 0) | (F.FLAG_STREAM if stream else 0) | (F.FLAG_CHANNEL if channel else 0)
        m = method.encode("utf-8")
        head = F.encode_varint(len(m)) + m
        if timeout is not None:
            flags |= F.FLAG_DEADLINE
            head = F.encode_varint(max(0, min(int(timeout * 1000), F.VARINT_MAX))) + head
        self._check_size("request", len(head) + len(payload))
        self._control.add(F.REQUEST, flags, call_id, head + payload if payload else head)
        self._calls_out[call_id] = 0
        if stream:
            self._stream_calls_out[call_id] = None
            self._in[call_id] = _In(call_id, True)
            self._ledger_in.open(call_id)
        if channel:
            self._open_out(call_id, DEFAULT_URGENCY, True)
        return call_id

    def send_notification(self, method: str, payload: Payload, *, raw: bool = False) -> None:
        self._check_open()
        m = method.encode("utf-8")
        head = F.encode_varint(len(m)) + m
        self._check_size("notification", len(head) + len(payload))
        self._control.add(F.NOTIFY, FLAG_RAW if raw else 0, 0, head + payload)

    def _check_size(self, what: str, n: int) -> None:
        limit = self._frame_limit
        if limit and n > limit:
            raise PayloadTooLarge(f"{what} of {n} bytes exceeds the peer's frame limit of {limit} bytes; use a stream")

    def send_response(self, call_id: int, payload: Payload, *, raw: bool = False) -> None:
        """Answer call ``call_id``; this also finishes it (frees its slot)."""
        if call_id not in self._calls_in:
            raise KeyError(call_id)
        self._calls_in.pop(call_id, None)
        if self.closed:
            return
        limit = self._frame_limit
        if len(payload) > limit:
            self._control.add(
                F.ERROR,
                0,
                call_id,
                encode_error("ResponseTooLarge", f"response of {len(payload)} bytes exceeds {limit}"),
            )
            return
        self._control.add(F.RESPONSE, FLAG_RAW if raw else 0, call_id, payload)

    def send_error(
        self,
        call_id: int,
        type_name: str,
        message: str,
        code: int | None = None,
        traceback: str | None = None,
    ) -> None:
        """Fail call ``call_id``; this also finishes it."""
        if call_id not in self._calls_in:
            raise KeyError(call_id)
        self._calls_in.pop(call_id, None)
        if not self.closed:
            self._control.add(F.ERROR, 0, call_id, encode_error(type_name, message, code, traceback, self._frame_limit))

    def finish_call(self, call_id: int) -> None:
        """A streaming call's handler finished (its stream's end is queued)."""
        self._calls_in.pop(call_id, None)

    def cancel_call(self, call_id: int) -> None:
        """We gave up on ``call_id``: send CANCEL; its slot stays taken until the peer
        answers, so cancel floods cannot exceed the peer's limit."""
        if self._calls_out.get(call_id) != 0:
            return
        self._calls_out[call_id] = 1
        s = self._in.get(call_id)
        if s is not None:
            s.items.clear()
            s.state = _In.FAILED
        o = self._out.get(call_id)
        if o is not None and o.state == 0:
            self.abort_stream(call_id, "call cancelled")
        if not self.closed:
            self._control.add(F.CANCEL, 0, call_id, b"")

    # --------------------------------------------------------- outgoing streams

    def open_stream(self, stream_id: int | None = None, *, urgency: int = DEFAULT_URGENCY) -> int:
        """Open an outgoing stream (its OPEN goes with its first frame); return its id.

        ``stream_id`` None allocates one; a given id must be of our parity and unused.
        Raises :class:`LimitExceeded` when the peer's stream limit is reached (wait for
        :class:`CreditGranted` with id 0 and :meth:`can_open_stream`).
        """
        self._check_open()
        if stream_id is None:
            stream_id = self.next_id()
        elif not self.is_own_id(stream_id) or stream_id > F.VARINT_MAX:
            raise ValueError(f"stream id {stream_id} is not one this side may allocate")
        elif stream_id in self._out or stream_id in self._calls_out:
            raise ValueError(f"stream id {stream_id} is in use")
        if self._stream_slots <= 0:
            raise LimitExceeded("peer's stream limit reached")
        self._stream_slots -= 1
        if stream_id >= self._next_id:
            self._next_id = stream_id + 2
        self._open_out(stream_id, urgency, False)
        return stream_id

    def open_response_stream(self, call_id: int, *, urgency: int = DEFAULT_URGENCY) -> None:
        """Open the stream that carries the results of streaming call ``call_id``."""
        if call_id not in self._calls_in:
            raise KeyError(call_id)
        self._open_out(call_id, urgency, True)

    def _open_out(self, stream_id: int, urgency: int, bound: bool) -> None:
        if not 0 <= urgency < URGENCY_LEVELS:
            raise ValueError("urgency must be 0..7")
        self._out[stream_id] = _Out(stream_id, urgency, bound)
        self._ledger_out.open(stream_id)

    def urgency(self, stream_id: int) -> int:
        s = self._out.get(stream_id)
        return s.urgency if s is not None else DEFAULT_URGENCY

    def set_urgency(self, stream_id: int, urgency: int) -> None:
        if not 0 <= urgency < URGENCY_LEVELS:
            raise ValueError("urgency must be 0..7")
        s = self._out[stream_id]
        if s.queued:
            self._ring(s.urgency).remove(s)
            s.urgency = urgency
            self._ring(urgency).append(s)
        s.urgency = urgency

    def send_item(self, stream_id: int, payload: Payload, *, raw: bool = False) -> bool:
        """Queue one item on an outgoing stream.

        The item is always accepted; the result says whether the stream may take the
        next one now. When False, wait for :class:`CreditGranted` or for the stream
        to show up in :meth:`take_unblocked`, then check :meth:`writable`.
        """
        s = self._out.get(stream_id)
        if s is None or s.state != 0:
            raise StreamClosed(f"stream {stream_id} is closed")
        if s.tail is not None:
            raise RuntimeError("the previous item is still being sent; wait until writable()")
        flags = s.flags | (FLAG_RAW if raw else 0)
        n = len(payload)
        if self._compressor is not None and n >= self.compression_threshold:
            packed = self._compressor.compress(payload)
            if len(packed) < n:
                payload = packed
                n = len(packed)
                flags |= F.FLAG_COMPRESSED
        charge = n + FRAME_CHARGE
        ledger = self._ledger_out
        if n <= self._frame_limit and self._conn_credit >= charge and ledger.window(stream_id) >= charge:
            # Fast path: the whole item fits in one frame and in the credit.
            w = s.writer
            before = len(w)
            w.add(F.STREAM_DATA, flags, stream_id, payload)
            after = len(w)
            self._stream_bytes += after - before
            s.flags = 0
            left = ledger.sent(stream_id, charge)
            self._conn_credit -= charge
            if not s.queued:
                s.queued = True
                ring = self._ready[s.urgency]
                if ring is None:
                    ring = self._ring(s.urgency)
                ring.append(s)
            return left > FRAME_CHARGE and after < self.stream_buffer_size and self._conn_credit > FRAME_CHARGE
        s.tail = payload
        s.tail_flags = flags & ~F.FLAG_OPEN  # OPEN goes on the first frame only (_pump adds s.flags)
        return self._pump(s)

    def writable(self, stream_id: int) -> bool:
        """Whether the stream may take another item now (see :meth:`send_item`)."""
        s = self._out.get(stream_id)
        if s is None or s.state != 0:
            return True  # sending will raise StreamClosed: let the sender find out
        if s.tail is not None and not self._pump(s):
            return False
        return (
            self._ledger_out.window(stream_id) > FRAME_CHARGE
            and self._conn_credit > FRAME_CHARGE
            and len(s.writer) < self.stream_buffer_size
        )

    def _pump(self, s: _Out) -> bool:
        """Move as much of the pending item as credit and buffer allow; True when done
        and the stream may take more."""
        tail = s.tail
        ledger = self._ledger_out
        sid = s.id
        while tail is not None:
            if len(s.writer) >= self.stream_buffer_size:
                break
            room = min(ledger.window(sid), self._conn_credit) - FRAME_CHARGE
            n = len(tail)
            if room < 1 and not (n == 0 and room == 0):
                break
            take = min(n, room, self._frame_limit)
            more = take < n
            flags = s.tail_flags | s.flags | (F.FLAG_MORE if more else 0)
            before = len(s.writer)
            s.writer.add(F.STREAM_DATA, flags, sid, tail[:take] if more else tail)
            self._stream_bytes += len(s.writer) - before
            s.flags = 0
            ledger.sent(sid, take + FRAME_CHARGE)
            self._conn_credit -= take + FRAME_CHARGE
            tail = memoryview(tail)[take:] if more else None
            self._queue(s)
        s.tail = tail
        if tail is not None:
            return False
        return (
            ledger.window(sid) > FRAME_CHARGE
            and self._conn_credit > FRAME_CHARGE
            and len(s.writer) < self.stream_buffer_size
        )

    def end_stream(self, stream_id: int) -> None:
        """Queue STREAM_END: the sender finished. Wait until writable() first."""
        self._terminate(stream_id, F.STREAM_END, b"")

    def error_stream(self, stream_id: int, type_name: str, message: str, code: int | None = None) -> None:
        """Queue STREAM_ERROR: the sending iterator raised."""
        self._terminate(stream_id, F.STREAM_ERROR, encode_error(type_name, message, code, None, self._frame_limit))

    def abort_stream(self, stream_id: int, reason: str = "") -> None:
        """Queue STREAM_ABORT: the sender gives up; an unsent part of an item is dropped."""
        self._terminate(stream_id, F.STREAM_ABORT, reason.encode("utf-8", "replace")[:1024])

    def _terminate(self, stream_id: int, ftype: int, payload: bytes) -> None:
        s = self._out.get(stream_id)
        if s is None or s.state != 0:
            return
        if s.tail is not None:
            if ftype == F.STREAM_END:
                raise RuntimeError("the last item is still being sent; wait until writable()")
            s.tail = None
        s.state = 1
        del self._out[stream_id]
        self._ledger_out.close(stream_id)
        if not self.closed:
            before = len(s.writer)
            s.writer.add(ftype, s.flags, stream_id, payload)
            self._stream_bytes += len(s.writer) - before
            self._queue(s)

    # --------------------------------------------------------- incoming streams

    def incoming(self, stream_id: int) -> _In | None:
        return self._in.get(stream_id)

    def read_item(self, stream_id: int) -> tuple[Payload, bool] | None:
        """Take the next item of an incoming stream (None when none is buffered).

        Reading gives its credit back to the sender, in batches.
        """
        s = self._in.get(stream_id)
        if s is None or not s.items:
            return None
        payload, raw, charge = s.items.popleft()
        self.consumed(s, charge)
        return payload, raw

    def consumed(self, s: _In, charge: int) -> int:
        """Credit bookkeeping for an item the I/O layer took from ``s.items`` itself.

        Returns the stream credit granted back now (0: no CREDIT frame queued).
        """
        grant: int = self._ledger_in.consumed(s.id, charge)
        if grant:
            self._control.add(F.CREDIT, 0, s.id, F.encode_varint(grant))
        return grant

    def _conn_consumed(self, charge: int) -> int:
        """Connection-wide credit for ``charge`` bytes taken off the wire, granted back
        (CREDIT on id 0) once a quarter of the window is due.

        The connection window bounds the data in flight, like TCP's; it is given back
        on receipt, not when the application reads, because reading is per stream: a
        reader waiting on one stream while others hold unread data must not deadlock
        the connection. Memory is bounded by the per-stream windows."""
        due = self._conn_unacked + charge
        if due * 4 >= self.settings.connection_window:
            self._conn_unacked = 0
            self._conn_recv += due
            self._control.add(F.CREDIT, 0, 0, F.encode_varint(due))
            return due
        self._conn_unacked = due
        return 0

    def grow_window(self, stream_id: int, window: int) -> None:
        """Let the sender of ``stream_id`` have up to ``window`` bytes in flight."""
        extra = self._ledger_in.resize(stream_id, window)
        if extra:
            self._control.add(F.CREDIT, 0, stream_id, F.encode_varint(extra))

    def stream_stats(self, stream_id: int, outgoing: bool) -> tuple[int, int, int, int]:
        """``(bytes, items, window, buffered)`` of a stream that is still open."""
        return (self._ledger_out if outgoing else self._ledger_in).stats(stream_id)

    def close_stream(self, stream_id: int) -> None:
        """We stop reading incoming ``stream_id``: drop what is buffered, tell the sender
        (STREAM_CLOSE; for a streaming call, CANCEL) and release its slot."""
        s = self._in.get(stream_id)
        if s is None:
            if stream_id in self._calls_in:
                # The input of a channel call, not arrived yet: tell its sender to stop
                # now and drop what is in flight (it holds no stream slot).
                self._refused_inputs[stream_id] = None
                if not self.closed:
                    self._control.add(F.STREAM_CLOSE, 0, stream_id, b"")
            elif self.is_peer_id(stream_id):
                self._refused[stream_id] = None  # not arrived yet: refuse it when it does
            return
        if s.bound and stream_id in self._stream_calls_out:
            self.cancel_call(stream_id)
            return
        if s.state == _In.OPEN and not self.closed:
            self._control.add(F.STREAM_CLOSE, 0, stream_id, b"")
        self.release_stream(stream_id)

    def is_peer_id(self, fid: int) -> bool:
        return fid > 0 and fid & 1 == self._peer_parity

    def release_stream(self, stream_id: int) -> None:
        """The reader is done with an incoming stream: forget it, free its slot."""
        s = self._in.pop(stream_id, None)
        if s is None:
            return
        s.items.clear()
        self._ledger_in.close(stream_id)
        if not s.bound:
            self._free_in -= 1
            self._slot_grants += 1

    # ------------------------------------------------------------------ control

    def discard_state(self) -> None:
        """The connection is gone for good: forget every call and stream, and what
        they had buffered (a closed peer kept alive by its user holds no data)."""
        self.closed = True
        for s in self._in.values():
            s.items.clear()
        self._in.clear()
        self._out.clear()
        self._ready = _NO_RINGS  # type: ignore[assignment]
        self._ledger_in = F.StreamLedger(self._ledger_in.initial_window)
        self._ledger_out = F.StreamLedger(self._ledger_out.initial_window)
        self._calls_out.clear()
        self._stream_calls_out.clear()
        self._calls_in.clear()
        self._free_in = 0
        self._refused.clear()
        self._refused_inputs.clear()
        self._stream_bytes = 0
        self._replay = None
        self._replay_bytes = 0

    def send_ping(self, payload: bytes = b"") -> None:
        self._check_open()
        self._control.add(F.PING, 0, 0, payload[:64])

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Queue GOAWAY and stop accepting work; the I/O layer then closes the socket."""
        if self.closed:
            return
        self._control.add(F.GOAWAY, 0, 0, F.encode_varint(int(code)) + reason.encode("utf-8", "replace")[:512])
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            from .exceptions import ConnectionClosed

            raise ConnectionClosed()

    # ------------------------------------------------------------------ input

    def receive_message(self, data: Payload) -> list[Event]:
        """Decode one received WebSocket message; return the events it produced.

        Raises :class:`ProtocolError` when the peer broke the protocol: the caller
        should then call :meth:`close` with its code and close the connection.
        """
        frames = F.decode_message(data, self.settings.max_frame_size)
        self.messages_in += 1
        self.bytes_in += len(data)
        events: list[Event] = []
        self._epoch += 1
        if self._awaiting_hello:
            frames = frames[self._on_handshake(frames, events) :]
        # Positions count every frame after the handshake (docs/protocol.md).
        self.frames_in += len(frames)
        if self.resume_enabled and frames:
            self._unacked_frames += len(frames)
            self._unacked_bytes += len(data)
            if self._unacked_frames >= ACK_FRAMES or self._unacked_bytes >= ACK_BYTES:
                self._unacked_frames = self._unacked_bytes = 0
                self._control.add(F.ACK, 0, 0, F.encode_varint(self.frames_in))
        for f in frames:
            t = f.type
            if t == F.STREAM_DATA:
                self._on_data(f, events)
            elif t == F.CREDIT:
                self._on_credit(f, events)
            elif t == F.REQUEST:
                self._on_request(f, events)
            elif t == F.RESPONSE:
                self._on_response(f, events)
            elif t == F.STREAM_END or t == F.STREAM_ERROR or t == F.STREAM_ABORT:
                self._on_stream_end(f, events)
            elif t == F.NOTIFY:
                self._on_notify(f, events)
            elif t == F.ERROR:
                self._on_error(f, events)
            elif t == F.CANCEL:
                if f.id in self._calls_in:
                    events.append(CallCancelled(f.id))
            elif t == F.STREAM_CLOSE:
                self._on_stream_close(f, events)
            elif t == F.STREAMS:
                n, _ = F.decode_varint(f.payload, 0)
                self._stream_slots = min(self._stream_slots + n, F.VARINT_MAX)
                events.append(CreditGranted(0))
            elif t == F.PING:
                if not self.closed:
                    self._control.add(F.PONG, 0, 0, f.payload)
            elif t == F.PONG:
                events.append(PongReceived(bytes(f.payload)))
            elif t == F.GOAWAY:
                code, pos = F.decode_varint(f.payload, 0)
                reason = bytes(f.payload[pos:]).decode("utf-8", "replace")
                events.append(GoAwayReceived(code, reason))
            elif t == F.ACK:
                if not self.resume_enabled:
                    raise ProtocolError("ACK without session resumption")
                self._ack(F.decode_varint(f.payload, 0)[0])
            elif t == F.HELLO:
                raise ProtocolError("HELLO after the handshake")
            elif t >= F.EXTENSION_BASE:
                continue  # unknown extension frames are skipped
            elif t == F.RESUME or t == F.RESUME_OK:
                raise ProtocolError("RESUME was not negotiated")
            else:
                raise ProtocolError(f"unknown frame type 0x{t:02x}")
        return events

    def _on_hello(self, f: F.Frame, events: list[Event]) -> None:
        peer = Settings.from_wire(f.payload)
        self.peer_settings = peer
        self._frame_limit = min(peer.max_frame_size, peer.max_message_size // 2, self.settings.max_message_size)
        self._message_limit = peer.max_message_size
        # A stream's queue plus one frame (with its header, up to 18 bytes) must fit
        # in one message.
        room = peer.max_message_size - self._frame_limit - 18
        self.stream_buffer_size = max(1, min(self.stream_buffer_size, room))
        self._stream_slots = peer.max_streams
        self._conn_credit = peer.connection_window
        self._ledger_out = F.StreamLedger(peer.initial_stream_window)
        self._algorithm = _compression.choose(self.settings.compression, peer.compression)
        if self._algorithm:
            self._compressor = _compression.Compressor(self._algorithm)
        self.resume_enabled = bool(self.settings.resume and peer.resume)
        events.append(HelloReceived(peer))

    def _on_data(self, f: F.Frame, events: list[Event]) -> None:
        fid = f.id
        flags = f.flags
        payload = f.payload
        charge = len(payload) + FRAME_CHARGE
        if charge > self._conn_recv:
            raise ProtocolError("connection flow-control window exceeded", ErrorCode.FLOW_CONTROL_ERROR)
        self._conn_recv -= charge
        self._conn_consumed(charge)
        s = self._in.get(fid)
        if s is None or flags & F.FLAG_OPEN:
            if not flags & F.FLAG_OPEN:
                return  # in flight when we closed the stream: drop it
            s = self._open_in(fid, s, events)
            if s is None:
                return
        elif s.state != _In.OPEN:
            if s.bound and self._calls_out.get(fid) == 1:
                return  # cancelled streaming call: drop until its end arrives
            raise ProtocolError("data after the end of the stream", ErrorCode.STREAM_STATE_ERROR)
        if self._ledger_in.received(fid, charge) <= FRAME_CHARGE:
            s.starved = True
        if flags & F.FLAG_MORE or s.partial is not None:
            if s.partial is None:
                s.partial = bytearray()
                s.partial_flags = flags
            if len(s.partial) + len(payload) > self.settings.max_item_size:
                raise LimitExceeded("item larger than max_item_size")
            s.partial += payload
            if flags & F.FLAG_MORE:
                # Fragments are held in the reassembly buffer (bounded by max_item_size),
                # not in the window: give their credit back at once.
                self.consumed(s, charge)
                return
            payload = bytes(s.partial)
            flags |= s.partial_flags
            s.partial = None
        if flags & F.FLAG_COMPRESSED:
            payload = _compression.decompress(self._algorithm, payload, self.settings.max_item_size)
        s.items.append((payload, bool(flags & FLAG_RAW), charge))
        if s.epoch != self._epoch:
            s.epoch = self._epoch
            events.append(StreamReadable(fid))

    def _open_in(self, fid: int, s: _In | None, events: list[Event]) -> _In | None:
        if s is not None:
            if s.opened or not s.bound:
                raise ProtocolError("stream opened twice", ErrorCode.STREAM_STATE_ERROR)
            s.opened = True
            return s
        if fid in self._refused_inputs:
            return None  # a channel input we stopped reading before it arrived
        if fid in self._calls_in:
            # The input stream of a channel call.
            s = _In(fid, True)
        elif self.is_peer_id(fid):
            if self._free_in >= self.settings.max_streams:
                raise LimitExceeded("too many concurrent streams")
            s = _In(fid, False)
            self._free_in += 1
        else:
            if fid in self._calls_out:
                return None  # a call of ours that we stopped reading
            raise ProtocolError("stream id of the wrong parity", ErrorCode.STREAM_STATE_ERROR)
        s.opened = True
        self._in[fid] = s
        self._ledger_in.open(fid)
        if fid in self._refused:
            self._refused.pop(fid, None)
            self.close_stream(fid)
            return None
        if not s.bound:
            events.append(StreamOpened(fid))
        return s

    def _on_stream_end(self, f: F.Frame, events: list[Event]) -> None:
        fid = f.id
        if fid in self._refused_inputs:
            self._refused_inputs.pop(fid, None)  # its end: nothing more comes
            return
        s = self._in.get(fid)
        if s is None or f.flags & F.FLAG_OPEN:
            if not f.flags & F.FLAG_OPEN:
                self._finish_stream_call(fid)
                return
            cancelled = s is not None and s.bound and self._calls_out.get(fid) == 1
            s = self._open_in(fid, s, events)
            if s is None:
                self._finish_stream_call(fid)
                return
            if cancelled:  # a streaming call we cancelled, ended before any item
                self._finish_stream_call(fid)
                self.release_stream(fid)
                return
        elif s.state != _In.OPEN:
            if s.bound and self._calls_out.get(fid) == 1:
                self._finish_stream_call(fid)
                self.release_stream(fid)
                return
            raise ProtocolError("stream ended twice", ErrorCode.STREAM_STATE_ERROR)
        if s.partial is not None:
            s.partial = None
            if f.type == F.STREAM_END:
                raise ProtocolError("stream ended inside an item", ErrorCode.STREAM_STATE_ERROR)
        if f.type == F.STREAM_END:
            s.state = _In.ENDED
        elif f.type == F.STREAM_ERROR:
            s.state = _In.FAILED
            s.error = decode_error(f.payload, RemoteStreamError)
        else:
            s.state = _In.FAILED
            reason = bytes(f.payload).decode("utf-8", "replace")
            s.error = StreamAborted(reason or "stream aborted by the sender")
        self._finish_stream_call(fid)
        if s.epoch != self._epoch:
            s.epoch = self._epoch
            events.append(StreamReadable(fid))

    def _finish_stream_call(self, fid: int) -> None:
        if fid in self._stream_calls_out:
            self._stream_calls_out.pop(fid, None)
            self._calls_out.pop(fid, None)

    def _on_stream_close(self, f: F.Frame, events: list[Event]) -> None:
        s = self._out.get(f.id)
        if s is None:
            return
        s.state = 2
        s.tail = None
        self._stream_bytes -= len(s.writer)
        s.writer.take()  # nobody reads it any more
        del self._out[f.id]
        self._ledger_out.close(f.id)
        events.append(StreamClosedByPeer(f.id))

    def _on_credit(self, f: F.Frame, events: list[Event]) -> None:
        n, _ = F.decode_varint(f.payload, 0)
        fid = f.id
        if fid == 0:
            if self._conn_credit + n > F.VARINT_MAX:
                raise ProtocolError("flow-control window overflow", ErrorCode.FLOW_CONTROL_ERROR)
            self._conn_credit += n
            events.append(CreditGranted(0))
            return
        if fid not in self._out:
            return  # the stream ended meanwhile
        self._ledger_out.grant(fid, n)
        events.append(CreditGranted(fid))

    def _request_head(self, f: F.Frame, has_deadline: bool) -> tuple[str, Payload, float | None]:
        data = f.payload
        pos = 0
        deadline = None
        if has_deadline:
            ms, pos = F.decode_varint(data, 0)
            deadline = ms / 1000.0
        n, pos = F.decode_varint(data, pos)
        if pos + n > len(data):
            raise ProtocolError("truncated method name")
        try:
            method = bytes(data[pos : pos + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("method name is not UTF-8") from None
        pos += n
        return method, data[pos:], deadline

    def _on_request(self, f: F.Frame, events: list[Event]) -> None:
        fid = f.id
        if not self.is_peer_id(fid):
            raise ProtocolError("call id of the wrong parity")
        if fid in self._calls_in:
            raise ProtocolError("call id in use")
        if len(self._calls_in) >= self.settings.max_pending_calls:
            raise LimitExceeded("too many pending calls")
        flags = f.flags
        method, payload, deadline = self._request_head(f, bool(flags & F.FLAG_DEADLINE))
        self._calls_in[fid] = None
        events.append(
            RequestReceived(
                fid,
                method,
                payload,
                bool(flags & FLAG_RAW),
                bool(flags & F.FLAG_STREAM),
                bool(flags & F.FLAG_CHANNEL),
                deadline,
            )
        )

    def _on_notify(self, f: F.Frame, events: list[Event]) -> None:
        method, payload, _ = self._request_head(f, False)
        events.append(NotificationReceived(method, payload, bool(f.flags & FLAG_RAW)))

    def _on_response(self, f: F.Frame, events: list[Event]) -> None:
        state = self._calls_out.pop(f.id, None)
        if state is None or f.id in self._stream_calls_out:
            raise ProtocolError("response to an unknown call", ErrorCode.STREAM_STATE_ERROR)
        if state == 0:
            events.append(ResponseReceived(f.id, f.payload, bool(f.flags & FLAG_RAW)))

    def _on_error(self, f: F.Frame, events: list[Event]) -> None:
        state = self._calls_out.pop(f.id, None)
        if state is None:
            raise ProtocolError("error for an unknown call", ErrorCode.STREAM_STATE_ERROR)
        if f.id in self._stream_calls_out:
            self._stream_calls_out.pop(f.id, None)
            s = self._in.get(f.id)
            if s is not None and s.state == _In.OPEN:
                s.state = _In.FAILED
                s.error = decode_error(f.payload)
                events.append(StreamReadable(f.id))
            return
        if state == 0:
            events.append(CallFailed(f.id, decode_error(f.payload)))
