"""The server of test_resume_chaos.py, in its own process:

    python _chaos_server.py '{"session_grace": 30, ...}'   # serve() options as JSON
    python _chaos_server.py -    # the same JSON on the first line of stdin (once imported)

It binds a free port on 127.0.0.1, prints ``ready <port>`` and serves until killed.
Its methods count their side effects so that the test can check exactly-once
execution from outside, over a separate connection (``stats``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import fastrpc

router = fastrpc.Router()
server: fastrpc.Server | None = None

calls: dict[int, int] = {}  # call id -> times the handler ran
streams: dict[str, int] = {}  # tag -> items yielded by `numbers`
channels: dict[str, list[int]] = {}  # tag -> [items received, received out of order]


@router.method
async def bump(cid: int, delay: float = 0.0) -> int:
    """The side-effect call: counts its executions by id."""
    calls[cid] = calls.get(cid, 0) + 1
    if delay:
        await asyncio.sleep(delay)
    return cid


@router.method
async def numbers(tag: str, n: int, size: int):
    """Server -> client stream: [i, padding] for i in 0..n-1."""
    pad = b"s" * size
    for i in range(n):
        streams[tag] = i + 1
        yield [i, pad]


@router.method
async def echo(inbound, tag: str):
    """Client -> server stream (a channel's input): checks order, yields each index back."""
    record = channels.setdefault(tag, [0, 0])
    async for item in inbound:
        if item[0] != record[0]:
            record[1] += 1
        record[0] += 1
        yield item[0]


@router.method
def stats() -> dict[str, Any]:
    """What the server did and holds, not counting the connection asking."""
    assert server is not None
    me = fastrpc.current_peer()
    others = [p for p in server.peers if p is not me]
    return {
        "calls": sorted(calls.items()),
        "streams": streams,
        "channels": channels,
        "peers": len(others),
        "detached": sum(1 for p in others if not p.connected),
        "sessions": len(server.sessions),
    }


async def main(options: dict[str, Any]) -> None:
    global server
    async with fastrpc.serve(router, "127.0.0.1", 0, resume=True, **options) as server:
        print(f"ready {server.port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    arg = sys.stdin.readline() if sys.argv[1:] == ["-"] else (sys.argv[1] if len(sys.argv) > 1 else "{}")
    if arg:  # (a spare started for a test that never came: its stdin closed, nothing read)
        fastrpc.run(main(json.loads(arg)))
