"""Incoming streams: their arrival, items, end, refusal and release (sans-I/O; owned by
``Connection``, which receives their data frames on its hot path).

A stream arrives with its first frame (FLAG_OPEN). A stream the reader closed before
it arrived is refused when it does (STREAM_CLOSE); the input of a channel call that
its handler stopped reading is dropped until its end. Items wait in the stream's
record until read; reading gives credit back (:mod:`fastrpc.flow`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Union

from . import frames as F
from .budget import MemoryBudget
from .calls import decode_error
from .calltable import CallTable
from .events import Event, StreamOpened, StreamReadable
from .exceptions import ErrorCode, LimitExceeded, ProtocolError, RemoteStreamError, StreamAborted
from .flow import FlowControl
from .stream_state import IN_OPEN, IncomingStream, InState

__all__ = ["InboundStreams"]

Payload = Union[bytes, bytearray, memoryview]


class InboundStreams:
    """The incoming streams of one connection, by id."""

    __slots__ = (
        "budget",
        "calls",
        "control",
        "flow",
        "message_count",
        "peer_parity",
        "refused",
        "refused_inputs",
        "streams",
    )

    def __init__(
        self, control: Any, flow: FlowControl, calls: CallTable, peer_parity: int, budget: MemoryBudget
    ) -> None:
        self.control = control  # the scheduler's control FrameWriter
        self.budget = budget
        self.flow = flow
        self.calls = calls
        self.peer_parity = peer_parity
        self.streams: dict[int, IncomingStream] = {}
        # Streams closed before they arrived, channel inputs refused before they arrived:
        # rarely used, so a shared empty view until the first (an empty dict is 64 B).
        self.refused: Mapping[int, None] = _NONE
        self.refused_inputs: Mapping[int, None] = _NONE
        # Received messages so far: one StreamReadable per stream per message.
        self.message_count = 0

    def readable(self, s: IncomingStream, events: list[Event]) -> None:
        if s.last_event != self.message_count:
            s.last_event = self.message_count
            events.append(StreamReadable(s.id))

    def assemble(self, s: IncomingStream, flags: int, payload: Payload, max_item_size: int) -> tuple[bytes, int] | None:
        """A fragment of an item (or its last): the whole item and its flags once
        complete, else None. The partial item counts against the memory budget."""
        if s.partial is None:
            s.partial = bytearray()
            s.partial_flags = flags
        if len(s.partial) + len(payload) > max_item_size:
            raise LimitExceeded("item larger than max_item_size")
        self.budget.charge(len(payload), "partial items")
        s.partial += payload
        if flags & F.FLAG_MORE:
            return None
        whole = bytes(s.partial)
        flags |= s.partial_flags
        s.partial = None
        return whole, flags

    def _drop(self, s: IncomingStream) -> None:
        """Drop what ``s`` holds, giving it back to the budget."""
        held = sum(len(e[0]) if type(e) is tuple else len(e) for e in s.items)  # (protocol._BARE)
        if s.partial is not None:
            held += len(s.partial)
            s.partial = None
        held += s.error_size
        s.error_size = 0
        s.items.clear()
        self.budget.release(held)

    def expect(self, call_id: int) -> None:
        """Our streaming call ``call_id`` was sent: its results stream is awaited."""
        s = self.streams[call_id] = IncomingStream(call_id, True, self.flow.initial_window)
        self.flow.in_open(s)

    def arrive(self, fid: int, s: IncomingStream | None, events: list[Event], closed: bool) -> IncomingStream | None:
        """A frame with FLAG_OPEN for ``fid`` (``s``: its record if one awaits it).
        Returns the record, or None when the stream is dropped or refused."""
        if s is not None:
            if s.seen_open or not s.bound:
                raise ProtocolError("stream opened twice", ErrorCode.STREAM_STATE_ERROR)
            s.seen_open = True
            return s
        if fid in self.refused_inputs:
            return None  # a channel input we stopped reading before it arrived
        if self.calls.takes_input(fid):
            s = IncomingStream(fid, True, self.flow.initial_window)  # a channel call's input
        elif fid in self.calls.inbound:
            raise ProtocolError("a stream opened on the id of a call without input", ErrorCode.STREAM_STATE_ERROR)
        elif fid > 0 and fid & 1 == self.peer_parity:
            s = IncomingStream(fid, False, self.flow.initial_window)
        else:
            if fid in self.calls.out:
                return None  # a call of ours that we stopped reading
            raise ProtocolError("stream id of the wrong parity", ErrorCode.STREAM_STATE_ERROR)
        self.flow.in_open(s)
        s.seen_open = True
        self.streams[fid] = s
        if fid in self.refused:
            del self.refused[fid]  # type: ignore[attr-defined]
            if not closed:
                self.control.add(F.STREAM_CLOSE, 0, fid, b"")
            self.release(fid)
            return None
        if not s.bound:
            events.append(StreamOpened(fid))
        return s

    def on_end(self, f: F.Frame, events: list[Event], closed: bool) -> None:
        """STREAM_END, STREAM_ERROR or STREAM_ABORT arrived."""
        fid = f.id
        calls = self.calls
        if fid in self.refused_inputs:
            del self.refused_inputs[fid]  # type: ignore[attr-defined]  # its end: nothing more comes
            return
        s = self.streams.get(fid)
        if s is None or f.flags & F.FLAG_OPEN:
            if not f.flags & F.FLAG_OPEN:
                calls.finish_streaming(fid)
                return
            cancelled = s is not None and s.bound and calls.cancelled(fid)
            s = self.arrive(fid, s, events, closed)
            if s is None or cancelled:  # refused, or a streaming call we cancelled
                calls.finish_streaming(fid)
                if s is not None:
                    self.release(fid)
                return
        elif s.state != IN_OPEN:
            if s.bound and calls.cancelled(fid):
                calls.finish_streaming(fid)
                self.release(fid)
                return
            raise ProtocolError("stream ended twice", ErrorCode.STREAM_STATE_ERROR)
        if s.partial is not None:
            self.budget.release(len(s.partial))
            s.partial = None
            if f.type == F.STREAM_END:
                raise ProtocolError("stream ended inside an item", ErrorCode.STREAM_STATE_ERROR)
        if f.type == F.STREAM_END:
            s.state = InState.ENDED
        else:
            # The error is held until the stream is read to its end or released (up
            # to max_frame_size a stream, for streams nobody may ever claim): its
            # bytes count against the memory budget as unread items do.
            self.hold_error(s, len(f.payload))
            s.state = InState.FAILED
            if f.type == F.STREAM_ERROR:
                s.error = decode_error(f.payload, RemoteStreamError)
            else:
                reason = bytes(f.payload).decode("utf-8", "replace")
                s.error = StreamAborted(reason or "stream aborted by the sender")
        calls.finish_streaming(fid)
        self.readable(s, events)

    def hold_error(self, s: IncomingStream, size: int) -> None:
        """``s`` holds an error of ``size`` bytes (as received) until it is released:
        charged to the memory budget."""
        self.budget.charge(size, "stream errors")
        s.error_size += size

    def fail(
        self, stream_id: int, error: BaseException | None, events: list[Event] | None = None, size: int = 0
    ) -> None:
        """End an open stream with ``error`` (its call failed or was cancelled; ``size``:
        the bytes of the error's payload): the items held are dropped when ``events``
        is None (cancelled by us)."""
        s = self.streams.get(stream_id)
        if s is None:
            return
        if events is None:
            self._drop(s)
            s.state = InState.FAILED
        elif s.state == IN_OPEN:
            self.hold_error(s, size)
            s.state = InState.FAILED
            s.error = error
            self.readable(s, events)

    def end_state(self, stream_id: int) -> tuple[bool, BaseException | None]:
        s = self.streams.get(stream_id)
        if s is None:
            return True, None
        if s.items or s.state == IN_OPEN:
            return False, None
        return True, s.error

    def refuse(self, stream_id: int, closed: bool) -> None:
        """Stop reading ``stream_id`` before it arrived."""
        if self.calls.takes_input(stream_id):
            # The input of a channel call: tell its sender to stop now and drop what is
            # in flight (it holds no stream slot).
            self.refused_inputs = _remember(self.refused_inputs, stream_id, self.calls.max_inbound)
            if not closed:
                self.control.add(F.STREAM_CLOSE, 0, stream_id, b"")
        elif stream_id in self.calls.inbound:
            return  # a call that takes no input: there is nothing to refuse
        elif stream_id > 0 and stream_id & 1 == self.peer_parity:
            self.refused = _remember(self.refused, stream_id, self.flow.max_streams_in)  # refused on arrival

    def close(self, s: IncomingStream, closed: bool) -> None:
        """Stop reading ``s``: drop what is held, tell the sender, release it."""
        if s.state == IN_OPEN and not closed:
            self.control.add(F.STREAM_CLOSE, 0, s.id, b"")
        self.release(s.id)

    def release(self, stream_id: int) -> None:
        s = self.streams.pop(stream_id, None)
        if s is not None:
            self._drop(s)
            self.flow.in_release(s)

    def view(self) -> dict[str, object]:
        return {
            "in": sorted(self.streams),
            "refused": sorted(self.refused),
            "refused_inputs": sorted(self.refused_inputs),
        }

    def clear(self) -> None:
        for s in self.streams.values():
            s.items.clear()
        self.streams.clear()
        self.refused = self.refused_inputs = _NONE


_NONE: Mapping[int, None] = MappingProxyType({})


def _remember(ids: Mapping[int, None], stream_id: int, limit: int) -> dict[int, None]:
    """``ids`` (a set of refused ids, made a dict on first use) with ``stream_id``: a
    peer could otherwise grow it without end (ids whose stream never comes), so past
    ``limit`` the oldest is forgotten (its stream, should it still come, is then an
    ordinary unclaimed one)."""
    out = ids if isinstance(ids, dict) else {}
    out[stream_id] = None
    if len(out) > limit:
        del out[next(iter(out))]
    return out
