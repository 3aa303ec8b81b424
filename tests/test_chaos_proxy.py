"""The chaos proxy itself (tests/_chaos.py): it parses WebSocket framing both ways,
forwards byte for byte, and its rules act where they say."""

from __future__ import annotations

import asyncio
from typing import Any

from _chaos import C2S, S2C, ChaosProxy, Link, Rule, WSParser
from _util import run
from websockets.frames import Frame, Opcode

import fastrpc
from fastrpc import frames as F

QUIET = {"keepalive_interval": None, "ws_ping_interval": None}
UPGRADE = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"


def test_parser_unmasks_and_reassembles_fragmented_messages_in_order() -> None:
    payload = F.encode_batch([(F.HELLO, 0, 0, b""), (F.RESUME, 0, 0, b"t" * 32 + b"\x05")]) * 300
    parts = [
        Frame(Opcode.BINARY, payload[:1000], fin=False),
        Frame(Opcode.PING, b"p"),  # a control frame inside the fragmented message
        Frame(Opcode.CONT, payload[1000:70_000], fin=False),  # a 64-bit length
        Frame(Opcode.CONT, payload[70_000:], fin=True),
        Frame(Opcode.PING, b"q"),  # one between messages
        Frame(Opcode.TEXT, b"{}"),
    ]
    wire = UPGRADE + b"".join(f.serialize(mask=True) for f in parts)
    for step in (1, 7, 4096, len(wire)):  # however the bytes arrive
        parser = WSParser()
        units = [u for i in range(0, len(wire), step) for u in parser.feed(wire[i : i + step])]
        assert b"".join(raw for raw, _, _ in units) == wire  # nothing lost, reordered or added
        assert [(op, len(data)) for _, op, data in units] == [(None, 0), (2, len(payload)), (9, 1), (1, 2)]
        assert units[1][2] == payload  # unmasked and reassembled
        assert F.decode_message(units[1][2], F.VARINT_MAX)[1].type == F.RESUME


def test_proxy_is_transparent_over_a_trickle_and_tracks_positions() -> None:
    async def main() -> None:
        router = fastrpc.Router()

        @router.method
        async def numbers(n: int):
            for i in range(n):
                yield [i, b"x" * 100]

        async with fastrpc.serve(router, "127.0.0.1", 0, resume=True, **QUIET) as server:
            link = Link(rate=2 << 20, chunk=(1, 100), seed=3)
            async with ChaosProxy(server.port, link=link) as px:
                async with fastrpc.connect(px.url, reconnect=fastrpc.RetryPolicy(), **QUIET) as peer:
                    got = [x[0] async for x in peer.stream("numbers", 2000)]
                    assert got == list(range(2000))
                assert px.new_sessions == 1 and px.resumes == 0 and not px.cuts
                # 2000 items, their end, and a REQUEST, CREDITs and ACKs the other way.
                assert px.delivered[S2C] >= 2001 and px.delivered[C2S] >= 1

    run(main(), 30)


def test_rule_cuts_before_the_message_and_replay_is_recognised() -> None:
    async def main() -> None:
        router = fastrpc.Router()

        @router.method
        async def numbers(n: int):
            for i in range(n):
                yield i

        async with fastrpc.serve(router, "127.0.0.1", 0, resume=True, **QUIET) as server:
            rules = [
                Rule("cut", "before", S2C, F.STREAM_DATA, conn=1, nth=3),
                # Not reset at once: a reset read with RESUME_OK hangs today's client
                # (issue 16, test_resume_chaos.py); this tests the proxy.
                Rule("partition", "after", S2C, "replay", conn=2, cut_after=0.05),
            ]
            async with ChaosProxy(server.port, rules=rules) as px:
                policy = fastrpc.RetryPolicy(initial_delay=0.01)
                async with fastrpc.connect(px.url, reconnect=policy, **QUIET) as peer:
                    got = [x async for x in peer.stream("numbers", 200_000)]
                    assert got == list(range(200_000))
                first, second = rules
                assert first.message is not None and first.message.conn == 1
                assert second.message is not None and second.message.replay and second.message.conn == 2
                # The message cut before it was delivered is replayed from its first frame:
                # the client's RESUME position is where the proxy's count stood.
                assert second.message.start == first.message.start
                assert [c for _, c, _ in px.cuts] == [1, 2] and px.resumes >= 2

    run(main(), 30)


def test_partition_forwards_nothing_and_closes_nothing() -> None:
    async def main() -> None:
        async with fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, **QUIET) as server:
            async with ChaosProxy(server.port) as px:
                async with fastrpc.connect(px.url, **QUIET) as peer:
                    await peer.ping(5)
                    px.partition()
                    try:
                        await peer.ping(0.3)
                    except asyncio.TimeoutError:
                        pass
                    else:
                        raise AssertionError("a PONG crossed a partition")
                    assert peer.connected and len(server.peers) == 1 and px.live == [1]
                    px.cut()  # both ends learn now (a close handshake would wait for its timeout)
                    await peer.wait_closed()

    run(main(), 30)


def test_a_cut_while_the_upstream_connection_is_made_resets_that_connection() -> None:
    # A cut that lands while the proxy is still connecting upstream found no transport
    # to reset: the connection was then forwarded, marked dead, and no later cut ever
    # reached it (test_random_cuts once saw 4 of its 20 cuts, and a 2.8 s "recovery").
    import _chaos

    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connecting = asyncio.Event()
        real = asyncio.open_connection

        async def slow_open(*args: Any, **kwargs: Any) -> Any:  # the proxy's, upstream
            connecting.set()
            await asyncio.sleep(0.1)  # the cut lands in here
            return await real(*args, **kwargs)

        _chaos.asyncio.open_connection = slow_open  # type: ignore[assignment]
        try:
            async with ChaosProxy(port) as px:
                reader, writer = await real("127.0.0.1", px.port)
                await asyncio.wait_for(connecting.wait(), 5)
                _chaos.asyncio.open_connection = real  # (the cut comes before it is used again)
                px.cut("while connecting")
                try:
                    got = await asyncio.wait_for(reader.read(100), 5)
                except ConnectionResetError:
                    got = b""  # reset: as good as EOF here
                assert got == b""  # not forwarded: the client sees its connection end
                assert [why for _, _, why in px.cuts] == ["while connecting"]
                writer.close()
        finally:
            _chaos.asyncio.open_connection = real  # type: ignore[assignment]
            for w in accepted:
                w.close()
            server.close()
            await server.wait_closed()

    run(main(), 10)
