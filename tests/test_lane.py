"""The compiled call lane (``frames.CallLane``, ``_lane.pxi``): a lone plain raw call
answered from the transport's read callback, a lone raw answer settled there, a raw
call written from ``peer.call`` in C. Every test here compares it with the Python
path it short-cuts (``fastrpc.peer_io._CallLane`` set to None turns it off): the
same bytes on the wire, in the same order, the same books on both sides, the same
errors. Real connections over 127.0.0.1; the raw client is a bare socket whose
frames are ours to shape. With the pure codec there is no lane: skipped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _util import pair, run, server_peer, ws_message, ws_open

import fastrpc
import fastrpc.peer_io
from fastrpc import frames as F
from fastrpc.calls import FLAG_RAW

pytestmark = pytest.mark.skipif(F.CallLane is None, reason="the pure codec has no compiled call lane")


def make_router() -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def echo(x):  # type: ignore[no-untyped-def]
        return x

    @router.method
    def grow(x: bytes) -> bytes:  # a spec that takes raw bytes unchecked: the lane's
        return x * 40

    @router.method
    def boom(x):  # type: ignore[no-untyped-def]
        raise ValueError(f"no {len(x)}")

    @router.method
    def obj(x):  # type: ignore[no-untyped-def]
        return {"n": len(x)}  # not bytes: the Python path encodes and sends it

    @router.method
    def noisy(x):  # type: ignore[no-untyped-def]
        fastrpc.current_peer().notify("note", len(x))  # output first: the answer follows it
        return x

    @router.method
    def closing(x):  # type: ignore[no-untyped-def]
        asyncio.get_running_loop().create_task(fastrpc.current_peer().close())
        return x

    @router.method
    async def later(x):  # type: ignore[no-untyped-def]
        return x

    @router.method(authorize=lambda peer, method: False)
    def guarded(x):  # type: ignore[no-untyped-def]
        return x

    return router


def _call(cid: int, method: str, arg: bytes) -> bytes:
    head = F.encode_varint(len(method)) + method.encode()
    return F.mask_frame(F.encode_frame(F.REQUEST, FLAG_RAW, cid, head + arg), b"\x11\x22\x33\x44")


# (id, method, argument): ids of every varint size, answers of both WebSocket length
# forms, each outcome a raw call can have.
CALLS = [
    (1, "echo", b""),
    (3, "echo", b"x"),
    (5, "echo", b"a" * 100),  # near the largest lone frame the lane reads (125 bytes)
    (65, "echo", b"two-byte id"),
    (16_385, "echo", b"four-byte id"),
    (1_073_741_825, "echo", b"eight-byte id"),
    (7, "grow", b"0123456789"),  # a 400-byte answer: two-byte WebSocket length
    (9, "grow", b"z" * 110),  # 4,400 bytes: past the lane's answers (written as before)
    (11, "boom", b"abc"),
    (13, "obj", b"abcd"),
    (15, "noisy", b"12345"),
    (17, "later", b"async"),
    (19, "guarded", b"no"),
    (21, "missing", b"?"),
    (23, "echo", b"last"),
]


async def _exchange(lane: bool, calls: list[tuple[int, str, bytes]]) -> tuple[list[bytes], list[int], int]:
    """Send each call as a read of its own, wait for its answer; return every
    message the server wrote for them (whole, as bytes), the server's books, and how
    many of them its compiled lane took."""

    def served(server: fastrpc.Server) -> int:
        lanes = [getattr(p.transport, "_lane", None) for p in server.peers]
        return sum(x.served for x in lanes if x is not None)

    async def send(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cid: int, method: str, arg: bytes
    ) -> list[bytes]:
        writer.write(_call(cid, method, arg))
        out = []
        while True:
            msg = await asyncio.wait_for(ws_message(reader), 5)
            out.append(msg)
            if any(f.id == cid and f.type in (F.RESPONSE, F.ERROR) for f in F.decode_message(msg, 1 << 20)):
                return out

    async with pair(make_router(), check_idle=False) as (server, _):
        reader, writer = await ws_open(server.port)
        got: list[bytes] = []
        try:
            # A name's first call goes the Python way, which learns it (calls.METHOD_NAMES).
            for k, m in enumerate(dict.fromkeys(m for _, m, _ in calls)):
                got += await send(reader, writer, 1_001 + 2 * k, m, b"")
            before = served(server)
            for cid, method, arg in calls:
                got += await send(reader, writer, cid, method, arg)
            taken = served(server) - before
            books = [sum(getattr(p.core.traffic, k) for p in server.peers) for k in _BOOKS]
        finally:
            writer.close()
            await writer.wait_closed()
        assert (taken > 0) == lane
        return got, books, taken


_BOOKS = ("messages_in", "frames_in", "bytes_in", "messages_out", "frames_out", "bytes_out")


def _both(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[int, str, bytes]]) -> tuple[Any, Any]:
    with_lane = run(_exchange(True, calls), timeout=20)
    monkeypatch.setattr(fastrpc.peer_io, "_CallLane", None)
    without = run(_exchange(False, calls), timeout=20)
    return with_lane, without


def test_the_lane_writes_what_the_python_path_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call of CALLS, one read each: the server's messages are the same bytes,
    in the same order (a notification the handler sends before its answer), and its
    books the same, with the compiled lane and without it; the lane took the raw
    calls of plain sync handlers whose answers it writes or hands on."""
    (got, books, served), (want, want_books, _) = _both(monkeypatch, CALLS)
    assert got == want
    assert books == want_books
    # The lane runs every plain sync raw call it can read whole: echo x7, grow x2,
    # boom, obj, noisy; later (async), guarded (authorize) and missing are Python's.
    assert served == 12
    frames = [(f.type, f.id) for m in got for f in F.decode_message(m, 1 << 20)]
    noisy = frames.index((F.RESPONSE, 15))
    assert frames[noisy - 1][0] == F.NOTIFY  # the answer after the handler's own output


def test_a_handler_that_closes_its_connection_gets_no_answer_written_after_the_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync handler that closes its peer: the lane writes no frame after the close
    frame, as the Python path does not."""

    async def main(lane: bool) -> tuple[list[int], int | None]:
        async with pair(make_router(), check_idle=False) as (server, _):
            reader, writer = await ws_open(server.port)
            writer.write(_call(1, "echo", b"warm"))
            await asyncio.wait_for(ws_message(reader), 5)
            writer.write(_call(3, "closing", b"bye"))
            opcodes: list[int] = []
            code = None
            try:
                while True:
                    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 5)
                    size = b1 & 0x7F
                    if size >= 126:
                        size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8), "big")
                    body = await reader.readexactly(size)
                    opcodes.append(b0 & 0x0F)
                    if b0 & 0x0F == 8:
                        code = int.from_bytes(body[:2], "big")
                        break
            except asyncio.IncompleteReadError:
                pass
            writer.close()
            return opcodes, code

    with_lane = run(main(True), timeout=20)
    monkeypatch.setattr(fastrpc.peer_io, "_CallLane", None)
    assert with_lane == run(main(False), timeout=20)
    assert with_lane[1] == 1000 and with_lane[0][-1] == 8


def test_the_client_lane_makes_and_settles_calls_as_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``peer.call`` with raw arguments: written by the lane (masked, every WebSocket
    length form), its raw answer settled by it; the same results, errors and books
    on both sides as without the lane, and nothing left running or charged."""
    args = [b"", b"x", b"y" * 100, b"z" * 200, b"w" * 5000, b"v" * 70_000]

    async def main(lane: bool) -> tuple[list[Any], list[int], list[int]]:
        async with pair(make_router()) as (server, peer):
            await peer.call("echo", b"warm")
            sp = await server_peer(server)
            client_lane = getattr(peer.transport, "_lane", None)
            assert (client_lane is not None) == lane
            sent = client_lane.sent if client_lane is not None else 0
            settled = client_lane.settled if client_lane is not None else 0
            out: list[Any] = []
            for a in args:
                out.append(await peer.call("echo", a))
                out.append(await peer.call("grow", a[:10]))
                try:
                    await peer.call("boom", a)
                except fastrpc.RemoteError as e:
                    out.append((e.type_name, e.message))
            if lane:
                assert client_lane is not None
                assert client_lane.sent - sent == 3 * len(args)  # every call, whatever its size
                # the raw answers that come as one small frame: echo of the first three,
                # grow of the first two (the rest are past 125 bytes, or errors)
                assert client_lane.settled - settled == 5
            books = [getattr(peer.core.traffic, k) for k in _BOOKS]
            sbooks = [getattr(sp.core.traffic, k) for k in _BOOKS]
            for c in (peer.core, sp.core):
                assert c.stats()["calls_in"] == [] and c.stats()["calls_out"] == {} and c.stats()["memory"] == 0
            return out, books, sbooks

    with_lane = run(main(True), timeout=30)
    monkeypatch.setattr(fastrpc.peer_io, "_CallLane", None)
    assert with_lane == run(main(False), timeout=30)


def test_an_answer_to_a_call_the_caller_gave_up_on_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call cancelled by its caller before its answer came: the lane drops the
    answer (the call table had it as cancelled), the next calls go on, nothing stays."""
    router = make_router()

    @router.method
    async def slow(x):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.05)
        return x

    async def main() -> None:
        async with pair(router) as (_, peer):
            await peer.call("echo", b"warm")
            with pytest.raises(fastrpc.CallTimeout):
                await peer.call("slow", b"late", timeout=0.01)
            await asyncio.sleep(0.1)  # its answer came meanwhile, and was dropped
            for i in range(20):
                assert await peer.call("echo", b"%d" % i) == b"%d" % i

    run(main(), timeout=20)


def test_the_lane_is_not_built_with_busy_poll() -> None:
    """busy_poll's window is told of every read and write by the transport; the lane
    would bypass it, so a connection with busy_poll reads without it."""

    async def main() -> None:
        async with pair(make_router(), server_opts={"busy_poll": 50e-6}, client_opts={"busy_poll": 50e-6}) as (
            server,
            peer,
        ):
            assert await peer.call("echo", b"x") == b"x"
            sp = await server_peer(server)
            assert getattr(sp.transport, "_lane", None) is None
            assert getattr(peer.transport, "_lane", None) is None

    run(main(), timeout=20)


def test_a_class_without_a_slot_the_lane_reads_fails_its_building() -> None:
    """The lane reads its objects' __slots__ at offsets resolved once per class: a
    slot renamed or turned into a property is an error when the lane is built (never
    a read of the wrong memory, nor a silent slow path); the real classes resolve."""
    from fastrpc import _frames

    async def main() -> None:
        async with pair(make_router()) as (server, peer):
            sp = await server_peer(server)
            core = sp.core
            types = {
                "peer": type(sp),
                "wire": type(sp.transport),
                "streams": type(sp.streams),
                "link": type(sp._link),
                "core": type(core),
                "session": type(core.session),
                "sched": type(core._sched),
                "flow": type(core._flow),
                "inbound": type(core._inbound),
                "handlers": type(sp._handlers),
                "reads": type(sp.transport._reads),  # type: ignore[attr-defined]
            }
            _frames._Slots(types)  # the classes as they are: every slot found

            class Link:  # flush_pending a property, closed a plain attribute
                @property
                def flush_pending(self) -> bool:
                    return False

            with pytest.raises(TypeError, match=r"Link\.flush_pending"):
                _frames._Slots({**types, "link": Link})

    run(main(), timeout=20)


def test_the_lane_is_the_sockets_protocol_and_reads_its_tables_in_place() -> None:
    """Built, the lane is the socket's protocol on both sides (every read reaches it
    from C; what it does not take goes on to the transport); it reads websockets'
    state in place with the websockets fastrpc supports (a version where it cannot
    is slower, not wrong: this says so); a Router subclass's tables are read through
    their attributes, and its calls are served all the same."""

    class MyRouter(fastrpc.Router):
        pass

    router = MyRouter()

    @router.method
    def echo(x):  # type: ignore[no-untyped-def]
        return x

    async def main() -> None:
        async with pair(router) as (server, peer):
            sp = await server_peer(server)
            for p in (sp, peer):
                lane = p.transport._lane  # type: ignore[union-attr]
                assert lane is not None
                assert p.transport._tcp.get_protocol() is lane  # type: ignore[union-attr]
                assert lane.state_in_place
            served = sp.transport._lane.served  # type: ignore[union-attr]
            for _ in range(5):
                assert await peer.call("echo", b"x") == b"x"
            assert sp.transport._lane.served - served >= 4  # type: ignore[union-attr]
            # Streams and larger messages go through it to the transport as before.
            assert await peer.call("echo", b"y" * 100_000) == b"y" * 100_000

    run(main(), timeout=20)


def _tables() -> list[Any]:
    # (table class, lane_admit, lane_finish): calltable.py's source, and compiled.
    import importlib

    from fastrpc import calltable

    out = [pytest.param((calltable.PyCallTable, calltable.lane_admit, calltable.lane_finish), id="python")]
    if calltable.COMPILED:
        c = importlib.import_module("fastrpc._calltable")
        out.append(pytest.param((c.CallTable, c.lane_admit, c.lane_finish), id="cython"))
    return out


@pytest.mark.parametrize("twin", _tables())
def test_lane_admit_and_finish_keep_the_books_as_take_and_reply(twin: Any) -> None:
    # The server's lane admits and finishes a call through these two (compiled: C
    # calls from the codec); the pure source and the compiled one agree.
    from fastrpc.budget import MemoryBudget

    budget = MemoryBudget(100)
    table_type, lane_admit, lane_finish = twin
    table = table_type(F.FrameWriter(), 2, budget, peer_parity=1)
    table.frame_limit = 50
    assert not lane_admit(table, 2, 10)  # our own parity
    assert not lane_admit(table, 0, 10)
    assert lane_admit(table, 1, 60)
    assert not lane_admit(table, 1, 1)  # in use
    assert not lane_admit(table, 3, 41)  # past max_connection_memory: nothing held
    assert budget.held == 60 and table.inbound == {1: 60}
    assert lane_admit(table, 3, 40)
    assert not lane_admit(table, 5, 0)  # past max_inbound (2 running)
    assert budget.held == 100
    assert not lane_finish(table, 1, 51)  # an answer past the caller's frame limit: nothing done
    assert table.inbound == {1: 60, 3: 40}
    assert lane_finish(table, 1, 50)
    assert lane_finish(table, 3, 0)
    assert table.inbound == {} and budget.held == 0
    assert lane_finish(table, 3, 0)  # a call already over: nothing to do


def test_the_compiled_lane_calls_the_compiled_call_table_in_c() -> None:
    from fastrpc import calltable

    # With this version's build, the lane finds _calltable's exported C functions
    # (else it would call them through Python: slower, the same books).
    assert F._codec.lane_table_in_c() is calltable.COMPILED
