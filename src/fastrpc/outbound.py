"""Outgoing streams: items queued under credit, fragmentation, and their end (sans-I/O;
owned by ``Connection``, which exposes :meth:`OutboundStreams.send_item` and
:meth:`OutboundStreams.writable` as its own).

An item that fits the credit and one frame is queued at once (the fast path); a larger
one waits in the stream's ``tail`` and is pumped out frame by frame as credit and the
stream's buffer allow (FLAG_MORE on all but the last). The scheduler
(:mod:`fastrpc.scheduler`) decides when each stream's queued frames leave.
"""

from __future__ import annotations

from typing import Union

from . import compression as _compression
from . import frames as F
from . import options as O
from .calls import FLAG_RAW, encode_error
from .exceptions import PayloadTooLarge, StreamClosed
from .flow import FRAME_CHARGE, FlowControl
from .scheduler import Scheduler, check_urgency
from .stream_state import OUT_OPEN, OutgoingStream, OutState

__all__ = ["OutboundStreams"]

_STREAM_DATA = F.STREAM_DATA
# Items a stream's queue may hold past stream_buffer_size, within run_room (below).
RUN_ITEMS = 4
# The largest stream_buffer_size: a stream's queue leaves whole in one message
# (Connection.next_message), which may carry wire.MAX_FRAMES frames; a frame is 4
# bytes at least, and the queue takes one item past the buffer size and then its
# terminal frame. (A larger buffer of empty items made a message the peer refused.)
MAX_QUEUE_BYTES = 4 * (F.MAX_FRAMES - 2)
# Room kept in a message for a stream's terminal frame (header and payload) past its
# fullest queue: an abort or an error may come while the queue is full (a cancelled
# sender, a deadline), and the queue leaves whole, with it, in one message. A longer
# error message or abort reason is cut to what fits (terminal_room).
TERMINAL_ROOM = 256
_HEAD_MAX = 18  # a frame header: type, flags, two varints of up to 8 bytes

Payload = Union[bytes, bytearray, memoryview]


class OutboundStreams:
    """The outgoing streams of one connection, by id, and the bytes they queued."""

    __slots__ = (
        "closed",
        "compression_threshold",
        "compressor",
        "flow",
        "frame_limit",
        "item_limit",
        "message_limit",
        "plain_limit",
        "run_max",
        "run_room",
        "sched",
        "stream_buffer_size",
        "stream_bytes",
        "streams",
        "whole_limit",
    )

    def __init__(
        self,
        flow: FlowControl,
        sched: Scheduler,
        stream_buffer_size: int = O.STREAM_BUFFER_SIZE,
        compression_threshold: int = O.COMPRESSION_THRESHOLD,
    ) -> None:
        self.flow = flow
        self.sched = sched
        self.streams: dict[int, OutgoingStream] = {}
        self.stream_bytes = 0  # bytes queued in the streams' writers
        self.stream_buffer_size = stream_buffer_size
        self.frame_limit = 0  # the peer's, once its HELLO came
        self.item_limit = F.VARINT_MAX  # the peer's max_item_size, once its HELLO came
        self.message_limit = F.VARINT_MAX  # the peer's max_message_size, once its HELLO came
        # A frame of at most this many bytes (with its charge) waits for the credit to
        # take it whole rather than going out in pieces as credit trickles in: 3/4 of
        # the peer's smallest window (set by its HELLO). Windows only grow, and credit
        # comes back in quarters of a window, so the credit for it always comes.
        self.whole_limit = 0
        # A stream whose queue holds fewer than RUN_ITEMS items may take another while
        # its queue is under run_room, even past stream_buffer_size: items of about
        # that size (64 KiB chunks) then go four to a message, not one, which cuts the
        # messages (and their cost on both sides, and the sender's system calls) of a
        # bulk stream. Small items fill stream_buffer_size long before, so they never
        # take this room. run_room is two batches' worth within the peer's message
        # limit (run_max, set by its HELLO), and within the frame limit: a resumable
        # session on a link that keeps dropping (its frames capped) takes none.
        self.run_max = 0
        self.run_room = 0
        self.compression_threshold = compression_threshold
        self.compressor: _compression.Compressor | None = None
        # The largest item that goes out as it is, in one frame: within the three
        # limits above (see limits()); one test on the fast path instead of three.
        self.plain_limit = 0
        self.closed = False  # the connection is closing: terminal frames are not sent

    def limits(
        self,
        frame_limit: int,
        item_limit: int | None = None,
        compressor: _compression.Compressor | None = None,
    ) -> None:
        """Set the peer's frame limit (capped while a resumable session's link keeps
        dropping), and (from its HELLO) its ``max_item_size`` and the compressor agreed
        on; :attr:`plain_limit` and :attr:`run_room` follow."""
        self.frame_limit = frame_limit
        if item_limit is not None:
            self.item_limit = item_limit
        if compressor is not None:
            self.compressor = compressor
        plain = min(frame_limit, self.item_limit)
        if self.compressor is not None:
            plain = min(plain, self.compression_threshold - 1)
        self.plain_limit = plain
        self.run_room = min(self.run_max, frame_limit)

    def open(self, stream_id: int, urgency: int, bound: bool) -> None:
        check_urgency(urgency)
        self.streams[stream_id] = OutgoingStream(stream_id, urgency, bound)
        self.flow.out_open(stream_id)

    def on_closed_by_peer(self, stream_id: int) -> bool:
        """STREAM_CLOSE: the receiver stopped reading; drop what is queued. False when
        the stream is not ours any more."""
        s = self.streams.pop(stream_id, None)
        if s is None:
            return False
        s.state = OutState.CLOSED_BY_PEER
        s.tail = None
        w = s.writer
        self.stream_bytes -= len(w)
        count = w.count
        if count:  # nobody reads them any more
            # Charged to the connection's credit when queued, never to be sent: the
            # receiver never counts them, so their share would be lost for good.
            data = w.take()
            frames, _ = F.decode_frames(data, 0, count, len(data))
            self.flow.conn_credit += sum(len(f.payload) for f in frames) + count * FRAME_CHARGE
        self.flow.out_close(stream_id)
        return True

    def clear(self) -> None:
        self.streams.clear()
        self.stream_bytes = 0

    def send_item(self, stream_id: int, payload: Payload, *, raw: bool = False) -> bool:
        """Queue one item on an outgoing stream.

        The item is always accepted (but one larger than the peer's ``max_item_size``:
        :class:`PayloadTooLarge`); the result says whether the stream may take the
        next one now. When False, wait for :class:`CreditGranted` or for the stream
        to show up in :meth:`take_unblocked`, then check :meth:`writable`.
        """
        s = self.streams.get(stream_id)
        if s is None or s.state != OUT_OPEN:
            raise StreamClosed(f"stream {stream_id} is closed")
        if s.tail is not None:
            raise RuntimeError("the previous item is still being sent; wait until writable()")
        flags = s.flags | FLAG_RAW if raw else s.flags
        n = len(payload)
        if n > self.plain_limit:  # refused, compressed, or sent in pieces
            payload, flags = self._oversized(payload, flags)
            n = len(payload)
        charge = n + FRAME_CHARGE
        flow = self.flow
        if n <= self.frame_limit and flow.conn_credit >= charge:
            left = flow.ledger_out.spend(stream_id, charge)
            if left >= 0:
                # Fast path: the whole item fits in one frame and in the credit.
                w = s.writer
                self.stream_bytes += w.add(_STREAM_DATA, flags, stream_id, payload)
                s.flags = 0
                credit = flow.conn_credit = flow.conn_credit - charge
                if not s.queued:
                    self.sched.queue(s)
                return (
                    left > FRAME_CHARGE
                    and credit > FRAME_CHARGE
                    and (len(w) < self.stream_buffer_size or (w.count < RUN_ITEMS and len(w) < self.run_room))
                )
        s.tail = payload
        s.tail_flags = flags & ~F.FLAG_OPEN  # OPEN goes on the first frame only (_pump adds s.flags)
        return self.pump(s)

    def _oversized(self, payload: Payload, flags: int) -> tuple[Payload, int]:
        """An item past :attr:`plain_limit`: refused (past the peer's
        ``max_item_size``), or compressed (past the threshold), or as it is (past the
        frame limit: it goes in pieces)."""
        n = len(payload)
        if n > self.item_limit:
            # Refused here, before a byte leaves: the receiver would close the whole
            # connection for it; this way only this stream fails.
            raise PayloadTooLarge(
                f"stream item of {n} bytes exceeds the receiver's max_item_size of {self.item_limit} bytes "
                "(raise max_item_size on the receiving side, or send smaller items)"
            )
        if self.compressor is not None and n >= self.compression_threshold:
            packed = self.compressor.compress(payload)
            if len(packed) < n:
                return packed, flags | F.FLAG_COMPRESSED
        return payload, flags

    def send_run(self, stream_id: int, payloads: list[bytes], room: int) -> int:
        """Queue encoded items (not raw) on an outgoing stream in one step, each whole
        in one frame, while the credit takes them, until the stream's buffer is full
        or ``room`` bytes are queued; return how many it took (the items of a topic
        that one loop pass fans out to a subscriber).

        It takes none on a stream that :meth:`send_item` would refuse, that is
        fragmenting an item, or whose first frame is still to go (it carries
        ``FLAG_OPEN``). It stops at an item past the peer's frame or item size or
        the compression threshold, or past the credit left: :meth:`send_item` sends
        that one (in pieces, compressed, or refused).
        """
        s = self.streams.get(stream_id)
        if s is None or s.state != OUT_OPEN or s.tail is not None or s.flags:
            return 0
        return self._add_run(s, 0, payloads, self.plain_limit, min(self.stream_buffer_size, len(s.writer) + room))

    def _add_run(self, s: OutgoingStream, flags: int, payloads: list[bytes], max_len: int, stop_len: int) -> int:
        """Queue the front of ``payloads`` on ``s``, each whole in one frame, as far as
        the credit takes them (``FrameWriter.add_run``), charged to the windows; how
        many were queued."""
        flow = self.flow
        sid = s.id
        w = s.writer
        before = len(w)
        n, charged = w.add_run(
            _STREAM_DATA,
            flags,
            sid,
            payloads,
            min(flow.ledger_out.window(sid), flow.conn_credit),
            max_len,
            FRAME_CHARGE,
            stop_len,
        )
        if n:
            flow.ledger_out.spend(sid, charged, n)  # (add_run kept within the window)
            flow.conn_credit -= charged
            self.stream_bytes += len(w) - before
            if not s.queued:
                self.sched.queue(s)
        return n

    def room_for_run(self, stream_id: int, cap: int) -> tuple[int, int]:
        """``(room, item_max)`` for a run of raw items (:meth:`send_items`): the charges
        (``len + FRAME_CHARGE`` an item) that the stream's credit, the connection's and
        the stream's buffer take now, at most ``cap``, and the largest item that goes
        whole in one frame as it is (not compressed). ``(0, 0)`` on a stream that
        :meth:`send_item` would refuse, whose first frame is still to go (it carries
        ``FLAG_OPEN``) or that has a tail."""
        s = self.streams.get(stream_id)
        if s is None or s.state != OUT_OPEN or s.tail is not None or s.flags:
            return 0, 0
        flow = self.flow
        room = min(cap, flow.ledger_out.window(stream_id), flow.conn_credit, self.stream_buffer_size - len(s.writer))
        return (room, self.plain_limit) if room > FRAME_CHARGE else (0, 0)

    def send_items(self, stream_id: int, payloads: list[bytes]) -> bool:
        """Queue raw items, each whole in one frame, in one step: all are accepted, as
        :meth:`send_item` accepts one (each at most :meth:`room_for_run`'s ``item_max``,
        which is at most any frame limit a peer may set). What the credit and the
        stream's buffer take now is queued; the rest is the stream's tail, queued as
        credit comes (:meth:`pump`): ``payloads`` is the stream's from then on (it is
        emptied as its items go). The result is :meth:`send_item`'s: whether the
        stream may take the next item now."""
        s = self.streams.get(stream_id)
        if s is None or s.state != OUT_OPEN:
            raise StreamClosed(f"stream {stream_id} is closed")
        if s.tail is not None or s.flags:
            raise RuntimeError("the previous item is still being sent; wait until writable()")
        s.tail = payloads
        return self.pump(s)

    def _pump_run(self, s: OutgoingStream, run: list[bytes]) -> bool:
        """(pump) A tail of whole raw items: as many as the credit and the stream's
        buffer take, in one step."""
        if len(s.writer) >= self.stream_buffer_size:
            return False
        n = self._add_run(s, FLAG_RAW, run, self.frame_limit, self.stream_buffer_size)
        if n == len(run):
            s.tail = None
            return self.flow.out_writable(s.id) and len(s.writer) < self.stream_buffer_size
        del run[:n]
        return False

    def writable(self, stream_id: int) -> bool:
        """Whether the stream may take another item now (see :meth:`send_item`)."""
        s = self.streams.get(stream_id)
        if s is None or s.state != OUT_OPEN:
            return True  # sending will raise StreamClosed: let the sender find out
        if s.tail is not None and not self.pump(s):
            return False
        w = s.writer
        return self.flow.out_writable(stream_id) and (
            len(w) < self.stream_buffer_size or (w.count < RUN_ITEMS and len(w) < self.run_room)
        )

    def pump(self, s: OutgoingStream) -> bool:
        """Move as much of the pending item as credit and buffer allow; True when done
        and the stream may take more."""
        tail = s.tail
        if isinstance(tail, list):
            return self._pump_run(s, tail)
        flow = self.flow
        sid = s.id
        while tail is not None:
            if len(s.writer) >= self.stream_buffer_size:
                break
            room = flow.out_room(sid)
            n = len(tail)
            if room < 1 and not (n == 0 and room == 0):
                break
            whole = min(n, self.frame_limit)
            if room < whole and whole + FRAME_CHARGE <= self.whole_limit:
                # Sent in pieces, an item costs the receiver a message per piece and
                # a reassembly copy: wait for the credit (it comes: see whole_limit).
                break
            take = min(n, room, self.frame_limit)
            more = take < n
            flags = s.tail_flags | s.flags | (F.FLAG_MORE if more else 0)
            before = len(s.writer)
            s.writer.add(F.STREAM_DATA, flags, sid, tail[:take] if more else tail)
            self.stream_bytes += len(s.writer) - before
            s.flags = 0
            flow.out_spend(sid, take + FRAME_CHARGE)
            tail = memoryview(tail)[take:] if more else None
            self.sched.queue(s)
        s.tail = tail
        if tail is not None:
            return False
        return flow.out_writable(sid) and len(s.writer) < self.stream_buffer_size

    def end_stream(self, stream_id: int) -> None:
        """Queue STREAM_END: the sender finished. Wait until writable() first."""
        self._terminate(stream_id, F.STREAM_END, b"")

    def error_stream(self, stream_id: int, type_name: str, message: str, code: int | None = None) -> None:
        """Queue STREAM_ERROR: the sending iterator raised."""
        limit = min(self.frame_limit, self.terminal_room(stream_id))
        self._terminate(stream_id, F.STREAM_ERROR, encode_error(type_name, message, code, None, limit))

    def abort_stream(self, stream_id: int, reason: str = "") -> None:
        """Queue STREAM_ABORT: the sender gives up; an unsent part of an item is dropped."""
        limit = min(1024, self.terminal_room(stream_id))
        self._terminate(stream_id, F.STREAM_ABORT, reason.encode("utf-8", "replace")[:limit])

    def terminal_room(self, stream_id: int) -> int:
        """The payload a terminal frame of ``stream_id`` may carry for the stream's
        queue and it to leave in one of the peer's messages (its queue leaves whole):
        at least ``TERMINAL_ROOM - 18`` (the buffer sizes keep that room)."""
        s = self.streams.get(stream_id)
        if s is None:
            return self.message_limit
        return max(self.message_limit - len(s.writer) - _HEAD_MAX, 0)

    def _terminate(self, stream_id: int, ftype: int, payload: bytes) -> None:
        """Queue the stream's terminal frame (unless the connection is closed)."""
        s = self.streams.get(stream_id)
        if s is None or s.state != OUT_OPEN:
            return
        if s.tail is not None:
            if ftype == F.STREAM_END:
                raise RuntimeError("the last item is still being sent; wait until writable()")
            s.tail = None
        s.state = OutState.ENDED
        del self.streams[stream_id]
        self.flow.out_close(stream_id)
        if not self.closed:
            before = len(s.writer)
            s.writer.add(ftype, s.flags, stream_id, payload)
            self.stream_bytes += len(s.writer) - before
            self.sched.queue(s)
