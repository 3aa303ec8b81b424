"""A message over the receiver's max_message_size: the receiver closes the connection
with 1009, and what was pending on it fails with that code and a reason naming the
size, the limit and the option (not a bare "Connection closed" without a code).

A fastrpc server never sends more than its client's limits (its answer fails with
ResponseTooLarge instead), so the server here is a bare websockets one: a real core
does the handshake, then it answers a call with a message over the client's limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from _util import QUIET, frames_server, raw_client, run, server_peer, until
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed as WSClosed

import fastrpc
from fastrpc import frames as F
from fastrpc.protocol import Settings

LIMIT = 100_000


def test_message_over_max_message_size_fails_pending_call_with_1009_and_option() -> None:
    async def main() -> None:
        async def on_frame(ws: Any, f: F.Frame) -> None:
            if f.type == F.REQUEST:
                await ws.send(b"x" * 200_000)  # past the client's max_message_size

        frames = frames_server(Settings(), on_frame)

        async def handler(ws: Any) -> None:
            with contextlib.suppress(WSClosed):  # (the client closed it: 1009)
                await frames(ws)

        async with ws_serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=None) as ws:
            port = ws.sockets[0].getsockname()[1]
            peer = await fastrpc.connect(
                f"ws://127.0.0.1:{port}", max_message_size=LIMIT, max_frame_size=LIMIT // 2, **QUIET
            )
            try:
                with pytest.raises(fastrpc.ConnectionClosed) as info:
                    await asyncio.wait_for(peer.call("anything"), 5)
            finally:
                await peer.close()
        exc = info.value
        assert exc.code == 1009, repr(exc)
        assert "max_message_size" in str(exc), repr(exc)
        assert "200000" in str(exc), repr(exc)

    run(main(), timeout=10)


def test_server_closing_for_max_message_size_says_why() -> None:
    async def main() -> None:
        opts = {**QUIET, "max_message_size": LIMIT, "max_frame_size": LIMIT // 2}
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, **opts) as server:
            async with raw_client(server.url) as raw:
                sp = await server_peer(server)
                await raw.send(b"\x00" * 200_000)
                code, reason = await raw.drain()
                assert code == 1009, (code, reason)
                assert "max_message_size" in reason, reason
            await until(lambda: sp.close_exception is not None, 5, "the server's peer to close")
            exc = sp.close_exception
            assert exc is not None and exc.code == 1009, repr(exc)
            assert "max_message_size" in str(exc), repr(exc)

    run(main(), timeout=10)
