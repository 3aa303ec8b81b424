"""The data path's own WebSocket framing (transport._Wire) against websockets'
sans-I/O protocol, over real loopback sockets (differential, fuzzed with hypothesis):

* every frame sequence websockets' client emits (binary and text messages, fragmented
  or not, pings between fragments, any mask) and any split into TCP writes reaches
  our server as the same messages;
* every message our server writes (any length: 7-, 16- and 64-bit headers) is parsed
  by websockets' client protocol as the same message;
* our client's masked frames are parsed by websockets' own server (an echo), and its
  unmasked answers by our client's framer;
* the bounds: a frame over max_size (1009), more than 4096 fragments (1009), invalid
  UTF-8 in a text message (1007), an unmasked client frame (1002), PINGs past
  max_ping_rate (1008); a peer that does not read gets only its latest PING answered;
* a server's hook on the opening request (authenticate) refuses or accepts there;
* a large frame that reads leave incomplete (finished in the read buffer the thread
  lends the connection, or read straight into a buffer of its own) arrives whole,
  however its bytes are spread over reads, masked or not, and on several connections
  at once; a connection lost inside such a frame gives the read buffer back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import subprocess
import sys
from typing import Any

import pytest
from _util import QUIET, run, until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import serve as ws_serve
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

import fastrpc
from fastrpc.transport import Transport, open_connection, start_server

HOST = "127.0.0.1"

message = st.one_of(
    st.binary(min_size=0, max_size=300).map(lambda b: ("b", b)),
    st.integers(min_value=120, max_value=70_000).map(
        lambda n: ("b", bytes(range(256)) * (n // 256) + b"x" * (n % 256))
    ),
    st.text(max_size=200).map(lambda t: ("t", t)),
)


class RawClient:
    """A TCP client that speaks WebSocket through websockets' sans-I/O protocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: ClientProtocol) -> None:
        self.reader, self.writer, self.ws = reader, writer, ws
        self.pending: list[Any] = []  # frames parsed with the handshake's response

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(HOST, port)
        ws = ClientProtocol(parse_uri(f"ws://{HOST}:{port}/"), max_size=None)
        ws.send_request(ws.connect())
        client = cls(reader, writer, ws)
        client.flush()
        while True:
            ws.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            events = ws.events_received()
            if any(isinstance(ev, Response) for ev in events):
                client.pending = [ev for ev in events if isinstance(ev, Frame)]
                return client

    def flush(self) -> None:
        for data in self.ws.data_to_send():
            if data:
                self.writer.write(data)

    def take(self) -> bytes:
        return b"".join(d for d in self.ws.data_to_send() if d)

    async def messages(self, count: int) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        parts: list[Frame] = []
        events, self.pending = self.pending, []
        while True:
            for ev in events:
                if not isinstance(ev, Frame) or ev.opcode not in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                    continue
                parts.append(ev)
                if ev.fin:
                    body = b"".join(p.data for p in parts)
                    out.append(("t", body.decode()) if parts[0].opcode is Opcode.TEXT else ("b", body))
                    parts = []
            if len(out) >= count:
                return out
            data = await asyncio.wait_for(self.reader.read(1 << 20), 5)
            assert data, "connection closed"
            self.ws.receive_data(data)
            events = self.ws.events_received()

    async def close_code(self) -> int | None:
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                self.ws.receive_eof()
            else:
                self.ws.receive_data(data)
            self.ws.events_received()
            self.flush()
            if self.ws.close_rcvd is not None or not data:
                self.writer.close()
                return self.ws.close_rcvd.code if self.ws.close_rcvd is not None else None


async def _server(handler: Any, **options: Any) -> Any:
    return await start_server(handler, HOST, 0, compression=None, ping_interval=None, **options)


def _collect(received: list[tuple[str, Any]], done: asyncio.Future[None], count: int) -> Any:
    async def handler(t: Transport) -> None:
        while len(received) < count:
            msg = await t.recv(5)
            received.append(("t", msg) if isinstance(msg, str) else ("b", msg))
        done.set_result(None)
        await t.close()

    return handler


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(message, min_size=1, max_size=8),
    fragment=st.integers(min_value=1, max_value=4000),
    pings=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=20),
)
def test_our_server_reads_what_websockets_writes(
    messages: list[tuple[str, Any]], fragment: int, pings: bool, cuts: list[int]
) -> None:
    async def main() -> None:
        received: list[tuple[str, Any]] = []
        done = asyncio.get_running_loop().create_future()
        # Up to 4,000 pings in a burst: past PING_BURST, so max_ping_rate is lifted here.
        server = await _server(_collect(received, done, len(messages)), max_size=1 << 20, max_ping_rate=None)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            ws = client.ws
            for kind, body in messages:
                data = body.encode() if kind == "t" else body
                size = max(fragment, -(-len(data) // 4000))  # within the 4096-fragment cap
                pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
                if len(pieces) == 1:
                    (ws.send_text if kind == "t" else ws.send_binary)(data)
                    continue
                (ws.send_text if kind == "t" else ws.send_binary)(pieces[0], fin=False)
                for i, piece in enumerate(pieces[1:], 2):
                    if pings:
                        ws.send_ping(b"p")
                    ws.send_continuation(piece, fin=i == len(pieces))
            wire = client.take()
            at = 0
            for cut in cuts:  # arbitrary TCP writes
                client.writer.write(wire[at : at + cut])
                await client.writer.drain()
                at += cut
            client.writer.write(wire[at:])
            await asyncio.wait_for(done, 5)
            assert received == messages
            client.writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(message, min_size=1, max_size=8))
def test_websockets_reads_what_our_server_writes(messages: list[tuple[str, Any]]) -> None:
    async def main() -> None:
        async def handler(t: Transport) -> None:
            for kind, body in messages:
                if kind == "b" and len(body) % 2:
                    assert t.write_now(body)
                else:
                    await t.send(body)
            await t.recv(5)  # until the client closes

        server = await _server(handler)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            assert await client.messages(len(messages)) == messages
            client.writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


PART_SIZES = (1, 125, 126, 4096, 65535, 65536, 200_000)  # across the 7/16/64-bit lengths


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.lists(st.sampled_from(PART_SIZES), min_size=1, max_size=4), min_size=1, max_size=5))
def test_websockets_reads_the_parts_our_server_writes(messages: list[list[int]]) -> None:
    """A message handed to our server's transport as parts (write_parts_now, and
    send_parts past the high-water mark) is one WebSocket message, their bytes in
    order, for websockets' own parser."""
    bodies = [[bytes([(k + j) % 251]) * n for j, n in enumerate(sizes)] for k, sizes in enumerate(messages)]

    async def main() -> None:
        async def handler(t: Transport) -> None:
            assert t.writes_parts()
            for k, parts in enumerate(bodies):
                if k % 2 or not t.write_parts_now(parts):
                    await t.send_parts(parts)
            await t.recv(5)  # until the client closes

        server = await _server(handler)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            assert await client.messages(len(bodies)) == [("b", b"".join(parts)) for parts in bodies]
            client.writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 30)


def test_large_stream_items_leave_a_server_as_parts_not_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's messages that hold large stream items go to the socket as parts
    (the items not copied into one bytes), a reader that pauses included; a
    resumable session keeps bytes for its replay.
    Every item arrives intact, in order. (send_parts, the path past the socket's
    high-water mark: test_websockets_reads_the_parts_our_server_writes.)"""
    from fastrpc import transport as transport_module

    used: list[str] = []
    for name in ("write_parts_now", "send_parts"):
        original = getattr(transport_module._Wire, name)

        def counting(self: Any, parts: list[bytes], _name: str = name, _original: Any = original) -> Any:
            used.append(_name)
            return _original(self, parts)

        monkeypatch.setattr(transport_module._Wire, name, counting)
    router = fastrpc.Router()

    @router.method
    async def items(n: int) -> Any:
        for k in range(n):
            yield bytes([k % 251]) * (65536 + k)

    async def read(peer: fastrpc.RpcPeer, n: int, pause: bool) -> None:
        k = 0
        async for item in peer.stream("items", n):
            assert item == bytes([k % 251]) * (65536 + k)
            k += 1
            if pause and k == 5:
                await asyncio.sleep(0.3)  # the server's socket fills: it waits for the drain
        assert k == n

    async def main() -> None:
        async with fastrpc.serve(router, "127.0.0.1", 0, **QUIET) as server:
            async with fastrpc.connect(server.url, **QUIET) as c:
                await read(c, 60, pause=True)
        assert set(used) == {"write_parts_now"}, used
        used.clear()
        async with fastrpc.serve(router, "127.0.0.1", 0, resume=True, **QUIET) as server:
            async with fastrpc.connect(server.url, resume=True, **QUIET) as c:
                await read(c, 20, pause=False)
        assert not used, used

    run(main(), 30)


def test_our_client_against_websockets_server() -> None:
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70_000, 300_000]

    async def main() -> None:
        async def echo(ws: Any) -> None:
            async for msg in ws:
                await ws.send(msg)

        async with ws_serve(echo, HOST, 0, compression=None, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            t = await open_connection(f"ws://{HOST}:{port}/", compression=None, max_size=1 << 20)
            for n in sizes:
                body = bytes(range(256)) * (n // 256) + b"y" * (n % 256)
                assert t.write_now(body)
                assert await t.recv(5) == body
            await t.send("héllo")
            assert await t.recv(5) == "héllo"
            # A client masks a message's parts into one frame (no join first), now or
            # past the drain.
            assert t.writes_parts()
            parts = [b"a" * 70_000, b"b" * 5, b"c" * 300_000]
            assert t.write_parts_now(parts)
            assert await t.recv(5) == b"".join(parts)
            await t.send_parts(parts[::-1])
            assert await t.recv(5) == b"".join(parts[::-1])
            await t.close()

    run(main(), 20)


@pytest.mark.parametrize(
    "pieces",
    [
        [40_000, 30_000, 30_000, 4],  # a quarter and more at first: read into its own buffer
        [2, 1_000, 30_000, 68_000, 4],  # too little at first: gathered, then its own buffer
        [99_000, 1_000, 4],  # all but the end, then the end with the next message
    ],
    ids=["large_first_read", "small_first_read", "tail_with_next"],
)
def test_a_large_frame_spread_over_reads_arrives_whole(pieces: list[int]) -> None:
    body = bytes(range(256)) * 390 + b"tail"  # 99,844 bytes: a 64-bit length
    text = "é" * 20_000  # a large text frame too

    async def main() -> None:
        received: list[tuple[str, Any]] = []
        done = asyncio.get_running_loop().create_future()
        server = await _server(_collect(received, done, 4))
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            client.ws.send_binary(body)
            client.ws.send_text(text.encode())
            client.ws.send_binary(b"after")
            client.ws.send_binary(body)
            wire = client.take()
            at = 0
            for size in pieces:  # separate reads: the server takes each before the next
                client.writer.write(wire[at : at + size])
                await client.writer.drain()
                await asyncio.sleep(0.02)
                at += size
            client.writer.write(wire[at:])
            await asyncio.wait_for(done, 5)
            assert received == [("b", body), ("t", text), ("b", b"after"), ("b", body)]
            client.writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def test_a_large_frame_whose_header_is_cut_anywhere_arrives_whole() -> None:
    # A read may end anywhere in a frame's header, its mask key included: a large
    # frame is finished in place only once its whole header has arrived (a cut inside
    # the mask once unmasked the payload with stale bytes of the read buffer).
    bodies = [bytes(range(256)) * 78, bytes(range(256)) * 390]  # 16- and 64-bit lengths
    cases = [(body, cut) for body in bodies for cut in range(1, (8 if len(body) < 65536 else 14))]

    async def main() -> None:
        received: list[tuple[str, Any]] = []
        done = asyncio.get_running_loop().create_future()
        server = await _server(_collect(received, done, 2 * len(cases)))
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            for body, cut in cases:
                client.ws.send_binary(b"\x5a" * 64)  # other bytes where the cut leaves off
                client.writer.write(client.take())
                await client.writer.drain()
                await asyncio.sleep(0.02)
                client.ws.send_binary(body)
                wire = client.take()
                client.writer.write(wire[:cut])
                await client.writer.drain()
                await asyncio.sleep(0.02)
                client.writer.write(wire[cut:])
            await asyncio.wait_for(done, 10)
            large = [m for kind, m in received if len(m) > 64]
            assert [(len(m), m == body) for m, (body, _) in zip(large, cases)] == [(len(b), True) for b, _ in cases]
            client.writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 30)


def test_frames_finished_in_place_on_several_connections_do_not_mix() -> None:
    # A large frame a read leaves incomplete is finished in the thread's read buffer,
    # which the thread lends to that connection and reads the others into another: two
    # connections hold one each; a third, past the _MAX_LENT lent, copies as before;
    # small messages of a fourth go through the shared buffer meanwhile; every message
    # arrives whole and each connection's own, and the buffers come back.
    from fastrpc import transport

    reads = transport._read_buffer()  # the server runs on this thread
    bodies = [bytes([i]) * 3 + bytes(range(256)) * 390 + bytes([i]) for i in range(3)]

    async def main() -> None:
        received: dict[int, list[Any]] = {0: [], 1: [], 2: [], 3: []}
        done = asyncio.get_running_loop().create_future()

        async def handler(t: Transport) -> None:
            who = await t.recv(5)  # each client says which it is first
            mine = received[who[0]]
            while len(mine) < (5 if who[0] == 3 else 2):
                mine.append(await t.recv(5))
            if all(len(v) >= (5 if k == 3 else 2) for k, v in received.items()) and not done.done():
                done.set_result(None)
            await t.close()

        server = await _server(handler)
        try:
            port = server.sockets[0].getsockname()[1]
            clients = [await RawClient.open(port) for _ in range(4)]
            wires = []
            for i, c in enumerate(clients[:3]):
                c.ws.send_binary(bytes([i]))
                c.ws.send_binary(bodies[i])
                c.ws.send_binary(b"after %d" % i)
                wires.append(c.take())
            lent = reads.lent
            for c, wire in zip(clients[:3], wires):  # all but the last 10,000 bytes
                c.writer.write(wire[:-10_000])
                await c.writer.drain()
                await asyncio.sleep(0.05)
            assert reads.lent == lent + 2  # the third connection copies (_direct)
            small = clients[3]
            small.ws.send_binary(bytes([3]))
            for k in range(5):
                small.ws.send_binary(b"small %d" % k * 100)
            small.writer.write(small.take())
            await small.writer.drain()
            await asyncio.sleep(0.05)
            for c, wire in zip(clients[:3], wires):
                c.writer.write(wire[-10_000:])
                await c.writer.drain()
            await asyncio.wait_for(done, 5)
            for i in range(3):
                assert received[i] == [bodies[i], b"after %d" % i]
            assert received[3] == [b"small %d" % k * 100 for k in range(5)]
            assert reads.lent == lent
            assert len(reads.spare) <= transport._MAX_LENT
            for c in clients:
                c.writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def test_a_connection_lost_inside_a_frame_gives_its_read_buffer_back() -> None:
    from fastrpc import transport

    reads = transport._read_buffer()

    async def main() -> None:
        lost = asyncio.get_running_loop().create_future()

        async def handler(t: Transport) -> None:
            with contextlib.suppress(Exception):
                await t.recv(5)
            lost.set_result(None)

        server = await _server(handler)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            lent = reads.lent
            client.ws.send_binary(b"z" * 100_000)
            client.writer.write(client.take()[:90_000])
            await client.writer.drain()
            await until(lambda: reads.lent == lent + 1, 5)
            client.writer.transport.abort()  # gone inside the frame
            await asyncio.wait_for(lost, 5)
            await until(lambda: reads.lent == lent, 5)
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def test_our_client_masks_every_frame_afresh() -> None:
    # Masks are cut from a pool of urandom bytes shared by every connection (one read
    # per 1,024 frames): across more frames than one pool holds, each frame has its
    # own mask (no repeats), and unmasked with it, its payload is the message.
    count = 1500

    async def main() -> list[bytes]:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def raw_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ws = ServerProtocol()
            ws.receive_data(await reader.readuntil(b"\r\n\r\n"))
            (request,) = ws.events_received()
            ws.send_response(ws.accept(request))
            writer.write(b"".join(ws.data_to_send()))
            got.set_result(await reader.readexactly(count * (2 + 4 + 8)))
            writer.close()

        server = await asyncio.start_server(raw_server, HOST, 0)
        try:
            port = server.sockets[0].getsockname()[1]
            t = await open_connection(f"ws://{HOST}:{port}/", compression=None, ping_interval=None)
            for i in range(count):
                assert t.write_now(i.to_bytes(8, "big"))
            data = await asyncio.wait_for(got, 10)
            t.abort()
        finally:
            server.close()
        masks = []
        for i in range(count):
            frame = data[i * 14 : (i + 1) * 14]
            assert frame[:2] == bytes((0x82, 0x80 | 8))
            mask = frame[2:6]
            assert bytes(b ^ mask[j % 4] for j, b in enumerate(frame[6:])) == i.to_bytes(8, "big")
            masks.append(mask)
        return masks

    masks = run(main(), 20)
    assert len(set(masks)) >= count - 1  # 32 random bits each: one repeat (a 1-in-4,000 chance) passes


_FORKED_MASKS = """
import os
from fastrpc import transport
next(transport._MASKS)  # the pool is read: a child would inherit what is left of it
r, w = os.pipe()
pid = os.fork()
masks = b"".join(next(transport._MASKS)[0] for _ in range(64))
if pid == 0:
    os.write(w, masks)
    os._exit(0)
child = b""
while len(child) < len(masks):
    child += os.read(r, len(masks) - len(child))
os.waitpid(pid, 0)
print(int(child == masks), len(set(masks[i : i + 4] for i in range(0, len(masks), 4))))
"""


def test_a_forked_child_does_not_reuse_its_parents_masks() -> None:
    # A child that kept the parent's pool would mask its frames with the very masks
    # the parent uses next (workers fork). In a process of its own: no threads to fork.
    out = subprocess.run([sys.executable, "-c", _FORKED_MASKS], capture_output=True, text=True, timeout=60, check=True)
    same, distinct = map(int, out.stdout.split())
    assert same == 0
    assert distinct >= 63


def _bound(frames: list[bytes], max_size: int = 1 << 20, **options: Any) -> int | None:
    async def main() -> int | None:
        async def handler(t: Transport) -> None:
            try:
                while True:
                    await t.recv(5)
            except Exception:
                pass

        server = await _server(handler, max_size=max_size, **options)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            client.writer.write(b"".join(frames))
            return await client.close_code()
        finally:
            server.close()
            await server.wait_closed()

    return run(main(), 20)


def _masked(first: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((first, 0x80 | n)) if n < 126 else bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload  # a zero mask leaves the payload as is


def test_frame_over_max_size_closes_1009() -> None:
    assert _bound([_masked(0x82, b"x" * 2000)], max_size=1000) == 1009


def test_too_many_fragments_close_1009() -> None:
    frames = [_masked(0x02, b"a")] + [_masked(0x00, b"a")] * 4200
    assert _bound(frames) == 1009


def test_invalid_utf8_closes_1007() -> None:
    assert _bound([_masked(0x81, b"\xff\xfe")]) == 1007


def test_unmasked_client_frame_closes_1002() -> None:
    assert _bound([bytes((0x82, 3)) + b"abc"]) == 1002


def test_pings_past_max_ping_rate_close_1008() -> None:
    # Bursts of PING_BURST (1024), then max_ping_rate a second.
    assert _bound([_masked(0x89, b"p")] * 1500) == 1008


def test_pings_are_all_answered_without_max_ping_rate() -> None:
    async def main() -> None:
        server = await _server(lambda t: t.recv(10), max_ping_rate=None)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            client.writer.write(_masked(0x89, b"p") * 1500)
            pongs = 0
            while pongs < 1500:
                data = await asyncio.wait_for(client.reader.read(1 << 20), 5)
                assert data, "connection closed"
                client.ws.receive_data(data)
                pongs += sum(isinstance(ev, Frame) and ev.opcode is Opcode.PONG for ev in client.ws.events_received())
            client.writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def test_a_peer_that_does_not_read_gets_its_latest_pong_only() -> None:
    # While our writes wait for the peer to read (past the write limit), its PINGs are
    # not answered one by one into the buffer: once it reads, the latest one is.
    async def main() -> None:
        sent = asyncio.get_running_loop().create_future()

        async def handler(t: Transport) -> None:
            with contextlib.suppress(Exception):
                while t.buffered() < 4 << 20:  # past the kernel's buffers and the write limit
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(t.send(bytes(1 << 19)), 0.05)
                sent.set_result(None)
                await t.recv(10)

        server = await _server(handler)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            await asyncio.wait_for(sent, 5)
            client.writer.write(b"".join(_masked(0x89, b"%03d" % i) for i in range(200)))
            await asyncio.sleep(0.2)  # the server reads them all while its output waits
            pongs: list[bytes] = []
            while not pongs or pongs[-1] != b"199":
                data = await asyncio.wait_for(client.reader.read(1 << 20), 5)
                assert data, "connection closed"
                client.ws.receive_data(data)
                pongs += [
                    ev.data for ev in client.ws.events_received() if isinstance(ev, Frame) and ev.opcode is Opcode.PONG
                ]
            assert len(pongs) < 10, pongs  # not 200
            client.writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (_masked(0x81, b"\xff\xfe"), 1007),  # invalid UTF-8: our framer fails it
        (bytes((0x82, 3)) + b"abc", 1002),  # unmasked: websockets fails it
        (_masked(0xC2, b"abc"), 1002),  # RSV1 set: websockets fails it
        (_masked(0x82, b"x" * 2000), 1009),  # past max_size: websockets fails it
    ],
    ids=["utf8", "unmasked", "rsv1", "max_size"],
)
def test_input_after_a_failure_is_read_only_up_to_a_bound(bad: bytes, code: int) -> None:
    # Whoever decides the failure, what the peer sends after it is read up to 1 MiB
    # and dropped, then the socket is no longer read (websockets' failures were read
    # and parsed without a bound until close_timeout).
    async def main() -> None:
        wires: list[Transport] = []

        async def handler(t: Transport) -> None:
            wires.append(t)
            with contextlib.suppress(Exception):
                while True:
                    await t.recv(10)

        server = await _server(handler, max_size=1000, close_timeout=1)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            client.writer.write(bad)
            # Its close frame, unanswered (our close would end the connection).
            got = await asyncio.wait_for(client.reader.readexactly(4), 5)
            assert got[0] == 0x88 and int.from_bytes(got[2:4], "big") == code
            junk, sent = bytes(1 << 20), 0
            while sent < 256 << 20:
                client.writer.write(junk)
                try:
                    await asyncio.wait_for(client.writer.drain(), 0.5)
                except asyncio.TimeoutError:
                    break  # the server stopped reading: the kernel's buffers are full
                sent += len(junk)
            assert sent < 64 << 20
            client.writer.transport.abort()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 30)


def test_pings_after_our_close_stay_within_the_write_bound() -> None:
    # Our close waits for the peer's: meanwhile its PINGs are answered as on an open
    # connection (only the latest while it does not read), also after it answered a
    # PING of ours (a PONG once handed the rest to websockets, which answers each).
    async def main() -> None:
        closing = asyncio.get_running_loop().create_future()
        wires: list[Transport] = []

        async def handler(t: Transport) -> None:
            wires.append(t)
            closing.set_result(None)
            await t.close(1000, "bye")

        server = await _server(handler)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            await asyncio.wait_for(closing, 5)
            await asyncio.sleep(0.05)
            client.writer.write(_masked(0x8A, b"pong"))  # a PONG first, as to a keepalive
            pings = b"".join(_masked(0x89, b"%03d" % (i % 1000)) for i in range(2000))
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.5
            while loop.time() < end:  # never read
                client.writer.write(pings)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(client.writer.drain(), 0.1)
            assert wires[0].buffered() < 1 << 20
            client.writer.transport.abort()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 30)


def test_a_hook_on_the_opening_request_runs_on_the_data_path() -> None:
    # start_server(hook=...): the server's authenticate. It may take its time (nothing
    # is read meanwhile, and a frame sent right behind the request is not lost),
    # refuse with an HTTP answer, or accept and leave an identity on the transport.
    async def hook(connection: Any, request: Any) -> Any:
        await asyncio.sleep(0.05)
        if request.path == "/no":
            return connection.respond(403, "no\n")
        connection.identity = request.path
        return None

    async def handler(t: Transport) -> None:
        msg = await t.recv(5)
        await t.send(f"{t.identity} {msg!r}")
        await t.recv(5)

    async def upgrade(port: int, path: str, then: bytes = b"") -> tuple[bytes, asyncio.StreamReader, Any]:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            + then
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return head, reader, writer

    async def main() -> None:
        server = await start_server(handler, HOST, 0, hook=hook, compression=None, ping_interval=None)
        try:
            port = server.sockets[0].getsockname()[1]
            head, _, writer = await upgrade(port, "/no")
            assert head.startswith(b"HTTP/1.1 403"), head
            writer.close()
            head, reader, writer = await upgrade(port, "/me", then=_masked(0x82, b"hi"))
            assert head.startswith(b"HTTP/1.1 101"), head
            b0, n = await asyncio.wait_for(reader.readexactly(2), 5)
            assert b0 == 0x81
            assert await reader.readexactly(n) == b"/me b'hi'"
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def test_nothing_is_read_while_the_hook_decides_even_after_a_full_read() -> None:
    # A read that fills the read slice (256 KiB) schedules reading to go on at the
    # next loop pass: while the hook decides, it must not (the bytes behind the request
    # were read into the head's buffer, unbounded, and parsed as another head).
    frames = [_masked(0x82, bytes([i]) * 60_000 + b"\r\n\r\n") for i in range(10)]

    async def hook(connection: Any, request: Any) -> Any:
        await asyncio.sleep(0.3)
        return None

    async def handler(t: Transport) -> None:
        sizes = [len(await t.recv(5)) for _ in frames]
        await t.send(repr(sizes))
        await t.recv(5)

    async def main() -> None:
        server = await start_server(handler, HOST, 0, hook=hook, compression=None, ping_interval=None)
        try:
            listener = server.sockets[0]
            # Room in the kernel for the request and all its frames, so that the first
            # read takes a whole slice (accepted sockets inherit the listener's size).
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            port = listener.getsockname()[1]
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + b"".join(frames)
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101"), head
            b0, n = await asyncio.wait_for(reader.readexactly(2), 5)
            assert b0 == 0x81
            assert await reader.readexactly(n) == repr([60_004] * 10).encode()
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def _long_head(first_line: str) -> bytes:
    """An HTTP head of about 72 KiB that websockets' parser would take (each header
    under its 8 KiB line bound, 9 of them under its 128)."""
    filler = "".join(f"X-Filler-{i}: {'a' * 8000}\r\n" for i in range(9))
    return f"{first_line}\r\n{filler}".encode()


@pytest.mark.parametrize(
    "then", [b"", _masked(0x82, b"hi"), _masked(0x88, b"\x03\xe8")], ids=["alone", "data", "close"]
)
def test_an_opening_request_over_64_kib_is_refused_with_431(then: bytes) -> None:
    # Past 64 KiB without its end the head is refused by the data path, not handed to
    # websockets (which took it, up to ~1 MiB, and kept the bytes behind it: a frame
    # sent with the request was lost, a close frame raised in the transport).
    async def handler(t: Transport) -> None:
        await t.send(await t.recv(5))

    async def main() -> None:
        server = await _server(handler)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(HOST, port)
            head = _long_head("GET / HTTP/1.1") + (
                b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert len(head) > 64 << 10
            writer.write(head + then)
            answer = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closes
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
            assert b"over 64 KiB" in answer
            writer.close()
            # Others are untouched.
            client = await open_connection(f"ws://{HOST}:{port}/", compression=None, ping_interval=None)
            await client.send(b"ok")
            assert await client.recv(5) == b"ok"
            await client.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def test_a_handshake_response_over_64_kib_fails_the_client() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_long_head("HTTP/1.1 101 Switching Protocols") + b"\r\n")
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(answer, HOST, 0)
        try:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(Exception, match="handshake response is an HTTP head over 64 KiB"):
                await open_connection(f"ws://{HOST}:{port}/", compression=None, ping_interval=None)
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def test_an_open_connection_keeps_no_parsed_handshake() -> None:
    # websockets' parser keeps the opening request (server) or response (client) for
    # the life of the connection unless the data path lets it go: ~2 KiB of every idle
    # connection. The path and the raw head stay (request_path, request_headers).
    def alive() -> int:
        gc.collect()
        return sum(type(o) in (Request, Response) for o in gc.get_objects())

    async def main() -> None:
        seen: list[Transport] = []

        async def handler(t: Transport) -> None:
            seen.append(t)
            await t.recv(10)

        server = await _server(handler)
        try:
            before = alive()
            url = f"ws://{HOST}:{server.sockets[0].getsockname()[1]}/p?q=1"
            clients = [await open_connection(url, compression=None, ping_interval=None) for _ in range(20)]
            await until(lambda: len(seen) == 20)
            assert alive() - before < 5  # 20 connections, both ends
            assert seen[0].request_path == "/p?q=1"
            assert seen[0].request_headers["Upgrade"] == "websocket"
            for c in clients:
                await c.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def test_drop_says_why_and_does_not_wait_for_the_peer() -> None:
    # Transport.drop (a second socket racing for a session token, a session taken
    # over): the close frame goes out, then the TCP connection, without a handshake.
    async def main() -> None:
        dropped = asyncio.get_running_loop().create_future()

        async def handler(t: Transport) -> None:
            await t.recv(5)
            t.drop(1008, "taken over")
            dropped.set_result(None)

        server = await _server(handler)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            client.writer.write(_masked(0x82, b"x"))
            await asyncio.wait_for(dropped, 5)
            assert await client.close_code() == 1008
            assert client.ws.close_rcvd is not None and client.ws.close_rcvd.reason == "taken over"
        finally:
            server.close()
            await server.wait_closed()

    run(main(), 20)


def test_a_second_discard_ends_the_first_and_the_bound_is_shared() -> None:
    # Two discard() at once on one transport (a close that fails while another waits):
    # the first returns when the second takes over (it waited for ever before), and
    # what both drop counts against one DROP_LIMIT: past it, the transport reads at
    # DROP_RATE, not at line rate (48 MiB take at least ~2 s, socket buffers aside).
    from fastrpc.transport import DROP_LIMIT, DROP_RATE

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[Transport] = loop.create_future()
        end: asyncio.Future[None] = loop.create_future()

        async def handler(t: Transport) -> None:
            got.set_result(t)
            await end

        server = await _server(handler, max_size=4 << 20)
        try:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            t = await asyncio.wait_for(got, 5)
            first = asyncio.ensure_future(t.discard())
            await asyncio.sleep(0)
            second = asyncio.ensure_future(t.discard())
            done, _ = await asyncio.wait({first}, timeout=2)
            if not done:
                t.abort()  # (ends both: the test fails, not hangs)
                await asyncio.gather(first, second)
                raise AssertionError("the first discard() still waits once a second took over")
            assert not second.done()
            blob = bytes(256 << 10)
            total = 48 << 20
            for _ in range(total // len(blob)):
                client.ws.send_binary(blob)
            t0 = loop.time()
            client.writer.write(client.take())
            await asyncio.wait_for(client.writer.drain(), 15)
            # Up to 16 MiB of kernel buffers on both sides may take some at once.
            assert loop.time() - t0 >= (total - (16 << 20) - DROP_LIMIT) / DROP_RATE
            second.cancel()
            client.writer.close()
        finally:
            end.set_result(None)
            server.close()

    run(main(), 25)


def test_a_handler_error_kept_by_a_log_handler_does_not_kill_the_connection() -> None:
    # A message is fed as a view of the connection's buffer; a notification handler's
    # exception, logged and kept with its traceback (a log handler that holds records: pytest's caplog, a memory
    # handler) keeps the frames that held that view, and resizing the buffer raised
    # BufferError in the transport's read callback: "Fatal error on transport", the
    # connection dropped. The buffer is copied instead; every call is answered.
    import logging

    import msgspec
    from _util import frame, raw_client

    from fastrpc import frames as F

    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    router = fastrpc.Router()

    @router.method
    def boom(x: str) -> None:
        raise ValueError("boom")

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger("fastrpc"), logging.getLogger("asyncio")]
    for lg in loggers:
        lg.addHandler(handler)

    async def main() -> None:
        async with fastrpc.serve(router, HOST, 0, keepalive_interval=None) as server:
            async with raw_client(server.url) as c:
                args = msgspec.msgpack.encode(["y" * 5000])
                for i in range(30):  # a notification's failure is logged, with its traceback
                    await c.send(frame(F.NOTIFY, 0, 0, b"\x04boom" + args))
                    await c.send(frame(F.REQUEST, 0, 2 * i + 1, b"\x04boom" + args))
                await c.send(frame(F.REQUEST, 0, 999, b"\x03add" + msgspec.msgpack.encode([1, 2])))
                answered = 0
                while True:
                    frames = await c.recv_frames(5)
                    answered += len(frames)
                    if any(f.id == 999 for f in frames):
                        break
                assert answered == 31

    try:
        run(main(), 20)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    fatal = [r.getMessage() for r in kept if "Fatal error" in r.getMessage()]
    assert not fatal, fatal[0]
