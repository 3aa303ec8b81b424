"""The output scheduler: what the next outgoing message carries, in which order.

Control frames (calls, responses, credit, pings) go first, in the order they were
queued. Then streams by urgency, 0 (most urgent) to 7 (RFC 9218's levels), round robin
among the streams of one urgency: each turn takes one stream's whole queue (bounded by
``stream_buffer_size``, or up to four large items within twice ``batch_size``), and a
message carries at most ``batch_size`` bytes of stream data besides the first queue it
takes, so an urgent item queued next never waits behind more than one such message.

``Connection.next_message`` walks :attr:`Scheduler.rings` on the hot path; this class
owns the rings and the control queue. Sans-I/O.
"""

from __future__ import annotations

from collections import deque
from typing import Union

from . import frames as F
from .stream_state import OutgoingStream

__all__ = ["DEFAULT_URGENCY", "URGENCY_LEVELS", "Scheduler"]

Payload = Union[bytes, bytearray, memoryview]

URGENCY_LEVELS = 8
DEFAULT_URGENCY = 3
_NO_RINGS: list[deque[OutgoingStream] | None] = [None] * URGENCY_LEVELS  # shared until a stream queues


def check_urgency(urgency: int) -> None:
    # An int: a float (2.5) passes the range check and fails later, as a ring's index.
    if not isinstance(urgency, int) or not 0 <= urgency < URGENCY_LEVELS:
        raise ValueError(f"urgency must be 0..{URGENCY_LEVELS - 1}, not {urgency!r}")


def split_message(data: bytes, limit: int) -> list[tuple[bytes, int]]:
    """The frames of ``data`` in messages of at most ``limit`` bytes and ``MAX_FRAMES``
    frames (a larger frame alone), with how many frames each holds."""
    out: list[tuple[bytes, int]] = []
    batch: list[tuple[int, int, int, Payload]] = []
    size = 0
    for f in F.decode_message(data, F.VARINT_MAX):
        n = 2 + F.varint_size(f.id) + F.varint_size(len(f.payload)) + len(f.payload)
        if batch and (size + n > limit or len(batch) >= F.MAX_FRAMES):
            out.append((F.encode_batch(batch), len(batch)))
            batch, size = [], 0
        batch.append((f.type, f.flags, f.id, f.payload))
        size += n
    if batch:
        out.append((F.encode_batch(batch), len(batch)))
    return out


class Scheduler:
    """The control queue and one ring of ready streams per urgency level."""

    __slots__ = ("backlog", "backlog_bytes", "control", "pongs_due", "ready", "rings", "unblocked")

    def __init__(self) -> None:
        self.control = F.FrameWriter()
        # Control messages already split from a backlog larger than one message.
        self.backlog: deque[tuple[bytes, int]] | None = None
        self.backlog_bytes = 0
        # One ring per urgency level, made when a stream of that urgency first queues
        # (an idle connection keeps none).
        self.rings = _NO_RINGS
        # Streams waiting in the rings, in all: "any stream to send?" without walking
        # them (every message's check). Whoever takes one off a ring counts it.
        self.ready = 0
        # Streams whose queue a message emptied: their senders may go on. One list for
        # the scheduler's life (Connection.unblocked is it).
        self.unblocked: list[int] = []
        # PONGs queued and not handed out yet: PINGs the peer sent faster than we answer.
        self.pongs_due = 0

    def pong(self, payload: bytes | bytearray | memoryview) -> int:
        """Queue the PONG that answers a PING; how many PONGs are due now."""
        self.control.add(F.PONG, 0, 0, payload)
        self.pongs_due += 1
        return self.pongs_due

    def queue(self, s: OutgoingStream) -> None:
        """``s`` has frames queued: give it a turn."""
        if not s.queued:
            s.queued = True
            ring = self.rings[s.urgency]
            if ring is None:
                ring = self._ring(s.urgency)
            ring.append(s)
            self.ready += 1

    def _ring(self, urgency: int) -> deque[OutgoingStream]:
        if self.rings is _NO_RINGS:
            self.rings = [None] * URGENCY_LEVELS
        ring = self.rings[urgency]
        if ring is None:
            ring = self.rings[urgency] = deque()
        return ring

    def set_urgency(self, s: OutgoingStream, urgency: int) -> None:
        check_urgency(urgency)
        if s.queued:
            self._ring(s.urgency).remove(s)
            self._ring(urgency).append(s)
        s.urgency = urgency

    def take_unblocked(self) -> list[int]:
        out = self.unblocked
        if not out:
            return out
        taken = out.copy()
        out.clear()
        return taken

    def control_bytes(self) -> int:
        """Control bytes queued (the writer and the backlog split from it)."""
        return len(self.control) + self.backlog_bytes

    def take_control(self, limit: int) -> tuple[bytes, int]:
        """The queued control frames (and how many), at most ``limit`` bytes of them,
        in order. A backlog larger than one message is split once, in one pass, into
        message-sized pieces that the next calls hand out (work stays linear in the
        backlog however many messages it takes)."""
        backlog = self.backlog
        if backlog:
            data, frames = backlog.popleft()
            self.backlog_bytes -= len(data)
            if not backlog and not len(self.control):
                self.pongs_due = 0
            return data, frames
        control = self.control
        frames = control.count
        data = control.take()
        if len(data) <= limit and frames <= F.MAX_FRAMES:
            self.pongs_due = 0
            return data, frames
        pieces = deque(split_message(data, limit))
        first = pieces.popleft()
        self.backlog = pieces
        self.backlog_bytes = sum(len(p) for p, _ in pieces)
        return first

    def clear(self) -> None:
        self.pongs_due = 0
        self.backlog = None
        self.backlog_bytes = 0
        self.rings = _NO_RINGS
        self.ready = 0
        self.unblocked.clear()
