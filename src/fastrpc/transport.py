"""The one module that touches the WebSocket library (``websockets``): opening
connections and servers, reading, writing, draining, closing, and its exceptions.
Nothing else in fastrpc imports ``websockets``.

Two implementations of one :class:`Transport` interface:

* the data path (``_Wire``, the default): an :class:`asyncio.Protocol` that feeds the
  bytes of ``data_received`` to websockets' sans-I/O protocol
  (``ServerProtocol`` / ``ClientProtocol``: the opening handshake, frame parsing,
  limits, control frames, the close handshake) and hands each complete message to
  the peer's receiver in the same callback: no reader task, no future per message,
  no assembler queue. Outgoing data messages are framed here (a header, then the
  payload as is, through ``writelines``: no copy on the server side) while the
  connection is open; control frames go through the sans-I/O protocol, except the
  peer's PINGs (``_Wire._ping``: ``max_ping_rate``, and only the latest answered while
  the peer does not read). A server's hook on the opening request (static files,
  ``authenticate``: ``start_server(http=, hook=)``) runs here too, reading paused.
``notsent_lowat`` (bytes; default None: off), given to ``serve`` / ``connect`` with the
other WebSocket options, sets TCP_NOTSENT_LOWAT on the data path's sockets: for slow
links, where urgency should decide what leaves next (bench/priority.py). ``busy_poll``
(seconds; default None: off) keeps the loop polling for that long after each write on
the data path instead of sleeping (:mod:`fastrpc.polling`).

* the library's own asyncio connection (``_Library``), used when the caller passes a
  websockets option the data path does not implement (``process_request``, extra
  headers, ``compression``, ...): a reader task feeds the same receiver.

Messages reach the peer through :meth:`Transport.start_reading` (a callback per
message, then one call when the connection ends); before that, and for the JSON
mode, :meth:`Transport.recv` / :meth:`Transport.messages` read them from a small
queue (past ``max_queue`` messages, the socket is no longer read).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from functools import partial
from itertools import chain, repeat
from typing import Any, Protocol, Union

from websockets.asyncio.client import connect as _ws_connect
from websockets.asyncio.server import Server as _WSServer
from websockets.asyncio.server import serve as _ws_serve
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed as _WSClosed
from websockets.exceptions import ConnectionClosedOK as _WSClosedOK
from websockets.exceptions import InvalidHandshake as _InvalidHandshake
from websockets.exceptions import WebSocketException as _WSError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol as _Protocol
from websockets.protocol import State as _State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from .auth import RequestHeaders
from .budget import PingLimit
from .frames import lone_frame as _lone_frame
from .frames import mask_frame, unfilled, unmask
from .keepalive import Timer, timer
from .options import CLOSE_TIMEOUT, MAX_PING_RATE, PING_BURST
from .polling import busy_poll_option, poll_window
from .static import HttpResponse

__all__ = [
    "OPEN_FAILED",
    "SUBPROTOCOL",
    "Transport",
    "TransportClosed",
    "WebSocketServer",
    "closed_info",
    "open_connection",
    "start_server",
]

# The transport went away (a close frame, or the TCP connection dropped).
TransportClosed = (_WSClosed, ConnectionError)
# Opening a connection failed: refused, timed out, or a bad HTTP handshake.
OPEN_FAILED = (OSError, EOFError, asyncio.TimeoutError, _InvalidHandshake, _WSError)
_OPEN = _State.OPEN
_CONNECTING = _State.CONNECTING
_CLOSED = _State.CLOSED
MAX_FRAGMENTS = 4096  # WebSocket fragments of one message (websockets' own cap)
# websockets options the data path implements; any other selects the library's connection.
_WIRE_OPTIONS = {"compression", "max_size", "ping_interval", "ping_timeout", "write_limit", "max_queue"}
_WIRE_OPTIONS |= {"open_timeout", "close_timeout", "ssl", "notsent_lowat", "max_ping_rate", "subprotocols"}
_WIRE_OPTIONS |= {"busy_poll"}
# A fastrpc client offers this subprotocol; a server agrees to it when offered, and
# then knows the client speaks the binary protocol (no JSON-mode guess: server.py).
SUBPROTOCOL = "fastrpc"


def _select_subprotocol(ws: Any, offered: Any) -> Any:
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


# Answers an HTTP request before the upgrade: (path, headers) -> a response, or None.
HttpHandler = Callable[[str, Mapping[str, str]], Awaitable[Union[HttpResponse, None]]]
# A server's hook on the opening request of a data-path connection: an HTTP answer
# refuses the upgrade, None accepts it (Server's authenticate, static files).
WireHook = Callable[["_Wire", Request], Awaitable[Union[Response, None]]]
_DECIDING: set[asyncio.Task[None]] = set()  # hooks running (a task needs a reference)


class Reader(Protocol):
    """What a transport calls back once :meth:`Transport.start_reading` was called
    (the peer, in fastrpc). Each method gets the transport, so that one reader can
    tell an old transport of its session from the current one."""

    def message_received(self, transport: Transport, msg: Any, alone: bool = False) -> None:
        """One message, in the callback that read it: str (text), or bytes,
        bytearray or memoryview (binary; a view is valid only during the call).
        ``alone``: the message is all of its read, and no :meth:`messages_read`
        follows (its output may leave as soon as it is handled)."""

    def messages_read(self, transport: Transport) -> None:
        """The messages of one read were all given: output may leave, in one write."""

    def transport_lost(self, transport: Transport, exc: BaseException | None) -> None:
        """The connection ended, once: ``exc`` a TransportClosed, or None for a clean close."""


class _Drop:
    """A reader for a transport being let go: drops what still comes. Past
    ``DROP_LIMIT`` bytes it reads at ``DROP_RATE`` bytes a second at most (after a
    message that went past, reading waits for as long as its bytes take at that rate):
    the peer's close frame may still come behind its flood, but a peer that floods
    cannot keep a core busy dropping its input until the close timeout (up to
    ``keepalive_timeout`` for one closed for not reading)."""

    __slots__ = ("done", "left", "timer")

    def __init__(self, left: int, done: asyncio.Future[None] | None = None) -> None:
        self.left = left
        self.done = done
        self.timer: asyncio.TimerHandle | None = None

    def message_received(self, transport: Transport, msg: Any, alone: bool = False) -> None:
        self.left -= len(msg)
        if self.left < 0:
            self.pace(transport)

    def pace(self, transport: Transport) -> None:
        """Past the bound: no more reads until the bytes past it took their time."""
        if self.timer is None:
            transport.pause_reading()
            self.timer = asyncio.get_running_loop().call_later(
                -self.left / DROP_RATE, self._read_on, transport, -self.left
            )

    def _read_on(self, transport: Transport, paid: int) -> None:
        self.timer = None
        self.left += paid
        if self.left < 0:  # more came in the read that went past: its time too
            self.pace(transport)
        else:
            transport.resume_reading()

    def messages_read(self, transport: Transport) -> None:
        pass

    def transport_lost(self, transport: Transport, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        done = self.done
        if done is not None and not done.done():
            done.set_result(None)


class Transport:
    """One WebSocket connection, as the peer uses it (see the module docstring)."""

    __slots__ = ("_end", "_ended_flag", "_inbox", "_max_queue", "_sink", "_waiter", "identity")

    def __init__(self, max_queue: int | None) -> None:
        # Who the peer is, as a server's authenticate hook said (None: not asked).
        self.identity: Any = None
        # One reader object, not three callbacks: bound partials cost ~770 bytes of
        # every connection.
        self._sink: Reader | None = None
        # A list, not a deque: it holds at most max_queue messages, and an empty deque
        # costs ~760 bytes of every idle connection.
        self._inbox: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None
        self._end: BaseException | None = None
        self._ended_flag = False
        self._max_queue = max_queue or 16

    # ---------------------------------------------------------------- reading

    def start_reading(self, reader: Reader) -> None:
        """From now on, give ``reader`` every message as it arrives (in the callback
        that read it), tell it when the messages of each read were given, and once
        when the connection ends. Queued messages go first."""
        self._sink = reader
        inbox = self._inbox
        while inbox and self._sink is reader:
            reader.message_received(self, inbox.pop(0))
        reader.messages_read(self)
        self.resume_reading()
        if self._ended_flag and self._sink is reader:
            self._sink = None
            reader.transport_lost(self, self._end)

    def attach_lane(self, make: Callable[..., Any]) -> Any:
        """Offer the reader's compiled call lane (``frames.CallLane``): a transport
        that can feed it builds it with ``make`` and returns it (its reads go through
        it first); this one cannot (None)."""
        return None

    @property
    def reading(self) -> bool:
        """Whether :meth:`start_reading` was called and the connection has not ended."""
        return self._sink is not None

    def feed(self, msg: Any) -> None:
        """(Implementations) one received message: str (text), or bytes, bytearray or
        memoryview (binary). A memoryview is valid only during the call (a view of the
        read buffer): a reader copies what it keeps of it."""
        reader = self._sink
        if reader is not None:
            reader.message_received(self, msg)
            return
        self._inbox.append(msg.tobytes() if type(msg) is memoryview else msg)
        if len(self._inbox) >= self._max_queue:
            self.pause_reading()
        self._wake()

    def read_done(self) -> None:
        """(Implementations) the messages of one read were fed: the reader's
        output may leave, in one write."""
        reader = self._sink
        if reader is not None:
            reader.messages_read(self)

    def finish(self, exc: BaseException | None) -> None:
        """(Implementations) the connection ended (None: a clean close)."""
        if self._ended_flag:
            return
        self._ended_flag = True
        self._end = exc
        reader = self._sink
        self._sink = None
        if reader is not None:
            reader.transport_lost(self, exc)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self, timeout: float | None = None) -> Any:
        """The next message (``asyncio.TimeoutError`` after ``timeout`` s; a
        TransportClosed once the connection is gone)."""
        if timeout is None:
            return await self._next()
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> Any:
        inbox = self._inbox
        while not inbox:
            if self._ended_flag:
                raise self._end if self._end is not None else _WSClosed(None, None)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(inbox) <= self._max_queue // 2:
            self.resume_reading()
        return inbox.pop(0)

    async def messages(self) -> AsyncIterator[Any]:
        """The received messages, until the connection closes (TransportClosed when
        it did not close cleanly)."""
        while True:
            try:
                msg = await self._next()
            except _WSClosed as e:
                if self._end is None or e is not self._end:
                    return
                raise
            yield msg

    def drop_input(self) -> None:
        """From now on, read and drop what the peer sends: past ``DROP_LIMIT`` bytes in
        all (with :meth:`discard`'s), slowly (``_Drop``)."""
        self._drop(None)

    def _drop(self, done: asyncio.Future[None] | None) -> None:
        sink = self._sink
        old = sink if type(sink) is _Drop else None
        drop = _Drop(DROP_LIMIT if old is None else old.left, done)
        if old is not None:
            if old.timer is not None:
                old.timer.cancel()  # its pace goes on in the new reader
                old.timer = None
            if old.done is not None and not old.done.done():
                old.done.set_result(None)  # an earlier discard() ends: this one reads on
        self._inbox.clear()
        self.start_reading(drop)  # (resumes reading)
        if drop.left < 0 and self._sink is drop:
            drop.pace(self)

    async def discard(self) -> None:
        """Read and drop messages until the connection closes (a peer whose close
        frame waits behind unread messages would never be seen): past ``DROP_LIMIT``
        bytes in all (with :meth:`drop_input`'s), slowly (``_Drop``)."""
        done = asyncio.get_running_loop().create_future()
        self._drop(done)
        await done

    async def fail(self, last: list[bytes], code: int, reason: str, patience: float = 2.0) -> None:
        """Send ``last`` (best effort, a second each), then close with ``code`` and
        ``reason``, reading and dropping what the peer still sends meanwhile; past
        ``patience`` seconds, drop the connection."""
        try:
            for msg in last:
                await asyncio.wait_for(self.send(msg), 1.0)
        except Exception:  # best effort: the close frame says it too
            pass
        drain = asyncio.get_running_loop().create_task(self.discard())
        try:
            await asyncio.wait_for(self.close(code, reason[:120]), patience)
        except Exception:
            self.abort()
        finally:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)

    # ------------------------------------------ what each implementation provides

    def pause_reading(self) -> None:
        """Stop reading the socket (the peer's data waits in the kernel)."""
        raise NotImplementedError

    def resume_reading(self) -> None:
        """Read the socket again."""
        raise NotImplementedError

    def write_now(self, msg: bytes) -> bool:
        """Write ``msg`` as a binary message at once; False (nothing written) when the
        socket's buffer is past its high-water mark or the connection is not open."""
        raise NotImplementedError

    async def send(self, msg: bytes | str) -> None:
        """Send ``msg`` (bytes: a binary message, str: a text one), waiting for the
        socket to drain (raises TransportClosed)."""
        raise NotImplementedError

    def writes_parts(self) -> bool:
        """Whether :meth:`write_parts_now` and :meth:`send_parts` take a message's
        parts without joining them into one ``bytes`` first (a server writes them as
        they are, a client masks each into the frame)."""
        return False

    def write_parts_now(self, parts: list[bytes]) -> bool:
        """:meth:`write_now` of the binary message ``b"".join(parts)``."""
        return self.write_now(b"".join(parts))

    async def send_parts(self, parts: list[bytes]) -> None:
        """:meth:`send` of the binary message ``b"".join(parts)``."""
        await self.send(b"".join(parts))

    def buffered(self) -> int:
        """Bytes written and not yet taken by the socket."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the TCP connection (no close handshake)."""
        raise NotImplementedError

    def drop(self, code: int, reason: str) -> None:
        """Say why in a close frame if the socket takes it now, then drop the TCP
        connection without waiting for the peer (which may be gone)."""
        self.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The close handshake (never raises)."""
        raise NotImplementedError

    @property
    def close_code(self) -> int | None:
        """The code of the peer's close frame (None: none received)."""
        raise NotImplementedError

    @property
    def close_reason(self) -> str | None:
        """The reason of the peer's close frame (None: none received)."""
        raise NotImplementedError

    @property
    def remote_address(self) -> Any:
        """The peer's address."""
        raise NotImplementedError

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The socket's information, as :meth:`asyncio.BaseTransport.get_extra_info`
        (``"ssl_object"``, ``"peercert"``, ``"sockname"``, ...); ``default`` where
        there is none."""
        return default

    @property
    def request_path(self) -> str | None:
        """The path of the HTTP request that opened this connection (server side)."""
        raise NotImplementedError

    @property
    def request_headers(self) -> Any:
        """The headers of the HTTP request that opened this connection (server side)."""
        raise NotImplementedError

    @property
    def subprotocol(self) -> str | None:
        """The WebSocket subprotocol both ends agreed on (``"fastrpc"``: the client
        said it speaks fastrpc's binary protocol), or None."""
        return None


_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack
_BINARY_FIN = 0x82
# _Wire._mode: the HTTP handshake; our framer reads data frames; websockets reads all;
# we failed the connection and drop what the peer still sends (RFC 6455 7.1.7).
_HEAD, _FRAMING, _LIBRARY, _FAILED = 0, 1, 2, 3
# Bytes dropped after failing a connection before we stop reading it: a peer that keeps
# writing into a failed connection (a flood) stops costing our CPU, and can still read
# our close frame until close_timeout drops the TCP connection.
_FAILED_DISCARD = 1 << 20
# What a connection being let go (closed by us: a broken rule, a limit, a peer that does
# not read) may still make us read and drop while its close handshake goes on (_Drop).
DROP_LIMIT = _FAILED_DISCARD
# ... and past it, at most this many bytes a second (a core drops ~1.5 GB/s here).
DROP_RATE = 16 << 20
# And the rest of a frame failed for being past max_size, up to this: a peer that sent
# too large a message gets our 1009 once it has written it, not close_timeout later.
_FAILED_FRAME_DISCARD = 64 << 20
# Input one connection takes before the loop serves the others: libuv reads a readable
# socket up to 32 times in one go, so a flood of cheap messages could otherwise hold
# the loop for 32 reads' worth of work (~90 ms with the pure codec).
_READ_SLICE = 256 << 10
_MAX_HEAD = 64 << 10
# A data frame at least this large that a read leaves incomplete is read straight into
# a buffer of its own size (no copy of it out of the read buffer, none to join its
# pieces), provided the peer has sent a quarter of it already: a header alone never
# makes us hold more than 4x what the peer actually sent (max_size bounds both).
_DIRECT_MIN = 16 << 10
_DIRECT_SHARE = 4
# A thread's read buffer is twice a read: a frame a read leaves incomplete that fits in
# the rest is finished in place (the thread lends that buffer to the connection and
# reads into another), not copied out first. At most _MAX_LENT are lent at a time (a
# peer that never finishes its frame holds one, and others copy as before), and as many
# are kept spare: a thread holds at most (1 + 2 * _MAX_LENT) * _READ_ROOM (2.5 MiB).
_READ_ROOM = 2 * _READ_SLICE
_MAX_LENT = 2


class _ReadBuffer:
    """The buffer every connection of a thread reads into (asyncio.BufferedProtocol):
    one per thread, not per connection (an idle connection holds none). Its bytes are
    used within the read that filled them: whatever a connection keeps is copied out,
    unless the thread lent it the buffer (:meth:`lend`)."""

    __slots__ = ("lent", "spare", "view", "whole")

    def __init__(self) -> None:
        self.whole = memoryview(unfilled(_READ_ROOM))  # written by a read before it is read
        self.view = self.whole[:_READ_SLICE]  # what a read may fill
        self.spare: list[memoryview] = []
        self.lent = 0

    def lend(self) -> memoryview | None:
        """The whole current buffer, for the connection whose read it holds to finish a
        frame in it; reads go to another from now on. None while _MAX_LENT are lent."""
        if self.lent >= _MAX_LENT:
            return None
        whole = self.whole
        self.whole = self.spare.pop() if self.spare else memoryview(unfilled(_READ_ROOM))
        self.view = self.whole[:_READ_SLICE]
        self.lent += 1
        return whole

    def give_back(self, whole: memoryview) -> None:
        """A lent buffer's frame was delivered (or dropped): it may be lent again."""
        self.lent -= 1
        if len(self.spare) < _MAX_LENT:
            self.spare.append(whole)


_THREAD = threading.local()


def _read_buffer() -> _ReadBuffer:
    """This thread's read buffer (a connection stays in the thread that made it)."""
    reads: _ReadBuffer | None = getattr(_THREAD, "reads", None)
    if reads is None:
        reads = _THREAD.reads = _ReadBuffer()
    return reads


def _unpinned(buf: bytearray) -> bytearray:
    """A copy of ``buf``, whose size cannot change while a view of it lives on: a
    message fed as a view of it is normally let go within its read, but a handler's
    exception kept with its traceback (a log handler that holds records, pytest's
    caplog) keeps the frames that held it. The copy is read on; the old buffer stays
    with the view."""
    return bytearray(buf)


class _Into:
    """A large data frame being read straight into place: a view of the frame's payload
    there, the bytes in it so far, its opcode and (server side) its mask; ``lent`` is the
    thread's read buffer it lies in (``_Wire._finish_in_place``), or None when the view
    is of a bytearray of the frame's own (``_Wire._direct``)."""

    __slots__ = ("got", "lent", "mask", "op", "view")

    def __init__(self, view: memoryview, got: int, op: int, mask: bytes | None, lent: memoryview | None = None) -> None:
        self.view, self.got, self.op, self.mask, self.lent = view, got, op, mask, lent


def _forget_handshake(ws: ServerProtocol | ClientProtocol) -> None:
    """websockets' parser generator keeps the opening request (or response) in its
    frame for as long as the connection lasts, ~2 KiB of every idle connection: once
    open, it is replaced with the frame parser it goes on to run (``Protocol.parse``),
    which starts from the same, empty, reader (``_head`` feeds it the head alone)."""
    if getattr(ws, "parser", None) is None or ws.reader.buffer:
        return
    parser = _Protocol.parse(ws)
    next(parser)
    ws.parser = parser


def _notsent_lowat(tcp: asyncio.BaseTransport, lowat: int | None) -> None:
    """Wake the writer only once fewer than ``lowat`` bytes wait unsent in the kernel
    (TCP_NOTSENT_LOWAT; Linux, macOS): on a slow link the backlog then waits in the
    scheduler, where urgency orders it, not in a kernel buffer that autotuning grows
    to megabytes. Off by default: on a fast link it costs throughput."""
    sock = tcp.get_extra_info("socket")
    opt = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if lowat is None or sock is None or opt is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, opt, lowat)
    except OSError:
        pass


# ioctl SIOCOUTQ (Linux's TIOCOUTQ): bytes in a socket's send queue, not yet acked.
try:
    from fcntl import ioctl as _ioctl
except ImportError:  # (Windows)
    _ioctl = None  # type: ignore[assignment]
_SIOCOUTQ = 0x5411 if _ioctl is not None and os.uname().sysname == "Linux" else None


def _unsent(tcp: asyncio.WriteTransport) -> int:
    """Bytes written and not yet taken by the peer: the transport's buffer, and on
    Linux the socket's send queue (a reader that reads moves it, even while the
    transport's buffer waits for room in a send queue of megabytes)."""
    n = tcp.get_write_buffer_size()
    sock = tcp.get_extra_info("socket")
    if _SIOCOUTQ is not None and sock is not None:
        try:
            n += struct.unpack("i", _ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            pass
    return n


_MASK_POOL = 4096  # bytes of urandom read at once for client frame masks (_Wire._write)


def _mask_source() -> Iterator[tuple[bytes]]:
    """A client frame's mask (RFC 6455 5.3) is next(_MASKS)[0]: 4 bytes cut from pools
    of urandom shared by every connection, one getrandom call per 1,024 frames. All C
    iterators: no refill test on the write path, and no two threads get one mask."""
    return chain.from_iterable(map(struct.Struct("4s").iter_unpack, map(os.urandom, repeat(_MASK_POOL))))


def _new_masks() -> None:
    # A forked child (workers, a pre-fork server) would otherwise use the masks its
    # parent has drawn from the same pool: each process gets its own.
    global _MASKS
    _MASKS = _mask_source()


_MASKS = _mask_source()
os.register_at_fork(after_in_child=_new_masks)


def too_large(size: int, limit: int, kind: str = "") -> str:
    """The close reason (1009) for a message of ``size`` bytes over ``limit``, the
    receiver's max_message_size, in fastrpc's words (websockets' would name its own
    ``max_size``). ``kind`` ("fragmented", "text"): a message whose whole size is not
    known, ``size`` being what is known of it (the fragments that came and the next
    one's; an ASGI text message's characters)."""
    what = f"{kind} message of at least" if kind else "message of"
    return f"{what} {size} bytes exceeds max_message_size ({limit})"


def _header(n: int, mask: int) -> bytes:
    """The header of a final binary frame of ``n`` payload bytes (RFC 6455 5.2)."""
    if n < 126:
        return bytes((_BINARY_FIN, mask | n))
    if n < 65536:
        return _PACK_16(_BINARY_FIN, mask | 126, n)
    return _PACK_64(_BINARY_FIN, mask | 127, n)


class _Wire(Transport, asyncio.BufferedProtocol):
    """The data path: the socket read into a buffer (``get_buffer``), our own framer for
    data frames, websockets' sans-I/O protocol for everything else."""

    __slots__ = (
        "_buf",
        "_client",
        "_close_timeout",
        "_close_timer",
        "_closed",
        "_discarded",
        "_drain",
        "_high",
        "_home",
        "_hook",
        "_into",
        "_lane",
        "_lowat",
        "_max_size",
        "_mode",
        "_on_open",
        "_open_timer",
        "_opened",
        "_parts",
        "_path",
        "_paused_reading",
        "_ping_interval",
        "_ping_rate",
        "_ping_timer",
        "_pinged",
        "_pings",
        "_poll",
        "_pong_due",
        "_raw_head",
        "_reads",
        "_taken",
        "_tcp",
        "_ws",
    )

    def __init__(
        self,
        ws: ServerProtocol | ClientProtocol,
        *,
        write_limit: int,
        max_queue: int | None,
        close_timeout: float | None,
        ping_interval: float | None,
        max_size: int | None,
        notsent_lowat: int | None = None,
        on_open: Callable[[_Wire], None] | None = None,
        max_ping_rate: float | None = None,
        hook: WireHook | None = None,
        home: set[_Wire] | None = None,
        busy_poll: float | None = None,
    ) -> None:
        Transport.__init__(self, max_queue)
        self._hook = hook
        self._home = home  # the server's connections, left when the connection is lost
        self._ws = ws
        self._client = isinstance(ws, ClientProtocol)
        self._tcp: asyncio.Transport = None  # type: ignore[assignment]
        self._high = write_limit
        self._lowat = notsent_lowat
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._ping_timer: Timer | None = None  # on the loop's shared keepalive timer
        self._pinged = False
        self._ping_rate = max_ping_rate
        self._pings: PingLimit | None = None  # made at the peer's first PING
        self._pong_due: bytes | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._on_open = on_open
        loop = asyncio.get_running_loop()
        self._poll = poll_window(loop, busy_poll)  # told of each write and read (busy_poll)
        self._opened: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._drain: asyncio.Future[None] | None = None
        self._paused_reading = False
        # The fragments of a message being received: [text?, their bytes, *fragments].
        self._parts: list[Any] | None = None
        # The opening request's path, and its head as received (server side): its
        # headers are parsed again when asked for (request_headers), not kept parsed
        # (~2 KiB of every idle connection).
        self._path: str | None = None
        self._raw_head: bytes | None = None
        self._mode = _HEAD
        self._buf = bytearray()  # bytes of an incomplete frame (or HTTP head)
        self._into: _Into | None = None  # a large frame read into its own buffer (_direct)
        self._lane: Any = None  # the reader's compiled call lane (attach_lane)
        self._reads = _read_buffer()  # this thread's (a connection stays in one)
        self._discarded = 0
        self._taken = 0  # bytes read since reading last let the loop go on (_READ_SLICE)
        self._max_size = max_size if max_size is not None else 1 << 62
        self._open_timer: asyncio.TimerHandle | None = None

    def attach_lane(self, make: Callable[..., Any]) -> Any:
        """Make the call lane ``make`` builds from this transport's parts
        (``frames.CallLane``) the socket's protocol, and return it: every read goes to
        it first; it answers a lone plain call, or settles a lone answer, there, and
        hands any other read to this transport (``get_buffer``/``buffer_updated``).
        None with ``busy_poll`` (the lane does not tell the poller of its reads and
        writes)."""
        if self._poll is not None or self._tcp is None:
            return None
        lane = make(self, self._tcp, self._ws, _OPEN, self._high, self._client, _FRAMING, _READ_SLICE)
        # The lane becomes the socket's protocol: reads reach it from C, and those it
        # does not take come here (get_buffer, buffer_updated) as before.
        self._tcp.set_protocol(lane)
        self._lane = lane
        return lane

    # ------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp: asyncio.Transport = transport  # type: ignore[assignment]
        self._tcp = tcp
        tcp.set_write_buffer_limits(self._high)
        _notsent_lowat(tcp, self._lowat)
        if self._client:
            ws: ClientProtocol = self._ws  # type: ignore[assignment]
            ws.send_request(ws.connect())
            self._send_data()

    def get_buffer(self, sizehint: int) -> memoryview:
        into = self._into
        if into is None:
            return self._reads.view
        if self._mode == _FRAMING:
            return into.view[into.got :]
        self._drop_into()  # failed or closing: no longer kept
        return self._reads.view

    def buffer_updated(self, nbytes: int) -> None:
        # (With a call lane, the lane's buffer_updated offered it the read first.)
        if self._poll is not None:
            self._poll.read()  # busy_poll: was this read on time after the last write?
        into = self._into
        if into is None:
            if self._mode != _FRAMING:
                self.data_received(self._reads.view[:nbytes])
                return
            # A read that is one whole small frame (a call, its answer) is unwrapped
            # in one step and given as a message alone (its reply may leave at once,
            # no messages_read); any other goes through the framer.
            msg = (
                None
                if self._buf or self._parts is not None
                else _lone_frame(self._reads.view, nbytes, not self._client, self._max_size)
            )
            reader = self._sink
            if msg is not None and reader is not None:
                reader.message_received(self, msg, True)
            else:
                try:  # data_received, inline for the data path (every read)
                    if msg is None:
                        self._frames(self._reads.view[:nbytes])
                    else:
                        self.feed(msg)
                finally:
                    self.read_done()
            self._read_slice(nbytes)
            return
        into.got += nbytes
        try:
            if into.got == len(into.view):
                self._direct_done(into)
        finally:
            self.read_done()
        self._read_slice(nbytes)

    def data_received(self, data: bytes | memoryview) -> None:
        """The bytes of one read (a view of the shared read buffer: kept only as copies)."""
        mode = self._mode
        try:
            if mode == _FRAMING:
                self._frames(data)
            elif mode == _HEAD:
                self._head(data)
            elif mode == _FAILED:
                self._discarded += len(data)
                if self._discarded > _FAILED_DISCARD:
                    self._tcp.pause_reading()
            else:
                self._parse(bytes(data))
        finally:
            self.read_done()
        self._read_slice(len(data))

    def _read_slice(self, n: int) -> None:
        taken = self._taken + n
        if taken < _READ_SLICE:
            self._taken = taken
            return
        self._taken = 0
        tcp = self._tcp
        if not self._paused_reading and not tcp.is_closing():
            tcp.pause_reading()  # ends libuv's run of reads; the next iteration goes on
            asyncio.get_running_loop().call_soon(self._read_on)

    def _read_on(self) -> None:
        if self._paused_reading or self._tcp.is_closing():
            return
        if self._mode == _HEAD:
            return  # the hook decides: reading waits for it (_decide)
        if self._mode == _FAILED and self._discarded > _FAILED_DISCARD:
            return  # no longer read (data_received)
        self._tcp.resume_reading()

    def _head(self, data: bytes | memoryview) -> None:
        """The HTTP handshake goes to websockets alone, to its last byte: what follows
        it is the framer's (websockets' reader is left with nothing buffered)."""
        buf = self._buf
        seen = len(buf)
        buf += data
        # (From where the last read ended: a head sent a byte at a time is not
        # searched again and again.)
        end = buf.find(b"\r\n\r\n", max(0, seen - 3))
        if end < 0 and len(buf) <= _MAX_HEAD:
            return
        if end < 0 or end + 4 > _MAX_HEAD:
            buf.clear()
            self._refuse_head()
            return
        head = bytes(buf[: end + 4])
        del buf[: end + 4]
        if not self._client:
            self._raw_head = head
        self._parse(head)
        if self._mode == _HEAD:
            if self._hook is not None and self._path is not None:
                return  # the hook decides; reading waits, the rest stays in _buf (_decided)
            self._mode = _LIBRARY  # not open: websockets reads the rest (a body, EOF)
        if buf:
            rest = bytes(buf)
            buf.clear()
            self.data_received(rest)

    def _refuse_head(self) -> None:
        """An opening request (or response) past ``_MAX_HEAD`` without its end: refused
        here (a server answers 431), never handed to websockets, whose own bound is
        about 1 MiB (128 headers of 8 KiB) and whose reader would keep what follows."""
        ws = self._ws
        why = f"an HTTP head over {_MAX_HEAD >> 10} KiB"
        self._mode = _FAILED
        self._discarded = _FAILED_DISCARD  # nothing more is read
        if self._client:
            ws.handshake_exc = _InvalidHandshake(f"the server's handshake response is {why}")
        else:
            server: ServerProtocol = ws  # type: ignore[assignment]
            server.handshake_exc = _InvalidHandshake(f"the opening request is {why}")
            server.send_response(server.reject(431, f"Request header fields too large ({why}).\n"))
            self._send_data()
        self._handshake_done()  # not open: the TCP connection is closed

    def _frames(self, data: bytes | memoryview) -> None:
        """RFC 6455 framing of the data path: final, unfragmented BINARY and TEXT
        frames and PINGs (masked from a client, unmasked from a server) are read
        here; any other frame (other control frames, fragments, reserved bits, a wrong
        mask bit) goes, whole, to websockets' protocol, which answers it or fails the
        connection.
        A frame larger than max_size fails the connection (1009): a data frame here, with
        a reason naming max_message_size; any other through websockets. So does the
        fragment that takes a fragmented message past max_size (as websockets would,
        from its header: here, so that the reason is :func:`too_large`'s too)."""
        buf = self._buf
        src: bytes | bytearray | memoryview = data
        if buf:
            try:
                buf += data
            except BufferError:
                buf = self._buf = _unpinned(buf) + data
            src = buf
        view = memoryview(src)
        n = len(src)
        pos = 0
        masked = 0 if self._client else 0x80
        limit = self._max_size
        try:
            while self._mode == _FRAMING and n - pos >= 2:
                b0 = view[pos]
                b1 = view[pos + 1]
                length = b1 & 0x7F
                head = 2
                if length == 126:
                    if n - pos < 4:
                        break
                    length = (view[pos + 2] << 8) | view[pos + 3]
                    head = 4
                elif length == 127:
                    if n - pos < 10:
                        break
                    length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                    head = 10
                if b1 & 0x80:
                    head += 4
                    if n - pos < head:
                        break  # the mask too must have arrived: every path below reads it
                size = length
                parts = self._parts
                if parts is not None and b0 & 0x7F == 0:
                    size += parts[1]  # a continuation: the message's fragments so far count
                if size > limit:
                    if b0 & 0x0F <= 2 and b1 & 0x80 == masked and self._ws.state is _OPEN:
                        # A data frame (valid, but for its size), or the fragment that
                        # takes a message past it: failed here, with a reason that names
                        # the option (websockets' would not). Of a fragment but the
                        # last, the message's whole size is not known.
                        self._fail(1009, too_large(size, limit, "" if b0 & 0x80 else "fragmented"))
                    else:
                        self._mode = _LIBRARY
                        self._parse(view[pos:].tobytes())  # websockets fails it: 1009
                    if self._mode == _FAILED:
                        # The rest of the frame is most likely on its way (a peer's too
                        # large message): dropped as well, within its own bound.
                        self._discarded -= min(max(pos + head + length - n, 0), _FAILED_FRAME_DISCARD)
                    pos = n
                    break
                end = pos + head + length
                if end > n:
                    if (
                        length >= _DIRECT_MIN
                        and b1 & 0x80 == masked
                        and (b0 == 0x82 or b0 == 0x81)
                        and self._parts is None
                    ):
                        if src is data and self._finish_in_place(data, pos + head, n, length, b0, masked):
                            pos = n
                        elif (n - pos - head) * _DIRECT_SHARE >= length:
                            self._direct(view, pos + head, n, length, b0, masked)
                            pos = n
                    break
                if b1 & 0x80 == masked and (
                    ((b0 == 0x82 or b0 == 0x81) and self._parts is None) or (b0 == 0x89 and length <= 125)
                ):
                    start = pos + head
                    if masked and view.readonly:  # bytes given whole (what followed the handshake)
                        payload = apply_mask(view[start:end], view[start - 4 : start])  # type: ignore[arg-type]
                    else:
                        if masked:  # unmasked where it was read, not into a copy
                            unmask(view[start:end], view[start - 4 : start])
                        if b0 == 0x82:
                            # Fed as a view of the read buffer, held by no local (the
                            # buffer is resized below): its receiver copies what it keeps.
                            pos = end
                            self.feed(view[start:end])
                            continue
                        payload = view[start:end].tobytes()
                    pos = end
                    if b0 == 0x82:
                        self.feed(payload)
                    elif b0 == 0x81:
                        self._text(payload)
                    else:
                        self._ping(payload)
                else:
                    frame = view[pos:end].tobytes()
                    pos = end
                    self._parse(frame)
        finally:
            view.release()
        if buf:
            try:
                del buf[:pos]
            except BufferError:
                self._buf = _unpinned(buf)[pos:]
        elif pos < n:
            buf += data[pos:]

    def _direct(self, view: memoryview, start: int, n: int, length: int, op: int, masked: int) -> None:
        """Read the rest of a large data frame straight into a buffer of its size
        (``get_buffer``), from the ``view[start:n]`` of it that has arrived."""
        into = unfilled(length)  # every byte of it is written before it is read
        dst = memoryview(into)
        # Through a view: a bytearray's own slice assignment copies a memoryview into a
        # temporary bytearray first (two copies of up to a message, not one).
        dst[: n - start] = view[start:n]
        self._into = _Into(dst, n - start, op, view[start - 4 : start].tobytes() if masked else None)

    def _finish_in_place(self, data: bytes | memoryview, start: int, n: int, length: int, op: int, masked: int) -> bool:
        """Read the rest of a large data frame into the read buffer ``data`` views, after
        what has arrived (``data[start:n]``), if it fits there and the thread can lend
        that buffer to this connection (:meth:`_ReadBuffer.lend`): no copy of what
        arrived. False: the caller does as before."""
        reads = self._reads
        if type(data) is not memoryview or data.obj is not reads.whole.obj or start + length > len(reads.whole):
            return False  # not a read's own view (a handshake's rest), or too large for it
        whole = reads.lend()
        if whole is None:
            return False
        mask = whole[start - 4 : start].tobytes() if masked else None
        self._into = _Into(whole[start : start + length], n - start, op, mask, whole)
        return True

    def _direct_done(self, into: _Into) -> None:
        """A frame read in place is complete: deliver it (from :meth:`_direct`, a binary
        message as the bytearray itself: nothing else refers to it; from a lent read
        buffer as a view, which the reader copies from as from any read), and give the
        read buffer back."""
        self._into = None
        try:
            if self._mode != _FRAMING:
                return  # failed or closed meanwhile
            # _direct's frame: its own bytearray, delivered itself.
            data: bytearray | memoryview = into.view if into.lent is not None else into.view.obj  # type: ignore[assignment]
            if into.mask is not None:
                unmask(data, into.mask)  # where it was read, not into a copy
            if into.op == 0x82:
                self.feed(data)
            else:
                self._text(bytes(data))
        finally:
            if into.lent is not None:
                self._reads.give_back(into.lent)

    def _drop_into(self) -> None:
        """Forget a frame being read in place (a failed or lost connection)."""
        into = self._into
        if into is not None:
            self._into = None
            if into.lent is not None:
                self._reads.give_back(into.lent)

    def _parse(self, data: bytes) -> None:
        """Feed ``data`` to websockets' protocol and act on what it parsed."""
        ws = self._ws
        ws.receive_data(data)
        events = ws.events_received()
        self._send_data()
        for ev in events:
            if not isinstance(ev, Frame):
                self._handshake(ev)
                continue
            op = ev.opcode
            if op is Opcode.BINARY or op is Opcode.TEXT or op is Opcode.CONT:
                self._on_data(ev)
            elif op is Opcode.PONG:
                self._pinged = False
        if ws.state is not _OPEN:
            if ws.parser_exc is not None and ws.close_sent is not None:
                # websockets failed the open connection (1002, 1009...): as _fail, what
                # follows is read up to _FAILED_DISCARD and dropped, no longer parsed.
                if self._mode != _FAILED:
                    self._mode = _FAILED
                    self._discarded = 0
            elif self._mode == _FRAMING and ws.close_rcvd is not None:
                self._mode = _LIBRARY  # the peer's close came: websockets reads to EOF
            # Else our close waits for the peer's: the framer goes on (its PINGs still
            # answered within _ping's bounds, not by websockets without any).
            self._closing()

    def _on_data(self, frame: Any) -> None:
        parts = self._parts
        if parts is None:
            if frame.fin:
                data = frame.data
                if frame.opcode is Opcode.TEXT:
                    self._text(data)
                else:
                    self.feed(data if type(data) is bytes else bytes(data))
                return
            self._parts = [frame.opcode is Opcode.TEXT, len(frame.data), frame.data]
            return
        if len(parts) > MAX_FRAGMENTS + 1:
            self._parts = None
            self._fail(1009, "too many fragments")
            return
        parts.append(frame.data)
        parts[1] += len(frame.data)
        if frame.fin:
            self._parts = None
            data = b"".join(parts[2:])
            if parts[0]:
                self._text(data)
            else:
                self.feed(data)

    def _text(self, data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError as e:
            self._fail(1007, f"{e.reason} at position {e.start}")
            return
        self.feed(text)

    def _ping(self, payload: bytes) -> None:
        """A WebSocket PING: answered at once, unless the peer is over max_ping_rate
        (closed, 1008) or does not read what we write (only its latest PING is
        answered, once it reads again: RFC 6455 5.5.3 allows it). Either way a PING
        flood cannot grow our write buffer."""
        if self._ping_rate is not None:
            limit = self._pings
            if limit is None:
                limit = self._pings = PingLimit(self._ping_rate, PING_BURST)
            if not limit.take():
                self._fail(1008, limit.describe("max_ping_rate"))
                return
        if self._drain is not None:
            self._pong_due = payload
            return
        self._ws.send_pong(payload)
        self._send_data()

    def _fail(self, code: int, reason: str) -> None:
        if self._ws.state is _OPEN:
            self._mode = _FAILED
            self._discarded = 0
            self._ws.fail(code, reason)
            self._send_data()
            self._closing()

    def _handshake(self, ev: Request | Response) -> None:
        ws = self._ws
        if type(ev) is Request:
            server: ServerProtocol = ws  # type: ignore[assignment]
            self._path = ev.path
            if self._hook is not None:
                self._tcp.pause_reading()
                task = asyncio.get_running_loop().create_task(self._decide(ev, self._hook))
                _DECIDING.add(task)
                task.add_done_callback(_DECIDING.discard)
                return
            server.send_response(server.accept(ev))
            self._send_data()
        self._handshake_done()

    async def _decide(self, request: Request, hook: WireHook) -> None:
        """Run the server's hook on the opening request (files, authentication): its
        HTTP answer refuses the upgrade; None accepts it. Nothing is read meanwhile."""
        server: ServerProtocol = self._ws  # type: ignore[assignment]
        try:
            response = await hook(self, request)
        except Exception as e:
            server.handshake_exc = e
            response = server.reject(500, "Failed to open a WebSocket connection.\n")
        if self._tcp.is_closing():
            return
        server.send_response(response if response is not None else server.accept(request))
        self._send_data()
        self._handshake_done()
        if self._mode == _HEAD:
            self._mode = _LIBRARY  # refused: websockets reads the rest (a body, EOF)
        if not self._tcp.is_closing():
            self._tcp.resume_reading()
        if self._buf:
            rest = bytes(self._buf)
            self._buf.clear()
            self.data_received(rest)

    def respond(self, status: int, text: str) -> Response:
        """An HTTP answer refusing the upgrade (for a server's hook; as websockets'
        ``ServerConnection.respond``)."""
        server: ServerProtocol = self._ws  # type: ignore[assignment]
        return server.reject(status, text)

    def _handshake_done(self) -> None:
        ws = self._ws
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        if ws.state is _OPEN:
            self._mode = _FRAMING
            _forget_handshake(ws)
            self._opened.set_result(None)
            self._keepalive()
            if self._on_open is not None:
                self._on_open(self)
                self._on_open = None
        else:
            exc = ws.handshake_exc or _InvalidHandshake("handshake failed")
            if not self._opened.done():
                self._opened.set_exception(exc)
                self._opened.exception()
            tcp = self._tcp
            tcp.close()  # once the answer (an error, a static file) is written
            if tcp.get_write_buffer_size() and self._close_timeout is not None:
                self._answer_stalled(-1)

    def _answer_stalled(self, before: int) -> None:
        """A refused upgrade's answer is being written before the connection closes: a
        peer that read none of it for ``close_timeout`` is dropped (it held the
        answer, up to a static file's ``max_file_size``, and its socket for ever)."""
        tcp = self._tcp
        left = _unsent(tcp)
        if before >= 0 and left >= before:
            tcp.abort()
        elif self._close_timeout is not None and not self._closed.done():
            self._close_timer = asyncio.get_running_loop().call_later(self._close_timeout, self._answer_stalled, left)

    def eof_received(self) -> None:
        self._ws.receive_eof()
        self._ws.events_received()
        self._send_data()

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop_into()
        self._lane = None  # (it refers back to this transport and its reader)
        ws = self._ws
        ws.receive_eof()  # idempotent: the state is CLOSED now
        for t in (self._close_timer, self._ping_timer, self._open_timer):
            if t is not None:
                t.cancel()
        self._close_timer = self._ping_timer = self._open_timer = None
        closed = ws.close_exc
        if exc is not None:
            closed.__cause__ = exc
        if not self._opened.done():
            self._opened.set_exception(exc or EOFError("connection closed during the opening handshake"))
            self._opened.exception()
        self._wake_drain(closed)
        if self._home is not None:
            self._home.discard(self)
        if not self._closed.done():
            self._closed.set_result(None)
        self.finish(None if isinstance(closed, _WSClosedOK) else closed)

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        pong, self._pong_due = self._pong_due, None
        if pong is not None and self._ws.state is _OPEN:
            self._ws.send_pong(pong)
            self._send_data()
        self._wake_drain(None)

    def _wake_drain(self, exc: BaseException | None) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            if exc is None:
                drain.set_result(None)
            else:
                drain.set_exception(exc)
                drain.exception()

    # ---------------------------------------------------------------- helpers

    def _send_data(self) -> None:
        tcp = self._tcp
        for data in self._ws.data_to_send():
            if data:
                tcp.write(data)
            elif tcp.can_write_eof():
                try:
                    tcp.write_eof()
                except Exception:
                    pass
            else:
                tcp.close()

    def _closing(self) -> None:
        """After a close frame left or came: drop the TCP connection if the peer does
        not end it within ``close_timeout``."""
        if self._close_timer is None and self._ws.close_expected() and self._close_timeout is not None:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self._close_timeout, self._tcp.abort)

    def _keepalive(self) -> None:
        """WebSocket pings every ``ping_interval`` (a connection with no answer by the
        next one is dropped)."""
        if self._ping_interval is None:
            return
        if self._pinged:
            self._tcp.abort()
            return
        if self._ws.state is _OPEN:
            self._pinged = True
            self._ws.send_ping(os.urandom(4))
            self._send_data()
            self._ping_timer = timer(asyncio.get_running_loop(), self._ping_interval, self._keepalive)

    # ---------------------------------------------------------------- Transport

    def pause_reading(self) -> None:
        if not self._paused_reading and not self._tcp.is_closing():
            self._paused_reading = True
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._paused_reading:
            self._paused_reading = False
            if not self._tcp.is_closing():
                self._tcp.resume_reading()

    def write_now(self, msg: bytes) -> bool:
        tcp = self._tcp
        if self._ws.state is not _OPEN or tcp.get_write_buffer_size() > self._high:
            return False
        if self._client:  # _write, inline: a call
            tcp.write(mask_frame(msg, next(_MASKS)[0]))
        elif len(msg) < 126:  # _write and _header, inline: an answer
            tcp.write(bytes((_BINARY_FIN, len(msg))) + msg)
        else:
            self._write(msg)
            return True
        if self._poll is not None:
            self._poll.wrote()  # busy_poll: the reply is read without a wake-up
        return True

    def _write(self, msg: bytes) -> None:
        tcp = self._tcp
        if self._client:
            tcp.write(mask_frame(msg, next(_MASKS)[0]))  # a fresh mask per frame
        elif len(msg) < 4096:
            tcp.write(_header(len(msg), 0) + msg)
        else:
            tcp.writelines((_header(len(msg), 0), msg))
        if self._poll is not None:
            self._poll.wrote()

    def writes_parts(self) -> bool:
        return True

    def write_parts_now(self, parts: list[bytes]) -> bool:
        tcp = self._tcp
        if self._ws.state is not _OPEN or tcp.get_write_buffer_size() > self._high:
            return False
        self._write_parts(parts)
        return True

    def _write_parts(self, parts: list[bytes]) -> None:
        if self._client:
            # Masked into the frame as they are: one copy of each, not a join first.
            self._tcp.write(mask_frame(parts, next(_MASKS)[0]))
        else:
            # The header, then the parts as they are: uvloop writes them in one writev
            # (and keeps what the socket did not take by reference).
            self._tcp.writelines((_header(sum(map(len, parts)), 0), *parts))
        if self._poll is not None:
            self._poll.wrote()

    async def send_parts(self, parts: list[bytes]) -> None:
        if self._ws.state is not _OPEN:
            await self.send(b"")  # raises the closure, as send does
            return
        self._write_parts(parts)
        drain = self._drain
        if drain is not None:
            await asyncio.shield(drain)

    async def send(self, msg: bytes | str) -> None:
        # As websockets' own send: write, then wait until the socket takes it.
        if self._ws.state is not _OPEN:
            await asyncio.shield(self._closed)
            raise self._ws.close_exc
        if type(msg) is str:
            self._ws.send_text(msg.encode())
            self._send_data()
        else:
            self._write(msg)  # type: ignore[arg-type]
        drain = self._drain
        if drain is not None:
            await asyncio.shield(drain)

    def buffered(self) -> int:
        return int(self._tcp.get_write_buffer_size())

    def abort(self) -> None:
        self._tcp.abort()

    def drop(self, code: int, reason: str) -> None:
        tcp = self._tcp
        if self._ws.state is _OPEN and tcp.get_write_buffer_size() == 0:
            self._fail(code, reason)
            if tcp.get_write_buffer_size() == 0:  # the kernel took the close frame
                tcp.close()
                return
        tcp.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        ws = self._ws
        try:
            if ws.state is _OPEN:
                ws.send_close(code, reason)
                self._send_data()
                self._closing()
            elif ws.state is not _CLOSED and (not self._opened.done() or ws.state is _CONNECTING):
                self._tcp.abort()  # never opened, or refused: no close handshake to wait for
            await asyncio.shield(self._closed)
        except Exception:
            self._tcp.abort()

    @property
    def close_code(self) -> int | None:
        rcvd = self._ws.close_rcvd
        return rcvd.code if rcvd is not None else None

    @property
    def close_reason(self) -> str | None:
        rcvd = self._ws.close_rcvd
        return rcvd.reason if rcvd is not None else None

    @property
    def remote_address(self) -> Any:
        return self._tcp.get_extra_info("peername")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._tcp.get_extra_info(name, default)

    @property
    def request_path(self) -> str | None:
        return self._path

    @property
    def request_headers(self) -> Any:
        head = self._raw_head
        if head is None or self._path is None:
            return None
        items = []
        for line in head.split(b"\r\n")[1:]:  # websockets validated them (_handshake)
            if line:
                name, _, value = line.partition(b":")
                items.append(
                    (name.decode("ascii", "surrogateescape"), value.strip(b" \t").decode("ascii", "surrogateescape"))
                )
        return RequestHeaders(items)

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol


class _Library(Transport):
    """websockets' own asyncio connection, for options the data path does not have."""

    __slots__ = ("_reader", "_resumed", "ws")

    def __init__(self, ws: Any, max_queue: int | None) -> None:
        Transport.__init__(self, max_queue)
        self.ws = ws
        self._resumed: asyncio.Future[None] | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                self.feed(msg)
                self.read_done()
                while self._resumed is not None:
                    await self._resumed
        except TransportClosed as e:
            self.finish(e)
            return
        except Exception as e:  # pragma: no cover - the library failed: end the connection
            self.finish(ConnectionError(repr(e)))
            return
        self.finish(None)

    def pause_reading(self) -> None:
        if self._resumed is None:
            self._resumed = asyncio.get_running_loop().create_future()

    def resume_reading(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    def write_now(self, msg: bytes) -> bool:
        tcp = self.ws.transport
        protocol = self.ws.protocol
        if protocol.state is not _OPEN or tcp.get_write_buffer_size() > tcp.get_write_buffer_limits()[1]:
            return False
        try:
            protocol.send_binary(msg)
            for data in protocol.data_to_send():
                if data:
                    tcp.write(data)
                else:
                    tcp.write_eof()
        except Exception:
            tcp.abort()
        return True

    async def send(self, msg: bytes | str) -> None:
        await self.ws.send(msg)

    def buffered(self) -> int:
        return int(self.ws.transport.get_write_buffer_size())

    def abort(self) -> None:
        self.ws.transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self.ws.close(code, reason)
        except Exception:
            pass

    @property
    def close_code(self) -> int | None:
        rcvd = self.ws.protocol.close_rcvd
        return rcvd.code if rcvd is not None else None

    @property
    def close_reason(self) -> str | None:
        rcvd = self.ws.protocol.close_rcvd
        return rcvd.reason if rcvd is not None else None

    @property
    def remote_address(self) -> Any:
        return self.ws.remote_address

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        tcp = self.ws.transport
        return tcp.get_extra_info(name, default) if tcp is not None else default

    @property
    def request_path(self) -> str | None:
        request = getattr(self.ws, "request", None)
        return request.path if request is not None else None

    @property
    def request_headers(self) -> Any:
        request = getattr(self.ws, "request", None)
        return RequestHeaders(request.headers.raw_items()) if request is not None else None

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol  # type: ignore[no-any-return]


def closed_info(exc: BaseException) -> tuple[int | None, str]:
    """``(close code, reason)`` a TransportClosed exception carries: the peer's close
    frame, or when none came, ours (we failed the connection: its reason says why)."""
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is None:
        rcvd = getattr(exc, "sent", None)
        if rcvd is None:
            return None, "Connection closed"
    return rcvd.code, rcvd.reason or "Connection closed"


def _wire_ok(options: dict[str, Any]) -> bool:
    if set(options) <= _WIRE_OPTIONS and options.get("compression") is None:
        return True
    # The data path's alone: websockets' own connection answers every PING.
    options.pop("notsent_lowat", None)
    options.pop("max_ping_rate", None)
    options.pop("busy_poll", None)
    return False


async def open_connection(url: str, **options: Any) -> Transport:
    """Open a client connection to ``url`` (raises one of OPEN_FAILED)."""
    busy_poll = busy_poll_option(options.get("busy_poll"))  # checked on either path
    if not _wire_ok(options):
        return _Library(await _ws_connect(url, **options), options.get("max_queue"))
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    ws = ClientProtocol(uri, max_size=options.get("max_size", 1 << 20), subprotocols=options.get("subprotocols"))
    wire = _Wire(
        ws,
        write_limit=options.get("write_limit", 32768),
        max_queue=options.get("max_queue"),
        close_timeout=options.get("close_timeout", CLOSE_TIMEOUT),
        ping_interval=options.get("ping_interval", 20.0),
        max_size=options.get("max_size", 1 << 20),
        notsent_lowat=options.get("notsent_lowat"),
        max_ping_rate=options.get("max_ping_rate", MAX_PING_RATE),
        busy_poll=busy_poll,
    )
    ssl = options.get("ssl", True if uri.secure else None)
    tcp, _ = await asyncio.wait_for(
        loop.create_connection(lambda: wire, uri.host, uri.port, ssl=ssl), options.get("open_timeout", 10.0)
    )
    try:
        await asyncio.wait_for(asyncio.shield(wire._opened), options.get("open_timeout", 10.0))
    except BaseException:
        tcp.abort()
        raise
    return wire


class WebSocketServer:
    """A listening server: its sockets, close (every connection with 1001) and
    wait_closed (until every connection's handler returned)."""

    __slots__ = ("_handlers", "_server", "_wires")

    def __init__(self) -> None:
        self._server: Any = None
        self._wires: set[_Wire] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def sockets(self) -> Any:
        return self._server.sockets

    def close(self, close_connections: bool = True) -> None:
        """Stop listening; with ``close_connections``, close every connection (1001)
        (the ones left, after a first call without)."""
        loop = asyncio.get_running_loop()
        server = self._server
        if isinstance(server, _WSServer):  # websockets' own server (the fallback)
            if not (close_connections and server.close_task is not None):
                server.close(close_connections=close_connections)
                return
            # Closed already without its connections (its close() does nothing now).
            for conn in server.connections:
                task = loop.create_task(conn.close(1001, "server shutdown"))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
            return
        server.close()  # the listening socket only (asyncio's or uvloop's)
        if not close_connections:
            return
        for wire in list(self._wires):
            task = loop.create_task(wire.close(1001, "server shutdown"))
            self._handlers.add(task)  # awaited by wait_closed
            task.add_done_callback(self._handlers.discard)

    async def wait_closed(self) -> None:
        if hasattr(self._server, "wait_closed") and self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


async def start_server(
    handler: Callable[[Transport], Awaitable[None]],
    host: str,
    port: int,
    http: HttpHandler | None = None,
    hook: Callable[[Any, Request], Awaitable[Response | None]] | None = None,
    **options: Any,
) -> WebSocketServer:
    """Serve WebSocket connections on ``host:port``; ``handler`` runs per connection.

    On each opening request, in order (the first HTTP answer refuses the upgrade):
    ``http(path, headers)`` answers with an :class:`~fastrpc.static.HttpResponse` or
    None to go on (serve(..., static=DIR)); a caller's websockets ``process_request``
    option; ``hook(connection, request)`` (the server's authenticate). A
    ``process_request`` option, like any option the data path does not implement,
    puts the connections on websockets' own server."""
    busy_poll = busy_poll_option(options.get("busy_poll"))  # checked on either path
    server = WebSocketServer()
    loop = asyncio.get_running_loop()
    before = options.get("process_request")

    async def first(connection: Any, request: Request) -> Response | None:
        if http is not None:
            answer = await http(request.path, request.headers)
            if answer is not None:
                return Response(answer.status, answer.reason, Headers(answer.headers), answer.body)
        if before is not None:
            response = before(connection, request)
            if inspect.isawaitable(response):
                response = await response
            if response is not None:
                return response  # type: ignore[no-any-return]
        return await hook(connection, request) if hook is not None else None

    hooked = http is not None or hook is not None
    if not _wire_ok(options):
        if hooked:
            options["process_request"] = first

        async def accept(ws: Any) -> None:
            await handler(_Library(ws, options.get("max_queue")))

        options.setdefault("select_subprotocol", _select_subprotocol)
        server._server = await _ws_serve(accept, host, port, **options)
        return server

    max_size = options.get("max_size", 1 << 20)
    open_timeout = options.get("open_timeout", 10.0)
    wires = server._wires
    handlers = server._handlers

    def opened(wire: _Wire) -> None:
        # The handler is the connection's only coroutine (no wrapper: memory per
        # connection); once it returns, the connection is closed.
        task: asyncio.Task[None] = loop.create_task(handler(wire))  # type: ignore[arg-type]
        handlers.add(task)
        task.add_done_callback(partial(handled, wire))

    def handled(wire: _Wire, task: asyncio.Task[None]) -> None:
        handlers.discard(task)
        if not wire._closed.done():
            closing = loop.create_task(wire.close())
            handlers.add(closing)
            closing.add_done_callback(handlers.discard)

    def factory() -> _Wire:
        wire = _Wire(
            ServerProtocol(max_size=max_size, select_subprotocol=_select_subprotocol),
            write_limit=options.get("write_limit", 32768),
            max_queue=options.get("max_queue"),
            close_timeout=options.get("close_timeout", CLOSE_TIMEOUT),
            ping_interval=options.get("ping_interval", 20.0),
            max_size=max_size,
            notsent_lowat=options.get("notsent_lowat"),
            on_open=opened,
            max_ping_rate=options.get("max_ping_rate", MAX_PING_RATE),
            hook=first if hooked else None,
            home=wires,
            busy_poll=busy_poll,
        )
        wires.add(wire)
        if open_timeout is not None:
            wire._open_timer = loop.call_later(open_timeout, wire.abort)
        return wire

    server._server = await loop.create_server(factory, host, port, ssl=options.get("ssl"))
    return server
