"""The keepalive deadlines of a loop's connections share one heap (fastrpc.keepalive).

A closed connection cancels its deadlines; they must not pile up in the heap while
connections come and go faster than the ping interval (a client that connects and
disconnects in a loop would otherwise make the server hold ~200 bytes per connection
for up to ``ping_interval``), and the live ones must still fire, once each, in order.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from _util import run

import fastrpc
from fastrpc import keepalive


def _bound(live: int) -> int:
    """What the heap may hold with ``live`` deadlines armed."""
    return max(keepalive._COMPACT_MIN, 2 * live) + 1


@pytest.mark.timeout(30)
def test_cancelled_deadlines_do_not_pile_up() -> None:
    async def main() -> None:
        timers = keepalive._Timers(asyncio.get_running_loop())
        live = [timers.add(60.0, lambda: None) for _ in range(100)]
        for _ in range(20_000):  # connections opened and closed, each with its deadline
            timers.add(60.0, lambda: None).cancel()
            assert len(timers.heap) <= _bound(len(live))
        for t in live[:90]:
            t.cancel()
        for _ in range(1_000):
            timers.add(60.0, lambda: None).cancel()
        assert len(timers.heap) <= _bound(10)
        assert sum(entry[2].fn is not None for entry in timers.heap) == 10

    run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("seed", range(5))
def test_live_deadlines_fire_once_in_order_through_rebuilds(seed: int) -> None:
    rnd = random.Random(seed)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = keepalive._Timers(loop)
        fired: list[int] = []
        due: dict[int, float] = {}
        kept: set[int] = set()
        for i in range(600):
            delay = rnd.uniform(0.0, 0.05)
            due[i] = loop.time() + delay
            t = timers.add(delay, lambda i=i: fired.append(i))
            if rnd.random() < 0.6:
                t.cancel()  # most go before they are due: several rebuilds on the way
            else:
                kept.add(i)
        await asyncio.sleep(0.2)
        assert sorted(fired) == sorted(kept)  # each live one once, no cancelled one
        assert all(due[a] <= due[b] + 1e-3 for a, b in zip(fired, fired[1:])), fired  # by deadline
        assert timers.heap == []

    run(main())


@pytest.mark.timeout(60)
def test_connections_that_come_and_go_leave_few_deadlines() -> None:
    # Real connections over loopback, client and server on this loop: each has its
    # WebSocket ping deadline (ping_interval 20 s) and cancels it on close.
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, keepalive_interval=None) as server:
            for _ in range(150):
                async with fastrpc.connect(server.url, keepalive_interval=None) as peer:
                    await peer.ping()
            await asyncio.sleep(0.05)
            heap = keepalive._loop_timers[asyncio.get_running_loop()].heap
            live = sum(entry[2].fn is not None for entry in heap)
            assert live <= 2, live
            assert len(heap) <= _bound(live), len(heap)

    run(main())
