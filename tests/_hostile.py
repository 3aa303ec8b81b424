"""Harness of the hostile tests (tests/test_hostile.py): a fastrpc server in a child
process, a well-behaved probe client in another, and attack clients in the test process.

For every attack :func:`hostile` measures what issue 11 asks of a server that trusts no
peer, and :meth:`Result.verify` asserts it:

* the server's RSS (``/proc/<pid>/status``: VmRSS sampled every 10 ms, and VmHWM) grows
  by less than :data:`RSS_LIMIT` (64 MiB) over its level before the attack;
* the attacker's connection is closed with a documented close code
  (docs/protocol.md: 1002, 1007, 1008, 1009, 1011; each test names the ones that fit);
* the probe, calling ``add`` every 20 ms on its own connection, gets every answer within
  :data:`PROBE_LIMIT_MS` (100 ms) and sees no error.

``FASTRPC_HOSTILE_REPORT=path`` appends one JSON line per attack to ``path`` (the
figures, pass or fail); each result is also printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import uvloop
from _util import recv_binary
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WSClosed

import fastrpc
from fastrpc import frames as F
from fastrpc.protocol import Connection, Role, Settings

MiB = 1 << 20
RSS_LIMIT = 64 * MiB
PROBE_LIMIT_MS = 100.0
# The close codes of docs/protocol.md's GOAWAY table, errors only.
ERROR_CODES = frozenset({1002, 1007, 1008, 1009, 1011})
# An attack stops pushing once the server grew this much: the test has failed by then,
# and the machine is shared.
SAFETY_CAP = 256 * MiB

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_SCRIPT = os.path.join(HERE, "_hostile_server.py")
PROBE_SCRIPT = os.path.join(HERE, "_hostile_probe.py")

__all__ = [
    "ERROR_CODES",
    "RSS_LIMIT",
    "Attacker",
    "Context",
    "Outcome",
    "RawWS",
    "Result",
    "frame",
    "hostile",
    "request",
]


def frame(ftype: int, flags: int, fid: int, payload: bytes = b"") -> bytes:
    return F.encode_frame(ftype, flags, fid, payload)


def request(cid: int, method: str, args: bytes = b"\x90", flags: int = 0) -> bytes:
    """A REQUEST frame; ``args`` is the MessagePack-encoded argument list."""
    m = method.encode()
    return frame(F.REQUEST, flags, cid, F.encode_varint(len(m)) + m + args)


# ------------------------------------------------------------------ processes


def _read_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def _spawn_server() -> tuple[subprocess.Popen[str], Any]:
    """``_hostile_server.py -``: started, waiting for its options on stdin."""
    err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by ServerProc.close()
    proc = subprocess.Popen(
        [sys.executable, SERVER_SCRIPT, "-"], stdout=subprocess.PIPE, stderr=err, stdin=subprocess.PIPE, text=True
    )
    return proc, err


class ServerProc:
    """``tests/_hostile_server.py`` in a child process (port 0, reported on stdout).

    ``spawned``: a process of :func:`_spawn_server` started ahead (else one starts now);
    it serves with ``options`` once given them."""

    def __init__(self, options: dict[str, Any], spawned: tuple[subprocess.Popen[str], Any] | None = None) -> None:
        self.options = options
        self.closes: list[str] = []  # "closed CODE REASON" lines, as the server reports them
        self.proc, self._stderr = spawned or _spawn_server()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(options) + "\n")
            self.proc.stdin.close()
        except OSError:
            pass  # it exited: no port below
        self.pid = self.proc.pid
        self._port: list[int] = []
        self._ready = threading.Event()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()
        if not self._ready.wait(20) or not self._port:
            self.stop()
            raise RuntimeError(f"hostile server did not start: {self.stderr()}")
        self.url = f"ws://127.0.0.1:{self._port[0]}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("port "):
                self._port.append(int(line.split()[1]))
                self._ready.set()
            elif line.startswith("closed "):
                self.closes.append(line[7:])
        self._ready.set()

    def rss(self) -> int:
        return _read_status(self.pid)["VmRSS"]

    def hwm(self) -> int:
        return _read_status(self.pid)["VmHWM"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def close(self) -> None:
        self.stop()
        self._stderr.close()


class Probe:
    """``tests/_hostile_probe.py``: a well-behaved client calling every 20 ms.

    The process starts at once and waits for its URL (:meth:`start`): it can be
    started ahead of its attack."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, PROBE_SCRIPT, "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
        )

    def start(self, url: str, connect_every: float | None = None) -> None:
        """Give it the server's URL; return once it made its first call."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(f"{url} {connect_every or ''}\n")
            self.proc.stdin.flush()  # (communicate() closes it)
        except OSError:
            pass  # it exited: no "ready" below
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(20)
        if not line or line[0].strip() != "ready":
            self.kill()
            raise RuntimeError("the probe client did not start")

    def stop(self) -> dict[str, Any]:
        """Stop it; its figures (see _hostile_probe.py)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
            return {"max_ms": float("inf"), "calls": 0, "errors": ["the probe did not stop"]}
        lines = out.strip().splitlines()
        try:
            return json.loads(lines[-1])  # type: ignore[no-any-return]
        except (IndexError, ValueError):
            return {"max_ms": float("inf"), "calls": 0, "errors": [f"probe output: {out[-500:]!r} {err[-1500:]!r}"]}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


# The server and probe processes of the next attack, started once this attack's probe
# has stopped (while the last figures are read): a process's start (an interpreter,
# fastrpc's imports) then overlaps work that measures nothing. Each attack still gets
# fresh processes; they wait, idle, for their server's options and URL.
_SPARES: dict[str, Any] = {}


def _start_spares() -> None:
    if "server" not in _SPARES:
        _SPARES["server"] = _spawn_server()
    if "probe" not in _SPARES:
        _SPARES["probe"] = Probe()


def drop_spares() -> None:
    """End the processes started for an attack that did not come (end of the tests)."""
    server, probe = _SPARES.pop("server", None), _SPARES.pop("probe", None)
    if server is not None:
        proc, err = server
        proc.kill()
        proc.communicate()
        err.close()
    if probe is not None:
        probe.kill()


# ------------------------------------------------------------------- results


@dataclass
class Outcome:
    """How the attacker's connection ended, as the attacker saw it."""

    closed: bool  # the connection ended (close frame or not) within the time allowed
    code: int | None = None  # close code received (None: no close frame)
    reason: str = ""
    goaway: tuple[int, str] | None = None  # the last GOAWAY received, if any

    def describe(self) -> str:
        if not self.closed:
            return "not closed"
        if self.code is None:
            return "dropped without a close frame"
        return f"{self.code} {self.reason!r}"


@dataclass
class Result:
    attack: str
    options: dict[str, Any]
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    growth_mib: float = 0.0
    close: str = "n/a"
    close_code: int | None = None
    expect_codes: list[int] | None = None
    goaway: Any = None
    probe_max_ms: float = 0.0
    probe_p99_ms: float | None = None
    probe_calls: int = 0
    probe_max_at_s: float | None = None
    probe_errors: list[str] = field(default_factory=list)
    connect_max_ms: float | None = None
    seconds: float = 0.0
    server_closes: list[str] = field(default_factory=list)
    server_stderr: str = ""
    notes: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"HOSTILE {self.attack}: rss +{self.growth_mib:.1f} MiB (before {self.rss_before_mib:.1f}, "
            f"peak {self.rss_peak_mib:.1f}, after {self.rss_after_mib:.1f}); close {self.close}; "
            f"probe max {self.probe_max_ms:.1f} ms at {self.probe_max_at_s} s ({self.probe_calls} calls, "
            f"{len(self.probe_errors)} errors); {self.seconds:.1f} s; notes {self.notes}"
        )

    def verify(self) -> None:
        if self.failures:
            detail = json.dumps({k: v for k, v in asdict(self).items() if k != "failures"}, indent=1, default=str)
            raise AssertionError("; ".join(self.failures) + "\n" + self.summary() + "\n" + detail)


class Context:
    """What an attack gets: the server's address, its RSS, and places for figures."""

    def __init__(self, server: ServerProc, before: int, time_limit: float) -> None:
        self.server = server
        self.url = server.url
        self.before = before
        self.start = time.monotonic()
        self.time_limit = time_limit
        self.notes: dict[str, Any] = {}
        self.checks: list[tuple[str, bool]] = []

    def growth(self) -> int:
        try:
            return self.server.rss() - self.before
        except (OSError, KeyError):
            return 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def keep_going(self, seconds: float) -> bool:
        """True while the attack may go on: within ``seconds`` of its start and under the
        safety cap of RSS growth."""
        return self.elapsed() < seconds and self.growth() < SAFETY_CAP and self.server.alive()

    def note(self, key: str, value: Any) -> None:
        self.notes[key] = value

    def check(self, what: str, ok: bool) -> None:
        """An extra target of this attack (asserted with the others)."""
        self.checks.append((what, bool(ok)))

    async def debug(self) -> dict[str, int]:
        """The server's ``debug()``: what it tracks, over all connections."""
        async with fastrpc.connect(self.url, keepalive_interval=None, ws_ping_interval=None) as peer:
            return await asyncio.wait_for(peer.call("debug"), 10)  # type: ignore[no-any-return]


async def _sample(server: ServerProc, samples: list[int]) -> None:
    while True:
        try:
            samples.append(server.rss())
        except (OSError, KeyError):
            return
        await asyncio.sleep(0.01)


def hostile(
    attack: str,
    run_attack: Callable[[Context], Awaitable[Outcome | None]],
    *,
    options: dict[str, Any] | None = None,
    expect: Iterable[int] | None = ERROR_CODES,
    time_limit: float = 30.0,
    connect_every: float | None = None,
) -> Result:
    """Run one attack against a fresh server; return its :class:`Result` (figures and
    the targets it missed; call ``.verify()``).

    ``expect``: the close codes the attacker's connection may end with; None when the
    attacker ends its connections itself (there is nothing for the server to close).
    """
    options = dict(options or {})
    result = Result(attack, options, expect_codes=sorted(expect) if expect is not None else None)
    probe: Probe | None = _SPARES.pop("probe", None) or Probe()
    try:
        server = ServerProc(options, _SPARES.pop("server", None))
    except BaseException:
        probe.kill()
        raise
    try:
        probe.start(server.url, connect_every)
        time.sleep(0.3)
        before = min(server.rss() for _ in range(3))
        ctx = Context(server, before, time_limit)
        samples: list[int] = [before]

        async def main() -> Outcome | None:
            sampler = asyncio.ensure_future(_sample(server, samples))
            try:
                return await asyncio.wait_for(run_attack(ctx), time_limit)
            finally:
                await _abort_all()
                await asyncio.sleep(0.3)  # the probe keeps measuring a little after the attack
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)

        outcome: Outcome | None = None
        error: BaseException | None = None
        t0 = time.monotonic()
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                outcome = runner.run(main())
        except asyncio.TimeoutError:
            error = AssertionError(f"the attack did not finish within {time_limit} s")
        except Exception as exc:
            error = AssertionError(f"the attack failed: {exc!r}")
        result.seconds = round(time.monotonic() - t0, 2)
        stats = probe.stop()
        probe = None
        _start_spares()  # the probe is done: the next attack's processes start meanwhile
        time.sleep(0.2)
        alive = server.alive()
        after = server.rss() if alive else 0
        peak = max([*samples, server.hwm() if alive else 0])
        result.rss_before_mib = round(before / MiB, 1)
        result.rss_peak_mib = round(peak / MiB, 1)
        result.rss_after_mib = round(after / MiB, 1)
        result.growth_mib = round((peak - before) / MiB, 1)
        result.probe_max_ms = round(float(stats.get("max_ms", float("inf"))), 1)
        result.probe_p99_ms = stats.get("p99_ms")
        result.probe_calls = int(stats.get("calls", 0))
        result.probe_max_at_s = stats.get("max_at_s")
        result.probe_errors = list(stats.get("errors", []))
        result.connect_max_ms = stats.get("connect_max_ms")
        result.notes = ctx.notes
        result.server_closes = server.closes[-5:]
        err_text = server.stderr()
        result.server_stderr = err_text[-2000:]

        f = result.failures
        if error is not None:
            f.append(str(error))
        if not alive:
            f.append("the server process died")
        if peak - before >= RSS_LIMIT:
            f.append(f"RSS grew by {result.growth_mib} MiB (limit {RSS_LIMIT // MiB})")
        if expect is not None:
            if outcome is None:
                result.close = "unknown"
                f.append("the attack reported no outcome")
            else:
                result.close = outcome.describe()
                result.close_code = outcome.code
                result.goaway = outcome.goaway
                if not outcome.closed:
                    f.append("the attacker's connection was not closed")
                elif outcome.code not in expect:
                    f.append(f"closed with {outcome.describe()}, expected one of {sorted(expect)}")
        elif outcome is not None and outcome.code is not None:
            result.close = outcome.describe()
            result.close_code = outcome.code
        if result.probe_max_ms >= PROBE_LIMIT_MS:
            f.append(f"probe max latency {result.probe_max_ms} ms (limit {PROBE_LIMIT_MS:.0f})")
        if result.probe_errors:
            f.append(f"probe errors: {result.probe_errors[:3]}")
        if result.probe_calls < 5:
            f.append(f"the probe made only {result.probe_calls} calls")
        for what, ok in ctx.checks:
            if not ok:
                f.append(what)
        if "Traceback" in err_text:
            result.notes["server_traceback"] = True
    finally:
        if probe is not None:
            probe.kill()
        server.close()
    print(result.summary())
    path = os.environ.get("FASTRPC_HOSTILE_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(asdict(result), default=str) + "\n")
    return result


# ------------------------------------------------------------- attack clients

# websockets < 15 has no proxy support (nor the option to turn it off).
_HAS_PROXY = "proxy" in inspect.signature(ws_connect.__init__).parameters

# Every attack connection of the running attack: dropped when it ends, whatever it left.
_OPEN: list[Any] = []


async def _abort_all() -> None:
    conns, _OPEN[:] = list(_OPEN), []
    for c in conns:
        with contextlib.suppress(Exception):
            if isinstance(c, RawWS):
                await c.aclose()
            else:
                await c.abort()


class Attacker:
    """A bare websockets connection speaking hand-built frames (after a HELLO of its
    own, unless ``hello`` is False).

    ``reading=False``: websockets stops reading the socket once one message is queued
    (``max_queue=1``) and the attacker never reads: a client that never drains its
    replies. :meth:`outcome` then reads everything that is left, to find the close.
    """

    def __init__(self, ws: Any, handshake: list[Any]) -> None:
        self.ws = ws
        self.handshake = handshake  # the server's handshake frames
        self.sent = 0
        self.last: list[bytes] = []  # the last messages received
        self.received: dict[int, int] = {}  # frame type -> count (start_reading(count=True))
        self._count = False
        self._reader: asyncio.Future[None] | None = None
        self.first_text: str | None = None  # the server's first reply, in JSON mode
        _OPEN.append(self)

    @classmethod
    async def open(
        cls,
        url: str,
        settings: Settings | None = None,
        *,
        reading: bool = True,
        hello: bytes | None = None,
        wait_hello: bool = True,
    ) -> Attacker:
        options: dict[str, Any] = {
            "compression": None,
            "max_size": None,
            "ping_interval": None,
            "max_queue": 16 if reading else 1,
            "open_timeout": 10,
            "close_timeout": 2,
        }
        if _HAS_PROXY:
            options["proxy"] = None
        ws = await ws_connect(url, **options)
        if hello is None:
            core = Connection(Role.CLIENT, settings or Settings())
            hello = core.handshake()
        if hello:  # b"": send nothing yet
            await ws.send(hello)
        self = cls(ws, [])
        if wait_hello:
            try:
                reply = await asyncio.wait_for(ws.recv(), 5)
                if (
                    isinstance(reply, str)
                    and isinstance(hello, bytes)
                    and hello
                    and reply.startswith('{"category":"welcome"')
                ):
                    reply = await recv_binary(ws)  # our HELLO came after json_wait
            except WSClosed:
                return self
            if isinstance(reply, bytes):
                self.handshake = F.decode_message(reply, 1 << 40)
            else:
                self.first_text = reply
        return self

    @property
    def token(self) -> bytes | None:
        for f in self.handshake:
            if f.type == F.RESUME_OK:
                return bytes(f.payload[:32])
        return None

    def closed(self) -> bool:
        return self.ws.protocol.close_rcvd is not None or self.ws.state.name == "CLOSED"

    async def send(self, data: bytes | str, timeout: float = 5.0) -> bool:
        """Send one message; False when the connection is gone or the send did not
        complete within ``timeout`` (the server stopped reading)."""
        try:
            await asyncio.wait_for(self.ws.send(data), timeout)
        except (WSClosed, OSError, asyncio.TimeoutError):
            return False
        self.sent += 1
        return True

    async def recv_frames(self, timeout: float = 5.0) -> list[Any]:
        msg = await recv_binary(self.ws, timeout)
        return F.decode_message(msg, 1 << 40)  # type: ignore[no-any-return]

    def start_reading(self, count: bool = False) -> None:
        """Read (and drop) what the server sends, in the background; with ``count``,
        count the frames received by type in :attr:`received`."""
        if self._reader is None:
            self._count = count
            self._reader = asyncio.ensure_future(self._read_all())

    async def _read_all(self) -> None:
        with contextlib.suppress(WSClosed, OSError):
            async for msg in self.ws:
                if isinstance(msg, bytes):
                    self.last.append(msg)
                    del self.last[:-3]
                    if self._count:
                        for f in F.decode_message(msg, 1 << 40):
                            self.received[f.type] = self.received.get(f.type, 0) + 1

    async def outcome(self, timeout: float = 5.0) -> Outcome:
        """Read until the server closes (at most ``timeout`` s); how it ended."""
        self.start_reading(self._count)
        assert self._reader is not None
        done, _ = await asyncio.wait({self._reader}, timeout=timeout)
        goaway = None
        for msg in self.last:
            try:
                for f in F.decode_message(msg, 1 << 40):
                    if f.type == F.GOAWAY:
                        code, pos = F.decode_varint(f.payload, 0)
                        goaway = (code, bytes(f.payload[pos:]).decode("utf-8", "replace"))
            except Exception:
                pass
        rcvd = self.ws.protocol.close_rcvd
        if not done:
            await self.abort()
            return Outcome(False, None, "", goaway)
        if rcvd is None:
            return Outcome(True, None, "", goaway)
        return Outcome(True, rcvd.code, rcvd.reason, goaway)

    async def abort(self) -> None:
        """Drop the TCP connection without a close handshake."""
        transport = self.ws.transport
        if transport is not None:
            transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.wait_closed(), 2)
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._reader, 2)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
        await self.abort()


class RawWS:
    """A WebSocket client over a bare socket, for what websockets will not do: write
    frames of any size (1-byte fragments), read the socket a byte at a time, or stop
    after the HTTP upgrade. Client frames use the all-zero mask (allowed by RFC 6455,
    and the payload needs no XOR)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        _OPEN.append(self)

    @classmethod
    async def open(cls, url: str, rcvbuf: int | None = None) -> RawWS:
        host, port = url.removeprefix("ws://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, (host, int(port)))
            # The reader stops reading the socket at twice its limit: with a small
            # ``rcvbuf`` little more than the kernel's buffer takes the server's data.
            limit = rcvbuf if rcvbuf is not None else 1 << 16
            reader, writer = await asyncio.open_connection(sock=sock, limit=max(limit, 1024))
        except BaseException:
            sock.close()
            raise
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self = cls(reader, writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except BaseException:
            self.abort()
            raise
        if not head.startswith(b"HTTP/1.1 101"):
            self.abort()
            raise ConnectionError(f"upgrade refused: {head[:100]!r}")
        return self

    @staticmethod
    def encode(opcode: int, payload: bytes, fin: bool = True) -> bytes:
        n = len(payload)
        b0 = (0x80 if fin else 0) | opcode
        if n < 126:
            head = struct.pack("!BB", b0, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", b0, 0x80 | 127, n)
        return head + b"\0\0\0\0" + payload

    @classmethod
    def fragments(cls, message: bytes, size: int, opcode: int = 2) -> Iterator[bytes]:
        """``message`` as fragments of ``size`` bytes (a binary message by default)."""
        n = len(message)
        for i in range(0, n, size):
            yield cls.encode(opcode if i == 0 else 0, message[i : i + size], fin=i + size >= n)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        """One server frame: ``(opcode, payload)``."""
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def close_code(self, timeout: float) -> Outcome:
        """Read frames until a close frame or EOF (at most ``timeout`` s)."""

        async def read() -> Outcome:
            try:
                while True:
                    op, payload = await self.read_frame()
                    if op == 8:
                        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                        return Outcome(True, code, payload[2:].decode("utf-8", "replace"))
            except (asyncio.IncompleteReadError, ConnectionError):
                return Outcome(True, None, "")

        try:
            return await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            return Outcome(False)

    def abort(self) -> None:
        self.writer.transport.abort()

    async def aclose(self) -> None:
        self.abort()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
