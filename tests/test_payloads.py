"""Payloads (issue 12): keyword arguments on the wire, handler annotations driving
decoding with msgspec (InvalidArguments for what does not fit), datetime / UUID /
Decimal / set / tuple, enc_hook / dec_hook. Real connections over 127.0.0.1."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from _util import pair, run

import fastrpc
from fastrpc import frames as F
from fastrpc.protocol import Connection, Role


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    low: Point
    high: Point
    label: str = "box"


class Money:
    """A custom type: travels as "<amount> <currency>" with the hooks below."""

    def __init__(self, amount: decimal.Decimal, currency: str) -> None:
        self.amount, self.currency = amount, currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.amount, self.currency) == (other.amount, other.currency)


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, Money):
        return f"{obj.amount} {obj.currency}"
    raise NotImplementedError


def dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Money:
        amount, currency = obj.split()
        return Money(decimal.Decimal(amount), currency)
    raise NotImplementedError


def typed_router() -> fastrpc.Router:
    r = fastrpc.Router()

    @r.method
    def shift(p: Point, dx: int = 1, *, dy: int = 0) -> Point:
        assert type(p) is Point
        return Point(p.x + dx, p.y + dy)

    @r.method
    async def area(box: Box) -> int:
        assert type(box) is Box and type(box.low) is Point
        return (box.high.x - box.low.x) * (box.high.y - box.low.y)

    @r.method
    def kinds(when: datetime.datetime, key: uuid.UUID, price: decimal.Decimal, tags: set[str], pair: tuple[int, str]) -> list[str]:  # fmt: skip
        return [type(v).__name__ for v in (when, key, price, tags, pair)]

    @r.method
    def untyped(*args, **kwargs):  # type: ignore[no-untyped-def]
        return [list(args), kwargs]

    @r.method
    def raw_kinds(when, key, price, tags, pair):  # type: ignore[no-untyped-def]
        return [type(v).__name__ for v in (when, key, price, tags, pair)]

    @r.method
    async def count(start: int, *, step: int = 1, n: int = 3) -> AsyncIterator[int]:
        for i in range(n):
            yield start + i * step

    @r.method
    async def total(items: fastrpc.ReceiveStream[Any], scale: int) -> AsyncIterator[int]:
        yield scale * sum([x async for x in items])

    @r.method
    def varargs(*values: int, **named: float) -> list[Any]:
        return [[type(v).__name__ for v in values], {k: type(v).__name__ for k, v in named.items()}]

    @r.method
    def pay(m: Money) -> Money:
        assert type(m) is Money
        return Money(m.amount * 2, m.currency)

    return r


def test_keyword_arguments_reach_the_handler() -> None:
    async def main() -> None:
        got: list[Any] = []
        r = typed_router()
        r.add("note", lambda *a, **k: got.append((a, k)))
        async with pair(r) as (_, peer):
            assert await peer.call("untyped", 1, x=2) == [[1], {"x": 2}]
            assert await peer.call("untyped", x={"nested": [1]}) == [[], {"x": {"nested": [1]}}]
            assert await peer.call("untyped", 1, {"not": "kwargs"}) == [[1, {"not": "kwargs"}], {}]
            assert await peer.call("shift", {"x": 1, "y": 1}, dy=5) == {"x": 2, "y": 6}
            assert await peer.call("shift", p={"x": 1, "y": 1}, dx=3) == {"x": 4, "y": 1}
            assert [x async for x in peer.stream("count", 10, step=5)] == [10, 15, 20]
            peer.notify("note", 1, k="v")
            await peer.ping()
            assert got == [((1,), {"k": "v"})]

    run(main())


def test_positional_calls_are_unchanged_on_the_wire() -> None:
    c, s = Connection(Role.CLIENT), Connection(Role.SERVER)
    s.receive_message(c.next_message())
    c.receive_message(s.next_message())
    payload = msgspec.msgpack.encode([1, 2])
    c.send_request("m", payload)
    c.send_request("m", msgspec.msgpack.encode([1, {"x": 2}]), kwargs=True)
    frames = F.decode_message(c.next_message(), 1 << 20)
    head = F.encode_varint(1) + b"m"
    assert [(f.type, f.flags, bytes(f.payload)) for f in frames] == [
        (F.REQUEST, 0, head + payload),  # no flag, same bytes as before keyword arguments
        (F.REQUEST, F.FLAG_KWARGS, head + msgspec.msgpack.encode([1, {"x": 2}])),
    ]


def test_annotations_decode_structs_dataclasses_and_refuse_bad_input() -> None:
    async def main() -> None:
        async with pair(typed_router()) as (_, peer):
            assert await peer.call("shift", {"x": 1, "y": 2}) == {"x": 2, "y": 2}
            box = {"low": {"x": 0, "y": 0}, "high": {"x": 2, "y": 3}}
            assert await peer.call("area", box) == 6
            assert await peer.call("area", Box(Point(1, 1), Point(3, 3))) == 4  # a dataclass argument
            with pytest.raises(fastrpc.InvalidArguments) as info:
                await peer.call("shift", {"x": "one", "y": 2})
            assert str(info.value) == "InvalidArguments: shift(): argument 'p': Expected `int`, got `str` (at .x)"
            with pytest.raises(fastrpc.InvalidArguments, match=r"argument 'box': Object missing required field `high`"):
                await peer.call("area", {"low": {"x": 0, "y": 0}})
            with pytest.raises(fastrpc.InvalidArguments, match=r"shift\(\) takes at most 2 positional arguments"):
                await peer.call("shift", {"x": 1, "y": 2}, 1, 2)
            with pytest.raises(fastrpc.InvalidArguments, match=r"shift\(\): argument 'dy': Expected `int`, got `str`"):
                await peer.call("shift", {"x": 1, "y": 2}, dy="z")
            with pytest.raises(fastrpc.RemoteStreamError, match=r"InvalidArguments: total\(\): argument 'scale'"):
                async for _ in peer.channel("total", _items(), "x"):
                    pass
            assert [x async for x in peer.channel("total", _items(), 2)] == [12]
            assert await peer.call("varargs", 1, 2, x=1) == [["int", "int"], {"x": "float"}]
            with pytest.raises(fastrpc.InvalidArguments, match=r"varargs\(\): argument 'values'"):
                await peer.call("varargs", 1, "two")

    run(main())


async def _items() -> AsyncIterator[int]:
    for i in (1, 2, 3):
        yield i


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_datetime_uuid_decimal_set_tuple(codec: str) -> None:
    values = (
        datetime.datetime(2026, 12, 1, 12, 30, tzinfo=datetime.timezone.utc),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        decimal.Decimal("1.10"),
        {"a", "b"},
        (1, "one"),
    )

    async def main() -> None:
        async with pair(typed_router(), client_opts={"codec": codec}, server_opts={"codec": codec}) as (_, peer):
            # Annotated: the handler gets the types back.
            assert await peer.call("kinds", *values) == ["datetime", "UUID", "Decimal", "set", "tuple"]
            # Untyped: as msgspec decodes them (MessagePack keeps datetime).
            first = "datetime" if codec == "msgpack" else "str"
            assert await peer.call("raw_kinds", *values) == [first, "str", "str", "list", "list"]

    run(main())


def test_enc_hook_and_dec_hook_carry_custom_types() -> None:
    async def main() -> None:
        hooks = {"enc_hook": enc_hook, "dec_hook": dec_hook}
        async with pair(typed_router(), server_opts=hooks, client_opts=hooks) as (_, peer):
            assert await peer.call("pay", Money(decimal.Decimal("2.5"), "EUR")) == "5.0 EUR"
        async with pair(typed_router()) as (_, peer):
            with pytest.raises(NotImplementedError, match="cannot encode objects of type Money: pass enc_hook="):
                await peer.call("pay", Money(decimal.Decimal(1), "EUR"))

    run(main())


def test_unannotated_and_any_handlers_have_no_spec() -> None:
    r = fastrpc.Router()
    r.add("plain", lambda a, b: a + b)

    def anything(a: Any, b: Any) -> Any:
        return a

    r.add("anything", anything)
    assert r.specs == {}
    r.add("typed", lambda: None)
    assert r.spec("plain") is None and r.spec("anything") is None
