"""Topics shared between servers through a real redis-server (RedisBroker): live
fan-out across servers, recovery from the Redis Stream on another server, holes in
the pub/sub feed filled from history, a Redis restart (new epoch) reported as
HistoryLost. Several servers in one process stand for the workers here;
test_workers.py runs real worker processes behind nginx."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest
import redis.asyncio as aioredis
from _services import Redis, free_port
from _util import QUIET, run, until
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import fastrpc
from fastrpc import options as O
from fastrpc.redis_broker import RedisBroker
from fastrpc.topics import Item, TopicHub

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


def lost_links(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "fastrpc.redis_broker" and "link lost" in r.getMessage()
    ]


def test_the_listener_outlives_foreign_messages_and_failing_deliveries(
    redis: Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another program's PUBLISH on the pattern, and an item the hub fails to take,
    # are logged and dropped: the process goes on delivering every topic.
    caplog.set_level(logging.WARNING, "fastrpc.redis_broker")
    deliver = TopicHub.deliver

    def failing(self: TopicHub, topic: str, *args: Any) -> None:
        if topic == "bad":
            raise RuntimeError("the hub failed")
        deliver(self, topic, *args)

    monkeypatch.setattr(TopicHub, "deliver", failing)

    async def main() -> None:
        async with serve(redis) as a:
            broker = a.topics.broker
            assert isinstance(broker, RedisBroker) and broker._listener is not None
            async with fastrpc.connect(a.url, **QUIET) as c:
                sub = await c.subscribe("feed").start()
                admin = aioredis.Redis.from_url(redis.url)
                for junk in (b"hello", b"x:y:z", b"e:1:\xc1", "\u00e9:1:\x01".encode("latin-1")):
                    assert await admin.publish("t:c:feed", junk) == 1
                await admin.publish(b"t:c:\xff", b"e:1:\x01")
                await admin.aclose()
                await a.publish("bad", 1)
                await a.publish("feed", "after")
                got = await asyncio.wait_for(take(sub, 1), 5)
                assert [e.value for e in got] == ["after"] and got[0].offset == 1
                assert not broker._listener.done()
                assert not lost_links(caplog)
                warned = [r.getMessage() for r in caplog.records if r.name == "fastrpc.redis_broker"]
                assert sum("not a fastrpc item" in m for m in warned) == 5, warned
                assert any("topic 'bad' failed" in m for m in warned), warned

    run(main())


def test_an_unexpected_error_in_the_listener_reconnects(redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fastrpc.redis_broker")

    async def main() -> None:
        async with serve(redis) as a, serve(redis) as b:
            broker = b.topics.broker
            assert isinstance(broker, RedisBroker)
            async with fastrpc.connect(b.url, **QUIET) as cb:
                sub = await cb.subscribe("feed").start()
                await a.publish("feed", 0)
                assert [e.value for e in await asyncio.wait_for(take(sub, 1), 5)] == [0]
                on_message = broker._on_message

                def broken(channel: bytes, data: bytes) -> None:
                    del broker._on_message  # once: the class's from now on
                    raise RuntimeError("a bug in the listener")

                broker._on_message = broken  # type: ignore[method-assign]
                await a.publish("feed", 1)  # lost with the link: the history has it
                await until(lambda: broker._on_message == on_message)
                await asyncio.wait_for(broker.listening.wait(), 5)
                await a.publish("feed", 2)
                got = await asyncio.wait_for(take(sub, 2), 5)
                assert [e.value for e in got] == [1, 2]
                assert broker._listener is not None and not broker._listener.done()
                assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)

    run(main())


def test_a_burst_of_subscriptions_waits_its_turn_for_the_pool(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # 80 subscriptions at once, each reading a large history (~1 MB) over one
    # connection whose pool waits 0.2 s at most, and the hub retrying for 0.3 s: they
    # queue for it as long as it takes, none fails.
    monkeypatch.setattr(O, "BROKER_TIMEOUT", 0.3)

    async def main() -> None:
        async with serve(redis) as a:
            broker = RedisBroker(redis.url, prefix="t", max_connections=1, timeout=0.2)
            async with fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET) as b:
                for i in range(300):
                    epoch, _ = await a.publish("feed", {"i": i, "blob": os.urandom(2048).hex()})
                async with fastrpc.connect(b.url, **QUIET) as c:

                    async def first(sub: fastrpc.Subscription) -> int:
                        try:
                            ev = await sub.__anext__()
                            assert isinstance(ev, Item)
                            return ev.offset
                        finally:
                            await sub.aclose()

                    subs = [c.subscribe("feed", since=(epoch, 0)) for _ in range(80)]
                    assert await asyncio.wait_for(asyncio.gather(*(first(s) for s in subs)), 20) == [1] * 80

    run(main(), 30)


class Money:
    def __init__(self, amount: int, currency: str) -> None:
        self.amount, self.currency = amount, currency


def money_hook(obj: Any) -> Any:
    if isinstance(obj, Money):
        return f"{obj.amount} {obj.currency}"
    raise NotImplementedError


def test_items_of_custom_types_publish_through_redis_with_an_enc_hook(redis: Redis) -> None:
    async def main() -> None:
        # The broker's own hook, or the one its hub hands it (the server's enc_hook).
        broker = RedisBroker(redis.url, prefix="t", timeout=2.0, enc_hook=money_hook)
        async with fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET) as s:
            async with fastrpc.connect(s.url, **QUIET) as c:
                sub = await c.subscribe("px").start()
                await s.publish("px", Money(5, "EUR"))
                assert [e.value for e in await asyncio.wait_for(take(sub, 1), 5)] == ["5 EUR"]
        hub = TopicHub(RedisBroker(redis.url, prefix="t", timeout=2.0), enc_hook=money_hook)
        assert getattr(hub.broker, "enc_hook", None) is money_hook
        await hub.start()
        try:
            _, offset = await hub.publish("px", Money(7, "CHF"))
            h = await hub.broker.history("px", offset - 1)
            assert h.items == [(offset, "7 CHF")]
        finally:
            await hub.close()
        unhooked = RedisBroker(redis.url, prefix="t", timeout=2.0)
        with pytest.raises(NotImplementedError, match="cannot encode objects of type Money"):
            await unhooked.publish("px", Money(1, "USD"))
        await unhooked.close()

    run(main())


def test_serves_enc_hook_reaches_the_redis_broker(redis: Redis) -> None:
    async def main() -> None:
        async with serve(redis, enc_hook=money_hook) as s:
            async with fastrpc.connect(s.url, **QUIET) as c:
                sub = await c.subscribe("px").start()
                await s.publish("px", Money(5, "EUR"))
                assert [e.value for e in await asyncio.wait_for(take(sub, 1), 5)] == ["5 EUR"]

    run(main())


def test_an_idle_pubsub_link_stays_up(redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    # redis-py 5.0 reads a pub/sub connection with socket_timeout when asked to wait
    # forever: an idle link was taken for a lost one every `timeout` seconds.
    caplog.set_level(logging.WARNING, "fastrpc.redis_broker")

    async def main() -> None:
        broker = RedisBroker(redis.url, prefix="t", timeout=0.3)
        async with fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET) as s:
            async with fastrpc.connect(s.url, **QUIET) as c:
                sub = await c.subscribe("feed").start()
                await s.publish("feed", 0)
                await asyncio.wait_for(take(sub, 1), 5)
                await asyncio.sleep(1.5)  # idle: 5 x timeout
                assert not lost_links(caplog), lost_links(caplog)
                await s.publish("feed", 1)
                assert [e.value for e in await asyncio.wait_for(take(sub, 1), 5)] == [1]

    run(main())


def test_a_silent_pubsub_link_is_found_by_its_ping(redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    # A link that carries nothing back (here: Redis pausing its clients) is
    # reconnected once a PING goes unanswered for `timeout` seconds.
    caplog.set_level(logging.WARNING, "fastrpc.redis_broker")

    async def main() -> None:
        broker = RedisBroker(redis.url, prefix="t", timeout=0.3)
        admin = aioredis.Redis.from_url(redis.url)
        try:
            async with fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET):
                await admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
                await until(lambda: lost_links(caplog), 3, "a lost link")
                assert "no answer to a PING" in lost_links(caplog)[0]
                await asyncio.sleep(1.5)
                await asyncio.wait_for(broker.listening.wait(), 5)
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
            await admin.aclose()

    run(main())


def test_a_failed_start_leaves_nothing_running() -> None:
    # Nothing listens on the port: start raises TimeoutError, and neither the
    # listener nor a connection outlives it (run() checks no task is left).
    async def main() -> None:
        broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", prefix="t", timeout=0.3)
        server = fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET)
        with pytest.raises(TimeoutError, match="no pub/sub link"):
            await server.start()
        assert broker._listener is None and not broker.listening.is_set()
        await server.close()

    run(main())


class SlowFirstReply(RedisBroker):
    """The first history reply processed late (as a pool may reorder replies), and
    the live message of offset 4 late (a backlogged pub/sub link)."""

    calls = 0

    async def history(self, topic: str, after: int | None) -> Any:
        h = await super().history(topic, after)
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.3)
        return h

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if data.split(b":", 2)[1] == b"4":
            asyncio.get_running_loop().call_later(0.15, super()._on_message, channel, data)
        else:
            super()._on_message(channel, data)


def test_a_subscription_whose_history_reply_comes_late_misses_nothing(redis: Redis) -> None:
    # A's history read runs before offset 4 is published, B's after, and B's reply is
    # processed first: the process starts the topic at 4, and A (which starts at 3)
    # still gets 4, from the history, before 5.
    async def main() -> None:
        broker = SlowFirstReply(redis.url, prefix="t", timeout=2.0)
        async with serve(redis) as pub, fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET) as srv:
            for i in range(3):
                await pub.publish("t", i)
            async with fastrpc.connect(srv.url, **QUIET) as ca, fastrpc.connect(srv.url, **QUIET) as cb:
                a = ca.subscribe("t")
                a_start = asyncio.ensure_future(a.start())
                await asyncio.sleep(0.05)
                await pub.publish("t", 3)  # offset 4, between the two reads
                b = await cb.subscribe("t").start()
                await asyncio.wait_for(a_start, 5)
                assert a.position is not None and a.position[1] == 3
                await pub.publish("t", 4)  # offset 5
                assert [e.offset for e in await asyncio.wait_for(take(a, 2), 5)] == [4, 5]
                assert [e.offset for e in await asyncio.wait_for(take(b, 1), 5)] == [5]

    run(main())


def test_block_holds_concurrent_local_publishers_back_under_redis(redis: Redis) -> None:
    # 40 publishers on the subscriber's own process, at once: each passes the
    # `block` check before the broker delivers any item back, so their items reach
    # the queue past twice its size. They are local: queued, not SlowSubscriber.
    async def main() -> None:
        async with serve(redis, topic_queue_size=4) as s:
            async with fastrpc.connect(s.url, **QUIET) as c:
                sub = await c.subscribe("t", policy="block").start()
                big = b"x" * 65536
                tasks = [asyncio.ensure_future(s.publish("t", [i, big])) for i in range(40)]
                await asyncio.sleep(0.5)  # the subscriber does not read
                got = await asyncio.wait_for(take(sub, 40), 10)
                assert sorted(e.value[0] for e in got) == list(range(40))
                assert [e.offset for e in got] == list(range(1, 41))
                await asyncio.wait_for(asyncio.gather(*tasks), 5)

    run(main(), 20)


def test_block_ends_a_subscription_past_twice_its_queue_on_remote_items(redis: Redis) -> None:
    # Publishers on another process cannot be held back: at twice the queue the
    # `block` subscription ends, as `disconnect` (what the local leniency keeps).
    async def main() -> None:
        async with serve(redis, topic_queue_size=4) as a, serve(redis, topic_queue_size=4) as b:
            async with fastrpc.connect(b.url, **QUIET) as c:
                sub = await c.subscribe("t", policy="block").start()
                big = b"x" * 65536
                for i in range(40):
                    await a.publish("t", [i, big])
                await asyncio.sleep(0.5)
                with pytest.raises(fastrpc.SlowSubscriber, match="2 x topic_queue_size"):
                    await asyncio.wait_for(take(sub, 40), 10)

    run(main(), 20)
