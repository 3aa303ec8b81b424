"""The user-facing methods of :class:`fastrpc.RpcPeer`: calls, notifications,
streams and pings. The connection machinery (transports, the reader and writer,
events, sessions) is in :mod:`fastrpc.peer`; this base class holds what a user calls.
"""

from __future__ import annotations

import asyncio
import math
import os
import weakref
from collections.abc import AsyncIterable, Callable
from typing import Any, TypeVar

from .codec import PayloadCodec
from .exceptions import CallTimeout, ConnectionClosed, ErrorCode, LimitExceeded
from .handlers import Handlers
from .protocol import DEFAULT_URGENCY, Connection, Settings
from .scheduler import check_urgency
from .streams import RateLimit, ReceiveStream, StreamId, StreamManager
from .topics import BLOCK, Subscription
from .transport import Transport

__all__ = ["PeerAPI", "Response"]

_P = TypeVar("_P", bound="PeerAPI")


def _timeout(timeout: float | None) -> float | None:
    """A call's ``timeout=``: seconds (infinite: None), never NaN."""
    if timeout is None:
        return None
    if timeout != timeout:  # (NaN compares false with everything)
        raise ValueError("timeout= is a number of seconds or None, not NaN")
    return None if timeout == math.inf else timeout


# The handler's deadline is the caller's timeout and this much more: the caller's own
# timer decides (CallTimeout), the handler's side only stops what nobody waits for.
_DEADLINE_GRACE = 0.01


class Response:
    """Result of the seed-style :meth:`RpcPeer.request`: the handler's value is ``.data``."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Response(data={self.data!r})"


class PeerAPI:
    """Calls, notifications and streams: the methods :class:`RpcPeer` offers its user."""

    # _closing: close() was called; identity: what the server's authenticate hook
    # returned for this connection (None: no hook, or the client side).
    __slots__ = ("_closing", "identity")

    # Provided by RpcPeer.
    _core: Connection
    _codec: PayloadCodec
    _loop: asyncio.AbstractEventLoop
    _calls: dict[int, asyncio.Future[Any]]
    _call_waiters: list[asyncio.Future[None]]
    _pongs: dict[bytes, asyncio.Future[None]]
    _handlers: Handlers
    streams: StreamManager

    _transport: Transport | None
    _close_exc: ConnectionClosed | None

    _closed: asyncio.Future[None]
    _closed_flag: bool
    _fresh: bool
    _writer: asyncio.Task[None] | None

    def _kick(self) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _send_call(self, core: Connection, method: str, payload: bytes, raw: bool) -> int:
        raise NotImplementedError

    async def teardown(self, exc: ConnectionClosed) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether the connection (or session) is closed for good."""
        return self._closed_flag

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called (the connection may still be closing)."""
        return self._closing

    @property
    def connected(self) -> bool:
        """Whether a transport is attached (False while a session waits to resume)."""
        return self._transport is not None and not self._closed_flag

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
            if self._transport is not None and writer is not None and not writer.done():
                try:
                    await asyncio.wait_for(asyncio.shield(writer), 2.0)
                except (asyncio.TimeoutError, Exception):
                    pass
            if self._transport is not None:
                await self._transport.close(code, reason)
            else:
                await self.teardown(ConnectionClosed(reason or "Connection closed", code))
        await self.wait_closed()

    async def __aenter__(self: _P) -> _P:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
        """The other side's address (``(host, port)``; None while detached)."""
        return self._transport.remote_address if self._transport is not None else None

    @property
    def request_path(self) -> str | None:
        """(Server side) the path of the HTTP request that opened the connection,
        query string included; None on the client side."""
        return self._transport.request_path if self._transport is not None else None

    @property
    def request_headers(self) -> Any:
        """(Server side) the headers of the HTTP request that opened the connection
        (a case-insensitive mapping: ``peer.request_headers["Authorization"]``); None
        on the client side."""
        return self._transport.request_headers if self._transport is not None else None

    def stats(self) -> dict[str, Any]:
        """What this connection tracks, for inspection and tests: the core's
        :meth:`Connection.stats`, the stream manager's ids, our calls awaiting an answer
        and the handler tasks running."""
        return {
            **self._core.stats(),
            **self.streams.tracked(),
            "peer.calls": sorted(self._calls),
            "peer.tasks": sorted(self._handlers.tasks),
            "notify_tasks": len(self._handlers.notify_tasks),
        }

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
            # (asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a
            # cancellation that lands with the answer.)
            async with asyncio.timeout(timeout) as deadline:
                await fut
        except TimeoutError:
            if not deadline.expired():
                raise
            raise CallTimeout(f"no PONG within {timeout} s (the timeout= of ping)") from None
        finally:
            self._pongs.pop(token, None)
        return self._loop.time() - start

    # ---------------------------------------------------------------- calls

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Handle calls to ``name`` on this connection with ``fn``."""
        self._handlers.own.add(name, fn)

    def match(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The seed's catch-all handler for this connection (see :meth:`Router.match`)."""
        self._handlers.own.match(fn)
        return fn

    def _encode_args(self, args: tuple[Any, ...]) -> tuple[bytes, bool]:
        if len(args) == 1 and type(args[0]) is bytes:
            return args[0], True
        return self._codec.encode_value(args), False

    def _encode_kwargs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """Arguments with keyword arguments: their map is the array's last element
        (and the request is flagged KWARGS)."""
        return self._codec.encode_value((*args, kwargs))

    async def _call_slot(self) -> None:
        while not self._core.can_call():
            self._check_open()
            fut = self._loop.create_future()
            self._call_waiters.append(fut)
            await fut
        self._check_open()

    async def call(self, method: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` on the other side and return its result:
        ``await peer.call("add", 1, 2)``, ``await peer.call("move", p, speed=2)``.

        ``timeout`` (seconds) raises :class:`fastrpc.CallTimeout` (an
        :class:`asyncio.TimeoutError`) and travels as the handler's deadline; it is
        this call's, never a keyword argument of the handler. Cancelling the awaiting
        task cancels the remote handler. A handler's exception is raised as
        :class:`fastrpc.RemoteError` (:class:`fastrpc.MethodNotFound`,
        :class:`fastrpc.InvalidArguments`, :class:`fastrpc.PermissionDenied`,
        :class:`fastrpc.InvalidCall` for what fastrpc refused).
        """
        kw = False
        if kwargs:
            payload, raw, kw = self._encode_kwargs(args, kwargs), False, True
        elif len(args) == 1 and type(args[0]) is bytes:  # _encode_args, inline
            payload = args[0]
            raw = True
        else:
            payload = self._codec.encode_value(args)
            raw = False
        if timeout is not None:
            return await self._call(method, payload, raw, timeout, kw)
        # The common case in this coroutine (no second one per call): as _call, with
        # _start_call inline (a plain call: Connection.send_call).
        core = self._core
        if self._close_exc is not None or self._closed_flag:
            self._check_open()
        try:
            if kw:
                cid = core.send_request(method, payload, kwargs=True)
                self._kick()
            elif self._fresh:  # nothing written since the last message came: maybe at once
                cid = self._send_call(core, method, payload, raw)  # (sent already, or queued)
            else:  # the rest of a batch: queued, sent with this loop pass's output
                cid = core.send_call(method, payload, raw)
                self._kick()
        except LimitExceeded:  # no call slot (the peer's max_pending_calls, or no HELLO yet)
            return await self._call(method, payload, raw, None, kw)  # waits for one
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._calls[cid] = fut
        try:
            return await fut
        except BaseException as exc:
            # (An answered call is off _calls already: whoever resolved its future took it.)
            self._calls.pop(cid, None)
            if isinstance(exc, asyncio.CancelledError):
                self._abandon(core, cid, fut)
            raise

    def _start_call(
        self, core: Connection, method: str, payload: bytes, raw: bool, timeout: float | None, kwargs: bool
    ) -> tuple[int, asyncio.Future[Any]]:
        """Queue the REQUEST (sent at once or with this loop pass's output); the call's
        id and the future its answer resolves."""
        if self._close_exc is not None or self._closed_flag:
            self._check_open()  # (a closed core: send_request raises)
        cid = core.send_request(method, payload, raw=raw, timeout=timeout, kwargs=kwargs)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._calls[cid] = fut
        self._kick()
        return cid, fut

    def _abandon(self, core: Connection, cid: int, fut: asyncio.Future[Any]) -> None:
        """The caller gave up (cancelled) before the answer: CANCEL the call."""
        if not fut.done() or fut.cancelled():
            core.cancel_call(cid)
            self._kick()

    async def _call(self, method: str, payload: bytes, raw: bool, timeout: float | None, kwargs: bool = False) -> Any:
        timeout = _timeout(timeout)
        if timeout is None:
            core = self._core
            if not core.can_call():
                await self._call_slot()
                core = self._core  # a new session's, after a reset
            cid, fut = self._start_call(core, method, payload, raw, None, kwargs)
            try:
                return await fut
            except asyncio.CancelledError:
                self._abandon(core, cid, fut)
                raise
            finally:
                self._calls.pop(cid, None)
        # The timeout covers the wait for a call slot too; what is left of it is the
        # handler's deadline. (asyncio.timeout, not wait_for: on 3.11 wait_for may
        # swallow a cancellation that lands with the answer.)
        late = self._loop.time() + timeout
        if not self._core.can_call():
            await self._call_slot_by(late, method, timeout, "call")
        started: tuple[Connection, int, asyncio.Future[Any]] | None = None
        try:
            async with asyncio.timeout_at(late) as deadline:
                core = self._core  # (after a wait for a slot: a new session's, if it was reset)
                left = max(0.0, late - self._loop.time()) + _DEADLINE_GRACE
                started = (core, *self._start_call(core, method, payload, raw, left, kwargs))
                return await started[2]
        except TimeoutError:
            if not deadline.expired() or started is None:
                raise  # the handler's own TimeoutError, not ours (started: no await before)
            core, cid, _ = started
            core.cancel_call(cid)
            self._kick()
            raise CallTimeout(
                f"call to {method!r} got no answer within {timeout} s (its timeout= argument); "
                "it was cancelled on the other side"
            ) from None
        except asyncio.CancelledError:
            if started is not None:
                self._abandon(*started)
            raise
        finally:
            if started is not None:
                self._calls.pop(started[1], None)

    async def _call_slot_by(self, late: float, method: str, timeout: float, what: str) -> None:
        """Wait for a call slot until the loop time ``late``, the end of the call's
        ``timeout`` (seconds); :class:`CallTimeout` if none came by then (the call
        was not sent), saying why there was none. ``what``: "call" or "streaming call",
        for the message. (asyncio.timeout_at, not wait_for; a TimeoutError that is not
        this deadline's passes as it is.)"""
        try:
            async with asyncio.timeout_at(late) as deadline:
                await self._call_slot()
        except TimeoutError:
            if not deadline.expired():
                raise
            if self.connected and not self._core.awaiting_hello:
                why = "the other side's max_pending_calls were all taken"
            else:  # a dropped connection's calls wait for the next one (a reconnecting client)
                why = "the connection was down, being re-established by the client's reconnect= policy"
            raise CallTimeout(
                f"{what} to {method!r} found no call slot within {timeout} s (its timeout= argument; {why}): "
                "it was not sent"
            ) from None

    async def request(self, data: Any, *, timeout: float | None = None) -> Response:
        """The seed's request: ``data`` goes to the other side's ``match`` handler;
        its return value comes back as ``Response.data``."""
        payload, raw = self._codec.encode(data)
        return Response(await self._call("", payload, raw, timeout))

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a one-way call: no result, no error comes back."""
        self._check_open()
        if kwargs:
            self._core.send_notification(method, self._encode_kwargs(args, kwargs), kwargs=True)
        else:
            payload, raw = self._encode_args(args)
            self._core.send_notification(method, payload, raw=raw)
        self._kick()

    def stream(self, method: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> ReceiveStream[Any]:
        """Call a streaming method: ``async for item in peer.stream("ticks", 10)``.

        The call is sent on the first iteration; leaving the loop (and dropping the
        stream), ``aclose()`` or ``async with`` cancel it on the other side.
        ``kwargs``: the method's keyword arguments. ``timeout`` (seconds, from the
        first iteration) bounds the whole call, its last item included: once it
        passes, the call is cancelled and the iteration raises
        :class:`fastrpc.CallTimeout`; it travels as the handler's deadline too (the
        handler is cancelled there, and its stream ends with ``TimeoutError``).
        """
        if kwargs:
            return self._stream_call(method, self._encode_kwargs(args, kwargs), False, None, timeout, True)
        payload, raw = self._encode_args(args)
        return self._stream_call(method, payload, raw, None, timeout)

    def channel(
        self,
        method: str,
        items: AsyncIterable[Any],
        /,
        *args: Any,
        priority: int = DEFAULT_URGENCY,
        rate: RateLimit | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> ReceiveStream[Any]:
        """Open a bidirectional stream: ``items`` go to the handler (its first
        argument), whose yielded items come back through the returned stream.
        ``timeout``: the whole call's, as for :meth:`stream`."""
        check_urgency(priority)  # now, not once the call is sent (it would hang)
        if kwargs:
            return self._stream_call(
                method, self._encode_kwargs(args, kwargs), False, (items, priority, rate), timeout, True
            )
        payload, raw = self._encode_args(args)
        return self._stream_call(method, payload, raw, (items, priority, rate), timeout)

    def _stream_call(
        self, method: str, payload: bytes, raw: bool, channel: Any, timeout: float | None, kwargs: bool = False
    ) -> ReceiveStream[Any]:
        self._check_open()
        timeout = _timeout(timeout)

        async def start(stream: ReceiveStream[Any]) -> None:
            late: float | None = None
            if timeout is None:
                await self._call_slot()
            else:  # the timeout covers the wait for a call slot too
                late = self._loop.time() + timeout
                await self._call_slot_by(late, method, timeout, "streaming call")
            left = None if late is None else max(0.0, late - self._loop.time())
            core = self._core
            cid = core.send_request(
                method,
                payload,
                raw=raw,
                stream=True,
                channel=channel is not None,
                timeout=None if left is None else left + _DEADLINE_GRACE,
                kwargs=kwargs,
            )
            self.streams.bind_call(cid, stream=stream)
            if channel is not None:
                items, priority, rate = channel
                if priority != DEFAULT_URGENCY:
                    core.set_urgency(cid, priority)
                self.streams.start_sender(cid, items, rate)
            self._kick()
            if left is not None:
                expired = CallTimeout(
                    f"streaming call to {method!r} did not finish within {timeout} s (its timeout= argument); "
                    "it was cancelled on the other side"
                )
                # (A weak reference: a stream dropped before its timeout is not kept.)
                self._loop.call_later(left, self.streams.expire_call, weakref.ref(stream), expired)

        return self.streams.call_stream(start)

    def subscribe(
        self,
        topic: str,
        since: tuple[str, int] | None = None,
        *,
        policy: str = BLOCK,
        key: str | None = None,
        queue_size: int | None = None,
    ) -> Subscription:
        """Subscribe to ``topic`` on the server: ``async for item in
        peer.subscribe("prices")`` (see :class:`fastrpc.topics.Subscription`).

        ``since``: ``(epoch, offset)`` of the last item seen (``sub.position``): the
        items after it come first, from the topic's history, or
        :class:`fastrpc.HistoryLost`. ``policy`` when this subscriber falls
        ``queue_size`` items behind (at most the server's ``topic_queue_size``):
        ``"block"`` (the publisher waits), ``"drop_oldest"`` (a :class:`Gap` event
        counts what was dropped), ``"latest"`` (only the newest item per ``key``, a
        field of dict items), ``"disconnect"`` (:class:`fastrpc.SlowSubscriber`).
        """
        return Subscription(self, topic, since, policy=policy, key=key, queue_size=queue_size)

    # -------------------------------------------------------------- streams

    async def send_stream(
        self,
        source: AsyncIterable[Any],
        stream_id: StreamId | None = None,
        *,
        priority: int = DEFAULT_URGENCY,
        rate: RateLimit | None = None,
    ) -> StreamId:
        """Send ``source``'s items as a stream; return the stream id at once.

        ``stream_id``: None (a new id), an int of this side's parity, or any string
        (a name the receiver gives :meth:`receive_stream`; docs/protocol.md, "Named
        streams").

        ``priority``: urgency 0 (first) to 7, default 3. ``rate``: a
        :class:`RateLimit`. An exception raised by ``source`` reaches the receiver.
        """
        self._check_open()
        return await self.streams.send_stream(source, stream_id, priority=priority, rate=rate)

    def receive_stream(self, stream_id: StreamId | None = None) -> tuple[StreamId | None, ReceiveStream[Any]]:
        """``(stream_id, stream)`` for an incoming stream; see
        :meth:`StreamManager.receive_stream`."""
        return self.streams.receive_stream(stream_id)

    async def accept_stream(self) -> tuple[int, ReceiveStream[Any]]:
        """Wait for the next incoming stream that nobody has claimed."""
        return await self.streams.accept_stream()

    def new_stream_id(self) -> int:
        """Allocate a stream id to announce before :meth:`send_stream` uses it."""
        return self._core.next_id()

    def abort_stream(self, stream_id: StreamId) -> bool:
        """Stop an outgoing stream; the receiver gets :class:`fastrpc.StreamAborted`."""
        return self.streams.abort_stream(stream_id)

    def close_receiving_stream(self, stream_id: StreamId) -> None:
        """Stop reading an incoming stream; its sender is told to stop."""
        self.streams.close_receiving_stream(stream_id)
