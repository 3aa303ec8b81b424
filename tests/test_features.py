"""Past the seed: coalescing, flow control, priority, rate limits, compression,
fragmentation and keepalive, over real loopback connections."""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

import msgspec
import pytest
from _proxy import proxy
from _util import QUIET, pair, raw_client, run, server_peer, until

import fastrpc
from fastrpc import compression as C
from fastrpc import frames as F
from fastrpc.protocol import FRAME_CHARGE, Connection, Role, Settings


def _feed_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def feed(n: int, size: int):
        item = b"x" * size
        for _ in range(n):
            yield item

    @router.method
    async def slow() -> str:
        await asyncio.sleep(30)
        return "late"

    return router


def test_small_items_are_coalesced_into_few_messages() -> None:
    async def main() -> None:
        async with pair(_feed_router()) as (server, peer):
            n = 20_000
            got = [x async for x in peer.stream("feed", n, 16)]
            assert len(got) == n and got[0] == b"x" * 16
            sp = await server_peer(server)
            # Thousands of items share each WebSocket message.
            assert sp.core.traffic.messages_out < n / 50, sp.core.traffic.messages_out
            assert peer.core.traffic.messages_in < n / 50

    run(main(), 30)


@pytest.mark.parametrize("size", [16, 65536])
def test_credit_traffic_is_under_two_percent(size: int) -> None:
    async def main() -> None:
        async with pair(_feed_router()) as (server, peer):
            n = (16 << 20) // size if size > 16 else 100_000
            before_out = peer.core.traffic.bytes_out
            count = 0
            async for _ in peer.stream("feed", n, size):
                count += 1
            assert count == n
            sp = await server_peer(server)
            credit = peer.core.traffic.bytes_out - before_out
            data = sp.core.traffic.bytes_out
            assert credit / data < 0.02, (credit, data)

    run(main(), 60)


def test_scheduler_serves_urgency_first_and_round_robin_within_one() -> None:
    # Sans-I/O: queue bulk frames on two urgency-3 streams and one item on an
    # urgency-0 stream after them; the message takes the urgent one first, then
    # alternates between the two bulk streams.
    a, b = Connection(Role.CLIENT), Connection(Role.SERVER, Settings(max_message_size=4096, max_frame_size=1024))
    b.receive_message(a.next_message())
    a.receive_message(b.next_message())
    s1, s2, s3 = a.open_stream(), a.open_stream(), a.open_stream(urgency=0)
    for _ in range(3):
        a.send_item(s1, b"1" * 1000)
        a.send_item(s2, b"2" * 1000)
    a.send_item(s3, b"!")
    order = []
    while (msg := a.next_message()) is not None:
        order += [(f.id, bytes(f.payload)[:1]) for f in F.decode_message(msg)]
    assert order[0] == (s3, b"!")
    bulk = [fid for fid, _ in order[1:]]
    # Each stream's whole queue goes in one turn (it fits the message), and the two
    # streams take turns message by message.
    assert bulk.count(s1) == 3 and bulk.count(s2) == 3
    assert bulk[0] != bulk[-1]


def test_high_priority_stream_overtakes_a_saturating_bulk_stream() -> None:
    async def main() -> None:
        lat_urgent: list[float] = []

        async def handler(peer: fastrpc.RpcPeer) -> None:
            async def bulk():
                chunk = b"b" * 65536
                for _ in range(400):
                    yield chunk

            async def ticks():
                for _ in range(50):
                    await asyncio.sleep(0.002)
                    yield time.perf_counter()

            await peer.send_stream(bulk(), priority=7)
            await peer.send_stream(ticks(), priority=0)
            await peer.wait_closed()

        async with pair(handler) as (_, peer):
            (_, bulk_stream) = await peer.accept_stream()
            (_, urgent) = await peer.accept_stream()

            async def read_bulk() -> int:
                n = 0
                async for _ in bulk_stream:
                    n += 1
                return n

            reader = asyncio.ensure_future(read_bulk())
            async for sent in urgent:
                lat_urgent.append(time.perf_counter() - sent)
            assert await reader == 400
        assert len(lat_urgent) == 50

    run(main(), 60)


def test_rate_limit_holds_the_configured_rate() -> None:
    async def main() -> None:
        rate = 2000.0
        n = 1000

        async def handler(peer: fastrpc.RpcPeer) -> None:
            async def items():
                for i in range(n):
                    yield i

            await peer.send_stream(items(), rate=fastrpc.RateLimit(rate, burst=10))
            await peer.wait_closed()

        async with pair(handler) as (_, peer):
            _, stream = await peer.accept_stream()
            start = None
            count = 0
            async for _ in stream:
                if start is None:
                    start = time.perf_counter()
                count += 1
            elapsed = time.perf_counter() - start
        assert count == n
        expected = (n - 10) / rate  # the burst goes at once
        # Never faster than the limit (within clock granularity); slower only by load.
        assert elapsed >= expected * 0.97, (elapsed, expected)
        assert elapsed < expected * 2.0, (elapsed, expected)

    run(main(), 30)


def test_rate_limit_in_bytes_per_second() -> None:
    limit = fastrpc.RateLimit(1000, per="bytes", burst=100)
    delays = [limit.delay(100) for _ in range(5)]
    assert delays[0] == 0.0
    assert delays[-1] == pytest.approx(0.4, abs=0.05)


@pytest.mark.parametrize("algorithm", ["zlib", "zstd"])
def test_compression_is_negotiated_and_shrinks_payloads(algorithm: str) -> None:
    if algorithm == "zstd" and not C.available() & C.ZSTD:
        pytest.skip("zstandard not installed")

    async def main() -> None:
        opts = {"compression": algorithm, "compression_threshold": 512}
        async with pair(_feed_router(), server_opts=opts, client_opts=opts) as (server, peer):
            n = 200
            items = [x async for x in peer.stream("feed", n, 100_000)]
            assert items == [b"x" * 100_000] * n
            sp = await server_peer(server)
            assert sp.core.compression == (C.ZSTD if algorithm == "zstd" else C.ZLIB)
            # 20 MB of items crossed the wire in a small fraction of that.
            assert sp.core.traffic.bytes_out < n * 100_000 / 20

    run(main(), 30)


def test_no_compression_unless_both_sides_offer_it() -> None:
    async def main() -> None:
        async with pair(_feed_router(), server_opts={"compression": True}) as (server, peer):
            assert [len(x) async for x in peer.stream("feed", 3, 10_000)] == [10_000] * 3
            sp = await server_peer(server)
            assert sp.core.compression == 0

    run(main(), 10)


def test_decompression_bomb_fails_only_that_stream() -> None:
    # Compressed items are held as received (the window bounds them) and inflated as
    # they are read: a bomb costs its ~64 KiB until a reader inflates it, then fails
    # that stream (ProtocolError naming max_item_size; its sender gets STREAM_CLOSE).
    # The connection and the server go on.
    async def main() -> None:
        router = _feed_router()

        @router.method
        async def read_stream(sid: int) -> str:
            _, stream = fastrpc.current_peer().receive_stream(sid)
            try:
                async for _ in stream:
                    pass
            except fastrpc.ProtocolError as exc:
                return f"{exc.code.name}: {exc.reason}"
            return "no error"

        opts = {"compression": "zlib", "max_item_size": 1 << 20}
        async with pair(router, server_opts=opts, client_opts={"compression": "zlib"}) as (server, good):
            async with raw_client(server.url, Settings(compression=C.ZLIB)) as bad:
                bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB of zeros in ~64 KiB
                sid = 1
                await bad.send(F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN | F.FLAG_COMPRESSED, sid, bomb))
                m = b"read_stream"
                args = bad.core_payload((sid,))
                await bad.send(F.encode_frame(F.REQUEST, 0, 3, F.encode_varint(len(m)) + m + args))
                got: dict[int, Any] = {}
                while F.RESPONSE not in got:
                    for f in await bad.recv_frames():
                        got.setdefault(f.type, (f.id, bytes(f.payload)))
                assert got[F.STREAM_CLOSE][0] == sid  # the sender is told to stop
                answer = msgspec.msgpack.decode(got[F.RESPONSE][1])
                assert answer == "COMPRESSION_ERROR: an item inflates past max_item_size (1048576)", answer
            assert [len(x) async for x in good.stream("feed", 2, 10)] == [10, 10]

    run(main(), 30)


def test_large_items_are_fragmented_and_reassembled() -> None:
    async def main() -> None:
        opts = {"max_frame_size": 4096, "max_message_size": 16384}
        async with pair(_feed_router(), client_opts=opts) as (_, peer):
            items = [x async for x in peer.stream("feed", 5, 1_000_000)]
            assert items == [b"x" * 1_000_000] * 5

    run(main(), 30)


def test_item_over_max_item_size_is_a_limit_error() -> None:
    async def main() -> None:
        async with pair(_feed_router(), server_opts={"max_item_size": 100_000}) as (server, peer):
            async with raw_client(server.url) as bad:
                sid = 1
                # Fragments that add up past max_item_size.
                for i in range(3):
                    flags = F.FLAG_MORE | (F.FLAG_OPEN if i == 0 else 0)
                    await bad.send(F.encode_frame(F.STREAM_DATA, flags, sid, b"z" * 60_000))
                code, reason = await bad.drain()
                assert code == 1008 and "max_item_size" in reason, (code, reason)
            assert [len(x) async for x in peer.stream("feed", 2, 10)] == [10, 10]

    run(main(), 20)


def test_receive_window_grows_for_a_fast_consumer() -> None:
    async def main() -> None:
        streams = fastrpc.StreamManager(initial_window=64 << 10, max_window=2 << 20)
        async with pair(_feed_router(), client_opts={"streams": streams}) as (_, peer):
            stream = peer.stream("feed", 400, 65536)
            grown = 0
            async for _ in stream:
                s = peer.core.incoming(stream.stream_id)
                grown = max(grown, s.window_size if s is not None else 0)
            assert grown > 64 << 10

    run(main(), 30)


def test_unread_streams_hold_their_window_and_sequential_reads_finish() -> None:
    # Ten streams, nobody reading: each holds at most its window. Then reading them
    # one after the other completes: connection credit is returned on receipt, so a
    # reader waiting on one stream is not blocked by data parked on the others.
    async def main() -> None:
        window = 64 << 10

        async def handler(peer: fastrpc.RpcPeer) -> None:
            async def big():
                for _ in range(200):
                    yield b"y" * 8192

            for _ in range(10):
                await peer.send_stream(big())
            await peer.wait_closed()

        streams = fastrpc.StreamManager(initial_window=window)
        opts = {"connection_window": 256 << 10, "streams": streams}
        async with pair(handler, client_opts=opts) as (server, peer):
            sp = await server_peer(server)
            await until(lambda: len(peer.stats()["held"]) == 10, what="10 streams")

            def buffered() -> list[int]:
                return [peer.streams.stats(sid, outgoing=False).buffered for sid in peer.stats()["held"]]

            await until(lambda: sum(buffered()) >= 10 * (window - 8192 - FRAME_CHARGE), what="windows full")
            assert max(buffered()) <= window
            total = 0
            for _ in range(10):
                _, s = peer.receive_stream()
                async for _ in s:
                    total += 1
            assert total == 2000
            assert sp.core.pending_calls == 0

    run(main(), 60)


def test_keepalive_detects_a_dead_peer_and_cleans_up() -> None:
    async def main() -> None:
        async with fastrpc.serve(_feed_router(), "127.0.0.1", 0, **QUIET) as server:
            async with proxy(server.port) as px:
                peer = await fastrpc.connect(
                    px.url, keepalive_interval=0.05, keepalive_timeout=0.2, ws_ping_interval=None
                )
                call = asyncio.ensure_future(peer.call("slow"))
                await asyncio.sleep(0.05)
                px.stall()  # the peer goes silent, the socket stays open
                with pytest.raises(fastrpc.ConnectionClosed):
                    await asyncio.wait_for(call, 5)
                await asyncio.wait_for(peer.wait_closed(), 5)
                assert "keepalive" in peer.close_exception.reason
                px.unstall()

    run(main(), 20)
