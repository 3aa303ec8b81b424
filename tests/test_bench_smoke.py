"""Smoke tests of bench/compare.py: a tiny run of two scenarios, fastrpc vs websockets;
and one of fastrpc against a --baseline copy of this tree.

The benchmark spawns its own server and client processes (loopback only); this test
only checks that the table and the JSON come out, not any figure.

Tests marked ``codec_independent`` run bench tools with the compiled codec whatever
this run's FASTRPC_NO_EXTENSIONS (``_compare`` and ``_bench_tool`` drop it; the
decode_steps test sets it per case): under the pure-codec run they would repeat the
compiled run to the byte, so that run deselects them (.ci/run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("websockets")
pytest.importorskip("msgspec")
if sys.platform != "linux":  # the memory figures read /proc; the runner is Linux-only
    pytest.skip("bench/compare.py runs on Linux", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "bench" / "compare.py"


def _compare(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """bench/compare.py with ``args`` (the compiled codec where built); it must succeed."""
    env = dict(os.environ)
    env.pop("FASTRPC_NO_EXTENSIONS", None)
    proc = subprocess.run(
        [sys.executable, str(COMPARE), *args], capture_output=True, text=True, timeout=timeout, cwd=str(cwd), env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _compare_with_baseline(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """bench/compare.py with ``args`` and ``--baseline`` a copy of this tree's src
    (under ``tmp_path``); return the run, the baseline's directory and the JSON's path."""
    base = tmp_path / "base"
    shutil.copytree(ROOT / "src", base / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "bench.json"
    proc = _compare(*args, "--baseline", str(base), "--json", str(out), cwd=tmp_path, timeout=120)
    return proc, base, out


@pytest.mark.codec_independent
@pytest.mark.timeout(150)
def test_compare_quick_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _compare(
        *("--quick", "--scale", "0.02", "--only", "small,seq_calls", "--libs", "fastrpc,websockets"),
        *("--json", str(out)),
        cwd=ROOT,
        timeout=120,
    )
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("scenario"))
    assert "fastrpc" in header and "websockets" in header
    for scenario in ("small", "seq_calls"):
        row = next(line for line in lines if line.startswith(scenario + " "))
        assert "x websockets" in row, row
    assert "[1/4]" in proc.stderr  # progress

    doc = json.loads(out.read_text())
    for scenario, unit in (("small", "items/s"), ("seq_calls", "calls/s")):
        for lib in ("fastrpc", "websockets"):
            cell = doc[scenario][lib]
            assert cell["unit"] == unit
            assert cell["value"] > 0
        assert doc["ratios"]["fastrpc"][scenario]["websockets"] > 0
    assert doc["machine"]["cpus"] >= 1
    assert doc["machine"]["libraries"]["fastrpc"]["server_implementation"] in ("cython", "python")


@pytest.mark.codec_independent
@pytest.mark.timeout(150)
def test_compare_baseline_smoke(tmp_path: Path) -> None:
    """--baseline DIR: the children of fastrpc-base import DIR/src/fastrpc, those of
    fastrpc this tree's src/fastrpc; the table and the JSON hold fastrpc / fastrpc-base.
    --rounds 3: each library measured three times, in turn, the median shown."""
    proc, base, out = _compare_with_baseline(
        tmp_path, "--quick", "--scale", "0.02", "--only", "seq_calls", "--libs", "fastrpc,fastrpc-base", "--rounds", "3"
    )
    # The libraries take turns, round by round.
    order = re.findall(r"seq_calls\s+(fastrpc-base|fastrpc)\s+round (\d) \.\.\.", proc.stderr)
    assert order == [(lib, str(k)) for k in (1, 2, 3) for lib in ("fastrpc", "fastrpc-base")], proc.stderr
    lines = proc.stdout.splitlines()
    where = {line.split()[0]: line for line in lines if "codec (server/client)" in line}
    mine, theirs = where["fastrpc"], where["fastrpc-base"]
    assert str(ROOT / "src" / "fastrpc" / "__init__.py") in mine, mine
    assert str(base / "src" / "fastrpc" / "__init__.py") in theirs, theirs
    header = next(line for line in lines if line.startswith("scenario"))
    assert "fastrpc / fastrpc-base" in header
    row = next(line for line in lines if line.startswith("seq_calls "))
    assert row.rstrip().endswith("x"), row

    assert "median of 3 rounds" in proc.stdout
    assert re.search(
        r"^seq_calls +fastrpc / fastrpc-base, round by round: (\d\.\d{3}x, ){2}\d\.\d{3}x", proc.stdout, re.M
    )

    doc = json.loads(out.read_text())
    assert doc["run"]["rounds"] == 3
    for lib in ("fastrpc", "fastrpc-base"):
        cell = doc["seq_calls"][lib]
        assert len(cell["rounds"]) == 3 and cell["value"] == sorted(cell["rounds"])[1], cell
    assert doc["baseline"]["dir"] == str(base)
    assert doc["baseline"]["fastrpc_over_base"]["seq_calls"] > 0
    assert doc["ratios"]["fastrpc"]["seq_calls"]["fastrpc-base"] > 0
    libraries = doc["machine"]["libraries"]
    for side in ("server", "client"):
        assert libraries["fastrpc-base"][f"{side}_file"].startswith(str(base / "src")), libraries
        assert libraries["fastrpc"][f"{side}_file"].startswith(str(ROOT / "src")), libraries


@pytest.mark.codec_independent
@pytest.mark.timeout(150)
def test_compare_latency_under_load_smoke(tmp_path: Path) -> None:
    """--only latency: bench/priority.py for each fastrpc library (fastrpc-base's
    importing the baseline's src), its two tables printed and its figures in the JSON."""
    proc, base, out = _compare_with_baseline(
        tmp_path, "--quick", "--only", "latency", "--libs", "fastrpc,fastrpc-base,websockets"
    )
    lines = proc.stdout.splitlines()
    assert any(line.startswith("latency under load") for line in lines), proc.stdout
    for lib in ("fastrpc", "fastrpc-base"):
        assert any(line.startswith(lib + " ") and "the same connection" in line for line in lines), proc.stdout

    doc = json.loads(out.read_text())
    latency = doc["latency_under_load"]
    assert set(latency) == {"fastrpc", "fastrpc-base"}  # websockets has no streams to prioritise
    assert latency["fastrpc"]["fastrpc"] == str(ROOT / "src" / "fastrpc" / "__init__.py")
    assert latency["fastrpc-base"]["fastrpc"] == str(base / "src" / "fastrpc" / "__init__.py")
    for doc_lib in latency.values():
        for where in ("none", "same", "other"):
            r = doc_lib["calls_under_load"][where]
            assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
        for urgency in ("0", "3"):
            r = doc_lib["ticks"][urgency]
            assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]


@pytest.mark.codec_independent
@pytest.mark.timeout(60)
def test_compare_fanout_smoke(tmp_path: Path) -> None:
    """The fan-out row (100 connections, a few items): every connection received every
    item (the harness fails the run otherwise), and the latency figures come out."""
    out = tmp_path / "bench.json"
    proc = _compare(
        *("--quick", "--scale", "0.02", "--min-time", "0", "--only", "fanout_100"),
        *("--libs", "fastrpc,websockets", "--json", str(out)),
        cwd=ROOT,
        timeout=50,
    )
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if line.startswith("fanout_100 ") and "items/s" in line)
    assert "x websockets" in row, row
    assert any(line.startswith("fan-out: latency") for line in lines), proc.stdout

    doc = json.loads(out.read_text())
    for lib in ("fastrpc", "websockets"):
        cell = doc["fanout_100"][lib]
        assert cell["unit"] == "items/s" and cell["subscribers"] == 100
        assert cell["value"] == pytest.approx(cell["per_subscriber"] * 100)
        assert 0 < cell["p50_ms"] <= cell["p99_ms"]
        assert 0 < cell["paced"]["p50_ms"] <= cell["paced"]["p99_ms"]
        assert cell["server_cpu_us"] >= 0 and cell["client_cpu_us"] > 0
    assert doc["ratios"]["fastrpc"]["fanout_100"]["websockets"] > 0


@pytest.mark.timeout(60)
def test_floor_smoke() -> None:
    """bench/floor.py: the three ways of handing items over, each with a cost."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "floor.py"), "--items", "2000"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("async generator", "async iterator", "callback"):
        line = next(line for line in proc.stdout.splitlines() if line.startswith(name))
        cost = re.search(r"([0-9.]+) us/item", line)
        assert cost is not None and float(cost.group(1)) > 0, line


_CALL_TABLE_BUILT = importlib.util.find_spec("fastrpc._calltable") is not None


def _bench_tool(script: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script> args`` with the compiled codec where it is built (within
    100 s); it must exit 0."""
    env = dict(os.environ)
    env.pop("FASTRPC_NO_EXTENSIONS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=str(ROOT),
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.codec_independent
@pytest.mark.timeout(120)
@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
def test_decode_steps_smoke(pure: bool) -> None:
    # bench/decode_steps.py: the steps of decoding a long message, each timed. The pure
    # codec checks it 8,192 headers a step: its first frames come after the check.
    env = {**os.environ, "FASTRPC_NO_EXTENSIONS": "1" if pure else ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "decode_steps.py"), "--frames", "20000", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = dict(line.strip().split(":", 1) for line in proc.stdout.splitlines()[1:])
    # 20,000 frames: a first slice of 2,048, then 17,952 checked (3 steps of 8,192
    # pure, 1 compiled) and decoded in 9 slices.
    assert int(figures["steps (loop passes)"]) == (12 if pure else 10), proc.stdout
    assert int(figures["first frames given at step"]) == (3 if pure else 1), proc.stdout
    assert float(figures["longest step"].split()[0]) > 0


@pytest.mark.codec_independent
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("side", "what"), [("server", "seq"), ("client", "seq"), ("client", "inflight")])
def test_side_cost_opcodes_smoke(side: str, what: str) -> None:
    # bench/side_cost.py --opcodes: one side's Python opcodes a call, by function
    # (the callgrind mode needs valgrind: not run here).
    proc = _bench_tool("side_cost.py", ["--lib", "fastrpc", "--side", side, "--opcodes", "--what", what])
    total = re.search(r"opcodes a call: ([0-9,]+)", proc.stdout)
    assert total is not None, proc.stdout
    opcodes = int(total.group(1).replace(",", ""))
    if side == "server" and what == "seq" and _CALL_TABLE_BUILT:
        # The compiled call lane (frames.CallLane, built with the codec) is the
        # socket's protocol and answers each call from its read callback: what is
        # left in Python is the handler (and websockets' state property), not the
        # transport's callback nor the RPC's layers.
        assert 0 < opcodes < 30 and "echo" in proc.stdout, proc.stdout
        assert "_Wire.buffer_updated" not in proc.stdout and "_Wire.get_buffer" not in proc.stdout, proc.stdout
        assert "RpcPeer._process" not in proc.stdout and "CallTable.take" not in proc.stdout, proc.stdout
        return
    assert opcodes > 100, proc.stdout
    # The call table runs compiled beside the compiled codec (the tool's, where it is
    # built, whatever this run's): no Python opcodes of its own.
    table = "CallTable.take" if side == "server" else "CallTable.call"
    assert (table in proc.stdout) != _CALL_TABLE_BUILT, proc.stdout
    assert ("RpcPeer._process" if side == "server" else "PeerAPI.call") in proc.stdout, proc.stdout


@pytest.mark.codec_independent
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("side", "busiest"), [("server", "StreamManager.run_sender"), ("client", "ReceiveStream.__anext__")]
)
def test_side_cost_opcodes_of_a_small_item(side: str, busiest: str) -> None:
    # --what small: one 16-byte item streamed is a "call". Items cross in runs: a side
    # spends well under 150 opcodes an item (cf1b868, one trip through the core an
    # item: 201 on the server, 131 on the client), most of them in its own loop.
    # (With the pure codec alone, its frame work comes first: 352 and 407 opcodes.)
    proc = _bench_tool("side_cost.py", ["--lib", "fastrpc", "--side", side, "--opcodes", "--what", "small"])
    total = re.search(r"opcodes a call: ([0-9,]+)", proc.stdout)
    assert total is not None, proc.stdout
    if _CALL_TABLE_BUILT:  # the compiled codec's build
        assert 10 < int(total.group(1).replace(",", "")) < 150, proc.stdout
        top = re.search(r"^\s+[0-9.]+\s+\S+:(\S+)$", proc.stdout, re.M)
        assert top is not None and top.group(1) == busiest, proc.stdout
    assert busiest in proc.stdout, proc.stdout
    assert "OutboundStreams.send_item" not in proc.stdout and "Connection.read_item\n" not in proc.stdout


@pytest.mark.codec_independent
@pytest.mark.timeout(120)
def test_sides_smoke() -> None:
    # bench/sides.py: CPU per operation on each side; a tiny run of fastrpc alone.
    proc = _bench_tool(
        "sides.py",
        [
            "--libs",
            "fastrpc",
            "--n-seq",
            "200",
            "--n-inflight",
            "2000",
            "--what",
            "seq,inflight,bulk,small,paced",
            "--n-bulk",
            "200",
            "--n-small",
            "20000",
            "--n-paced",
            "20",
            "--pace",
            "0.001",
        ],
    )
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith("fastrpc")]
    assert len(rows) == 5, proc.stdout  # seq, inflight, bulk, small, paced
    for row in rows:
        # library, operations/s, then CPU per operation: server (all, user, system),
        # client (all, user, system)
        assert float(row[1].replace(",", "")) > 0 and len(row) == 8, row


@pytest.mark.codec_independent
@pytest.mark.timeout(120)
@pytest.mark.parametrize("spin", ["none", "both"])
def test_critical_path_smoke(tmp_path: Path, spin: str) -> None:
    # bench/critical_path.py: each side's read -> write of a sequential call; a tiny
    # run of fastrpc and the raw TCP echo (its hooks on each are what may break),
    # as measured and with both loops kept from sleeping (--spin).
    out = tmp_path / "crit.json"
    args = ["--libs", "fastrpc,fastrpc-poll,tcp", "--n", "200", "--spin", spin, "--json", str(out)]
    proc = _bench_tool("critical_path.py", args)
    assert "failed" not in proc.stdout, proc.stdout
    figures = json.loads(out.read_text())
    assert set(figures) == {"fastrpc", "fastrpc-poll", "tcp"}, figures
    for lib, r in figures.items():
        assert r["calls_per_s"] > 0 and r["spin"] == spin, (lib, r)
        for side in ("server", "client"):
            s = r[side]
            # every call was read and answered: one read a call, each followed by a write
            assert s["reads"] >= 200, (lib, side, s)
            assert 0 < s["read_to_write"] < s["read_to_read"], (lib, side, s)
            assert s["write_call"] > 0 and s["read_handling"] > 0, (lib, side, s)
            # --spin: the side's loop made passes of its own between the calls
            assert (s["spin_passes"] > s["reads"]) if spin == "both" else (s["spin_passes"] == 0), (lib, side, s)
        # A call is the two sides' work and the two hops between them, each from a
        # write's start (the rest of a write call overlaps the other side, which may
        # read before it returns): the means add up to the call's mean time (bar
        # reads that are no call's).
        srv, cli = r["server"], r["client"]
        parts = [
            srv["mean_read_to_write"],
            cli["mean_read_to_write"],
            r["mean_hop_to_server"],
            r["mean_hop_to_client"],
        ]
        assert all(p > 0 for p in parts), (lib, parts)
        assert 0.75 < sum(parts) / r["us_per_call"] < 1.25, (lib, parts, r["us_per_call"])
        groups = r["server_after_hops"]
        assert len(groups) == 5 and [h for h, _ in groups] == sorted(h for h, _ in groups), (lib, groups)
        assert all(w > 0 for _, w in groups), (lib, groups)


def _probe(name: str = "compile_probe") -> Any:
    """bench/``name``.py, loaded as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compile_probe_edits_match(tmp_path: Path) -> None:
    """bench/compile_probe.py: every edit mypyc needs matches this tree once (the
    probe refuses to run on one that drifted), and changes what it names."""
    probe = _probe()
    pkg = probe.copy_tree(tmp_path)
    before = {m: (pkg / f"{m}.py").read_text() for m in probe.PEER}
    assert probe.apply_edits(pkg, probe.PEER) == len(probe.EDITS)
    changed = {m for m in probe.PEER if (pkg / f"{m}.py").read_text() != before[m]}
    assert changed == {module for module, _, _ in probe.EDITS}
    with pytest.raises(SystemExit, match="no longer matches"):
        probe.apply_edits(pkg, probe.PEER)  # applied already: the old text is gone


@pytest.mark.timeout(240)
def test_compile_probe_compiles(tmp_path: Path) -> None:
    # One small module through mypyc: the copy imports it as an extension.
    pytest.importorskip("mypyc")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compile_probe.py"), str(tmp_path), "--set", "wire"],
        capture_output=True,
        text=True,
        timeout=220,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compiled 1 modules" in proc.stdout
    assert list((tmp_path / "src" / "fastrpc").glob("wire.*.so"))


_RELAY_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import fastrpc, fastrpc.transport as T
encoded = []
encode = T._relay_encode
T._relay_encode = lambda *a: encoded.append(a[0]) or encode(*a)
router = fastrpc.Router()
@router.method
def echo(payload: bytes) -> bytes:
    return payload
async def main():
    async with fastrpc.serve(router, "127.0.0.1", 0) as server:
        async with fastrpc.connect(f"ws://127.0.0.1:{server.port}") as peer:
            for i in range(50):
                assert await peer.call("echo", b"%d" % i) == b"%d" % i
            assert await peer.call("echo", b"x", timeout=5) == b"x"  # the core's path
fastrpc.run(main())
print(encoded.count(2), encoded.count(3))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("half", "bare"), [("server", "0 50"), ("client", "50 0"), ("both", "50 50")])
def test_relay_probe_answers_calls(tmp_path: Path, half: str, bare: str) -> None:
    """bench/relay_probe.py: each half's edits match this tree once (and refuse a
    second time), and the copy answers calls, the bare ones through the relay
    (REQUESTs encoded by its client, RESPONSEs by its server)."""
    probe = _probe("relay_probe")
    pkg = probe.copy_tree(tmp_path)
    assert probe.apply_edits(pkg, half) == len(probe.EDITS[half])
    with pytest.raises(SystemExit, match="no longer matches"):
        probe.apply_edits(pkg, half)
    proc = subprocess.run(
        [sys.executable, "-c", _RELAY_CHECK, str(pkg.parent)], capture_output=True, text=True, timeout=50
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == bare.split(), proc.stdout
