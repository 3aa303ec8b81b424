"""Helpers shared by the loopback tests of the RpcPeer / StreamManager layer.

Tests are plain sync functions that call :func:`run`, which runs a coroutine on a
fresh uvloop loop with an overall timeout and checks that nothing was left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import io
import os
import select
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import uvloop
from websockets.asyncio.client import connect as ws_connect

import fastrpc
from fastrpc import frames as F
from fastrpc.protocol import Connection, Role, Settings

T = TypeVar("T")

# websockets >= 15.0 connects through the system's proxy settings unless proxy=None;
# 14.x has no such argument and hands unknown ones to loop.create_connection (TypeError).
NO_PROXY: dict[str, Any] = {"proxy": None} if "proxy" in inspect.signature(ws_connect).parameters else {}

__all__ = [
    "RawClient",
    "assert_idle",
    "frame",
    "leftovers",
    "pair",
    "raw_client",
    "recv_binary",
    "run",
    "server_peer",
    "until",
]

# Options every test connection uses: no keepalive timers running in the background.
QUIET = {"keepalive_interval": None, "ws_ping_interval": None}


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run ``coro`` on a fresh uvloop loop; fail if it takes longer than ``timeout``
    seconds or leaves tasks behind once it returned."""

    async def main() -> T:
        me = asyncio.current_task()
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            where = io.StringIO()
            task.print_stack(file=where)
            task.cancel()
            await asyncio.wait({task}, timeout=5)
            raise AssertionError(f"test did not finish within {timeout} s; it was at:\n{where.getvalue()}")
        result = task.result()
        # Whatever the test started must have finished (bounded poll: tasks that were
        # just cancelled or are closing sockets get a moment to finish).
        for _ in range(200):
            left = [t for t in asyncio.all_tasks() if t is not me]
            if not left:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"tasks left running: {left!r}")
        return result

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        out = runner.run(main())
    gc.collect()
    return out


async def until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``cond()`` once per loop iteration (and then every ms) until it is truthy;
    return its value. Raises AssertionError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    spins = 0
    while True:
        value = cond()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        spins += 1
        await asyncio.sleep(0 if spins < 100 else 0.001)


@contextlib.asynccontextmanager
async def pair(
    target: Any,
    *,
    client_router: fastrpc.Router | None = None,
    server_opts: dict[str, Any] | None = None,
    client_opts: dict[str, Any] | None = None,
    check_idle: bool = True,
) -> AsyncIterator[tuple[fastrpc.Server, fastrpc.RpcPeer]]:
    """A server for ``target`` on 127.0.0.1 and one client connected to it.

    ``check_idle``: when the body finishes normally on an open connection, both ends
    must (soon) track no call or stream any more.
    """
    async with fastrpc.serve(target, "127.0.0.1", 0, **{**QUIET, **(server_opts or {})}) as server:
        async with fastrpc.connect(server.url, router=client_router, **{**QUIET, **(client_opts or {})}) as peer:
            yield server, peer
            if check_idle and not peer.closed:
                await assert_idle(peer, *[p for p in server.peers if not p.closed])


async def server_peer(server: fastrpc.Server, timeout: float = 5.0) -> fastrpc.RpcPeer:
    """The server side of the (single) connection to ``server``."""
    await until(lambda: server.peers, timeout, "the server's peer")
    return next(iter(server.peers))


def frame(ftype: int, flags: int, fid: int, payload: bytes = b"") -> bytes:
    return F.encode_frame(ftype, flags, fid, payload)


async def recv_binary(ws: Any, timeout: float = 5.0) -> bytes:
    """The next binary message on a bare websockets connection.

    A server greets a client that stays silent for ``json_wait`` (0.5 s) with the
    seed's JSON welcome; on a loaded CI machine a hand-built HELLO can arrive that
    late, so the welcome is skipped here as fastrpc's own client skips it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await asyncio.wait_for(ws.recv(), max(deadline - loop.time(), 0.0))
        if isinstance(msg, bytes):
            return msg
        if not msg.startswith('{"category":"welcome"'):
            raise AssertionError(f"expected a binary message, got text {msg[:80]!r}")


class RawClient:
    """A misbehaving client: a bare websockets connection speaking hand-built frames."""

    def __init__(self, ws: Any, core: Connection) -> None:
        self.ws = ws
        self.core = core  # a client core, for building well-formed frames

    def core_payload(self, args: tuple[Any, ...]) -> bytes:
        """Call arguments encoded as fastrpc's client would (msgpack)."""
        return msgspec.msgpack.encode(list(args))

    async def send(self, data: bytes | str | None) -> None:
        assert data is not None
        await self.ws.send(data)

    async def drain(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Read until the server closes; return ``(close code, reason)``."""

        async def read() -> None:
            with contextlib.suppress(Exception):
                async for _ in self.ws:
                    pass

        await asyncio.wait_for(read(), timeout)
        rcvd = self.ws.protocol.close_rcvd
        if rcvd is None:
            return None, ""
        return rcvd.code, rcvd.reason

    async def recv_frames(self, timeout: float = 5.0) -> list[Any]:
        """Receive one message; return its frames."""
        msg = await recv_binary(self.ws, timeout)
        return F.decode_message(msg, 1 << 30)  # type: ignore[no-any-return]


async def send_until_closed(
    ws: Any, msg: Any, closed: Callable[[], bool], seconds: float, probe: Callable[[], int]
) -> tuple[int, int]:
    """Send ``msg`` on ``ws`` again and again until ``closed()``, ``seconds`` pass, or a
    send does not complete within 5 s (the other side stopped reading) or fails;
    ``(messages sent, the largest probe() seen every 100 sends)``."""
    from websockets.exceptions import ConnectionClosed as WSClosed

    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    most = sent = 0
    while not closed() and loop.time() < deadline:
        try:
            await asyncio.wait_for(ws.send(msg), 5)
        except (WSClosed, asyncio.TimeoutError):
            break
        sent += 1
        if sent % 100 == 0:
            most = max(most, probe())
            await asyncio.sleep(0)
    return sent, most


def frames_server(
    settings: Settings, on_frame: Callable[[Any, F.Frame], Coroutine[Any, Any, None]]
) -> Callable[[Any], Coroutine[Any, Any, None]]:
    """A websockets server handler of hand-built frames: a real core does the fastrpc
    handshake (with ``settings``), then ``on_frame(ws, frame)`` gets every frame the
    client sends, in order (text messages are ignored)."""

    async def handler(ws: Any) -> None:
        core = Connection(Role.SERVER, settings)
        async for msg in ws:
            if isinstance(msg, str):
                continue
            if not core.ready:
                core.receive_message(msg)
                await ws.send(core.next_message())
                continue
            for f in F.decode_message(msg, 1 << 30):
                await on_frame(ws, f)

    return handler


@contextlib.asynccontextmanager
async def raw_client(url: str, settings: Settings | None = None) -> AsyncIterator[RawClient]:
    """Connect to a fastrpc server and do the HELLO exchange by hand."""
    core = Connection(Role.CLIENT, settings or Settings())
    # close_timeout: a raw client that did not read what the server sent (its queue
    # full, so it reads no more) never sees the server's close frame; its exit
    # waited websockets' 10 s for it.
    ws = await ws_connect(url, compression=None, ping_interval=None, max_size=None, close_timeout=1, **NO_PROXY)
    try:
        hello = core.next_message()
        assert hello is not None
        await ws.send(hello)
        core.receive_message(await recv_binary(ws))
        assert core.ready
        yield RawClient(ws, core)
    finally:
        await ws.close()


def leftovers(peer: fastrpc.RpcPeer) -> dict[str, Any]:
    """What a connection still tracks: all empty once it is idle."""
    found = peer.stats()
    keep = (
        "calls_out",
        "stream_calls_out",
        "calls_in",
        "in",
        "out",
        "ledger_in",
        "ledger_out",
        "peer.calls",
        "peer.tasks",
        "senders",
        "incoming",
        "claims",
        "held",
        "free_in",
        "refused",
        "slots",
    )
    return {k: found[k] for k in keep if found[k]}


async def assert_idle(*peers: fastrpc.RpcPeer, timeout: float = 5.0) -> None:
    """Wait until every peer tracks no call or stream any more (bounded poll)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = {i: leftovers(p) for i, p in enumerate(peers)}
        left = {i: v for i, v in left.items() if v}
        if not left:
            return
        if loop.time() > deadline:
            raise AssertionError(f"connection state left behind: {left}")
        await asyncio.sleep(0.001)


class Redirect:
    """A ``Subscription``'s caller that sends its streaming call to another method:
    a server that answers a subscription with events of its own making."""

    def __init__(self, peer: fastrpc.RpcPeer, method: str) -> None:
        self.peer = peer
        self.method = method

    @property
    def closed(self) -> bool:
        return self.peer.closed

    def stream(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        return self.peer.stream(self.method, *args, timeout=timeout)


async def ws_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client over a bare socket, whose writes are ours to shape: the upgrade and
    the HELLO exchange by hand."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: fastrpc\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    core = Connection(Role.CLIENT, Settings())
    hello = core.next_message()
    assert hello is not None
    writer.write(F.mask_frame(hello, b"\x01\x02\x03\x04"))
    core.receive_message(await ws_message(reader))
    assert core.ready
    return reader, writer


async def ws_message(reader: asyncio.StreamReader) -> bytes:
    """The next WebSocket message from a server (unmasked, unfragmented)."""
    b0, b1 = await reader.readexactly(2)
    assert b0 == 0x82 and not b1 & 0x80, (b0, b1)
    size = b1 if b1 < 126 else int.from_bytes(await reader.readexactly(2 if b1 == 126 else 8), "big")
    return await reader.readexactly(size)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process that imports this fastrpc (its tree first
    on PYTHONPATH), with ``extra`` set."""
    env = dict(os.environ)
    src = str(Path(fastrpc.__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([src, *(p for p in parts if p != src)])
    env.update(extra)
    return env


def read_line(proc: subprocess.Popen[Any], deadline: float) -> str:
    """The next line ``proc`` writes to its stdout (a pipe), read a byte at a time so
    that nothing after it is taken; AssertionError past ``deadline`` (monotonic) or
    once the process exits."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line from the process within the time allowed (got {buf!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            err = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
            raise AssertionError(f"the process exited: {buf!r} {err!r}")
        buf += chunk
    return buf.decode()


def uvicorn_send_waits() -> bool:
    """Whether this uvicorn's websockets-sansio `send` waits while its socket is full
    (its protocol pauses on pause_writing: 0.55 does, 0.35, the floor, does not): only
    then does an ASGI app see that its client does not read (docs/json-mode.md)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    return "pause_writing" in WebSocketsSansIOProtocol.__dict__
