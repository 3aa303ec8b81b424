"""How a handler's failures are answered (review of the call path): exceptions with
codes the wire cannot carry, or that cannot describe themselves; a sync handler's own
CancelledError; an async handler's own TimeoutError; a raising ``authorize`` hook;
raw bytes and keyword arguments checked against the annotations like any other;
notifications with bad arguments; truncated zstd payloads. Real connections over
127.0.0.1 (each test bounded by ``run``'s timeout)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from typing import Any

import pytest
from _util import pair, run, until

import fastrpc
import fastrpc.log
from fastrpc import compression as C
from fastrpc.calls import decode_error, encode_error
from fastrpc.frames import VARINT_MAX


@pytest.fixture(autouse=True)
def fresh_warning_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a fresh rate limit for peer-caused warnings."""
    monkeypatch.setattr(fastrpc.log, "_windows", {})


def server_records(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fastrpc.server" and (level is None or r.levelno == level)]


class JsonRpcError(Exception):
    code = -32602  # JSON-RPC's "Invalid params": no varint


class Coded(Exception):
    code = 7


class Mute(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words")


def failing_router() -> fastrpc.Router:
    r = fastrpc.Router()

    @r.method
    def sync_negative():  # type: ignore[no-untyped-def]
        raise JsonRpcError("invalid params")

    @r.method
    async def async_negative():  # type: ignore[no-untyped-def]
        raise JsonRpcError("invalid params")

    @r.method
    async def async_coded():  # type: ignore[no-untyped-def]
        raise Coded("seven")

    @r.method
    def sync_mute():  # type: ignore[no-untyped-def]
        raise Mute()

    @r.method
    async def async_mute():  # type: ignore[no-untyped-def]
        raise Mute()

    @r.method
    def reads_cancelled_future():  # type: ignore[no-untyped-def]
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()
        return fut.result()  # raises CancelledError: the handler's own, nobody cancelled it

    @r.method
    async def own_timeout():  # type: ignore[no-untyped-def]
        raise TimeoutError("database did not answer")

    @r.method
    async def slow(delay):  # type: ignore[no-untyped-def]
        await asyncio.sleep(delay)
        return "late"

    @r.method
    def add(a, b):  # type: ignore[no-untyped-def]
        return a + b

    return r


def test_error_codes_the_wire_cannot_carry_are_left_out() -> None:
    async def main() -> None:
        async with pair(failing_router()) as (_, peer):
            for method in ("async_negative", "sync_negative"):
                for opts in ({}, {"timeout": 5}):  # the call lane, and on_request's path
                    with pytest.raises(fastrpc.RemoteError) as info:
                        await asyncio.wait_for(peer.call(method, **opts), 5)
                    assert (info.value.type_name, info.value.message, info.value.code) == (
                        "JsonRpcError",
                        "invalid params",
                        None,
                    )
                    assert await peer.call("add", 1, 2) == 3  # the connection goes on
            with pytest.raises(fastrpc.RemoteError) as info:
                await peer.call("async_coded")
            assert info.value.code == 7  # a code that fits still travels
            assert not peer.closed

    run(main())
    # encode_error itself never fails on a code: out of range, the code is left out.
    for code in (-1, -32602, VARINT_MAX, VARINT_MAX + 1, 1 << 80):
        assert decode_error(encode_error("E", "m", code)).code is None
    assert decode_error(encode_error("E", "m", VARINT_MAX - 1)).code == VARINT_MAX - 1


def test_an_exception_that_cannot_describe_itself_is_still_answered() -> None:
    async def main() -> None:
        async with pair(failing_router()) as (_, peer):
            for method in ("async_mute", "sync_mute"):
                for opts in ({}, {"timeout": 5}):
                    with pytest.raises(fastrpc.RemoteError) as info:
                        await asyncio.wait_for(peer.call(method, **opts), 5)
                    assert info.value.type_name == "Mute"
                    assert "could not be described" in info.value.message
            assert await peer.call("add", 1, 2) == 3
            assert not peer.closed

    run(main())


def test_a_sync_handlers_own_cancelled_error_answers_that_call_only() -> None:
    async def main() -> None:
        async with pair(failing_router()) as (_, peer):
            for opts in ({}, {"timeout": 5}):  # the call lane, and on_request's path
                with pytest.raises(fastrpc.RemoteError) as info:
                    await asyncio.wait_for(peer.call("reads_cancelled_future", **opts), 5)
                assert info.value.type_name == "CancelledError"
                assert await peer.call("add", 1, 2) == 3
            # A notification's handler too: nobody to answer, the connection goes on.
            peer.notify("reads_cancelled_future")
            assert await peer.call("add", 2, 3) == 5
            assert not peer.closed

    run(main())


def test_an_async_handlers_own_timeout_error_is_its_error_not_the_callers_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with pair(failing_router()) as (_, peer):
            for opts in ({}, {"timeout": 30}):
                caplog.clear()
                with pytest.raises(fastrpc.RemoteError) as info:
                    await peer.call("own_timeout", **opts)
                assert (info.value.type_name, info.value.message) == ("TimeoutError", "database did not answer")
                # Logged as any handler's exception.
                await until(lambda: server_records(caplog, logging.ERROR), what="the handler's error logged")
            # The caller's timeout is still told as such.
            assert await peer.call("slow", 0, timeout=30) == "late"

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main())


def test_a_raising_authorize_hook_is_permission_denied_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def authorize(peer: Any, method: str) -> bool:
        return bool(peer.identity["roles"]["admin"])  # identity is None: TypeError

    r = fastrpc.Router(authorize=authorize)

    @r.method
    def add(a, b):  # type: ignore[no-untyped-def]
        return a + b

    async def main() -> None:
        async with pair(r) as (_, peer):
            for args in ((1, 2), (b"raw",)):
                with pytest.raises(fastrpc.PermissionDenied) as info:
                    await peer.call("add", *args)
                assert "NoneType" not in info.value.message  # nothing of the server's internals
                assert info.value.message == "not allowed to call 'add'"
            await until(lambda: server_records(caplog, logging.WARNING), what="the hook's failure logged")
            logged = " ".join(rec.getMessage() for rec in server_records(caplog, logging.WARNING))
            assert "authorize hook raised for 'add'" in logged and "TypeError" in logged

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main())


def typed_router() -> fastrpc.Router:
    r = fastrpc.Router()

    @r.method
    def double(x: int) -> str:
        return f"{type(x).__name__}: {x * 2!r}"

    @r.method
    async def double_async(x: int) -> str:
        return f"{type(x).__name__}: {x * 2!r}"

    @r.method
    def echo_bytes(data: bytes) -> str:
        return type(data).__name__

    @r.method
    def to_bytearray(data: bytearray) -> str:
        return type(data).__name__

    @r.method
    def untyped(data):  # type: ignore[no-untyped-def]
        return type(data).__name__

    @r.method
    def f(x: int, flag: bool = True) -> list[str]:
        return [repr(x), repr(flag)]

    @r.method
    def g(*xs: int) -> list[str]:
        return [repr(x) for x in xs]

    @r.method
    def kinds(when: datetime.datetime, ident: uuid.UUID, blob: bytes) -> list[str]:
        return [type(when).__name__, type(ident).__name__, type(blob).__name__]

    return r


def test_a_raw_bytes_argument_is_checked_against_the_annotations() -> None:
    async def main() -> None:
        async with pair(typed_router()) as (_, peer):
            for method in ("double", "double_async"):
                for opts in ({}, {"timeout": 5}):  # the call lane, and on_request's path
                    with pytest.raises(fastrpc.InvalidArguments) as info:
                        await peer.call(method, b"ab", **opts)
                    assert info.value.message == f"{method}(): argument 'x': Expected `int`, got `bytes`"
                    assert await peer.call(method, 4, **opts) == "int: 8"
            # Handlers that take bytes get them (a bytearray, converted), untyped ones as is.
            for opts in ({}, {"timeout": 5}):
                assert await peer.call("echo_bytes", b"ab", **opts) == "bytes"
                assert await peer.call("to_bytearray", b"ab", **opts) == "bytearray"
                assert await peer.call("untyped", b"ab", **opts) == "bytes"

    run(main())


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_keyword_and_star_arguments_convert_as_strictly_as_positional_ones(codec: str) -> None:
    when = datetime.datetime(2026, 12, 1, 12, 30, tzinfo=datetime.timezone.utc)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")

    async def main() -> None:
        async with pair(typed_router(), client_opts={"codec": codec}, server_opts={"codec": codec}) as (_, peer):
            for method, args, kwargs in (
                ("f", ("5",), {}),
                ("f", (), {"x": "5"}),
                ("f", (1,), {"flag": "false"}),
                ("g", ("5", "6"), {}),
            ):
                with pytest.raises(fastrpc.InvalidArguments) as info:
                    await peer.call(method, *args, **kwargs)
                assert "Expected `" in info.value.message
            assert await peer.call("f", x=5, flag=False) == ["5", "False"]
            assert await peer.call("g", 5, 6) == ["5", "6"]
            # What a string stands for still converts by keyword (ISO datetime, UUID,
            # base64 bytes in JSON).
            got = await peer.call("kinds", when=when, ident=ident, blob=b"\x00\xff")
            assert got == ["datetime", "UUID", "bytes"]

    run(main())


def test_notifications_with_bad_arguments_log_rate_limited_warnings(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with pair(typed_router()) as (_, peer):
            caplog.clear()
            for _ in range(100):
                peer.notify("untyped")  # missing argument: TypeError binding it
                peer.notify("double", "x")  # does not fit the annotation
            assert await peer.call("untyped", 1) == "int"  # a barrier: the notifications were handled
            errors = server_records(caplog, logging.ERROR)
            warnings = server_records(caplog, logging.WARNING)
            assert errors == []
            assert 1 <= len(warnings) <= fastrpc.log.WARNINGS_PER_SECOND + 1
            assert all(rec.exc_info is None for rec in warnings)
            assert "invalid arguments" in warnings[0].getMessage()

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main())


def test_a_result_that_cannot_be_encoded_is_logged_in_words(caplog: pytest.LogCaptureFixture) -> None:
    r = fastrpc.Router()

    @r.method
    def opaque():  # type: ignore[no-untyped-def]
        return object()

    async def main() -> None:
        async with pair(r) as (_, peer):
            with pytest.raises(fastrpc.RemoteError):
                await peer.call("opaque")
            await until(lambda: server_records(caplog, logging.ERROR), what="the error logged")
            text = server_records(caplog, logging.ERROR)[0].getMessage()
            assert text.startswith("encoding the result for 'opaque' from "), text

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main())


@pytest.mark.skipif(not C.available() & C.ZSTD, reason="zstandard is not installed")
def test_truncated_zstd_payloads_are_refused_as_zlib_ones() -> None:
    data = bytes(range(256)) * 100
    for alg in (C.ZSTD, C.ZLIB):
        for payload in (data, b""):
            whole = C.Compressor(alg).compress(payload)
            assert C.decompress(alg, whole, 1 << 20) == payload
            for cut in (1, 4, len(whole) // 2):
                with pytest.raises(C.ProtocolError, match=r"truncated|corrupt"):
                    C.decompress(alg, whole[:-cut], 1 << 20)
    # A frame that does not name its size (another implementation's, streamed).
    import zstandard

    obj = zstandard.ZstdCompressor().compressobj()
    streamed = obj.compress(data) + obj.flush()
    assert C.decompress(C.ZSTD, streamed, 1 << 20) == data
    with pytest.raises(C.ProtocolError, match="truncated"):
        C.decompress(C.ZSTD, streamed[:-1], 1 << 20)
    with pytest.raises(C.ProtocolError, match="max_item_size"):
        C.decompress(C.ZSTD, streamed, 100)
