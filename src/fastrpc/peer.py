"""RpcPeer: one fastrpc connection over a ``websockets`` connection.

The peer runs two tasks: a reader that feeds each received message to the sans-I/O
core and dispatches the events, and a writer that sends what the core has queued.
Frames queued during one loop iteration leave together in the writer's next message,
so many small items or calls share one WebSocket message (coalescing, no timers).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import inspect
import os
import traceback as _traceback
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, TypeVar

from websockets.exceptions import ConnectionClosed as _WSClosed
from websockets.protocol import State as _WSState

from . import events as E
from .codec import PayloadCodec, get_codec
from .exceptions import (
    ConnectionClosed,
    ErrorCode,
    LimitExceeded,
    ProtocolError,
)
from .protocol import DEFAULT_URGENCY, Connection, Role, SessionLost, Settings
from .router import ASYNC_GEN, SYNC, Router, handler_kind
from .streams import RateLimit, ReceiveStream, StreamManager

__all__ = ["Response", "RpcPeer", "current_peer"]

_WS_OPEN = _WSState.OPEN
# FASTRPC_NO_DIRECT_WRITE=1: always send through the writer task (for comparisons).
_DIRECT = os.environ.get("FASTRPC_NO_DIRECT_WRITE", "") in ("", "0")

T = TypeVar("T")

_current_peer: contextvars.ContextVar[RpcPeer] = contextvars.ContextVar("fastrpc_peer")


def current_peer() -> RpcPeer:
    """The peer of the connection whose handler is running (raises LookupError
    outside a handler)."""
    return _current_peer.get()


class Response:
    """Result of the seed-style :meth:`RpcPeer.request`: the handler's value is ``.data``."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Response(data={self.data!r})"


class RpcPeer:
    """Calls, notifications and streams over one connection; either end may call.

    Made by :func:`fastrpc.connect` and :func:`fastrpc.serve`; not built directly.
    """

    __slots__ = (
        "__weakref__",
        "_attachments",
        "_call_waiters",
        "_calls",
        "_close_exc",
        "_closed",
        "_closed_flag",
        "_closing",
        "_codec",
        "_core",
        "_core_options",
        "_decoder",
        "_direct",
        "_expose_tb",
        "_flush_pending",
        "_fresh",
        "_goaway",
        "_keepalive",
        "_loop",
        "_notify_tasks",
        "_on_lost",
        "_own",
        "_ping_timer",
        "_ping_token",
        "_pongs",
        "_processing",
        "_reader",
        "_ready",
        "_router",
        "_session_task",
        "_tasks",
        "_transport",
        "_transport_done",
        "_wake",
        "_writer",
        "_ws",
        "streams",
    )

    def __init__(
        self,
        ws: Any,
        role: Role,
        *,
        router: Router | None = None,
        settings: Settings | None = None,
        codec: str = "msgpack",
        streams: StreamManager | None = None,
        expose_tracebacks: bool = False,
        keepalive_interval: float | None = 20.0,
        keepalive_timeout: float | None = 20.0,
        compression_threshold: int = 1024,
        max_replay_bytes: int = 32 << 20,
    ) -> None:
        self._ws = ws
        self._loop = asyncio.get_running_loop()
        self._codec: PayloadCodec = get_codec(codec)
        settings = settings or Settings()
        settings.codec = self._codec.wire_id
        self._decoder: PayloadCodec = self._codec
        manager = streams if streams is not None else StreamManager()
        if manager.initial_window != settings.initial_stream_window:
            settings.initial_stream_window = manager.initial_window
        self._core_options = (compression_threshold, max_replay_bytes)  # for a new session's core
        self._core = Connection(
            role, settings, compression_threshold=compression_threshold, max_replay_bytes=max_replay_bytes
        )
        self.streams = manager
        manager._attach(self)
        self._router = router if router is not None else Router()
        self._own = Router()  # peer.register()/match(): looked up before the router
        self._expose_tb = expose_tracebacks
        self._keepalive = (keepalive_interval, keepalive_timeout)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._notify_tasks: dict[asyncio.Task[Any], None] = {}  # a dict: 64 B empty
        self._call_waiters: list[asyncio.Future[None]] = []
        self._wake: asyncio.Future[None] | None = None
        # Output is written straight to the transport from a call_soon callback
        # (_flush) once the handshake is done; the writer task only takes over while
        # the transport is paused (websockets' drain), or before/after that phase.
        self._flush_pending = False
        self._direct = False
        # Nothing written since the last message arrived: the next output goes at
        # once (a reply, the next sequential call) rather than one loop iteration
        # later; what follows it in the same iteration is coalesced as before.
        self._fresh = True
        self._processing = False
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._closed_flag = False
        self._close_exc: ConnectionClosed | None = None
        self._pongs: dict[bytes, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        # Keepalive: a timer, and the payload of the PING awaiting its PONG.
        self._ping_timer: _Timer | None = None
        self._ping_token: bytes | None = None
        self._transport = getattr(ws, "transport", None)
        # Session resumption: transports this session has had; set by connect()/serve()
        # when a lost transport may be replaced. The hook returns True when it keeps
        # the session (it will attach a new transport, or give up and tear down).
        self._attachments = 0
        self._transport_done: asyncio.Future[None] = self._loop.create_future()
        self._on_lost: Callable[[RpcPeer, ConnectionClosed, bool], bool] | None = None
        self._session_task: asyncio.Task[Any] | None = None
        self._closing = False
        self._goaway = False

    # ------------------------------------------------------------ life cycle

    async def _start(self, timeout: float = 10.0, first: bytes | None = None, inline_reader: bool = False) -> None:
        """Run the reader and writer, and wait for the peer's HELLO. ``first``: a
        message the server already read to tell fastrpc from the seed's JSON."""
        await self._attach(self._ws, timeout, first, inline_reader)
        self._keepalive_next()

    async def _attach(
        self, ws: Any, timeout: float = 10.0, first: bytes | None = None, inline_reader: bool = False
    ) -> None:
        """Run this session over ``ws``: handshake, replay what the peer missed (when
        resuming), then the reader and writer. Raises :class:`SessionLost` (client)
        when the server did not resume the session.

        ``inline_reader`` (server): when ``first`` completed the handshake, start no
        reader task; the caller runs :meth:`_read_loop` itself (one coroutine less
        per connection)."""
        core = self._core
        if self._attachments:
            core.new_transport()
        self._attachments += 1
        self._direct = False
        self._ws = ws
        self._transport = getattr(ws, "transport", None)
        self._ready = self._loop.create_future()
        self._transport_done = self._loop.create_future()
        token = _current_peer.set(self)
        try:
            if first is not None:
                self._process(first)  # the server answers the client's handshake
            if inline_reader and first is not None and self._ready.done():
                self._reader = None
            else:
                self._reader = self._loop.create_task(self._read_loop(ws))
            self._writer = self._loop.create_task(self._write_loop(ws))
        except ProtocolError as e:
            await self._fail_protocol(e)
            await self._teardown(ConnectionClosed(f"protocol error: {e.reason}", e.close_code))
            raise ConnectionClosed(f"protocol error: {e.reason}", e.close_code) from None
        finally:
            _current_peer.reset(token)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except SessionLost:
            await self._drop(ws)
            raise
        except BaseException:
            await self._drop(ws)
            if self._attachments == 1 and self._on_lost is None:
                await self._teardown(ConnectionClosed("handshake failed"))
            raise

    async def _drop(self, ws: Any) -> None:
        """Abandon transport ``ws`` (failed handshake): stop its tasks, close it."""
        for task in (self._reader, self._writer):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(t for t in (self._reader, self._writer) if t is not None), return_exceptions=True)
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()

    def _process(self, msg: bytes) -> None:
        core = self._core
        dispatch = _DISPATCH
        self._fresh = True
        self._processing = True  # output made by the events leaves in one message, below
        try:
            for ev in core.receive_message(msg):
                dispatch[type(ev)](self, ev)
        finally:
            self._processing = False
        if not core.awaiting_hello and not self._ready.done():
            self._ready.set_result(None)
            # Calls and streams made while (re)connecting may go now.
            self._call_done()
            self.streams._on_slots()
        if core.has_output() or core.closed:
            self._kick()

    @property
    def closed(self) -> bool:
        return self._closed_flag

    @property
    def connected(self) -> bool:
        """Whether a transport is attached (False while a session waits to resume)."""
        return self._ws is not None and not self._closed_flag

    @property
    def settings(self) -> Settings:
        """Our limits, as announced to the peer."""
        return self._core.settings

    @property
    def peer_settings(self) -> Settings | None:
        """The peer's limits, from its HELLO."""
        return self._core.peer_settings

    @property
    def close_exception(self) -> ConnectionClosed | None:
        """Why the connection closed (None while open)."""
        return self._close_exc

    @property
    def remote_address(self) -> Any:
        return getattr(self._ws, "remote_address", None)

    async def wait_closed(self) -> None:
        """Wait until the connection has closed and everything on it is cleaned up."""
        await asyncio.shield(self._closed)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection: GOAWAY, then the WebSocket close handshake."""
        self._closing = True
        if not self._closed_flag:
            self._core.close(ErrorCode.NO_ERROR, reason)
            self._flush()  # the GOAWAY leaves before the close frame
            writer = self._writer
            if self._ws is not None and writer is not None and not writer.done():
                try:
                    await asyncio.wait_for(asyncio.shield(writer), 2.0)
                except (asyncio.TimeoutError, Exception):
                    pass
            if self._ws is not None:
                try:
                    await self._ws.close(code, reason)
                except Exception:
                    pass
            else:
                await self._teardown(ConnectionClosed(reason or "Connection closed", code))
        await self.wait_closed()

    async def __aenter__(self) -> RpcPeer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ I/O

    def _kick(self) -> None:
        """Send what the core has queued: at once when nothing was written since the
        last message arrived (a reply, the next call of a sequence), else from a
        callback after this loop iteration, so that what the iteration queues leaves
        together in one message."""
        if self._processing:
            return  # _process sends once all the events of the message are handled
        if not self._flush_pending:
            if self._fresh and self._direct:
                self._flush()
            else:
                self._flush_pending = True
                self._loop.call_soon(self._flush_soon)

    def _wake_writer(self) -> None:
        w = self._wake
        if w is not None:
            self._wake = None
            if not w.done():
                w.set_result(None)

    def _flush_soon(self) -> None:
        self._flush_pending = False
        self._flush()

    def _flush(self) -> None:
        """Send what the core has queued, straight to the transport.

        Only while the transport is not paused and no paused-send task runs: else
        that task sends (``await ws.send``, which waits for websockets' drain), as a
        writer task would. Messages leave in the order the core hands them out.
        """
        ws = self._ws
        if ws is None:
            return
        if not self._direct:
            self._wake_writer()  # the handshake, or FASTRPC_NO_DIRECT_WRITE
            return
        writer = self._writer
        if writer is not None and not writer.done():
            return  # it sends everything queued before it ends
        core = self._core
        manager = self.streams
        protocol = ws.protocol
        try:
            while True:
                if ws.paused or protocol.state is not _WS_OPEN:
                    # Drain, or let websockets raise ConnectionClosed: the slow path.
                    if core.has_output():
                        self._writer = self._loop.create_task(self._send_paused(ws))
                    return
                nxt = core.next_message()
                if nxt is None:
                    return
                self._wake_unblocked()
                protocol.send_binary(nxt)
                ws.send_data()
                self._fresh = False
                manager._on_drained()
        except Exception as exc:
            ws.set_connection_exc(exc)
            transport = ws.transport
            if transport is not None:
                transport.abort()

    def _transport_buffered(self) -> int:
        t = self._transport
        return int(t.get_write_buffer_size()) if t is not None else 0

    async def _write_loop(self, ws: Any) -> None:
        """The writer task of a new transport: the handshake, the replay of what the
        peer missed, then (direct mode) it ends: from then on :meth:`_flush` writes,
        and starts :meth:`_send_paused` only while the transport is paused."""
        core = self._core
        send = ws.send
        manager = self.streams
        try:
            await send(core.handshake())
            # A client sends nothing else until the server's handshake says where to
            # resume from.
            await asyncio.shield(self._ready)
            for msg in core.take_replay():
                await send(msg)
            if _DIRECT:
                self._direct = True
                self._writer = None
                self._flush()  # what was queued meanwhile
                return
            while True:
                nxt = core.next_message()
                if nxt is None:
                    if core.closed:
                        return
                    fut = self._loop.create_future()
                    self._wake = fut
                    await fut
                    continue
                self._wake_unblocked()
                await send(nxt)
                manager._on_drained()
        except (_WSClosed, ConnectionError, SessionLost):
            pass
        finally:
            self._wake = None

    async def _send_paused(self, ws: Any) -> None:
        """Send while websockets says the transport is paused: ``ws.send`` waits for
        its drain. Ends once the core has nothing queued; :meth:`_flush` takes over."""
        core = self._core
        manager = self.streams
        try:
            while True:
                nxt = core.next_message()
                if nxt is None:
                    return
                self._wake_unblocked()
                await ws.send(nxt)
                manager._on_drained()
        except (_WSClosed, ConnectionError):
            pass

    async def _read_loop(self, ws: Any) -> None:
        exc: ConnectionClosed | None = None
        resumable = False
        token = _current_peer.set(self)
        try:
            async for msg in ws:
                if type(msg) is str:
                    raise ProtocolError("text message on a fastrpc connection")
                self._process(msg)
            # A clean close: keep the peer's close code and reason.
            code = getattr(ws, "close_code", None)
            reason = getattr(ws, "close_reason", None) or "Connection closed"
            exc = ConnectionClosed(reason, code)
            resumable = True
        except SessionLost as e:
            if not self._ready.done():
                self._ready.set_exception(e)
                self._ready.exception()
            return
        except ProtocolError as e:
            exc = ConnectionClosed(f"protocol error: {e.reason}", e.close_code)
            await self._fail_protocol(e)
        except (_WSClosed, ConnectionError) as e:
            rcvd = getattr(e, "rcvd", None)
            code = rcvd.code if rcvd is not None else None
            reason = rcvd.reason if rcvd is not None and rcvd.reason else "Connection closed"
            exc = ConnectionClosed(reason, code)
            resumable = True
        except asyncio.CancelledError:
            exc = ConnectionClosed()
            raise
        except Exception as e:  # a bug: close this connection, not the process
            exc = ConnectionClosed(f"internal error: {e!r}", 1011)
            try:
                await ws.close(1011, "internal error")
            except Exception:
                pass
        finally:
            _current_peer.reset(token)
            if ws is self._ws:
                self._lost(exc or ConnectionClosed(), resumable)

    def _lost(self, exc: ConnectionClosed, resumable: bool) -> None:
        """The transport is gone. Keep the session for a resume when both sides agreed
        to resumption (and nobody said goodbye); otherwise clean everything up."""
        done = self._transport_done
        if not done.done():
            done.set_result(None)
        hook = self._on_lost
        if hook is not None and not self._closing and not self._closed_flag:
            resumable = resumable and not self._goaway and self._core.resumable
            self._ws = None
            self._transport = None
            writer = self._writer
            if writer is not None and not writer.done():
                writer.cancel()
            if hook(self, exc, resumable):
                return
        self._loop.create_task(self._teardown(exc))

    async def _reset_session(self, exc: ConnectionClosed) -> None:
        """(Client) the session could not be resumed: fail everything in flight with
        ``exc`` and start a new session on the next transport."""
        self._fail_pending(exc)
        tasks = [*self._tasks.values(), *self._notify_tasks]
        for t in tasks:
            t.cancel()
        await self.streams._shutdown(exc)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        old = self._core
        threshold, max_replay = self._core_options
        self._core = Connection(old.role, old.settings, compression_threshold=threshold, max_replay_bytes=max_replay)
        self._attachments = 0
        self._goaway = False
        self._decoder = self._codec
        self.streams._reopen(self)
        for w in self._call_waiters:
            if not w.done():
                w.set_result(None)

    def _wake_unblocked(self) -> None:
        """Wake the senders whose queues the message just taken emptied."""
        unblocked = self._core.take_unblocked()
        if unblocked:
            manager = self.streams
            for sid in unblocked:
                manager._on_writable(sid)

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

    async def _fail_protocol(self, e: ProtocolError) -> None:
        """The peer broke the protocol: GOAWAY with the reason, close with its code."""
        core = self._core
        core.close(e.code, e.reason)
        ws = self._ws
        try:
            msg = core.next_message()
            if msg is not None:
                await asyncio.wait_for(ws.send(msg), 1.0)
        except Exception:
            pass
        # Keep reading (and dropping) what the peer still sends: websockets stops
        # reading the socket once unread messages pile up, and the peer's close frame
        # would then never be seen (close() would wait for its full timeout).
        drain = self._loop.create_task(_discard(ws))
        try:
            await asyncio.wait_for(ws.close(e.close_code, e.reason[:120]), 2.0)
        except Exception:
            if self._transport is not None:
                self._transport.abort()  # no close handshake: drop the connection
        finally:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)

    async def _teardown(self, exc: ConnectionClosed) -> None:
        """Clean up everything on this connection once it is gone."""
        if self._closed_flag:
            await asyncio.shield(self._closed)
            return
        self._closed_flag = True
        if self._close_exc is None:
            self._close_exc = exc
        exc = self._close_exc
        core = self._core
        core.closed = True
        if not self._ready.done():
            self._ready.set_exception(exc)
            self._ready.exception()
        if not self._transport_done.done():
            self._transport_done.set_result(None)
        self._fail_pending(exc)
        for w in self._call_waiters:
            if not w.done():
                w.set_result(None)
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        self._kick()
        current = asyncio.current_task()
        tasks = [
            t
            for t in (*self._tasks.values(), *self._notify_tasks, self._session_task)
            if t is not None and t is not current
        ]
        for t in tasks:
            t.cancel()
        await self.streams._shutdown(exc)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if self._ws is not None:
            try:
                await self._ws.close()
            except Exception:
                pass
        core.discard_state()
        if not self._closed.done():
            self._closed.set_result(None)

    def _check_open(self) -> None:
        if self._close_exc is not None:
            raise self._close_exc
        if self._closed_flag or self._core.closed:
            raise ConnectionClosed()

    # ------------------------------------------------------------ keepalive

    async def ping(self, timeout: float | None = None) -> float:
        """Send a PING; return the round-trip time in seconds."""
        self._check_open()
        token = os.urandom(8)
        fut = self._loop.create_future()
        self._pongs[token] = fut
        start = self._loop.time()
        self._core.send_ping(token)
        self._kick()
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._pongs.pop(token, None)
        return self._loop.time() - start

    def _keepalive_next(self) -> None:
        """Ping again ``keepalive_interval`` seconds from now (timers, no task: an idle
        connection keeps no coroutine for this)."""
        interval, _ = self._keepalive
        if interval and not self._closed_flag:
            self._ping_timer = _timer(self._loop, interval, self._keepalive_ping)

    def _keepalive_ping(self) -> None:
        self._ping_timer = None
        transport: Any = self._transport
        if transport is None:
            self._keepalive_next()  # waiting for a resume: nothing to probe
            return
        if self._close_exc is not None or self._closed_flag or self._core.closed:
            return
        _, timeout = self._keepalive
        token = os.urandom(8)
        self._ping_token = token
        self._core.send_ping(token)
        self._kick()
        if timeout is not None:
            self._ping_timer = _timer(self._loop, timeout, functools.partial(self._keepalive_expired, transport))

    def _keepalive_pong(self) -> None:
        """The keepalive PING was answered: the next one after the interval."""
        self._ping_token = None
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self._keepalive_next()

    def _keepalive_expired(self, transport: Any) -> None:
        _, timeout = self._keepalive
        self._ping_timer = None
        self._ping_token = None
        if self._closed_flag:
            return
        if transport is not None and self._transport is transport:
            # The peer is gone or stuck: no close handshake (it would wait for the
            # dead peer too); drop the TCP connection. A resumable session then
            # waits for a new one; any other is cleaned up.
            if not (self._on_lost is not None and self._core.resumable):
                self._close_exc = ConnectionClosed(
                    f"keepalive timeout: no PONG within {timeout} s", ErrorCode.KEEPALIVE_TIMEOUT.close_code
                )
                self._core.closed = True
            _abort_transport(transport)
        self._keepalive_next()

    # ---------------------------------------------------------------- calls

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Handle calls to ``name`` on this connection with ``fn``."""
        self._own.add(name, fn)

    def match(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The seed's catch-all handler for this connection (see :meth:`Router.match`)."""
        self._own.match(fn)
        return fn

    def _encode_args(self, args: tuple[Any, ...]) -> tuple[bytes, bool]:
        if len(args) == 1 and type(args[0]) is bytes:
            return args[0], True
        return self._codec.encode_value(args), False

    async def _call_slot(self) -> None:
        core = self._core
        while not core.can_call():
            self._check_open()
            fut = self._loop.create_future()
            self._call_waiters.append(fut)
            await fut
        self._check_open()

    async def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call ``method`` on the other side and return its result.

        ``timeout`` (seconds) raises :class:`asyncio.TimeoutError` and travels as the
        handler's deadline. Cancelling the awaiting task cancels the remote handler.
        A handler's exception is raised as :class:`fastrpc.RemoteError`.
        """
        payload, raw = self._encode_args(args)
        return await self._call(method, payload, raw, timeout)

    async def _call(self, method: str, payload: bytes, raw: bool, timeout: float | None) -> Any:
        core = self._core
        if not core.can_call():
            await self._call_slot()
        self._check_open()
        cid = core.send_request(method, payload, raw=raw, timeout=timeout)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._calls[cid] = fut
        self._kick()
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            if not fut.done() or fut.cancelled():
                core.cancel_call(cid)
                self._kick()
            raise
        finally:
            self._calls.pop(cid, None)

    async def request(self, data: Any, *, timeout: float | None = None) -> Response:
        """The seed's request: ``data`` goes to the other side's ``match`` handler;
        its return value comes back as ``Response.data``."""
        payload, raw = self._codec.encode(data)
        return Response(await self._call("", payload, raw, timeout))

    def notify(self, method: str, *args: Any) -> None:
        """Send a one-way call: no result, no error comes back."""
        self._check_open()
        payload, raw = self._encode_args(args)
        self._core.send_notification(method, payload, raw=raw)
        self._kick()

    def stream(self, method: str, *args: Any, timeout: float | None = None) -> ReceiveStream[Any]:
        """Call a streaming method: ``async for item in peer.stream("ticks", 10)``.

        The call is sent on the first iteration; leaving the loop (and dropping the
        stream), ``aclose()`` or ``async with`` cancel it on the other side.
        """
        payload, raw = self._encode_args(args)
        return self._stream_call(method, payload, raw, None, timeout)

    def channel(
        self,
        method: str,
        items: AsyncIterable[Any],
        *args: Any,
        priority: int = DEFAULT_URGENCY,
        rate: RateLimit | None = None,
    ) -> ReceiveStream[Any]:
        """Open a bidirectional stream: ``items`` go to the handler (its first
        argument), whose yielded items come back through the returned stream."""
        payload, raw = self._encode_args(args)
        return self._stream_call(method, payload, raw, (items, priority, rate), None)

    def _stream_call(
        self, method: str, payload: bytes, raw: bool, channel: Any, timeout: float | None
    ) -> ReceiveStream[Any]:
        self._check_open()
        stream: ReceiveStream[Any] = ReceiveStream(self.streams, None, call=True)
        stream._claimed = True

        async def start(stream: ReceiveStream[Any]) -> None:
            await self._call_slot()
            core = self._core
            cid = core.send_request(method, payload, raw=raw, stream=True, channel=channel is not None, timeout=timeout)
            self.streams._bind_call(cid, stream)
            if channel is not None:
                items, priority, rate = channel
                if priority != DEFAULT_URGENCY:
                    core.set_urgency(cid, priority)
                self.streams._start_sender(cid, items, rate)
            self._kick()

        stream._starter = start
        return stream

    # -------------------------------------------------------------- streams

    async def send_stream(
        self,
        source: AsyncIterable[Any],
        stream_id: int | None = None,
        *,
        priority: int = DEFAULT_URGENCY,
        rate: RateLimit | None = None,
    ) -> int:
        """Send ``source``'s items as a stream; return the stream id at once.

        ``priority``: urgency 0 (first) to 7, default 3. ``rate``: a
        :class:`RateLimit`. An exception raised by ``source`` reaches the receiver.
        """
        self._check_open()
        return await self.streams.send_stream(source, stream_id, priority=priority, rate=rate)

    def receive_stream(self, stream_id: int | None = None) -> tuple[int | None, ReceiveStream[Any]]:
        """``(stream_id, stream)`` for an incoming stream; see
        :meth:`StreamManager.receive_stream`."""
        return self.streams.receive_stream(stream_id)

    async def accept_stream(self) -> tuple[int, ReceiveStream[Any]]:
        """Wait for the next incoming stream that nobody has claimed."""
        return await self.streams.accept_stream()

    def new_stream_id(self) -> int:
        """Allocate a stream id to announce before :meth:`send_stream` uses it."""
        return self._core.next_id()

    def abort_stream(self, stream_id: int) -> bool:
        """Stop an outgoing stream; the receiver gets :class:`fastrpc.StreamAborted`."""
        return self.streams.abort_stream(stream_id)

    def close_receiving_stream(self, stream_id: int) -> None:
        """Stop reading an incoming stream; its sender is told to stop."""
        self.streams.close_receiving_stream(stream_id)

    # -------------------------------------------------------------- events

    def _on_hello(self, ev: E.HelloReceived) -> None:
        settings: Settings = ev.settings  # type: ignore[assignment]
        if settings.codec != self._codec.wire_id:
            self._decoder = get_codec(settings.codec)

    def _on_readable(self, ev: E.StreamReadable) -> None:
        self.streams._on_readable(ev.stream_id)

    def _on_credit(self, ev: E.CreditGranted) -> None:
        if ev.stream_id:
            self.streams._on_writable(ev.stream_id)
        else:
            self.streams._on_slots()

    def _on_stream_opened(self, ev: E.StreamOpened) -> None:
        self.streams._on_opened(ev.stream_id)

    def _on_stream_closed(self, ev: E.StreamClosedByPeer) -> None:
        self.streams._on_closed_by_peer(ev.stream_id)

    def _on_response(self, ev: E.ResponseReceived) -> None:
        fut = self._calls.pop(ev.call_id, None)
        self._call_done()
        if fut is not None and not fut.done():
            try:
                fut.set_result(self._decoder.decode(ev.payload, ev.raw))
            except Exception as exc:
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
        if ev.payload == self._ping_token:
            self._keepalive_pong()
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

    def _on_notify(self, ev: E.NotificationReceived) -> None:
        found = self._lookup(ev.method)
        try:
            if found is None:
                fallback = self._fallback()
                if fallback is None:
                    return  # nobody to tell: notifications have no reply
                fn, kind = fallback, handler_kind(fallback)
                args: tuple[Any, ...] = ({"method": ev.method, "params": list(self._args(ev.payload, ev.raw))},)
            else:
                fn, kind = found
                args = self._args(ev.payload, ev.raw)
            if kind == SYNC:
                result = fn(*args)
                if not inspect.isawaitable(result):
                    return
            else:
                result = fn(*args)
        except Exception:
            return
        # Running notification handlers share the pending-calls limit.
        if len(self._notify_tasks) >= self._core.settings.max_pending_calls:
            if inspect.iscoroutine(result):
                result.close()
            raise LimitExceeded("too many running notification handlers")
        task = self._loop.create_task(_quiet(result))
        self._notify_tasks[task] = None
        task.add_done_callback(self._notify_done)

    def _notify_done(self, task: asyncio.Task[Any]) -> None:
        self._notify_tasks.pop(task, None)

    def _on_cancelled(self, ev: E.CallCancelled) -> None:
        task = self._tasks.get(ev.call_id)
        if task is not None:
            task.cancel()

    def _lookup(self, method: str) -> tuple[Callable[..., Any], int] | None:
        found = self._own.methods.get(method) or self._router.methods.get(method)
        return found

    def _fallback(self) -> Callable[[Any], Any] | None:
        return self._own.fallback or self._router.fallback

    def _args(self, payload: Any, raw: bool) -> tuple[Any, ...]:
        if raw:
            return (bytes(payload),)
        if not payload:
            return ()
        args = self._decoder.decode_value(payload)
        return tuple(args) if isinstance(args, (list, tuple)) else (args,)

    def _on_request(self, ev: E.RequestReceived) -> None:
        cid = ev.call_id
        try:
            found = self._lookup(ev.method)
            if found is None:
                fallback = self._fallback()
                if fallback is None:
                    self._reply_error(cid, "MethodNotFound", f"no method {ev.method!r}", ev.stream)
                    return
                if ev.method == "":
                    data = self._decoder.decode(ev.payload, ev.raw)
                else:
                    data = {"method": ev.method, "params": list(self._args(ev.payload, ev.raw))}
                fn, kind, args = fallback, handler_kind(fallback), (data,)
            else:
                fn, kind = found
                args = self._args(ev.payload, ev.raw)
        except Exception as exc:
            self._reply_error(cid, "InvalidArguments", str(exc), ev.stream)
            return
        if ev.stream or ev.channel:
            task = self._loop.create_task(self._run_stream_call(ev, fn, kind, args))
        elif kind == SYNC:
            # Sync handlers run inline: no task, the reply joins this loop iteration's message.
            try:
                result = fn(*args)
            except Exception as exc:
                self._reply_exception(cid, exc)
                return
            if not inspect.isawaitable(result):
                self._reply(cid, result)
                return
            task = self._loop.create_task(self._run_call(cid, lambda: result, ev.deadline))
        else:
            task = self._loop.create_task(self._run_call(cid, lambda: fn(*args), ev.deadline))
        self._tasks[cid] = task
        task.add_done_callback(functools.partial(self._call_task_done, cid, ev.stream or ev.channel))

    def _call_task_done(self, cid: int, stream: bool, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(cid, None)
        if cid in self._core._calls_in and not self._closed_flag:
            # Cancelled before it ran (CANCEL in the same message as its REQUEST): the
            # caller still needs the call's end, or its slot stays taken on both sides.
            if stream:
                self._core.close_stream(cid)  # a channel's input, if any
            self._reply_error(cid, "CancelledError", "call cancelled", stream)

    def _reply(self, cid: int, result: Any) -> None:
        if self._closed_flag:
            return
        try:
            payload, raw = self._codec.encode(result)
        except Exception as exc:
            self._reply_exception(cid, exc)
            return
        self._core.send_response(cid, payload, raw=raw)
        self._kick()

    def _reply_exception(self, cid: int, exc: BaseException) -> None:
        tb = "".join(_traceback.format_exception(exc)) if self._expose_tb else None
        code = getattr(exc, "code", None)
        self._reply_error(cid, type(exc).__name__, str(exc), False, code if isinstance(code, int) else None, tb)

    def _reply_error(
        self,
        cid: int,
        type_name: str,
        message: str,
        stream: bool,
        code: int | None = None,
        tb: str | None = None,
    ) -> None:
        if self._closed_flag:
            return
        core = self._core
        if stream:
            core.open_response_stream(cid)
            core.error_stream(cid, type_name, message, code)
            core.finish_call(cid)
        else:
            core.send_error(cid, type_name, message, code, tb)
        self._kick()

    async def _run_call(self, cid: int, invoke: Callable[[], Awaitable[Any]], deadline: float | None) -> None:
        try:
            if deadline is not None:
                result = await asyncio.wait_for(invoke(), deadline)
            else:
                result = await invoke()
        except asyncio.CancelledError:
            self._reply_error(cid, "CancelledError", "call cancelled", False)
            raise
        except asyncio.TimeoutError:
            self._reply_error(cid, "TimeoutError", "deadline exceeded", False)
        except Exception as exc:
            self._reply_exception(cid, exc)
        else:
            self._reply(cid, result)

    async def _run_stream_call(
        self, ev: E.RequestReceived, fn: Callable[..., Any], kind: int, args: tuple[Any, ...]
    ) -> None:
        core = self._core
        cid = ev.call_id
        manager = self.streams
        inbound: ReceiveStream[Any] | None = None
        try:
            if ev.channel:
                inbound = manager._bind_call(cid)
                args = (inbound, *args)
            try:
                source = fn(*args)
                if kind != ASYNC_GEN and inspect.isawaitable(source):
                    source = await source
                if not hasattr(source, "__aiter__"):
                    if ev.stream and kind != ASYNC_GEN:
                        source = _single(source)
                    else:
                        raise TypeError(f"handler for {ev.method!r} did not return an async iterable")
            except asyncio.CancelledError:
                if not self._closed_flag:  # the caller waits for the call's end
                    self._reply_error(cid, "CancelledError", "call cancelled", True)
                raise
            except Exception as exc:
                if not self._closed_flag:
                    core.open_response_stream(cid)
                    core.error_stream(cid, type(exc).__name__, str(exc))
                    self._kick()
                return
            if self._closed_flag:
                return
            core.open_response_stream(cid)
            await manager._send_loop(cid, source, None, None)
        finally:
            if inbound is not None:
                inbound.close()  # while the call runs: the core knows it is a channel input
            core.finish_call(cid)


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


class _Timer:
    """A keepalive deadline in a :class:`_Timers` heap; ``cancel()`` disarms it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn: Callable[[], None] | None = fn

    def cancel(self) -> None:
        self.fn = None


class _Timers:
    """One event-loop timer for the keepalive deadlines of all the connections of a
    loop (a TimerHandle per connection costs about half a KiB of an idle one)."""

    __slots__ = ("at", "handle", "heap", "loop", "seq")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, _Timer]] = []
        self.handle: asyncio.TimerHandle | None = None
        self.at = 0.0
        self.seq = 0

    def add(self, delay: float, fn: Callable[[], None]) -> _Timer:
        when = self.loop.time() + delay
        t = _Timer(fn)
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, t))
        if self.handle is None or when < self.at:
            self._arm(when)
        return t

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.at = when
        self.handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.handle = None
        heap = self.heap
        now = self.loop.time()
        while heap and heap[0][0] <= now:
            fn = heapq.heappop(heap)[2].fn
            if fn is not None:
                fn()
        while heap and heap[0][2].fn is None:
            heapq.heappop(heap)
        if heap and self.handle is None:
            self._arm(heap[0][0])


_loop_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Timers] = weakref.WeakKeyDictionary()


def _timer(loop: asyncio.AbstractEventLoop, delay: float, fn: Callable[[], None]) -> _Timer:
    timers = _loop_timers.get(loop)
    if timers is None:
        timers = _loop_timers[loop] = _Timers(loop)
    return timers.add(delay, fn)


async def _single(value: T) -> Any:
    yield value


async def _discard(ws: Any) -> None:
    try:
        async for _ in ws:
            pass
    except Exception:
        pass


async def _quiet(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception:
        pass


def _abort_transport(transport: Any) -> None:
    transport.abort()
