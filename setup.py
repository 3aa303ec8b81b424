"""Build script: the optional Cython extension ``fastrpc._frames``.

``FASTRPC_BUILD_EXTENSION`` decides what a failed compile means:
``yes`` (required: CI and wheels fail loudly), ``no`` (skip it: a pure wheel),
unset (best effort: fall back to the pure-Python codec).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODE = os.environ.get("FASTRPC_BUILD_EXTENSION", "").strip().lower()
if MODE not in ("", "yes", "no"):
    sys.exit(f"FASTRPC_BUILD_EXTENSION must be yes, no or unset, not {MODE!r}")


class OptionalBuildExt(build_ext):
    """build_ext that tolerates a failed compile unless the extension is required.

    ``cythonize()`` drops ``Extension(optional=True)``, so the fallback lives here.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._failed(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if MODE == "yes":
            raise exc
        print(f"fastrpc: could not build {exc!r}; using the pure-Python codec", file=sys.stderr)


def extensions() -> list:
    if MODE == "no":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if MODE == "yes":
            raise
        print("fastrpc: Cython not found; using the pure-Python codec", file=sys.stderr)
        return []
    ext = Extension(
        "fastrpc._frames",
        ["src/fastrpc/_frames.pyx"],
        extra_compile_args=["-O3"] if sys.platform != "win32" else ["/O2"],
    )
    return cythonize(
        [ext],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
