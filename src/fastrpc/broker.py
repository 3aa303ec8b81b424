"""Brokers: where a topic's items get their ``(epoch, offset)``, its history window
is kept, and items published on one process reach the others.

:class:`MemoryBroker` (the default) serves one process and needs no setup;
:class:`fastrpc.redis_broker.RedisBroker` shares topics between worker processes.
A broker knows nothing of connections: :class:`fastrpc.topics.TopicHub` fans each
item it delivers out to the subscribers of its process.
"""

from __future__ import annotations

import os
import time
from collections import deque
from itertools import islice
from typing import Any, Protocol

from . import options as O

__all__ = ["Broker", "History", "MemoryBroker", "Sink", "new_epoch"]


class Sink(Protocol):
    """Where a broker delivers (a :class:`fastrpc.topics.TopicHub`)."""

    def deliver(self, topic: str, epoch: str, offset: int, value: Any) -> None:
        """One item published (on any process); called in offset order per topic."""

    def reconnected(self) -> None:
        """The broker's live feed was down and is back: items may have been missed
        (or the broker lost its state): check every topic against the history."""


def new_epoch() -> str:
    """A fresh epoch: names one life of a topic's offsets (they restart with it)."""
    return os.urandom(6).hex()


class History:
    """What a broker holds of one topic: its ``epoch``, the oldest offset still in
    its window (``first``; ``last + 1`` when the window is empty), the newest offset
    given out (``last``; 0 before the first item), and ``items`` ``(offset, value)``
    after the position asked for, oldest first."""

    __slots__ = ("epoch", "first", "items", "last")

    def __init__(self, epoch: str, first: int, last: int, items: list[tuple[int, Any]]) -> None:
        self.epoch = epoch
        self.first = first
        self.last = last
        self.items = items

    def __repr__(self) -> str:
        return f"History(epoch={self.epoch!r}, first={self.first}, last={self.last}, items={len(self.items)})"


class Broker(Protocol):
    """The interface :class:`fastrpc.topics.TopicHub` uses."""

    async def start(self, sink: Sink) -> None:
        """Begin delivering every item published on any process to ``sink``."""

    async def publish(self, topic: str, value: Any) -> tuple[str, int]:
        """Give ``value`` the topic's next offset, keep it in the history window,
        deliver it everywhere; return its ``(epoch, offset)``."""

    async def history(self, topic: str, after: int | None) -> History:
        """The topic's position, and (``after`` not None) the items in its window
        with offsets greater than ``after``."""

    async def close(self) -> None:
        """Stop delivering; release connections."""


class _Topic:
    __slots__ = ("items", "last")

    def __init__(self) -> None:
        self.last = 0
        self.items: deque[tuple[int, float, Any]] = deque()  # (offset, published at, value)


class MemoryBroker(Broker):
    """One process's topics, in memory: the default broker.

    ``history_size`` items at most, none older than ``history_ttl`` seconds, are kept
    per topic for subscribers that resume. One epoch for all topics: offsets restart
    only with the process. Only publishing creates a topic (subscribers, whatever
    names they ask for, leave nothing behind).
    """

    def __init__(self, history_size: int = O.TOPIC_HISTORY_SIZE, history_ttl: float = O.TOPIC_HISTORY_TTL) -> None:
        if history_size < 0 or history_ttl < 0:
            raise ValueError("history_size and history_ttl must be >= 0")
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._topics: dict[str, _Topic] = {}
        self._sink: Sink | None = None
        self.epoch = new_epoch()

    async def start(self, sink: Sink) -> None:
        self._sink = sink

    def __len__(self) -> int:
        """Topics published to so far (each keeps its offset and window)."""
        return len(self._topics)

    def _topic(self, name: str) -> _Topic:
        t = self._topics.get(name)
        if t is None:
            t = self._topics[name] = _Topic()
        return t

    def _trim(self, t: _Topic, now: float) -> None:
        items = t.items
        oldest = now - self.history_ttl
        while items and (len(items) > self.history_size or items[0][1] < oldest):
            items.popleft()

    async def publish(self, topic: str, value: Any) -> tuple[str, int]:
        return self.publish_now(topic, value)

    def publish_now(self, topic: str, value: Any) -> tuple[str, int]:
        """:meth:`publish` without awaiting (the in-memory broker never waits)."""
        t = self._topic(topic)
        t.last += 1
        now = time.monotonic()
        if self.history_size:
            t.items.append((t.last, now, value))
        self._trim(t, now)
        if self._sink is not None:
            self._sink.deliver(topic, self.epoch, t.last, value)
        return self.epoch, t.last

    async def history(self, topic: str, after: int | None) -> History:
        t = self._topics.get(topic)
        if t is None:
            return History(self.epoch, 1, 0, [])
        self._trim(t, time.monotonic())
        first = t.items[0][0] if t.items else t.last + 1
        # Offsets in the window are consecutive: the first wanted is at after + 1 - first.
        skip = 0 if after is None else max(0, after + 1 - first)
        items = [] if after is None else [(o, v) for o, _, v in islice(t.items, skip, None)]
        return History(self.epoch, first, t.last, items)

    async def close(self) -> None:
        self._sink = None
