"""The memory budget of one connection: every byte a peer can make us hold.

Charged to it (and released when no longer held): items received and not yet read
(as held: compressed items as received, inflated only as they are read), the
reassembly of fragmented items, and the arguments of the peer's calls while their
handlers run (at what decoding them will allocate: ``frames.payload_cost``). Past ``max_connection_memory`` the
connection is closed (LimitExceeded, close code 1008); other connections are not
touched. The windows bound each stream; this bounds their sum, and what windows do
not see (partial items, call arguments at their decoded cost).
"""

from __future__ import annotations

from .exceptions import LimitExceeded

__all__ = ["MemoryBudget"]


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
