"""Topics: one item published, delivered to every subscriber, resumable by offset.

Server side, :class:`TopicHub` (``server.topics``): ``await server.publish(topic,
item)`` hands the item to the :class:`fastrpc.broker.Broker`, which gives it the
topic's next ``(epoch, offset)``, keeps it in the history window and delivers it to
the hub of every process; the hub wraps it once (:class:`fastrpc.codec.Encoded`, so
it is encoded once per process whatever the number of subscribers) and queues it for
each local subscription under its policy.

Client side, :class:`Subscription` (``peer.subscribe(topic, since=...)``): a
subscription is a streaming call of the built-in method ``SUBSCRIBE`` (nothing new on
the wire; docs/protocol.md, "Topics"). Its stream carries events, each one list:

* ``[0, offset, value]``: an item (the same bytes for every subscriber);
* ``[1, epoch, offset, recovered]``: first, where the subscription starts (after
  ``offset``), and whether it resumed from the position asked for;
* ``[2, count, first, last]``: ``drop_oldest`` dropped ``count`` items, offsets
  ``first``..``last``, before the next item;
* ``[3, epoch, first_available, reason]``: the history window does not reach back to
  the position asked for, or the epoch changed; the stream ends (:class:`HistoryLost`);
* ``[4, reason]``: a ``disconnect`` subscription fell behind; the stream ends
  (:class:`SlowSubscriber`);
* ``[5, first, [value, ...]]``: items at consecutive offsets from ``first``, sent
  only to a client whose HELLO announced ``FEATURE_TOPIC_RUNS``. A loop pass's items
  go to every subscriber that keeps up as the same run events (of up to 256 items),
  each encoded once per process: one frame a subscriber per pass instead of one per
  item, and one decode for the run on the subscriber's side.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, Union

import msgspec

from . import options as O
from .broker import Broker, History, MemoryBroker
from .codec import EncHook, Encoded
from .exceptions import (
    ConnectionClosed,
    HistoryLost,
    PayloadError,
    ProtocolError,
    RemoteStreamError,
    SlowSubscriber,
)
from .log import server_logger
from .streams import ReceiveStream

__all__ = ["POLICIES", "SUBSCRIBE", "Gap", "Item", "Subscription", "TopicHub"]

SUBSCRIBE = "fastrpc.subscribe"  # the built-in streaming method behind peer.subscribe()

BLOCK, DROP_OLDEST, LATEST, DISCONNECT = "block", "drop_oldest", "latest", "disconnect"
POLICIES = (BLOCK, DROP_OLDEST, LATEST, DISCONNECT)

_ITEM, _START, _GAP, _LOST, _SLOW, _RUN = range(6)
_TAKE = 64  # a subscription takes (and decodes) at most this many events at once
_RUN_MAX = 256  # items in one run event (the default queue size: a pass's batch is one run)


class Item(msgspec.Struct, eq=False):
    """One item of a topic: ``value`` at ``(epoch, offset)``.

    A :class:`msgspec.Struct` (made in C: a subscriber makes one per item, ~35 ns
    against ~100 for a plain class); compared and hashed by identity."""

    epoch: str
    offset: int
    value: Any

    def __repr__(self) -> str:
        return f"Item({self.epoch!r}, {self.offset}, {self.value!r})"


class Gap(msgspec.Struct, eq=False):
    """A ``drop_oldest`` subscription fell behind: ``count`` items (offsets ``first``
    to ``last`` of ``epoch``) were dropped before the next item."""

    epoch: str
    count: int
    first: int
    last: int

    def __repr__(self) -> str:
        return f"Gap({self.epoch!r}, count={self.count}, {self.first}..{self.last})"


# --------------------------------------------------------------------- server side


class _Topic:
    """A topic with subscribers on this process."""

    __slots__ = (
        "burst",
        "epoch",
        "filling",
        "full",
        "group",
        "inflight",
        "items",
        "last",
        "limit",
        "local",
        "loop",
        "mine",
        "mine_cap",
        "pending",
        "ready",
        "room",
        "runs",
        "slow",
        "subs",
    )

    def __init__(self, limit: int) -> None:
        self.loop = asyncio.get_running_loop()  # made by a subscription, on its loop
        self.subs: dict[_Sub, None] = {}
        self.epoch: str | None = None  # of the last item delivered here
        self.last = 0
        # Items that came after a hole (a lost broker message) wait while the hole is
        # filled from the history.
        self.filling = False
        self.pending: list[tuple[str, int, Any]] = []
        self.full: set[_Sub] = set()  # `block` subscriptions whose queue is full
        self.room: asyncio.Future[None] | None = None  # publishers wait on it
        # Local publishers: those awaiting the broker, and the offsets they got that
        # the broker has not delivered here yet. `local`: the item being fanned out may
        # be one of theirs (they waited for `full`), which `block` queues past twice
        # the queue size rather than ending the subscription.
        self.inflight = 0
        self.mine: set[int] = set()
        self.mine_cap = 1024  # `mine` is filtered when it grows past this
        self.local = False
        # Items fanned out in this loop pass: past the queue size, a publisher lets
        # the loop run once, so that the connections write what it published.
        self.burst = 0
        self.ready: list[_Sub] = []  # subscriptions with a batch, sent at the pass's end
        # This pass's batches as run events, by (first item, length): subscribers
        # that keep up all have the same batch, so its runs are made and encoded once.
        self.runs: dict[tuple[Encoded, int], list[Encoded] | None] = {}
        # The group: subscriptions that keep up (nothing queued, their sender waiting
        # for an event, the full queue size). A pass's items are appended once to
        # `items`, not pushed to each of them; at the pass's end each member takes
        # items[j:] (j: where it joined, 0 for all but those that joined mid-pass).
        # `slow` holds the others, which `push` sees item by item.
        self.limit = limit
        self.items: list[Encoded] = []
        self.group: dict[_Sub, int] = {}
        self.slow: dict[_Sub, None] = {}

    def add(self, sub: _Sub) -> None:
        self.subs[sub] = None
        self.slow[sub] = None

    def remove(self, sub: _Sub) -> None:
        del self.subs[sub]
        self.slow.pop(sub, None)
        self.group.pop(sub, None)

    def join(self, sub: _Sub) -> None:
        """``sub`` keeps up (see :meth:`_Sub.can_join`): into the group, from the
        next item fanned out."""
        if sub in self.slow:
            del self.slow[sub]
            self.group[sub] = len(self.items)

    def leave(self, sub: _Sub) -> None:
        """``sub`` no longer keeps up (something queued, finished): items by push."""
        if self.group.pop(sub, None) is not None:
            self.slow[sub] = None

    def fan_out(self, epoch: str, offset: int, env: Encoded, value: Any) -> None:
        """An item (``env``: its event, encoded once) to every subscription."""
        if epoch != self.epoch and self.group:
            self.dissolve()  # each member's push decides (a changed epoch ends it)
        self.epoch = epoch
        self.last = offset
        self.count()
        items = self.items
        if self.group:
            items.append(env)
        slow = self.slow
        try:
            for sub in slow:
                sub.push(epoch, offset, env, value)
        except Exception as exc:  # one subscription's failure ends it alone
            subs = list(slow)
            self.rest(subs, subs.index(sub), exc, lambda s: s.push(epoch, offset, env, value))
        # After the others: a member that leaves now is not pushed this item again.
        if len(items) >= self.limit and self.group:
            self.send_group()  # a publisher past the queue size in one pass

    def count(self) -> None:
        """An item fanned out: the first of a loop pass schedules its end."""
        if not self.burst:
            self.loop.call_soon(self.end_pass)
        self.burst += 1

    def end_pass(self) -> None:
        """Each subscription's batch of this pass onto its stream, one connection
        after the other (each connection's objects are touched once per pass, not
        once per item: with a thousand connections that is most of the cost)."""
        self.burst = 0
        if self.group:
            self.send_group()
        else:
            self.items = []
        ready, self.ready = self.ready, []
        try:
            for sub in ready:
                if sub.send_batch() and sub.can_join():
                    self.join(sub)
        except Exception as exc:  # one subscription's failure ends it alone
            # (Listed twice, it is found at its first place: the second try of those
            # in between finds their batch sent.)
            self.rest(ready, ready.index(sub), exc, self._send_ready)
        self.runs.clear()

    def _send_ready(self, sub: _Sub) -> None:
        if sub.send_batch() and sub.can_join():
            self.join(sub)

    def send_group(self) -> None:
        """The group's items onto each member's stream; a member whose stream
        does not take its share whole leaves the group (the rest is queued)."""
        items, self.items = self.items, []
        n = len(items)
        if not n:
            return  # sent at the queue size: every member is at 0
        members = list(self.group.items())
        try:
            for sub, j in members:
                if j < n:
                    sub.send(items if not j else items[j:])
        except Exception as exc:  # one subscription's failure ends it alone
            start = dict(members)
            subs = list(start)
            self.rest(subs, subs.index(sub), exc, lambda s: start[s] < n and s.send(items[start[s] :]))
        self.group = dict.fromkeys(self.group, 0)

    def rest(self, subs: list[_Sub], i: int, exc: Exception, step: Callable[[_Sub], object]) -> None:
        """``subs[i]`` raised ``exc`` in a loop of fan-out: end that subscription
        alone, and do ``step`` for each subscription after it (the slow path: only
        after a failure)."""
        _failed(subs[i], exc)
        for sub in subs[i + 1 :]:
            try:
                step(sub)
            except Exception as e:
                _failed(sub, e)

    def dissolve(self) -> None:
        """Every member back to push, with its share of this pass as its batch."""
        items, self.items = self.items, []
        for sub, j in self.group.items():
            self.slow[sub] = None
            if j < len(items):
                sub.batch = items[j:]
                self.ready.append(sub)
        self.group = {}

    def runs_of(self, batch: list[Encoded]) -> list[Encoded] | None:
        """``batch`` (two items or more) as run events of up to ``_RUN_MAX`` items,
        or None when its offsets are not consecutive."""
        key = (batch[0], len(batch))
        if key in self.runs:
            return self.runs[key]
        runs = None
        # Offsets in a batch only grow: the span says whether they are consecutive.
        if batch[-1].value[1] - batch[0].value[1] == len(batch) - 1:
            runs = [
                Encoded([_RUN, batch[i].value[1], [env.value[2] for env in batch[i : i + _RUN_MAX]]])
                for i in range(0, len(batch), _RUN_MAX)
            ]
        self.runs[key] = runs
        return runs


def _failed(sub: _Sub, exc: Exception) -> None:
    """Fan-out to ``sub`` raised ``exc`` (a bug, not the subscriber's doing): log it
    and end that subscription alone; the other subscriptions, and the publisher, go on."""
    server_logger.error("topic fan-out failed for one subscription; ending it", exc_info=exc)
    sub.finish([_SLOW, f"the server failed to deliver an item ({type(exc).__name__}: {exc})"])


class _Sub:
    """One subscription on this process: its queue and policy."""

    __slots__ = (
        "batch",
        "busy",
        "dropped",
        "end",
        "epoch",
        "first_dropped",
        "full_since",
        "key",
        "last",
        "limit",
        "outlet",
        "owner",
        "policy",
        "queue",
        "runs",
        "topic",
        "waiter",
    )

    def __init__(self, owner: object, topic: _Topic, policy: str, key: str | None, limit: int, runs: bool) -> None:
        self.owner = owner  # the connection that subscribed
        self.runs = runs  # its client reads run events
        self.topic = topic
        self.policy = policy
        self.key = key
        self.limit = limit
        # block / drop_oldest / disconnect: Encoded items in order; latest: key -> item.
        self.queue: deque[Encoded] | dict[Any, Encoded] = {} if policy == LATEST else deque()
        self.epoch: str | None = None  # set once the subscription knows where it starts
        # The newest offset sent (latest: the history's end, or the newest sent
        # straight): offsets up to it are duplicates.
        self.last = 0
        self.dropped = 0
        self.first_dropped = 0
        self.full_since = 0.0  # (block) the loop time its queue last became full
        self.end: list[Any] | None = None  # the last event, then the stream ends
        self.waiter: asyncio.Future[None] | None = None
        # The direct path. Once the live feed starts: the stream's send_now
        # (StreamManager.send_now). While the queue is empty and the sender holds no
        # item of ours (`busy`: between our yield and its next request), live items
        # gather in `batch` and go straight onto the stream at the loop pass's end
        # (_Topic.end_pass); what it cannot take then is queued under the policy, and
        # later items queue behind it until the sender has taken the queue.
        self.outlet: Callable[[list[Encoded]], int] | None = None
        self.busy = False
        self.batch: list[Encoded] = []

    def push(self, epoch: str, offset: int, env: Encoded, value: Any) -> None:
        if self.end is not None:
            return
        if self.epoch is not None and epoch != self.epoch:
            self.finish([_LOST, epoch, offset, "the topic's epoch changed (its broker lost its state)"])
            return
        if not self.queue and self.outlet is not None and not self.busy:
            if offset <= self.last:
                return  # sent already (from the history)
            b = self.batch
            b.append(env)
            if len(b) == 1:
                self.topic.ready.append(self)
            elif len(b) >= self.limit:
                self.send_batch()  # a publisher past the queue size in one pass
            return
        self._queue(env, value)

    def send_batch(self) -> bool:
        """The batch onto the stream, as far as it takes it; the rest to the queue.
        True when it took it all."""
        b = self.batch
        if not b:
            return False
        self.batch = []
        return self.send(b)

    def send(self, b: list[Encoded]) -> bool:
        """Items ``b`` (this pass's, in order) onto the stream as far as it takes
        them; the rest to the queue, and out of the topic's group. True when it
        took them all."""
        outlet = self.outlet
        if outlet is None or self.end is not None:
            return False  # ending: what it was sent ends with it
        runs = self.topic.runs_of(b) if self.runs and len(b) > 1 else None
        if runs is None:
            n = outlet(b)
        else:
            n = min(outlet(runs) * _RUN_MAX, len(b))  # items in the runs taken
        if n:
            self.last = b[n - 1].value[1]
        if n == len(b):
            return True
        self.topic.leave(self)
        for env in b[n:]:
            self._queue(env, env.value[2])
        return False

    def can_join(self) -> bool:
        """Whether this subscription keeps up, so that the topic's group may carry
        its items: live (the feed bound, not ended), nothing queued or batched, its
        sender waiting for an event, the topic's queue size, and no item it holds
        still to come (its history may reach past what was delivered here)."""
        t = self.topic
        return (
            self.end is None
            and self.outlet is not None
            and not self.busy
            and not self.queue
            and not self.batch
            and self.limit == t.limit
            and self.epoch == t.epoch
            and self.last <= t.last
        )

    def _queue(self, env: Encoded, value: Any) -> None:
        q = self.queue
        if self.policy == LATEST:
            k = value.get(self.key) if self.key is not None and isinstance(value, dict) else None
            d: dict[Any, Encoded] = q  # type: ignore[assignment]
            try:
                new = k not in d
            except TypeError:  # an unhashable key value (a list, a dict): as no key
                k = None
                new = k not in d
            if new and len(d) >= self.limit:
                self._drop(d.pop(next(iter(d))))
            d[k] = env  # a newer value for a key keeps the key's place
        else:
            dq: deque[Encoded] = q  # type: ignore[assignment]
            n = len(dq)
            if n >= self.limit:
                if self.policy == DROP_OLDEST:
                    self._drop(dq.popleft())
                elif self.policy == DISCONNECT:
                    self.finish([_SLOW, f"more than topic_queue_size={self.limit} items behind"])
                    return
                elif n >= 2 * self.limit and not self.topic.local:
                    # Items from other processes cannot hold their publishers back.
                    self.finish([_SLOW, f"block: more than 2 x topic_queue_size={self.limit} items behind"])
                    return
            dq.append(env)
            if self.policy == BLOCK and len(dq) >= self.limit:
                full = self.topic.full
                if self not in full:  # (an item taken since resets its clock: _unblock)
                    self.full_since = self.topic.loop.time()
                    full.add(self)
        self._wake()

    def _drop(self, env: Encoded) -> None:
        if not self.dropped:
            self.first_dropped = env.value[1]
        self.dropped += 1

    def finish(self, event: list[Any]) -> None:
        if self.end is None:
            self.topic.leave(self)
            self.end = event
            self.queue.clear()
            self.batch = []
            self._unblock()
            self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _unblock(self) -> None:
        t = self.topic
        if self in t.full:
            t.full.discard(self)
            if not t.full and t.room is not None and not t.room.done():
                t.room.set_result(None)

    def take(self) -> Encoded | list[Any] | None:
        """The next event to send, or None (nothing yet)."""
        q = self.queue
        while q:
            if self.dropped:
                ev: list[Any] = [_GAP, self.dropped, self.first_dropped, self.first_dropped + self.dropped - 1]
                if self.policy == LATEST:
                    ev[3] = -1  # conflated keys are not consecutive
                self.dropped = 0
                return ev
            if type(q) is dict:
                env = q.pop(next(iter(q)))
                offset = env.value[1]
                # Keys are in first-queued order, not offset order (a newer value keeps
                # its key's place): only the history's end marks duplicates.
                if offset <= self.last:
                    continue  # also in the history just sent
                return env
            env = q.popleft()  # type: ignore[union-attr]
            if self.policy == BLOCK and len(q) < self.limit:
                self._unblock()
            offset = env.value[1]
            if offset <= self.last:
                continue  # also in the history just sent
            self.last = offset
            return env
        return self.end


class TopicHub:
    """The topics of one server process (``server.topics``): publishing, and the
    subscriptions of its connections (the built-in method :data:`SUBSCRIBE`)."""

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        queue_size: int = O.TOPIC_QUEUE_SIZE,
        block_timeout: float | None = O.TOPIC_BLOCK_TIMEOUT,
        history_size: int = O.TOPIC_HISTORY_SIZE,
        history_ttl: float = O.TOPIC_HISTORY_TTL,
        pass_deliveries: int = O.TOPIC_PASS_DELIVERIES,
        enc_hook: EncHook | None = None,
    ) -> None:
        if not isinstance(pass_deliveries, int) or pass_deliveries < 1:
            raise ValueError(f"topic_pass_deliveries must be a positive int, not {pass_deliveries!r}")
        if block_timeout is not None and (
            isinstance(block_timeout, bool)
            or not isinstance(block_timeout, (int, float))
            or not 0 < block_timeout < float("inf")
        ):
            raise ValueError(f"topic_block_timeout must be a positive number of seconds or None, not {block_timeout!r}")
        self.broker: Broker = broker if broker is not None else MemoryBroker(history_size, history_ttl)
        # The server's enc_hook, for a broker that encodes items itself (RedisBroker):
        # items of custom types publish on every broker alike.
        use_hooks = getattr(self.broker, "use_hooks", None)
        if enc_hook is not None and use_hooks is not None:
            use_hooks(enc_hook)
        self.queue_size = queue_size
        # How long a `block` subscription's full queue may hold the local publishers
        # with nothing taken (None: as long as it stays full).
        self.block_timeout = block_timeout
        # Deliveries (items x subscriptions) a publisher makes in one loop pass before
        # it lets the connections write: larger passes cost fewer writes a delivery
        # (server CPU), smaller ones let subscribers read sooner (latency at saturation).
        self.pass_deliveries = pass_deliveries
        self._topics: dict[str, _Topic] = {}
        # Publishes in this loop pass, on any topic: past queue_size, publish lets the
        # loop run. (A publish that nothing holds back, no subscriber, the in-memory
        # broker, never suspends: a loop of them would hold the event loop for good.)
        self._published = 0
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the broker's delivery to this hub (once; the server does it)."""
        if not self._started:
            self._started = True
            try:
                await self.broker.start(self)
            except BaseException:
                self._started = False  # the broker cleaned up after itself
                raise

    async def close(self) -> None:
        """End every subscription's delivery and close the broker."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for t in self._topics.values():
            for sub in list(t.subs):
                sub.finish([_SLOW, "server shutdown"])
        if self._started:
            self._started = False
            await self.broker.close()

    def subscribers(self, topic: str) -> int:
        """Subscriptions to ``topic`` on this process."""
        t = self._topics.get(topic)
        return len(t.subs) if t is not None else 0

    def subscriptions_of(self, owner: object) -> int:
        """Subscriptions the connection ``owner`` has open (each is a running call)."""
        return sum(1 for t in self._topics.values() for sub in t.subs if sub.owner is owner)

    async def publish(self, topic: str, value: Any) -> tuple[str, int]:
        """Publish ``value`` on ``topic``; return its ``(epoch, offset)``.

        Waits while a local ``block`` subscription's queue is full (its reader sets
        the pace of the publishers on this process); one whose reader takes nothing
        for ``block_timeout`` seconds (the server's ``topic_block_timeout``, 10 by
        default) ends as its client's :class:`fastrpc.SlowSubscriber`, and the
        publishers go on. It lets the loop run once
        after ``queue_size`` items published in one loop pass (on this topic, or on
        all topics together, subscribed to or not: a loop of publishes never holds
        the event loop from the other connections), or
        ``pass_deliveries`` deliveries (items x subscriptions: the server's
        ``topic_pass_deliveries``, 65,536 by default): the
        subscribers' connections write them meanwhile. A publisher that never waits
        would otherwise fill every subscriber's stream buffer before a byte leaves,
        and with a thousand subscriptions the subscribers would idle while it did.
        """
        _check_name(topic)
        n = self._published
        if n >= self.queue_size:
            await asyncio.sleep(0)  # _new_pass, scheduled before, runs first
            n = self._published
        if not n:
            asyncio.get_running_loop().call_soon(self._new_pass)
        self._published = n + 1
        t = self._topics.get(topic)
        if t is not None:
            if t.burst >= self.queue_size or t.burst * len(t.subs) >= self.pass_deliveries:
                await asyncio.sleep(0)
            while t.full:
                if t.room is None or t.room.done():
                    t.room = asyncio.get_running_loop().create_future()
                # (asyncio.wait, never `await t.room`: cancelling a publisher that
                # awaits the room itself would cancel the room every other publisher
                # waits on, and so those publishers too.)
                if self.block_timeout is None:
                    await asyncio.wait((t.room,))
                    continue
                left = min(sub.full_since for sub in t.full) + self.block_timeout - t.loop.time()
                if left > 0:
                    await asyncio.wait((t.room,), timeout=left)
                self._end_stalled(t)
            # The broker delivers the item later (RedisBroker: by pub/sub); until it
            # does, other local publishers may pass `full`: their items are local.
            t.inflight += 1
            try:
                epoch, offset = await self.broker.publish(topic, value)
            finally:
                t.inflight -= 1
            if epoch == t.epoch and offset > t.last:
                if len(t.mine) >= t.mine_cap:  # drop offsets never delivered here (lost)
                    t.mine = {o for o in t.mine if o > t.last}
                    # Those kept await a lagging live feed: filtered again once the set
                    # doubled, not on every publish (work a publish, not a set's size).
                    t.mine_cap = max(1024, 2 * len(t.mine))
                t.mine.add(offset)
            return epoch, offset
        return await self.broker.publish(topic, value)

    def _new_pass(self) -> None:
        """The loop ran: publishes count again from 0."""
        self._published = 0

    def _end_stalled(self, t: _Topic) -> None:
        """End the ``block`` subscriptions of ``t`` whose full queue has held the
        publishers for ``block_timeout`` with nothing taken (``SlowSubscriber``)."""
        assert self.block_timeout is not None
        now = t.loop.time()
        # (The expression publish() waits by: the one whose time is up always ends.)
        for sub in [s for s in t.full if s.full_since + self.block_timeout - now <= 0]:
            sub.finish(
                [
                    _SLOW,
                    f"block: no item taken for {self.block_timeout} s with topic_queue_size={sub.limit} items "
                    "queued (topic_block_timeout)",
                ]
            )

    # -- delivery from the broker

    def reconnected(self) -> None:
        """(Broker hook) the live feed was down: check each topic against its history."""
        for topic, t in self._topics.items():
            if t.epoch is not None and not t.filling:
                t.filling = True
                self._spawn(self._fill(topic, t))

    def deliver(self, topic: str, epoch: str, offset: int, value: Any) -> None:
        """(Broker hook) an item published on ``topic``, on any process."""
        t = self._topics.get(topic)
        if t is None:
            return
        if t.filling:
            t.pending.append((epoch, offset, value))
            return
        if t.epoch == epoch and offset > t.last + 1:
            # A hole: items the broker did not deliver (a dropped pub/sub link).
            t.filling = True
            t.pending.append((epoch, offset, value))
            self._spawn(self._fill(topic, t))
            return
        if t.epoch == epoch and offset <= t.last:
            return  # delivered already (a history fill overlapped)
        self._fan_out(t, epoch, offset, value)

    def _fan_out(self, t: _Topic, epoch: str, offset: int, value: Any) -> None:
        local = t.inflight > 0
        if offset in t.mine:
            t.mine.discard(offset)
            local = True
        t.local = local
        t.fan_out(epoch, offset, Encoded([_ITEM, offset, value]), value)  # encoded once, for every subscriber

    async def _history(self, topic: str, after: int | None) -> History:
        """The broker's history, retried for ``BROKER_TIMEOUT`` seconds (a broker
        that just came back may fail a command or two on stale connections)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + O.BROKER_TIMEOUT
        delay = 0.02
        while True:
            try:
                return await self.broker.history(topic, after)
            except Exception:
                if loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _fill(self, topic: str, t: _Topic) -> None:
        try:
            h = await self._history(topic, t.last)
            # (h.last < t.last: the broker's offsets went back in the same epoch, a Redis
            # restored from an older snapshot: what it gives out next reuses offsets
            # this process delivered, and would be dropped as delivered already.)
            if h.epoch == t.epoch and h.first <= t.last + 1 and h.last >= t.last:
                for offset, value in h.items:
                    if offset > t.last:
                        self._fan_out(t, h.epoch, offset, value)
            else:
                why = (
                    "the epoch changed"
                    if h.epoch != t.epoch
                    else "the broker's offsets went back"
                    if h.last < t.last
                    else "items were lost between the broker and this process"
                )
                for sub in list(t.subs):
                    sub.finish([_LOST, h.epoch, h.first, why])
                t.epoch, t.last = h.epoch, h.last
        except Exception as exc:
            for sub in list(t.subs):
                # (str, not repr: redis-py 8's repr of its errors drops the message.)
                sub.finish([_LOST, t.epoch or "", 0, f"the broker failed: {type(exc).__name__}: {exc}"])
        finally:
            t.filling = False
            pending, t.pending = t.pending, []
            for epoch, offset, value in pending:
                self.deliver(topic, epoch, offset, value)
            # Its last subscription ended during the fill (which kept it): forget it.
            if not t.subs and not t.filling and self._topics.get(topic) is t:
                del self._topics[topic]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- subscriptions (the built-in streaming method)

    def subscription(
        self,
        owner: object,
        topic: str,
        epoch: str | None = None,
        offset: int | None = None,
        policy: str = BLOCK,
        key: str | None = None,
        queue_size: int | None = None,
        *,
        runs: bool = False,
    ) -> AsyncIterable[Any]:
        """The handler of :data:`SUBSCRIBE` for connection ``owner``: the events of
        one subscription (``runs``: its client reads run events)."""
        _check_name(topic)
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
        if key is not None and not isinstance(key, str):
            raise ValueError("key must be a string (a field of the topic's dict items)")
        if (epoch is None) != (offset is None) or (offset is not None and (not isinstance(offset, int) or offset < 0)):
            raise ValueError("since must be None or (epoch, offset >= 0)")
        try:
            limit = self.queue_size if queue_size is None else max(1, min(int(queue_size), self.queue_size))
        except (TypeError, ValueError, OverflowError):  # a list, "many", infinity: a bad argument
            raise ValueError(f"queue_size must be None or an integer, not {queue_size!r}") from None
        return _Feed(self, owner, topic, epoch, offset, policy, key, limit, runs)

    async def _events(
        self,
        feed: _Feed,
        owner: object,
        topic: str,
        epoch: str | None,
        offset: int | None,
        policy: str,
        key: str | None,
        limit: int,
        runs: bool,
    ) -> AsyncIterator[Any]:
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = _Topic(self.queue_size)
        sub = _Sub(owner, t, policy, key, limit, runs)
        t.add(sub)  # live items queue from now on; the history fills what came before
        try:
            h: History = await self._history(topic, offset)
            if t.epoch is None:
                t.epoch, t.last = h.epoch, h.last
            if offset is None:
                sub.epoch, sub.last = h.epoch, h.last
                yield [_START, h.epoch, h.last, False]
            elif h.epoch != epoch or offset > h.last or (offset + 1 < h.first and offset < h.last):
                why = "the epoch changed" if h.epoch != epoch else "the position is outside the history window"
                yield [_LOST, h.epoch, h.first, why]
                return
            else:
                sub.epoch = h.epoch
                yield [_START, h.epoch, offset, True]
                for o, value in h.items:
                    sub.last = o
                    yield Encoded([_ITEM, o, value])
                sub.last = max(sub.last, offset)
            if t.epoch == h.epoch and h.last < t.last:
                # The process took its position from a later history read (another
                # subscription's reply, processed first): items after h.last up to
                # t.last may never be fanned out here. This one reads them (what the
                # live feed also brings it is a duplicate, skipped by offset).
                more = await self._history(topic, sub.last)
                if more.epoch != h.epoch or more.first > sub.last + 1:
                    yield [_LOST, more.epoch, more.first, "the history moved on while the subscription started"]
                    return
                for o, value in more.items:
                    sub.last = o
                    yield Encoded([_ITEM, o, value])
            # The START and the history are queued on the stream (the sender queues
            # each event before it asks for the next): live items may go straight.
            sub.outlet = feed.outlet
            loop = asyncio.get_running_loop()
            while True:
                ev = sub.take()
                if ev is None:
                    if sub.can_join():
                        t.join(sub)
                    sub.waiter = loop.create_future()
                    try:
                        await sub.waiter
                    finally:
                        sub.waiter = None
                    continue
                sub.busy = True  # until the sender asks for the next: it holds ev
                yield ev
                sub.busy = False
                if ev is sub.end:
                    return
        finally:
            sub.outlet = None
            sub.finish([_SLOW, "closed"])
            t.remove(sub)
            if not t.subs and not t.filling and self._topics.get(topic) is t:
                del self._topics[topic]


class _Feed:
    """The source of one subscription's stream: its events, and the hook by which
    the stream's sender hands it ``send_now`` (:meth:`StreamManager.run_sender`),
    so that live items go onto the stream from the publisher's fan-out."""

    __slots__ = ("args", "hub", "outlet")

    def __init__(self, hub: TopicHub, *args: Any) -> None:
        self.hub = hub
        self.args = args
        self.outlet: Callable[[list[Encoded]], int] | None = None

    def bind_stream(self, send_now: Callable[[list[Encoded]], int]) -> None:
        """(StreamManager hook) how to put an item on the stream at once."""
        self.outlet = send_now

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.hub._events(self, *self.args)


def _check_name(topic: str) -> None:
    if not isinstance(topic, str) or not topic or len(topic.encode()) > O.MAX_TOPIC_NAME:
        raise ValueError(f"a topic is a non-empty string of at most MAX_TOPIC_NAME={O.MAX_TOPIC_NAME} bytes")


# --------------------------------------------------------------------- client side


class _Caller(Protocol):
    @property
    def closed(self) -> bool: ...

    def stream(self, method: str, /, *args: Any, timeout: float | None = None) -> ReceiveStream[Any]: ...


Event = Union[Item, Gap]


class Subscription(AsyncIterator[Event]):
    """``async for item in peer.subscribe(topic)``: the topic's items as
    :class:`Item` s (``drop_oldest`` subscriptions also get :class:`Gap` events).

    ``position`` is the ``(epoch, offset)`` of the last item received: pass it as
    ``since`` to a new subscription to get what was missed, exactly once and in
    order, or :class:`fastrpc.HistoryLost`. When the connection's session cannot be
    resumed (a reconnecting client that landed on another worker, a server restart),
    the subscription resubscribes from ``position`` by itself (``recovered`` says it
    did); a closed connection ends it with :class:`fastrpc.ConnectionClosed`, a
    malformed event from the server with :class:`fastrpc.ProtocolError`, and one that
    does not decode with :class:`fastrpc.PayloadError` (``position`` stays the last
    item received: a new subscription ``since=position`` gets the rest).
    """

    def __init__(
        self,
        peer: _Caller,
        topic: str,
        since: tuple[str, int] | None = None,
        *,
        policy: str = BLOCK,
        key: str | None = None,
        queue_size: int | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
        _check_name(topic)
        self._peer = peer
        self.topic = topic
        self.policy = policy
        self.key = key
        self.queue_size = queue_size
        self.epoch: str | None = since[0] if since is not None else None
        self.offset: int | None = since[1] if since is not None else None
        self.recovered = False  # the last (re)subscription resumed from a position
        self.resubscribed = 0  # times the subscription was re-made after a lost session
        self.dropped = 0  # items dropped by drop_oldest / conflated by latest, in all
        self._stream: ReceiveStream[Any] | None = None
        self._stream_started: ReceiveStream[Any] | None = None  # its START came
        self._early: deque[Event] = deque()  # read by start() before the START
        # Events a message brought, taken from the stream in one step, last first.
        self._ready: list[Any] = []
        # The values of the run event being handed out, last first, and the offset
        # of the next one.
        self._run: list[Any] = []
        self._run_at = 0
        self._retries = 0  # resubscriptions since the last START
        self._done = False

    @property
    def position(self) -> tuple[str, int] | None:
        """``(epoch, offset)`` of the last item received (or where it started)."""
        return (self.epoch, self.offset) if self.epoch is not None and self.offset is not None else None

    def __aiter__(self) -> Subscription:
        return self

    async def start(self) -> Subscription:
        """Wait until the server has the subscription (items published from now on
        reach it); iterating starts it anyway."""
        while self._stream is None or self._stream_started is not self._stream:
            event = await self._next_event(until_start=True)
            if event is not None:
                self._early.append(event)
        return self

    def _open(self) -> ReceiveStream[Any]:
        since = self.position
        epoch, offset = since if since is not None else (None, None)
        return self._peer.stream(SUBSCRIBE, self.topic, epoch, offset, self.policy, self.key, self.queue_size)

    def __anext__(self) -> Awaitable[Event]:
        # The coroutine of _next_event itself: one coroutine per item, not two.
        return self._next_event(False)  # type: ignore[return-value]  # never None unless until_start

    async def _next_event(self, until_start: bool) -> Event | None:
        if self._early and not until_start:
            return self._early.popleft()
        while True:
            if self._done:
                raise StopAsyncIteration
            # What the last message brought is taken off the stream in one step (up
            # to _TAKE events) and handed out from here; taken events go out before
            # a resubscription (which starts after the last one handed out).
            run = self._run
            if run:
                offset = self.offset = self._run_at
                self._run_at = offset + 1
                return Item(self.epoch, offset, run.pop())  # type: ignore[arg-type]
            ready = self._ready
            if ready:
                ev = ready.pop()
            else:
                ev = await self._take()
                if ev is None:
                    continue
            # The server's events, as docs/protocol.md has them; anything else ends the
            # subscription with ProtocolError (the connection lives on).
            try:
                kind = ev[0]
                if kind == _ITEM:
                    offset = ev[1]
                    if type(offset) is not int:
                        raise TypeError("an item's offset is an integer")
                    self.offset = offset
                    return Item(self.epoch, offset, ev[2])  # type: ignore[arg-type]
                if kind == _START:
                    self.epoch, self.offset, self.recovered = ev[1], ev[2], ev[3]
                    self._stream_started = self._stream
                    self._retries = 0
                    if until_start:
                        return None
                elif kind == _RUN:
                    values, first = ev[2], ev[1]
                    if type(values) is not list or type(first) is not int:
                        raise TypeError("a run is a list of values after an integer offset")
                    values.reverse()
                    self._run = values
                    self._run_at = first
                elif kind == _GAP:
                    self.dropped += ev[1]
                    return Gap(self.epoch, ev[1], ev[2], ev[3])  # type: ignore[arg-type]
                elif kind == _LOST:
                    self._close()
                    raise HistoryLost(ev[1], ev[2], ev[3])
                elif kind == _SLOW:
                    self._close()
                    raise SlowSubscriber(self.topic, self.position, ev[1])
                else:  # (also a string or bytes: its first character is no kind)
                    raise TypeError(f"unknown event kind {kind!r}")
            except (IndexError, KeyError, TypeError) as exc:
                self._close()
                raise ProtocolError(f"topic {self.topic!r}: a malformed event from the server ({exc})") from None

    async def _take(self) -> list[Any] | None:
        """The next event off the stream (the rest of what arrived with it into
        ``_ready``), or None after a resubscription."""
        stream = self._stream
        if stream is None:
            stream = self._stream = self._open()
        try:
            ready = stream.get_many_nowait(_TAKE)
            if ready:
                ready.reverse()
                ev = ready.pop()
                self._ready = ready
                return ev  # type: ignore[no-any-return]
            return await stream.__anext__()  # type: ignore[no-any-return]
        except StopAsyncIteration:
            self._done = True
            raise
        except ConnectionClosed:
            self._stream = None
            if self._peer.closed:
                self._done = True
                raise
            # The session was not resumed but the connection lives on: the
            # topic's history fills what the lost stream would have carried.
            # Again at once the first time, then with a growing pause (a
            # connection still being re-established fails the call at once).
            if self._retries:
                await asyncio.sleep(min(0.01 * 2**self._retries, 1.0))
            self._retries += 1
            self.resubscribed += 1
            return None
        except RemoteStreamError as exc:
            self._done = True
            if exc.type_name == "ValueError":
                raise ValueError(exc.message) from None
            raise
        except PayloadError as exc:  # an event that does not decode: which one it was is lost
            self._close()
            raise PayloadError(f"topic {self.topic!r}: {exc}") from exc.__cause__

    def _close(self) -> None:
        self._ready = []
        self._run = []
        self._done = True
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    async def aclose(self) -> None:
        """Stop the subscription (the server forgets it)."""
        self._close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close()
