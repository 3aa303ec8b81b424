"""Fan-out figures: one feed delivered to many subscribers (issue 14).

    python bench/fanout.py                       # 1,000 subscribers, every configuration
    python bench/fanout.py --subscribers 200 --items 100 --configs memory-1,redis-3

Configurations: ``memory-1`` (one worker, the in-memory broker), ``memory-3`` (three
workers each with its own in-memory topics: the feed is published on each, as a
sharded deployment would), ``redis-1`` / ``redis-3`` (workers sharing topics through
a redis-server started here), and ``socketio-redis-1`` / ``socketio-redis-3``
(python-socketio's AsyncServer with its AsyncRedisManager, the anchor; skipped when
python-socketio or aiohttp is not installed: bench/requirements-peers.txt).

Per configuration: delivered items/s (items x subscribers / time from the first
publish to the last receipt, the publisher going as fast as the subscribers let it:
``block`` policy), publish-to-receipt latency p50/p99 in that saturated run and in a
paced run (``--rate`` items/s), and server memory per subscriber (the workers' RSS
with the subscribers connected minus before, over the subscriber count). Servers and
the client run in separate processes on this machine; all share its CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from peers import percentile as _pct  # noqa: E402 - the one shared with compare.py

import fastrpc  # noqa: E402

router = fastrpc.Router()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@router.method
def rss() -> int:
    return _rss_kib()


@router.method
async def feed(topic: str, n: int, size: int, rate: float) -> float:
    """Publish ``n`` items stamped with their publish time; ``rate`` 0: at once."""
    server = fastrpc.current_peer().server
    pad = "x" * size
    start = time.perf_counter()
    for i in range(n):
        await server.publish(topic, {"t": time.time(), "i": i, "pad": pad})
        if rate:
            delay = start + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
    return time.perf_counter() - start


# ------------------------------------------------------------------ services


def _free_ports(n: int) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        try:
            socks = [socket.socket() for _ in range(n)]
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fanout-redis-")
        self.port = _free_ports(1)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*args, "--dir", self.dir], stdout=subprocess.DEVNULL)
        _wait_port(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _worker_pids(supervisor: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


# ------------------------------------------------------------------ fastrpc


async def _subscribe_all(urls: list[str], n: int) -> tuple[list[Any], list[Any]]:
    peers = []
    for i in range(n):
        peers.append(await fastrpc.connect(urls[i % len(urls)], keepalive_interval=None, ws_ping_interval=None))
    subs = []
    for k in range(0, n, 100):
        subs += await asyncio.gather(*(p.subscribe("feed").start() for p in peers[k : k + 100]))
    return peers, subs


async def _receive(subs: list[Any], items: int, lat: list[float]) -> float:
    async def one(sub: Any) -> None:
        async for ev in sub:
            lat.append(time.time() - ev.value["t"])
            if ev.value["i"] == items - 1:
                return

    await asyncio.gather(*(one(s) for s in subs))
    return time.perf_counter()


async def run_fastrpc(workers: int, broker: str | None, n: int, items: int, size: int, rate: float) -> dict[str, Any]:
    base = _free_ports(workers)
    args = [sys.executable, "-m", "fastrpc.workers", "fanout:router", "--workers", str(workers)]
    args += ["--port", str(base), "--distinct-ports", "--no-resume"]
    if broker:
        args += ["--broker", broker]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent / "src")]))
    sup = subprocess.Popen(args, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ports = [base + i for i in range(workers)]
        for p in ports:
            _wait_port(p)
        await asyncio.sleep(0.5)
        pids = _worker_pids(sup.pid)
        before = _rss_of(pids)
        urls = [f"ws://127.0.0.1:{p}" for p in ports]
        peers, subs = await _subscribe_all(urls, n)
        await asyncio.sleep(0.5)
        after = _rss_of(pids)
        publishers = [peers[i] for i in range(workers)] if broker is None else [peers[0]]
        result: dict[str, Any] = {"subscribers": n, "workers": workers, "items": items}
        for phase, count, r in (("saturated", items, 0.0), ("paced", max(20, items // 4), rate)):
            lat: list[float] = []
            topic_items = count
            recv = asyncio.ensure_future(_receive(subs, topic_items, lat))
            t0 = time.perf_counter()
            await asyncio.gather(*(p.call("feed", "feed", topic_items, size, r) for p in publishers))
            t1 = await asyncio.wait_for(recv, 300)
            result[phase] = {
                "items_per_s": round(topic_items * n / (t1 - t0)),
                "p50_ms": round(_pct(lat, 0.5), 2),
                "p99_ms": round(_pct(lat, 0.99), 2),
                "rate": r or "max",
            }
        result["server_kib_per_subscriber"] = round((after - before) / n, 1)
        await asyncio.gather(*(s.aclose() for s in subs))
        await asyncio.gather(*(p.close() for p in peers))
        return result
    finally:
        _stop(sup)


# ------------------------------------------------------------------ python-socketio (the anchor)

SIO_SERVER = r"""
import asyncio, sys, time
import socketio
from aiohttp import web
port, redis_url = int(sys.argv[1]), sys.argv[2]
mgr = socketio.AsyncRedisManager(redis_url)
sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr)
app = web.Application()
sio.attach(app)

@sio.event
async def connect(sid, environ):
    await sio.enter_room(sid, "feed")

@sio.event
async def feed(sid, n, size, rate):
    pad = "x" * size
    start = time.perf_counter()
    for i in range(n):
        await sio.emit("item", {"t": time.time(), "i": i, "pad": pad}, room="feed")
        if rate:
            d = start + (i + 1) / rate - time.perf_counter()
            if d > 0:
                await asyncio.sleep(d)
    return time.perf_counter() - start

web.run_app(app, host="127.0.0.1", port=port, print=None)
"""


async def run_socketio(workers: int, redis_url: str, n: int, items: int, size: int, rate: float) -> dict[str, Any]:
    import socketio  # type: ignore[import-not-found]

    base = _free_ports(workers)
    script = Path(tempfile.mkdtemp(prefix="fanout-sio-")) / "sio_server.py"
    script.write_text(SIO_SERVER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(base + i), redis_url], stderr=subprocess.DEVNULL)
        for i in range(workers)
    ]
    try:
        for i in range(workers):
            _wait_port(base + i)
        await asyncio.sleep(0.5)
        pids = [p.pid for p in procs]
        before = _rss_of(pids)
        clients = []
        state: dict[str, Any] = {"lat": [], "left": 0, "done": None, "last": items - 1}

        def handler(data: Any) -> None:
            state["lat"].append(time.time() - data["t"])
            if data["i"] == state["last"]:
                state["left"] -= 1
                if state["left"] == 0:
                    state["done"].set_result(time.perf_counter())

        for i in range(n):
            c = socketio.AsyncClient(reconnection=False)
            c.on("item", handler)
            await c.connect(f"http://127.0.0.1:{base + i % workers}", transports=["websocket"])
            clients.append(c)
        await asyncio.sleep(0.5)
        after = _rss_of(pids)
        result: dict[str, Any] = {"subscribers": n, "workers": workers, "items": items}
        loop = asyncio.get_running_loop()
        for phase, count, r in (("saturated", items, 0.0), ("paced", max(20, items // 4), rate)):
            state.update(lat=[], left=n, done=loop.create_future(), last=count - 1)
            t0 = time.perf_counter()
            await clients[0].call("feed", (count, size, r), timeout=300)
            t1 = await asyncio.wait_for(state["done"], 300)
            lat = state["lat"]
            result[phase] = {
                "items_per_s": round(count * n / (t1 - t0)),
                "p50_ms": round(_pct(lat, 0.5), 2),
                "p99_ms": round(_pct(lat, 0.99), 2),
                "rate": r or "max",
                "received": len(lat),
            }
        result["server_kib_per_subscriber"] = round((after - before) / n, 1)
        await asyncio.gather(*(c.disconnect() for c in clients))
        return result
    finally:
        for p in procs:
            _stop(p)
        shutil.rmtree(script.parent, ignore_errors=True)


# ------------------------------------------------------------------ main


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--items", type=int, default=200, help="items in the saturated run")
    ap.add_argument("--size", type=int, default=64, help="bytes of padding per item")
    ap.add_argument("--rate", type=float, default=20.0, help="items/s in the paced run")
    ap.add_argument("--configs", default="memory-1,memory-3,redis-1,redis-3,socketio-redis-1,socketio-redis-3")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    redis: RedisServer | None = None
    try:
        for config in args.configs.split(","):
            workers = int(config.rsplit("-", 1)[1])
            if "redis" in config and redis is None:
                redis = RedisServer()
            try:
                if config.startswith("socketio"):
                    try:
                        import aiohttp  # noqa: F401
                        import socketio  # noqa: F401
                    except ImportError as exc:
                        results[config] = {"skipped": f"not installed: {exc}"}
                        continue
                    assert redis is not None
                    r = await run_socketio(workers, redis.url, args.subscribers, args.items, args.size, args.rate)
                else:
                    url = redis.url if config.startswith("redis") and redis is not None else None
                    r = await run_fastrpc(workers, url, args.subscribers, args.items, args.size, args.rate)
            except Exception as exc:  # one configuration's failure is reported, not fatal
                r = {"error": repr(exc)}
            results[config] = r
            print(config, json.dumps(r), flush=True)
    finally:
        if redis is not None:
            redis.close()
    print()
    print(
        f"{'config':<18} {'items/s (max)':>14} {'p50 ms':>8} {'p99 ms':>8} {'paced p50':>10} {'paced p99':>10} {'KiB/sub':>8}"
    )
    for config, r in results.items():
        if "saturated" not in r:
            print(f"{config:<18} {r}")
            continue
        s, p = r["saturated"], r["paced"]
        print(
            f"{config:<18} {s['items_per_s']:>14,} {s['p50_ms']:>8} {s['p99_ms']:>8} "
            f"{p['p50_ms']:>10} {p['p99_ms']:>10} {r['server_kib_per_subscriber']:>8}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    fastrpc.run(main())
