#!/usr/bin/env python
"""What one side of a call costs: instructions a call (callgrind) or Python opcodes
a call, by function, for the server or the client of ``compare.py``'s ``seq_calls``
row (``--what inflight``: its ``inflight_calls`` row, 100 calls in flight; ``small``
and ``bulk``: its rows of 16-byte items and 64 KiB chunks streamed, an item counted
as a call); the same ``bench/peers`` code.

    python bench/side_cost.py --lib fastrpc|picows --side server|client [--src DIR]
    python bench/side_cost.py --lib fastrpc --side server --opcodes [--what inflight|small|bulk]

Instructions: the side under ``valgrind --tool=callgrind``, the other side native,
once for ``--calls`` A and once for B calls; (B - A) / (B - A calls) leaves out start
up and shut down. Repeatable for the same binaries and inputs, whatever else the
machine does. Opcodes: the side traced with ``sys.settrace`` (opcode events) over
2,000 calls, counted by function. ``--src`` imports fastrpc from another checkout
(``DIR/src``), as ``compare.py --baseline`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
PAYLOAD = b"x" * 16
WINDOW = 100  # calls in flight (--what inflight), as compare.py's inflight_calls row


def _peer(lib: str) -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(f"peers.{lib}")


async def _serve(lib: str, port_file: str, seconds: float, trace_calls: int) -> None:
    port, stop = await _peer(lib).start_server()
    Path(port_file).write_text(str(port))
    if trace_calls:
        await _traced(seconds)
    else:
        await asyncio.sleep(seconds)
    await stop()


async def _calls(client: Any, n: int) -> None:
    what = os.environ.get("SIDE_COST_WHAT")
    if what == "inflight":
        await client.inflight_calls(n, WINDOW, PAYLOAD)
    elif what == "small":
        await client.stream(n, len(PAYLOAD))
    elif what == "bulk":
        await client.stream(n, 64 << 10)
    else:
        await client.seq_calls(n, PAYLOAD)


async def _call(lib: str, port: int, n: int, trace_calls: int) -> None:
    client = _peer(lib).Client(port)
    await client.connect()
    await _calls(client, 200)  # warm: the connection's first calls
    if trace_calls:
        counts = _start_trace()
        await _calls(client, trace_calls)
        sys.settrace(None)
        _print_opcodes(counts, trace_calls)
    else:
        await _calls(client, n)
    await client.close()


def _start_trace() -> collections.Counter[tuple[str, str]]:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def trace(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[(code.co_filename, code.co_qualname)] += 1
        return trace

    sys.settrace(trace)
    return counts


async def _traced(seconds: float) -> None:
    # The server side: traced from its start to the end, the handshake included (a
    # few hundred opcodes in all, against ~2,000 calls).
    counts = _start_trace()
    try:
        await asyncio.sleep(seconds)
    finally:  # (cancelled at SIGINT, once the client is done)
        sys.settrace(None)
        _print_opcodes(counts, int(os.environ["SIDE_COST_CALLS"]))


def _print_opcodes(counts: collections.Counter[tuple[str, str]], calls: int) -> None:
    total = sum(counts.values())
    print(f"opcodes a call: {total / calls:,.0f}")
    for (module, name), n in counts.most_common(25):
        if n / calls >= 1:
            print(f"  {n / calls:7.1f}  {Path(module).name}:{name}")


def _child(args: list[str], src: Path | None, under: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, **env}
    if src is not None:
        env["PYTHONPATH"] = str(src / "src")
    return subprocess.Popen([*under, sys.executable, __file__, *args], env=env)


def _wait_port(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("side_cost: the server did not start")
        time.sleep(0.1)
    return int(path.read_text())


def _by_object(text: str) -> collections.Counter[str]:
    """A callgrind output's self cost (instructions) by object file: the interpreter,
    the codec, uvloop, libc. Costs after a ``calls=`` line are a callee's inclusive
    cost, charged to the callee where it is listed itself: skipped here."""
    names: dict[str, str] = {}
    totals: collections.Counter[str] = collections.Counter()
    ob = "?"
    skip = False
    for line in text.splitlines():
        if not line or line[0] in "#":
            continue
        if line[0].isdigit() or line[0] in "+-*":
            if skip:
                skip = False
                continue
            parts = line.split()
            if len(parts) > 1:
                totals[ob] += int(parts[1])
            continue
        key, _, val = line.partition("=")
        if key in ("ob", "cob"):  # (a name is given once, where it first appears)
            m = re.match(r"\((\d+)\)(?: (.*))?", val)
            if m is not None and m.group(2):
                names[m.group(1)] = m.group(2)
            if key == "ob":
                ob = val if m is None else names.get(m.group(1), "?")
        elif key == "calls":
            skip = True
    return totals


def _object_group(path: str) -> str:
    name = Path(path).name
    for prefix, group in (
        ("_frames.", "fastrpc codec (_frames)"),
        ("_calltable.", "fastrpc call table (_calltable)"),
        ("loop.", "uvloop/libuv"),
        ("picows.", "picows (Cython)"),
        ("libc.", "libc"),
        ("libc-", "libc"),
        ("python3", "Python interpreter"),
        ("libpython", "Python interpreter"),
        ("_speedups", "websockets speedups"),
    ):
        if name.startswith(prefix):
            return group
    return "other (" + name + ")" if name else "other"


def _run(
    lib: str,
    side: str,
    n: int,
    src: Path | None,
    what: str,
    trace_calls: int = 0,
    by_object: dict[str, int] | None = None,
) -> int | None:
    """One measurement: ``n`` calls; the callgrind total of ``side`` (None when tracing);
    ``by_object`` is filled with its self cost by group of object files."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        out = Path(tmp) / "callgrind.out"
        grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q"]
        seconds = 600.0 if side == "server" else 3600.0
        # Traced, the server counts from its start: the client's 200 warm-up calls too.
        env = {"SIDE_COST_CALLS": str(trace_calls + 200), "SIDE_COST_WHAT": what}
        server_under = grind if side == "server" and not trace_calls else []
        server = _child(["_serve", lib, str(port_file), str(seconds), str(trace_calls)], src, server_under, env)
        try:
            port = _wait_port(port_file, server, 120)
            client_under = grind if side == "client" and not trace_calls else []
            client_trace = trace_calls if side == "client" else 0
            calls = trace_calls if trace_calls and side == "server" else n
            client = _child(["_call", lib, str(port), str(calls), str(client_trace)], src, client_under, env)
            if client.wait(timeout=1800) != 0:
                raise SystemExit("side_cost: the client failed")
        finally:
            if side == "server":
                server.send_signal(2)  # SIGINT: the server's run ends, its totals are written
            else:
                server.terminate()
            try:
                server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()
        if trace_calls:
            return None
        text = out.read_text(errors="replace")
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if m is None:
            raise SystemExit("side_cost: no callgrind total")
        if by_object is not None:
            for ob, cost in _by_object(text).items():
                group = _object_group(ob)
                by_object[group] = by_object.get(group, 0) + cost
        return int(m.group(1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_serve", "_call"):
        import uvloop

        mode, lib = sys.argv[1], sys.argv[2]
        if mode == "_serve":
            try:
                uvloop.run(_serve(lib, sys.argv[3], float(sys.argv[4]), int(sys.argv[5])))
            except KeyboardInterrupt:
                pass
        else:
            uvloop.run(_call(lib, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", default="fastrpc", help="a module of bench/peers (fastrpc, picows, tcp, ...)")
    ap.add_argument("--side", choices=("server", "client"), default="server")
    ap.add_argument("--src", type=Path, help="import fastrpc from DIR/src (another checkout)")
    ap.add_argument("--calls", default="2000,12000", help="the two call counts (callgrind)")
    ap.add_argument("--opcodes", action="store_true", help="Python opcodes a call, by function, instead")
    ap.add_argument(
        "--by-object",
        action="store_true",
        help="also the instructions a call by object file (interpreter, codec, loop)",
    )
    ap.add_argument(
        "--what",
        choices=("seq", "inflight", "small", "bulk"),
        default="seq",
        help="sequential calls, 100 in flight, or 16-byte items or 64 KiB chunks streamed (a call: an item)",
    )
    args = ap.parse_args()
    if args.opcodes:
        _run(args.lib, args.side, 0, args.src, args.what, trace_calls=2000)
        return
    a, b = (int(x) for x in args.calls.split(","))
    oa: dict[str, int] | None = {} if args.by_object else None
    ob: dict[str, int] | None = {} if args.by_object else None
    ia = _run(args.lib, args.side, a, args.src, args.what, by_object=oa)
    ib = _run(args.lib, args.side, b, args.src, args.what, by_object=ob)
    assert ia is not None and ib is not None
    print(
        f"{args.lib} {args.side} ({args.what}): {(ib - ia) / (b - a):,.0f} instructions a call ({a:,} and {b:,} calls)"
    )
    if oa is not None and ob is not None:
        rows = sorted(((ob.get(k, 0) - oa.get(k, 0)) / (b - a), k) for k in set(oa) | set(ob))
        for per_call, group in reversed(rows):
            if abs(per_call) >= 50:
                print(f"  {per_call:9,.0f}  {group}")


if __name__ == "__main__":
    main()
