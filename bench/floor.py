#!/usr/bin/env python
"""The floor of an item API in CPython on this machine: what one item costs the
Python that hands it over, before any framing, flow control or I/O.

    python bench/floor.py [--items N]

fastrpc's streams are async iterators on both sides: the server's source is an async
generator, the client reads with ``async for``. picows (and raw websockets' callback
style) hands each message to a plain callback. This measures, in one process and on
the running loop (uvloop where installed), the CPU time per item of

* an async generator drained by ``async for`` (a streaming handler's side);
* a class whose ``async def __anext__`` pops a deque, drained by ``async for``
  (a ReceiveStream's shape);
* a plain callback per item (picows' ``on_ws_frame``),

and prints what they allow: a sender and a receiver on two CPUs move at most
``1 / max(cost of each side)`` items a second through these steps alone. The
``small`` row of ``compare.py`` asks 4x picows: compare that rate with these.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

ITEM = b"x" * 16


async def _source(n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield ITEM


class _Queue:
    """An async iterator over a deque (the shape of a stream that holds its items)."""

    def __init__(self, items: deque[bytes]) -> None:
        self.items = items

    def __aiter__(self) -> _Queue:
        return self

    async def __anext__(self) -> bytes:
        try:
            return self.items.popleft()
        except IndexError:
            raise StopAsyncIteration from None


async def measure(n: int) -> dict[str, float]:
    """CPU microseconds per item of each way of handing items over (best of 3)."""
    out: dict[str, float] = {}

    async def generator() -> None:
        got = 0
        async for item in _source(n):
            got += len(item)

    async def iterator() -> None:
        got = 0
        async for item in _Queue(deque([ITEM] * n)):
            got += len(item)

    async def callback() -> None:
        got = 0

        def on_item(item: bytes) -> None:
            nonlocal got
            got += len(item)

        for item in [ITEM] * n:
            on_item(item)

    for name, fn in (("async generator", generator), ("async iterator", iterator), ("callback", callback)):
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            await fn()
            best = min(best, time.process_time() - t)
        out[name] = best / n * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    args = ap.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    costs = run(measure(args.items))
    for name, us in costs.items():
        print(f"{name:16} {us:6.3f} us/item  (at most {1 / us:5.1f} M items/s on one CPU)")
    side = max(costs["async generator"], costs["async iterator"])
    print(
        f"async iteration on both sides, two CPUs: at most {1 / side:.1f} M items/s before any work per item; "
        f"callbacks: {1 / costs['callback']:.1f} M"
    )


if __name__ == "__main__":
    main()
