"""Compression, payload decoding and HELLO settings against a peer we do not trust:
zstd windows bounded by our own limits, no byte after the end of a compressed item
(dropped silently, or smuggled), a compressed item whose decoded objects would be far
larger than its bytes, and a HELLO padded with unknown settings. Unit checks of
``compression.decompress`` and ``Settings.from_wire``, then the same over real
loopback connections (each test bounded by ``run``'s timeout)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from _util import NO_PROXY, QUIET, pair, raw_client, recv_binary, run
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed as WSClosed

import fastrpc
from fastrpc import compression as C
from fastrpc import frames as F
from fastrpc.exceptions import ErrorCode, LimitExceeded, NotFastRPC, ProtocolError
from fastrpc.protocol import FLAG_RAW, Connection, Role, Settings
from fastrpc.settings import MAX_HELLO_SIZE

KiB = 1 << 10
MiB = 1 << 20
ALGORITHMS = [pytest.param(C.ZLIB, id="zlib"), pytest.param(C.ZSTD, id="zstd")]


def _zstd() -> Any:
    return pytest.importorskip("zstandard")


def _need(algorithm: int) -> None:
    if algorithm == C.ZSTD:
        _zstd()


def _compressed(algorithm: int, data: bytes) -> bytes:
    return C.Compressor(algorithm).compress(data)


def _refused(algorithm: int, data: bytes, max_size: int, *words: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        C.decompress(algorithm, data, max_size)
    err = info.value
    assert err.code == ErrorCode.COMPRESSION_ERROR, (err.code, err.reason)
    for word in words:
        assert word in err.reason, err.reason
    return err


# ---------------------------------------------------------------- zstd windows


def _wide_window_frame(data: bytes, window_log: int = 27) -> bytes:
    """A zstd frame of ``data`` with no content size that declares a window of
    2**window_log bytes (what a streaming encoder may send)."""
    zstd = _zstd()
    params = zstd.ZstdCompressionParameters.from_level(3, window_log=window_log)
    obj = zstd.ZstdCompressor(compression_params=params).compressobj()
    frame: bytes = obj.compress(data) + obj.flush()
    assert zstd.get_frame_parameters(frame).window_size == 1 << window_log
    assert zstd.frame_content_size(frame) == -1
    return frame


def test_a_zstd_window_past_max_item_size_is_refused() -> None:
    # A frame may ask its decoder to keep a window of up to 128 MiB (zstandard's
    # default limit), whatever max_item_size says: 100 bytes of data in a frame that
    # declares 128 MiB were decoded with that window. Now the window is bounded by
    # max_item_size (rounded up to a power of two), or 8 MiB where that is more (what
    # RFC 8878 asks every decoder to accept), before anything is decoded.
    frame = _wide_window_frame(b"x" * 100)
    _refused(C.ZSTD, frame, MiB, "window", "134217728", "max_item_size")
    _refused(C.ZSTD, _wide_window_frame(b"x" * 100, 24), MiB, "window", "16777216", "8 MiB")
    assert C.window_limit(MiB) == 8 * MiB and C.window_limit(16 * MiB) == 16 * MiB
    # A window within the bound decodes (8 MiB: a streaming encoder's default at its
    # higher levels), as does what our own compressor sends (a frame with its content
    # size, its window no larger than that).
    assert C.decompress(C.ZSTD, _wide_window_frame(b"y" * 100, 23), MiB) == b"y" * 100
    assert C.decompress(C.ZSTD, _wide_window_frame(b"y" * 100, 20), MiB - 1) == b"y" * 100
    data = bytes(range(256)) * (4 * KiB)  # 1 MiB
    assert C.decompress(C.ZSTD, _compressed(C.ZSTD, data), MiB) == data


def test_zstd_content_past_max_item_size_is_refused_from_its_header() -> None:
    # A frame that names its content size past the limit is refused from the header,
    # without inflating anything; one without a content size stops at the limit.
    zstd = _zstd()
    frame = _compressed(C.ZSTD, bytes(4 * MiB))
    assert zstd.frame_content_size(frame) == 4 * MiB
    _refused(C.ZSTD, frame, 64 * KiB, "inflates past max_item_size (65536)")
    obj = zstd.ZstdCompressor().compressobj()
    streamed = obj.compress(bytes(4 * MiB)) + obj.flush()
    _refused(C.ZSTD, streamed, 4 * MiB - 1, "inflates past max_item_size")
    assert C.decompress(C.ZSTD, streamed, 4 * MiB) == bytes(4 * MiB)


# ---------------------------------------------------------------- trailing data


def _trailers(algorithm: int) -> list[bytes]:
    """What may follow a whole compressed payload: junk, a second one, and for zstd
    a skippable frame."""
    whole = _compressed(algorithm, b"second" * 300)
    out = [b"junk", b"\0", whole]
    if algorithm == C.ZSTD:
        out.append((0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"abcd")
    return out


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bytes_after_the_end_of_a_compressed_item_are_refused(algorithm: int) -> None:
    # zlib and zstd stop at the end of their compressed data: bytes after it were
    # dropped without a word (data lost silently, or smuggled past whatever checks
    # the inflated item). They are a COMPRESSION_ERROR now.
    _need(algorithm)
    item = b"first" * 300
    whole = _compressed(algorithm, item)
    assert C.decompress(algorithm, whole, MiB) == item
    for trailer in _trailers(algorithm):
        _refused(algorithm, whole + trailer, MiB, f"{len(trailer)} bytes after the end")
    if algorithm == C.ZSTD:  # an empty frame (0 bytes of content) then junk
        zstd = _zstd()
        empty = zstd.ZstdCompressor().compress(b"")
        assert C.decompress(C.ZSTD, empty, MiB) == b""
        _refused(C.ZSTD, empty + b"junk", MiB, "4 bytes after the end")
        obj = zstd.ZstdCompressor().compressobj()
        _refused(C.ZSTD, obj.flush() + b"junk", MiB, "4 bytes after the end")
    # And a truncated payload is still refused.
    _refused(algorithm, whole[:-3], MiB, "compressed payload")


# ---------------------------------------------------------------- over a connection


def _reader_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def read_stream(sid: int) -> Any:
        """Read stream ``sid`` to its end: its items' sizes, or the error that ended it."""
        _, stream = fastrpc.current_peer().receive_stream(sid)
        sizes = []
        try:
            async for item in stream:
                sizes.append(len(item))
        except fastrpc.ProtocolError as exc:
            return f"{exc.code.name}: {exc.reason}"
        return sizes

    @router.method
    def echo(x: Any) -> Any:
        return x

    return router


def _opt(algorithm: int) -> str:
    return "zstd" if algorithm == C.ZSTD else "zlib"


async def _send_compressed(
    url: str, algorithm: int, payloads: list[tuple[bytes, int]], check: Callable[[Any], None]
) -> None:
    """A raw client sends the items ``(payload, flags)`` (flags with COMPRESSED added)
    on a stream and ends it, asks the server to read it, and passes the answer to
    ``check``."""
    async with raw_client(url, Settings(compression=algorithm)) as bad:
        sid, call_id = 1, 3
        flags = F.FLAG_OPEN
        for payload, kind in payloads:
            await bad.send(F.encode_frame(F.STREAM_DATA, flags | F.FLAG_COMPRESSED | kind, sid, payload))
            flags = 0
        await bad.send(F.encode_frame(F.STREAM_END, 0, sid))
        m = b"read_stream"
        args = bad.core_payload((sid,))
        await bad.send(F.encode_frame(F.REQUEST, 0, call_id, F.encode_varint(len(m)) + m + args))
        answer: Any = None
        while answer is None:
            for f in await bad.recv_frames():
                if f.type == F.RESPONSE and f.id == call_id:
                    answer = msgspec.msgpack.decode(bytes(f.payload))
        check(answer)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_compressed_item_with_trailing_bytes_fails_its_stream_only(algorithm: int) -> None:
    # Over a connection: an item with bytes after its compressed data fails that
    # stream with COMPRESSION_ERROR (it read as the item alone, the rest dropped);
    # the connection and the other clients go on.
    _need(algorithm)
    item = b"first" * 300
    whole = _compressed(algorithm, item)

    def refused(answer: Any) -> None:
        assert isinstance(answer, str) and answer.startswith("COMPRESSION_ERROR: "), answer
        assert "4 bytes after the end" in answer, answer

    def whole_item(answer: Any) -> None:
        assert answer == [len(item)], answer

    async def main() -> None:
        opts = {"compression": _opt(algorithm)}
        async with pair(_reader_router(), server_opts=opts, client_opts=opts) as (server, good):
            await _send_compressed(server.url, algorithm, [(whole, FLAG_RAW)], whole_item)
            await _send_compressed(server.url, algorithm, [(whole + b"junk", FLAG_RAW)], refused)
            assert await good.call("echo", 5) == 5

    run(main(), 20)


def test_a_wide_zstd_window_fails_its_stream_only() -> None:
    # Over a connection: a zstd item declaring a 128 MiB window, to a side whose
    # max_item_size is 1 MiB, fails that stream (COMPRESSION_ERROR naming the window
    # and max_item_size), not the connection.
    frame = _wide_window_frame(b"x" * 2000)

    def refused(answer: Any) -> None:
        assert isinstance(answer, str) and answer.startswith("COMPRESSION_ERROR: "), answer
        assert "window" in answer and "max_item_size (1048576)" in answer, answer

    async def main() -> None:
        opts = {"compression": "zstd", "max_item_size": MiB}
        async with pair(_reader_router(), server_opts=opts, client_opts={"compression": "zstd"}) as (server, good):
            await _send_compressed(server.url, C.ZSTD, [(frame, FLAG_RAW)], refused)
            assert await good.call("echo", 5) == 5

    run(main(), 20)


# ---------------------------------------------------------------- decoded cost


def _nested_lists(n: int) -> bytes:
    """MessagePack of a list of ``n`` empty lists: 1 byte each on the wire, a list
    object each (~56 bytes and more) once decoded; a few hundred bytes compressed."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_compressed_item_decoding_past_max_connection_memory_fails_its_stream(algorithm: int) -> None:
    # A ~1 KiB compressed item inflates to 1 MiB (within max_item_size) of [[], [], ...],
    # which decodes to ~1M list objects (~60 MiB): 60,000 times its wire size, charged
    # nowhere. Its decoded cost (frames.payload_cost, as for call arguments) is bounded
    # by max_connection_memory now: that stream fails with COMPRESSION_ERROR naming the
    # option; the connection goes on. A raw item (bytes) is not decoded: not refused.
    _need(algorithm)
    n = MiB - 5
    bomb = _compressed(algorithm, _nested_lists(n))
    assert len(bomb) < 8 * KiB
    # (Well within the stream's 256 KiB window however well each zstandard compresses it.)
    fine = _compressed(algorithm, msgspec.msgpack.encode(list(range(10_000))))

    def refused(answer: Any) -> None:
        assert isinstance(answer, str) and answer.startswith("COMPRESSION_ERROR: "), answer
        assert "max_connection_memory (4194304)" in answer, answer

    def read_raw(answer: Any) -> None:
        assert answer == [n + 5, 10_000], answer

    def read_fine(answer: Any) -> None:
        assert answer == [10_000], answer

    async def main() -> None:
        opts = {"compression": _opt(algorithm), "max_item_size": 2 * MiB, "max_connection_memory": 4 * MiB}
        async with pair(_reader_router(), server_opts=opts, client_opts={"compression": _opt(algorithm)}) as (
            server,
            good,
        ):
            await _send_compressed(server.url, algorithm, [(bomb, 0)], refused)
            await _send_compressed(server.url, algorithm, [(bomb, FLAG_RAW), (fine, 0)], read_raw)
            await _send_compressed(server.url, algorithm, [(fine, 0)], read_fine)
            assert await good.call("echo", 5) == 5

    run(main(), 20)


# ---------------------------------------------------------------- HELLO


def _padded_hello(size: int, settings: Settings | None = None) -> bytes:
    """A HELLO payload of ``settings`` then unknown keys (4-byte varints, distinct,
    value 1): at most ``size`` bytes, and less than 5 short of it."""
    payload = bytearray((settings or Settings()).to_wire())
    key = 1 << 14
    while len(payload) + 5 <= size:
        payload += F.encode_varint(key) + b"\x01"
        key += 1
    return bytes(payload)


def test_a_hello_padded_with_unknown_settings_is_refused() -> None:
    # Unknown settings are ignored, but each was decoded into a dict first: a 1 MiB
    # HELLO (the default max_frame_size) of 4-byte keys made ~200,000 entries, ~20 MiB
    # for a moment, per connection, before a single check. A HELLO is bounded by
    # MAX_HELLO_SIZE now (4 KiB: 40 times today's largest), before anything is decoded.
    ok = _padded_hello(MAX_HELLO_SIZE)
    assert Settings.from_wire(ok) == Settings()  # unknown keys still ignored
    for payload in (ok + F.encode_varint(1 << 20) + b"\x01", _padded_hello(MiB)):
        assert len(payload) > MAX_HELLO_SIZE
        with pytest.raises(LimitExceeded) as info:
            Settings.from_wire(payload)
        assert "HELLO" in info.value.reason and "4096" in info.value.reason, info.value.reason
        assert info.value.code == ErrorCode.LIMIT_EXCEEDED
    # A client reads the server's HELLO bounded too (it looks for key 11 first).
    client = Connection(Role.CLIENT, Settings())
    client.next_message()
    big = F.encode_frame(F.HELLO, 0, 0, _padded_hello(MiB // 2))
    with pytest.raises(LimitExceeded, match="HELLO"):
        client.receive_message(big)


def test_a_server_refuses_a_padded_hello() -> None:
    # Over a connection: a client's HELLO padded to ~512 KiB with unknown settings
    # is refused (GOAWAY LIMIT_EXCEEDED, close 1008, the reason naming the bound);
    # other clients go on.
    async def main() -> None:
        async with pair(_reader_router()) as (server, good):
            ws = await ws_connect(server.url, compression=None, max_size=None, ping_interval=None, **NO_PROXY)
            try:
                await ws.send(F.encode_frame(F.HELLO, 0, 0, _padded_hello(512 * KiB)))
                with pytest.raises(WSClosed):  # read until the server closes
                    while True:
                        await recv_binary(ws, 5)
                rcvd = ws.protocol.close_rcvd
                assert rcvd is not None and rcvd.code == 1008, rcvd
                assert "HELLO" in rcvd.reason and "4096" in rcvd.reason, rcvd.reason
            finally:
                await ws.close()
            assert await good.call("echo", 5) == 5

    run(main(), 20)


def test_a_client_refuses_a_padded_hello() -> None:
    # A server whose HELLO is padded with unknown settings: connect fails naming the
    # bound (NotFastRPC, as for any broken handshake), instead of decoding them all.
    async def handler(ws: Any) -> None:
        await ws.recv()
        await ws.send(F.encode_frame(F.HELLO, 0, 0, _padded_hello(512 * KiB, Settings())))
        await ws.wait_closed()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as srv:
            url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
            with pytest.raises(NotFastRPC, match="a HELLO of 524285 bytes, over the 4096"):
                async with fastrpc.connect(url, **QUIET):
                    pass

    run(main(), 20)
