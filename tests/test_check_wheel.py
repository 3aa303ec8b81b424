"""tools/check_wheel.py, the wheel-contents check that .ci/run and the release script
run on real wheels, fed here with wheels made in the test: one as setup.py makes it
passes, and each kind of defect is reported."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "check_wheel.py"
STRIP = shutil.which("strip")
CC = shutil.which("cc")


def _tool() -> ModuleType:
    if not TOOL.is_file() or not (ROOT / "src" / "fastrpc").is_dir():
        pytest.skip("needs the source tree (tools/, src/): checks wheels against src/fastrpc")
    spec = importlib.util.spec_from_file_location("check_wheel", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shared_object(tmp_path: Path, strip: bool) -> bytes:
    if CC is None:
        pytest.skip("needs a C compiler to make an ELF shared object")
    src = tmp_path / "m.c"
    src.write_text("int answer(void) { return 42; }\n")
    so = tmp_path / "m.so"
    subprocess.run([CC, "-shared", "-fPIC", "-g", *(["-s"] if strip else []), str(src), "-o", str(so)], check=True)
    return so.read_bytes()


def _wheel(tmp_path: Path, tool: ModuleType, tag: str, extra: dict[str, bytes], drop: tuple[str, ...] = ()) -> Path:
    version = tool.source_version()
    path = tmp_path / f"fastrpc-{version}-{tag}.whl"
    files = {f"fastrpc/{p.name}": p.read_bytes() for p in (ROOT / "src" / "fastrpc").glob("*.py")}
    files["fastrpc/py.typed"] = b""
    files["fastrpc/_frames.pyi"] = b""
    info = f"fastrpc-{version}.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.4\nName: fastrpc\nVersion: {version}\n\n".encode()
    files[f"{info}/entry_points.txt"] = (
        b"[console_scripts]\nfastrpc = fastrpc.cli:main\n\n[pytest11]\nfastrpc = fastrpc.pytest_plugin\n"
    )
    files.update(extra)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            if name not in drop:
                zf.writestr(name, data)
    return path


def test_good_wheels_pass(tmp_path: Path) -> None:
    tool = _tool()
    stripped = _shared_object(tmp_path, strip=True)
    so = {f"fastrpc/{m}.cpython-312-x86_64-linux-gnu.so": stripped for m in ("_frames", "_calltable")}
    assert tool.check_wheel(_wheel(tmp_path, tool, "cp312-cp312-manylinux_2_17_x86_64", so)) == []
    assert tool.check_wheel(_wheel(tmp_path, tool, "py3-none-any", {})) == []


def test_defects_are_reported(tmp_path: Path) -> None:
    tool = _tool()
    unstripped = {"fastrpc/_frames.cpython-312-x86_64-linux-gnu.so": _shared_object(tmp_path, strip=False)}
    problems = tool.check_wheel(
        _wheel(
            tmp_path,
            tool,
            "cp312-cp312-manylinux_2_17_x86_64",
            {**unstripped, "fastrpc/_frames.pyx": b"", "fastrpc/__pycache__/x.pyc": b"", "tests/test_x.py": b""},
            drop=("fastrpc/py.typed", "fastrpc/peer.py"),
        )
    )
    text = "\n".join(problems)
    for expected in (
        "is not stripped (sections",
        "fastrpc/_frames.pyx: an extension source",
        "bytecode in a wheel",
        "tests/test_x.py: outside the fastrpc package",
        "missing fastrpc/py.typed",
        "missing module fastrpc/peer.py",
    ):
        assert expected in text, text
    assert "expected one compiled fastrpc/_frames module" in "\n".join(
        tool.check_wheel(_wheel(tmp_path, tool, "cp312-cp312-linux_x86_64", {}))
    )
    # The codec without the compiled call table, and a compiled module nothing builds.
    codec_only = tool.check_wheel(
        _wheel(
            tmp_path,
            tool,
            "cp312-cp312-linux_x86_64",
            {
                "fastrpc/_frames.cpython-312-x86_64-linux-gnu.so": _shared_object(tmp_path, strip=True),
                "fastrpc/peer.cpython-312-x86_64-linux-gnu.so": _shared_object(tmp_path, strip=True),
            },
        )
    )
    assert any("expected one compiled fastrpc/_calltable module, found none" in p for p in codec_only), codec_only
    assert any(
        "fastrpc/peer.cpython-312-x86_64-linux-gnu.so: a compiled module setup.py does not build" in p
        for p in codec_only
    ), codec_only
    assert not any("_frames module" in p for p in codec_only), codec_only
    pure_with_so = tool.check_wheel(_wheel(tmp_path, tool, "py3-none-any", unstripped))
    assert any("compiled module in a py3-none-any wheel" in p for p in pure_with_so), pure_with_so


def test_command_line_exit_status(tmp_path: Path) -> None:
    tool = _tool()
    good = _wheel(tmp_path, tool, "py3-none-any", {})
    ok = subprocess.run([sys.executable, str(TOOL), str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "PROBLEM" not in ok.stderr, ok.stdout + ok.stderr
    (tmp_path / "bad").mkdir()
    bad = _wheel(tmp_path / "bad", tool, "py3-none-any", {"fastrpc/_frames.c": b""})
    fail = subprocess.run([sys.executable, str(TOOL), str(bad)], capture_output=True, text=True, timeout=60)
    assert fail.returncode == 1 and "an extension source in a wheel" in fail.stderr, fail.stdout + fail.stderr
