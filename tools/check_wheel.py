#!/usr/bin/env python3
"""Inspect built distributions of fastrpc: what is inside, and nothing else.

    python tools/check_wheel.py dist/*.whl dist/*.tar.gz

A wheel must hold every module of src/fastrpc, ``py.typed`` and the ``.pyi`` stub of
the compiled codec, the ``fastrpc`` console script and the ``pytest11`` entry point; no
``.c``/``.pyx``/``.pxd`` (nothing reads them at run time: they belong to the sdist),
no tests, no bytecode. A binary wheel holds exactly one of each compiled module
(``fastrpc/_frames``, ``fastrpc/_calltable``), and an ELF one is stripped (no ``.symtab``, no ``.debug_*`` section); a
``py3-none-any`` wheel holds none. An sdist holds the extension's sources and the
build files and no compiled objects. Exit status 1 and one line per problem otherwise.
Works on wheels of any architecture (the ELF check reads the section headers itself).
"""

from __future__ import annotations

import argparse
import ast
import os
import struct
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "fastrpc"
SOURCES_ONLY = (".c", ".pyx", ".pxd", ".pxi")  # the extension's sources: sdist only
REQUIRED_DATA = ("fastrpc/py.typed", "fastrpc/_frames.pyi")
COMPILED = ("_frames", "_calltable")  # setup.py's extensions
ENTRY_POINTS = ("fastrpc = fastrpc.cli:main", "fastrpc = fastrpc.pytest_plugin")


def source_version() -> str:
    """``fastrpc.__version__`` read from src/fastrpc/__init__.py without importing it."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise SystemExit("no __version__ in src/fastrpc/__init__.py")


def elf_sections(data: bytes) -> list[str]:
    """Section names of an ELF file (32/64-bit, either byte order)."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is64, order = data[4] == 2, "<" if data[5] == 1 else ">"
    if is64:
        (shoff,) = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
    else:
        (shoff,) = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x2E)

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        if is64:
            name, _type, _flags, _addr, offset, size = struct.unpack_from(order + "IIQQQQ", data, base)
        else:
            name, _type, _flags, _addr, offset, size = struct.unpack_from(order + "IIIIII", data, base)
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    strtab = data[str_off : str_off + str_size]
    return [strtab[n : strtab.index(b"\0", n)].decode() for n, _, _ in (header(i) for i in range(shnum))]


def check_wheel(path: Path) -> list[str]:
    problems: list[str] = []
    tags = path.name[:-4].split("-")[-3:]
    pure = tags == ["py3", "none", "any"]
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        dist_info = next((n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")), "")
        if not dist_info:
            return [f"{path.name}: no .dist-info"]
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = (
            zf.read(f"{dist_info}/entry_points.txt").decode() if f"{dist_info}/entry_points.txt" in names else ""
        )
        compiled = [n for n in names if n.endswith((".so", ".pyd"))]
        blobs = {n: zf.read(n) for n in compiled}
    version = source_version()
    if f"\nVersion: {version}\n" not in metadata:
        problems.append(f"METADATA does not say Version: {version} (src/fastrpc/__init__.py)")
    problems += [f"entry_points.txt lacks {line!r}" for line in ENTRY_POINTS if line not in entry_points]
    problems += [f"missing {name}" for name in REQUIRED_DATA if name not in names]
    expected = {f"fastrpc/{p.name}" for p in SRC.glob("*.py")}
    problems += [f"missing module {name}" for name in sorted(expected - set(names))]
    for name in names:
        if name.endswith(SOURCES_ONLY):
            problems.append(f"{name}: an extension source in a wheel (sdist only)")
        if name.endswith(".pyc") or "__pycache__" in name:
            problems.append(f"{name}: bytecode in a wheel")
        if name.startswith(("tests/", "bench/", "examples/")) or (
            not name.startswith("fastrpc/") and ".dist-info/" not in name
        ):
            problems.append(f"{name}: outside the fastrpc package")
    if pure:
        problems += [f"{n}: a compiled module in a py3-none-any wheel" for n in compiled]
    else:
        for module in COMPILED:
            found = [n for n in compiled if n.startswith(f"fastrpc/{module}.")]
            if len(found) != 1:
                problems.append(f"expected one compiled fastrpc/{module} module, found {found or 'none'}")
        problems += [
            f"{n}: a compiled module setup.py does not build"
            for n in compiled
            if not n.startswith(tuple(f"fastrpc/{m}." for m in COMPILED))
        ]
    for name, blob in blobs.items():
        if blob[:4] != b"\x7fELF":
            continue  # Mach-O / PE: stripped by the linker flags in setup.py, not checked here
        sections = elf_sections(blob)
        left = [s for s in sections if s == ".symtab" or s.startswith((".debug", ".zdebug"))]
        if left:
            problems.append(f"{name} is not stripped (sections {', '.join(left)})")
    return [f"{path.name}: {p}" for p in problems]


def check_sdist(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    problems = [
        f"missing {n}"
        for n in (
            "setup.py",
            "pyproject.toml",
            "MANIFEST.in",
            "README.md",
            "PKG-INFO",
            "src/fastrpc/_frames.pyx",
            "src/fastrpc/_frames.pxd",
            "src/fastrpc/_payload_cost.pxi",
            "src/fastrpc/_frames.pyi",
            "src/fastrpc/_calltable.pxd",
            "src/fastrpc/calltable.py",
            "src/fastrpc/py.typed",
        )
        if n not in names
    ]
    problems += [
        f"{n}: a build product in the sdist" for n in sorted(names) if n.endswith((".so", ".pyd", ".pyc", ".c"))
    ]
    return [f"{path.name}: {p}" for p in problems]


def describe(path: Path) -> str:
    size = os.path.getsize(path)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            files = [i for i in zf.infolist() if not i.is_dir()]
        so = [f"{i.filename} {i.file_size / 1024:.0f} KiB" for i in files if i.filename.endswith((".so", ".pyd"))]
        return f"{path.name}: {size / 1024:.0f} KiB, {len(files)} files{'; ' + ', '.join(so) if so else ''}"
    return f"{path.name}: {size / 1024:.0f} KiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dists", nargs="+", type=Path, help="wheels (.whl) and sdists (.tar.gz)")
    ap.add_argument("--list", action="store_true", help="print every file of each wheel")
    args = ap.parse_args(argv)
    problems: list[str] = []
    for path in args.dists:
        print(describe(path))
        if args.list and path.suffix == ".whl":
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    print(f"    {info.file_size:>9}  {info.filename}")
        problems += check_wheel(path) if path.suffix == ".whl" else check_sdist(path)
    for line in problems:
        print(f"PROBLEM {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
