"""pytest configuration of the micro-benchmarks in bench/ (pytest-benchmark).

Finds ``src/`` when fastrpc is not installed, and after the run prints, for every
benchmark group that has both an ``impl=cython`` and an ``impl=python`` variant, how
many times faster the compiled codec was (ratio of the medians).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from typing import Any

if importlib.util.find_spec("fastrpc") is None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    session = getattr(config, "_benchmarksession", None)  # pytest-benchmark's, if active
    medians: dict[str, dict[str, float]] = {}
    for bench in getattr(session, "benchmarks", None) or []:
        stats = getattr(bench, "stats", None)
        impl = (getattr(bench, "params", None) or {}).get("impl")
        if stats is None or impl is None:
            continue
        medians.setdefault(bench.group or bench.name, {})[impl] = stats.median
    rows = [(g, m["python"] / m["cython"], m) for g, m in medians.items() if {"cython", "python"} <= m.keys()]
    if not rows:
        return
    terminalreporter.section("compiled vs pure-Python codec (median times)")
    for group, ratio, m in rows:
        terminalreporter.write_line(
            f"{group:<36} python {m['python'] * 1e6:10.2f} us   cython {m['cython'] * 1e6:9.2f} us   {ratio:6.1f}x"
        )
