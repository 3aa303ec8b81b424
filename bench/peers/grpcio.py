"""grpcio (grpc.aio): generic handlers with bytes in and out (no protobuf).

Stream: server-streaming ``/bench.Bench/Stream`` (an async generator); calls:
unary-unary ``/bench.Bench/Echo``. Each idle connection is its own channel with a
local subchannel pool (otherwise channels to one target share a connection).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from . import HOST, inflight_with_workers, sequential_calls

_REQ = struct.Struct("!II")
_OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]


def info() -> dict[str, Any]:
    return {"version": grpc.__version__}


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    n, size = _REQ.unpack(request)
    item = b"x" * size
    for _ in range(n):
        yield item


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def start_server() -> tuple[int, Any]:
    handler = grpc.method_handlers_generic_handler(
        "bench.Bench",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        },
    )
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()

    async def stop() -> None:
        await server.stop(None)

    return port, stop


class Client:
    def __init__(self, port: int) -> None:
        self.target = f"{HOST}:{port}"
        self.channel: Any = None

    async def connect(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.target, options=_OPTIONS)
        await self.channel.channel_ready()
        self._stream = self.channel.unary_stream("/bench.Bench/Stream")
        self._echo = self.channel.unary_unary("/bench.Bench/Echo")

    async def close(self) -> None:
        await self.channel.close()

    async def stream(self, n: int, size: int) -> int:
        got = 0
        async for item in self._stream(_REQ.pack(n, size)):
            got += len(item)
        return got

    async def call(self, payload: bytes) -> bytes:
        return await self._echo(payload)  # type: ignore[no-any-return]

    async def seq_calls(self, n: int, payload: bytes) -> None:
        await sequential_calls(self._echo, n, payload)

    async def inflight_calls(self, n: int, window: int, payload: bytes) -> None:
        await inflight_with_workers(self.call, n, window, payload)


async def idle_connection(port: int) -> Any:
    channel = grpc.aio.insecure_channel(f"{HOST}:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
    await channel.channel_ready()
    return channel
