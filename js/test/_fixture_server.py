"""A fastrpc server for js/test/regressions.test.mjs (limits the shared
tests/_js_server.py does not set, streams that arrive late, a close right after a
stream's items (a few, or more than a message holds), compressed items that do not
inflate):
``python _fixture_server.py [--no-resume] [--max-pending N] [--max-item-size N] [--max-frame-size N] [--max-streams N]
[--stream-buffer-size N]``.

Prints ``port N`` once listening on 127.0.0.1; runs until killed."""

from __future__ import annotations

import argparse
import asyncio
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fastrpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import _js_server as shared

router = fastrpc.Router()
STATE: dict[str, Any] = {"produced": 0, "closed": 0, "sleeps": 0}
TASKS: set[asyncio.Task[None]] = set()


@router.method
def add(a: int, b: int) -> int:
    return a + b


@router.method
def state() -> dict[str, Any]:
    return dict(STATE)


@router.method
def reset() -> None:
    STATE.update(produced=0, closed=0, sleeps=0)


@router.method
async def sleep(seconds: float) -> str:
    STATE["sleeps"] += 1
    await asyncio.sleep(seconds)
    return "slept"


@router.method
async def produce(n: int) -> AsyncIterator[int]:
    for i in range(n):
        STATE["produced"] = i + 1
        yield i


@router.method
async def count(n: int, delay: float) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(delay)
        yield i


@router.method
async def push_later(delay: float, n: int) -> int:
    """Announce a stream id now; open the stream (``n`` integers) after ``delay`` s.
    ``STATE["closed"]`` counts the streams the client closed."""
    peer = fastrpc.current_peer()
    sid = peer.new_stream_id()

    async def items() -> AsyncIterator[int]:
        try:
            for i in range(n):
                STATE["produced"] = i + 1
                yield i
        except (asyncio.CancelledError, GeneratorExit):
            STATE["closed"] += 1
            raise

    async def later() -> None:
        await asyncio.sleep(delay)
        await peer.send_stream(items(), sid)

    task = asyncio.get_running_loop().create_task(later())
    TASKS.add(task)
    task.add_done_callback(TASKS.discard)
    return sid


@router.method
async def farewell(n: int) -> AsyncIterator[int]:
    """``n`` integers, then the server closes the connection (1001) in the same loop
    pass: the items not yet sent leave after its GOAWAY, in the same message."""
    for i in range(n):
        yield i
    await fastrpc.current_peer().close(1001, "going away")


@router.method
async def farewell_bulk(n: int, size: int) -> AsyncIterator[bytes]:
    """``n`` items of ``size`` bytes (item ``i``: its index in 4 big-endian bytes, then
    ``i % 256`` repeated), then the server closes the connection (1001) in the same loop
    pass: with more than a message's worth queued, the items leave after its GOAWAY in
    that message and in the messages after it, before the close frame."""
    for i in range(n):
        yield i.to_bytes(4, "big") + bytes([i % 256]) * (size - 4)
    await fastrpc.current_peer().close(1001, "going away")


SPOILED = b"\xff" * 2000  # an item the compressor of spoiled() spoils


class _Spoiler:
    """A connection's compressor, but for SPOILED: that item leaves with its COMPRESSED
    flag and ``bad`` for its payload."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.algorithm = inner.algorithm
        self.bad = b""

    def compress(self, data: Any) -> bytes:
        if bytes(data) == SPOILED:
            return self.bad
        return self.inner.compress(data)  # type: ignore[no-any-return]


@router.method
async def spoiled(inflates_to: int = 0) -> AsyncIterator[Any]:
    """(A client that asked for compression) 0, then an item whose compressed payload
    is corrupt (``inflates_to`` 0) or inflates to ``inflates_to`` zero bytes, then 1
    and 2; ``STATE["closed"]`` counts the times the client stopped the stream."""
    outbound = fastrpc.current_peer().core._outbound
    if outbound.compressor is None:
        raise ValueError("no compression on this connection")
    if not isinstance(outbound.compressor, _Spoiler):
        outbound.compressor = _Spoiler(outbound.compressor)
    outbound.compressor.bad = zlib.compress(bytes(inflates_to), 9) if inflates_to else b"not a compressed payload"
    try:
        yield 0
        yield SPOILED
        for i in (1, 2):
            await asyncio.sleep(0.05)
            yield i
    except (asyncio.CancelledError, GeneratorExit, fastrpc.StreamClosed):
        STATE["closed"] += 1
        raise


@router.method
async def lengths(items: fastrpc.ReceiveStream[Any]) -> AsyncIterator[int]:
    """A channel: the length of each item it reads."""
    async for x in items:
        yield len(x)


# The shared server's own (tests/_js_server.py), on this router too.
router.method(shared.push)
router.method(shared.total)


async def main(a: argparse.Namespace) -> None:
    limits: dict[str, Any] = {"max_pending_calls": a.max_pending, "max_streams": a.max_streams}
    if a.max_item_size is not None:
        limits["max_item_size"] = a.max_item_size
    if a.max_frame_size is not None:
        limits["max_frame_size"] = a.max_frame_size
    if a.stream_buffer_size is not None:
        limits["streams"] = fastrpc.StreamManager(stream_buffer_size=a.stream_buffer_size)
    # zlib is offered: clients that do not ask for compression get none
    async with fastrpc.serve(
        router, "127.0.0.1", 0, resume=not a.no_resume, session_grace=30, compression="zlib", **limits
    ) as server:
        print(f"port {server.port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--max-pending", type=int, default=1024)
    ap.add_argument("--max-streams", type=int, default=1024)
    ap.add_argument("--max-item-size", type=int, default=None)
    ap.add_argument("--max-frame-size", type=int, default=None)
    ap.add_argument("--stream-buffer-size", type=int, default=None)
    fastrpc.run(main(ap.parse_args()))
