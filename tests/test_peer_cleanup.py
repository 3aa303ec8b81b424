"""Cleanup when a connection goes away: iterators closed, streams and calls failed,
no tasks or memory left behind."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from _util import pair, run, server_peer, until

import fastrpc


class Watch:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.sent = 0

    async def forever(self) -> AsyncIterator[int]:
        try:
            self.started.set()
            while True:
                yield self.sent
                self.sent += 1
                await asyncio.sleep(0)
        finally:
            self.finished.set()


def make_router(server_watch: Watch, handler_done: asyncio.Event) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def forever() -> AsyncIterator[int]:
        async for x in server_watch.forever():
            yield x

    @router.method
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            handler_done.set()

    @router.method
    async def consume(sid: int) -> int:
        _, s = fastrpc.current_peer().receive_stream(sid)
        n = 0
        async for _ in s:
            n += 1
        return n

    @router.method
    async def ticks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    return router


async def drop(sp: fastrpc.RpcPeer, how: str) -> None:
    if how == "close":
        await sp.close()
    elif how == "drop":
        sp.transport.abort()  # no close handshake: the TCP connection just goes
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["close", "drop"])
def test_server_goes_away_mid_stream(how: str) -> None:
    async def main() -> None:
        server_watch, client_watch, handler_done = Watch(), Watch(), asyncio.Event()
        async with pair(make_router(server_watch, handler_done)) as (server, peer):
            sp = await server_peer(server)
            # An incoming stream (streaming call), an incoming send_stream, an outgoing
            # stream, and a pending call.
            incoming = peer.stream("forever")
            assert await incoming.__anext__() == 0
            other_watch = Watch()
            sid_in = await sp.send_stream(other_watch.forever())
            _, incoming2 = peer.receive_stream(sid_in)
            assert await incoming2.__anext__() == 0
            sid_out = await peer.send_stream(client_watch.forever())
            consumed = asyncio.ensure_future(peer.call("consume", sid_out))
            pending = asyncio.ensure_future(peer.call("slow"))
            unclaimed_claim = peer.receive_stream(peer.new_stream_id() + 1000)[1]
            accepting = asyncio.ensure_future(peer.accept_stream())
            await until(lambda: client_watch.sent > 5 and len(sp.stats()["peer.tasks"]) == 3, 5, "everything running")

            await drop(sp, how)

            with pytest.raises(fastrpc.ConnectionClosed):
                async for _ in incoming:
                    pass
            with pytest.raises(fastrpc.ConnectionClosed):
                async for _ in incoming2:
                    pass
            with pytest.raises(fastrpc.ConnectionClosed):
                await asyncio.wait_for(pending, 5)
            with pytest.raises(fastrpc.ConnectionClosed):
                await asyncio.wait_for(consumed, 5)
            with pytest.raises(fastrpc.ConnectionClosed):
                await asyncio.wait_for(accepting, 5)
            with pytest.raises(fastrpc.ConnectionClosed):
                await unclaimed_claim.__anext__()
            # Every sending generator on both sides ran its finally; every handler stopped.
            await asyncio.wait_for(client_watch.finished.wait(), 5)
            await asyncio.wait_for(server_watch.finished.wait(), 5)
            await asyncio.wait_for(other_watch.finished.wait(), 5)
            await asyncio.wait_for(handler_done.wait(), 5)
            await asyncio.wait_for(peer.wait_closed(), 5)
            await asyncio.wait_for(sp.wait_closed(), 5)
            assert peer.closed and isinstance(peer.close_exception, fastrpc.ConnectionClosed)
            assert not peer.stats()["senders"] and not sp.stats()["senders"]
            assert not peer.stats()["peer.calls"] and not sp.stats()["peer.tasks"]
            assert peer.streams.active_streams == 0 and sp.streams.active_streams == 0
            # New work fails at once.
            with pytest.raises(fastrpc.ConnectionClosed):
                await peer.call("slow")
            with pytest.raises(fastrpc.ConnectionClosed):
                await peer.send_stream(Watch().forever())
            with pytest.raises(fastrpc.ConnectionClosed):
                async for _ in peer.stream("ticks", 1):
                    pass
            with pytest.raises(fastrpc.ConnectionClosed):
                peer.receive_stream(None)
            with pytest.raises(fastrpc.ConnectionClosed):
                await peer.ping()

    run(main())


@pytest.mark.parametrize("how", ["close", "drop"])
def test_client_goes_away_mid_stream(how: str) -> None:
    async def main() -> None:
        server_watch, handler_done = Watch(), asyncio.Event()
        client_watch = Watch()
        async with pair(make_router(server_watch, handler_done)) as (server, peer):
            sp = await server_peer(server)
            incoming = peer.stream("forever")
            assert await incoming.__anext__() == 0
            sid_out = await peer.send_stream(client_watch.forever())
            consumed = asyncio.ensure_future(peer.call("consume", sid_out))
            pending = asyncio.ensure_future(peer.call("slow"))
            await until(lambda: client_watch.sent > 5 and len(sp.stats()["peer.tasks"]) == 3, 5, "everything running")

            await drop(peer, how)

            await asyncio.wait_for(server_watch.finished.wait(), 5)
            await asyncio.wait_for(handler_done.wait(), 5)
            await asyncio.wait_for(client_watch.finished.wait(), 5)
            await asyncio.wait_for(sp.wait_closed(), 5)
            await until(lambda: not server.peers, 5, "the server to forget the connection")
            assert not sp.stats()["peer.tasks"] and not sp.stats()["senders"] and sp.streams.active_streams == 0
            for fut in (consumed, pending):
                with pytest.raises(fastrpc.ConnectionClosed):
                    await fut

    run(main())


def test_server_shutdown_closes_connections() -> None:
    async def main() -> None:
        server_watch, handler_done = Watch(), asyncio.Event()
        server = await fastrpc.serve(
            make_router(server_watch, handler_done), "127.0.0.1", 0, keepalive_interval=None
        ).start()
        peers = [await fastrpc.connect(server.url, keepalive_interval=None) for _ in range(3)]
        streams = [p.stream("forever") for p in peers]
        for s in streams:
            await s.__anext__()
        await server.close()
        for p, s in zip(peers, streams):
            with pytest.raises(fastrpc.ConnectionClosed):
                async for _ in s:
                    pass
            await asyncio.wait_for(p.wait_closed(), 5)
            assert p.close_exception is not None
        await asyncio.wait_for(server_watch.finished.wait(), 5)
        for p in peers:
            await p.close()

    run(main())


def test_server_shutdown_delivers_the_answers_already_made() -> None:
    # server.close() closes each peer (GOAWAY, its queued output, then 1001) before
    # closing what is left: closing the transports first cut the answers of handlers
    # that had run off, for a client slow to read (it got ConnectionClosed).
    ran: list[int] = []
    router = fastrpc.Router()

    @router.method
    def big() -> bytes:
        ran.append(1)
        return b"x" * 900_000

    async def main() -> None:
        server = await fastrpc.serve(router, "127.0.0.1", 0, keepalive_interval=None).start()
        peer = await fastrpc.connect(server.url, keepalive_interval=None)
        calls = asyncio.gather(*(peer.call("big") for _ in range(20)), return_exceptions=True)
        await until(lambda: len(ran) == 20, 5, "the handlers to run")
        peer.transport.pause_reading()  # slow to read: answers wait in the server
        await asyncio.sleep(0.1)
        closing = asyncio.ensure_future(server.close())
        await asyncio.sleep(0.3)
        peer.transport.resume_reading()
        await asyncio.wait_for(closing, 10)
        answers = await asyncio.wait_for(calls, 10)
        assert [type(a) for a in answers] == [bytes] * 20, answers
        await asyncio.wait_for(peer.wait_closed(), 5)
        assert isinstance(peer.close_exception, fastrpc.ConnectionClosed) and peer.close_exception.code == 1001
        await peer.close()

    run(main(), 30)


def test_many_connect_stream_disconnect_cycles_leak_nothing() -> None:
    cycles = 1000
    warmup = 500

    async def main() -> None:
        server_watch, handler_done = Watch(), asyncio.Event()
        me = asyncio.current_task()
        async with fastrpc.serve(
            make_router(server_watch, handler_done), "127.0.0.1", 0, keepalive_interval=None
        ) as server:
            url = server.url
            baseline = len(asyncio.all_tasks())
            mem_at_warmup = 0
            peak_growth = 0
            start = time.monotonic()
            for i in range(cycles):
                async with fastrpc.connect(url, keepalive_interval=None) as peer:
                    got = [x async for x in peer.stream("ticks", 10)]
                    assert got == list(range(10))
                    # Leave a stream open on each side when disconnecting.
                    n = 0
                    async for _ in peer.stream("forever"):
                        n += 1
                        if n == 3:
                            break
                    w = Watch()
                    await peer.send_stream(w.forever())
                    if i % 2:
                        peer.transport.abort()
                await until(lambda: not server.peers, 5, "the server to forget the connection")
                if i == warmup - 1:
                    await until(lambda: len(asyncio.all_tasks()) <= baseline, 5, "tasks back to baseline")
                    gc.collect()
                    mem_at_warmup = tracemalloc.get_traced_memory()[0]
                elif i >= warmup and i % 100 == 99:
                    gc.collect()
                    peak_growth = max(peak_growth, tracemalloc.get_traced_memory()[0] - mem_at_warmup)
            await until(lambda: len(asyncio.all_tasks()) <= baseline, 5, "tasks back to baseline")
            left = [t for t in asyncio.all_tasks() if t is not me]
            assert len(asyncio.all_tasks()) == baseline, left
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - mem_at_warmup
            elapsed = time.monotonic() - start
            assert growth < 1 << 20, f"memory grew by {growth} bytes over the last {cycles - warmup} cycles"
            assert peak_growth < 1 << 20, peak_growth
            assert elapsed < 60, elapsed

    tracemalloc.start()
    try:
        run(main(), timeout=60)
    finally:
        tracemalloc.stop()
