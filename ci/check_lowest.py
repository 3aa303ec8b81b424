#!/usr/bin/env python
"""Check that ci/constraints-lowest.txt pins every floor of pyproject.toml.

Every requirement with a ``>=`` floor in ``[project] dependencies`` and in the
optional-dependency groups the lowest CI job installs (``test``, ``zstd``) must be
pinned in the constraints file at exactly that floor (``websockets>=14`` <->
``websockets==14.0``), with the same environment marker; and the constraints file
must pin nothing else. Exit status 1 (with the differences) otherwise.

    python ci/check_lowest.py            # from anywhere: paths are relative to this file

Standard library only (tomllib, or tomli on Python 3.10).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "ci" / "constraints-lowest.txt"
# The extras the lowest job installs (".[test]"; "zstd" and "redis" are subsets of "test").
# "dev" holds tools (mypy, build, cibuildwheel), not runtime or test dependencies.
EXTRAS = ("test", "zstd", "redis")

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(?:;\s*(.*?))?\s*$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """``"14"`` and ``"14.0"`` are the same release (PEP 440): trailing zeros dropped."""
    parts = [int(p) for p in version.strip().split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def marker(text: str | None) -> str:
    return re.sub(r"\s+", "", (text or "").replace('"', "'"))


def floors(pyproject: dict) -> dict[str, tuple[str, str]]:
    """``{name: (floor, marker)}`` for every ``>=`` requirement the lowest job installs."""
    project = pyproject["project"]
    reqs = list(project.get("dependencies", []))
    for extra in EXTRAS:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    out: dict[str, tuple[str, str]] = {}
    for req in reqs:
        m = _REQ.match(req)
        if m is None:
            raise ValueError(f"cannot parse requirement {req!r}")
        name, _extras, spec, mark = m.groups()
        if canonical(name) == canonical(project["name"]):
            continue  # a self-reference such as fastrpc[test]
        lows = [s[2:].strip() for s in spec.split(",") if s.strip().startswith(">=")]
        if not lows:
            raise ValueError(f"{req!r} has no >= floor: the lowest job cannot know what to pin")
        floor = max(lows, key=release)
        prev = out.get(canonical(name))
        if prev is not None and release(prev[0]) != release(floor):
            raise ValueError(f"{name} has two different floors in pyproject.toml: {prev[0]} and {floor}")
        out[canonical(name)] = (floor, marker(mark))
    return out


def pins(text: str) -> dict[str, tuple[str, str]]:
    """``{name: (version, marker)}`` from the constraints file's ``name==version`` lines."""
    out: dict[str, tuple[str, str]] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([0-9][0-9.]*)\s*(?:;\s*(.*))?$", line)
        if m is None:
            raise ValueError(f"{CONSTRAINTS.name}: expected name==version[; marker], got {raw!r}")
        out[canonical(m.group(1))] = (m.group(2), marker(m.group(3)))
    return out


def problems(pyproject_text: str, constraints_text: str) -> list[str]:
    want = floors(tomllib.loads(pyproject_text))
    have = pins(constraints_text)
    errs = []
    for name, (floor, mark) in sorted(want.items()):
        if name not in have:
            errs.append(f"{name}>={floor} in pyproject.toml is not pinned in {CONSTRAINTS.name}")
            continue
        pin, pin_mark = have[name]
        if release(pin) != release(floor):
            errs.append(f"{name}: pyproject.toml says >={floor}, {CONSTRAINTS.name} pins =={pin}")
        if pin_mark != mark:
            errs.append(f"{name}: marker {mark!r} in pyproject.toml, {pin_mark!r} in {CONSTRAINTS.name}")
    errs += [
        f"{name} is pinned in {CONSTRAINTS.name} but has no >= floor in pyproject.toml"
        for name in sorted(have.keys() - want.keys())
    ]
    return errs


def main() -> int:
    errs = problems(PYPROJECT.read_text(), CONSTRAINTS.read_text())
    for e in errs:
        print(f"check_lowest: {e}", file=sys.stderr)
    if errs:
        return 1
    print(f"check_lowest: {CONSTRAINTS.relative_to(ROOT)} pins every floor of pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
