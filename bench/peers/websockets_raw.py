"""Raw ``websockets`` (asyncio implementation): one WebSocket message per item/call.

permessage-deflate is off on both sides (``compression=None``), as fastrpc has it
on its own connections; everything else is the library's default.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import Any

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import broadcast, serve

from . import HOST, FeedRecorder, feed_item, inflight_with_workers, pace

_ID = struct.Struct("!I")

# Fan-out: connections that asked for the feed ({"op": "sub"}), and the bound on each
# one's transport buffer above which the publisher waits (broadcast() itself has no
# backpressure: without it a fast feed piles up in the buffers of slow connections).
_SUBSCRIBERS: list[Any] = []
_FEED_HIGH_WATER = 2**15  # websockets' own write_limit
_FEED_CHECK_EVERY = 16  # items between checks of the buffers


async def _feed(count: int, size: int, rate: float, subs: int) -> None:
    """``count`` stamped items to every subscriber with ``websockets.broadcast()``."""
    deadline = time.perf_counter() + 10
    while len(_SUBSCRIBERS) < subs and time.perf_counter() < deadline:
        await asyncio.sleep(0.001)
    conns = list(_SUBSCRIBERS)
    start = time.perf_counter()
    for i in range(count):
        broadcast(conns, feed_item(i, size))
        if rate:
            await pace(start, i, rate)
        elif i % _FEED_CHECK_EVERY == _FEED_CHECK_EVERY - 1:
            while any(c.transport.get_write_buffer_size() > _FEED_HIGH_WATER for c in conns):
                await asyncio.sleep(0.0005)


def info() -> dict[str, Any]:
    return {"version": getattr(websockets, "__version__", "?")}


async def _handler(ws: Any) -> None:
    # Text message: a command ({"op": "stream", "n", "size"}, {"op": "sub"},
    # {"op": "feed", "n", "size", "rate", "subs"}); binary: echoed back.
    # With no message the handler just waits: the "bare" server of the memory scenario.
    async for msg in ws:
        if type(msg) is str:
            cmd = json.loads(msg)
            if cmd["op"] == "sub":
                _SUBSCRIBERS.append(ws)
                continue
            if cmd["op"] == "feed":
                _tasks.add(t := asyncio.ensure_future(_feed(cmd["n"], cmd["size"], cmd["rate"], cmd["subs"])))
                t.add_done_callback(_tasks.discard)
                continue
            item = b"x" * cmd["size"]
            send = ws.send
            for _ in range(cmd["n"]):
                await send(item)
        else:
            await ws.send(msg)


_tasks: set[asyncio.Future[None]] = set()


async def start_server() -> tuple[int, Any]:
    server = await serve(_handler, HOST, 0, compression=None)
    port = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return port, stop


class Client:
    def __init__(self, port: int) -> None:
        self.url = f"ws://{HOST}:{port}"
        self.ws: Any = None
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.ws = await connect(self.url, compression=None)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        await self.ws.close()

    async def stream(self, n: int, size: int) -> int:
        await self.ws.send(json.dumps({"op": "stream", "n": n, "size": size}))
        recv = self.ws.recv
        got = 0
        for _ in range(n):
            got += len(await recv())
        return got

    async def seq_calls(self, n: int, payload: bytes) -> None:
        ws = self.ws
        for i in range(n):
            await ws.send(_ID.pack(i) + payload)
            r = await ws.recv()
            if _ID.unpack_from(r)[0] != i:
                raise AssertionError("bad echo")

    # Concurrent calls: a reader task matches each response to its request id.
    async def _read(self) -> None:
        pending = self.pending
        async for msg in self.ws:
            fut = pending.pop(_ID.unpack_from(msg)[0], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[4:])

    async def call(self, payload: bytes) -> bytes:
        if self.reader is None:
            self.reader = asyncio.get_running_loop().create_task(self._read())
        i = self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        await self.ws.send(_ID.pack(i) + payload)
        return await fut

    async def inflight_calls(self, n: int, window: int, payload: bytes) -> None:
        await inflight_with_workers(self.call, n, window, payload)


async def idle_connection(port: int) -> Any:
    return await connect(f"ws://{HOST}:{port}", compression=None)


class _Fanout:
    """``subs`` connections on the feed, each with a task reading it."""

    def __init__(self, conns: list[Any], rec: FeedRecorder) -> None:
        self.conns = conns
        self.readers = [asyncio.ensure_future(self._read(c, rec.got)) for c in conns]

    @staticmethod
    async def _read(ws: Any, got: Any) -> None:
        async for msg in ws:
            got(msg)

    async def feed(self, count: int, size: int, rate: float) -> None:
        await self.conns[0].send(
            json.dumps({"op": "feed", "n": count, "size": size, "rate": rate, "subs": len(self.conns)})
        )

    async def close(self) -> None:
        for r in self.readers:
            r.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.conns))


async def fanout_subscribers(port: int, subs: int, rec: FeedRecorder) -> _Fanout:
    url = f"ws://{HOST}:{port}"
    conns: list[Any] = []
    for k in range(0, subs, 50):
        conns += await asyncio.gather(*(connect(url, compression=None) for _ in range(min(50, subs - k))))
    for c in conns:
        await c.send('{"op": "sub"}')
    return _Fanout(conns, rec)
