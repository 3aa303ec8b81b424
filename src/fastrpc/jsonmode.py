"""Compatibility with the seed library's JSON protocol (jadujoel/ts-rpc, ts-signal-rpc).

One JSON object per text message (docs/json-mode.md has the whole picture):

* RPC: ``{"category": "request", "requestId": id, "from"?, "to"?, "data": ...}``
  answered by ``{"category": "response", "requestId": id, "to"?: from, "data": result}``;
* streams: ``{"type": "StreamData" | "StreamEnd" | "StreamError", "streamId": id,
  "payload"?: ..., "error"?: text}``;
* ``{"category": "welcome", "clientId": id}``: the server's greeting (the seed's
  clients wait for it); ``{"category": "ping", "timestamp": t}`` answered by
  ``{"category": "pong", "timestamp": t}``; ``{"category": "error", "error": text}``:
  the relay's report of a message it could not deliver.

A handler's error is answered as the seed's own servers answer a bad request:
``"data": {"type": "error", "message": "Type: text"}``, plus ``"error": "Type: text"``
beside it (zod strips the extra key; fastrpc's JSON client reads it).

:class:`JsonPeer` gives handlers the same surface as :class:`RpcPeer` for what the seed
can express (call, request, notify, send_stream, receive_stream, abort/close), so one
server serves JavaScript clients written to the seed and fastrpc clients alike; it is
also the Python seed client (:mod:`fastrpc.jsonclient`). A request or response whose
``to`` names another JSON connection of the same server is relayed to it verbatim,
as the seed's relay (``serve.ts``) does. The seed protocol has no flow control; sends
still wait on the transport's write buffer.

The other side is not trusted. Each limit is a keyword argument of :class:`JsonPeer`
(defaults below); a peer that breaks one is closed with the close code given, and a
reason that says which:

=====================  ==========  =====================================================
limit                  default     past it
=====================  ==========  =====================================================
``max_item_size``      1 MiB       a message (one request, response or stream item)
                                   longer than this: 1009, before it is decoded
``max_depth``          64          JSON nested deeper than this: 1007, checked before
                                   decoding (no recursion, no RecursionError)
``max_pending_calls``  1024        more requests than this whose handlers run: 1008;
                                   also more "Target peer not found" errors than this
                                   waiting for the peer to read them: 1008
``max_pending_bytes``  16 MiB      the data of the requests whose handlers run, as
                                   decoded objects (estimated: the JSON size plus 96
                                   bytes per array or object), more than this: 1008
``max_streams``        1024        a new incoming stream while this many are held
                                   (items, or an early end, nobody has read): 1008
``max_held_items``     10,000      unread items of one stream: that stream fails with
                                   :class:`StreamAborted` (later items are dropped)
``max_held_bytes``     16 MiB      unread stream items of all streams together (their
                                   JSON size), and the text of unread StreamErrors
                                   (cut to 1,024 characters): 1008
``max_id_length``      256         a ``requestId`` or ``streamId`` that is not a
                                   string of at most this many characters or an
                                   integer, a ``to`` that is not such a string: 1007
``max_ping_rate``      1,000/s     ``ping`` messages faster than this (bursts of
                                   1,024; None: no limit): 1008. Each ping is
                                   answered; while a pong waits for the peer to read,
                                   only the latest ping is answered after it
=====================  ==========  =====================================================

A message that is not JSON, not an object, or of no known shape closes with 1007.
Numbers beyond a double in data, params and stream items are read as JavaScript reads
them (``inf``, ``-inf``); NaN and infinities we send go as ``null`` (JSON has neither).
A request's ``params`` (an array: positional arguments; an object: keyword ones) are
bound and converted to the handler's annotations as a binary call's arguments are
(:mod:`fastrpc.arguments`); other ``params`` (a string ...) or arguments that do not
fit are answered ``InvalidArguments``.
A request's data is decoded as the message is read (so a client that sends more than
the server decodes is held back by its own connection), and after a large message
(over 64 KiB) the next one is read only after as long again as it took: other
connections get their turn.
Held stream items are kept as their JSON text and decoded when read, so what they
cost is what they weigh on the wire. The ids of streams the reader closed before
their end are remembered (at most ``max_streams``, the oldest forgotten) so that what
the sender still sends on them is dropped, not held. ``max_message_size`` is the
WebSocket limit (the server passes its own; websockets enforces it with 1009).
A relayed message waits for its target's socket to drain; a target that takes more
than ``relay_timeout`` seconds is closed (1008), so one peer that does not read cannot
stall the others.

Closing waits for the request handlers and stream senders it cancelled at most
``handlers.HANDLER_STOP_TIMEOUT`` and ``streams.SENDER_STOP_TIMEOUT``, as the binary
protocol's close does: one that swallows its cancellation is given up on (a WARNING
names it) and runs on detached, sending nothing.
"""

from __future__ import annotations

import array
import asyncio
import functools
import inspect
import itertools
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, MutableMapping
from typing import Any

import msgspec

from . import handlers as _handlers
from . import options as O
from . import streams as _streams
from .arguments import bad_arguments, split_kwargs
from .budget import PingLimit
from .codec import DecHook, PayloadCodec, payload_error
from .exceptions import (
    REMOTE_ERRORS,
    ConnectionClosed,
    InvalidArguments,
    RemoteError,
    RemoteStreamError,
    StreamAborted,
)
from .handlers import authorize
from .log import side_logger, warn_limited
from .peer import Response, _current_peer
from .router import Router
from .settings import CODEC_JSON
from .transport import Transport, TransportClosed

__all__ = ["JsonPeer", "welcome_message"]

logger = logging.getLogger("fastrpc.jsonmode")
_LOGGED_TEXT = 1024  # characters of a peer's error message that reach our log


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


StreamId = Any  # the seed's ids are strings (UUIDs); integers are accepted too

# Close codes (RFC 6455): invalid data, policy (a limit), message too big, internal error.
INVALID = 1007
POLICY = 1008
TOO_BIG = 1009
INTERNAL = 1011
# After a message this large, other connections get a turn (as long as the message
# took), and before a stream item this large is decoded, one: decoding one takes a
# while, and queued messages would otherwise be handled back to back without the
# event loop serving anyone else.
_LARGE = 64 << 10
# What one array or object costs once decoded (a list or dict, and its slot in its
# parent), roughly: how max_pending_bytes estimates a request's decoded data.
_PER_CONTAINER = 96
# A StreamError's text is cut to this many characters (as the binary protocol cuts a
# stream's abort reason to 1 KiB): it is held until the stream is read.
_MAX_ERROR_TEXT = 1024


class _Envelope(msgspec.Struct):
    """The fields of a seed message. ``data`` and ``payload`` stay JSON text (Raw): a
    request's data is decoded when it is dispatched, a stream item when it is read."""

    category: Any = None
    requestId: Any = None  # the seed's field names
    data: msgspec.Raw = msgspec.Raw(b"null")
    type: Any = None
    streamId: Any = None
    payload: msgspec.Raw = msgspec.Raw(b"null")
    error: Any = msgspec.UNSET
    to: Any = None
    sender: Any = msgspec.field(default=None, name="from")
    clientId: Any = None
    timestamp: Any = None
    targetId: Any = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_msgspec_decode = msgspec.json.decode


def _decode(data: Any) -> Any:
    """JSON text as a Python value. Numbers beyond a double (``1e400``, an integer of
    thousands of digits) are valid JSON that msgspec refuses: read as JavaScript (the
    seed) reads them, ``inf`` or ``-inf`` (an integer Python can hold stays exact)."""
    try:
        return _msgspec_decode(data)
    except msgspec.ValidationError:  # untyped: only a number out of range
        pass
    try:
        return json.loads(bytes(data), parse_int=_parse_int, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise msgspec.DecodeError(str(exc)) from None


def _parse_int(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:  # past sys.get_int_max_str_digits: as JavaScript, a float (inf)
        return float(text)


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _dumps(obj: Any) -> str:
    """``obj`` as JSON text. JSON has no NaN or Infinity (JavaScript's JSON.parse,
    and fastrpc's JSON client, refuse them): sent as null, as JSON.stringify and the
    binary protocol's JSON codec send them."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
    try:
        return msgspec.json.encode(obj).decode()
    except (TypeError, ValueError):
        raise
    except Exception as exc:  # msgspec.EncodeError, RecursionError: not JSON-serialisable
        raise ValueError(str(exc)) from None


# Opening brackets become 1, closing ones -1 (as signed bytes), everything else goes.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether JSON text ``data`` nests arrays and objects more than ``limit`` deep.

    No recursion and no Python loop over characters: strings are cut out and the rest
    reduced to its brackets. Each pass that deletes the innermost pairs (``[]``) takes
    one level off, cheaply while the text shrinks fast (wide, shallow JSON); once it
    does not (deep JSON), the depth left is the largest running sum of +1 and -1, all
    in C. Text with no more than ``limit`` brackets is not even scanned. (Text that is
    not JSON may be judged either way; the decoder rejects it anyway.)
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    if b'"' in data:
        data = b"".join(data.split(b'"')[::2])  # what lies between strings
    brackets = data.translate(_SQUARE, _NOT_BRACKETS)
    passes = 0
    while brackets and passes < limit:
        shorter = brackets.replace(b"[]", b"")
        passes += 1
        deep = len(shorter) * 2 > len(brackets)
        brackets = shorter
        if deep:
            break
    steps = array.array("b", brackets.translate(_STEPS))
    return passes + max(itertools.accumulate(steps), default=0) > limit


def welcome_message(client_id: str) -> str:
    """The seed's greeting: what its clients wait for (``waitForWelcome``)."""
    return json.dumps({"category": "welcome", "clientId": client_id}, separators=(",", ":"))


def error_reply(exc: BaseException) -> dict[str, Any]:
    """The fields of a response that reports ``exc``: the seed's convention (its
    example servers answer a bad request with ``data: {type: "error", message}``) and
    an ``error`` key fastrpc's JSON client reads."""
    if isinstance(exc, RemoteError) and type(exc) is REMOTE_ERRORS.get(exc.type_name):
        text = f"{exc.type_name}: {exc.message}"  # a refusal (InvalidArguments ...): as binary mode names it
    else:
        text = f"{type(exc).__name__}: {exc}"
    return {"data": {"type": "error", "message": text}, "error": text}


_TYPED = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.S)


def remote_error(text: str) -> RemoteError:
    """A :class:`RemoteError` for an error text ("Type: message" when it has one)."""
    m = _TYPED.match(text)
    if m is None:
        return RemoteError("Error", text)
    # InvalidArguments, PermissionDenied ...: raised as their class, as in binary mode.
    return REMOTE_ERRORS.get(m.group(1), RemoteError)(m.group(1), m.group(2))


def response_error(data: Any, error: Any) -> RemoteError | None:
    """The error a response reports, if it does: an ``error`` key, or data of the
    seed's error shape ``{"type": "error", "message": text}``."""
    if isinstance(error, str):
        return remote_error(error)
    if isinstance(data, dict) and data.get("type") == "error" and isinstance(data.get("message"), str):
        return remote_error(data["message"])
    return None


class _Violation(Exception):
    """The peer broke the seed protocol or a limit: close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _JsonStream(AsyncIterator[Any]):
    """An incoming seed stream. Its items stay JSON text until read (the seed has no
    credit: the peer's limits bound what it may hold)."""

    def __init__(self, peer: JsonPeer, stream_id: StreamId) -> None:
        self._peer = peer
        self.stream_id = stream_id
        self.items: deque[tuple[msgspec.Raw, int]] = deque()  # (JSON text, its size)
        self.done = False
        self.error: BaseException | None = None
        self.error_cost = 0  # what the peer's StreamError text counts in _held_bytes
        self._waiter: asyncio.Future[None] | None = None

    def __aiter__(self) -> _JsonStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self.items:
                raw, size = self.items.popleft()
                self._peer._held_bytes -= size
                if size > _LARGE:
                    await asyncio.sleep(0)
                try:
                    return _decode(raw)
                except (msgspec.DecodeError, RecursionError) as exc:  # that item fails; the stream goes on
                    raise payload_error(f"an item of stream {self.stream_id!r}", "json", exc) from exc
            if self.done:
                self._peer._forget_stream(self)
                self._release_error()
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _drop(self) -> None:
        """Forget what is held (the reader stopped, or the connection is gone)."""
        self._peer._held_bytes -= sum(size for _, size in self.items)
        self.items.clear()
        self._release_error()

    def _release_error(self) -> None:
        """The peer's error text no longer counts as held (read, or dropped)."""
        self._peer._held_bytes -= self.error_cost
        self.error_cost = 0

    async def aclose(self) -> None:
        self._peer.close_receiving_stream(self.stream_id)


class JsonPeer:
    """A connection speaking the seed's JSON protocol (see the module docstring for
    what it speaks and the limits it holds the other side to).

    ``role``: ``"server"`` greets the other side with a welcome (unless ``greeted``:
    the server already sent it) under ``client_id``; ``"client"`` takes its
    ``client_id`` from the welcome it gets. ``relay``: the server's JSON connections
    by client id, for ``to`` routing (None: no relaying). ``dec_hook``: the ``dec_hook``
    option of ``serve`` (:mod:`fastrpc.codec`): a request's ``params`` reach a handler
    whose annotations name custom types converted by it, as a binary call's arguments do.
    """

    def __init__(
        self,
        ws: Transport,
        router: Router | None,
        *,
        role: str = "server",
        client_id: str | None = None,
        greeted: bool = False,
        relay: MutableMapping[str, JsonPeer] | None = None,
        relay_timeout: float = O.OUTPUT_STALL_TIMEOUT,
        max_message_size: int = 4 << 20,
        max_item_size: int = 1 << 20,
        max_depth: int = 64,
        max_pending_calls: int = 1024,
        max_pending_bytes: int = 16 << 20,
        max_streams: int = 1024,
        max_held_items: int = 10_000,
        max_held_bytes: int = 16 << 20,
        max_id_length: int = 256,
        max_ping_rate: float | None = O.MAX_PING_RATE,
        dec_hook: DecHook | None = None,
    ) -> None:
        for name, value in (
            ("max_item_size", max_item_size),
            ("max_depth", max_depth),
            ("max_pending_calls", max_pending_calls),
            ("max_pending_bytes", max_pending_bytes),
            ("max_streams", max_streams),
            ("max_held_items", max_held_items),
            ("max_held_bytes", max_held_bytes),
            ("max_id_length", max_id_length),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        if role not in ("server", "client"):
            raise ValueError("role is 'server' or 'client'")
        self._ws = ws
        self._router = router or Router()
        self._own = Router()
        # What converts a request's params to the handler's annotations (dec_hook's).
        self._params = _PARAMS if dec_hook is None else _Params(dec_hook)
        self.identity: Any = None  # what the server's authenticate hook returned
        self._loop = asyncio.get_running_loop()
        self.role = role
        # Ours (server: the id we greet with; client: the one the welcome gave us).
        self.client_id: str | None = (
            client_id if client_id is not None else (str(uuid.uuid4()) if role == "server" else None)
        )
        self._greeted = greeted or role == "client"
        self._welcomed: asyncio.Future[str] = self._loop.create_future()
        self._relay = relay
        self.relay_timeout = relay_timeout
        self._calls: dict[Any, asyncio.Future[Any]] = {}
        self._call_targets: dict[Any, str] = {}  # requestId -> the "to" it was sent to
        self._pings: dict[Any, asyncio.Future[None]] = {}
        # The peer's pings: their rate, and those not answered yet, one task sending
        # the pongs (not a task per ping); while a pong waits for the peer to read
        # (_pong_stalled), only the latest ping waits after it.
        self._ping_limit = PingLimit(max_ping_rate, O.PING_BURST) if max_ping_rate is not None else None
        self._pongs_due: deque[Any] = deque()
        self._ponging = False
        self._pong_stalled = False
        # "Target peer not found" reports waiting to be sent ((to, requestId)), one
        # task sending them.
        self._unrouted: deque[tuple[str, Any]] = deque()
        self._reporting = False
        self._incoming: dict[StreamId, _JsonStream] = {}
        self._closed_ids: dict[StreamId, None] = {}  # closed by the reader before their end
        self._senders: dict[StreamId, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._closed_flag = False
        self._runner: asyncio.Task[None] | None = None
        self._max = max_message_size
        self.max_item_size = max_item_size
        self.max_depth = max_depth
        self.max_pending_calls = max_pending_calls
        self.max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0  # estimated size of the running requests' data
        self.max_streams = max_streams
        self.max_held_items = max_held_items
        self.max_held_bytes = max_held_bytes
        self.max_id_length = max_id_length
        self._held_bytes = 0  # JSON size of the unread items of every incoming stream
        #: Called with each ``{"category": "error"}`` message not tied to a call.
        self.on_error: Callable[[dict[str, Any]], Any] | None = None
        if relay is not None and self.client_id is not None:
            relay[self.client_id] = self

    @property
    def closed(self) -> bool:
        """The connection is closed (or closing)."""
        return self._closed_flag

    async def _send(self, obj: dict[str, Any]) -> None:
        if self._closed_flag:
            # A handler or stream sender given up on at the close (it swallowed its
            # cancellation: _teardown) runs on detached: nothing of it is sent.
            raise ConnectionClosed()
        await self._ws.send(_dumps(obj))

    # ----------------------------------------------------------------- API

    def register(self, name: str, fn: Any) -> None:
        """Answer calls of ``name`` on this connection with ``fn``."""
        self._own.add(name, fn)

    def match(self, fn: Any) -> Any:
        """The seed's ``match``: ``fn(data)`` answers every request no method takes;
        returning None sends no response (as in the seed)."""
        self._own.match(fn)
        return fn

    async def wait_welcome(self, timeout: float | None = None) -> str:
        """(Client) the client id the server's welcome gave us."""
        return await asyncio.wait_for(asyncio.shield(self._welcomed), timeout)

    async def request(self, data: Any, *, to: str | None = None, timeout: float | None = None) -> Response:
        """The seed's request/response: the other side's match handler answers (or,
        through a relay, the peer whose client id is ``to``). A reply of the seed's
        error shape raises :class:`RemoteError`; so does the relay's report that
        ``to`` is unknown."""
        self._check()
        rid = str(uuid.uuid4())
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._calls[rid] = fut
        msg: dict[str, Any] = {"category": "request", "requestId": rid}
        if self.client_id is not None and self.role == "client":
            msg["from"] = self.client_id  # the seed's responders answer to it
        if to is not None:
            msg["to"] = to
            self._call_targets[rid] = to
        msg["data"] = data
        try:
            await self._send(msg)
            return Response(await asyncio.wait_for(fut, timeout))
        finally:
            self._calls.pop(rid, None)
            self._call_targets.pop(rid, None)

    async def call(self, method: str, *args: Any, to: str | None = None, timeout: float | None = None) -> Any:
        """Call ``method`` (sent as the data ``{"method": name, "params": [...]}``,
        which fastrpc's JSON mode dispatches to its router); its result."""
        return (await self.request({"method": method, "params": list(args)}, to=to, timeout=timeout)).data

    async def notify(self, method: str, *args: Any, to: str | None = None) -> None:
        """A request nobody waits for (the seed's ``send()``): a reply is dropped."""
        await self.send({"method": method, "params": list(args)}, to=to)

    async def send(self, data: Any, *, to: str | None = None) -> None:
        """The seed's ``send(data)``: a request whose reply, if any, is dropped."""
        self._check()
        msg: dict[str, Any] = {"category": "request", "requestId": str(uuid.uuid4())}
        if self.client_id is not None and self.role == "client":
            msg["from"] = self.client_id
        if to is not None:
            msg["to"] = to
        msg["data"] = data
        await self._send(msg)

    async def ping(self, timeout: float | None = None) -> float:
        """The seed's heartbeat: ``{"category": "ping"}``; the round trip in seconds
        once the pong comes back."""
        self._check()
        stamp = int(time.time() * 1000)
        while stamp in self._pings:
            stamp += 1
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pings[stamp] = fut
        start = time.perf_counter()
        try:
            await self._send({"category": "ping", "timestamp": stamp})
            await asyncio.wait_for(fut, timeout)
        finally:
            self._pings.pop(stamp, None)
        return time.perf_counter() - start

    async def send_stream(self, source: AsyncIterable[Any], stream_id: StreamId = None, **_: Any) -> StreamId:
        """Send ``source`` as StreamData messages, then StreamEnd (or StreamError)."""
        self._check()
        sid = stream_id if stream_id is not None else str(uuid.uuid4())
        if sid in self._senders:
            raise ValueError(f"stream {sid!r} is in use")
        task = self._loop.create_task(self._send_loop(sid, source))
        self._senders[sid] = task
        return sid

    async def _send_loop(self, sid: StreamId, source: AsyncIterable[Any]) -> None:
        it = source.__aiter__()
        try:
            try:
                async for item in it:
                    if isinstance(item, (bytes, bytearray, memoryview)):
                        item = bytes(item).decode("latin-1")  # JSON has no bytes
                    await self._send({"type": "StreamData", "streamId": sid, "payload": item})
                await self._send({"type": "StreamEnd", "streamId": sid})
            except asyncio.CancelledError:
                if not self._closed_flag:
                    await asyncio.shield(
                        self._send({"type": "StreamError", "streamId": sid, "error": "Stream aborted"})
                    )
                raise
            except (*TransportClosed, ConnectionClosed):
                pass
            except Exception as exc:
                await self._send({"type": "StreamError", "streamId": sid, "error": f"{type(exc).__name__}: {exc}"})
        except (*TransportClosed, ConnectionClosed):
            pass
        finally:
            self._senders.pop(sid, None)
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    pass

    def receive_stream(self, stream_id: StreamId = None) -> tuple[StreamId, _JsonStream]:
        """``(stream_id, stream)``; with no id a new one is made (tell the sender).
        What arrived before (items, or the end) is kept for it."""
        self._check()
        sid = stream_id if stream_id is not None else str(uuid.uuid4())
        self._closed_ids.pop(sid, None)  # a new stream under an id used before
        stream = self._incoming.get(sid)
        if stream is None:
            stream = self._incoming[sid] = _JsonStream(self, sid)
        return sid, stream

    def abort_stream(self, stream_id: StreamId) -> bool:
        """Stop sending ``stream_id``: the receiver gets StreamError "Stream aborted"."""
        task = self._senders.get(stream_id)
        if task is None:
            return False
        task.cancel()
        return True

    def close_receiving_stream(self, stream_id: StreamId) -> None:
        """Stop reading ``stream_id``: what the sender still sends on it is dropped
        (the seed has no message to tell the sender)."""
        stream = self._incoming.pop(stream_id, None)
        if stream is not None:
            if not stream.done:
                self._remember_closed(stream_id)
            stream.done = True
            stream._drop()
            stream._wake()

    def _remember_closed(self, sid: StreamId) -> None:
        closed = self._closed_ids
        closed[sid] = None
        while len(closed) > self.max_streams:
            del closed[next(iter(closed))]

    def _forget_stream(self, stream: _JsonStream) -> None:
        """The reader saw the end of ``stream``: it no longer counts as held."""
        if self._incoming.get(stream.stream_id) is stream:
            del self._incoming[stream.stream_id]

    async def wait_closed(self) -> None:
        """Until the connection is closed and cleaned up."""
        await asyncio.shield(self._closed)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (the close handshake), then clean up."""
        await self._ws.close(code, reason)
        await self.wait_closed()

    def abort(self) -> None:
        """Drop the connection at once (no close handshake)."""
        self._ws.abort()

    def _check(self) -> None:
        if self._closed_flag:
            raise ConnectionClosed()

    # ------------------------------------------------------------ receiving

    async def greet(self) -> None:
        """(Server) send the welcome, once, before anything else."""
        if not self._greeted:
            self._greeted = True
            await self._ws.send(welcome_message(self.client_id or ""))

    def start(self, first: str | bytes | None = None) -> asyncio.Task[None]:
        """Serve the connection in a task (``first``: a message already read)."""
        self._runner = self._loop.create_task(self.run(first))
        return self._runner

    async def run(self, first: str | bytes | None = None) -> None:
        """Serve the connection until it closes (``first``: a message already read);
        the server and :func:`fastrpc.jsonclient.open_json` run it in a task."""
        token = _current_peer.set(self)  # type: ignore[arg-type]
        try:
            await self.greet()
            if first is None or await self._handle(first):
                async for msg in self._ws.messages():
                    if not await self._handle(msg):
                        break
        except TransportClosed:
            pass
        finally:
            _current_peer.reset(token)
            await self._teardown()

    async def _handle(self, msg: str | bytes) -> bool:
        """Process one message; False once the connection is being closed."""
        start = time.perf_counter()
        large = len(msg) > _LARGE
        try:
            data = self._admit(msg)
            if large:
                await asyncio.sleep(0)  # the checks and the decoding: one turn each
            target = self._receive(data)
            if target is not None:
                await self._relay_to(target, msg)
        except _Violation as v:
            await self._abort(v.code, v.reason)
            return False
        except (*TransportClosed, ConnectionClosed):
            raise
        except Exception as exc:  # a bug here must end this connection, not hide as a normal close
            logger.exception("JSON-mode message handling failed")
            await self._abort(INTERNAL, f"internal error: {type(exc).__name__}")
            return False
        if large:
            # Before the next message, wait as long as this one took: a client sending
            # more than the server can decode gets at most half of the event loop.
            await asyncio.sleep(min(time.perf_counter() - start, 0.1))
        return True

    async def _relay_to(self, target: JsonPeer, msg: str | bytes) -> None:
        """Forward ``msg`` verbatim to ``target``, waiting (up to relay_timeout) for
        its socket to drain: the sender is held back by the slowest of its targets."""
        text = msg if isinstance(msg, str) else msg.decode("utf-8", "replace")
        try:
            await asyncio.wait_for(target._ws.send(text), self.relay_timeout)
        except asyncio.TimeoutError:
            task = self._loop.create_task(
                target._abort(POLICY, f"relayed messages not read within relay_timeout ({self.relay_timeout} s)")
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except (*TransportClosed, ConnectionClosed):
            pass  # the target went away meanwhile: as if it had never been there

    async def _abort(self, code: int, reason: str) -> None:
        """Close with ``code``. What the peer still sends is read and dropped meanwhile:
        websockets stops reading once unread messages pile up, and the peer's close
        frame would then not be seen before websockets' close timeout."""
        drain = self._loop.create_task(self._ws.discard())
        try:
            await asyncio.wait_for(self._ws.close(code, reason[:120]), 2.0)
        except Exception:
            self._ws.abort()  # no close handshake: drop the connection
        finally:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)

    def _admit(self, msg: str | bytes) -> bytes:
        """The message as UTF-8 bytes, once its size and nesting are within limits."""
        if len(msg) > self.max_item_size:  # characters of a str: a first, cheap test
            raise _Violation(TOO_BIG, f"message of {len(msg)} bytes exceeds max_item_size ({self.max_item_size})")
        data = msg.encode() if isinstance(msg, str) else bytes(msg)
        if len(data) > self.max_item_size:
            raise _Violation(TOO_BIG, f"message of {len(data)} bytes exceeds max_item_size ({self.max_item_size})")
        if nesting_exceeds(data, self.max_depth):
            raise _Violation(INVALID, f"JSON nested deeper than {self.max_depth}")
        return data

    def _receive(self, data: bytes) -> JsonPeer | None:
        """Act on one message; the peer to relay it to, if it is for another."""
        try:
            env = _decode_envelope(data)
        except msgspec.ValidationError as exc:
            # Not an object; or a field of the envelope holds a number beyond a double.
            why = "expected a JSON object" if str(exc).startswith("Expected") else f"invalid message: {exc}"
            raise _Violation(INVALID, why) from None
        except (msgspec.DecodeError, RecursionError, UnicodeError):
            raise _Violation(INVALID, "invalid JSON") from None
        kind = env.type
        if kind in ("StreamData", "StreamEnd", "StreamError"):
            self._on_stream(kind, env, len(data))
            return None
        category = env.category
        if category == "request":
            rid = self._id(env.requestId, "requestId")
            if env.to is not None and (target := self._target(env, rid)) is not self:
                return target  # relayed; None: "Target peer not found" was reported
            if len(self._tasks) >= self.max_pending_calls:
                raise _Violation(POLICY, f"more than {self.max_pending_calls} pending requests")
            weight = len(data) + _PER_CONTAINER * (data.count(b"[") + data.count(b"{"))
            if self._pending_bytes + weight > self.max_pending_bytes:
                raise _Violation(POLICY, f"pending requests hold more than {self.max_pending_bytes} bytes")
            # Decoded here, not in the task: the next message is read only once this
            # one is decoded, so a client sending more than the server can decode is
            # held back by its own connection (and others get their turn in between).
            try:
                value = _decode(env.data)
            except (msgspec.DecodeError, RecursionError):
                raise _Violation(INVALID, "invalid JSON") from None
            self._pending_bytes += weight
            sender = env.sender if isinstance(env.sender, str) else None
            task = self._loop.create_task(self._answer(rid, value, weight, sender))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif category == "response":
            rid = self._id(env.requestId, "requestId")
            if env.to is not None and (target := self._target(env, rid)) is not self:
                return target  # relayed; None: "Target peer not found" was reported
            fut = self._calls.get(rid)
            if fut is not None and not fut.done():
                try:
                    value = _decode(env.data)
                except (msgspec.DecodeError, RecursionError) as exc:
                    bad = payload_error(f"the answer to request {rid!r}", "json", exc)
                    bad.__cause__ = exc
                    fut.set_exception(bad)
                except Exception as exc:
                    fut.set_exception(exc)
                else:
                    err = response_error(value, None if env.error is msgspec.UNSET else env.error)
                    if err is not None:
                        fut.set_exception(err)
                    else:
                        fut.set_result(value)
        elif category == "ping":
            # The seed's heartbeat: answered with its timestamp.
            limit = self._ping_limit
            if limit is not None and not limit.take():
                raise _Violation(POLICY, limit.describe("max_ping_rate"))
            stamp = env.timestamp if env.timestamp is not None else int(time.time() * 1000)
            due = self._pongs_due
            if self._pong_stalled and due:
                due[-1] = stamp  # the peer does not read: only the latest is answered after it
            else:
                due.append(stamp)
            if not self._ponging:
                self._ponging = True
                self._spawn(self._pong())
        elif category == "pong":
            fut = self._pings.get(env.timestamp) if isinstance(env.timestamp, (int, float)) else None
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif category == "welcome":
            if self.role == "client" and isinstance(env.clientId, str):
                if self.client_id is None:
                    self.client_id = env.clientId
                if not self._welcomed.done():
                    self._welcomed.set_result(env.clientId)
            # A server ignores it (the seed's clients never send one).
        elif category == "error":
            self._on_error_message(data, env)
        else:
            raise _Violation(INVALID, "unknown message shape")
        return None

    def _target(self, env: _Envelope, rid: Any) -> JsonPeer | None:
        """Where a message with a ``to`` goes: ``self`` (it is for us), another
        connection (relayed to it), or None: ``to`` names no connection, answered as the
        seed's relay answers it (and nothing more: the message is not for us either)."""
        to = env.to
        if not isinstance(to, str) or len(to) > self.max_id_length:
            raise _Violation(INVALID, f"invalid to: a string of at most {self.max_id_length} characters")
        if self._relay is None or to == self.client_id:
            return self
        target = self._relay.get(to)
        if target is None or target.closed:
            self._not_found(to, rid)
            return None
        return target

    def _not_found(self, to: str, rid: Any) -> None:
        """Report "Target peer not found" for a message to ``to``: one task sends the
        reports in turn, and at most ``max_pending_calls`` of them wait while the
        peer does not read what is sent to it (past that: 1008)."""
        due = self._unrouted
        if len(due) >= self.max_pending_calls and self._ws.buffered() > 0:
            raise _Violation(
                POLICY, f"more than {self.max_pending_calls} 'Target peer not found' errors wait for the peer to read"
            )
        due.append((to, rid))
        if not self._reporting:
            self._reporting = True
            self._spawn(self._report_not_found())

    async def _report_not_found(self) -> None:
        due = self._unrouted
        try:
            while due:
                to, rid = due.popleft()
                await self._send(
                    {"category": "error", "error": "Target peer not found", "targetId": to, "requestId": rid}
                )
        finally:
            self._reporting = False

    def _on_error_message(self, data: bytes, env: _Envelope) -> None:
        """``{"category": "error"}``: fails the call it names (its requestId, or the
        ``to`` it was sent to), else goes to ``on_error`` (or the log)."""
        text = env.error if isinstance(env.error, str) else "error"
        rid = env.requestId if env.requestId is None else self._id(env.requestId, "requestId")
        futs = []
        if rid in self._calls:
            futs.append(self._calls[rid])
        elif isinstance(env.targetId, str):
            futs = [self._calls[r] for r, t in self._call_targets.items() if t == env.targetId and r in self._calls]
        if futs:
            for fut in futs:
                if not fut.done():
                    fut.set_exception(RemoteError("RelayError", f"{text} ({env.targetId})" if env.targetId else text))
            return
        if self.on_error is not None:
            try:
                self.on_error(_decode(data))
            except Exception:
                logger.exception("on_error hook failed")
        else:
            # A peer may send these as fast as it likes, each up to max_item_size:
            # rate-limited and cut, they cannot flood the log.
            warn_limited(logger, "error message from the other side: %s", _cut(text, _LOGGED_TEXT))

    async def _pong(self) -> None:
        """Answer the pings in turn. A ping that comes while a pong waits for the
        socket to drain (the peer does not read) replaces the one waiting after it."""
        due = self._pongs_due
        try:
            while due:
                stamp = due.popleft()
                self._pong_stalled = True  # seen by _receive only if the send waits
                try:
                    await self._send({"category": "pong", "timestamp": stamp})
                finally:
                    self._pong_stalled = False
        finally:
            self._ponging = False

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(self._quietly(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(coro: Any) -> None:
        try:
            await coro
        except (*TransportClosed, ConnectionClosed):
            pass

    def _id(self, value: Any, name: str) -> Any:
        """A valid ``requestId``/``streamId``: a string of at most max_id_length
        characters, or an integer."""
        if isinstance(value, str):
            if len(value) <= self.max_id_length:
                return value
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Violation(INVALID, f"invalid {name}: a string of at most {self.max_id_length} characters or an integer")

    def _on_stream(self, kind: str, env: _Envelope, size: int) -> None:
        sid = self._id(env.streamId, "streamId")
        stream = self._incoming.get(sid)
        if stream is None:
            if sid in self._closed_ids:
                if kind != "StreamData":
                    del self._closed_ids[sid]  # its end: nothing more comes
                return  # the reader closed it: dropped
            # Not claimed yet: held for receive_stream (its end too, so that an empty
            # stream, or one failing before its first item, still ends for its reader).
            if len(self._incoming) >= self.max_streams:
                raise _Violation(POLICY, f"more than {self.max_streams} incoming streams held")
            stream = self._incoming[sid] = _JsonStream(self, sid)
        if stream.done:
            return  # after its end, or after it failed: dropped
        if kind == "StreamData":
            if len(stream.items) >= self.max_held_items:
                stream.error = StreamAborted("receiver buffer full (the seed protocol has no flow control)")
                stream.done = True
            else:
                if self._held_bytes + size > self.max_held_bytes:
                    raise _Violation(POLICY, f"unread stream items exceed {self.max_held_bytes} bytes")
                stream.items.append((env.payload, size))
                self._held_bytes += size
        elif kind == "StreamEnd":
            stream.done = True
        else:
            error = env.error
            text = "" if error is msgspec.UNSET else error if isinstance(error, str) else str(error)
            if len(text) > _MAX_ERROR_TEXT:
                text = text[: _MAX_ERROR_TEXT - 1] + "\u2026"
            # Held until read, like an item: it counts in max_held_bytes.
            cost = len(text.encode("utf-8", "replace"))
            if self._held_bytes + cost > self.max_held_bytes:
                raise _Violation(POLICY, f"unread stream items exceed {self.max_held_bytes} bytes")
            stream.error = RemoteStreamError("Error", text)
            stream.error_cost = cost
            self._held_bytes += cost
            stream.done = True
        stream._wake()

    async def _answer(self, rid: Any, data: Any, weight: int, sender: str | None) -> None:
        reply: dict[str, Any] | None
        try:
            reply = {"category": "response", "requestId": rid, "data": await self._dispatch(data)}
        except asyncio.CancelledError:
            raise
        except _NoReply:
            reply = None
        except Exception as exc:
            reply = {"category": "response", "requestId": rid, **error_reply(exc)}
        finally:
            del data  # the handler is done with it
            self._pending_bytes -= weight
        if reply is None:
            return
        if sender is not None:
            reply["to"] = sender  # through a relay, the answer finds its way back
        try:
            await self._send(reply)
        except (*TransportClosed, ConnectionClosed):
            pass
        except (TypeError, ValueError) as exc:  # result not JSON-serialisable
            try:
                await self._send({"category": "response", "requestId": rid, **error_reply(exc)})
            except (*TransportClosed, ConnectionClosed):
                pass

    async def _dispatch(self, data: Any) -> Any:
        method = data.get("method") if isinstance(data, dict) else None
        found = (self._own.lookup(method) or self._router.lookup(method)) if isinstance(method, str) else None
        if found is None:
            fallback = self._own.fallback or self._router.fallback
            if fallback is None:
                raise LookupError(f"no method {method!r}")
            result = fallback(data)
            if inspect.isawaitable(result):
                result = await result
            if result is None:
                raise _NoReply  # the seed's match: undefined sends no response
            return result
        # The method's authorize hook holds in this mode too, checked as in binary mode
        # (peer.identity is set by the server's authenticate hook).
        name = str(method)
        spec = (self._own if self._own.lookup(name) else self._router).spec(name)
        if spec is not None and spec.authorize is not None:
            authorize(spec.authorize, self, name, side_logger(self.role == "server"), self._address)
        # params: the positional arguments (an array) or the keyword ones (an object),
        # bound and converted to the handler's annotations as a binary call's are.
        params = data.get("params", [])
        payload: Any  # what ArgumentSpec.decode takes for a payload (see _Params)
        if isinstance(params, list):
            payload, keywords = params, 0
        elif isinstance(params, dict):
            payload, keywords = [params], 1  # a keyword call's arguments: [..., {name: value}]
        else:
            raise InvalidArguments(
                "InvalidArguments", f"{name}(): params must be an array or an object, not {_json_type(params)}"
            )
        fn = found[0]
        args_spec = spec.args if spec is not None else None
        args: tuple[Any, ...]
        kwargs: dict[str, Any] | None
        if args_spec is not None:
            args, kwargs = args_spec.decode(name, self._params, payload, keywords)
        elif keywords:
            args, kwargs = split_kwargs(payload)
        else:
            args, kwargs = tuple(params), None
        try:
            result = fn(*args, **kwargs) if kwargs else fn(*args)
        except TypeError as exc:
            # Arguments that do not bind to the signature are the caller's fault.
            why = bad_arguments(fn, args, kwargs)
            if why is None:
                raise
            raise InvalidArguments("InvalidArguments", f"{name}(): {why}") from exc
        if inspect.isawaitable(result):
            result = await result
        return result

    def _address(self) -> Any:
        """The other side's address, for log lines."""
        return getattr(self._ws, "remote_address", None)

    async def _teardown(self) -> None:
        if self._closed_flag:
            return
        self._closed_flag = True
        if self._relay is not None and self.client_id is not None and self._relay.get(self.client_id) is self:
            del self._relay[self.client_id]
        exc = ConnectionClosed()
        for fut in [*self._calls.values(), *self._pings.values()]:
            if not fut.done():
                fut.set_exception(exc)
        if not self._welcomed.done():
            self._welcomed.set_exception(exc)
            self._welcomed.exception()  # retrieved: nobody may be waiting
        for stream in self._incoming.values():
            stream._drop()
            if not stream.done:
                stream.error = exc
                stream.done = True
                stream._wake()
        # Stop the request handlers (and our own tasks: pongs, relay reports) and the
        # stream senders, waiting for them at most as the binary protocol does (its
        # constants, read now: tests change them): one whose code swallows its
        # CancelledError would otherwise hold the close forever. (Not the task running
        # this, should it be one of them.)
        current = asyncio.current_task()
        senders = {t: sid for sid, t in self._senders.items() if t is not current}
        others = [t for t in self._tasks if t is not current]
        for t in (*senders, *others):
            t.cancel()
        handlers_left, senders_left = await asyncio.gather(
            _stopped(others, _handlers.HANDLER_STOP_TIMEOUT), _stopped(list(senders), _streams.SENDER_STOP_TIMEOUT)
        )
        if handlers_left or senders_left:
            self._give_up(handlers_left, {t: senders[t] for t in senders_left})
        if not self._closed.done():
            self._closed.set_result(None)

    def _give_up(self, tasks: set[asyncio.Task[Any]], senders: dict[asyncio.Task[Any], StreamId]) -> None:
        """``tasks`` (handlers ...) and ``senders`` (task -> stream id) did not stop
        within HANDLER_STOP_TIMEOUT / SENDER_STOP_TIMEOUT of their cancellation: log
        them and forget them. They run on, detached: _send refuses what they send
        (the connection is closed), and their outcome is retrieved when they end."""
        log = side_logger(self.role == "server")
        address = self._address()
        for task in tasks:
            self._tasks.discard(task)
            task.add_done_callback(_retrieve)
            log.warning(
                "%s from %s did not stop within %s s of its cancellation (does it catch CancelledError?): "
                "given up on, it runs on detached from the connection (the wait is "
                "fastrpc.handlers.HANDLER_STOP_TIMEOUT)",
                _task_of(task),
                address,
                _handlers.HANDLER_STOP_TIMEOUT,
            )
        for task, sid in senders.items():
            if self._senders.get(sid) is task:
                del self._senders[sid]
            task.add_done_callback(_retrieve)
            _streams.warn_given_up(log, task, sid, address)


async def _stopped(tasks: list[asyncio.Task[Any]], timeout: float) -> set[asyncio.Task[Any]]:
    """Wait for the cancelled ``tasks`` at most ``timeout`` seconds; those still
    running. The outcome of those that ended is retrieved (as gather's would be)."""
    if not tasks:
        return set()
    done, running = await asyncio.wait(tasks, timeout=timeout)
    for task in done:
        _retrieve(task)
    return running


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _task_of(task: asyncio.Task[Any]) -> str:
    """What one of JsonPeer._tasks runs, for a log line: a request's handler (its
    method, cut, and requestId), else the coroutine's name."""
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    name = str(getattr(coro, "__qualname__", "?"))
    if frame is None:
        return f"task {name}"
    local = frame.f_locals
    if name == "JsonPeer._answer":
        data = local.get("data")
        method = data.get("method") if isinstance(data, dict) else None
        who = f"handler for {_cut(method, 100)!r}" if isinstance(method, str) else "match handler"
        return f"{who} (requestId {local.get('rid')!r})"
    inner = local.get("coro") if name == "JsonPeer._quietly" else None  # _spawn's
    return f"task {getattr(inner, '__qualname__', name)}"


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else type(value).__name__


class _Params(PayloadCodec):
    """The codec :meth:`ArgumentSpec.decode` converts a JSON request's ``params``
    with (the binary path's machinery): its "payload" is the params already decoded,
    converted as the JSON codec's typed decoder decodes a binary call's arguments
    (strictly, keyword arguments too: ``convert``), custom types by ``dec_hook``."""

    __slots__ = ()

    def __init__(self, dec_hook: DecHook | None = None) -> None:
        super().__init__("json", CODEC_JSON, msgspec.json.encode, _same, dec_hook=dec_hook)

    def typed_decoder(self, type_: Any) -> Callable[[Any], Any]:
        fn = self._typed.get(type_)
        if fn is None:
            fn = self._typed[type_] = functools.partial(msgspec.convert, type=type_, dec_hook=self.dec_hook)
        return fn


def _same(value: Any) -> Any:
    return value


_PARAMS = _Params()


class _NoReply(Exception):
    """The match handler returned None: no response (the seed's ``undefined``)."""
