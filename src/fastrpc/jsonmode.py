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
"""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from websockets.exceptions import ConnectionClosed as _WSClosed

from .exceptions import ConnectionClosed, RemoteError, RemoteStreamError, StreamAborted
from .peer import Response, _current_peer
from .router import Router

__all__ = ["JsonPeer"]

StreamId = Any  # the seed's ids are strings (UUIDs); numbers are accepted too


class _JsonStream(AsyncIterator[Any]):
    """An incoming seed stream; holds at most ``limit`` items (the seed has no credit)."""

    def __init__(self, peer: JsonPeer, stream_id: StreamId) -> None:
        self._peer = peer
        self.stream_id = stream_id
        self.items: deque[Any] = deque()
        self.done = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __aiter__(self) -> _JsonStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self.items:
                return self.items.popleft()
            if self.error is not None:
                raise self.error
            if self.done:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def aclose(self) -> None:
        self._peer.close_receiving_stream(self.stream_id)


class JsonPeer:
    """A connection speaking the seed's JSON protocol (see the module docstring)."""

    max_held_items = 10_000

    def __init__(self, ws: Any, router: Router | None, *, max_message_size: int = 4 << 20) -> None:
        self._ws = ws
        self._router = router or Router()
        self._own = Router()
        self._loop = asyncio.get_running_loop()
        self._calls: dict[Any, asyncio.Future[Any]] = {}
        self._incoming: dict[StreamId, _JsonStream] = {}
        self._senders: dict[StreamId, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._closed_flag = False
        self._max = max_message_size

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
            except (_WSClosed, ConnectionClosed):
                pass
            except Exception as exc:
                await self._send({"type": "StreamError", "streamId": sid, "error": f"{type(exc).__name__}: {exc}"})
        except (_WSClosed, ConnectionClosed):
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
            stream.items.clear()
            stream._wake()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)
        await self.wait_closed()

    def _check(self) -> None:
        if self._closed_flag:
            raise ConnectionClosed()

    # ------------------------------------------------------------ receiving

    async def _run(self, first: str) -> None:
        token = _current_peer.set(self)  # type: ignore[arg-type]
        try:
            await self._handle(first)
            async for msg in self._ws:
                await self._handle(msg)
        except (_WSClosed, ConnectionError):
            pass
        finally:
            _current_peer.reset(token)
            await self._teardown()

    async def _handle(self, msg: str | bytes) -> None:
        try:
            obj = json.loads(msg)
        except ValueError:
            await self._ws.close(1007, "invalid JSON")
            return
        if not isinstance(obj, dict):
            await self._ws.close(1002, "expected a JSON object")
            return
        kind = obj.get("type")
        if kind in ("StreamData", "StreamEnd", "StreamError"):
            self._on_stream(kind, obj)
            return
        category = obj.get("category")
        if category == "request":
            task = self._loop.create_task(self._answer(obj.get("requestId"), obj.get("data")))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif category == "response":
            fut = self._calls.get(obj.get("requestId"))
            if fut is not None and not fut.done():
                if "error" in obj:
                    fut.set_exception(RemoteError("Error", str(obj["error"])))
                else:
                    fut.set_result(obj.get("data"))
        else:
            await self._ws.close(1002, "unknown message shape")

    def _on_stream(self, kind: str, obj: dict[str, Any]) -> None:
        sid = obj.get("streamId")
        stream = self._incoming.get(sid)
        if stream is None:
            if kind != "StreamData" or len(self._incoming) >= 1024:
                return
            stream = self._incoming[sid] = _JsonStream(self, sid)
        if kind == "StreamData":
            if len(stream.items) >= self.max_held_items:
                stream.error = StreamAborted("receiver buffer full (the seed protocol has no flow control)")
                stream.done = True
            else:
                stream.items.append(obj.get("payload"))
        elif kind == "StreamEnd":
            stream.done = True
        else:
            stream.error = RemoteStreamError("Error", str(obj.get("error", "")))
            stream.done = True
        stream._wake()

    async def _answer(self, rid: Any, data: Any) -> None:
        try:
            result = await self._dispatch(data)
            reply: dict[str, Any] = {"category": "response", "requestId": rid, "data": result}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reply = {"category": "response", "requestId": rid, "error": f"{type(exc).__name__}: {exc}"}
        try:
            await self._send(reply)
        except (_WSClosed, ConnectionClosed):
            pass
        except TypeError as exc:  # result not JSON-serialisable
            await self._send({"category": "response", "requestId": rid, "error": f"TypeError: {exc}"})

    async def _dispatch(self, data: Any) -> Any:
        fallback = self._own.fallback or self._router.fallback
        if fallback is not None:
            result = fallback(data)
        else:
            method = data.get("method") if isinstance(data, dict) else None
            found = self._own.lookup(method) or self._router.lookup(method) if isinstance(method, str) else None
            if found is None:
                raise LookupError(f"no method {method!r}")
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
