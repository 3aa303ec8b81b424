"""Flow control: the one home of credit windows, grants, window growth and stream slots.

Every STREAM_DATA frame costs its payload plus :data:`FRAME_CHARGE` bytes of credit,
per stream and connection-wide (``docs/protocol.md``, "Flow control"):

* **Sending** (:class:`FlowControl` ``out_*``): a stream may send while both its own
  window and the connection window have room; CREDIT frames from the peer refill them.
  STREAMS frames grant slots for new streams.
* **Receiving** (``in_*``): a peer past either window is a protocol error. Credit for an
  item goes back (CREDIT on the stream's id) once the reader took it, in batches of a
  quarter window (the codec's :class:`StreamLedger` keeps the per-stream counts in C).
  Connection credit (CREDIT on id 0) goes back on receipt, like TCP's window, so that a
  reader blocked on one stream cannot deadlock the others; memory stays bounded by the
  per-stream windows.
* **Window growth**: a stream read faster than its window refills, or whose items are
  large next to its window, grows its window (x2, up to ``max_window``; all the streams of
  a connection together by at most ``max_growth``), as a link's bandwidth-delay product
  needs. Only a stream that is read grows.

Frames go into the control writer the scheduler sends first. Sans-I/O: no asyncio.
"""

from __future__ import annotations

from typing import Any

from . import frames as F
from . import options as O
from .exceptions import ErrorCode, LimitExceeded, ProtocolError
from .settings import Settings
from .stream_state import IncomingStream

__all__ = ["FRAME_CHARGE", "FlowControl"]

# Every STREAM_DATA frame costs its payload plus this many bytes of credit: it is about
# what the receiver spends holding one more item, and it makes floods of empty frames
# run out of credit like data does.
FRAME_CHARGE = 32


class FlowControl:
    """Credit windows of one connection, both directions."""

    __slots__ = (
        "conn_credit",
        "conn_recv",
        "conn_to_grant",
        "connection_window",
        "control",
        "free_in",
        "growth",
        "initial_window",
        "ledger_in",
        "ledger_out",
        "max_growth",
        "max_streams_in",
        "max_window",
        "slot_grants",
        "stream_slots",
    )

    def __init__(
        self, control: Any, settings: Settings, *, max_window: int = O.MAX_WINDOW, max_growth: int = O.MAX_GROWTH
    ) -> None:
        """``settings``: our HELLO's (the windows we offer, the streams we accept)."""
        initial_window = settings.initial_stream_window
        connection_window = settings.connection_window
        max_streams_in = settings.max_streams
        self.control = control  # the FrameWriter for CREDIT and STREAMS frames
        # Sending: credit per stream (the peer's initial window once its HELLO came),
        # connection credit, and slots for new streams.
        self.ledger_out = F.StreamLedger(O.INITIAL_STREAM_WINDOW)
        self.conn_credit = 0
        self.stream_slots = 0
        # Receiving: what the peer may still send per stream and on the connection,
        # what arrived and was not granted back yet, streams held and slots to grant.
        self.initial_window = initial_window
        self.ledger_in = F.StreamLedger(initial_window)
        self.connection_window = connection_window
        self.conn_recv = connection_window
        self.conn_to_grant = 0
        self.max_streams_in = max_streams_in
        self.free_in = 0  # incoming streams not bound to a call, not yet released
        self.slot_grants = 0
        self.max_window = max_window
        self.max_growth = max_growth
        self.growth = 0  # bytes the live streams' windows grew past initial_window

    def peer_hello(self, initial_window: int, connection_window: int, max_streams: int) -> None:
        """The peer's limits arrived: our sending credit starts from them."""
        self.ledger_out = F.StreamLedger(initial_window)
        self.conn_credit = connection_window
        self.stream_slots = max_streams

    # ------------------------------------------------------------------- sending

    def out_open(self, stream_id: int) -> None:
        self.ledger_out.open(stream_id)

    def out_close(self, stream_id: int) -> None:
        self.ledger_out.close(stream_id)

    def out_room(self, stream_id: int) -> int:
        """Payload bytes one frame on ``stream_id`` may carry now (< 1: none)."""
        return min(self.ledger_out.window(stream_id), self.conn_credit) - FRAME_CHARGE

    def out_writable(self, stream_id: int) -> bool:
        """Credit left for more than an empty frame, on the stream and the connection."""
        return self.ledger_out.window(stream_id) > FRAME_CHARGE and self.conn_credit > FRAME_CHARGE

    def out_spend(self, stream_id: int, charge: int) -> int:
        """``charge`` bytes were queued on ``stream_id``; return its credit left."""
        self.conn_credit -= charge
        left: int = self.ledger_out.sent(stream_id, charge)
        return left

    def out_credit(self, stream_id: int, n: int) -> bool:
        """CREDIT from the peer; False when the stream is gone (the grant is moot)."""
        if stream_id == 0:
            if self.conn_credit + n > F.VARINT_MAX:
                raise ProtocolError("flow-control window overflow", ErrorCode.FLOW_CONTROL_ERROR)
            self.conn_credit += n
            return True
        if stream_id not in self.ledger_out:
            return False
        self.ledger_out.grant(stream_id, n)
        return True

    def out_slots(self, n: int) -> None:
        """STREAMS from the peer: ``n`` more streams may be opened."""
        self.stream_slots = min(self.stream_slots + n, F.VARINT_MAX)

    def take_slot(self) -> None:
        if self.stream_slots <= 0:
            raise LimitExceeded("peer's stream limit reached")
        self.stream_slots -= 1

    # ----------------------------------------------------------------- receiving

    def in_open(self, s: IncomingStream) -> None:
        """Account for a new incoming stream (``LimitExceeded`` past ``max_streams``
        for streams that hold a slot)."""
        if not s.bound:
            if self.free_in >= self.max_streams_in:
                raise LimitExceeded(f"too many concurrent streams (our max_streams is {self.max_streams_in})")
            self.free_in += 1
        self.ledger_in.open(s.id)

    def in_release(self, s: IncomingStream) -> None:
        """The reader is done with ``s``: forget its credit, give its slot back and
        return its window growth to the connection's budget."""
        self.ledger_in.close(s.id)
        self.growth -= s.window_size - self.initial_window
        s.window_size = self.initial_window
        if not s.bound:
            self.free_in -= 1
            self.slot_grants += 1

    def conn_received(self, charge: int) -> None:
        """A STREAM_DATA frame of ``charge`` bytes arrived (on any stream, known or
        not): a peer past the connection window is a FLOW_CONTROL_ERROR."""
        if charge > self.conn_recv:
            raise ProtocolError("connection flow-control window exceeded", ErrorCode.FLOW_CONTROL_ERROR)
        self.conn_recv -= charge
        due = self.conn_to_grant + charge
        if due * 4 >= self.connection_window:
            self.conn_to_grant = 0
            self.conn_recv += due
            self.control.add(F.CREDIT, 0, 0, F.encode_varint(due))
        else:
            self.conn_to_grant = due

    def in_consumed(self, s: IncomingStream, charge: int) -> int:
        """``charge`` bytes of ``s`` are no longer held: queue CREDIT when a batch is
        due; return the credit granted now (0: no frame queued)."""
        grant: int = self.ledger_in.consumed(s.id, charge)
        if grant:
            self.control.add(F.CREDIT, 0, s.id, F.encode_varint(grant))
        return grant

    def granted(self, s: IncomingStream, grant: int, charge: int) -> None:
        """The reader took an item of ``charge`` bytes from ``s`` and ``grant`` bytes of
        credit are due (``Connection.read_item`` asked the ledger): queue the CREDIT,
        and grow the window when the window, not the sender, limits the stream."""
        self.control.add(F.CREDIT, 0, s.id, F.encode_varint(grant))
        size = s.window_size
        if size < self.max_window:
            window = self.ledger_in.stats(s.id)[2]
            # Less than a quarter of the window was left before this grant, the sender
            # ran dry (``starved``, seen on receipt), or an item is a large share of the
            # window (one CREDIT per item or two otherwise).
            if (window - grant) * 4 < size or s.starved or charge * O.ITEMS_PER_WINDOW > size:
                s.starved = False
                extra = min(size, self.max_window - size, self.max_growth - self.growth)
                if extra > 0:
                    self.growth += extra
                    s.window_size = size + extra
                    self.resize(s.id, s.window_size)

    def resize(self, stream_id: int, window: int) -> None:
        """Let the sender of ``stream_id`` have up to ``window`` bytes in flight."""
        more = self.ledger_in.resize(stream_id, window)
        if more:
            self.control.add(F.CREDIT, 0, stream_id, F.encode_varint(more))

    def grant_slots(self) -> None:
        """Queue STREAMS for the slots released since the last call."""
        if self.slot_grants:
            self.control.add(F.STREAMS, 0, 0, F.encode_varint(self.slot_grants))
            self.slot_grants = 0

    def stats(self, stream_id: int, outgoing: bool) -> tuple[int, int, int, int]:
        """``(bytes, items, window, buffered)`` of an open stream (KeyError if none)."""
        result: tuple[int, int, int, int] = (self.ledger_out if outgoing else self.ledger_in).stats(stream_id)
        return result

    def view(self, peer_max_streams: int | None) -> dict[str, object]:
        return {
            "ledger_in": sorted(self.ledger_in.ids()),
            "ledger_out": sorted(self.ledger_out.ids()),
            "free_in": self.free_in,
            # stream slots granted but not accounted for (or missing)
            "slots": 0 if peer_max_streams is None else self.stream_slots - peer_max_streams,
            "window_growth": self.growth,
        }

    def reset(self) -> None:
        """Forget every stream (the connection is gone)."""
        self.ledger_in = F.StreamLedger(self.ledger_in.initial_window)
        self.ledger_out = F.StreamLedger(self.ledger_out.initial_window)
        self.free_in = 0
        self.growth = 0
