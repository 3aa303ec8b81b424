"""Worker processes (python -m fastrpc.workers) sharing topics through a real
redis-server, behind a real nginx running docs/deployment.md's configuration: fan-out
across workers, a worker killed mid-feed (its subscribers reconnect through nginx to
another worker and recover from Redis, nothing lost or repeated), a restarted Redis
(HistoryLost, never a silent gap), many subscribers over 3 workers, a drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import uuid
from collections.abc import Iterator

import pytest
from _services import Nginx, Redis, Workers, documented_nginx_config, free_port, free_ports
from _util import QUIET, run, until

import fastrpc
from fastrpc.topics import Item

pytestmark = pytest.mark.external

FAST_RETRY = fastrpc.RetryPolicy(initial_delay=0.05, max_delay=0.2, max_attempts=100)


@pytest.fixture
def workers(redis: Redis) -> Iterator[tuple[Workers, list[int]]]:
    base = free_ports(3)
    w = Workers(3, base, redis.url, "--distinct-ports")
    ports = [base, base + 1, base + 2]
    try:
        w.wait_ready(ports)
        yield w, ports
    finally:
        status = w.close()
        assert status == 0, w.output()


@pytest.fixture
def nginx(workers: tuple[Workers, list[int]]) -> Iterator[Nginx]:
    _, ports = workers
    listen = free_port()
    conf = documented_nginx_config().replace("127.0.0.1:8080", f"127.0.0.1:{listen}")
    for i, p in enumerate(ports):
        conf = conf.replace(f"127.0.0.1:{8001 + i}", f"127.0.0.1:{p}")
    n = Nginx(conf, listen).start()
    try:
        yield n
    finally:
        n.close()


async def collect(sub: fastrpc.Subscription, n: int, out: list[Item]) -> None:
    async for ev in sub:
        assert isinstance(ev, Item)
        out.append(ev)
        if len(out) == n:
            return


def test_publish_on_worker_a_subscribers_on_b_and_c(workers: tuple[Workers, list[int]]) -> None:
    _, ports = workers

    async def main() -> None:
        a = await fastrpc.connect(f"ws://127.0.0.1:{ports[0]}", **QUIET)
        b = await fastrpc.connect(f"ws://127.0.0.1:{ports[1]}", **QUIET)
        c = await fastrpc.connect(f"ws://127.0.0.1:{ports[2]}", **QUIET)
        assert len({await p.call("whoami") for p in (a, b, c)}) == 3  # three processes
        subs = [await b.subscribe("feed").start(), await c.subscribe("feed").start()]
        for i in range(50):
            await a.call("publish", "feed", i)
        for sub in subs:
            got: list[Item] = []
            await asyncio.wait_for(collect(sub, 50, got), 10)
            assert [e.value for e in got] == list(range(50))
            assert [e.offset for e in got] == list(range(1, 51))
        for p in (a, b, c):
            await p.close()

    run(main(), 30)


def test_worker_killed_mid_feed_subscribers_recover_through_nginx(
    workers: tuple[Workers, list[int]], nginx: Nginx
) -> None:
    _, ports = workers
    total = 300

    async def main() -> None:
        url = f"ws://127.0.0.1:{nginx.listen}/"
        # Clients with ids of their own: nginx hashes each to one worker.
        clients = [
            await fastrpc.connect(f"{url}?client={uuid.uuid4().hex}", reconnect=FAST_RETRY, **QUIET) for _ in range(9)
        ]
        pids = [await c.call("whoami") for c in clients]
        subs = [await c.subscribe("feed").start() for c in clients]
        publisher = await fastrpc.connect(f"ws://127.0.0.1:{ports[0]}", **QUIET)
        publisher_pid = await publisher.call("whoami")
        victim = next(p for p in pids if p != publisher_pid)
        got: list[list[Item]] = [[] for _ in subs]
        readers = [asyncio.ensure_future(collect(s, total, g)) for s, g in zip(subs, got)]
        for i in range(total):
            await publisher.call("publish", "feed", i)
            if i == total // 3:
                os.kill(victim, signal.SIGKILL)  # mid-feed, without warning
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*readers), 20)
        for sub, items, pid in zip(subs, got, pids):
            assert [e.value for e in items] == list(range(total))  # nothing lost or repeated
            assert [e.offset for e in items] == list(range(1, total + 1))
            if pid == victim:
                assert sub.resubscribed >= 1 and sub.recovered
        moved = [await c.call("whoami") for c, pid in zip(clients, pids) if pid == victim]
        assert moved and victim not in moved
        # The supervisor started the killed worker again.
        for p in ports:
            async with fastrpc.connect(f"ws://127.0.0.1:{p}", reconnect=FAST_RETRY, **QUIET) as direct:
                assert await direct.call("whoami") != victim
        for c in [*clients, publisher]:
            await c.close()

    run(main(), 60)


def test_a_dropped_connection_resumes_on_its_own_worker_through_nginx(
    workers: tuple[Workers, list[int]], nginx: Nginx
) -> None:
    """Rule 1 of docs/deployment.md: nginx hashes ?client= to the same worker, so a
    session survives a dropped connection whole: the in-flight call completes, the
    subscription goes on without resubscribing, nothing lost or repeated."""
    _, ports = workers
    total = 60

    async def main() -> None:
        url = f"ws://127.0.0.1:{nginx.listen}/?client={uuid.uuid4().hex}"
        drops: list[BaseException] = []
        policy = dataclasses.replace(FAST_RETRY, on_disconnected=lambda peer, exc: drops.append(exc))
        client = await fastrpc.connect(url, reconnect=policy, **QUIET)
        pid = await client.call("whoami")
        sub = await client.subscribe("feed").start()
        publisher = await fastrpc.connect(f"ws://127.0.0.1:{ports[0]}", **QUIET)
        got: list[Item] = []
        reader = asyncio.ensure_future(collect(sub, total, got))
        call = asyncio.ensure_future(client.call("slow", 0.5))
        for i in range(total):
            await publisher.call("publish", "feed", i)
            if i == total // 3:
                nginx.stop()  # every connection through it drops
                await asyncio.sleep(0.1)
                nginx.start()
            await asyncio.sleep(0.005)
        assert await asyncio.wait_for(call, 10) == "done"  # survived the drop
        await asyncio.wait_for(reader, 10)
        assert [e.value for e in got] == list(range(total))
        assert drops  # the connection did drop ...
        assert sub.resubscribed == 0  # ... and the session resumed: no recovery was needed
        assert await client.call("whoami") == pid
        await client.close()
        await publisher.close()

    run(main(), 40)


def test_redis_restart_mid_feed_is_never_a_silent_gap(redis: Redis, workers: tuple[Workers, list[int]]) -> None:
    _, ports = workers

    async def main() -> None:
        pub = await fastrpc.connect(f"ws://127.0.0.1:{ports[0]}", **QUIET)
        sub_peer = await fastrpc.connect(f"ws://127.0.0.1:{ports[1]}", **QUIET)
        sub = await sub_peer.subscribe("feed").start()
        for i in range(10):
            await pub.call("publish", "feed", i)
        got: list[Item] = []
        await asyncio.wait_for(collect(sub, 10, got), 10)
        redis.stop()
        redis.start()
        with pytest.raises(fastrpc.HistoryLost) as info:
            await asyncio.wait_for(sub.__anext__(), 15)
        for _ in range(50):  # the publishing worker's pooled Redis connections died too
            try:
                epoch, offset = await pub.call("publish", "feed", "after")
                break
            except fastrpc.RemoteError as exc:
                assert exc.type_name == "ConnectionError"
                await asyncio.sleep(0.1)
        assert info.value.epoch == epoch != got[0].epoch and offset == 1
        again = sub_peer.subscribe("feed", since=(epoch, 0))
        assert [e.value for e in [await again.__anext__()]] == ["after"]  # type: ignore[union-attr]
        await pub.close()
        await sub_peer.close()

    run(main(), 40)


def test_many_subscribers_across_three_workers(workers: tuple[Workers, list[int]]) -> None:
    _, ports = workers
    n, items = 1000, 20

    async def main() -> None:
        peers = [await fastrpc.connect(f"ws://127.0.0.1:{ports[i % 3]}", **QUIET) for i in range(n)]
        subs = await asyncio.gather(*(p.subscribe("many").start() for p in peers))
        got: list[list[Item]] = [[] for _ in subs]
        readers = [asyncio.ensure_future(collect(s, items, g)) for s, g in zip(subs, got)]
        for i in range(items):
            await peers[0].call("publish", "many", i)
        await asyncio.wait_for(asyncio.gather(*readers), 30)
        assert all([e.value for e in g] == list(range(items)) for g in got)
        await asyncio.gather(*(p.close() for p in peers))

    run(main(), 60)


def test_sigterm_drains_in_flight_calls(redis: Redis) -> None:
    port = free_ports(1)
    w = Workers(2, port, redis.url)
    try:
        w.wait_ready([port])

        async def main() -> None:
            async with fastrpc.connect(f"ws://127.0.0.1:{port}", **QUIET) as c:
                call = asyncio.ensure_future(c.call("slow", 0.5))
                await asyncio.sleep(0.1)
                w.proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(call, 5) == "done"  # finished, not cut
                await until(lambda: c.closed, 5, "the drained worker closes the connection")
                assert c.close_exception is not None and c.close_exception.code == 1001

        run(main(), 20)
        assert w.proc.wait(10) == 0
    finally:
        w.close()


def test_a_client_that_vanished_does_not_turn_a_drain_into_a_kill() -> None:
    # A connection whose client is gone without a FIN (frozen, unplugged) holds a
    # worker's close for close_timeout (10 s) after its grace (3 s here); the
    # supervisor waited grace + 5 s, then SIGKILLed the worker and exited 1.
    import socket
    import time

    port = free_port()
    w = Workers(1, port, None)
    s = socket.socket()
    try:
        w.wait_ready([port])
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 101")  # then it never answers again
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(30) == 0, w.output()
        assert time.monotonic() - t0 < 20
    finally:
        s.close()
        w.close()
