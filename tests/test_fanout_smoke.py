"""Smoke test of bench/fanout.py: a tiny run (one worker process, in-memory broker)
prints figures that add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if not sys.platform.startswith("linux"):
    pytest.skip("bench/fanout.py reads /proc", allow_module_level=True)


def test_fanout_bench_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    args = [sys.executable, str(ROOT / "bench" / "fanout.py"), "--subscribers", "5", "--items", "20", "--rate", "200"]
    proc = subprocess.run(
        [*args, "--configs", "memory-1", "--json", str(out)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())["memory-1"]
    assert r["subscribers"] == 5 and r["workers"] == 1
    for phase in ("saturated", "paced"):
        assert r[phase]["items_per_s"] > 0
        assert 0 <= r[phase]["p50_ms"] <= r[phase]["p99_ms"]
    assert "memory-1" in proc.stdout
