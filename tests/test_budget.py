"""The per-connection memory budget of the sans-I/O core (issue 11): every byte a peer
can make a connection hold counts, and past ``max_connection_memory`` the connection
fails with LimitExceeded (close code 1008)."""

from __future__ import annotations

import zlib

import msgspec
import pytest

from fastrpc import compression as C
from fastrpc import frames as F
from fastrpc.exceptions import ErrorCode, LimitExceeded
from fastrpc.protocol import Connection, Role, Settings

KiB = 1 << 10
V = F.encode_varint


def server(budget: int, **settings: int) -> Connection:
    s = Connection(Role.SERVER, Settings(**settings), max_connection_memory=budget)
    s.receive_message(F.encode_batch([(F.HELLO, 0, 0, Settings(**settings).to_wire())]))
    s.next_message()
    return s


def data(sid: int, payload: bytes, flags: int = 0) -> tuple[int, int, int, bytes]:
    return (F.STREAM_DATA, flags, sid, payload)


def test_unread_items_count_until_read() -> None:
    s = server(100 * KiB)
    # Ten streams with 9 KiB unread each: 90 KiB held, under the budget.
    s.receive_message(F.encode_batch([data(2 * i + 1, b"x" * 9 * KiB, F.FLAG_OPEN) for i in range(10)]))
    assert s.stats()["memory"] == 90 * KiB
    with pytest.raises(LimitExceeded) as info:
        s.receive_message(F.encode_batch([data(21, b"x" * 11 * KiB, F.FLAG_OPEN)]))
    assert "max_connection_memory" in info.value.reason and info.value.code == ErrorCode.LIMIT_EXCEEDED
    assert info.value.close_code == 1008


def test_reading_and_releasing_give_the_budget_back() -> None:
    s = server(64 * KiB)
    for _ in range(20):  # 20 x 40 KiB through a 64 KiB budget: each read frees it
        s.receive_message(F.encode_batch([data(1, b"y" * 40 * KiB, F.FLAG_OPEN)]))
        assert s.read_item(1) is not None
        s.release_stream(1)
        assert s.stats()["memory"] == 0
    s.receive_message(F.encode_batch([data(3, b"z" * 40 * KiB, F.FLAG_OPEN)]))
    s.close_stream(3)  # unread, closed by the reader: dropped, given back
    assert s.stats()["memory"] == 0


def test_partial_items_count() -> None:
    # Fragments of items (FLAG_MORE) on many streams: each stream's partial item is
    # within max_item_size, their sum is not within the budget.
    s = server(256 * KiB)
    frames = [data(2 * i + 1, b"p" * 60 * KiB, F.FLAG_OPEN | F.FLAG_MORE) for i in range(4)]
    s.receive_message(F.encode_batch(frames))
    assert s.stats()["memory"] == 240 * KiB
    with pytest.raises(LimitExceeded, match="partial items"):
        s.receive_message(F.encode_batch([data(11, b"p" * 20 * KiB, F.FLAG_OPEN | F.FLAG_MORE)]))


def test_an_item_ended_inside_gives_its_partial_back() -> None:
    s = server(256 * KiB)
    s.receive_message(F.encode_batch([data(1, b"p" * 60 * KiB, F.FLAG_OPEN | F.FLAG_MORE)]))
    s.receive_message(F.encode_batch([(F.STREAM_ABORT, 0, 1, b"gave up")]))
    # The 60 KiB partial is given back; the abort's reason is held (and counted) until
    # the stream is read or released.
    assert s.stats()["memory"] == len(b"gave up")


def test_running_calls_hold_their_arguments() -> None:
    s = server(100 * KiB)
    args = msgspec.msgpack.encode(["a" * 30 * KiB])
    head = V(4) + b"echo"
    s.receive_message(F.encode_batch([(F.REQUEST, 0, 2 * i + 1, head + args) for i in range(3)]))
    with pytest.raises(LimitExceeded, match="arguments of running calls"):
        s.receive_message(F.encode_batch([(F.REQUEST, 0, 7, head + args)]))
    s = server(100 * KiB)
    for i in range(10):  # answered calls give their arguments back
        s.receive_message(F.encode_batch([(F.REQUEST, 0, 2 * i + 1, head + args)]))
        s.send_response(2 * i + 1, b"\xc0")
    assert s.stats()["memory"] == 0


def test_compressed_items_are_held_as_received() -> None:
    # The window counts wire bytes, and compressed items are held as they came (inflated
    # as they are read): the budget counts what is held, so the two agree.
    settings = {"compression": C.ZLIB}
    s = server(1 << 20, **settings)
    bomb = zlib.compress(bytes(900 * KiB), 9)
    assert len(bomb) < 2 * KiB
    s.receive_message(F.encode_batch([data(1, bomb, F.FLAG_OPEN | F.FLAG_COMPRESSED)]))
    s.receive_message(F.encode_batch([data(1, bomb, F.FLAG_COMPRESSED)]))
    assert s.stats()["memory"] == 2 * len(bomb)
    first = s.read_item(1)
    assert first is not None and len(first[0]) == 900 * KiB
    assert s.stats()["memory"] == len(bomb)
