"""RpcPeer: one fastrpc connection (or resumable session) over a :class:`Transport`.

A reader feeds each received message to the sans-I/O core (:mod:`fastrpc.protocol`)
and dispatches the events it returns: calls to :class:`fastrpc.handlers.Handlers`,
stream events to the :class:`StreamManager`, answers to the futures of our calls.
Output is written straight to the transport from a callback after the loop iteration
that queued it, so frames queued together leave in one WebSocket message (coalescing,
no timers); a writer task takes over only for the handshake and replay, and while the
socket is past its high-water mark.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections import deque
from collections.abc import Callable
from typing import Any

from . import events as E
from . import frames as F
from . import options as O
from .api import Response
from .calls import FLAG_RAW
from .codec import UNDECODABLE, PayloadCodec, get_codec, payload_error
from .exceptions import ConnectionClosed, ErrorCode, PayloadTooLarge, ProtocolError
from .handlers import Handlers
from .keepalive import Keepalive
from .options import PeerOptions
from .peer_io import PeerIO
from .peer_io import _current_peer as _current_peer  # jsonmode sets it too
from .protocol import Connection, Role, SessionLost, Settings
from .router import Router
from .streams import StreamLink, StreamManager
from .transport import Transport

__all__ = ["Response", "RpcPeer", "current_peer"]


def current_peer() -> RpcPeer:
    """The peer of the connection whose handler is running (raises LookupError
    outside a handler)."""
    return _current_peer.get()  # type: ignore[return-value]


class RpcPeer(PeerIO):
    """Calls, notifications and streams over one connection; either end may call.

    Made by :func:`fastrpc.connect` and :func:`fastrpc.serve`; not built directly.
    The methods under "session" are the hooks the server and the client use to move a
    resumable session from one transport to the next.
    """

    __slots__ = (
        "__weakref__",
        "_attachments",
        "_call_waiters",
        "_calls",
        "_close_exc",
        "_closed",
        "_closed_flag",
        "_codec",
        "_core",
        "_core_options",
        "_goaway",
        "_handlers",
        "_keepalive",
        "_link",
        "_loop",
        "_pongs",
        "_ready",
        "_transport",
        "_transport_done",
        "on_transport_lost",
        "server",
        "session_task",
        "streams",
    )

    def __init__(
        self,
        transport: Transport | None,
        role: Role,
        *,
        router: Router | None = None,
        settings: Settings | None = None,
        codec: str | PayloadCodec = "msgpack",
        streams: StreamManager | None = None,
        expose_tracebacks: bool = False,
        keepalive_interval: float | None = O.KEEPALIVE_INTERVAL,
        keepalive_timeout: float | None = O.KEEPALIVE_TIMEOUT,
        compression_threshold: int = O.COMPRESSION_THRESHOLD,
        max_replay_bytes: int = O.MAX_REPLAY_BYTES,
        max_output_backlog: int = O.MAX_OUTPUT_BACKLOG,
        output_stall_timeout: float = O.OUTPUT_STALL_TIMEOUT,
        max_connection_memory: int = O.MAX_CONNECTION_MEMORY,
        introspection: bool = False,
        max_ping_rate: float | None = O.MAX_PING_RATE,
    ) -> None:
        self._transport = transport
        self._max_backlog = max_output_backlog
        self._stall_timeout = output_stall_timeout
        self._loop = asyncio.get_running_loop()
        self._codec: PayloadCodec = get_codec(codec)
        settings = settings or Settings()
        manager = streams if streams is not None else StreamManager()
        if settings.codec != self._codec.wire_id or settings.initial_stream_window != manager.initial_window:
            # A copy: the Settings given may be shared by other connections (peer_kwargs).
            settings = dataclasses.replace(
                settings, codec=self._codec.wire_id, initial_stream_window=manager.initial_window
            )
        # For a new session's core (a client whose session could not be resumed).
        self._core_options = (compression_threshold, max_replay_bytes, max_connection_memory, max_ping_rate)
        self._core = self._new_core(role, settings, manager)
        self._link = StreamLink(self._loop, self._core, self, self._codec)
        self.streams = manager
        manager.attach(self._link)
        self._handlers = Handlers(self._link, manager, router, expose_tracebacks, introspection)
        self.server: Any = None  # the fastrpc.Server that accepted this connection, if any
        self._keepalive = Keepalive(self._loop, keepalive_interval, keepalive_timeout, self)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_waiters: list[asyncio.Future[None]] = []
        # Output is written straight to the transport from a call_soon callback
        # (_flush) once the handshake is done; the writer task only takes over while
        # the socket is past its high-water mark, or before/after that phase.
        self._direct = False
        # Nothing written since the last message arrived: the next output goes at
        # once (a reply, the next sequential call) rather than one loop iteration
        # later; what follows it in the same iteration is coalesced as before.
        self._fresh = True
        self._processing = self._in_read = False
        self._lane: Any = None  # the transport's compiled call lane (PeerIO._reading)
        self._busy = False  # messages wait in _held (a message in slices, the backlog wait)
        self._held: deque[bytes | bytearray | str] | None = None
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._closed_flag = False
        self._close_exc: ConnectionClosed | None = None
        self._pongs: dict[bytes, asyncio.Future[None]] = {}
        self._writer: asyncio.Task[None] | None = None
        # Session resumption: transports this session has had, and the hook told when
        # one is lost; it returns True when it keeps the session (it will attach a new
        # transport, or give up and tear down).
        self._attachments = 0
        self._transport_done: asyncio.Future[None] = self._loop.create_future()
        self.on_transport_lost: Callable[[RpcPeer, ConnectionClosed, bool], bool] | None = None
        self.session_task: asyncio.Task[Any] | None = None  # a reconnect, or the expiry of a session
        self._closing = False
        self._goaway = False
        self.identity: Any = None  # what the server's authenticate hook returned

    # ------------------------------------------------------------ life cycle

    def _new_core(self, role: Role, settings: Settings, manager: StreamManager) -> Connection:
        threshold, max_replay, memory, ping_rate = self._core_options
        return Connection(
            role,
            settings,
            compression_threshold=threshold,
            max_replay_bytes=max_replay,
            max_connection_memory=memory,
            max_ping_rate=ping_rate,
            **manager.core_options(),
        )

    async def start(
        self,
        timeout: float = O.HANDSHAKE_TIMEOUT,
        first: bytes | None = None,
        inline_reader: bool = False,
        *,
        read: bool = True,
    ) -> None:
        """(Session) run over the transport given at construction and wait for the
        peer's handshake; ``first``: a message the server already read. ``read``: as
        for :meth:`attach`."""
        assert self._transport is not None
        await self.attach(self._transport, timeout, first, inline_reader, read=read)
        self._keepalive.start()

    async def attach(
        self,
        transport: Transport,
        timeout: float = O.HANDSHAKE_TIMEOUT,
        first: bytes | None = None,
        inline_reader: bool = False,
        *,
        read: bool = True,
    ) -> None:
        """(Session) run this session over ``transport``: handshake, replay what the
        peer missed (when resuming), then read and write. Raises :class:`SessionLost`
        (client) when the server did not resume the session.

        ``read=False`` (a server that was given the client's handshake as ``first``):
        read nothing after it until :meth:`begin_reading`, so that a connection
        handler registers its methods before the first request is dispatched. The
        transport holds what arrives meanwhile (at most its ``max_queue`` messages,
        then it stops reading the socket).

        ``inline_reader``: kept for callers of earlier releases (no reader task runs
        any more: the transport calls the peer back with each message)."""
        core = self._core
        if self._attachments:
            core.new_transport()
        self._attachments += 1
        self._direct = False
        self._transport = transport
        core.parts_out = transport.writes_parts()
        self._ready = self._loop.create_future()
        self._transport_done = self._loop.create_future()
        token = _current_peer.set(self)
        try:
            if first is not None:
                self._process(core.decode(first))  # the server answers the client's handshake
            if read or not self._ready.done():  # (a handshake still to come is read now)
                self._reading(transport)  # messages go to message_received from data_received: no reader task
            self._writer = self._loop.create_task(self._write_loop(transport))
        except ProtocolError as e:
            await self._fail_protocol(e)
            await self.teardown(ConnectionClosed(f"protocol error: {e.reason}", e.close_code))
            raise ConnectionClosed(f"protocol error: {e.reason}", e.close_code) from None
        finally:
            _current_peer.reset(token)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except SessionLost:
            await self._drop(transport)
            raise
        except BaseException:
            await self._drop(transport)
            if self._attachments == 1 and self.on_transport_lost is None:
                await self.teardown(ConnectionClosed("handshake failed"))
            raise

    async def serve_transport(self) -> None:
        """(Session) hold the current transport's handler until the transport ends;
        a session that lost it then waits, detached, for its client to resume."""
        await asyncio.shield(self._transport_done)
        if self._transport is None and not self._closed_flag:
            return
        await self.wait_closed()

    async def _drop(self, transport: Transport) -> None:
        """Abandon ``transport`` (failed handshake): stop its writer, close it."""
        transport.drop_input()
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if transport is self._transport:
            self._lost(ConnectionClosed(), False)
        transport.abort()

    def _process(self, frames: list[Any]) -> None:
        """Feed ``frames`` (all or a slice of one received message) to the core and
        act on its events; output they make leaves together, once, at the end."""
        core = self._core
        self._fresh = True
        self._processing = True  # output made by the events leaves in one message, below
        try:
            # The call lane (Connection.take_call): one plain call or one answer alone,
            # a sequential call's every message, without events; or a message of plain
            # calls alone, or of answers alone (calls in flight: Connection.take_calls,
            # take_answers). Any other message, or one they refuse: receive_frames.
            lane = False
            n = len(frames)
            if n:
                f = frames[0]
                t = f.type
                if t in _CALL_FRAMES and not f.flags & ~FLAG_RAW:
                    session = core.session
                    lane = not session.enabled and not session.awaiting_hello
            if lane:
                if n == 1:
                    if t == _REQUEST_FRAME:
                        call = core.take_call(f)
                        if call is not None:
                            answer = self._handlers.call(f.id, call[0], call[1], f.flags != 0)
                            if answer is not None:
                                self._answer(core, f.id, answer)
                    elif core.take_answer(f):
                        self._settle(f.id, f.payload, f.flags != 0)
                elif t != _REQUEST_FRAME:
                    lane = core.take_answers(frames)
                    if lane:
                        self._settle_all(frames)
                else:
                    admit = core.take_calls(frames)
                    lane = admit is not None
                    if admit is not None:
                        handle = self._handlers.call
                        for f in frames:  # as one call above, each answer queued (one message)
                            call = admit(f)
                            if call is not None:
                                answer = handle(f.id, call[0], call[1], f.flags != 0)
                                if answer is not None:
                                    core.send_response(f.id, answer, True)
            if not lane:
                events: list[Any] = core.receive_frames(frames)
                for ev in events:
                    t = type(ev)
                    if t is _REQUEST:  # every call's events first, without the table
                        self._handlers.on_request(ev)
                    elif t is _RESPONSE:
                        self._settle(ev.call_id, ev.payload, ev.raw)
                    else:
                        _DISPATCH[t](self, ev)
        finally:
            self._processing = False
        if not self._ready.done() and not core.awaiting_hello:
            self._ready.set_result(None)
            # Calls and streams made while (re)connecting may go now.
            self._call_done()
            self.streams.on_slots()
        if self._call_waiters and core.can_call():
            # A slot came back without an answer to settle (a streaming call's end,
            # the answer to a call we gave up on): the calls waiting for one go on.
            self._call_done()
        if not self._in_read and (core.has_output() or core.closed):
            self._kick()  # (in a read, messages_read sends, once)

    def _lane_result(
        self,
        transport: Transport,
        cid: int,
        method: str,
        fn: Callable[..., Any],
        arg: bytes,
        result: Any,
        exc: BaseException | None,
    ) -> None:
        """(frames.CallLane) finish a lone call whose handler the compiled lane ran and
        did not answer itself, as :meth:`_process` and ``message_received`` would have
        from there: the answer (or the error) sent, the waiting calls woken, the
        output kicked, the backlog checked."""
        core = self._core
        try:
            answer = self._handlers.called(cid, method, fn, arg, result, exc)
            if answer is not None:
                self._answer(core, cid, answer)
        finally:
            self._processing = False
        if self._call_waiters and core.can_call():
            self._call_done()
        if core.has_output() or core.closed:
            self._kick()
        backlog = core.control_backlog
        if backlog or not self._fresh:
            if backlog + transport.buffered() > self._max_backlog:
                self._serve_less_soon(transport)
            if backlog >= O.EARLY_FLUSH:
                self._flush()

    @property
    def session_token(self) -> bytes | None:
        """(Session) the token a client presents to resume this session."""
        core = self._core
        return core.session.token if core.session.enabled else None

    def session_tokens(self) -> list[bytes]:
        """(Session, server) every token that may resume this session now: the
        current one, and the previous one until the client proved it has the current."""
        session = self._core.session
        if not session.enabled:
            return []
        return [t for t in (session.token, session.previous_token) if t is not None]

    def on_closed(self, fn: Callable[[RpcPeer], None]) -> None:
        """Call ``fn(peer)`` once the connection is closed and cleaned up."""
        self._closed.add_done_callback(lambda _: fn(self))

    async def wait_transport_done(self) -> None:
        """(Session) wait until the current transport is gone."""
        await asyncio.shield(self._transport_done)

    def _lost(self, exc: ConnectionClosed, resumable: bool) -> None:
        """The transport is gone. Keep the session for a resume when both sides agreed
        to resumption (and nobody said goodbye); otherwise clean everything up."""
        done = self._transport_done
        if not done.done():
            done.set_result(None)
        if not self._ready.done():
            # Lost during its handshake: attach() fails now, not at its timeout.
            self._ready.set_exception(exc)
            self._ready.exception()
        hook = self.on_transport_lost
        if hook is not None and not self._closing and not self._closed_flag:
            resumable = resumable and not self._goaway and self._core.resumable
            self._transport = None
            writer = self._writer
            if writer is not None and not writer.done():
                writer.cancel()
            if hook(self, exc, resumable):
                return
        self._loop.create_task(self.teardown(exc))

    async def reset_session(self, exc: ConnectionClosed) -> None:
        """(Session, client) the session could not be resumed: fail everything in
        flight with ``exc`` and start a new session on the next transport."""
        # The new session's core first: calls made while this awaits go to it (on the
        # old one they would never be sent). The link (the handlers' and the streams')
        # keeps the old core until the old session's handlers and senders are done:
        # what they send on their way out (a cancelled call's error, a stream's abort)
        # belongs to the old session, whose core is never sent again; on the new one
        # the ids are unknown, or, as the peer's ids start again, another call's.
        old = self._core
        self._core = self._new_core(old.role, old.settings, self.streams)
        self._attachments = 0
        self._goaway = False
        self._fail_pending(exc)
        tasks = self._handlers.running()
        for t in tasks:
            t.cancel()
        try:
            await self.streams.shutdown(exc)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            # (Cancelled, by a teardown: that cleans up the rest, on the new core.)
            self._link.core = self._core
            self._link.decoder = self._codec
        self.streams.reopen()
        self._call_done()

    def _fail_pending(self, exc: ConnectionClosed) -> None:
        """Fail our calls and pings in flight with ``exc``."""
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(exc)
        self._calls.clear()
        for fut in self._pongs.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()

    async def _fail_protocol(self, e: ProtocolError, patience: float = 2.0) -> None:
        """The peer broke the protocol: GOAWAY with the reason, close with its code."""
        core = self._core
        core.close(e.code, e.reason)
        if self._transport is not None:
            # Our HELLO first if the handshake failed, then the GOAWAY with the reason.
            core.parts_out = False  # fail() sends bytes
            last = [m for m in (core.next_message(), core.next_message()) if type(m) is bytes]
            await self._transport.fail(last, e.close_code, e.reason, patience)

    async def teardown(self, exc: ConnectionClosed) -> None:
        """(Session) clean up everything on this connection once it is gone."""
        if self._closed_flag:
            await asyncio.shield(self._closed)
            return
        self._closed_flag = self._link.closed = True
        if self._close_exc is None:
            self._close_exc = exc
        exc = self._close_exc
        core = self._core
        if not self._ready.done():
            self._ready.set_exception(exc)
            self._ready.exception()
        if not self._transport_done.done():
            self._transport_done.set_result(None)
        self._fail_pending(exc)
        self._call_done()
        self._keepalive.stop()
        self._kick()
        current = asyncio.current_task()
        tasks = [t for t in (*self._handlers.running(), self.session_task) if t is not None and t is not current]
        for t in tasks:
            t.cancel()
        await self.streams.shutdown(exc)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if self._transport is not None:
            await self._transport.close()
        core.discard_state()
        if not self._closed.done():
            self._closed.set_result(None)

    def _check_open(self) -> None:
        if self._close_exc is not None:
            raise self._close_exc
        if self._closed_flag or self._core.closed:
            raise ConnectionClosed()

    # ------------------------------------------------------------ keepalive

    def keepalive_ping(self, token: bytes) -> Transport | None:
        """(Keepalive hook) queue a PING; the transport it probes (None: none now)."""
        transport = self._transport
        if transport is None or self._close_exc is not None or self._closed_flag or self._core.closed:
            return None
        self._core.send_ping(token)
        self._kick()
        return transport

    def keepalive_expired(self, transport: object) -> None:
        """(Keepalive hook) no PONG came in time on ``transport``."""
        if self._closed_flag or transport is not self._transport:
            return
        # The peer is gone or stuck: no close handshake (it would wait for the dead
        # peer too); drop the TCP connection. A resumable session then waits for a
        # new one; any other is cleaned up.
        if not (self.on_transport_lost is not None and self._core.resumable):
            timeout = self._keepalive.timeout
            self._close_exc = ConnectionClosed(
                f"keepalive timeout: no PONG within {timeout} s", ErrorCode.KEEPALIVE_TIMEOUT.close_code
            )
            self._core.close(ErrorCode.KEEPALIVE_TIMEOUT, "keepalive timeout")
        self._transport.abort()  # type: ignore[union-attr]

    # -------------------------------------------------------------- events

    def _on_hello(self, ev: E.HelloReceived) -> None:
        settings: Settings = ev.settings  # type: ignore[assignment]
        if settings.codec != self._codec.wire_id:
            self._link.decoder = self._codec.sibling(settings.codec)

    def _on_readable(self, ev: E.StreamReadable) -> None:
        self.streams.on_readable(ev.stream_id)

    def _on_credit(self, ev: E.CreditGranted) -> None:
        if ev.stream_id:
            self.streams.on_writable(ev.stream_id)
        else:
            self.streams.on_slots()

    def _on_stream_opened(self, ev: E.StreamOpened) -> None:
        self.streams.on_opened(ev.stream_id)

    def _on_stream_closed(self, ev: E.StreamClosedByPeer) -> None:
        self.streams.on_closed_by_peer(ev.stream_id)
        self._handlers.on_stream_closed(ev.stream_id)

    def _on_response(self, ev: E.ResponseReceived) -> None:
        self._settle(ev.call_id, ev.payload, ev.raw)

    def _settle(self, cid: int, payload: Any, raw: bool) -> None:
        """Our call ``cid`` was answered: its caller's future gets the result."""
        fut = self._calls.pop(cid, None)
        if self._call_waiters:
            self._call_done()
        if fut is not None and not fut.done():
            if raw and type(payload) is bytes:  # PayloadCodec.decode's first case, inline
                fut.set_result(payload)
                return
            self._resolve(fut, payload, raw)

    def _settle_all(self, frames: list[Any]) -> None:
        """Our calls answered by RESPONSE ``frames`` (the call lane's message of
        answers): as :meth:`_settle` each, the call-slot waiters woken once."""
        calls = self._calls
        for f in frames:
            fut = calls.pop(f.id, None)
            if fut is not None and not fut.done():
                payload = f.payload
                if f.flags and type(payload) is bytes:  # raw: as _settle
                    fut.set_result(payload)
                else:
                    self._resolve(fut, payload, f.flags != 0)
        if self._call_waiters:
            self._call_done()

    def _resolve(self, fut: asyncio.Future[Any], payload: Any, raw: bool) -> None:
        core = self._core
        # A long plain answer that would decode past max_connection_memory fails that
        # call, not the connection: PayloadTooLarge, as the peer's handler gets for
        # arguments that large. (decodes_past_budget's shortcut inline: no call for a
        # short answer.)
        if not raw and len(payload) > core.decode_free and core.decodes_past_budget(payload):
            limit = core.budget.limit
            fut.set_exception(
                PayloadTooLarge(
                    f"the answer to a call ({len(payload)} bytes) would decode to more than {limit} bytes "
                    f"of objects, over max_connection_memory ({limit}): return large data as a stream, "
                    "or raise the option"
                )
            )
            return
        try:
            fut.set_result(self._link.decoder.decode(payload, raw))
        except Exception as exc:
            if isinstance(exc, UNDECODABLE):  # the peer's payload: PayloadError, its cause
                err = payload_error("the answer to a call", self._link.decoder.name, exc)
                err.__cause__ = exc
                fut.set_exception(err)
            else:
                fut.set_exception(exc)

    def _on_call_failed(self, ev: E.CallFailed) -> None:
        fut = self._calls.pop(ev.call_id, None)
        self._call_done()
        if fut is not None and not fut.done():
            fut.set_exception(ev.error)

    def _call_done(self) -> None:
        if self._call_waiters:
            waiters, self._call_waiters = self._call_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _on_pong(self, ev: E.PongReceived) -> None:
        if self._keepalive.pong(ev.payload):
            return
        fut = self._pongs.get(ev.payload)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_goaway(self, ev: E.GoAwayReceived) -> None:
        self._goaway = True
        if ev.code != ErrorCode.NO_ERROR:
            try:  # ConnectionClosed.code is a WebSocket close code, not an ErrorCode
                close_code = ErrorCode(ev.code).close_code
            except ValueError:
                close_code = 1002
            self._close_exc = ConnectionClosed(f"peer closed the connection: {ev.reason}", close_code)

    def _on_request(self, ev: E.RequestReceived) -> None:
        self._handlers.on_request(ev)

    def _on_notify(self, ev: E.NotificationReceived) -> None:
        self._handlers.on_notify(ev)

    def _on_cancelled(self, ev: E.CallCancelled) -> None:
        self._handlers.on_cancelled(ev)


_REQUEST = E.RequestReceived
_RESPONSE = E.ResponseReceived
_REQUEST_FRAME = F.REQUEST
_CALL_FRAMES = frozenset((F.REQUEST, F.RESPONSE))  # the call lane's
# Event type -> handler (a class-level table: nothing to build per connection).
_DISPATCH: dict[type, Callable[[RpcPeer, Any], None]] = {
    E.StreamReadable: RpcPeer._on_readable,
    E.CreditGranted: RpcPeer._on_credit,
    E.RequestReceived: RpcPeer._on_request,
    E.ResponseReceived: RpcPeer._on_response,
    E.CallFailed: RpcPeer._on_call_failed,
    E.NotificationReceived: RpcPeer._on_notify,
    E.CallCancelled: RpcPeer._on_cancelled,
    E.StreamOpened: RpcPeer._on_stream_opened,
    E.StreamClosedByPeer: RpcPeer._on_stream_closed,
    E.PongReceived: RpcPeer._on_pong,
    E.GoAwayReceived: RpcPeer._on_goaway,
    E.HelloReceived: RpcPeer._on_hello,
}


@functools.lru_cache(maxsize=64)
def _hello_settings(**terms: int) -> Settings:
    # One object for every connection with the same terms (a server's connections):
    # nothing changes a peer's settings once made (RpcPeer copies what it would
    # change), and each copy was ~130 B a connection.
    return Settings(**terms)


def peer_kwargs(options: PeerOptions) -> dict[str, Any]:
    """:class:`RpcPeer` keyword arguments for a connection made with ``options`` (a
    fresh copy of the options' stream manager, the HELLO settings)."""
    template = options.streams
    manager = template.copy() if template is not None else StreamManager()
    codec = get_codec(options.codec, options.enc_hook, options.dec_hook)
    settings = _hello_settings(
        **options.hello_limits(),
        initial_stream_window=manager.initial_window,
        compression=options.compression_mask(),
        codec=codec.wire_id,
        resume=int(options.resume),
    )
    return {
        "settings": settings,
        "codec": codec,
        "streams": manager,
        "expose_tracebacks": options.expose_tracebacks,
        "keepalive_interval": options.keepalive_interval,
        "keepalive_timeout": options.keepalive_timeout,
        "compression_threshold": options.compression_threshold,
        "max_replay_bytes": options.max_replay_bytes,
        "max_output_backlog": options.max_output_backlog,
        "output_stall_timeout": options.output_stall_timeout,
        "max_connection_memory": options.max_connection_memory,
        "introspection": options.introspection,
        "max_ping_rate": options.max_ping_rate,
    }
