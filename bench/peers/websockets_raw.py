"""Raw ``websockets`` (asyncio implementation): one WebSocket message per item/call.

permessage-deflate is off on both sides (``compression=None``), as fastrpc has it
on its own connections; everything else is the library's default.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from . import HOST, inflight_with_workers

_ID = struct.Struct("!I")


def info() -> dict[str, Any]:
    return {"version": getattr(websockets, "__version__", "?")}


async def _handler(ws: Any) -> None:
    # Text message: a command ({"op": "stream", "n", "size"}); binary: echoed back.
    # With no message the handler just waits: the "bare" server of the memory scenario.
    async for msg in ws:
        if type(msg) is str:
            cmd = json.loads(msg)
            item = b"x" * cmd["size"]
            send = ws.send
            for _ in range(cmd["n"]):
                await send(item)
        else:
            await ws.send(msg)


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
