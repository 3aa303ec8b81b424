"""``python -m fastrpc demo | version | --help`` in a subprocess, and the
progress bar's two modes."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys

import pytest
from _util import child_env

import fastrpc
from fastrpc import __main__ as cli

TIMEOUT = 60


def _no_extensions() -> bool:
    return os.environ.get("FASTRPC_NO_EXTENSIONS", "") not in ("", "0")


def fastrpc_cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-W", "default", "-m", "fastrpc", *args],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"fastrpc {' '.join(args)} did not finish within {timeout} s: {exc.stdout!r} {exc.stderr!r}")


@pytest.mark.timeout(TIMEOUT + 30)
def test_demo_items() -> None:
    proc = fastrpc_cli("demo", "--items", "20000")
    details = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, details
    out = proc.stdout
    m = re.search(
        rf"^fastrpc {re.escape(fastrpc.__version__)} demo \(codec implementation: (cython|python)\)$", out, re.M
    )
    assert m, details
    impl = m.group(1)
    if _no_extensions():
        assert impl == "python", details
    loop = "uvloop" if importlib.util.find_spec("uvloop") else r"asyncio .*"
    assert re.search(rf"^client: pid \d+, codec implementation {impl}, event loop {loop}$", out, re.M), details
    m = re.search(rf"^server: pid (\d+), codec implementation {impl}, ws://127\.0\.0\.1:(\d+)$", out, re.M)
    assert m and int(m.group(1)) != os.getpid() and int(m.group(2)) > 0, details
    assert re.search(
        r"^feed: 20,000 items in [\d.]+ s: [\d,]+ items/s, [\d,.]+ MB/s \([\d.,]+ MB in 20 stream items\)$", out, re.M
    ), details
    assert re.search(r"^calls: 1,000 sequential in [\d.]+ s: [\d,]+ calls/s", out, re.M), details
    assert re.search(r"^calls: 1,000 concurrent in [\d.]+ s: [\d,]+ calls/s$", out, re.M), details
    for bad in ("Traceback", "Warning", "Task was destroyed", "never awaited", "failed"):
        assert bad not in proc.stderr, details


@pytest.mark.timeout(TIMEOUT + 30)
def test_demo_seconds_and_options() -> None:
    proc = fastrpc_cli("demo", "--seconds", "0.5", "--batch", "250", "--calls", "100")
    details = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, details
    assert "feed: streaming 0.5 s in batches of 250" in proc.stdout, details
    m = re.search(r"^feed: ([\d,]+) items in ([\d.]+) s: [\d,]+ items/s", proc.stdout, re.M)
    assert m and int(m.group(1).replace(",", "")) > 0 and 0.4 < float(m.group(2)) < 10, details
    assert re.search(r"^calls: 100 sequential in .* calls/s", proc.stdout, re.M), details
    assert re.search(r"^calls: 100 concurrent in .* calls/s", proc.stdout, re.M), details


def test_version_and_help() -> None:
    proc = fastrpc_cli("version")
    assert proc.returncode == 0, proc.stderr
    m = re.fullmatch(
        rf"fastrpc {re.escape(fastrpc.__version__)} \(codec implementation: (cython|python); .*\)\n", proc.stdout
    )
    assert m, proc.stdout
    if _no_extensions():
        assert m.group(1) == "python"
    proc = fastrpc_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "version" in proc.stdout
    proc = fastrpc_cli("demo", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--items", "--seconds", "--duration", "--batch", "--calls"):
        assert option in proc.stdout
    proc = fastrpc_cli("demo", "--items", "0")
    assert proc.returncode == 2 and "positive" in proc.stderr


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"fastrpc {fastrpc.__version__} ")
    assert cli.main([]) == 2  # no command: usage
    assert "usage:" in capsys.readouterr().out


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_tty() -> None:
    err = _Tty()
    progress = cli._Progress(err, total_items=1000, seconds=None)
    progress.update(500, 12_345, progress.start + 1.0)
    progress.update(600, 12_345, progress.start + 1.01)  # too soon: not redrawn
    progress.update(1000, 25_000, progress.start + 2.0)
    progress.finish()
    text = err.getvalue()
    assert text.count("\r[") == 2 and "\n" not in text
    assert "[############............]  50%" in text and "100%" in text and "items/s" in text
    assert text.endswith("\r")


def test_progress_lines_without_a_tty() -> None:
    err = io.StringIO()
    progress = cli._Progress(err, total_items=None, seconds=4.0)
    progress.update(500, 12_345, progress.start + 1.0)
    progress.update(900, 12_345, progress.start + 1.5)  # lines once a second
    progress.update(1000, 25_000, progress.start + 2.0)
    progress.finish()
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("feed: ") for line in lines)
    assert " 25%" in lines[0] and " 50%" in lines[1] and "\r" not in err.getvalue()
