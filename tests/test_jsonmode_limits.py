"""The seed JSON mode (fastrpc.jsonmode.JsonPeer) holds a hostile client to its limits,
like the binary protocol: each abuse closes that connection with 1007 (invalid data),
1008 (a limit) or 1009 (too big) and a reason naming it; never a normal close, never an
uncaught exception; other connections go on."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from _util import NO_PROXY, run, send_until_closed, until
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WSClosed

import fastrpc
import fastrpc.server
from fastrpc.jsonmode import JsonPeer, nesting_exceeds

QUIET = {"keepalive_interval": None, "ws_ping_interval": None}
MiB = 1 << 20


def make_router(seen: list[Any] | None = None) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    def echo(x: Any) -> Any:
        return x

    @router.method
    async def slow() -> str:
        await asyncio.sleep(30)
        return "late"

    @router.method
    async def hold(x: Any) -> int:
        await asyncio.sleep(30)
        return len(x)

    @router.method
    def size(x: Any) -> int:
        return len(x)

    @router.method
    async def total(sid: str | int) -> int:
        _, stream = fastrpc.current_peer().receive_stream(sid)
        n = 0
        async for x in stream:
            n += x
        return n

    @router.method
    async def collect(sid: str | int) -> list[Any]:
        """Read stream ``sid`` to its end; the items, then the error's text if any."""
        _, stream = fastrpc.current_peer().receive_stream(sid)
        got: list[Any] = []
        try:
            async for x in stream:
                got.append(x)
        except Exception as exc:
            got.append(f"{type(exc).__name__}: {exc}")
        if seen is not None:
            seen.append(got)
        return got

    return router


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def req(rid: Any, method: str, *params: Any) -> str:
    return dumps({"category": "request", "requestId": rid, "data": {"method": method, "params": list(params)}})


def item(sid: Any, payload: Any) -> str:
    return dumps({"type": "StreamData", "streamId": sid, "payload": payload})


class Seed:
    """A raw client of the seed's JSON protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def call(self, rid: Any, method: str, *params: Any) -> dict[str, Any]:
        await self.ws.send(req(rid, method, *params))
        while True:
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if reply.get("category") == "response" and reply.get("requestId") == rid:
                return reply  # type: ignore[no-any-return]

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes; ``(code, reason)``."""

        async def read() -> None:
            try:
                async for _ in self.ws:
                    pass
            except WSClosed:
                pass

        await asyncio.wait_for(read(), timeout)
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


async def seed(url: str) -> Seed:
    ws = await ws_connect(url, compression=None, max_size=None, ping_interval=None, **NO_PROXY)
    return Seed(ws)


async def good_clients_still_work(url: str) -> None:
    s = await seed(url)
    try:
        assert (await s.call("ok", "add", 2, 3))["data"] == 5
    finally:
        await s.ws.close()
    async with fastrpc.connect(url, **QUIET) as peer:
        assert await peer.call("add", 1, 1) == 2


def expect_close(messages: list[str], code: int, reason: str, *, limits: dict[str, int] | None = None) -> None:
    """A seed client sends ``messages``; the server must close it with ``code`` and a
    reason containing ``reason``; good clients carry on."""

    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            s = await seed(server.url)
            try:
                assert (await s.call("first", "add", 1, 2))["data"] == 3
                for m in messages:
                    try:
                        await s.ws.send(m)
                    except WSClosed:
                        break
                got = await s.closed()
            finally:
                await s.ws.close()
            assert got[0] == code, got
            assert reason in got[1], got
            await good_clients_still_work(server.url)

    with limited(limits):
        run(main(), timeout=30)


class limited:
    """Serve JSON connections with other limits (JsonPeer's keyword arguments, over
    those server.py passes)."""

    def __init__(self, limits: dict[str, int] | None) -> None:
        self.limits = limits
        self.saved: Any = None

    def __enter__(self) -> None:
        if self.limits:
            self.saved = fastrpc.server.JsonPeer
            limits = self.limits
            # The test's limits win over those the server passes.
            fastrpc.server.JsonPeer = lambda *a, **k: JsonPeer(*a, **{**k, **limits})  # type: ignore[misc]

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            fastrpc.server.JsonPeer = self.saved  # type: ignore[misc]


# --------------------------------------------------------------- nesting depth


def test_nesting_deeper_than_max_depth_closes_with_1007() -> None:
    deep = "[" * 65 + "]" * 65
    expect_close(
        [dumps({"category": "request", "requestId": 1, "data": None})[:-1] + ',"x":' + deep + "}"],
        1007,
        "nested deeper than 64",
    )


def test_nesting_of_ten_thousand_levels_is_no_recursion_error() -> None:
    expect_close(["[" * 100_000 + "]" * 100_000], 1007, "nested deeper")


def test_nesting_of_ten_thousand_levels_as_first_message() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            ws = await ws_connect(server.url, compression=None, max_size=None, **NO_PROXY)
            await ws.send("{" + '"a":{' * 50_000 + "}" * 50_001)
            code, reason = await Seed(ws).closed()
            await ws.close()
            assert code == 1007 and "nested deeper" in reason, (code, reason)
            await good_clients_still_work(server.url)

    run(main(), timeout=30)


def test_nesting_up_to_max_depth_is_fine() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            s = await seed(server.url)
            value: Any = 1
            for _ in range(61):  # + the params list, the data object and the message: 64
                value = [value]
            reply = await s.call("deep", "echo", value)
            assert reply["data"] == value
            await s.ws.close()

    run(main())


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(alphabet='ab"\\[]{}é', max_size=6)),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(alphabet='k"\\[{', max_size=3), children, max_size=3)
    ),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(0, 8))
def test_nesting_check_agrees_with_the_depth(value: Any, wrap: int) -> None:
    for _ in range(wrap):
        value = [value, {"k": value}]
    text = json.dumps(value).encode()
    depth = _depth(value)
    for limit in (1, 2, 3, 5, depth - 1, depth, depth + 1):
        if limit >= 1:
            assert nesting_exceeds(text, limit) == (depth > limit), (text, limit, depth)


# ---------------------------------------------------------------------- sizes


def test_message_over_max_item_size_closes_with_1009() -> None:
    expect_close([item("s", "x" * MiB)], 1009, "max_item_size")


def test_item_size_is_configurable() -> None:
    expect_close([item("s", "x" * 2000)], 1009, "max_item_size", limits={"max_item_size": 1000})


def test_unread_items_of_all_streams_are_bounded_in_bytes() -> None:
    # 16 MiB by default: 17 streams of one 1 MiB-ish item, nobody reading.
    big = "x" * (MiB - 100)
    expect_close([item(f"s{i}", big) for i in range(17)], 1008, "unread stream items")


def test_held_bytes_limit_is_configurable() -> None:
    expect_close([item("s", "x" * 400) for _ in range(5)], 1008, "unread stream items", limits={"max_held_bytes": 1500})


def test_a_stream_past_max_held_items_fails_and_later_items_are_dropped() -> None:
    seen: list[Any] = []

    async def main() -> None:
        with limited({"max_held_items": 5}):
            async with fastrpc.serve(make_router(seen), "127.0.0.1", 0, **QUIET) as server:
                s = await seed(server.url)
                for i in range(8):
                    await s.ws.send(item("s", i))
                await s.ws.send(dumps({"type": "StreamEnd", "streamId": "s"}))
                reply = await s.call("r", "collect", "s")
                assert reply["data"][:5] == [0, 1, 2, 3, 4]
                assert "StreamAborted" in reply["data"][5] and len(reply["data"]) == 6
                # The connection goes on; the id can be used again.
                for i in range(3):
                    await s.ws.send(item("s", i))
                await s.ws.send(dumps({"type": "StreamEnd", "streamId": "s"}))
                assert (await s.call("r2", "collect", "s"))["data"] == [0, 1, 2]
                await s.ws.close()

    run(main())


# -------------------------------------------------------------- streams, calls


def test_too_many_held_streams_closes_with_1008() -> None:
    expect_close([item(f"s{i}", i) for i in range(1025)], 1008, "incoming streams")


def test_streams_read_to_their_end_free_their_place() -> None:
    # More streams over the connection's life than max_streams: each read to its end.
    async def main() -> None:
        with limited({"max_streams": 4}):
            async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
                s = await seed(server.url)
                for k in range(12):
                    sid = f"s{k}"
                    for i in range(3):
                        await s.ws.send(item(sid, i))
                    await s.ws.send(dumps({"type": "StreamEnd", "streamId": sid}))
                    assert (await s.call(f"r{k}", "total", sid))["data"] == 3
                await s.ws.close()

    run(main())


def test_too_many_pending_requests_closes_with_1008() -> None:
    expect_close([req(i, "slow") for i in range(1025)], 1008, "pending requests")


def test_pending_requests_limit_is_configurable() -> None:
    expect_close([req(i, "slow") for i in range(4)], 1008, "pending requests", limits={"max_pending_calls": 3})


def test_data_held_by_pending_requests_is_bounded() -> None:
    # 16 MiB by default: requests of a 1 MiB-ish string to a handler that holds it.
    big = "x" * (MiB - 200)
    expect_close([req(i, "hold", big) for i in range(17)], 1008, "pending requests hold more than")


def test_dense_data_counts_as_what_it_decodes_to() -> None:
    # 1 MiB of empty JSON objects decodes to ~350,000 dicts (tens of MiB): over the
    # budget at once, though the text is under max_item_size.
    dense = "[" + ",".join(["{}"] * ((MiB - 200) // 3)) + "]"
    expect_close([req(1, "hold", json.loads(dense))], 1008, "pending requests hold more than")


def test_pending_bytes_limit_is_configurable() -> None:
    expect_close(
        [req(i, "hold", "x" * 400_000) for i in range(3)],
        1008,
        "pending requests hold more than",
        limits={"max_pending_bytes": 1 << 20},
    )


def test_data_of_answered_requests_no_longer_counts() -> None:
    async def main() -> None:
        with limited({"max_pending_bytes": 2 << 20}):
            async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
                s = await seed(server.url)
                for i in range(20):  # 20 MB through a 2 MiB budget, one at a time
                    assert (await s.call(i, "size", "x" * 1_000_000))["data"] == 1_000_000
                await s.ws.close()

    run(main())


def test_requests_within_the_limit_are_all_answered() -> None:
    async def main() -> None:
        with limited({"max_pending_calls": 8}):
            async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
                s = await seed(server.url)
                for round_ in range(5):
                    for i in range(8):
                        await s.ws.send(req(f"{round_}.{i}", "add", i, 1))
                    got = {}
                    while len(got) < 8:
                        reply = json.loads(await asyncio.wait_for(s.ws.recv(), 10))
                        if reply.get("category") == "response":  # not the welcome
                            got[reply["requestId"]] = reply["data"]
                    assert got == {f"{round_}.{i}": i + 1 for i in range(8)}
                await s.ws.close()

    run(main())


def test_stream_errors_held_for_unclaimed_streams_count_as_held_bytes() -> None:
    # The text of a StreamError nobody has read is held like an item: it counts in
    # max_held_bytes (it was not counted: a client could make the server hold
    # max_streams errors of max_item_size each).
    errors = [dumps({"type": "StreamError", "streamId": f"s{i}", "error": "e" * 1000}) for i in range(5)]
    expect_close(errors, 1008, "unread stream items", limits={"max_held_bytes": 3000})


def test_stream_error_text_is_cut_and_no_longer_counts_once_read() -> None:
    async def main() -> None:
        with limited({"max_held_bytes": 3000}):
            async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
                s = await seed(server.url)
                for k in range(10):  # 10 errors of 1 KiB (once cut) through a 3,000-byte budget
                    await s.ws.send(dumps({"type": "StreamError", "streamId": f"s{k}", "error": "e" * 5000}))
                    (text,) = (await s.call(f"r{k}", "collect", f"s{k}"))["data"]
                    assert text.startswith("RemoteStreamError: Error: eee") and text.endswith("\u2026"), text[:40]
                    assert len(text) == len("RemoteStreamError: Error: ") + 1024
                # An error that is not a string is held as its text, cut the same way.
                await s.ws.send(dumps({"type": "StreamError", "streamId": "n", "error": [1, 2]}))
                assert (await s.call("n", "collect", "n"))["data"] == ["RemoteStreamError: Error: [1, 2]"]
                await s.ws.send(dumps({"type": "StreamError", "streamId": "big", "error": [0] * 2000}))
                (text,) = (await s.call("big", "collect", "big"))["data"]
                assert len(text) == len("RemoteStreamError: Error: ") + 1024, len(text)
                (peer,) = server.json_peers.values()
                assert peer._held_bytes == 0
                # Dropped unread (the reader closes it): freed too.
                await s.ws.send(dumps({"type": "StreamError", "streamId": "gone", "error": "e" * 2000}))
                await until(lambda: "gone" in peer._incoming, what="the early error held")
                assert peer._held_bytes == len(("e" * 1023 + "\u2026").encode())
                peer.close_receiving_stream("gone")
                assert peer._held_bytes == 0
                await s.ws.close()

    run(main())


def _close_sent(transport: Any) -> Any:
    """The close frame the server sent on ``transport`` (websockets' protocol state)."""
    protocol = getattr(transport, "_ws", None) or transport.ws.protocol
    return protocol.close_sent


def test_unknown_targets_from_a_client_that_does_not_read_are_bounded() -> None:
    # Each message whose `to` names nobody is answered "Target peer not found". A
    # client that sends such responses (not counted as pending requests) and never
    # reads must not make the server hold a task and an error message per message:
    # one task sends them, and past max_pending_calls of them waiting: 1008.
    async def main() -> None:
        with limited({"max_pending_calls": 32}):
            async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
                # Small socket buffers: the server's output backs up after a few KiB,
                # not after the tens of MiB loopback buffers may take.
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port))
                sock.setblocking(False)
                ws = await ws_connect(
                    server.url, sock=sock, compression=None, max_queue=1, ping_interval=None, **NO_PROXY
                )
                try:
                    await ws.send(dumps({"category": "ping", "timestamp": 1}))
                    peer = await until(lambda: next(iter(server.json_peers.values()), None), what="the JSON peer")
                    peer._ws.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                    msg = dumps({"category": "response", "requestId": "r" * 256, "to": "x" * 256, "data": None})
                    sent, most = await send_until_closed(ws, msg, lambda: peer.closed, 15, lambda: len(peer._tasks))
                    assert most <= 2, f"{most} tasks after {sent} messages"
                    await asyncio.wait_for(peer.wait_closed(), 10)
                    close = _close_sent(peer._ws)
                    assert close is not None and close.code == 1008, close
                    assert "Target peer not found" in close.reason and "32" in close.reason, close.reason
                finally:
                    ws.transport.abort()
                    await ws.wait_closed()
                await good_clients_still_work(server.url)

    run(main(), timeout=40)


# ------------------------------------------------------------- ids and shapes


@pytest.mark.parametrize(
    "message",
    [
        '{"category":"response","requestId":[1],"data":1}',
        '{"category":"response","requestId":{"a":1},"data":1}',
        '{"category":"request","requestId":{"a":1},"data":{"method":"add","params":[1,2]}}',
        '{"category":"request","requestId":[],"data":null}',
        '{"category":"request","requestId":true,"data":null}',
        '{"category":"request","requestId":1.5,"data":null}',
        '{"category":"request","data":null}',
        '{"category":"request","requestId":"' + "r" * 300 + '","data":null}',
        '{"type":"StreamData","streamId":[1],"payload":1}',
        '{"type":"StreamData","streamId":null,"payload":1}',
        '{"type":"StreamEnd","streamId":{"a":[]}}',
        '{"type":"StreamError","streamId":[],"error":"x"}',
    ],
    ids=[
        "response-list",
        "response-dict",
        "request-dict",
        "request-list",
        "request-bool",
        "request-float",
        "request-missing",
        "request-too-long",
        "data-list",
        "data-null",
        "end-dict",
        "error-list",
    ],
)
def test_invalid_ids_close_with_1007(message: str) -> None:
    expect_close([message], 1007, "invalid")


@pytest.mark.parametrize(
    "message",
    [
        "[1,2,3]",
        '"text"',
        "42",
        "null",
        '{"category":"nonsense"}',
        '{"type":"Foo","streamId":"s"}',
        "{}",
        '{"category":5}',
    ],
)
def test_malformed_shapes_close_with_1007(message: str) -> None:
    expect_close([message], 1007, "")


@pytest.mark.parametrize("message", ["}{ not json", '{"a":NaN}', '{"a":1', "\u00e9"])
def test_invalid_json_closes_with_1007(message: str) -> None:
    expect_close([message], 1007, "invalid JSON")


def test_a_bad_first_message_closes_with_1007() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            ws = await ws_connect(server.url, compression=None, **NO_PROXY)
            await ws.send('{"category":"response","requestId":[1]}')
            code, reason = await Seed(ws).closed()
            await ws.close()
            assert code == 1007 and "requestId" in reason, (code, reason)

    run(main())


def test_integer_and_string_ids_work() -> None:
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            s = await seed(server.url)
            assert (await s.call(7, "add", 1, 2))["data"] == 3
            assert (await s.call("a-uuid", "add", 2, 2))["data"] == 4
            for i in range(3):
                await s.ws.send(item(99, i))
            await s.ws.send(dumps({"type": "StreamEnd", "streamId": 99}))
            assert (await s.call(8, "collect", 99))["data"] == [0, 1, 2]
            await s.ws.close()

    run(main())


def test_constructor_rejects_limits_below_one() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="max_depth"):
            JsonPeer(None, None, max_depth=0)

    run(main())
