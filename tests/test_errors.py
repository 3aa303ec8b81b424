"""Errors a user can act on (issue 12, point 5): each names its cause and what to use
instead. Real servers on 127.0.0.1 (fastrpc's, and plain WebSocket servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _util import QUIET, pair, run
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

import fastrpc


def router() -> fastrpc.Router:
    r = fastrpc.Router()

    @r.method
    async def ticks(n):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield i

    @r.method
    async def slow(delay):  # type: ignore[no-untyped-def]
        await asyncio.sleep(delay)
        return "late"

    @r.method
    def gen_result():  # type: ignore[no-untyped-def]
        return (i for i in range(3))

    @r.method
    def add(a, b):  # type: ignore[no-untyped-def]
        return a + b

    @r.method
    async def blob(size):  # type: ignore[no-untyped-def]
        yield b"a" * 10
        yield b"b" * size

    return r


def test_call_on_a_streaming_method_says_use_stream() -> None:
    async def main() -> None:
        async with pair(router()) as (_, peer):
            with pytest.raises(fastrpc.InvalidCall) as info:
                await peer.call("ticks", 3)
            assert "'ticks' is a streaming method" in str(info.value)
            assert "peer.stream('ticks', ...)" in str(info.value)
            assert [x async for x in peer.stream("ticks", 3)] == [0, 1, 2]  # as told

    run(main())


def test_sync_generator_handler_is_refused_at_registration() -> None:
    r = fastrpc.Router()

    def numbers(n):  # type: ignore[no-untyped-def]
        yield from range(n)

    with pytest.raises(fastrpc.UsageError, match=r"async generator \(async def numbers\(\.\.\.\): \.\.\. yield item\)"):
        r.add("numbers", numbers)
    with pytest.raises(TypeError):  # a UsageError is a TypeError too
        r.method(numbers)
    assert "numbers" not in r.methods


def test_a_handler_returning_a_generator_says_what_to_write() -> None:
    async def main() -> None:
        async with pair(router()) as (_, peer):
            with pytest.raises(fastrpc.RemoteError, match="cannot encode a generator: a handler that streams must be"):
                await peer.call("gen_result")

    run(main())


def test_wrong_number_of_arguments_is_invalid_arguments() -> None:
    async def main() -> None:
        async with pair(router()) as (_, peer):
            with pytest.raises(fastrpc.InvalidArguments, match=r"add\(\): missing a required argument: 'b'"):
                await peer.call("add", 1)
            with pytest.raises(fastrpc.InvalidArguments, match="unexpected keyword argument 'c'"):
                await peer.call("add", 1, 2, c=3)
            with pytest.raises(fastrpc.MethodNotFound, match="no method 'nope'"):
                await peer.call("nope")

    run(main())


async def _echo(ws: ServerConnection) -> None:
    async for msg in ws:
        await ws.send(msg)


def test_client_pointed_at_an_echo_server_says_it_does_not_speak_fastrpc() -> None:
    async def main() -> None:
        async with ws_serve(_echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(fastrpc.NotFastRPC) as info:
                await fastrpc.connect(f"ws://127.0.0.1:{port}", **QUIET)
            text = str(info.value)
            assert "does not speak fastrpc" in text and "echo server" in text, text
            assert isinstance(info.value, fastrpc.ConnectionClosed)

    run(main())


def test_client_pointed_at_a_text_server_says_it_does_not_speak_fastrpc() -> None:
    async def hello_text(ws: ServerConnection) -> None:
        await ws.send('{"hello": "world"}')
        await ws.wait_closed()

    async def main() -> None:
        async with ws_serve(hello_text, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(fastrpc.NotFastRPC, match="text message on a fastrpc connection"):
                await fastrpc.connect(f"ws://127.0.0.1:{port}", **QUIET)

    run(main())


def test_silent_server_raises_handshake_timeout_with_a_message() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async def main() -> None:
        async with ws_serve(silent, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(fastrpc.HandshakeTimeout) as info:
                await fastrpc.connect(f"ws://127.0.0.1:{port}", handshake_timeout=0.3, **QUIET)
            assert "sent no fastrpc handshake within 0.3 s (handshake_timeout)" in str(info.value)
            assert isinstance(info.value, asyncio.TimeoutError)

    run(main())


def test_call_timeout_says_which_call_and_which_option() -> None:
    async def main() -> None:
        async with pair(router()) as (_, peer):
            with pytest.raises(fastrpc.CallTimeout) as info:
                await peer.call("slow", 5, timeout=0.05)
            assert str(info.value).startswith("call to 'slow' got no answer within 0.05 s (its timeout= argument)")
            assert isinstance(info.value, asyncio.TimeoutError)
            assert await peer.call("add", 1, 2) == 3

    run(main())


def test_too_large_call_names_the_option_and_the_alternative() -> None:
    async def main() -> None:
        async with pair(router()) as (_, peer):
            with pytest.raises(fastrpc.PayloadTooLarge) as info:
                await peer.call("add", b"x" * (2 << 20), b"")
            text = str(info.value)
            assert "call to 'add': arguments of" in text
            assert "max_frame_size" in text and "send large data as a stream" in text, text
            assert await peer.call("add", 1, 2) == 3

    run(main())


def test_stream_item_over_the_callers_max_item_size_fails_that_stream_only() -> None:
    async def main() -> None:
        async with pair(router(), client_opts={"max_item_size": 1 << 16}) as (_, peer):
            got: list[Any] = []
            with pytest.raises(fastrpc.RemoteStreamError) as info:
                async for item in peer.stream("blob", 1 << 17):
                    got.append(item)
            assert got == [b"a" * 10]
            assert info.value.type_name == "PayloadTooLarge"
            assert "exceeds the receiver's max_item_size of 65536 bytes" in info.value.message
            assert not peer.closed and await peer.call("add", 1, 2) == 3

    run(main())


def test_send_stream_item_too_large_is_raised_in_the_generator() -> None:
    caught: list[str] = []

    async def source() -> AsyncIterator[bytes]:
        try:
            yield b"y" * (1 << 17)
        except fastrpc.PayloadTooLarge as e:
            caught.append(str(e))
        yield b"small"  # the generator may go on after a refused item

    async def main() -> None:
        r = fastrpc.Router()
        async with pair(r, server_opts={"max_item_size": 1 << 16}) as (server, peer):
            sid = await peer.send_stream(source())
            sp = next(iter(server.peers))
            _, stream = sp.receive_stream(sid)
            assert [x async for x in stream] == [b"small"]
        assert caught and "max_item_size of 65536 bytes" in caught[0]

    run(main())
