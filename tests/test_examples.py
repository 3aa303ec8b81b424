"""Run every script in examples/ as a subprocess and check what it prints.

Each script starts its own loopback server on 127.0.0.1 (port 0) and must exit 0
within ``TIMEOUT`` seconds, print the lines listed here, and leave no traceback,
warning or "Task was destroyed" message on stderr. The child imports the same
fastrpc as this test process (its directory is put first on PYTHONPATH; the
rest of PYTHONPATH and the environment, e.g. FASTRPC_NO_EXTENSIONS, are kept).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastrpc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 60

# Regular expressions each script's stdout must contain, in this order.
EXPECTED: dict[str, list[str]] = {
    "01_basic_streaming.py": [
        r"server: sending stream \d+",
        *(rf"^Received: {i}$" for i in range(1, 11)),
        r"client: stream \d+ ended after 10 items",
        r"numbers\(5\) -> \[1, 2, 3, 4, 5\]",
        r"^done$",
    ],
    "02_coordinated_stream_ids.py": [
        r"server: requestData -> streaming on id \d+",
        r"client: response.data = \{'streamId': \d+\}",
        r"Received: \{'symbol': 'ACME', 'seq': 0, 'price': [\d.]+\}",
        r"Received: \{'symbol': 'ACME', 'seq': 4, 'price': [\d.]+\}",
        r"client: subscribe -> \{'streamId': \d+\}",
        r"client: INIT seqs \[0, 1, 2\]",
        r"client: claimed late, still got seqs \[0, 1, 2, 3\]",
        r"client: request failed as expected: ValueError: unknown request",
        r"^done$",
    ],
    "03_early_termination.py": [
        r"client: abort_stream -> StreamAborted\(.*\) after 5 items",
        r"client: feed A produced \d+ items",
        r"client: close_receiving_stream\(\d+\) after 5 items",
        r"client: feed B produced \d+ items",
        r"client: break at n=3; feed C produced \d+ items",
        r"client: break at n=3; feed D produced \d+ items",
        r"client: async with \+ break at n=3; feed E produced \d+ items",
        r"^done$",
    ],
    "04_multiplexing.py": [
        r"server: sending streams \d+, \d+, \d+ on one connection",
        r"client: call during streaming answered in [\d.]+ ms",
        r"client: stream \d+: 10 items, feed\d-0 .. feed\d-9",
        r"client: 30 items from 3 streams in [\d.]+ s, \d+ switches between streams",
        r"congested: items of each stream when the first one ended: \{.*\} \(of 400 each\)",
        r"^done$",
    ],
    "05_error_handling.py": [
        r"client: stream \d+ received \[1, 2\], then RemoteStreamError type_name='RuntimeError' "
        r"message='Something went wrong'",
        r"client: failing_stream\(\) received \[1, 2\], then RemoteStreamError: RuntimeError: Something went wrong",
        r"client: divide\(1, 0\) -> RemoteError: ZeroDivisionError: float division by zero",
        r"client: after \d+ items the stream failed with ConnectionClosed\(Connection closed(: going away)?\)",
        r"server: endless\(\) closed after \d+ items \(connection gone\)",
        r"^done$",
    ],
    "06_chunk_size.py": [
        r"codec implementation: (cython|python)",
        r"small chunks \(1 per item\) +100000 numbers in 100000 items .* items/s",
        r"batched \(10 per item\) +100000 numbers in +10000 items .* items/s",
        r"batched \(100 per item\) +100000 numbers in +1000 items .* items/s",
        r"batched \(1000 per item\) +100000 numbers in +100 items .* items/s",
        r"batching 100 per item: [\d.]+x the items/s of single items",
        r"^done$",
    ],
    "07_backpressure.py": [
        r"4 streams x 4 MiB in 16 KiB items",
        r"fast \(16 MiB, 5 ms\) +[\d.]+ MB/s +peak buffered on the sender +\d+ KiB \(limit 16384 KiB\)",
        r"slow \(256 KiB, 50 ms\) +[\d.]+ MB/s +peak buffered on the sender +\d+ KiB \(limit 256 KiB\)",
        r"slow receiver: after 0.2 s the sender has produced \d+ items .* window=\d+ buffered=0 \(out of credit for the next item\)",
        r"slow receiver: reading resumed the sender",
        r"^done$",
    ],
    "08_bidirectional_channel.py": [
        r"client: scale\(numbers\(10\), 10\) -> \[0, 10, 20, 30, 40, 50, 60, 70, 80, 90\]",
        r"client <-  \[bot\] hello alice",
        r"client  -> hi",
        r"client <-  \[bot\] alice said 'hi' \(2 chars\)",
        r"client <-  \[bot\] bye alice",
        r"server: received 20 items from the client: client-0 .. client-19",
        r"client: received 20 items from the server: server-0 .. server-19",
        r"^done$",
    ],
    "09_memory_usage.py": [
        r"20000 rows, all at once: peak +[\d.]+ MB",
        r"20000 rows, streamed: +peak +[\d.]+ MB +\([\d.]+x less\)",
        r"200000 rows, all at once: ResponseTooLarge",
        r"200000 rows, streamed: +peak +[\d.]+ MB, sum=9999950000",
        r"^done$",
    ],
    "10_priority_and_rate_limit.py": [
        r"rate limit: 50 items with RateLimit\(500 items/s\) took [\d.]+ s",
        r"compression=False: 1.31 MB of text crossed the wire as [\d.]+ MB",
        r"compression=True : 1.31 MB of text crossed the wire as [\d.]+ MB",
        r"priority: small items at priority 0 beside 4 bulk streams on a 10 MB/s link: p50 [\d.]+ ms",
        r"priority: small items at priority 3 beside 4 bulk streams on a 10 MB/s link: p50 [\d.]+ ms",
        r"priority: urgent items arrive \d+x sooner \(median\)",
        r"^done$",
    ],
}

# Nothing of these may appear on stderr.
BAD_STDERR = ("Traceback", "Task was destroyed", "never awaited", "never retrieved", "Warning", "Unclosed", "Error")


def _scripts() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    here = str(Path(fastrpc.__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([here, *(p for p in parts if p != here)])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_script(path: Path, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-W", "default", str(path), *args],
            cwd=path.parent,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"{path.name} did not finish within {timeout} s\n--- stdout\n{out}\n--- stderr\n{err}")


def assert_lines_in_order(out: str, patterns: list[str], name: str) -> None:
    pos = 0
    for pattern in patterns:
        m = re.compile(pattern, re.MULTILINE).search(out, pos)
        assert m is not None, f"{name}: no line matching {pattern!r} (after offset {pos}) in:\n{out}"
        pos = m.end()


def test_every_example_is_covered() -> None:
    assert _scripts() == sorted(EXPECTED), "examples/ and EXPECTED disagree"


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("name", _scripts())
def test_example(name: str) -> None:
    proc = run_script(EXAMPLES / name)
    details = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{details}"
    assert_lines_in_order(proc.stdout, EXPECTED[name], name)
    for bad in BAD_STDERR:
        assert bad not in proc.stderr, f"{name}: {bad!r} on stderr\n{details}"
