"""Keepalive: a PING every ``keepalive_interval`` seconds; no PONG within
``keepalive_timeout`` and the transport is dropped (a resumable session then waits for
its client; any other is cleaned up).

Deadlines live on one event-loop timer per loop (:class:`_Timers`): a TimerHandle per
connection costs about half a KiB of an idle one, and an idle connection keeps no
coroutine for keepalive.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["Keepalive", "Timer", "timer"]

logger = logging.getLogger("fastrpc.keepalive")


class Timer:
    """A keepalive deadline in a :class:`_Timers` heap; ``cancel()`` disarms it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn: Callable[[], None] | None = fn

    def cancel(self) -> None:
        """Disarm it (its heap entry is dropped when it comes up, or when the heap is rebuilt)."""
        self.fn = None


class _Timers:
    """One event-loop timer for the keepalive deadlines of all the connections of a
    loop (a TimerHandle per connection costs about half a KiB of an idle one).

    A cancelled deadline stays in the heap until it comes up (a closed connection's
    next ping, up to ``ping_interval`` later); so that connections opened and closed
    fast do not pile them up, the heap is rebuilt without them once it has grown to
    twice what it held after the last rebuild (at least ``_COMPACT_MIN`` entries):
    at most about twice the live deadlines, for O(1) amortized work an ``add``."""

    __slots__ = ("at", "handle", "heap", "limit", "loop", "seq")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, Timer]] = []
        self.handle: asyncio.TimerHandle | None = None
        self.at = 0.0
        self.seq = 0
        self.limit = _COMPACT_MIN  # rebuild the heap past this many entries

    def add(self, delay: float, fn: Callable[[], None]) -> Timer:
        when = self.loop.time() + delay
        t = Timer(fn)
        self.seq += 1
        heap = self.heap
        if len(heap) >= self.limit:
            self._compact()
        heapq.heappush(heap, (when, self.seq, t))
        if self.handle is None or when < self.at:
            self._arm(when)
        return t

    def _compact(self) -> None:
        """Drop the cancelled deadlines (in place: the heap keeps its identity)."""
        heap = self.heap
        heap[:] = [entry for entry in heap if entry[2].fn is not None]
        heapq.heapify(heap)
        self.limit = max(_COMPACT_MIN, 2 * len(heap))

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.at = when
        self.handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.handle = None
        heap = self.heap
        now = self.loop.time()
        while heap and heap[0][0] <= now:
            fn = heapq.heappop(heap)[2].fn
            if fn is not None:
                try:
                    fn()
                except Exception:  # one connection's failure must not stop every other's timer
                    logger.exception("keepalive callback %r failed", fn)
        while heap and heap[0][2].fn is None:
            heapq.heappop(heap)
        # A callback may have added a deadline (and armed the timer for it) while
        # earlier ones wait in the heap: the timer goes off for the earliest.
        if heap and (self.handle is None or heap[0][0] < self.at):
            self._arm(heap[0][0])


# The smallest heap that is rebuilt: below it, cancelled deadlines cost less than
# scanning for them.
_COMPACT_MIN = 64


_loop_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Timers] = weakref.WeakKeyDictionary()


def timer(loop: asyncio.AbstractEventLoop, delay: float, fn: Callable[[], None]) -> Timer:
    """Call ``fn`` in ``delay`` seconds, on the one timer of ``loop``'s deadlines
    (cheaper than a TimerHandle per idle connection); ``cancel()`` the result to
    disarm it."""
    timers = _loop_timers.get(loop)
    if timers is None:
        timers = _loop_timers[loop] = _Timers(loop)
    return timers.add(delay, fn)


class KeepaliveHost(Protocol):
    """What a :class:`Keepalive` asks of its connection."""

    def keepalive_ping(self, token: bytes) -> object | None:
        """Queue a PING with ``token``; return a handle of the transport it probes, or
        None when there is none to probe (a session waiting for its client)."""

    def keepalive_expired(self, handle: object) -> None:
        """No PONG came in time for the PING sent on ``handle``."""


class Keepalive:
    """The keepalive of one connection (its ``host``): the next PING is scheduled
    again when the host has nothing to probe."""

    __slots__ = ("host", "interval", "loop", "stopped", "timeout", "timer", "token")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float | None, timeout: float | None, host: KeepaliveHost
    ) -> None:
        self.loop = loop
        self.interval = interval
        self.timeout = timeout
        self.host = host  # one reference, not two bound methods: idle connections are many
        self.timer: Timer | None = None
        self.token: bytes | None = None  # the payload of the PING awaiting its PONG
        self.stopped = False

    def start(self) -> None:
        """Ping again ``interval`` seconds from now."""
        if self.interval and not self.stopped:
            self.timer = timer(self.loop, self.interval, self._ping)

    def _ping(self) -> None:
        self.timer = None
        token = os.urandom(8)
        handle = self.host.keepalive_ping(token)
        if handle is None:
            self.start()  # nothing to probe now
            return
        self.token = token
        if self.timeout is not None:
            self.timer = timer(self.loop, self.timeout, lambda: self._expire(handle))

    def pong(self, payload: bytes) -> bool:
        """A PONG arrived: True when it answers the keepalive PING (the next one is
        then scheduled)."""
        if payload != self.token:
            return False
        self.token = None
        if self.timer is not None:
            self.timer.cancel()
        self.start()
        return True

    def _expire(self, handle: object) -> None:
        self.timer = None
        self.token = None
        if not self.stopped:
            self.host.keepalive_expired(handle)
            self.start()

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
