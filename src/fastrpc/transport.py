"""The one module that touches the WebSocket library (``websockets``, every version
``pyproject.toml`` allows): opening connections and servers, writing, draining,
closing, and its exceptions. Nothing else in fastrpc imports ``websockets``.

Writes take a fast path: while the socket's buffer is under its high-water mark, a
message is framed with the sans-I/O protocol's public API (``send_binary`` and
``data_to_send``) and written to the socket at once, with no task and no await. Past
the mark, :meth:`Transport.send` awaits the library's own ``send``, which waits for
the socket to drain.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Union

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as _ws_connect
from websockets.asyncio.server import Server as _WSServer
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as _ws_serve
from websockets.datastructures import Headers as _Headers
from websockets.exceptions import ConnectionClosed as _WSClosed
from websockets.exceptions import InvalidHandshake as _InvalidHandshake
from websockets.exceptions import WebSocketException as _WSError
from websockets.http11 import Request as _Request
from websockets.http11 import Response as _Response
from websockets.protocol import State as _State

from .static import HttpResponse

__all__ = ["OPEN_FAILED", "Transport", "TransportClosed", "WebSocketServer", "open_connection", "start_server"]

WebSocket = Union[ClientConnection, ServerConnection]
WebSocketServer = _WSServer
# The transport went away (a close frame, or the TCP connection dropped).
TransportClosed = (_WSClosed, ConnectionError)
# Opening a connection failed: refused, timed out, or a bad HTTP handshake (websockets
# 14.0 and 14.1 raise a bare EOFError when the server closes during it).
OPEN_FAILED = (OSError, EOFError, asyncio.TimeoutError, _InvalidHandshake, _WSError)
_OPEN = _State.OPEN
# Answers an HTTP request before the upgrade: (path, headers) -> a response, or None.
HttpHandler = Callable[[str, Mapping[str, str]], Awaitable[Union[HttpResponse, None]]]


class Transport:
    """One WebSocket connection, as the peer uses it."""

    __slots__ = ("_high", "_protocol", "_tcp", "ws")

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._protocol = ws.protocol
        self._tcp: asyncio.WriteTransport = ws.transport
        self._high = self._tcp.get_write_buffer_limits()[1]

    def write_now(self, msg: bytes) -> bool:
        """Write ``msg`` at once; False (nothing written) when the socket's buffer is
        past its high-water mark or the connection is not open: use :meth:`send`."""
        tcp = self._tcp
        if self._protocol.state is not _OPEN or tcp.get_write_buffer_size() > self._high:
            return False
        protocol = self._protocol
        try:
            protocol.send_binary(msg)
            for data in protocol.data_to_send():
                if data:
                    tcp.write(data)
                else:
                    tcp.write_eof()
        except Exception:
            tcp.abort()
        return True

    async def send(self, msg: bytes | str) -> None:
        """Send ``msg`` (bytes: a binary message, str: a text one), waiting for the
        socket to drain (raises TransportClosed)."""
        await self.ws.send(msg)

    def buffered(self) -> int:
        """Bytes written and not yet taken by the socket."""
        return int(self._tcp.get_write_buffer_size())

    def abort(self) -> None:
        """Drop the TCP connection (no close handshake)."""
        self._tcp.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The close handshake (never raises)."""
        try:
            await self.ws.close(code, reason)
        except Exception:
            pass

    def messages(self) -> AsyncIterator[bytes | str]:
        """The received messages, until the connection closes (TransportClosed when
        it did not close cleanly)."""
        return self.ws.__aiter__()

    async def fail(self, last: list[bytes], code: int, reason: str, patience: float = 2.0) -> None:
        """Send ``last`` (best effort, a second each), then close with ``code`` and
        ``reason``, reading and dropping what the peer still sends meanwhile (the
        library stops reading once unread messages pile up, and the peer's close frame
        would not be seen); past ``patience`` seconds, drop the connection."""
        try:
            for msg in last:
                await asyncio.wait_for(self.send(msg), 1.0)
        except Exception:  # best effort: the close frame says it too
            pass
        drain = asyncio.get_running_loop().create_task(self.discard())
        try:
            await asyncio.wait_for(self.close(code, reason[:120]), patience)
        except Exception:
            self.abort()
        finally:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)

    async def recv(self, timeout: float) -> bytes | str:
        """The next message (``asyncio.TimeoutError`` after ``timeout`` s)."""
        return await asyncio.wait_for(self.ws.recv(), timeout)

    async def discard(self) -> None:
        """Read and drop messages until the connection closes (the library stops
        reading the socket once unread messages pile up: the peer's close frame would
        never be seen)."""
        try:
            async for _ in self.ws:
                pass
        except Exception:
            pass

    @property
    def close_code(self) -> int | None:
        """The code of the peer's close frame (None: none received)."""
        rcvd = self._protocol.close_rcvd  # the sans-I/O record (websockets 14.0 has no close_code)
        return rcvd.code if rcvd is not None else None

    @property
    def close_reason(self) -> str | None:
        rcvd = self._protocol.close_rcvd
        return rcvd.reason if rcvd is not None else None

    @property
    def remote_address(self) -> Any:
        return self.ws.remote_address

    @property
    def request_path(self) -> str | None:
        """The path of the HTTP request that opened this connection (server side)."""
        request = getattr(self.ws, "request", None)
        return request.path if request is not None else None

    @property
    def request_headers(self) -> Any:
        """The headers of the HTTP request that opened this connection (server side)."""
        request = getattr(self.ws, "request", None)
        return request.headers if request is not None else None


def closed_info(exc: BaseException) -> tuple[int | None, str]:
    """``(close code, reason)`` a TransportClosed exception carries."""
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is None:
        return None, "Connection closed"
    return rcvd.code, rcvd.reason or "Connection closed"


async def open_connection(url: str, **options: Any) -> Transport:
    """Open a client connection to ``url`` (raises one of OPEN_FAILED)."""
    return Transport(await _ws_connect(url, **options))


async def start_server(
    handler: Callable[[Transport], Awaitable[None]],
    host: str,
    port: int,
    http: HttpHandler | None = None,
    **options: Any,
) -> WebSocketServer:
    """Serve WebSocket connections on ``host:port``; ``handler`` runs per connection.

    ``http(path, headers)``: answers a request before the upgrade with an
    :class:`~fastrpc.static.HttpResponse`, or None to go on (serve(..., static=DIR))."""

    async def accept(ws: ServerConnection) -> None:
        await handler(Transport(ws))

    if http is not None:
        # Requests that are not upgrades first; then the caller's own hook, if any
        # (authentication), for the upgrades.
        before = options.get("process_request")

        async def process_request(ws: ServerConnection, request: _Request) -> _Response | None:
            answer = await http(request.path, request.headers)
            if answer is not None:
                return _Response(answer.status, answer.reason, _Headers(answer.headers), answer.body)
            if before is None:
                return None
            response = before(ws, request)
            if inspect.isawaitable(response):
                response = await response
            return response  # type: ignore[no-any-return]

        options["process_request"] = process_request
    server: WebSocketServer = await _ws_serve(accept, host, port, **options)
    return server
