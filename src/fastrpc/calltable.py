"""Calls in both directions: their ids and states, and the REQUEST, NOTIFY, RESPONSE,
ERROR and CANCEL frames that carry them (sans-I/O; owned by ``Connection``).

A call's slot is taken from its REQUEST until its answer (RESPONSE or ERROR, or for a
streaming call the end of its result stream): ``max_pending_calls`` bounds the calls a
peer may have running, cancelled ones included, so cancel floods cannot exceed it.

Every call crosses :class:`CallTable` twice on each side, so with the compiled codec
this very module runs compiled as well: ``fastrpc._calltable`` is this source, built
by Cython with ``_calltable.pxd``'s C types for the table's fields (setup.py). The
source stays the pure twin: ``FASTRPC_NO_EXTENSIONS=1``, or no compiled build, runs it
as it is. ``COMPILED`` says which one is live; ``PyCallTable`` is the pure one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import frames as F
from .budget import MemoryBudget
from .calls import (
    CANCELLED,
    FLAG_KWARGS,
    FLAG_RAW,
    METHOD_HEADS,
    METHOD_NAMES,
    PENDING,
    Payload,
    decode_error,
    encode_error,
    method_head,
    method_name,
    request_head,
)
from .events import CallFailed, NotificationReceived, ResponseReceived
from .exceptions import ConnectionClosed, ErrorCode, LimitExceeded, PayloadTooLarge, ProtocolError

__all__ = ["COMPILED", "CallTable", "PyCallTable", "lane_admit", "lane_finish"]

_FLAG_STREAM, _FLAG_CHANNEL, _FLAG_DEADLINE = F.FLAG_STREAM, F.FLAG_CHANNEL, F.FLAG_DEADLINE
_REQUEST, _RESPONSE = F.REQUEST, F.RESPONSE
_decode_varint = F.decode_varint
_payload_cost = F.payload_cost


class CallTable:
    """The calls of one connection: ours (``out``: id -> :class:`CallState`, and which
    of them are streaming) and the peer's (``inbound``, until answered); and the one
    counter our calls and our streams take their ids from (:meth:`free_id`)."""

    __slots__ = (
        "budget",
        "call_limit",
        "channels",
        "closed",
        "control",
        "frame_limit",
        "inbound",
        "max_inbound",
        "next_id",
        "out",
        "peer_parity",
        "streaming_out",
        "streams_out",
    )

    def __init__(self, control: Any, max_inbound: int, budget: MemoryBudget, peer_parity: int = 1) -> None:
        self.control = control  # the scheduler's control FrameWriter
        self.peer_parity = peer_parity  # the parity of the peer's call ids (a client's are odd)
        self.budget = budget  # a running call's arguments count until it is answered
        self.max_inbound = max_inbound
        self.frame_limit = 0  # the peer's frame limit, once its HELLO came
        self.call_limit = 0  # the peer's max_pending_calls, once its HELLO came
        self.closed = False  # the connection's (Connection.close, discard_state)
        # One counter for the ids of our calls and our streams (of our parity); the
        # owner's outgoing streams (id -> stream), whose ids it skips.
        self.next_id = 2 if peer_parity else 1
        self.streams_out: dict[int, Any] = {}
        self.out: dict[int, int] = {}
        # Id sets are dicts (id -> None): an empty dict is 64 bytes, an empty set 216.
        self.streaming_out: dict[int, None] = {}
        self.inbound: dict[int, int] = {}  # call id -> bytes of its arguments
        # Running calls that take an input stream (a dict once the first comes).
        self.channels: dict[int, None] | None = None

    # ------------------------------------------------------------------ ours

    def request(
        self,
        call_id: int,
        method: str,
        payload: Payload,
        raw: bool,
        stream: bool,
        channel: bool,
        timeout: float | None,
        kwargs: bool = False,
    ) -> None:
        """Queue REQUEST ``call_id`` (:class:`PayloadTooLarge` past the peer's limit);
        ``kwargs``: the arguments end with the map of keyword arguments."""
        flags = (FLAG_RAW if raw else 0) | (F.FLAG_STREAM if stream else 0) | (F.FLAG_CHANNEL if channel else 0)
        if kwargs:
            flags |= FLAG_KWARGS
        head = METHOD_HEADS.get(method) or method_head(method)
        if timeout is not None:
            flags |= F.FLAG_DEADLINE
            head = F.encode_varint(max(0, min(int(timeout * 1000), F.VARINT_MAX))) + head
        n = len(head) + len(payload)
        limit = self.frame_limit
        if limit and n > limit:  # inline: every call's path
            self.check_size("call to", method, n)
        self.control.add(F.REQUEST, flags, call_id, head + payload if payload else head)
        self.out[call_id] = PENDING
        if stream:
            self.streaming_out[call_id] = None

    def free_id(self) -> int:
        """Allocate a call or stream id of our parity, skipping ids still in use."""
        fid = self.next_id
        while fid in self.streams_out or fid in self.out:
            fid += 2
        self.next_id = fid + 2
        return fid

    def new_id(self) -> int:
        """The id for a new call of ours: :class:`ConnectionClosed` once closed,
        :class:`LimitExceeded` at the peer's ``max_pending_calls`` (or before its HELLO)."""
        if self.closed:
            raise ConnectionClosed()
        out = self.out
        if len(out) >= self.call_limit:
            raise LimitExceeded("too many pending calls")
        call_id = self.next_id  # free_id, inline: its first try is nearly always free
        if call_id in out or call_id in self.streams_out:
            return self.free_id()
        self.next_id = call_id + 2
        return call_id

    def call(self, method: str, payload: Payload, raw: bool = False) -> int:
        """Queue the REQUEST of a plain call (no stream, channel, deadline or keyword
        arguments) and return its id (:meth:`new_id`'s errors; :class:`PayloadTooLarge`
        past the peer's frame limit): every ``peer.call``'s path, in one step
        (``Connection.send_call``)."""
        head = METHOD_HEADS.get(method) or method_head(method)
        call_id = self.reserve(method, len(head) + len(payload))
        self.control.add(_REQUEST, FLAG_RAW if raw else 0, call_id, head + payload if payload else head)
        return call_id

    def reserve(self, method: str, size: int) -> int:
        """(:meth:`call`; the compiled call lane, which writes the REQUEST itself) a
        plain call of ``method`` whose REQUEST payload is ``size`` bytes: its id, the
        call pending from now on; :meth:`new_id`'s errors, :class:`PayloadTooLarge`
        past the peer's frame limit (nothing taken)."""
        # new_id, inline: every peer.call's path (its frame: ~540 instructions a call,
        # 1.2 % of a call with 100 in flight, by callgrind). (Compiled, a C call.)
        if self.closed:
            raise ConnectionClosed()
        out = self.out
        if len(out) >= self.call_limit:
            raise LimitExceeded("too many pending calls")
        limit = self.frame_limit
        if limit and size > limit:
            self.check_size("call to", method, size)
        call_id = self.next_id
        if call_id in out or call_id in self.streams_out:
            call_id = self.free_id()
        else:
            self.next_id = call_id + 2
        out[call_id] = PENDING
        return call_id

    def notification(self, method: str, payload: Payload, raw: bool, kwargs: bool = False) -> None:
        head = method_head(method)
        self.check_size("notification", method, len(head) + len(payload))
        self.control.add(F.NOTIFY, (FLAG_RAW if raw else 0) | (FLAG_KWARGS if kwargs else 0), 0, head + payload)

    def check_size(self, what: str, method: str, n: int) -> None:
        limit = self.frame_limit
        if limit and n > limit:
            raise PayloadTooLarge(
                f"{what} {method!r}: arguments of {n} bytes exceed the peer's frame limit of {limit} bytes "
                "(its max_frame_size, at most half its max_message_size); send large data as a stream "
                "(peer.channel, peer.send_stream: items of any size are fragmented), or raise "
                "max_frame_size and max_message_size on both sides"
            )

    def cancel(self, call_id: int, send: bool) -> bool:
        """Mark our pending call cancelled (and queue CANCEL when ``send``); False
        when it is not pending."""
        if self.out.get(call_id) != PENDING:
            return False
        self.out[call_id] = CANCELLED
        if send:
            self.control.add(F.CANCEL, 0, call_id, b"")
        return True

    def cancelled(self, call_id: int) -> bool:
        return self.out.get(call_id) == CANCELLED

    def finish_streaming(self, call_id: int) -> None:
        """The result stream of our streaming call ended: its slot is free."""
        if call_id in self.streaming_out:
            self.streaming_out.pop(call_id, None)
            self.out.pop(call_id, None)

    def on_response(self, f: F.Frame, events: list[Any]) -> None:
        """The answer to our call: a :class:`ResponseReceived` onto ``events`` (none
        for a call we cancelled)."""
        fid = f.id  # answered(), inline: every answer of a batch's path
        state = self.out.pop(fid, None)
        if state is None or fid in self.streaming_out:
            raise ProtocolError("response to an unknown call", ErrorCode.STREAM_STATE_ERROR)
        if state == PENDING:
            events.append(ResponseReceived(fid, f.payload, f.flags & FLAG_RAW != 0))

    def answered(self, call_id: int) -> bool:
        """A RESPONSE to our call ``call_id`` came: the call is over; False when we
        had cancelled it (the answer is dropped). :class:`ProtocolError` for an id
        that is not a pending plain call of ours."""
        state = self.out.pop(call_id, None)
        if state is None or call_id in self.streaming_out:
            raise ProtocolError("response to an unknown call", ErrorCode.STREAM_STATE_ERROR)
        return state == PENDING

    def answered_all(self, frames: list[F.Frame]) -> bool:
        """(Call lane) ``frames``, a whole message of answers: when every one is the
        RESPONSE to a pending plain call of ours (no flag but ``FLAG_RAW``), all those
        calls are over, as :meth:`on_response` ends them one by one, and True. False,
        and nothing done, for any other message (a frame of another type or flag, a
        cancelled call's answer, an unknown id: :meth:`on_response` decides those).
        An id answered twice in the message is its :class:`ProtocolError`."""
        out = self.out
        streaming = self.streaming_out
        # Checked whole before any call ends: the message is taken all or not at all.
        for f in frames:
            fid = f.id
            if f.type != _RESPONSE or f.flags & ~FLAG_RAW or out.get(fid) != PENDING or fid in streaming:
                return False
        for f in frames:
            if out.pop(f.id, None) is None:  # its id twice in the message: as on_response
                raise ProtocolError("response to an unknown call", ErrorCode.STREAM_STATE_ERROR)
        return True

    def plain_requests(self, frames: list[F.Frame]) -> bool:
        """(Call lane) whether every one of ``frames`` is a plain REQUEST (no flag
        but ``FLAG_RAW``), their ids rising (as a caller's counter gives them), and
        ``max_pending_calls`` has a slot for each of them even were none to end
        before the next is admitted: calls in flight, made together. The lane admits
        each call as the one before it is handled; a message of more calls, or one
        that repeats an id, goes to :meth:`take` whole and is refused as before,
        not passed because a sync call ended in between."""
        if len(frames) + len(self.inbound) > self.max_inbound:
            return False
        last = -1
        for f in frames:
            fid = f.id
            if f.type != _REQUEST or f.flags & ~FLAG_RAW or fid <= last:
                return False
            last = fid
        return True

    def on_error(self, f: F.Frame) -> tuple[CallFailed | None, bool]:
        """``(event, streaming)``: a streaming call's error ends its result stream."""
        state = self.out.pop(f.id, None)
        if state is None:
            raise ProtocolError("error for an unknown call", ErrorCode.STREAM_STATE_ERROR)
        if f.id in self.streaming_out:
            self.streaming_out.pop(f.id, None)
            return None, True
        return (CallFailed(f.id, decode_error(f.payload)) if state == PENDING else None), False

    # ---------------------------------------------------------------- theirs

    def takes_input(self, call_id: int) -> bool:
        """Whether running call ``call_id`` takes an input stream (a channel)."""
        return self.channels is not None and call_id in self.channels

    def take(self, f: F.Frame) -> tuple[str, Payload, float | None] | None:
        """Admit the peer's REQUEST ``f``: its id checked (parity, in use,
        ``max_pending_calls``), its arguments charged to the memory budget, the call
        running from now on (a channel's input expected); its ``(method, arguments,
        deadline)``, for the caller's event (``Connection``). None: the arguments would
        not fit in the budget once decoded, and an ERROR answers the call."""
        fid = f.id
        inbound = self.inbound
        if fid <= 0 or fid & 1 != self.peer_parity:
            raise ProtocolError("call id of the wrong parity")
        if fid in inbound:
            raise ProtocolError("call id in use")
        if len(inbound) >= self.max_inbound:
            raise LimitExceeded(f"too many pending calls (our max_pending_calls is {self.max_inbound})")
        flags = f.flags
        if flags & _FLAG_DEADLINE:
            method, payload, deadline = request_head(f, True)
        else:  # _head, inline: every call's path
            data = f.payload
            if data and data[0] < 0x40:  # a name under 64 bytes: its length is one byte (QUIC varint)
                end = 1 + data[0]
                pos = 1
            else:
                n, pos = _decode_varint(data, 0)
                end = pos + n
            if end > len(data):
                raise ProtocolError("truncated method name")
            name = data[pos:end]
            try:
                method = METHOD_NAMES.get(name) or method_name(name)
            except (TypeError, ValueError):  # a view of a large frame's own buffer: not hashable
                method = method_name(name)
            payload = data[end:]
            deadline = None
        budget = self.budget
        # Decoded arguments can take ~60x their encoded size ([[], [], ...]): they are
        # charged at what decoding them will cost, measured before anything decodes them.
        cost = len(payload) if flags & FLAG_RAW else _payload_cost(payload, budget.limit)
        if cost > budget.limit:
            message = (
                f"the arguments of {method!r} ({len(payload)} bytes) would take about {cost} bytes once decoded, "
                f"over max_connection_memory ({budget.limit}): send large data as a stream, or raise the option"
            )
            self.control.add(F.ERROR, 0, fid, encode_error("PayloadTooLarge", message, None, None, self.frame_limit))
            return None
        held = budget.held + cost  # MemoryBudget.charge, inline
        budget.held = held
        if held > budget.limit:
            budget.held -= cost
            budget.charge(cost, "arguments of running calls")
        inbound[fid] = cost
        if flags & _FLAG_CHANNEL:
            if self.channels is None:
                self.channels = {}
            self.channels[fid] = None
        return method, payload, deadline

    def on_notify(self, f: F.Frame) -> NotificationReceived:
        method, payload, _ = request_head(f, False)
        flags = f.flags
        raw = bool(flags & FLAG_RAW)
        if raw:
            cost = len(payload)
        else:
            limit = self.budget.limit
            if (cost := F.payload_cost(payload, limit)) > limit:
                # No answer to carry an error: the connection fails, naming the option.
                raise LimitExceeded(
                    f"a notification of {method!r} would take about {cost} bytes once decoded, "
                    f"over max_connection_memory ({limit})"
                )
        return NotificationReceived(method, payload, raw, bool(flags & FLAG_KWARGS), cost)

    def answer(self, call_id: int) -> None:
        """Take call ``call_id`` off the running calls before its answer is queued."""
        self.budget.release(self.inbound.pop(call_id))
        if self.channels:
            self.channels.pop(call_id, None)

    def admit(self, call_id: int, cost: int) -> bool:
        """(The compiled call lane, ``frames.CallLane``) admit the peer's plain raw call
        ``call_id`` with ``cost`` bytes of arguments, as :meth:`take` does once it has
        read them: True, and the call runs from now on; False, and nothing done, where
        ``take`` would refuse it or charge the budget past its limit (the lane leaves
        the call to ``take``, which says why)."""
        inbound = self.inbound
        if call_id <= 0 or call_id & 1 != self.peer_parity or call_id in inbound or len(inbound) >= self.max_inbound:
            return False
        budget = self.budget
        held = budget.held + cost
        if held > budget.limit:
            return False
        budget.held = held
        inbound[call_id] = cost
        return True

    def answered_now(self, call_id: int) -> int:
        """(The compiled call lane) :meth:`answered` for a RESPONSE the lane read: 1,
        our pending call ``call_id`` is over; 0, it was one we cancelled (the answer
        is dropped); -1, and nothing done, where ``answered`` would raise (the lane
        leaves the answer to it)."""
        state = self.out.get(call_id)
        if state is None or call_id in self.streaming_out:
            return -1
        del self.out[call_id]
        return 1 if state == PENDING else 0

    def finish(self, call_id: int) -> None:
        """Call ``call_id``'s handler finished (if it was still running)."""
        held = self.inbound.pop(call_id, None)
        if held is not None:
            self.budget.held -= held  # MemoryBudget.release, inline (the call lane's path)
            if self.channels:
                self.channels.pop(call_id, None)

    def reply(self, call_id: int, payload: Payload, raw: bool, closed: bool) -> None:
        """Finish call ``call_id`` (:meth:`answer`) and queue its RESPONSE (not once
        ``closed``): one pass, every answered call's path."""
        cost = self.inbound.pop(call_id)
        self.budget.held -= cost  # MemoryBudget.release, inline
        if self.channels:
            self.channels.pop(call_id, None)
        if closed:
            return
        if len(payload) > self.frame_limit:
            self.respond(call_id, payload, raw)
        else:
            self.control.add(_RESPONSE, FLAG_RAW if raw else 0, call_id, payload)

    def respond(self, call_id: int, payload: Payload, raw: bool) -> None:
        limit = self.frame_limit
        if len(payload) > limit:
            error = encode_error(
                "ResponseTooLarge",
                f"response of {len(payload)} bytes exceeds the caller's frame limit of {limit} bytes "
                "(its max_frame_size): return large results as a stream (an async generator method, "
                "called with peer.stream)",
            )
            self.control.add(F.ERROR, 0, call_id, error)
        else:
            self.control.add(F.RESPONSE, FLAG_RAW if raw else 0, call_id, payload)

    def fail(self, call_id: int, type_name: str, message: str, code: int | None, traceback: str | None) -> None:
        self.control.add(F.ERROR, 0, call_id, encode_error(type_name, message, code, traceback, self.frame_limit))

    def view(self) -> dict[str, object]:
        return {
            "calls_out": dict(self.out),
            "stream_calls_out": sorted(self.streaming_out),
            "calls_in": sorted(self.inbound),
        }

    def clear(self) -> None:
        self.out.clear()
        self.streaming_out.clear()
        self.inbound.clear()
        self.channels = None


def lane_admit(table: CallTable, call_id: int, cost: int) -> bool:
    """(The compiled call lane) ``table.admit(call_id, cost)``. Compiled, the codec
    reaches it with a C call, through this module's exported C functions (the
    ``__pyx_capi__`` of ``fastrpc._calltable``, looked up when the first lane is
    built: the codec does not import this module when it loads)."""
    return table.admit(call_id, cost)


def lane_finish(table: CallTable, call_id: int, size: int) -> bool:
    """(The compiled call lane, about to write the answer of ``size`` bytes to the
    peer's call ``call_id`` itself) :meth:`CallTable.reply` without the queueing:
    False, and nothing done, past the caller's frame limit (``reply`` sends an
    error then); True, and call ``call_id`` is over."""
    if size > table.frame_limit:
        return False
    table.finish(call_id)
    return True


PyCallTable = CallTable  # the pure twin, whichever is live: tests compare the two
COMPILED = False
if not TYPE_CHECKING and __name__ == "fastrpc.calltable" and F.IMPLEMENTATION == "cython":
    # The compiled codec's build compiles this module too (it is never half built).
    try:
        from ._calltable import CallTable
    except ImportError:  # a build from before the call table was compiled
        pass
    else:
        COMPILED = True
