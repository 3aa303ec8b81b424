"""A JavaScript client written to the seed's JSON protocol calls a fastrpc server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

import pytest
from _util import run

import fastrpc

NODE = shutil.which("node")
CLIENT = os.path.join(os.path.dirname(__file__), "js", "seed_client.mjs")


def _node_has_websocket() -> bool:
    if NODE is None:
        return False
    out = subprocess.run(
        [NODE, "--experimental-websocket", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
        capture_output=True,
        timeout=30,
    )
    return out.returncode == 0


pytestmark = pytest.mark.skipif(not _node_has_websocket(), reason="needs Node.js with a built-in WebSocket")


def make_router(received: list[object]) -> fastrpc.Router:
    router = fastrpc.Router()

    @router.method
    def add(a: int, b: int) -> int:
        return a + b

    @router.method("requestData")
    async def request_data(n: int) -> dict[str, object]:
        async def feed():
            for i in range(n):
                yield {"seq": i}

        sid = await fastrpc.current_peer().send_stream(feed())
        return {"streamId": sid}

    @router.method
    async def failing() -> dict[str, object]:
        async def feed():
            yield 1
            raise ValueError("Something went wrong")

        return {"streamId": await fastrpc.current_peer().send_stream(feed())}

    @router.method("sumUpload")
    async def sum_upload(sid: str) -> int:
        _, stream = fastrpc.current_peer().receive_stream(sid)
        total = 0
        async for x in stream:
            received.append(x)
            total += x
        return total

    return router


def test_seed_json_client_calls_and_streams() -> None:
    received: list[object] = []

    async def main() -> dict[str, object]:
        async with fastrpc.serve(make_router(received), "127.0.0.1", 0) as server:
            proc = await asyncio.create_subprocess_exec(
                NODE,
                "--experimental-websocket",
                "--no-warnings",
                CLIENT,
                server.url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()
            # A fastrpc client still works on the same server.
            async with fastrpc.connect(server.url) as peer:
                assert await peer.call("add", 1, 1) == 2
            return json.loads(out.decode().strip().splitlines()[-1])

    out = run(main(), timeout=60)
    assert "failure" not in out, out
    assert out["add"] == 5
    assert out["items"] == [{"seq": i} for i in range(5)]
    assert out["partial"] == [1]
    assert "Something went wrong" in out["streamError"]
    assert "nosuch" in out["missing"]
    assert out["uploaded"] == 6
    assert received == [1, 2, 3]
