"""Named states of streams and calls, and the core's record of each stream.

The records belong to :class:`fastrpc.protocol.Connection`: the I/O layer never holds
one; it reads items with ``Connection.read_item`` and asks ``Connection.stream_end``.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Union

from . import frames as F

__all__ = ["CallState", "InState", "IncomingStream", "OutState", "OutgoingStream"]

Payload = Union[bytes, bytearray, memoryview]
# An item in an incoming stream's queue: (payload, kind, charge), or the payload alone.
QueuedItem = Union[tuple[Payload, int, int], Payload]


class OutState(enum.IntEnum):
    """An outgoing stream's life."""

    OPEN = 0  # items may be queued
    ENDED = 1  # its terminal frame (END, ERROR or ABORT) is queued
    CLOSED_BY_PEER = 2  # the receiver sent STREAM_CLOSE: nothing more is sent


class InState(enum.IntEnum):
    """An incoming stream's life."""

    OPEN = 0  # items may still arrive
    ENDED = 1  # STREAM_END arrived: the items held are the last
    FAILED = 2  # STREAM_ERROR / STREAM_ABORT arrived, or its call failed or was cancelled


class CallState(enum.IntEnum):
    """A call of ours that the peer has not finished."""

    PENDING = 0
    CANCELLED = 1  # CANCEL sent; its slot stays taken until the peer's answer


# Plain ints for the hot paths (an enum member lookup costs a class attribute access).
OUT_OPEN = int(OutState.OPEN)
IN_OPEN = int(InState.OPEN)


class OutgoingStream:
    """An outgoing stream: its queued frames and the part of an item not yet sent."""

    __slots__ = ("bound", "flags", "id", "queued", "state", "tail", "tail_flags", "urgency", "writer")

    def __init__(self, stream_id: int, urgency: int, bound: bool) -> None:
        self.id = stream_id
        self.urgency = urgency
        self.writer = F.FrameWriter()
        self.state = OUT_OPEN
        self.bound = bound  # bound to a call: not counted against max_streams
        self.flags = F.FLAG_OPEN  # flags for the next frame: OPEN until the first one
        # The rest of an item waiting for credit, or the items of a run it did not
        # take yet (a list: OutboundStreams.send_items).
        self.tail: Payload | list[bytes] | None = None
        self.tail_flags = 0
        self.queued = False  # in the scheduler's ring


# An idle stream holds no item or a few: a list of them costs 56 bytes and up, a deque
# ~760 even empty (a block of 64 slots). Past this many items the list becomes a deque
# (taking the head of a long list is linear).
SHORT_QUEUE = 16


class IncomingStream:
    """An incoming stream: items received and not yet read, and its end state."""

    __slots__ = (
        "bound",
        "error",
        "error_size",
        "id",
        "items",
        "last_event",
        "partial",
        "partial_flags",
        "seen_open",
        "starved",
        "state",
        "window_size",
    )

    def __init__(self, stream_id: int, bound: bool, window_size: int) -> None:
        self.id = stream_id
        # (payload, kind, charge): kind is the item's FLAG_RAW | FLAG_COMPRESSED bits
        # (compressed items are held as received); charge is the credit given back
        # once it is read. A whole raw item is held as its payload alone (the
        # Connection's rule, _BARE). A list while short, a deque past SHORT_QUEUE.
        self.items: list[QueuedItem] | deque[QueuedItem] = []
        self.state = IN_OPEN
        self.error: BaseException | None = None
        # Bytes of the STREAM_ERROR / STREAM_ABORT payload behind ``error``, charged
        # to the memory budget while the record holds it.
        self.error_size = 0
        self.partial: bytearray | None = None  # reassembly of a fragmented item
        self.partial_flags = 0
        self.bound = bound  # the results or the input of a call: holds no stream slot
        self.seen_open = False  # its FLAG_OPEN frame arrived
        # The number of the received message that last made a StreamReadable event
        # for it: one event per stream per message.
        self.last_event = -1
        # The sender used up its credit (seen on receipt): the window, not the
        # sender, limits the stream; flow control grows it when it is read.
        self.starved = False
        self.window_size = window_size  # its current window (grows for fast readers)
