"""Events the sans-I/O core (:mod:`fastrpc.protocol`) returns from received bytes.

Plain records (``msgspec.Struct``: one is made in ~50 ns, against ~120-150 for a
slotted class's ``__init__``, and a call makes one on each side); the asyncio layer
dispatches on their type. Compared by value, not hashable.
"""

from __future__ import annotations

from typing import Union

import msgspec

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


class Event(msgspec.Struct):
    """The base of every event. (All are tracked by the garbage collector: with
    ``gc=False`` the server's RSS per idle stream read 0.50 KiB instead of 0.46 in
    ``bench/compare.py``, by how the smaller objects fell in the allocator.)"""


class HelloReceived(Event):
    """The peer's HELLO arrived; ``settings`` are its limits (a :class:`Settings`)."""

    settings: object


class RequestReceived(Event):
    """A call to ``method``; reply with ``send_response``/``send_error`` on ``call_id``.

    ``stream``: the caller expects a stream of results on the call's id.
    ``channel``: the caller sends an input stream on the call's id.
    ``deadline``: seconds the caller will wait, or None.
    ``kwargs``: nonzero when the arguments end with the map of keyword arguments.
    """

    call_id: int
    method: str
    payload: Payload
    raw: bool = False
    stream: bool = False
    channel: bool = False
    deadline: float | None = None
    kwargs: int = 0


class NotificationReceived(Event):
    """A one-way message to ``method``; nothing is sent back."""

    method: str
    payload: Payload
    raw: bool = False
    kwargs: bool = False
    # The bytes its arguments take once decoded (raw: their length), as measured
    # before the core took it: what a running async handler holds of the budget.
    cost: int = 0


class ResponseReceived(Event):
    """The result of our call ``call_id``."""

    call_id: int
    payload: Payload
    raw: bool = False


class CallFailed(Event):
    """Our call ``call_id`` failed on the other side with ``error``."""

    call_id: int
    error: RemoteError


class CallCancelled(Event):
    """The caller cancelled ``call_id``: cancel its handler (its slot stays taken until
    the handler finishes and ``finish_call`` is called)."""

    call_id: int


class StreamOpened(Event):
    """The peer opened a stream towards us (not bound to a call)."""

    stream_id: int


class StreamReadable(Event):
    """Items, or the end, of incoming stream ``stream_id`` are ready to read."""

    stream_id: int


class StreamClosedByPeer(Event):
    """The peer stopped reading our outgoing stream ``stream_id`` (STREAM_CLOSE)."""

    stream_id: int


class CreditGranted(Event):
    """Our outgoing stream ``stream_id`` may send again (credit, a stream slot, or
    buffer space); ``stream_id`` 0 means connection-wide room (stream slots)."""

    stream_id: int


class PongReceived(Event):
    """Answer to one of our PINGs."""

    payload: bytes


class GoAwayReceived(Event):
    """The peer is closing the connection with ``code`` and ``reason``."""

    code: int
    reason: str
