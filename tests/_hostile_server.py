"""A fastrpc server in its own process, for the hostile tests (tests/test_hostile.py).

    python _hostile_server.py '{"max_message_size": 65536}'

The argument is a JSON object of ``fastrpc.serve`` options (defaults when empty; ``-``:
read it from the first line of stdin). The server listens on 127.0.0.1, port 0, and
prints ``port N`` once it accepts connections; then, for every binary-mode connection
that ends, a line ``closed CODE REASON`` (what the server itself closed it with, from
``peer.close_exception``). It runs until killed.

Methods: ``add(a, b)`` (sync, answered inline), ``echo(x)``, ``slow(seconds)``,
``keep(x)`` (holds its argument 30 s),
``blob(n, size)`` (streams ``n`` items of ``size`` bytes), ``ignore_input(stream)``
(a channel handler that returns at once without reading its input), and ``debug()``:
what the server tracks, summed over its connections, for tests that check that some
structure stays bounded.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import weakref
from collections.abc import AsyncIterator
from typing import Any

import fastrpc

router = fastrpc.Router()
_server: fastrpc.Server | None = None


@router.method
def add(a: int, b: int) -> int:
    return a + b


@router.method
def echo(x: Any) -> Any:
    return x


@router.method
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@router.method
async def keep(x: Any) -> int:
    """Holds its argument for 30 s (as a handler that awaits something with its data)."""
    await asyncio.sleep(30)
    return len(x)


@router.method
async def blob(n: int, size: int) -> AsyncIterator[bytes]:
    item = bytes(size)
    for _ in range(n):
        yield item


@router.method
async def ignore_input(stream: Any) -> AsyncIterator[int]:
    return
    yield 0  # an async generator that yields nothing


@router.method
def debug() -> dict[str, int]:
    """What the server holds, summed over every connection it tracks (open ones and
    detached sessions waiting for a resume)."""
    assert _server is not None
    out = {
        "peers": 0,
        "sessions": len(_server.sessions),
        "grace": len(_server.detached),
        "calls_in": 0,
        "tasks": 0,
        "notify_tasks": 0,
        "streams_in": 0,
        "items_in": 0,
        "held": 0,
        "refused": 0,
        "refused_inputs": 0,
        "control_bytes": 0,
        "replay_bytes": 0,
        "transport_buffered": 0,
    }
    peers = set(_server.peers) | set(_server.detached)
    for p in peers:
        view = p.stats()
        core = p.core
        out["peers"] += 1
        out["calls_in"] += len(view["calls_in"])
        out["tasks"] += len(view["peer.tasks"])
        out["notify_tasks"] += view["notify_tasks"]
        out["streams_in"] += len(view["in"])
        out["items_in"] += sum(len(s.items) for s in map(core.incoming, view["in"]) if s is not None)
        out["held"] += len(view["held"])
        out["refused"] += len(view["refused"])
        out["refused_inputs"] += len(view["refused_inputs"])
        out["control_bytes"] += core.control_backlog
        out["replay_bytes"] += view["replay_bytes"]
        out["transport_buffered"] += p.transport.buffered() if p.transport is not None else 0
    return out


def _report_closed(peer_ref: weakref.ReferenceType[fastrpc.RpcPeer], _: Any) -> None:
    peer = peer_ref()
    exc = peer.close_exception if peer is not None else None
    code = exc.code if exc is not None else None
    reason = (exc.reason if exc is not None else "").replace("\n", " ")[:200]
    print(f"closed {code} {reason}", flush=True)


async def _watch(server: fastrpc.Server) -> None:
    """Report how each connection ends (a done-callback on its closed future)."""
    seen: weakref.WeakSet[fastrpc.RpcPeer] = weakref.WeakSet()
    while True:
        for peer in list(server.peers):
            if peer not in seen:
                seen.add(peer)
                peer.on_closed(functools.partial(_report_closed, weakref.ref(peer)))
        await asyncio.sleep(0.01)


async def main(options: dict[str, Any]) -> None:
    global _server
    async with fastrpc.serve(router, "127.0.0.1", 0, **options) as server:
        _server = server
        watcher = asyncio.get_running_loop().create_task(_watch(server))
        print(f"port {server.port}", flush=True)
        try:
            await server.serve_forever()
        finally:
            watcher.cancel()


if __name__ == "__main__":
    # "-": the options on the first line of stdin (the process started ahead of its test).
    arg = sys.stdin.readline() if sys.argv[1:] == ["-"] else (sys.argv[1] if len(sys.argv) > 1 else "{}")
    if arg:  # (nothing: started ahead for a test that did not come)
        fastrpc.run(main(json.loads(arg)))
