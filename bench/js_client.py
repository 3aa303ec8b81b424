"""The TypeScript client's figures, against one Python server (tests/_js_server.py):

* items/s of one stream into Node (bench/js_stream.mjs) and into headless Chromium
  (js/test/browser/index.html), with the Python client on the same server as the peer
  figure of the same run;
* the server's RSS while a slow Chromium consumer reads a large stream (1,000,000 items
  by default): credit makes the Python producer wait, so the server holds about a window,
  not the stream;
* ``--screenshot PATH``: a PNG of examples/browser/ (served by examples/browser/serve.py),
  taken over the DevTools protocol after a few seconds of live feed.

    (cd js && npm ci && npm run build) && python bench/js_client.py [--items N] [--slow-items N]

Writes bench/results/js_client.json and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import fastrpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
JS = ROOT / "js"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NODE = shutil.which("node") or "node"


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Server:
    def __init__(self, result: pathlib.Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "_js_server.py"), "--static", str(JS)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "FASTRPC_JS_RESULT": str(result)},
        )
        assert self.proc.stdout is not None
        ports = {}
        while len(ports) < 2:
            key, value = self.proc.stdout.readline().split()
            ports[key] = int(value)
        self.ws, self.http = ports["port"], ports["http"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def chromium(url: str, profile: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *extra,
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_browser(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_page(
    server: Server, result: pathlib.Path, query: str, timeout: float, sample_pid: int | None = None
) -> dict[str, Any]:
    result.unlink(missing_ok=True)
    samples: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as profile:
        proc = chromium(f"http://127.0.0.1:{server.http}/test/browser/index.html?ws={server.ws}&{query}", profile)
        try:
            t0 = time.monotonic()
            while not result.exists():
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"no result from the page within {timeout} s")
                if sample_pid is not None:
                    samples.append((time.monotonic() - t0, rss_of(sample_pid)))
                time.sleep(0.1)
        finally:
            stop_browser(proc)
    out: dict[str, Any] = json.loads(result.read_text())
    if sample_pid is not None:
        out["rss_samples"] = samples
    return out


async def python_items_per_second(port: int, n: int) -> dict[str, Any]:
    async with fastrpc.connect(f"ws://127.0.0.1:{port}") as peer:
        await peer.call("add", 1, 1)
        t0 = time.perf_counter()
        got = 0
        async for _ in peer.stream("produce", n):
            got += 1
        seconds = time.perf_counter() - t0

        async def numbers() -> Any:
            for i in range(n):
                yield i

        t1 = time.perf_counter()
        sid = await peer.send_stream(numbers())
        _, sent = await peer.call("total", sid)
        up = time.perf_counter() - t1
    return {
        "items": got,
        "seconds": seconds,
        "itemsPerSecond": round(got / seconds),
        "uploadItemsPerSecond": round(sent / up),
    }


async def cdp_screenshot(url: str, path: pathlib.Path, wait: float) -> None:
    import websockets

    with tempfile.TemporaryDirectory() as profile:
        proc = chromium(url, profile, "--remote-debugging-port=0", "--window-size=820,640", "--hide-scrollbars")
        try:
            port_file = pathlib.Path(profile) / "DevToolsActivePort"
            for _ in range(100):
                if port_file.exists() and port_file.read_text().strip():
                    break
                await asyncio.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            await asyncio.sleep(wait)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [p for p in json.load(r) if p.get("type") == "page"]
            async with websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
                await ws.send(json.dumps({"id": 1, "method": "Page.captureScreenshot", "params": {"format": "png"}}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == 1:
                        break
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(msg["result"]["data"]))
        finally:
            stop_browser(proc)


def screenshot(path: pathlib.Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "browser" / "serve.py"), "--http-port", "0", "--ws-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[1]
        asyncio.run(cdp_screenshot(url, path, wait=3.5))
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=300_000, help="items of the items/s runs")
    ap.add_argument("--slow-items", type=int, default=1_000_000, help="items the slow browser consumer reads")
    ap.add_argument("--slow-size", type=int, default=100, help="padding bytes of each slow-run item")
    ap.add_argument("--screenshot", type=pathlib.Path, help="also write a PNG of examples/browser/ here")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results" / "js_client.json")
    a = ap.parse_args()
    results: dict[str, Any] = {"node": None, "chromium": None, "python": None}
    with tempfile.TemporaryDirectory() as tmp:
        result = pathlib.Path(tmp) / "result.json"
        server = Server(result)
        try:
            results["python"] = asyncio.run(python_items_per_second(server.ws, a.items))
            node = subprocess.run(
                [NODE, "--experimental-websocket", str(ROOT / "bench" / "js_stream.mjs"), str(server.ws), str(a.items)],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            results["node"] = json.loads(node.stdout)
            results["chromium"] = run_page(server, result, f"mode=slow&n={a.items}&every={a.items + 1}", 300)
            before = rss_of(server.proc.pid)
            slow = run_page(
                server,
                result,
                f"mode=slow&n={a.slow_items}&size={a.slow_size}&every=1000&pause=20",
                900,
                sample_pid=server.proc.pid,
            )
            rss = [r for _, r in slow.pop("rss_samples")]
            slow.update(
                rss_before=before,
                rss_max=max(rss),
                rss_median=sorted(rss)[len(rss) // 2],
                rss_samples=len(rss),
                stream_bytes_approx=a.slow_items * (a.slow_size + 12),
            )
            results["slow_chromium"] = slow
        finally:
            server.stop()
    if a.screenshot:
        screenshot(a.screenshot)
        results["screenshot"] = str(a.screenshot.relative_to(ROOT)) if a.screenshot.is_absolute() else str(a.screenshot)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "node": subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    mib = 1 << 20
    s = results["slow_chromium"]
    print(f"items/s, one stream of {a.items:,} small items from the Python server (same server, same run):")
    print(
        f"  Python client   {results['python']['itemsPerSecond']:>10,}   upload {results['python']['uploadItemsPerSecond']:>10,}"
    )
    print(
        f"  Node (TS)       {results['node']['itemsPerSecond']:>10,}   upload {results['node']['uploadItemsPerSecond']:>10,}"
    )
    print(f"  Chromium (TS)   {results['chromium']['itemsPerSecond']:>10,}")
    print(
        f"slow Chromium consumer, {s['items']:,} items of ~{a.slow_size + 12} B ({s['stream_bytes_approx'] / mib:.0f} MiB) "
        f"in {s['seconds']:.1f} s, in order: {s['inOrder']}; server RSS {s['rss_before'] / mib:.1f} MiB before, "
        f"median {s['rss_median'] / mib:.1f}, max {s['rss_max'] / mib:.1f} MiB"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
