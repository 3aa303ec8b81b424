"""Topics over real loopback connections, in-memory broker: publish/subscribe, resume
from an offset (exactly once, in order, or HistoryLost), the history window's size and
age, the slow-subscriber policies, one encoding per item for all subscribers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _util import QUIET, run, until

import fastrpc
from fastrpc.broker import MemoryBroker
from fastrpc.codec import PayloadCodec
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


def test_item_encoded_once_for_all_subscribers(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[Any] = []
    original = PayloadCodec.encode_value

    def counting(self: PayloadCodec, value: Any) -> bytes:
        if isinstance(value, list) and value and value[0] == 0:  # an item envelope
            encoded.append(value[1])
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
