#!/usr/bin/env python
"""End-to-end comparison of fastrpc with other RPC/WebSocket libraries.

    python bench/compare.py [--quick] [--scale X] [--only SCENARIO,...]
                            [--libs fastrpc,fastrpc-pure,websockets,picows,tcp,grpcio,rsocket,socketio]
                            [--baseline DIR] [--rounds N] [--json out.json] [--png chart.png]

For every scenario and library the server runs in a spawned child process and the
client in another (both on uvloop, over 127.0.0.1); this process only orchestrates,
so "fastrpc-pure" (FASTRPC_NO_EXTENSIONS=1) really runs the pure-Python codec on
both sides. Libraries that are not installed are skipped. The children of "fastrpc"
and "fastrpc-pure" import this tree's src/fastrpc; with --baseline DIR, the children
of "fastrpc-base" import DIR/src/fastrpc (another checkout), for a before/after
comparison in one run. ``--rounds N`` measures every row N times, each in fresh
processes, the libraries in turn, and shows the median (one run's figure moves by
up to ~20 % from one pair of processes to the next). A full run (or ``--only latency``) ends with latency under
load for each fastrpc library: bench/priority.py run with that library's fastrpc,
its tables printed and its figures under ``latency_under_load`` in the JSON. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
SRC = os.path.join(ROOT, "src")
sys.path.insert(0, BENCH)
if os.path.isdir(os.path.join(SRC, "fastrpc")):
    sys.path.insert(1, SRC)  # benchmark this tree's fastrpc (children inherit sys.path)

import peers  # noqa: E402 - imports none of the benchmarked libraries

# name -> (unit, higher is better, full parameters, quick parameters)
SCENARIOS: dict[str, dict[str, Any]] = {
    "small": {
        "title": "200k x 16 B items, server -> client",
        "unit": "items/s",
        "higher": True,
        "full": {"n": 200_000, "size": 16, "min_n": 2_000},
        "quick": {"n": 50_000, "size": 16, "min_n": 1_000},
    },
    "bulk": {
        "title": "64 KiB chunks, 128 MiB (quick 16 MiB)",
        "unit": "MB/s",
        "higher": True,
        "full": {"n": 2048, "size": 65536, "min_n": 16},
        "quick": {"n": 256, "size": 65536, "min_n": 8},
    },
    "seq_calls": {
        "title": "sequential calls, 16 B payload",
        "unit": "calls/s",
        "higher": True,
        "full": {"n": 5_000, "size": 16, "min_n": 200},
        "quick": {"n": 500, "size": 16, "min_n": 50},
    },
    "inflight_calls": {
        "title": "calls, 100 in flight, 16 B payload",
        "unit": "calls/s",
        "higher": True,
        "full": {"n": 20_000, "size": 16, "window": 100, "min_n": 500},
        "quick": {"n": 5_000, "size": 16, "window": 100, "min_n": 200},
    },
    "streams_1000": {
        "title": "1000 concurrent streams x 100 x 16 B items",
        "unit": "items/s",
        "higher": True,
        "full": {"n": 100, "streams": 1000, "size": 16, "min_n": 5},
        "quick": {"n": 20, "streams": 1000, "size": 16, "min_n": 2},
    },
    # One server, one feed of 16 B items to every connection (bench/README.md, "Fan-out").
    "fanout_100": {
        "title": "one feed of 16 B items to 100 connections, total delivered",
        "unit": "items/s",
        "higher": True,
        "full": {"subs": 100, "n": 3_000, "size": 16, "min_n": 50, "paced_rate": 50_000, "paced_s": 1.0},
        "quick": {"subs": 100, "n": 500, "size": 16, "min_n": 20, "paced_rate": 50_000, "paced_s": 0.3},
    },
    "fanout_1000": {
        "title": "one feed of 16 B items to 1,000 connections, total delivered",
        "unit": "items/s",
        "higher": True,
        "full": {"subs": 1000, "n": 300, "size": 16, "min_n": 10, "paced_rate": 50_000, "paced_s": 1.0},
        "quick": {"subs": 300, "n": 100, "size": 16, "min_n": 5, "paced_rate": 50_000, "paced_s": 0.3},
    },
    "memory_conn": {
        "title": "server RSS per idle connection",
        "unit": "KiB",
        "higher": False,
        "full": {"n": 200, "warm": 5},
        "quick": {"n": 50, "warm": 3},
    },
    "memory_stream": {
        "title": "server RSS per idle stream (opened by the client)",
        "unit": "KiB",
        "higher": False,
        "full": {"n": 1000, "warm": 20},
        "quick": {"n": 200, "warm": 10},
    },
    "memory_stream_call": {
        "title": "server RSS per idle streaming call (async-gen handler)",
        "unit": "KiB",
        "higher": False,
        "full": {"n": 1000, "warm": 20},
        "quick": {"n": 200, "warm": 10},
    },
}
ALIASES = {"memory": ["memory_conn", "memory_stream", "memory_stream_call"]}
BASE = "fastrpc-base"  # only with --baseline DIR
POLL = "fastrpc-poll"  # busy_poll on: only when --libs names it
ALL_LIBS = [lib for lib in peers.LIBS if lib not in (BASE, POLL)]

# fastrpc's targets: (scenario, peer or None for an absolute figure, kind, bound)
TARGETS = [
    ("small", "websockets", "ratio>=", 5.0),
    ("small", None, "value>=", 1_000_000),
    ("bulk", "websockets", "ratio>=", 0.9),
    ("seq_calls", "websockets", "ratio>=", 0.85),
    ("seq_calls", "grpcio", "ratio>=", 3.0),
    ("inflight_calls", "websockets", "ratio>=", 1.5),
    ("memory_conn", "websockets", "extra<=", 4.0),
    ("memory_stream", None, "value<=", 1.0),
    # issue 17: ahead of picows (callback-driven, Cython framing)
    ("small", "picows", "ratio>=", 4.0),
    ("bulk", "picows", "ratio>=", 1.0),
    ("seq_calls", "picows", "ratio>=", 1.0),
    ("inflight_calls", "picows", "ratio>=", 2.0),
    ("memory_conn", "websockets", "extra<=", 0.0),
    ("memory_stream", None, "value<=", 0.5),
    ("fanout_1000", "websockets", "ratio>=", 8.0),  # websockets.broadcast()
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ running


def missing_imports(lib: str) -> list[str]:
    missing = [name for name in peers.LIBS[lib].imports if importlib.util.find_spec(name) is None]
    src = peers.LIBS[lib].src
    if src is not None and not os.path.isfile(os.path.join(src, "fastrpc", "__init__.py")):
        missing.append(os.path.join(src, "fastrpc"))
    return missing


def use_sources(baseline: str | None) -> None:
    """Which fastrpc each fastrpc library's children import: this tree's src for
    "fastrpc" and "fastrpc-pure" (whatever the parent or site-packages has), the
    baseline checkout's src for "fastrpc-base"."""
    if os.path.isdir(os.path.join(SRC, "fastrpc")):
        for lib in ("fastrpc", "fastrpc-pure", POLL):
            peers.LIBS[lib].src = SRC
    if baseline is not None:
        peers.LIBS[BASE].src = os.path.join(os.path.abspath(baseline), "src")


def child_env(lib: str) -> dict[str, str]:
    """The environment both children of ``lib`` get."""
    spec = peers.LIBS[lib]
    env = dict(spec.env)
    if spec.src is not None:
        env[peers.SRC_ENV] = spec.src
        rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != spec.src]
        env["PYTHONPATH"] = os.pathsep.join([spec.src, *rest])
    return env


def git_describe(path: str) -> str | None:
    """``git describe --always --dirty`` of the checkout holding ``path``, if any."""
    try:
        out = subprocess.run(
            ["git", "-C", path, "describe", "--always", "--dirty", "--abbrev=10"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


class RunError(Exception):
    pass


PIN: tuple[int, int] | None = None  # CPUs for the server and the client child


def usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return []


def run_pair(
    lib: str, scenario: str, params: dict[str, Any], timeout: float, profile: str | None = None
) -> dict[str, Any]:
    """Server child + client child for one measurement; returns the client's result.
    With ``profile`` (a directory), both children run under cProfile."""
    prof = {
        side: os.path.join(profile, f"{scenario}-{lib}-{side}.prof") if profile else None
        for side in ("server", "client")
    }
    ctx = mp.get_context("spawn")
    env = child_env(lib)
    env_server, env_client = dict(env), dict(env)
    if PIN is not None:
        env_server["BENCH_CPU"], env_client["BENCH_CPU"] = str(PIN[0]), str(PIN[1])
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the children inherit it (and set it again themselves)
    srv = cli = None
    srv_conn = cli_conn = None
    try:
        srv_conn, child = ctx.Pipe()
        srv = ctx.Process(
            target=peers.server_main, args=(lib, env_server, child, prof["server"]), daemon=True, name=f"{lib}-server"
        )
        srv.start()
        child.close()
        if not srv_conn.poll(60):
            raise RunError("server did not start within 60 s")
        msg = srv_conn.recv()
        if msg[0] != "ready":
            raise RunError("server failed:\n" + msg[1])
        port, server_info = msg[1], msg[2]
        cli_conn, child = ctx.Pipe()
        cli = ctx.Process(
            target=peers.client_main,
            args=(lib, env_client, port, srv.pid, scenario, params, child, prof["client"]),
            daemon=True,
            name=f"{lib}-client",
        )
        cli.start()
        child.close()
        if not cli_conn.poll(timeout):
            raise RunError(f"client timed out after {timeout:.0f} s")
        try:
            msg = cli_conn.recv()
        except EOFError:
            raise RunError(f"client died (exit code {cli.exitcode})") from None
        if msg[0] != "result":
            raise RunError("client failed:\n" + msg[1])
        result: dict[str, Any] = msg[1]
        result["server_info"] = server_info
        return result
    except EOFError:
        raise RunError("server died during start-up") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if cli is not None:
            _reap(cli)
        if srv is not None:
            try:
                assert srv_conn is not None
                srv_conn.send("stop")
            except (OSError, ValueError):
                pass
            _reap(srv)
        for c in (srv_conn, cli_conn):
            if c is not None:
                c.close()


def _reap(proc: Any) -> None:
    proc.join(10)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def params_for(scenario: str, quick: bool, scale: float, repeat: int, budget: float, min_time: float) -> dict[str, Any]:
    p = dict(SCENARIOS[scenario]["quick" if quick else "full"])
    if scenario.startswith("memory"):
        p["n"] = max(10, round(p["n"] * scale))
        return p
    p["n"] = max(1, round(p["n"] * scale))
    p["min_n"] = min(p["min_n"], p["n"])
    p["repeat"] = repeat
    p["budget"] = budget
    p["min_time"] = min_time
    return p


def measure(
    lib: str, scenario: str, p: dict[str, Any], repeat: int, timeout: float, profile: str | None = None
) -> dict[str, Any]:
    unit = SCENARIOS[scenario]["unit"]
    if not scenario.startswith("memory"):
        r = run_pair(lib, scenario, p, timeout, profile)
        r["unit"] = unit
        return r
    # Memory: a fresh server for every repeat; the median of the runs.
    runs = [run_pair(lib, scenario, p, timeout) for _ in range(repeat)]
    values = [r["value"] for r in runs]
    out = dict(runs[len(runs) // 2])
    out.update(value=statistics.median(values), runs=values, unit=unit)
    return out


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One library's row over ``--rounds``: the round whose figure is the median (the
    lower middle one of an even count, for the rest of its details), with the median
    figure and every round's figure (``rounds``)."""
    values = [r["value"] for r in runs]
    if len(runs) == 1:
        return runs[0]
    middle = sorted(runs, key=lambda r: r["value"])[(len(runs) - 1) // 2]
    return dict(middle, value=statistics.median(values), rounds=values)


# ------------------------------------------------------------------ output


def fmt(value: float, unit: str) -> str:
    if unit == "KiB":
        return f"{value:.2f}"
    if unit == "MB/s":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return f"{value:,.0f}"


def compare(scenario: str, mine: float, theirs: float) -> tuple[str, float]:
    """fastrpc against one peer: a ratio (higher-is-better figures) or the
    extra KiB (memory)."""
    if SCENARIOS[scenario]["higher"]:
        r = mine / theirs if theirs else math.inf
        return f"{r:.2f}x", r
    d = mine - theirs
    return f"{d:+.2f} KiB", d


def ratios(results: dict[str, dict[str, Any]], base: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for scenario, row in results.items():
        mine = row.get(base, {}).get("value")
        if mine is None:
            continue
        for lib, r in row.items():
            if lib != base and r.get("value") is not None:
                out.setdefault(scenario, {})[lib] = compare(scenario, mine, r["value"])[1]
    return out


def base_ratio(scenario: str, row: dict[str, Any]) -> float | None:
    """fastrpc / fastrpc-base for one scenario (for memory too: above 1 means this
    tree uses more), or None without both figures."""
    mine = row.get("fastrpc", {}).get("value")
    base = row.get(BASE, {}).get("value")
    if mine is None or base is None:
        return None
    return mine / base if base else math.inf


def base_cell(scenario: str, row: dict[str, Any]) -> str:
    r = base_ratio(scenario, row)
    if r is None:
        return ""
    if SCENARIOS[scenario]["higher"]:
        return f"{r:.3f}x"
    return f"{r:.3f}x ({row['fastrpc']['value'] - row[BASE]['value']:+.2f} KiB)"


def table(results: dict[str, dict[str, Any]], libs: list[str]) -> str:
    with_base = "fastrpc" in libs and BASE in libs
    with_peers = any(lib not in ("fastrpc", BASE) for lib in libs)
    header = [
        "scenario",
        "unit",
        *libs,
        *(["fastrpc / fastrpc-base"] if with_base else []),
        *(["fastrpc vs peers"] if with_peers else []),
    ]
    right = range(2, 2 + len(libs) + with_base)  # the figures and the ratio to the baseline
    rows = [header]
    notes: list[str] = []
    for scenario, row in results.items():
        unit = SCENARIOS[scenario]["unit"]
        cells = [scenario, unit]
        for lib in libs:
            r = row.get(lib, {})
            if r.get("value") is not None:
                cell = fmt(r["value"], unit)
                p = r.get("params", {})
                if "n" in r and "n" in p and r["n"] < p["n"]:
                    cell += "*"
                elif "n" in r and "n" in p and r["n"] > p["n"]:
                    cell += "+"
                cells.append(cell)
            elif "skipped" in r:
                cells.append("n/a" if r["skipped"] == "n/a" else "skipped")
            elif "error" in r:
                cells.append("ERROR")
                notes.append(f"{scenario}/{lib}: {r['error'].strip().splitlines()[-1]}")
            else:
                cells.append("-")
        if with_base:
            cells.append(base_cell(scenario, row))
        mine = row.get("fastrpc", {}).get("value")
        vs = []
        if mine is not None:
            for lib in libs:
                theirs = row.get(lib, {}).get("value")
                if lib not in ("fastrpc", BASE) and theirs is not None:
                    vs.append(f"{compare(scenario, mine, theirs)[0]} {lib}")
        if with_peers:
            cells.append(", ".join(vs))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for k, r in enumerate(rows):
        lines.append(
            "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    out = "\n".join(lines)
    figures = [c for r in rows[1:] for c in r[2 : 2 + len(libs)]]
    if any("*" in c for c in figures):
        out += "\n* fewer units than the nominal count, to stay within the time budget (the figure is a rate)"
    if any("+" in c for c in figures):
        out += "\n+ more units than the nominal count, so that one run lasts at least the minimum time"
    skipped = sorted(
        {
            f"{lib}: {r['skipped']}"
            for row in results.values()
            for lib, r in row.items()
            if r.get("skipped", "n/a") != "n/a"
        }
    )
    for n in skipped:
        out += f"\nskipped {n}"
    for n in notes:
        out += f"\nERROR {n}"
    return out


def rounds_lines(results: dict[str, dict[str, Any]], libs: list[str]) -> list[str]:
    """With ``--rounds``: every round's figure of each row, and (with a baseline) the
    ratio of fastrpc to fastrpc-base round by round (the two ran back to back)."""
    out = []
    for scenario, row in results.items():
        unit = SCENARIOS[scenario]["unit"]
        for lib in libs:
            values = row.get(lib, {}).get("rounds")
            if values:
                out.append(f"{scenario:<18} {lib:<13} " + ", ".join(fmt(v, unit) for v in values))
        mine, base = row.get("fastrpc", {}).get("rounds"), row.get(BASE, {}).get("rounds")
        if mine and base and len(mine) == len(base):
            paired = [compare(scenario, a, b)[1] for a, b in zip(mine, base)]
            middle = statistics.median(paired)
            shown = (lambda x: f"{x:.3f}x") if SCENARIOS[scenario]["higher"] else (lambda x: f"{x:+.2f} KiB")
            out.append(
                f"{scenario:<18} fastrpc / fastrpc-base, round by round: "
                + ", ".join(shown(x) for x in paired)
                + f"  (median {shown(middle)})"
            )
    return (["rounds (each in fresh processes, the libraries in turn):", *out]) if out else []


FANOUT_KEYS = ("subscribers", "per_subscriber", "p50_ms", "p99_ms", "paced", "server_cpu_us", "client_cpu_us")


def fanout_lines(results: dict[str, dict[str, Any]], libs: list[str]) -> list[str]:
    """The fan-out rows' other figures: items/s per connection, and publish-to-receipt
    latency in the saturated feed (mostly queueing) and in the paced one; the CPU
    time each side spent per delivery in the saturated feed."""
    rows = [
        [
            *("scenario", "library", "conns", "items/s per conn", "p50 ms", "p99 ms", "paced p50 ms", "paced p99 ms"),
            *("CPU us/delivery server", "client"),
        ]
    ]
    for scenario, row in results.items():
        if not scenario.startswith("fanout"):
            continue
        for lib in libs:
            r = row.get(lib, {})
            if r.get("value") is None:
                continue
            paced = r["paced"]
            rows.append(
                [
                    scenario,
                    lib,
                    f"{r['subscribers']:,}",
                    f"{r['per_subscriber']:,.0f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    f"{paced['p50_ms']:.2f}",
                    f"{paced['p99_ms']:.2f}",
                    f"{r['server_cpu_us']:.2f}",
                    f"{r['client_cpu_us']:.2f}",
                ]
            )
    if len(rows) == 1:
        return []
    rate = next(r["paced"]["deliveries_per_s"] for row in results.values() for r in row.values() if "paced" in r)
    return [
        f"fan-out: latency publish -> receipt, saturated feed and paced feed ({rate:,} deliveries/s in all)",
        *_columns(rows),
    ]


def fastrpc_lines(libraries: dict[str, Any], libs: list[str]) -> list[str]:
    """One header line per fastrpc library: the fastrpc its children imported, the
    live codec on each side (and its file), the checkout's git description."""
    out = []
    width = max((len(lib) for lib in libs), default=0)
    for lib in libs:
        v = libraries.get(lib)
        if not lib.startswith("fastrpc") or v is None:
            continue
        files = {v.get("server_file"), v.get("client_file")} - {None}
        codec_files = {os.path.basename(f) for f in (v.get("server_codec_file"), v.get("client_codec_file")) if f}
        where = " | ".join(sorted(files)) or "?"
        src = peers.LIBS[lib].src
        git = git_describe(src) if src else None
        line = (
            f"{lib:<{width}}  {where}  codec (server/client) "
            f"{v.get('server_implementation')}/{v.get('client_implementation')}"
        )
        if codec_files:
            line += f" [{', '.join(sorted(codec_files))}]"
        if git:
            line += f"  git {git}"
        out.append(line)
        if lib != "fastrpc-pure" and "python" in (v.get("server_implementation"), v.get("client_implementation")):
            tree = os.path.dirname(src) if src else "its tree"
            out.append(
                f"NOTE: the compiled codec is not built in {tree}: {lib!r} ran the pure-Python codec "
                "(FASTRPC_BUILD_EXTENSION=yes python setup.py build_ext --inplace, run there)"
            )
    return out


LATENCY = "latency"  # --only name of the latency-under-load run (priority.py), fastrpc only
LATENCY_LIBS = ("fastrpc", "fastrpc-pure", BASE)


def latency_under_load(lib: str, quick: bool, timeout: float) -> dict[str, Any]:
    """``bench/priority.py`` for fastrpc library ``lib`` (its children import the same
    fastrpc as ``lib``'s): p50/p99/p99.9 of sequential calls while 10 bulk streams run
    on the same connection, on another one, and with none; and the delivery latency of
    a 2 ms tick beside 16 bulk streams over a 10 MB/s link at urgency 0 and at the
    bulk's urgency 3. Its JSON, as it wrote it."""
    env = {**os.environ, **child_env(lib)}
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "priority.json")
        cmd = [sys.executable, os.path.join(BENCH, "priority.py"), "--json", out]
        if quick:
            cmd += ["--calls", "500", "--chunks", "600", "--ticks", "100"]
        try:
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RunError(f"priority.py took over {timeout:.0f} s") from e
        if run.returncode:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:]
            raise RunError(f"priority.py exited with {run.returncode}: {tail}")
        with open(out) as f:
            doc: dict[str, Any] = json.load(f)
    return doc


def latency_lines(latency: dict[str, dict[str, Any]]) -> list[str]:
    """The latency-under-load figures of each fastrpc library, as two tables."""
    rows = [["library", "calls beside bulk on", "p50 ms", "p99 ms", "p99.9 ms", "max ms"]]
    labels = {"none": "(no bulk)", "same": "the same connection", "other": "another connection"}
    for lib, doc in latency.items():
        if "error" in doc:
            rows.append([lib, "ERROR: " + doc["error"], "", "", "", ""])
            continue
        for where, label in labels.items():
            r = doc["calls_under_load"][where]
            rows.append([lib, label, *(f"{r[k]:.2f}" for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms"))])
    ticks = [["library", "tick urgency", "p50 ms", "p99 ms", "max ms", "p99 at 3 / at 0"]]
    for lib, doc in latency.items():
        if "error" in doc:
            continue
        t = doc["ticks"]
        for urgency in ("0", "3"):
            r = t[urgency]
            ratio = f"{t['3']['p99_ms'] / t['0']['p99_ms']:.1f}x" if urgency == "0" else ""
            ticks.append([lib, urgency, *(f"{r[k]:.2f}" for k in ("p50_ms", "p99_ms", "max_ms")), ratio])
    rate = next((doc.get("rate_mb_s") for doc in latency.values() if "error" not in doc), None)
    return [
        "latency under load (bench/priority.py): sequential calls beside 10 bulk streams of 64 KiB chunks",
        *_columns(rows),
        "",
        f"a 2 ms tick beside 16 bulk streams (urgency 3) over a {rate:g} MB/s link" if rate else "ticks: none",
        *_columns(ticks),
    ]


def _columns(rows: list[list[str]]) -> list[str]:
    """``rows`` (a header first) as aligned lines: the first two columns to the left,
    the figures to the right, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def check_targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for scenario, peer, kind, bound in TARGETS:
        mine = results.get(scenario, {}).get("fastrpc", {}).get("value")
        theirs = results.get(scenario, {}).get(peer, {}).get("value") if peer else None
        if mine is None or (peer and theirs is None):
            continue
        if kind == "ratio>=":
            actual, ok, text = mine / theirs, mine / theirs >= bound, f">= {bound}x {peer}"
        elif kind == "extra<=":
            actual, ok, text = mine - theirs, mine - theirs <= bound, f"<= {bound} KiB more than {peer}"
        elif kind == "value>=":
            actual, ok, text = mine, mine >= bound, f">= {bound:,} {SCENARIOS[scenario]['unit']}"
        else:
            actual, ok, text = mine, mine <= bound, f"<= {bound} {SCENARIOS[scenario]['unit']}"
        checks.append({"scenario": scenario, "target": text, "actual": actual, "ok": ok})
    return checks


def machine_info(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, Any] = {}
    for row in results.values():
        for lib, r in row.items():
            for side in ("server_info", "client_info"):
                if side in r:
                    versions.setdefault(lib, {}).update({f"{side[:-5]}_{k}": v for k, v in r[side].items()})
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "libraries": versions,
    }


def draw(results: dict[str, dict[str, Any]], libs: list[str], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("matplotlib is not installed: no chart")
        return
    scenarios = [s for s, row in results.items() if any(r.get("value") is not None for r in row.values())]
    if not scenarios:
        return
    cols = min(4, len(scenarios))
    nrows = math.ceil(len(scenarios) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, scenario in zip(axes.flat, scenarios):
        row = results[scenario]
        names = [lib for lib in libs if row.get(lib, {}).get("value") is not None]
        values = [row[lib]["value"] for lib in names]
        bars = ax.bar(range(len(names)), values, color=[colors[libs.index(n) % len(colors)] for n in names])
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        better = "higher" if SCENARIOS[scenario]["higher"] else "lower"
        ax.set_title(f"{scenario} ({SCENARIOS[scenario]['unit']}, {better} is better)", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
        for b, v in zip(bars, values):
            ax.annotate(
                fmt(v, SCENARIOS[scenario]["unit"]),
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    for ax in list(axes.flat)[len(scenarios) :]:
        ax.axis("off")
    fig.suptitle("fastrpc vs peers (loopback, server and client in separate processes)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"chart written to {path}")


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, one run each (< 60 s)")
    ap.add_argument("--only", help="comma-separated scenarios (" + ", ".join([*SCENARIOS, *ALIASES, LATENCY]) + ")")
    ap.add_argument("--libs", help="comma-separated libraries (" + ", ".join(ALL_LIBS) + "); default: all")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count by this (e.g. 0.02)")
    ap.add_argument("--repeat", type=int, help="runs per measurement, best kept (default 3, quick 1)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every row this many times, each time in fresh processes and with the libraries "
        "interleaved (A B A B ...), and show the median (default 1)",
    )
    ap.add_argument(
        "--budget", type=float, help="seconds one run may take before the count is cut (default 3, quick 0.5)"
    )
    ap.add_argument(
        "--min-time",
        type=float,
        help="a fast library's count is raised (up to 10x) so one run lasts this long (default 1, quick 0.2; 0: off)",
    )
    ap.add_argument("--timeout", type=float, help="seconds one client may take (default 240, quick 60)")
    ap.add_argument(
        "--profile", metavar="DIR", help="run servers and clients under cProfile, stats to DIR (slows them down)"
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin the server and the client to two different CPUs")
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="another checkout of fastrpc (its extension built in place): adds the library fastrpc-base, "
        "whose children import DIR/src/fastrpc, and a fastrpc / fastrpc-base column",
    )
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--png", help="draw a bar chart here (needs matplotlib)")
    args = ap.parse_args(argv)
    if args.scale <= 0:
        ap.error("--scale must be positive")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.only:
        chosen: list[str] = []
        for s in args.only.split(","):
            s = s.strip()
            if s in ALIASES:
                chosen += ALIASES[s]
            elif s == LATENCY or s in SCENARIOS:
                chosen.append(s)
            elif s:
                ap.error(f"unknown scenario {s!r}")
        args.scenarios = [s for s in SCENARIOS if s in chosen]
        args.latency = LATENCY in chosen
    else:
        args.scenarios = list(SCENARIOS)
        args.latency = True
    if args.libs:
        args.lib_list = [x.strip() for x in args.libs.split(",") if x.strip()]
        for lib in args.lib_list:
            if lib not in peers.LIBS:
                ap.error(f"unknown library {lib!r}")
    else:
        args.lib_list = list(ALL_LIBS)
    if args.baseline is not None:
        init = os.path.join(args.baseline, "src", "fastrpc", "__init__.py")
        if not os.path.isfile(init):
            ap.error(f"--baseline {args.baseline}: no {init} (expected a checkout of fastrpc)")
        if BASE not in args.lib_list:  # right after fastrpc, so that the two run back to back
            at = args.lib_list.index("fastrpc") + 1 if "fastrpc" in args.lib_list else len(args.lib_list)
            args.lib_list.insert(at, BASE)
    elif BASE in args.lib_list:
        ap.error(f"{BASE} needs --baseline DIR (another checkout of fastrpc)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_sources(args.baseline)
    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    budget = args.budget if args.budget is not None else (0.5 if quick else 3.0)
    min_time = args.min_time if args.min_time is not None else (0.2 if quick else 1.0)
    timeout = args.timeout or (60.0 if quick else 240.0)
    libs = args.lib_list
    global PIN
    cpus = usable_cpus()
    PIN = (cpus[0], cpus[1]) if len(cpus) >= 2 and not args.no_pin else None
    missing = {lib: missing_imports(lib) for lib in libs}
    for lib, names in missing.items():
        if names:
            log(f"{lib}: not installed ({', '.join(names)}): skipped")

    rounds = args.rounds
    # Round by round within a scenario, the libraries in turn: what drifts over a run
    # (the machine's load, its clock) falls on every library alike.
    jobs = [
        (s, k, lib)
        for s in args.scenarios
        for k in range(rounds)
        for lib in libs
        if not missing[lib] and s in peers.LIBS[lib].supports
    ]
    results: dict[str, dict[str, Any]] = {s: {} for s in args.scenarios}
    for s in args.scenarios:
        for lib in libs:
            if missing[lib]:
                results[s][lib] = {"skipped": "not installed: " + ", ".join(missing[lib])}
            elif s not in peers.LIBS[lib].supports:
                results[s][lib] = {"skipped": "n/a"}
    by_round: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        log(f"WARNING: load average {load:.2f} at start: other processes compete for the CPUs, figures will be noisy")
    started = time.perf_counter()
    for k, (scenario, rnd, lib) in enumerate(jobs, 1):
        p = params_for(scenario, quick, args.scale, repeat, budget, min_time)
        t0 = time.perf_counter()
        tag = f"[{k}/{len(jobs)}] {scenario:<18} {lib:<13}" + (f" round {rnd + 1}" if rounds > 1 else "")
        log(f"{tag} ...")
        try:
            r = measure(lib, scenario, p, repeat, timeout, args.profile)
            r["params"] = p
            by_round.setdefault((scenario, lib), []).append(r)
            log(f"{tag} {fmt(r['value'], r['unit'])} {r['unit']}  ({time.perf_counter() - t0:.1f} s)")
        except RunError as e:
            results[scenario][lib] = {"error": str(e), "params": p}
            log(f"{tag} ERROR: {e}")
    for (scenario, lib), runs in by_round.items():
        if "error" not in results[scenario].get(lib, {}):
            results[scenario][lib] = median_round(runs)
    latency: dict[str, dict[str, Any]] = {}
    for lib in libs if args.latency else ():
        if lib in LATENCY_LIBS and not missing[lib]:
            t0 = time.perf_counter()
            log(f"[latency] {lib:<13} ... (bench/priority.py)")
            try:
                latency[lib] = latency_under_load(lib, quick, timeout)
                log(f"[latency] {lib:<13} done ({time.perf_counter() - t0:.1f} s)")
            except RunError as e:
                latency[lib] = {"error": str(e)}
                log(f"[latency] {lib:<13} ERROR: {e}")
    elapsed = time.perf_counter() - started

    machine = machine_info(results)
    print(
        f"fastrpc comparison ({'quick' if quick else 'full'} run, scale {args.scale}, "
        f"{'best of ' + str(repeat) if repeat > 1 else '1 run'}"
        f"{f', median of {rounds} rounds' if rounds > 1 else ''}; {elapsed:.0f} s)"
    )
    print(f"machine: {machine['cpu']}, {machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}")
    print("CPUs: " + (f"server pinned to CPU {PIN[0]}, client to CPU {PIN[1]}" if PIN else "not pinned"))
    if machine["loadavg"] is not None:
        print(
            f"load average: {load:.2f} at start, {machine['loadavg'][0]:.2f} at end"
            + (
                "  (other processes competed for the CPUs: figures are noisy)"
                if max(load, machine["loadavg"][0]) > 0.5
                else ""
            )
        )
    for line in fastrpc_lines(machine["libraries"], libs):
        print(line)
    if args.scenarios:
        print()
        print(table(results, libs))
    spread = rounds_lines(results, libs)
    if spread:
        print()
        print("\n".join(spread))
    extra = fanout_lines(results, libs)
    if extra:
        print()
        print("\n".join(extra))
    if latency:
        print()
        print("\n".join(latency_lines(latency)))
    checks = check_targets(results)
    if checks:
        print("\nfastrpc targets:")
        for c in checks:
            unit = SCENARIOS[c["scenario"]]["unit"]
            actual = (
                f"{c['actual']:.3f}x"
                if "x " in c["target"]
                else (f"{c['actual']:+.2f} KiB" if "more than" in c["target"] else f"{fmt(c['actual'], unit)} {unit}")
            )
            print(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['scenario']:<15} {c['target']:<32} actual {actual}")

    if args.json:
        doc: dict[str, Any] = {
            s: {
                lib: (
                    {
                        "value": r["value"],
                        "unit": r["unit"],
                        **{k: r[k] for k in (*FANOUT_KEYS, "rounds") if k in r},
                    }
                    if r.get("value") is not None
                    else {k: r[k] for k in ("skipped", "error") if k in r}
                )
                for lib, r in row.items()
            }
            for s, row in results.items()
        }
        doc["ratios"] = {lib: ratios(results, lib) for lib in ("fastrpc", "fastrpc-pure", BASE) if lib in libs}
        if BASE in libs:
            doc["baseline"] = {
                "dir": os.path.abspath(args.baseline),
                "git": git_describe(args.baseline),
                "fastrpc_git": git_describe(ROOT),
                "fastrpc_over_base": {s: r for s, row in results.items() if (r := base_ratio(s, row)) is not None},
            }
        doc["latency_under_load"] = latency
        doc["targets"] = checks
        doc["details"] = results
        doc["machine"] = dict(machine, loadavg_start=load)
        doc["run"] = {
            "quick": quick,
            "scale": args.scale,
            "repeat": repeat,
            "rounds": rounds,
            "budget_s": budget,
            "min_time_s": min_time,
            "pinned_cpus": PIN,
            "elapsed_s": round(elapsed, 1),
            "libs": libs,
            "scenarios": args.scenarios,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        log(f"JSON written to {args.json}")
    if args.png:
        draw(results, libs, args.png)
    failed = any("error" in r for row in results.values() for r in row.values())
    return 1 if failed or any("error" in doc for doc in latency.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
