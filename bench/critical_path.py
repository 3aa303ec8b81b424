#!/usr/bin/env python
"""Where a sequential call's wall time goes: each side's critical path.

    python bench/critical_path.py [--libs fastrpc,picows,tcp] [--n N] [--baseline DIR]

``--libs`` takes fastrpc, fastrpc-base (with ``--baseline``), fastrpc-poll (this tree
with ``busy_poll`` on both sides: fastrpc.polling), picows and tcp.

A sequential call is a relay: the client writes, the server reads, works, writes,
the client reads, works, writes the next call. Only the work between a side's read
and its next write holds the relay up; what a side does after its write overlaps
with the other side. ``sides.py`` gives each side's CPU per call, this gives the part
of it on the call's path. Each side timestamps (``perf_counter_ns``) three points:

* ``read``: a message's bytes reach Python (fastrpc: its compiled call lane's
  ``buffer_updated``, the socket's protocol, or ``_Wire.buffer_updated``, with the
  WebSocket framing after it; picows: the listener's ``on_ws_frame``, its
  Cython framing before it, not seen; raw TCP: ``data_received``, its length
  framing after it);
* ``write``: the library's write of the reply or of the next call is entered, and
  when it returns (the loopback's delivery to the other side is done inside that
  system call, on the writer's clock);
* the end of the read's handling.

Per side it prints the medians of: read -> write (the side's share of the critical
path in user space), the write call itself, and read -> end of the read's handling
(on the client the next call is written after it, from the woken task; on the server
the reply is written inside it). The hooks wrap a few private functions of each
library (``fastrpc.transport._Wire``, the benchmark's own picows and TCP peers):
a probe of this tree, not an API. The hooks cost each library the same few
hundred nanoseconds. Server on CPU 0, client on CPU 1, as ``compare.py`` pins them.

``--spin server|client|both`` keeps that side's event loop from ever sleeping (a
callback that schedules itself, so each pass polls the socket without blocking):
its CPU never idles, so a write to it wakes no sleeping CPU and its read starts with
warm caches. Not how any library runs; it splits a call's time into the work of the
two sides and the cost of waking them (bench/README.md, "Where a sequential call's
time goes").
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_ns = time.perf_counter_ns
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import peers  # noqa: E402 - imports none of the measured libraries

_SERVER = """
import asyncio, json, os, sys
sys.path.insert(0, {bench!r}); sys.path.insert(1, {src!r})
if {pin}:
    os.sched_setaffinity(0, {{0}})
import uvloop, peers, critical_path as cp
log = cp.hook({lib!r}, "server")
mod = peers.load({lib!r})
async def main():
    if {spin}:
        cp.keep_busy()
    port, stop = await mod.start_server()
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if cmd == "go":
            log.clear()
        elif cmd == "report":
            print(json.dumps(cp.summarise(log, True)), flush=True)
        else:
            return
uvloop.run(main())
"""


class _Sent:
    """A picows transport whose ``send`` is timed (the peer's client and server
    call ``transport.send``)."""

    def __init__(self, transport: Any, log: list[tuple[str, int]]) -> None:
        self._transport = transport
        self._log = log

    def send(self, *args: Any) -> Any:
        self._log.append(("w", _ns()))
        r = self._transport.send(*args)
        self._log.append(("W", _ns()))
        return r

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Written:
    """A socket transport whose ``write`` is timed: what fastrpc's compiled call lane
    (``frames.CallLane``) writes with, given it in place of the real one."""

    def __init__(self, transport: Any, log: list[tuple[str, int]]) -> None:
        self._transport = transport
        self._log = log

    def write(self, data: Any) -> None:
        self._log.append(("w", _ns()))
        self._transport.write(data)
        self._log.append(("W", _ns()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _TimedLane(asyncio.BufferedProtocol):
    """The socket's protocol in place of fastrpc's compiled call lane, which is the
    protocol once built: its reads timed, everything forwarded to it."""

    def __init__(self, lane: Any, log: list[tuple[str, int]], inside: list[bool]) -> None:
        self._lane = lane
        self._log = log
        self._inside = inside

    def get_buffer(self, sizehint: int) -> Any:
        return self._lane.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._log.append(("r", _ns()))
        self._inside[0] = True  # (the transport's own read hook, reached through it, is not a read)
        try:
            self._lane.buffer_updated(nbytes)
        finally:
            self._inside[0] = False
            self._log.append(("x", _ns()))

    def eof_received(self) -> Any:
        return self._lane.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane.connection_lost(exc)

    def pause_writing(self) -> None:
        self._lane.pause_writing()

    def resume_writing(self) -> None:
        self._lane.resume_writing()


def _wrap_lane(cls: type, log: list[tuple[str, int]], inside: list[bool]) -> None:
    """Time the writes of the compiled call lane the transport builds (it writes to
    the socket itself, not through ``write_now``), and its reads where it is the
    socket's protocol (this tree; before, the transport's read callback called it)."""
    inner = cls.attach_lane

    def attach_lane(self: Any, make: Any) -> Any:
        def timed(wire: Any, tcp: Any, *rest: Any) -> Any:
            return make(wire, _Written(tcp, log), *rest)

        lane = inner(self, timed)
        tcp = getattr(self, "_tcp", None)
        if lane is not None and tcp is not None and tcp.get_protocol() is lane:
            tcp.set_protocol(_TimedLane(lane, log, inside))
        return lane

    cls.attach_lane = attach_lane


def _wrap_read(
    cls: type, name: str, log: list[tuple[str, int]], arg_proxy: bool = False, inside: list[bool] | None = None
) -> None:
    inner = getattr(cls, name)
    last: list[Any] = [None, None]  # a transport and its _Sent (one connection at a time)

    def read(self: Any, *args: Any) -> Any:
        if inside is not None and inside[0]:
            return inner(self, *args)  # (timed by _TimedLane already)
        log.append(("r", _ns()))
        if arg_proxy:  # picows's server: the transport comes with each frame
            t = args[0]
            if last[0] is not t:
                last[0], last[1] = t, _Sent(t, log)
            args = (last[1], *args[1:])
        try:
            return inner(self, *args)
        finally:
            log.append(("x", _ns()))

    setattr(cls, name, read)


def _wrap_write(cls: type, name: str, log: list[tuple[str, int]]) -> None:
    inner = getattr(cls, name)

    def write(self: Any, *args: Any) -> Any:
        log.append(("w", _ns()))
        try:
            return inner(self, *args)
        finally:
            log.append(("W", _ns()))

    setattr(cls, name, write)


_spins = [0]  # loop passes made by keep_busy's callback (reported: the spin happened)


def keep_busy() -> None:
    """Keep the running loop from sleeping: a callback that schedules itself makes
    every pass poll with a zero timeout (``--spin``)."""
    loop = asyncio.get_running_loop()

    def again() -> None:
        _spins[0] += 1
        loop.call_soon(again)

    again()


def hook(lib: str, side: str) -> list[tuple[str, int]]:
    """Install the timestamps of ``lib``'s ``side`` (before it connects: the event
    loop binds a protocol's methods when the connection is made)."""
    log: list[tuple[str, int]] = []
    if lib.startswith("fastrpc"):
        from fastrpc import transport

        wire = transport._Wire
        inside = [False]
        _wrap_read(wire, "buffer_updated", log, inside=inside)
        _wrap_write(wire, "write_now", log)
        _wrap_write(wire, "write_parts_now", log)
        if hasattr(wire, "attach_lane"):  # (a tree from before the compiled call lane has none)
            _wrap_lane(wire, log, inside)
    elif lib == "picows":
        from peers import picows

        if side == "server":
            _wrap_read(picows._ServerListener, "on_ws_frame", log, arg_proxy=True)
        else:
            _wrap_read(picows._ClientListener, "on_ws_frame", log)
    elif lib == "tcp":
        from peers import tcp

        _wrap_read(tcp._Framed, "data_received", log)
        _wrap_write(tcp._Framed, "send", log)
    else:
        raise ValueError(f"{lib}: no hooks for it (fastrpc, fastrpc-base, fastrpc-poll, picows, tcp)")
    return log


def summarise(log: list[tuple[str, int]], times: bool = False) -> dict[str, Any]:
    """Medians in microseconds: read -> first write after it, the write call, read ->
    end of its handling, read -> next read; with ``times``, every read's start and
    every write's return too (ns, for the hops between the two sides: ``hops``)."""
    to_write: list[int] = []
    writing: list[int] = []
    handling: list[int] = []
    cycle: list[int] = []
    read = wrote = None
    seen_write = True
    for kind, t in log:
        if kind == "r":
            if read is not None:
                cycle.append(t - read)
            read, seen_write = t, False
        elif kind == "w":
            wrote = t
            if read is not None and not seen_write:
                to_write.append(t - read)
                seen_write = True
        elif kind == "W" and wrote is not None:
            writing.append(t - wrote)
            wrote = None
        elif kind == "x" and read is not None:
            handling.append(t - read)

    def med(xs: list[int]) -> float:
        return statistics.median(xs) / 1000 if xs else float("nan")

    def mean(xs: list[int]) -> float:
        return statistics.fmean(xs) / 1000 if xs else float("nan")

    percentiles = statistics.quantiles(to_write, n=100) if len(to_write) > 1 else []

    out: dict[str, Any] = {
        "read_to_write": med(to_write),
        "write_call": med(writing),
        "read_handling": med(handling),
        "read_to_read": med(cycle),
        # Means add up to a call's mean time (wall / calls); medians do not.
        "mean_read_to_write": mean(to_write),
        "mean_write_call": mean(writing),
        "deciles_read_to_write": [q / 1000 for q in percentiles[9::10]],
        "p99_read_to_write": percentiles[-1] / 1000 if percentiles else float("nan"),
        "reads": len(cycle) + 1 if read is not None else 0,
        "spin_passes": _spins[0],
    }
    if times:
        out["reads_at"] = [t for kind, t in log if kind == "r"]
        out["written_at"] = [t for kind, t in log if kind == "W"]
        # Each write call's start, beside its return (nested calls paired inside out).
        starts: list[int] = []
        out["write_started_at"] = started = []
        for kind, t in log:
            if kind == "w":
                starts.append(t)
            elif kind == "W" and starts:
                started.append(starts.pop())
    return out


def _hops_to(writer: dict[str, Any], reader: dict[str, Any]) -> list[tuple[int, int]]:
    """Each read of ``reader`` after a write of ``writer``: (its time, its hop) in ns,
    the hop running from the start of the last write *started* before the read (both
    sides stamp the machine's monotonic clock). Not from its return: the reader, on
    the other CPU, can read before the writer's system call returns (a polling
    reader, ``--spin``, or a writer preempted inside it), and matched by returns
    that read would count from the call before's write, a whole call too long. What
    the writer does after the delivery overlaps with the reader."""
    starts = sorted(writer["write_started_at"])
    out = []
    for t in reader["reads_at"]:
        i = bisect.bisect_right(starts, t)
        if i:
            out.append((t, t - starts[i - 1]))
    return out


def after_hops(writer: dict[str, Any], reader: dict[str, Any], parts: int = 5) -> list[tuple[float, float]]:
    """The reader's reads in ``parts`` groups by how long their hop took (shortest
    first): each group's median hop and median time from the read to the return of
    the reader's next write (its work and its write), in us. A long hop is a wake-up
    from a halted CPU; this shows what it costs the work after it too."""
    own = reader["written_at"]
    pairs = []
    for t, hop in _hops_to(writer, reader):
        j = bisect.bisect_left(own, t)
        if j < len(own):
            pairs.append((hop, own[j] - t))
    pairs.sort()
    n = len(pairs)
    out = []
    for k in range(parts if n >= parts else 0):
        group = pairs[k * n // parts : (k + 1) * n // parts]
        out.append((statistics.median(p[0] for p in group) / 1000, statistics.median(p[1] for p in group) / 1000))
    return out


def hops(writer: dict[str, Any], reader: dict[str, Any]) -> tuple[float, float]:
    """Median and mean us from a write's start on one side to the next read reaching
    Python on the other: the write's system call up to the loopback's delivery, the
    wake-up, the kernel's and the event loop's part of a call."""
    gaps = [hop for _, hop in _hops_to(writer, reader)]
    if not gaps:
        return float("nan"), float("nan")
    return statistics.median(gaps) / 1000, statistics.fmean(gaps) / 1000


async def _client(
    mod: Any, port: int, server: subprocess.Popen[str], lib: str, n: int, spin: bool = False
) -> dict[str, Any]:
    log = hook(lib, "client")
    if spin:
        keep_busy()
    client = mod.Client(port)
    await client.connect()
    if lib == "picows":
        client.transport = _Sent(client.transport, log)
    try:
        payload = b"x" * 16
        for _ in range(500):  # warm-up
            await client.call(payload)
        best: dict[str, Any] = {}
        for _ in range(3):
            assert server.stdin is not None and server.stdout is not None
            server.stdin.write("go\n")
            server.stdin.flush()
            await asyncio.sleep(0.2)  # the server clears its log first
            log.clear()
            t0 = time.perf_counter()
            for _ in range(n):
                await client.call(payload)
            wall = time.perf_counter() - t0
            server.stdin.write("report\n")
            server.stdin.flush()
            line = await asyncio.get_running_loop().run_in_executor(None, server.stdout.readline)
            row = {"calls_per_s": n / wall, "us_per_call": wall / n * 1e6}
            client_side = summarise(log, True)
            server_side = json.loads(line)
            row["hop_to_server"], row["mean_hop_to_server"] = hops(client_side, server_side)
            row["hop_to_client"], row["mean_hop_to_client"] = hops(server_side, client_side)
            row["server_after_hops"] = after_hops(client_side, server_side)
            for side in (client_side, server_side):
                del side["reads_at"], side["written_at"], side["write_started_at"]
            row["client"], row["server"] = client_side, server_side
            if row["calls_per_s"] > best.get("calls_per_s", 0):
                best = row
        return best
    finally:
        await asyncio.wait_for(client.close(), 10)


def _one(lib: str, src: str, n: int, spin: str = "none") -> None:
    """(child) One library: its server in a grandchild on CPU 0, its client here on CPU 1."""
    sys.path.insert(1, src)  # after bench/ (peers), before an installed fastrpc
    pin = hasattr(os, "sched_getaffinity") and {0, 1} <= os.sched_getaffinity(0)
    name = "fastrpc" if lib in ("fastrpc-base", "fastrpc-poll") else lib
    code = _SERVER.format(bench=HERE, src=src, lib=name, pin=pin, spin=spin in ("server", "both"))
    import uvloop

    with peers.server_child(lib, code, pin, stdin=True) as (server, port):
        mod = peers.load(name)
        client = _client(mod, port, server, name, n, spin in ("client", "both"))
        r = uvloop.run(asyncio.wait_for(client, 300))
        print(json.dumps(r))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--libs", default="fastrpc,picows,tcp")
    ap.add_argument("--n", type=int, default=20_000, help="calls a run (best of three)")
    ap.add_argument("--baseline", help="another checkout: its src/ is fastrpc-base's")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument(
        "--spin",
        choices=("none", "server", "client", "both"),
        default="none",
        help="keep that side's loop from sleeping: no wake-up costs (see the docstring)",
    )
    args = ap.parse_args(argv)
    libs = args.libs.split(",")
    if args.baseline and "fastrpc-base" not in libs:
        libs.insert(1, "fastrpc-base")
    spinning = "" if args.spin == "none" else f"; {args.spin} spinning (--spin)"
    print(f"sequential calls of 16 bytes, {args.n:,} a run, best of three; medians in us{spinning}")
    print(
        f"  {'library':<13} {'calls/s':>8} {'us/call':>8} | {'server: read->write':>19} {'write':>6}"
        f" {'handling':>8} | {'client: read->write':>19} {'write':>6} {'handling':>8} | {'both sides':>10}"
        f" | {'hop to server':>13} {'to client':>9}"
    )
    results: dict[str, Any] = {}
    for lib in libs:
        src = os.path.join(args.baseline, "src") if lib == "fastrpc-base" else os.path.join(ROOT, "src")
        out = subprocess.run(
            [sys.executable, __file__, "--one", lib, src, str(args.n), args.spin],
            env=peers.environment(lib),  # fastrpc-poll's busy_poll, fastrpc-pure's codec
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode:
            print(f"  {lib:<13} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = results[lib] = json.loads(out.stdout.strip().splitlines()[-1])
        r["spin"] = args.spin
        s, c = r["server"], r["client"]
        print(
            f"  {lib:<13} {r['calls_per_s']:>8,.0f} {r['us_per_call']:>8.2f} | {s['read_to_write']:>19.2f}"
            f" {s['write_call']:>6.2f} {s['read_handling']:>8.2f} | {c['read_to_write']:>19.2f}"
            f" {c['write_call']:>6.2f} {c['read_handling']:>8.2f} | {s['read_to_write'] + c['read_to_write']:>10.2f}"
            f" | {r['hop_to_server']:>13.2f} {r['hop_to_client']:>9.2f}"
        )
    if results:
        # The means add up: a call's mean time is the two sides' read -> write and
        # the two hops, each from a write's start (the write calls' means, beside
        # them, are inside the hops: the rest of a write overlaps the other side).
        print("means in us (work and hops add up to us/call; a write call is inside its hop)")
        print(
            f"  {'library':<13} {'us/call':>8} | {'server work':>11} {'write':>6} | {'client work':>11}"
            f" {'write':>6} | {'hop to server':>13} {'to client':>9} | {'sum':>7}"
        )
        for lib, r in results.items():
            s, c = r["server"], r["client"]
            parts = (s["mean_read_to_write"], c["mean_read_to_write"], r["mean_hop_to_server"], r["mean_hop_to_client"])
            print(
                f"  {lib:<13} {r['us_per_call']:>8.2f} | {parts[0]:>11.2f} {s['mean_write_call']:>6.2f}"
                f" | {parts[1]:>11.2f} {c['mean_write_call']:>6.2f} | {parts[2]:>13.2f} {parts[3]:>9.2f}"
                f" | {sum(parts):>7.2f}"
            )
        print("the server's reads by how long the hop to them took (fifths, shortest first):")
        print("median hop / median read -> return of the reply's write, in us")
        for lib, r in results.items():
            cells = "  ".join(f"{h:6.1f} /{w:6.1f}" for h, w in r["server_after_hops"])
            print(f"  {lib:<13} {cells}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        _one(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])
    else:
        sys.exit(main())
