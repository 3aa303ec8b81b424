"""CPU cost of one call by kind of handler, this tree against another (``--baseline``).

    python bench/bench_handlers.py [--baseline DIR] [--rounds N] [--calls N]

A server and a client in one process (uvloop, 127.0.0.1) make sequential and in-flight
(1000 gathered) calls to four handlers: ``plain`` (no annotations), ``typed``
(``a: int, b: int``: arguments decoded and validated by msgspec), ``raw`` (one
``bytes`` argument, sent raw) and ``kwargs`` (a keyword argument; skipped for a tree
without keyword arguments). The figure is calls per second of **process CPU time**
(client and server together), not wall time: on a busy machine the wall-clock figures
of ``compare.py`` move by 2x from one run to the next, CPU time far less. Each tree
runs in its own child process, alternately, ``--rounds`` times; the median is shown
with the ratio this tree / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
TREE = HERE.parent

CHILD = r"""
import asyncio, json, sys, time
import uvloop, fastrpc

CALLS = int(sys.argv[1])
r = fastrpc.Router()

@r.method
def plain(a, b):
    return a

@r.method
def typed(a: int, b: int) -> int:
    return a

@r.method
def raw(payload):
    return payload

@r.method
def kwargs(a, b=0):
    return a

Q = {"keepalive_interval": None, "ws_ping_interval": None}
KW = "kwargs" in fastrpc.RpcPeer.call.__code__.co_varnames

async def main():
    out = {"file": fastrpc.__file__, "codec": fastrpc.IMPLEMENTATION}
    cases = [("plain", (1, 2), {}), ("typed", (1, 2), {}), ("raw", (b"x" * 16,), {})]
    if KW:
        cases.append(("kwargs", (1,), {"b": 2}))
    async with fastrpc.serve(r, **Q) as server:
        async with fastrpc.connect(server.url, **Q) as peer:
            for name, args, kw in cases:
                for _ in range(200):
                    await peer.call(name, *args, **kw)
                best = 0.0
                for _ in range(3):
                    t = time.process_time()
                    for _ in range(CALLS):
                        await peer.call(name, *args, **kw)
                    best = max(best, CALLS / (time.process_time() - t))
                out["seq " + name] = best
                best = 0.0
                for _ in range(3):
                    t = time.process_time()
                    for _ in range(10):
                        await asyncio.gather(*(peer.call(name, *args, **kw) for _ in range(1000)))
                    best = max(best, 10000 / (time.process_time() - t))
                out["inflight " + name] = best
    print(json.dumps(out))

uvloop.run(main())
"""


def measure(tree: pathlib.Path, calls: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(calls)],
        env={**os.environ, "PYTHONPATH": str(tree / "src")},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    expected = str(tree / "src" / "fastrpc" / "__init__.py")
    if result.pop("file") != expected:
        raise SystemExit(f"the child did not import {expected}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=pathlib.Path, help="another checkout (its src/fastrpc)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=3000)
    opts = parser.parse_args()
    trees = {"fastrpc": TREE}
    if opts.baseline is not None:
        trees["fastrpc-base"] = opts.baseline.resolve()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for i in range(opts.rounds):
        order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            runs[name].append(measure(tree, opts.calls))
            print(f"round {i + 1}/{opts.rounds}: {name} done", file=sys.stderr)
    keys = [k for k in runs["fastrpc"][0] if k != "codec"]
    print(f"codec: {runs['fastrpc'][0]['codec']}; calls/s of CPU time, median of {opts.rounds} rounds\n")
    header = "| handler | fastrpc |" + (" fastrpc-base | ratio |" if opts.baseline else "")
    print(header)
    print("| --- | --- |" + (" --- | --- |" if opts.baseline else ""))
    for key in keys:
        new = statistics.median(r[key] for r in runs["fastrpc"])
        line = f"| {key} | {new:,.0f} |"
        if opts.baseline is not None:
            have = [r[key] for r in runs["fastrpc-base"] if key in r]
            if have:
                base = statistics.median(have)
                line += f" {base:,.0f} | {new / base:.3f} |"
            else:
                line += " n/a | |"
        print(line)


if __name__ == "__main__":
    main()
