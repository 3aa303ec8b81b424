"""The keepalive deadlines of a loop's connections share one heap (fastrpc.keepalive).

A closed connection cancels its deadlines; they must not pile up in the heap while
connections come and go faster than the ping interval (a client that connects and
disconnects in a loop would otherwise make the server hold ~200 bytes per connection
for up to ``ping_interval``), and the live ones must still fire, once each, in order.
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from _proxy import Proxy
from _util import QUIET, run, until

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


@pytest.mark.timeout(30)
def test_a_deadline_added_while_firing_does_not_delay_earlier_ones() -> None:
    # A callback (a PING) adds a later deadline (its expiry) and arms the loop's timer
    # for it; an earlier deadline already in the heap must still fire on time.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = keepalive._Timers(loop)
        start = loop.time()
        fired: dict[str, float] = {}
        timers.add(0.05, lambda: (fired.setdefault("a", loop.time()), timers.add(5.0, lambda: None)))
        timers.add(0.3, lambda: fired.setdefault("b", loop.time()))
        await until(lambda: "b" in fired, 3.0, "the earlier deadline")
        assert fired["b"] - start < 1.0, fired
        for entry in timers.heap:
            entry[2].cancel()

    run(main())


@pytest.mark.timeout(30)
def test_a_raising_callback_does_not_stop_the_shared_timer(caplog: pytest.LogCaptureFixture) -> None:
    # One connection's callback raising must not leave every other connection's
    # deadlines unarmed; the failure is logged.
    async def main() -> None:
        timers = keepalive._Timers(asyncio.get_running_loop())
        fired: list[str] = []

        def boom() -> None:
            raise RuntimeError("boom")

        timers.add(0.01, boom)
        timers.add(0.01, lambda: fired.append("same turn"))
        timers.add(0.1, lambda: fired.append("later"))
        await until(lambda: len(fired) == 2, 3.0, "the other deadlines")
        assert fired == ["same turn", "later"]
        assert timers.heap == [] and timers.handle is None

    with caplog.at_level(logging.ERROR, logger="fastrpc.keepalive"):
        run(main())
    assert any("keepalive callback" in r.getMessage() and r.exc_info for r in caplog.records), caplog.records


@pytest.mark.timeout(60)
def test_a_short_keepalive_is_not_delayed_by_another_connections_long_timeout() -> None:
    # Two clients on one loop, both links silent: A's PING (interval 0.2 s) adds its
    # expiry 5 s later; B (interval 1 s, timeout 1 s) must still be declared dead
    # after about 2 s, not once A's expiry comes up.
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, **QUIET) as server:
            pa = await Proxy(server.port).start()
            pb = await Proxy(server.port).start()
            try:
                a = await fastrpc.connect(pa.url, keepalive_interval=0.2, keepalive_timeout=5.0, ws_ping_interval=None)
                b = await fastrpc.connect(pb.url, keepalive_interval=1.0, keepalive_timeout=1.0, ws_ping_interval=None)
                loop = asyncio.get_running_loop()
                start = loop.time()
                pa.stall()
                pb.stall()
                await asyncio.wait_for(b.wait_closed(), 10)
                took = loop.time() - start
                assert took < 3.5, f"declared dead after {took:.2f} s (expected ~2 s)"
                assert "keepalive" in str(b.close_exception), b.close_exception
                pa.unstall()
                await a.close()
            finally:
                await pa.close()
                await pb.close()

    run(main(), timeout=30)
