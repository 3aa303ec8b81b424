"""``busy_poll`` (fastrpc.polling): after a write, the loop polls for up to that long
instead of sleeping, and then sleeps as before.

What a user can see is CPU: a side that polls burns up to ``busy_poll`` of it after
each write that no reply follows, and no more. Measured here as process CPU time:
the test process's own for a client, ``/proc/<pid>/stat`` for a server in a child
process (stopped by its pid). The latency it buys is measured in ``bench/``
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
from fastrpc.polling import MAX_BUSY_POLL, busy_poll_option, poller

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
        start, passes = loop.time(), p.passes
        p.arm(0.02)
        p.arm(0.08)  # the later deadline holds
        p.arm(0.01)  # an earlier one changes nothing, and starts no second chain
        await asyncio.sleep(0.04)
        assert p.polling, "stopped before its deadline"
        await until(lambda: not p.polling, 2.0, "the poller to stop")
        assert loop.time() - start >= 0.08
        spun = p.passes - passes
        assert spun > 50, spun  # it kept the loop running passes
        # Once stopped, the loop sleeps: 0.2 s of waiting costs next to no CPU.
        cpu = time.process_time()
        await asyncio.sleep(0.2)
        assert time.process_time() - cpu < 0.05
        assert p.passes - passes == spun

    run(body())


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
            await peer.call("echo", b"warm")
            await asyncio.sleep(0.3)  # any poll of that answer is over
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
