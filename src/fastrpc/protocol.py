"""The sans-I/O connection core: bytes in, events out; method calls in, bytes out.

No asyncio and no sockets here. The I/O layer feeds every received WebSocket message
to :meth:`Connection.receive_message`, acts on the events it returns
(:mod:`fastrpc.events`), and writes whatever :meth:`Connection.next_message` hands it.

:class:`Connection` keeps the hot paths (queueing and pumping items, receiving data,
packing the next message) and the state of calls and streams; it delegates the rest to
one home per concept: :mod:`fastrpc.settings` (HELLO), :mod:`fastrpc.flow` (credit
windows, grants, window growth, stream slots), :mod:`fastrpc.scheduler` (control queue,
urgency rings), :mod:`fastrpc.resume` (positions, replay, tokens) and
:mod:`fastrpc.stream_state` (named states and per-stream records).
See ``docs/protocol.md`` for the wire format and ``docs/architecture.md`` for the map.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NoReturn, Union

from . import compression as _compression
from . import frames as F
from . import options as O
from .budget import MemoryBudget, PingLimit
from .calls import FLAG_RAW, decode_error, encode_error
from .calltable import CallTable
from .events import (
    CallCancelled,
    CreditGranted,
    Event,
    GoAwayReceived,
    HelloReceived,
    PongReceived,
    RequestReceived,
    StreamClosedByPeer,
    StreamReadable,
)
from .exceptions import (
    ConnectionClosed,
    ErrorCode,
    LimitExceeded,
    ProtocolError,
)
from .flow import FRAME_CHARGE, FlowControl
from .inbound import InboundStreams
from .names import NAMED_STREAM_BASE
from .outbound import MAX_QUEUE_BYTES, TERMINAL_ROOM, OutboundStreams
from .resume import TOKEN_SIZE, ResumeState, SessionLost
from .scheduler import DEFAULT_URGENCY, URGENCY_LEVELS, Scheduler, check_urgency
from .settings import CODEC_JSON, CODEC_MSGPACK, SETTING_SENT_BY_CLIENT, Role, Settings, decode_hello
from .stream_state import (
    IN_OPEN,
    OUT_OPEN,
    SHORT_QUEUE,
    IncomingStream,
    QueuedItem,
)

Payload = Union[bytes, bytearray, memoryview]

__all__ = [
    "ACK_BYTES",
    "ACK_FRAMES",
    "CODEC_JSON",
    "CODEC_MSGPACK",
    "DEFAULT_URGENCY",
    "FLAG_RAW",
    "FRAME_CHARGE",
    "TOKEN_SIZE",
    "URGENCY_LEVELS",
    "Connection",
    "Role",
    "SessionLost",
    "Settings",
    "decode_error",
    "encode_error",
]

# OutboundStreams.whole_limit with the default windows.
_WHOLE_DEFAULT = min(O.INITIAL_STREAM_WINDOW, O.CONNECTION_WINDOW) * 3 // 4
# STREAM_DATA flags that take _on_data's general path.
_DATA_SLOW = F.FLAG_OPEN | F.FLAG_MORE | F.FLAG_COMPRESSED
_COMPRESSED = F.FLAG_COMPRESSED
MAX_PING_PAYLOAD = 64  # docs/protocol.md: a PONG echoes at most this much
MAX_PINGS = 1024  # PONGs due at once (queued, not sent yet): a PING flood costs its sender
ACK_FRAMES = O.ACK_FRAMES
_SENT_BY_CLIENT = F.encode_varint(SETTING_SENT_BY_CLIENT) + F.encode_varint(1)  # appended to a client's HELLO
ACK_BYTES = O.ACK_BYTES
# Frame types of the receiving hot path, as module globals (one lookup, not two).
_STREAM_DATA, _CREDIT, _REQUEST, _RESPONSE = F.STREAM_DATA, F.CREDIT, F.REQUEST, F.RESPONSE
_MAX_FRAMES = F.MAX_FRAMES
# A message decodes a slice of frames at a time (decode, decode_more): at most this
# many frames, and a message of up to 4 bytes a frame this long is one slice.
_SLICE = O.FRAMES_PER_SLICE
_SLICE_BYTES = 4 * _SLICE
_decode_message = F.decode_message
_decode_frames = F.decode_frames
_walk_frames = F.walk_frames
_WALK_STEP = F.WALK_STEP
_take_items = F.take_items
_take_run = F.take_run
_payload_cost = F.payload_cost
_KIND = FLAG_RAW | F.FLAG_COMPRESSED  # the flags an item keeps
# A stream's queue holds (payload, kind, charge), or the payload alone for a whole
# raw item (kind FLAG_RAW, charge len + FRAME_CHARGE): the common item, and its tuple
# (64 bytes) would outweigh a small payload. take_items / take_run know the rule.
_BARE = FLAG_RAW


def _credit_last(items: list[QueuedItem] | deque[QueuedItem], charge: int) -> None:
    """Add ``charge`` bytes of credit to the last item of a stream's queue: it goes
    back to the sender when that item is read."""
    last = items[-1]
    if isinstance(last, tuple):
        items[-1] = (last[0], last[1], last[2] + charge)
    else:
        items[-1] = (last, _BARE, len(last) + FRAME_CHARGE + charge)


class Connection:
    """State of one fastrpc connection, independent of any I/O.

    ``settings``: our limits, announced in our HELLO; :attr:`peer_settings`: the peer's,
    once its HELLO arrived. Keyword options tune sending, window growth and resumption;
    their defaults are in :mod:`fastrpc.options`.
    """

    # Slots, and structures made on first use: an idle connection costs little memory.
    __slots__ = (
        "_algorithm",
        "_budget",
        "_calls",
        "_checking",
        "_flow",
        "_inbound",
        "_message_limit",
        "_out",
        "_outbound",
        "_peer_parity",
        "_ping_limit",
        "_ping_rate",
        "_sched",
        "_undecoded",
        "batch_size",
        "closed",
        "control_queue",
        "decode_free",
        "decoding",
        "parts_out",
        "peer_settings",
        "role",
        "send_call",
        "send_item",
        "session",
        "settings",
        "traffic",
        "unblocked",
        "writable",
    )

    def __init__(
        self,
        role: Role,
        settings: Settings | None = None,
        *,
        compression_threshold: int = O.COMPRESSION_THRESHOLD,
        stream_buffer_size: int = O.STREAM_BUFFER_SIZE,
        max_replay_bytes: int = O.MAX_REPLAY_BYTES,
        batch_size: int = O.BATCH_SIZE,
        max_window: int = 0,  # 0: windows keep their initial size (StreamManager passes its own)
        max_growth: int = O.MAX_GROWTH,
        max_connection_memory: int = O.MAX_CONNECTION_MEMORY,
        max_ping_rate: float | None = O.MAX_PING_RATE,
    ) -> None:
        self.role = role
        self.settings = settings = settings or Settings()
        self.peer_settings: Settings | None = None
        # True once GOAWAY was queued or the connection was torn down (close(),
        # discard_state(): the only writers); a plain attribute, read on every call.
        self.closed = False
        self.batch_size = batch_size
        # Whoever writes what next_message() returns takes a message as a list of
        # parts: large payloads then reach the socket without being copied into one
        # bytes (a transport that writes with writelines, unmasked).
        self.parts_out = False
        self._sched = Scheduler()
        # Outgoing streams whose queue a message emptied (read-only here: take them
        # with take_unblocked); a cheap "any?" test after every message.
        self.unblocked = self._sched.unblocked
        # The control frames queued for the next message (read-only here): len() is
        # their bytes, without control_backlog's split-off backlog; a cheap check.
        self.control_queue = self._sched.control
        self._flow = FlowControl(self._sched.control, settings, max_window=max_window, max_growth=max_growth)
        self._budget = budget = MemoryBudget(max_connection_memory)
        # A plain item (or answer) of at most this many bytes cannot decode past
        # max_connection_memory: only a longer one has its decoded cost measured.
        self.decode_free = max_connection_memory // _compression.MAX_DECODE_RATIO
        self._peer_parity = 0 if role is Role.CLIENT else 1
        self._calls = CallTable(self._sched.control, settings.max_pending_calls, budget, self._peer_parity)
        self.session = ResumeState(max_replay_bytes, batch_size)  # token, positions, replay
        self._outbound = outbound = OutboundStreams(self._flow, self._sched, stream_buffer_size, compression_threshold)
        self._out = self._calls.streams_out = outbound.streams  # (ids: calls skip streams')
        # The sending hot paths, bound once (no extra call per item, per call); see
        # OutboundStreams.send_item and .writable, and CallTable.call: send_call queues
        # a plain call (no stream, channel, timeout or keyword arguments), returns its id.
        self.send_item = outbound.send_item
        self.writable = outbound.writable
        self.send_call = self._calls.call
        self._inbound = InboundStreams(self._sched.control, self._flow, self._calls, self._peer_parity, budget)
        self._message_limit = 0
        self._algorithm = 0
        self._ping_rate = max_ping_rate
        self._ping_limit: PingLimit | None = None  # made at the first PING
        # Traffic counters (positions, for resumption, are frames_in / frames_out).
        self.traffic = F.Traffic()
        # True while a received message has frames left to decode (decode_more): a
        # plain attribute beside _undecoded, read once a message by the I/O layer;
        # _undecoded is that message and the position of its next frame.
        self.decoding = False
        self._undecoded: tuple[Payload, int] | None = None
        # While a long message is being checked (decode_more): its rest, how far its
        # headers are walked, the frames counted so far, and its first slice, held
        # until then.
        self._checking: tuple[Payload, int, int, list[F.Frame]] | None = None

    send_item: Callable[..., bool]
    writable: Callable[[int], bool]
    send_call: Callable[..., int]

    def room_for_run(self, stream_id: int, cap: int) -> tuple[int, int]:
        """Room for a run of raw items on an outgoing stream, and the largest such an
        item may be (:meth:`OutboundStreams.room_for_run`)."""
        return self._outbound.room_for_run(stream_id, cap)

    def send_items(self, stream_id: int, payloads: list[bytes]) -> bool:
        """Queue a run of raw items on an outgoing stream, all of them; whether it
        may take more now (:meth:`OutboundStreams.send_items`)."""
        return self._outbound.send_items(stream_id, payloads)

    def send_run(self, stream_id: int, payloads: list[bytes], room: int) -> int:
        """Queue a run of encoded items on an outgoing stream in one step, as far as
        credit and buffers take them whole; return how many
        (:meth:`OutboundStreams.send_run`; send the next with :meth:`send_item`)."""
        return self._outbound.send_run(stream_id, payloads, room)

    # ------------------------------------------------------------------ state

    @property
    def stream_buffer_size(self) -> int:
        """Bytes one stream may queue before its sender waits."""
        return self._outbound.stream_buffer_size

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
        return len(self._calls.out)

    @property
    def running_calls(self) -> int:
        """Calls from the peer whose handlers have not finished."""
        return len(self._calls.inbound)

    def is_cancelled(self, call_id: int) -> bool:
        """Whether our call ``call_id`` was cancelled and the peer has not ended it yet."""
        return self._calls.cancelled(call_id)

    def is_running(self, call_id: int) -> bool:
        """Whether the peer's call ``call_id`` is still waiting for its answer."""
        return call_id in self._calls.inbound

    def can_call(self) -> bool:
        """Whether a call may go now: the peer's HELLO came and its ``max_pending_calls``
        is not reached."""
        calls = self._calls
        return len(calls.out) < calls.call_limit

    def can_open_stream(self) -> bool:
        return self._flow.stream_slots > 0

    def next_id(self) -> int:
        """Allocate a call or stream id of our parity, skipping ids still in use."""
        return self._calls.free_id()

    def stats(self) -> dict[str, object]:
        """What the connection tracks (calls, streams, credit, slots, replay): for tests."""
        peer_streams = self.peer_settings.max_streams if self.peer_settings is not None else None
        return {
            **self._calls.view(),
            **self._inbound.view(),
            "out": sorted(self._out),
            **self._flow.view(peer_streams),
            **self.session.view(),
            "memory": self._budget.held,
        }

    # ----------------------------------------------------------------- output

    @property
    def budget(self) -> MemoryBudget:
        """This connection's memory budget (``max_connection_memory``): what the peer
        makes it hold outside the core (running notification handlers' arguments) is
        charged to it too."""
        return self._budget

    @property
    def held(self) -> int:
        """Bytes the peer made this connection hold: unread items, partial items, the
        arguments of running calls (what ``max_connection_memory`` bounds)."""
        return self._budget.held

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in the core and not yet taken by :meth:`next_message`."""
        return self._outbound.stream_bytes + self._sched.control_bytes()

    @property
    def control_backlog(self) -> int:
        """Control bytes queued (answers, credit, PONGs...): what the peer's messages made."""
        sched = self._sched
        return len(sched.control) + sched.backlog_bytes

    def has_output(self) -> bool:
        """Whether :meth:`next_message` has something to send (checked once per read)."""
        sched = self._sched
        return bool(len(sched.control) or sched.backlog_bytes or self._flow.slot_grants or sched.ready)

    def next_message(self) -> bytes | list[bytes] | None:
        """The next WebSocket message to send (None: nothing queued): control frames first,
        then streams as :mod:`fastrpc.scheduler` orders them, within the peer's limits.
        With :attr:`parts_out` set, a message that holds large payloads (and is not kept
        for a resume) comes as the list of its parts, to be written in order as one
        message; else it is ``bytes``."""
        sched = self._sched
        session = self.session
        if not (sched.backlog or sched.ready or self._flow.slot_grants) and session.handshake_sent:
            # Control frames alone (calls, answers, credit): one message, or none.
            control = sched.control
            frames = control.count
            if not frames:
                return None
            if len(control) <= (self._message_limit or self.settings.max_message_size) and frames <= _MAX_FRAMES:
                sched.pongs_due = 0
                msg = control.take()
                first = self.traffic.sent(frames, len(msg))
                if session.enabled:
                    session.record(first, first + frames, msg)
                return msg
        if not session.handshake_sent:
            return self.handshake()
        flow = self._flow
        if flow.slot_grants:
            flow.grant_slots()
        count = 0  # frames in the message
        parts: list[bytes] = []
        held = False  # parts holds payloads by reference (FrameWriter.take_parts)
        size = 0
        limit = self._message_limit or self.settings.max_message_size
        # Streams fill a message up to batch_size: larger messages would make an urgent
        # item queued next wait for all of one to cross the wire.
        batch = min(self.batch_size, limit, self.session.chunk)
        sched = self._sched
        outbound = self._outbound
        if len(sched.control) or sched.backlog:
            part, count = sched.take_control(limit)
            parts.append(part)
            size = len(part)
        if self.peer_settings is not None:
            for ring in sched.rings:
                while ring:
                    s = ring[0]
                    n = len(s.writer)
                    if size and (size + n > batch or count + s.writer.count > F.MAX_FRAMES):
                        break
                    ring.popleft()
                    sched.ready -= 1
                    s.queued = False
                    if n:
                        w = s.writer
                        count += w.count
                        piece = w.take_parts()
                        if type(piece) is list:
                            parts += piece
                            held = True
                        else:
                            parts.append(piece)  # type: ignore[arg-type]
                        size += n
                        outbound.stream_bytes -= n
                    if s.state == OUT_OPEN:
                        if s.tail is not None:
                            outbound.pump(s)
                        else:
                            sched.unblocked.append(s.id)
                else:
                    continue
                break
        if not parts:
            return None
        first = self.traffic.sent(count, size)
        if held and self.parts_out and not self.session.enabled:
            return parts  # its payloads are written as they are (the resume buffer keeps bytes)
        msg = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.session.enabled:
            self.session.record(first, first + count, msg)
        return msg

    def take_unblocked(self) -> list[int]:
        """Outgoing streams whose queue was emptied since the last call: they may send."""
        return self._sched.take_unblocked()

    # ----------------------------------------------------- handshake and resume

    def handshake(self) -> bytes:
        """The first message on a transport: HELLO, plus RESUME or RESUME_OK
        (:meth:`ResumeState.handshake`). Sent before anything else; not counted in
        positions."""
        hello = self.settings.to_wire()
        if self.role is Role.CLIENT:
            hello += _SENT_BY_CLIENT
        return self.session.handshake(self.role is Role.CLIENT, hello, self.traffic.frames_in)

    def new_transport(self) -> None:
        """The session moves to a new connection: expect the peer's handshake again,
        send ours again, then replay what the peer has not received."""
        self.session.new_transport()
        self._drop_undecoded()  # the peer replays what this side did not process

    def _fit_frames(self) -> None:
        """New stream frames stay within the link's chunk (``ResumeState.frame_cap``)."""
        self._outbound.limits(min(self._calls.frame_limit, self.session.frame_cap()))

    @property
    def awaiting_hello(self) -> bool:
        """True until the peer's handshake on the current transport was processed."""
        return self.session.awaiting_hello

    @property
    def resumable(self) -> bool:
        """Whether the session can survive the loss of its connection."""
        return self.session.resumable and not self.closed

    def take_replay(self) -> list[bytes]:
        """After a resumed handshake: the messages the peer missed, in order (they
        stay buffered until acknowledged, in case this connection drops too)."""
        replay = self.session.take_replay(self.traffic.frames_out)
        self._fit_frames()
        return replay

    def _on_handshake(self, frames: list[F.Frame], events: list[Event]) -> int:
        """Process the handshake frames at the start of a transport; return how many."""
        first = frames[0]
        if first.type != F.HELLO:
            raise ProtocolError("expected HELLO as the first frame: the other side does not speak fastrpc")
        if self.role is Role.CLIENT and decode_hello(first.payload)[1].get(SETTING_SENT_BY_CLIENT):
            raise ProtocolError(
                "the server sent our own handshake back: it does not speak fastrpc (a plain WebSocket echo server?)"
            )
        if self.peer_settings is None:
            self._on_hello(first, events)
        else:
            Settings.from_wire(first.payload)  # validated; the session keeps its terms
        nxt = frames[1] if len(frames) > 1 else None
        return 1 + self.session.accept(self.role is Role.CLIENT, nxt, self.traffic.frames_out)

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
        kwargs: bool = False,
    ) -> int:
        """Queue a REQUEST; return its call id. ``stream``: results come back as a stream
        on the call id (:meth:`read_item`); ``channel``: we send one on it (:meth:`send_item`);
        ``kwargs``: the arguments end with a map of keyword arguments."""
        calls = self._calls
        call_id = calls.new_id()
        calls.request(call_id, method, payload, raw, stream, channel, timeout, kwargs)
        if stream:
            self._inbound.expect(call_id)
        if channel:
            self._outbound.open(call_id, DEFAULT_URGENCY, True)
        return call_id

    def send_notification(self, method: str, payload: Payload, *, raw: bool = False, kwargs: bool = False) -> None:
        self._check_open()
        self._calls.notification(method, payload, raw, kwargs)

    def send_response(self, call_id: int, payload: Payload, raw: bool = False) -> None:
        """Answer call ``call_id``; this also finishes it (frees its slot)."""
        self._calls.reply(call_id, payload, raw, self.closed)

    def send_error(
        self,
        call_id: int,
        type_name: str,
        message: str,
        code: int | None = None,
        traceback: str | None = None,
    ) -> None:
        """Fail call ``call_id``; this also finishes it."""
        self._calls.answer(call_id)
        if not self.closed:
            self._calls.fail(call_id, type_name, message, code, traceback)

    def finish_call(self, call_id: int) -> None:
        """A streaming call's handler finished (its stream's end is queued)."""
        self._calls.finish(call_id)

    def cancel_call(self, call_id: int) -> None:
        """We gave up on ``call_id``: CANCEL; its slot stays taken until the peer answers."""
        if not self._calls.cancel(call_id, send=False):
            return
        self._inbound.fail(call_id, None)
        o = self._out.get(call_id)
        if o is not None and o.state == OUT_OPEN:
            self.abort_stream(call_id, "call cancelled")
        if not self.closed:
            self._sched.control.add(F.CANCEL, 0, call_id, b"")

    # --------------------------------------------------------- outgoing streams

    def open_stream(self, stream_id: int | None = None, *, urgency: int = DEFAULT_URGENCY) -> int:
        """Open an outgoing stream (OPEN goes with its first frame); return its id (None:
        allocate one). :class:`LimitExceeded` at the peer's stream limit (see :meth:`can_open_stream`)."""
        self._check_open()
        if stream_id is None:
            stream_id = self.next_id()
        elif not 0 < stream_id <= F.VARINT_MAX or stream_id & 1 == self._peer_parity:
            raise ValueError(f"stream id {stream_id} is not one this side may allocate")
        elif stream_id in self._out or stream_id in self._calls.out:
            raise ValueError(f"stream id {stream_id} is in use")
        check_urgency(urgency)
        self._flow.take_slot()
        calls = self._calls
        if calls.next_id <= stream_id < NAMED_STREAM_BASE:  # named ids stay apart
            calls.next_id = stream_id + 2
        self._outbound.open(stream_id, urgency, False)
        return stream_id

    def open_response_stream(self, call_id: int, *, urgency: int = DEFAULT_URGENCY) -> None:
        """Open the stream that carries the results of streaming call ``call_id``."""
        if call_id not in self._calls.inbound:
            raise KeyError(call_id)
        self._outbound.open(call_id, urgency, True)

    def urgency(self, stream_id: int) -> int:
        """The urgency of outgoing ``stream_id`` (0 most urgent .. 7)."""
        s = self._out.get(stream_id)
        return s.urgency if s is not None else DEFAULT_URGENCY

    def set_urgency(self, stream_id: int, urgency: int) -> None:
        self._sched.set_urgency(self._out[stream_id], urgency)

    def end_stream(self, stream_id: int) -> None:
        """Queue STREAM_END: the sender finished. Wait until writable() first."""
        self._outbound.end_stream(stream_id)

    def error_stream(self, stream_id: int, type_name: str, message: str, code: int | None = None) -> None:
        """Queue STREAM_ERROR: the sending iterator raised."""
        self._outbound.error_stream(stream_id, type_name, message, code)

    def abort_stream(self, stream_id: int, reason: str = "") -> None:
        """Queue STREAM_ABORT: the sender gives up; an unsent part of an item is dropped."""
        self._outbound.abort_stream(stream_id, reason)

    # --------------------------------------------------------- incoming streams

    def incoming(self, stream_id: int) -> IncomingStream | None:
        """The core's record of an incoming stream (inspection only)."""
        return self._inbound.streams.get(stream_id)

    def has_incoming(self, stream_id: int) -> bool:
        """Whether incoming ``stream_id`` is tracked (arrived, or a call's, awaited)."""
        return stream_id in self._inbound.streams

    def read_item(self, stream_id: int) -> tuple[Payload, bool, int] | None:
        """The next item of an incoming stream, ``(payload, raw, granted)``, or None
        (see :meth:`stream_end`). Its credit goes back in batches (``granted`` > 0: a
        CREDIT is queued; see ``FlowControl.granted``). Kept flat: every item reads here."""
        s = self._inbound.streams.get(stream_id)
        if s is None:
            return None
        items = s.items
        if not items:
            return None
        entry = items.pop(0) if isinstance(items, list) else items.popleft()
        if isinstance(entry, tuple):
            payload, kind, charge = entry
        else:  # a whole raw item, held alone (_BARE)
            payload, kind, charge = entry, _BARE, len(entry) + FRAME_CHARGE
        self._budget.held -= len(payload)
        flow = self._flow
        grant: int = flow.ledger_in.consumed(stream_id, charge)
        if grant:
            flow.granted(s, grant, charge)
        if kind == FLAG_RAW:  # bytes sent as they are: the common kind
            return payload, True, grant
        if not kind:
            # (decodes_past_budget's shortcut inline: no call for a short item.)
            if len(payload) > self.decode_free and self.decodes_past_budget(payload):
                self._refuse_costly(stream_id, payload, False)
            return payload, False, grant
        if kind & _COMPRESSED:
            # Held compressed (what the window counted), inflated as it is read
            # (bounded by max_item_size): a bomb or a corrupt item fails this stream
            # (ProtocolError, COMPRESSION_ERROR), not the reader, as the reader closing
            # it would (close_stream): STREAM_CLOSE, or for a streaming call of ours
            # CANCEL (STREAM_CLOSE would leave its call slot taken for good). One the
            # codec decodes may not decode past max_connection_memory either: a few KiB
            # of [[], [], ...] inflate to max_item_size bytes, then decode to ~60 times
            # that (the peer's compression ratio times the codec's).
            try:
                payload = _compression.decompress(self._algorithm, payload, self.settings.max_item_size)
            except ProtocolError:
                self.close_stream(stream_id)
                raise
            if not kind & FLAG_RAW and self.decodes_past_budget(payload):
                self._refuse_costly(stream_id, payload, True)
        return payload, kind & FLAG_RAW != 0, grant

    def decodes_past_budget(self, payload: Payload) -> bool:
        """Would the codec, decoding this plain payload (a stream item or a call's
        answer that is not raw bytes; a compressed one once inflated), allocate more
        than ``max_connection_memory`` bytes of objects? Measured by
        ``frames.payload_cost`` (as call arguments are), which stops past the budget;
        a payload of at most :attr:`decode_free` bytes cannot, and is not measured
        (one integer comparison). The caller refuses the payload undecoded, with its
        own error naming ``max_connection_memory``. Hot paths make that comparison
        inline before calling, sparing the call for the common short payload."""
        if len(payload) <= self.decode_free:
            return False
        limit = self._budget.limit
        return _payload_cost(payload, limit) > limit

    def _refuse_costly(self, stream_id: int, payload: Payload, compressed: bool) -> NoReturn:
        """(:meth:`read_item`.) An item that would decode past max_connection_memory
        (:meth:`decodes_past_budget`) fails this stream, not the connection: the
        reader gets LimitExceeded (for a compressed one, ProtocolError with
        COMPRESSION_ERROR, as for a decompression bomb), the sender STREAM_CLOSE (or
        CANCEL, as :meth:`close_stream` sends)."""
        self.close_stream(stream_id)
        limit = self._budget.limit
        over = f"would decode to more than {limit} bytes of objects, over max_connection_memory ({limit})"
        if compressed:
            raise ProtocolError(f"a compressed item {over}", ErrorCode.COMPRESSION_ERROR)
        raise LimitExceeded(f"an item of {len(payload)} bytes {over}")

    def read_items(self, stream_id: int, limit: int, max_size: int = -1) -> tuple[list[Payload], bool, int]:
        """Up to ``limit`` items of an incoming stream in one step, ``(payloads, raw,
        granted)``: the next item and those after it of the same kind (raw or plain;
        a compressed one is :meth:`read_item`'s), while their payloads come to at most
        ``max_size`` bytes (>= 0; the first whatever its size). Their memory is released
        and their credit counted as consumed, as by :meth:`read_item` (credit goes back
        in batches: ``granted`` > 0 queued a CREDIT). No payloads: nothing queued, or
        the next item is compressed, or plain and would decode past
        ``max_connection_memory`` (:meth:`read_item` refuses it)."""
        s = self._inbound.streams.get(stream_id)
        if s is None:
            return [], False, 0
        items = s.items
        out, kind, nbytes, charged, top = _take_run(items, limit, _COMPRESSED, FRAME_CHARGE, _BARE, max_size)
        if not out:
            return out, False, 0
        if nbytes > self.decode_free and not kind:  # plain items that might decode past the budget
            free = self.decode_free
            for bad, payload in enumerate(out):
                # (decodes_past_budget's shortcut inline: no call for a short item.)
                if len(payload) > free and self.decodes_past_budget(payload):
                    # That item goes back to the front of the queue, still held (its
                    # credit counted now), and the run ends before it: the next read is
                    # read_item's, which refuses it and fails the stream. The items
                    # after it are dropped, as failing the stream would drop them.
                    nbytes -= len(payload)
                    del out[bad:]
                    if isinstance(items, list):
                        items.insert(0, (payload, kind, 0))
                    else:
                        items.appendleft((payload, kind, 0))
                    break
        self._budget.held -= nbytes
        flow = self._flow
        grant: int = flow.ledger_in.consumed(stream_id, charged)
        if grant:
            flow.granted(s, grant, top)
        return out, kind == FLAG_RAW, grant

    def stream_end(self, stream_id: int) -> tuple[bool, BaseException | None]:
        """``(ended, error)`` of an incoming stream with no item left to read (``ended``
        False while more may come; a released stream counts as ended)."""
        return self._inbound.end_state(stream_id)

    def stream_stats(self, stream_id: int, outgoing: bool) -> tuple[int, int, int, int]:
        """``(bytes, items, window, buffered)`` of a stream that is still open."""
        return self._flow.stats(stream_id, outgoing)

    def grow_window(self, stream_id: int, window: int) -> None:
        """Let the sender of ``stream_id`` have up to ``window`` bytes in flight."""
        self._flow.resize(stream_id, window)

    def close_stream(self, stream_id: int) -> bool:
        """We stop reading incoming ``stream_id``: drop what is buffered, tell the sender
        (STREAM_CLOSE; for a streaming call, CANCEL) and release its slot. True when
        that cancelled a streaming call of ours (its channel's input is aborted too)."""
        s = self._inbound.streams.get(stream_id)
        if s is None:
            self._inbound.refuse(stream_id, self.closed)
        elif s.bound and stream_id in self._calls.streaming_out:
            self.cancel_call(stream_id)
            return True
        else:
            self._inbound.close(s, self.closed)
        return False

    def release_stream(self, stream_id: int) -> None:
        """The reader is done with an incoming stream: forget it, free its slot."""
        self._inbound.release(stream_id)

    # ------------------------------------------------------------------ control

    def discard_state(self) -> None:
        """The connection is gone for good: forget every call and stream, and what
        they had buffered (a closed peer kept alive by its user holds no data)."""
        self._outbound.closed = self._calls.closed = self.closed = True
        self._inbound.clear()
        self._outbound.clear()
        self._sched.clear()
        self._flow.reset()
        self._calls.clear()
        self._budget.held = 0
        self.session.clear()
        self._drop_undecoded()

    def send_ping(self, payload: bytes = b"") -> None:
        self._check_open()
        self._sched.control.add(F.PING, 0, 0, payload[:64])

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Queue GOAWAY and stop accepting work; the I/O layer then closes the socket."""
        if self.closed:
            return
        payload = F.encode_varint(int(code)) + reason.encode("utf-8", "replace")[:512]
        self._sched.control.add(F.GOAWAY, 0, 0, payload)
        self._outbound.closed = self._calls.closed = self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise ConnectionClosed()

    # ------------------------------------------------------------------ input

    def receive_message(self, data: Payload) -> list[Event]:
        """The events one received message makes (or :meth:`decode` it and feed slices of
        its frames to :meth:`receive_frames`). :class:`ProtocolError`: the peer broke the
        protocol (then :meth:`close` with its code); :class:`SessionLost`: not resumed."""
        events = self.receive_frames(self.decode(data))
        while self.decoding:
            events += self.receive_frames(self.decode_more())
        return events

    def decode(self, data: Payload) -> list[F.Frame]:
        """The frames of a received message (at most ``wire.MAX_FRAMES``), or of a
        message of more than ``options.FRAMES_PER_SLICE`` frames the first that many:
        then :attr:`decoding` is true and :meth:`decode_more` gives the next slices.
        Decoding 60,000 tiny frames holds the loop ~100 ms in the pure codec, so the
        I/O layer takes one slice a loop pass. The whole message is checked before any
        of it is given: a broken one is refused before any of its frames is processed.
        The check walks ``frames.WALK_STEP`` frame headers a step (the pure codec:
        8,192, ~2 ms; the compiled one: a whole message); a slice is ``[]`` while
        the check goes on."""
        # A memoryview is the transport's read buffer: payloads are copied out of it.
        copy = type(data) is memoryview
        n = len(data)
        limit = self.settings.max_frame_size
        if n <= _SLICE_BYTES:  # one slice at most (a frame takes 4 bytes at least)
            frames = _decode_message(data, limit, _MAX_FRAMES, copy)
        else:
            frames, pos = _decode_frames(data, 0, _SLICE, limit, copy)
            if pos < n:
                # The rest outlives the read buffer: copied once, then checked whole.
                rest, pos = (bytes(data[pos:]), 0) if copy else (data, pos)
                self._undecoded = (rest, pos)
                self.decoding = True
                frames = self._check((rest, pos, len(frames), frames))
        self.traffic.received(n)
        session = self.session
        if session.enabled:  # toward the next ACK: counted while resumption is on, as frames are
            session.since_ack_bytes += n
        return frames

    def _check(self, checking: tuple[Payload, int, int, list[F.Frame]]) -> list[F.Frame]:
        """One step of the check of a long message's rest (:meth:`decode`): ``[]``
        while it goes on, its first slice once it is done. Raises what
        ``decode_message`` would (then nothing of the message is kept)."""
        data, pos, counted, first = checking
        try:
            # One frame past what a message may hold is enough to refuse it.
            pos, walked = _walk_frames(
                data, pos, min(_WALK_STEP, _MAX_FRAMES + 1 - counted), self.settings.max_frame_size
            )
            counted += walked
            if counted > _MAX_FRAMES:
                raise ProtocolError("too many frames in one message", ErrorCode.LIMIT_EXCEEDED)
        except BaseException:
            self._drop_undecoded()
            raise
        if pos < len(data):
            self._checking = (data, pos, counted, first)
            return []
        self._checking = None
        return first

    def decode_more(self) -> list[F.Frame]:
        """The next slice of the frames of the message :meth:`decode` began (none once
        :attr:`decoding` is false): ``[]`` while the message is being checked."""
        checking = self._checking
        if checking is not None:
            return self._check(checking)
        rest = self._undecoded
        if rest is None:
            return []
        data, pos = rest
        frames, pos = _decode_frames(data, pos, _SLICE, self.settings.max_frame_size)
        if pos < len(data):
            self._undecoded = (data, pos)
        else:
            self._drop_undecoded()
        return frames

    def _drop_undecoded(self) -> None:
        self._undecoded = None
        self._checking = None
        self.decoding = False

    def receive_frames(self, frames: list[F.Frame]) -> list[Event]:
        """Process frames of a received message, in order; return their events (none
        for no frames: a slice of a message still being checked)."""
        events: list[Event] = []
        if not frames:
            return events
        # One StreamReadable per stream per slice. (The call lane's messages, which
        # hold no stream frames, need no count: take_call and the others skip it.)
        self._inbound.message_count += 1
        session = self.session
        if session.awaiting_hello:
            frames = frames[self._on_handshake(frames, events) :]
        # Positions count every frame after the handshake (docs/protocol.md).
        position = self.traffic.took(len(frames))
        if session.enabled and frames:
            if session.previous_token is not None:
                session.proved()  # the client got our RESUME_OK: it sends frames
            if session.received(len(frames)):
                self._sched.control.add(F.ACK, 0, 0, F.encode_varint(position))
        count = len(frames)
        if count > 1 and frames[0].type == _STREAM_DATA:
            # A message of stream items: runs of one stream's items go in one step
            # (_on_items), and so do the runs after a stream's END or other frames in
            # it. Messages that start otherwise (calls, answers, credit) take the plain
            # loop alone, which does not pay for an index.
            i = 0
            while i < count:
                if frames[i].type == _STREAM_DATA:
                    i = self._on_items(frames, i, events)
                    continue
                j = i + 1
                while j < count and frames[j].type != _STREAM_DATA:
                    j += 1
                self._on_frames(frames[i:j], events)
                i = j
            return events
        self._on_frames(frames, events)
        return events

    # The call lane: a message that is one plain REQUEST or one RESPONSE (a
    # sequential call's every message), or only plain REQUESTs, or only RESPONSEs to
    # pending plain calls (calls in flight), once the handshake is done and without
    # resumption (``session.awaiting_hello`` and ``session.enabled`` false:
    # receive_frames' extra steps), may skip receive_frames and its events.

    def take_call(self, f: F.Frame) -> tuple[str, Payload, float | None] | None:
        """(Call lane) REQUEST ``f``, a message's one frame, admitted as
        :meth:`receive_frames` would (``CallTable.take``): its ``(method, arguments,
        deadline)``; None when it was refused (an ERROR answers it)."""
        self.traffic.took(1)
        return self._calls.take(f)

    def take_calls(self, frames: list[F.Frame]) -> Callable[[F.Frame], tuple[str, Payload, float | None] | None] | None:
        """(Call lane) a message of plain REQUESTs alone (calls in flight), as many as
        ``max_pending_calls`` has free slots, ids rising (``CallTable.plain_requests``),
        counted as :meth:`receive_frames` counts it: the function that admits each of
        its REQUESTs, in order, as the one before it is handled (``CallTable.take``:
        :meth:`take_call` without the count; bound per message, not kept on the
        connection, which would cost an idle connection's memory). None, and nothing
        done, for any other message."""
        if not self._calls.plain_requests(frames):
            return None
        self.traffic.took(len(frames))
        return self._calls.take

    def take_answer(self, f: F.Frame) -> bool:
        """(Call lane) RESPONSE ``f``, a message's one frame, taken as
        :meth:`receive_frames` would: True when it answers a pending call of ours
        (False: a call we cancelled; its answer is dropped)."""
        self.traffic.took(1)
        return self._calls.answered(f.id)

    def take_answers(self, frames: list[F.Frame]) -> bool:
        """(Call lane) a message of RESPONSEs, each to a pending plain call of ours
        (``CallTable.answered_all``), taken as :meth:`receive_frames` would: True, and
        every one of those calls is over; False, and nothing done, for any other
        message (``receive_frames`` takes it). 100 calls in flight answered in one
        message skip an event an answer."""
        if not self._calls.answered_all(frames):
            return False
        self.traffic.took(len(frames))
        return True

    def call_now(self, method: str, payload: Payload, raw: bool) -> tuple[int, bytes] | None:
        """(Call lane) a plain call as a message of its own, to be written at once: its
        id and the message, counted as sent as :meth:`next_message` counts; None (and
        nothing done) while other output waits, which the call must follow
        (:meth:`send_call` queues it), or with resumption on. :meth:`send_call`'s errors."""
        session = self.session
        if self.has_output() or session.enabled or not session.handshake_sent:
            return None
        call_id = self._calls.call(method, payload, raw)
        msg = self._sched.control.take()
        self.traffic.sent(1, len(msg))
        return call_id, msg

    def answer_now(self, call_id: int, payload: bytes) -> bytes | None:
        """(Call lane) a sync handler's raw answer to call ``call_id`` as a message of
        its own, to be written at once (the call is finished, as :meth:`send_response`
        does; the message counted as sent, as :meth:`next_message` counts); None (and
        nothing done) while other output waits, which the answer must follow
        (:meth:`send_response` queues it), once closed, or with resumption on."""
        if self.has_output() or self.closed or self.session.enabled:
            return None
        self._calls.reply(call_id, payload, True, False)
        msg = self._sched.control.take()
        self.traffic.sent(1, len(msg))
        return msg

    def _on_frames(self, frames: list[F.Frame], events: list[Event]) -> None:
        """Frames of a message after the handshake, one by one, in order."""
        # Calls and answers first: runs of stream items mostly come through _on_items.
        for f in frames:
            t = f.type
            if t == _REQUEST:
                got = self._calls.take(f)  # (checks the id's parity; None: refused, answered)
                if got is not None:
                    flags = f.flags
                    if not flags & ~FLAG_RAW:  # a plain call (the event's defaults)
                        events.append(RequestReceived(f.id, got[0], got[1], flags != 0))
                    else:
                        events.append(
                            RequestReceived(
                                f.id,
                                got[0],
                                got[1],
                                flags & FLAG_RAW != 0,
                                flags & F.FLAG_STREAM != 0,
                                flags & F.FLAG_CHANNEL != 0,
                                got[2],
                                flags & F.FLAG_KWARGS,  # nonzero: keyword arguments (an int: no bool() per call)
                            )
                        )
                elif f.flags & F.FLAG_CHANNEL:
                    self._refuse_input(f.id)
            elif t == _RESPONSE:
                self._calls.on_response(f, events)
            elif t == _STREAM_DATA:
                self._on_data(f, events)
            elif t == _CREDIT:
                n, _ = F.decode_varint(f.payload, 0)
                if self._flow.out_credit(f.id, n):
                    events.append(CreditGranted(f.id))
            elif t == F.STREAM_END or t == F.STREAM_ERROR or t == F.STREAM_ABORT:
                self._inbound.on_end(f, events, self.closed)
            elif t == F.NOTIFY:
                events.append(self._calls.on_notify(f))
            elif t == F.ERROR:
                self._on_error(f, events)
            elif t == F.CANCEL:
                if f.id in self._calls.inbound:
                    events.append(CallCancelled(f.id))
            elif t == F.STREAM_CLOSE:
                credit = self._flow.conn_credit
                if self._outbound.on_closed_by_peer(f.id):
                    events.append(StreamClosedByPeer(f.id))
                    if self._flow.conn_credit > credit:  # its unsent frames' share is back
                        events.append(CreditGranted(0))
            elif t == F.STREAMS:
                self._flow.out_slots(F.decode_varint(f.payload, 0)[0])
                events.append(CreditGranted(0))
            elif t == F.PING:
                if len(f.payload) > MAX_PING_PAYLOAD:
                    raise ProtocolError(f"PING payload of {len(f.payload)} bytes (at most {MAX_PING_PAYLOAD})")
                self._count_ping()
                if not self.closed and self._sched.pong(f.payload) > MAX_PINGS:
                    raise LimitExceeded(
                        f"more than {MAX_PINGS} PINGs wait for their PONG (the peer pings faster than it reads)"
                    )
            elif t == F.PONG:
                events.append(PongReceived(bytes(f.payload)))
            elif t == F.GOAWAY:
                code, pos = F.decode_varint(f.payload, 0)
                reason = bytes(f.payload[pos:]).decode("utf-8", "replace")
                events.append(GoAwayReceived(code, reason))
            elif t == F.ACK:
                if not self.session.enabled:
                    raise ProtocolError("ACK without session resumption")
                if self.session.ack(F.decode_varint(f.payload, 0)[0], self.traffic.frames_out):
                    self._fit_frames()
            elif t == F.HELLO:
                raise ProtocolError("HELLO after the handshake")
            elif t >= F.EXTENSION_BASE:
                continue  # unknown extension frames are skipped
            elif t == F.RESUME or t == F.RESUME_OK:
                raise ProtocolError("RESUME was not negotiated")
            else:
                raise ProtocolError(f"unknown frame type 0x{t:02x}")

    def _refuse_input(self, call_id: int) -> None:
        """Channel call ``call_id`` was refused before it ran (``CallTable.take``: the
        cost of its arguments; an ERROR answers it): its input stream is refused too,
        as ``Handlers`` refuses the input of a call that will not run (STREAM_CLOSE, and
        what is in flight dropped), or its items would be held, unread, until the
        connection ends, and its sender would go on."""
        calls = self._calls
        channels = calls.channels
        if channels is None:
            channels = calls.channels = {}
        channels[call_id] = None  # refused as a channel's input (calls.takes_input)
        try:
            self._inbound.refuse(call_id, self.closed)
        finally:
            channels.pop(call_id, None)

    def _on_hello(self, f: F.Frame, events: list[Event]) -> None:
        peer = Settings.from_wire(f.payload)
        self.peer_settings = peer
        limit = min(peer.max_frame_size, peer.max_message_size // 2, self.settings.max_message_size)
        self._message_limit = peer.max_message_size
        self._calls.frame_limit = limit
        whole = min(peer.initial_stream_window, peer.connection_window) * 3 // 4
        self._outbound.whole_limit = _WHOLE_DEFAULT if whole == _WHOLE_DEFAULT else whole  # one int, not one each
        # A stream's queue plus one frame (with its header, up to 18 bytes) must fit
        # in one message, with room for its terminal frame (an abort or an error may
        # come while the queue is full: TERMINAL_ROOM).
        room = peer.max_message_size - limit - 18 - TERMINAL_ROOM
        self._outbound.message_limit = peer.max_message_size
        # And within the frames of one message (MAX_QUEUE_BYTES).
        self._outbound.stream_buffer_size = max(1, min(self._outbound.stream_buffer_size, room, MAX_QUEUE_BYTES))
        self._outbound.run_max = min(2 * self.batch_size, room)
        self._flow.peer_hello(peer.initial_stream_window, peer.connection_window, peer.max_streams)
        self._algorithm = _compression.choose(self.settings.compression, peer.compression)
        compressor = _compression.Compressor(self._algorithm) if self._algorithm else None
        self._outbound.limits(limit, peer.max_item_size, compressor)
        self.session.enabled = bool(self.settings.resume and peer.resume)
        self._calls.call_limit = peer.max_pending_calls
        events.append(HelloReceived(peer))

    def _on_data(self, f: F.Frame, events: list[Event]) -> None:
        fid = f.id
        flags = f.flags
        payload = f.payload
        charge = len(payload) + FRAME_CHARGE
        flow = self._flow
        flow.conn_received(charge)
        inbound = self._inbound
        s = inbound.streams.get(fid)
        if s is None or flags & _DATA_SLOW or s.state != IN_OPEN or s.partial is not None:
            got = self._data_slow(s, f, charge, events)
            if got is None:
                return
            s, payload, flags = got
        else:  # the common item: whole, on an open stream, not compressed
            if flow.ledger_in.received(fid, charge) <= FRAME_CHARGE:
                s.starved = True  # the sender used up its credit (FlowControl.granted)
            budget = self._budget  # charged inline: the hot path of every item
            budget.held += len(payload)
            if budget.held > budget.limit:
                budget.charge(0, "unread items")
        items = s.items
        kind = flags & _KIND
        if kind == _BARE and charge == len(payload) + FRAME_CHARGE:
            items.append(payload)
        else:
            items.append((payload, kind, charge))
        if len(items) > SHORT_QUEUE and type(items) is list:
            s.items = deque(items)
        if s.last_event != inbound.message_count:  # InboundStreams.readable, inline
            s.last_event = inbound.message_count
            events.append(StreamReadable(fid))

    def _on_items(self, frames: list[F.Frame], start: int, events: list[Event]) -> int:
        """STREAM_DATA ``frames[start]``: with the frames after it of the same stream
        and flags, a run of plain items of one open stream is queued in one step
        (``take_items``; flow control and the budget charged once for the run);
        anything else goes to :meth:`_on_data`, one frame. Return the index of the
        first frame not handled."""
        f = frames[start]
        fid = f.id
        inbound = self._inbound
        s = inbound.streams.get(fid)
        if s is None or f.flags & _DATA_SLOW or s.state != IN_OPEN or s.partial is not None:
            self._on_data(f, events)
            return start + 1
        items = s.items
        if type(items) is list:
            end, charge, size = _take_items(frames, start, items, FRAME_CHARGE, _KIND, _BARE)
        else:
            run: list[QueuedItem] = []
            end, charge, size = _take_items(frames, start, run, FRAME_CHARGE, _KIND, _BARE)
            items.extend(run)
        # Charged as the frames one by one would be, but once (a peer past a window or
        # the budget fails the connection either way).
        flow = self._flow
        flow.conn_received(charge)
        if flow.ledger_in.received(fid, charge, end - start) <= FRAME_CHARGE:
            s.starved = True
        self._budget.charge(size, "unread items")  # (once a run: no need to inline)
        if len(items) > SHORT_QUEUE and type(items) is list:
            s.items = deque(items)
        inbound.readable(s, events)
        return end

    def _data_slow(
        self, s: IncomingStream | None, f: F.Frame, charge: int, events: list[Event]
    ) -> tuple[IncomingStream, Payload, int] | None:
        """STREAM_DATA that opens a stream, a fragment, a compressed item, or data past
        a stream's end: ``(stream, item, flags)`` to queue, or None (nothing to queue)."""
        fid, flags, payload = f.id, f.flags, f.payload
        flow = self._flow
        if s is None or flags & F.FLAG_OPEN:
            if not flags & F.FLAG_OPEN:
                return None  # in flight when we closed the stream: drop it
            s = self._inbound.arrive(fid, s, events, self.closed)
            if s is None:
                return None
        elif s.state != IN_OPEN:
            if s.bound and self._calls.cancelled(fid):
                return None  # cancelled streaming call: drop until its end arrives
            raise ProtocolError("data after the end of the stream", ErrorCode.STREAM_STATE_ERROR)
        if flow.ledger_in.received(fid, charge) <= FRAME_CHARGE:
            s.starved = True
        if flags & F.FLAG_MORE or s.partial is not None:
            whole = self._inbound.assemble(s, flags, payload, self.settings.max_item_size)
            if whole is None:
                items = s.items
                if items:
                    # The reader is behind: the fragment's credit rides on the last item
                    # queued and comes back when that is read, so that a paused reader
                    # holds at most one whole item past its window.
                    _credit_last(items, charge)
                else:
                    # A reader caught up waits for this item, however large (bounded by
                    # max_item_size and the memory budget): its credit goes back now.
                    flow.in_consumed(s, charge)
                return None
            payload, flags = whole  # charged to the budget as its fragments came
        else:
            budget = self._budget
            budget.held += len(payload)
            if budget.held > budget.limit:
                budget.charge(0, "unread items")
        if flags & F.FLAG_COMPRESSED and not self._algorithm:
            raise ProtocolError("compressed frame without negotiated compression", ErrorCode.COMPRESSION_ERROR)
        return s, payload, flags

    def _count_ping(self) -> None:
        if self._ping_rate is None:
            return
        limit = self._ping_limit
        if limit is None:
            limit = self._ping_limit = PingLimit(self._ping_rate, O.PING_BURST)
        if not limit.take():
            raise LimitExceeded(limit.describe("max_ping_rate"))

    def _on_error(self, f: F.Frame, events: list[Event]) -> None:
        cancelled = self._calls.cancelled(f.id)
        event, streaming = self._calls.on_error(f)
        if streaming:
            if cancelled:  # a streaming call we gave up on: nobody reads its stream
                self._inbound.release(f.id)
            else:
                self._inbound.fail(f.id, decode_error(f.payload), events, len(f.payload))
        elif event is not None:
            events.append(event)
