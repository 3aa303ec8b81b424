"""fastrpc.asgi.app mounted in Starlette, served by a real uvicorn on 127.0.0.1
(in this process, port 0), with the fastrpc client: calls, streams with
backpressure, the authenticate hook, limits, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _util import NO_PROXY, QUIET, run, until

import fastrpc
import fastrpc.asgi
from fastrpc.broker import MemoryBroker

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
async def uvicorn_server(app: Any, **settings: Any) -> AsyncIterator[int]:
    """uvicorn serving ``app`` on 127.0.0.1, a free port; yields the port.
    ``settings``: more of uvicorn.Config's (``root_path``...)."""
    # The sans-I/O websockets protocol (uvicorn >= 0.35); its older "websockets" one
    # imports websockets.legacy, deprecated (warnings are errors here).
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        ws="websockets-sansio",
        ws_ping_interval=None,
        **settings,
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


class RecordingBroker(MemoryBroker):
    """The default broker, noting when the server starts and closes it."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def start(self, sink: Any) -> None:
        self.events.append("start")
        await super().start(sink)

    async def close(self) -> None:
        self.events.append("close")
        await super().close()


async def published_to_subscriber(url: str, rpc: fastrpc.asgi.AsgiApp, topic: str) -> list[Any]:
    """Subscribe to ``topic`` through ``url``, publish 0, 1, 2 on the server; what came."""
    got: list[Any] = []
    async with fastrpc.connect(url, **QUIET, **NO_PROXY) as peer:
        async with peer.subscribe(topic) as sub:
            await sub.start()
            for i in range(3):
                await rpc.server.publish(topic, i)

            async def take() -> None:
                async for item in sub:
                    got.append(item.value)
                    if len(got) == 3:
                        return

            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(take(), 3)
    return got


def test_topics_deliver_with_lifespan() -> None:
    # The bare app under uvicorn: the lifespan startup starts the topics (before any
    # connection), its shutdown closes them. They never started: publish() reached
    # no subscriber, while subscribing succeeded.
    rpc = fastrpc.asgi.app(fastrpc.Router(), keepalive_interval=None)
    broker = RecordingBroker()
    rpc.server.topics.broker = broker

    async def main() -> None:
        async with uvicorn_server(rpc) as port:
            assert broker.events == ["start"]
            assert await published_to_subscriber(f"ws://127.0.0.1:{port}/rpc", rpc, "prices") == [0, 1, 2]
            assert broker.events == ["start"]
        assert broker.events == ["start", "close"]

    run(main(), timeout=30)


def test_topics_deliver_mounted_in_starlette() -> None:
    # Starlette's lifespan does not reach a mounted app: the first connections start
    # the topics (once, those arriving together wait for the same start).
    app, rpc = starlette_app(fastrpc.Router())
    broker = RecordingBroker()
    rpc.server.topics.broker = broker

    async def main() -> None:
        async with uvicorn_server(app) as port:
            assert broker.events == []
            got = await asyncio.gather(
                published_to_subscriber(f"ws://127.0.0.1:{port}/rpc", rpc, "a"),
                published_to_subscriber(f"ws://127.0.0.1:{port}/mounted/x", rpc, "b"),
            )
            assert got == [[0, 1, 2], [0, 1, 2]]
            assert broker.events == ["start"]
            await rpc.close()
            assert broker.events == ["start", "close"]
            # Closed, then a new connection: started again.
            assert await published_to_subscriber(f"ws://127.0.0.1:{port}/rpc", rpc, "c") == [0, 1, 2]
            assert broker.events == ["start", "close", "start"]
        await rpc.close()

    run(main(), timeout=30)


def test_apps_sharing_a_redis_broker_deliver_each_others_publishes(redis: Any) -> None:
    # app(broker=) as serve(broker=): two ASGI apps (two workers, say) on one Redis;
    # a publish on one reaches a subscriber of the other. The broker starts with the
    # lifespan and is closed with it. (app() refused broker= as an unknown option.)
    from fastrpc.redis_broker import RedisBroker

    brokers = [RedisBroker(redis.url, prefix="asgi", timeout=2.0) for _ in range(2)]
    a, b = (fastrpc.asgi.app(fastrpc.Router(), broker=br, keepalive_interval=None) for br in brokers)
    assert a.server.topics.broker is brokers[0] and b.server.topics.broker is brokers[1]

    async def main() -> None:
        async with uvicorn_server(a), uvicorn_server(b) as port_b:
            assert all(br.listening.is_set() for br in brokers)  # started by the lifespan
            async with fastrpc.connect(f"ws://127.0.0.1:{port_b}", **QUIET, **NO_PROXY) as peer:
                async with peer.subscribe("feed") as sub:
                    await sub.start()
                    for i in range(3):
                        await a.server.publish("feed", {"i": i})
                    got: list[Any] = []
                    async for item in sub:
                        got.append(item.value["i"])
                        if len(got) == 3:
                            break
                    assert got == [0, 1, 2]
                    assert item.offset == 3  # (offsets count from 1)
        assert not any(br.listening.is_set() for br in brokers)  # closed at the lifespan shutdown

    run(main(), timeout=30)


def test_send_after_the_asgi_server_closed_is_a_connection_error() -> None:
    # Once uvicorn sent its close (the client broke the protocol, say), its send()
    # raises RuntimeError: the transport takes it for a lost connection. It escaped
    # the send pump ("Task exception was never retrieved") and the peer's send().
    async def main() -> None:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # nothing comes
            raise AssertionError

        async def send(msg: Any) -> None:
            sent.append(msg)
            if msg["type"] == "websocket.send":
                raise RuntimeError("Unexpected ASGI message 'websocket.send', after sending 'websocket.close'.")

        transport = fastrpc.asgi.AsgiTransport({"type": "websocket"}, receive, send)
        try:
            assert transport.write_now(b"queued")
            pump = transport._pump
            assert pump is not None
            await asyncio.wait_for(asyncio.wait({pump}), 5)
            assert pump.exception() is None
            assert transport.buffered() == 0
            with pytest.raises(ConnectionError, match="could not send"):
                await transport.send(b"direct")
        finally:
            await transport.close()
            await transport.stop()
        assert sent[-1]["type"] == "websocket.close"

    run(main(), timeout=10)


def test_close_by_the_asgi_server_during_a_stream_leaves_no_task_exception() -> None:
    # The same through a real uvicorn: it closes the WebSocket (as when the client
    # breaks the protocol) while the app streams, and its send() then raises
    # RuntimeError. A middleware makes that close at the 10th message.
    router = fastrpc.Router()

    @router.method
    async def flood() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 60000

    rpc = fastrpc.asgi.app(router, keepalive_interval=None)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        sent = 0

        async def send_then_close(msg: Any) -> None:
            nonlocal sent
            if msg["type"] == "websocket.send":
                sent += 1
                if sent == 10:
                    await send({"type": "websocket.close", "code": 1002, "reason": "protocol error"})
            await send(msg)

        await rpc(scope, receive, send_then_close if scope["type"] == "websocket" else send)

    errors: list[Any] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        async with uvicorn_server(app) as port:
            async with fastrpc.connect(f"ws://127.0.0.1:{port}/rpc", **QUIET, **NO_PROXY) as peer:
                with pytest.raises(fastrpc.ConnectionClosed, match="protocol error"):
                    async for _ in peer.stream("flood"):
                        pass
            await until(lambda: not rpc.server.peers, 5, "the server to forget its peer")
            gc.collect()  # a task that failed unseen says so when it is collected
            await asyncio.sleep(0.05)
        assert not errors, errors

    run(main(), timeout=30)


def test_request_path_includes_root_path_once() -> None:
    # ASGI's "path" includes "root_path": the prefix was counted twice.
    paths: list[str] = []

    def authenticate(request: fastrpc.asgi.AsgiRequest) -> Any:
        paths.append(request.path)
        return "someone"

    router = fastrpc.Router()

    @router.method
    def where() -> Any:
        return fastrpc.current_peer().transport.request_path

    rpc = fastrpc.asgi.app(router, authenticate=authenticate, keepalive_interval=None)

    async def main() -> None:
        # Mounted in Starlette: root_path "/mounted", path "/mounted/x".
        async with uvicorn_server(Starlette(routes=[starlette_routing.Mount("/mounted", app=rpc)])) as port:
            async with fastrpc.connect(f"ws://127.0.0.1:{port}/mounted/x", **QUIET, **NO_PROXY) as peer:
                assert await peer.call("where") == "/mounted/x"
        # uvicorn --root-path /api behind a proxy that strips it: the client asked
        # for /api/rpc, the proxy for /rpc.
        async with uvicorn_server(rpc, root_path="/api") as port:
            async with fastrpc.connect(f"ws://127.0.0.1:{port}/rpc", **QUIET, **NO_PROXY) as peer:
                assert await peer.call("where") == "/api/rpc"
        assert paths == ["/mounted/x", "/api/rpc"]

    run(main(), timeout=30)


def test_authenticate_auth_error_status() -> None:
    # AuthError(reason, status=429) refuses with 429 as under serve(); it was logged
    # as a failed hook and answered with 500.
    def authenticate(request: fastrpc.asgi.AsgiRequest) -> Any:
        raise fastrpc.AuthError("slow down", status=429)

    app, _ = starlette_app(make_router(Producer()), authenticate=authenticate)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]

    async def main() -> None:
        async with uvicorn_server(app) as port:
            with pytest.raises(Exception) as info:
                await fastrpc.connect(f"ws://127.0.0.1:{port}/rpc", **QUIET, **NO_PROXY)
            assert "HTTP 429" in str(info.value), info.value

    logging.getLogger("fastrpc.server").addHandler(handler)
    try:
        run(main(), timeout=30)
    finally:
        logging.getLogger("fastrpc.server").removeHandler(handler)
    assert not records, [r.getMessage() for r in records]


@pytest.mark.parametrize("fragments", [1, 3])
def test_message_over_max_message_size_close_reason_names_size_and_limit(fragments: int) -> None:
    """The app's own 1009 (whatever uvicorn allows) says how large the message was and
    the max_message_size the app was given, in fastrpc's words; a fragmented message
    (uvicorn joins its fragments) is measured whole."""
    from websockets.asyncio.client import connect as ws_connect

    limit = 64 << 10
    app, _ = starlette_app(make_router(Producer()), max_message_size=limit, max_frame_size=16 << 10)
    size = (limit + 1000) // fragments * fragments

    async def main() -> None:
        async with uvicorn_server(app) as port:
            async with ws_connect(f"ws://127.0.0.1:{port}/rpc", compression=None, **NO_PROXY) as ws:
                part = b"\x00" * (size // fragments)
                await ws.send(part if fragments == 1 else [part] * fragments)
                with pytest.raises(Exception):
                    await asyncio.wait_for(ws.recv(), 2)
                assert ws.close_code == 1009, (ws.close_code, ws.close_reason)
                assert ws.close_reason == f"message of {size} bytes exceeds max_message_size ({limit})"

    run(main(), timeout=5)
