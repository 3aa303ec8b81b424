"""Method registration: a :class:`Router` maps method names to handlers."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

__all__ = ["Router", "handler_kind"]

F = TypeVar("F", bound=Callable[..., Any])

SYNC = 0
ASYNC = 1
ASYNC_GEN = 2


def handler_kind(fn: Callable[..., Any]) -> int:
    """SYNC, ASYNC (coroutine function) or ASYNC_GEN (async generator function)."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    call = getattr(target, "__call__", None)  # noqa: B004 - the bound __call__ itself, not callable()
    if inspect.isasyncgenfunction(target) or (
        not inspect.isfunction(target) and not inspect.ismethod(target) and inspect.isasyncgenfunction(call)
    ):
        return ASYNC_GEN
    if inspect.iscoroutinefunction(target) or (
        not inspect.isfunction(target) and not inspect.ismethod(target) and inspect.iscoroutinefunction(call)
    ):
        return ASYNC
    return SYNC


class Router:
    """Handlers by method name, shared by every connection of a server.

    ::

        router = Router()

        @router.method
        async def add(a: int, b: int) -> int:
            return a + b

        @router.method("ticks")
        async def ticker(n: int):
            for i in range(n):
                yield i          # an async generator handler streams its items

    A handler may be sync, async, or an async generator (a streaming method, called
    with ``peer.stream(name, ...)``; with ``peer.channel(name, items)`` its first
    argument is the caller's stream). :meth:`match` sets the seed's catch-all.
    """

    def __init__(self) -> None:
        self.methods: dict[str, tuple[Callable[..., Any], int]] = {}
        self.fallback: Callable[[Any], Any] | None = None

    @overload
    def method(self, name_or_fn: F) -> F: ...

    @overload
    def method(self, name_or_fn: str | None = None) -> Callable[[F], F]: ...

    def method(self, name_or_fn: Any = None) -> Any:
        """Register a handler under its function name or the given name."""
        if callable(name_or_fn):
            self.add(name_or_fn.__name__, name_or_fn)
            return name_or_fn

        def deco(fn: F) -> F:
            self.add(name_or_fn or fn.__name__, fn)
            return fn

        return deco

    def add(self, name: str, fn: Callable[..., Any]) -> None:
        """Register ``fn`` as method ``name`` (replacing any earlier one)."""
        if not isinstance(name, str):
            raise TypeError("method names are str")
        self.methods[name] = (fn, handler_kind(fn))

    def match(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Set the catch-all handler: it gets the data of ``peer.request(data)``, and
        ``{"method": name, "params": [...]}`` for calls to unregistered methods."""
        self.fallback = fn
        return fn

    def lookup(self, name: str) -> tuple[Callable[..., Any], int] | None:
        """``(handler, kind)`` registered under ``name``, or None."""
        return self.methods.get(name)
