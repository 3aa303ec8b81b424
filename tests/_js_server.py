"""The fastrpc server the JavaScript client's tests (js/test/, tests/test_js_client.py) and
bench/js_client.py talk to: ``python tests/_js_server.py [--static DIR] [--port N] [--compression]``.

Prints ``port N`` (and ``http M`` with ``--static``) once listening on 127.0.0.1; runs
until killed. ``--static DIR`` also serves DIR over HTTP on another port (the browser
test's page and the built client)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import fastrpc

router = fastrpc.Router()
STATE: dict[str, Any] = {"produced": 0, "cancelled": 0, "notes": [], "running": 0}


@router.method
def add(a: int, b: int) -> int:
    return a + b


@router.method
def echo(value: Any) -> Any:
    return value


@router.method
def fail(message: str) -> None:
    raise ValueError(message)


@router.method
async def sleep(seconds: float) -> str:
    STATE["running"] += 1
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        STATE["cancelled"] += 1
        raise
    finally:
        STATE["running"] -= 1
    return "slept"


@router.method
def note(value: Any) -> None:
    STATE["notes"].append(value)


@router.method
def state() -> dict[str, Any]:
    return {**STATE, "rss": rss()}


@router.method
def reset() -> None:
    STATE.update(produced=0, cancelled=0, notes=[], running=0)


@router.method
async def count(n: int, delay: float = 0.0) -> AsyncIterator[int]:
    for i in range(n):
        if delay:
            await asyncio.sleep(delay)
        yield i


@router.method
async def produce(n: int, size: int = 0) -> AsyncIterator[Any]:
    """``n`` items as fast as credit lets them go; ``STATE["produced"]`` counts them."""
    pad = "x" * size
    try:
        for i in range(n):
            STATE["produced"] = i + 1
            yield [i, pad] if size else i
    except (asyncio.CancelledError, GeneratorExit):
        STATE["cancelled"] += 1
        raise


@router.method
async def feed(n: int, rate: float) -> AsyncIterator[dict[str, Any]]:
    """A ticker for the example page: ``rate`` items a second (0: unlimited)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(n):
        if rate:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        yield {"seq": i, "t": loop.time() - start, "price": 100 + 10 * ((i * 7919) % 97) / 97}


@router.method
async def failing_stream(after: int) -> AsyncIterator[int]:
    for i in range(after):
        yield i
    raise RuntimeError(f"failed after {after}")


@router.method
async def double(items: fastrpc.ReceiveStream[Any]) -> AsyncIterator[Any]:
    async for x in items:
        yield x * 2


@router.method
async def total(stream_id: int) -> Any:
    """Sum the stream the client sends with id ``stream_id``."""
    _, stream = fastrpc.current_peer().receive_stream(stream_id)
    result: Any = 0
    n = 0
    async for x in stream:
        result += len(x) if isinstance(x, (bytes, str)) else x
        n += 1
    return [result, n]


@router.method
async def callback(name: str, value: Any) -> Any:
    """Call the client's registered method ``name``."""
    return await fastrpc.current_peer().call(name, value)


@router.method
async def push(n: int) -> int:
    """Send ``n`` integers to the client on a new stream; return its id."""
    peer = fastrpc.current_peer()
    sid = peer.new_stream_id()

    async def items() -> AsyncIterator[int]:
        for i in range(n):
            yield i

    await peer.send_stream(items(), sid)
    return sid


def rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def serve_static(directory: str) -> int:
    handler = functools.partial(_QuietHandler, directory=directory)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return int(httpd.server_address[1])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # the browser test's page reports here
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = os.environ.get("FASTRPC_JS_RESULT")
        if path:
            with open(path + ".tmp", "wb") as f:
                f.write(body)
            os.replace(path + ".tmp", path)
        self.send_response(204)
        self.end_headers()


async def main(
    port: int, static: str | None, keepalive: float | None, compression: bool, json_wait: float | None
) -> None:
    async with fastrpc.serve(
        router,
        "127.0.0.1",
        port,
        resume=True,
        keepalive_interval=keepalive,
        session_grace=30,
        compression="zlib" if compression else False,
        json_wait=json_wait,
    ) as server:
        print(f"port {server.port}", flush=True)
        if static:
            print(f"http {serve_static(static)}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--static")
    ap.add_argument("--keepalive", type=float, default=None)
    ap.add_argument("--compression", action="store_true", help="offer zlib (clients that offer it too get it)")
    ap.add_argument("--json-wait", type=float, default=0.5, help="json_wait (0: the JSON welcome before any HELLO)")
    a = ap.parse_args()
    fastrpc.run(main(a.port, a.static, a.keepalive, a.compression, a.json_wait))
