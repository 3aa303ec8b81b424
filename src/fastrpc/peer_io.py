"""The I/O half of :class:`fastrpc.peer.RpcPeer`: reading (the transport calls the
peer back with each message, from its data_received) and writing (straight to the
transport from the iteration that made the output; a task only for the handshake,
the replay, and while the socket is past its high-water mark).

Received messages are processed in the callback that read them, so a reply leaves in
the loop iteration that read its request and a caller's future is resolved without a
reader task in between. The output of every message a read delivered leaves in one
write, at the end of that read (the transport's ``flush`` callback), and so does the
output of one loop pass; once ``EARLY_FLUSH`` control bytes wait, they leave at once
(a window of calls crosses in parts that both sides work on at the same time, not as
one batch that they take turns on). A message of
many frames is processed in slices, one per iteration; past ``max_output_backlog``
the peer stops reading until its own output drains (:func:`_serve_less`); meanwhile
later messages wait, in order, in ``_held``.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from . import frames as F
from . import options as O
from .api import PeerAPI
from .calls import METHOD_HEADS, METHOD_NAMES, method_head
from .exceptions import ConnectionClosed, LimitExceeded, ProtocolError
from .keepalive import Keepalive
from .log import protocol_logger, warn_limited
from .protocol import Connection, SessionLost
from .router import SYNC
from .streams import StreamLink
from .transport import Transport, TransportClosed, closed_info

__all__ = ["PeerIO"]

_EARLY_FLUSH = O.EARLY_FLUSH
_CallLane = F.CallLane
# What a sync handler's call answers as its error (Handlers.call); the rest propagates.
_HANDLER_FAILED = (Exception, asyncio.CancelledError)
# The peer whose handler runs (fastrpc.current_peer); an RpcPeer.
_current_peer: contextvars.ContextVar[PeerIO] = contextvars.ContextVar("fastrpc_peer")


class PeerIO(PeerAPI):
    """Reading and writing of one peer (RpcPeer's base; see the module docstring)."""

    __slots__ = (
        "_busy",  # messages wait in _held (a message in slices, the backlog wait)
        "_direct",  # _flush writes (no writer task runs)
        "_fresh",  # nothing written since the last message arrived
        "_held",
        "_in_read",  # handling the messages of one read (see messages_read)
        "_lane",  # the compiled call lane on the transport (frames.CallLane), or None
        "_max_backlog",
        "_processing",  # the events of a message are being handled
        "_stall_timeout",
        "_writer",
    )

    _busy: bool
    _held: deque[bytes | bytearray | str] | None
    _direct: bool
    _fresh: bool
    _in_read: bool
    _lane: Any
    _processing: bool
    _max_backlog: int
    _stall_timeout: float

    # Provided by RpcPeer.
    _keepalive: Keepalive
    _link: StreamLink  # its flush_pending: a flush is scheduled for the end of this pass
    _ready: asyncio.Future[None]

    def _process(self, frames: list[Any]) -> None:
        raise NotImplementedError

    def _lost(self, exc: ConnectionClosed, resumable: bool) -> None:
        raise NotImplementedError

    async def _fail_protocol(self, e: ProtocolError, patience: float = 2.0) -> None:
        raise NotImplementedError

    @property
    def transport(self) -> Transport | None:
        """The current transport (None while a session waits for its client)."""
        return self._transport

    @property
    def core(self) -> Connection:
        """The sans-I/O core of the current session (for inspection)."""
        return self._core

    @property
    def output_limits(self) -> tuple[int, float]:
        """``(max_output_backlog, output_stall_timeout)``."""
        return self._max_backlog, self._stall_timeout

    def _reading(self, transport: Transport) -> None:
        """Have ``transport`` call this peer back with its messages."""
        self._busy, self._held, self._in_read = False, None, False
        if self._core.decoding:  # the rest of the first message, given to attach, goes first
            self._more_soon(transport)
        if _CallLane is not None:
            self._lane = transport.attach_lane(
                partial(_CallLane, self, _current_peer, METHOD_NAMES, METHOD_HEADS, method_head, SYNC, _HANDLER_FAILED)
            )
        transport.start_reading(self)  # message_received, messages_read, transport_lost

    def begin_reading(self) -> None:
        """(Server) start reading a transport attached with ``read=False``; a no-op
        once it reads."""
        transport = self._transport
        if transport is not None and not transport.reading:
            self._reading(transport)

    def _kick(self) -> None:
        """Send what a call (a notification, a cancel) queued, as :meth:`_send_queued`;
        but once ``EARLY_FLUSH`` control bytes wait for the end of this loop pass, they
        leave at once: 100 calls made in one pass cross in parts that the peer answers
        while this side makes the rest, not in one batch the two sides take turns on."""
        if self._processing:
            return  # _process sends once the message is handled
        if self._link.flush_pending:
            if len(self._core.control_queue) >= _EARLY_FLUSH:
                self._flush()
        elif not self._in_read:  # else messages_read sends at the end of the read
            if self._fresh and self._direct:
                self._flush()
            else:
                self._link.flush_pending = True
                self._loop.call_soon(self._flush_soon)

    def _send_call(self, core: Connection, method: str, payload: bytes, raw: bool) -> int:
        """Make a plain call (``Connection.send_call``'s errors) and send it: written
        at once, as a message of its own, when nothing was written since the last
        message came and nothing else waits (a sequential call: ``Connection.call_now``,
        or the compiled lane's ``call`` for raw arguments); otherwise queued and sent as
        :meth:`_kick` sends."""
        lane = self._lane
        if lane is not None and raw:
            cid = lane.call(method, payload)
            if cid is not None:
                return cid  # type: ignore[no-any-return]
        if self._fresh and self._direct and not (self._processing or self._in_read or self._link.flush_pending):
            transport = self._transport
            writer = self._writer
            if transport is not None and (writer is None or writer.done()):
                now = core.call_now(method, payload, raw)
                if now is not None:
                    if transport.write_now(now[1]):
                        self._fresh = False
                        self.streams.on_drained()
                    else:  # past the high-water mark, or closing: as _flush
                        self._writer = self._loop.create_task(self._send_paused(transport, now[1]))
                    return now[0]
        call_id = core.send_call(method, payload, raw)
        self._kick()
        return call_id

    def _answer(self, core: Connection, cid: int, payload: bytes) -> None:
        """Send a sync handler's bytes answer to plain call ``cid``: written at once, as
        a message of its own, when its request was a read alone and nothing else waits
        (``Connection.answer_now``: a sequential call's reply); otherwise queued, to
        leave with the rest of the read's output."""
        if self._fresh and self._direct and not (self._in_read or self._link.flush_pending):
            transport = self._transport
            writer = self._writer
            if transport is not None and (writer is None or writer.done()):
                msg = core.answer_now(cid, payload)
                if msg is not None:
                    if transport.write_now(msg):
                        self._fresh = False
                        self.streams.on_drained()
                    else:  # past the high-water mark, or closing: as _flush
                        self._writer = self._loop.create_task(self._send_paused(transport, msg))
                    return
        core.send_response(cid, payload, True)

    def _send_queued(self) -> None:
        """Send what the core has queued: at once when nothing was written since the
        last message arrived (a reply, the next call of a sequence), else from a
        callback after this loop iteration, so that what the iteration queues leaves
        together in one message."""
        if self._processing or self._in_read:
            return  # _process / messages_read send once the message / the read is handled
        if not self._link.flush_pending:
            if self._fresh and self._direct:
                self._flush()
            else:
                self._link.flush_pending = True
                self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._link.flush_pending = False
        self._flush()

    def _flush(self) -> None:
        """Send what the core has queued, straight to the transport, in order.

        Only while no writer task runs (the handshake, or a socket past its
        high-water mark): that task sends everything queued before it ends."""
        self.streams.flush_runs()  # what the stream senders gather goes in the core first
        transport = self._transport
        if transport is None or not self._direct:
            return
        writer = self._writer
        if writer is not None and not writer.done():
            return
        core = self._core
        nxt = core.next_message()
        while nxt is not None:
            if core.unblocked:
                self._wake_unblocked()
            # (type() is, not isinstance: ~450 instructions less a sequential call, callgrind)
            if not (transport.write_now(nxt) if type(nxt) is bytes else transport.write_parts_now(nxt)):  # type: ignore[arg-type]
                # Past the high-water mark, or closing: the writer task waits for the
                # drain (or lets the library raise the closure).
                self._writer = self._loop.create_task(self._send_paused(transport, nxt))
                return
            self._fresh = False
            self.streams.on_drained()
            nxt = core.next_message() if core.has_output() else None

    def _transport_buffered(self) -> int:
        """Bytes written to the transport and not yet taken by the socket."""
        t = self._transport
        return t.buffered() if t is not None else 0

    # The stream manager's host (StreamHost): the same functions, public names. Stream
    # items batch up to batch_size instead (no EARLY_FLUSH check); a sender asks for a
    # flush only while none is pending (StreamLink.flush_pending).
    flush = _send_queued
    transport_buffered = _transport_buffered

    def flush_now(self) -> None:
        """(StreamHost) send what the core queued now: a stream's queue is full."""
        if not self._processing and not self._in_read:
            self._flush()

    async def _write_loop(self, transport: Transport) -> None:
        """The writer task of a new transport: the handshake, the replay of what the
        peer missed, then it ends: from then on :meth:`_flush` writes."""
        core = self._core
        try:
            await transport.send(core.handshake())
            # A client sends nothing else until the server's handshake says where to
            # resume from.
            await asyncio.shield(self._ready)
            for msg in core.take_replay():
                await transport.send(msg)
            self._direct = True
            self._writer = None
            self._flush()  # what was queued meanwhile
        except (*TransportClosed, SessionLost):
            pass

    async def _send_paused(self, transport: Transport, first: bytes | list[bytes]) -> None:
        """Send ``first``, then all that is queued, waiting for the socket to drain;
        ends once the core has nothing queued: :meth:`_flush` takes over."""
        core = self._core
        manager = self.streams
        try:
            msg: bytes | list[bytes] | None = first
            while msg is not None:
                await (transport.send_parts(msg) if isinstance(msg, list) else transport.send(msg))
                manager.on_drained()
                manager.flush_runs()
                msg = core.next_message()
                self._wake_unblocked()
        except TransportClosed:
            pass

    def message_received(
        self, transport: Transport, msg: bytes | bytearray | memoryview | str, alone: bool = False
    ) -> None:
        """(Transport) one message from ``transport``, from its data_received;
        ``alone``: all of its read (its output leaves once it is handled)."""
        if transport is not self._transport:
            return
        if self._busy:  # a message in slices, or the backlog wait: in order, later
            if self._held is None:
                self._held = deque()
            self._held.append(msg.tobytes() if type(msg) is memoryview else msg)  # a view lasts one read
            transport.pause_reading()
            return
        # The output of a read of many messages leaves at its end (messages_read); a
        # message alone is its read: its output leaves at its end (_process), and a
        # sync answer at once (_answer).
        self._in_read = not alone
        if _current_peer.get(None) is not self:
            # A transport's read callbacks run in a context of their own (the loop
            # copies one per transport): the peer is set there once, not per message
            # (set and reset cost ~4,500 instructions a message, callgrind).
            _current_peer.set(self)
        try:
            if not isinstance(msg, str):  # _take, inline (bytes, or the read buffer's view)
                core = self._core
                frames = core.decode(msg)
                if not core.decoding:  # _feed, inline: the whole message
                    self._process(frames)
                    backlog = core.control_backlog
                    # A message that made no output (an answer to our call) adds nothing
                    # for the peer to read: the backlog check is for those that did.
                    if backlog or not self._fresh:
                        if backlog + transport.buffered() > self._max_backlog:
                            self._serve_less_soon(transport)
                        if backlog >= _EARLY_FLUSH:
                            self._flush()  # a long read: the peer starts on this part meanwhile
                    return
                self._feed(transport, frames)
            else:
                self._take(transport, msg)
            if self._core.control_backlog >= _EARLY_FLUSH:
                self._flush()
        except Exception as e:
            self._read_failed(transport, e)

    def messages_read(self, transport: Transport) -> None:
        """The messages of one read were handled: their output leaves, in one write."""
        if self._in_read:
            self._in_read = False
            core = self._core
            if transport is self._transport and (core.has_output() or core.closed):
                if self._fresh and self._direct and not self._link.flush_pending:
                    self._flush()  # _kick, inline: a read's answers leave at once
                else:
                    self._kick()

    def _take(self, transport: Transport, msg: bytes | bytearray | memoryview | str) -> None:
        if type(msg) is str:
            if self._core.awaiting_hello and msg.startswith('{"category":"welcome"'):
                return  # a server's greeting for the seed's clients (docs/json-mode.md)
            raise ProtocolError("text message on a fastrpc connection: the other side does not speak fastrpc")
        self._feed(transport, self._core.decode(msg))  # type: ignore[arg-type]

    def _feed(self, transport: Transport, frames: list[Any]) -> None:
        """Process ``frames``, a received message or a slice of it: a message of many
        frames is decoded and processed a slice a loop iteration (one peer cannot hold
        the loop for long); past max_output_backlog, wait for the peer to read
        (_serve_less). Meanwhile messages wait (_busy)."""
        if frames:  # (none while a long message is being checked: Connection.decode)
            self._process(frames)
        if self._core.decoding:
            self._more_soon(transport)
        elif self._core.control_backlog + transport.buffered() > self._max_backlog:
            self._serve_less_soon(transport)

    def _more_soon(self, transport: Transport) -> None:
        """The next slice of the message being decoded, in the next loop iteration."""
        self._busy = True
        self._loop.call_soon(self._next_slice, transport)

    def _serve_less_soon(self, transport: Transport) -> None:
        """Past max_output_backlog: hold the next messages, read no more until the
        peer took part of our output (:func:`_serve_less`)."""
        self._busy = True
        transport.pause_reading()
        self._loop.create_task(self._serve_less(transport))

    def _next_slice(self, transport: Transport) -> None:
        if transport is not self._transport or self._closed_flag:
            return
        self._busy = False
        self._resume(transport, partial(self._slice, transport))

    def _slice(self, transport: Transport) -> None:
        self._feed(transport, self._core.decode_more())

    def _resume(self, transport: Transport, step: Callable[[], None]) -> None:
        """Run ``step``, then the messages held while busy, until busy again."""
        token = _current_peer.set(self)
        try:
            step()
            held = self._held
            while held and not self._busy and transport is self._transport:
                self._take(transport, held.popleft())
            if not self._busy:
                self._held = None
                transport.resume_reading()
        except Exception as e:
            self._read_failed(transport, e)
        finally:
            _current_peer.reset(token)

    async def _serve_less(self, transport: Transport) -> None:
        try:
            await _serve_less(self, transport)
        except _Stalled as e:
            self._read_failed(transport, e)
            return
        if transport is self._transport:
            self._busy = False
            self._resume(transport, _nothing)

    def _read_failed(self, transport: Transport, e: Exception) -> None:
        """Reading ``transport`` failed: the session is lost (client), the peer broke
        the protocol (close with its code), or a bug here (1011)."""
        transport.drop_input()  # what still comes is dropped (up to transport.DROP_LIMIT)
        self._busy, self._held, self._in_read = False, None, False
        if transport is not self._transport:
            return
        if isinstance(e, SessionLost):
            if not self._ready.done():
                self._ready.set_exception(e)
                self._ready.exception()
            self._lost(ConnectionClosed(), False)
            return
        self._loop.create_task(self._fail_and_lose(transport, e))

    async def _fail_and_lose(self, transport: Transport, e: Exception) -> None:
        if isinstance(e, ProtocolError):
            exc = ConnectionClosed(f"protocol error: {e.reason}", e.close_code)
            warn_limited(protocol_logger, "closing the connection with %s: %s", self.remote_address, e.reason)
            # A peer closed for not reading gets time to drain what waits for it, so
            # that it can see why (its close frame comes last).
            await self._fail_protocol(e, self._keepalive.timeout or 10.0 if isinstance(e, _Stalled) else 2.0)
        else:  # a bug: close this connection, not the process
            exc = ConnectionClosed(f"internal error: {e!r}", 1011)
            await transport.close(1011, "internal error")
        if transport is self._transport:
            self._lost(exc, False)

    def transport_lost(self, transport: Transport, exc: BaseException | None) -> None:
        """(Transport) ``transport`` ended (exc None: a clean close; keep the peer's code and reason)."""
        if self._lane is not None and transport is self._transport:
            self._lane = None  # (it holds the transport)
        if exc is None:
            closed = ConnectionClosed(transport.close_reason or "Connection closed", transport.close_code)
        else:
            code, reason = closed_info(exc)
            closed = ConnectionClosed(reason, code)
        if transport is self._transport:
            self._in_read = False
            self._lost(closed, True)

    def _wake_unblocked(self) -> None:
        """Wake the senders whose queues the message just taken emptied."""
        unblocked = self._core.take_unblocked()
        if unblocked:
            manager = self.streams
            for sid in unblocked:
                manager.on_writable(sid)


def _nothing() -> None:
    pass


class _Stalled(LimitExceeded):
    """The peer does not read what it asked for (_serve_less)."""


async def _serve_less(peer: PeerIO, transport: Transport) -> None:
    """More than ``max_output_backlog`` bytes wait for the peer (answers, credit, PONGs
    it does not read): stop reading its input until half of it left. A peer that does
    not read at all for ``output_stall_timeout`` seconds meanwhile is closed
    (LimitExceeded, 1008): its messages stay in the socket, not in memory."""
    limit, stall = peer.output_limits
    core = peer.core
    loop = asyncio.get_running_loop()
    least = core.control_backlog + transport.buffered()
    since = loop.time()
    while not peer.closed and transport is peer.transport:
        peer.flush()
        waiting = core.control_backlog + transport.buffered()
        if waiting <= limit // 2:
            return
        if waiting < least:
            least, since = waiting, loop.time()
        elif loop.time() - since > stall:
            raise _Stalled(
                f"the peer does not read: {waiting} bytes wait for it (max_output_backlog {limit}) "
                f"with no progress for {stall} s (output_stall_timeout)"
            )
        await asyncio.sleep(O.BACKPRESSURE_DELAY)
