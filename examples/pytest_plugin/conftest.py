"""Wires the example's Router into fastrpc's pytest plugin, and adds a raw `websockets`
echo server (same payload codec, msgpack via msgspec) as the baseline to compare with."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from service import router
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve


@pytest.fixture
def fastrpc_router() -> Any:
    return router  # fastrpc_server serves this; fastrpc_client is connected to it


def _echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(msgspec.msgpack.encode(msgspec.msgpack.decode(message)))


@pytest.fixture
def raw_websocket() -> Iterator[ClientConnection]:
    """A plain websockets server on 127.0.0.1 echoing msgpack, and a client connected to it."""
    server: Server = serve(_echo, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.socket.getsockname()[:2]
    try:
        with connect(f"ws://{host}:{port}", compression=None) as ws:
            yield ws
    finally:
        server.shutdown()
        thread.join(10)
