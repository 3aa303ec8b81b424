"""A chaos proxy for fastrpc on 127.0.0.1: it reads the WebSocket stream in both
directions, knows where each message and fastrpc frame is, and cuts, silences or
slows the link at chosen points.

Everything is forwarded byte for byte (whole WebSocket messages at a time; a message
is held until its last byte has arrived, so that a rule can act *before* it). What
the proxy understands:

* RFC 6455 framing after the HTTP upgrade, both ways (client->server frames are masked:
  the proxy unmasks a copy to read them), fragmented messages included;
* the fastrpc frames in each binary message (``fastrpc.frames.decode_message``), the
  handshake of each connection (HELLO, RESUME, RESUME_OK and its NEW flag), and the
  session positions of the frames that follow, so it tells a *replayed* message (it
  starts before the highest position the sender reached on an earlier connection)
  from a *new* one.

What it does:

* :class:`Rule`: on connection ``conn`` (1 = the first), in ``direction``, at the
  ``nth`` message that ``match`` es, cut (reset both sides) or go silent
  ("partition": nothing is forwarded any more and nothing is closed; ``cut_after``
  seconds later, a reset), ``before`` the message or ``after`` it was delivered.
  Each rule fires once.
* :meth:`ChaosProxy.cut`, :meth:`ChaosProxy.partition`: the same, now, for every open
  connection. :meth:`ChaosProxy.start_random_cuts`: cuts at intervals drawn from a
  seeded ``random.Random`` (uniform ``lo``..``hi`` seconds);
  :meth:`ChaosProxy.start_message_cuts`: each new connection cut at one of its first
  messages, drawn from a seeded ``random.Random`` (so cuts often hit handshakes).
* :class:`Link`: a bandwidth limit (bytes per second, each direction) and/or writes in
  pieces of ``lo``..``hi`` bytes (a trickle).

``ChaosProxy.log`` keeps a transcript (``transcript()`` formats its end) for failure
messages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from fastrpc import frames as F

C2S = "c2s"  # client -> server
S2C = "s2c"  # server -> client

FRAME_NAMES = {
    F.HELLO: "HELLO",
    F.REQUEST: "REQUEST",
    F.RESPONSE: "RESPONSE",
    F.ERROR: "ERROR",
    F.NOTIFY: "NOTIFY",
    F.CANCEL: "CANCEL",
    F.STREAM_DATA: "DATA",
    F.STREAM_END: "END",
    F.STREAM_ERROR: "STREAM_ERROR",
    F.STREAM_ABORT: "ABORT",
    F.STREAM_CLOSE: "CLOSE",
    F.CREDIT: "CREDIT",
    F.STREAMS: "STREAMS",
    F.PING: "PING",
    F.PONG: "PONG",
    F.GOAWAY: "GOAWAY",
    F.RESUME: "RESUME",
    F.RESUME_OK: "RESUME_OK",
    F.ACK: "ACK",
}
WS_OPCODES = {0x1: "text", 0x2: "binary", 0x8: "close", 0x9: "ping", 0xA: "pong"}


# --------------------------------------------------------------------- messages


@dataclass
class Message:
    """One WebSocket message, as the proxy saw it."""

    conn: int  # connection number, 1 = the first the proxy accepted
    direction: str  # C2S or S2C
    index: int  # 1, 2, ... per connection and direction
    opcode: int  # WebSocket opcode (2 binary, 8 close, ...)
    size: int  # bytes on the wire (WebSocket headers included)
    types: tuple[int, ...] = ()  # the fastrpc frame types in it, in order
    handshake: bool = False  # the first fastrpc message of its connection and direction
    session_pos: int | None = None  # the position carried by RESUME / RESUME_OK
    new_session: bool = False  # RESUME_OK with NEW
    start: int | None = None  # session position of its first counted frame
    counted: int = 0  # frames that count towards positions (all but the handshake's)
    replay: bool = False  # resends frames the sender sent on an earlier connection

    @property
    def new(self) -> bool:
        """Carries frames never sent on an earlier connection."""
        return self.counted > 0 and not self.replay

    def describe(self) -> str:
        names = ",".join(FRAME_NAMES.get(t, hex(t)) for t in self.types[:6])
        if len(self.types) > 6:
            names += f",+{len(self.types) - 6}"
        kind = WS_OPCODES.get(self.opcode, hex(self.opcode))
        where = "" if self.start is None else f" pos {self.start}+{self.counted}"
        tags = "".join(
            f" {t}"
            for t, on in (
                ("handshake", self.handshake),
                ("replay", self.replay),
                ("NEW", self.new_session),
            )
            if on
        )
        return f"#{self.conn} {self.direction} msg {self.index} {kind} {self.size} B [{names}]{where}{tags}"


Match = Union[int, str, Callable[[Message], bool]]


def matches(match: Match, m: Message) -> bool:
    """``match``: a fastrpc frame type (the message holds one), ``"handshake"``,
    ``"replay"``, ``"new"``, ``"any"``, or a predicate."""
    if callable(match):
        return bool(match(m))
    if isinstance(match, int):
        return match in m.types
    if match == "handshake":
        return m.handshake
    if match == "replay":
        return m.replay
    if match == "new":
        return m.new
    if match == "any":
        return True
    raise ValueError(f"unknown match {match!r}")


@dataclass(eq=False)
class Rule:
    """Cut, or silence, connection ``conn`` (None: any) before or after the ``nth``
    message in ``direction`` that ``match`` es. Fires once; then ``fired`` is set,
    ``fired_at`` is the loop time of the action and ``message`` the message."""

    action: str  # "cut" or "partition"
    when: str  # "before" or "after"
    direction: str
    match: Match
    conn: int | None = None
    nth: int = 1
    label: str = ""
    cut_after: float | None = None  # a partition: reset the connection this many seconds later
    seen: int = 0
    fired_at: float | None = None
    message: Message | None = None
    fired: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        assert self.action in ("cut", "partition"), self.action
        assert self.when in ("before", "after"), self.when
        assert self.direction in (C2S, S2C), self.direction
        if not self.label:
            self.label = f"{self.action} {self.when} {self.match!r} ({self.direction}, conn {self.conn})"

    def check(self, m: Message) -> bool:
        if self.message is not None or m.direction != self.direction:
            return False
        if self.conn is not None and m.conn != self.conn:
            return False
        if not matches(self.match, m):
            return False
        self.seen += 1
        if self.seen < self.nth:
            return False
        self.message = m
        return True


@dataclass
class Link:
    """A slow link, applied to each direction: ``rate`` bytes per second (None: as fast
    as loopback), written in pieces of ``chunk[0]``..``chunk[1]`` bytes (None: whole
    messages). ``buffer``: bytes the proxy reads ahead of what it has written (the
    link's queue; lost when the connection is cut)."""

    rate: float | None = None
    chunk: tuple[int, int] | None = None
    buffer: int = 64 << 10
    seed: int = 0


# ------------------------------------------------------------- WebSocket parsing


def _unmask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


class WSParser:
    """Splits one direction of a WebSocket connection into units: the HTTP upgrade
    (opcode None), then whole messages ``(raw bytes, opcode, payload)``. Control frames
    that arrive inside a fragmented message travel with it (order is kept)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.http = True
        self.raw = bytearray()  # the message being assembled
        self.parts: list[bytes] = []
        self.opcode: int | None = None

    def feed(self, data: bytes) -> list[tuple[bytes, int | None, bytes]]:
        self.buf += data
        out: list[tuple[bytes, int | None, bytes]] = []
        buf = self.buf
        if self.http:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            out.append((bytes(buf[: end + 4]), None, b""))
            del buf[: end + 4]
            self.http = False
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            length = b1 & 0x7F
            i = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length = int.from_bytes(buf[2:4], "big")
                i = 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length = int.from_bytes(buf[2:10], "big")
                i = 10
            key = b""
            if b1 & 0x80:
                if len(buf) < i + 4:
                    break
                key = bytes(buf[i : i + 4])
                i += 4
            if len(buf) < i + length:
                break
            payload = bytes(buf[i : i + length])
            if key:
                payload = _unmask(payload, key)
            raw = bytes(buf[: i + length])
            del buf[: i + length]
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if opcode >= 0x8 and self.opcode is None:
                out.append((raw, opcode, payload))  # a control frame between messages
                continue
            self.raw += raw
            if opcode >= 0x8:
                continue  # inside a fragmented message: forwarded with it
            if opcode != 0:
                self.opcode = opcode
            self.parts.append(payload)
            if fin:
                out.append((bytes(self.raw), self.opcode, b"".join(self.parts)))
                self.raw = bytearray()
                self.parts = []
                self.opcode = None
        return out


# ------------------------------------------------------------------ the proxy

_EOF = object()


class _Action:
    def __init__(self, rule: Rule) -> None:
        self.rule = rule


class _Pipe:
    """One direction of one proxied connection: a reader that parses and applies the
    rules, a queue, and a writer that shapes the output."""

    def __init__(self, conn: _Conn, direction: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.conn = conn
        self.proxy = conn.proxy
        self.direction = direction
        self.reader = reader
        self.writer = writer
        self.parser = WSParser()
        self.queue: collections.deque[Any] = collections.deque()
        self.queued = 0  # bytes in the queue
        self.wake = asyncio.Event()  # something was queued
        self.room = asyncio.Event()  # the queue went below the link's buffer
        self.room.set()
        self.index = 0
        self.first_fastrpc = True
        link = self.proxy.link
        self.rng = random.Random(f"{link.seed}/{conn.n}/{direction}")
        self.clock = 0.0  # the link's virtual clock (rate limit)
        self.writing: Message | None = None  # the message being written
        self.written = 0  # bytes of it written so far

    # reading

    async def read_loop(self) -> None:
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(65536)
                if not data:
                    break
                for raw, opcode, payload in self.parser.feed(data):
                    if not self._take(raw, opcode, payload):
                        return
        except (ConnectionError, OSError):
            pass
        self._put(_EOF)

    def _take(self, raw: bytes, opcode: int | None, payload: bytes) -> bool:
        """Classify one unit and queue it (and the action of a rule it triggers);
        False: stop reading (a rule acts on this connection)."""
        if opcode is None:
            self._put(raw)
            return True
        self.index += 1
        m = self.proxy._classify(self, raw, opcode, payload)
        self.proxy._record(f"{m.describe()}")
        for rule in self.proxy.rules:
            if rule.check(m):
                self.proxy._record(f"#{self.conn.n} rule fires: {rule.label}")
                if rule.when == "after":
                    self._put(raw, m)
                self._put(_Action(rule))
                return rule.action != "cut"
        self._put(raw, m)
        return True

    def _put(self, item: Any, message: Message | None = None) -> None:
        self.queue.append((item, message))
        if isinstance(item, bytes):
            self.queued += len(item)
            if self.queued > self.proxy.link.buffer:
                self.room.clear()
        self.wake.set()

    # writing

    async def write_loop(self) -> None:
        conn = self.conn
        try:
            while True:
                while not self.queue:
                    self.wake.clear()
                    await self.wake.wait()
                item, message = self.queue.popleft()
                if isinstance(item, bytes):
                    self.queued -= len(item)
                    if self.queued <= self.proxy.link.buffer:
                        self.room.set()
                    if not conn.silent:
                        await self._write(item, message)
                elif isinstance(item, _Action):
                    conn.act(item.rule)
                    if item.rule.action == "cut":
                        return
                elif item is _EOF:
                    if not conn.silent:
                        with contextlib.suppress(Exception):
                            if self.writer.can_write_eof():
                                self.writer.write_eof()
                            else:
                                self.writer.close()
                    return
        except (ConnectionError, OSError):
            conn.abort(f"{self.direction} write failed")

    async def _write(self, data: bytes, message: Message | None) -> None:
        link = self.proxy.link
        w = self.writer
        self.writing, self.written = message, 0
        if link.rate is None and link.chunk is None:
            w.write(data)
            await w.drain()
        else:
            loop = asyncio.get_running_loop()
            view = memoryview(data)
            i = 0
            while i < len(view):
                n = self.rng.randint(*link.chunk) if link.chunk else 4096
                piece = bytes(view[i : i + n])
                i += len(piece)
                if link.rate:
                    now = loop.time()
                    self.clock = max(self.clock, now) + len(piece) / link.rate
                    if self.clock - now > 0.002:
                        await asyncio.sleep(self.clock - now)
                w.write(piece)
                await w.drain()
                self.written = i
        self.writing, self.written = None, 0
        if message is not None:
            self.proxy._delivered(message)


class _Conn:
    """One client connection and its upstream connection to the server."""

    def __init__(self, proxy: ChaosProxy, n: int) -> None:
        self.proxy = proxy
        self.n = n
        self.silent = False
        self.dead = False
        self.pos: dict[str, int | None] = {C2S: None, S2C: None}
        self.pipes: dict[str, _Pipe] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def run(
        self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter, sr: asyncio.StreamReader, sw: asyncio.StreamWriter
    ) -> None:
        self.writers = [cw, sw]
        self.pipes = {C2S: _Pipe(self, C2S, cr, sw), S2C: _Pipe(self, S2C, sr, cw)}
        loop = asyncio.get_running_loop()
        for pipe in self.pipes.values():
            self.tasks.append(loop.create_task(pipe.read_loop()))
            self.tasks.append(loop.create_task(pipe.write_loop()))
        try:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for w in self.writers:
                if w.transport is not None:
                    w.transport.abort()
            self.dead = True

    def act(self, rule: Rule) -> None:
        rule.fired_at = asyncio.get_running_loop().time()
        rule.fired.set()
        if rule.action == "cut":
            self.abort(rule.label)
        else:
            self.silence(rule.label)
            if rule.cut_after is not None:
                asyncio.get_running_loop().call_later(rule.cut_after, self.abort, f"{rule.label}, then cut")

    def abort(self, why: str) -> None:
        """Reset both sides now; whatever was not yet written is lost."""
        if self.dead:
            return
        self.dead = True
        self.proxy.cuts.append((asyncio.get_running_loop().time(), self.n, why))
        self.proxy._record(f"#{self.n} CUT ({why})")
        for pipe in self.pipes.values():
            if pipe.writing is not None and pipe.written:
                self.proxy._torn(pipe.writing, pipe.written)
        for w in self.writers:
            if w.transport is not None:
                w.transport.abort()
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()

    def silence(self, why: str) -> None:
        """Forward nothing more, close nothing (a silent partition)."""
        if not self.silent:
            self.silent = True
            self.proxy.partitions.append((asyncio.get_running_loop().time(), self.n, why))
            self.proxy._record(f"#{self.n} SILENT ({why})")


class ChaosProxy:
    """Forwards ``ws://127.0.0.1:<port>`` to ``target_port``, with ``rules`` and a
    ``link``. ``async with ChaosProxy(...) as px``; ``px.url`` to connect to."""

    def __init__(self, target_port: int, *, rules: list[Rule] | None = None, link: Link | None = None) -> None:
        self.target_port = target_port
        self.rules = list(rules or ())
        self.link = link or Link()
        self.port = 0
        self.connections: list[_Conn] = []
        self.cuts: list[tuple[float, int, str]] = []  # (loop time, connection, why)
        self.partitions: list[tuple[float, int, str]] = []
        self.new_sessions = 0  # RESUME_OK with NEW seen (the first session included)
        self.resumes = 0  # RESUME_OK without NEW seen
        self.torn: collections.Counter[tuple[str, int | None]] = collections.Counter()  # cut mid-message
        self.delivered: dict[str, int] = {C2S: 0, S2C: 0}  # highest session position delivered
        self.progress: list[tuple[float, str, int]] = []  # (time, direction, position) as it rises
        self.log: collections.deque[tuple[float, str]] = collections.deque(maxlen=3000)
        self._high: dict[str, int] = {C2S: 0, S2C: 0}  # highest position read, per direction
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cutter: asyncio.Task[None] | None = None
        self._message_rng: random.Random | None = None
        self._message_cuts: tuple[int, int] = (0, 0)  # (connections left to cut, messages to choose from)
        self._message_rules: list[Rule] = []
        self._t0 = 0.0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def live(self) -> list[int]:
        """Numbers of the connections still open."""
        return [c.n for c in self.connections if not c.dead]

    async def __aenter__(self) -> ChaosProxy:
        self._t0 = asyncio.get_running_loop().time()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Reset every connection and stop listening (may be called again)."""
        await self.stop_random_cuts()
        if self._server is not None:
            self._server.close()
        for c in self.connections:
            c.abort("proxy closed")
        if self._tasks:  # they end once their connection is aborted
            await asyncio.wait(set(self._tasks), timeout=2)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Conn(self, len(self.connections) + 1)
        self.connections.append(conn)
        self._draw_message_cut(conn.n)
        try:
            try:
                sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                conn.dead = True
                cw.transport.abort()
                return
            if conn.dead:
                # Cut while its upstream connection was being made (abort() found no
                # transport to reset yet): reset both now. Forwarded, it would have
                # lived on marked dead, and no later cut would reach it.
                cw.transport.abort()
                sw.transport.abort()
                return
            self._record(f"#{conn.n} connected")
            await conn.run(cr, cw, sr, sw)
            self._record(f"#{conn.n} ended")
        except asyncio.CancelledError:
            conn.abort("proxy closed")  # asyncio's streams would log a cancelled callback as an error
        finally:
            self._tasks.discard(task)

    # ---------------------------------------------------------------- chaos

    def cut(self, why: str = "cut") -> None:
        """Reset every open connection."""
        for c in self.connections:
            c.abort(why)

    def partition(self, why: str = "partition") -> None:
        """Silence every open connection (new ones are not affected)."""
        for c in self.connections:
            if not c.dead:
                c.silence(why)

    def start_random_cuts(self, seed: int, lo: float = 0.001, hi: float = 0.300, count: int | None = None) -> None:
        """Cut every open connection at intervals drawn uniformly from ``lo``..``hi``
        seconds by ``random.Random(seed)``, ``count`` times (None: until stopped)."""
        rng = random.Random(seed)

        async def cutter() -> None:
            n = 0
            while count is None or n < count:
                await asyncio.sleep(rng.uniform(lo, hi))
                n += 1
                self.cut(f"random cut {n}")

        self._cutter = asyncio.get_running_loop().create_task(cutter())

    def start_message_cuts(self, seed: int, count: int, upto: int = 8) -> None:
        """Cut each of the next ``count`` connections before or after one of its first
        ``upto`` messages in either direction, all drawn by ``random.Random(seed)``."""
        self._message_rng = random.Random(seed)
        self._message_cuts = (count, upto)
        for n in self.live:  # counted from now on
            self._draw_message_cut(n)

    def _draw_message_cut(self, n: int) -> None:
        left, upto = self._message_cuts
        rng = self._message_rng
        if rng is None or left <= 0:
            return
        self._message_cuts = (left - 1, upto)
        when, direction, nth = rng.choice(("before", "after")), rng.choice((C2S, S2C)), rng.randint(1, upto)
        label = f"random cut {when} {direction} message {nth}"
        rule = Rule("cut", when, direction, "any", conn=n, nth=nth, label=label)
        self.rules.append(rule)
        self._message_rules.append(rule)

    @property
    def cutting(self) -> bool:
        """Random cuts are still to come."""
        if self._cutter is not None and not self._cutter.done():
            return True
        if self._message_cuts[0] > 0:
            return True
        pending = {r.conn for r in self._message_rules if not r.fired.is_set()}
        return any(c.n in pending and not c.dead for c in self.connections)

    async def wait_random_cuts(self) -> None:
        while self.cutting:
            await asyncio.sleep(0.005)

    async def stop_random_cuts(self) -> None:
        if self._cutter is not None:
            self._cutter.cancel()
            await asyncio.gather(self._cutter, return_exceptions=True)
            self._cutter = None

    # ---------------------------------------------------------- bookkeeping

    def _classify(self, pipe: _Pipe, raw: bytes, opcode: int, payload: bytes) -> Message:
        conn, d = pipe.conn, pipe.direction
        m = Message(conn.n, d, pipe.index, opcode, len(raw))
        if opcode != 0x2:
            return m
        try:
            frames = F.decode_message(payload, F.VARINT_MAX)
        except Exception:
            return m  # not fastrpc
        m.types = tuple(f.type for f in frames)
        used = 0
        if pipe.first_fastrpc:
            pipe.first_fastrpc = False
            m.handshake = True
            used = 1
            other = S2C if d == C2S else C2S
            if len(frames) > 1 and frames[1].type in (F.RESUME, F.RESUME_OK):
                used = 2
                data = bytes(frames[1].payload)
                m.session_pos = F.decode_varint(data, 32)[0]
                if frames[1].type == F.RESUME:
                    conn.pos[other] = m.session_pos  # the server replays from there
                elif frames[1].flags & F.FLAG_NEW:
                    m.new_session = True
                    self.new_sessions += 1
                    self._high = {C2S: 0, S2C: 0}
                    self.delivered = {C2S: 0, S2C: 0}
                    conn.pos[other] = 0
                    conn.pos[d] = 0
                else:
                    self.resumes += 1
                    conn.pos[other] = m.session_pos  # the client replays from there
            elif d == C2S:
                conn.pos[other] = 0  # a new session: the server starts at 0
            if conn.pos[d] is None:
                conn.pos[d] = 0
        m.counted = len(frames) - used
        start = conn.pos[d]
        if start is None:
            start = conn.pos[d] = 0
        m.start = start
        m.replay = m.counted > 0 and start < self._high[d]
        conn.pos[d] = start + m.counted
        self._high[d] = max(self._high[d], start + m.counted)
        return m

    def _delivered(self, m: Message) -> None:
        if m.start is not None and m.counted:
            end = m.start + m.counted
            if end > self.delivered[m.direction]:
                self.delivered[m.direction] = end
                self.progress.append((asyncio.get_running_loop().time(), m.direction, end))

    def _torn(self, m: Message, written: int) -> None:
        self.torn[(m.direction, m.start)] += 1
        self._record(f"#{m.conn} torn {m.direction} message at pos {m.start}: {written}/{m.size} B written")

    def _record(self, what: str) -> None:
        self.log.append((asyncio.get_running_loop().time() - self._t0, what))

    def transcript(self, last: int = 40) -> str:
        lines = list(self.log)[-last:]
        return "\n".join(f"  {t:8.3f} {what}" for t, what in lines)

    def longest_stall(self, direction: str, until: float) -> float:
        """Longest time without the delivered position rising in ``direction``."""
        times = [self._t0] + [t for t, d, _ in self.progress if d == direction] + [until]
        return max(b - a for a, b in zip(times, times[1:]))
