"""Serve the browser example: a fastrpc server with a ``feed`` stream and an HTTP server
for the page (this folder) and the built TypeScript client (js/dist, under /fastrpc/).

    (cd js && npm ci && npm run build)
    python examples/browser/serve.py            # then open http://127.0.0.1:8000/

``--http-port`` / ``--ws-port`` change the ports (0: any free one); the page connects to
the WebSocket port given as ``?ws=PORT`` (default 8765).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import math
import pathlib
import random
import threading
from collections.abc import AsyncIterator
from typing import Any

import fastrpc

HERE = pathlib.Path(__file__).resolve().parent
DIST = HERE.parent.parent / "js" / "dist"

router = fastrpc.Router()


@router.method
async def feed(rate: float = 2000.0, n: int = 10**9) -> AsyncIterator[dict[str, Any]]:
    """A price ticker: ``rate`` quotes a second (0: as fast as the reader takes them)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    rng = random.Random(13)
    price = 100.0
    for seq in range(n):
        if rate:
            ahead = start + seq / rate - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
        t = loop.time() - start
        price = max(1.0, price + rng.gauss(0, 0.02) + 0.001 * math.sin(seq / 500))
        yield {"seq": seq, "t": round(t, 4), "price": round(price, 3), "symbol": "FRPC"}


@router.method
def server_time() -> float:
    return asyncio.get_running_loop().time()


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def translate_path(self, path: str) -> str:
        if path.startswith("/fastrpc/"):
            rel = path[len("/fastrpc/") :].split("?", 1)[0]
            return str(DIST / rel)
        return super().translate_path(path)

    def log_message(self, *args: Any) -> None:
        pass


async def main(http_port: int, ws_port: int) -> None:
    if not (DIST / "index.js").exists():
        raise SystemExit("build the client first: (cd js && npm ci && npm run build)")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), functools.partial(_Handler, directory=str(HERE)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    async with fastrpc.serve(router, "127.0.0.1", ws_port, resume=True) as server:
        print(f"page: http://127.0.0.1:{httpd.server_address[1]}/?ws={server.port}", flush=True)
        try:
            await server.serve_forever()
        finally:
            httpd.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--ws-port", type=int, default=8765)
    a = ap.parse_args()
    fastrpc.run(main(a.http_port, a.ws_port))
