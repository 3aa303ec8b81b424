"""fastrpc inside an ASGI server: ``fastrpc.asgi.app(router, **options)``.

::

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    import fastrpc, fastrpc.asgi

    router = fastrpc.Router()
    ...
    app = Starlette(routes=[WebSocketRoute("/rpc", fastrpc.asgi.app(router))])
    # uvicorn module:app  ->  fastrpc.connect("ws://host:8000/rpc")

The application speaks the ASGI WebSocket protocol (uvicorn, hypercorn, daphne;
mounted in Starlette or FastAPI with ``WebSocketRoute`` or ``Mount``). Each
connection is served exactly as :func:`fastrpc.serve` serves one: the same options
and limits (``max_message_size`` is checked here too, whatever the ASGI server
allows), the seed's JSON mode, session resumption. Flow control and backpressure
are fastrpc's own; the ASGI server's ``send`` waiting for its socket to drain is
the transport's drain.

``authenticate`` (optional): ``authenticate(request) -> identity`` (sync or async)
runs before the WebSocket is accepted, with an :class:`AsgiRequest` (``path``,
``query``, case-insensitive ``headers``, ``remote_address``). It accepts by returning
an identity (anything but None or False); it refuses by returning None or False
(HTTP 401), by raising :class:`fastrpc.AuthError` (its ``status``, 429 say, and
``reason``, as under ``serve``), an exception whose ``status`` attribute is 401 or 403
(:class:`AuthenticationRequired` is 401) or a :class:`PermissionError` (403); any
other exception is logged and answered with 500. The refusal is a real HTTP response
where the ASGI server supports the ``websocket.http.response`` extension (uvicorn
does), else the close-before-accept that ASGI servers turn into 403. The identity is
kept on the transport and given to the peer: ``fastrpc.current_peer().identity`` in a handler.
The contract is the one of ``serve(..., authenticate=)``, so one hook serves both.

Topics (``app.server.publish()``, ``peer.subscribe()`` on the clients) start at the
lifespan startup, or at the first WebSocket connection when the lifespan does not reach
the application (mounted in Starlette: call :meth:`AsgiApp.close` from its lifespan).
``broker=`` (a :class:`fastrpc.redis_broker.RedisBroker`) shares them between the ASGI
server's worker processes, as under ``serve``; it starts and closes with the topics.

What the ASGI server owns and fastrpc cannot bound from here: its own message size
limit (uvicorn ``--ws-max-size``, keep it at least ``max_message_size``), its
receive queue (``--ws-max-queue``) and its WebSocket pings (``--ws-ping-interval``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Union
from urllib.parse import parse_qs

from . import options as O
from .auth import RequestHeaders, refusal
from .broker import Broker
from .exceptions import AuthError
from .options import PeerOptions
from .peer import RpcPeer, peer_kwargs
from .router import Router
from .server import Handler, Server
from .sessions import SessionStore
from .transport import SUBPROTOCOL, Transport, too_large

__all__ = ["AsgiApp", "AsgiRequest", "AsgiTransport", "AuthenticationRequired", "app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Authenticate = Callable[["AsgiRequest"], Any]

logger = logging.getLogger("fastrpc.server")


class AuthenticationRequired(PermissionError):
    """Raised by an ``authenticate`` hook: refuse with HTTP 401 (403 for a plain
    :class:`PermissionError`)."""

    status = 401


def _headers(raw: Any) -> RequestHeaders:
    """An ASGI scope's headers (latin-1 byte pairs) as the opening request's."""
    return RequestHeaders((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw)


def _request_path(scope: Scope) -> str:
    """The request's path, the mount's prefix (``root_path``) included once. ASGI's
    ``path`` includes ``root_path``; uvicorn 0.35's websockets-sansio protocol under
    ``--root-path`` leaves it out (Kludex/uvicorn#2825), so it is added only where it
    is missing (as Starlette does)."""
    path: str = scope.get("path", "/") or "/"
    root: str = scope.get("root_path", "") or ""
    if root and not (path == root or path.startswith(root.rstrip("/") + "/")):
        path = root.rstrip("/") + path
    return path


class AsgiRequest:
    """The HTTP request that asks for a WebSocket, as ``authenticate`` sees it:
    ``path`` (without the query string), ``query`` (``{name: [values]}``),
    ``headers`` (case-insensitive), ``remote_address`` (the client's ``(host, port)``),
    and the ASGI ``scope``."""

    __slots__ = ("headers", "path", "query", "remote_address", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.path: str = _request_path(scope)
        self.query: dict[str, list[str]] = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        self.headers: Mapping[str, str] = _headers(scope.get("headers", ()))
        self.remote_address: Any = scope.get("client")

    def __repr__(self) -> str:
        return f"AsgiRequest(path={self.path!r}, remote_address={self.remote_address!r})"


class AsgiTransport(Transport):
    """One ASGI WebSocket connection, behind the interface :class:`RpcPeer` uses
    (:class:`fastrpc.transport.Transport`).

    Writes are queued and sent by one task, awaiting the ASGI server's ``send``
    (which waits for its socket to drain); :meth:`write_now` refuses past
    ``write_limit`` queued bytes, and the peer then waits in :meth:`send`. Received
    messages are read by one task and fed to the peer (:meth:`Transport.feed`); while
    the peer pauses reading, that task stops taking messages, the ASGI server's own
    queue fills and it stops reading the socket. A message larger than ``max_size``
    (the connection's ``max_message_size``) closes it with 1009, the reason naming
    its size and the option (:func:`fastrpc.transport.too_large`).
    """

    __slots__ = (
        "_closed",
        "_code",
        "_done",
        "_max_size",
        "_outbox",
        "_pump",
        "_queued",
        "_reader",
        "_reason",
        "_receive",
        "_room",
        "_send",
        "_sending",
        "_write_limit",
        "scope",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        max_size: int = O.MAX_MESSAGE_SIZE,
        write_limit: int = O.WRITE_LIMIT,
        max_queue: int = O.WS_MAX_QUEUE,
        identity: Any = None,
    ) -> None:
        super().__init__(max_queue)
        self.scope = scope
        self.identity = identity  # what authenticate() returned
        self._receive = receive
        self._send = send
        self._max_size = max_size
        self._write_limit = write_limit
        self._outbox: deque[bytes | str] = deque()
        self._queued = 0
        self._sending = 0  # bytes of send() calls the ASGI server has not taken yet
        self._pump: asyncio.Task[None] | None = None
        self._done: asyncio.Event = asyncio.Event()  # the outbox is empty
        self._done.set()
        self._closed = False  # we sent (or are sending) the close
        self._code: int | None = None
        self._reason: str | None = None
        self._room = asyncio.Event()  # reading is not paused
        self._room.set()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    # ---------------------------------------------------------------- input

    async def _read(self) -> None:
        try:
            while True:
                if not self._room.is_set():
                    await self._room.wait()
                msg = await self._receive()
                kind = msg["type"]
                if kind == "websocket.receive":
                    data = msg.get("bytes")
                    if data is None:
                        data = msg.get("text") or ""
                    if len(data) > self._max_size:
                        # (A str's length is its characters: at most its UTF-8 bytes.)
                        kind = "text" if type(data) is str else ""
                        self._code, self._reason = 1009, too_large(len(data), self._max_size, kind)
                        self._end_with(self._code, self._reason)
                        await self.close(1009, self._reason)
                        return
                    self.feed(data)
                    self.read_done()
                elif kind == "websocket.disconnect":
                    if self._code is None:
                        self._code = int(msg.get("code", 1005))
                        self._reason = msg.get("reason") or ""
                    self._end_with(self._code, self._reason)
                    return
        except Exception as exc:  # the ASGI server failed: the connection is gone
            if self._code is None:
                self._code, self._reason = 1006, f"ASGI receive failed: {exc!r}"
            self._end_with(self._code, self._reason)

    def _end_with(self, code: int | None, reason: str | None) -> None:
        """The connection ended: cleanly (1000, 1001) or with a ConnectionError."""
        if code in (1000, 1001):
            self.finish(None)
        else:
            self.finish(ConnectionError(f"connection closed ({code}): {reason or 'no close frame'}"))

    def pause_reading(self) -> None:
        """Stop taking messages from the ASGI server (its queue, then the socket, fill)."""
        self._room.clear()

    def resume_reading(self) -> None:
        """Take messages from the ASGI server again."""
        self._room.set()

    # ---------------------------------------------------------------- output

    async def _asgi_send(self, msg: bytes | str) -> None:
        event: Message = (
            {"type": "websocket.send", "bytes": msg} if type(msg) is bytes else {"type": "websocket.send", "text": msg}
        )
        try:
            await self._send(event)
        except (OSError, RuntimeError) as exc:
            # uvicorn's ClientDisconnected is an OSError; once it sent a close (the
            # client broke the protocol, say), its send() raises RuntimeError.
            raise ConnectionError(f"the ASGI server could not send: {exc!r}") from None

    async def _run_pump(self) -> None:
        outbox = self._outbox
        try:
            while outbox:
                msg = outbox[0]
                await self._asgi_send(msg)
                outbox.popleft()
                self._queued -= len(msg)
        except ConnectionError:
            outbox.clear()
            self._queued = 0
        finally:
            self._done.set()

    def write_now(self, msg: bytes) -> bool:
        """Queue ``msg`` for sending; False (nothing queued) past ``write_limit``
        queued bytes or once closing: use :meth:`send`."""
        if self._closed or self._queued > self._write_limit:
            return False
        self._enqueue(msg)
        return True

    def _enqueue(self, msg: bytes | str) -> None:
        """Queue ``msg`` after what waits; the pump sends it."""
        self._outbox.append(msg)
        self._queued += len(msg)
        if self._pump is None or self._pump.done():
            self._done.clear()
            self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    async def send(self, msg: bytes | str) -> None:
        """Send ``msg`` after what is queued, waiting for the ASGI server to take it
        (raises ConnectionError when the connection is gone)."""
        await self._done.wait()
        if self._closed:
            raise ConnectionError("the connection is closing")
        self._sending += len(msg)
        try:
            await self._asgi_send(msg)
        finally:
            self._sending -= len(msg)

    def buffered(self) -> int:
        """Bytes queued or being sent, not yet taken by the ASGI server (whose
        ``send`` waits while its socket's buffer is full: the peer does not read)."""
        return self._queued + self._sending

    # ---------------------------------------------------------------- closing

    async def fail(self, last: list[bytes], code: int, reason: str, patience: float = 2.0) -> None:
        """As :meth:`Transport.fail`: ``last`` (the GOAWAY saying why), then the close
        with ``code`` and ``reason``, what the peer sends meanwhile read and dropped,
        the connection given up past ``patience`` seconds. ``last`` is queued after
        what waits, whatever ``write_limit`` says, and the close frame goes after it:
        a peer that does not read now (closed for it) still finds the GOAWAY before
        the close frame once it reads within ``patience``, as under ``serve``, whose
        socket buffer takes it at once. (Sent as :meth:`send` sends, it would wait
        for the queue to empty, which a peer that does not read never lets happen.)"""
        if not self._closed:
            for msg in last:
                self._enqueue(msg)
        drain = asyncio.get_running_loop().create_task(self.discard())
        try:
            # The close waits for the queue as long as patience allows, not 2 s.
            await asyncio.wait_for(self._close(code, reason[:120], None), patience)
        except Exception:
            self.abort()
        finally:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send what is queued (waiting at most 2 s for it), then the close (never
        raises)."""
        await self._close(code, reason, 2.0)

    async def _close(self, code: int, reason: str, wait: float | None) -> None:
        """The close, after what is queued (waiting for it at most ``wait`` s)."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._done.wait(), wait)
        except asyncio.TimeoutError:
            pass
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})
        except Exception:
            pass
        if self._code is None:
            self._code, self._reason = code, reason

    def abort(self) -> None:
        """Give the connection up at once: the close is sent in the background and
        :meth:`messages` ends now (an ASGI application cannot drop the TCP connection)."""
        if self._code is None:
            self._code, self._reason = 1006, "aborted"
        self._end_with(self._code, self._reason)
        if self._pump is not None:
            self._pump.cancel()
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self.close(1011, "aborted"))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def stop(self) -> None:
        """(The ASGI app) the connection's handler returned: stop the tasks."""
        tasks = [t for t in (self._reader, self._pump) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def close_code(self) -> int | None:
        """The code of the close (None: not closed)."""
        return self._code

    @property
    def close_reason(self) -> str | None:
        """The reason of the close (None: not closed)."""
        return self._reason

    @property
    def remote_address(self) -> Any:
        """The client address the ASGI server reports (``scope["client"]``)."""
        return self.scope.get("client")

    @property
    def request_path(self) -> str | None:
        """The path of the request that opened this connection."""
        return _request_path(self.scope)

    @property
    def request_headers(self) -> Any:
        """The headers of the request that opened this connection (case-insensitive)."""
        return _headers(self.scope.get("headers", ()))

    @property
    def subprotocol(self) -> str | None:
        """``"fastrpc"`` when the client offered it (it was accepted), else None."""
        return SUBPROTOCOL if SUBPROTOCOL in self.scope.get("subprotocols", ()) else None


class AsgiApp:
    """The ASGI application :func:`app` returns (``await app(scope, receive, send)``).

    ``server`` is the :class:`fastrpc.Server` whose connection handling it reuses
    (``server.peers``: the open connections; ``server.options``: the options).
    Lifespan startup starts the topics and their ``broker`` (else the first WebSocket
    connection does); lifespan shutdown (or :meth:`close`) closes every connection and
    the topics (the broker with them); plain HTTP requests get 426.
    """

    def __init__(
        self,
        target: Router | Handler,
        options: PeerOptions,
        session_store: SessionStore[RpcPeer] | None = None,
        authenticate: Authenticate | None = None,
        broker: Broker | None = None,
    ) -> None:
        # host/port are not used: connections come from the ASGI server.
        self.server = Server(target, "asgi", 0, options, {}, session_store, broker=broker)
        self.options = options
        self.authenticate = authenticate
        self._starting: asyncio.Task[None] | None = None  # the topics' start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            body = b"426 Upgrade Required: this is a fastrpc WebSocket endpoint\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": 426,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"upgrade", b"websocket")],
                }
            )
            await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    logger.exception("fastrpc.asgi: starting the topics failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        """Start what the connections share: the topics' delivery (``server.publish``
        reaches the subscribers from then on). Once, until :meth:`close`; the lifespan
        startup does it, else the first WebSocket connection."""
        loop = asyncio.get_running_loop()
        task = self._starting
        if task is None or task.get_loop() is not loop:
            # One start that every connection arriving meanwhile waits for.
            task = self._starting = loop.create_task(self.server.topics.start())
        await asyncio.shield(task)

    async def close(self) -> None:
        """Close every connection (1001, server shutdown), wait for them, then close
        the topics (a later connection starts them again)."""
        peers = list(self.server.peers)
        await asyncio.gather(*(p.close(1001, "server shutdown") for p in peers), return_exceptions=True)
        self._starting = None
        await self.server.topics.close()

    async def _refuse(self, scope: Scope, send: Send, status: int, text: str) -> None:
        if "websocket.http.response" in scope.get("extensions", {}):
            body = text.encode()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        # The lifespan does not reach an app mounted in Starlette: start here then.
        await self.start()
        identity: Any = None
        if self.authenticate is not None:
            # The contract of serve(..., authenticate=): one hook serves both.
            request = AsgiRequest(scope)
            try:
                identity = self.authenticate(request)
                if inspect.isawaitable(identity):
                    identity = await identity
            except AuthError as exc:  # the status serve() answers (429, say)
                code, text = refusal(exc)
                await self._refuse(scope, send, code, text)
                return
            except Exception as exc:
                status = getattr(exc, "status", None)
                if status not in (401, 403):
                    if not isinstance(exc, PermissionError):
                        logger.exception("authenticate hook failed for a connection from %s", request.remote_address)
                        await self._refuse(scope, send, 500, "authentication failed\n")
                        return
                    status = 403
                reason = (
                    getattr(exc, "reason", None)
                    or str(exc)
                    or ("authentication required" if status == 401 else "forbidden")
                )
                await self._refuse(scope, send, status, f"{reason}\n")
                return
            if identity is None or identity is False:
                await self._refuse(scope, send, 401, "authentication required\n")
                return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if SUBPROTOCOL in scope.get("subprotocols", ()):
            accept["subprotocol"] = SUBPROTOCOL  # a fastrpc client: transport.SUBPROTOCOL
        await send(accept)
        o = self.options
        transport = AsgiTransport(
            scope,
            receive,
            send,
            max_size=o.max_message_size,  # (as PeerOptions.websocket_kwargs)
            write_limit=o.write_limit,
            max_queue=O.WS_MAX_QUEUE,
            identity=identity,
        )
        try:
            await self.server.handle(transport)
        finally:
            await transport.close()
            await transport.stop()


def app(
    target: Union[Router, Handler],
    *,
    session_store: SessionStore[RpcPeer] | None = None,
    authenticate: Authenticate | None = None,
    broker: Broker | None = None,
    **options: Any,
) -> AsgiApp:
    """An ASGI application serving ``target`` (a :class:`fastrpc.Router`, or
    ``async def handler(peer)`` run per connection) over WebSocket.

    ``options``: those of :func:`fastrpc.serve` that concern a connection (limits,
    ``codec``, ``compression``, keepalive, ``resume``, ``introspection``, ...);
    options for the websockets library (``ssl``, ``ping_interval``...) belong to the
    ASGI server here and are refused. ``authenticate``: see the module's doc.

    ``broker``: where the topics live, as for :func:`fastrpc.serve`: a
    :class:`fastrpc.broker.MemoryBroker` by default (this process only), a
    :class:`fastrpc.redis_broker.RedisBroker` to share them between the ASGI server's
    worker processes (``app.server.publish()`` on one reaches the subscribers of all).
    It starts with the topics (lifespan startup, else the first connection) and is
    closed with them (lifespan shutdown, :meth:`AsgiApp.close`).
    """
    opts, rest = PeerOptions.split(options)
    if rest:
        raise TypeError(
            f"fastrpc.asgi.app() got options it does not know: {', '.join(sorted(rest))} "
            "(TLS, pings and message limits of the HTTP layer are the ASGI server's settings)"
        )
    peer_kwargs(opts)  # bad limits or an unknown compression fail now, not per connection
    return AsgiApp(target, opts, session_store, authenticate, broker)
