"""fastrpc.serve: a WebSocket server whose connections are :class:`RpcPeer` s."""

from __future__ import annotations

import asyncio
import http
import inspect
import os
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Union

from . import options as O
from .addresses import ws_url
from .auth import Authenticate, HandshakeRequest, RequestHeaders, refusal, run_authenticate
from .broker import Broker
from .exceptions import AuthError, ConnectionClosed, ResumeFailed
from .jsonmode import JsonPeer, welcome_message
from .log import protocol_logger, redact, warn_limited
from .log import server_logger as logger
from .options import PeerOptions
from .peer import RpcPeer, current_peer, peer_kwargs
from .protocol import Role
from .resume import session_token
from .router import Router
from .sessions import MemorySessionStore, SessionStore
from .settings import FEATURE_TOPIC_RUNS
from .static import StaticFiles
from .topics import SUBSCRIBE, TopicHub
from .transport import SUBPROTOCOL, Transport, TransportClosed, WebSocketServer, start_server

__all__ = ["Server", "serve"]

Handler = Callable[[RpcPeer], Awaitable[Any]]
Target = Union[Router, Handler]


class Server:
    """A running fastrpc server: ``async with fastrpc.serve(...) as server``.

    ``server.port`` is the bound port (useful with ``port=0``); ``server.url`` the URL
    to connect to (``wss://`` under TLS); ``server.peers`` the open connections.
    """

    def __init__(
        self,
        target: Target,
        host: str,
        port: int,
        options: PeerOptions,
        ws_kwargs: dict[str, Any],
        session_store: SessionStore[RpcPeer] | None = None,
        static: str | os.PathLike[str] | None = None,
        authenticate: Authenticate | None = None,
        broker: Broker | None = None,
    ) -> None:
        if isinstance(target, Router):
            self.router: Router | None = target
            self.handler: Handler | None = None
        elif callable(target):
            self.router = None
            self.handler = target
        else:
            raise TypeError("serve() takes a Router or an async handler(peer)")
        self.host = host
        self._port = port
        self.options = options
        self.peers: set[RpcPeer] = set()
        #: The connections in the seed's JSON mode, by client id (``to`` routing).
        self.json_peers: dict[str, JsonPeer] = {}
        self._ws_kwargs = ws_kwargs
        # Plain HTTP GETs (not upgrades) answered from a directory (static.py).
        self.static = StaticFiles(static) if static is not None else None
        self.authenticate = authenticate
        # The identity authenticate() gave each WebSocket connection, until its peer is made.
        self._identities: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._server: WebSocketServer | None = None
        self.sessions: SessionStore[RpcPeer] = session_store if session_store is not None else MemorySessionStore()
        self._grace: dict[RpcPeer, asyncio.TimerHandle] = {}
        self._resuming: set[RpcPeer] = set()
        self._tokens: dict[RpcPeer, list[bytes]] = {}  # the tokens each session is stored under
        # Tokens of sessions dropped before any frame came or left -> (until when,
        # the identity of the connection that opened the session).
        self._tombstones: dict[bytes, tuple[float, Any]] = {}
        # Topics: publish() here, peer.subscribe() on the clients (topics.py).
        self.topics = TopicHub(
            broker,
            queue_size=options.topic_queue_size,
            block_timeout=options.topic_block_timeout,
            history_size=options.topic_history_size,
            history_ttl=options.topic_history_ttl,
            pass_deliveries=options.topic_pass_deliveries,
            enc_hook=options.enc_hook,
        )
        self._subscribe = _Subscribe(self.topics)

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def detached(self) -> list[RpcPeer]:
        """Sessions whose client went away, kept for it to resume (``session_grace``)."""
        return list(self._grace)

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS (it was given ``ssl=``)."""
        return self._ws_kwargs.get("ssl") is not None

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` under TLS; an IPv6 host in brackets)."""
        return ws_url(self.host, self.port, secure=self.tls)

    async def publish(self, topic: str, item: Any) -> tuple[str, int]:
        """Send ``item`` to every subscriber of ``topic`` (on every process sharing the
        server's broker); return its ``(epoch, offset)``. See :mod:`fastrpc.topics`."""
        return await self.topics.publish(topic, item)

    async def start(self) -> Server:
        """Start listening; returns the server (``await serve(...).start()``)."""
        await self.topics.start()
        try:
            self._server = await start_server(
                self._connection,
                self.host,
                self._port,
                http=self.static,
                hook=self._authenticate if self.authenticate is not None else None,
                **self.options.websocket_kwargs(),
                **self._ws_kwargs,
            )
        except BaseException:
            await self.topics.close()  # (a broker's listener and its connections)
            raise
        return self

    async def handle(self, transport: Transport) -> None:
        """Serve one connection that was accepted elsewhere (:mod:`fastrpc.asgi`) as
        if it had come to this server, until it ends."""
        await self._connection(transport)

    def _identity(self, transport: Transport) -> Any:
        """The identity authenticate() gave this connection: kept on the transport (the
        data path's, an ASGI one), or here for websockets' own connections."""
        ws = getattr(transport, "ws", None)
        return self._identities.pop(ws, None) if ws is not None else transport.identity

    async def _authenticate(self, connection: Any, request: Any) -> Any:
        """The opening request's hook (transport.start_server) that runs ``authenticate``:
        an HTTP 401/403 answer refuses the connection before the upgrade."""
        hook = self.authenticate
        assert hook is not None
        address = connection.remote_address
        req = HandshakeRequest.from_target(request.path, RequestHeaders(request.headers.raw_items()), address)
        try:
            identity = await run_authenticate(hook, req)
            if isinstance(connection, Transport):
                connection.identity = identity
            else:  # websockets' own connection
                self._identities[connection] = identity
        except AuthError as e:
            logger.debug("connection from %s to %s refused: HTTP %d %s", address, req.path, e.status, e.reason)
            status, body = refusal(e)
            return connection.respond(http.HTTPStatus(status), body)
        except Exception:
            logger.exception("authenticate hook failed for a connection from %s", address)
            return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR, "authentication failed\n")
        return None

    async def _connection(self, transport: Transport) -> None:
        # The first message tells a fastrpc client (binary HELLO) from a client of the
        # seed's JSON protocol (text), and a new session from one being resumed. The
        # seed's clients wait for a welcome before they speak, and its responders
        # (runner.ts) never speak first: a connection silent for json_wait gets the
        # welcome (docs/json-mode.md, "Choosing the mode").
        o = self.options
        path = (transport.request_path or "/").split("?", 1)[0]
        if path in o.json_paths:
            await self._json_connection(transport, None)
            return
        wait = o.handshake_timeout if o.json_wait is None else min(o.json_wait, o.handshake_timeout)
        if transport.subprotocol == SUBPROTOCOL:
            wait = o.handshake_timeout  # a fastrpc client said so: its HELLO is coming
        client_id: str | None = None
        try:
            try:
                first = await transport.recv(wait)
            except asyncio.TimeoutError:
                if o.json_wait is None or wait >= o.handshake_timeout:
                    raise
                if self.handler is not None:
                    await self._json_connection(transport, None)  # the handler speaks first
                    return
                client_id = str(uuid.uuid4())
                await transport.send(welcome_message(client_id))
                first = await transport.recv(o.handshake_timeout - wait)
        except asyncio.TimeoutError:
            warn_limited(
                protocol_logger,
                "closing the connection with %s: no handshake within %s s (handshake_timeout)",
                transport.remote_address,
                self.options.handshake_timeout,
            )
            await transport.close(1008, "no handshake within handshake_timeout")
            return
        except (*TransportClosed, OSError):
            return
        if isinstance(first, str):
            await self._json_connection(transport, first, client_id)
            return
        identity = self._identity(transport)
        session = self._session_for(first)
        if session is not None and session.identity != identity:
            # A token presented by another identity than its session's (authenticate)
            # is as unknown: a leaked token does not hand the session over.
            session = None
        if session is not None:
            await self._resume(transport, first, session)
            return
        peer = RpcPeer(transport, Role.SERVER, router=self.router, **peer_kwargs(self.options))
        peer.identity = identity
        peer.server = self
        peer.register(SUBSCRIBE, self._subscribe)
        if self.options.resume:
            peer.on_transport_lost = self._session_lost
            token = self._tombstone(first, identity)
            if token is not None:
                # Its session was dropped before a frame came or left: this fresh one
                # is the same session, resumed at position 0.
                peer.core.session.adopt(token)
        try:
            await peer.start(self.options.handshake_timeout, first, read=self.handler is None)
        except asyncio.TimeoutError:
            await transport.close(1008, "no handshake within handshake_timeout")
            return
        except (ConnectionClosed, OSError):
            return
        self.peers.add(peer)
        peer.on_closed(self._forget)
        self._register(peer)
        logger.info("connection from %s opened (%s)", peer.remote_address, redact(transport.request_path or ""))
        try:
            if self.handler is not None:
                try:
                    result = self.handler(peer)
                    if inspect.isawaitable(result):
                        # Requests are read from the handler's first await on: the
                        # methods it registers before that answer the first call.
                        asyncio.get_running_loop().call_soon(peer.begin_reading)
                        await result
                except ConnectionClosed:
                    pass
                except Exception:
                    logger.exception("connection handler failed")
                finally:
                    peer.begin_reading()  # a plain function's handler, or a failed one
                await peer.close()
            else:
                await peer.serve_transport()
        finally:
            if self.handler is not None and not peer.closed:
                await peer.close()

    # ------------------------------------------------------- session resumption

    def _session_for(self, first: bytes) -> RpcPeer | None:
        """The live session a handshake asks to resume, if any."""
        if not self.options.resume or not len(self.sessions):
            return None
        token = session_token(first, self.options.max_frame_size)
        peer = self.sessions.get(token) if token is not None else None
        if peer is None:
            return None
        if not peer.core.session.accepts(token):  # type: ignore[arg-type]
            self.sessions.discard(token, peer)  # type: ignore[arg-type]  # replaced, and proved
            return None
        return peer

    def _register(self, peer: RpcPeer) -> None:
        """Map the tokens that may resume ``peer`` to it; forget those it had before."""
        now = peer.session_tokens()
        for token in self._tokens.get(peer, ()):
            if token not in now:
                self.sessions.discard(token, peer)
        for token in now:
            self.sessions.put(token, peer)
        if now:
            self._tokens[peer] = now

    def _forget(self, peer: RpcPeer) -> None:
        logger.info("connection from %s closed: %s", peer.remote_address, peer.close_exception)
        self.peers.discard(peer)
        for token in self._tokens.pop(peer, ()):
            self.sessions.discard(token, peer)
        handle = self._grace.pop(peer, None)
        if handle is not None:
            handle.cancel()

    def _session_lost(self, peer: RpcPeer, exc: ConnectionClosed, resumable: bool) -> bool:
        """A session lost its transport: keep it for ``session_grace`` seconds."""
        core = peer.core
        if not resumable or (core.traffic.frames_in == 0 and core.session.refused):
            # A client that asked for a session we do not know gets a new one, which
            # it drops at once to start afresh: not worth keeping.
            return False
        if core.traffic.frames_in == 0 and core.traffic.frames_out == 0 and peer.session_token is not None:
            # Nothing came or left yet (its client may not even have our answer): keep
            # a token, not a session; if the client does come back, it gets the same
            # (empty) session afresh, resumed at 0 (see _tombstone). Every token it
            # accepts: a client whose RESUME_OK was lost still holds the previous one.
            for token in peer.session_tokens():
                self._bury(token, peer.identity)
            return False
        old = self._grace.pop(peer, None)
        if old is not None:
            old.cancel()
        alone, most = _detached_bytes(peer), self.options.max_detached_replay
        if alone > most:
            # It cannot fit even alone (its replay buffer is bounded by
            # max_replay_bytes, not by this): given up at once, the others kept.
            self._expire(peer, f"it holds {alone} bytes, more than the server's max_detached_replay={most}")
            return True
        loop = asyncio.get_running_loop()
        self._grace[peer] = loop.call_later(self.options.session_grace, self._expire, peer)
        # Sessions waiting for their clients keep their replay buffers and what they
        # hold: all together within max_detached_replay, and at most
        # max_detached_sessions of them, the oldest given up first (ResumeFailed).
        options = self.options
        total = sum(map(_detached_bytes, self._grace))
        while len(self._grace) > 1 and (
            total > options.max_detached_replay or len(self._grace) > options.max_detached_sessions
        ):
            why = "max_detached_replay" if total > options.max_detached_replay else "max_detached_sessions"
            oldest = next(iter(self._grace))
            self._grace.pop(oldest).cancel()
            total -= _detached_bytes(oldest)
            self._expire(oldest, f"the server's {why} was reached")
        return True

    def _bury(self, token: bytes, identity: Any) -> None:
        loop = asyncio.get_running_loop()
        tombs = self._tombstones
        tombs[token] = (loop.time() + self.options.session_grace, identity)
        now = loop.time()
        while tombs and (len(tombs) > O.MAX_TOMBSTONES or next(iter(tombs.values()))[0] < now):
            del tombs[next(iter(tombs))]

    def _tombstone(self, first: bytes, identity: Any) -> bytes | None:
        """The token of an empty session dropped earlier that ``first`` resumes, if any
        (for the identity that opened it only: to another, the token is as unknown)."""
        tombs = self._tombstones
        token = session_token(first, self.options.max_frame_size) if tombs else None
        tomb = tombs.get(token) if token is not None else None
        if token is None or tomb is None or tomb[1] != identity:
            return None
        del tombs[token]
        return token if tomb[0] > asyncio.get_running_loop().time() else None

    def _expire(self, peer: RpcPeer, why: str = "the client did not come back in time") -> None:
        self._grace.pop(peer, None)
        if not peer.connected and not peer.closed:
            for token in self._tokens.pop(peer, ()):
                self.sessions.discard(token, peer)
            exc = ResumeFailed(f"session expired: {why}")
            peer.session_task = asyncio.get_running_loop().create_task(peer.teardown(exc))

    async def _resume(self, transport: Transport, first: bytes, peer: RpcPeer) -> None:
        """Move session ``peer`` onto this new transport (one at a time: a second
        socket presenting the token meanwhile is refused and never sees RESUME_OK)."""
        if peer in self._resuming:
            # No close handshake to wait for: a socket racing for a token it may not
            # have is told why and dropped at once.
            transport.drop(1008, "session is being resumed by another connection")
            return
        self._resuming.add(peer)
        try:
            await self._move(transport, first, peer)
        finally:
            self._resuming.discard(peer)
        if peer.transport is transport:
            await peer.serve_transport()

    async def _move(self, transport: Transport, first: bytes, peer: RpcPeer) -> None:
        old = peer.transport
        if old is not None:
            # The client saw the old connection die before we did (or a second socket
            # came with the token): drop the old one now, saying why if it can hear.
            old.drop(1008, "the session was resumed on another connection")
            try:
                await asyncio.wait_for(peer.wait_transport_done(), self.options.handshake_timeout)
            except asyncio.TimeoutError:
                return
        if peer.closed:
            return
        handle = self._grace.pop(peer, None)
        if handle is not None:
            handle.cancel()
        try:
            await peer.attach(transport, self.options.handshake_timeout, first, inline_reader=True)
        except (ConnectionClosed, asyncio.TimeoutError, OSError):
            if not peer.closed and peer.transport is None:
                self._session_lost(peer, ConnectionClosed(), True)
            return
        self._register(peer)

    async def _json_connection(self, transport: Transport, first: str | None, client_id: str | None = None) -> None:
        o = self.options
        peer = JsonPeer(
            transport,
            self.router,
            client_id=client_id,
            greeted=client_id is not None,
            relay=self.json_peers,
            relay_timeout=o.output_stall_timeout,
            dec_hook=o.dec_hook,
            **o.json_limits(),
        )
        peer.identity = self._identity(transport)
        try:
            await peer.greet()  # before the handler can say anything
        except (*TransportClosed, OSError):
            await peer.run(None)  # nothing to serve: clean up
            return
        runner = peer.start(first)
        try:
            if self.handler is not None:
                try:
                    result = self.handler(peer)  # type: ignore[arg-type]
                    if inspect.isawaitable(result):
                        await result
                except ConnectionClosed:
                    pass
                await peer.close()
            await runner
        except Exception:
            logger.exception("JSON-mode connection handler failed")
        finally:
            if not runner.done():
                runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    def stop_accepting(self) -> None:
        """Close the listening socket: no new connections, the open ones go on (a
        draining worker: :func:`fastrpc.workers.drain`)."""
        if self._server is not None:
            self._server.close(close_connections=False)

    async def close(self) -> None:
        """Stop accepting; every connection gets GOAWAY and what was queued for it
        (answers already made), then is closed (1001); wait until they are cleaned up."""
        server = self._server
        if server is None:
            await self.topics.close()
            return
        # The peers first: closing the transports at once would cut their GOAWAY and
        # output off. Then what is left (JSON-mode connections, opening handshakes).
        server.close(close_connections=False)
        await asyncio.gather(*(p.close(1001, "server shutdown") for p in list(self.peers)), return_exceptions=True)
        server.close()
        await server.wait_closed()
        await self.topics.close()

    async def serve_forever(self) -> None:
        """Serve until the server is closed (or this is cancelled)."""
        assert self._server is not None, "server not started"
        # Not the library's serve_forever(): websockets 17.0's fails on uvloop.
        await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _detached_bytes(peer: RpcPeer) -> int:
    """What a session kept for its absent client holds: its replay buffer, what the
    client made it hold (items, arguments), and its queued output."""
    core = peer.core
    return core.session.replay_bytes + core.held + core.buffered_amount + core.control_backlog


class _Subscribe:
    """The handler of the built-in ``fastrpc.subscribe``, one per server: the
    subscribing connection is the current peer. (A bound function registered per
    connection cost ~8 KiB a connection: the argument spec built for it.)"""

    __slots__ = ("__weakref__", "hub")  # weakly referable: Router.add remembers what it read of it

    def __init__(self, hub: TopicHub) -> None:
        self.hub = hub

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        peer = current_peer()  # an RpcPeer: only they have the method registered
        theirs = peer.peer_settings
        runs = theirs is not None and bool(theirs.features & FEATURE_TOPIC_RUNS)
        return self.hub.subscription(peer, *args, **kwargs, runs=runs)


def serve(
    target: Target,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    session_store: SessionStore[RpcPeer] | None = None,
    static: str | os.PathLike[str] | None = None,
    authenticate: Authenticate | None = None,
    broker: Broker | None = None,
    **options: Any,
) -> Server:
    """Serve ``target`` (a :class:`Router`, or ``async def handler(peer)`` run for each
    connection) on ``host:port``. Use as ``async with serve(...) as server`` or
    ``server = await serve(...).start()``. A handler's connection reads no request
    before the handler's first ``await``: methods it registers before that answer
    even a request sent right behind the client's handshake.

    Options: the limits of :class:`fastrpc.protocol.Settings` (``max_frame_size``,
    ``max_message_size``, ``max_streams``, ``max_pending_calls``, ...), ``codec``,
    ``streams`` (a :class:`StreamManager` used as a template), ``compression``,
    ``keepalive_interval``/``keepalive_timeout``, ``expose_tracebacks``, ``resume``
    (keep sessions for clients that reconnect, ``session_grace`` seconds; in
    ``session_store``, in memory by default); ``json_wait`` and ``json_paths`` (how
    clients of the seed's JSON protocol are told apart: docs/json-mode.md);
    ``introspection`` (answer the reserved call ``fastrpc.methods`` with the method
    list, :mod:`fastrpc.introspection`; on by default); ``enc_hook``/``dec_hook``
    (custom payload types, :mod:`fastrpc.codec`); ``broker`` (where topics live: a
    :class:`fastrpc.broker.MemoryBroker` by default, a
    :class:`fastrpc.redis_broker.RedisBroker` to share them between processes) and
    ``topic_history_size``/``topic_history_ttl``/``topic_queue_size``/
    ``topic_block_timeout``/``topic_pass_deliveries`` (:class:`fastrpc.topics.TopicHub`); ``busy_poll``
    (seconds the loop polls after each write instead of sleeping, on a connection
    whose reads come within that time: lower latency for CPU,
    :mod:`fastrpc.polling`); others go to ``websockets.asyncio.server.serve``.

    ``static``: a directory whose files are served over plain HTTP GET on the same
    port, for requests that are not WebSocket upgrades (:mod:`fastrpc.static`).
    An IPv6 ``host`` is given bare (``"::1"``); :attr:`Server.url` brackets it.

    TLS: ``ssl=`` an :class:`ssl.SSLContext` with the server's certificate
    (``ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH);
    ctx.load_cert_chain(cert, key)``); ``server.url`` then says ``wss://``.

    ``authenticate(request) -> identity``: runs at the WebSocket handshake, before the
    upgrade, with a :class:`fastrpc.HandshakeRequest` (path, query, headers); it
    accepts with an identity (``peer.identity`` in handlers) or refuses with HTTP
    401/403 (raise :class:`fastrpc.Unauthorized` / :class:`fastrpc.Forbidden`;
    returning None is 401). See :mod:`fastrpc.auth`.
    """
    opts, ws_kwargs = PeerOptions.split(options)
    return Server(target, host, port, opts, ws_kwargs, session_store, static, authenticate, broker)
