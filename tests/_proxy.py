"""A TCP proxy on loopback that tests use to cut or stall connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Proxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``.

    ``cut()`` drops every connection at once (both sides see a reset);
    ``stall()`` keeps the sockets open but stops forwarding (a dead peer);
    ``unstall()`` forwards again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self.refusing = False  # drop new connections at once (a server that is down)
        self.connections = 0
        self._stalled = asyncio.Event()
        self._stalled.set()
        self._pipes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        if self.refusing:
            cw.transport.abort()
            return
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.close()
            return
        self.connections += 1
        pipe = (cw, sw)
        self._pipes.add(pipe)
        task = asyncio.ensure_future(self._pump(sr, cw))
        self._tasks.add(task)
        try:
            await self._pump(cr, sw)
            await task
        finally:
            self._tasks.discard(task)
            self._pipes.discard(pipe)
            for w in pipe:
                w.close()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                await self._stalled.wait()
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()

    def cut(self) -> None:
        """Reset every proxied connection."""
        self.cuts += 1
        for cw, sw in list(self._pipes):
            for w in (cw, sw):
                transport = w.transport
                if transport is not None:
                    transport.abort()

    def stall(self) -> None:
        self._stalled.clear()

    def unstall(self) -> None:
        self._stalled.set()

    async def close(self) -> None:
        self.unstall()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def proxy(target_port: int) -> AsyncIterator[Proxy]:
    p = await Proxy(target_port).start()
    try:
        yield p
    finally:
        await p.close()
