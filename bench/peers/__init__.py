"""Peer adapters for bench/compare.py, and the code its child processes run.

Each library has one module here with the same small interface:

``info() -> dict``
    the library's version (and for fastrpc, which codec is live).
``async start_server() -> (port, stop)``
    serve the benchmark endpoints on 127.0.0.1, port 0 (runs in the server child).
``Client(port)``: ``connect()``, ``close()``, ``stream(n, size) -> bytes received``,
    ``call(payload) -> payload`` (concurrency-safe), optionally ``seq_calls(n, payload)``.
``async idle_connection(port) -> object with async close()``
    one connection that does nothing (memory scenario).
``async fanout_subscribers(port, subs, recorder) -> object``
    (fan-out scenarios) ``subs`` connections subscribed to the server's feed, each
    item handed to ``recorder.got(item)``; the object's ``feed(count, size, rate)``
    asks the server to publish ``count`` items (:func:`feed_item`) to every one of
    them (``rate`` items/s, 0: as fast as it can), ``close()`` closes them all.

What each library needs and which scenarios it runs is in :data:`LIBS`.

Importing this package imports none of the benchmarked libraries: the parent
process only orchestrates, every server and client runs in its own spawned child.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import math
import os
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

HOST = "127.0.0.1"
# The environment variable that names the directory a child imports fastrpc from
# (see Lib.src). A spawned child gets the parent's sys.path (multiprocessing sets it
# over PYTHONPATH), so _apply_env puts the directory first, before fastrpc is imported.
SRC_ENV = "BENCH_FASTRPC_SRC"

THROUGHPUT = ("small", "bulk", "seq_calls", "inflight_calls")
MEMORY_CONN = ("memory_conn",)
FANOUT = ("fanout_100", "fanout_1000")


class Lib:
    """A library as given to --libs: its module here, the environment both of its
    processes get, the import names it needs, and the scenarios it runs.

    ``src`` (fastrpc's libraries; set by compare.py): the ``src`` directory whose
    ``fastrpc`` package the children must import, whatever else is on ``sys.path``
    or installed: the work tree's own for ``fastrpc`` and ``fastrpc-pure``, the
    ``--baseline`` checkout's for ``fastrpc-base``."""

    def __init__(
        self,
        module: str,
        imports: tuple[str, ...],
        supports: tuple[str, ...],
        env: dict[str, str] | None = None,
        src: str | None = None,
    ) -> None:
        self.module = module
        self.imports = imports
        self.supports = frozenset(supports)
        self.env = env or {}
        self.src = src


_FASTRPC = (*THROUGHPUT, "streams_1000", *FANOUT, *MEMORY_CONN, "memory_stream", "memory_stream_call")

LIBS: dict[str, Lib] = {
    "fastrpc": Lib("fastrpc", ("fastrpc", "websockets", "msgspec"), _FASTRPC, {"FASTRPC_NO_EXTENSIONS": "0"}),
    "fastrpc-pure": Lib("fastrpc", ("fastrpc", "websockets", "msgspec"), _FASTRPC, {"FASTRPC_NO_EXTENSIONS": "1"}),
    # Another checkout of fastrpc (compare.py --baseline DIR sets its src): the same
    # adapter (peers/fastrpc.py) over that tree's fastrpc, for same-run before/after.
    "fastrpc-base": Lib("fastrpc", ("websockets", "msgspec"), _FASTRPC, {"FASTRPC_NO_EXTENSIONS": "0"}),
    # This tree's fastrpc with busy_poll=50 us on the server and the calls' client
    # (fastrpc.polling): the call rows only, and only when asked for (not in "all").
    "fastrpc-poll": Lib(
        "fastrpc",
        ("fastrpc", "websockets", "msgspec"),
        ("seq_calls", "inflight_calls"),
        {"FASTRPC_NO_EXTENSIONS": "0", "BENCH_BUSY_POLL": "50e-6"},
    ),
    "websockets": Lib("websockets_raw", ("websockets",), (*THROUGHPUT, *FANOUT, *MEMORY_CONN)),
    "picows": Lib("picows", ("picows",), (*THROUGHPUT, *MEMORY_CONN)),
    # The floor: an asyncio Protocol echo over raw TCP (no WebSocket).
    "tcp": Lib("tcp", (), (*THROUGHPUT, *MEMORY_CONN)),
    "grpcio": Lib("grpcio", ("grpc",), (*THROUGHPUT, "streams_1000", *MEMORY_CONN)),
    "rsocket": Lib("rsocket", ("rsocket",), (*THROUGHPUT, "streams_1000", *MEMORY_CONN)),
    # python-socketio (AsyncServer on aiohttp, AsyncClient): only the fan-out rows.
    "socketio": Lib("python_socketio", ("socketio", "aiohttp"), FANOUT),
}


def environment(lib: str) -> dict[str, str]:
    """This process's environment with ``lib``'s own on top (``Lib.env``): what a
    child process measuring ``lib`` gets."""
    return {**os.environ, **LIBS[lib].env}


def load(lib: str) -> Any:
    return importlib.import_module(f"peers.{LIBS[lib].module}")


# --------------------------------------------------------------------- helpers


@contextlib.contextmanager
def server_child(lib: str, code: str, pin: bool, stdin: bool = False) -> Iterator[tuple[Any, int]]:
    """(sides.py, critical_path.py) Run ``python -c code``, a server that prints its
    port first; yield the process and the port, with this process then on CPU 1 when
    ``pin`` (after the child started: it would inherit the CPU); kill it at the end."""
    server = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"{lib}: the server did not start")
        if pin:
            os.sched_setaffinity(0, {1})
        yield server, int(line)
    finally:
        server.kill()
        server.wait(10)


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc status")


def _run(coro: Any, loop_kind: str, profile: str | None = None) -> Any:
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            return _run(coro, loop_kind)
        finally:
            prof.disable()
            prof.dump_stats(profile)
    if loop_kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        return uvloop.run(coro)
    return asyncio.run(coro)


def _apply_env(env: dict[str, str]) -> None:
    for k, v in env.items():
        os.environ[k] = v
    cpu = env.get("BENCH_CPU")
    if cpu and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu)})
    src = env.get(SRC_ENV)
    if src:
        _use_src(src)


def _use_src(src: str) -> None:
    if "fastrpc" in sys.modules:
        raise RuntimeError("fastrpc was imported before its source directory was chosen")
    real = os.path.realpath(src)
    sys.path[:] = [src, *(p for p in sys.path if os.path.realpath(p or os.curdir) != real)]


def _check_src(env: dict[str, str]) -> None:
    """The fastrpc this child imported lives under the chosen directory (not an
    installed copy, not the other tree)."""
    src = env.get(SRC_ENV)
    mod = sys.modules.get("fastrpc")
    if not src or mod is None:
        return
    where = os.path.realpath(getattr(mod, "__file__", "") or "")
    if not where.startswith(os.path.realpath(src) + os.sep):
        raise RuntimeError(f"imported fastrpc from {where}, expected it under {src}")


# ---------------------------------------------------------------- server child


def server_main(lib: str, env: dict[str, str], conn: Any, profile: str | None = None) -> None:
    """Child process: serve ``lib`` until the parent writes to (or closes) ``conn``.
    With ``profile``, cProfile statistics are written to that file."""
    try:
        _apply_env(env)
        mod = load(lib)
        _check_src(env)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return

    async def main() -> None:
        loop = asyncio.get_running_loop()
        try:
            port, stop = await mod.start_server()
        except BaseException:
            conn.send(("error", traceback.format_exc()))
            return
        done = asyncio.Event()
        loop.add_reader(conn.fileno(), done.set)
        conn.send(("ready", port, mod.info()))
        await done.wait()
        loop.remove_reader(conn.fileno())
        try:
            await asyncio.wait_for(stop(), 5)
        except BaseException:
            pass

    _run(main(), getattr(mod, "LOOP", "uvloop"), profile)


# ---------------------------------------------------------------- client child


def client_main(
    lib: str,
    env: dict[str, str],
    port: int,
    server_pid: int,
    scenario: str,
    params: dict[str, Any],
    conn: Any,
    profile: str | None = None,
) -> None:
    """Child process: run one scenario against the server, send back the result."""
    try:
        _apply_env(env)
        mod = load(lib)
        _check_src(env)
        result = _run(_scenario(mod, scenario, params, port, server_pid), getattr(mod, "LOOP", "uvloop"), profile)
        result["client_info"] = mod.info()
        conn.send(("result", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


async def _scenario(mod: Any, scenario: str, p: dict[str, Any], port: int, server_pid: int) -> dict[str, Any]:
    if scenario.startswith("memory"):
        return await _memory(mod, scenario, p, port, server_pid)
    if scenario.startswith("fanout"):
        return await _fanout(mod, p, port, server_pid)
    client = mod.Client(port)
    await client.connect()
    try:
        return await _throughput(client, scenario, p)
    finally:
        await asyncio.wait_for(client.close(), 10)


async def _timed(client: Any, scenario: str, p: dict[str, Any], n: int) -> float:
    """Run ``n`` units of ``scenario`` once; return the elapsed seconds."""
    size = p.get("size", 16)
    t0 = time.perf_counter()
    if scenario in ("small", "bulk"):
        got = await client.stream(n, size)
        if got != n * size:
            raise AssertionError(f"received {got} bytes, expected {n * size}")
    elif scenario == "seq_calls":
        await client.seq_calls(n, b"p" * size)
    elif scenario == "inflight_calls":
        await client.inflight_calls(n, p["window"], b"p" * size)
    elif scenario == "streams_1000":
        streams = p["streams"]
        got = sum(await asyncio.gather(*(client.stream(n, size) for _ in range(streams))))
        if got != streams * n * size:
            raise AssertionError(f"received {got} bytes, expected {streams * n * size}")
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    return time.perf_counter() - t0


def _value(scenario: str, p: dict[str, Any], n: int, dt: float) -> float:
    if scenario == "bulk":
        return float(n * p["size"] / dt / 1e6)
    if scenario == "streams_1000":
        return float(p["streams"] * n / dt)
    return n / dt


async def _throughput(client: Any, scenario: str, p: dict[str, Any]) -> dict[str, Any]:
    """Warm up (which also calibrates), then the best of ``repeat`` runs.

    The count is adjusted from the warm-up's pace: raised (up to ``max_growth`` times)
    so that one run lasts at least ``min_time`` seconds, since shorter runs are mostly
    noise; lowered (never below ``min_n``) so that a slow library's run stays within
    ``budget`` seconds. The figure is a rate either way; the count used is reported.
    """
    n_full = p["n"]
    n_warm = min(n_full, max(p["min_n"], math.ceil(n_full * 0.05)))
    dt = await _timed(client, scenario, p, n_warm)
    n = _count_for(p, dt / n_warm)
    runs = []
    for _ in range(p["repeat"]):
        gc.collect()
        dt = await _timed(client, scenario, p, n)
        runs.append(_value(scenario, p, n, dt))
    return {"value": max(runs), "runs": runs, "n": n}


async def _settle(pid: int, seconds: float) -> int:
    """Wait, then read the server's RSS (the highest of a few reads)."""
    await asyncio.sleep(seconds)
    vals = []
    for _ in range(3):
        vals.append(rss_kib(pid))
        await asyncio.sleep(0.05)
    return max(vals)


async def _memory(mod: Any, scenario: str, p: dict[str, Any], port: int, server_pid: int) -> dict[str, Any]:
    n, warm = p["n"], p["warm"]
    if scenario == "memory_conn":
        held = [await mod.idle_connection(port) for _ in range(warm)]
        before = await _settle(server_pid, 0.5)
        for _ in range(n):
            held.append(await mod.idle_connection(port))
        after = await _settle(server_pid, 1.0)
        for h in held:
            await asyncio.wait_for(h.close(), 10)
    else:
        kind = "stream" if scenario == "memory_stream" else "call"
        host = await mod.idle_streams(port)
        await host.add(kind, warm)
        before = await _settle(server_pid, 0.5)
        await host.add(kind, n)
        after = await _settle(server_pid, 1.0)
        await asyncio.wait_for(host.close(), 10)
    return {"value": (after - before) / n, "n": n, "rss_before_kib": before, "rss_after_kib": after}


# ------------------------------------------------------------------- fan-out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used (Linux /proc; clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _feed_once(
    handle: Any, rec: FeedRecorder, subs: int, count: int, size: int, rate: float, server_pid: int
) -> dict[str, Any]:
    """One feed of ``count`` items to ``subs`` subscribers: from the request to the
    server until every subscriber has the last item. Also the CPU time each side
    spent per delivery (the server's from /proc, at the clock tick's resolution)."""
    rec.reset(count, subs)
    cpu_server, cpu_client = cpu_seconds(server_pid), time.process_time()
    t0 = time.perf_counter()
    await handle.feed(count, size, rate)
    end = await asyncio.wait_for(rec.done, 120)
    cpu_client = time.process_time() - cpu_client
    cpu_server = cpu_seconds(server_pid) - cpu_server
    await asyncio.sleep(0)  # (items after the last one would be counted here)
    if rec.received != count * subs:
        raise AssertionError(f"received {rec.received} items, expected {count} x {subs} subscribers")
    dt = end - t0
    lat = rec.latencies
    deliveries = count * subs
    return {
        "value": deliveries / dt,
        "per_subscriber": count / dt,
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "count": count,
        "server_cpu_us": cpu_server / deliveries * 1e6,
        "client_cpu_us": cpu_client / deliveries * 1e6,
    }


async def _fanout(mod: Any, p: dict[str, Any], port: int, server_pid: int) -> dict[str, Any]:
    """The fan-out rows: ``subs`` connections subscribe to one feed of ``size``-byte
    items. A warm-up feed calibrates the count (as :func:`_throughput` does), then
    the best of ``repeat`` saturated feeds (the server publishes as fast as its
    library lets it), then one paced feed (``paced_rate`` deliveries/s in all, for
    ``paced_s`` seconds): its latency is the one not made of queueing."""
    subs, size = p["subs"], p["size"]
    rec = FeedRecorder()
    t0 = time.perf_counter()
    handle = await mod.fanout_subscribers(port, subs, rec)
    connect_s = time.perf_counter() - t0
    try:
        n_full = p["n"]
        n_warm = min(n_full, max(p["min_n"], math.ceil(n_full * 0.1)))
        warm = await _feed_once(handle, rec, subs, n_warm, size, 0, server_pid)
        n = _count_for(p, 1 / warm["per_subscriber"])  # seconds per item (to every subscriber)
        runs = []
        for _ in range(p["repeat"]):
            gc.collect()
            runs.append(await _feed_once(handle, rec, subs, n, size, 0, server_pid))
        best = max(runs, key=lambda r: r["value"])
        rate = p["paced_rate"] / subs  # items/s, each to every subscriber
        paced = await _feed_once(handle, rec, subs, max(2, round(rate * p["paced_s"])), size, rate, server_pid)
    finally:
        await asyncio.wait_for(handle.close(), 30)
    return {
        **best,
        "runs": [r["value"] for r in runs],
        "n": n,
        "subscribers": subs,
        "connect_s": connect_s,
        "paced": {"deliveries_per_s": p["paced_rate"], **{k: paced[k] for k in ("value", "p50_ms", "p99_ms", "count")}},
    }


# The fan-out feed's item: a sequence number and the publish time, 16 bytes (padded to
# the size asked for). time.perf_counter is CLOCK_MONOTONIC on Linux, one clock for
# every process: the subscriber's reading minus the publisher's is the delivery time.
FEED_ITEM = struct.Struct("<Qd")


def feed_item(seq: int, size: int = 16) -> bytes:
    """Item ``seq`` of a feed, stamped now."""
    item = FEED_ITEM.pack(seq, time.perf_counter())
    return item if size <= FEED_ITEM.size else item.ljust(size, b"x")


async def pace(start: float, i: int, rate: float) -> None:
    """A paced feed (``rate`` items/s from ``start``): wait for item ``i + 1``'s time."""
    delay = start + (i + 1) / rate - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


class FeedRecorder:
    """Counts a feed's items on every subscriber and their publish-to-receipt times;
    ``done`` gets the time the last subscriber received the last item."""

    def __init__(self) -> None:
        self.reset(0, 0)

    def reset(self, count: int, subs: int) -> None:
        self.last = count - 1
        self.left = subs
        self.latencies: list[float] = []
        self.done: asyncio.Future[float] | None = None
        if subs:
            self.done = asyncio.get_running_loop().create_future()

    @property
    def received(self) -> int:
        return len(self.latencies)

    def got(self, item: bytes) -> None:
        now = time.perf_counter()
        seq, t = FEED_ITEM.unpack_from(item)
        self.latencies.append(now - t)
        if seq == self.last:
            self.left -= 1
            if not self.left and self.done is not None and not self.done.done():
                self.done.set_result(now)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (seconds, sorted or not) in milliseconds."""
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


# ------------------------------------------------------------- shared helpers


def _count_for(p: dict[str, Any], per_unit: float) -> int:
    """Units for one measured run: the nominal ``n``, raised (up to ``max_growth``
    times) so that a fast library's run lasts ``min_time``, or cut (down to
    ``min_n``) so that a slow one's stays within ``budget``; ``per_unit`` in s."""
    n_full = p["n"]
    budget, min_time = p.get("budget"), p.get("min_time")
    if min_time and per_unit * n_full < min_time:
        return min(n_full * p.get("max_growth", 10), math.ceil(min_time / per_unit))
    if budget and per_unit * n_full > budget:
        return min(n_full, max(p["min_n"], int(budget / per_unit)))
    return int(n_full)


async def sequential_calls(call: Any, n: int, payload: bytes) -> None:
    """``n`` calls one after the other, each checked to echo ``payload``."""
    for _ in range(n):
        r = await call(payload)
        if len(r) != len(payload):
            raise AssertionError("bad echo")


async def inflight_with_workers(call: Any, n: int, window: int, payload: bytes) -> None:
    """``n`` calls with ``window`` in flight: ``window`` workers calling in turn."""
    per, extra = divmod(n, window)

    async def worker(k: int) -> None:
        for _ in range(k):
            r = await call(payload)
            if len(r) != len(payload):
                raise AssertionError("bad echo")

    await asyncio.gather(*(worker(per + (1 if i < extra else 0)) for i in range(window)))


def python_info() -> dict[str, Any]:
    return {"python": sys.version.split()[0]}
