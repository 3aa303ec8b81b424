"""The command line against a real server: ``fastrpc serve`` in a child process,
``call``, ``stream``, ``notify``, ``ping``, ``methods``, ``version``, ``--static``,
TLS, IPv6 and ``bench``, each command in a subprocess of its own."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from _util import child_env, read_line

import fastrpc
from fastrpc.static import StaticFiles

HERE = Path(__file__).resolve().parent
TIMEOUT = 30


def cli(*args: str, timeout: float = TIMEOUT, **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    try:
        return subprocess.run(
            [sys.executable, "-W", "error", "-m", "fastrpc", *args],
            env=child_env(),
            text=True,
            timeout=timeout,
            **kw,  # type: ignore[arg-type]
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"fastrpc {' '.join(args)} did not finish within {timeout} s: {exc.stdout!r} {exc.stderr!r}")


def cli_each(*calls: tuple[str, ...], **kw: Any) -> list[subprocess.CompletedProcess[str]]:
    """``cli(*args, **kw)`` for each ``args`` of ``calls``, all at once (independent
    commands, each a process of its own, need not wait for each other's start); the
    results in the order of ``calls``."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: cli(*args, **kw), calls))


@contextlib.contextmanager
def serving(*args: str, lines: int = 1, **env: str) -> Iterator[tuple[str, list[str]]]:
    """``fastrpc serve ARGS --port 0`` in a child process: (its URL, its first lines)."""
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "fastrpc", "serve", *args, "--port", "0"],
        cwd=str(HERE),
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        first = [read_line(proc, deadline) for _ in range(lines)]
        m = re.search(r" on (wss?://\S+)$", first[0].strip())
        assert m, first
        yield m.group(1), first
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=5)
    # A clean stop on SIGTERM (warnings are errors in the child); stderr holds only
    # fastrpc's log lines (--log-level warning: a failing handler's ERROR).
    assert proc.returncode == 0, (out, err)
    assert b"stopped" in out, (out, err)
    for bad in (b"Warning", b"never awaited", b"Task was destroyed", b"Exception in callback"):
        assert bad not in err, (out, err)


def test_serve_methods_call_stream_notify_ping(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    with serving("_cli_app:router", FASTRPC_TEST_LOG=str(log)) as (url, first):
        assert first[0].startswith(
            f"fastrpc {fastrpc.__version__}: serving _cli_app:router (router) on ws://127.0.0.1:"
        )

        methods_text, methods_json, add, echo, fail, nope, ticks, limited = cli_each(
            ("methods", url),
            ("methods", url, "--json"),
            ("call", url, "add", "1", "2"),
            ("call", url, "echo", "hello", "1.5", '{"k": [1, null]}', "true", '"7"'),
            ("call", url, "fail", "boom"),
            ("call", url, "nope"),
            ("stream", url, "ticks", "3"),
            ("stream", url, "ticks", "1000000", "--limit", "5"),
        )
        proc = methods_text
        assert proc.returncode == 0, proc.stderr
        assert "add(a: int, b: int) -> int  [call]\n    Add two numbers.\n" in proc.stdout
        assert "ticks(n: int, size: int = 0) -> AsyncIterator[dict[str, Any]]  [stream]" in proc.stdout
        assert "upper(items: AsyncIterator[str]) -> AsyncIterator[str]  [channel]" in proc.stdout
        proc = methods_json
        methods = json.loads(proc.stdout)
        assert [m["name"] for m in methods] == ["add", "echo", "fail", "ticks", "upper", "log"]
        assert methods[0] == {
            "name": "add",
            "kind": "call",
            "signature": "(a: int, b: int) -> int",
            "doc": "Add two numbers.",
        }

        proc = add
        assert (proc.returncode, proc.stdout) == (0, "3\n"), proc.stderr
        # JSON where it parses, strings otherwise.
        proc = echo
        assert json.loads(proc.stdout) == ["hello", 1.5, {"k": [1, None]}, True, "7"], proc.stderr
        proc = fail
        assert proc.returncode == 1 and "ValueError: boom" in proc.stderr and not proc.stdout
        proc = nope
        assert proc.returncode == 1 and "MethodNotFound" in proc.stderr

        proc = ticks
        assert proc.returncode == 0, proc.stderr
        assert [json.loads(line) for line in proc.stdout.splitlines()] == [{"i": i, "pad": ""} for i in range(3)]
        assert proc.stderr == ""  # not a terminal: no progress line
        proc = limited
        assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 5, proc.stderr

        proc = cli("notify", url, "log", "hello from the CLI")
        assert proc.returncode == 0, proc.stderr
        assert log.read_text() == "hello from the CLI\n"

        proc = cli("ping", url, "-c", "2", "-i", "0")
        assert proc.returncode == 0, proc.stderr
        times = re.findall(r"^pong from \S+: seq=\d time=([\d.]+) ms$", proc.stdout, re.M)
        assert len(times) == 2 and all(float(t) > 0 for t in times), proc.stdout
        assert re.search(r"^2 pings: min [\d.]+ / median [\d.]+ / max [\d.]+ ms$", proc.stdout, re.M)


def test_stream_progress_on_a_terminal() -> None:
    with serving("_cli_app:router") as (url, _):
        master, slave = pty.openpty()
        try:
            proc = cli("stream", url, "ticks", "2000", "64", stderr=slave)
            os.close(slave)
            slave = -1
            err = b""
            while select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                err += chunk
        finally:
            if slave >= 0:
                os.close(slave)
            os.close(master)
        assert proc.returncode == 0
        assert len(proc.stdout.splitlines()) == 2000
        text = err.decode()
        assert re.search(r"\r2,000 items, [\d.]+ MB, [\d,]+ items/s, [\d.]+ s", text), text


def test_handler_target_and_no_introspection() -> None:
    with serving("_cli_app:handler", "--no-introspection") as (url, first):
        assert "(handler)" in first[0]
        proc = cli("call", url, "whoami")
        assert (proc.returncode, proc.stdout) == (0, '"handler"\n'), proc.stderr
        proc = cli("methods", url)
        assert proc.returncode == 1
        assert "does not answer fastrpc.methods (introspection is off)" in proc.stderr


def test_serve_errors() -> None:
    no_attr, no_module, missing, not_a_target, no_server = cli_each(
        ("serve", "_cli_app"),
        ("serve", "_no_such_module:router"),
        ("serve", "_cli_app:missing"),
        ("serve", "_cli_app:not_a_target"),
        ("call", "ws://127.0.0.1:9", "add", "1", "2"),  # port 9: nobody listens
        cwd=str(HERE),
    )
    proc = no_attr
    assert proc.returncode == 1 and "expected MODULE:ATTR" in proc.stderr
    proc = no_module
    assert proc.returncode == 1 and "cannot import module '_no_such_module'" in proc.stderr
    proc = missing
    assert proc.returncode == 1 and "has no attribute 'missing'" in proc.stderr
    proc = not_a_target
    assert proc.returncode == 1 and "expected a fastrpc.Router or an async handler(peer)" in proc.stderr
    proc = no_server
    assert proc.returncode == 1 and "cannot connect" in proc.stderr


def _get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    m = re.match(r"wss?://(\[[^\]]+\]|[^:/]+):(\d+)", url)
    assert m
    conn = http.client.HTTPConnection(m.group(1).strip("[]"), int(m.group(2)), timeout=10)
    try:
        conn.request("GET", path)  # sent as is: no normalisation of ".."
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_static_files(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "js").mkdir(parents=True)
    (site / "index.html").write_text("<h1>hi</h1>")
    (site / "js" / "app.js").write_text("console.log(1)")
    (site / "data.bin").write_bytes(bytes(range(256)))
    (tmp_path / "secret.txt").write_text("secret")
    (site / "link").symlink_to(tmp_path / "secret.txt")
    with serving("_cli_app:router", "--static", str(site), lines=2) as (url, first):
        assert first[1].startswith(f"static files from {site} on http://127.0.0.1:")
        status, headers, body = _get(url, "/")
        assert (status, body) == (200, b"<h1>hi</h1>")
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["x-content-type-options"] == "nosniff"
        status, headers, body = _get(url, "/js/app.js?v=1")
        assert status == 200 and body == b"console.log(1)"
        assert headers["content-type"] in ("text/javascript; charset=utf-8", "application/javascript; charset=utf-8")
        status, headers, body = _get(url, "/data.bin")
        assert (status, headers["content-type"], body) == (200, "application/octet-stream", bytes(range(256)))
        for bad in ("/../secret.txt", "/%2e%2e/secret.txt", "/js/../../secret.txt", "/link", "/..%2fsecret.txt"):
            status, _, body = _get(url, bad)
            assert status == 404 and b"secret" not in body, bad
        status, _, _ = _get(url, "/missing.html")
        assert status == 404
        # The same port still speaks fastrpc.
        proc = cli("call", url, "add", "2", "3")
        assert proc.stdout == "5\n", proc.stderr


def test_static_resolve_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    static = StaticFiles(tmp_path, max_file_size=10)
    assert static.resolve("/a.txt") == str(tmp_path.resolve() / "a.txt")
    for bad in ("/../a.txt", "/a.txt%00", "/%5c..%5ca.txt", "/..\\a.txt", "//etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"):
        assert static.resolve(bad) is None, bad
    (tmp_path / "big.txt").write_text("x" * 11)
    import asyncio

    resp = asyncio.run(static("/big.txt", {}))
    assert resp is not None and resp.status == 403 and b"max_file_size" in resp.body
    assert asyncio.run(static("/a.txt", {"Upgrade": "websocket"})) is None
    with pytest.raises(ValueError, match="not a directory"):
        StaticFiles(tmp_path / "a.txt")


def _make_cert(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate can be made for the TLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,IP:::1",
        ],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def test_tls(tmp_path: Path) -> None:
    cert, key = _make_cert(tmp_path)
    with serving("_cli_app:router", "--ssl-cert", str(cert), "--ssl-key", str(key)) as (url, _):
        assert url.startswith("wss://127.0.0.1:")
        proc = cli("call", url, "add", "20", "22", "--cafile", str(cert))
        assert (proc.returncode, proc.stdout) == (0, "42\n"), proc.stderr
        proc = cli("call", url, "add", "1", "1")  # the system's CAs do not know this certificate
        assert proc.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in proc.stderr


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="this machine has no IPv6 loopback (::1)")


@needs_ipv6
def test_ipv6() -> None:
    with serving("_cli_app:router", "--host", "::1") as (url, _):
        assert re.fullmatch(r"ws://\[::1\]:\d+", url), url
        proc = cli("call", url, "add", "1", "2")
        assert proc.stdout == "3\n", proc.stderr
        proc = cli("stream", url, "ticks", "2")
        assert len(proc.stdout.splitlines()) == 2, proc.stderr
        proc = cli("ping", url, "-c", "1")
        assert proc.returncode == 0, proc.stderr
    proc = cli("demo", "--host", "::1", "--items", "2000", "--calls", "10", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^server: pid \d+, codec implementation \w+, ws://\[::1\]:\d+$", proc.stdout, re.M)


def test_version_says_why() -> None:
    proc = cli("version", "-v")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"fastrpc {fastrpc.__version__} (codec implementation: {fastrpc.IMPLEMENTATION};")
    assert lines[1].startswith(f"codec: {fastrpc.IMPLEMENTATION}: ")
    assert lines[2] == f"package: {Path(fastrpc.__file__).parent}"
    env = child_env(FASTRPC_NO_EXTENSIONS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fastrpc", "version", "-v"], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert "codec: python: FASTRPC_NO_EXTENSIONS is set" in proc.stdout, proc.stderr


@pytest.mark.timeout(120)
def test_bench_builtin_quick() -> None:
    # The scenarios an installed package runs (no bench/ directory): tiny sizes here.
    proc = cli("bench", "--builtin", "--quick", "--scale", "0.02", "--only", "small,seq_calls", timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"vs websockets [\d.]+; best of 1", proc.stdout), proc.stdout
    for scenario in ("small", "seq_calls"):
        m = re.search(rf"^{scenario} +\S+ +([\d,]+) +([\d,]+) +([\d.]+)x", proc.stdout, re.M)
        assert m and all(float(g.replace(",", "")) > 0 for g in m.groups()), proc.stdout
    proc = cli("bench", "--builtin", "--only", "nope")
    assert proc.returncode == 2 and "unknown scenario" in proc.stderr


def test_static_before_the_servers_own_process_request(tmp_path: Path) -> None:
    # static= answers plain GETs; upgrades still go through a process_request hook
    # given to serve (how an authentication hook refuses a handshake).
    import asyncio
    import http as _http

    from _util import NO_PROXY, QUIET, run

    (tmp_path / "index.html").write_text("hi")
    calls: list[str] = []

    def process_request(connection: object, request: object) -> object:
        calls.append(request.path)  # type: ignore[attr-defined]
        if request.headers.get("X-Token") != "ok":  # type: ignore[attr-defined]
            return connection.respond(_http.HTTPStatus.FORBIDDEN, "no\n")  # type: ignore[attr-defined]
        return None

    async def main() -> None:
        router = fastrpc.Router()
        router.add("one", lambda: 1)
        async with fastrpc.serve(router, static=tmp_path, process_request=process_request, **QUIET) as server:
            status, _, body = await asyncio.to_thread(_get, server.url, "/")
            assert (status, body) == (200, b"hi") and calls == []
            with pytest.raises(Exception, match="HTTP 403"):
                await fastrpc.connect(server.url, **QUIET, **NO_PROXY)
            async with fastrpc.connect(server.url, additional_headers={"X-Token": "ok"}, **QUIET, **NO_PROXY) as peer:
                assert await peer.call("one") == 1
            assert calls == ["/", "/"]

    run(main())


def test_serve_workers() -> None:
    # `fastrpc serve --workers 2`: two worker processes on one port (fastrpc.workers);
    # calls reach them; SIGTERM drains them and the supervisor exits 0.
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "fastrpc", "serve", "_cli_app:router", "--workers", "2", "--port", "0"],
        cwd=str(HERE),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = read_line(proc, time.monotonic() + TIMEOUT)
        m = re.search(r"2 workers on 127\.0\.0\.1:(\d+)", line)
        assert m, line
        url = f"ws://127.0.0.1:{m.group(1)}"
        deadline = time.monotonic() + TIMEOUT
        while True:  # the workers start after the supervisor's line
            done = cli("call", url, "add", "1", "2")
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert done.returncode == 0 and done.stdout.strip() == "3", done
        refused = cli("serve", "_cli_app:router", "--workers", "2", "--static", str(HERE))
        assert refused.returncode == 2 and "--static cannot be used with --workers" in refused.stderr
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0


def test_busy_poll_reaches_the_server_and_the_clients() -> None:
    from fastrpc.cli import _parser
    from fastrpc.cli.commands import _client_options

    args = _parser().parse_args(["ping", "ws://127.0.0.1:1", "--busy-poll", "50e-6"])
    assert _client_options(args)["busy_poll"] == 50e-6
    args = _parser().parse_args(["call", "ws://127.0.0.1:1", "add", "1"])
    assert _client_options(args)["busy_poll"] is None  # off unless asked for
    assert _parser().parse_args(["serve", "m:a", "--busy-poll", "0.001"]).busy_poll == 0.001
    *refused, workers = cli_each(
        *(("ping", "ws://127.0.0.1:9", "--busy-poll", bad) for bad in ("-1", "2", "nan", "fast")),
        ("serve", "_cli_app:router", "--workers", "2", "--busy-poll", "0.001"),
        cwd=str(HERE),
    )
    for proc in refused:
        assert proc.returncode == 2 and "--busy-poll" in proc.stderr, proc.stderr
    proc = workers
    assert proc.returncode == 2 and "--busy-poll cannot be used with --workers" in proc.stderr, proc.stderr

    with serving("_cli_app:router", "--busy-poll", "50e-6") as (url, _):
        proc = cli("call", url, "add", "1", "2", "--busy-poll", "50e-6")
        assert (proc.returncode, proc.stdout) == (0, "3\n"), proc.stderr
        proc = cli("ping", url, "-c", "2", "-i", "0", "--busy-poll", "50e-6")
        assert proc.returncode == 0 and len(re.findall(r"^pong from ", proc.stdout, re.M)) == 2, proc.stderr


def _serve_here(router: fastrpc.Router, check: Callable[[str], None], **options: Any) -> None:
    """Serve ``router`` in this process (127.0.0.1, a free port) while ``check(url)``
    runs the command line in child processes (in a thread: this loop serves)."""
    import asyncio

    from _util import QUIET, run

    async def main() -> None:
        async with fastrpc.serve(router, "127.0.0.1", 0, **QUIET, **options) as server:
            await asyncio.to_thread(check, server.url)

    run(main(), timeout=100)


@pytest.mark.timeout(120)
def test_a_refused_connection_is_one_error_line_and_header_sends_credentials() -> None:
    # A server's authenticate hook refuses: each client command says so in one
    # `error:` line (exit 1), not a traceback; --header/-H sends the credentials.
    router = fastrpc.Router()
    router.add("add", lambda a, b: a + b)
    seen: list[Mapping[str, str]] = []

    def authenticate(request: fastrpc.HandshakeRequest) -> str:
        seen.append(request.headers)  # case-insensitive
        if request.headers.get("Authorization") != "Bearer s3cret":
            raise fastrpc.Unauthorized("unknown token")
        return "user"

    def check(url: str) -> None:
        refused = "error: the server refused the connection: HTTP 401: unknown token\n"
        calls = (
            ("call", url, "add", "1", "2"),
            ("ping", url, "-c", "1"),
            ("stream", url, "add"),
            ("notify", url, "add"),
            ("methods", url),
            ("call", url, "add", "1", "2", "-H", "Authorization: Bearer wrong"),
        )
        for args, proc in zip(calls, cli_each(*calls)):
            assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", refused), args
        proc = cli("call", url, "add", "1", "2", "--header", "Authorization:Bearer s3cret", "-H", "X-Trace: a b")
        assert (proc.returncode, proc.stdout) == (0, "3\n"), proc.stderr
        assert seen[-1]["Authorization"] == "Bearer s3cret" and seen[-1]["X-Trace"] == "a b"
        proc = cli("ping", url, "-c", "1", "-H", "Authorization: Bearer s3cret")
        assert proc.returncode == 0 and proc.stdout.startswith("pong from "), proc.stderr
        proc = cli("call", url, "add", "1", "2", "-H", "Authorization: Bearer s3cret", "--busy-poll", "50e-6")
        assert (proc.returncode, proc.stderr) == (1, "error: --busy-poll cannot be used with --header (yet)\n")
        for proc in cli_each(
            *(("call", url, "add", "-H", bad) for bad in ("Authorization Bearer x", "Bad Name: x", ": x"))
        ):
            assert proc.returncode == 2 and "argument -H/--header: expected NAME:VALUE" in proc.stderr, proc.stderr

    _serve_here(router, check, authenticate=authenticate)


def test_run_reports_fastrpc_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from fastrpc.cli.commands import _run

    async def fail(exc: BaseException) -> None:
        raise exc

    for exc, line in (
        (fastrpc.Forbidden("not you"), "error: the server refused the connection: HTTP 403: not you"),
        (fastrpc.CallTimeout("no PONG within 1 s"), "error: no answer within --timeout"),
        (
            fastrpc.HandshakeTimeout("x sent no fastrpc handshake"),
            "error: HandshakeTimeout: x sent no fastrpc handshake",
        ),
        (fastrpc.ProtocolError("bad frame"), "error: ProtocolError: bad frame"),
    ):
        assert _run(fail(exc)) == 1, exc
        assert capsys.readouterr() == ("", line + "\n"), exc


@pytest.mark.timeout(120)
def test_stream_timeout_bounds_the_wait_for_each_item() -> None:
    # `fastrpc stream --timeout S`: S bounds the wait for the first item and for each
    # next one (a stream that goes quiet fails in one `error:` line naming --timeout),
    # not the whole stream (one that keeps sending may last longer than S).
    import asyncio

    router = fastrpc.Router()

    @router.method
    async def stall(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        await asyncio.sleep(3600)

    @router.method
    async def drip(n: int, gap: float) -> AsyncIterator[int]:
        for i in range(n):
            if i:
                await asyncio.sleep(gap)
            yield i

    def timed(args: tuple[tuple[str, ...], float]) -> tuple[subprocess.CompletedProcess[str], float]:
        start = time.monotonic()
        proc = cli(*args[0], timeout=args[1])
        return proc, time.monotonic() - start

    def check(url: str) -> None:
        # The three at once: each waits on its own.
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            (proc, took), (stalled, _), (drip, drip_took) = pool.map(
                timed,
                [
                    (("stream", url, "stall", "0", "--timeout", "1"), 15),
                    (("stream", url, "stall", "2", "--timeout", "0.5"), 15),
                    (("stream", url, "drip", "8", "0.3", "--timeout", "1.5"), 30),
                ],
            )
        assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
        assert proc.stderr == "error: the stream sent no item within --timeout (1 s)\n"
        assert 1 <= took < 14
        proc = stalled
        assert (proc.returncode, proc.stdout) == (1, "0\n1\n"), proc.stderr
        assert proc.stderr == "error: the stream sent no further item after 2 within --timeout (0.5 s)\n"
        proc = drip
        assert (proc.returncode, proc.stdout) == (0, "".join(f"{i}\n" for i in range(8))), proc.stderr
        assert drip_took > 2.1  # longer than --timeout in all

    _serve_here(router, check)
    from fastrpc.cli import _parser

    assert _parser().parse_args(["stream", "ws://127.0.0.1:1", "m"]).timeout is None  # a live feed: no limit
    assert "seconds to wait for each item" in cli("stream", "--help").stdout


def test_serve_port_must_be_0_to_65535() -> None:
    from fastrpc.cli import _parser

    for port in ("0", "65535", "8765"):
        assert _parser().parse_args(["serve", "m:a", "--port", port]).port == int(port)
    bad_ports = ("70000", "65536", "-1", "http")
    for proc in cli_each(
        *(("serve", "_cli_app:router", "--port", bad) for bad in bad_ports), cwd=str(HERE), timeout=15
    ):
        # Before: 70000 served on 70000 % 65536 under uvloop (an OverflowError under asyncio).
        assert proc.returncode == 2 and "argument --port: " in proc.stderr, proc.stderr
        assert "not a port" in proc.stderr, proc.stderr


def test_bad_numbers_are_refused_naming_the_option() -> None:
    # Before: --timeout nan and --interval nan passed argparse and crashed with a
    # traceback (ValueError from the event loop); --interval -1, --workers -3 and
    # --grace nan / -5 were taken silently (-3 workers served as 1).
    bad = [
        ("call", "ws://127.0.0.1:9", "add", "--timeout", "nan"),
        ("stream", "ws://127.0.0.1:9", "ticks", "--timeout", "nan"),
        ("ping", "ws://127.0.0.1:9", "--timeout", "nan"),
        ("ping", "ws://127.0.0.1:9", "--interval", "nan"),
        ("ping", "ws://127.0.0.1:9", "--interval", "-1"),
        ("ping", "ws://127.0.0.1:9", "--interval", "inf"),
        ("serve", "_cli_app:router", "--port", "0", "--workers", "-3"),
        ("serve", "_cli_app:router", "--port", "0", "--workers", "1", "--grace", "nan"),
        ("serve", "_cli_app:router", "--port", "0", "--workers", "1", "--grace", "-5"),
    ]
    for args, proc in zip(bad, cli_each(*bad, cwd=str(HERE), timeout=15)):
        option = [a for a in args if a.startswith("--")][-1]  # the bad one comes last
        assert proc.returncode == 2, (args, proc.returncode, proc.stdout, proc.stderr)
        assert re.search(rf"argument (-\w/)?{option}: ", proc.stderr), (args, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)


def test_serve_workers_errors_are_one_line() -> None:
    # Before: with --workers, a target that does not import, a missing attribute
    # or a port in use ended in a traceback (as without --workers: one line, status 1).
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        no_module, missing, in_use = cli_each(
            ("serve", "_no_such_module:router", "--workers", "2", "--port", "0"),
            ("serve", "_cli_app:missing", "--workers", "2", "--port", "0"),
            ("serve", "_cli_app:router", "--workers", "1", "--port", port),
            cwd=str(HERE),
            timeout=15,
        )
    assert no_module.returncode == 1 and "cannot import module '_no_such_module'" in no_module.stderr, no_module
    assert missing.returncode == 1 and "has no attribute 'missing'" in missing.stderr, missing
    assert in_use.returncode == 1 and f"cannot serve on 127.0.0.1 port {port}" in in_use.stderr, in_use
    for proc in (no_module, missing, in_use):
        assert "Traceback" not in proc.stderr, proc.stderr
