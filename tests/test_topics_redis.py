"""Topics shared between servers through a real redis-server (RedisBroker): live
fan-out across servers, recovery from the Redis Stream on another server, holes in
the pub/sub feed filled from history, a Redis restart (new epoch) reported as
HistoryLost. Several servers in one process stand for the workers here;
test_workers.py runs real worker processes behind nginx."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from _services import Redis
from _util import QUIET, run
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import fastrpc
from fastrpc.redis_broker import RedisBroker
from fastrpc.topics import Item

pytestmark = pytest.mark.external


def serve(redis: Redis, **kw: Any) -> fastrpc.Server:
    broker = RedisBroker(redis.url, prefix="t", history_size=kw.pop("history_size", 1000), timeout=2.0)
    return fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET, **kw)


async def take(sub: fastrpc.Subscription, n: int) -> list[Item]:
    out: list[Item] = []
    async for ev in sub:
        assert isinstance(ev, Item)
        out.append(ev)
        if len(out) == n:
            break
    return out


def test_publish_on_a_subscribers_on_b_and_c(redis: Redis) -> None:
    async def main() -> None:
        async with serve(redis) as a, serve(redis) as b, serve(redis) as c:
            cb = await fastrpc.connect(b.url, **QUIET)
            cc = await fastrpc.connect(c.url, **QUIET)
            sb = await cb.subscribe("feed").start()
            sc = await cc.subscribe("feed").start()
            for i in range(100):
                await a.publish("feed", {"i": i})
            for sub in (sb, sc):
                got = await asyncio.wait_for(take(sub, 100), 5)
                assert [e.value["i"] for e in got] == list(range(100))
                assert [e.offset for e in got] == list(range(1, 101))
            await cb.close()
            await cc.close()

    run(main())


def test_resume_on_another_server_from_the_redis_stream(redis: Redis) -> None:
    async def main() -> None:
        async with serve(redis) as a, serve(redis) as b, serve(redis) as c:
            async with fastrpc.connect(b.url, **QUIET) as cb:
                sub = await cb.subscribe("feed").start()
                for i in range(10):
                    await a.publish("feed", i)
                first = await take(sub, 6)
            position = sub.position
            assert position is not None and position[1] == 6
            for i in range(10, 20):
                await a.publish("feed", i)
            async with fastrpc.connect(c.url, **QUIET) as cc:
                again = cc.subscribe("feed", since=position)
                rest = await asyncio.wait_for(take(again, 14), 5)
                assert again.recovered
                assert [e.value for e in first + rest] == list(range(20))
                assert [e.offset for e in first + rest] == list(range(1, 21))
                epoch = position[0]
                with pytest.raises(fastrpc.HistoryLost):
                    await cc.subscribe("feed", since=("not-" + epoch, 3)).__anext__()

    run(main())


def test_history_window_size_in_redis(redis: Redis) -> None:
    async def main() -> None:
        async with serve(redis, history_size=5) as a:
            async with fastrpc.connect(a.url, **QUIET) as c:
                for i in range(20):
                    epoch, _ = await a.publish("w", i)
                with pytest.raises(fastrpc.HistoryLost) as info:
                    await c.subscribe("w", since=(epoch, 10)).__anext__()
                assert info.value.first_available == 16
                sub = c.subscribe("w", since=(epoch, 15))
                assert [e.offset for e in await take(sub, 5)] == [16, 17, 18, 19, 20]
                await sub.aclose()

    run(main())


def test_a_hole_in_the_live_feed_is_filled_from_history(redis: Redis) -> None:
    async def main() -> None:
        async with serve(redis) as a, serve(redis) as b:
            async with fastrpc.connect(b.url, **QUIET) as cb:
                sub = await cb.subscribe("feed").start()
                await a.publish("feed", 0)
                assert [e.value for e in await take(sub, 1)] == [0]
                # Drop every pub/sub link: items published meanwhile reach no worker.
                admin = aioredis.Redis.from_url(redis.url)
                await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                for i in range(1, 6):
                    await a.publish("feed", i)
                broker = b.topics.broker
                assert isinstance(broker, RedisBroker)
                await asyncio.sleep(0.05)
                await asyncio.wait_for(broker.listening.wait(), 5)
                await a.publish("feed", 6)  # its offset shows the hole; history fills it
                got = await asyncio.wait_for(take(sub, 6), 5)
                assert [e.value for e in got] == [1, 2, 3, 4, 5, 6]
                await admin.aclose()

    run(main())


def test_redis_restart_changes_the_epoch_history_lost(redis: Redis) -> None:
    async def main() -> None:
        async with serve(redis) as a, serve(redis) as b:
            async with fastrpc.connect(b.url, **QUIET) as cb:
                sub = await cb.subscribe("feed").start()
                for i in range(5):
                    await a.publish("feed", i)
                got = await take(sub, 5)
                old = sub.position
                redis.stop()
                with pytest.raises((RedisConnectionError, RedisTimeoutError)):
                    await a.publish("feed", "during the outage")
                redis.start()
                # B's pub/sub link comes back and finds the topic's new epoch.
                with pytest.raises(fastrpc.HistoryLost) as info:
                    await asyncio.wait_for(sub.__anext__(), 10)
                new_epoch, offset = await a.publish("feed", "after")
                assert offset == 1 and old is not None and new_epoch != old[0]
                assert info.value.epoch == new_epoch and info.value.first_available == 1, info.value
                assert [e.value for e in got] == list(range(5))
                again = cb.subscribe("feed", since=(new_epoch, 0))
                assert [e.value for e in await take(again, 1)] == ["after"]
                await again.aclose()

    run(main(), 30)


def test_subscribing_creates_no_keys(redis: Redis) -> None:
    async def main() -> None:
        async with serve(redis) as a:
            async with fastrpc.connect(a.url, **QUIET) as c:
                subs = [await c.subscribe(f"nothing-{i}").start() for i in range(30)]
                for sub in subs:
                    await sub.aclose()
                admin = aioredis.Redis.from_url(redis.url)
                assert await admin.keys("t:*") == [b"t:epoch"]  # one key, whatever the names
                await admin.aclose()

    run(main())
