"""Streams over one connection: sending loops, receiving iterators, backpressure.

:class:`StreamManager` is the seed's StreamManager: it multiplexes every stream of one
connection, applies backpressure (``max_buffered_amount`` / ``backpressure_delay``),
keeps per-stream accounting and cleans everything up when the connection closes:
closing it (or resetting a client's session) cancels the senders and waits for them
at most :data:`SENDER_STOP_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, Union

from . import options as O
from .codec import UNDECODABLE, PayloadCodec, payload_error
from .exceptions import ConnectionClosed, PayloadError, PayloadTooLarge, ProtocolError, StreamClosed
from .log import side_logger
from .names import named_stream_id
from .protocol import DEFAULT_URGENCY, FRAME_CHARGE, Connection, Role

T = TypeVar("T")
# A frame header's largest size (type, flags, two 8-byte varints): what an item adds to
# the buffered amount besides its payload, counted high.
_ITEM_HEAD = 18
# A stream id as the application gives it: the wire's integer, or a name (a string,
# the seed's crypto.randomUUID() pattern) mapped to a wire id (wire.named_stream_id).
StreamId = Union[int, str]
__all__ = [
    "SENDER_STOP_TIMEOUT",
    "RateLimit",
    "ReceiveStream",
    "StreamId",
    "StreamLink",
    "StreamManager",
    "StreamStats",
]

# How long closing a connection (or resetting a client's session) waits, in seconds,
# for the senders of its outgoing streams it cancelled (the tasks that pull a stream's
# items from its source: peer.send_stream's, a channel's input). A source that
# swallows its CancelledError and runs on (or whose cleanup never ends) would
# otherwise hold the close (and the session reset) forever: its sender is given up on
# then, with a WARNING naming its stream and its source; it runs on, detached (nothing
# its source gives is sent, and it touches nothing of the connection any more).
# (A streaming handler's items are sent from the handler's own task: the handlers'
# bound, handlers.HANDLER_STOP_TIMEOUT, is its.)
SENDER_STOP_TIMEOUT = 5.0


class StreamHost(Protocol):
    """The connection a :class:`StreamManager` serves (an :class:`fastrpc.RpcPeer`)."""

    def flush(self) -> None:
        """Send what the core queued (coalesced with the rest of this loop pass)."""

    def flush_now(self) -> None:
        """Send what the core queued now, without waiting for the end of the loop pass."""

    def transport_buffered(self) -> int:
        """Bytes written and not yet taken by the socket."""


class StreamLink:
    """What a :class:`StreamManager` needs of its connection, made by the peer that
    owns it: the event loop, the sans-I/O core, the payload codecs, and the ``host``
    that sends what the core queued and knows the socket's buffer."""

    __slots__ = ("closed", "codec", "core", "decoder", "flush_pending", "host", "loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, core: Connection, host: StreamHost, codec: PayloadCodec
    ) -> None:
        self.loop = loop
        self.core = core  # replaced when a client starts a new session
        self.host = host
        self.codec = codec  # encodes what we send
        self.decoder = codec  # decodes what we receive: the peer's codec, once its HELLO came
        self.closed = False  # the connection is torn down
        # Set by the host while it has a flush scheduled for the end of this loop pass:
        # what the core queues meanwhile leaves with it, and host.flush() would do
        # nothing (a sender of many items reads this instead of calling it per item).
        self.flush_pending = False


class _WeakValues:
    """The part of ``weakref.WeakValueDictionary`` the manager uses (id -> stream),
    in a few hundred bytes less: every connection has two of these."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: dict[int, weakref.KeyedRef[int, Any]] = {}

    def _remove(self, wr: weakref.KeyedRef[int, Any]) -> None:
        if self.data.get(wr.key) is wr:
            del self.data[wr.key]

    def __setitem__(self, key: int, value: Any) -> None:
        self.data[key] = weakref.KeyedRef(value, self._remove, key)

    def get(self, key: int, default: Any = None) -> Any:
        wr = self.data.get(key)
        if wr is None:
            return default
        o = wr()
        return default if o is None else o

    def __getitem__(self, key: int) -> Any:
        o = self.data[key]()
        if o is None:
            raise KeyError(key)
        return o

    def __delitem__(self, key: int) -> None:
        del self.data[key]

    def __contains__(self, key: object) -> bool:
        wr = self.data.get(key)  # type: ignore[call-overload]
        return wr is not None and wr() is not None

    def pop(self, key: int, default: Any = None) -> Any:
        wr = self.data.pop(key, None)
        o = wr() if wr is not None else None
        return default if o is None else o

    def keys(self) -> list[int]:
        return [k for k, wr in list(self.data.items()) if wr() is not None]

    def values(self) -> list[Any]:
        return [o for o in (wr() for wr in list(self.data.values())) if o is not None]

    def clear(self) -> None:
        self.data.clear()

    def __len__(self) -> int:
        return len(self.data)


class RateLimit:
    """A token bucket: ``rate`` items per second, or bytes per second with
    ``per="bytes"``; ``burst`` is how much may go at once (default: 1/10 s worth)."""

    __slots__ = ("_stamp", "_tokens", "burst", "per_bytes", "rate")

    def __init__(self, rate: float, *, per: str = "items", burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if per not in ("items", "bytes"):
            raise ValueError("per must be 'items' or 'bytes'")
        self.rate = float(rate)
        self.per_bytes = per == "bytes"
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 10)
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def delay(self, cost: float) -> float:
        """Take ``cost`` tokens; return how long to sleep before sending (0: now)."""
        now = time.monotonic()
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        tokens -= cost
        self._tokens = tokens
        return -tokens / self.rate if tokens < 0 else 0.0


class StreamStats:
    """Accounting of one open stream: bytes and items so far, credit, buffered bytes."""

    __slots__ = ("buffered", "bytes", "items", "outgoing", "stream_id", "window")

    def __init__(self, stream_id: int, outgoing: bool, values: tuple[int, int, int, int]) -> None:
        self.stream_id = stream_id
        self.outgoing = outgoing
        self.bytes, self.items, self.window, self.buffered = values

    def __repr__(self) -> str:
        d = "out" if self.outgoing else "in"
        return (
            f"StreamStats({self.stream_id} {d}: bytes={self.bytes} items={self.items} "
            f"window={self.window} buffered={self.buffered})"
        )


_SEND_RUN_ITEM, _SEND_RUN_BYTES = O.SEND_RUN_ITEM, O.SEND_RUN_BYTES
_RAISE: Any = object()  # get_nowait() without a default
_NOTHING: Any = object()  # get_many_nowait(): get_nowait() found none
_READ_RUN_ITEMS, _READ_RUN_BYTES = O.READ_RUN_ITEMS, O.READ_RUN_BYTES


class _SendRun:
    """Small bytes items a sender loop gathered from its source, queued in one step
    (``Connection.send_items``) once ``left`` (the room taken when it started, in
    charges) is used up, or the source yields something else, or ends, or fails; and
    in any case before the connection builds its next message
    (:meth:`StreamManager.flush_runs`), so that they leave when they would have one by
    one."""

    __slots__ = ("item_max", "items", "left", "ok", "open", "sid")

    def __init__(self, sid: int, room: int, item_max: int) -> None:
        self.sid = sid
        self.items: list[bytes] = []
        self.left = room
        self.item_max = item_max
        self.open = True  # not queued yet
        self.ok = True  # queued whole, and the stream took more (send_items)


class _Outlet:
    """:meth:`StreamManager.send_now` on outgoing stream ``sid``, as
    :meth:`StreamManager.run_sender` hands it to a source bound to its stream
    (``bind_stream``). It takes nothing (0) once that sender left (``live`` false: a
    later stream may have the id, a named stream sent again) or was given up on
    (:meth:`StreamManager._gave_up_on` ``sender``: after a session reset the id is the
    new session's), whatever task calls it: a topic's fan-out calls it from the
    publisher's, a source that swallowed its cancellation from its given-up sender's."""

    __slots__ = ("live", "manager", "sender", "sid")

    def __init__(self, manager: StreamManager, sid: int, sender: asyncio.Task[Any] | None) -> None:
        self.manager = manager
        self.sid = sid
        self.sender = sender  # the task running the sender loop (run_sender)
        self.live = True

    def __call__(self, items: Sequence[Any]) -> int:
        m = self.manager
        if not self.live or (m._abandoned and m._gave_up_on(self.sender)):
            return 0
        return m.send_now(self.sid, items)


class _PlainRun(list):  # type: ignore[type-arg]
    """A run of encoded (not raw) items taken from the core, decoded as each is read
    (a list is a run of raw ones): a bad item fails its own read, not its run's."""

    __slots__ = ()


class ReceiveStream(AsyncIterator[T], Generic[T]):
    """An incoming stream: ``async for item in stream``.

    Leaving the loop early and dropping the stream, ``aclose()``, or
    ``peer.close_receiving_stream(id)`` tell the sender to stop. A sender's error is
    raised here as :class:`fastrpc.RemoteStreamError`; a lost connection as
    :class:`fastrpc.ConnectionClosed`. An item that does not decode with the
    connection's codec fails the read that takes it with :class:`fastrpc.PayloadError`
    and is dropped: the next read gives the item after it (:meth:`get_many_nowait`
    hands out the items before it first).
    """

    __slots__ = (
        "__weakref__",
        "_arrived",
        "_call",
        "_claimed",
        "_done",
        "_error",
        "_link",
        "_manager",
        "_ready",
        "_starter",
        "_waiter",
        "stream_id",
    )

    def __init__(
        self,
        manager: StreamManager,
        stream_id: int | None,
        call: bool = False,
        *,
        claimed: bool = False,
        starter: Callable[[ReceiveStream[T]], Awaitable[None]] | None = None,
    ) -> None:
        self._manager = manager
        self._link: StreamLink = manager.link
        self.stream_id = stream_id
        self._arrived = False  # the core has its record (items may be read)
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._call = call
        self._claimed = claimed
        # For peer.stream()/channel(): sends the call on the first __anext__.
        self._starter = starter
        # The rest of the run of items last taken from the core, last item first
        # (Connection.read_items: READ_RUN_ITEMS / READ_RUN_BYTES at most).
        self._ready: list[Any] | None = None

    def __aiter__(self) -> ReceiveStream[T]:
        return self

    def get_nowait(self, default: Any = _RAISE) -> T:
        """The next item if one has arrived, without waiting. Else ``default`` when
        given, or :class:`asyncio.QueueEmpty`: nothing has arrived yet, or the stream
        is over (``await`` :meth:`__anext__` to wait, or to see how it ended). A
        consumer that drains what one message brought takes it this way without a
        coroutine per item."""
        ready = self._ready
        if ready:
            return self._from_run(ready)  # type: ignore[no-any-return]
        if self._arrived:
            link = self._link
            try:
                item = link.core.read_item(self.stream_id)  # type: ignore[arg-type]
            except ProtocolError:  # an item that inflates past max_item_size: this stream ends
                self._failed()
                raise
            if item is not None:
                payload, raw, granted = item
                if granted:
                    link.host.flush()
                if raw and type(payload) is bytes:
                    return payload  # type: ignore[return-value]
                try:
                    return link.decoder.decode(payload, raw)  # type: ignore[no-any-return]
                except UNDECODABLE as exc:
                    raise self._undecodable(exc) from exc
        if default is _RAISE:
            raise asyncio.QueueEmpty
        return default  # type: ignore[no-any-return]

    def get_many_nowait(self, limit: int = 64) -> list[T]:
        """Up to ``limit`` items that have arrived, in order, without waiting (an empty
        list when none has, or the stream is over: ``await`` :meth:`__anext__` to wait,
        or to see how it ended). Each item taken counts as read, as with
        :meth:`get_nowait` (its memory released, its credit going back to the
        sender), in one step: for a consumer that drains what a message brought."""
        if limit < 1:
            return []
        ready = self._ready
        if ready:  # the rest of the run __anext__ took first: the items before the core's
            raw = type(ready) is list  # (_from_run, inline)
            decode = self._link.decoder.decode
            out: list[Any] = []
            for _ in range(min(limit, len(ready))):
                payload = ready.pop()
                if raw and type(payload) is bytes:
                    out.append(payload)
                    continue
                try:
                    out.append(decode(payload, raw))
                except UNDECODABLE as exc:
                    if out:  # the items before it go out now; it fails the next read
                        ready.append(payload)
                        return out
                    raise self._undecodable(exc) from exc
            return out
        if not self._arrived:
            return []
        link = self._link
        payloads, raw, granted = link.core.read_items(self.stream_id, limit)  # type: ignore[arg-type]
        if granted:
            link.host.flush()
        if not payloads:
            item = self.get_nowait(_NOTHING)  # a compressed item, or none
            return [] if item is _NOTHING else [item]
        if raw:
            decode = link.decoder.decode
            return [p if type(p) is bytes else decode(p, True) for p in payloads]  # type: ignore[misc]
        try:
            return list(map(link.decoder.decode_value, payloads))
        except UNDECODABLE:
            return self._decode_run(payloads)

    def _decode_run(self, payloads: list[Any]) -> list[Any]:
        """(:meth:`get_many_nowait`, one of ``payloads`` did not decode.) The items
        before the first bad one; that one and the rest wait in ``_ready`` (the bad
        one fails the next read). No item before it: it fails this read."""
        decode = self._link.decoder.decode_value
        out: list[Any] = []
        for i, payload in enumerate(payloads):
            try:
                out.append(decode(payload))
            except UNDECODABLE as exc:
                rest = payloads[i if out else i + 1 :]
                if rest:
                    rest.reverse()
                    self._ready = _PlainRun(rest)
                if out:
                    return out
                raise self._undecodable(exc) from exc
        return out  # (not reached: one of them failed)

    def _undecodable(self, exc: BaseException) -> PayloadError:
        """The error of an item of this stream that did not decode (``exc``)."""
        return payload_error(f"an item of stream {self.stream_id}", self._link.decoder.name, exc)

    async def __anext__(self) -> T:
        ready = self._ready
        if ready:  # the hot path of every item but a run's first
            payload = ready.pop()
            if type(payload) is bytes and type(ready) is list:
                return payload  # type: ignore[return-value]
            try:
                return self._link.decoder.decode(payload, type(ready) is list)  # type: ignore[no-any-return]
            except UNDECODABLE as exc:  # that item fails; the stream goes on
                raise self._undecodable(exc) from exc
        link = self._link
        while True:
            if self._arrived:
                sid: int = self.stream_id  # type: ignore[assignment]
                core = link.core
                # The items that have arrived are taken in a run: one step in the core
                # (their memory, their credit) for up to READ_RUN_ITEMS of them.
                payloads, raw, granted = core.read_items(sid, _READ_RUN_ITEMS, _READ_RUN_BYTES)
                if payloads:
                    if granted:
                        link.host.flush()
                    payloads.reverse()
                    payload = payloads.pop()
                    if payloads:
                        self._ready = payloads if raw else _PlainRun(payloads)
                    if raw and type(payload) is bytes:
                        return payload  # type: ignore[return-value]
                    try:
                        return link.decoder.decode(payload, raw)  # type: ignore[no-any-return]
                    except UNDECODABLE as exc:
                        raise self._undecodable(exc) from exc
                # None has arrived, or the next is compressed: get_nowait(), inline.
                try:
                    item = core.read_item(sid)
                except ProtocolError:
                    self._failed()
                    raise
                if item is not None:
                    payload, raw, granted = item
                    if granted:
                        link.host.flush()
                    if raw and type(payload) is bytes:
                        return payload  # type: ignore[return-value]
                    try:
                        return link.decoder.decode(payload, raw)  # type: ignore[no-any-return]
                    except UNDECODABLE as exc:
                        raise self._undecodable(exc) from exc
                ended, error = core.stream_end(sid)
                if ended and self._error is None:
                    self._finish()
                    if error is not None:
                        raise error
                    raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            if self._starter is not None:
                starter, self._starter = self._starter, None
                try:
                    await starter(self)
                except asyncio.CancelledError:
                    if not self._arrived and self.stream_id is None:
                        self._starter = starter  # not sent (it waited for a call slot): the next try sends it
                    raise
                except BaseException as exc:
                    if self.stream_id is None:
                        self._fail(exc)  # not sent, and never will be: every try says why
                    raise
                continue
            fut = link.loop.create_future()
            self._waiter = fut
            try:
                await fut
            finally:
                self._waiter = None

    def _from_run(self, ready: list[Any]) -> Any:
        """The next item of the run taken last (``ready``: not empty)."""
        payload = ready.pop()
        raw = type(ready) is list
        if raw and type(payload) is bytes:
            return payload
        try:
            return self._link.decoder.decode(payload, raw)
        except UNDECODABLE as exc:
            raise self._undecodable(exc) from exc

    def _wake(self, stream_id: int | None = None) -> None:
        """New items or the end are there; ``stream_id``: the stream arrived."""
        if stream_id is not None:
            self.stream_id = stream_id
            self._arrived = True
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._manager.forget_incoming(self)

    def _failed(self) -> None:
        """``read_item`` raised: the core stopped reading this stream (an item that
        inflates past ``max_item_size``, or corrupt), as :meth:`close` would have."""
        if not self._done:
            self._done = True
            self._ready = None
            self._manager.failed_incoming(self)

    def _fail(self, exc: BaseException) -> None:
        if not self._done:
            self._error = exc
            self._done = True
            self._wake()

    @property
    def closed(self) -> bool:
        """Whether the stream ended (its end, an error, or :meth:`close`)."""
        return self._done

    @property
    def claimed(self) -> bool:
        """Somebody receives this stream (``receive_stream``/``accept_stream``, a call)."""
        return self._claimed

    def claim(self) -> None:
        """Take an arrived stream nobody received yet (ValueError if taken)."""
        if self._claimed:
            raise ValueError(f"stream {self.stream_id} is already being received")
        self._claimed = True

    def stats(self) -> StreamStats | None:
        """Accounting of this stream while it is open (None before/after)."""
        if not self._arrived or self._done or self.stream_id is None:
            return None
        return self._manager.stats(self.stream_id, outgoing=False)

    async def aclose(self) -> None:
        """Stop reading: the sender is told to stop (STREAM_CLOSE, or CANCEL for a call)."""
        self.close()

    def close(self) -> None:
        """Stop reading (sync): the sender is told to stop; items not read are dropped."""
        if self._done:
            return
        self._done = True
        self._ready = None
        self._manager.close_incoming(self)
        self._wake()

    async def __aenter__(self) -> ReceiveStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # `break` out of `async for` over an unreferenced stream: stop the sender now.
        if not self._done:
            try:
                self.close()
            except Exception:
                pass


class StreamManager:
    """Multiplexes the streams of one connection, with backpressure and accounting.

    ``max_buffered_amount``: senders wait while more than this many bytes are queued
    (fastrpc's own queue plus the transport's write buffer); they are woken by the
    transport's drain signal and re-check every ``backpressure_delay`` seconds.
    ``stream_buffer_size``: bytes one stream may queue before its sender waits (a
    stream holding fewer than four items takes another within twice ``batch_size``:
    large items leave up to four to a message).
    ``initial_window``: per-stream flow-control window offered to senders (bytes);
    a stream read faster than its window refills, or whose items are more than 1/8
    of its window, grows it up to ``max_window`` as it is read, all streams of the
    connection together by at most ``max_growth``.
    ``batch_size``: frames queued in one loop iteration leave together in messages of
    up to this many bytes (automatic chunking; smaller keeps urgent items' latency low
    behind bulk traffic, larger saves per-message work).
    """

    __slots__ = (
        "__dict__",  # subclasses and users may add attributes
        "__weakref__",
        "_abandoned",
        "_accepting",
        "_anonymous",
        "_arrivals",
        "_claims",
        "_closed",
        "_dead",
        "_drain_waiters",
        "_held",
        "_incoming",
        "_levels",
        "_room",
        "_runs",
        "_senders",
        "_slot_waiters",
        "_tails",
        "_woken",
        "_writable",
        "backpressure_delay",
        "batch_size",
        "initial_window",
        "link",
        "max_buffered_amount",
        "max_growth",
        "max_window",
        "stream_buffer_size",
    )

    def __init__(
        self,
        max_buffered_amount: int = O.MAX_BUFFERED_AMOUNT,
        backpressure_delay: float = O.BACKPRESSURE_DELAY,
        *,
        stream_buffer_size: int = O.STREAM_BUFFER_SIZE,
        initial_window: int = O.INITIAL_STREAM_WINDOW,
        max_window: int = O.MAX_WINDOW,
        max_growth: int = O.MAX_GROWTH,
        batch_size: int = O.BATCH_SIZE,
    ) -> None:
        if max_buffered_amount <= 0:
            raise ValueError("max_buffered_amount must be positive")
        self.max_buffered_amount = max_buffered_amount
        self.backpressure_delay = backpressure_delay
        self.stream_buffer_size = stream_buffer_size
        self.initial_window = initial_window
        self.max_window = max_window
        self.max_growth = max_growth
        self.batch_size = batch_size
        self.link: StreamLink = None  # type: ignore[assignment]  # set by attach()
        self._senders: dict[int, asyncio.Task[None]] = {}
        self._writable: dict[int, asyncio.Future[None]] = {}
        # Streams on which send_now left an item part-sent (in pieces, or short of
        # credit): no sender loop waits for them, so on_writable moves them on.
        self._tails: set[int] | None = None
        self._runs: list[_SendRun] | None = None  # runs being gathered (flush_runs)
        # Streams are held weakly once a user has them, so that dropping one (a `break`
        # out of `async for`) closes it. Arrived-but-unclaimed ones are ids in _held
        # (in arrival order), their items in the core: the ReceiveStream is made when
        # somebody claims one (an idle unclaimed stream costs no object here).
        self._incoming = _WeakValues()
        self._claims = _WeakValues()
        self._held: dict[int, None] = {}
        # Lists, not deques: they are nearly always empty, and an empty deque is ~600 B.
        self._anonymous: list[ReceiveStream[Any]] = []
        self._accepting: list[asyncio.Future[None]] = []
        # The senders waiting for the buffer to drain, one entry each (in arrival
        # order), and entries of senders that left without a drain (_dead of them,
        # dropped once they are as many as the others); _levels: how many wait at
        # each urgency (levels with none are not in it).
        self._drain_waiters: list[_DrainWaiter] = []
        self._dead = 0
        self._levels: dict[int, int] = {}
        self._woken = 0
        # Bytes the senders may still queue before one of them looks at the buffered
        # amount again (run_sender): one look per that many bytes, not one per item.
        self._room = 0
        self._arrivals = 0
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._closed: BaseException | None = None
        # Senders that did not stop within SENDER_STOP_TIMEOUT of their cancellation
        # (shutdown): untracked, they run on detached (run_sender checks this, and then
        # leaves touching nothing: after a session reset, the connection's state and
        # ids are the new session's).
        self._abandoned: dict[asyncio.Task[Any], None] | None = None  # (made when needed)

    def copy(self) -> StreamManager:
        """A fresh manager with the same options (one is needed per connection)."""
        return StreamManager(
            self.max_buffered_amount,
            self.backpressure_delay,
            stream_buffer_size=self.stream_buffer_size,
            initial_window=self.initial_window,
            max_window=self.max_window,
            max_growth=self.max_growth,
            batch_size=self.batch_size,
        )

    def core_options(self) -> dict[str, int]:
        """The core's options this manager sets (``Connection`` keyword arguments)."""
        return {
            "stream_buffer_size": self.stream_buffer_size,
            "batch_size": self.batch_size,
            "max_window": self.max_window,
            "max_growth": self.max_growth,
        }

    # ------------------------------------------------- hooks for the owning peer

    def attach(self, link: StreamLink) -> None:
        """Serve the connection ``link`` describes (called once, by its peer)."""
        if self.link is not None:
            raise RuntimeError("a StreamManager serves one connection; use .copy()")
        self.link = link

    def reopen(self) -> None:
        """After :meth:`shutdown`: serve the new session of a reconnected client (the
        peer has put its new core in the link)."""
        self._closed = None
        self._senders.clear()
        self._writable.clear()
        for w in self._drain_waiters:
            w.fut = None  # (a sender of the old session must not count itself out of the new)
        self._drain_waiters = []
        self._dead = 0
        self._levels.clear()
        self._woken = 0
        self._room = 0
        self._slot_waiters.clear()
        self._accepting.clear()

    # ------------------------------------------------------------- accounting

    @property
    def buffered_amount(self) -> int:
        """Bytes queued and not yet on the wire (fastrpc's queue + the transport's)."""
        link = self.link
        return link.core.buffered_amount + link.host.transport_buffered()

    @property
    def active_streams(self) -> int:
        """Outgoing streams still sending plus incoming streams still open."""
        return len(self._senders) + len(self._incoming) + len(self._held)

    def stats(self, stream_id: int, *, outgoing: bool = True) -> StreamStats | None:
        """Per-stream accounting (bytes, items, credit window, buffered) or None."""
        try:
            return StreamStats(stream_id, outgoing, self.link.core.stream_stats(stream_id, outgoing))
        except KeyError:
            return None

    def tracked(self) -> dict[str, list[int]]:
        """Ids this manager tracks, for inspection and tests: running senders,
        incoming streams, claims not arrived yet, arrived streams nobody claimed."""
        return {
            "senders": sorted(self._senders),
            "incoming": sorted(self._incoming.keys()),
            "claims": sorted(self._claims.keys()),
            "held": list(self._held),
        }

    def wire_id(self, stream_id: StreamId, outgoing: bool) -> int:
        """The wire id of ``stream_id``: an int as is; a name (str) mapped to the id
        both sides compute from it (``outgoing``: a stream we send, else one the peer
        sends). Raises TypeError naming anything else."""
        if isinstance(stream_id, str):
            ours = 1 if self.link.core.role is Role.CLIENT else 0
            return named_stream_id(stream_id, ours if outgoing else 1 - ours)
        if isinstance(stream_id, int) and not isinstance(stream_id, bool):
            return stream_id
        raise TypeError(f"stream id {stream_id!r}: expected an int (a wire id) or a str (a stream name)")

    # ---------------------------------------------------------------- sending

    async def send_stream(
        self,
        source: AsyncIterable[Any],
        stream_id: StreamId | None = None,
        *,
        priority: int = DEFAULT_URGENCY,
        rate: RateLimit | None = None,
    ) -> StreamId:
        """Start sending ``source`` as a stream; return its id at once (the name,
        when ``stream_id`` is a string: see :meth:`wire_id`).

        The items go out in the background; ``abort_stream(id)`` stops them. Waits
        only when the peer's limit of concurrent streams is reached.
        """
        self._check()
        link = self.link
        wire = None if stream_id is None else self.wire_id(stream_id, outgoing=True)
        while not link.core.can_open_stream():
            fut = link.loop.create_future()
            self._slot_waiters.append(fut)
            try:
                await fut
            except BaseException:
                # Cancelled (a timeout): not left behind until the peer grants a slot.
                if fut in self._slot_waiters:
                    self._slot_waiters.remove(fut)
                raise
            self._check()
        try:
            sid: int = link.core.open_stream(wire, urgency=priority)
        except ValueError as exc:
            if isinstance(stream_id, str):
                raise ValueError(f"stream {stream_id!r} is in use on this connection") from exc
            raise
        self.start_sender(sid, source, rate)
        return stream_id if isinstance(stream_id, str) else sid

    def start_sender(self, sid: int, source: AsyncIterable[Any], rate: RateLimit | None = None) -> None:
        """Send ``source`` on the open outgoing stream ``sid`` from a task."""
        self._senders[sid] = self.link.loop.create_task(self.run_sender(sid, source, rate))

    async def run_sender(
        self,
        sid: int,
        source: AsyncIterable[Any],
        rate: RateLimit | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        expired: Callable[[], str | None] | None = None,
    ) -> None:
        """Send ``source``'s items on open outgoing stream ``sid``, then its end; its
        error (or cancellation) ends the stream with STREAM_ERROR (STREAM_ABORT), and
        goes to ``on_error`` (a streaming handler's is logged). ``expired``, asked when
        the sender is cancelled: the message of a call's deadline that passed (the
        stream ends with a TimeoutError of it, not STREAM_ABORT), or None.

        An item larger than the receiver's ``max_item_size`` is not sent: the
        :class:`PayloadTooLarge` is raised in ``source`` at its ``yield`` (an async
        generator may catch it and go on); uncaught, it ends this stream only.

        A ``source`` with a ``bind_stream`` method (and no ``rate``) is given, before
        its first item is asked for, ``send_now(items) -> int``: :meth:`send_now` on
        this stream, by which it may put items on the stream itself while this loop
        waits for its next one (a topic's live items: no task wakes per subscriber).
        What it yields next goes out after them, once the stream is writable. It takes
        nothing once this loop has left or was given up on (:class:`_Outlet`)."""
        link = self.link
        core = link.core
        kick = link.host.flush
        encode = link.codec.encode
        buffered = link.host.transport_buffered
        limit = self.max_buffered_amount
        bind = getattr(source, "bind_stream", None) if rate is None else None
        # (Its send_now is refused once this loop left or was given up on: _Outlet.)
        bound = None if bind is None else _Outlet(self, sid, asyncio.current_task())
        if bind is not None:
            bind(bound)
        it = source.__aiter__()
        refused: list[Any] = []  # what the source gave after a PayloadTooLarge thrown in
        # Small bytes items go in runs (_SendRun): one step in the core for many.
        runs = rate is None and bound is None
        run: _SendRun | None = None
        try:
            try:
                while True:
                    if refused:
                        item = refused.pop()
                    else:
                        try:
                            item = await it.__anext__()
                        except StopAsyncIteration:
                            break
                        if run is not None and not run.open:
                            if self._abandoned and self._detached():
                                return  # given up on (shutdown) while its source ran on
                            # The source waited: the run went before a message was
                            # built (flush_runs). What the credit did not take goes
                            # first. (Once the source ended, failed or was cancelled,
                            # the paths below take the run: a cancelled sender must
                            # not wait here for credit that may never come.) (No new
                            # locals here: an idle sender's frame keeps every one, 8
                            # bytes of each idle stream.)
                            ok, run = run.ok, None
                            if not ok:
                                await self._wait_writable(sid)
                        if run is not None:
                            if (
                                type(item) is bytes
                                and len(item) + FRAME_CHARGE <= run.left
                                and len(item) <= run.item_max
                            ):
                                run.items.append(item)
                                run.left -= len(item) + FRAME_CHARGE
                                continue
                            if self._abandoned and self._detached():
                                return
                            ok, run = self._hand_over(run), None  # full, or not for it
                            if not ok:
                                await self._wait_writable(sid)
                        elif self._abandoned and self._detached():
                            # (Checked off the path of an item joining an open run: a
                            # given-up sender's runs are closed, _give_up.)
                            return
                        if runs and type(item) is bytes and len(item) <= _SEND_RUN_ITEM:
                            run = self._start_run(sid, item)
                            if run is not None:
                                continue
                    if type(item) is bytes:
                        payload, raw = item, True
                    else:
                        payload, raw = encode(item)
                    if bound is not None and not core.writable(sid):
                        # The source's own send_now() filled the stream's credit.
                        await self._wait_writable(sid)
                    if rate is not None:
                        delay = rate.delay(len(payload) if rate.per_bytes else 1)
                        if delay > 0:
                            await asyncio.sleep(delay)
                    try:
                        ok = core.send_item(sid, payload, raw=raw)
                    except PayloadTooLarge as exc:
                        throw = getattr(it, "athrow", None)
                        if throw is None:
                            raise
                        try:
                            refused.append(await throw(exc))
                        except StopAsyncIteration:
                            break
                        if self._abandoned and self._detached():
                            return  # (as above)
                        continue
                    if not link.flush_pending:
                        kick()
                    if not ok:
                        if not core.writable(sid):
                            # Its queue is full (a message's worth) or its credit used up:
                            # send now, not at the end of this pass, so that a stream of
                            # large items is not one extra loop pass per item.
                            link.host.flush_now()
                        await self._wait_writable(sid)
                    # The buffered amount (four calls) is looked at once the senders
                    # used up the room it left at the last look: the senders share
                    # _room, so together they overshoot the limit by one item at most.
                    # (On the manager, not in a local: an idle sender's frame keeps
                    # its locals, and an int is 28 bytes of every idle stream.)
                    self._room -= len(payload) + _ITEM_HEAD
                    if self._room < 0:
                        self._room = limit - core.buffered_amount - buffered()
                    if self._room < 0:
                        self._room = 0
                        await self._backpressure(core.urgency(sid))
                    elif self._drain_waiters:  # others wait: take turns
                        await self._backpressure(core.urgency(sid), True)
                    elif self._woken:
                        # Senders a drain woke are queued to run: one loop pass lets
                        # them in first (waiting for the next drain instead halved the
                        # throughput of 1,000 streams).
                        await asyncio.sleep(0)
                if self._abandoned and self._detached():
                    return  # its source ended after it was given up on: nothing to send
                if run is not None:
                    self._hand_over(run)
                await self._wait_writable(sid)
                core.end_stream(sid)
            except StreamClosed:
                pass  # the receiver stopped reading: just close the source
            except asyncio.CancelledError:
                if self._abandoned and self._detached():
                    raise  # (its source raised it late: nothing to abort any more)
                if run is not None:  # what the source gave before goes before the abort
                    self._hand_over(run)
                late = expired() if expired is not None else None
                if late is None:
                    self._abort(sid)
                else:
                    core.error_stream(sid, "TimeoutError", late)
                    kick()
                raise
            except ConnectionClosed:
                raise
            except Exception as exc:  # the source raised: the receiver gets it
                if self._abandoned and self._detached():
                    return  # after it was given up on: nobody to tell
                if run is not None:  # what the source gave before goes before the error
                    ok, run = self._hand_over(run), None
                    if not ok:
                        # A tail (the run found less credit than at its start): the
                        # error would drop it (error_stream), so it goes first.
                        try:
                            await self._wait_writable(sid)
                        except (StreamClosed, ConnectionClosed):
                            pass  # nobody reads it now; the source's error is still reported
                        except asyncio.CancelledError:
                            self._abort(sid)
                            raise
                core.error_stream(sid, type(exc).__name__, str(exc))
                if on_error is not None:
                    on_error(exc)
            kick()
        finally:
            if run is not None:
                run.open = False  # (flush_runs passes it by)
            if bound is not None:
                bound.live = False  # (before aclose: what the source does then takes nothing)
            if not (self._abandoned and self._detached()):
                # (Given up on, it was untracked then: these entries may be another
                # sender's now, of the same id in a new session.)
                self._senders.pop(sid, None)
                self._writable.pop(sid, None)
                if self._tails is not None:
                    self._tails.discard(sid)
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    pass

    def _gave_up_on(self, sender: asyncio.Task[Any] | None) -> bool:
        """Whether the sender task ``sender`` was given up on (:meth:`abandon`: by
        :meth:`shutdown`, or a streaming handler's task by the handlers): whatever it
        does from then on must not touch the connection or this manager's state. The
        one test of it: :meth:`run_sender`'s steps (:meth:`_detached`) and the
        ``send_now`` it hands a bound source (:class:`_Outlet`), from whatever task."""
        return self._abandoned is not None and sender in self._abandoned

    def _detached(self) -> bool:
        """(run_sender) The running sender (the current task) was given up on."""
        return self._gave_up_on(asyncio.current_task())

    def _abort(self, sid: int) -> None:
        """(run_sender) The sender was cancelled: end outgoing ``sid`` with STREAM_ABORT,
        sent now, not with the next message."""
        self.link.core.abort_stream(sid, "aborted")
        self.link.host.flush()

    def _start_run(self, sid: int, item: bytes) -> _SendRun | None:
        """(run_sender) A run for outgoing ``sid`` holding ``item``, or None when the
        item goes alone: the stream cannot take it now, or the connection's buffer
        has no room for a run, or other senders wait for it to drain (they go first)."""
        if self._drain_waiters or self._woken:
            return None
        link = self.link
        room, item_max = link.core.room_for_run(sid, min(_SEND_RUN_BYTES, self._room))
        c = len(item) + FRAME_CHARGE
        if len(item) > item_max or c > room:
            return None
        run = _SendRun(sid, room - c, item_max)
        run.items.append(item)
        self._room -= room  # taken now: other senders' items see less room
        runs = self._runs
        if runs is None:
            runs = self._runs = []
        runs.append(run)
        if not link.flush_pending:
            link.host.flush()  # the run is queued then at the latest (flush_runs)
        return run

    def flush_runs(self) -> None:
        """(Peer hook) queue the runs the senders are gathering: called before the
        connection builds a message, so that an item a source gave leaves in the same
        message it would have alone (its source may be waiting for something else
        meanwhile)."""
        runs = self._runs
        if runs:
            for run in runs:
                if run.open:
                    self._hand_over(run, False)
            runs.clear()

    def _hand_over(self, run: _SendRun, flush: bool = True) -> bool:
        """Queue ``run`` (once: from its sender loop, or from :meth:`flush_runs` while
        its source waits); whether its stream may take more now. What the credit does
        not take now (other streams may have used the connection's credit since the run
        started) waits as the stream's tail: its sender loop waits for it to go, and
        while its source waits (``flush`` false, from flush_runs) it is pumped as credit
        comes. ``flush``: ask for the flush."""
        if not run.open:
            return run.ok
        run.open = False
        self._room += run.left
        link = self.link
        if link.closed:
            return True  # the sender finds out at its next step
        sid = run.sid
        try:
            run.ok = link.core.send_items(sid, run.items)
        except StreamClosed:
            return True  # the receiver stopped reading: as above
        if flush:
            if not link.flush_pending:
                link.host.flush()
        elif not run.ok and not link.core.writable(sid):
            if self._tails is None:
                self._tails = set()
            self._tails.add(sid)  # pumped as credit comes, whatever its source does
        return run.ok

    def send_now(self, sid: int, items: Sequence[Any]) -> int:
        """Queue ``items``, in order, on outgoing stream ``sid`` as far as it takes
        them without waiting, and send them at once (with whatever else the
        connection has queued); return how many it took. It stops at the first it
        cannot take: no credit or stream buffer room, the connection's buffer past
        ``max_buffered_amount`` or other senders waiting for it to drain, the stream
        closed, an item too large.
        The caller sends the rest the usual way (through its sender loop).

        Only for a source bound to its stream (see :meth:`run_sender`), and only
        while its loop holds no item of it: between the source's yield and its
        loop's next request for an item, the item may not be queued yet, and one
        sent now would overtake it. The source calls it through what its sender
        loop bound (:class:`_Outlet`), which refuses once that loop has left or was
        given up on: ``sid`` may then be another stream's (a new session's)."""
        link = self.link
        if link.closed or self._closed is not None or self._drain_waiters:
            return 0
        core = link.core
        room = self._send_room(sid)
        if room < 0:
            return 0
        n = 0
        payloads = link.codec.payloads(items)
        if payloads is not None:
            # The run of whole frames that credit and buffers take, in one step: a
            # topic's pass to each of its subscribers.
            n = core.send_run(sid, payloads, room)
            if n == len(items):
                items = ()
            else:
                room = self._send_room(sid)
                # Full: the sender loop takes the rest; else the next one goes in
                # pieces, compressed or refused.
                items = () if room < 0 else items[n:]
        if items:
            encode = link.codec.encode
            send = core.send_item
            try:
                for item in items:
                    payload, raw = encode(item)
                    ok = send(sid, payload, raw=raw)
                    n += 1
                    room -= len(payload)
                    if not ok or room < 0:
                        if not ok and not core.writable(sid):
                            # Taken, maybe not all of it sent: its sender loop waits
                            # on its source, not on this stream; on_writable goes on.
                            if self._tails is None:
                                self._tails = set()
                            self._tails.add(sid)
                        break
            except (StreamClosed, PayloadTooLarge):
                pass  # the sender loop finds out on the item's way through it
        self._room = 0  # what went out here did not draw on it: look again
        if n:
            # At once: a topic's pass calls this once per subscriber with all it has
            # for it, and writing each connection as its turn comes lets the first
            # subscribers read while the pass goes on (at the end of the pass, the
            # first write waited for the last subscriber's turn).
            link.host.flush_now()
        return n

    def _send_room(self, sid: int) -> int:
        """(send_now) Bytes the connection's buffer may still take, or -1 when it is
        past ``max_buffered_amount`` or stream ``sid`` cannot take an item now."""
        room = self.max_buffered_amount - self.buffered_amount
        return room if room >= 0 and self.link.core.writable(sid) else -1

    async def _wait_writable(self, sid: int) -> None:
        link = self.link
        core = link.core
        while not core.writable(sid):
            self._check()
            # Waiting before the flush: a flush that sends at once empties the stream's
            # queue and wakes it (on_writable) before this awaits.
            fut = link.loop.create_future()
            self._writable[sid] = fut
            if core.has_output():
                link.host.flush()  # writable() may have queued more of a fragmented item
            await fut
        if core.has_output():
            link.host.flush()
        self._check()

    async def _backpressure(self, urgency: int, turn: bool = False) -> None:
        """Wait until the buffered amount is back under the limit: woken when the
        transport drains, re-checked every ``backpressure_delay`` seconds.

        A drain wakes the waiting senders of the most urgent level present, oldest
        first, and each sends one item before checking again: streams of one urgency
        share the buffer round robin, and less urgent ones wait while more urgent ones
        have items to send (strict priority, as RFC 9218's urgency levels). ``turn``:
        under the limit, but others wait: queue behind them once (a sender whose
        items the socket takes at once would otherwise never let them in).
        """
        loop = self.link.loop
        me: _DrainWaiter | None = None  # this sender's entry in the line
        try:
            while turn or self.buffered_amount > self.max_buffered_amount or self._more_urgent(urgency):
                turn = False
                self._check()
                fut: asyncio.Future[bool] = loop.create_future()
                if me is None:
                    self._arrivals += 1
                    me = _DrainWaiter(urgency, self._arrivals, fut)
                    self._drain_waiters.append(me)
                    self._levels[urgency] = self._levels.get(urgency, 0) + 1
                else:
                    # A re-check found no room: the same entry waits again, in its place
                    # (an entry per re-check grew the line by 100 a second per sender
                    # for as long as the peer stalled).
                    me.fut = fut
                handle = loop.call_later(self.backpressure_delay, _poll, fut)
                try:
                    drained = await fut
                finally:
                    handle.cancel()
                    # Woken by a drain (counted in _woken by on_drained): it is no longer
                    # to be let in first, whether it runs now or was cancelled before it
                    # could (the task cancelled in the loop pass that woke it: a count
                    # left over kept every sender of the connection out of runs, and
                    # yielding a loop pass after each item, until a drain woke senders
                    # again).
                    if self._woken and fut.done() and not fut.cancelled() and fut.result() is True:
                        self._woken -= 1
                if drained:
                    return  # (on_drained took the entry out of the line)
        finally:
            if me is not None and me.fut is not None:
                self._leave(me)

    def _leave(self, me: _DrainWaiter) -> None:
        """(_backpressure) A sender leaves the line without a drain (a re-check found
        room, cancelled, the connection closed): its entry is dead; the line drops the
        dead entries once they are as many as the live ones (amortised: no scan per
        sender that leaves)."""
        me.fut = None
        n = self._levels[me.urgency] - 1
        if n:
            self._levels[me.urgency] = n
        else:
            del self._levels[me.urgency]
        self._dead += 1
        waiters = self._drain_waiters
        if 2 * self._dead >= len(waiters):
            self._drain_waiters = [w for w in waiters if w.fut is not None]
            self._dead = 0

    def _more_urgent(self, urgency: int) -> bool:
        # A few urgency levels at most (RFC 9218: 8): no scan of the waiting senders.
        return any(u < urgency for u in self._levels)

    def on_drained(self) -> None:
        """(Peer hook) a message left: wake senders if under the limit."""
        waiters = self._drain_waiters
        if waiters and self.buffered_amount <= self.max_buffered_amount:
            # Live entries only; those a re-check woke keep their place (each one's
            # task runs next, and waits again or leaves), the others are woken.
            live: list[_DrainWaiter] = []
            pending: list[tuple[_DrainWaiter, asyncio.Future[bool]]] = []
            for w in waiters:
                fut = w.fut
                if fut is not None:
                    live.append(w)
                    if not fut.done():
                        pending.append((w, fut))
            self._dead = 0
            # The most urgent level still in the line, counting senders whose re-check
            # already fired: they run next and send, so nobody less urgent is woken
            # ahead of them (waking the most urgent level among the not yet re-checked
            # let a less urgent sender in first).
            top = min(w.urgency for w in live) if live else 0
            wake = [(w, fut) for w, fut in pending if w.urgency == top]  # (in arrival order)
            if not wake:
                self._drain_waiters = live
                return
            for w, _ in wake:
                w.fut = None  # out of the line
            self._drain_waiters = [w for w in live if w.fut is not None]
            n = self._levels[top] - len(wake)
            if n:
                self._levels[top] = n
            else:
                del self._levels[top]
            self._woken = len(wake)  # woken, not yet run: the others let them in first
            for _, fut in wake:
                fut.set_result(True)

    def on_writable(self, sid: int) -> None:
        """(Peer hook) outgoing ``sid`` may take more (credit, or its queue left)."""
        if self._tails is not None and sid in self._tails:
            # From a callback: this may run inside the peer's flush, which must write
            # the message it holds before any that a flush from here would make.
            self.link.loop.call_soon(self._pump, sid)
        fut = self._writable.pop(sid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_slots(self) -> None:
        """(Peer hook) connection-wide room (stream slots or connection credit): wake
        every waiter."""
        while self._slot_waiters:
            _resolve(self._slot_waiters.pop(0))
        if self._tails:
            for sid in self._tails:
                self.link.loop.call_soon(self._pump, sid)  # (as in on_writable)
        if self._writable:
            waiters, self._writable = self._writable, {}
            for fut in waiters.values():
                _resolve(fut)

    def _pump(self, sid: int) -> None:
        """The rest of an item send_now left on ``sid``, as far as credit and the
        stream's buffer let it go now."""
        link = self.link
        tails = self._tails
        if link.closed or tails is None or sid not in tails:
            return  # its sender loop ended, or an earlier call finished it
        if link.core.writable(sid):  # (moves the item on: see Connection.writable)
            tails.discard(sid)
        if link.core.has_output():
            link.host.flush()

    def on_closed_by_peer(self, sid: int) -> None:
        """(Peer hook) the receiver stopped reading: stop the sender, close its source."""
        task = self._senders.get(sid)
        if task is not None:
            self.on_writable(sid)  # its next send raises StreamClosed
            fut = self._writable.pop(sid, None)
            if fut is None:
                # Waiting on the source itself or on backpressure: cancel it.
                task.cancel()

    def abort_stream(self, stream_id: StreamId) -> bool:
        """Cancel an outgoing stream: its source is closed, the receiver sees
        :class:`fastrpc.StreamAborted`. Returns False when no such stream runs."""
        task = self._senders.get(self.wire_id(stream_id, outgoing=True))
        if task is None:
            return False
        task.cancel()
        return True

    # -------------------------------------------------------------- receiving

    def receive_stream(self, stream_id: StreamId | None = None) -> tuple[StreamId | None, ReceiveStream[Any]]:
        """The incoming stream ``stream_id`` (items that arrived before are kept); a
        name (str) is the one the sender gave :meth:`send_stream`.

        With no id: the oldest incoming stream nobody has claimed, or else the next
        one to arrive (its id is then ``stream.stream_id`` once it does).
        """
        self._check()
        if isinstance(stream_id, str):
            try:
                return stream_id, self.receive_stream(self.wire_id(stream_id, outgoing=False))[1]
            except ValueError:
                raise ValueError(f"stream {stream_id!r} is already being received") from None
        if stream_id is not None:
            self.wire_id(stream_id, outgoing=False)  # TypeError for anything but an int
        if stream_id is None:
            if self._held:
                sid = next(iter(self._held))
                return sid, self._take_held(sid)
            stream: ReceiveStream[Any] = ReceiveStream(self, None, claimed=True)
            self._anonymous.append(stream)
            return None, stream
        if stream_id in self._held:
            return stream_id, self._take_held(stream_id)
        existing = self._incoming.get(stream_id)
        if existing is not None:
            existing.claim()  # ValueError: somebody has it
            return stream_id, existing
        if stream_id in self._claims:
            raise ValueError(f"stream {stream_id} is already being received")
        stream = ReceiveStream(self, stream_id, claimed=True)
        self._claims[stream_id] = stream
        return stream_id, stream

    def _take_held(self, sid: int) -> ReceiveStream[Any]:
        del self._held[sid]
        stream: ReceiveStream[Any] = ReceiveStream(self, sid, claimed=True)
        self._incoming[sid] = stream
        stream._wake(sid)
        return stream

    async def accept_stream(self) -> tuple[int, ReceiveStream[Any]]:
        """Wait for the next incoming stream nobody has claimed."""
        sid, stream = self.receive_stream(None)
        if sid is not None:
            assert isinstance(sid, int)  # unnamed: a wire id
            return sid, stream
        while stream.stream_id is None:
            fut = self.link.loop.create_future()
            self._accepting.append(fut)
            try:
                await fut
            except BaseException:
                if fut in self._accepting:  # cancelled: not left behind until a stream comes
                    self._accepting.remove(fut)
                if stream.stream_id is None:
                    stream.close()
                raise
            self._check()
        return stream.stream_id, stream

    def close_receiving_stream(self, stream_id: StreamId) -> None:
        """Stop reading incoming ``stream_id``; the sender is told to stop."""
        stream_id = self.wire_id(stream_id, outgoing=False)
        stream = self._incoming.get(stream_id) or self._claims.get(stream_id)
        if stream is not None:
            stream.close()
        else:
            self._held.pop(stream_id, None)
            self.link.core.close_stream(stream_id)
            self.link.host.flush()

    def on_opened(self, sid: int) -> None:
        """(Peer hook) the peer opened stream ``sid`` towards us."""
        stream = self._claims.pop(sid, None)
        if stream is None and self._anonymous:
            stream = self._anonymous.pop(0)
        if stream is None:
            self._held[sid] = None  # its ReceiveStream is made when claimed
        else:
            self._incoming[sid] = stream
            stream._wake(sid)
        while self._accepting:
            _resolve(self._accepting.pop(0))

    def bind_call(
        self,
        call_id: int,
        starter: Callable[[ReceiveStream[Any]], Awaitable[None]] | None = None,
        stream: ReceiveStream[Any] | None = None,
    ) -> ReceiveStream[Any]:
        """The stream of results, or of input, of call ``call_id``: ``stream`` (made by
        :meth:`call_stream`) or a new one, registered and woken if it arrived."""
        if stream is None:
            stream = ReceiveStream(self, call_id, call=True, claimed=True)
        self._incoming[call_id] = stream
        if self.link.core.has_incoming(call_id):
            stream._wake(call_id)
        else:
            stream.stream_id = call_id
        return stream

    def call_stream(self, starter: Callable[[ReceiveStream[Any]], Awaitable[None]]) -> ReceiveStream[Any]:
        """A stream for a streaming call not sent yet: ``starter`` sends it on the
        first iteration (and calls :meth:`bind_call`)."""
        self._check()
        return ReceiveStream(self, None, call=True, claimed=True, starter=starter)

    def expire_call(self, ref: Callable[[], ReceiveStream[Any] | None], exc: BaseException) -> None:
        """(Peer hook) a streaming call of ours outlived its ``timeout``: cancel it, as
        closing its stream does, and raise ``exc`` at its reader (after the items it
        took already). ``ref``: a weak reference to its stream."""
        stream = ref()
        if stream is None or stream.closed:
            return
        stream._fail(exc)
        self.close_incoming(stream)

    def on_readable(self, sid: int) -> None:
        """(Peer hook) items or the end of incoming ``sid`` are ready."""
        stream = self._incoming.get(sid)
        if stream is not None:
            stream._wake(sid)

    def forget_incoming(self, stream: ReceiveStream[Any]) -> None:
        """(Stream hook) ``stream`` was read to its end: release it in the core."""
        sid = stream.stream_id
        if sid is not None and self._incoming.get(sid) is stream:
            del self._incoming[sid]
            link = self.link
            if not link.closed:
                link.core.release_stream(sid)
                link.host.flush()

    def close_incoming(self, stream: ReceiveStream[Any]) -> None:
        """(Stream hook) the reader closed ``stream`` early: tell its sender."""
        sid = stream.stream_id
        if sid is None:
            try:
                self._anonymous.remove(stream)
            except ValueError:
                pass
            return
        if self._claims.get(sid) is stream:
            del self._claims[sid]
        if self._incoming.get(sid) is stream:
            del self._incoming[sid]
        self._held.pop(sid, None)
        link = self.link
        if link is not None and not link.closed:
            if link.core.close_stream(sid):
                self._stop_input(sid)
            link.host.flush()

    def failed_incoming(self, stream: ReceiveStream[Any]) -> None:
        """(Stream hook) reading ``stream`` failed in the core, which stopped reading it
        (:meth:`Connection.read_item`): forget it, and when that cancelled our call,
        stop the sender of its channel's input."""
        sid = stream.stream_id
        link = self.link
        if sid is not None and not link.closed and link.core.is_cancelled(sid):
            self._stop_input(sid)
        self.forget_incoming(stream)
        if not link.closed:
            link.host.flush()

    def _stop_input(self, sid: int) -> None:
        """Our call ``sid`` is cancelled, and its channel's input aborted in the core:
        that input's sender stops too (no STREAM_CLOSE will come to stop it)."""
        task = self._senders.get(sid)
        if task is not None:
            task.cancel()
            # (Cancelled before its first step, it never reaches its finally.)
            task.add_done_callback(lambda t: self._senders.pop(sid) if self._senders.get(sid) is t else None)

    # ---------------------------------------------------------------- cleanup

    def _check(self) -> None:
        if self._closed is not None:
            raise self._closed

    async def shutdown(self, exc: BaseException) -> None:
        """(Peer hook) the connection is gone: stop every sender (closing its source)
        and fail every receiver with ``exc``. Waits for the senders at most
        :data:`SENDER_STOP_TIMEOUT` seconds, then gives up on those still running
        (:meth:`_give_up`): a source that swallows its cancellation cannot hold the
        close open. (The caller's own task, a source closing its connection, is
        neither cancelled nor waited for.)"""
        if self._closed is None:
            self._closed = exc
        for stream in list(self._incoming.values()) + list(self._claims.values()) + list(self._anonymous):
            stream._fail(exc)
        self._incoming.clear()
        self._claims.clear()
        self._held.clear()
        self._anonymous.clear()
        # Waiters re-check the manager's state when woken, and raise `exc`.
        drains = [w.fut for w in self._drain_waiters if w.fut is not None]
        waiters: list[asyncio.Future[Any]] = [*self._writable.values(), *drains, *self._slot_waiters, *self._accepting]
        for fut in waiters:
            _resolve(fut)
        current = asyncio.current_task()
        tasks = {task: sid for sid, task in self._senders.items() if task is not current and not task.done()}
        for task in tasks:
            task.cancel()
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=SENDER_STOP_TIMEOUT)
            if running:
                self._give_up({task: tasks[task] for task in running})

    def _give_up(self, tasks: dict[asyncio.Task[Any], int]) -> None:
        """Senders ``tasks`` (task -> stream id) did not stop within
        SENDER_STOP_TIMEOUT of their cancellation: log them, and untrack them; they run
        on detached (run_sender leaves at its next step, touching nothing)."""
        link = self.link
        logger = side_logger(link.core.role is Role.SERVER)
        address = getattr(link.host, "remote_address", None)
        self.abandon(tasks)
        for task, sid in tasks.items():
            warn_given_up(logger, task, sid, address)

    def abandon(self, tasks: dict[asyncio.Task[Any], int]) -> None:
        """Untrack ``tasks`` (task -> the outgoing stream id it sends on), given up on:
        senders by :meth:`shutdown`, streaming handlers (whose results stream
        :meth:`run_sender` sends from the handler's own task) by
        ``handlers.Handlers.give_up``. Whatever run_sender does in them from now on
        touches nothing: after a session reset their ids are the new session's, so
        what they would clean up by id on their way out (a wait for credit, a tail, an
        abort) is another stream's. Keyed by the task, not the id."""
        abandoned = self._abandoned
        if abandoned is None:
            abandoned = self._abandoned = {}
        for task, sid in tasks.items():
            if task in abandoned:
                continue
            abandoned[task] = None
            task.add_done_callback(self._abandoned_done)
            if self._senders.get(sid) is task:
                del self._senders[sid]
                self._writable.pop(sid, None)
                if self._tails is not None:
                    self._tails.discard(sid)
            # A run it was gathering is not queued now, here or on a new session.
            for run in self._runs or ():
                if run.sid == sid:
                    run.open = False

    def _abandoned_done(self, task: asyncio.Task[Any]) -> None:
        if self._abandoned is not None:
            self._abandoned.pop(task, None)


class _DrainWaiter:
    """A sender waiting for the connection's buffer to drain (StreamManager's line):
    its urgency, its place (arrival), and the future it waits on now (a new one at each
    re-check); None once it left the line."""

    __slots__ = ("arrival", "fut", "urgency")

    def __init__(self, urgency: int, arrival: int, fut: asyncio.Future[bool]) -> None:
        self.urgency = urgency
        self.arrival = arrival
        self.fut: asyncio.Future[bool] | None = fut


def warn_given_up(logger: logging.Logger, task: asyncio.Task[Any], sid: object, address: object) -> None:
    """Log that the sender ``task`` of outgoing stream ``sid`` to ``address`` did not
    stop within SENDER_STOP_TIMEOUT of its cancellation and was given up on (here and
    in JSON mode's close)."""
    logger.warning(
        "sender of outgoing stream %r to %s did not stop within %s s of its cancellation "
        "(does its source %s catch CancelledError?): given up on, it runs on detached from the "
        "connection (the wait is fastrpc.streams.SENDER_STOP_TIMEOUT)",
        sid,
        address,
        SENDER_STOP_TIMEOUT,
        _source_of(task),
    )


def _source_of(task: asyncio.Task[Any]) -> str:
    """The stream source whose items sender ``task`` sends (:meth:`StreamManager.run_sender`'s
    ``source``), named for a log line: its qualified name (an async generator's is its
    function's) or its type's; "?" when that cannot be told."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    source = frame.f_locals.get("source") if frame is not None else None
    if source is None:
        return "?"
    name = getattr(source, "__qualname__", None)
    return repr(name if isinstance(name, str) else type(source).__qualname__)


def _poll(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)
