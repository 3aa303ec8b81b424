#!/usr/bin/env python
"""CPU per operation on each side of a call, each split into user and system time.

    python bench/sides.py [--libs fastrpc,picows,tcp] [--what seq,inflight,bulk,small,paced]

(``--libs`` also takes fastrpc-poll: this tree with ``busy_poll`` on both sides.)
                          [--baseline DIR] [--n-seq N] [--n-inflight N] [--n-bulk N]
                          [--n-small N] [--n-paced N] [--pace S]
                          [--one-cpu]

Each measurement runs its client in a child process on CPU 1 and its server in a
grandchild on CPU 0, as ``compare.py`` pins them; with ``--one-cpu`` both run on CPU 1,
where the other side's wake-up costs far less and a sequential call is bound by the
CPU work of its two sides alone. For each library and scenario (``seq``: one
16-byte call after the other; ``inflight``: 100 in flight; ``bulk``: 64 KiB chunks
streamed from the server to the client, per chunk; ``small``: 16-byte items
streamed the same way, per item; ``paced``: 16-byte calls one at a time with ``--pace``
seconds between them, where a side that polls after its writes (``busy_poll``)
pays for what it polls in vain) it prints the best of
three runs: operations a second, the CPU time per operation of each side (from
``/proc``: user + system, the kernel's loopback work counted on the side that
makes it), and each side's user and system time apart. It tells where a
library's time goes when ``compare.py`` only says how fast it is: with calls in
flight the wall time per call is the busier side's CPU, and the system time is
what the batching of many calls in one write saves. ``fastrpc-base`` imports
``DIR/src`` (``--baseline``). /proc's clock ticks are 10 ms: run enough
operations (the defaults take a few seconds each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import peers  # noqa: E402 - imports none of the measured libraries

_SERVER = """
import asyncio, os, sys
sys.path.insert(0, {bench!r}); sys.path.insert(1, {src!r})
if {pin}:
    os.sched_setaffinity(0, {{{cpu}}})
import uvloop, peers
mod = peers.load({lib!r})
async def main():
    port, stop = await mod.start_server()
    print(port, flush=True)
    await asyncio.get_running_loop().create_future()
uvloop.run(main())
"""


BULK = 64 << 10  # bytes a chunk of the bulk scenario (compare.py's)
SIZES = {"bulk": BULK, "small": 16}  # the streamed scenarios' item sizes
# What a measurement reports, in the order the child prints it.
FIELDS = ("ops_per_s", "server_us", "server_user_us", "server_sys_us", "client_us", "client_user_us", "client_sys_us")


def _can_pin() -> bool:
    """Whether CPUs 0 and 1 are both ours: then the server runs on 0, the client on 1."""
    return hasattr(os, "sched_getaffinity") and {0, 1} <= os.sched_getaffinity(0)


def _cpu(pid: int) -> tuple[float, float]:
    """User and system seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def _measure(mod: Any, port: int, pid: int, what: str, n: int, pace: float) -> dict[str, float]:
    client = mod.Client(port)
    await client.connect()

    async def run(k: int) -> None:
        if what == "paced":
            for _ in range(k):
                await client.call(b"x" * 16)
                await asyncio.sleep(pace)
        elif what == "inflight":
            await client.inflight_calls(k, 100, b"x" * 16)
        elif what in SIZES:
            size = SIZES[what]
            got = await client.stream(k, size)
            if got != k * size:
                raise AssertionError(f"{got} bytes of {k * size}")
        else:
            await client.seq_calls(k, b"x" * 16)

    try:
        await run(max(1, n // 10))  # warm-up
        best: dict[str, float] = {}
        for _ in range(3):
            server0, times0, t0 = _cpu(pid), os.times(), time.perf_counter()
            await run(n)
            wall = time.perf_counter() - t0
            times1 = os.times()
            user, system = times1.user - times0.user, times1.system - times0.system
            server1 = _cpu(pid)
            server_user, server_sys = server1[0] - server0[0], server1[1] - server0[1]
            row = {
                "ops_per_s": n / wall,
                "server_us": (server_user + server_sys) / n * 1e6,
                "server_user_us": server_user / n * 1e6,
                "server_sys_us": server_sys / n * 1e6,
                "client_us": (user + system) / n * 1e6,
                "client_user_us": user / n * 1e6,
                "client_sys_us": system / n * 1e6,
            }
            if row["ops_per_s"] > best.get("ops_per_s", 0):
                best = row
        return best
    finally:
        await asyncio.wait_for(client.close(), 10)


def measure(lib: str, src: str, what: str, n: int, one_cpu: bool = False, pace: float = 0.0) -> dict[str, float]:
    """Start ``lib``'s server (importing fastrpc from ``src``), measure, stop it."""
    name = "fastrpc" if lib in ("fastrpc-base", "fastrpc-poll") else lib
    pin = _can_pin()
    code = _SERVER.format(bench=HERE, src=src, lib=name, cpu=1 if one_cpu else 0, pin=pin)
    import uvloop

    with peers.server_child(lib, code, pin) as (server, port):
        mod = peers.load(name)
        return uvloop.run(asyncio.wait_for(_measure(mod, port, server.pid, what, n, pace), 600))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--libs", default="fastrpc,picows,tcp")
    ap.add_argument("--what", default="seq,inflight")
    ap.add_argument("--baseline", help="another checkout: its src/ is fastrpc-base's")
    ap.add_argument("--n-seq", type=int, default=20_000)
    ap.add_argument("--n-inflight", type=int, default=300_000)
    ap.add_argument("--n-bulk", type=int, default=50_000)
    ap.add_argument("--n-small", type=int, default=2_000_000)
    ap.add_argument("--n-paced", type=int, default=500)
    ap.add_argument("--pace", type=float, default=0.002, help="seconds between paced calls (default 0.002)")
    ap.add_argument("--one-cpu", action="store_true", help="run the server and the client both on CPU 1")
    args = ap.parse_args(argv)
    libs = args.libs.split(",")
    if args.baseline and "fastrpc-base" not in libs:
        libs.insert(1, "fastrpc-base")
    # Each measurement's client is a child of its own (it imports fastrpc from this
    # tree, or for fastrpc-base from the baseline's).
    for what in args.what.split(","):
        n = {"inflight": args.n_inflight, "bulk": args.n_bulk, "small": args.n_small, "paced": args.n_paced}.get(
            what, args.n_seq
        )
        unit = {"bulk": "chunks", "small": "items"}.get(what, "calls")
        paced = f", {args.pace:g} s apart" if what == "paced" else ""
        print(f"{what} ({n:,} {unit} of {'64 KiB' if what == 'bulk' else '16 bytes'}{paced})")
        print(
            f"  {'library':<13} {unit + '/s':>9} {'server us':>9} {'user':>6} {'sys':>6}"
            f" {'client us':>9} {'user':>6} {'sys':>6}"
        )
        for lib in libs:
            if lib == "fastrpc-base" and not args.baseline:
                continue
            src = os.path.join(args.baseline, "src") if lib == "fastrpc-base" else os.path.join(ROOT, "src")
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    lib,
                    src,
                    what,
                    str(n),
                    "one" if args.one_cpu else "two",
                    str(args.pace),
                ],
                env=peers.environment(lib),  # fastrpc-poll's busy_poll, fastrpc-pure's codec
                capture_output=True,
                text=True,
                timeout=900,
            )
            if out.returncode:
                print(f"  {lib:<13} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = dict(
                zip(
                    FIELDS,
                    map(float, out.stdout.split()),
                )
            )
            print(
                f"  {lib:<13} {r['ops_per_s']:>9,.0f} {r['server_us']:>9.2f} {r['server_user_us']:>6.2f}"
                f" {r['server_sys_us']:>6.2f} {r['client_us']:>9.2f} {r['client_user_us']:>6.2f}"
                f" {r['client_sys_us']:>6.2f}"
            )
    return 0


def _one(lib: str, src: str, what: str, n: int, one_cpu: bool, pace: float) -> None:
    sys.path.insert(1, src)  # after bench/ (peers), before an installed fastrpc
    r = measure(lib, src, what, n, one_cpu, pace)
    print(*(r[k] for k in FIELDS))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        _one(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == "one", float(sys.argv[7]))
    else:
        sys.exit(main())
