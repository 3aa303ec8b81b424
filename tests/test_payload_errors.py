"""A payload the peer sent that does not decode with the connection's codec (garbage
MessagePack or JSON, nesting deeper than msgspec decodes, a number JSON cannot hold)
fails the one call or the one item it was for with :class:`fastrpc.PayloadError`
(the decoder's exception as its ``__cause__``), never msgspec's or Python's own
exception; the connection, the other calls and the stream's other items live on.

The hostile side is a WebSocket server of hand-built frames on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from _util import QUIET, frames_server, run
from websockets.asyncio.server import serve

import fastrpc
from fastrpc import frames as F
from fastrpc.calls import request_head
from fastrpc.protocol import Settings
from fastrpc.settings import CODEC_JSON, CODEC_MSGPACK
from fastrpc.topics import SUBSCRIBE

# What each codec cannot decode: (payload, the decoder's exception).
BAD: dict[str, dict[str, tuple[bytes, type[BaseException]]]] = {
    "msgpack": {
        "garbage": (b"\xc1", msgspec.DecodeError),  # a reserved opcode
        "truncated": (b"\x92\x01", msgspec.DecodeError),
        "deep": (b"\x91" * 100_000, RecursionError),
        "timestamp": (b"\xc7\x03\xff\x00\x00\x00", msgspec.ValidationError),  # not 4, 8 or 12 bytes
    },
    "json": {
        "garbage": (b"{", msgspec.DecodeError),
        "truncated": (b"[1,", msgspec.DecodeError),
        "deep": (b"[" * 100_000, RecursionError),
        "number": (b"1e400", msgspec.ValidationError),
    },
}
ENCODE = {"msgpack": msgspec.msgpack.encode, "json": msgspec.json.encode}
WIRE = {"msgpack": CODEC_MSGPACK, "json": CODEC_JSON}


def _data(sid: int, payload: bytes, first: bool = False) -> bytes:
    return F.encode_frame(F.STREAM_DATA, F.FLAG_OPEN if first else 0, sid, payload)


def _items(sid: int, payloads: list[bytes], first: bool = True, end: bool = True) -> bytes:
    """Items of stream ``sid`` in one message (``first``: it opens the stream; ``end``:
    and ends it)."""
    msg = b"".join(_data(sid, p, first and i == 0) for i, p in enumerate(payloads))
    return msg + F.encode_frame(F.STREAM_END, 0, sid, b"") if end else msg


@contextlib.asynccontextmanager
async def hostile(codec: str, **client: Any) -> AsyncIterator[fastrpc.RpcPeer]:
    """A client connected to a server of hand-built frames whose payloads are in
    ``codec`` (its HELLO says so). Its methods: ``ok`` answers 42; ``bad:<kind>``
    answers a payload of ``BAD[codec]`` that does not decode; ``items:<k>,<k>,...``
    streams, in one message, ``ok`` items (their index) and bad ones of these kinds,
    then ends the stream; after a ``|`` the rest waits for a call of ``more``, which
    sends it before its answer; ``fastrpc.subscribe`` (the built-in topic method)
    starts a subscription, then sends an event that does not decode and an item."""
    enc = ENCODE[codec]
    bad = BAD[codec]
    held: list[bytes] = []

    def item(i: int, kind: str) -> bytes:
        return enc(i) if kind == "ok" else bad[kind][0]

    async def answer(ws: Any, f: Any) -> None:
        method, _, _ = request_head(f, bool(f.flags & F.FLAG_DEADLINE))
        name, _, arg = method.partition(":")
        if name == "ok":
            await ws.send(F.encode_frame(F.RESPONSE, 0, f.id, enc(42)))
        elif name == "more":
            await ws.send(held.pop() + F.encode_frame(F.RESPONSE, 0, f.id, enc(42)))
        elif name == "bad":
            await ws.send(F.encode_frame(F.RESPONSE, 0, f.id, bad[arg][0]))
        elif name == "items":
            now, _, later = arg.partition("|")
            kinds = now.split(",")
            payloads = [item(i, k) for i, k in enumerate(kinds)]
            if later:
                rest = [item(i, k) for i, k in enumerate(later.split(","), len(kinds))]
                held.append(_items(f.id, rest, first=False))
            await ws.send(_items(f.id, payloads, end=not later))
        elif method == SUBSCRIBE:
            events = [enc([1, "e1", 0, False]), bad["garbage"][0], enc([0, 1, "late"])]
            await ws.send(_items(f.id, events, end=False))

    async def on_frame(ws: Any, f: F.Frame) -> None:
        if f.type == F.REQUEST:
            await answer(ws, f)

    async with serve(frames_server(Settings(codec=WIRE[codec]), on_frame), "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        async with fastrpc.connect(url, **{**QUIET, **client}) as peer:
            yield peer


def _check(exc: BaseException, cause: type[BaseException], *words: str) -> None:
    assert isinstance(exc, fastrpc.PayloadError), repr(exc)
    assert isinstance(exc, fastrpc.FastRPCError) and isinstance(exc, ValueError)
    assert isinstance(exc.__cause__, cause), repr(exc.__cause__)
    for w in words:
        assert w in str(exc), (w, str(exc))


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_an_answer_that_does_not_decode_fails_its_call_with_payload_error(codec: str) -> None:
    # Before: the call raised msgspec.DecodeError / ValidationError, or RecursionError.
    async def main() -> None:
        async with hostile(codec) as peer:
            for kind, (_, cause) in BAD[codec].items():
                with pytest.raises(fastrpc.FastRPCError) as info:
                    await peer.call(f"bad:{kind}")
                _check(info.value, cause, "answer", codec)
                with pytest.raises(fastrpc.PayloadError):  # with a timeout: the same
                    await peer.call(f"bad:{kind}", timeout=5)
            assert await peer.call("ok") == 42  # the connection lives on
            # Calls answered in one message: only the bad one fails.
            results = await asyncio.gather(
                peer.call("ok"), peer.call("bad:garbage"), peer.call("ok"), return_exceptions=True
            )
            assert results[0] == results[2] == 42
            assert isinstance(results[1], fastrpc.PayloadError), results
            assert not peer.closed

    run(main(), 20)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_an_item_that_does_not_decode_fails_that_read_and_the_stream_goes_on(codec: str) -> None:
    # Before: `async for` raised msgspec.DecodeError / RecursionError out of the stream.
    kinds = list(BAD[codec])

    async def main() -> None:
        async with hostile(codec) as peer:
            # Bad items first in the run, inside it, and last; two in a row.
            script = ["ok", kinds[0], "ok", kinds[2], kinds[1], "ok", *kinds[3:], "ok"]
            stream = peer.stream("items:" + ",".join(script))
            got: list[Any] = []
            while True:
                try:
                    got.append(await stream.__anext__())
                except StopAsyncIteration:
                    break
                except fastrpc.FastRPCError as exc:
                    _check(exc, BAD[codec][script[len(got)]][1], f"stream {stream.stream_id}", codec)
                    got.append(script[len(got)])
            assert got == [i if k == "ok" else k for i, k in enumerate(script)]
            assert stream.closed
            stream = peer.stream("items:" + ",".join([kinds[0], "ok"]))  # the first of its run
            with pytest.raises(fastrpc.PayloadError):
                await stream.__anext__()
            assert [x async for x in stream] == [1]
            assert await peer.call("ok") == 42

    run(main(), 20)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_get_many_nowait_hands_out_the_items_before_a_bad_one(codec: str) -> None:
    # get_many_nowait decodes what it takes: a bad item among them fails a read of its
    # own once the good items before it were handed out (none is lost), and the ones
    # after it come next. Here from the run the first read took.
    bad = next(iter(BAD[codec]))

    async def main() -> None:
        async with hostile(codec) as peer:
            stream = peer.stream("items:" + ",".join(["ok", "ok", "ok", bad, "ok", bad, bad, "ok"]))
            assert await stream.__anext__() == 0  # the rest of the message: its run
            assert stream.get_many_nowait() == [1, 2]
            with pytest.raises(fastrpc.PayloadError):
                stream.get_many_nowait()
            assert stream.get_many_nowait(1) == [4]
            with pytest.raises(fastrpc.PayloadError):
                stream.get_nowait()
            with pytest.raises(fastrpc.PayloadError):
                stream.get_many_nowait()
            assert stream.get_many_nowait() == [7]
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
            assert await peer.call("ok") == 42

    run(main(), 20)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_get_many_nowait_of_items_taken_from_the_core(codec: str) -> None:
    # As above, the items taken from the connection's core by get_many_nowait itself.
    bad = next(iter(BAD[codec]))

    async def main() -> None:
        async with hostile(codec) as peer:
            stream = peer.stream("items:ok|" + ",".join(["ok", "ok", bad, "ok", bad]))
            assert await stream.__anext__() == 0
            assert await peer.call("more") == 42  # the rest has arrived
            assert stream.get_many_nowait() == [1, 2]
            with pytest.raises(fastrpc.PayloadError):
                stream.get_many_nowait()
            assert stream.get_many_nowait() == [4]
            with pytest.raises(fastrpc.PayloadError):
                stream.get_many_nowait()
            assert [x async for x in stream] == []

            stream = peer.stream("items:ok|" + ",".join([bad, "ok", "ok"]))
            assert await stream.__anext__() == 0
            assert await peer.call("more") == 42
            with pytest.raises(fastrpc.PayloadError):
                stream.get_many_nowait()
            assert stream.get_many_nowait() == [2, 3]
            assert [x async for x in stream] == []

            stream = peer.stream("items:ok|" + ",".join([bad, "ok"]))
            assert await stream.__anext__() == 0
            assert await peer.call("more") == 42
            with pytest.raises(fastrpc.PayloadError):  # get_nowait from the core
                stream.get_nowait()
            assert stream.get_nowait() == 2
            assert [x async for x in stream] == []

    run(main(), 20)


def test_a_topic_event_that_does_not_decode_ends_the_subscription_with_payload_error() -> None:
    async def main() -> None:
        async with hostile("msgpack") as peer:
            sub = peer.subscribe("t")
            await sub.start()
            with pytest.raises(fastrpc.FastRPCError) as info:
                await sub.__anext__()
            _check(info.value, msgspec.DecodeError, "topic 't'")
            assert sub.position == ("e1", 0)  # to resubscribe from
            with pytest.raises(StopAsyncIteration):
                await sub.__anext__()
            assert await peer.call("ok") == 42

    run(main(), 20)
