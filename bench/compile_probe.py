#!/usr/bin/env python3
"""A copy of this tree's ``src/`` with parts of fastrpc compiled by mypyc, to measure
what compiling them would give (``bench/README.md``, "Compiling the core, measured").

    python bench/compile_probe.py /tmp/probe [--set core|peer|MODULE,...]
    python bench/compare.py --libs fastrpc,fastrpc-base,picows --baseline /tmp/probe

In that comparison "fastrpc-base" is the compiled copy and "fastrpc" this tree as it
is. A probe, not a build of fastrpc: nothing here is installed or shipped.

``core``: the sans-I/O core (the call table, the connection, flow control, the
scheduler, the streams' state). ``peer``: the core and the asyncio peer above it
(``api``, ``peer_io``, ``peer``, ``handlers``). The ``peer`` set needs a few edits
that mypyc asks for (``EDITS``), applied to the copy only; each must match this tree
exactly, so that the probe fails loudly once the code they touch changes. The
transport, the stream manager and topics are not in either set: their async
generators are not implemented by mypyc 2.4.

Needs mypy (for mypyc) and a C compiler; the copy's ``_frames`` extension is this
tree's, copied as built.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CORE = ("calls", "protocol", "budget", "scheduler", "outbound", "inbound", "wire", "flow", "stream_state")
PEER = (*CORE, "handlers", "peer_io", "api", "peer")
SETS = {"core": CORE, "peer": PEER}

# (module, text in this tree, what the compiled copy gets). mypyc compiles a method
# alias in a class body to nothing (a KeyError at run time), does not implement async
# generators, and checks the length of a tuple that mypy narrowed (``len(args) == 1``,
# or a variable first bound to a 1-tuple) even where the narrowing does not hold.
EDITS: tuple[tuple[str, str, str], ...] = (
    (
        "peer_io",
        "    flush = _send_queued\n    transport_buffered = _transport_buffered\n",
        "    def flush(self) -> None:\n        self._send_queued()\n\n"
        "    def transport_buffered(self) -> int:\n        return self._transport_buffered()\n",
    ),
    (
        "handlers",
        "async def _single(value: T) -> Any:\n    yield value",
        "class _single:\n    def __init__(self, value: Any) -> None:\n        self.value = value\n"
        "        self.done = False\n\n    def __aiter__(self) -> Any:\n        return self\n\n"
        "    async def __anext__(self) -> Any:\n        if self.done:\n            raise StopAsyncIteration\n"
        "        self.done = True\n        return self.value",
    ),
    (
        "handlers",
        "        return tuple(args) if isinstance(args, (list, tuple)) else (args,)",
        "        if isinstance(args, (list, tuple)):\n            return tuple(args)\n        return (args,)",
    ),
    (
        "handlers",
        "        received = 0.0 if ev.deadline is None else self.link.loop.time()\n        try:\n"
        "            # find(), inline",
        "        received = 0.0 if ev.deadline is None else self.link.loop.time()\n"
        "        args: tuple[Any, ...]\n        try:\n            # find(), inline",
    ),
    (
        "api",
        "        if len(args) == 1 and type(args[0]) is bytes:\n",
        "        n = len(args)\n        if n == 1 and type(args[0]) is bytes:\n",
    ),
    (
        "api",
        "        elif len(args) == 1 and type(args[0]) is bytes:",
        "        elif len(args) - 1 == 0 and type(args[0]) is bytes:",
    ),
)


def copy_tree(dest: Path) -> Path:
    """This tree's src/ in ``dest``/src (its built ``_frames`` included); returns the package."""
    src = dest / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(
        ROOT / "src",
        src,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*__mypyc*"),
    )
    pkg = src / "fastrpc"
    for so in pkg.glob("*" + sysconfig.get_config_var("EXT_SUFFIX")):
        if not so.name.startswith("_frames"):
            so.unlink()  # a compiled module of an earlier probe copied along
    return pkg


def apply_edits(pkg: Path, modules: tuple[str, ...]) -> int:
    """Apply the ``EDITS`` of the compiled modules; each must match exactly once."""
    done = 0
    for module, old, new in EDITS:
        if module not in modules:
            continue
        path = pkg / f"{module}.py"
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"compile_probe: the edit of {module}.py no longer matches: {old.splitlines()[0]!r}")
        path.write_text(text.replace(old, new))
        done += 1
    return done


def compile_modules(src: Path, modules: tuple[str, ...]) -> None:
    files = [f"fastrpc/{m}.py" for m in modules]
    proc = subprocess.run([sys.executable, "-m", "mypyc", *files], cwd=src, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"compile_probe: mypyc failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def check_compiled(src: Path, modules: tuple[str, ...]) -> None:
    """Each module imports from the copy as an extension, in a fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(src)!r})\n"
        f"for m in {list(modules)!r}:\n"
        "    f = importlib.import_module('fastrpc.' + m).__file__\n"
        "    assert f.endswith(('.so', '.pyd')), f\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="directory for the copy (its src/ is replaced)")
    ap.add_argument("--set", default="core", help="core, peer, or a comma-separated list of modules")
    args = ap.parse_args(argv)
    modules = SETS.get(args.set) or tuple(m for m in args.set.split(",") if m)
    pkg = copy_tree(args.dest)
    edits = apply_edits(pkg, modules)
    compile_modules(pkg.parent, modules)
    check_compiled(pkg.parent, modules)
    print(f"compiled {len(modules)} modules of fastrpc with mypyc ({edits} edits) in {pkg.parent}")
    print(f"python bench/compare.py --libs fastrpc,fastrpc-base,picows --baseline {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
