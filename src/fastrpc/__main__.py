"""``python -m fastrpc``: the command line (:mod:`fastrpc.cli`)."""

import sys

from fastrpc.cli import _Progress, main

__all__ = ["_Progress", "main"]

if __name__ == "__main__":
    sys.exit(main())
