"""A well-behaved fastrpc client in its own process, for the hostile tests.

    python _hostile_probe.py URL [CONNECT_EVERY]

``-``: read ``URL [CONNECT_EVERY]`` from the first line of stdin instead (once fastrpc
is imported: the process can be started ahead of its server).

Connects, makes one call, prints ``ready``; then calls ``add`` every 20 ms (the next
call 20 ms after the previous one was sent, or at once when it took longer) until it
gets SIGTERM, and prints one JSON line: how many calls, their latencies (max, p50,
p99, in ms), errors. A call not answered within 5 s counts as 5000 ms and an error;
a broken connection is reopened (an error too). With ``CONNECT_EVERY`` (seconds) it
also opens a fresh connection that often and times connect + first call
(``connect_max_ms``).

A separate process, so that the attacker's work in the test process does not delay
the probe's own event loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import fastrpc

PERIOD = 0.020
CALL_TIMEOUT = 5.0
OPTS = {"keepalive_interval": None, "ws_ping_interval": None}


async def calls(url: str, stop: asyncio.Event, out: dict[str, Any]) -> None:
    lat: list[float] = out["latencies"]
    start = time.perf_counter()
    peer = None
    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            if peer is None or peer.closed:
                if peer is not None:
                    out["errors"].append(f"{t0 - start:.2f}s: connection lost: {peer.close_exception!r}")
                peer = await asyncio.wait_for(fastrpc.connect(url, **OPTS), CALL_TIMEOUT)
                t0 = time.perf_counter()
            i += 1
            got = await asyncio.wait_for(peer.call("add", i, 1), CALL_TIMEOUT)
            if got != i + 1:
                out["errors"].append(f"{t0 - start:.2f}s: wrong answer {got!r}")
            dt = time.perf_counter() - t0
        except Exception as exc:
            dt = max(time.perf_counter() - t0, CALL_TIMEOUT)
            out["errors"].append(f"{t0 - start:.2f}s: {exc!r}"[:300])
            if peer is not None and not peer.closed:
                await peer.close()
            peer = None
        lat.append(dt * 1000)
        if dt * 1000 >= max(out["max_ms"], 0):
            out["max_ms"] = dt * 1000
            out["max_at_s"] = round(t0 - start, 3)
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, PERIOD - dt))
        except asyncio.TimeoutError:
            pass
    if peer is not None:
        await peer.close()


async def connects(url: str, every: float, stop: asyncio.Event, out: dict[str, Any]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                async with fastrpc.connect(url, **OPTS) as peer:
                    await peer.call("add", 1, 1)
                    dt = time.perf_counter() - t0
        except Exception as exc:
            dt = CALL_TIMEOUT
            out["errors"].append(f"fresh connection: {exc!r}"[:300])
        out["connect_ms"].append(dt * 1000)
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass


async def main(url: str, every: float | None) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    out: dict[str, Any] = {"latencies": [], "errors": [], "max_ms": -1.0, "max_at_s": None, "connect_ms": []}
    async with fastrpc.connect(url, **OPTS) as peer:
        await asyncio.wait_for(peer.call("add", 1, 1), CALL_TIMEOUT)
    print("ready", flush=True)
    tasks = [asyncio.create_task(calls(url, stop, out))]
    if every:
        tasks.append(asyncio.create_task(connects(url, every, stop, out)))
    await asyncio.gather(*tasks)
    lat = sorted(out.pop("latencies"))
    conn = out.pop("connect_ms")
    out["calls"] = len(lat)
    out["p50_ms"] = lat[len(lat) // 2] if lat else None
    out["p99_ms"] = lat[min(len(lat) - 1, len(lat) * 99 // 100)] if lat else None
    out["connects"] = len(conn)
    out["connect_max_ms"] = max(conn) if conn else None
    out["errors"] = out["errors"][:20]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    args = sys.stdin.readline().split() if sys.argv[1:] == ["-"] else sys.argv[1:]
    if args:  # (none: started ahead for an attack that did not come)
        fastrpc.run(main(args[0], float(args[1]) if len(args) > 1 else None))
