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

The cost is CPU: up to ``busy_poll`` seconds of one core for each write that no
reply follows within that time. It pays where latency matters more than an idle
core, like Linux's ``SO_BUSY_POLL``; leave it off where CPU is shared or billed.
All the connections of a loop share one poller: a pass costs one callback however
many of them poll. The data path only: a connection carried by websockets' own
connection (a websockets option the data path does not implement) does not poll.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable
from functools import partial

__all__ = ["MAX_BUSY_POLL", "Poller", "arming", "busy_poll_option", "poller"]

MAX_BUSY_POLL = 1.0  # seconds: more is a unit mistake (microseconds given as seconds)


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
    ready callback polls without blocking), and stops scheduling itself after it."""

    __slots__ = ("_loop", "_running", "_until", "passes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._until = 0.0
        self._running = False
        self.passes = 0  # loop passes this poller has kept from sleeping

    @property
    def polling(self) -> bool:
        """Whether the loop is kept polling now."""
        return self._running

    def arm(self, seconds: float) -> None:
        """Keep the loop polling for ``seconds`` from now, at least."""
        until = self._loop.time() + seconds
        if until > self._until:
            self._until = until
        if not self._running:
            self._running = True
            self._loop.call_soon(self._pass)

    def _pass(self) -> None:
        self.passes += 1
        if self._loop.time() < self._until:
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


def arming(loop: asyncio.AbstractEventLoop, seconds: float | None) -> Callable[[], None] | None:
    """What a connection calls after each write: ``loop``'s poller armed for
    ``seconds``; None when ``seconds`` is None (off)."""
    if seconds is None:
        return None
    return partial(poller(loop).arm, seconds)
