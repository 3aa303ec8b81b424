"""fastrpc: streaming calls, calls, idle connections and idle streams.

Default settings throughout. Run as "fastrpc" (the compiled codec when it is built),
"fastrpc-pure" (FASTRPC_NO_EXTENSIONS=1, set before this module is imported) or
"fastrpc-base" (another checkout's fastrpc: compare.py --baseline DIR).

The fan-out rows use topics (``server.publish`` / ``peer.subscribe``, the API for
it); ``BENCH_FANOUT_API=stream`` measures instead a streaming method per connection
drained from its own ``asyncio.Queue`` (user code, no offsets, no resume).

``BENCH_BUSY_POLL=seconds`` gives ``busy_poll`` (fastrpc.polling) to the server and
the calls' client: the "fastrpc-poll" library of ``compare.py``, ``sides.py`` and
``critical_path.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import fastrpc
from fastrpc.options import TOPIC_QUEUE_SIZE

from . import HOST, FeedRecorder, feed_item, inflight_with_workers, pace

FEED = "feed"  # the fan-out scenarios' topic
FANOUT_API = os.environ.get("BENCH_FANOUT_API", "topics")
if FANOUT_API not in ("topics", "stream"):
    raise ValueError(f"BENCH_FANOUT_API={FANOUT_API!r}: use topics or stream")
# Options for the server and the calls' client: busy_poll when BENCH_BUSY_POLL is set.
_POLL: dict[str, Any] = {"busy_poll": float(os.environ["BENCH_BUSY_POLL"])} if os.environ.get("BENCH_BUSY_POLL") else {}


def info() -> dict[str, Any]:
    """Version, which tree this fastrpc is (its file) and which frame codec is live
    (and from which file), so that the table can show what really ran."""
    impl = getattr(fastrpc, "IMPLEMENTATION", None)
    if impl is None:  # a tree that keeps it elsewhere
        impl = getattr(sys.modules.get("fastrpc.frames"), "IMPLEMENTATION", "?")
    codec = sys.modules.get("fastrpc._frames" if impl == "cython" else "fastrpc._frames_py")
    return {
        "version": getattr(fastrpc, "__version__", "?"),
        "implementation": impl,
        "file": fastrpc.__file__,
        "codec_file": getattr(codec, "__file__", None),
    }


def _router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def items(n: int, size: int) -> AsyncIterator[bytes]:
        item = b"x" * size
        for _ in range(n):
            yield item

    @router.method
    def echo(payload: bytes) -> bytes:
        return payload

    @router.method
    async def feed(count: int, size: int, rate: float) -> None:
        """Publish ``count`` stamped items on the topic every subscriber follows
        (``block`` policy: as fast as the slowest subscription takes them)."""
        publish = fastrpc.current_peer().server.publish  # type: ignore[union-attr]
        start = time.perf_counter()
        for i in range(count):
            await publish(FEED, feed_item(i, size))
            if rate:
                await pace(start, i, rate)

    # BENCH_FANOUT_API=stream: one bounded queue per follower, the feed waits for room.
    queues: list[asyncio.Queue[bytes]] = []

    @router.method
    async def feed_queues(count: int, size: int, rate: float) -> None:
        start = time.perf_counter()
        for i in range(count):
            item = feed_item(i, size)
            for q in queues:
                if q.full():
                    await q.put(item)
                else:
                    q.put_nowait(item)
            if rate:
                await pace(start, i, rate)

    @router.method
    async def follow() -> AsyncIterator[bytes]:
        q: asyncio.Queue[bytes] = asyncio.Queue(TOPIC_QUEUE_SIZE)
        queues.append(q)
        try:
            yield b""  # registered: the feed reaches this follower from now on
            while True:
                yield await q.get()
        finally:
            queues.remove(q)

    @router.method
    async def idle() -> AsyncIterator[bytes]:
        yield b"x" * 16
        await asyncio.get_running_loop().create_future()  # until cancelled

    return router


async def start_server() -> tuple[int, Any]:
    server = await fastrpc.serve(_router(), HOST, 0, **_POLL).start()
    return server.port, server.close


class Client:
    def __init__(self, port: int) -> None:
        self.url = f"ws://{HOST}:{port}"
        self.peer: fastrpc.RpcPeer | None = None

    async def connect(self) -> None:
        self.peer = await fastrpc.connect(self.url, **_POLL)

    async def close(self) -> None:
        assert self.peer is not None
        await self.peer.close()

    async def stream(self, n: int, size: int) -> int:
        assert self.peer is not None
        got = 0
        async for item in self.peer.stream("items", n, size):
            got += len(item)
        return got

    async def call(self, payload: bytes) -> bytes:
        assert self.peer is not None
        return await self.peer.call("echo", payload)  # type: ignore[no-any-return]

    async def seq_calls(self, n: int, payload: bytes) -> None:
        call = self.peer.call  # type: ignore[union-attr]
        for _ in range(n):
            r = await call("echo", payload)
            if len(r) != len(payload):
                raise AssertionError("bad echo")

    async def inflight_calls(self, n: int, window: int, payload: bytes) -> None:
        await inflight_with_workers(self.call, n, window, payload)


async def idle_connection(port: int) -> Any:
    return await fastrpc.connect(f"ws://{HOST}:{port}")


class _IdleStreams:
    """One connection with streams opened on it and left idle.

    "stream": the client sends one 16-byte item on a new stream, then nothing; the
    server (a Router, nobody claims the stream) holds it with its item.
    "call": a streaming call whose server handler yields one item, then waits.
    """

    def __init__(self, peer: fastrpc.RpcPeer) -> None:
        self.peer = peer
        self.forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held: list[Any] = []

    async def _source(self) -> AsyncIterator[bytes]:
        yield b"x" * 16
        await asyncio.shield(self.forever)

    async def add(self, kind: str, k: int) -> None:
        for _ in range(k):
            if kind == "stream":
                await self.peer.send_stream(self._source())
            else:
                s = self.peer.stream("idle")
                await s.__anext__()
                self.held.append(s)
        await self.peer.ping()  # the server has handled everything sent before

    async def close(self) -> None:
        for s in self.held:
            await s.aclose()
        await self.peer.close()
        self.forever.cancel()


async def idle_streams(port: int) -> _IdleStreams:
    return _IdleStreams(await fastrpc.connect(f"ws://{HOST}:{port}"))


class _Fanout:
    """``subs`` connections, each with a subscription to the feed (topics:
    ``server.publish`` / ``peer.subscribe``, default settings; or the ``follow``
    streaming method) and a task reading it."""

    def __init__(self, peers: list[fastrpc.RpcPeer], subs: list[Any], rec: FeedRecorder) -> None:
        self.peers = peers
        self.subs = subs
        self.readers = [asyncio.ensure_future(self._read(s, rec.got)) for s in subs]

    @staticmethod
    async def _read(sub: Any, got: Any) -> None:
        if FANOUT_API == "stream":
            async for item in sub:
                got(item)
        else:
            async for ev in sub:
                got(ev.value)

    async def feed(self, count: int, size: int, rate: float) -> None:
        # Returns once the server has published everything (with `block`, about when
        # the subscriptions have taken it); the recorder times the delivery.
        method = "feed" if FANOUT_API == "topics" else "feed_queues"
        await self.peers[0].call(method, count, size, rate)

    async def close(self) -> None:
        for r in self.readers:
            r.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(s.aclose() for s in self.subs))
        await asyncio.gather(*(p.close() for p in self.peers))


async def fanout_subscribers(port: int, subs: int, rec: FeedRecorder) -> _Fanout:
    url = f"ws://{HOST}:{port}"
    peers: list[fastrpc.RpcPeer] = []
    for k in range(0, subs, 50):
        peers += await asyncio.gather(*(fastrpc.connect(url) for _ in range(min(50, subs - k))))
    if FANOUT_API == "stream":
        streams = [p.stream("follow") for p in peers]
        await asyncio.gather(*(s.__anext__() for s in streams))
        return _Fanout(peers, streams, rec)
    started = await asyncio.gather(*(p.subscribe(FEED).start() for p in peers))
    return _Fanout(peers, list(started), rec)
