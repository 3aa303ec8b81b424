"""Build script: the optional Cython extensions ``fastrpc._frames`` (the frame codec) and
``fastrpc._calltable`` (``calltable.py`` compiled).

``FASTRPC_BUILD_EXTENSION`` decides what a failed compile means:
``yes`` (required: CI and wheels fail loudly), ``no`` (skip it: a pure wheel),
unset (best effort: fall back to the pure-Python codec, saying so in one line).

pip hides a build's output unless it fails (or runs with ``-v``), so the fallback
line also goes to the terminal (``/dev/tty``) when there is one: a user who runs
``pip install fastrpc`` without a C compiler learns that the pure codec was installed
and why (tests/test_build.py checks this under a pseudo-terminal).
"""

import os
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODE = os.environ.get("FASTRPC_BUILD_EXTENSION", "").strip().lower()
if MODE not in ("", "yes", "no"):
    sys.exit(f"FASTRPC_BUILD_EXTENSION must be yes, no or unset, not {MODE!r}")


def fallback_notice(why: str) -> None:
    """One line, on stderr and on the user's terminal, saying the pure codec is used and why."""
    line = (
        f"fastrpc: using the pure-Python codec (same protocol, slower): {why}. "
        "Install a C compiler and reinstall for the compiled one; FASTRPC_BUILD_EXTENSION=yes makes this an error."
    )
    print(line, file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        return  # already on the terminal
    try:
        with open("/dev/tty", "w") as tty:  # pip captures stderr; its terminal is still ours
            print(line, file=tty)
    except OSError:
        pass  # no terminal (CI, a pipe): stderr above is what there is


def short_reason(exc: Exception) -> str:
    """The compiler and its status rather than its whole command line."""
    text = str(exc)
    found = re.search(r"Command '\['([^']+)'.*?(exit (?:status|code) -?\d+)", text)
    if found:
        return f"compiler {found.group(1)} failed with {found.group(2)}"
    return text if len(text) <= 200 else text[:197] + "..."


class OptionalBuildExt(build_ext):
    """build_ext that tolerates a failed compile unless the extension is required.

    ``cythonize()`` drops ``Extension(optional=True)``, so the fallback lives here.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._failed(exc)

    _current = "fastrpc._frames"
    _gave_up = False

    def build_extension(self, ext: Extension) -> None:
        if self._gave_up:
            return  # one failure is said once, and the rest not tried
        self._current = ext.name
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if MODE == "yes":
            raise exc
        fallback_notice(f"the C extension {self._current} did not compile ({short_reason(exc)})")
        self.extensions = []  # said once: nothing else to build
        self._gave_up = True


def strip_flags() -> list:
    """Link flags that drop symbols and debug info: the .so shrinks about 8x (1.4 MB
    unstripped); tracebacks into Cython code keep their Python-level line numbers."""
    if os.environ.get("FASTRPC_KEEP_SYMBOLS"):
        return []
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return ["-s"]
    if sys.platform == "darwin":
        return ["-Wl,-S,-x"]
    return []  # MSVC keeps debug info in a separate .pdb, never in the .pyd


def extensions() -> list:
    if MODE == "no":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if MODE == "yes":
            raise
        fallback_notice(
            "Cython is not installed (it is a build requirement: pip installs it unless --no-build-isolation)"
        )
        return []
    flags = {"extra_compile_args": ["-O3"] if sys.platform != "win32" else ["/O2"], "extra_link_args": strip_flags()}
    codec = Extension("fastrpc._frames", ["src/fastrpc/_frames.pyx"], **flags)
    # The call table's pure source, compiled with the C field types of _calltable.pxd.
    # Its annotations stay hints (annotation_typing off): it runs as the pure twin does.
    calltable = Extension("fastrpc._calltable", ["src/fastrpc/calltable.py"], **flags)
    directives = {"boundscheck": False, "wraparound": False, "cdivision": True, "embedsignature": True}
    return [
        *cythonize([codec], language_level=3, compiler_directives=directives),
        *cythonize([calltable], language_level=3, compiler_directives={"annotation_typing": False}),
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
