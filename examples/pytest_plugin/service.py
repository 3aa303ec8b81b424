"""The code under test: a fastrpc Router with two handlers that give the same answer
in two ways (the benchmark compares them), and an echo for the transport comparison."""

from __future__ import annotations

from typing import Any

import fastrpc

router = fastrpc.Router()


@router.method
async def stats_loop(values: list[float]) -> dict[str, float]:
    """Count, total, min and max in one Python loop."""
    total, low, high = 0.0, float("inf"), float("-inf")
    for v in values:
        total += v
        low = v if v < low else low
        high = v if v > high else high
    return {"n": len(values), "total": total, "min": low, "max": high}


@router.method
async def stats_builtin(values: list[float]) -> dict[str, float]:
    """The same with the builtins (three C-level passes)."""
    return {"n": len(values), "total": float(sum(values)), "min": min(values), "max": max(values)}


@router.method
async def echo(payload: Any) -> Any:
    return payload
