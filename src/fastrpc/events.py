"""Events the sans-I/O core (:mod:`fastrpc.protocol`) returns from received bytes.

Plain slotted records; the asyncio layer dispatches on their type.
"""

from __future__ import annotations

from typing import Union

from .exceptions import RemoteError

Payload = Union[bytes, bytearray, memoryview]

__all__ = [
    "CallCancelled",
    "CallFailed",
    "CreditGranted",
    "Event",
    "GoAwayReceived",
    "HelloReceived",
    "NotificationReceived",
    "PongReceived",
    "RequestReceived",
    "ResponseReceived",
    "StreamClosedByPeer",
    "StreamOpened",
    "StreamReadable",
]


class Event:
    __slots__ = ()

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in names)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        names: tuple[str, ...] = self.__slots__
        return all(getattr(self, k) == getattr(other, k) for k in names)

    __hash__ = None  # type: ignore[assignment]


class HelloReceived(Event):
    """The peer's HELLO arrived; ``settings`` are its limits (a :class:`Settings`)."""

    __slots__ = ("settings",)

    def __init__(self, settings: object) -> None:
        self.settings = settings


class RequestReceived(Event):
    """A call to ``method``; reply with ``send_response``/``send_error`` on ``call_id``.

    ``stream``: the caller expects a stream of results on the call's id.
    ``channel``: the caller sends an input stream on the call's id.
    ``deadline``: seconds the caller will wait, or None.
    ``kwargs``: nonzero when the arguments end with the map of keyword arguments.
    """

    __slots__ = ("call_id", "channel", "deadline", "kwargs", "method", "payload", "raw", "stream")

    def __init__(
        self,
        call_id: int,
        method: str,
        payload: Payload,
        raw: bool = False,
        stream: bool = False,
        channel: bool = False,
        deadline: float | None = None,
        kwargs: int = 0,
    ) -> None:
        self.call_id = call_id
        self.method = method
        self.payload = payload
        self.raw = raw
        self.stream = stream
        self.channel = channel
        self.deadline = deadline
        self.kwargs = kwargs


class NotificationReceived(Event):
    """A one-way message to ``method``; nothing is sent back."""

    __slots__ = ("kwargs", "method", "payload", "raw")

    def __init__(self, method: str, payload: Payload, raw: bool = False, kwargs: bool = False) -> None:
        self.method = method
        self.payload = payload
        self.raw = raw
        self.kwargs = kwargs


class ResponseReceived(Event):
    """The result of our call ``call_id``."""

    __slots__ = ("call_id", "payload", "raw")

    def __init__(self, call_id: int, payload: Payload, raw: bool = False) -> None:
        self.call_id = call_id
        self.payload = payload
        self.raw = raw


class CallFailed(Event):
    """Our call ``call_id`` failed on the other side with ``error``."""

    __slots__ = ("call_id", "error")

    def __init__(self, call_id: int, error: RemoteError) -> None:
        self.call_id = call_id
        self.error = error


class CallCancelled(Event):
    """The caller cancelled ``call_id``: cancel its handler (its slot stays taken until
    the handler finishes and ``finish_call`` is called)."""

    __slots__ = ("call_id",)

    def __init__(self, call_id: int) -> None:
        self.call_id = call_id


class StreamOpened(Event):
    """The peer opened a stream towards us (not bound to a call)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReadable(Event):
    """Items, or the end, of incoming stream ``stream_id`` are ready to read."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamClosedByPeer(Event):
    """The peer stopped reading our outgoing stream ``stream_id`` (STREAM_CLOSE)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class CreditGranted(Event):
    """Our outgoing stream ``stream_id`` may send again (credit, a stream slot, or
    buffer space); ``stream_id`` 0 means connection-wide room (stream slots)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class PongReceived(Event):
    """Answer to one of our PINGs."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class GoAwayReceived(Event):
    """The peer is closing the connection with ``code`` and ``reason``."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
