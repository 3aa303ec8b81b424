"""fastrpc.serve: a WebSocket server whose connections are :class:`RpcPeer` s."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Union

from . import options as O
from .broker import Broker
from .exceptions import ConnectionClosed, ResumeFailed
from .jsonmode import JsonPeer
from .options import PeerOptions
from .peer import RpcPeer, peer_kwargs
from .protocol import Role
from .resume import session_token
from .router import Router
from .sessions import MemorySessionStore, SessionStore
from .topics import SUBSCRIBE, TopicHub
from .transport import Transport, TransportClosed, WebSocketServer, start_server

__all__ = ["Server", "serve"]

logger = logging.getLogger("fastrpc.server")

Handler = Callable[[RpcPeer], Awaitable[Any]]
Target = Union[Router, Handler]


class Server:
    """A running fastrpc server: ``async with fastrpc.serve(...) as server``.

    ``server.port`` is the bound port (useful with ``port=0``); ``server.peers`` the
    open connections.
    """

    def __init__(
        self,
        target: Target,
        host: str,
        port: int,
        options: PeerOptions,
        ws_kwargs: dict[str, Any],
        session_store: SessionStore[RpcPeer] | None = None,
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
        self._ws_kwargs = ws_kwargs
        self._server: WebSocketServer | None = None
        self.sessions: SessionStore[RpcPeer] = session_store if session_store is not None else MemorySessionStore()
        self._grace: dict[RpcPeer, asyncio.TimerHandle] = {}
        self._resuming: set[RpcPeer] = set()
        self._tokens: dict[RpcPeer, list[bytes]] = {}  # the tokens each session is stored under
        # Tokens of sessions dropped before any frame came or left -> until when.
        self._tombstones: dict[bytes, float] = {}
        # Topics: publish() here, peer.subscribe() on the clients (topics.py).
        self.topics = TopicHub(
            broker,
            queue_size=options.topic_queue_size,
            history_size=options.topic_history_size,
            history_ttl=options.topic_history_ttl,
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def detached(self) -> list[RpcPeer]:
        """Sessions whose client went away, kept for it to resume (``session_grace``)."""
        return list(self._grace)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def publish(self, topic: str, item: Any) -> tuple[str, int]:
        """Send ``item`` to every subscriber of ``topic`` (on every process sharing the
        server's broker); return its ``(epoch, offset)``. See :mod:`fastrpc.topics`."""
        return await self.topics.publish(topic, item)

    async def start(self) -> Server:
        await self.topics.start()
        self._server = await start_server(
            self._connection,
            self.host,
            self._port,
            **self.options.websocket_kwargs(),
            **self._ws_kwargs,
        )
        return self

    async def _connection(self, transport: Transport) -> None:
        # The first message tells a fastrpc client (binary HELLO) from a client of the
        # seed's JSON protocol (text), and a new session from one being resumed.
        try:
            first = await transport.recv(self.options.handshake_timeout)
        except asyncio.TimeoutError:
            await transport.close(1008, "no handshake within handshake_timeout")
            return
        except (*TransportClosed, OSError):
            return
        if isinstance(first, str):
            await self._json_connection(transport, first)
            return
        session = self._session_for(first)
        if session is not None:
            await self._resume(transport, first, session)
            return
        peer = RpcPeer(transport, Role.SERVER, router=self.router, **peer_kwargs(self.options))
        peer.server = self
        peer.register(SUBSCRIBE, functools.partial(self.topics.subscription, peer))
        if self.options.resume:
            peer.on_transport_lost = self._session_lost
            token = self._tombstone(first)
            if token is not None:
                # Its session was dropped before a frame came or left: this fresh one
                # is the same session, resumed at position 0.
                peer.core.session.adopt(token)
        try:
            await peer.start(self.options.handshake_timeout, first, inline_reader=self.handler is None)
        except asyncio.TimeoutError:
            await transport.close(1008, "no handshake within handshake_timeout")
            return
        except (ConnectionClosed, OSError):
            return
        self.peers.add(peer)
        peer.on_closed(self._forget)
        self._register(peer)
        try:
            if self.handler is not None:
                try:
                    result = self.handler(peer)
                    if inspect.isawaitable(result):
                        await result
                except ConnectionClosed:
                    pass
                except Exception:
                    logger.exception("connection handler failed")
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
        self.peers.discard(peer)
        for token in self._tokens.pop(peer, ()):
            self.sessions.discard(token, peer)
        handle = self._grace.pop(peer, None)
        if handle is not None:
            handle.cancel()

    def _session_lost(self, peer: RpcPeer, exc: ConnectionClosed, resumable: bool) -> bool:
        """A session lost its transport: keep it for ``session_grace`` seconds."""
        core = peer.core
        if not resumable or (core.frames_in == 0 and core.session.refused):
            # A client that asked for a session we do not know gets a new one, which
            # it drops at once to start afresh: not worth keeping.
            return False
        if core.frames_in == 0 and core.frames_out == 0 and peer.session_token is not None:
            # Nothing came or left yet (its client may not even have our answer): keep
            # a token, not a session; if the client does come back, it gets the same
            # (empty) session afresh, resumed at 0 (see _tombstone).
            self._bury(peer.session_token)
            return False
        old = self._grace.pop(peer, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._grace[peer] = loop.call_later(self.options.session_grace, self._expire, peer)
        # Sessions waiting for their clients keep their replay buffers: all together
        # within max_detached_replay, the oldest given up first (ResumeFailed).
        while len(self._grace) > 1 and self._detached_replay() > self.options.max_detached_replay:
            oldest = next(iter(self._grace))
            self._grace.pop(oldest).cancel()
            self._expire(oldest, "the server's max_detached_replay was reached")
        return True

    def _bury(self, token: bytes) -> None:
        loop = asyncio.get_running_loop()
        tombs = self._tombstones
        tombs[token] = loop.time() + self.options.session_grace
        now = loop.time()
        while tombs and (len(tombs) > O.MAX_TOMBSTONES or next(iter(tombs.values())) < now):
            del tombs[next(iter(tombs))]

    def _tombstone(self, first: bytes) -> bytes | None:
        """The token of an empty session dropped earlier that ``first`` resumes, if any."""
        if not self._tombstones:
            return None
        token = session_token(first, self.options.max_frame_size)
        until = self._tombstones.pop(token, None) if token is not None else None
        return token if until is not None and until > asyncio.get_running_loop().time() else None

    def _detached_replay(self) -> int:
        return sum(p.core.session.replay_bytes for p in self._grace)

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
            await transport.close(1008, "session is being resumed by another connection")
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
            # The client saw the old connection die before we did: drop it now.
            old.abort()
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

    async def _json_connection(self, transport: Transport, first: str) -> None:
        o = self.options
        peer = JsonPeer(
            transport,
            self.router,
            max_message_size=o.max_message_size,
            max_item_size=o.max_frame_size,
            max_pending_calls=o.max_pending_calls,
            max_streams=o.max_streams,
            max_held_bytes=o.max_connection_memory // 2,
            max_pending_bytes=o.max_connection_memory // 2,
        )
        runner = asyncio.get_running_loop().create_task(peer._run(first))
        try:
            if self.handler is not None:
                result = self.handler(peer)  # type: ignore[arg-type]
                if inspect.isawaitable(result):
                    await result
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
        """Stop accepting, close every connection, wait until they are cleaned up."""
        if self._server is None:
            return
        self._server.close()
        await asyncio.gather(*(p.close(1001, "server shutdown") for p in list(self.peers)), return_exceptions=True)
        await self._server.wait_closed()
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


def serve(
    target: Target,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    session_store: SessionStore[RpcPeer] | None = None,
    broker: Broker | None = None,
    **options: Any,
) -> Server:
    """Serve ``target`` (a :class:`Router`, or ``async def handler(peer)`` run for each
    connection) on ``host:port``. Use as ``async with serve(...) as server`` or
    ``server = await serve(...).start()``.

    Options: the limits of :class:`fastrpc.protocol.Settings` (``max_frame_size``,
    ``max_message_size``, ``max_streams``, ``max_pending_calls``, ...), ``codec``,
    ``streams`` (a :class:`StreamManager` used as a template), ``compression``,
    ``keepalive_interval``/``keepalive_timeout``, ``expose_tracebacks``, ``resume``
    (keep sessions for clients that reconnect, ``session_grace`` seconds; in
    ``session_store``, in memory by default), ``broker`` (where topics live: a
    :class:`fastrpc.broker.MemoryBroker` by default, a
    :class:`fastrpc.redis_broker.RedisBroker` to share them between processes) and
    ``topic_history_size``/``topic_history_ttl``/``topic_queue_size``; others go to
    ``websockets.asyncio.server.serve``.
    """
    opts, ws_kwargs = PeerOptions.split(options)
    return Server(target, host, port, opts, ws_kwargs, session_store, broker)
