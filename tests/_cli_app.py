"""The application ``fastrpc serve`` runs in tests/test_cli.py (imported by name
from the tests directory): a Router and a connection handler."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import fastrpc

router = fastrpc.Router()


@router.method
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@router.method
def echo(*args: Any) -> list[Any]:
    """Return the arguments as a list."""
    return list(args)


@router.method
def fail(message: str) -> None:
    """Raise ValueError(message)."""
    raise ValueError(message)


@router.method
async def ticks(n: int, size: int = 0) -> AsyncIterator[dict[str, Any]]:
    """Count from 0 to n - 1 (with ``size`` bytes of padding each)."""
    for i in range(n):
        yield {"i": i, "pad": "x" * size}


@router.method
async def upper(items: AsyncIterator[str]) -> AsyncIterator[str]:
    """A channel: each string upper-cased."""
    async for item in items:
        yield item.upper()


@router.method
def log(line: str) -> None:
    """Append ``line`` to the file named by $FASTRPC_TEST_LOG."""
    with open(os.environ["FASTRPC_TEST_LOG"], "a") as f:
        f.write(line + "\n")


async def handler(peer: fastrpc.RpcPeer) -> None:
    """Per connection: a method of its own, until the client leaves."""

    def whoami() -> str:
        return "handler"

    peer.register("whoami", whoami)
    await peer.wait_closed()


not_a_target = 42
