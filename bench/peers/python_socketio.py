"""python-socketio (``AsyncServer`` on aiohttp, ``AsyncClient`` over the WebSocket
transport): the fan-out rows only.

One server process with its default (in-memory) manager: every subscriber joins the
room "feed", the feed is ``await sio.emit("item", item, room="feed")`` per item (the
library encodes the packet once per emit and sends it to each member). A ``bytes``
item travels as Socket.IO's binary event: a placeholder packet and one binary
attachment, two WebSocket messages.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import socketio
from aiohttp import web

from . import HOST, FeedRecorder, feed_item, pace

ROOM = "feed"


def info() -> dict[str, Any]:
    return {"version": getattr(socketio, "__version__", None) or _dist_version(), "aiohttp": aiohttp.__version__}


def _dist_version() -> str:
    from importlib.metadata import version

    return version("python-socketio")


async def start_server() -> tuple[int, Any]:
    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = web.Application()
    sio.attach(app)
    members: set[str] = set()

    @sio.event
    async def connect(sid: str, environ: Any) -> None:
        await sio.enter_room(sid, ROOM)
        members.add(sid)

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        members.discard(sid)

    @sio.event
    async def feed(sid: str, count: int, size: int, rate: float, subs: int) -> None:
        deadline = time.perf_counter() + 10
        while len(members) < subs and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        start = time.perf_counter()
        for i in range(count):
            await sio.emit("item", feed_item(i, size), room=ROOM)
            if rate:
                await pace(start, i, rate)

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]

    async def stop() -> None:
        await runner.cleanup()

    return port, stop


class _Fanout:
    def __init__(self, clients: list[Any]) -> None:
        self.clients = clients

    async def feed(self, count: int, size: int, rate: float) -> None:
        await self.clients[0].emit("feed", (count, size, rate, len(self.clients)))

    async def close(self) -> None:
        await asyncio.gather(*(c.disconnect() for c in self.clients))


async def fanout_subscribers(port: int, subs: int, rec: FeedRecorder) -> _Fanout:
    url = f"http://{HOST}:{port}"

    async def one() -> Any:
        c = socketio.AsyncClient(reconnection=False)
        c.on("item", rec.got)
        await c.connect(url, transports=["websocket"])
        return c

    clients: list[Any] = []
    for k in range(0, subs, 50):
        clients += await asyncio.gather(*(one() for _ in range(min(50, subs - k))))
    return _Fanout(clients)
