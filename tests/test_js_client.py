"""The TypeScript client (js/): built with tsc, its Node test suite run against a real
Python server (js/test/*.test.mjs: calls, streams with credit, channels, cancel, errors,
resume through the chaos proxy, the shared codec vectors; js/test/regressions.test.mjs
against js/test/_fixture_server.py, a server with smaller limits), and a page in real
headless Chromium that streams from the Python server and makes calls."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
JS = ROOT / "js"
NODE = shutil.which("node")
NPM = shutil.which("npm")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.external,
    pytest.mark.skipif(NODE is None or NPM is None, reason="needs node and npm (Node 20 or later)"),
]


def _run(cmd: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, cwd=JS, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
    )
    return out  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def built() -> pathlib.Path:
    """js/ installed (npm ci, only when node_modules is missing) and built with tsc."""
    assert NPM is not None and NODE is not None
    if not (JS / "node_modules" / "typescript").is_dir():
        _run([NPM, "ci", "--no-audit", "--no-fund"], timeout=300)
    _run([NODE, str(JS / "node_modules" / "typescript" / "bin" / "tsc"), "-p", "tsconfig.json"], timeout=120)
    assert (JS / "dist" / "index.js").is_file() and (JS / "dist" / "index.d.ts").is_file()
    return JS / "dist"


def test_node_suite(built: pathlib.Path) -> None:
    """node --test js/test/*.test.mjs, against tests/_js_server.py in a child process."""
    tests = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.mjs"))
    env = {**os.environ, "FASTRPC_PYTHON": sys.executable}
    out = _run([NODE, "--experimental-websocket", "--test", *tests], timeout=120, env=env)  # type: ignore[list-item]
    assert "# fail 0" in out.stdout and "# pass " in out.stdout, out.stdout[-3000:]


@pytest.fixture
def static_server(built: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[tuple[int, int, pathlib.Path]]:
    """tests/_js_server.py serving js/ over HTTP too: (ws port, http port, result file)."""
    result = tmp_path / "result.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "_js_server.py"), "--static", str(JS)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FASTRPC_JS_RESULT": str(result)},
    )
    try:
        assert proc.stdout is not None
        ports = {}
        while len(ports) < 2:
            line = proc.stdout.readline()
            assert line, "the server exited before printing its ports"
            key, value = line.split()
            ports[key] = int(value)
        yield ports["port"], ports["http"], result
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def run_page(url: str, result: pathlib.Path, timeout: float = 60) -> dict[str, object]:
    """Open ``url`` in headless Chromium until it POSTs its result; the browser is then
    stopped (its process group, which it was started in)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",  # root in CI containers
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                f"--user-data-dir={profile}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while not result.exists():
                assert proc.poll() is None, f"chromium exited with {proc.returncode}"
                assert time.monotonic() < deadline, f"no result from the page within {timeout} s"
                time.sleep(0.05)
            return json.loads(result.read_text())  # type: ignore[no-any-return]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs Debian's chromium package)")
def test_chromium_page(static_server: tuple[int, int, pathlib.Path]) -> None:
    """A page in headless Chromium calls the Python server and reads its streams."""
    ws, http, result = static_server
    got = run_page(f"http://127.0.0.1:{http}/test/browser/index.html?ws={ws}&n=50000", result)
    assert "failed" not in got, got["failed"]
    assert "HeadlessChrome" in str(got["userAgent"])
    assert got["add"] == 42
    assert got["error"] == "ValueError: from the browser"
    assert got["count"] == 5000 and got["inOrder"] is True
    assert got["doubled"] == [2, 4, 6]
    assert got["total"] == [sum(range(10000)), 10000]
    assert got["items"] == 50000


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs Debian's chromium package)")
def test_chromium_resume_through_cuts(static_server: tuple[int, int, pathlib.Path]) -> None:
    """The page streams through the chaos proxy (tests/_chaos.py), which cuts the
    connection a dozen times: every item arrives once, in order, and an upload completes."""
    ws, http, result = static_server
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "_js_proxy.py"), str(ws), "11", "0.05", "0.25", "12", "4"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT / "tests",
    )
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline()
        assert line.startswith("port "), line
        got = run_page(
            f"http://127.0.0.1:{http}/test/browser/index.html?ws={line.split()[1]}&mode=resume&n=40000", result
        )
    finally:
        proxy.terminate()
        proxy.wait(5)
        if proxy.stdout is not None:
            proxy.stdout.close()
    assert "failed" not in got, got["failed"]
    assert got["items"] == 40000 and got["inOrder"] is True
    assert got["total"] == [sum(range(20000)), 20000]
    assert got["resumes"] >= 1 and got["reconnecting"] is True, got
