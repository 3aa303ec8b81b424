"""Running the handlers of calls and notifications that arrive on a connection.

:class:`Handlers` looks a method up (the connection's own registrations first, then
the router), decodes its arguments, runs it (a sync handler inline, so that its reply
leaves in the same loop iteration; an async one in a task; a streaming or channel
handler in a task that feeds its results stream) and queues the reply or the error.
A CANCEL from the caller cancels the handler's task.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import traceback as _traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import events as E
from .exceptions import LimitExceeded
from .introspection import METHODS, describe
from .router import ASYNC_GEN, SYNC, Router, handler_kind
from .streams import ReceiveStream, StreamLink, StreamManager

__all__ = ["Handlers"]

T = TypeVar("T")


class Handlers:
    """The handlers of one connection and the tasks running them."""

    __slots__ = ("expose_tb", "introspection", "link", "notify_tasks", "own", "router", "streams", "tasks")

    def __init__(
        self,
        link: StreamLink,
        streams: StreamManager,
        router: Router | None,
        expose_tb: bool,
        introspection: bool = False,
    ) -> None:
        self.link = link
        self.streams = streams
        self.router = router if router is not None else Router()
        self.own = Router()  # peer.register()/match(): looked up before the router
        self.expose_tb = expose_tb
        self.introspection = introspection  # answer fastrpc.methods (introspection.py)
        self.tasks: dict[int, asyncio.Task[Any]] = {}  # call id -> its handler's task
        self.notify_tasks: dict[asyncio.Task[Any], None] = {}  # a dict: 64 B empty

    def running(self) -> list[asyncio.Task[Any]]:
        """Every handler task still running."""
        return [*self.tasks.values(), *self.notify_tasks]

    def on_notify(self, ev: E.NotificationReceived) -> None:
        found = self.lookup(ev.method)
        try:
            if found is None:
                fallback = self._fallback()
                if fallback is None:
                    return  # nobody to tell: notifications have no reply
                fn, kind = fallback, handler_kind(fallback)
                args: tuple[Any, ...] = ({"method": ev.method, "params": list(self._args(ev.payload, ev.raw))},)
            else:
                fn, kind = found
                args = self._args(ev.payload, ev.raw)
            if kind == SYNC:
                result = fn(*args)
                if not inspect.isawaitable(result):
                    return
            else:
                result = fn(*args)
        except Exception:
            return
        # Running notification handlers share the pending-calls limit.
        if len(self.notify_tasks) >= self.link.core.settings.max_pending_calls:
            if inspect.iscoroutine(result):
                result.close()
            raise LimitExceeded("too many running notification handlers")
        task = self.link.loop.create_task(_quiet(result))
        self.notify_tasks[task] = None
        task.add_done_callback(self._notify_done)

    def _notify_done(self, task: asyncio.Task[Any]) -> None:
        self.notify_tasks.pop(task, None)

    def on_cancelled(self, ev: E.CallCancelled) -> None:
        task = self.tasks.get(ev.call_id)
        if task is not None:
            task.cancel()

    def lookup(self, method: str) -> tuple[Callable[..., Any], int] | None:
        found = self.own.methods.get(method) or self.router.methods.get(method)
        if found is None and method == METHODS and self.introspection:
            return functools.partial(describe, self.own, self.router), SYNC
        return found

    def _fallback(self) -> Callable[[Any], Any] | None:
        return self.own.fallback or self.router.fallback

    def _args(self, payload: Any, raw: bool) -> tuple[Any, ...]:
        if raw:
            return (bytes(payload),)
        if not payload:
            return ()
        args = self.link.decoder.decode_value(payload)
        return tuple(args) if isinstance(args, (list, tuple)) else (args,)

    def on_request(self, ev: E.RequestReceived) -> None:
        cid = ev.call_id
        try:
            found = self.lookup(ev.method)
            if found is None:
                fallback = self._fallback()
                if fallback is None:
                    self._reply_error(cid, "MethodNotFound", f"no method {ev.method!r}", ev.stream)
                    return
                if ev.method == "":
                    data = self.link.decoder.decode(ev.payload, ev.raw)
                else:
                    data = {"method": ev.method, "params": list(self._args(ev.payload, ev.raw))}
                fn, kind, args = fallback, handler_kind(fallback), (data,)
            else:
                fn, kind = found
                args = self._args(ev.payload, ev.raw)
        except Exception as exc:
            self._reply_error(cid, "InvalidArguments", str(exc), ev.stream)
            return
        if ev.stream or ev.channel:
            task = self.link.loop.create_task(self._run_stream_call(ev, fn, kind, args))
        elif kind == SYNC:
            # Sync handlers run inline: no task, the reply joins this loop iteration's message.
            try:
                result = fn(*args)
            except Exception as exc:
                self._reply_exception(cid, exc)
                return
            if not inspect.isawaitable(result):
                self._reply(cid, result)
                return
            task = self.link.loop.create_task(self._run_call(cid, lambda: result, ev.deadline))
        else:
            task = self.link.loop.create_task(self._run_call(cid, lambda: fn(*args), ev.deadline))
        self.tasks[cid] = task
        task.add_done_callback(functools.partial(self._call_task_done, cid, ev.stream or ev.channel))

    def _call_task_done(self, cid: int, stream: bool, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(cid, None)
        if self.link.core.is_running(cid) and not self.link.closed:
            # Cancelled before it ran (CANCEL in the same message as its REQUEST): the
            # caller still needs the call's end, or its slot stays taken on both sides.
            if stream:
                self.link.core.close_stream(cid)  # a channel's input, if any
            self._reply_error(cid, "CancelledError", "call cancelled", stream)

    def _reply(self, cid: int, result: Any) -> None:
        if self.link.closed:
            return
        try:
            payload, raw = self.link.codec.encode(result)
        except Exception as exc:
            self._reply_exception(cid, exc)
            return
        self.link.core.send_response(cid, payload, raw=raw)
        self.link.host.flush()

    def _reply_exception(self, cid: int, exc: BaseException) -> None:
        tb = "".join(_traceback.format_exception(exc)) if self.expose_tb else None
        code = getattr(exc, "code", None)
        self._reply_error(cid, type(exc).__name__, str(exc), False, code if isinstance(code, int) else None, tb)

    def _reply_error(
        self,
        cid: int,
        type_name: str,
        message: str,
        stream: bool,
        code: int | None = None,
        tb: str | None = None,
    ) -> None:
        if self.link.closed:
            return
        core = self.link.core
        if stream:
            core.open_response_stream(cid)
            core.error_stream(cid, type_name, message, code)
            core.finish_call(cid)
        else:
            core.send_error(cid, type_name, message, code, tb)
        self.link.host.flush()

    async def _run_call(self, cid: int, invoke: Callable[[], Awaitable[Any]], deadline: float | None) -> None:
        try:
            if deadline is not None:
                result = await asyncio.wait_for(invoke(), deadline)
            else:
                result = await invoke()
        except asyncio.CancelledError:
            self._reply_error(cid, "CancelledError", "call cancelled", False)
            raise
        except asyncio.TimeoutError:
            self._reply_error(cid, "TimeoutError", "deadline exceeded", False)
        except Exception as exc:
            self._reply_exception(cid, exc)
        else:
            self._reply(cid, result)

    async def _run_stream_call(
        self, ev: E.RequestReceived, fn: Callable[..., Any], kind: int, args: tuple[Any, ...]
    ) -> None:
        core = self.link.core
        cid = ev.call_id
        manager = self.streams
        inbound: ReceiveStream[Any] | None = None
        try:
            if ev.channel:
                inbound = manager.bind_call(cid)
                args = (inbound, *args)
            try:
                source = fn(*args)
                if kind != ASYNC_GEN and inspect.isawaitable(source):
                    source = await source
                if not hasattr(source, "__aiter__"):
                    if ev.stream and kind != ASYNC_GEN:
                        source = _single(source)
                    else:
                        raise TypeError(f"handler for {ev.method!r} did not return an async iterable")
            except asyncio.CancelledError:
                if not self.link.closed:  # the caller waits for the call's end
                    self._reply_error(cid, "CancelledError", "call cancelled", True)
                raise
            except Exception as exc:
                if not self.link.closed:
                    core.open_response_stream(cid)
                    core.error_stream(cid, type(exc).__name__, str(exc))
                    core.finish_call(cid)
                    self.link.host.flush()
                return
            if self.link.closed:
                return
            core.open_response_stream(cid)
            await manager.run_sender(cid, source)
        finally:
            if inbound is not None:
                inbound.close()  # while the call runs: the core knows it is a channel input
            core.finish_call(cid)


async def _single(value: T) -> Any:
    yield value


async def _quiet(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception:
        pass
