"""Topics over real loopback connections, in-memory broker: publish/subscribe, resume
from an offset (exactly once, in order, or HistoryLost), the history window's size and
age, the slow-subscriber policies, one encoding per item for all subscribers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _util import QUIET, Redirect, run, until

import fastrpc
from fastrpc.broker import MemoryBroker
from fastrpc.codec import Encoded, PayloadCodec
from fastrpc.protocol import Role
from fastrpc.settings import Settings
from fastrpc.topics import Gap, Item


async def take(sub: fastrpc.Subscription, n: int) -> list[Any]:
    out = []
    async for ev in sub:
        out.append(ev)
        if len(out) == n:
            break
    return out


def offsets(events: list[Any]) -> list[int]:
    return [e.offset for e in events if isinstance(e, Item)]


def test_publish_reaches_every_subscriber_in_order() -> None:
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            clients = [await fastrpc.connect(server.url, **QUIET) for _ in range(3)]
            subs = [await c.subscribe("prices").start() for c in clients]
            assert server.topics.subscribers("prices") == 3
            for i in range(50):
                epoch, offset = await server.publish("prices", {"n": i})
                assert offset == i + 1
            for sub in subs:
                got = await asyncio.wait_for(take(sub, 50), 5)
                assert [e.value for e in got] == [{"n": i} for i in range(50)]
                assert offsets(got) == list(range(1, 51))
                assert {e.epoch for e in got} == {epoch}
                await sub.aclose()
            await until(lambda: server.topics.subscribers("prices") == 0)
            for c in clients:
                await c.close()

    run(main())


def test_a_publisher_lets_the_connections_write_after_a_pass_of_deliveries() -> None:
    # 5 subscriptions and a budget of 10 deliveries a loop pass: a publisher that never
    # waits otherwise lets the loop run once every 2 items (queue_size 256 is far off),
    # so the subscribers get items while it publishes the rest.
    with pytest.raises(ValueError, match="topic_pass_deliveries must be a positive int"):
        fastrpc.serve(fastrpc.Router(), topic_pass_deliveries=0)

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_pass_deliveries=10, **QUIET) as server:
            assert server.topics.pass_deliveries == 10
            clients = [await fastrpc.connect(server.url, **QUIET) for _ in range(5)]
            subs = [await c.subscribe("ticks").start() for c in clients]
            passes = 0

            async def count_passes() -> None:
                nonlocal passes
                while True:
                    await asyncio.sleep(0)
                    passes += 1

            counter = asyncio.ensure_future(count_passes())
            for i in range(40):
                await server.publish("ticks", i)
            counter.cancel()
            assert passes >= 18, passes  # a pass after every 2 items (the first starts the counter)
            for sub in subs:
                got = await asyncio.wait_for(take(sub, 40), 5)
                assert [e.value for e in got] == list(range(40))
                await sub.aclose()
            for c in clients:
                await c.close()

    run(main())


def test_item_encoded_once_for_all_subscribers(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[Any] = []
    original = PayloadCodec.encode_value

    def counting(self: PayloadCodec, value: Any) -> bytes:
        if isinstance(value, list) and value and value[0] == 0:  # an item envelope
            encoded.append(value[1])
        elif isinstance(value, list) and value and value[0] == 5:  # a run of items
            encoded.extend(range(value[1], value[1] + len(value[2])))
        return original(self, value)

    monkeypatch.setattr(PayloadCodec, "encode_value", counting)

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            clients = [await fastrpc.connect(server.url, **QUIET) for _ in range(5)]
            subs = [await c.subscribe("t").start() for c in clients]
            for i in range(10):
                await server.publish("t", ["payload", i])
            for sub in subs:
                assert offsets(await asyncio.wait_for(take(sub, 10), 5)) == list(range(1, 11))
            for c in clients:
                await c.close()

    run(main())
    assert sorted(encoded) == list(range(1, 11))  # once per item, not once per subscriber


def test_resume_from_offset_exactly_once_in_order() -> None:
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("feed").start()
                for i in range(10):
                    await server.publish("feed", i)
                first = await take(sub, 4)
                position = sub.position
                assert position is not None and position[1] == 4
                await sub.aclose()
                for i in range(10, 15):
                    await server.publish("feed", i)
                again = c.subscribe("feed", since=position)
                rest = await asyncio.wait_for(take(again, 11), 5)
                assert again.recovered
                values = [e.value for e in first + rest]
                assert values == list(range(15))
                assert offsets(first + rest) == list(range(1, 16))
                # From offset 0 of the epoch: everything in the window.
                whole = c.subscribe("feed", since=(position[0], 0))
                assert [e.value for e in await take(whole, 15)] == list(range(15))
                await again.aclose()
                await whole.aclose()

    run(main())


def test_history_lost_past_window_size_and_epoch() -> None:
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_history_size=5, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                epoch, _ = await server.publish("t", 0)
                for i in range(1, 20):
                    await server.publish("t", i)
                with pytest.raises(fastrpc.HistoryLost) as info:
                    await c.subscribe("t", since=(epoch, 3)).__anext__()
                assert (info.value.epoch, info.value.first_available) == (epoch, 16)
                # The window's edge still works: offsets 16..20.
                sub = c.subscribe("t", since=(epoch, 15))
                assert offsets(await take(sub, 5)) == [16, 17, 18, 19, 20]
                await sub.aclose()
                with pytest.raises(fastrpc.HistoryLost) as info:
                    await c.subscribe("t", since=("another-epoch", 19)).__anext__()
                assert info.value.epoch == epoch
                with pytest.raises(fastrpc.HistoryLost):  # a position from the future
                    await c.subscribe("t", since=(epoch, 99)).__anext__()

    run(main())


def test_history_lost_past_window_age() -> None:
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_history_ttl=0.2, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                epoch, _ = await server.publish("t", "old")
                await asyncio.sleep(0.3)
                await server.publish("t", "new")
                with pytest.raises(fastrpc.HistoryLost) as info:
                    await c.subscribe("t", since=(epoch, 0)).__anext__()
                assert info.value.first_available == 2
                sub = c.subscribe("t", since=(epoch, 1))
                assert [e.value for e in await take(sub, 1)] == ["new"]
                await sub.aclose()

    run(main())


def test_block_policy_backpressure_reaches_the_publisher() -> None:
    big = b"x" * 16384

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=4, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("t", policy="block").start()
                published = 0

                async def publisher() -> None:
                    nonlocal published
                    for i in range(200):
                        await server.publish("t", [i, big])
                        published += 1

                task = asyncio.ensure_future(publisher())
                await asyncio.sleep(0.3)
                # Held back by the reader: the stream window (256 KiB) plus the queue.
                stalled = published
                assert 4 <= stalled < 60, stalled
                got = await asyncio.wait_for(take(sub, 200), 10)
                await task
                assert [e.value[0] for e in got] == list(range(200))
                assert not any(isinstance(e, Gap) for e in got)
                await sub.aclose()

    run(main())


def test_a_block_subscriber_that_stops_reading_does_not_stall_the_topic_for_the_others() -> None:
    # One subscriber (hostile, or stuck) never reads: with `block`, its full queue held
    # publish() for every subscriber of the topic for ever. Past topic_block_timeout
    # with nothing taken it ends as SlowSubscriber (resumable from its position), and
    # the publisher and the subscriber that reads go on, losing nothing.
    big = b"x" * 16384
    with pytest.raises(ValueError, match="topic_block_timeout must be a positive number"):
        fastrpc.serve(fastrpc.Router(), topic_block_timeout=0)

    async def main() -> None:
        opts = {"topic_queue_size": 4, "topic_block_timeout": 0.3}
        async with fastrpc.serve(fastrpc.Router(), **opts, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as stuck, fastrpc.connect(server.url, **QUIET) as good:
                s_sub = await stuck.subscribe("t", policy="block").start()
                g_sub = await good.subscribe("t", policy="block").start()
                got: list[Any] = []

                async def read() -> None:
                    async for ev in g_sub:
                        got.append(ev.value[0])
                        if len(got) == 100:
                            return

                reader = asyncio.ensure_future(read())
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                for i in range(100):
                    await asyncio.wait_for(server.publish("t", [i, big]), 5)
                took = loop.time() - t0
                await asyncio.wait_for(reader, 5)
                assert got == list(range(100))
                assert 0.25 <= took < 3, took  # held back once for the timeout, not for ever
                with pytest.raises(fastrpc.SlowSubscriber) as e:
                    async for ev in s_sub:
                        pass
                assert "topic_block_timeout" in str(e.value) and e.value.position[1] >= 1
                await until(lambda: server.topics.subscribers("t") == 1)
                await g_sub.aclose()

    run(main())


def test_a_block_subscriber_that_reads_slowly_keeps_its_subscription() -> None:
    # Each item taken restarts the clock: a reader slower than the publisher, but
    # never stopped for topic_block_timeout, paces the publisher and loses nothing.
    big = b"x" * 16384

    async def main() -> None:
        opts = {"topic_queue_size": 2, "topic_block_timeout": 0.4}
        async with fastrpc.serve(fastrpc.Router(), **opts, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("t", policy="block").start()
                n = 40
                got: list[Any] = []

                async def read() -> None:
                    async for ev in sub:
                        got.append(ev.value[0])
                        await asyncio.sleep(0.01)
                        if len(got) == n:
                            return

                reader = asyncio.ensure_future(read())
                for i in range(n):
                    await asyncio.wait_for(server.publish("t", [i, big]), 5)
                await asyncio.wait_for(reader, 10)
                assert got == list(range(n))
                await sub.aclose()

    run(main())


def test_drop_oldest_counts_the_gap() -> None:
    big = b"y" * 16384

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=4, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("t", policy="drop_oldest").start()
                for i in range(200):
                    await server.publish("t", [i, big])  # never waits
                await asyncio.sleep(0.1)
                events = []
                async for ev in sub:
                    events.append(ev)
                    if isinstance(ev, Item) and ev.value[0] == 199:
                        break
                items = [e for e in events if isinstance(e, Item)]
                gaps = [e for e in events if isinstance(e, Gap)]
                assert gaps and sum(g.count for g in gaps) == 200 - len(items) == sub.dropped
                # Every offset is accounted for once, in order: items and gaps interleave.
                seen: list[int] = []
                for e in events:
                    seen += [e.offset] if isinstance(e, Item) else list(range(e.first, e.last + 1))
                assert seen == list(range(1, 201))
                await sub.aclose()

    run(main())


def test_latest_conflates_per_key() -> None:
    big = "z" * 16384

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=8, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("ticker", policy="latest", key="sym").start()
                for i in range(300):
                    await server.publish("ticker", {"sym": "ABC"[i % 3], "px": i, "pad": big})
                await asyncio.sleep(0.1)
                last: dict[str, int] = {}
                got = 0
                async for ev in sub:
                    assert isinstance(ev, Item)
                    got += 1
                    sym, px = ev.value["sym"], ev.value["px"]
                    assert px > last.get(sym, -1)  # newer values only, per key
                    last[sym] = px
                    if last == {"A": 297, "B": 298, "C": 299}:
                        break
                assert got < 300  # conflated
                await sub.aclose()

    run(main())


def test_disconnect_policy_ends_a_slow_subscription_which_recovers() -> None:
    big = b"w" * 16384

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=4, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("t", policy="disconnect").start()
                for i in range(100):
                    await server.publish("t", [i, big])
                got: list[int] = []
                with pytest.raises(fastrpc.SlowSubscriber) as info:
                    async for ev in sub:
                        got.append(ev.value[0])
                assert got == list(range(len(got))) and len(got) < 100
                assert info.value.position == sub.position
                again = c.subscribe("t", since=info.value.position)
                rest = await take(again, 100 - len(got))
                assert got + [e.value[0] for e in rest] == list(range(100))
                await again.aclose()
                await until(lambda: server.topics.subscribers("t") == 0)

    run(main())


def test_publish_from_a_handler_and_bad_requests() -> None:
    router = fastrpc.Router()

    @router.method
    async def shout(text: str) -> int:
        _, offset = await fastrpc.current_peer().server.publish("chat", text.upper())
        return int(offset)

    async def main() -> None:
        async with fastrpc.serve(router, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("chat").start()
                assert await c.call("shout", "hi") == 1
                assert [e.value for e in await take(sub, 1)] == ["HI"]
                await sub.aclose()
                with pytest.raises(ValueError, match="MAX_TOPIC_NAME"):
                    c.subscribe("x" * 300)
                with pytest.raises(ValueError, match="policy"):
                    c.subscribe("t", policy="sometimes")
                with pytest.raises(fastrpc.RemoteStreamError, match="MAX_TOPIC_NAME"):
                    await c.stream("fastrpc.subscribe", "y" * 300).__anext__()
                with pytest.raises(fastrpc.RemoteStreamError, match="since"):
                    await c.stream("fastrpc.subscribe", "t", "e", -1).__anext__()

    run(main())


def test_subscribers_leave_nothing_behind() -> None:
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                subs = [await c.subscribe(f"no-such-topic-{i}").start() for i in range(50)]
                for sub in subs:
                    await sub.aclose()
                await until(lambda: sum(server.topics.subscribers(f"no-such-topic-{i}") for i in range(50)) == 0)
                broker = server.topics.broker
                assert isinstance(broker, MemoryBroker) and len(broker) == 0
                # A topic first published after its subscriber came: from offset 1 on.
                sub = await c.subscribe("later").start()
                await server.publish("later", "first")
                assert [(e.offset, e.value) for e in await take(sub, 1)] == [(1, "first")]
                await sub.aclose()

    run(main())


def test_fan_out_to_fast_and_slow_subscribers_exact_and_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live items go straight onto the streams of subscribers that keep up (no task
    wakes per subscriber per item) while slow ones that do not read fall back to their
    queues under their policy: every subscriber still gets its items exactly once and
    in order, and no item overtakes one queued before it."""
    taken: list[int] = []  # items each send_now call put on a stream
    original = fastrpc.StreamManager.send_now

    def counting(self: fastrpc.StreamManager, sid: int, items: Any) -> int:
        n = original(self, sid, items)
        # Items, or run events of several: count the topic's items.
        taken.append(sum(len(env.value[2]) if env.value[0] == 5 else 1 for env in items[:n]))
        return n

    monkeypatch.setattr(fastrpc.StreamManager, "send_now", counting)
    pad = b"p" * 2048  # 32 items fill a stream's buffer: slow subscribers fall behind soon
    count = 300

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=16, **QUIET) as server:
            fast_peers = [await fastrpc.connect(server.url, **QUIET) for _ in range(6)]
            slow_peers = [await fastrpc.connect(server.url, **QUIET) for _ in range(3)]
            fast = [await p.subscribe("mix").start() for p in fast_peers]
            dropper = await slow_peers[0].subscribe("mix", policy="drop_oldest").start()
            quitter = await slow_peers[1].subscribe("mix", policy="disconnect").start()
            blocker = await slow_peers[2].subscribe("mix", policy="block").start()
            readers = [asyncio.ensure_future(take(s, count)) for s in fast]

            async def publisher() -> None:
                for i in range(count):
                    await server.publish("mix", [i, pad])
                    if i % 10 == 0:
                        await asyncio.sleep(0.001)  # a live feed, not one burst

            pub = asyncio.ensure_future(publisher())
            # The block subscriber does not read: it holds the publisher back ...
            await until(lambda: pub.done() or len(taken) > 0)
            await asyncio.sleep(0.3)
            assert not pub.done()
            # ... and it is the only one: the fast ones have everything published so far.
            # The slow ones read now.
            got_blocker = asyncio.ensure_future(take(blocker, count))
            await asyncio.wait_for(pub, 10)
            for r in readers:
                got = await asyncio.wait_for(r, 10)
                assert [e.value[0] for e in got] == list(range(count))
                assert offsets(got) == list(range(1, count + 1))
            got = await asyncio.wait_for(got_blocker, 10)
            assert [e.value[0] for e in got] == list(range(count))
            # drop_oldest: items and gaps account for every offset once, in order.
            events: list[Any] = []
            async for ev in dropper:
                events.append(ev)
                if isinstance(ev, Item) and ev.offset == count:
                    break
            seen: list[int] = []
            for e in events:
                seen += [e.offset] if isinstance(e, Item) else list(range(e.first, e.last + 1))
            assert seen == list(range(1, count + 1))
            assert any(isinstance(e, Gap) for e in events)
            # disconnect: an in-order prefix, then SlowSubscriber.
            prefix: list[int] = []
            with pytest.raises(fastrpc.SlowSubscriber):
                async for ev in quitter:
                    prefix.append(ev.offset)
            assert prefix == list(range(1, len(prefix) + 1)) and len(prefix) < count
            for p in fast_peers + slow_peers:
                await p.close()

    run(main(), timeout=30)
    # Most deliveries took the direct path, in batches (a pass's items at once).
    direct = sum(taken)
    assert direct > 6 * count // 2, (direct, len(taken))
    assert len([n for n in taken if n]) < direct


def test_resume_while_the_feed_runs_exactly_once_in_order() -> None:
    """A subscription that resumes from an offset while items keep coming: the history,
    the items that came while it was fetched, and the live items that then go straight
    onto the stream, each once and in order."""

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                epoch, _ = await server.publish("run", 0)
                for i in range(1, 50):
                    await server.publish("run", i)
                stop = False

                async def publisher() -> None:
                    i = 50
                    while not stop:
                        await server.publish("run", i)
                        i += 1
                        await asyncio.sleep(0)

                pub = asyncio.ensure_future(publisher())
                subs = [c.subscribe("run", since=(epoch, k)) for k in (0, 10, 49)]
                got = [await asyncio.wait_for(take(s, 400 - k), 10) for s, k in zip(subs, (0, 10, 49))]
                stop = True
                await pub
                for g, k in zip(got, (0, 10, 49)):
                    assert [e.value for e in g] == list(range(k, 400))
                    assert offsets(g) == list(range(k + 1, 401))
                for s in subs:
                    assert s.recovered
                    await s.aclose()

    run(main(), timeout=20)


def test_latest_delivers_each_keys_last_value_whatever_the_queue_order() -> None:
    """A key updated in place keeps its place in the queue, so keys leave out of
    offset order: each key's last value still arrives (it used to be dropped as a
    duplicate of the newer offset sent before it)."""
    big = "q" * 16384

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=8, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = await c.subscribe("k", policy="latest", key="key").start()
                for i in range(40):  # fills the stream's buffer and window: then the queue
                    await server.publish("k", {"key": "F", "i": i, "pad": big})
                for key, i in (("X", 100), ("Y", 101), ("X", 102)):  # queue: F, X(102), Y(101)
                    await server.publish("k", {"key": key, "i": i, "pad": big})
                last: dict[str, int] = {}

                async def read() -> None:
                    async for ev in sub:
                        last[ev.value["key"]] = ev.value["i"]
                        if last.get("X") == 102 and last.get("Y") == 101:
                            return

                await asyncio.wait_for(read(), 5)
                assert last == {"F": 39, "X": 102, "Y": 101}
                await sub.aclose()

    run(main())


def test_no_item_overtakes_the_one_its_sender_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender of a subscription may hold an item it took from the queue while it
    waits for credit. An item published then must go out after it, even once credit
    came: here it is published as the credit arrives, before the sender wakes (as a
    loop pass's fan-out that runs ahead of it would)."""
    item = b"h" * 984  # 1 KiB a frame, with the envelope and the frame charge
    armed: dict[str, Any] = {}
    original = fastrpc.StreamManager.on_writable

    def publish_first(self: fastrpc.StreamManager, sid: int) -> None:
        if armed and self.link.core.role is Role.SERVER:
            server, topic = armed.pop("server"), armed.pop("topic")
            server.topics.broker.publish_now(topic, "late")  # fanned out before the sender wakes
        original(self, sid)

    monkeypatch.setattr(fastrpc.StreamManager, "on_writable", publish_first)

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            # A window of 4 items: with the reader stopped, the stream stops being
            # writable after a few items, and the sender takes the next one from the
            # queue and waits for credit with it (which count does it depends on the
            # START's size: every count up to 8 is tried).
            small = fastrpc.StreamManager(initial_window=4096, max_window=4096)
            async with fastrpc.connect(server.url, streams=small, **QUIET) as c:
                for n in range(1, 9):
                    topic = f"h{n}"
                    sub = await c.subscribe(topic).start()
                    for i in range(n):
                        await server.publish(topic, [i, item])
                        await asyncio.sleep(0.005)  # each item in its own loop pass
                    await asyncio.sleep(0.02)
                    armed.update(server=server, topic=topic)
                    got = await asyncio.wait_for(take(sub, n + 1), 5)
                    assert offsets(got) == list(range(1, n + 2)), n
                    assert [e.value for e in got] == [[i, item] for i in range(n)] + ["late"], n
                    assert not armed  # the credit came, the item was published
                    await sub.aclose()

    run(main(), timeout=20)


def test_item_and_gap_are_plain_records() -> None:
    """Item and Gap (msgspec Structs, made in C per delivery) keep the behaviour of
    plain classes: positional and keyword construction, repr, identity equality and
    hashing, writable fields, no other attributes, pickling."""
    import pickle

    item = Item("e1", 7, {"n": 1})
    same = Item(epoch="e1", offset=7, value={"n": 1})
    assert (item.epoch, item.offset, item.value) == ("e1", 7, {"n": 1})
    assert repr(item) == "Item('e1', 7, {'n': 1})"
    assert item != same and item == item and len({item, same}) == 2
    item.offset = 8
    assert item.offset == 8
    with pytest.raises(AttributeError):
        item.other = 1  # type: ignore[attr-defined]
    back = pickle.loads(pickle.dumps(item))
    assert (back.epoch, back.offset, back.value) == ("e1", 8, {"n": 1})
    gap = Gap("e1", 3, 10, 12)
    assert repr(gap) == "Gap('e1', count=3, 10..12)"
    assert (gap.epoch, gap.count, gap.first, gap.last) == ("e1", 3, 10, 12)
    assert gap != Gap("e1", 3, 10, 12) and hash(gap) == hash(gap)


def test_a_pass_writes_each_subscriber_in_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A topic's pass sends each subscriber's items as its turn comes, not after the
    last subscriber's turn: when the pass returns, no subscriber's connection has
    anything left queued (with a thousand subscribers, the first write no longer waits
    for the whole pass: paced fan-out p50 15 -> 9 ms, bench/README.md)."""
    queued_after_pass: list[bool] = []
    original = fastrpc.topics._Topic.end_pass

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:

            def end_pass(topic: Any) -> None:
                original(topic)
                queued_after_pass.extend(p.core.has_output() for p in server.peers)

            monkeypatch.setattr(fastrpc.topics._Topic, "end_pass", end_pass)
            clients = [await fastrpc.connect(server.url, **QUIET) for _ in range(4)]
            subs = [await c.subscribe("t").start() for c in clients]
            for i in range(3):
                await server.publish("t", i)
                for sub in subs:
                    assert [e.value for e in await asyncio.wait_for(take(sub, 1), 5)] == [i]
            for c in clients:
                await c.close()

    run(main())
    assert len(queued_after_pass) >= 12 and not any(queued_after_pass), queued_after_pass


# ------------------------------------------------------------------ run events


def _count_encodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Patch the codec to record the item envelopes (their offsets) and the run
    events (their first offset and length) it encodes."""
    seen: dict[str, list[Any]] = {"items": [], "runs": []}
    original = PayloadCodec.encode_value

    def counting(self: PayloadCodec, value: Any) -> bytes:
        if isinstance(value, list) and value and value[0] == 0:
            seen["items"].append(value[1])
        elif isinstance(value, list) and value and value[0] == 5:
            seen["runs"].append((value[1], len(value[2])))
        return original(self, value)

    monkeypatch.setattr(PayloadCodec, "encode_value", counting)
    return seen


async def _publish_in_one_pass(server: fastrpc.Server, topic: str, values: list[Any]) -> None:
    # The in-memory broker delivers as it publishes: no await below yields to the loop
    # (the items are fewer than the queue size), so the items make one loop pass.
    for v in values:
        await server.publish(topic, v)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_a_pass_reaches_subscribers_as_runs_encoded_once(monkeypatch: pytest.MonkeyPatch, codec: str) -> None:
    seen = _count_encodes(monkeypatch)
    count = 600  # one pass (the queue size is larger): three runs, 256, 256 and 88

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=1000, **QUIET) as server:
            clients = [await fastrpc.connect(server.url, codec=codec, **QUIET) for _ in range(4)]
            subs = [await c.subscribe("t").start() for c in clients]
            await _publish_in_one_pass(server, "t", [[i, "v"] for i in range(count)])
            for sub in subs:
                got = await asyncio.wait_for(take(sub, count), 5)
                assert all(type(e) is Item for e in got)
                assert [e.value for e in got] == [[i, "v"] for i in range(count)]
                assert offsets(got) == list(range(1, count + 1))
                assert sub.position == (got[0].epoch, count)
            for c in clients:
                await c.close()

    run(main())
    # Each run is encoded once for the four subscribers, and no item on its own.
    assert seen["runs"] == [(1, 256), (257, 256), (513, 88)]
    assert seen["items"] == []


def test_a_peer_without_the_feature_gets_items_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # HELLOs without key 12, as an older fastrpc sends them: the server must not send
    # run events that such a client does not know.
    monkeypatch.setattr(Settings, "_KEYS", {k: v for k, v in Settings._KEYS.items() if k != "features"})
    seen = _count_encodes(monkeypatch)
    count = 100

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            client = await fastrpc.connect(server.url, **QUIET)
            assert client.peer_settings is not None and client.peer_settings.features == 0
            sub = await client.subscribe("t").start()
            await _publish_in_one_pass(server, "t", list(range(count)))
            got = await asyncio.wait_for(take(sub, count), 5)
            assert [e.value for e in got] == list(range(count))
            assert offsets(got) == list(range(1, count + 1))
            await client.close()

    run(main())
    assert seen["runs"] == []
    assert sorted(seen["items"]) == list(range(1, count + 1))


def test_runs_a_subscriber_cannot_take_whole_go_item_by_item(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client takes items of at most 256 bytes: a run of 200 items is larger, so the
    # pass falls back to the items one by one (the queue, then the stream's sender).
    seen = _count_encodes(monkeypatch)
    count = 200

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            small = await fastrpc.connect(server.url, max_item_size=256, **QUIET)
            large = await fastrpc.connect(server.url, **QUIET)
            subs = [await small.subscribe("t").start(), await large.subscribe("t").start()]
            await _publish_in_one_pass(server, "t", [b"x" * 16] * count)
            for sub in subs:
                got = await asyncio.wait_for(take(sub, count), 5)
                assert offsets(got) == list(range(1, count + 1))
                assert all(e.value == b"x" * 16 for e in got)
            await small.close()
            await large.close()

    run(main())
    assert seen["runs"]  # the large one got runs
    assert sorted(seen["items"]) == list(range(1, count + 1))  # the small one items


@pytest.mark.parametrize(
    "bad",
    [[5, "1", [1]], [5, 1, {"a": 1}], [5, 1, None], [5], [5, 1], [0, 1], [2, "x", 1, 2], [3, "e"], 7, {"a": 1}],
)
def test_a_malformed_event_is_a_protocol_error(bad: Any) -> None:
    router = fastrpc.Router()

    @router.method
    async def echo(x: int) -> int:
        return x

    @router.method
    async def evil(*args: Any) -> Any:
        yield [1, "e", 0, False]
        yield [5, 1, ["a", "b"]]
        yield bad
        await asyncio.sleep(10)

    async def main() -> None:
        async with fastrpc.serve(router, **QUIET) as server:
            client = await fastrpc.connect(server.url, **QUIET)
            sub = fastrpc.Subscription(Redirect(client, "evil"), "t")  # type: ignore[arg-type]
            got = [(e.offset, e.value) async for e in _first(sub, 2)]
            assert got == [(1, "a"), (2, "b")]
            with pytest.raises(fastrpc.ProtocolError, match="malformed event"):
                await asyncio.wait_for(sub.__anext__(), 5)
            # The subscription is over; the connection lives on.
            with pytest.raises(StopAsyncIteration):
                await sub.__anext__()
            assert await client.call("echo", 7) == 7
            await client.close()

    run(main())


async def _first(sub: fastrpc.Subscription, n: int) -> Any:
    for _ in range(n):
        yield await asyncio.wait_for(sub.__anext__(), 5)


def test_subscribers_that_keep_up_are_not_pushed_item_by_item(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass's items reach the subscriptions that keep up as one shared list (the
    topic's group), not one ``push`` per item per subscription: with 40 readers that
    keep up, pushes are a small share of items x subscriptions, and every reader
    still gets every item once, in order."""
    from fastrpc import topics

    pushes = 0
    original = topics._Sub.push

    def counting(self: Any, *args: Any) -> None:
        nonlocal pushes
        pushes += 1
        original(self, *args)

    monkeypatch.setattr(topics._Sub, "push", counting)
    count, subs = 600, 40

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            peers = [await fastrpc.connect(server.url, **QUIET) for _ in range(subs)]
            subscriptions = [await p.subscribe("g").start() for p in peers]
            readers = [asyncio.ensure_future(take(s, count)) for s in subscriptions]
            await asyncio.sleep(0.05)  # the readers wait: their subscriptions join the group
            for i in range(count):
                await server.publish("g", i)
                if i % 50 == 0:
                    await asyncio.sleep(0.002)  # passes of ~50 items, written between them
            for r in readers:
                got = await asyncio.wait_for(r, 10)
                assert [e.value for e in got] == list(range(count))
                assert offsets(got) == list(range(1, count + 1))
            for p in peers:
                await p.close()

    run(main(), timeout=30)
    assert pushes < count * subs // 10, (pushes, count * subs)


@pytest.mark.parametrize("seed", range(4))
def test_subscriptions_coming_going_and_pausing_mid_feed_get_each_item_once(seed: int) -> None:
    """Subscriptions join the topic's group and leave it (a reader that pauses fills
    its stream; one that resumes catches up from its queue), mid-pass, while a
    publisher runs passes of random length: each ``block`` subscription gets every
    item from where it started exactly once and in order, a ``drop_oldest`` one
    accounts for every offset once (items and gaps), and a small ``queue_size`` one
    (never in the group) is exact too."""
    import random

    rnd = random.Random(seed)
    count = 1500
    pad = b"q" * 1024  # a stream's buffer takes ~64 of them: pausing readers fall behind

    async def reader(sub: fastrpc.Subscription, until_offset: int, pauses: bool) -> list[Any]:
        events: list[Any] = []
        async for ev in sub:
            events.append(ev)
            if ev.offset == until_offset or (isinstance(ev, Gap) and ev.last == until_offset):
                break
            if pauses and rnd.random() < 0.02:
                await asyncio.sleep(rnd.random() * 0.02)
        return events

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=64, **QUIET) as server:
            peers = [await fastrpc.connect(server.url, **QUIET) for _ in range(8)]
            started: list[tuple[str, asyncio.Future[list[Any]]]] = []

            async def subscribe(i: int) -> None:
                policy = "drop_oldest" if i % 4 == 3 else "block"
                size = 4 if i % 4 == 2 else None
                sub = await peers[i % len(peers)].subscribe("c", policy=policy, queue_size=size).start()
                started.append((policy, asyncio.ensure_future(reader(sub, count, pauses=i % 2 == 0))))

            for i in range(4):
                await subscribe(i)
            i = 0
            while i < count:
                burst = rnd.choice((1, 3, 17, 64, 200))
                for _ in range(min(burst, count - i)):
                    await server.publish("c", [i, pad])
                    i += 1
                if i < count and rnd.random() < 0.3 and len(started) < 12:
                    await subscribe(len(started))  # mid-feed: starts after the newest offset
                await asyncio.sleep(rnd.choice((0, 0, 0.001)))
            for policy, fut in started:
                events = await asyncio.wait_for(fut, 20)
                first = events[0].offset if isinstance(events[0], Item) else events[0].first
                seen: list[int] = []
                for e in events:
                    seen += [e.offset] if isinstance(e, Item) else list(range(e.first, e.last + 1))
                assert seen == list(range(first, count + 1)), policy
                if policy == "block":
                    assert all(isinstance(e, Item) for e in events)
                    assert [e.value[0] for e in events] == list(range(first - 1, count))
            for p in peers:
                await p.close()

    run(main(), timeout=60)


def test_an_epoch_change_in_mid_pass_ends_the_subscriptions_that_keep_up() -> None:
    """The broker's epoch changes while the topic's group holds this pass's items:
    each subscription ends with HistoryLost after an in-order prefix of the old
    epoch's items."""

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            peers = [await fastrpc.connect(server.url, **QUIET) for _ in range(3)]
            subs = [await p.subscribe("e").start() for p in peers]
            for i in range(5):
                await server.publish("e", i)
            await asyncio.sleep(0.05)  # passed: the readers wait, in the group
            for i in range(5, 8):
                await server.publish("e", i)
            server.topics.deliver("e", "another-epoch", 1, "new")  # same pass
            for sub in subs:
                got: list[int] = []
                with pytest.raises(fastrpc.HistoryLost, match="epoch changed"):
                    async for ev in sub:
                        got.append(ev.value)
                assert got == list(range(len(got))) and len(got) >= 5
            for p in peers:
                await p.close()

    run(main(), timeout=10)


def test_an_item_short_of_credit_on_the_direct_path_still_arrives() -> None:
    """The last item of a feed reaches a subscriber whose stream has credit for part
    of it only: the stream takes it on the direct path (no sender loop waits for this
    stream: it waits for the feed's next event), and the credit the subscriber grants
    once it reads the item before moves it on. It used to wait for the next item
    published, forever for the last one."""
    first, second = b"a" * 40_000, b"b" * 40_000

    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), **QUIET) as server:
            streams = fastrpc.StreamManager(initial_window=64 << 10)  # one item and a bit
            async with fastrpc.connect(server.url, streams=streams, **QUIET) as c:
                sub = await c.subscribe("big").start()
                await asyncio.sleep(0.05)  # the sender loop waits for an event: direct path
                await server.publish("big", first)
                await asyncio.sleep(0.05)  # sent, not read: 24 KiB of the window left
                await server.publish("big", second)
                got = await asyncio.wait_for(take(sub, 2), 5)
                assert [e.value for e in got] == [first, second]
                await sub.aclose()

    run(main(), timeout=15)


def test_latest_with_an_unhashable_key_value_breaks_nothing() -> None:
    # key="tags" whose values are lists: a `latest` subscription that falls behind
    # queues them as items without the key; the publisher, the loop and the other
    # subscribers never see the TypeError of hashing a list.
    pad = "x" * 16384
    n = 200

    async def main() -> None:
        loop_errors: list[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=8, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as bad, fastrpc.connect(server.url, **QUIET) as good:
                lagging = await bad.subscribe("t", policy="latest", key="tags").start()  # never read
                sub = await good.subscribe("t").start()
                reader = asyncio.ensure_future(take(sub, n))
                for i in range(n):
                    await server.publish("t", {"n": i, "tags": "a" if i % 2 else ["a"], "pad": pad})
                    await asyncio.sleep(0)
                got = await asyncio.wait_for(reader, 5)
                assert [e.value["n"] for e in got] == list(range(n))
                assert not loop_errors
                # The lagging subscription lives on, conflated: its last item is the newest.
                seen: list[int] = []
                while not seen or seen[-1] != n - 1:
                    ev = await asyncio.wait_for(lagging.__anext__(), 5)
                    if isinstance(ev, Item):
                        seen.append(ev.value["n"])
                assert len(seen) < n  # conflated (in the keys' order, not the offsets')
                await lagging.aclose()
                await sub.aclose()

    run(main())


@pytest.mark.parametrize("reading", [True, False])
def test_a_subscription_whose_fan_out_fails_ends_alone(monkeypatch: pytest.MonkeyPatch, reading: bool) -> None:
    # A failure on one subscription's path (its push, its pass's batch, its group
    # share) ends that subscription with SlowSubscriber; the subscriptions after it
    # in the same loop get every item, and the publisher does not see it.
    from fastrpc import topics

    def failing(name: str) -> None:
        orig = getattr(topics._Sub, name)

        def wrapper(self: Any, *args: Any) -> Any:
            if self.key == "boom":
                raise RuntimeError(f"boom in {name}")
            return orig(self, *args)

        monkeypatch.setattr(topics._Sub, name, wrapper)

    for name in ("push", "send", "_queue"):
        failing(name)
    n = 300

    async def main() -> None:
        loop_errors: list[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        async with fastrpc.serve(fastrpc.Router(), topic_queue_size=16, **QUIET) as server:
            clients = [await fastrpc.connect(server.url, **QUIET) for _ in range(5)]
            subs = []
            for i, c in enumerate(clients):
                subs.append(await c.subscribe("t", key="boom" if i in (1, 3) else None).start())
            readers = {i: asyncio.ensure_future(take(s, n)) for i, s in enumerate(subs) if i not in (1, 3)}
            if reading:
                await asyncio.sleep(0.05)  # the readers wait: the group carries the items
            for i in range(n):
                await server.publish("t", [i, "y" * 2048])
            for i in (1, 3):
                with pytest.raises(fastrpc.SlowSubscriber, match="the server failed to deliver"):
                    await asyncio.wait_for(take(subs[i], n), 5)
            for reader in readers.values():
                got = await asyncio.wait_for(reader, 5)
                assert [e.value[0] for e in got] == list(range(n))
            assert not loop_errors
            for c in clients:
                await c.close()

    run(main())


@pytest.mark.parametrize("path", ["push", "end_pass", "group"])
def test_fan_out_paths_end_only_the_failing_subscription(path: str) -> None:
    # The three loops of fan-out over the subscriptions of a topic: push (a batch at
    # the queue size), the pass's end (each batch) and the group's share. The stream
    # of the second of four subscriptions raises: that one ends, the ones after it
    # get every item, and neither the publisher nor the loop sees the error.
    from fastrpc import topics

    async def main() -> None:
        loop_errors: list[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        t = topics._Topic(4)
        t.epoch = "e"
        taken: list[list[int]] = [[] for _ in range(4)]

        def outlet(i: int) -> Any:
            def send_now(batch: list[Any]) -> int:
                if i == 1:
                    raise RuntimeError("the stream broke")
                taken[i].extend(env.value[1] for env in batch)
                return len(batch)

            return send_now

        subs = []
        for i in range(4):
            sub = topics._Sub(i, t, "block", None, 4, False)
            t.add(sub)
            sub.epoch = "e"
            sub.outlet = outlet(i)
            if path == "group":
                t.join(sub)
            subs.append(sub)
        n = 4 if path == "push" else 2  # push: the queue size in one pass sends at once
        for offset in range(1, n + 1):
            t.fan_out("e", offset, Encoded([0, offset, offset]), offset)
        await asyncio.sleep(0)  # the pass's end
        await asyncio.sleep(0)
        assert subs[1].end is not None and "the stream broke" in subs[1].end[1]
        assert [s.end for s in subs if s is not subs[1]] == [None, None, None]
        assert taken == [list(range(1, n + 1)), [], list(range(1, n + 1)), list(range(1, n + 1))]
        assert not loop_errors

    run(main())


def test_a_subscription_retries_a_failing_history_read() -> None:
    # A broker that fails a command or two (a Redis that just came back, a pool
    # under pressure): the subscription's first history read is retried like the
    # hub's others, instead of ending the subscription.
    class Flaky(MemoryBroker):
        failures = 2

        async def history(self, topic: str, after: int | None) -> Any:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("No connection available.")
            return await super().history(topic, after)

    async def main() -> None:
        broker = Flaky()
        async with fastrpc.serve(fastrpc.Router(), broker=broker, **QUIET) as server:
            epoch, _ = await server.publish("t", "old")
            async with fastrpc.connect(server.url, **QUIET) as c:
                sub = c.subscribe("t", since=(epoch, 0))
                got = await asyncio.wait_for(take(sub, 1), 5)
                assert [(e.offset, e.value) for e in got] == [(1, "old")] and broker.failures == 0
                await sub.aclose()

    run(main())
