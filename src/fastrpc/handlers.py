"""Running the handlers of calls and notifications that arrive on a connection.

:class:`Handlers` looks a method up (the connection's own registrations first, then
the router), decodes its arguments, runs it (a sync handler inline, so that its reply
leaves in the same loop iteration; an async one in a task; a streaming or channel
handler in a task that feeds its results stream) and queues the reply or the error.
A CANCEL from the caller cancels the handler's task; a caller's deadline counts from
when its call was received. Closing the connection (or resetting its session) cancels
the running handlers and waits for them at most :data:`HANDLER_STOP_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import traceback as _traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import events as E
from .arguments import bad_arguments, split_kwargs
from .budget import MemoryBudget
from .events import Payload
from .exceptions import InvalidArguments, LimitExceeded, PermissionDenied
from .frames import VARINT_MAX
from .introspection import METHODS, describe
from .log import side_logger, warn_limited
from .protocol import Role
from .router import ASYNC_GEN, SYNC, MethodSpec, Router, handler_kind
from .streams import ReceiveStream, StreamLink, StreamManager

__all__ = ["HANDLER_STOP_TIMEOUT", "Handlers", "authorize"]

T = TypeVar("T")

# Python 3.12+: a handler's task starts eagerly, within the read that brought its call
# (asyncio.eager_task_factory): a handler that finishes without waiting answers in
# that read's write, as a sync handler does, with no loop pass for its first step.
# On 3.11 every task's first step waits for the loop.
_EAGER: Callable[..., asyncio.Task[Any]] | None = getattr(asyncio, "eager_task_factory", None)


def start_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
    """``loop.create_task(coro)``, started eagerly where Python can (3.12+) and the loop
    has no task factory of its own (which is kept)."""
    if _EAGER is not None and loop.get_task_factory() is None:
        return _EAGER(loop, coro)
    return loop.create_task(coro)


# How long closing a connection (or resetting its session) waits, in seconds, for the
# handlers it cancelled. A handler that swallows its CancelledError and runs on would
# otherwise hold the close (and the session reset) forever: it is given up on then,
# with a WARNING naming its method; it runs on, detached (nothing it answers is sent).
HANDLER_STOP_TIMEOUT = 5.0

# Results no handler can mean to be awaited: a sync handler's reply goes at once,
# without inspect.isawaitable's ABC check (every call's path).
_PLAIN = frozenset({bytes, str, int, float, bool, type(None), dict, list, tuple, bytearray})


class Handlers:
    """The handlers of one connection and the tasks running them."""

    __slots__ = (
        "abandoned",
        "expose_tb",
        "introspection",
        "link",
        "notify_tasks",
        "own",
        "router",
        "streams",
        "tasks",
    )

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
        # Running notification handlers -> the bytes of arguments each holds (charged
        # to the memory budget while it runs). A dict: 64 B empty.
        self.notify_tasks: dict[asyncio.Task[Any], int] = {}
        # Handler tasks that did not stop within HANDLER_STOP_TIMEOUT of their
        # cancellation (_Stopping): whatever they answer is dropped (after a session
        # reset, the link's core is the new session's, where their ids mean other calls).
        self.abandoned: dict[asyncio.Task[Any], None] = {}

    def running(self) -> list[asyncio.Future[Any]]:
        """What stopping this connection's handlers (a close, a session reset) cancels
        and then awaits: one future standing for every handler task still running (but
        the caller's own: a handler closing its connection), or none. Its ``cancel()``
        cancels those tasks; it is done once they all are, or
        :data:`HANDLER_STOP_TIMEOUT` seconds after, when those still running are
        logged and given up on."""
        current = asyncio.current_task()
        tasks = [t for t in (*self.tasks.values(), *self.notify_tasks) if t is not current and not t.done()]
        return [_Stopping(self, tasks)] if tasks else []

    def give_up(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Handler ``tasks`` did not stop within HANDLER_STOP_TIMEOUT of their
        cancellation: log them, and forget them (they run on, answering nothing).
        The stream manager forgets them too: a streaming handler sends its results
        from its own task (run_sender), whose clean-up by stream id would otherwise,
        once it ends, hit the new session's stream of the same id."""
        given = set(tasks)
        self.streams.abandon({t: cid for cid, t in self.tasks.items() if t in given})
        for task in tasks:
            self.abandoned[task] = None
            self.notify_tasks.pop(task, None)
            self.logger.warning(
                "handler for %r from %s did not stop within %s s of its cancellation "
                "(does it catch CancelledError?): given up on, it runs on detached from the connection",
                _method_of(task),
                self.address(),
                HANDLER_STOP_TIMEOUT,
            )
        for cid in [cid for cid, t in self.tasks.items() if t in self.abandoned]:
            del self.tasks[cid]

    def on_notify(self, ev: E.NotificationReceived) -> None:
        method = ev.method
        found, spec = self.find(method)
        fn: Callable[..., Any] | None = None
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] | None = None
        ran = False  # the handler was called (else what failed was its arguments)
        try:
            if found is None:
                fallback = self._fallback()
                if fallback is None:
                    # Nobody to tell the sender: notifications have no reply.
                    warn_limited(
                        self.logger, "notification to unknown method %r from %s dropped", method, self.address()
                    )
                    return
                fn, kind = fallback, handler_kind(fallback)
                args = ({"method": method, "params": list(self._args(ev.payload, ev.raw))},)
            else:
                fn, kind = found
                if spec is None and not ev.kwargs:
                    args = self._args(ev.payload, ev.raw)
                else:
                    args, kwargs = self._prepare(method, spec, ev.payload, ev.raw, ev.kwargs, False)
            if kind == ASYNC_GEN:
                # Nothing to await, nobody to send the items to: the sender's mistake.
                warn_limited(
                    self.logger,
                    "notification to %r from %s dropped: it is a streaming method (an async generator), "
                    "called with peer.stream",
                    method,
                    self.address(),
                )
                return
            ran = True
            result = fn(*args, **kwargs) if kwargs else fn(*args)
            if kind == SYNC and not inspect.isawaitable(result):
                return
        except (Exception, asyncio.CancelledError) as exc:  # (a sync handler's own CancelledError)
            self._notify_failed(method, exc, fn, args, kwargs, ran)
            return
        core = self.link.core
        budget = core.budget
        try:
            # Running notification handlers are bounded by max_pending_calls, counted apart
            # from calls (a caller waits for a call slot; a notification has none to wait for).
            if len(self.notify_tasks) >= core.settings.max_pending_calls:
                raise LimitExceeded(
                    f"too many running notification handlers (max_pending_calls {core.settings.max_pending_calls})"
                )
            # Its arguments are held while it runs: charged as a running call's are
            # (CallTable.take: raw bytes at their length, others at what decoding them
            # allocates, as the core measured it: ev.cost). Past max_connection_memory
            # the connection fails, LimitExceeded (1008), as for calls: a notification
            # has no answer to carry PayloadTooLarge.
            cost = ev.cost
            budget.charge(cost, "arguments of running handlers")
        except LimitExceeded:
            if inspect.iscoroutine(result):
                result.close()
            raise
        task = start_task(self.link.loop, self._quiet(method, result))
        if _EAGER is None or not task.done():
            self.notify_tasks[task] = cost
            # (The budget charged, not the link's core at the end: a reset replaces it.)
            task.add_done_callback(functools.partial(self._notify_done, budget))
        else:
            budget.release(cost)  # (started eagerly and finished)

    def _notify_failed(
        self,
        method: str,
        exc: BaseException,
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        ran: bool = True,
    ) -> None:
        """A notification failed before its handler ran on (or its sync handler raised;
        ``ran`` False: before it was called, its arguments). Arguments that do not fit,
        or do not decode at all, are the sender's mistake, which a sender can repeat
        at will: a rate-limited WARNING without traceback, never one ERROR each."""
        why: str | None = None
        if not ran and isinstance(exc, PermissionDenied):
            # No answer to carry the refusal: the log is its only trace (a WARNING, as for
            # a refused call, rate-limited: a peer can send these at will).
            warn_limited(self.logger, "notification to %r from %s refused by authorize", method, self.address())
            return
        if isinstance(exc, InvalidArguments):
            why = exc.message
        elif not ran and not isinstance(exc, PermissionDenied):
            why = _describe(exc)  # (malformed, nested too deep, not the KWARGS map ...)
        elif fn is not None and isinstance(exc, TypeError):
            why = bad_arguments(fn, args, kwargs)
        if why is not None:
            warn_limited(
                self.logger, "notification to %r from %s dropped: invalid arguments: %s", method, self.address(), why
            )
            return
        self._log_failure(method, exc, "notification handler")

    async def _quiet(self, method: str, aw: Awaitable[Any]) -> None:
        try:
            await aw
        except Exception as exc:  # nobody to tell but the log
            self._log_failure(method, exc, "notification handler")

    def _notify_done(self, budget: MemoryBudget, task: asyncio.Task[Any]) -> None:
        # However it ended (returned, raised, cancelled), its arguments are released;
        # not once given up on (give_up untracked it: that connection is gone, and
        # closing it cleared its budget).
        cost = self.notify_tasks.pop(task, None)
        if cost is not None:
            budget.release(cost)
        if self.abandoned:
            self.abandoned.pop(task, None)

    def on_cancelled(self, ev: E.CallCancelled) -> None:
        task = self.tasks.get(ev.call_id)
        if task is not None:
            task.cancel()

    def on_stream_closed(self, stream_id: int) -> None:
        """STREAM_CLOSE on one of our outgoing streams: when it is the results stream of
        a streaming call (its id is the call's), the handler feeding it stops, as its
        sender loop would not (it runs in the handler's task, maybe waiting for credit
        that will never come, holding the call's slot)."""
        task = self.tasks.get(stream_id)
        if task is not None:
            task.cancel()

    def find(self, method: str) -> tuple[tuple[Callable[..., Any], int] | None, MethodSpec | None]:
        """``(handler and kind, spec)`` of ``method`` (this connection's first); the
        spec is None for a plain method (untyped, no authorize hook)."""
        own = self.own
        found = own.methods.get(method)
        specs = own.specs
        if found is None:
            router = self.router
            found = router.methods.get(method)
            specs = router.specs
            if found is None and method == METHODS and self.introspection:
                # The reserved call (introspection.py); a user's own method of that name wins.
                return (functools.partial(describe, self.own, self.router), SYNC), None
        return found, (specs.get(method) if specs else None)

    @property
    def logger(self) -> Any:
        return side_logger(self.link.core.role is Role.SERVER)

    def address(self) -> Any:
        """The peer's address, for log lines."""
        return getattr(self.link.host, "remote_address", None)

    def _prepare(
        self, method: str, spec: MethodSpec | None, payload: Any, raw: bool, kwargs: int, channel: bool
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        """Arguments of a call to a method with a spec or keyword arguments: checked
        by its ``authorize`` hook, converted to its annotations."""
        if spec is not None:
            check = spec.authorize
            if check is not None:
                authorize(check, self.link.host, method, self.logger, self.address)
            args_spec = spec.args
            if args_spec is not None and channel:
                args_spec = args_spec.channel
            if args_spec is not None:
                if not raw:
                    return args_spec.decode(method, self.link.decoder, payload, kwargs)
                if not args_spec.raw_ok:  # one bytes argument, sent raw: checked as any other
                    return args_spec.bind(method, self.link.decoder, (bytes(payload),), {})
        if not kwargs or raw:
            return self._args(payload, raw), None
        return split_kwargs(self.link.decoder.decode_value(payload))

    def _log_failure(self, method: str, exc: BaseException, what: str = "handler") -> None:
        """A handler raised: logged once, at ERROR with its traceback (refusals of the
        caller's arguments or rights are the caller's business: DEBUG)."""
        if isinstance(exc, (InvalidArguments, PermissionDenied)):
            self.logger.debug("call to %r from %s refused: %s", method, self.address(), exc)
            return
        self.logger.error("%s for %r from %s raised", what, method, self.address(), exc_info=exc)

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
        method = ev.method
        kwargs: dict[str, Any] | None = None
        # A caller's deadline counts from now, its call's receipt: not from when its
        # handler's task first runs, which may be a while later on a busy loop.
        received = 0.0 if ev.deadline is None else self.link.loop.time()
        try:
            # find(), inline: this is every call's path.
            own = self.own
            found = own.methods.get(method)
            specs = own.specs
            if found is None:
                router = self.router
                found = router.methods.get(method)
                specs = router.specs
                if found is None and method == METHODS and self.introspection:
                    found = functools.partial(describe, own, router), SYNC  # introspection.py
            spec = specs.get(method) if specs else None
            if found is None:
                fallback = self._fallback()
                if fallback is None:
                    self._refuse(ev, "MethodNotFound", f"no method {method!r}")
                    return
                if method == "":
                    data = self.link.decoder.decode(ev.payload, ev.raw)
                else:
                    data = {"method": method, "params": list(self._args(ev.payload, ev.raw))}
                fn, kind, args = fallback, handler_kind(fallback), (data,)
            else:
                fn, kind = found
                if ev.raw and (spec is None or _raw_ok(spec, ev.channel)):
                    args = (bytes(ev.payload),)  # _prepare / _args of raw bytes, inline
                elif spec is None and not ev.kwargs:
                    args = self._args(ev.payload, ev.raw)
                else:
                    args, kwargs = self._prepare(method, spec, ev.payload, ev.raw, ev.kwargs, ev.channel)
        except PermissionDenied as exc:
            warn_limited(self.logger, "call to %r from %s refused by authorize", method, self.address())
            self._refuse(ev, "PermissionDenied", exc.message)
            return
        except InvalidArguments as exc:
            self._refuse(ev, "InvalidArguments", exc.message)
            return
        except Exception as exc:
            self._refuse(ev, "InvalidArguments", f"{method}(): {exc}")
            return
        if kind == SYNC and not (ev.stream or ev.channel):
            # Sync handlers run inline: no task, the reply joins this loop iteration's
            # message (the bytes case inline: every sync call's path).
            try:
                result = fn(*args, **kwargs) if kwargs else fn(*args)
            except (Exception, asyncio.CancelledError) as exc:  # (a sync handler's own CancelledError)
                self._reply_exception(cid, exc, method, fn, args, kwargs)
                return
            if type(result) is bytes and not self.link.closed:  # _sync_result's first case
                self.link.core.send_response(cid, result, True)
            else:
                self._sync_result(cid, method, result, ev.deadline, received)
            return
        if ev.stream or ev.channel:
            task = start_task(self.link.loop, self._run_stream_call(ev, received, fn, kind, args, kwargs))
        elif kind == ASYNC_GEN:
            self._reply_error(
                cid,
                "InvalidCall",
                f"{method!r} is a streaming method (an async generator): call it with "
                f"peer.stream({method!r}, ...), or peer.channel({method!r}, items, ...) when it takes an input stream",
                False,
            )
            return
        elif kwargs:
            task = start_task(
                self.link.loop,
                self._run_call(cid, method, lambda: fn(*args, **kwargs), ev.deadline, fn, args, kwargs, received),
            )
        else:
            loop = self.link.loop  # start_task, inline: every async call's path
            coro = self._run_call(cid, method, lambda: fn(*args), ev.deadline, fn, args, None, received)
            if _EAGER is None or loop.get_task_factory() is not None:
                task = loop.create_task(coro)
            else:
                task = _EAGER(loop, coro)
        self._watch(cid, task, ev.stream or ev.channel)

    def _watch(self, cid: int, task: asyncio.Task[Any], stream: bool) -> None:
        if _EAGER is not None and task.done():  # started eagerly and finished: answered already
            self._call_task_done(cid, stream, task)
            return
        self.tasks[cid] = task
        task.add_done_callback(functools.partial(self._call_task_done, cid, stream))

    def call(self, cid: int, method: str, payload: Payload, raw: bool) -> bytes | None:
        """A plain call (no stream, channel, deadline or keyword arguments) the core
        admitted (``Connection.take_call``): a sync handler with no spec runs here, at
        once; any other goes through :meth:`on_request`, as its event. Returns the
        handler's result when it is bytes, for the caller to send (``RpcPeer._answer``):
        None once the call is answered or runs on."""
        found, spec = self.find(method)
        # A spec converts arguments to their annotations or checks authorize: on_request's
        # (raw bytes stay here when they need neither: _raw_ok, inline).
        if (
            found is None
            or found[1] != SYNC
            or (
                spec is not None
                and (not raw or spec.authorize is not None or (spec.args is not None and not spec.args.raw_ok))
            )
        ):
            self.on_request(E.RequestReceived(cid, method, payload, raw))
            return None
        fn = found[0]
        if raw:
            args: tuple[Any, ...] = (bytes(payload),)
        else:
            try:
                args = self._args(payload, False)
            except Exception as exc:
                self._reply_error(cid, "InvalidArguments", f"{method}(): {exc}", False)
                return None
        try:  # as on_request's sync case
            result = fn(*args)
        except (Exception, asyncio.CancelledError) as exc:
            self._reply_exception(cid, exc, method, fn, args)
            return None
        if type(result) is bytes and not self.link.closed:
            return result
        self._sync_result(cid, method, result, None)
        return None

    def called(
        self, cid: int, method: str, fn: Callable[..., Any], arg: bytes, result: Any, exc: BaseException | None
    ) -> bytes | None:
        """The end of :meth:`call` for a call whose handler the compiled call lane ran
        (``frames.CallLane``) and did not answer itself: its exception (``exc``), or a
        ``result`` the lane does not write. The answer to send, or None, as ``call``."""
        if exc is not None:
            self._reply_exception(cid, exc, method, fn, (arg,))
        elif type(result) is bytes and not self.link.closed:
            return result
        else:
            self._sync_result(cid, method, result, None)
        return None

    def _sync_result(self, cid: int, method: str, result: Any, deadline: float | None, received: float = 0.0) -> None:
        """A sync handler's result: its answer queued at once (a task only for an
        awaitable, within the caller's ``deadline`` from ``received``, the loop time
        of the call's receipt). The callers answer bytes themselves (every raw echo's
        path): bytes reach here only once the connection is closed."""
        rt = type(result)
        if rt in _PLAIN or not inspect.isawaitable(result):
            link = self.link
            if link.closed:
                return
            try:
                payload, raw = link.codec.encode(result)
            except Exception as exc:
                self._reply_exception(cid, exc, method, what="encoding the result")
                return
            # Called from the peer's _process: the reply leaves once the message
            # (or the read) is handled, so no host.flush() here, unlike _reply.
            link.core.send_response(cid, payload, raw)
            return
        task = start_task(
            self.link.loop, self._run_call(cid, method, _returning(result), deadline, None, (), None, received)
        )
        if inspect.iscoroutine(result):
            # Cancelled before it ran (CANCEL in its request's message, a disconnect):
            # the coroutine is closed, not left to warn that it was never awaited.
            task.add_done_callback(functools.partial(_close_coroutine, result))
        self._watch(cid, task, False)

    def _refuse(self, ev: E.RequestReceived, type_name: str, message: str) -> None:
        """Answer a call that will not run with an error (a channel's input, should it
        come, is refused too)."""
        if ev.channel and not self.link.closed:
            self.link.core.close_stream(ev.call_id)
        self._reply_error(ev.call_id, type_name, message, ev.stream)

    def _call_task_done(self, cid: int, stream: bool, task: asyncio.Task[Any]) -> None:
        if self.abandoned and task in self.abandoned:
            # Given up on (give_up): its id may be another call's by now (a new session).
            del self.abandoned[task]
            return
        self.tasks.pop(cid, None)
        if self.link.core.is_running(cid) and not self.link.closed:
            # Cancelled before it ran (CANCEL in the same message as its REQUEST): the
            # caller still needs the call's end, or its slot stays taken on both sides.
            if stream:
                self.link.core.close_stream(cid)  # a channel's input, if any
            self._reply_error(cid, "CancelledError", "call cancelled", stream)

    def _reply(self, cid: int, result: Any, method: str) -> None:
        if self.link.closed or (self.abandoned and asyncio.current_task() in self.abandoned):
            return
        try:
            payload, raw = self.link.codec.encode(result)
        except Exception as exc:
            self._reply_exception(cid, exc, method, what="encoding the result")
            return
        self.link.core.send_response(cid, payload, raw=raw)
        self.link.host.flush()

    def _reply_exception(
        self,
        cid: int,
        exc: BaseException,
        method: str,
        fn: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        what: str = "handler",
    ) -> None:
        type_name = type(exc).__name__
        why: str | None = None
        code: Any = None
        tb: str | None = None
        try:
            if fn is not None and isinstance(exc, TypeError):
                # The arguments did not bind to the handler's signature: the caller's fault.
                why = bad_arguments(fn, args, kwargs)
            if why is None:
                self._log_failure(method, exc, what)
                message = str(exc)
                tb = "".join(_traceback.format_exception(exc)) if self.expose_tb else None
                code = getattr(exc, "code", None)
                # Only a code the wire can carry (not a JSON-RPC style -32602): else none.
                code = int(code) if isinstance(code, int) and 0 <= code < VARINT_MAX else None
        except Exception:  # an exception that cannot describe itself (its __str__ raises ...)
            self.logger.debug("describing the error of %r raised", method, exc_info=True)
            why, code, tb = None, None, None
            message = "(the handler's exception could not be described)"
        if why is not None:
            self.logger.debug("call to %r from %s: invalid arguments: %s", method, self.address(), why)
            self._reply_error(cid, "InvalidArguments", f"{method}(): {why}", False)
            return
        self._reply_error(cid, type_name, message, False, code, tb)

    def _reply_error(
        self,
        cid: int,
        type_name: str,
        message: str,
        stream: bool,
        code: int | None = None,
        tb: str | None = None,
    ) -> None:
        if self.link.closed or (self.abandoned and asyncio.current_task() in self.abandoned):
            return  # (an abandoned handler's: see give_up)
        core = self.link.core
        if stream:
            core.open_response_stream(cid)
            core.error_stream(cid, type_name, message, code)
            core.finish_call(cid)
        else:
            core.send_error(cid, type_name, message, code, tb)
        self.link.host.flush()

    async def _run_call(
        self,
        cid: int,
        method: str,
        invoke: Callable[[], Awaitable[Any]],
        deadline: float | None,
        fn: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        received: float = 0.0,
    ) -> None:
        """Run a call's handler (``invoke()``) and answer it; ``deadline``: the
        caller's timeout in seconds, counted from ``received``, the loop time of the
        call's receipt."""
        timer: asyncio.Timeout | None = None
        try:
            if deadline is not None:
                # (not wait_for: the caller's timeout and the handler's own TimeoutError
                # are told apart, and a cancellation is never lost on 3.11)
                timer = asyncio.timeout_at(received + deadline)
                async with timer:
                    result = await invoke()
            else:
                result = await invoke()
        except asyncio.CancelledError:
            self._reply_error(cid, "CancelledError", "call cancelled", False)
            raise
        except Exception as exc:
            if timer is not None and timer.expired() and isinstance(exc, TimeoutError):
                self._reply_error(cid, "TimeoutError", _late(method, deadline), False)
            else:
                self._reply_exception(cid, exc, method, fn, args, kwargs)
        else:
            self._reply(cid, result, method)

    async def _run_stream_call(self, ev: E.RequestReceived, received: float, *call: Any) -> None:
        """A streaming call (``call``: :meth:`_stream_call`'s arguments after the
        deadline), within the caller's timeout when it sent one (counted from
        ``received``, the loop time of the call's receipt)."""
        if ev.deadline is None:
            await self._stream_call(ev, None, *call)
            return
        # The caller's timeout covers the whole call: when it passes, the handler is
        # cancelled and the stream ends with TimeoutError (as a plain call answers).
        try:
            async with asyncio.timeout_at(received + ev.deadline) as deadline:
                await self._stream_call(ev, deadline, *call)
        except TimeoutError:
            if not deadline.expired():
                raise  # (not ours: the handler's own, already sent as its error)

    async def _stream_call(
        self,
        ev: E.RequestReceived,
        deadline: asyncio.Timeout | None,
        fn: Callable[..., Any],
        kind: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
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
                source = fn(*args, **kwargs) if kwargs else fn(*args)
                if kind != ASYNC_GEN and inspect.isawaitable(source):
                    source = await source
                if not hasattr(source, "__aiter__"):
                    if ev.stream and kind != ASYNC_GEN:
                        source = _single(source)
                    else:
                        raise TypeError(f"handler for {ev.method!r} did not return an async iterable")
            except asyncio.CancelledError:
                if not self.link.closed:  # the caller waits for the call's end
                    if deadline is not None and deadline.expired():
                        self._reply_error(cid, "TimeoutError", _late(ev.method, ev.deadline), True)
                    else:
                        self._reply_error(cid, "CancelledError", "call cancelled", True)
                raise
            except Exception as exc:
                type_name, message = type(exc).__name__, str(exc)
                why = (
                    bad_arguments(fn, args[1:] if ev.channel else args, kwargs) if isinstance(exc, TypeError) else None
                )
                if why is not None:
                    type_name, message = "InvalidArguments", f"{ev.method}(): {why}"
                else:
                    self._log_failure(ev.method, exc)
                if not self.link.closed:
                    core.open_response_stream(cid)
                    core.error_stream(cid, type_name, message)
                    core.finish_call(cid)
                    self.link.host.flush()
                return
            if self.link.closed:
                return
            core.open_response_stream(cid)
            log = functools.partial(self._log_failure, ev.method)
            if deadline is None:
                await manager.run_sender(cid, source, None, log)
            else:
                await manager.run_sender(
                    cid, source, None, log, lambda: _late(ev.method, ev.deadline) if deadline.expired() else None
                )
        finally:
            if inbound is not None:
                inbound.close()  # while the call runs: the core knows it is a channel input
            core.finish_call(cid)


def authorize(
    check: Callable[[Any, str], Any], host: Any, method: str, logger: logging.Logger, address: Callable[[], Any]
) -> None:
    """Ask a method's ``authorize`` hook ``check`` whether ``host`` (the connection's
    peer: an :class:`fastrpc.RpcPeer`, or a :class:`fastrpc.jsonmode.JsonPeer` in JSON
    mode) may call ``method``; :class:`PermissionDenied` if not. It fails closed: a
    hook that raises refuses (its own :class:`PermissionDenied` as it is; another
    exception, a bug in the hook, is the server's business, not the caller's: logged
    on ``logger`` with ``address()``, the caller's address), and so does one that
    answers with an awaitable (authorize must answer at once)."""
    try:
        allowed = check(host, method)
    except PermissionDenied:
        raise
    except Exception as exc:
        warn_limited(
            logger, "authorize hook raised for %r from %s (call refused): %s", method, address(), _describe(exc)
        )
        logger.debug("authorize hook for %r raised", method, exc_info=exc)
        allowed = False
    if inspect.isawaitable(allowed):
        if inspect.iscoroutine(allowed):
            allowed.close()
        allowed = False
    if not allowed:
        raise PermissionDenied("PermissionDenied", f"not allowed to call {method!r}")


def _raw_ok(spec: MethodSpec, channel: bool) -> bool:
    """Whether a call of ``spec``'s method whose one argument is raw bytes may reach its
    handler as is: no ``authorize`` hook to ask, and annotations (if any) that take
    bytes unconverted. (Methods with no spec never get here: no cost on their path.)"""
    if spec.authorize is not None:
        return False
    args = spec.args
    if args is not None and channel:
        args = args.channel
    return args is None or args.raw_ok


def _describe(exc: BaseException) -> str:
    """``"Type: message"`` of ``exc``, for a log line (even when its ``__str__`` raises)."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__


def _late(method: str, deadline: float | None) -> str:
    """The TimeoutError message of a call (plain or streaming) that outlived its
    caller's timeout."""
    return f"{method!r} did not finish within the caller's timeout of {deadline} s"


def _close_coroutine(coro: Any, task: asyncio.Task[Any]) -> None:
    """``coro``'s task is done: close it (nothing when it ran; when the task was
    cancelled before it started, no 'never awaited' RuntimeWarning)."""
    coro.close()


def _returning(value: Any) -> Callable[[], Any]:
    """``lambda: value``, made here: a lambda in the function that calls this would
    make ``value`` a cell on each of its calls (a sync handler's every call)."""
    return lambda: value


async def _single(value: T) -> Any:
    yield value


class _Stopping(asyncio.Future[None]):
    """Stands for handler tasks being stopped (:meth:`Handlers.running`): its
    ``cancel()`` cancels them (not itself, as a task's may not); it is done once they
    all are, or :data:`HANDLER_STOP_TIMEOUT` seconds after the first ``cancel()``, when
    those still running are given up on (:meth:`Handlers.give_up`)."""

    def __init__(self, handlers: Handlers, tasks: list[asyncio.Task[Any]]) -> None:
        super().__init__(loop=handlers.link.loop)
        self._handlers = handlers
        self._tasks = tasks
        self._left = len(tasks)
        self._timer: asyncio.TimerHandle | None = None
        for task in tasks:
            task.add_done_callback(self._stopped)

    def cancel(self, msg: Any | None = None) -> bool:
        if self.done():
            return False
        for task in self._tasks:
            task.cancel(msg)
        if self._timer is None:
            self._timer = self.get_loop().call_later(HANDLER_STOP_TIMEOUT, self._give_up)
        return True

    def _stopped(self, task: asyncio.Task[Any]) -> None:
        self._left -= 1
        if self._left == 0 and not self.done():
            if self._timer is not None:
                self._timer.cancel()
            self.set_result(None)

    def _give_up(self) -> None:
        if not self.done():
            self._handlers.give_up([t for t in self._tasks if not t.done()])
            self.set_result(None)


def _method_of(task: asyncio.Task[Any]) -> str:
    """The method whose handler ``task`` runs (:meth:`Handlers._run_call`'s, or
    ``_quiet``'s, ``method``; a streaming call's ``ev``), for a log line; "?" when
    that cannot be told."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    if frame is None:
        return "?"
    local = frame.f_locals
    method = local.get("method")
    if method is None and "ev" in local:
        method = getattr(local["ev"], "method", None)
    return str(method) if method is not None else "?"
