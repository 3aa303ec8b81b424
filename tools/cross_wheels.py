#!/usr/bin/env python3
"""Cross-build fastrpc's extension wheels for Linux targets this host cannot run.

    python tools/cross_wheels.py --sdist-dir DIR --native-wheels DIR --out DIR [--pythons 3.11 3.12 ...]

Run by tools/build_wheels.sh (after the native x86_64 wheels exist), in its tools venv
(ziglang, Cython, wheel, auditwheel from PyPI). For each target and each CPython:

1. Target headers. CPython's include directory is the same on every Linux target
   except ``pyconfig.h``, which configure writes for the build's platform. No
   prebuilt CPython for these targets can be fetched here (only PyPI, npm and
   Debian's registries are reachable; python-build-standalone and the manylinux
   images are not), so the target's ``pyconfig.h`` is the host's (pyenv, configure
   for x86_64-linux-gnu, same CPython version) with the x86-only macros removed
   (``HAVE_GCC_ASM_FOR_X87``/``_X64``, used by pymath.h) and ``PY_SUPPORT_TIER`` set,
   and then CHECKED against the target compiler: every ``SIZEOF_*``/``ALIGNOF_*``
   value it defines becomes a ``_Static_assert`` compiled for the target with zig's
   own glibc/musl headers; a macro with no known C type fails the build, so nothing
   ABI-relevant goes unchecked. (The remaining macros say which libc functions
   CPython's own C files may call; Python.h and this extension do not depend on them.)
2. ``cython`` turns src/fastrpc/_frames.pyx into C with setup.py's directives, and
   ``python -m ziglang cc -target T`` compiles it with setup.py's flags (-O3, -fPIC,
   -s: stripped) into ``_frames.cpython-3XY-<arch>-linux-<libc>.so``; for musl,
   patchelf renames zig's ``libc.so`` dependency to ``libc.musl-<arch>.so.1``.
3. The wheel is the native wheel of the same Python (same Python files, METADATA,
   entry points) with the .so replaced and the WHEEL tag rewritten, packed by
   ``wheel pack`` (fresh RECORD), then ``auditwheel repair --plat`` gives it the
   oldest tag its symbols allow, which must be manylinux_2_17 / musllinux_1_2.

What cannot be done here: run these wheels (no aarch64 or musl machine, no
emulator, no Docker). CI's cibuildwheel job builds and tests them natively.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGETS = {
    # zig target -> (linux arch, libc ABI, auditwheel platform, PEP 11 support tier)
    "aarch64-linux-gnu.2.17": ("aarch64", "gnu", "manylinux_2_17_aarch64", 2),
    "x86_64-linux-musl": ("x86_64", "musl", "musllinux_1_2_x86_64", 0),
    "aarch64-linux-musl": ("aarch64", "musl", "musllinux_1_2_aarch64", 0),
    # A control, not built by default: this same pipeline for the host's own platform
    # gives a wheel that CAN be installed and tested here (RELEASING.md).
    "x86_64-linux-gnu.2.17": ("x86_64", "gnu", "manylinux_2_17_x86_64", 1),
}
DEFAULT_TARGETS = ["aarch64-linux-gnu.2.17", "x86_64-linux-musl", "aarch64-linux-musl"]
# Each SIZEOF_/ALIGNOF_ macro of pyconfig.h and the C type it measures.
SIZE_TYPES = {
    "DOUBLE": "double",
    "FLOAT": "float",
    "FPOS_T": "fpos_t",
    "INT": "int",
    "LONG": "long",
    "LONG_DOUBLE": "long double",
    "LONG_LONG": "long long",
    "OFF_T": "off_t",
    "PID_T": "pid_t",
    "PTHREAD_KEY_T": "pthread_key_t",
    "PTHREAD_T": "pthread_t",
    "SHORT": "short",
    "SIZE_T": "size_t",
    "TIME_T": "time_t",
    "UINTPTR_T": "uintptr_t",
    "VOID_P": "void *",
    "WCHAR_T": "wchar_t",
    "_BOOL": "_Bool",
    "MAX_ALIGN_T": "max_align_t",
}
X86_ONLY = ("HAVE_GCC_ASM_FOR_X87", "HAVE_GCC_ASM_FOR_X64")
DIRECTIVES = "boundscheck=False,wraparound=False,cdivision=True,embedsignature=True"


def run(cmd: list[str], **kw: object) -> None:
    print("   $", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def zig_cc(target: str) -> list[str]:
    return [sys.executable, "-m", "ziglang", "cc", "-target", target]


def host_include(python: str) -> Path:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def target_include(python: str, target: str, work: Path) -> Path:
    """A copy of the host's include dir with a pyconfig.h for ``target``, checked."""
    src = host_include(python)
    dest = work / f"include-{target}-{src.name}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    text = (dest / "pyconfig.h").read_text()
    for name in X86_ONLY:
        text = re.sub(rf"^#define {name} 1$", f"/* #undef {name} (x86 only; removed for {target}) */", text, flags=re.M)
    tier = TARGETS[target][3]
    text = re.sub(r"^#define PY_SUPPORT_TIER \d+$", f"#define PY_SUPPORT_TIER {tier}", text, flags=re.M)
    (dest / "pyconfig.h").write_text(text)
    checks = []
    for kind, name in re.findall(r"^#define (SIZEOF|ALIGNOF)_(\w+) \d+$", text, flags=re.M):
        if name not in SIZE_TYPES:
            raise SystemExit(f"{dest}/pyconfig.h: {kind}_{name}: no C type known to check it against")
        op = "sizeof" if kind == "SIZEOF" else "_Alignof"
        checks.append(f'_Static_assert({op}({SIZE_TYPES[name]}) == {kind}_{name}, "{kind}_{name}");')
    probe = dest / "probe_pyconfig.c"
    probe.write_text(
        "#include <Python.h>\n#include <stddef.h>\n#include <stdio.h>\n#include <pthread.h>\n"
        "#include <wchar.h>\n#include <time.h>\n" + "\n".join(checks) + "\n"
    )
    run([*zig_cc(target), "-c", f"-I{dest}", str(probe), "-o", str(probe.with_suffix(".o"))])
    probe.unlink()
    probe.with_suffix(".o").unlink()
    print(f"   {target}: pyconfig.h checked ({len(checks)} sizes/alignments match the target)", file=sys.stderr)
    return dest


def cythonize(sdist: Path, work: Path) -> Path:
    c_file = work / "_frames.c"
    run(
        [
            sys.executable,
            "-m",
            "cython",
            "-3",
            "-X",
            DIRECTIVES,
            "-o",
            str(c_file),
            str(sdist / "src" / "fastrpc" / "_frames.pyx"),
        ]
    )
    return c_file


def build(python: str, version: str, target: str, c_file: Path, native: Path, work: Path, out: Path) -> Path:
    arch, libc, plat, _ = TARGETS[target]
    tag = "cp" + version.replace(".", "")
    include = target_include(python, target, work)
    so_name = f"_frames.cpython-{tag[2:]}-{arch}-linux-{libc}.so"
    so = work / so_name
    run(
        [
            *zig_cc(target),
            "-shared",
            "-fPIC",
            "-O3",
            "-s",
            "-fno-strict-aliasing",
            "-DNDEBUG",
            f"-I{include}",
            str(c_file),
            "-o",
            str(so),
        ]
    )
    if libc == "musl":
        # zig names musl's libc "libc.so"; musl's loader answers any "libc." name with
        # itself, and musllinux (PEP 656) wheels name it as Alpine installs it.
        run(["patchelf", "--replace-needed", "libc.so", f"libc.musl-{arch}.so.1", str(so)])
    unpacked = work / f"unpack-{tag}-{target}"
    shutil.rmtree(unpacked, ignore_errors=True)
    run([sys.executable, "-m", "wheel", "unpack", "-d", str(unpacked), str(native)])
    root = next(unpacked.iterdir())
    for old in (root / "fastrpc").glob("_frames.*.so"):
        old.unlink()
    shutil.copy2(so, root / "fastrpc" / so_name)
    wheel_file = next(root.glob("*.dist-info")) / "WHEEL"
    lines = [ln for ln in wheel_file.read_text().splitlines() if ln.strip() and not ln.startswith("Tag:")]
    wheel_file.write_text("\n".join([*lines, f"Tag: {tag}-{tag}-linux_{arch}"]) + "\n")
    raw = work / "raw"
    raw.mkdir(exist_ok=True)
    run([sys.executable, "-m", "wheel", "pack", "-d", str(raw), str(root)])
    built = next(raw.glob(f"fastrpc-*-{tag}-{tag}-linux_{arch}.whl"))
    before = set(out.glob("fastrpc-*.whl"))
    started = time.time()
    # On an x86_64 host --plat accepts only x86_64 names; "auto" reads the wheel's own
    # architecture and libc and picks the oldest tag its symbols allow, checked below.
    run(["auditwheel", "repair", "--plat", "auto", "--wheel-dir", str(out), str(built)])
    built.unlink()
    (repaired,) = {p for p in out.glob("fastrpc-*.whl") if p not in before or p.stat().st_mtime > started}
    if plat not in repaired.name:
        raise SystemExit(f"{repaired.name}: expected the {plat} tag")
    return repaired


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist-dir", type=Path, required=True, help="the unpacked sdist")
    ap.add_argument("--native-wheels", type=Path, required=True, help="where the manylinux x86_64 wheels are")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--pythons", nargs="+", default=["3.11", "3.12", "3.13"])
    ap.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS, choices=list(TARGETS))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    c_file = cythonize(args.sdist_dir, args.work)
    for version in args.pythons:
        tag = "cp" + version.replace(".", "")
        python = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")))
        python_exe = python[-1] if python else shutil.which(f"python{version}")
        if not python_exe:
            raise SystemExit(f"no Python {version} (its headers are the base of the target's)")
        (native,) = args.native_wheels.glob(f"fastrpc-*-{tag}-{tag}-manylinux*_x86_64.whl")
        for target in args.targets:
            print(f"== {tag} for {target}", file=sys.stderr)
            made = build(python_exe, version, target, c_file, native, args.work / tag, args.out)
            print(f"   built {made.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
