"""What a peer can make one connection spend: memory (:class:`MemoryBudget`) and
PINGs answered (:class:`PingLimit`).

The memory budget: every byte a peer can make us hold.

Charged to it (and released when no longer held): items received and not yet read
(as held: compressed items as received, inflated only as they are read), the
reassembly of fragmented items, the errors of ended streams not yet read, and the arguments of the peer's calls while their
handlers run (at what decoding them will allocate: ``frames.payload_cost``), and of its notifications while their
async handlers run (``handlers.Handlers.on_notify``). Past ``max_connection_memory`` the
connection is closed (LimitExceeded, close code 1008); other connections are not
touched. The windows bound each stream; this bounds their sum, and what windows do
not see (partial items, call arguments at their decoded cost).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .exceptions import LimitExceeded

__all__ = ["MemoryBudget", "PingLimit"]


class MemoryBudget:
    """Bytes held for one connection, and their limit."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def charge(self, n: int, what: str) -> None:
        """Hold ``n`` more bytes for ``what``; :class:`LimitExceeded` past the limit."""
        held = self.held + n
        self.held = held
        if held > self.limit:
            raise LimitExceeded(
                f"the peer made this connection hold {held} bytes ({what}), over max_connection_memory ({self.limit})"
            )

    def release(self, n: int) -> None:
        self.held -= n


class PingLimit:
    """A token bucket over the PINGs a peer sends: bursts of ``burst``, ``rate`` a
    second on average. Every PING costs us a PONG; a peer that reads its PONGs can
    still ask for them as fast as it writes (an echo at the price of a frame header),
    and keepalive or a round-trip measurement needs a few a second at most.
    """

    __slots__ = ("burst", "clock", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()

    def take(self) -> bool:
        """Count one PING; False when the peer is over the limit."""
        now = self.clock()
        tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def describe(self, option: str) -> str:
        """Why a peer over the limit is closed, naming the option that sets it."""
        return f"the peer sent PINGs faster than {self.rate:g} a second (bursts of {self.burst}; {option})"
