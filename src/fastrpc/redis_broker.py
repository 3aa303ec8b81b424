"""A :class:`fastrpc.broker.Broker` on Redis: topics shared by worker processes.

Needs the ``redis`` package (``pip install fastrpc[redis]``) and Redis >= 6.2.

Per topic ``T`` (keys under ``prefix``):

* ``{prefix}:epoch``: the epoch of every topic. A Redis that lost its data (restarted
  without persistence, flushed, failed over to an empty replica) has none: the next
  publish or read makes a new one, and subscribers that resume from the old one get
  :class:`fastrpc.HistoryLost`. (Give the broker's Redis ``maxmemory-policy
  noeviction``: a topic's keys evicted alone would restart its offsets in the same
  epoch.)
* ``{prefix}:m:T``, a hash: ``o`` the last offset given out (made by the first
  publish: subscribing, to any name, creates no key).
* ``{prefix}:s:T``, a Stream capped at ``history_size`` entries and ``history_ttl``
  seconds (``XADD MAXLEN`` / ``XTRIM MINID``): the history window, the same for every
  worker, so a subscriber recovers on whichever worker it reconnects to.
* ``{prefix}:c:T``, a pub/sub channel: the live fan-out; every worker listens on
  ``{prefix}:c:*`` and delivers to its own subscribers.

Publishing is one Lua script (offset, history and live message in one atomic step),
so every worker sees a topic's items in offset order; an item a worker missed (its
pub/sub link dropped) shows as a hole in the offsets, which the worker fills from
the Stream (:class:`fastrpc.topics.TopicHub`) or reports as ``HistoryLost``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import options as O
from .broker import Broker, History, Sink, new_epoch
from .codec import EncHook, _hooked
from .log import warn_limited

__all__ = ["RedisBroker"]

logger = logging.getLogger("fastrpc.redis_broker")

_PUBLISH = """
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[4], epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local maxlen = tonumber(ARGV[3])
if maxlen > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', maxlen, '*', 'o', offset, 'd', ARGV[2])
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    local t = redis.call('TIME')
    redis.call('XTRIM', KEYS[2], 'MINID', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl)
  end
end
redis.call('PUBLISH', KEYS[3], epoch .. ':' .. offset .. ':' .. ARGV[2])
return {epoch, offset}
"""

_HISTORY = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[3], epoch)
end
local last = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  local t = redis.call('TIME')
  redis.call('XTRIM', KEYS[2], 'MINID', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl)
end
local first = last + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(head[1][2][2]) end
local after = tonumber(ARGV[3])
local items = {}
if after >= 0 and after < last then
  items = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', last - after)
end
return {epoch, first, last, items}
"""

# A Redis back from an older snapshot (a crash with RDB or AOF everysec, a failover to
# a replica that lagged) keeps its epoch but gives out offsets again that subscribers
# saw already: a new epoch, made once (whichever worker finds out first), turns that
# into HistoryLost instead of a silent gap.
_NEW_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if epoch == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"""

# Topics whose highest offset seen here is remembered (those this process read the
# history of: its subscribed topics), beyond which the oldest is forgotten.
_REMEMBERED_TOPICS = 4096


class RedisBroker(Broker):
    """Topics in Redis at ``url`` (``redis://host:port/db`` or ``unix:///path``).

    ``history_size`` / ``history_ttl``: the window kept per topic (as
    :class:`fastrpc.broker.MemoryBroker`'s); ``prefix``: the namespace of its keys;
    ``timeout``: seconds a Redis command may take (publish and history reads then
    raise ``redis.exceptions.TimeoutError``; an idle pub/sub link is checked with a
    PING after that long, and reconnected when the PING gets no answer within as
    long); ``max_connections``: the connections publish and history reads share
    (callers wait for one), besides the pub/sub one (a connection of its own).
    ``enc_hook``: how items of custom types are encoded into Redis (msgspec's
    ``enc_hook``, as ``serve()``'s; a server hands its own to its broker, which uses
    it unless given one here).

    A command that fails for want of a connection (all ``max_connections`` busy for
    ``timeout`` seconds), for a Redis that refuses or does not answer, raises the
    ``redis`` client's ``ConnectionError`` / ``TimeoutError`` as it does, its message
    naming the cause, the broker's ``url`` (without its password) and the option
    that changes it.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "fastrpc",
        history_size: int = O.TOPIC_HISTORY_SIZE,
        history_ttl: float = O.TOPIC_HISTORY_TTL,
        timeout: float = O.BROKER_TIMEOUT,
        max_connections: int = O.BROKER_CONNECTIONS,
        enc_hook: EncHook | None = None,
    ) -> None:
        self.url = url
        self._where = _redacted(url)  # for messages: never the password
        self.prefix = prefix
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.timeout = timeout
        # Many subscriptions may start at once (a worker's clients reconnecting): they
        # queue for one of max_connections connections instead of failing.
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=self._pool)
        # History reads wait their turn here, for as long as it takes (each read holds
        # its connection at most `timeout` seconds), not `timeout` for the pool: a
        # burst of subscriptions longer than that would fail.
        self._readers = asyncio.Semaphore(max_connections)
        # The pub/sub link: a connection of its own (not one of max_connections, held
        # for good), read with explicit timeouts (redis-py 5.0 reads a pub/sub
        # connection with socket_timeout when asked to wait forever).
        self._sub_pool = aioredis.ConnectionPool.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
        )
        self._sub_redis: aioredis.Redis = aioredis.Redis(connection_pool=self._sub_pool)
        self.enc_hook = enc_hook
        self._encode = msgspec.msgpack.Encoder(enc_hook=_hooked(enc_hook)).encode
        self._last_error: BaseException | None = None  # of the pub/sub link
        self._publish = self.redis.register_script(_PUBLISH)
        self._history = self._script = self.redis.register_script(_HISTORY)
        self._new_epoch = self.redis.register_script(_NEW_EPOCH)
        # topic -> (epoch, highest offset seen here in it), for the topics this process
        # read the history of: a Redis whose offsets went back is found by it.
        self._seen: dict[str, tuple[str, int]] = {}
        self._sink: Sink | None = None
        self._listener: asyncio.Task[None] | None = None
        self._channel_head = f"{prefix}:c:".encode()
        self.listening = asyncio.Event()  # set while the pub/sub link is up (tests)

    def _keys(self, topic: str) -> list[str]:
        p = self.prefix
        return [f"{p}:m:{topic}", f"{p}:s:{topic}", f"{p}:c:{topic}", f"{p}:epoch"]

    def use_hooks(self, enc_hook: EncHook | None) -> None:
        """(TopicHub hook) the server's ``enc_hook``, unless the broker has one."""
        if self.enc_hook is None and enc_hook is not None:
            self.enc_hook = enc_hook
            self._encode = msgspec.msgpack.Encoder(enc_hook=_hooked(enc_hook)).encode

    async def start(self, sink: Sink) -> None:
        """Start listening; raises ``TimeoutError`` (and leaves nothing running) when
        the pub/sub link is not up within ``timeout`` seconds."""
        self._sink = sink
        self._last_error = None
        self._listener = asyncio.get_running_loop().create_task(self._listen())
        try:
            await asyncio.wait_for(self.listening.wait(), self.timeout)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, asyncio.TimeoutError):
                why = f"; last error: {_describe(self._last_error)}" if self._last_error is not None else ""
                raise TimeoutError(
                    f"no pub/sub link to Redis within {self.timeout} s "
                    f"(RedisBroker url={self._where}, timeout={self.timeout}{why})"
                ) from None
            raise

    async def close(self) -> None:
        self._sink = None
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        self.listening.clear()
        await self.redis.aclose()
        await self._pool.disconnect()
        await self._sub_redis.aclose()
        await self._sub_pool.disconnect()

    async def publish(self, topic: str, value: Any) -> tuple[str, int]:
        data = self._encode(value)
        ttl_ms = int(self.history_ttl * 1000)
        try:
            epoch, offset = await self._publish(
                keys=self._keys(topic), args=[new_epoch(), data, self.history_size, ttl_ms]
            )
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._explain(exc)
        epoch, offset = epoch.decode(), int(offset)
        self._saw(topic, epoch, offset)
        return epoch, offset

    def _saw(self, topic: str, epoch: str, offset: int) -> None:
        seen = self._seen.get(topic)
        if seen is not None and (seen[0] != epoch or offset > seen[1]):
            self._seen[topic] = (epoch, offset)

    async def history(self, topic: str, after: int | None) -> History:
        k = self._keys(topic)
        keys = [k[0], k[1], k[3]]
        ttl_ms = int(self.history_ttl * 1000)
        args: list[str | int] = [new_epoch(), ttl_ms, -1 if after is None else after]
        async with self._readers:
            # (What was seen before the read was sent: Redis had it before it ran the
            # read. An offset seen while the read is on its way may be newer than it.)
            seen = self._seen.get(topic)
            try:
                epoch, first, last, raw = await self._history(keys=keys, args=args)
                if seen is not None and seen[0] == epoch.decode() and int(last) < seen[1]:
                    # Offsets went back in the same epoch (Redis restored an older state).
                    logger.warning(
                        "Redis gave topic %r offset %d after %d in epoch %s (it came back from an older "
                        "snapshot): starting a new epoch",
                        topic,
                        int(last),
                        seen[1],
                        seen[0],
                    )
                    await self._new_epoch(keys=[k[3]], args=[epoch, new_epoch()])
                    epoch, first, last, raw = await self._history(keys=keys, args=args)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._explain(exc)
        seen = self._seen.get(topic)
        if seen is None:
            if len(self._seen) >= _REMEMBERED_TOPICS:
                del self._seen[next(iter(self._seen))]
            self._seen[topic] = (epoch.decode(), int(last))
        else:
            self._saw(topic, epoch.decode(), int(last))
        items: list[tuple[int, Any]] = []
        for _id, fields in reversed(raw):
            # fields: [b"o", offset, b"d", data]
            items.append((int(fields[1]), msgspec.msgpack.decode(fields[3])))
        return History(epoch.decode(), int(first), int(last), items)

    def _explain(self, exc: RedisConnectionError | RedisTimeoutError) -> NoReturn:
        """Raise ``exc`` again, of its type, its message naming its cause, this
        broker's url and the option that changes it (redis-py's say "No connection
        available." or "Timeout reading from socket", and not where nor why)."""
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, RedisConnectionError) and (
            msg.startswith("No connection available") or isinstance(exc.__cause__, asyncio.TimeoutError)
        ):
            why = (
                f"all max_connections={self._pool.max_connections} connections were busy for "
                f"timeout={self.timeout} s; raise max_connections or timeout"
            )
        elif isinstance(exc, RedisTimeoutError):
            why = f"Redis did not answer within timeout={self.timeout} s; raise timeout"
        else:
            why = "Redis could not be reached or refused the connection: is it up there, is url right?"
        try:
            explained = type(exc)(f"{msg} (RedisBroker url={self._where}: {why})")
        except Exception:  # an error type whose constructor takes other arguments
            raise exc from None
        raise explained from exc

    async def _listen(self) -> None:
        """Deliver what every worker publishes; reconnect when the link drops."""
        delay = 0.05
        lost = False
        idle = self.timeout  # seconds of silence before a PING, and for its answer
        while True:
            pubsub = self._sub_redis.pubsub()
            try:
                await pubsub.psubscribe(self._channel_head + b"*")
                self.listening.set()
                delay = 0.05
                if lost and self._sink is not None:
                    # What was published while the link was down (or Redis's loss of
                    # its data: a new epoch) is found in each topic's history.
                    lost = False
                    self._sink.reconnected()
                pinged = False
                while True:
                    # A finite wait, whatever the redis-py version: an idle link is
                    # not taken for a lost one, and a dead one is found by its PING.
                    msg = await pubsub.get_message(timeout=idle)
                    if msg is None:
                        if pinged:
                            raise RedisConnectionError(f"no answer to a PING within {idle} s")
                        await pubsub.ping()
                        pinged = True
                        continue
                    pinged = False  # anything that came shows the link alive
                    if msg["type"] == "pmessage":
                        self._on_message(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                self._last_error = exc
                lost = True
                if isinstance(exc, (RedisError, OSError)):
                    logger.warning(
                        "Redis pub/sub link lost (%s; RedisBroker url=%s); reconnecting in %.2f s",
                        _describe(exc),
                        self._where,
                        delay,
                    )
                else:
                    logger.error("Redis pub/sub listener failed; reconnecting in %.2f s", delay, exc_info=exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            finally:
                try:
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call, unused-ignore]  # typed in newer redis-py
                except Exception:
                    pass

    def _on_message(self, channel: bytes, data: bytes) -> None:
        """One message on ``{prefix}:c:*``: an item ``epoch:offset:msgpack`` to the
        sink. Anything else (another program's ``PUBLISH`` on the pattern) is logged
        and dropped, as is an item the sink fails to take: the listener goes on."""
        sink = self._sink
        if sink is None:
            return
        try:
            topic = channel[len(self._channel_head) :].decode()
            epoch, offset, payload = data.split(b":", 2)
            item = (topic, epoch.decode(), int(offset), msgspec.msgpack.decode(payload))
        except Exception as exc:
            warn_limited(logger, "not a fastrpc item on %r (%s): dropped", channel, _describe(exc))
            return
        self._saw(*item[:3])
        try:
            sink.deliver(*item)
        except Exception as exc:
            warn_limited(
                logger, "delivering item %s of topic %r failed (%s): dropped", item[2], item[0], _describe(exc)
            )


def _redacted(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` query field)
    replaced by ``***``: what messages and logs may show."""
    try:
        parts = urlsplit(url)
        out = url
        if parts.password is not None:
            user, _, host = parts.netloc.rpartition("@")
            out = out.replace(parts.netloc, f"{user.partition(':')[0]}:***@{host}", 1)
        if "password" in parts.query:
            fields = parse_qsl(parts.query, keep_blank_values=True)
            query = urlencode([(k, "***" if k == "password" else v) for k, v in fields], safe="*")
            out = out.replace(parts.query, query, 1)
        return out
    except ValueError:  # not a URL redis-py takes either
        return "<unparsable url>"


def _describe(exc: BaseException) -> str:
    """``ConnectionError: message`` (redis-py 8's repr of its errors drops the message)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
