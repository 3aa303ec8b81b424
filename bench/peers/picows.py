"""picows: callback-based WebSocket, one message per item/call.

The server sends a stream from a task that waits on the transport's
pause_writing/resume_writing (flow control); calls are echoed inside on_ws_frame.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import picows
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect, ws_create_server

from . import HOST, inflight_with_workers, sequential_calls

_ID = struct.Struct("!I")


def info() -> dict[str, Any]:
    return {"version": getattr(picows, "__version__", "?")}


class _ServerListener(WSListener):
    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.resumed: asyncio.Future[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = frame.msg_type
        if t == WSMsgType.BINARY:
            transport.send(WSMsgType.BINARY, frame.get_payload_as_memoryview())
        elif t == WSMsgType.TEXT:
            cmd = json.loads(frame.get_payload_as_bytes())
            task = asyncio.get_running_loop().create_task(self._stream(transport, cmd["n"], cmd["size"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif t == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    async def _stream(self, transport: WSTransport, n: int, size: int) -> None:
        item = b"x" * size
        send = transport.send
        binary = WSMsgType.BINARY
        for _ in range(n):
            send(binary, item)
            if self.resumed is not None:
                await self.resumed

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for task in self.tasks:
            task.cancel()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self.resumed is None:
            self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        fut, self.resumed = self.resumed, None
        if fut is not None and not fut.done():
            fut.set_result(None)


async def start_server() -> tuple[int, Any]:
    server = await ws_create_server(lambda request: _ServerListener(), HOST, 0)
    port = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return port, stop


class _ClientListener(WSListener):
    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.remaining = 0
        self.got = 0
        self.done: asyncio.Future[int] | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            return
        if self.done is not None:  # receiving a stream
            self.got += frame.payload_size
            self.remaining -= 1
            if self.remaining == 0:
                done, self.done = self.done, None
                done.set_result(self.got)
            return
        msg = frame.get_payload_as_bytes()
        fut = self.pending.pop(_ID.unpack_from(msg)[0], None)
        if fut is not None and not fut.done():
            fut.set_result(msg[4:])


class Client:
    def __init__(self, port: int) -> None:
        self.url = f"ws://{HOST}:{port}"
        self.transport: WSTransport | None = None
        self.listener: _ClientListener | None = None
        self.next_id = 0

    async def connect(self) -> None:
        transport, listener = await ws_connect(_ClientListener, self.url)
        assert isinstance(listener, _ClientListener)
        self.transport, self.listener = transport, listener

    async def close(self) -> None:
        assert self.transport is not None
        self.transport.send_close(WSCloseCode.OK)
        self.transport.disconnect()
        await self.transport.wait_disconnected()

    async def stream(self, n: int, size: int) -> int:
        assert self.transport is not None and self.listener is not None
        lst = self.listener
        lst.remaining, lst.got = n, 0
        lst.done = asyncio.get_running_loop().create_future()
        self.transport.send(WSMsgType.TEXT, json.dumps({"n": n, "size": size}).encode())
        return await lst.done

    async def call(self, payload: bytes) -> bytes:
        assert self.transport is not None and self.listener is not None
        i = self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.listener.pending[i] = fut
        self.transport.send(WSMsgType.BINARY, _ID.pack(i) + payload)
        return await fut

    async def seq_calls(self, n: int, payload: bytes) -> None:
        await sequential_calls(self.call, n, payload)

    async def inflight_calls(self, n: int, window: int, payload: bytes) -> None:
        await inflight_with_workers(self.call, n, window, payload)


class _Idle:
    def __init__(self, transport: WSTransport) -> None:
        self.transport = transport

    async def close(self) -> None:
        self.transport.send_close(WSCloseCode.OK)
        self.transport.disconnect()
        await self.transport.wait_disconnected()


async def idle_connection(port: int) -> Any:
    transport, _ = await ws_connect(WSListener, f"ws://{HOST}:{port}")
    return _Idle(transport)
