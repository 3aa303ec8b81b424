"""A hostile "server" for the JavaScript client's defences: ``python tests/_js_hostile_server.py``.

Speaks just enough of the protocol (a real WebSocket server, websockets' asyncio API):
answers the client's HELLO with its own (default settings), then, on the first REQUEST,
misbehaves as the REQUEST's method name says (``window``: 300 KiB of STREAM_DATA on the
call's result stream, past the 256 KiB window; ``ping``: a 65-byte PING; ``type``: an
unknown frame type below 0x40; ``big``: a frame over the client's 1 MiB frame limit;
``open_twice``: a second OPEN on one stream; ``flood``: 8 streams of 200 KiB that
nobody claims, within their windows: only the client's memory bound stops them;
``linger``: an item on the call's result stream, GOAWAY NO_ERROR, then an item every
20 ms and never a close frame: only the client's closeTimeout ends it). It prints
``port N`` when listening, and ``goaway CODE`` for each GOAWAY the client sends back.

``--resume``: a server that resumes sessions, then breaks the resume handshake. A new
session's first REQUEST is acknowledged (ACK) and its transport closed, the call left
unanswered; the client's RESUME is answered with a RESUME_OK whose position is, as the
method name says, ``before_ack`` (one frame before the ACK) or ``past_sent`` (five frames
past what the client sent). It prints ``hello new`` or ``hello resume TOKEN`` (the first
8 hex digits of the token presented) for each handshake."""

from __future__ import annotations

import asyncio
import secrets
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fastrpc import frames as F
from fastrpc.calls import FLAG_RAW as RAW
from fastrpc.settings import Settings


def attack(kind: str, cid: int) -> list[bytes]:
    data = F.STREAM_DATA
    if kind == "window":
        chunk = b"x" * (60 << 10)
        first = F.encode_frame(data, F.FLAG_OPEN | RAW, cid, chunk)
        return [first + b"".join(F.encode_frame(data, RAW, cid, chunk) for _ in range(4))]
    if kind == "ping":
        return [F.encode_frame(F.PING, 0, 0, b"p" * 65)]
    if kind == "type":
        return [F.encode_frame(0x07, 0, 0, b"")]
    if kind == "big":
        return [F.encode_frame(data, F.FLAG_OPEN | RAW, cid, b"y" * ((1 << 20) + 1))]
    if kind == "open_twice":
        return [F.encode_frame(data, F.FLAG_OPEN, cid, b"\x01") + F.encode_frame(data, F.FLAG_OPEN, cid, b"\x02")]
    if kind == "flood":
        return [F.encode_frame(data, F.FLAG_OPEN | RAW, 2 * i + 2, b"f" * (200 << 10)) for i in range(8)]
    raise ValueError(kind)


async def linger(ws: ServerConnection, cid: int) -> None:
    """Item 0, GOAWAY, then items 1, 2, ... every 20 ms until the client closes."""
    data = F.STREAM_DATA
    i = 1
    try:
        await ws.send(F.encode_frame(data, F.FLAG_OPEN | RAW, cid, (0).to_bytes(4, "big")))
        await ws.send(F.encode_frame(F.GOAWAY, 0, 0, F.encode_varint(0) + b"lingering"))
        while True:
            await asyncio.sleep(0.02)
            await ws.send(F.encode_frame(data, RAW, cid, i.to_bytes(4, "big")))
            i += 1
    except ConnectionClosed:
        print(f"closed after {i} items", flush=True)


async def handler(ws: ServerConnection) -> None:
    hello_sent = False
    tasks: set[asyncio.Task[None]] = set()
    async for msg in ws:
        assert isinstance(msg, bytes)
        for f in F.decode_message(msg, 1 << 30):
            if f.type == F.HELLO and not hello_sent:
                hello_sent = True
                await ws.send(F.encode_frame(F.HELLO, 0, 0, Settings().to_wire()))
            elif f.type == F.REQUEST:
                payload = bytes(f.payload)
                n, pos = F.decode_varint(payload, 0)
                if payload[pos : pos + n] == b"linger":
                    task = asyncio.get_running_loop().create_task(linger(ws, f.id))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    continue
                for m in attack(payload[pos : pos + n].decode(), f.id):
                    await ws.send(m)
            elif f.type == F.GOAWAY:
                code, _ = F.decode_varint(bytes(f.payload), 0)
                print(f"goaway {code}", flush=True)


# token -> (the method that opened the session, frames received from the client)
SESSIONS: dict[bytes, tuple[str, int]] = {}


def session_frame(ftype: int, flags: int, token: bytes, pos: int) -> bytes:
    return F.encode_frame(ftype, flags, 0, token + F.encode_varint(pos))


async def resume_handler(ws: ServerConnection) -> None:
    hello = F.encode_frame(F.HELLO, 0, 0, Settings(resume=1).to_wire())
    token = b""
    received = 0
    async for msg in ws:
        assert isinstance(msg, bytes)
        frames = F.decode_message(msg, 1 << 30)
        if not token:  # the handshake: HELLO (, RESUME)
            if len(frames) > 1 and frames[1].type == F.RESUME:
                old = bytes(frames[1].payload[:32])
                print(f"hello resume {old.hex()[:8]}", flush=True)
                method, got = SESSIONS.pop(old, ("", 0))
                pos = got - 1 if method == "before_ack" else got + 5
                token = secrets.token_bytes(32)
                await ws.send(hello + session_frame(F.RESUME_OK, 0, token, pos))
                continue
            print("hello new", flush=True)
            token = secrets.token_bytes(32)
            await ws.send(hello + session_frame(F.RESUME_OK, F.FLAG_NEW, token, 0))
            frames = frames[1:]
        for f in frames:
            received += 1
            if f.type == F.REQUEST:
                payload = bytes(f.payload)
                n, pos = F.decode_varint(payload, 0)
                SESSIONS[token] = (payload[pos : pos + n].decode(), received)
                await ws.send(F.encode_frame(F.ACK, 0, 0, F.encode_varint(received)))
                await ws.close(1012, "going away, come back")
                return
            if f.type == F.GOAWAY:
                code, _ = F.decode_varint(bytes(f.payload), 0)
                print(f"goaway {code}", flush=True)


async def main() -> None:
    run = resume_handler if "--resume" in sys.argv[1:] else handler
    async with serve(run, "127.0.0.1", 0, max_size=None) as server:
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
