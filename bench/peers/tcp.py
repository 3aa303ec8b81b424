"""The floor: an asyncio Protocol over raw TCP, no WebSocket, no RPC layer.

Messages are a 4-byte length and a body, read in ``data_received``. The server echoes
calls inside ``data_received`` and sends a stream from a task that respects
``pause_writing``; the client matches replies by a 4-byte id. What any library on
this machine can at best reach: each row shows how close to it the others come.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from typing import Any

from . import HOST, inflight_with_workers, sequential_calls

_LEN = struct.Struct("!I")
_CMD = struct.Struct("!cII")  # b"S", n, size: a stream request
_ID = struct.Struct("!I")


def info() -> dict[str, Any]:
    return {"version": sys.version.split()[0]}


class _Framed(asyncio.Protocol):
    """Length-prefixed messages both ways."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.resumed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            end = pos + 4 + size
            if end > n:
                break
            self.on_message(bytes(buf[pos + 4 : end]))
            pos = end
        del buf[:pos]

    def on_message(self, msg: bytes) -> None:
        raise NotImplementedError

    def send(self, msg: bytes) -> None:
        assert self.transport is not None
        self.transport.write(_LEN.pack(len(msg)) + msg)

    def pause_writing(self) -> None:
        if self.resumed is None:
            self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        fut, self.resumed = self.resumed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()


class _Server(_Framed):
    def __init__(self) -> None:
        super().__init__()
        self.tasks: set[asyncio.Task[None]] = set()

    def on_message(self, msg: bytes) -> None:
        if msg[:1] == b"S":
            _, n, size = _CMD.unpack(msg)
            task = asyncio.get_running_loop().create_task(self._stream(n, size))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:  # b"C" + id + payload: echoed as id + payload
            self.send(msg[1:])

    async def _stream(self, n: int, size: int) -> None:
        assert self.transport is not None
        frame = _LEN.pack(size) + b"x" * size
        write = self.transport.write
        for _ in range(n):
            write(frame)
            if self.resumed is not None:
                await self.resumed

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()
        super().connection_lost(exc)


async def start_server() -> tuple[int, Any]:
    server = await asyncio.get_running_loop().create_server(_Server, HOST, 0)
    port = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return port, stop


class _ClientProtocol(_Framed):
    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.remaining = 0
        self.got = 0
        self.done: asyncio.Future[int] | None = None

    def on_message(self, msg: bytes) -> None:
        if self.done is not None:  # receiving a stream
            self.got += len(msg)
            self.remaining -= 1
            if self.remaining == 0:
                done, self.done = self.done, None
                done.set_result(self.got)
            return
        fut = self.pending.pop(_ID.unpack_from(msg)[0], None)
        if fut is not None and not fut.done():
            fut.set_result(msg[4:])


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proto: _ClientProtocol | None = None
        self.next_id = 0

    async def connect(self) -> None:
        _, proto = await asyncio.get_running_loop().create_connection(_ClientProtocol, HOST, self.port)
        self.proto = proto

    async def close(self) -> None:
        assert self.proto is not None and self.proto.transport is not None
        self.proto.transport.close()

    async def stream(self, n: int, size: int) -> int:
        proto = self.proto
        assert proto is not None
        proto.remaining, proto.got = n, 0
        proto.done = asyncio.get_running_loop().create_future()
        proto.send(_CMD.pack(b"S", n, size))
        return await proto.done

    async def call(self, payload: bytes) -> bytes:
        proto = self.proto
        assert proto is not None
        i = self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        proto.pending[i] = fut
        proto.send(b"C" + _ID.pack(i) + payload)
        return await fut

    async def seq_calls(self, n: int, payload: bytes) -> None:
        await sequential_calls(self.call, n, payload)

    async def inflight_calls(self, n: int, window: int, payload: bytes) -> None:
        await inflight_with_workers(self.call, n, window, payload)


class _Idle:
    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    async def close(self) -> None:
        self.transport.close()


async def idle_connection(port: int) -> Any:
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, HOST, port)
    return _Idle(transport)
