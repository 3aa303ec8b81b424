"""rsocket (rsocket-py) over TCP: request-stream and request-response.

The server's streams come from the library's ``StreamFromGenerator``; the client
subscribes with all of its demand up front (``initial_request_n(n)``). The TCP
transport reads 64 KiB at a time (its default, 1 KiB, is far slower for bulk).
"""

from __future__ import annotations

import asyncio
import struct
from importlib.metadata import version
from typing import Any

from reactivestreams.subscriber import Subscriber
from rsocket.helpers import create_future, single_transport_provider
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_client import RSocketClient
from rsocket.rsocket_server import RSocketServer
from rsocket.streams.stream_from_generator import StreamFromGenerator
from rsocket.transports.tcp import TransportTCP

from . import HOST, inflight_with_workers, sequential_calls

_REQ = struct.Struct("!II")
_READ = 65536


def info() -> dict[str, Any]:
    return {"version": version("rsocket")}


class _Handler(BaseRequestHandler):  # type: ignore[misc]
    async def request_response(self, payload: Payload) -> Any:
        return create_future(Payload(payload.data))

    async def request_stream(self, payload: Payload) -> Any:
        n, size = _REQ.unpack(payload.data)
        item = b"x" * size

        def gen() -> Any:
            last = n - 1
            for i in range(n):
                yield Payload(item), i == last

        return StreamFromGenerator(gen)


async def start_server() -> tuple[int, Any]:
    sockets: list[RSocketServer] = []

    def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sockets.append(RSocketServer(TransportTCP(reader, writer, read_buffer_size=_READ), handler_factory=_Handler))

    server = await asyncio.start_server(on_connection, HOST, 0)
    port = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        server.close()
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)

    return port, stop


class _Counter(Subscriber):  # type: ignore[misc]
    def __init__(self) -> None:
        self.got = 0
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_subscribe(self, subscription: Any) -> None:
        self.subscription = subscription

    def on_next(self, value: Payload, is_complete: bool = False) -> None:
        if value.data:
            self.got += len(value.data)
        if is_complete and not self.done.done():
            self.done.set_result(self.got)

    def on_error(self, exception: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exception)

    def on_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(self.got)


async def _open(port: int) -> RSocketClient:
    reader, writer = await asyncio.open_connection(HOST, port)
    client = RSocketClient(single_transport_provider(TransportTCP(reader, writer, read_buffer_size=_READ)))
    await client.connect()
    return client


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.client: RSocketClient | None = None

    async def connect(self) -> None:
        self.client = await _open(self.port)

    async def close(self) -> None:
        assert self.client is not None
        await self.client.close()

    async def stream(self, n: int, size: int) -> int:
        assert self.client is not None
        sub = _Counter()
        self.client.request_stream(Payload(_REQ.pack(n, size))).initial_request_n(n).subscribe(sub)
        return await sub.done

    async def call(self, payload: bytes) -> bytes:
        assert self.client is not None
        r = await self.client.request_response(Payload(payload))
        return r.data  # type: ignore[no-any-return]

    async def seq_calls(self, n: int, payload: bytes) -> None:
        await sequential_calls(self.call, n, payload)

    async def inflight_calls(self, n: int, window: int, payload: bytes) -> None:
        await inflight_with_workers(self.call, n, window, payload)


async def idle_connection(port: int) -> Any:
    return await _open(port)
