"""Guard: the codec that ``fastrpc.frames`` picked, and the call table that
``fastrpc.calltable`` picked, are the ones the run asked for.

``FASTRPC_REQUIRE_EXTENSIONS=1`` (CI's compiled run) fails the suite when the compiled
modules did not build or load, instead of silently testing the pure twins twice;
``FASTRPC_NO_EXTENSIONS=1`` must give the pure-Python ones.
"""

from __future__ import annotations

import os

import pytest

from fastrpc import calltable, frames  # not ``fastrpc``: only the selection is under test


def _set(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


@pytest.mark.skipif(
    not _set("FASTRPC_REQUIRE_EXTENSIONS") or _set("FASTRPC_NO_EXTENSIONS"),
    reason="FASTRPC_REQUIRE_EXTENSIONS=1 is not set (or FASTRPC_NO_EXTENSIONS=1 is)",
)
def test_compiled_codec_is_live() -> None:
    assert frames.IMPLEMENTATION == "cython", "the compiled codec fastrpc._frames did not load"
    assert calltable.COMPILED, "the compiled call table fastrpc._calltable did not load"


@pytest.mark.skipif(not _set("FASTRPC_NO_EXTENSIONS"), reason="FASTRPC_NO_EXTENSIONS=1 is not set")
def test_pure_codec_is_live() -> None:
    assert frames.IMPLEMENTATION == "python"
    assert not calltable.COMPILED


def test_call_table_goes_with_the_codec() -> None:
    # The compiled call table is calltable.py's own source: never live beside the pure
    # codec, and the pure source itself (not a copy) when it is not compiled.
    expected = "fastrpc._calltable" if calltable.COMPILED else "fastrpc.calltable"
    assert calltable.CallTable.__module__ == expected
    if calltable.COMPILED:
        assert frames.IMPLEMENTATION == "cython"
        assert type(calltable.CallTable.__dict__["out"]).__name__ == "getset_descriptor"  # a typed C field
    else:
        assert type(calltable.CallTable.__dict__["out"]).__name__ == "member_descriptor"  # a __slots__ slot


def test_frame_type_matches_implementation() -> None:
    module = "fastrpc._frames" if frames.IMPLEMENTATION == "cython" else "fastrpc._frames_py"
    assert frames.Frame.__module__ == module
    assert frames.StreamLedger.__module__ == module
