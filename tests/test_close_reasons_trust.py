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

import msgspec
import pytest
from _util import QUIET, frames_server, raw_client, run, server_peer, until
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed as WSClosed

import fastrpc
from fastrpc import frames as F
from fastrpc.protocol import Settings

LIMIT = 100_000


async def _call_answered_with(message: bytes | list[bytes], wait: float) -> fastrpc.ConnectionClosed:
    """How a call fails, from a fastrpc client given max_message_size LIMIT, to a bare
    websockets server (a real core does the handshake) that answers it with
    ``message`` (a list: its fragments); the call is bounded by ``wait`` seconds."""

    async def on_frame(ws: Any, f: F.Frame) -> None:
        if f.type == F.REQUEST:
            await ws.send(message)

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
                await asyncio.wait_for(peer.call("anything"), wait)
        finally:
            await peer.close()
    return info.value


def test_message_over_max_message_size_fails_pending_call_with_1009_and_option() -> None:
    async def main() -> None:
        exc = await _call_answered_with(b"x" * 200_000, 5)  # past the client's max_message_size
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


def _reason(what: str) -> str:
    """The close reason for ``what`` (a message and its size) over LIMIT."""
    return f"{what} exceeds max_message_size ({LIMIT})"


# A message over LIMIT whole (one frame: its size is known), and one whose fragments
# (each within the limit, sent as a list) pass it together: the receiver knows how much
# at least.
OVER: dict[str, tuple[bytes | list[bytes], str]] = {
    "whole": (b"\x00" * 200_000, "message of 200000 bytes"),
    "fragmented": ([b"\x00" * 60_000] * 3, "fragmented message of at least 120000 bytes"),
}


@pytest.mark.parametrize("shape", sorted(OVER))
def test_server_close_reason_names_the_size_and_the_configured_max_message_size(shape: str) -> None:
    """The 1009 a fastrpc server closes with says, in fastrpc's words, how large the
    message was (when known) and the max_message_size it was given (not the library's
    own limit with its headroom), whether the message came whole or in fragments."""
    message, what = OVER[shape]

    async def main() -> None:
        opts = {**QUIET, "max_message_size": LIMIT, "max_frame_size": LIMIT // 2}
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, **opts) as server:
            async with raw_client(server.url) as raw:
                sp = await server_peer(server)
                await raw.send(message)  # (a list: fragments)
                code, reason = await raw.drain(2)
                assert (code, reason) == (1009, _reason(what))
            await until(lambda: sp.close_exception is not None, 2, "the server's peer to close")
            exc = sp.close_exception
            assert exc is not None and exc.code == 1009, repr(exc)
            assert _reason(what) in str(exc), repr(exc)

    run(main(), timeout=5)


@pytest.mark.parametrize("shape", sorted(OVER))
def test_client_close_reason_names_the_size_and_the_configured_max_message_size(shape: str) -> None:
    """As the server's: a fastrpc client sent a message over its max_message_size
    fails its pending call with 1009 and a reason naming the size (when known) and
    the limit it was given."""
    message, what = OVER[shape]

    async def main() -> None:
        exc = await _call_answered_with(message, 2)
        assert exc.code == 1009, repr(exc)
        assert _reason(what) in str(exc), repr(exc)

    run(main(), timeout=5)


def _request_of(size: int, cid: int) -> bytes:
    """A call to ``size(data)`` whose message is exactly ``size`` bytes long."""
    pad = size
    while True:
        payload = F.encode_varint(4) + b"size" + msgspec.msgpack.encode([b"x" * pad])
        msg = F.encode_frame(F.REQUEST, 0, cid, payload)
        if len(msg) == size:
            return msg
        pad -= len(msg) - size


def test_a_message_of_exactly_max_message_size_is_taken_one_byte_more_is_not() -> None:
    """max_message_size is the largest message taken, exactly (websockets' max_size is
    it, with no room added): a call whose message is that long is answered; one a
    byte longer closes the connection with 1009 and a reason with both figures."""

    router = fastrpc.Router()

    @router.method
    def size(data: bytes) -> int:
        return len(data)

    async def main() -> None:
        opts = {**QUIET, "max_message_size": LIMIT, "max_frame_size": LIMIT}
        async with fastrpc.serve(router, "127.0.0.1", 0, **opts) as server:
            async with raw_client(server.url) as raw:
                await raw.send(_request_of(LIMIT, 1))
                frames = await raw.recv_frames(2)
                answers = [f for f in frames if f.type == F.RESPONSE and f.id == 1]
                assert len(answers) == 1, frames
                assert LIMIT - 64 < msgspec.msgpack.decode(answers[0].payload) < LIMIT
                await raw.send(_request_of(LIMIT + 1, 3))
                code, reason = await raw.drain(2)
                assert (code, reason) == (1009, _reason(f"message of {LIMIT + 1} bytes"))

    run(main(), timeout=5)
