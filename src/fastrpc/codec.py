"""Payload codecs: MessagePack (default) or JSON, both through msgspec.

``bytes`` values sent as a whole item, argument list or result skip the codec: they
travel as raw payloads (flagged on the wire) and arrive as ``bytes``, untouched.

Types are handled as msgspec handles them: ``datetime``/``date``/``time``, ``UUID``
and ``Decimal`` travel as strings (MessagePack: ``datetime`` as its timestamp
extension), ``set``/``frozenset``/``tuple`` as arrays, dataclasses and
``msgspec.Struct`` s as maps. Without annotations they arrive as msgspec decodes them
untyped (``str``, ``list``, ``dict``; MessagePack gives ``datetime`` back); a handler
whose parameters are annotated gets its arguments converted to those types
(:mod:`fastrpc.arguments`). ``enc_hook`` / ``dec_hook`` (options of ``serve`` and
``connect``) add custom types, as msgspec's hooks of the same names.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Union

import msgspec

from .exceptions import PayloadError
from .settings import CODEC_JSON, CODEC_MSGPACK

# What a codec's decode raises for a payload it cannot decode (msgspec.ValidationError,
# a JSON number beyond a double or a bad MessagePack timestamp, is a DecodeError; nesting
# deeper than msgspec goes is RecursionError). The readers catch these around each
# decode as it is (no wrapper, no work unless it raises) and raise PayloadError.
UNDECODABLE = (msgspec.DecodeError, RecursionError)


def payload_error(what: str, codec: str, exc: BaseException) -> PayloadError:
    """(The error path of a decode.) The :class:`PayloadError` for ``what`` (the
    answer to a call, an item of a stream), which the codec named ``codec`` failed to
    decode with ``exc``; raise it ``from exc``."""
    return PayloadError(f"{what} does not decode with this connection's {codec} codec: {exc}")


Payload = Union[bytes, bytearray, memoryview]
EncHook = Callable[[Any], Any]
DecHook = Callable[[type, Any], Any]

__all__ = ["CODECS", "DecHook", "EncHook", "Encoded", "PayloadCodec", "get_codec"]


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


def _fallback_hook(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if inspect.isgenerator(obj):
        raise NotImplementedError(
            "cannot encode a generator: a handler that streams must be an async generator "
            "(async def ... yield), called with peer.stream()"
        )
    raise NotImplementedError(
        f"cannot encode objects of type {type(obj).__name__}: pass enc_hook= (and dec_hook= on the "
        "receiving side) to serve()/connect(), or send a dataclass or msgspec.Struct"
    )


def _hooked(enc_hook: EncHook | None) -> EncHook:
    if enc_hook is None:
        return _fallback_hook

    def hook(obj: Any) -> Any:
        try:
            return enc_hook(obj)
        except NotImplementedError:
            return _fallback_hook(obj)

    return hook


class PayloadCodec:
    """Encodes values to payload bytes and back; raw ``bytes`` pass through.

    ``enc_hook`` / ``dec_hook``: msgspec's hooks for custom types (None: none).
    ``decode_value(payload)``: an encoded payload back to its value, untyped (the
    decoder's own function: no Python frame per item)."""

    __slots__ = ("_encode", "_typed", "dec_hook", "decode_value", "enc_hook", "name", "wire_id")

    def __init__(
        self,
        name: str,
        wire_id: int,
        encode: Callable[[Any], bytes],
        decode: Callable[[Any], Any],
        enc_hook: EncHook | None = None,
        dec_hook: DecHook | None = None,
    ) -> None:
        self.name = name
        self.wire_id = wire_id
        self._encode = encode
        self.decode_value: Callable[[Payload], Any] = decode
        self.enc_hook = enc_hook
        self.dec_hook = dec_hook
        self._typed: dict[Any, Callable[[Any], Any]] = {}  # type -> its decoder's decode

    def encode(self, value: Any) -> tuple[bytes, bool]:
        """``(payload, raw)``: raw is True when ``value`` was bytes sent as is."""
        t = type(value)
        if t is bytes:
            return value, True
        if t is Encoded:
            return value.payload(self), False
        return self._encode(value), False

    def payloads(self, values: Sequence[Any]) -> list[bytes] | None:
        """The payloads of ``values``, encoded (an :class:`Encoded` once for every
        connection), for a run of frames with the same flags; None when one of them
        is raw ``bytes`` (its frame carries another flag)."""
        out: list[bytes] = []
        wire_id = self.wire_id
        for value in values:
            t = type(value)
            if t is Encoded:
                p = value._payloads.get(wire_id)  # Encoded.payload, inline: every delivery
                if p is None:
                    p = value.payload(self)
            elif t is bytes:
                return None
            else:
                p = self._encode(value)
            out.append(p)
        return out

    def decode(self, payload: Payload, raw: bool) -> Any:
        """A payload back to its value (``raw``: the bytes themselves)."""
        if raw:
            return payload if type(payload) is bytes else bytes(payload)
        return self.decode_value(payload)

    def encode_value(self, value: Any) -> bytes:
        """``value`` encoded (never raw)."""
        return self._encode(value)

    def typed_decoder(self, type_: Any) -> Callable[[Payload], Any]:
        """A decode function that gives ``type_`` (validated; :class:`msgspec.ValidationError`
        otherwise), made once per type and codec."""
        fn = self._typed.get(type_)
        if fn is None:
            module = msgspec.msgpack if self.wire_id == CODEC_MSGPACK else msgspec.json
            fn = self._typed[type_] = module.Decoder(type_, dec_hook=self.dec_hook).decode
        return fn

    def convert(self, value: Any, type_: Any) -> Any:
        """``value`` (as decoded untyped) converted to ``type_``, as the typed decoder
        would have, strictly: no ``"5"`` for an ``int`` (:class:`msgspec.ValidationError`
        otherwise; a ``datetime``, ``UUID`` or base64 ``bytes`` still comes from a string)."""
        return msgspec.convert(value, type_, strict=True, dec_hook=self.dec_hook)

    def sibling(self, name: str | int) -> PayloadCodec:
        """The codec ``name`` with the same hooks (the peer's codec, from its HELLO)."""
        return get_codec(name, self.enc_hook, self.dec_hook)


def _make_msgpack(enc_hook: EncHook | None, dec_hook: DecHook | None) -> PayloadCodec:
    enc = msgspec.msgpack.Encoder(enc_hook=_hooked(enc_hook))
    dec = msgspec.msgpack.Decoder(dec_hook=dec_hook)
    return PayloadCodec("msgpack", CODEC_MSGPACK, enc.encode, dec.decode, enc_hook, dec_hook)


def _make_json(enc_hook: EncHook | None, dec_hook: DecHook | None) -> PayloadCodec:
    enc = msgspec.json.Encoder(enc_hook=_hooked(enc_hook))
    dec = msgspec.json.Decoder(dec_hook=dec_hook)
    return PayloadCodec("json", CODEC_JSON, enc.encode, dec.decode, enc_hook, dec_hook)


CODECS = {"msgpack": _make_msgpack, "json": _make_json}
_BY_WIRE = {CODEC_MSGPACK: "msgpack", CODEC_JSON: "json"}


def get_codec(
    name: str | int | PayloadCodec, enc_hook: EncHook | None = None, dec_hook: DecHook | None = None
) -> PayloadCodec:
    """The codec called ``name`` (``"msgpack"`` or ``"json"``) or with that wire id,
    with these hooks (a :class:`PayloadCodec` is returned as is)."""
    if isinstance(name, PayloadCodec):
        return name
    if isinstance(name, int):
        name = _BY_WIRE[name]
    codec = _SHARED.get(name) if enc_hook is None and dec_hook is None else None
    if codec is None:
        try:
            make = CODECS[name]
        except KeyError:
            raise ValueError(f"unknown codec {name!r}; use 'msgpack' or 'json'") from None
        codec = make(enc_hook, dec_hook)
        if enc_hook is None and dec_hook is None:
            # Codecs hold no per-connection state (msgspec's encoders and decoders
            # are reentrant): one instance serves every connection without hooks.
            _SHARED[name] = codec
    return codec


_SHARED: dict[str, PayloadCodec] = {}
