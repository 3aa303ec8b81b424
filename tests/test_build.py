"""setup.py without a working C compiler (``CC=/bin/false``), built by pip as a user's
``pip install`` would build it, in a copy of the source tree:

* mode unset: the install succeeds with the pure-Python codec, and the user's terminal
  shows ONE line saying so and why (pip hides a successful build's output, so setup.py
  also writes that line to /dev/tty; the build runs under a pseudo-terminal here);
* ``FASTRPC_BUILD_EXTENSION=yes``: the build fails.

Both are ``codec_independent``: setup.py and pip never read FASTRPC_NO_EXTENSIONS (nor
import fastrpc), so the pure-codec CI run would only repeat the compiled run's builds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINE = "fastrpc: using the pure-Python codec"
# Runs argv under a pseudo-terminal (the child's controlling tty) and copies its output.
UNDER_PTY = "import os, pty, sys; sys.exit(os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:])))"


def _source_tree(dest: Path) -> Path:
    dest.mkdir()
    if not (ROOT / "setup.py").is_file():
        pytest.skip("needs the source tree (setup.py), not an installed fastrpc")
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, dest / name)
    # copy2 keeps mtimes: an up-to-date _frames.c is reused instead of re-cythonized.
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"))
    return dest


def _pip_wheel(tree: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(out), str(tree)]
    # Without isolation when the build requirements (pyproject.toml) are here already:
    # faster, offline.
    if _have_build_requirements():
        cmd.insert(4, "--no-build-isolation")
    return cmd


def _have_build_requirements() -> bool:
    try:
        setuptools = importlib.metadata.version("setuptools")
        cython = importlib.metadata.version("Cython")
    except importlib.metadata.PackageNotFoundError:
        return False
    return int(setuptools.split(".")[0]) >= 77 and cython == "3.3.1"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FASTRPC_BUILD_EXTENSION"}
    env.update(CC="/bin/false", PIP_NO_INPUT="1", **extra)
    return env


@pytest.mark.codec_independent
@pytest.mark.timeout(240)
def test_no_compiler_falls_back_with_one_line(tmp_path: Path) -> None:
    tree = _source_tree(tmp_path / "tree")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", UNDER_PTY, *_pip_wheel(tree, out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=_env(),
        timeout=200,
    )
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 0, shown
    lines = [line for line in shown.splitlines() if LINE in line]
    assert len(lines) == 1, shown
    assert "did not compile" in lines[0] and "FASTRPC_BUILD_EXTENSION=yes" in lines[0], lines[0]
    (wheel,) = out.glob("fastrpc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastrpc/_frames_py.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))], names


@pytest.mark.codec_independent
@pytest.mark.timeout(240)
def test_required_extension_fails_the_build(tmp_path: Path) -> None:
    tree = _source_tree(tmp_path / "tree")
    proc = subprocess.run(
        _pip_wheel(tree, tmp_path / "out"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(FASTRPC_BUILD_EXTENSION="yes"),
        timeout=200,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert not list(tmp_path.glob("out/*.whl"))
    assert LINE not in proc.stdout + proc.stderr
