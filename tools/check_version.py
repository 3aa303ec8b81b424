#!/usr/bin/env python3
"""Fail unless a release tag names the version in src/fastrpc/__init__.py.

    python tools/check_version.py v1.2.3      # or refs/tags/v1.2.3 (GITHUB_REF)

``fastrpc.__version__`` is the one source of truth (pyproject.toml reads it); the tag
only has to agree with it, so building from a copy without git history works too.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_wheel import source_version


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    tag = argv[0].removeprefix("refs/tags/")
    version = source_version()
    if tag != f"v{version}":
        print(f"tag {tag!r} does not match fastrpc.__version__ {version!r} (expected v{version})", file=sys.stderr)
        return 1
    print(f"tag {tag} matches fastrpc.__version__ {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
