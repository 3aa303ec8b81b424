"""fastrpc: RPC and multiplexed streaming over WebSocket.

::

    router = fastrpc.Router()

    @router.method
    async def add(a, b):
        return a + b

    async with fastrpc.serve(router, "127.0.0.1", 8765):
        async with fastrpc.connect("ws://127.0.0.1:8765") as peer:
            assert await peer.call("add", 1, 2) == 3
"""

from __future__ import annotations

from .auth import HandshakeRequest, RequestHeaders
from .client import RetryPolicy, connect
from .exceptions import (
    AuthError,
    CallTimeout,
    ConnectionClosed,
    ErrorCode,
    FastRPCError,
    Forbidden,
    HandshakeTimeout,
    HistoryLost,
    InvalidArguments,
    InvalidCall,
    LimitExceeded,
    MethodNotFound,
    NotFastRPC,
    PayloadError,
    PayloadTooLarge,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    RemoteStreamError,
    ResumeFailed,
    SlowSubscriber,
    StreamAborted,
    StreamClosed,
    Unauthorized,
    UsageError,
)
from .frames import IMPLEMENTATION
from .peer import Response, RpcPeer, current_peer
from .protocol import Settings
from .router import Router
from .server import Server, serve
from .streams import RateLimit, ReceiveStream, StreamManager, StreamStats
from .topics import Gap, Item, Subscription

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "AuthError",
    "CallTimeout",
    "ConnectionClosed",
    "ErrorCode",
    "FastRPCError",
    "Forbidden",
    "Gap",
    "HandshakeRequest",
    "HandshakeTimeout",
    "HistoryLost",
    "InvalidArguments",
    "InvalidCall",
    "Item",
    "LimitExceeded",
    "MethodNotFound",
    "NotFastRPC",
    "PayloadError",
    "PayloadTooLarge",
    "PermissionDenied",
    "ProtocolError",
    "RateLimit",
    "ReceiveStream",
    "RemoteError",
    "RemoteStreamError",
    "RequestHeaders",
    "Response",
    "ResumeFailed",
    "RetryPolicy",
    "Router",
    "RpcPeer",
    "Server",
    "Settings",
    "SlowSubscriber",
    "StreamAborted",
    "StreamClosed",
    "StreamManager",
    "StreamStats",
    "Subscription",
    "Unauthorized",
    "UsageError",
    "connect",
    "current_peer",
    "run",
    "serve",
]


def run(main: object) -> object:
    """Run a coroutine on uvloop where available (asyncio's loop otherwise)."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # Windows
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]
