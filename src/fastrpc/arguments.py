"""How a call's arguments reach its handler: keyword arguments, and conversion to the
types the handler's annotations name.

On the wire a call's arguments are one codec-encoded array; a call with keyword
arguments (``peer.call("m", 1, x=2)``) sets the KWARGS flag and the array's last
element is the map of keyword arguments (``[1, {"x": 2}]``). Positional-only calls
are unchanged (docs/protocol.md, "Calls").

A handler with annotated parameters (``def add(a: int, p: Point)``) gets its
arguments decoded to those types by msgspec (a ``Point`` Struct or dataclass, a
``datetime``, a ``UUID``, a ``set`` ...); arguments that do not fit are refused with
an ``InvalidArguments`` error naming the argument. :func:`signature_of` inspects a
handler once, when it is registered; un-annotated handlers get no
:class:`ArgumentSpec` and keep the untyped path.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, get_origin

import msgspec

from .codec import Payload, PayloadCodec
from .exceptions import InvalidArguments

__all__ = ["ArgumentSpec", "bad_arguments", "signature_of", "split_kwargs"]

_P = inspect.Parameter
_POSITIONAL = (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
_AT = re.compile(r"^(.*) - at `\$\[(\d+)\](.*)`$", re.S)
_LENGTH = re.compile(r"^Expected `array` of at (least|most) length (\d+), got (\d+)$")


def split_kwargs(decoded: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A KWARGS call's decoded arguments: ``(positional, keyword)``."""
    if not isinstance(decoded, (list, tuple)) or not decoded or not isinstance(decoded[-1], dict):
        raise InvalidArguments(
            "InvalidArguments", "keyword arguments flagged but missing (the last element is not a map)"
        )
    kwargs = decoded[-1]
    if not all(isinstance(k, str) for k in kwargs):
        raise InvalidArguments("InvalidArguments", "keyword argument names must be strings")
    return tuple(decoded[:-1]), kwargs


def bad_arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> str | None:
    """Why ``fn`` cannot take these arguments (None: it can). Used on the error path
    only: a TypeError from a handler is the caller's fault when the arguments do not
    bind to its signature."""
    try:
        inspect.signature(fn).bind(*args, **(kwargs or {}))
    except TypeError as e:
        return str(e)
    except ValueError:  # no signature (a builtin): cannot tell
        return None
    return None


class ArgumentSpec:
    """The typed arguments of one handler: a msgspec Struct (array-like) of its
    positional parameters for the positional path, the signature for keyword calls.
    ``channel``: the same without the first parameter (a channel's input stream)."""

    __slots__ = ("channel", "hints", "names", "raw_ok", "sig", "struct")

    def __init__(self, sig: inspect.Signature, hints: dict[str, Any], struct: Any) -> None:
        self.sig = sig
        self.hints = hints  # parameter -> type, the non-Any ones
        self.struct = struct  # None when the positional parameters cannot be typed
        self.names = [p.name for p in sig.parameters.values() if p.kind in _POSITIONAL]
        self.channel: ArgumentSpec | None = None
        # A call whose one argument is bytes travels raw (no codec): may those bytes
        # reach the handler as they are, or must they be bound and converted (bind)?
        self.raw_ok = _takes_bytes(sig, hints)

    def decode(
        self, method: str, codec: PayloadCodec, payload: Payload, kwargs: int
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        """``(args, kwargs)`` for the handler, converted to its annotations
        (:class:`InvalidArguments` when they do not fit)."""
        if not kwargs and self.struct is not None:
            try:
                value = codec.typed_decoder(self.struct)(payload) if payload else self.struct_empty(codec)
            except msgspec.ValidationError as e:
                raise InvalidArguments("InvalidArguments", self._explain(method, str(e))) from None
            return msgspec.structs.astuple(value), None
        decoded = codec.decode_value(payload) if payload else []
        if kwargs:
            args, kw = split_kwargs(decoded)
        else:
            args, kw = (tuple(decoded) if isinstance(decoded, (list, tuple)) else (decoded,)), {}
        return self.bind(method, codec, args, kw)

    def bind(
        self, method: str, codec: PayloadCodec, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        """``(args, kwargs)`` already decoded, bound to the signature and converted to
        its annotations (:class:`InvalidArguments` when they do not fit)."""
        try:
            bound = self.sig.bind(*args, **kw)
        except TypeError as e:
            raise InvalidArguments("InvalidArguments", f"{method}(): {e}") from None
        arguments = bound.arguments
        for name, type_ in self.hints.items():
            if name in arguments:
                try:
                    arguments[name] = codec.convert(arguments[name], type_)
                except msgspec.ValidationError as e:
                    raise InvalidArguments("InvalidArguments", f"{method}(): argument {name!r}: {e}") from None
        return bound.args, bound.kwargs

    def struct_empty(self, codec: PayloadCodec) -> Any:
        """The Struct of a call with no arguments (an empty payload)."""
        return codec.convert([], self.struct)

    def _explain(self, method: str, text: str) -> str:
        at = _AT.match(text)
        if at is not None:
            what, index, rest = at.group(1), int(at.group(2)), at.group(3)
            name = self.names[index] if index < len(self.names) else f"#{index}"
            return f"{method}(): argument {name!r}: {what}" + (f" (at {rest})" if rest else "")
        length = _LENGTH.match(text)
        if length is not None:
            bound, n, got = length.groups()
            return f"{method}() takes at {bound} {n} positional arguments ({', '.join(self.names)}), got {got}"
        return f"{method}(): {text}"


def _takes_bytes(sig: inspect.Signature, hints: dict[str, Any]) -> bool:
    """Whether one bytes argument binds to ``sig`` and fits ``hints`` unconverted (an
    untyped or ``bytes`` parameter): then a raw call needs no check per call."""
    if not hints:
        return True
    sample = b"\x00"
    try:
        bound = sig.bind(sample).arguments
        for name, type_ in hints.items():
            if name in bound and type(msgspec.convert(bound[name], type_, strict=True)) is not bytes:
                return False
    except Exception:  # does not bind, or not to bytes (or with a dec_hook only): convert per call
        return False
    return True


def _is_stream_type(t: Any) -> bool:
    origin = get_origin(t) or t
    return isinstance(origin, type) and issubclass(origin, (AsyncIterable, AsyncIterator))


def _build(fn: Callable[..., Any], sig: inspect.Signature, params: list[inspect.Parameter]) -> ArgumentSpec | None:
    sig = sig.replace(parameters=params)
    hints: dict[str, Any] = {}
    for p in params:
        t = p.annotation
        if t is _P.empty or t is Any:
            continue
        # ``*args: int`` binds a tuple of ints, ``**kw: int`` a dict of them.
        if p.kind is _P.VAR_POSITIONAL:
            t = tuple.__class_getitem__((t, ...))
        elif p.kind is _P.VAR_KEYWORD:
            t = dict.__class_getitem__((str, t))
        hints[p.name] = t
    if not hints:
        return None
    struct = None
    if not any(p.kind is _P.VAR_POSITIONAL for p in params):
        fields: list[Any] = []
        for p in params:
            if p.kind not in _POSITIONAL:
                continue
            t = Any if p.annotation is _P.empty else p.annotation
            fields.append((p.name, t) if p.default is _P.empty else (p.name, t, p.default))
        try:
            struct = msgspec.defstruct(
                f"{getattr(fn, '__name__', 'handler')}_args", fields, array_like=True, forbid_unknown_fields=True
            )
            msgspec.msgpack.Decoder(struct)  # unsupported types fail now, not at the first call
            msgspec.json.Decoder(struct)
        except (TypeError, ValueError):
            struct = None  # mutable defaults, odd names: the keyword path converts each argument
    return ArgumentSpec(sig, hints, struct)


def signature_of(fn: Callable[..., Any]) -> ArgumentSpec | None:
    """The :class:`ArgumentSpec` of handler ``fn``, or None when it has no annotation
    to honour (or no signature Python can read): its arguments go through untyped."""
    try:
        sig = inspect.signature(fn, eval_str=True)
    except (TypeError, ValueError, NameError):
        return None
    params = list(sig.parameters.values())
    spec = _build(fn, sig, params)
    # As a channel's handler, the first parameter is the caller's input stream.
    channel = _build(fn, sig, params[1:]) if params and params[0].kind in _POSITIONAL else None
    if spec is None:
        if channel is None:
            return None
        spec = ArgumentSpec(sig, {}, None)
    spec.channel = channel
    if params and _is_stream_type(params[0].annotation) and spec.hints:
        spec.hints.pop(params[0].name, None)
    return spec
