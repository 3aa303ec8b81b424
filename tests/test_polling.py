"""``busy_poll`` (fastrpc.polling): after a write, the loop polls for up to that long
instead of sleeping, and then sleeps as before; a connection whose reads keep coming
later than that stops polling (``PollWindow``) until one comes on time.

What a user can see is CPU: a side that polls burns up to ``busy_poll`` of it after
each write that no reply follows, and no more; a connection whose replies keep coming
later than ``busy_poll`` stops polling after a few of them. Measured here as process
CPU time: the test process's own for a client, ``/proc/<pid>/stat`` for a server in a
child process (stopped by its pid). The latency it buys is measured in ``bench/``
(``critical_path.py --libs fastrpc,fastrpc-poll``), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _util import QUIET, pair, run, until

import fastrpc
from fastrpc.polling import CLOSE_AFTER, MAX_BUSY_POLL, PROBE_EVERY, PollWindow, busy_poll_option, poller

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/stat")

SERVER = """
import asyncio, sys, fastrpc
router = fastrpc.Router()

@router.method
async def slow(seconds):
    await asyncio.sleep(seconds)
    return b"done"

@router.method
def echo(x):
    return x

async def main():
    poll = float(sys.argv[1]) or None
    opts = {"keepalive_interval": None, "ws_ping_interval": None}
    async with fastrpc.serve(router, "127.0.0.1", 0, busy_poll=poll, **opts) as server:
        print(server.port, flush=True)
        await asyncio.get_running_loop().create_future()

fastrpc.run(main())
"""


@contextlib.contextmanager
def child_server(busy_poll: float) -> Iterator[tuple[int, int]]:
    """A fastrpc server in a child process: ``(pid, port)``; killed by its pid."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(busy_poll)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the child prints its port once it listens
        assert line.strip().isdigit(), f"the server did not start: {line!r}"
        yield proc.pid, int(line)
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc; clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------- the option


@pytest.mark.parametrize("value", [None, 0, 0.0])
def test_busy_poll_off(value: Any) -> None:
    assert busy_poll_option(value) is None


@pytest.mark.parametrize("value", [50e-6, 1, MAX_BUSY_POLL])
def test_busy_poll_seconds(value: Any) -> None:
    assert busy_poll_option(value) == float(value)


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1e-6, ValueError), (2.0, ValueError), (math.inf, ValueError), ("50us", TypeError), (True, TypeError)]
    + [(math.nan, TypeError)],
)
def test_a_bad_busy_poll_is_refused_by_connect_and_serve_before_any_connection(value: Any, error: Any) -> None:
    async def body() -> None:
        for compression in (None, "deflate"):  # the data path, and websockets' own connection
            with pytest.raises(error, match="busy_poll"):
                await fastrpc.connect("ws://127.0.0.1:9", busy_poll=value, compression=compression)
            with pytest.raises(error, match="busy_poll"):
                await fastrpc.serve(fastrpc.Router(), "127.0.0.1", 0, busy_poll=value, compression=compression).start()

    run(body())


# ------------------------------------------------------------------------ the poller


def test_a_poller_polls_until_its_latest_deadline_then_lets_the_loop_sleep() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        p = poller(loop)
        assert p is poller(loop) and not p.polling
        start, passes = time.monotonic(), p.passes
        p.arm(0.02)
        p.arm(0.08)  # the later deadline holds
        p.arm(0.01)  # an earlier one changes nothing, and starts no second chain
        await asyncio.sleep(0.04)
        assert p.polling, "stopped before its deadline"
        await until(lambda: not p.polling, 2.0, "the poller to stop")
        assert time.monotonic() - start >= 0.08
        spun = p.passes - passes
        assert spun > 50, spun  # it kept the loop running passes
        # Once stopped, the loop sleeps: 0.2 s of waiting costs next to no CPU.
        cpu = time.process_time()
        await asyncio.sleep(0.2)
        assert time.process_time() - cpu < 0.05
        assert p.passes - passes == spun

    run(body())


def test_a_short_poll_lasts_about_as_long_as_asked_not_to_the_next_millisecond() -> None:
    # uvloop's loop.time() counts whole milliseconds: deadlines on it made a 100 us
    # poll last anything up to a millisecond (0.5 ms on average).
    async def body() -> list[float]:
        p = poller(asyncio.get_running_loop())
        lasted = []
        for _ in range(100):
            await until(lambda: not p.polling, 2.0, "the poller to stop")
            t0 = time.perf_counter()
            p.arm(100e-6)
            while p.polling:
                await asyncio.sleep(0)
            lasted.append(time.perf_counter() - t0)
        return lasted

    lasted = run(body())
    assert min(lasted) >= 100e-6, min(lasted)
    assert sorted(lasted)[50] < 350e-6, sorted(lasted)[50]  # the median: a loop pass or two past it


# -------------------------------------------------------------- over real connections


def test_a_client_polls_for_its_answer_up_to_busy_poll_and_no_longer() -> None:
    async def call_cpu(url: str, busy_poll: float | None) -> float:
        async with fastrpc.connect(url, busy_poll=busy_poll, **QUIET) as peer:
            await peer.call("echo", b"warm")
            cpu = time.process_time()
            assert await peer.call("slow", 0.6) == b"done"
            return time.process_time() - cpu

    with child_server(0) as (_, port):
        url = f"ws://127.0.0.1:{port}"
        polled = run(call_cpu(url, 0.1))
        plain = run(call_cpu(url, None))
    # It polled (about 0.1 s of CPU, less when the machine is busy), then slept: a
    # poll that did not stop would burn the whole 0.6 s.
    assert 0.03 <= polled <= 0.35, polled
    assert plain <= 0.05, plain


def test_a_server_polls_after_its_answer_up_to_busy_poll_and_no_longer() -> None:
    async def answer_then_wait(port: int, pid: int) -> float:
        async with fastrpc.connect(f"ws://127.0.0.1:{port}", **QUIET) as peer:
            # The call comes right after the server's last write (its HELLO): its
            # window is still the whole busy_poll when it answers.
            cpu = cpu_seconds(pid)
            assert await peer.call("echo", b"x") == b"x"
            await asyncio.sleep(0.6)
            return cpu_seconds(pid) - cpu

    with child_server(0.1) as (pid, port):
        polled = run(answer_then_wait(port, pid))
    with child_server(0) as (pid, port):
        plain = run(answer_then_wait(port, pid))
    assert 0.03 <= polled <= 0.35, polled
    assert plain <= 0.05, plain


# ------------------------------------------------------------------ the window


class _Clock:
    """A PollWindow's poller, with a clock the test moves: the window's rule, exact."""

    def __init__(self) -> None:
        self.now = 100.0
        self.armed: list[float] = []  # seconds polled after each write (0: none)

    def clock(self) -> float:
        return self.now

    def arm_until(self, until: float) -> None:
        self.armed[-1] = round(until - self.now, 9)  # (the clock's float, not the rule)


def _exchange(w: PollWindow, clock: _Clock, delay: float) -> float:
    """A write, then a read ``delay`` later: what the write polled for."""
    clock.armed.append(0.0)
    w.wrote()
    clock.now += delay
    w.read()
    clock.now += 1.0
    return clock.armed[-1]


def test_a_window_polls_for_busy_poll_after_each_write_while_reads_come_within_it() -> None:
    clock = _Clock()
    w = PollWindow(clock, 0.001)  # type: ignore[arg-type]
    assert [_exchange(w, clock, d) for d in (0.0002, 0.001, 0.0, 0.0009)] == [0.001] * 4
    assert w.open


def test_close_after_late_reads_in_a_row_close_the_window_and_a_hiccup_does_not() -> None:
    clock = _Clock()
    w = PollWindow(clock, 0.001)  # type: ignore[arg-type]
    late = [0.5] * (CLOSE_AFTER - 1)
    polled = [_exchange(w, clock, d) for d in [*late, 0.0002, *late, 0.0002]]  # hiccups
    assert polled == [0.001] * (2 * CLOSE_AFTER) and w.open
    polled = [_exchange(w, clock, 0.5) for _ in range(CLOSE_AFTER + 1)]
    assert polled == [0.001] * CLOSE_AFTER + [0.0] and not w.open


def test_a_closed_window_probes_once_in_probe_every_writes_and_reopens_when_a_read_is_on_time() -> None:
    clock = _Clock()
    w = PollWindow(clock, 0.001)  # type: ignore[arg-type]
    for _ in range(CLOSE_AFTER):
        _exchange(w, clock, 0.5)
    assert not w.open
    polled = [_exchange(w, clock, 0.5) for _ in range(3 * PROBE_EVERY)]
    assert polled.count(0.001) == 3 and polled.count(0.0) == 3 * PROBE_EVERY - 3  # the probes
    assert polled[PROBE_EVERY - 1] == 0.001  # the PROBE_EVERY-th write since the close
    assert not w.open
    # A probe whose read comes within busy_poll opens the window.
    while _exchange(w, clock, 0.0004) == 0.0:
        pass
    assert w.open and _exchange(w, clock, 0.5) == 0.001
    # So does a read on time after a write that did not poll (quick even after a sleep).
    for _ in range(CLOSE_AFTER):
        _exchange(w, clock, 0.5)
    assert not w.open
    assert _exchange(w, clock, 0.0009) == 0.0
    assert w.open and _exchange(w, clock, 0.0009) == 0.001


def test_only_the_last_write_before_a_read_counts() -> None:
    clock = _Clock()
    w = PollWindow(clock, 0.001)  # type: ignore[arg-type]
    for _ in range(10):  # writes that no read follows (a stream going out)
        clock.armed.append(0.0)
        w.wrote()
        clock.now += 0.3
    clock.now -= 0.3 - 0.0001
    w.read()  # 100 us after the last write: within the window
    w.read()  # a second read, no write in between: nothing to measure
    assert w.open and set(clock.armed) == {0.001}


# ------------------------------------------------ the window over real connections


def test_a_client_stops_polling_for_answers_that_come_later_than_busy_poll_and_resumes_for_quick_ones() -> None:
    async def body(port: int) -> tuple[float, float, int]:
        async with fastrpc.connect(f"ws://127.0.0.1:{port}", busy_poll=0.02, **QUIET) as peer:
            for _ in range(CLOSE_AFTER + 1):  # 0.1 s answers, later than busy_poll: the window closes
                assert await peer.call("slow", 0.1) == b"done"
            cpu = time.process_time()
            for _ in range(10):  # 1 s of calls, one probe at most (20 ms)
                assert await peer.call("slow", 0.1) == b"done"
            closed = time.process_time() - cpu
            p = poller(asyncio.get_running_loop())
            passes = p.passes
            for _ in range(50):  # quick answers: the window opens again
                await peer.call("echo", b"x")
            cpu = time.process_time()
            await asyncio.sleep(0.3)  # the last answer's poll, then sleep
            return closed, time.process_time() - cpu, p.passes - passes

    with child_server(0) as (_, port):
        closed, after_quick, passes = run(body(port))
    # A window that stayed at busy_poll would burn ten times 20 ms here.
    assert closed <= 0.06, closed
    assert passes > 0, "no polling once the answers were quick again"
    assert after_quick <= 0.05, after_quick


def test_a_server_stops_polling_for_a_client_that_calls_seldom() -> None:
    async def seldom(port: int, pid: int) -> float:
        async with fastrpc.connect(f"ws://127.0.0.1:{port}", **QUIET) as peer:
            for _ in range(CLOSE_AFTER + 1):  # a call every 0.2 s: each read 0.2 s after the answer
                await peer.call("echo", b"x")
                await asyncio.sleep(0.2)
            cpu = cpu_seconds(pid)
            for _ in range(10):
                await peer.call("echo", b"x")
                await asyncio.sleep(0.2)
            return cpu_seconds(pid) - cpu

    with child_server(0.05) as (pid, port):
        used = run(seldom(port, pid), timeout=20)
    # Polling 50 ms after each of those 10 answers would burn 0.5 s; closed, the
    # window polls after one write in PROBE_EVERY at most.
    assert used <= 0.15, used


def test_calls_and_streams_are_unchanged_with_both_sides_polling() -> None:
    router = fastrpc.Router()

    @router.method
    def echo(x: Any) -> Any:
        return x

    @router.method
    async def items(n: int, size: int) -> Any:
        for i in range(n):
            yield bytes([i % 256]) * size

    async def body() -> None:
        opts = {"busy_poll": 0.002}
        async with pair(router, server_opts=opts, client_opts=opts) as (_, peer):
            for size in (0, 16, 125, 126, 4095, 4096, 70_000):  # the writes' every framing
                data = os.urandom(size)
                assert await peer.call("echo", data) == data
                assert await peer.call("echo", [size, "x"]) == [size, "x"]
            got = [item async for item in peer.stream("items", 50, 3000)]
            assert got == [bytes([i]) * 3000 for i in range(50)]
            answers = await asyncio.gather(*(peer.call("echo", i) for i in range(200)))
            assert answers == list(range(200))
            p = poller(asyncio.get_running_loop())
            assert p.passes > 0
        await until(lambda: not p.polling, 2.0, "the poller to stop")

    run(body())
