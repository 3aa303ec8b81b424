"""Resume under chaos (issue 16): cuts at every step of the resume handshake, seeded
random cuts, silent partitions, a trickle and a slow flaky link.

The server runs in a child process (``_chaos_server.py``) and counts the side effects
of its methods; the client reaches it through :class:`_chaos.ChaosProxy`, which knows
where each WebSocket message and fastrpc frame is and cuts, silences or slows the link
at chosen points. Every case checks, and reports together when several fail:

* exactly-once: each side-effect call made returned its result, and the server ran
  it exactly once (its counter per call id);
* streams both ways complete and in order (``peer.stream`` server -> client,
  ``peer.channel`` client -> server, checked at both ends);
* bounded recovery: a call made at the moment of the cut is answered within
  ``RECOVERY_BOUND`` seconds of it (plus keepalive detection for silent partitions);
* nothing left behind: once the client closed, the server holds no connection or
  session (it keeps a lost session ``GRACE`` = 30 s, so a leaked one is still
  there when we look), the proxy no open connection, the client no task.

A client with a RetryPolicy whose first handshake is cut is expected to retry it:
``connect()`` returns a working peer within the bounds (the alternative, raising at
once, would leave nothing behind either; raising late with a peer still running does
not qualify). The client closes on a live connection: one that closes while it is
reconnecting cannot tell the server, which keeps the session for its grace period.

Bounds: ``HANDSHAKE_TIMEOUT`` = 4 s for the client (the default is 10 s: a stall on it
shows here as a recovery of about 4 s), recovery 2 s, each workload 10 s.

Seeds: cuts at random times use ``random.Random(seed)`` for the intervals, so the
sequence is fixed but where a cut falls still depends on timing; cuts at random
message boundaries are drawn per connection, so a seed always makes the same cuts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from _chaos import C2S, S2C, ChaosProxy, Link, Match, Rule
from _util import run

import fastrpc
from fastrpc import frames as F

QUIET = {"keepalive_interval": None, "ws_ping_interval": None}
HANDSHAKE_TIMEOUT = 4.0  # the client's (default 10 s)
RECOVERY_BOUND = 2.0  # from a cut to the answer of a call made at that moment
WORK_BOUND = 10.0  # one workload, cuts included
LEFTOVER_BOUND = 3.0  # for the server to forget a closed client
GRACE = 30.0  # the server's session_grace
KEEPALIVE = {"keepalive_interval": 0.25, "keepalive_timeout": 0.5}
DETECT = KEEPALIVE["keepalive_interval"] + KEEPALIVE["keepalive_timeout"]  # a silent link is noticed within
SERVER = os.path.join(os.path.dirname(__file__), "_chaos_server.py")


# ------------------------------------------------------------------ harness


class Server:
    """The child-process server and a direct (proxy-less) connection to ask it things."""

    def __init__(self, port: int, control: fastrpc.RpcPeer) -> None:
        self.port = port
        self.control = control

    async def stats(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.control.call("stats"), 5)  # type: ignore[no-any-return]

    async def settled(self, timeout: float = LEFTOVER_BOUND) -> tuple[dict[str, Any], float]:
        """Poll until the server holds no connection and no session but ours; return the
        last stats and how long it took (``timeout`` at most)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            stats = await self.stats()
            if not stats["peers"] and not stats["sessions"]:
                return stats, loop.time() - start
            if loop.time() - start > timeout:
                return stats, loop.time() - start
            await asyncio.sleep(0.02)


# A server process started ahead of its test (it waits, imported, for its options on
# stdin): while a test runs, the next one's server starts. Each test still gets a fresh
# process of its own.
_SPARES: list[subprocess.Popen[bytes]] = []


def _spawn() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, SERVER, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


@pytest.fixture(scope="module", autouse=True)
def _spare_servers() -> Iterator[None]:
    yield
    while _SPARES:
        _end(_SPARES.pop())


@contextlib.asynccontextmanager
async def chaos_server(**options: Any) -> AsyncIterator[Server]:
    opts = {"session_grace": GRACE, **QUIET, **options}
    proc = _SPARES.pop() if _SPARES else _spawn()
    _SPARES.append(_spawn())
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(opts).encode() + b"\n")
        proc.stdin.close()
        reading = asyncio.ensure_future(asyncio.to_thread(proc.stdout.readline))
        done, _ = await asyncio.wait({reading}, timeout=30)
        if not done:
            proc.kill()  # (ends the read)
            await reading
        line = reading.result()
        assert line.startswith(b"ready "), line
        port = int(line.split()[1])
        async with fastrpc.connect(f"ws://127.0.0.1:{port}", **QUIET) as control:
            yield Server(port, control)
    finally:
        _end(proc)


class Client:
    """Connects through the proxy with a fast RetryPolicy; records what happened."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = {**QUIET, "handshake_timeout": HANDSHAKE_TIMEOUT, **options}
        self.events: list[tuple[float, str]] = []
        loop = asyncio.get_running_loop()

        def note(what: str) -> None:
            self.events.append((loop.time(), what))

        self.policy = fastrpc.RetryPolicy(
            initial_delay=0.01,
            max_delay=0.1,
            on_connected=lambda p: note("connected"),
            on_disconnected=lambda p, e: note(f"disconnected ({e!r})"),
            on_reconnecting=lambda p, n, d: note(f"reconnecting #{n}"),
        )

    async def connect(self) -> fastrpc.RpcPeer:
        return await fastrpc.connect(self.url, reconnect=self.policy, **self.options)

    def history(self, since: float) -> str:
        return ", ".join(f"{t - since:+.3f} {what}" for t, what in self.events[-12:])


class Ledger:
    """Side-effect calls made by the test, by id, and how each ended."""

    def __init__(self) -> None:
        self.outcome: dict[int, str] = {}

    async def call(self, peer: fastrpc.RpcPeer, delay: float = 0.0) -> int:
        cid = len(self.outcome) + 1
        self.outcome[cid] = "pending"
        try:
            result = await peer.call("bump", cid, delay)
        except BaseException as e:
            self.outcome[cid] = type(e).__name__
            raise
        self.outcome[cid] = "ok" if result == cid else f"wrong result {result!r}"
        return cid

    def check(self, stats: dict[str, Any]) -> list[str]:
        ran = dict(stats["calls"])
        problems = []
        failed = {cid: o for cid, o in self.outcome.items() if o != "ok"}
        if failed:
            kinds = collections.Counter(failed.values())
            had_run = sum(1 for cid in failed if ran.get(cid))
            problems.append(
                f"exactly-once: {len(failed)} of {len(self.outcome)} calls did not return their result "
                f"({dict(kinds)}); the server had run {had_run} of them (a retry would run them twice)"
            )
        twice = {cid: n for cid, n in ran.items() if n != 1}
        if twice:
            problems.append(f"exactly-once: calls run more than once on the server: {twice}")
        strange = set(ran) - set(self.outcome)
        if strange:
            problems.append(f"the server ran calls nobody made: {sorted(strange)[:10]}")
        lost = [cid for cid, o in self.outcome.items() if o == "ok" and cid not in ran]
        if lost:
            problems.append(f"calls answered but never run: {lost[:10]}")
        return problems


class Workload:
    """Side-effect calls, a server -> client stream and a client -> server channel, at once."""

    def __init__(
        self,
        peer: fastrpc.RpcPeer,
        ledger: Ledger,
        tag: str,
        *,
        calls: int = 120,
        concurrency: int = 8,
        call_delay: float = 0.005,
        items: int = 2000,
        up_items: int | None = None,
        size: int = 256,
    ) -> None:
        self.peer = peer
        self.ledger = ledger
        self.tag = tag
        self.calls = calls
        self.concurrency = concurrency
        self.call_delay = call_delay
        self.items = items
        self.up_items = items if up_items is None else up_items
        self.size = size
        self.down: list[int] = []
        self.up: list[int] = []
        self.sent_up = 0
        self.calls_done = 0
        self.errors: list[str] = []

    async def run(self) -> None:
        await asyncio.gather(self._calls(), self._down(), self._up())

    async def _calls(self) -> None:
        left = iter(range(self.calls))

        async def worker() -> None:
            for _ in left:
                try:
                    await self.ledger.call(self.peer, self.call_delay)
                except Exception:
                    pass  # the ledger has it
                self.calls_done += 1

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def _down(self) -> None:
        try:
            async for item in self.peer.stream("numbers", self.tag, self.items, self.size):
                self.down.append(item[0])
        except Exception as e:
            self.errors.append(f"server->client stream failed after {len(self.down)} items: {e!r}")

    async def _up(self) -> None:
        async def items() -> AsyncIterator[list[Any]]:
            pad = b"c" * self.size
            for i in range(self.up_items):
                self.sent_up = i + 1
                yield [i, pad]
                if i % 16 == 15:
                    # Paced, so that the client is still sending when a connection is
                    # cut (then it has something to replay).
                    await asyncio.sleep(0.001)

        try:
            async for i in self.peer.channel("echo", items(), self.tag):
                self.up.append(i)
        except Exception as e:
            self.errors.append(f"client->server channel failed after {len(self.up)} echoes: {e!r}")

    def progress(self) -> str:
        return (
            f"calls {self.calls_done}/{self.calls}, stream {len(self.down)}/{self.items}, "
            f"channel sent {self.sent_up} echoed {len(self.up)}/{self.up_items}"
        )

    def check(self, stats: dict[str, Any]) -> list[str]:
        problems = list(self.errors)
        if not self.errors:
            if self.down != list(range(self.items)):
                problems.append(f"server->client stream incomplete or out of order: {_summary(self.down)}")
            if self.up != list(range(self.up_items)):
                problems.append(f"channel echoes incomplete or out of order: {_summary(self.up)}")
        received, disorder = stats["channels"].get(self.tag, [0, 0])
        if (received, disorder) != (self.up_items, 0):
            problems.append(
                f"the server received {received}/{self.up_items} channel items, {disorder} out of order "
                f"(tag {self.tag})"
            )
        return problems


def _summary(xs: list[int]) -> str:
    dups = len(xs) - len(set(xs))
    first_gap = next((i for i, x in enumerate(xs) if x != i), None)
    return f"{len(xs)} items, {dups} repeated, first out of place at index {first_gap}"


async def bounded(aw: Any, timeout: float) -> tuple[bool, float]:
    """Await ``aw`` for at most ``timeout`` s (cancelled after): (finished, seconds)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False, loop.time() - start
    task.result()
    return True, loop.time() - start


async def probe(peer: fastrpc.RpcPeer, ledger: Ledger, since: float, limit: float) -> tuple[float | None, str]:
    """Make a side-effect call now; (seconds from ``since`` to its answer, or None, and
    how it ended)."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(ledger.call(peer), limit)
    except asyncio.TimeoutError:
        return None, f"no answer within {limit:.0f} s"
    except Exception as e:
        return None, f"failed after {loop.time() - since:.3f} s: {e!r}"
    return loop.time() - since, "ok"


async def _connected(peer: fastrpc.RpcPeer) -> None:
    while not peer.connected and not peer.closed:
        await asyncio.sleep(0.005)


def peer_state(peer: fastrpc.RpcPeer | None) -> str:
    if peer is None:
        return "no peer"
    return f"peer connected={peer.connected} closed={peer.closed} close_exception={peer.close_exception!r}"


async def finish(
    problems: list[str],
    server: Server,
    px: ChaosProxy,
    peer: fastrpc.RpcPeer | None,
    ledger: Ledger | None,
    workloads: list[Workload],
) -> None:
    """Close the client; check exactly-once, the streams and what is left behind."""
    if peer is not None:
        # Close on a live connection: a client that closes while it is reconnecting
        # cannot tell the server, which then keeps the session for its grace period.
        ok, took = await bounded(_connected(peer), RECOVERY_BOUND)
        if not ok:
            problems.append(f"the client did not get connected again to close ({peer_state(peer)})")
        ok, took = await bounded(peer.close(), 5)
        if not ok:
            problems.append(f"peer.close() did not return within 5 s ({peer_state(peer)})")
    stats, took = await server.settled()
    if stats["peers"] or stats["sessions"]:
        problems.append(
            f"leftovers on the server {took:.1f} s after the client closed: {stats['peers']} connection(s) "
            f"({stats['detached']} detached, waiting for a resume), {stats['sessions']} session(s)"
        )
    if ledger is not None:
        problems.extend(ledger.check(stats))
    for w in workloads:
        problems.extend(w.check(stats))
    await px.close()
    if px.live:
        problems.append(f"the proxy still has connections open: {px.live}")
    # Nothing of the client may keep running (an abandoned peer reconnecting, say).
    for _ in range(100):
        left = [t for t in asyncio.all_tasks() if t not in _BASELINE]
        if not left:
            break
        await asyncio.sleep(0.01)
    else:
        problems.append(f"client tasks left running: {[t.get_coro() for t in left][:4]}")
        for t in left:
            t.cancel()
        await asyncio.gather(*left, return_exceptions=True)


_BASELINE: set[asyncio.Task[Any]] = set()


def baseline() -> None:
    """Note the tasks running before the test made any (the test's own): ``finish``
    reports any other task still running at the end."""
    _BASELINE.clear()
    _BASELINE.update(asyncio.all_tasks())


def report(problems: list[str], px: ChaosProxy, client: Client | None = None, since: float = 0.0) -> str:
    out = ["", *(f"- {p}" for p in problems)]
    if client is not None:
        out.append(f"client events: {client.history(since)}")
    out.append(f"proxy: {len(px.connections)} connections, cuts {len(px.cuts)}, new sessions {px.new_sessions}")
    out.append("cuts (last 6): " + "; ".join(f"{t - since:+.3f} #{n} {why}" for t, n, why in px.cuts[-6:]))
    out.append("proxy transcript (end):\n" + px.transcript(30))
    return "\n".join(out)


# ------------------------------------------------- cuts at each handshake step


@dataclass(frozen=True)
class Point:
    name: str
    conn: int  # 1: the first connection; 2: the first reconnection
    direction: str
    match: Match

    def rule(self, when: str, action: str = "cut") -> Rule:
        return Rule(action, when, self.direction, self.match, conn=self.conn, label=f"{action} {when} {self.name}")


# Where a connection can be cut, in the order things happen. On connection 1 the
# client's HELLO and the server's HELLO + RESUME_OK(NEW) make the handshake; on the
# first reconnection the client's message is HELLO + RESUME and the server's HELLO +
# RESUME_OK, then each side replays what the other missed, then new frames flow.
POINTS = [
    Point("conn1-c2s-HELLO", 1, C2S, "handshake"),
    Point("conn1-s2c-HELLO+RESUME_OK(NEW)", 1, S2C, "handshake"),
    Point("conn1-c2s-first_frame", 1, C2S, "new"),
    Point("conn1-s2c-first_frame", 1, S2C, "new"),
    Point("conn2-c2s-HELLO+RESUME", 2, C2S, F.RESUME),
    Point("conn2-s2c-HELLO+RESUME_OK", 2, S2C, F.RESUME_OK),
    Point("conn2-c2s-first_replayed", 2, C2S, "replay"),
    Point("conn2-s2c-first_replayed", 2, S2C, "replay"),
    Point("conn2-c2s-first_new", 2, C2S, "new"),
    Point("conn2-s2c-first_new", 2, S2C, "new"),
]
CASES = [(p, when) for p in POINTS for when in ("before", "after")]


def _trigger() -> Rule:
    """Ends the first connection mid-stream, so that the points of the first
    reconnection come up: it goes silent for 50 ms (what both sides send meanwhile
    is lost: each has something to replay), then it is reset."""
    return Rule(
        "partition", "before", S2C, F.STREAM_DATA, conn=1, nth=5, cut_after=0.05, label="end the 1st connection"
    )


async def _cut_case(point: Point, when: str, action: str = "cut", client_opts: Any = None) -> None:
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    rule = point.rule(when, action)
    rules = [rule] if point.conn == 1 else [_trigger(), rule]
    server_opts = KEEPALIVE if action == "partition" else {}
    bound = RECOVERY_BOUND + (DETECT if action == "partition" else 0)
    async with chaos_server(**server_opts) as server:
        baseline()
        async with ChaosProxy(server.port, rules=rules) as px:
            client = Client(px.url, **(client_opts or {}))
            ledger = Ledger()
            workloads: list[Workload] = []
            peer = None
            t0 = loop.time()
            try:
                peer = await asyncio.wait_for(client.connect(), HANDSHAKE_TIMEOUT * 2 + RECOVERY_BOUND)
            except Exception as e:
                problems.append(f"connect() raised {e!r} after {loop.time() - t0:.2f} s")
                await asyncio.sleep(0.5)
                stats = await server.stats()
                if stats["peers"]:
                    problems.append(
                        f"orphan: connect() failed yet the server holds {stats['peers']} connection(s) from this client"
                    )
            if peer is not None:
                work = Workload(peer, ledger, "w")
                workloads.append(work)
                task = asyncio.ensure_future(work.run())
                fired, _ = await bounded(rule.fired.wait(), WORK_BOUND)
                if not fired:
                    problems.append(f"the cut point was never reached ({work.progress()}): not a test of {rule.label}")
                else:
                    assert rule.fired_at is not None
                    took, how = await probe(peer, ledger, rule.fired_at, WORK_BOUND)
                    if took is None:
                        problems.append(f"no recovery: a call made at the cut {how}; {peer_state(peer)}")
                    else:
                        print(f"\nrecovery {action} {when} {point.name}: {took * 1000:.0f} ms")
                        if took > bound:
                            problems.append(f"slow recovery: {took:.2f} s from the cut to an answer (bound {bound} s)")
                finished, took = await bounded(task, WORK_BOUND)
                if not finished:
                    problems.append(f"the workload hung: {work.progress()} after {took:.0f} s; {peer_state(peer)}")
            await finish(problems, server, px, peer, ledger, workloads)
            assert not problems, report(problems, px, client, t0)


@pytest.mark.parametrize(("point", "when"), CASES, ids=[f"{when}-{p.name}" for p, when in CASES])
def test_cut_at_each_handshake_step(point: Point, when: str) -> None:
    run(_cut_case(point, when), 55)


# ------------------------------------------------------------ random cuts


async def _random_cuts_case(
    seed: int,
    *,
    cuts: int,
    lo: float = 0.0,
    hi: float = 0.0,
    by_message: bool = False,
    link: Link | None = None,
    **sizes: Any,
) -> None:
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    async with chaos_server() as server:
        baseline()
        async with ChaosProxy(server.port, link=link) as px:
            client = Client(px.url)
            ledger = Ledger()
            workloads: list[Workload] = []
            t0 = loop.time()
            peer = await asyncio.wait_for(client.connect(), HANDSHAKE_TIMEOUT)
            if by_message:
                px.start_message_cuts(seed, cuts)
            else:
                px.start_random_cuts(seed, lo, hi, count=cuts)

            stop = asyncio.Event()

            async def rounds() -> None:
                while not stop.is_set():
                    work = Workload(peer, ledger, f"round {len(workloads) + 1}", **sizes)
                    workloads.append(work)
                    finished, took = await bounded(work.run(), WORK_BOUND)
                    if not finished:
                        problems.append(
                            f"{work.tag} hung: {work.progress()} after {took:.0f} s "
                            f"({len(px.cuts)} cuts so far); {peer_state(peer)}"
                        )
                        return

            runner = asyncio.ensure_future(rounds())
            cutting = asyncio.ensure_future(px.wait_random_cuts())
            await asyncio.wait({cutting, runner}, timeout=WORK_BOUND * 2, return_when=asyncio.FIRST_COMPLETED)
            if not cutting.done():  # a round hung: no traffic, no more cuts
                cutting.cancel()
                await asyncio.gather(cutting, return_exceptions=True)
                problems.append(f"the cuts stopped coming after {len(px.cuts)} cuts (no traffic)")
            if runner.done():  # a round hung: does the client still answer a new call?
                took, how = await probe(peer, ledger, loop.time(), 2 * RECOVERY_BOUND)
                problems.append(f"after the hang, a new call: {how}; {peer_state(peer)}")
            else:
                last_cut = px.cuts[-1][0] if px.cuts else loop.time()
                took, how = await probe(peer, ledger, last_cut, WORK_BOUND)
                if took is None:
                    problems.append(f"no recovery after the last cut: a call {how}; {peer_state(peer)}")
                else:
                    print(f"\nseed {seed}: recovery after the last of {len(px.cuts)} cuts: {took * 1000:.0f} ms")
                    if took > RECOVERY_BOUND:
                        problems.append(f"slow recovery: {took:.2f} s after the last cut (bound {RECOVERY_BOUND} s)")
            stop.set()
            await bounded(runner, WORK_BOUND * 2)
            print(f"seed {seed}: {len(workloads)} rounds, {len(px.cuts)} cuts, {len(px.connections)} connections")
            await finish(problems, server, px, peer, ledger, workloads)
            assert not problems, report(problems, px, client, t0)


SEEDS = [1, 2, 3, 4]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_cuts(seed: int) -> None:
    """Cuts every 1-300 ms (uniform, from ``random.Random(seed)``), 20 times, while
    rounds of calls, streams and channels run."""
    run(_random_cuts_case(seed, cuts=20, lo=0.001, hi=0.300, calls=40, items=500), 55)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_cuts_at_message_boundaries(seed: int) -> None:
    """20 connections in a row, each cut before or after one of its first 8 messages
    in either direction (drawn from ``random.Random(seed)``): handshakes, replays and
    the first new frames are hit far more often than by cuts in time."""
    run(_random_cuts_case(seed, cuts=20, by_message=True, calls=40, items=500), 55)


@pytest.mark.parametrize("seed", [11, 12])
def test_trickle_link_with_random_cuts(seed: int) -> None:
    """Every byte written in pieces of 1-100 bytes at 64 KiB/s, with a cut every
    50-300 ms: messages (handshakes included) arrive in many pieces and are often
    torn by a cut."""
    link = Link(rate=64 << 10, chunk=(1, 100), buffer=8 << 10, seed=seed)
    run(_random_cuts_case(seed, cuts=12, lo=0.05, hi=0.3, link=link, calls=20, items=100, size=64), 55)


# ------------------------------------------- a session that really is lost


def test_calls_made_while_a_lost_session_is_reset_still_run() -> None:
    """The server "restarts" (the proxy now leads to another server process): what was
    in flight fails with ResumeFailed, as documented, but callers that go on calling
    at once (here: 8 workers, each making its next call as soon as one ended) must
    be served by the new session, not hang. Each call ran at most once in all; the
    ones that returned ran exactly once."""

    async def main() -> None:
        problems: list[str] = []
        loop = asyncio.get_running_loop()
        async with chaos_server() as first, chaos_server() as second:
            baseline()
            async with ChaosProxy(first.port) as px:
                client = Client(px.url)
                ledger = Ledger()
                t0 = loop.time()
                peer = await asyncio.wait_for(client.connect(), HANDSHAKE_TIMEOUT)
                done = 0

                async def worker() -> None:
                    nonlocal done
                    while done < 400:
                        try:
                            await ledger.call(peer, 0.005)
                        except fastrpc.ResumeFailed:
                            pass
                        done += 1

                async def channel() -> None:  # in flight too: resetting the session then awaits its sender
                    async def items() -> AsyncIterator[int]:
                        for i in range(1_000_000):
                            yield [i, b""]
                            await asyncio.sleep(0.001)

                    with contextlib.suppress(fastrpc.ResumeFailed):
                        async for _ in peer.channel("echo", items(), "restart"):
                            pass

                workers = asyncio.gather(channel(), *(worker() for _ in range(8)))
                while done < 50:
                    await asyncio.sleep(0.001)
                px.target_port = second.port  # the next connection reaches a server without the session
                px.cut("the server restarted")
                finished, took = await bounded(workers, WORK_BOUND)
                if not finished:
                    hung = sum(1 for o in ledger.outcome.values() if o == "CancelledError")
                    problems.append(
                        f"calls hung after the session was reset: {hung} never answered (cancelled after "
                        f"{took:.0f} s), {done}/400 done; {peer_state(peer)}"
                    )
                ok, took = await bounded(_connected(peer), RECOVERY_BOUND)
                ok, took = await bounded(peer.close(), 5)
                ran = collections.Counter()
                for server in (first, second):
                    ran.update(dict((await server.stats())["calls"]))
                kinds = collections.Counter(ledger.outcome.values())
                if set(kinds) - {"ok", "ResumeFailed", "CancelledError"}:
                    problems.append(f"calls ended in unexpected ways: {dict(kinds)}")
                if not kinds["ResumeFailed"]:
                    problems.append("no call failed with ResumeFailed: the restart went unnoticed?")
                twice = {cid: n for cid, n in ran.items() if n > 1}
                if twice:
                    problems.append(f"calls run more than once: {twice}")
                lost = [cid for cid, o in ledger.outcome.items() if o == "ok" and not ran[cid]]
                if lost:
                    problems.append(f"calls answered but never run: {lost[:10]}")
                stats, took = await second.settled()
                if stats["peers"] or stats["sessions"]:
                    problems.append(
                        f"leftovers on the new server: {stats['peers']} connection(s), {stats['sessions']} session(s)"
                    )
                print(f"\nserver restart: {dict(kinds)}")
                await finish(problems, second, px, None, None, [])
                assert not problems, report(problems, px, client, t0)

    run(main(), 55)


# ------------------------------------------------------------ silent partitions

# A partition forwards nothing more and closes nothing: only keepalive notices it
# (KEEPALIVE on both sides); the recovery bound grows by that detection time.
PARTITIONS = [
    (Point("conn1-s2c-mid_stream", 1, S2C, F.STREAM_DATA), "before"),
    (Point("conn2-c2s-HELLO+RESUME", 2, C2S, F.RESUME), "before"),
    (Point("conn2-s2c-HELLO+RESUME_OK", 2, S2C, F.RESUME_OK), "before"),
    (Point("conn2-s2c-HELLO+RESUME_OK", 2, S2C, F.RESUME_OK), "after"),
]


@pytest.mark.parametrize(("point", "when"), PARTITIONS, ids=[f"{w}-{p.name}" for p, w in PARTITIONS])
def test_silent_partition(point: Point, when: str) -> None:
    run(_cut_case(point, when, "partition", KEEPALIVE), 55)


# ------------------------------------------------------------ slow flaky link


def test_slow_flaky_link_makes_progress() -> None:
    """200 KiB/s each way, the connection reset every 100-300 ms (seed 7): 1 MiB
    server -> client and 512 KiB client -> server must get through within 30 s, and
    the delivered position must never stand still for 5 s."""

    async def main() -> None:
        problems: list[str] = []
        loop = asyncio.get_running_loop()
        link = Link(rate=200 << 10, chunk=(1024, 4096), buffer=16 << 10, seed=7)
        async with chaos_server() as server:
            baseline()
            async with ChaosProxy(server.port, link=link) as px:
                client = Client(px.url)
                ledger = Ledger()
                t0 = loop.time()
                peer = await asyncio.wait_for(client.connect(), HANDSHAKE_TIMEOUT)
                work = Workload(peer, ledger, "slow", calls=20, concurrency=2, items=256, up_items=128, size=4096)
                px.start_random_cuts(7, 0.1, 0.3)
                finished, took = await bounded(work.run(), 30)
                await px.stop_random_cuts()
                now = loop.time()
                stalls = {d: px.longest_stall(d, now) for d in (C2S, S2C)}
                worst = px.torn.most_common(1)
                print(
                    f"\nslow link: {'done' if finished else 'NOT done'} in {took:.1f} s, {len(px.cuts)} cuts, "
                    f"longest stall {stalls}, most torn message {worst}"
                )
                if not finished:
                    problems.append(f"no completion within 30 s: {work.progress()}")
                for d, s in stalls.items():
                    if s > 5:
                        problems.append(f"{d}: no progress for {s:.1f} s")
                if worst and worst[0][1] >= 10:
                    (d, pos), n = worst[0]
                    problems.append(f"livelock: the {d} message at position {pos} was cut mid-way {n} times")
                await finish(problems, server, px, peer, ledger, [work])
                assert not problems, report(problems, px, client, t0)

    run(main(), 58)
