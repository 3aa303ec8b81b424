"""The application tests/test_surface_trust.py serves with ``fastrpc serve --workers``
(imported by name from the tests directory)."""

from __future__ import annotations

import os

import fastrpc

router = fastrpc.Router()


@router.method
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@router.method
def pid() -> int:
    """The serving process's id (which worker answered)."""
    return os.getpid()
