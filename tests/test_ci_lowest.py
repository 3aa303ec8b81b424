"""ci/constraints-lowest.txt (the lowest-dependency CI job) pins every ``>=`` floor of
pyproject.toml, and ci/check_lowest.py notices when they drift apart."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

if sys.version_info < (3, 11):
    pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ci" / "check_lowest.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_lowest", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_constraints_pin_every_floor() -> None:
    check = _load()
    assert check.problems(check.PYPROJECT.read_text(), check.CONSTRAINTS.read_text()) == []


PYPROJECT = """
[project]
name = "fastrpc"
dependencies = ["websockets>=14", "uvloop>=0.19; sys_platform != 'win32'"]
[project.optional-dependencies]
test = ["pytest>=8"]
dev = ["fastrpc[test]", "mypy>=1.10"]
"""


def test_drift_is_reported() -> None:
    check = _load()
    good = "websockets==14.0\nuvloop==0.19.0; sys_platform != 'win32'\npytest==8.0.0\n"
    assert check.problems(PYPROJECT, good) == []  # "dev" is not the lowest job's
    errs = check.problems(PYPROJECT, good.replace("websockets==14.0", "websockets==15.0"))
    assert any("websockets" in e and ">=14" in e for e in errs), errs
    errs = check.problems(PYPROJECT, good.replace("pytest==8.0.0\n", ""))
    assert any("pytest>=8" in e and "not pinned" in e for e in errs), errs
    errs = check.problems(PYPROJECT, good + "msgspec==0.18.0\n")
    assert any("msgspec" in e and "no >= floor" in e for e in errs), errs
    errs = check.problems(PYPROJECT, good.replace("; sys_platform != 'win32'", ""))
    assert any("uvloop" in e and "marker" in e for e in errs), errs
