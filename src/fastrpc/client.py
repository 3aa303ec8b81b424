"""fastrpc.connect: open a connection to a fastrpc server, optionally one that
reconnects and resumes its session (the seed's RetrySocket, and more)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

from . import options as O
from .exceptions import AuthError, ConnectionClosed, Forbidden, HandshakeTimeout, NotFastRPC, ResumeFailed, Unauthorized
from .jsonclient import WELCOME_TIMEOUT, open_json
from .jsonmode import JsonPeer
from .log import client_logger as logger
from .log import redact
from .options import PeerOptions
from .peer import RpcPeer, peer_kwargs
from .protocol import Role, SessionLost
from .router import Router
from .transport import OPEN_FAILED, SUBPROTOCOL, Transport, open_connection

__all__ = ["RetryPolicy", "connect"]

P = TypeVar("P", RpcPeer, JsonPeer)


@dataclass
class RetryPolicy:
    """How a client reconnects after its connection drops.

    The first retry is immediate; then delays grow from ``initial_delay`` by
    ``multiplier`` up to ``max_delay``, each scaled by a random factor within
    ``1 ± jitter`` so that many clients do not come back in lockstep. A connection
    that drops within a second of coming back (``RETRY_STABLE``) counts as a failed
    attempt: the delays go on growing, and ``max_attempts`` counts it.
    ``max_attempts`` None retries for ever; when attempts run out every call and
    stream fails with :class:`fastrpc.ConnectionClosed` ("gave up reconnecting ...").

    ``resume``: ask the server to keep the session (it must be served with
    ``resume=True``); streams and calls then continue across the drop with nothing lost
    or repeated. When the session cannot be resumed they fail with
    :class:`fastrpc.ResumeFailed`, and new calls work on the new connection.

    Hooks (plain callables, any may be None): ``on_connected(peer)``,
    ``on_disconnected(peer, exc)``, ``on_reconnecting(peer, attempt, delay)``,
    ``on_give_up(peer, exc)``.
    """

    initial_delay: float = O.RETRY_INITIAL_DELAY
    max_delay: float = O.RETRY_MAX_DELAY
    multiplier: float = O.RETRY_MULTIPLIER
    jitter: float = O.RETRY_JITTER
    max_attempts: int | None = None
    resume: bool = True
    on_connected: Callable[[RpcPeer], Any] | None = None
    on_disconnected: Callable[[RpcPeer, BaseException], Any] | None = None
    on_reconnecting: Callable[[RpcPeer, int, float], Any] | None = None
    on_give_up: Callable[[RpcPeer, BaseException], Any] | None = None

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within 0..1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1 is the first retry)."""
        if attempt <= 1:
            return 0.0
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 2))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


def _stop_reconnecting(peer: RpcPeer) -> bool:
    """Whether a reconnect must stop: the peer is closing, or the reconnect task was
    cancelled. ``close()`` settles the handshake's future with ConnectionClosed, then
    cancels the reconnect task, and ``asyncio.wait_for`` (3.11) then raises the
    future's exception, not CancelledError: a loop that took it for a failed attempt
    went on for ever, and close() with it."""
    task = asyncio.current_task()
    return peer.closed or peer.closing or (task is not None and task.cancelling() > 0)


def _call_hook(hook: Callable[..., Any] | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:  # a hook's bug must not break the connection
        logger.exception("reconnect hook failed")


class connect(Generic[P]):
    """Connect to ``url``; ``async with connect(url) as peer`` or ``peer = await connect(url)``.

    Options as for :func:`fastrpc.serve`, plus ``router`` for methods the server may
    call back on this client, and ``reconnect`` (a :class:`RetryPolicy`) for a
    connection that comes back by itself after it drops. Others go to
    ``websockets.asyncio.client.connect``: ``additional_headers={"Authorization": ...}``
    for a server's ``authenticate`` hook, ``ssl=`` an :class:`ssl.SSLContext` for a
    ``wss://`` URL (by default the system's trusted certificates are used).

    ``protocol="json"``: speak the seed's JSON protocol instead (to the seed's
    servers, or a fastrpc server's JSON mode); the peer is a
    :class:`fastrpc.jsonmode.JsonPeer` (:mod:`fastrpc.jsonclient`, docs/json-mode.md).
    ``welcome_timeout``: how long it waits for the server's welcome.

    Fails with :class:`fastrpc.HandshakeTimeout` (no fastrpc handshake within
    ``handshake_timeout``), :class:`fastrpc.NotFastRPC` (the server speaks another
    protocol), :class:`fastrpc.Unauthorized` / :class:`fastrpc.Forbidden` (the
    server refused with HTTP 401/403), or the ``OSError`` of the socket.
    """

    @overload
    def __init__(
        self: connect[RpcPeer],
        url: str,
        *,
        router: Router | None = None,
        reconnect: RetryPolicy | None = None,
        protocol: Literal["binary"] = "binary",
        **options: Any,
    ) -> None: ...

    @overload
    def __init__(
        self: connect[JsonPeer],
        url: str,
        *,
        router: Router | None = None,
        protocol: Literal["json"],
        welcome_timeout: float | None = WELCOME_TIMEOUT,
        **options: Any,
    ) -> None: ...

    def __init__(
        self,
        url: str,
        *,
        router: Router | None = None,
        reconnect: RetryPolicy | None = None,
        protocol: str = "binary",
        welcome_timeout: float | None = WELCOME_TIMEOUT,
        **options: Any,
    ) -> None:
        if protocol not in ("binary", "json"):
            raise ValueError(f"protocol is 'binary' or 'json', not {protocol!r}")
        if protocol == "json" and reconnect is not None:
            raise ValueError("reconnect is for the binary protocol (JSON mode does not reconnect)")
        self.protocol = protocol
        self.welcome_timeout = welcome_timeout
        self.url = url
        self.router = router
        self.reconnect = reconnect
        if reconnect is not None and reconnect.resume:
            options.setdefault("resume", True)
        self.options, self.ws_kwargs = PeerOptions.split(options)
        self.peer: RpcPeer | JsonPeer | None = None
        self._established = False  # the first handshake completed
        # Reconnect attempts since the last connection that stayed up, and when the
        # last one came back (RETRY_STABLE).
        self._failures = 0
        self._up_since: float | None = None

    async def _open(self) -> Transport:
        kwargs = {**self.options.websocket_kwargs(), **self.ws_kwargs}
        # Saying so spares the server its guess at the protocol (JSON clients wait
        # for a welcome): a HELLO delayed on a loaded machine is still a HELLO.
        offered: list[str] = list(kwargs.get("subprotocols") or ())
        kwargs["subprotocols"] = [SUBPROTOCOL, *(p for p in offered if p != SUBPROTOCOL)]
        return await open_connection(self.url, **kwargs)

    async def _connect(self) -> RpcPeer:
        """Open the first connection: with a RetryPolicy, a failed attempt (refused,
        or cut during its handshake) is retried as the policy says; every failed
        attempt is torn down, so nothing keeps running when connect() raises."""
        policy = self.reconnect
        attempt = 0
        while True:
            attempt += 1
            peer: RpcPeer | None = None
            self._established = False
            try:
                transport = await asyncio.wait_for(self._open(), self.options.handshake_timeout)
                peer = RpcPeer(transport, Role.CLIENT, router=self.router, **peer_kwargs(self.options))
                if policy is not None:
                    peer.on_transport_lost = self._lost
                await peer.start(self.options.handshake_timeout)
                break
            except (ConnectionClosed, *OPEN_FAILED) as e:
                if peer is not None:
                    await peer.teardown(ConnectionClosed("the first handshake failed"))
                if policy is None or (policy.max_attempts is not None and attempt >= policy.max_attempts):
                    better = self._explain(e, peer)
                    if better is e:
                        raise
                    raise better from e
                delay = policy.delay(attempt + 1)
                logger.debug("first connection to %s failed (%r); retrying in %.2f s", redact(self.url), e, delay)
                await asyncio.sleep(delay)
            except BaseException:
                if peer is not None:
                    await peer.teardown(ConnectionClosed("connect() was cancelled"))
                raise
        self._established = True
        self.peer = peer
        where = redact(self.url)  # (no ?token= in the log: docs/security.md)
        logger.debug("connected to %s", where)
        peer.on_closed(lambda p: logger.debug("connection to %s closed: %s", where, p.close_exception))
        if policy is not None:
            _call_hook(policy.on_connected, peer)
            if not peer.connected and not peer.closed:
                # Lost in the loop pass that completed the handshake: reconnect now.
                self._lost(peer, ConnectionClosed("lost right after the first handshake"), True)
        return peer

    def _explain(self, e: BaseException, peer: RpcPeer | None) -> BaseException:
        """The exception connect() raises for a failed first connection: one that says
        what went wrong and what to change."""
        url = self.url
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            body = getattr(getattr(e, "response", None), "body", b"") or b""
            reason = bytes(body).decode("utf-8", "replace").strip() if isinstance(body, (bytes, bytearray)) else ""
            if status == 401:
                return Unauthorized(reason or f"{url} wants credentials (additional_headers=...)")
            if status == 403:
                return Forbidden(reason or f"{url} refused these credentials")
            if status >= 400:
                return AuthError(reason or f"{url} refused the WebSocket upgrade", status)
            return NotFastRPC(f"{url} answered HTTP {status} instead of a WebSocket upgrade: it does not speak fastrpc")
        if isinstance(e, asyncio.TimeoutError):
            limit = self.options.handshake_timeout
            if peer is None:
                return HandshakeTimeout(f"could not open a WebSocket to {url} within {limit} s (handshake_timeout)")
            return HandshakeTimeout(
                f"{url} sent no fastrpc handshake within {limit} s (handshake_timeout): "
                "the server is silent or does not speak fastrpc"
            )
        if isinstance(e, ConnectionClosed) and peer is not None and e.reason.startswith("protocol error: "):
            detail = e.reason[len("protocol error: ") :]
            if "does not speak fastrpc" in detail:
                return NotFastRPC(f"{url}: {detail}", e.code)
            return NotFastRPC(f"{url} does not speak fastrpc: {detail}", e.code)
        return e

    def _lost(self, peer: RpcPeer, exc: ConnectionClosed, resumable: bool) -> bool:
        """The transport dropped: reconnect in the background (keeps the peer)."""
        if not self._established:
            return True  # during the first handshake: attach() fails, connect() cleans up
        task = peer.session_task
        if task is not None and not task.done():
            return True  # a reconnect is under way; it handles this failure
        assert self.reconnect is not None
        _call_hook(self.reconnect.on_disconnected, peer, exc)
        peer.session_task = asyncio.get_running_loop().create_task(self._reconnect(peer, exc, resumable))
        return True

    async def _reconnect(self, peer: RpcPeer, exc: ConnectionClosed, resumable: bool) -> None:
        policy = self.reconnect
        assert policy is not None
        if not resumable:
            # Nothing to resume: what was in flight is lost with the connection.
            await peer.reset_session(exc)
        last: BaseException = exc
        loop = asyncio.get_running_loop()
        if self._up_since is None or loop.time() - self._up_since >= O.RETRY_STABLE:
            self._failures = 0  # it stayed up: this drop is a first one
        self._up_since = None
        while True:
            if _stop_reconnecting(peer):
                return
            self._failures += 1
            attempt = self._failures
            if policy.max_attempts is not None and attempt > policy.max_attempts:
                err = ConnectionClosed(f"gave up reconnecting after {attempt - 1} attempts: {last}")
                _call_hook(policy.on_give_up, peer, err)
                await peer.teardown(err)
                return
            delay = policy.delay(attempt)
            _call_hook(policy.on_reconnecting, peer, attempt, delay)
            if delay:
                await asyncio.sleep(delay)
            try:
                transport = await asyncio.wait_for(self._open(), self.options.handshake_timeout)
            except OPEN_FAILED as e:
                last = e
                continue
            if _stop_reconnecting(peer):
                transport.abort()  # (opened as the peer closed)
                return
            try:
                await peer.attach(transport, self.options.handshake_timeout)
                if not peer.connected:
                    # Lost again right after its handshake (in the same loop pass):
                    # nobody else reconnects, this loop goes on.
                    last = ConnectionClosed("lost right after the resume handshake")
                    continue  # (a failed attempt: the backoff goes on)
            except SessionLost:
                if _stop_reconnecting(peer):
                    return
                await peer.reset_session(
                    ResumeFailed("the session could not be resumed (it expired, or the server restarted)")
                )
                self._failures = 0  # a fresh session next, at once
                continue
            except (ConnectionClosed, *OPEN_FAILED) as e:
                last = e
                if _stop_reconnecting(peer):
                    return
                if isinstance(e, ConnectionClosed) and peer.core.closed:
                    # The server broke the protocol in its handshake (a RESUME_OK we
                    # refuse): the session is over for good, as on any protocol error.
                    # What was in flight fails with it; the next attempt starts afresh.
                    await peer.reset_session(e)
                continue
            self._up_since = loop.time()
            _call_hook(policy.on_connected, peer)
            return

    async def _open_peer(self) -> Any:  # P: RpcPeer, or JsonPeer for protocol="json"
        if self.protocol == "json":
            peer = await open_json(self.url, self.router, self.options, self.ws_kwargs, self.welcome_timeout)
            self.peer = peer
            return peer
        return await self._connect()

    def __await__(self) -> Generator[Any, None, P]:
        return self._open_peer().__await__()

    async def __aenter__(self) -> P:
        peer: P = await self._open_peer()
        return peer

    async def __aexit__(self, *exc: object) -> None:
        if self.peer is not None:
            await self.peer.close()
