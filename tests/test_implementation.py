"""Guard: the codec that ``fastrpc.frames`` picked is the one the run asked for.

``FASTRPC_REQUIRE_EXTENSIONS=1`` (CI's compiled run) fails the suite when the compiled
codec did not build or load, instead of silently testing the pure twin twice;
``FASTRPC_NO_EXTENSIONS=1`` must give the pure-Python codec.
"""

from __future__ import annotations

import os

import pytest

from fastrpc import frames  # not ``fastrpc``: only the codec selection is under test


def _set(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


@pytest.mark.skipif(
    not _set("FASTRPC_REQUIRE_EXTENSIONS") or _set("FASTRPC_NO_EXTENSIONS"),
    reason="FASTRPC_REQUIRE_EXTENSIONS=1 is not set (or FASTRPC_NO_EXTENSIONS=1 is)",
)
def test_compiled_codec_is_live() -> None:
    assert frames.IMPLEMENTATION == "cython", "the compiled codec fastrpc._frames did not load"


@pytest.mark.skipif(not _set("FASTRPC_NO_EXTENSIONS"), reason="FASTRPC_NO_EXTENSIONS=1 is not set")
def test_pure_codec_is_live() -> None:
    assert frames.IMPLEMENTATION == "python"


def test_frame_type_matches_implementation() -> None:
    module = "fastrpc._frames" if frames.IMPLEMENTATION == "cython" else "fastrpc._frames_py"
    assert frames.Frame.__module__ == module
    assert frames.StreamLedger.__module__ == module
