"""Trust review of topics, session resumption and the Redis broker: what a publisher
loop, many subscriptions, a session kept for an absent client, or a Redis that is
busy or gone can do to the other connections, against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from _services import Redis, free_port
from _util import NO_PROXY, QUIET, recv_binary, run, until
from redis.exceptions import ConnectionError as RedisConnectionError
from websockets.asyncio.client import connect as ws_connect

import fastrpc
from fastrpc import frames as F
from fastrpc import options as O
from fastrpc.broker import MemoryBroker
from fastrpc.protocol import FLAG_RAW, Connection, Role, Settings
from fastrpc.redis_broker import RedisBroker
from fastrpc.topics import Item

MiB = 1 << 20
SRC = str(Path(fastrpc.__file__).resolve().parent)


def _router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method
    def echo(x: bytes) -> bytes:
        return x

    return router


# ------------------------------------------------------------------ publish loop


@pytest.mark.parametrize("subscribed", ["no topic", "many topics"])
def test_a_publisher_that_never_waits_lets_other_connections_be_served(subscribed: str) -> None:
    # `while True: await server.publish(...)`: publish awaited nothing that suspends
    # when no subscription held it back (no subscriber: the in-memory broker never
    # waits), so such a loop held the event loop for good and no other connection was
    # served. Publishing round robin on many topics with a subscriber each, every
    # topic's own count of its pass reached queue_size only after 256 x topics items.
    # Publish lets the loop run at least once every topic_queue_size publishes.
    topics = ["feed"] if subscribed == "no topic" else [f"t{i}" for i in range(100)]
    most = 20_000  # publishes the loop may make before the call must be answered

    async def main() -> None:
        async with fastrpc.serve(_router(), "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as reader, fastrpc.connect(server.url, **QUIET) as other:
                subs = []
                if subscribed != "no topic":
                    subs = [await reader.subscribe(t, policy="drop_oldest").start() for t in topics]
                assert await other.call("add", 1, 2) == 3
                call = asyncio.ensure_future(other.call("add", 2, 3))
                n = 0
                try:
                    while not call.done() and n < most:
                        await server.publish(topics[n % len(topics)], n)
                        n += 1
                    assert call.done(), f"{n} publishes and the other connection's call still unanswered"
                finally:
                    call.cancel()
                assert call.result() == 5
                for s in subs:
                    await s.aclose()

    run(main(), 20)


# ---------------------------------------------------- cost of a publish vs subscriptions


def _calls_in_library(fn: Any) -> Any:
    """Run coroutine function ``fn`` under a profiler; return (its result, Python
    function calls made in fastrpc's own code meanwhile)."""

    async def counted() -> tuple[Any, int]:
        count = 0

        def prof(frame: FrameType, event: str, arg: Any) -> None:
            nonlocal count
            if event == "call" and frame.f_code.co_filename.startswith(SRC):
                count += 1

        sys.setprofile(prof)
        try:
            result = await fn()
        finally:
            sys.setprofile(None)
        return result, count

    return counted()


def test_a_publish_costs_the_same_whatever_the_subscriptions_to_other_topics() -> None:
    # Hostile clients subscribing to many topics (and the hot topic's own subscriber
    # holding many subscriptions too) must not make a publish on one topic slower:
    # the work of a publish is that topic's subscribers', not every subscription's.
    # Counted in function calls of the library (not time): one publish, until its
    # item reached the subscriber.
    others, per = 8, 50

    async def main() -> None:
        async with fastrpc.serve(_router(), "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                hot = await c.subscribe("hot").start()

                async def one(i: int) -> Item:
                    async def go() -> Item:
                        await server.publish("hot", i)
                        ev = await asyncio.wait_for(hot.__anext__(), 5)
                        assert isinstance(ev, Item) and ev.value == i
                        return ev

                    return await _calls_in_library(go)  # type: ignore[no-any-return]

                for i in range(3):  # warm up
                    await one(i)
                _, base = await one(10)
                crowd = [await fastrpc.connect(server.url, **QUIET) for _ in range(others)]
                subs = [await p.subscribe(f"x{i}").start() for p in crowd for i in range(per)]
                subs += [await c.subscribe(f"y{i}").start() for i in range(per)]  # on the hot one's connection
                for i in range(3):
                    await one(20 + i)
                _, crowded = await one(30)
                assert crowded <= base * 1.2 + 20, (base, crowded)
                for s in [hot, *subs]:
                    await s.aclose()
                for p in crowd:
                    await p.close()

    run(main(), 30)


# ------------------------------------------------------------------ resume


def test_a_session_whose_replay_alone_exceeds_max_detached_replay_is_not_kept() -> None:
    # The server-wide bound on what detached sessions hold gave up the oldest sessions
    # while more than one was kept: a single session holding more than the bound (its
    # replay buffer alone, within max_replay_bytes) was kept whole for session_grace.
    # It is given up at once, with a reason naming the option.
    blob = bytes(256 << 10)
    m = b"echo"

    async def main() -> None:
        opts = {"resume": True, "max_detached_replay": 1 * MiB, "session_grace": 30}
        async with fastrpc.serve(_router(), "127.0.0.1", 0, **opts, **QUIET) as server:
            async with ws_connect(server.url, compression=None, max_size=None, ping_interval=None, **NO_PROXY) as ws:
                await ws.send(Connection(Role.CLIENT, Settings(resume=1)).handshake())
                await recv_binary(ws)
                peer = (await until(lambda: list(server.peers)))[0]
                for i in range(8):  # 2 MiB of answers, never acknowledged
                    frame = F.encode_frame(F.REQUEST, FLAG_RAW, 2 * i + 1, F.encode_varint(len(m)) + m + blob)
                    await ws.send(frame)
                    while not any(f.type == F.RESPONSE for f in F.decode_message(await recv_binary(ws), 1 << 30)):
                        pass
                assert peer.core.session.replay_bytes > 1 * MiB and peer.core.resumable
                ws.transport.abort()  # vanishes, no close handshake
            await until(lambda: peer.closed, 5, "the session to be given up")
            assert server.detached == []
            why = str(peer.close_exception)
            assert "max_detached_replay" in why, why
            # Sessions that fit are still kept.
            async with fastrpc.connect(server.url, resume=True, **QUIET) as c:
                assert await c.call("add", 1, 2) == 3
                kept = await until(lambda: [p for p in server.peers if p is not peer], 5)
                c.transport.abort()
                await until(lambda: server.detached == kept, 5, "the small session to be kept")
            for p in server.detached:
                await p.teardown(fastrpc.ConnectionClosed("test over"))

    run(main(), 20)


# ------------------------------------------------------------------ Redis broker


@pytest.mark.external
def test_an_exhausted_redis_pool_names_max_connections(redis: Redis) -> None:
    # Every pooled connection busy for `timeout` seconds: redis-py says only "No
    # connection available."; the error names the broker's max_connections and timeout.
    async def main() -> None:
        broker = RedisBroker(redis.url, prefix="t", max_connections=1, timeout=0.2)
        async with fastrpc.serve(_router(), "127.0.0.1", 0, broker=broker, **QUIET) as server:
            assert (await server.publish("feed", 1))[1] == 1
            # (redis-py < 5.3 needs a command name, later ones warn when given one)
            wants = inspect.signature(broker._pool.get_connection).parameters["command_name"].default
            held = await (
                broker._pool.get_connection("PUBLISH")
                if wants is inspect.Parameter.empty
                else broker._pool.get_connection()
            )
            try:
                with pytest.raises(RedisConnectionError) as info:
                    await server.publish("feed", 2)
            finally:
                await broker._pool.release(held)
            msg = str(info.value)
            assert "No connection available" in msg and "max_connections=1" in msg and "timeout=0.2" in msg, msg
            assert (await server.publish("feed", 3))[1] == 2

    run(main())


@pytest.mark.external
def test_a_refused_redis_connection_names_the_url_without_its_password() -> None:
    async def main() -> None:
        port = free_port()
        broker = RedisBroker(f"redis://user:s3cret@127.0.0.1:{port}/0", prefix="t", timeout=0.3)
        try:
            with pytest.raises(RedisConnectionError) as info:
                await broker.publish("feed", 1)
            msg = str(info.value)
            assert f"127.0.0.1:{port}" in msg and "RedisBroker url=" in msg and "s3cret" not in msg, msg
            with pytest.raises(RedisConnectionError) as info:
                await broker.history("feed", 0)
            msg = str(info.value)
            assert "RedisBroker url=" in msg and "s3cret" not in msg, msg
            with pytest.raises(TimeoutError) as tinfo:
                await broker.start(fastrpc.topics.TopicHub())
            msg = str(tinfo.value)
            assert "RedisBroker url=" in msg and "timeout=0.3" in msg and "s3cret" not in msg, msg
        finally:
            await broker.close()

    run(main())


class _FailingHistory(MemoryBroker):
    """A broker whose history reads fail (as a Redis gone away) once ``failing``."""

    failing = False

    async def history(self, topic: str, after: int | None) -> Any:
        if self.failing:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return await super().history(topic, after)


def test_a_broker_failure_that_ends_subscriptions_names_its_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    # A broker that fails while the live feed is checked against the history ends the
    # topic's subscriptions with HistoryLost, its reason the broker's error: it was
    # the error's repr, which redis-py 8 makes "network:ConnectionError", no message.
    monkeypatch.setattr(O, "BROKER_TIMEOUT", 0.1)

    async def main() -> None:
        broker = _FailingHistory()
        async with fastrpc.serve(_router(), "127.0.0.1", 0, broker=broker, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("feed").start()
                broker.failing = True
                server.topics.reconnected()
                with pytest.raises(fastrpc.HistoryLost) as info:
                    await asyncio.wait_for(sub.__anext__(), 5)
                assert "Connection refused" in info.value.reason, info.value.reason

    run(main())


class _Offset(int):
    """An offset that counts the comparisons made with it."""

    compared = 0

    def __gt__(self, other: object) -> bool:
        _Offset.compared += 1
        return int(self) > other  # type: ignore[operator]


class _LaggingFeed(MemoryBroker):
    """A broker whose live feed lags (as a Redis pub/sub link that is down): publish
    gives offsets and delivers nothing."""

    n = 0

    async def publish(self, topic: str, value: Any) -> tuple[str, int]:
        self.n += 1
        return self.epoch, _Offset(self.n)


def test_local_offsets_awaiting_delivery_cost_a_publish_constant_work() -> None:
    # The offsets a process's publishers got and its live feed has not delivered yet
    # are remembered (to tell local items from remote ones). Past 1,024 of them, every
    # publish filtered the whole set again: with the feed lagging, 5,000 publishes made
    # millions of comparisons. The set is filtered when it doubled since the last time.
    async def main() -> None:
        broker = _LaggingFeed()
        async with fastrpc.serve(_router(), "127.0.0.1", 0, broker=broker, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("feed").start()
                _Offset.compared = 0
                n = 5000
                for i in range(n):
                    await server.publish("feed", i)
                assert _Offset.compared <= 4 * n, _Offset.compared
                await sub.aclose()

    run(main())
