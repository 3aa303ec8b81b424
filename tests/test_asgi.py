"""fastrpc.asgi.app mounted in Starlette, served by a real uvicorn on 127.0.0.1
(in this process, port 0), with the fastrpc client: calls, streams with
backpressure, the authenticate hook, limits, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _util import NO_PROXY, QUIET, run, until

import fastrpc
import fastrpc.asgi

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is in the test extra: pip install -e '.[test]'")
starlette_routing = pytest.importorskip("starlette.routing")
from starlette.applications import Starlette  # noqa: E402

pytestmark = pytest.mark.external


class Producer:
    """A streaming handler that counts what it produced."""

    def __init__(self) -> None:
        self.produced = 0


def make_router(producer: Producer) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    async def ticks(n: int, size: int) -> AsyncIterator[bytes]:
        for i in range(n):
            producer.produced += 1
            yield i.to_bytes(4, "big") + b"x" * (size - 4)

    @router.method
    async def upper(items: AsyncIterator[str]) -> AsyncIterator[str]:
        async for item in items:
            yield item.upper()

    @router.method
    def whoami() -> Any:
        transport = fastrpc.current_peer().transport
        return getattr(transport, "identity", None)

    return router


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[int]:
    """uvicorn serving ``app`` on 127.0.0.1, a free port; yields the port."""
    # The sans-I/O websockets protocol (uvicorn >= 0.35); its older "websockets" one
    # imports websockets.legacy, deprecated (warnings are errors here).
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws="websockets-sansio", ws_ping_interval=None
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), 10, "uvicorn to start")
        assert not task.done(), task.exception()
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def starlette_app(target: Any, **options: Any) -> tuple[Starlette, fastrpc.asgi.AsgiApp]:
    rpc = fastrpc.asgi.app(target, **{"keepalive_interval": None, **options})
    app = Starlette(
        routes=[
            starlette_routing.WebSocketRoute("/rpc", rpc),
            starlette_routing.Mount("/mounted", app=rpc),
        ]
    )
    return app, rpc


def test_calls_streams_and_channels() -> None:
    producer = Producer()
    app, rpc = starlette_app(make_router(producer))

    async def main() -> None:
        async with uvicorn_server(app) as port:
            for path in ("/rpc", "/mounted/any/path"):
                async with fastrpc.connect(f"ws://127.0.0.1:{port}{path}", **QUIET, **NO_PROXY) as peer:
                    assert await peer.call("add", 1, 2) == 3
                    results = await asyncio.gather(*(peer.call("add", i, 1) for i in range(200)))
                    assert results == [i + 1 for i in range(200)]
                    items = [item async for item in peer.stream("ticks", 500, 100)]
                    assert [int.from_bytes(i[:4], "big") for i in items] == list(range(500))

                    async def words() -> AsyncIterator[str]:
                        for w in ("a", "b", "c"):
                            yield w

                    assert [x async for x in peer.channel("upper", words())] == ["A", "B", "C"]
                    methods = await peer.call("fastrpc.methods")
                    assert [m["name"] for m in methods] == ["add", "ticks", "upper", "whoami"]
                    assert len(rpc.server.peers) == 1
            await until(lambda: not rpc.server.peers, 5, "the server to forget its peers")

    run(main(), timeout=30)


def test_backpressure_slow_consumer() -> None:
    # The producer runs ahead by what the windows allow (256 KiB stream window +
    # 64 KiB stream buffer, about 320 items of 1 KiB), then waits for the consumer.
    producer = Producer()
    app, _ = starlette_app(make_router(producer))
    n, size = 3000, 1024

    async def main() -> None:
        async with uvicorn_server(app) as port:
            async with fastrpc.connect(f"ws://127.0.0.1:{port}/rpc", **QUIET, **NO_PROXY) as peer:
                stream = peer.stream("ticks", n, size)
                got = [await stream.__anext__() for _ in range(5)]
                await asyncio.sleep(0.3)
                first = producer.produced
                await asyncio.sleep(0.3)
                assert producer.produced == first, "the producer did not wait for the consumer"
                assert 5 < first < 700, first
                async for item in stream:
                    got.append(item)
                assert [int.from_bytes(i[:4], "big") for i in got] == list(range(n))
                assert producer.produced == n

    run(main(), timeout=30)


class Forbidden(Exception):
    """Any exception with ``status`` 401 or 403 refuses with that status."""

    status = 403

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def test_authenticate_hook() -> None:
    seen: list[fastrpc.asgi.AsgiRequest] = []

    async def authenticate(request: fastrpc.asgi.AsgiRequest) -> Any:
        await asyncio.sleep(0)
        seen.append(request)
        token = request.headers.get("Authorization", "")  # case-insensitive
        if token == "":
            raise fastrpc.asgi.AuthenticationRequired("send a bearer token")
        if token == "Bearer banned":
            raise Forbidden("banned")
        if token == "Bearer no":
            raise PermissionError("not you")
        if token == "Bearer crash":
            raise RuntimeError("a bug in the hook")
        if token != "Bearer good":
            return None
        return {"user": "ada", "path": request.path, "room": request.query.get("room")}

    app, _ = starlette_app(make_router(Producer()), authenticate=authenticate)

    async def main() -> None:
        async with uvicorn_server(app) as port:
            url = f"ws://127.0.0.1:{port}/rpc?room=7"
            async with fastrpc.connect(
                url, additional_headers={"Authorization": "Bearer good"}, **QUIET, **NO_PROXY
            ) as peer:
                assert await peer.call("whoami") == {"user": "ada", "path": "/rpc", "room": ["7"]}
            assert seen[-1].remote_address[0] == "127.0.0.1"
            cases = [({}, 401), ({"Authorization": "Bearer other"}, 401), ({"Authorization": "Bearer banned"}, 403)]
            cases += [({"Authorization": "Bearer no"}, 403), ({"Authorization": "Bearer crash"}, 500)]
            for headers, status in cases:
                with pytest.raises(Exception) as info:
                    await fastrpc.connect(url, additional_headers=headers, **QUIET, **NO_PROXY)
                assert f"HTTP {status}" in str(info.value), (headers, info.value)

    logging.getLogger("fastrpc.server").disabled = True  # the 500 case logs its traceback
    try:
        run(main(), timeout=30)
    finally:
        logging.getLogger("fastrpc.server").disabled = False


def test_limits_and_plain_http() -> None:
    from websockets.asyncio.client import connect as ws_connect

    app, _ = starlette_app(make_router(Producer()), max_message_size=64 << 10, max_frame_size=16 << 10)

    async def main() -> None:
        async with uvicorn_server(app) as port:
            # A message over the app's max_message_size: closed with 1009, whatever uvicorn allows.
            async with ws_connect(f"ws://127.0.0.1:{port}/rpc", compression=None, **NO_PROXY) as ws:
                await ws.send(b"\x00" * (128 << 10))
                with pytest.raises(Exception):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 1009 and "max_message_size" in (ws.close_reason or "")
            # The limit is announced, so the fastrpc client splits what it sends.
            async with fastrpc.connect(f"ws://127.0.0.1:{port}/rpc", **QUIET, **NO_PROXY) as peer:
                assert peer.peer_settings is not None and peer.peer_settings.max_message_size == 64 << 10
                assert await peer.call("add", 2, 3) == 5
            # Plain HTTP to the mounted app: 426.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /mounted/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
            assert head.startswith(b"HTTP/1.1 426"), head

    run(main(), timeout=30)


def test_shutdown_closes_connections() -> None:
    app, rpc = starlette_app(make_router(Producer()))

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            port = await stack.enter_async_context(uvicorn_server(app))
            peer = await fastrpc.connect(f"ws://127.0.0.1:{port}/rpc", **QUIET, **NO_PROXY)
            assert await peer.call("add", 1, 1) == 2
            await until(lambda: rpc.server.peers, 5, "the server's peer")
        # uvicorn stopped: lifespan shutdown closed the connection (1001).
        await asyncio.wait_for(peer.wait_closed(), 10)
        assert peer.close_exception is not None and peer.close_exception.code in (1001, 1012)
        assert not rpc.server.peers

    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    run(main(), timeout=30)


def test_unknown_options_are_refused() -> None:
    with pytest.raises(TypeError, match="ping_interval"):
        fastrpc.asgi.app(fastrpc.Router(), ping_interval=5)
    with pytest.raises(ValueError, match="unknown compression"):
        fastrpc.asgi.app(fastrpc.Router(), compression="lz4")
    with pytest.raises(ValueError, match="max_message_size below max_frame_size"):
        fastrpc.asgi.app(fastrpc.Router(), max_message_size=1024)


def test_seed_json_mode_through_asgi() -> None:
    import json

    from websockets.asyncio.client import connect as ws_connect

    app, _ = starlette_app(make_router(Producer()))

    async def main() -> None:
        async with uvicorn_server(app) as port:
            async with ws_connect(f"ws://127.0.0.1:{port}/rpc", compression=None, **NO_PROXY) as ws:
                request = {"category": "request", "requestId": "r1", "data": {"method": "add", "params": [20, 22]}}
                await ws.send(json.dumps(request))
                # The seed's clients wait for a welcome first (docs/json-mode.md).
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert welcome["category"] == "welcome" and welcome["clientId"]
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert reply == {"category": "response", "requestId": "r1", "data": 42}

    run(main(), timeout=30)
