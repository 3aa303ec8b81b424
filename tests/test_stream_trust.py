"""The stream side against a peer it does not trust, over real loopback connections: a
call's stream closed or broken by the peer ends the call on both sides, and waits a
user cancels (a timeout) or arguments out of range leave nothing behind."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _util import QUIET, assert_idle, frames_server, pair, raw_client, run, until
from websockets.asyncio.server import serve

import fastrpc
from fastrpc import compression as C
from fastrpc import frames as F
from fastrpc.protocol import Settings


async def _idle() -> AsyncIterator[Any]:
    """A source that never yields (until its sender is cancelled)."""
    await asyncio.Event().wait()
    yield 0


async def _agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@pytest.mark.parametrize("kind", ["stream", "channel"])
def test_a_bad_compressed_item_in_a_calls_results_cancels_the_call(kind: str) -> None:
    # A server that answers a streaming call with a compressed item that inflates past
    # the client's max_item_size: that stream fails (ProtocolError) and the call is
    # cancelled (CANCEL, as the reader closing it does; a channel's input stops too).
    # With STREAM_CLOSE instead, a fastrpc server stops its handler without ending the
    # call, and the call's slot stayed taken on the client for good.
    bomb = zlib.compress(bytes(2 << 20), 9)
    seen: list[int] = []

    async def on_frame(ws: Any, f: F.Frame) -> None:  # a server of hand-built frames
        seen.append(f.type)
        if f.type == F.REQUEST:
            await ws.send(F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN | F.FLAG_COMPRESSED, f.id, bomb))
        elif f.type == F.CANCEL:  # as a fastrpc server ends a cancelled call
            await ws.send(F.encode_frame(F.STREAM_ABORT, 0, f.id, b"call cancelled"))

    async def main() -> None:
        async with serve(frames_server(Settings(compression=C.ZLIB), on_frame), "127.0.0.1", 0) as srv:
            url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
            async with fastrpc.connect(url, compression="zlib", max_item_size=1 << 20, **QUIET) as peer:
                stream = peer.stream("m") if kind == "stream" else peer.channel("m", _idle())
                with pytest.raises(fastrpc.ProtocolError, match="inflates past max_item_size"):
                    async for _ in stream:
                        pass
                await until(lambda: not peer.core.pending_calls, 2, "the call's slot back")
                assert F.CANCEL in seen and F.STREAM_CLOSE not in seen, seen
                await assert_idle(peer)  # no sender left either (the channel's input)

    run(main(), 10)


def test_stream_close_on_a_calls_results_stops_its_handler() -> None:
    # STREAM_CLOSE (a receiver that stopped reading), not CANCEL, on the results of a
    # streaming call whose handler waits for credit: the handler stops (its generator
    # closed, the call's slot freed), as a send_stream sender does. It waited for credit
    # for ever, holding the call.
    router = fastrpc.Router()
    ended: list[bool] = []

    @router.method
    async def big() -> AsyncIterator[bytes]:
        try:
            while True:
                yield bytes(64 << 10)
        finally:
            ended.append(True)

    async def main() -> None:
        async with fastrpc.serve(router, "127.0.0.1", 0, **QUIET) as server:
            async with raw_client(server.url) as raw:
                raw.core.send_request("big", raw.core_payload(()), stream=True)
                await raw.send(raw.core.next_message())
                sp = await until(lambda: next(iter(server.peers), None), 2, "the server's peer")
                # The window (256 KiB) used up, its sender waits for credit (none is sent).
                await until(lambda: 1 in sp.streams._writable, 2, "the handler waiting for credit")
                await raw.send(F.encode_frame(F.STREAM_CLOSE, 0, 1, b""))
                await until(lambda: ended and not sp.core.running_calls, 2, "the handler's end")
                await assert_idle(sp)

    run(main(), 10)


def test_a_priority_out_of_range_is_refused_before_anything_is_sent() -> None:
    # A channel's priority was checked only once its call was sent: the call then hung
    # (no input sender). A float passed the range check and failed in the scheduler,
    # inside the sender, after the stream took a slot.
    async def main() -> None:
        router = fastrpc.Router()

        @router.method
        async def echo(items: Any) -> AsyncIterator[Any]:
            async for x in items:
                yield x

        async with pair(router) as (_, peer):
            with pytest.raises(ValueError, match="urgency"):
                peer.channel("echo", _agen(1), priority=8)
            with pytest.raises(ValueError, match="urgency"):
                await peer.send_stream(_agen(1), priority=2.5)  # type: ignore[arg-type]
            assert peer.core.pending_calls == 0
            assert [x async for x in peer.channel("echo", _agen(3), priority=7)] == [0, 1, 2]

    run(main(), 10)


def test_cancelled_waits_for_a_stream_slot_or_a_stream_leave_nothing_behind() -> None:
    # send_stream waiting for a stream slot (the peer's max_streams reached) and
    # accept_stream waiting for a stream, each under a timeout: every wait given up
    # left its future behind until a slot or a stream came, however many.
    async def main() -> None:
        async with pair(fastrpc.Router(), server_opts={"max_streams": 1}, check_idle=False) as (_, peer):
            await peer.send_stream(_idle())  # the one slot, kept
            for _ in range(20):
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.001):
                        await peer.send_stream(_idle())
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.001):
                        await peer.accept_stream()
            assert (peer.streams._slot_waiters, peer.streams._accepting) == ([], [])

    run(main(), 10)
