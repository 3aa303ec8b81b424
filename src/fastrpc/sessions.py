"""Where a server keeps sessions that may be resumed.

The default keeps them in this process's memory. When several worker processes serve
one address, a reconnect may land on another process: a store shared between them
(and a way to hand the live session over) plugs in here.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

__all__ = ["MemorySessionStore", "SessionStore"]

S = TypeVar("S")


class SessionStore(Protocol[S]):
    """Sessions by their current token (32 random bytes, rotated on each resume)."""

    def get(self, token: bytes) -> S | None:
        """The session holding ``token``, or None (unknown, expired or rotated)."""

    def put(self, token: bytes, session: S) -> None:
        """Record that ``session`` now holds ``token``."""

    def discard(self, token: bytes, session: S) -> None:
        """Forget ``token`` if ``session`` still holds it."""

    def __len__(self) -> int: ...


class MemorySessionStore(Generic[S]):
    """The default :class:`SessionStore`: a dict in this process."""

    def __init__(self) -> None:
        self._by_token: dict[bytes, S] = {}

    def get(self, token: bytes) -> S | None:
        """The session holding ``token``, or None."""
        return self._by_token.get(token)

    def put(self, token: bytes, session: S) -> None:
        """Record that ``session`` now holds ``token``."""
        self._by_token[token] = session

    def discard(self, token: bytes, session: S) -> None:
        """Forget ``token`` if ``session`` still holds it."""
        if self._by_token.get(token) is session:
            del self._by_token[token]

    def __len__(self) -> int:
        return len(self._by_token)
