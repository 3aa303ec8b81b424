"""Trust review of the seed JSON mode (fastrpc.jsonmode) and of JSON connections
served through the ASGI adapter (fastrpc.asgi): bad input closes that one connection
with the documented code and a reason naming it, never an undocumented exception;
what we send is JSON the other side can read; ASGI holds the same bounds as serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _util import NO_PROXY, QUIET, run, send_until_closed, until, uvicorn_send_waits
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed as WSClosed

import fastrpc
import fastrpc.asgi


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def strict_loads(text: str | bytes) -> Any:
    """JSON as the seed's JavaScript reads it: NaN and Infinity are not JSON."""

    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def make_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    def not_finite() -> list[float]:
        return [math.nan, math.inf, -math.inf, 1.5]

    @router.method
    def echo(x: Any) -> Any:
        return x

    return router


async def closed(ws: Any, timeout: float = 10.0) -> tuple[int | None, str]:
    """Read until the server closes ``ws``; its close frame's ``(code, reason)``."""

    async def read() -> None:
        try:
            async for _ in ws:
                pass
        except WSClosed:
            pass

    await asyncio.wait_for(read(), timeout)
    rcvd = ws.protocol.close_rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


async def seed_call(ws: Any, rid: Any, method: str, *params: Any) -> Any:
    """A seed client's request; the response's text, parsed strictly."""
    await ws.send(dumps({"category": "request", "requestId": rid, "data": {"method": method, "params": list(params)}}))
    while True:
        text = await asyncio.wait_for(ws.recv(), 10)
        reply = strict_loads(text)
        if reply.get("category") == "response" and reply.get("requestId") == rid:
            return reply


# ----------------------------------------------- unhashable ids in an error message


@pytest.mark.parametrize(
    "message",
    [
        '{"category":"error","error":"x","requestId":[1]}',
        '{"category":"error","error":"x","requestId":{"a":1}}',
    ],
    ids=["list", "object"],
)
def test_error_message_with_an_unhashable_request_id_closes_with_1007(message: str) -> None:
    # A requestId that is not an id is invalid data (1007, as in a request or a
    # response), not an internal error of the server (1011).
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            async with ws_connect(server.url, compression=None, **NO_PROXY) as ws:
                assert (await seed_call(ws, "r1", "add", 1, 2))["data"] == 3
                await ws.send(message)
                code, reason = await closed(ws)
                assert code == 1007 and "requestId" in reason, (code, reason)
            async with ws_connect(server.url, compression=None, **NO_PROXY) as ws:
                assert (await seed_call(ws, "r2", "add", 2, 2))["data"] == 4

    run(main(), timeout=30)


# -------------------------------------------------- NaN and infinities on the wire


def test_results_that_are_not_finite_are_sent_as_json_null() -> None:
    # JSON has no NaN or Infinity: JavaScript's JSON.parse (the seed) and fastrpc's
    # own JSON client refuse them. Sent as null, as JSON.stringify and the binary
    # protocol's JSON codec do; the connection stays up.
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            async with ws_connect(server.url, compression=None, **NO_PROXY) as ws:
                reply = await seed_call(ws, "r1", "not_finite")
                assert reply["data"] == [None, None, None, 1.5], reply
                assert (await seed_call(ws, "r2", "add", 1, 2))["data"] == 3
            async with fastrpc.connect(server.url, protocol="json", **QUIET, **NO_PROXY) as peer:
                assert await peer.call("not_finite", timeout=10) == [None, None, None, 1.5]
                assert await peer.call("add", 2, 3, timeout=10) == 5
                assert not peer.closed

    run(main(), timeout=30)


def test_stream_items_that_are_not_finite_are_sent_as_json_null() -> None:
    async def items() -> AsyncIterator[Any]:
        yield math.nan
        yield {"x": math.inf}

    async def main() -> None:
        got: list[str] = []

        async def seed_server(ws: Any) -> None:
            async for text in ws:
                got.append(text)

        async with ws_serve(seed_server, "127.0.0.1", 0, compression=None) as srv:
            port = srv.sockets[0].getsockname()[1]
            async with fastrpc.connect(
                f"ws://127.0.0.1:{port}/", protocol="json", welcome_timeout=None, **QUIET, **NO_PROXY
            ) as peer:
                await peer.send_stream(items(), "s1")
                await until(lambda: any('"StreamEnd"' in t for t in got), 10, "the stream's end")
        stream = [strict_loads(t) for t in got if '"streamId"' in t]
        assert [m.get("payload") for m in stream] == [None, {"x": None}, None], stream

    run(main(), timeout=30)


# ------------------------------------------ numbers beyond a double: as JavaScript


@contextlib.asynccontextmanager
async def seed_server_answering(data_text: str) -> AsyncIterator[str]:
    """A seed-like server (welcome, then each request answered with ``data_text``
    as its data, verbatim JSON), on 127.0.0.1; yields its URL."""

    async def handler(ws: Any) -> None:
        await ws.send(dumps({"category": "welcome", "clientId": "c1"}))
        async for text in ws:
            msg = json.loads(text)
            if msg.get("category") == "request":
                rid = dumps(msg["requestId"])
                await ws.send('{"category":"response","requestId":' + rid + ',"data":' + data_text + "}")
                await ws.send('{"type":"StreamData","streamId":"s","payload":' + data_text + "}")
                await ws.send('{"type":"StreamEnd","streamId":"s"}')

    async with ws_serve(handler, "127.0.0.1", 0, compression=None) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e400", math.inf),
        ("[-1e999, 2]", [-math.inf, 2]),
        ("1" + "0" * 400, 10**400),  # an integer msgspec reads exactly: kept exact
        ('{"n": ' + "9" * 5000 + "}", {"n": math.inf}),
    ],
    ids=["exponent", "negative", "long-integer", "very-long-integer"],
)
def test_numbers_beyond_a_double_are_read_as_javascript_reads_them(text: str, expected: Any) -> None:
    # Valid JSON (RFC 8259 leaves the range to the reader); JavaScript reads them as
    # +-Infinity. They must not surface as msgspec's ValidationError from
    # request() or from reading a stream.
    async def main() -> None:
        async with seed_server_answering(text) as url:
            async with fastrpc.connect(url, protocol="json", **QUIET, **NO_PROXY) as peer:
                reply = await peer.request({"x": 1}, timeout=10)
                assert reply.data == expected
                _, stream = peer.receive_stream("s")
                assert [x async for x in stream] == [expected]
                assert not peer.closed

    run(main(), timeout=30)


def test_request_params_beyond_a_double_reach_the_handler() -> None:
    # A seed client's request carrying such a number is valid JSON: answered, not
    # closed with 1007 "invalid JSON". (The handler's inf goes back as null.)
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            async with ws_connect(server.url, compression=None, **NO_PROXY) as ws:
                await ws.send('{"category":"request","requestId":"r1","data":{"method":"echo","params":[[1e400,3]]}}')
                while True:
                    reply = strict_loads(await asyncio.wait_for(ws.recv(), 10))
                    if reply.get("category") == "response":
                        break
                assert reply == {"category": "response", "requestId": "r1", "data": [None, 3]}, reply

    run(main(), timeout=30)


def test_an_envelope_field_beyond_a_double_closes_with_a_reason_naming_it() -> None:
    # The envelope's own fields (ids, timestamp...) are not read leniently: 1007, and
    # the reason says which field and why, not "expected a JSON object".
    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            async with ws_connect(server.url, compression=None, **NO_PROXY) as ws:
                assert (await seed_call(ws, "r1", "add", 1, 2))["data"] == 3
                await ws.send('{"category":"ping","timestamp":1e400}')
                code, reason = await closed(ws)
                assert code == 1007 and "out of range" in reason and "timestamp" in reason, (code, reason)

    run(main(), timeout=30)


# ------------------------------------------------------------ through ASGI (uvicorn)

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is in the test extra: pip install -e '.[test]'")


@contextlib.asynccontextmanager
async def uvicorn_app(app: Any) -> AsyncIterator[tuple[int, Any]]:
    """uvicorn serving ``app`` on 127.0.0.1 (in this process); ``(port, server)``."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws="websockets-sansio", ws_ping_interval=None
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), 10, "uvicorn to start")
        assert not task.done(), task.exception()
        yield server.servers[0].sockets[0].getsockname()[1], server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.mark.external
def test_asgi_unknown_targets_from_a_client_that_does_not_read_are_bounded() -> None:
    # As under serve (test_jsonmode_limits): messages whose `to` names nobody are
    # each answered "Target peer not found"; a client that sends them and never reads
    # is closed (1008) once more than max_pending_calls of these errors wait, instead
    # of the server holding one per message without end. Only an ASGI server whose
    # send waits shows us that the client does not read (docs/json-mode.md).
    if not uvicorn_send_waits():
        pytest.skip("this uvicorn's send never waits for a client that does not read (docs/json-mode.md)")
    rpc = fastrpc.asgi.app(make_router(), max_pending_calls=32, keepalive_interval=None)

    async def main() -> None:
        async with uvicorn_app(rpc) as (port, server):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            ws = await ws_connect(
                f"ws://127.0.0.1:{port}/", sock=sock, compression=None, max_queue=1, ping_interval=None, **NO_PROXY
            )
            try:
                await ws.send(dumps({"category": "ping", "timestamp": 1}))
                peer = await until(lambda: next(iter(rpc.server.json_peers.values()), None), what="the JSON peer")
                # Under ASGI the close frame cannot reach a client that does not read
                # (uvicorn's send waits for the socket): record the close decided.
                aborts: list[tuple[int, str]] = []
                abort = peer._abort

                async def recording_abort(code: int, reason: str) -> None:
                    aborts.append((code, reason))
                    await abort(code, reason)

                peer._abort = recording_abort  # type: ignore[method-assign]
                for conn in server.server_state.connections:  # the server side's socket: small buffers
                    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                msg = dumps({"category": "response", "requestId": "r" * 256, "to": "x" * 256, "data": None})
                sent, most = await send_until_closed(ws, msg, lambda: peer.closed, 10, lambda: len(peer._unrouted))
                assert peer.closed, f"still open after {sent} messages, {len(peer._unrouted)} errors waiting"
                assert most <= 33, f"{most} errors waiting after {sent} messages"
                await asyncio.wait_for(peer.wait_closed(), 10)
                assert len(aborts) == 1 and aborts[0][0] == 1008, aborts
                assert "Target peer not found" in aborts[0][1] and "32" in aborts[0][1], aborts
            finally:
                ws.transport.abort()
                await ws.wait_closed()
            async with ws_connect(f"ws://127.0.0.1:{port}/", compression=None, **NO_PROXY) as ws2:
                assert (await seed_call(ws2, "ok", "add", 1, 2))["data"] == 3

    run(main(), timeout=60)


@pytest.mark.external
@pytest.mark.parametrize("how", ["abort", "close"])
def test_asgi_json_client_gone_mid_stream_leaves_nothing_behind(how: str) -> None:
    # A seed client that goes away (TCP dropped, or closed) while the server streams
    # to it and a handler waits: the ASGI app's connection ends, its stream sender and
    # handler tasks are gone, no task fails unseen; other connections go on.
    router = make_router()
    started = asyncio.Event()

    async def items() -> AsyncIterator[str]:
        started.set()
        while True:
            yield "x" * 1000
            await asyncio.sleep(0)

    @router.method
    async def flood() -> str:
        return str(await fastrpc.current_peer().send_stream(items(), "s1"))

    @router.method
    async def wait() -> None:
        await asyncio.sleep(60)

    rpc = fastrpc.asgi.app(router, keepalive_interval=None)
    errors: list[Any] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        async with uvicorn_app(rpc) as (port, _):
            ws = await ws_connect(f"ws://127.0.0.1:{port}/", compression=None, ping_interval=None, **NO_PROXY)
            assert (await seed_call(ws, "r1", "flood"))["data"] == "s1"
            await ws.send(dumps({"category": "request", "requestId": "r2", "data": {"method": "wait"}}))
            await asyncio.wait_for(started.wait(), 10)
            peer = next(iter(rpc.server.json_peers.values()))
            await until(lambda: len(peer._tasks) == 1 and peer._senders, 10, "the handler and the sender")
            if how == "abort":
                ws.transport.abort()
            else:
                await ws.close()
            await asyncio.wait_for(peer.wait_closed(), 10)
            await until(lambda: not rpc.server.json_peers, 10, "the server to forget the JSON peer")
            assert not peer._tasks and not peer._senders
            async with ws_connect(f"ws://127.0.0.1:{port}/", compression=None, **NO_PROXY) as ws2:
                assert (await seed_call(ws2, "ok", "add", 1, 2))["data"] == 3
        assert not errors, errors

    run(main(), timeout=30)


# ------------------------------------------------------- the client, cancelled


def test_json_connect_cancelled_while_waiting_for_the_welcome_leaves_nothing_behind() -> None:
    # connect(protocol="json") cancelled (a timeout around it) while it waits for
    # the welcome: the cancellation propagates, the connection is dropped, and the
    # opening ping's task does not fail unseen ("Task exception was never retrieved").
    import gc

    errors: list[Any] = []

    async def silent(ws: Any) -> None:
        try:
            async for _ in ws:  # never welcomes, never answers the ping
                pass
        except WSClosed:
            pass

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        async with ws_serve(silent, "127.0.0.1", 0, compression=None) as srv:
            url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"
            with pytest.raises(asyncio.TimeoutError):
                opening = fastrpc.connect(url, protocol="json", welcome_timeout=30, **QUIET, **NO_PROXY)
                await asyncio.wait_for(opening, 0.5)
            for _ in range(20):
                await asyncio.sleep(0.01)
            gc.collect()
            await asyncio.sleep(0.01)
        assert not errors, errors

    run(main(), timeout=30)


# ------------------------------------------------ error messages cannot flood the log


def test_error_messages_from_a_peer_are_logged_rate_limited_and_cut() -> None:
    # Each {"category":"error"} not tied to a call was logged in full (up to
    # max_item_size) and every time: 500 of 64 KiB put 32 MiB in the server's log.
    # Now at most log.WARNINGS_PER_SECOND a second, each cut to 1,024 characters.
    import logging

    from fastrpc.log import WARNINGS_PER_SECOND

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    log = logging.getLogger("fastrpc.jsonmode")
    log.addHandler(handler)

    async def main() -> None:
        async with fastrpc.serve(make_router(), "127.0.0.1", 0, **QUIET) as server:
            async with ws_connect(server.url, compression=None, max_size=None, **NO_PROXY) as ws:
                assert (await seed_call(ws, "r1", "add", 1, 2))["data"] == 3
                text = dumps({"category": "error", "error": "e" * (64 << 10)})
                for _ in range(500):
                    await ws.send(text)
                assert (await seed_call(ws, "r2", "add", 2, 2))["data"] == 4  # all were read

    try:
        run(main(), timeout=30)
    finally:
        log.removeHandler(handler)
    logged = [r.getMessage() for r in records if "error message from the other side" in r.getMessage()]
    assert 1 <= len(logged) <= 3 * WARNINGS_PER_SECOND, len(logged)
    assert max(len(m) for m in logged) < 2048
