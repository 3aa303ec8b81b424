"""Compatibility with the seed library's JSON protocol (ts-signal-rpc).

A connection whose first message is text speaks the seed's shapes, one JSON object
per text message:

* RPC: ``{"category": "request", "requestId": id, "data": ...}`` answered by
  ``{"category": "response", "requestId": id, "data": result}`` (or ``"error": text``);
* streams: ``{"type": "StreamData" | "StreamEnd" | "StreamError", "streamId": id,
  "payload"?: ..., "error"?: text}``.

:class:`JsonPeer` gives handlers the same surface as :class:`RpcPeer` for what the seed
can express (request, send_stream, receive_stream, abort/close), so one server serves
JavaScript clients written to the seed and fastrpc clients alike. The seed protocol has
no flow control; sends still wait on the transport's write buffer.

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
``max_pending_calls``  1024        more requests than this whose handlers run: 1008
``max_pending_bytes``  16 MiB      the data of the requests whose handlers run, as
                                   decoded objects (estimated: the JSON size plus 96
                                   bytes per array or object), more than this: 1008
``max_streams``        1024        a new incoming stream while this many are held: 1008
``max_held_items``     10,000      unread items of one stream: that stream fails with
                                   :class:`StreamAborted` (later items are dropped)
``max_held_bytes``     16 MiB      unread stream items of all streams together (their
                                   JSON size): 1008
``max_id_length``      256         a ``requestId`` or ``streamId`` that is not a
                                   string of at most this many characters or an
                                   integer: 1007
=====================  ==========  =====================================================

A message that is not JSON, not an object, or of no known shape closes with 1007.
A request's data is decoded as the message is read (so a client that sends more than
the server decodes is held back by its own connection), and after a large message
(over 64 KiB) the next one is read only after as long again as it took: other
connections get their turn.
Held stream items are kept as their JSON text and decoded when read, so what they
cost is what they weigh on the wire. ``max_message_size`` is the WebSocket limit (the
server passes its own; websockets enforces it with 1009).
"""

from __future__ import annotations

import array
import asyncio
import inspect
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import msgspec

from .exceptions import ConnectionClosed, RemoteError, RemoteStreamError, StreamAborted
from .peer import Response, _current_peer
from .router import Router
from .transport import Transport, TransportClosed

__all__ = ["JsonPeer"]

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


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode = msgspec.json.decode

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
                return _decode(raw)
            if self.done:
                self._peer._forget_stream(self)
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

    async def aclose(self) -> None:
        self._peer.close_receiving_stream(self.stream_id)


class JsonPeer:
    """A connection speaking the seed's JSON protocol (see the module docstring for
    what it speaks and the limits it holds the other side to)."""

    def __init__(
        self,
        ws: Transport,
        router: Router | None,
        *,
        max_message_size: int = 4 << 20,
        max_item_size: int = 1 << 20,
        max_depth: int = 64,
        max_pending_calls: int = 1024,
        max_pending_bytes: int = 16 << 20,
        max_streams: int = 1024,
        max_held_items: int = 10_000,
        max_held_bytes: int = 16 << 20,
        max_id_length: int = 256,
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
        self._ws = ws
        self._router = router or Router()
        self._own = Router()
        self.identity: Any = None  # what the server's authenticate hook returned
        self._loop = asyncio.get_running_loop()
        self._calls: dict[Any, asyncio.Future[Any]] = {}
        self._incoming: dict[StreamId, _JsonStream] = {}
        self._senders: dict[StreamId, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._closed_flag = False
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

    @property
    def closed(self) -> bool:
        return self._closed_flag

    async def _send(self, obj: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(obj, separators=(",", ":")))

    # ----------------------------------------------------------------- API

    def register(self, name: str, fn: Any) -> None:
        self._own.add(name, fn)

    def match(self, fn: Any) -> Any:
        self._own.match(fn)
        return fn

    async def request(self, data: Any, *, timeout: float | None = None) -> Response:
        """The seed's request/response: the other side's match handler answers."""
        self._check()
        rid = str(uuid.uuid4())
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._calls[rid] = fut
        try:
            await self._send({"category": "request", "requestId": rid, "data": data})
            return Response(await asyncio.wait_for(fut, timeout))
        finally:
            self._calls.pop(rid, None)

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
        """``(stream_id, stream)``; with no id a new one is made (tell the sender)."""
        self._check()
        sid = stream_id if stream_id is not None else str(uuid.uuid4())
        stream = self._incoming.get(sid)
        if stream is None:
            stream = self._incoming[sid] = _JsonStream(self, sid)
        return sid, stream

    def abort_stream(self, stream_id: StreamId) -> bool:
        task = self._senders.get(stream_id)
        if task is None:
            return False
        task.cancel()
        return True

    def close_receiving_stream(self, stream_id: StreamId) -> None:
        stream = self._incoming.pop(stream_id, None)
        if stream is not None:
            stream.done = True
            stream._drop()
            stream._wake()

    def _forget_stream(self, stream: _JsonStream) -> None:
        """The reader saw the end of ``stream``: it no longer counts as held."""
        if self._incoming.get(stream.stream_id) is stream:
            del self._incoming[stream.stream_id]

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)
        await self.wait_closed()

    def _check(self) -> None:
        if self._closed_flag:
            raise ConnectionClosed()

    # ------------------------------------------------------------ receiving

    async def _run(self, first: str | bytes) -> None:
        token = _current_peer.set(self)  # type: ignore[arg-type]
        try:
            if await self._handle(first):
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
            self._receive(data)
        except _Violation as v:
            await self._abort(v.code, v.reason)
            return False
        except Exception as exc:  # a bug here must end this connection, not hide as a normal close
            await self._abort(INTERNAL, f"internal error: {type(exc).__name__}")
            return False
        if large:
            # Before the next message, wait as long as this one took: a client sending
            # more than the server can decode gets at most half of the event loop.
            await asyncio.sleep(min(time.perf_counter() - start, 0.1))
        return True

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

    def _receive(self, data: bytes) -> None:
        try:
            env = _decode_envelope(data)
        except msgspec.ValidationError:
            raise _Violation(INVALID, "expected a JSON object") from None
        except (msgspec.DecodeError, RecursionError, UnicodeError):
            raise _Violation(INVALID, "invalid JSON") from None
        kind = env.type
        if kind in ("StreamData", "StreamEnd", "StreamError"):
            self._on_stream(kind, env, len(data))
            return
        category = env.category
        if category == "request":
            rid = self._id(env.requestId, "requestId")
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
            task = self._loop.create_task(self._answer(rid, value, weight))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif category == "response":
            rid = self._id(env.requestId, "requestId")
            fut = self._calls.get(rid)
            if fut is not None and not fut.done():
                if env.error is not msgspec.UNSET:
                    fut.set_exception(RemoteError("Error", str(env.error)))
                else:
                    try:
                        fut.set_result(_decode(env.data))
                    except Exception as exc:
                        fut.set_exception(exc)
        else:
            raise _Violation(INVALID, "unknown message shape")

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
            if kind != "StreamData":
                return  # the end of a stream we no longer hold
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
            error = "" if env.error is msgspec.UNSET else env.error
            stream.error = RemoteStreamError("Error", str(error))
            stream.done = True
        stream._wake()

    async def _answer(self, rid: Any, data: Any, weight: int) -> None:
        try:
            result = await self._dispatch(data)
            reply: dict[str, Any] = {"category": "response", "requestId": rid, "data": result}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reply = {"category": "response", "requestId": rid, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            del data  # the handler is done with it
            self._pending_bytes -= weight
        try:
            await self._send(reply)
        except (*TransportClosed, ConnectionClosed):
            pass
        except (TypeError, ValueError) as exc:  # result not JSON-serialisable
            try:
                await self._send({"category": "response", "requestId": rid, "error": f"{type(exc).__name__}: {exc}"})
            except (*TransportClosed, ConnectionClosed):
                pass

    async def _dispatch(self, data: Any) -> Any:
        fallback = self._own.fallback or self._router.fallback
        if fallback is not None:
            result = fallback(data)
        else:
            method = data.get("method") if isinstance(data, dict) else None
            found = self._own.lookup(method) or self._router.lookup(method) if isinstance(method, str) else None
            if found is None:
                raise LookupError(f"no method {method!r}")
            # The method's authorize hook holds in this mode too (peer.identity is set
            # by the server's authenticate hook).
            name = str(method)
            spec = (self._own if self._own.lookup(name) else self._router).spec(name)
            if spec is not None and spec.authorize is not None and not spec.authorize(self, name):
                raise PermissionError(f"not allowed to call {method!r}")
            params = data.get("params", [])
            fn = found[0]
            result = fn(**params) if isinstance(params, dict) else fn(*params)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _teardown(self) -> None:
        if self._closed_flag:
            return
        self._closed_flag = True
        exc = ConnectionClosed()
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(exc)
        for stream in self._incoming.values():
            stream._drop()
            if not stream.done:
                stream.error = exc
                stream.done = True
                stream._wake()
        tasks = [*self._senders.values(), *self._tasks]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if not self._closed.done():
            self._closed.set_result(None)
