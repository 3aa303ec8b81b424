"""Method introspection: the reserved method ``fastrpc.methods``.

A peer with introspection on (the default: ``serve(..., introspection=False)`` turns
it off) answers a call to ``fastrpc.methods`` with the list of methods it serves,
each ``{"name", "kind", "signature", "doc"}``::

    methods = await peer.call("fastrpc.methods")
    # [{"name": "add", "kind": "call", "signature": "(a: int, b: int) -> int", "doc": "..."}]

``kind`` is ``"call"`` (sync or async handler: ``peer.call``), ``"stream"`` (an async
generator: ``peer.stream``) or ``"channel"`` (an async generator whose first
parameter is annotated as a stream, :class:`fastrpc.ReceiveStream` or an async
iterable/iterator: ``peer.channel``). The connection's own registrations
(``peer.register``) come first, then the router's; names starting with ``fastrpc.``
are reserved and never listed. ``fastrpc methods URL`` prints this list.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .router import ASYNC_GEN, Router

__all__ = ["METHODS", "RESERVED_PREFIX", "describe", "describe_handler", "signature_text"]

METHODS = "fastrpc.methods"
"""The reserved method name a peer answers with its method list."""

RESERVED_PREFIX = "fastrpc."
"""Method names under this prefix belong to fastrpc itself."""

# First-parameter annotations that make an async generator a channel handler.
_STREAM_ANNOTATIONS = ("ReceiveStream", "AsyncIterator", "AsyncIterable")


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # an annotation that does not evaluate: keep the text
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature
            return None


def signature_text(fn: Callable[..., Any]) -> str:
    """``fn``'s signature as text (``"(a: int, b: int) -> int"``); ``"(...)"`` when
    Python cannot tell."""
    sig = _signature(fn)
    if sig is None:
        return "(...)"
    return str(sig).replace("typing.", "").replace("collections.abc.", "")


def _is_channel(sig: inspect.Signature | None) -> bool:
    if sig is None:
        return False
    params = list(sig.parameters.values())
    if not params:
        return False
    ann = params[0].annotation
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", None) or repr(ann)
    return any(name in str(text) for name in _STREAM_ANNOTATIONS)


def describe_handler(name: str, fn: Callable[..., Any], kind: int) -> dict[str, str]:
    """The entry of one method: ``{"name", "kind", "signature", "doc"}``."""
    sig = _signature(fn)
    if kind == ASYNC_GEN:
        what = "channel" if _is_channel(sig) else "stream"
    else:
        what = "call"
    return {
        "name": name,
        "kind": what,
        "signature": signature_text(fn),
        "doc": inspect.cleandoc(inspect.getdoc(_unwrap_partial(fn)) or ""),
    }


def _unwrap_partial(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function a ``functools.partial`` (or partial of partials) calls, whose
    docstring is the method's (a partial's own is ``functools.partial``'s)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def describe(*routers: Router) -> list[dict[str, str]]:
    """The method list of ``routers`` (the first registration of a name wins), in
    registration order, reserved names left out."""
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    for router in routers:
        for name, (fn, kind) in router.methods.items():
            if name in seen or name.startswith(RESERVED_PREFIX):
                continue
            seen.add(name)
            out.append(describe_handler(name, fn, kind))
    return out
