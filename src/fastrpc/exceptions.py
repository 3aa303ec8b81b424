"""Exceptions raised by fastrpc.

Every error that crosses the public API is a subclass of :class:`FastRPCError`.
"""

from __future__ import annotations

import asyncio
import enum

__all__ = [
    "AuthError",
    "CallTimeout",
    "ConnectionClosed",
    "ErrorCode",
    "FastRPCError",
    "Forbidden",
    "HandshakeTimeout",
    "HistoryLost",
    "InvalidArguments",
    "InvalidCall",
    "LimitExceeded",
    "MethodNotFound",
    "NotFastRPC",
    "PayloadError",
    "PayloadTooLarge",
    "PermissionDenied",
    "ProtocolError",
    "RemoteError",
    "RemoteStreamError",
    "ResumeFailed",
    "SlowSubscriber",
    "StreamAborted",
    "StreamClosed",
    "Unauthorized",
    "UsageError",
]


class ErrorCode(enum.IntEnum):
    """Error codes carried by GOAWAY frames and :class:`ProtocolError`.

    Each maps to a WebSocket close code (:attr:`close_code`) so that a peer which only
    sees the close frame still learns the class of failure.
    """

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    FRAME_TOO_LARGE = 4
    LIMIT_EXCEEDED = 5
    UNSUPPORTED_VERSION = 6
    COMPRESSION_ERROR = 7
    KEEPALIVE_TIMEOUT = 8
    STREAM_STATE_ERROR = 9

    @property
    def close_code(self) -> int:
        """The WebSocket close code a connection closed with this code uses."""
        return _CLOSE_CODES.get(self, 1002)


_CLOSE_CODES = {
    ErrorCode.NO_ERROR: 1000,
    ErrorCode.PROTOCOL_ERROR: 1002,
    ErrorCode.INTERNAL_ERROR: 1011,
    ErrorCode.FLOW_CONTROL_ERROR: 1008,
    ErrorCode.FRAME_TOO_LARGE: 1009,
    ErrorCode.LIMIT_EXCEEDED: 1008,
    ErrorCode.UNSUPPORTED_VERSION: 1002,
    ErrorCode.COMPRESSION_ERROR: 1007,
    ErrorCode.KEEPALIVE_TIMEOUT: 1011,
    ErrorCode.STREAM_STATE_ERROR: 1002,
}


class FastRPCError(Exception):
    """Base class of every fastrpc error."""


class ProtocolError(FastRPCError):
    """The peer broke the wire protocol, or a limit; the connection must close.

    ``reason`` is a short human-readable text, ``code`` an :class:`ErrorCode` and
    ``close_code`` the WebSocket close code the connection is closed with.
    """

    def __init__(self, reason: str, code: int = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        try:
            self.code: int = ErrorCode(code)
        except ValueError:
            self.code = int(code)

    @property
    def close_code(self) -> int:
        """The WebSocket close code for this error (1002 protocol, 1008 limit, 1009 size, ...)."""
        try:
            return ErrorCode(self.code).close_code
        except ValueError:
            return 1002

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProtocolError):
            return NotImplemented
        return (self.reason, int(self.code)) == (other.reason, int(other.code))

    def __hash__(self) -> int:
        return hash((self.reason, int(self.code)))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason, int(self.code)))


class LimitExceeded(ProtocolError):
    """The peer went past a negotiated limit (streams, pending calls, sizes)."""

    def __init__(self, reason: str, code: int = ErrorCode.LIMIT_EXCEEDED) -> None:
        super().__init__(reason, code)


class PayloadTooLarge(FastRPCError, ValueError):
    """A call's arguments or a notification do not fit in one frame of the peer's
    (send large data as a stream: items of any size are fragmented), or a stream item
    is larger than the peer's ``max_item_size`` (that stream fails, not the
    connection). The message names the limit and the option that sets it."""


class PayloadError(FastRPCError, ValueError):
    """A payload the peer sent does not decode with this connection's codec: not
    MessagePack (or JSON), nested deeper than the decoder goes, or a value the codec
    cannot give (a JSON number beyond a double, a bad MessagePack timestamp). The
    decoder's exception (:class:`msgspec.DecodeError`, :class:`RecursionError`) is
    its ``__cause__``; the message says what was sent (the answer to a call, an item
    of stream N, an event of topic T) and why it does not decode.

    Only what the payload was for fails: the call it answered, or that one item
    (``async for`` over the stream goes on with the next one; a topic subscription
    ends, its ``position`` the last item received); the connection stays up."""


class UsageError(FastRPCError, TypeError):
    """fastrpc was used in a way that cannot work (a sync generator as a streaming
    handler, ...); the message says what to write instead."""


class CallTimeout(FastRPCError, asyncio.TimeoutError):
    """A call or ping got no answer within its ``timeout``. A subclass of
    :class:`asyncio.TimeoutError`, so ``except asyncio.TimeoutError`` still catches it."""


class HandshakeTimeout(FastRPCError, asyncio.TimeoutError):
    """The other side sent no fastrpc handshake within ``handshake_timeout`` (it is
    silent, or does not speak fastrpc)."""


class AuthError(FastRPCError):
    """A connection was refused at the WebSocket handshake (HTTP ``status``).

    Raised by a server's ``authenticate`` hook to refuse a connection with this
    status and ``reason`` (the body of the HTTP answer); raised by
    :func:`fastrpc.connect` when the server refused the connection.
    """

    status = 401

    def __init__(self, reason: str = "", status: int | None = None) -> None:
        if status is not None:
            self.status = status
        super().__init__(f"HTTP {self.status}: {reason}" if reason else f"HTTP {self.status}")
        self.reason = reason


class Unauthorized(AuthError):
    """HTTP 401: no credentials, or credentials that are not valid."""

    status = 401


class Forbidden(AuthError):
    """HTTP 403: valid credentials that do not allow this connection."""

    status = 403


class ConnectionClosed(FastRPCError):
    """The connection closed while a call, stream or iterator was using it."""

    def __init__(self, reason: str = "Connection closed", code: int | None = None) -> None:
        # The message always starts with the seed's "Connection closed".
        if reason and reason != "Connection closed":
            super().__init__(f"Connection closed: {reason}")
        else:
            super().__init__("Connection closed")
        self.reason = reason or "Connection closed"
        self.code = code


class NotFastRPC(ConnectionClosed):
    """The server answered, but not with fastrpc's handshake (a plain WebSocket
    server, an echo server, another protocol)."""


class ResumeFailed(ConnectionClosed):
    """A dropped session could not be resumed (expired, or the server restarted)."""


class RemoteError(FastRPCError):
    """A handler on the other side raised; ``type_name`` and ``message`` describe it."""

    def __init__(
        self,
        type_name: str,
        message: str,
        code: int | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.code = code
        self.remote_traceback = traceback


class RemoteStreamError(RemoteError):
    """The sending side's iterator raised; the stream ended with this error."""


class MethodNotFound(RemoteError):
    """The other side has no handler for the method called."""


class InvalidArguments(RemoteError):
    """The call's arguments do not fit the handler's signature or its annotations
    (the message says which argument and why)."""


class InvalidCall(RemoteError):
    """The call does not fit the method: ``peer.call`` on a streaming method (use
    ``peer.stream``), ``peer.channel`` on a method that takes no input stream."""


class PermissionDenied(RemoteError):
    """The method's ``authorize`` hook refused this caller."""


# Errors with these type names are raised as their subclass (calls; a stream's
# error stays a RemoteStreamError whose ``type_name`` says the same).
REMOTE_ERRORS: dict[str, type[RemoteError]] = {
    cls.__name__: cls for cls in (MethodNotFound, InvalidArguments, InvalidCall, PermissionDenied)
}


class StreamAborted(FastRPCError):
    """The sender aborted the stream (``abort_stream``) before its end."""


class StreamClosed(FastRPCError):
    """The stream was closed locally or by the receiver; no more items flow."""


class HistoryLost(FastRPCError):
    """A topic subscription cannot continue without a gap: the position it resumes
    from is older than the topic's history window (``topic_history_size`` /
    ``topic_history_ttl``), or the topic's ``epoch`` changed (its broker lost its
    state, e.g. Redis restarted). ``epoch`` is the topic's current epoch and
    ``first_available`` the oldest offset still in its history; resubscribe with
    ``since=None`` (from now) or ``since=(epoch, first_available - 1)``."""

    def __init__(self, epoch: str, first_available: int, reason: str = "") -> None:
        super().__init__(
            f"topic history lost: epoch {epoch!r}, first available offset {first_available}"
            + (f" ({reason})" if reason else "")
        )
        self.epoch = epoch
        self.first_available = first_available
        self.reason = reason


class SlowSubscriber(FastRPCError):
    """A subscription with ``policy="disconnect"`` fell more than its queue
    (``topic_queue_size`` items) behind the feed and was ended by the server;
    ``position`` ``(epoch, offset)`` is the last item received: resubscribing with
    ``since=position`` recovers the rest from the topic's history."""

    def __init__(self, topic: str, position: tuple[str, int] | None, reason: str = "") -> None:
        super().__init__(f"subscription to {topic!r} ended: subscriber too slow" + (f" ({reason})" if reason else ""))
        self.topic = topic
        self.position = position
