"""Calls over a real loopback connection: handlers, values, errors, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import sys
from typing import Any

import msgspec
import pytest
from _util import NO_PROXY, QUIET, assert_idle, pair, raw_client, recv_binary, run, server_peer, until
from websockets.asyncio.client import connect as ws_connect

import fastrpc
from fastrpc import frames as F
from fastrpc import options as O
from fastrpc.protocol import Connection, Role, decode_error


def make_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    async def add_async(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    @router.method
    def echo(*args: Any) -> Any:
        return args[0] if len(args) == 1 else list(args)

    @router.method
    async def echo_async(value: Any) -> Any:
        return value

    @router.method("nothing")
    def nothing() -> None:
        return None

    @router.method
    def unencodable() -> Any:
        return object()

    @router.method
    def sync_returns_awaitable() -> Any:
        async def inner() -> str:
            return "awaited"

        return inner()

    return router


class Boom(Exception):
    pass


class Coded(Exception):
    code = 42


# ------------------------------------------------------------------ handlers


def test_sync_and_async_handlers() -> None:
    async def main() -> None:
        async with pair(make_router()) as (_, peer):
            assert await peer.call("add", 1, 2) == 3
            assert await peer.call("add_async", 20, 22) == 42
            assert await peer.call("nothing") is None
            assert await peer.call("sync_returns_awaitable") == "awaited"
            # Several in flight at once, sync replies mixed with async ones.
            got = await asyncio.gather(*(peer.call("add" if i % 2 else "add_async", i, i) for i in range(50)))
            assert got == [2 * i for i in range(50)]

    run(main())


def test_the_sync_reply_path_keeps_every_check() -> None:
    # A sync handler's reply is queued in the pass that read its request; what that
    # path skips (the awaitable test for plain results, the codec for bytes) must not
    # skip a check: authorize still runs for raw bytes arguments, a sync handler's
    # Future is awaited, a result the codec refuses still fails the call.
    router = fastrpc.Router()
    denied: list[str] = []

    def deny(peer: Any, method: str) -> bool:
        denied.append(method)
        return False

    @router.method(authorize=deny)
    def secret(data: bytes) -> bytes:
        return data

    @router.method
    def typed(data: bytes) -> bytes:
        return data[::-1]

    @router.method
    def future() -> Any:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_result, b"later")
        return fut

    @router.method
    def unencodable() -> Any:
        return {"x": object()}

    async def main() -> None:
        async with pair(router) as (_, peer):
            with pytest.raises(fastrpc.PermissionDenied):
                await peer.call("secret", b"abc")
            assert denied == ["secret"]
            assert await peer.call("typed", b"abc") == b"cba"
            assert await peer.call("typed", bytearray(b"xy")) == b"yx"  # not raw: converted
            assert await peer.call("future") == b"later"
            with pytest.raises(fastrpc.RemoteError, match="cannot encode"):
                await peer.call("unencodable")
            assert await peer.call("typed", b"") == b""

    run(main())


VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    float("inf"),
    "",
    "héllo wörld ✓",
    "x" * 100_000,
    [],
    [1, "two", 3.0, None, [4]],
    {},
    {"a": 1, "nested": {"b": [1, 2, {"c": None}]}},
    {"bin": b"\x00\x01"},  # bytes nested in a structure go through msgpack's bin type
    [b"a", b"b"],
    {1: "int key", 2: [None]},
    1e300,
    datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc),  # timestamp ext
]


def test_values_that_change_type_on_the_way() -> None:
    async def main() -> None:
        async with pair(make_router()) as (_, peer):
            assert await peer.call("echo_async", (1, (2, 3))) == [1, [2, 3]]
            assert await peer.call("echo_async", bytearray(b"ab")) == b"ab"
            assert await peer.call("echo_async", {"s": {1}}) in ({"s": [1]},)
            ext = await peer.call("echo_async", msgspec.msgpack.Ext(5, b"abc"))
            assert isinstance(ext, msgspec.msgpack.Ext) and (ext.code, ext.data) == (5, b"abc")
            # Unencodable results fail the call, not the connection.
            with pytest.raises(fastrpc.RemoteError):
                await peer.call("unencodable")
            assert await peer.call("add", 1, 1) == 2

    run(main())


@pytest.mark.parametrize("value", VALUES, ids=[f"v{i}" for i in range(len(VALUES))])
def test_result_types_roundtrip(value: Any) -> None:
    async def main() -> None:
        async with pair(make_router()) as (_, peer):
            assert await peer.call("echo_async", value) == value
            assert await peer.call("echo", value) == value

    run(main())


@pytest.mark.parametrize("payload", [b"", b"\x00", bytes(range(256)), b"\xc1" * 70_000])
def test_bytes_passthrough(payload: bytes) -> None:
    seen: list[Any] = []
    router = fastrpc.Router()

    @router.method
    def raw(data: Any) -> Any:
        seen.append(data)
        return data

    async def main() -> None:
        async with pair(router) as (_, peer):
            got = await peer.call("raw", payload)
            assert type(got) is bytes and got == payload
            assert type(seen[0]) is bytes and seen[0] == payload
            # Seed style: bytes data pass through as is, too.
            resp = await peer.request(payload)
            assert type(resp.data) is bytes and resp.data == payload

    router.match(lambda data: data)
    run(main())


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: str = "p"


class Item(msgspec.Struct):
    name: str
    qty: int
    tags: list[str] = []


def test_dataclass_and_struct_args() -> None:
    router = fastrpc.Router()

    @router.method
    def describe(point: Any, item: Any) -> Any:
        return {"point": point, "item": item}

    router.add("make_point", lambda: Point(3, 4))
    router.add("make_item", lambda: Item("nut", 1))

    async def main() -> None:
        async with pair(router) as (_, peer):
            got = await peer.call("describe", Point(1, 2), Item("bolt", 3, ["m4"]))
            assert got == {
                "point": {"x": 1, "y": 2, "label": "p"},
                "item": {"name": "bolt", "qty": 3, "tags": ["m4"]},
            }
            # Struct/dataclass results, too.
            assert await peer.call("make_point") == {"x": 3, "y": 4, "label": "p"}
            assert await peer.call("make_item") == {"name": "nut", "qty": 1, "tags": []}

    run(main())


def test_remote_error_carries_type_and_message() -> None:
    router = fastrpc.Router()

    @router.method
    def fail_sync() -> None:
        raise ValueError("bad value")

    @router.method
    async def fail_async(msg: str) -> None:
        await asyncio.sleep(0)
        raise Boom(msg)

    @router.method
    def fail_coded() -> None:
        raise Coded("with a code")

    router.add("ok", lambda: "ok")

    async def main() -> None:
        async with pair(router) as (_, peer):
            with pytest.raises(fastrpc.RemoteError) as ei:
                await peer.call("fail_sync")
            assert ei.value.type_name == "ValueError"
            assert ei.value.message == "bad value"
            assert ei.value.code is None
            assert ei.value.remote_traceback is None  # expose_tracebacks is off
            with pytest.raises(fastrpc.RemoteError) as ei:
                await peer.call("fail_async", "ünïcode message")
            assert (ei.value.type_name, ei.value.message) == ("Boom", "ünïcode message")
            with pytest.raises(fastrpc.RemoteError) as ei:
                await peer.call("fail_coded")
            assert (ei.value.type_name, ei.value.code) == ("Coded", 42)
            # The connection is still fine.
            assert not peer.closed
            assert await peer.call("ok") == "ok"

    run(main())


def test_expose_tracebacks() -> None:
    router = fastrpc.Router()

    @router.method
    def fail() -> None:
        raise KeyError("k")

    async def main() -> None:
        async with pair(router, server_opts={"expose_tracebacks": True}) as (_, peer):
            with pytest.raises(fastrpc.RemoteError) as ei:
                await peer.call("fail")
            assert ei.value.type_name == "KeyError"
            assert ei.value.remote_traceback and "KeyError" in ei.value.remote_traceback

    run(main())


def test_method_not_found() -> None:
    async def main() -> None:
        async with pair(make_router()) as (_, peer):
            with pytest.raises(fastrpc.RemoteError) as ei:
                await peer.call("no_such_method", 1)
            assert ei.value.type_name == "MethodNotFound"
            assert "no_such_method" in ei.value.message
            with pytest.raises(fastrpc.RemoteError) as ei:
                async for _ in peer.stream("no_such_stream"):
                    pass
            assert ei.value.type_name == "MethodNotFound"
            assert await peer.call("add", 1, 1) == 2

    run(main())


@pytest.mark.parametrize("sides", ["both", "client", "server"])
def test_json_codec(sides: str) -> None:
    server_opts = {"codec": "json"} if sides in ("both", "server") else {}
    client_opts = {"codec": "json"} if sides in ("both", "client") else {}

    async def main() -> None:
        async with pair(make_router(), server_opts=server_opts, client_opts=client_opts) as (_, peer):
            assert await peer.call("add", 2, 3) == 5
            value = {"a": [1, 2.5, "s", None, True], "b": {"c": "d"}}
            assert await peer.call("echo_async", value) == value
            assert await peer.call("echo", b"raw bytes") == b"raw bytes"
            assert [x async for x in peer.stream("echo_async", [1, 2])] == [[1, 2]]
            with pytest.raises(fastrpc.RemoteError) as ei:
                await peer.call("missing")
            assert ei.value.type_name == "MethodNotFound"

    run(main())


def test_request_and_match_seed_style() -> None:
    router = fastrpc.Router()
    seen: list[Any] = []

    @router.match
    async def catch_all(data: Any) -> Any:
        seen.append(data)
        if isinstance(data, dict) and data.get("fail"):
            raise RuntimeError("asked to fail")
        return {"echo": data}

    @router.method
    def known() -> str:
        return "known"

    async def main() -> None:
        async with pair(router) as (srv, peer):
            resp = await peer.request({"method": "x", "n": 1})
            assert isinstance(resp, fastrpc.Response)
            assert resp.data == {"echo": {"method": "x", "n": 1}}
            assert (await peer.request([1, 2, 3])).data == {"echo": [1, 2, 3]}
            assert (await peer.request("plain")).data == {"echo": "plain"}
            assert await peer.call("unknown", 1, "a") == {"echo": {"method": "unknown", "params": [1, "a"]}}
            assert await peer.call("known") == "known"
            with pytest.raises(fastrpc.RemoteError) as ei:
                await peer.request({"fail": True})
            assert ei.value.type_name == "RuntimeError"
            sp = await server_peer(srv)
            peer.match(lambda data: ["client", data])
            assert (await sp.request(7)).data == ["client", 7]

    run(main())
    assert {"method": "x", "n": 1} in seen


def test_notify() -> None:
    router = fastrpc.Router()
    got: list[Any] = []

    @router.method
    def note_sync(x: Any) -> None:
        got.append(("sync", x))

    @router.method
    async def note_async(x: Any) -> None:
        await asyncio.sleep(0)
        got.append(("async", x))

    @router.method
    def note_fail() -> None:
        raise RuntimeError("nobody hears this")

    @router.method
    def count() -> int:
        return len(got)

    async def main() -> None:
        async with pair(router) as (_, peer):
            peer.notify("note_sync", 1)
            peer.notify("note_async", 2)
            peer.notify("note_fail")
            peer.notify("no_such_method", 3)  # silently dropped
            peer.notify("note_sync", b"raw")
            await until(lambda: len(got) == 3, 5, "three notifications")
            assert sorted(got, key=repr) == sorted([("sync", 1), ("async", 2), ("sync", b"raw")], key=repr)
            assert await peer.call("count") == 3

    run(main())


def test_register_on_a_connection() -> None:
    async def main() -> None:
        async with pair(make_router()) as (server, peer):
            sp = await server_peer(server)
            # Per-connection methods, on either side; looked up before the router.
            sp.register("add", lambda a, b: f"{a}+{b}")
            peer.register("client_side", lambda: "from the client")

            async def client_async(x: int) -> int:
                return x * 10

            peer.register("client_async", client_async)
            assert await peer.call("add", 1, 2) == "1+2"
            assert await sp.call("client_side") == "from the client"
            assert await sp.call("client_async", 4) == 40
            with pytest.raises(fastrpc.RemoteError):
                await sp.call("add", 1, 2)  # the client has no "add"

    run(main())


def test_a_handler_is_read_once_while_it_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Router.add reads a handler's signature once for every router it goes into (a
    server registers its built-in subscribe on every connection: ~60 us a read), and
    still reads handlers it cannot remember (unhashable, or without weak references)
    each time."""
    from fastrpc import router as router_module
    from fastrpc.server import _Subscribe

    reads: list[Any] = []
    original = router_module.signature_of

    def counting(fn: Any) -> Any:
        reads.append(fn)
        return original(fn)

    monkeypatch.setattr(router_module, "signature_of", counting)

    class Handler:
        async def __call__(self, x: int) -> int:
            return x

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, x: int) -> int:
            return x

    class Slotted:
        __slots__ = ()  # no weak references to it

        def __call__(self, x: int) -> int:
            return x

    h, u, s = Handler(), Unhashable(), Slotted()
    for _ in range(3):
        r = fastrpc.Router()
        r.add("h", h)
        r.add("u", u)
        r.add("s", s)
        assert r.lookup("h") == (h, router_module.ASYNC) and r.spec("h") is not None
        assert r.lookup("u") == (u, router_module.SYNC) and r.spec("u") is not None
    assert sum(1 for f in reads if f is h) == 1
    assert sum(1 for f in reads if f is u) == 3
    assert sum(1 for f in reads if f is s) == 3

    # Equal (and equally hashed) handlers are still read each for itself.
    class Same:
        def __eq__(self, other: object) -> bool:
            return isinstance(other, Same)

        def __hash__(self) -> int:
            return 1

    class Plain(Same):
        def __call__(self, x: int) -> int:
            return x

    class Coroutine(Same):
        async def __call__(self, name: str) -> str:
            return name

    keep = [Plain(), Coroutine()]  # both alive at once
    r = fastrpc.Router()
    r.add("plain", keep[0])
    r.add("coroutine", keep[1])
    assert r.lookup("plain") == (keep[0], router_module.SYNC)
    assert r.lookup("coroutine") == (keep[1], router_module.ASYNC)
    plain, coroutine = r.spec("plain"), r.spec("coroutine")
    assert plain is not None and coroutine is not None
    assert plain.args is not None and coroutine.args is not None
    assert list(plain.args.hints) == ["x"] and list(coroutine.args.hints) == ["name"]

    async def main() -> None:
        async with fastrpc.serve(make_router(), **QUIET) as server:
            clients = [await fastrpc.connect(server.url, **QUIET) for _ in range(3)]
            assert [await c.call("add", 1, 2) for c in clients] == [3, 3, 3]
            for c in clients:
                await c.close()

    reads.clear()
    run(main())
    assert sum(1 for f in reads if type(f) is _Subscribe) == 1


def test_connections_with_the_same_terms_share_their_settings() -> None:
    """A server's connections announce the same HELLO: one Settings object for all of
    them (each copy cost ~130 B a connection), with the terms of its options."""

    async def main() -> None:
        async with fastrpc.serve(make_router(), max_streams=77, codec="json", **QUIET) as server:
            clients = [await fastrpc.connect(server.url, **QUIET) for _ in range(3)]
            other = await fastrpc.connect(server.url, max_streams=55, **QUIET)
            await until(lambda: len(server.peers) == 4)
            mine = {id(p.core.settings) for p in server.peers}
            assert len(mine) == 1
            terms = next(iter(server.peers)).core.settings
            assert terms.max_streams == 77 and terms.codec == 1 and terms.features == 1
            assert len({id(c.core.settings) for c in clients}) == 1
            assert other.core.settings is not clients[0].core.settings
            assert other.core.settings.max_streams == 55 and clients[0].core.settings.max_streams == O.MAX_STREAMS
            # What each side announced is what the other received.
            assert all(c.peer_settings == terms for c in clients)
            assert [await c.call("add", 1, 2) for c in clients] == [3, 3, 3]
            for c in (*clients, other):
                await c.close()

    run(main())


def test_a_peer_does_not_change_the_settings_it_is_given() -> None:
    """The Settings a peer is given may be shared by other connections: a peer whose
    codec or stream window differs from them announces a copy."""
    from fastrpc.peer import RpcPeer
    from fastrpc.settings import Settings
    from fastrpc.transport import Transport

    async def main() -> None:
        shared = Settings()
        json_peer = RpcPeer(Transport(None), Role.CLIENT, settings=shared, codec="json")
        assert shared == Settings() and shared.codec == 0
        assert json_peer.core.settings is not shared and json_peer.core.settings.codec == 1
        same = RpcPeer(Transport(None), Role.CLIENT, settings=shared)
        assert same.core.settings is shared

    run(main())


def test_current_peer_calls_back_to_the_client() -> None:
    router = fastrpc.Router()
    peers: list[fastrpc.RpcPeer] = []

    @router.method
    async def ask_client(x: int) -> Any:
        peer = fastrpc.current_peer()
        peers.append(peer)
        doubled = await peer.call("double", x)
        return {"doubled": doubled, "nested": await peer.call("call_server_again", x)}

    @router.method
    def inc(x: int) -> int:
        assert fastrpc.current_peer() is peers[0]
        return x + 1

    client_router = fastrpc.Router()

    @client_router.method
    def double(x: int) -> int:
        return 2 * x

    @client_router.method
    async def call_server_again(x: int) -> int:
        # current_peer() on the client is the client's own peer.
        return await fastrpc.current_peer().call("inc", x)  # type: ignore[no-any-return]

    async def main() -> None:
        with pytest.raises(LookupError):
            fastrpc.current_peer()
        async with pair(router, client_router=client_router) as (server, peer):
            assert await peer.call("ask_client", 5) == {"doubled": 10, "nested": 6}
            assert peers[0] is await server_peer(server)
            results = await asyncio.gather(*(peer.call("ask_client", i) for i in range(20)))
            assert results == [{"doubled": 2 * i, "nested": i + 1} for i in range(20)]

    run(main())


# --------------------------------------------------------------- cancellation


def slow_router(started: asyncio.Event, finished: asyncio.Event, cancelled: list[bool]) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def slow() -> str:
        try:
            started.set()
            await asyncio.sleep(30)
            return "late"
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        finally:
            finished.set()

    @router.method
    def ping() -> str:
        return "pong"

    return router


def test_timeout_raises_and_cancels_the_handler() -> None:
    async def main() -> None:
        started, finished, cancelled = asyncio.Event(), asyncio.Event(), []
        async with pair(slow_router(started, finished, cancelled)) as (server, peer):
            with pytest.raises(asyncio.TimeoutError):
                await peer.call("slow", timeout=0.2)
            await asyncio.wait_for(finished.wait(), 5)
            assert cancelled == [True]
            sp = await server_peer(server)
            await until(
                lambda: not sp.stats()["peer.tasks"] and sp.core.running_calls == 0, 5, "the server to forget the call"
            )
            await until(lambda: peer.core.pending_calls == 0, 5, "the call's slot to be freed")
            assert await peer.call("ping", timeout=5) == "pong"

    run(main())


def slot_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def ticks(n: int) -> Any:
        for i in range(n):
            await asyncio.sleep(0.05)
            yield i

    @router.method
    async def slow() -> None:
        await asyncio.sleep(30)

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    return router


def test_calls_waiting_for_a_slot_go_on_when_it_comes_back_without_an_answer() -> None:
    # The peer's max_pending_calls (1 here) taken: a waiting call was woken by an
    # answer only, so a slot freed by a streaming call's end, or by the answer to a
    # call we gave up on (cancelled, timed out), left it waiting for ever.
    async def main() -> None:
        async with pair(slot_router(), server_opts={"max_pending_calls": 1}) as (_, peer):
            async with peer.stream("ticks", 3) as s:
                it = s.__aiter__()
                assert await it.__anext__() == 0
                call = asyncio.ensure_future(peer.call("add", 1, 2))
                await asyncio.sleep(0.01)
                assert [x async for x in it] == [1, 2]
            assert await asyncio.wait_for(call, 5) == 3
            slow = asyncio.ensure_future(peer.call("slow"))
            await asyncio.sleep(0.1)
            slow.cancel()
            await asyncio.gather(slow, return_exceptions=True)
            assert await asyncio.wait_for(peer.call("add", 2, 3), 5) == 5
            with pytest.raises(fastrpc.CallTimeout):
                await peer.call("slow", timeout=0.1)
            assert await asyncio.wait_for(peer.call("add", 3, 4), 5) == 7

    run(main(), 20)


def test_timeout_covers_the_wait_for_a_call_slot() -> None:
    # timeout= counted from the request's sending only: a call that waited for a
    # slot could return long after its timeout. Not sent at all when no slot came.
    async def main() -> None:
        async with pair(slot_router(), server_opts={"max_pending_calls": 1}) as (_, peer):
            busy = asyncio.ensure_future(peer.call("slow"))
            await until(lambda: not peer.core.can_call(), 5, "the slot to be taken")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(fastrpc.CallTimeout, match=r"found no call slot within 0\.3 s"):
                await peer.call("add", 1, 2, timeout=0.3)
            with pytest.raises(fastrpc.CallTimeout, match=r"found no call slot within 0\.2 s"):
                async for _ in peer.stream("ticks", 3, timeout=0.2):
                    pass
            assert loop.time() - t0 < 2
            # A stream whose first iteration was cancelled while it waited is sent
            # by the next one (it was never sent, and every later try hung).
            s = peer.stream("ticks", 2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(s.__anext__(), 0.1)
            busy.cancel()
            await asyncio.gather(busy, return_exceptions=True)
            assert await asyncio.wait_for(s.__anext__(), 5) == 0
            await s.aclose()

    run(main(), 20)


def test_a_call_slot_awaited_while_reconnecting_says_the_connection_was_down() -> None:
    # A reconnecting client's calls wait for a slot until the next connection's
    # handshake: a timeout= passing meanwhile blamed the other side's
    # max_pending_calls (plain and streaming calls alike).
    from _proxy import proxy

    async def main() -> None:
        async with fastrpc.serve(slot_router(), "127.0.0.1", 0, **QUIET) as server:
            async with proxy(server.port) as px:
                policy = fastrpc.RetryPolicy(initial_delay=0.01, max_delay=0.05)
                async with fastrpc.connect(px.url, reconnect=policy, **QUIET) as peer:
                    assert await peer.call("add", 1, 2) == 3
                    px.refusing = True  # a server that is down
                    px.cut()
                    await until(lambda: not peer.connected and not peer.core.can_call(), 5, "the new session")
                    down = r"found no call slot within 0\.1 s \(its timeout= argument; the connection was down, "
                    with pytest.raises(fastrpc.CallTimeout, match=down + r".*reconnect=.*it was not sent"):
                        await peer.call("add", 1, 2, timeout=0.1)
                    with pytest.raises(fastrpc.CallTimeout, match=down) as info:
                        async for _ in peer.stream("ticks", 1, timeout=0.1):
                            pass
                    assert "max_pending_calls" not in str(info.value)
                    px.refusing = False
                    assert await asyncio.wait_for(peer.call("add", 2, 3), 5) == 5

    run(main(), 20)


def test_deadline_travels_to_the_server() -> None:
    # The server enforces the caller's deadline itself, even if the client keeps waiting.
    async def main() -> None:
        started, finished, cancelled = asyncio.Event(), asyncio.Event(), []
        async with pair(slow_router(started, finished, cancelled)) as (server, _):
            # A client that keeps waiting past the deadline it sent (a raw one: fastrpc's
            # own client gives up at its deadline too).
            async with raw_client(server.url) as raw:
                raw.core.send_request("slow", raw.core_payload(()), timeout=0.1)
                await raw.send(raw.core.next_message())
                frames = await raw.recv_frames(5)
            assert [f.type for f in frames] == [F.ERROR]
            error = decode_error(frames[0].payload)
            assert error.type_name == "TimeoutError"
            assert finished.is_set() and cancelled == [True]

    run(main())


def test_cancelling_the_caller_cancels_the_remote_handler() -> None:
    async def main() -> None:
        started, finished, cancelled = asyncio.Event(), asyncio.Event(), []
        async with pair(slow_router(started, finished, cancelled)) as (server, peer):
            task = asyncio.ensure_future(peer.call("slow"))
            await asyncio.wait_for(started.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(finished.wait(), 5)
            assert cancelled == [True]
            sp = await server_peer(server)
            await until(
                lambda: not sp.stats()["peer.tasks"] and sp.core.running_calls == 0, 5, "the server to forget the call"
            )
            await until(lambda: peer.core.pending_calls == 0, 5, "the call's slot to be freed")
            assert await peer.call("ping") == "pong"

    run(main())


def test_every_way_a_call_ends_leaves_no_future_behind() -> None:
    # peer.call's future is taken off the peer's table by whoever settles it (the
    # answer, the error) or, when the caller gives up, by the caller: none stays.
    router = make_router()
    gate = asyncio.Event()

    @router.method
    async def wait() -> None:
        await gate.wait()

    @router.method
    def boom() -> None:
        raise Boom("no")

    async def main() -> None:
        async with pair(router) as (_, peer):
            assert await peer.call("add", 1, 2) == 3
            assert await peer.call("echo", b"raw") == b"raw"
            assert await peer.call("add", 1, b=2) == 3
            assert not peer.stats()["peer.calls"]
            with pytest.raises(fastrpc.RemoteError, match="no"):
                await peer.call("boom")
            with pytest.raises(fastrpc.MethodNotFound):
                await peer.call("missing")
            assert not peer.stats()["peer.calls"]
            task = asyncio.ensure_future(peer.call("wait"))
            await until(lambda: peer.stats()["peer.calls"], 5, "the call to be made")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not peer.stats()["peer.calls"]
            with pytest.raises(fastrpc.CallTimeout):
                await peer.call("wait", timeout=0.05)
            assert not peer.stats()["peer.calls"]
            gate.set()
            assert await peer.call("wait") is None
            assert not peer.stats()["peer.calls"]

    run(main())


def test_many_concurrent_calls() -> None:
    router = make_router()

    async def main() -> None:
        async with pair(router) as (_, peer):
            n = 1000
            calls = [peer.call("add_async" if i % 3 else "add", i, 1) for i in range(n)]
            assert await asyncio.gather(*calls) == [i + 1 for i in range(n)]
            # More than the server's max_pending_calls: the client waits for slots.
        async with pair(router, server_opts={"max_pending_calls": 16}) as (_, peer):
            got = await asyncio.gather(*(peer.call("add_async", i, 2) for i in range(1000)))
            assert got == [i + 2 for i in range(1000)]
            assert peer.core.pending_calls == 0

    run(main(), timeout=30)


def test_a_window_of_calls_crosses_in_parts() -> None:
    # 200 calls made in one loop pass leave in messages of about EARLY_FLUSH bytes, and
    # their answers in parts too: the server answers the first part while the client
    # makes the rest (sent as one batch, the two sides took turns). A few calls made
    # in one pass still share one message.
    async def main() -> None:
        async with pair(make_router()) as (server, peer):
            payload = b"p" * 16
            await peer.call("echo", payload)
            sp = await server_peer(server)
            for n, fewest, most in ((200, 3, 200), (10, 1, 2)):
                sent, sent_bytes, answered = (
                    peer.core.traffic.messages_out,
                    peer.core.traffic.bytes_out,
                    sp.core.traffic.messages_out,
                )
                assert await asyncio.gather(*(peer.call("echo", payload) for _ in range(n))) == [payload] * n
                parts = peer.core.traffic.messages_out - sent
                assert fewest <= parts <= most, (n, parts)
                assert (peer.core.traffic.bytes_out - sent_bytes) / parts < O.EARLY_FLUSH + 64
                assert fewest <= sp.core.traffic.messages_out - answered <= most

    run(main(), timeout=30)


def test_calls_after_close_fail() -> None:
    async def main() -> None:
        async with pair(make_router()) as (_, peer):
            await peer.close()
            with pytest.raises(fastrpc.ConnectionClosed):
                await peer.call("add", 1, 2)
            with pytest.raises(fastrpc.ConnectionClosed):
                peer.notify("add", 1, 2)

    run(main())


def test_ping() -> None:
    async def main() -> None:
        async with pair(make_router()) as (_, peer):
            rtt = await peer.ping(timeout=5)
            assert 0 <= rtt < 5

    run(main())


def test_cancel_before_the_handler_started() -> None:
    # REQUEST and CANCEL leave in one message: the server cancels a handler task that
    # never ran. Both sides must still finish the call (no slot leaked on either side).
    router = fastrpc.Router()
    ran: list[str] = []

    @router.method
    async def slow() -> None:
        ran.append("slow")
        await asyncio.sleep(30)

    @router.method
    async def slow_stream() -> Any:
        ran.append("slow_stream")
        await asyncio.sleep(30)
        yield 1

    @router.method
    def ping() -> str:
        return "pong"

    async def main() -> None:
        async with pair(router, server_opts={"max_pending_calls": 4}) as (server, peer):
            for _ in range(10):  # more than max_pending_calls: leaked slots would show
                task = asyncio.ensure_future(peer.call("slow"))
                await asyncio.sleep(0)  # REQUEST queued, the writer not run yet
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                s = peer.stream("slow_stream")
                started = asyncio.ensure_future(s.__anext__())
                await asyncio.sleep(0)
                started.cancel()
                await s.aclose()
                with pytest.raises(asyncio.CancelledError):
                    await started
            sp = await server_peer(server)
            await assert_idle(peer, sp)
            assert await peer.call("ping", timeout=5) == "pong"

    run(main())


def test_an_async_handler_that_does_not_wait_answers_with_the_read_on_312() -> None:
    # Python 3.12+ starts a handler's task eagerly (asyncio.eager_task_factory): an
    # async handler that returns without waiting answers in the write of the read that
    # brought its call, beside a sync handler's answer. On 3.11 its first step waits
    # for the loop, so its answer leaves in a later message. One that waits answers
    # later either way.
    router = fastrpc.Router()

    @router.method
    def now_sync() -> str:
        return "sync"

    @router.method
    async def now_async() -> str:
        return "async"

    @router.method
    async def later() -> str:
        await asyncio.sleep(0)
        return "later"

    eager = sys.version_info >= (3, 12)

    async def main() -> None:
        async with pair(router) as (server, _), raw_client(server.url) as raw:
            ids = [raw.core.send_call(m, raw.core_payload(())) for m in ("now_sync", "now_async", "later")]
            await raw.send(raw.core.next_message())  # the three calls in one message
            answers: list[list[tuple[int, Any]]] = []
            while sum(map(len, answers)) < 3:
                frames = await raw.recv_frames(5)
                answers.append([(f.id, msgspec.msgpack.decode(f.payload)) for f in frames if f.type == F.RESPONSE])
            if eager:
                assert answers == [[(ids[0], "sync"), (ids[1], "async")], [(ids[2], "later")]]
            else:
                assert answers == [[(ids[0], "sync")], [(ids[1], "async")], [(ids[2], "later")]]

    run(main())


def test_an_async_handler_runs_in_its_own_task_from_its_first_line() -> None:
    # Eager or not, a handler's code runs inside its task: current_task() is that task,
    # asyncio.timeout() works before the first await, and the task is cancellable.
    router = fastrpc.Router()
    seen: list[Any] = []

    @router.method
    async def inside() -> bool:
        task = asyncio.current_task()
        seen.append(task)
        async with asyncio.timeout(5):
            pass
        return task is not None and not task.done()

    async def main() -> None:
        async with pair(router) as (_, peer):
            assert await peer.call("inside", timeout=5) is True
            assert await peer.call("inside", timeout=5) is True
        assert len(seen) == 2 and seen[0] is not seen[1]

    run(main())


def test_a_loop_with_a_task_factory_of_its_own_keeps_it() -> None:
    # Eager or not, a handler's task comes from the loop's own task factory when it has
    # one (instrumentation, a custom Task class).
    router = fastrpc.Router()

    @router.method
    async def inside() -> bool:
        return type(asyncio.current_task()) is Counted

    class Counted(asyncio.Task):  # type: ignore[type-arg]
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda loop, coro, **kw: Counted(coro, loop=loop, **kw))
        try:
            async with pair(router) as (_, peer):
                assert await peer.call("inside", timeout=5) is True
        finally:
            loop.set_task_factory(None)

    run(main())


def test_cancel_stream_call_before_first_item() -> None:
    router = fastrpc.Router()
    started = []

    @router.method
    async def late() -> Any:
        started.append(1)
        await asyncio.sleep(30)
        yield 1

    @router.method
    async def returns_iterable_late() -> Any:
        started.append(2)
        await asyncio.sleep(30)
        return [1, 2]

    async def main() -> None:
        async with pair(router) as (server, peer):
            sp = await server_peer(server)
            for method in ("late", "returns_iterable_late"):
                s = peer.stream(method)
                nxt = asyncio.ensure_future(s.__anext__())
                await until(lambda: sp.stats()["peer.tasks"], 5, "the handler to start")
                await until(lambda: len(started) and not None, 5)
                await asyncio.sleep(0.01)
                nxt.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await nxt
                await s.aclose()
                await assert_idle(peer, sp)

    run(main())


def test_a_connection_handler_answers_a_request_sent_with_the_handshake() -> None:
    # A client may send its first request right behind its HELLO. A handler's methods,
    # registered before its first await, must be there for it: the server reads no
    # request before the handler starts (it once dispatched it a few loop passes
    # early, and the call got MethodNotFound).
    async def main() -> None:
        async def handler(peer: fastrpc.RpcPeer) -> None:
            peer.register("whoami", lambda: "handler")
            await peer.wait_closed()

        async with fastrpc.serve(handler, "127.0.0.1", 0, **QUIET) as server:
            core = Connection(Role.CLIENT)
            ws = await ws_connect(server.url, compression=None, ping_interval=None, **NO_PROXY)
            try:
                await ws.send(core.handshake())
                m = b"whoami"
                await ws.send(F.encode_frame(F.REQUEST, 0, 1, F.encode_varint(len(m)) + m + b"\x90"))
                core.receive_message(await recv_binary(ws, 5.0))  # the server's HELLO
                assert core.ready
                replies: list[Any] = []
                while not replies:
                    frames = F.decode_message(await recv_binary(ws, 5.0), 1 << 20)
                    replies = [f for f in frames if f.id == 1 and f.type in (F.RESPONSE, F.ERROR)]
                assert replies[0].type == F.RESPONSE, decode_error(replies[0].payload)
                assert msgspec.msgpack.decode(replies[0].payload) == "handler"
            finally:
                await ws.close()

    run(main(), 10)


@pytest.mark.parametrize("who", ["client calls", "server calls"])
def test_a_message_of_large_calls_read_into_its_own_buffer_is_answered(who: str) -> None:
    """Calls made in one loop pass leave as one message; twelve of 256 KiB make a
    3 MiB message, which the receiving transport reads into a buffer of its own (a
    bytearray: its large payloads reach the core as views of it). Every call is
    answered, in either direction (the method name read from such a view once raised
    an unhashable TypeError and closed the connection with 1011)."""
    blob = bytes(range(256)) * 1024
    server_router = fastrpc.Router()
    client_router = fastrpc.Router()
    for router in (server_router, client_router):

        @router.method
        def echo(x):  # type: ignore[no-untyped-def]
            return x

    @server_router.method
    async def ask_back(n: int) -> list[int]:
        peer = fastrpc.current_peer()
        got = await asyncio.gather(*(peer.call("echo", blob + bytes([i])) for i in range(n)))
        return [g[-1] for g in got]

    async def main() -> None:
        async with pair(server_router, client_router=client_router) as (_, peer):
            if who == "client calls":
                got = await asyncio.wait_for(
                    asyncio.gather(*(peer.call("echo", blob + bytes([i])) for i in range(12))), 10
                )
                assert [g[-1] for g in got] == list(range(12)) and all(g[:-1] == blob for g in got)
            else:
                assert await asyncio.wait_for(peer.call("ask_back", 12), 10) == list(range(12))
            assert await peer.call("echo", b"after") == b"after"

    run(main(), 30)


def test_a_handlers_keyword_argument_may_be_named_method_or_items() -> None:
    # The method's name is positional-only in call/notify/stream/channel (and a
    # channel's items): call("http", "/x", method="POST") raised TypeError.
    router = fastrpc.Router()

    @router.method
    def http(path: str, method: str = "GET") -> str:
        return f"{method} {path}"

    @router.method
    async def pages(path: str, method: str = "GET") -> Any:
        yield f"{method} {path}"

    @router.method
    async def tagged(items: fastrpc.ReceiveStream[Any], items_tag: str = "", method: str = "") -> Any:
        async for x in items:
            yield f"{method}:{x}"

    async def source() -> Any:
        yield 1

    async def main() -> None:
        async with pair(router) as (_, peer):
            assert await peer.call("http", "/x", method="POST") == "POST /x"
            assert [x async for x in peer.stream("pages", "/y", method="PUT")] == ["PUT /y"]
            assert [x async for x in peer.channel("tagged", source(), method="M")] == ["M:1"]
            peer.notify("http", "/z", method="HEAD")

    run(main())


def test_an_infinite_timeout_is_none_and_nan_is_refused() -> None:
    # timeout=math.inf raised OverflowError (and NaN ValueError) deep in the
    # deadline's encoding, after the call had taken its slot.
    import math

    async def main() -> None:
        async with pair(slot_router()) as (_, peer):
            assert await peer.call("add", 1, 2, timeout=math.inf) == 3
            assert [x async for x in peer.stream("ticks", 2, timeout=math.inf)] == [0, 1]
            with pytest.raises(ValueError, match="not NaN"):
                await peer.call("add", 1, 2, timeout=math.nan)
            assert await peer.call("add", 2, 2) == 4

    run(main())
