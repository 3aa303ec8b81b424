"""``busy_poll``: after a write, the event loop polls its sockets for a while instead
of sleeping, so that the reply is read without waking a sleeping CPU.

On a host where waking an idle CPU is slow (a virtual machine, deep power-saving
states), most of a sequential call's time is the two wake-ups: on the 2-vCPU guest
``bench/README.md`` measures ("Where a sequential call's time goes"), about 70 % of
a loopback call. Given to :func:`fastrpc.serve` / :func:`fastrpc.connect` as
``busy_poll=seconds`` (default None: off), each write on one of their connections
keeps the loop running passes that poll with a zero timeout for up to that long,
or longer if another write extends it. Other callbacks, tasks and timers run as
usual in those passes; when the time is up the loop sleeps as before.

The cost is CPU, and each connection spends it only where it pays (:class:`PollWindow`):
a read that comes later than ``busy_poll`` after the write before it (a peer that
thinks, a subscriber that never answers) could not have been caught, and
:data:`CLOSE_AFTER` such reads in a row close the connection's window. A closed
window polls after one write in :data:`PROBE_EVERY` only, and opens again at the first
read that comes within ``busy_poll``. So a connection whose peer answers within
``busy_poll`` polls as before, and one whose peer does not costs at most ``busy_poll /
PROBE_EVERY`` of CPU per write once its window has closed. It pays where latency
matters more than an idle core, like Linux's ``SO_BUSY_POLL``; leave it off where CPU
is shared or billed. All the connections of a loop share one poller: a pass costs one
callback however many of them poll. The data path only: a connection carried by
websockets' own connection (a websockets option the data path does not implement)
does not poll.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable

__all__ = [
    "CLOSE_AFTER",
    "MAX_BUSY_POLL",
    "PROBE_EVERY",
    "PollWindow",
    "Poller",
    "busy_poll_option",
    "poll_window",
    "poller",
]

MAX_BUSY_POLL = 1.0  # seconds: more is a unit mistake (microseconds given as seconds)
CLOSE_AFTER = 4  # reads in a row later than busy_poll close a connection's window
PROBE_EVERY = 16  # a closed window still polls after one write in this many


def busy_poll_option(value: object) -> float | None:
    """``busy_poll`` checked: seconds in (0, ``MAX_BUSY_POLL``], or None (also for 0): off."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"busy_poll is a number of seconds (50e-6 polls 50 us after each write), not {value!r}")
    if not 0 <= value <= MAX_BUSY_POLL:
        raise ValueError(
            f"busy_poll is in seconds, from 0 (off) to {MAX_BUSY_POLL:g} (50e-6 polls 50 us after each write), "
            f"not {value!r}"
        )
    return float(value) or None


class Poller:
    """Keeps one event loop polling until a deadline that each :meth:`arm` may push
    back: a callback that schedules itself while the deadline is ahead (a loop with a
    ready callback polls without blocking), and stops scheduling itself after it.

    Deadlines are on :attr:`clock` (``time.monotonic``), not the loop's: uvloop's
    ``loop.time()`` counts whole milliseconds, which would stretch a 50 us poll to
    anything up to a millisecond."""

    __slots__ = ("_loop", "_running", "_until", "clock", "passes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.clock: Callable[[], float] = time.monotonic
        self._until = 0.0
        self._running = False
        self.passes = 0  # loop passes this poller has kept from sleeping

    @property
    def polling(self) -> bool:
        """Whether the loop is kept polling now."""
        return self._running

    def arm(self, seconds: float) -> None:
        """Keep the loop polling for ``seconds`` from now, at least."""
        self.arm_until(self.clock() + seconds)

    def arm_until(self, until: float) -> None:
        """Keep the loop polling until ``until`` (on :attr:`clock`), at least."""
        if until > self._until:
            self._until = until
        if not self._running:
            self._running = True
            self._loop.call_soon(self._pass)

    def _pass(self) -> None:
        self.passes += 1
        if self.clock() < self._until:
            self._loop.call_soon(self._pass)
        else:
            self._running = False


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller] = weakref.WeakKeyDictionary()


def poller(loop: asyncio.AbstractEventLoop) -> Poller:
    """The one :class:`Poller` of ``loop``."""
    p = _pollers.get(loop)
    if p is None:
        p = _pollers[loop] = Poller(loop)
    return p


class PollWindow:
    """Whether one connection keeps its loop polling after a write: its transport
    calls :meth:`wrote` after each write and :meth:`read` at each read.

    Open (as it starts), the window polls for ``limit`` (``busy_poll``) after each
    write. A read that comes later than ``limit`` after the last write could not have
    been caught by polling; :data:`CLOSE_AFTER` of them in a row close the window (one
    late read, a hiccup, does not). Closed, it polls after one write in
    :data:`PROBE_EVERY` only, and the first read that comes within ``limit`` of the
    last write (a probe's, or one quick even after a sleep) opens it again."""

    __slots__ = ("_clock", "_late", "_poller", "_skipped", "_wrote", "limit", "open")

    def __init__(self, poller: Poller, limit: float) -> None:
        self._poller = poller
        self._clock = poller.clock
        self.limit = limit
        self.open = True
        self._wrote = -1.0  # the clock's time of the last write not yet followed by a read
        self._late = 0  # reads in a row later than limit
        self._skipped = 0  # writes not polled after since the window closed

    def wrote(self) -> None:
        """A write on the connection: keep the loop polling for ``limit`` if open."""
        now = self._clock()
        self._wrote = now
        if not self.open:
            self._skipped += 1
            if self._skipped < PROBE_EVERY:
                return
            self._skipped = 0  # the probe: would polling catch the next read?
        self._poller.arm_until(now + self.limit)

    def read(self) -> None:
        """A read on the connection: on time or late, counted from the last write."""
        wrote = self._wrote
        if wrote < 0:
            return  # no write since the last read
        self._wrote = -1.0
        if self._clock() - wrote <= self.limit:
            self._late = 0
            self.open = True
        elif self.open:
            self._late += 1
            if self._late >= CLOSE_AFTER:
                self.open = False
                self._skipped = 0


def poll_window(loop: asyncio.AbstractEventLoop, seconds: float | None) -> PollWindow | None:
    """A connection's :class:`PollWindow` on ``loop``'s poller, of at most
    ``seconds``; None when ``seconds`` is None (off)."""
    if seconds is None:
        return None
    return PollWindow(poller(loop), seconds)
