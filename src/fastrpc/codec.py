"""Payload codecs: MessagePack (default) or JSON, both through msgspec.

``bytes`` values sent as a whole item, argument list or result skip the codec: they
travel as raw payloads (flagged on the wire) and arrive as ``bytes``, untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Union

import msgspec

from .settings import CODEC_JSON, CODEC_MSGPACK

Payload = Union[bytes, bytearray, memoryview]

__all__ = ["CODECS", "Encoded", "PayloadCodec", "get_codec"]


class Encoded:
    """A value encoded once for every connection that sends it (a topic's item goes
    to many subscribers): :meth:`PayloadCodec.encode` returns the cached payload of
    its codec instead of encoding the value again."""

    __slots__ = ("_payloads", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._payloads: dict[int, bytes] = {}

    def payload(self, codec: PayloadCodec) -> bytes:
        """The value's payload in ``codec`` (encoded on first use, then cached)."""
        p = self._payloads.get(codec.wire_id)
        if p is None:
            p = self._payloads[codec.wire_id] = codec.encode_value(self.value)
        return p


def _enc_hook(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise NotImplementedError(f"cannot encode objects of type {type(obj).__name__}")


class PayloadCodec:
    """Encodes values to payload bytes and back; raw ``bytes`` pass through."""

    __slots__ = ("_decode", "_encode", "name", "wire_id")

    def __init__(self, name: str, wire_id: int, encode: Callable[[Any], bytes], decode: Callable[[Any], Any]) -> None:
        self.name = name
        self.wire_id = wire_id
        self._encode = encode
        self._decode = decode

    def encode(self, value: Any) -> tuple[bytes, bool]:
        """``(payload, raw)``: raw is True when ``value`` was bytes sent as is."""
        t = type(value)
        if t is bytes:
            return value, True
        if t is Encoded:
            return value.payload(self), False
        return self._encode(value), False

    def decode(self, payload: Payload, raw: bool) -> Any:
        if raw:
            return payload if type(payload) is bytes else bytes(payload)
        return self._decode(payload)

    def encode_value(self, value: Any) -> bytes:
        return self._encode(value)

    def decode_value(self, payload: Payload) -> Any:
        return self._decode(payload)


def _make_msgpack() -> PayloadCodec:
    enc = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
    dec = msgspec.msgpack.Decoder()
    return PayloadCodec("msgpack", CODEC_MSGPACK, enc.encode, dec.decode)


def _make_json() -> PayloadCodec:
    enc = msgspec.json.Encoder(enc_hook=_enc_hook)
    dec = msgspec.json.Decoder()
    return PayloadCodec("json", CODEC_JSON, enc.encode, dec.decode)


CODECS = {"msgpack": _make_msgpack, "json": _make_json}
_BY_WIRE = {CODEC_MSGPACK: "msgpack", CODEC_JSON: "json"}


def get_codec(name: str | int) -> PayloadCodec:
    """The codec called ``name`` (``"msgpack"`` or ``"json"``) or with that wire id."""
    if isinstance(name, int):
        name = _BY_WIRE[name]
    codec = _SHARED.get(name)
    if codec is None:
        try:
            make = CODECS[name]
        except KeyError:
            raise ValueError(f"unknown codec {name!r}; use 'msgpack' or 'json'") from None
        # Codecs hold no per-connection state (msgspec's encoders and decoders are
        # reentrant): one instance serves every connection.
        codec = _SHARED[name] = make()
    return codec


_SHARED: dict[str, PayloadCodec] = {}
