"""What the frames of calls carry: a REQUEST / NOTIFY's method name (its encoded head,
the names received), an ERROR's payload, and the flag bits private to fastrpc's call
payloads. The calls themselves, their ids and states, are :mod:`fastrpc.calltable`'s.
"""

from __future__ import annotations

from typing import Union

from . import frames as F
from .exceptions import REMOTE_ERRORS, ProtocolError, RemoteError
from .stream_state import CallState

__all__ = [
    "CANCELLED",
    "FLAG_KWARGS",
    "FLAG_RAW",
    "MAX_METHOD_NAMES",
    "METHOD_HEADS",
    "METHOD_NAMES",
    "PENDING",
    "decode_error",
    "encode_error",
    "method_head",
    "method_name",
    "request_head",
]

Payload = Union[bytes, bytearray, memoryview]

# Flag bit private to fastrpc's payloads: the payload is raw bytes, not codec-encoded.
FLAG_RAW = 0x40
# REQUEST / NOTIFY: the arguments' last element is the map of keyword arguments.
FLAG_KWARGS = F.FLAG_KWARGS
PENDING = int(CallState.PENDING)
CANCELLED = int(CallState.CANCELLED)
# Method name -> its encoded head (varint length + UTF-8), shared by every connection:
# a client calls the same few methods over and over. Cleared when full (a bound).
METHOD_HEADS: dict[str, bytes] = {}
MAX_METHOD_NAMES = 1024  # the bound of METHOD_HEADS and of METHOD_NAMES


def method_head(method: str) -> bytes:
    """The encoded method name that starts a REQUEST / NOTIFY payload."""
    head = METHOD_HEADS.get(method)
    if head is None:
        m = method.encode("utf-8")
        head = F.encode_varint(len(m)) + m
        if len(METHOD_HEADS) >= MAX_METHOD_NAMES:
            METHOD_HEADS.clear()
        METHOD_HEADS[method] = head
    return head


def encode_error(
    type_name: str,
    message: str,
    code: int | None = None,
    traceback: str | None = None,
    limit: int = 1 << 20,
) -> bytes:
    """ERROR / STREAM_ERROR payload: varint code+1 (0: none), type, message, traceback.

    Fits in ``limit`` bytes: an over-long type name, message or traceback is cut
    (each field still says its true length, so the result always decodes). A code the
    varint cannot carry (negative, as JSON-RPC's -32602, or not an int) is left out."""
    room = max(limit - 24, 0)  # the three varints take at most 8 + 8 + 8 bytes
    t = type_name.encode("utf-8", "replace")[: min(256, room)]
    room -= len(t)
    m = message.encode("utf-8", "replace")[:room]
    room -= len(m)
    wire_code = int(code) + 1 if isinstance(code, int) and 0 <= code < F.VARINT_MAX else 0
    out = bytearray(F.encode_varint(wire_code))
    out += F.encode_varint(len(t)) + t + F.encode_varint(len(m)) + m
    if traceback and room > 0:
        out += traceback.encode("utf-8", "replace")[:room]
    return bytes(out)


def decode_error(payload: Payload, cls: type[RemoteError] = RemoteError) -> RemoteError:
    """The error an ERROR / STREAM_ERROR payload carries, as ``cls`` (for a call's
    error, the :class:`RemoteError` subclass its type name names, if any)."""
    data = memoryview(payload).cast("B")
    code, pos = F.decode_varint(data, 0)
    n, pos = F.decode_varint(data, pos)
    if pos + n > len(data):
        raise ProtocolError("truncated error payload")
    type_name = bytes(data[pos : pos + n]).decode("utf-8", "replace")
    pos += n
    n, pos = F.decode_varint(data, pos)
    if pos + n > len(data):
        raise ProtocolError("truncated error payload")
    message = bytes(data[pos : pos + n]).decode("utf-8", "replace")
    pos += n
    tb = bytes(data[pos:]).decode("utf-8", "replace") if pos < len(data) else None
    if cls is RemoteError:
        cls = REMOTE_ERRORS.get(type_name, RemoteError)
    return cls(type_name, message, None if code == 0 else code - 1, tb)


# Received method names (encoded -> str), shared by every connection: a peer calls the
# same few methods over and over. Bounded: cleared when full; long names not kept.
METHOD_NAMES: dict[Payload, str] = {}
_MAX_NAME = 64


def method_name(data: Payload) -> str:
    """A method name received, decoded (and remembered in ``METHOD_NAMES``)."""
    try:
        method = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("method name is not UTF-8") from None
    if len(data) <= _MAX_NAME:
        if len(METHOD_NAMES) >= MAX_METHOD_NAMES:
            METHOD_NAMES.clear()
        METHOD_NAMES[bytes(data)] = method
    return method


def request_head(f: F.Frame, has_deadline: bool) -> tuple[str, Payload, float | None]:
    """Method name, arguments and deadline of a REQUEST / NOTIFY frame."""
    data = f.payload
    pos = 0
    deadline = None
    if has_deadline:
        ms, pos = F.decode_varint(data, 0)
        deadline = ms / 1000.0
    n, pos = F.decode_varint(data, pos)
    if pos + n > len(data):
        raise ProtocolError("truncated method name")
    method = method_name(data[pos : pos + n])
    pos += n
    return method, data[pos:], deadline
