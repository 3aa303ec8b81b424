"""Method registration: a :class:`Router` maps method names to handlers."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from .arguments import ArgumentSpec, signature_of
from .exceptions import UsageError

__all__ = ["Authorize", "MethodSpec", "Router", "handler_kind"]

F = TypeVar("F", bound=Callable[..., Any])
# authorize(peer, method) -> allowed, peer an RpcPeer: see Router.
Authorize = Callable[[Any, str], bool]

SYNC = 0
ASYNC = 1
ASYNC_GEN = 2


def _target(fn: Callable[..., Any]) -> Any:
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    return target


def handler_kind(fn: Callable[..., Any]) -> int:
    """SYNC, ASYNC (coroutine function) or ASYNC_GEN (async generator function)."""
    target = _target(fn)
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


# What Router.add reads of a handler, by handler, while it lives: a server registers
# its built-in `fastrpc.subscribe` on every connection (peer.register), and reading a
# signature costs ~60 us. The id tells an equal but other handler apart.
_read: weakref.WeakKeyDictionary[Any, tuple[int, int, ArgumentSpec | None]] = weakref.WeakKeyDictionary()


def _kind_and_spec(fn: Callable[..., Any]) -> tuple[int, ArgumentSpec | None]:
    try:
        known = _read.get(fn)
    except TypeError:  # not hashable
        known = None
    if known is not None and known[0] == id(fn):
        return known[1], known[2]
    kind, spec = handler_kind(fn), signature_of(fn)
    try:
        _read[fn] = (id(fn), kind, spec)
    except TypeError:  # not hashable, or no weak references to it (__slots__ without __weakref__)
        pass
    return kind, spec


def _check_authorize(authorize: Authorize | None) -> None:
    if authorize is not None and (
        inspect.iscoroutinefunction(authorize) or inspect.iscoroutinefunction(getattr(authorize, "__call__", None))  # noqa: B004
    ):
        raise UsageError(
            "authorize must be a plain function returning a bool (it runs before each call, inline); "
            "do slow checks once per connection in the server's authenticate hook and keep the result "
            "in peer.identity"
        )


class MethodSpec:
    """What a call to one method needs besides its function: how to decode its
    arguments (``args``: None for untyped) and who may call it (``authorize``)."""

    __slots__ = ("args", "authorize")

    def __init__(self, args: ArgumentSpec | None, authorize: Authorize | None) -> None:
        self.args = args
        self.authorize = authorize


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

    Arguments are converted to the types of the handler's annotations (msgspec:
    a Struct or dataclass from a map, ``datetime``, ``UUID``, ``set`` ...); arguments
    that do not fit are refused with :class:`fastrpc.InvalidArguments`. Keyword
    arguments of a call (``peer.call("m", 1, x=2)``) reach the handler as such.

    ``authorize(peer, method) -> bool``: called before each call or notification of
    this router's methods (a method's own ``authorize=`` replaces it); False (or
    raising :class:`fastrpc.PermissionDenied`) refuses the call: the caller gets
    :class:`fastrpc.PermissionDenied`. ``peer.identity`` is what the server's
    ``authenticate`` hook returned; ``peer.request_headers`` the HTTP request's.
    """

    # Slots: the compiled call lane reads methods and specs where they are
    # (_lane.pxi); __dict__ and __weakref__ keep a Router as open as a plain class.
    __slots__ = ("__dict__", "__weakref__", "authorize", "fallback", "methods", "specs")

    def __init__(self, *, authorize: Authorize | None = None) -> None:
        _check_authorize(authorize)
        self.methods: dict[str, tuple[Callable[..., Any], int]] = {}
        # Only the methods that need more than a plain call (typed arguments, an
        # authorize hook): an empty dict keeps the others' path to one look-up.
        self.specs: dict[str, MethodSpec] = {}
        self.authorize = authorize
        self.fallback: Callable[[Any], Any] | None = None

    @overload
    def method(self, name_or_fn: F) -> F: ...

    @overload
    def method(self, name_or_fn: str | None = None, *, authorize: Authorize | None = None) -> Callable[[F], F]: ...

    def method(self, name_or_fn: Any = None, *, authorize: Authorize | None = None) -> Any:
        """Register a handler under its function name or the given name;
        ``authorize``: see :class:`Router` (this method's own hook)."""
        if callable(name_or_fn):
            self.add(name_or_fn.__name__, name_or_fn, authorize=authorize)
            return name_or_fn

        def deco(fn: F) -> F:
            self.add(name_or_fn or fn.__name__, fn, authorize=authorize)
            return fn

        return deco

    def add(self, name: str, fn: Callable[..., Any], *, authorize: Authorize | None = None) -> None:
        """Register ``fn`` as method ``name`` (replacing any earlier one)."""
        if not isinstance(name, str):
            raise TypeError("method names are str")
        target = _target(fn)
        if inspect.isgeneratorfunction(target) or inspect.isgeneratorfunction(getattr(target, "__call__", None)):  # noqa: B004
            raise UsageError(
                f"handler {name!r} is a generator function (def ... yield): a streaming method must be an "
                f"async generator (async def {name}(...): ... yield item), called with peer.stream({name!r}, ...)"
            )
        _check_authorize(authorize)
        kind, args = _kind_and_spec(fn)
        self.methods[name] = (fn, kind)
        check = authorize or self.authorize
        if args is not None or check is not None:
            self.specs[name] = MethodSpec(args, check)
        else:
            self.specs.pop(name, None)

    def match(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Set the catch-all handler: it gets the data of ``peer.request(data)``, and
        ``{"method": name, "params": [...]}`` for calls to unregistered methods."""
        self.fallback = fn
        return fn

    def lookup(self, name: str) -> tuple[Callable[..., Any], int] | None:
        """The handler of method ``name`` and its kind, if registered."""
        return self.methods.get(name)

    def spec(self, name: str) -> MethodSpec | None:
        """What a call to ``name`` needs besides its function (None: nothing)."""
        return self.specs.get(name) if self.specs else None
