"""The seed's JSON mode from Python, over real loopback sockets: how the server picks
the mode (first message, json_wait, json_paths), the welcome, heartbeats, error
replies, early stream ends, closed stream ids, relay ``to`` routing, the Python JSON
client (``connect(url, protocol="json")``), and named streams in binary mode."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
from typing import Any

import pytest
from _util import NO_PROXY, run, until
from websockets.asyncio.client import connect as ws_connect

import fastrpc
from fastrpc.jsonmode import JsonPeer
from fastrpc.protocol import Connection, Role

QUIET = {"keepalive_interval": None, "ws_ping_interval": None}


def make_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    def failing() -> None:
        raise KeyError("nope")

    @router.method
    async def total(sid: Any) -> Any:
        _, stream = fastrpc.current_peer().receive_stream(sid)
        try:
            return sum([x async for x in stream])
        except fastrpc.RemoteStreamError as exc:
            return f"failed: {exc.message}"

    @router.method
    async def numbers(n: int, name: Any = None) -> Any:
        async def feed() -> Any:
            for i in range(n):
                yield i

        return await fastrpc.current_peer().send_stream(feed(), name)

    @router.method
    def held() -> int:
        peer = fastrpc.current_peer()
        assert isinstance(peer, JsonPeer)
        return len(peer.receive_stream("probe")[1].items)

    return router


async def raw(url: str) -> Any:
    return await ws_connect(url, compression=None, ping_interval=None, **NO_PROXY)


async def recv_json(ws: Any, timeout: float = 5) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


# ------------------------------------------------------------ choosing the mode


def test_a_text_first_message_is_welcomed_then_answered() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            ws = await raw(server.url)
            await ws.send(json.dumps({"category": "ping", "timestamp": 7}))
            welcome = await recv_json(ws)
            assert welcome["category"] == "welcome" and isinstance(welcome["clientId"], str)
            assert await recv_json(ws) == {"category": "pong", "timestamp": 7}
            assert welcome["clientId"] in server.json_peers
            await ws.close()

    run(main())


def test_a_silent_connection_is_welcomed_after_json_wait_and_closed_if_it_stays_silent() -> None:
    async def main() -> None:
        opts = {**QUIET, "json_wait": 0.1, "handshake_timeout": 0.5}
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **opts) as server:
            ws = await raw(server.url)
            loop = asyncio.get_running_loop()
            start = loop.time()
            welcome = await recv_json(ws)
            assert welcome["category"] == "welcome" and 0.08 <= loop.time() - start < 0.4
            # Idle past handshake_timeout: closed like any idle connection.
            with pytest.raises(Exception):
                await asyncio.wait_for(ws.recv(), 3)
            assert ws.protocol.close_rcvd.code == 1008
            # One that speaks after its welcome is served under that client id.
            ws = await raw(server.url)
            welcome = await recv_json(ws)
            await ws.send(
                json.dumps({"category": "request", "requestId": "r", "data": {"method": "add", "params": [1, 2]}})
            )
            assert await recv_json(ws) == {"category": "response", "requestId": "r", "data": 3}
            assert list(server.json_peers) == [welcome["clientId"]]
            await ws.close()

    run(main())


def test_a_binary_client_whose_hello_comes_after_the_welcome_is_served_in_binary() -> None:
    async def main() -> None:
        # json_wait 0: the welcome goes out before the HELLO can arrive; the server
        # still takes the HELLO, and fastrpc's client skips the welcome.
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, json_wait=0.0, **QUIET) as server:
            for _ in range(3):
                async with fastrpc.connect(server.url, **QUIET) as peer:
                    assert await peer.call("add", 2, 2) == 4
            ws = await raw(server.url)
            assert (await recv_json(ws))["category"] == "welcome"
            await ws.send(Connection(Role.CLIENT).handshake())
            assert isinstance(await asyncio.wait_for(ws.recv(), 5), bytes)  # the server's HELLO
            await ws.close()

    run(main())


def test_json_paths_are_json_from_the_start() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, json_paths=("/seed",), **QUIET) as server:
            ws = await raw(server.url + "/seed?token=x")
            assert (await recv_json(ws, 0.3))["category"] == "welcome"  # at once
            await asyncio.sleep(0.3)  # silent, and not closed
            await ws.send(
                json.dumps({"category": "request", "requestId": 1, "data": {"method": "add", "params": [1, 1]}})
            )
            assert (await recv_json(ws))["data"] == 2
            await ws.close()
            async with fastrpc.connect(server.url, **QUIET) as peer:  # other paths: binary too
                assert await peer.call("add", 3, 3) == 6

    run(main())


def test_a_handler_target_serves_a_silent_peer_in_json_mode() -> None:
    async def handler(peer: Any) -> None:
        assert isinstance(peer, JsonPeer)
        reply = await peer.request({"q": 1}, timeout=5)
        await peer.send({"done": reply.data})

    async def main() -> None:
        async with fastrpc.serve(handler, "127.0.0.1", 0, json_wait=0.05, **QUIET) as server:
            ws = await raw(server.url)
            assert (await recv_json(ws))["category"] == "welcome"
            req = await recv_json(ws)
            assert req["category"] == "request" and req["data"] == {"q": 1} and "from" not in req
            await ws.send(json.dumps({"category": "response", "requestId": req["requestId"], "data": 42}))
            assert (await recv_json(ws))["data"] == {"done": 42}
            await ws.close()

    run(main())


def test_a_client_that_offers_the_fastrpc_subprotocol_is_never_taken_for_json() -> None:
    # A fastrpc client offers the "fastrpc" subprotocol: its HELLO may come late (a
    # loaded machine) without the server welcoming it or, for a handler target,
    # starting a JSON conversation with it.
    offered: list[str] = []

    async def handler(peer: Any) -> None:
        assert isinstance(peer, fastrpc.RpcPeer)
        offered.append(peer.request_headers["Sec-WebSocket-Protocol"])
        assert await peer.call("whoami") == "client"

    async def main() -> None:
        client = fastrpc.Router()

        @client.method("whoami")
        def whoami() -> str:
            return "client"

        async with fastrpc.serve(handler, "127.0.0.1", 0, json_wait=0.05, **QUIET) as server:
            async with fastrpc.connect(server.url, router=client, **QUIET) as peer:
                await until(lambda: offered == ["fastrpc"])
                assert not peer.closed
            ws = await ws_connect(
                server.url, compression=None, ping_interval=None, subprotocols=["fastrpc"], **NO_PROXY
            )
            assert ws.subprotocol == "fastrpc"
            await asyncio.sleep(0.3)  # six times json_wait
            await ws.send(Connection(Role.CLIENT).handshake())
            assert isinstance(await asyncio.wait_for(ws.recv(), 5), bytes)  # the server's HELLO, no welcome
            await ws.close()

    run(main())


# ------------------------------------------------------------ the Python JSON client


def test_python_json_client_against_fastrpc() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, protocol="json", **QUIET) as peer:
                assert isinstance(peer, JsonPeer) and peer.client_id in server.json_peers
                assert await peer.call("add", 1, 2) == 3
                with pytest.raises(fastrpc.RemoteError) as info:
                    await peer.call("failing")
                assert info.value.type_name == "KeyError" and "nope" in info.value.message
                with pytest.raises(fastrpc.RemoteError, match="no method 'missing'"):
                    await peer.call("missing")
                assert await peer.ping(5) < 5
                # Streams both ways; an empty one and one failing before its first item
                # end for the reader although nothing else ever came for them.
                _, st = peer.receive_stream(await peer.call("numbers", 4))
                assert [x async for x in st] == [0, 1, 2, 3]

                async def items(n: int, fail: bool = False) -> Any:
                    for i in range(n):
                        yield i
                    if fail:
                        raise RuntimeError("broken")

                assert await peer.call("total", await peer.send_stream(items(5))) == 10
                assert await peer.call("total", await peer.send_stream(items(0))) == 0
                assert (
                    await peer.call("total", await peer.send_stream(items(0, fail=True)))
                    == "failed: RuntimeError: broken"
                )
            assert peer.closed

    run(main())


def test_relay_to_routing_between_json_connections() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, protocol="json", **QUIET) as a:
                async with fastrpc.connect(server.url, protocol="json", **QUIET) as b:
                    got: list[Any] = []

                    def answer(data: Any) -> Any:
                        got.append(data)
                        return None if data == "quiet" else {"echo": data}

                    b.match(answer)
                    assert (await a.request("hi", to=b.client_id, timeout=5)).data == {"echo": "hi"}
                    await a.send("quiet", to=b.client_id)  # no answer comes, none is waited for
                    with pytest.raises(fastrpc.RemoteError, match="Target peer not found"):
                        await a.request("x", to="no-such-id", timeout=5)
                    # Addressed to itself: handled by the server as if there were no `to`.
                    assert await a.call("add", 2, 5, to=a.client_id) == 7
                    assert got == ["hi", "quiet"]
                await until(lambda: b.client_id not in server.json_peers, what="b forgotten by the relay")

    run(main())


def test_connect_json_rejects_reconnect_and_unknown_protocols() -> None:
    with pytest.raises(ValueError, match="reconnect"):
        fastrpc.connect("ws://x", protocol="json", reconnect=fastrpc.RetryPolicy())  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="protocol"):
        fastrpc.connect("ws://x", protocol="xml")  # type: ignore[call-overload]


def test_items_after_the_reader_closed_a_stream_are_dropped() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            ws = await raw(server.url)

            async def send(obj: Any) -> None:
                await ws.send(json.dumps(obj))

            await send({"type": "StreamData", "streamId": "probe", "payload": 1})
            await send({"category": "request", "requestId": 1, "data": {"method": "held", "params": []}})
            replies = [await recv_json(ws) for _ in range(2)]
            assert replies[1]["data"] == 1
            peer = next(iter(server.json_peers.values()))
            peer.close_receiving_stream("probe")
            for i in range(5):
                await send({"type": "StreamData", "streamId": "probe", "payload": i})
            await send({"category": "request", "requestId": 2, "data": {"method": "held", "params": []}})
            assert (await recv_json(ws))["data"] == 0  # dropped, not held again
            await ws.close()

    run(main())


# ------------------------------------------------------- named streams, binary mode


def test_named_streams_in_binary_mode() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as peer:
                name = "3f1c9a52-0b7e-4f0e-9a55-1d2b7c0e8f11"
                # The server sends on a name; the client claims it before or after.
                assert await peer.call("numbers", 3, name) == name
                sid, stream = peer.receive_stream(name)
                assert sid == name and [x async for x in stream] == [0, 1, 2]
                _, early = peer.receive_stream("claimed-first")
                assert await peer.call("numbers", 2, "claimed-first") == "claimed-first"
                assert [x async for x in early] == [0, 1]

                async def items() -> Any:
                    for i in range(4):
                        yield i

                assert await peer.send_stream(items(), "upload") == "upload"
                assert await peer.call("total", "upload") == 6
                # Wire ids stay small for unnamed streams afterwards.
                assert peer.new_stream_id() < 1000

                async def forever() -> Any:
                    while True:
                        yield 1
                        await asyncio.sleep(0.01)

                await peer.send_stream(forever(), "busy")
                with pytest.raises(ValueError, match="'busy' is in use"):
                    await peer.send_stream(forever(), "busy")
                assert peer.abort_stream("busy") and not peer.abort_stream("not-sending")
                with pytest.raises(TypeError, match=r"stream id 1\.5"):
                    await peer.send_stream(items(), 1.5)  # type: ignore[arg-type]
                with pytest.raises(TypeError, match=r"stream id \[1\]"):
                    peer.receive_stream([1])  # type: ignore[arg-type]
                peer.close_receiving_stream("never-sent")  # harmless

    run(main())


def test_named_stream_ids_follow_the_documented_formula() -> None:
    from fastrpc.names import NAMED_STREAM_BASE, named_stream_id

    # FNV-1a 64 reference values: "" -> cbf29ce484222325, "a" -> af63dc4c8601ec8c,
    # "foobar" -> 85944171f73967e8 (docs/protocol.md, "Named streams").
    for name, fnv in (("", 0xCBF29CE484222325), ("a", 0xAF63DC4C8601EC8C), ("foobar", 0x85944171F73967E8)):
        for parity in (0, 1):
            assert named_stream_id(name, parity) == NAMED_STREAM_BASE + ((fnv & (2**48 - 1)) << 1) + parity
    assert named_stream_id("é", 1) != named_stream_id("e", 1)
    assert named_stream_id("x" * 10_000, 0) < 2**62  # a QUIC varint


# ------------------------------------------------- unknown targets, pings, params


def test_a_request_to_an_unknown_target_is_reported_and_not_run_by_the_server() -> None:
    # The relay's "Target peer not found" is the only answer: the server's own method
    # of that name must not run (nor answer) as if the request were for the server.
    async def main() -> None:
        router = fastrpc.Router()
        ran: list[int] = []

        @router.method
        def transfer(amount: int) -> str:
            ran.append(amount)
            return "moved"

        @router.method
        def add(a: int, b: int) -> int:
            return a + b

        async with fastrpc.serve(router, "127.0.0.1", 0, **QUIET) as server:
            ws = await raw(server.url)
            try:
                await ws.send(json.dumps({"category": "ping", "timestamp": 1}))
                assert (await recv_json(ws))["category"] == "welcome"
                assert await recv_json(ws) == {"category": "pong", "timestamp": 1}
                for category in ("request", "response"):
                    await ws.send(
                        json.dumps(
                            {
                                "category": category,
                                "requestId": f"r-{category}",
                                "to": "nobody",
                                "data": {"method": "transfer", "params": [100]},
                            }
                        )
                    )
                    assert await recv_json(ws) == {
                        "category": "error",
                        "error": "Target peer not found",
                        "targetId": "nobody",
                        "requestId": f"r-{category}",
                    }
                # Answered in order: nothing else came in between, or comes after.
                await ws.send(
                    json.dumps({"category": "request", "requestId": "ok", "data": {"method": "add", "params": [1, 2]}})
                )
                assert await recv_json(ws) == {"category": "response", "requestId": "ok", "data": 3}
                with pytest.raises(asyncio.TimeoutError):
                    await recv_json(ws, 0.3)
                assert ran == []
            finally:
                await ws.close()

    run(main())


def test_pings_read_together_each_get_their_pong() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, protocol="json", **QUIET) as peer:
                for _ in range(3):
                    rtts = await asyncio.gather(*(peer.ping(timeout=5) for _ in range(4)))
                    assert all(isinstance(t, float) for t in rtts), rtts
            ws = await raw(server.url)
            try:
                # Several pings in one write: one read on the server.
                await ws.send(json.dumps({"category": "ping", "timestamp": 0}))
                assert (await recv_json(ws))["category"] == "welcome"
                assert (await recv_json(ws))["timestamp"] == 0
                for stamp in (1, 2, 3, 4):
                    ws.protocol.send_text(json.dumps({"category": "ping", "timestamp": stamp}).encode())
                ws.transport.write(b"".join(ws.protocol.data_to_send()))
                got = [await recv_json(ws) for _ in range(4)]
                assert got == [{"category": "pong", "timestamp": t} for t in (1, 2, 3, 4)], got
            finally:
                await ws.close()

    run(main())


def test_params_are_bound_and_converted_as_in_binary_mode() -> None:
    # A JSON request's params get what a binary call's arguments get: conversion to
    # the handler's annotations, InvalidArguments when they do not fit; params that
    # are neither an array nor an object are refused, not splatted.
    async def main() -> None:
        router = fastrpc.Router()
        seen: list[Any] = []

        @router.method
        def add(a: int, b: int = 10) -> int:
            seen.append((type(a), type(b)))
            return a + b

        @router.method
        def when(t: datetime.datetime) -> str:
            seen.append(type(t))
            return t.isoformat()

        @router.method
        def untyped(a, b):  # type: ignore[no-untyped-def]
            return [a, b]

        async with fastrpc.serve(router, "127.0.0.1", 0, **QUIET) as server:
            ws = await raw(server.url)
            try:
                await ws.send(json.dumps({"category": "ping", "timestamp": 0}))
                await recv_json(ws)
                await recv_json(ws)

                async def call(method: str, params: Any) -> Any:
                    data = {"method": method, "params": params}
                    await ws.send(json.dumps({"category": "request", "requestId": "r", "data": data}))
                    return (await recv_json(ws))["data"]

                assert await call("add", [1, 2]) == 3
                assert await call("add", {"a": 1}) == 11  # keyword arguments
                assert await call("add", [5]) == 15
                assert await call("when", ["2024-01-02T03:04:05Z"]) == "2024-01-02T03:04:05+00:00"
                assert await call("untyped", {"a": 1, "b": "x"}) == [1, "x"]
                for method, params, expect in [
                    ("add", ["1", "2"], "InvalidArguments: add(): argument 'a': Expected `int`, got `str`"),
                    ("add", "12", "InvalidArguments: add(): params must be an array or an object, not a string"),
                    ("add", 7, "InvalidArguments: add(): params must be an array or an object, not a number"),
                    ("add", None, "InvalidArguments: add(): params must be an array or an object, not null"),
                    ("add", [1, 2, 3], "InvalidArguments: add() takes at most 2 positional arguments"),
                    ("add", {"c": 1}, "InvalidArguments: add(): "),
                    ("when", ["yesterday"], "InvalidArguments: when(): argument 't': Invalid RFC3339"),
                    ("untyped", [1], "InvalidArguments: untyped(): missing a required argument: 'b'"),
                ]:
                    reply = await call(method, params)
                    assert reply["type"] == "error" and reply["message"].startswith(expect), (params, reply)
                assert seen == [(int, int), (int, int), (int, int), datetime.datetime]
            finally:
                await ws.close()
            async with fastrpc.connect(server.url, protocol="json", **QUIET) as peer:
                with pytest.raises(fastrpc.InvalidArguments, match="argument 'a'"):
                    await peer.call("add", "1", "2")
                assert await peer.call("add", 1, 2) == 3

    run(main())


class Money:
    """A custom type: "<amount> <currency>" on the wire, made by ``money_hook``."""

    def __init__(self, amount: decimal.Decimal, currency: str) -> None:
        self.amount, self.currency = amount, currency


def money_hook(type_: type, obj: Any) -> Any:
    if type_ is Money:
        amount, currency = obj.split()
        return Money(decimal.Decimal(amount), currency)
    raise NotImplementedError


def test_params_are_converted_with_the_servers_dec_hook() -> None:
    # A handler whose parameters are custom types gets them converted by the server's
    # dec_hook in JSON mode too, as a binary call's arguments are (positional, keyword,
    # nested); JsonPeer had no dec_hook and refused them.
    async def main() -> None:
        router = fastrpc.Router()
        seen: list[Any] = []

        @router.method
        def pay(m: Money, times: int = 1) -> str:
            seen.append(type(m))
            return f"{m.amount * times} {m.currency}"

        @router.method
        def total(ms: list[Money]) -> str:
            seen.extend(type(m) for m in ms)
            return str(sum(m.amount for m in ms))

        async with fastrpc.serve(router, "127.0.0.1", 0, dec_hook=money_hook, **QUIET) as server:
            async with fastrpc.connect(server.url, protocol="json", **QUIET) as peer:
                assert await peer.call("pay", "2.5 EUR") == "2.5 EUR"
                assert await peer.call("pay", "2.5 EUR", 2) == "5.0 EUR"
                assert await peer.call("total", ["1 EUR", "2 EUR"]) == "3"
                with pytest.raises(fastrpc.InvalidArguments, match="argument 'm'"):
                    await peer.call("pay", "seven")  # the hook's ValueError: the caller's arguments
            ws = await raw(server.url)
            try:
                await ws.send(json.dumps({"category": "ping", "timestamp": 0}))
                await recv_json(ws)
                await recv_json(ws)
                data = {"method": "pay", "params": {"m": "1.5 USD", "times": 3}}  # keyword arguments
                await ws.send(json.dumps({"category": "request", "requestId": "r", "data": data}))
                assert (await recv_json(ws))["data"] == "4.5 USD"
            finally:
                await ws.close()
            assert seen == [Money] * 5

    run(main())


def test_authorize_is_checked_as_in_binary_mode(caplog: pytest.LogCaptureFixture) -> None:
    # One check for both modes (handlers.authorize): a refusal is PermissionDenied
    # (JSON mode said PermissionError, and fastrpc's JSON client raised a plain
    # RemoteError), and a hook that raises refuses the call and is logged, its
    # exception not shown to the caller (JSON mode answered with it).
    def hook(peer: Any, method: str) -> bool:
        if method == "broken":
            raise KeyError("internal detail")
        return method != "denied"

    async def main() -> None:
        router = fastrpc.Router(authorize=hook)
        for name in ("allowed", "denied", "broken"):
            router.add(name, lambda: "ok")
        async with fastrpc.serve(router, "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, protocol="json", **QUIET) as peer:
                assert await peer.call("allowed") == "ok"
                for name in ("denied", "broken"):
                    with pytest.raises(fastrpc.PermissionDenied) as info:
                        await peer.call(name)
                    assert str(info.value) == f"PermissionDenied: not allowed to call {name!r}"

    with caplog.at_level("WARNING", logger="fastrpc.server"):
        run(main())
    assert "authorize hook raised for 'broken'" in caplog.text and "KeyError" in caplog.text
