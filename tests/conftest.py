"""Shared pytest fixtures.

``codec`` runs a test once per frame-codec implementation: ``"cython"``
(``fastrpc._frames``) and ``"python"`` (``fastrpc._frames_py``). The compiled one is
skipped, with the reason, when ``FASTRPC_NO_EXTENSIONS=1`` or when it is not built.
``codec_pair`` gives ``(compiled, pure)`` for tests that compare the two directly.

Marker ``codec_independent`` (registered here): see :func:`pytest_configure`.
"""

from __future__ import annotations

import gc
import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

PURE_CODEC = "fastrpc._frames_py"
COMPILED_CODEC = "fastrpc._frames"


def _compiled_codec() -> tuple[ModuleType | None, str]:
    if os.environ.get("FASTRPC_NO_EXTENSIONS", "") not in ("", "0"):
        return None, "FASTRPC_NO_EXTENSIONS is set: the compiled codec is disabled"
    try:
        return importlib.import_module(COMPILED_CODEC), ""
    except ImportError as exc:
        return None, f"{COMPILED_CODEC} is not built ({exc})"


_COMPILED, _NO_COMPILED_REASON = _compiled_codec()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection made (test modules, their items: some 100,000 objects) out of
    the garbage collector's reach: the ``gc.collect()`` that ends every ``_util.run``,
    and the collector's own full passes, then only walk what the tests made since
    (a full pass over everything cost ~70 ms, a few hundred times a run)."""
    gc.freeze()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "codec_independent: runs nothing that FASTRPC_NO_EXTENSIONS changes (child processes that drop "
        "or set it themselves, a build that ignores it): the pure-codec CI run deselects these, as it "
        "would only repeat what the compiled run did; the compiled and lowest runs keep them",
    )


@pytest.fixture(scope="session", params=["cython", "python"])
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """The frame codec module under test (session-scoped: usable with hypothesis)."""
    if request.param == "python":
        return importlib.import_module(PURE_CODEC)
    if _COMPILED is None:
        pytest.skip(_NO_COMPILED_REASON)
    return _COMPILED


@pytest.fixture(scope="session")
def codec_pair() -> tuple[ModuleType, ModuleType]:
    """``(compiled, pure)`` codec modules; skipped without the compiled one."""
    if _COMPILED is None:
        pytest.skip(_NO_COMPILED_REASON)
    return _COMPILED, importlib.import_module(PURE_CODEC)


@pytest.fixture
def redis() -> Iterator[Any]:
    """A fresh redis-server on loopback for one test (tests/_services.Redis; skipped
    with the reason where redis-server is not installed)."""
    from _services import Redis

    r = Redis().start()
    try:
        yield r
    finally:
        r.close()
