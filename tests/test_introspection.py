"""The reserved call ``fastrpc.methods``: what a server lists, and turning it off."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _util import pair, run, server_peer

import fastrpc
from fastrpc.introspection import METHODS, describe, signature_text


def make_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int = 2) -> int:
        """Add two numbers.

        Both are ints.
        """
        return a + b

    @router.method("slow_add")
    async def slow(a: int, *, scale: float = 1.0) -> float:
        return a * scale

    @router.method
    async def ticks(n: int) -> AsyncIterator[int]:
        """Count."""
        for i in range(n):
            yield i

    @router.method
    async def upper(items: fastrpc.ReceiveStream[str], suffix: str) -> AsyncIterator[str]:
        async for item in items:
            yield item.upper() + suffix

    class Counter:
        """A callable object."""

        def __call__(self, step: int) -> int:
            return step

    router.add("counter", Counter())
    router.add("partial", functools.partial(lambda x, y: x + y, 1))
    router.add("fastrpc.private", lambda: None)  # reserved names are never listed
    return router


EXPECTED = [
    {
        "name": "add",
        "kind": "call",
        "signature": "(a: int, b: int = 2) -> int",
        "doc": "Add two numbers.\n\nBoth are ints.",
    },
    {"name": "slow_add", "kind": "call", "signature": "(a: int, *, scale: float = 1.0) -> float", "doc": ""},
    {"name": "ticks", "kind": "stream", "signature": "(n: int) -> AsyncIterator[int]", "doc": "Count."},
    {
        "name": "upper",
        "kind": "channel",
        "signature": "(items: fastrpc.streams.ReceiveStream[str], suffix: str) -> AsyncIterator[str]",
        "doc": "",
    },
    {"name": "counter", "kind": "call", "signature": "(step: int) -> int", "doc": "A callable object."},
    {"name": "partial", "kind": "call", "signature": "(y)", "doc": ""},
]


def test_describe_router() -> None:
    got = describe(make_router())
    assert [m["name"] for m in got] == [m["name"] for m in EXPECTED]
    for g, e in zip(got, EXPECTED):
        assert g == e  # the partial's doc is its function's (none), not functools.partial's


def test_a_partial_handler_is_listed_with_its_functions_doc() -> None:
    def scale(factor: int, x: int) -> int:
        """Multiply x by factor."""
        return factor * x

    router = fastrpc.Router()
    router.add("double", functools.partial(scale, 2))
    router.add("quadruple", functools.partial(functools.partial(scale), 4))
    assert describe(router) == [
        {"name": "double", "kind": "call", "signature": "(x: int) -> int", "doc": "Multiply x by factor."},
        {"name": "quadruple", "kind": "call", "signature": "(x: int) -> int", "doc": "Multiply x by factor."},
    ]


def test_signature_text_without_signature() -> None:
    assert signature_text(print).startswith("(")  # builtins: whatever Python can tell
    assert signature_text(lambda x: x) == "(x)"

    def bad(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    assert signature_text(bad) == "(x: 'NoSuchType') -> 'None'"  # kept as text


def test_methods_over_a_connection() -> None:
    async def main() -> None:
        async with pair(make_router()) as (server, peer):
            methods = await peer.call(METHODS)
            assert [m["name"] for m in methods] == [m["name"] for m in EXPECTED]
            assert methods[0] == EXPECTED[0]
            # The connection's own registrations come first, and win over the router's.
            sp = await server_peer(server)

            def add(x: Any) -> Any:
                """Own add."""
                return x

            sp.register("add", add)
            sp.register("extra", lambda: 1)
            methods = await peer.call(METHODS)
            assert [m["name"] for m in methods][:3] == ["add", "extra", "slow_add"]
            assert methods[0]["doc"] == "Own add." and methods[0]["signature"] == "(x: Any) -> Any"
            assert len(methods) == len(EXPECTED) + 1

    run(main())


def test_introspection_off() -> None:
    async def main() -> None:
        async with pair(make_router(), server_opts={"introspection": False}) as (_, peer):
            with pytest.raises(fastrpc.RemoteError) as info:
                await peer.call(METHODS)
            assert info.value.type_name == "MethodNotFound"
            assert await peer.call("add", 1) == 3

    run(main())


def test_a_method_named_fastrpc_methods_wins() -> None:
    # A user's registration under the reserved name answers instead (their choice).
    router = fastrpc.Router()
    router.add(METHODS, lambda: ["mine"])

    async def main() -> None:
        async with pair(router) as (_, peer):
            assert await peer.call(METHODS) == ["mine"]

    run(main())


def test_a_catch_all_does_not_hide_introspection() -> None:
    router = fastrpc.Router()
    router.match(lambda data: {"caught": data})
    router.add("one", lambda: 1)

    async def main() -> None:
        async with pair(router) as (_, peer):
            assert [m["name"] for m in await peer.call(METHODS)] == ["one"]
            assert await peer.call("other", 5) == {"caught": {"method": "other", "params": [5]}}

    run(main())


def test_client_router_is_listed_to_the_server() -> None:
    client_router = fastrpc.Router()

    @client_router.method
    def ui_alert(text: str) -> None:
        """Show ``text``."""

    async def main() -> None:
        async with pair(fastrpc.Router(), client_router=client_router) as (server, peer):
            sp = await server_peer(server)
            assert await sp.call(METHODS) == [
                {"name": "ui_alert", "kind": "call", "signature": "(text: str) -> None", "doc": "Show ``text``."}
            ]
            assert await peer.call(METHODS) == []

    run(main())
