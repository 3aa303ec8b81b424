#!/usr/bin/env bash
# Runs examples/pytest_plugin the way a user would: copied to a temp dir OUTSIDE the
# repository, fastrpc installed from a wheel (no source tree on the path), then
# `pytest --benchmark-only --benchmark-autosave` and `pytest --benchmark-only
# --benchmark-compare` (the second run compared with the first).
#
#   tools/run_plugin_example.sh WHEEL [PYTHON]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHEEL=$(realpath "$1")
PY=${2:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastrpc-plugin-example.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT/examples/pytest_plugin" "$WORK/project"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q "$WHEEL" pytest pytest-benchmark
cd "$WORK/project"
"$WORK/venv/bin/python" -c 'import fastrpc, fastrpc.frames as f; print("fastrpc", fastrpc.__version__, "from", fastrpc.__file__, "codec", f.IMPLEMENTATION)'
echo "== pytest --benchmark-only --benchmark-autosave (in $WORK/project)"
timeout 600 "$WORK/venv/bin/python" -m pytest --benchmark-only --benchmark-autosave -q
echo "== pytest --benchmark-only --benchmark-compare"
timeout 600 "$WORK/venv/bin/python" -m pytest --benchmark-only --benchmark-compare -q
