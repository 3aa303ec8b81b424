"""What decoding a plain item or a call's answer allocates, against a peer we do not
trust. A payload of MessagePack (not raw bytes, not compressed) can decode to ~64
times its size in objects (``[[], [], ...]``): an item or an answer that would decode
past the receiver's ``max_connection_memory`` is refused before it is decoded (the
stream, or that call, fails naming the option), while one of the same size that
decodes to about its size is delivered, and the connection goes on. Over real
loopback connections, each test bounded by ``run``'s timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from _util import pair, run

import fastrpc
from fastrpc.exceptions import ErrorCode, LimitExceeded, PayloadTooLarge

KiB = 1 << 10
MiB = 1 << 20
# The receiver's budget: small, so that a 1 MiB item of empty lists (~64 MiB once
# decoded) is far past it, while decoding it before this check stayed quick.
LIMIT = 8 * MiB


def _nested_lists(n: int) -> msgspec.Raw:
    """A list of ``n`` empty lists, encoded as it is sent (msgspec.Raw: a plain
    payload, not a raw one): 1 byte each on the wire, a list object (56 bytes + a
    pointer) each once decoded."""
    return msgspec.Raw(b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n)


def _router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    async def items(kind: str, n: int) -> AsyncIterator[Any]:
        yield 1
        if kind == "lists":
            yield _nested_lists(n)
        else:  # as large on the wire, about as large once decoded
            yield [b"x" * n]
        yield 2

    @router.method
    async def answer(kind: str, n: int) -> Any:
        return _nested_lists(n) if kind == "lists" else [b"x" * n]

    @router.method
    async def echo(x: Any) -> Any:
        return x

    return router


@pytest.mark.parametrize("many", [False, True], ids=["anext", "get_many_nowait"])
def test_a_plain_item_decoding_past_max_connection_memory_fails_its_stream(many: bool) -> None:
    # 1 MiB of [[], [], ...] decodes to ~64 MiB of lists, charged nowhere: it is
    # measured (frames.payload_cost) before it is decoded, and refused past the
    # budget (LimitExceeded, naming the option) as a compressed item is.
    n = MiB

    async def read(stream: Any) -> list[Any]:
        if not many:
            return [x async for x in stream]
        got: list[Any] = [await stream.__anext__()]  # the first item arrived
        while True:
            got += stream.get_many_nowait(16)
            got.append(await stream.__anext__())

    async def main() -> None:
        opts = {"max_connection_memory": LIMIT}
        async with pair(_router(), client_opts=opts) as (_, peer):
            stream = peer.stream("items", "lists", n)
            with pytest.raises(LimitExceeded, match=rf"over max_connection_memory \({LIMIT}\)") as err:
                await read(stream)
            assert err.value.code == ErrorCode.LIMIT_EXCEEDED
            # An item as large that decodes to about its size goes through.
            got = [x async for x in peer.stream("items", "bytes", n)]
            assert got == [1, [b"x" * n], 2]
            assert await peer.call("echo", 5) == 5

    run(main(), 20)


def test_a_plain_answer_decoding_past_max_connection_memory_fails_that_call() -> None:
    # The same for the answer to a call (within one frame: 512 KiB, ~32 MiB once
    # decoded): that call fails, PayloadTooLarge naming the option; the others do not.
    n = 512 * KiB

    async def main() -> None:
        opts = {"max_connection_memory": LIMIT}
        async with pair(_router(), client_opts=opts) as (_, peer):
            with pytest.raises(PayloadTooLarge, match=rf"over max_connection_memory \({LIMIT}\)"):
                await peer.call("answer", "lists", n)
            assert await peer.call("answer", "bytes", n) == [b"x" * n]
            assert await peer.call("echo", 5) == 5

    run(main(), 20)


def test_plain_payloads_within_the_budget_are_delivered() -> None:
    # Payloads just within the bound (limit // 72 bytes: never measured) and a
    # measured one that fits (a list of small ints, ~1 byte each, 8 bytes decoded).
    small = LIMIT // 72 - 5
    ints = list(range(100)) * 4000  # ~400 KB, past limit // 72

    async def main() -> None:
        opts = {"max_connection_memory": LIMIT}
        async with pair(_router(), client_opts=opts) as (_, peer):
            got = [x async for x in peer.stream("items", "lists", small)]
            assert got == [1, [[]] * small, 2]
            assert await peer.call("echo", ints) == ints

    run(main(), 20)


def test_a_long_json_string_is_measured_as_the_string_it_decodes_to() -> None:
    # With the JSON codec an answer or an item may be a bare string. Its UTF-8 bytes
    # were walked as MessagePack headers: 900 KB of Cyrillic measured ~14 MB, and the
    # answer failed PayloadTooLarge against a budget of 8 MiB it fits in.
    text = "д" * 450_000  # 900 KB on the wire, ~900 KB decoded

    async def main() -> None:
        opts = {"max_connection_memory": LIMIT, "codec": "json"}
        async with pair(_router(), server_opts={"codec": "json"}, client_opts=opts) as (_, peer):
            assert await peer.call("echo", text) == text
            assert await peer.call("echo", 5) == 5

    run(main(), 20)
