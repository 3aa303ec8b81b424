"""The limits one side announces in its HELLO, and which end of the connection it is.

See ``docs/protocol.md``, "HELLO". Defaults come from :mod:`fastrpc.options`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import ClassVar, Union

from . import frames as F
from . import options as O
from .exceptions import ErrorCode, LimitExceeded, ProtocolError

__all__ = ["CODEC_JSON", "CODEC_MSGPACK", "FEATURE_TOPIC_RUNS", "MAX_HELLO_SIZE", "Role", "Settings", "decode_hello"]

Payload = Union[bytes, bytearray, memoryview]

# HELLO setting keys (docs/protocol.md, "HELLO").
SETTING_MAX_FRAME_SIZE = 1
SETTING_MAX_MESSAGE_SIZE = 2
SETTING_INITIAL_STREAM_WINDOW = 3
SETTING_MAX_STREAMS = 4
SETTING_MAX_PENDING_CALLS = 5
SETTING_MAX_ITEM_SIZE = 6
SETTING_COMPRESSION = 7
SETTING_CODEC = 8
SETTING_RESUME = 9
SETTING_CONNECTION_WINDOW = 10
# Sent by clients only (value 1): a client that gets it back is talking to an echo.
SETTING_SENT_BY_CLIENT = 11
SETTING_FEATURES = 12

# The largest HELLO payload a side reads (a protocol constant; today's HELLO is about
# 110 bytes). Unknown settings are ignored, but each is decoded first (a repeated key
# is an error): without a bound, a 1 MiB HELLO of 4-byte keys made a dict of 200,000.
MAX_HELLO_SIZE = 4096

# Features (SETTING_FEATURES, a bitmask): what this side reads beyond version 1.
FEATURE_TOPIC_RUNS = 1  # topic run events ([5, first, values]: docs/protocol.md, "Topics")
FEATURES = FEATURE_TOPIC_RUNS

# Payload codecs (SETTING_CODEC).
CODEC_MSGPACK = 0
CODEC_JSON = 1


def decode_hello(payload: Payload) -> tuple[int, dict[int, int]]:
    """A HELLO payload's ``(version, {key: value})``, unknown keys included;
    :class:`LimitExceeded` past :data:`MAX_HELLO_SIZE` bytes (before decoding any),
    :class:`ProtocolError` for a malformed one or a repeated key."""
    size = memoryview(payload).nbytes
    if size > MAX_HELLO_SIZE:
        raise LimitExceeded(f"a HELLO of {size} bytes, over the {MAX_HELLO_SIZE} a HELLO may have (MAX_HELLO_SIZE)")
    return F.decode_settings(payload)


class Role(enum.IntEnum):
    """Which end of the WebSocket: the client allocates odd ids, the server even ones."""

    CLIENT = 1
    SERVER = 2


@dataclass(slots=True)
class Settings:
    """Limits one side announces in its HELLO: what it is willing to receive.

    ``features`` is a bitmask of what it reads beyond protocol version 1
    (:data:`FEATURE_TOPIC_RUNS`); a peer sends those only to a side that announced
    them."""

    max_frame_size: int = O.MAX_FRAME_SIZE
    max_message_size: int = O.MAX_MESSAGE_SIZE
    initial_stream_window: int = O.INITIAL_STREAM_WINDOW
    max_streams: int = O.MAX_STREAMS
    max_pending_calls: int = O.MAX_PENDING_CALLS
    max_item_size: int = O.MAX_ITEM_SIZE
    compression: int = 0
    codec: int = CODEC_MSGPACK
    resume: int = 0
    connection_window: int = O.CONNECTION_WINDOW
    features: int = FEATURES

    _KEYS: ClassVar[dict[str, int]] = {
        "max_frame_size": SETTING_MAX_FRAME_SIZE,
        "max_message_size": SETTING_MAX_MESSAGE_SIZE,
        "initial_stream_window": SETTING_INITIAL_STREAM_WINDOW,
        "max_streams": SETTING_MAX_STREAMS,
        "max_pending_calls": SETTING_MAX_PENDING_CALLS,
        "max_item_size": SETTING_MAX_ITEM_SIZE,
        "compression": SETTING_COMPRESSION,
        "codec": SETTING_CODEC,
        "resume": SETTING_RESUME,
        "connection_window": SETTING_CONNECTION_WINDOW,
        "features": SETTING_FEATURES,
    }

    def __post_init__(self) -> None:
        self.validate(ValueError)

    def validate(self, error: type[Exception]) -> None:
        """Raise ``error`` when a value is out of its range."""
        for name in self._KEYS:
            value = getattr(self, name)
            if not 0 <= value <= F.VARINT_MAX:  # (never from the wire: a varint is in range)
                raise error(f"{name} {value!r} out of range: 0 to 2**62 - 1")
        if self.max_frame_size < 1024:
            raise error("max_frame_size below 1024")
        if self.max_message_size < self.max_frame_size:
            raise error("max_message_size below max_frame_size")
        if self.initial_stream_window < 1024:
            raise error("initial_stream_window below 1024")
        if self.connection_window < 1024:
            raise error("connection_window below 1024")
        if self.max_item_size < 1:
            raise error("max_item_size below 1")
        if self.codec not in (CODEC_MSGPACK, CODEC_JSON):
            raise error(f"unknown payload codec {self.codec}")

    def to_wire(self) -> bytes:
        """The HELLO payload."""
        return F.encode_settings(
            F.PROTOCOL_VERSION,
            {key: getattr(self, name) for name, key in self._KEYS.items()},
        )

    @classmethod
    def from_wire(cls, payload: Payload) -> Settings:
        """Parse a HELLO payload (unknown keys are ignored); :class:`ProtocolError`
        with ``UNSUPPORTED_VERSION`` for another protocol version, and as
        :func:`decode_hello` says (:class:`LimitExceeded` past :data:`MAX_HELLO_SIZE`)."""
        version, values = decode_hello(payload)
        if version != F.PROTOCOL_VERSION:
            raise ProtocolError(
                f"unsupported protocol version {version} (this side speaks {F.PROTOCOL_VERSION})",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        self = cls.__new__(cls)
        for f in fields(cls):
            setattr(self, f.name, f.default)
        self.features = 0  # a HELLO without the key: a peer that reads no extension
        by_key = {key: name for name, key in cls._KEYS.items()}
        for key, value in values.items():
            name = by_key.get(key)
            if name is not None:  # unknown settings are ignored
                setattr(self, name, value)
        self.validate(ProtocolError)
        return self
