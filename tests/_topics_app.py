"""The application the worker tests serve (python -m fastrpc.workers _topics_app:router)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import fastrpc

router = fastrpc.Router()


@router.method
def whoami() -> int:
    return os.getpid()


@router.method
async def publish(topic: str, value: Any) -> list[Any]:
    epoch, offset = await fastrpc.current_peer().server.publish(topic, value)
    return [epoch, offset]


@router.method
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"
