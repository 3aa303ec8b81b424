"""Running past one process, when a piece of it fails: a supervisor that dies under
its workers, a Redis that comes back from an older snapshot. Real processes on
127.0.0.1 (python -m fastrpc.workers, redis-server), stopped by pid."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from _services import Redis, Workers, free_port, wait_port
from _util import QUIET, run

import fastrpc
from fastrpc.redis_broker import RedisBroker
from fastrpc.topics import Item

pytestmark = pytest.mark.external


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def test_workers_of_a_supervisor_killed_with_sigkill_do_not_live_on() -> None:
    # The supervisor killed without a chance to drain (SIGKILL, the OOM killer): its
    # workers went on serving the port for good, orphans that nothing would restart
    # or stop, holding the port against the next supervisor.
    port = free_port()
    w = Workers(2, port, None)
    pids: set[int] = set()
    try:
        wait_port(port, 20)

        async def whoami() -> int:
            async with fastrpc.connect(f"ws://127.0.0.1:{port}", **QUIET) as c:
                pid: int = await c.call("whoami")
                return pid

        for _ in range(40):  # find the workers' pids (the kernel spreads connections)
            pids.add(run(whoami(), 10))
            if len(pids) == 2:
                break
        assert pids
        w.proc.kill()
        w.proc.wait(5)
        deadline = time.monotonic() + 20  # their drain: grace 3 s, nothing in flight
        while time.monotonic() < deadline and (any(_alive(p) for p in pids) or _listening(port)):
            time.sleep(0.1)
        assert not [p for p in pids if _alive(p)], "workers outlived their supervisor"
        assert not _listening(port)
    finally:
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        w.close()


def _serve(redis: Redis) -> fastrpc.Server:
    broker = RedisBroker(redis.url, prefix="t", timeout=2.0)
    return fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET)


async def _publish(server: fastrpc.Server, topic: str, value: object) -> tuple[str, int]:
    """Publish, retrying while the server's pooled Redis connections find out that
    Redis restarted (bounded: 50 tries)."""
    for _ in range(50):
        try:
            return await server.publish(topic, value)
        except Exception:  # redis ConnectionError / TimeoutError
            await asyncio.sleep(0.1)
    return await server.publish(topic, value)


def test_a_redis_back_from_an_older_snapshot_is_never_a_silent_gap(redis: Redis) -> None:
    # Redis with persistence that crashed comes back from its last snapshot (RDB, or
    # AOF everysec's last second; a replica that lagged, failed over): the epoch key
    # is there, but the topic's offset counter went back. The next publishes reuse
    # offsets the subscribers saw already: they were dropped as duplicates, and the
    # subscriber went on at the first offset past the old ones, with a hole nobody
    # reported.
    async def main() -> None:
        async with _serve(redis) as a, _serve(redis) as b:
            async with fastrpc.connect(b.url, **QUIET) as cb:
                sub = await cb.subscribe("feed").start()
                for i in range(3):
                    await a.publish("feed", i)
                admin = aioredis.Redis.from_url(redis.url)
                await admin.execute_command("SAVE")  # the snapshot: offset 3
                await admin.aclose()
                for i in range(3, 6):
                    await a.publish("feed", i)
                got = await asyncio.wait_for(_take(sub, 6), 10)
                assert [e.offset for e in got] == [1, 2, 3, 4, 5, 6]
                assert redis.proc is not None
                redis.proc.kill()  # a crash: back from the snapshot
                redis.proc.wait(5)
                redis.proc = None
                redis.start()
                broker = b.topics.broker
                assert isinstance(broker, RedisBroker)
                await asyncio.sleep(0.2)
                await asyncio.wait_for(broker.listening.wait(), 10)
                published = [await _publish(a, "feed", f"new {i}") for i in range(4)]
                assert [o for _, o in published] == [4, 5, 6, 7]  # offsets 4..6 again
                try:
                    ev = await asyncio.wait_for(sub.__anext__(), 10)
                except fastrpc.HistoryLost:
                    return  # reported: the subscriber knows to start over
                # Otherwise it must get the new items, not jump to offset 7.
                assert isinstance(ev, Item) and ev.value == "new 0", ev

    run(main(), 60)


async def _take(sub: fastrpc.Subscription, n: int) -> list[Item]:
    out: list[Item] = []
    async for ev in sub:
        assert isinstance(ev, Item)
        out.append(ev)
        if len(out) == n:
            break
    return out


def test_a_worker_that_keeps_dying_is_retried_at_least_every_30_seconds() -> None:
    # Each death within a second doubles the delay before the next start: without a cap,
    # a port taken for ten minutes (distinct ports) put the next try ten minutes away.
    from fastrpc import options as O
    from fastrpc.workers import restart_delay

    delay = O.WORKER_RESTART_DELAY
    seen = []
    for _ in range(40):  # 40 deaths in a row, each at once
        delay = restart_delay(delay, 0.01)
        seen.append(delay)
    assert seen[:3] == [2 * O.WORKER_RESTART_DELAY, 4 * O.WORKER_RESTART_DELAY, 8 * O.WORKER_RESTART_DELAY]
    assert max(seen) == O.WORKER_RESTART_MAX_DELAY == seen[-1]
    assert restart_delay(delay, 5.0) == O.WORKER_RESTART_DELAY  # it lived: back to the first delay
