"""Trust review of the surface around the core: static files (fastrpc.static), the
command line (fastrpc.cli: TLS with --workers, ``methods`` against a hostile server,
the number arguments) and the worker processes' own parser (fastrpc.workers).
Real servers and processes on 127.0.0.1; every test bounds its own time."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _util import QUIET, child_env, frames_server, read_line, run, until, uvicorn_send_waits
from websockets.asyncio.server import serve as ws_serve

import fastrpc
from fastrpc import frames as F
from fastrpc.protocol import Settings

HERE = Path(__file__).resolve().parent


def _http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """``GET path`` on a fresh socket: (status, headers, body as announced)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        # Nothing past the announced length (the connection closes after the answer).
        s.settimeout(2)
        rest = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            rest += chunk
        assert len(body) + len(rest) == length, (len(body), len(rest), length)
        return status, headers, body


def _serve_static(directory: Path, check: Callable[[int], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        server = await fastrpc.serve(
            fastrpc.Router(), "127.0.0.1", 0, static=directory, close_timeout=1, **QUIET, **options
        ).start()
        try:
            await check(server.port)
        finally:
            await asyncio.wait_for(server.close(), 5)

    run(main(), 10)


def test_static_file_that_grows_past_max_file_size_while_read_is_refused_not_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The size was checked before the read, which then read at most max_file_size
    # bytes: a file that grew past it meanwhile was served cut at max_file_size with
    # 200 OK (silently lost data). Its size is now taken from the open file, and a
    # file found larger while read is refused (403), as one larger from the start.
    big = tmp_path / "grows.txt"
    big.write_bytes(b"a" * 1000)
    real = asyncio.to_thread

    async def grow_first(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        with open(big, "ab") as f:
            f.write(b"b" * 1000)  # 2,000 bytes now: past max_file_size
        return await real(func, *args, **kwargs)

    async def check(port: int) -> None:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(asyncio, "to_thread", grow_first)
        try:
            status, _, body = await loop.run_in_executor(None, _http_get, port, "/grows.txt")
        finally:
            monkeypatch.setattr(asyncio, "to_thread", real)
        assert status == 403 and b"max_file_size (1500 bytes)" in body, (status, body[:100])
        # A file within the limit: whole, its Content-Length what is sent.
        big.write_bytes(b"c" * 1400)
        status, headers, body = await loop.run_in_executor(None, _http_get, port, "/grows.txt")
        assert (status, headers["content-length"], body) == (200, "1400", b"c" * 1400)

    async def main() -> None:
        from fastrpc.server import Server

        server = await fastrpc.serve(
            fastrpc.Router(), "127.0.0.1", 0, static=tmp_path, close_timeout=1, **QUIET
        ).start()
        assert isinstance(server, Server) and server.static is not None
        server.static.max_file_size = 1500
        try:
            await check(server.port)
        finally:
            await asyncio.wait_for(server.close(), 5)

    run(main(), 10)


@pytest.mark.parametrize("swap", ["file", "directory"])
def test_static_symbolic_link_swapped_in_after_the_check_does_not_leave_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    # resolve() checks that the real path stays under the directory; the file was
    # then opened by that name, so a symbolic link put in its place (or in place of a
    # directory on its way) between the check and the open was followed out of the
    # directory. The open now follows no link on the way (404 instead).
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_text("secret\n")
    (outside / "sub" / "page.txt").write_text("secret page\n")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "page.txt").write_text("page\n")
    (root / "sub" / "page.txt").write_text("sub page\n")
    (root / "link.txt").symlink_to(root / "page.txt")  # a link inside: still served
    from fastrpc.static import StaticFiles

    check_path = StaticFiles.resolve

    def racing_resolve(self: StaticFiles, path: str) -> str | None:
        found = check_path(self, path)
        if path == "/page.txt" and swap == "file":
            (root / "page.txt").unlink()
            (root / "page.txt").symlink_to(outside / "secret.txt")
        elif path == "/sub/page.txt" and swap == "directory":
            (root / "sub").rename(root / "sub.old")
            (root / "sub").symlink_to(outside / "sub")
        return found

    async def check(port: int) -> None:
        loop = asyncio.get_running_loop()
        status, _, body = await loop.run_in_executor(None, _http_get, port, "/link.txt")
        assert (status, body) == (200, b"page\n")
        monkeypatch.setattr(StaticFiles, "resolve", racing_resolve)
        path = "/page.txt" if swap == "file" else "/sub/page.txt"
        status, _, body = await loop.run_in_executor(None, _http_get, port, path)
        assert status == 404 and b"secret" not in body, (status, body)

    _serve_static(root, check)


# ------------------------------------------------------------------ the command line


def _make_cert(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate can be made for the TLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "1", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return proc.communicate(timeout=5)


@pytest.mark.timeout(30)
def test_serve_with_workers_serves_tls_from_every_worker(tmp_path: Path) -> None:
    # Before: --ssl-cert with --workers was refused ("cannot be used ... (yet)") and
    # --ssl-key alone was ignored: the workers served plain ws://. The certificate
    # now reaches every worker (loaded once by the supervisor first: a bad one is one
    # error line), and --ssl-key without --ssl-cert is refused as without --workers.
    cert, key = _make_cert(tmp_path)
    cmd = [sys.executable, "-W", "error", "-m", "fastrpc", "serve", "_surface_app:router", "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", "--ssl-cert", str(cert), "--ssl-key", str(key)],
        cwd=str(HERE),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_line(proc, time.monotonic() + 15)
        m = re.search(r"2 workers on 127\.0\.0\.1:(\d+)", line)
        assert m and "wss://" in line, line
        url = f"wss://127.0.0.1:{m.group(1)}"
        import ssl

        context = ssl.create_default_context(cafile=str(cert))

        async def calls() -> set[int]:
            pids: set[int] = set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while len(pids) < 2 and loop.time() < deadline:
                try:
                    async with fastrpc.connect(url, ssl=context, **QUIET) as peer:
                        assert await peer.call("add", 1, 2) == 3
                        pids.add(await peer.call("pid"))
                except OSError:
                    await asyncio.sleep(0.1)  # the workers start after the supervisor's line
            return pids

        assert len(run(calls(), 20)) == 2  # both workers speak TLS
    finally:
        out, err = _stop(proc)
    assert proc.returncode == 0, (out, err)

    bad = [
        [*cmd, "--workers", "1", "--ssl-key", str(key)],
        [*cmd, "--workers", "1", "--ssl-cert", str(tmp_path / "missing.pem")],
    ]
    procs = [
        subprocess.Popen(
            args, cwd=str(HERE), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in bad
    ]
    results = []
    for p in procs:
        try:
            results.append(p.communicate(timeout=8))
        except subprocess.TimeoutExpired:
            _stop(p)
            pytest.fail(f"{p.args} served instead of refusing")
    (_, no_cert), (_, missing) = results
    assert procs[0].returncode == 1 and "--ssl-key needs --ssl-cert" in no_cert, no_cert
    assert procs[1].returncode == 1 and "cannot load the certificate" in missing, missing
    assert "Traceback" not in no_cert + missing


# What a hostile server answers to fastrpc.methods, by the path of the URL.
HOSTILE_METHODS: dict[str, Any] = {
    "/dict": {"name": "x"},
    "/number": 42,
    "/items": [1, "two", None],
    "/missing": [{"name": "x"}],
    "/types": [{"name": 1, "signature": ["("], "kind": {}, "doc": 7}],
    "/escape": [{"name": "evil\x1b]0;pwned\x07\x1b[2J", "signature": "()", "kind": "call", "doc": "a\x1b[31mred"}],
}


def _cli_in_thread(argv: list[str]) -> tuple[int, float]:
    """``fastrpc ARGV`` in this process (in a thread: its own event loop); its exit
    status and how long it took."""
    from fastrpc.cli import main

    t0 = time.monotonic()
    return main(argv), time.monotonic() - t0


def test_methods_against_a_hostile_server_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    # `fastrpc methods` printed what the server answered as it expected it to be: an
    # answer of another shape ended in a traceback (TypeError, KeyError), and control
    # characters went to the terminal as they came (escape sequences). Now: one line,
    # status 1, and names and docstrings printed with control characters escaped.
    async def on_frame(ws: Any, f: F.Frame) -> None:
        if f.type == F.REQUEST:
            path = ws.request.path
            if path == "/silent":
                return
            if path == "/huge":  # past the client's max_message_size
                payload = msgspec.msgpack.encode(["x" * (5 << 20)])
            else:
                payload = msgspec.msgpack.encode(HOSTILE_METHODS[path])
            await ws.send(F.encode_frame(F.RESPONSE, 0, f.id, payload))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with ws_serve(frames_server(Settings(), on_frame), "127.0.0.1", 0, max_size=None) as srv:
            base = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
            for path in [*HOSTILE_METHODS, "/huge", "/silent"]:
                status, took = await loop.run_in_executor(
                    None, _cli_in_thread, ["methods", base + path, "--timeout", "0.5"]
                )
                out, err = capsys.readouterr()
                assert status == 1 or path == "/escape", (path, status, out, err)
                assert took < 5, (path, took)
                if path == "/escape":
                    assert status == 0 and "\x1b" not in out and "\x07" not in out, repr(out)
                    assert "evil\\x1b]0;pwned\\x07\\x1b[2J()  [call]" in out, repr(out)
                    continue
                assert err.startswith("error: ") and err.count("\n") == 1, (path, err)
                assert "Traceback" not in err, (path, err)
                if path == "/silent":
                    assert "no answer within --timeout" in err, err
                elif path != "/huge":
                    assert "fastrpc.methods" in err, (path, err)

    run(main(), 30)


def test_methods_against_a_server_that_never_answers_the_upgrade_is_bounded_by_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A server that accepts the TCP connection and says nothing: the command waited
    # for handshake_timeout (10 s) whatever --timeout said. --timeout now bounds the
    # opening handshake too.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result: list[tuple[int, float]] = []
        t = threading.Thread(
            target=lambda: result.append(_cli_in_thread(["methods", f"ws://127.0.0.1:{port}", "--timeout", "0.5"]))
        )
        t.start()
        t.join(15)
        assert result, "fastrpc methods did not end"
    status, took = result[0]
    out, err = capsys.readouterr()
    assert status == 1 and took < 3, (status, took, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "0.5 s" in err, err


# ------------------------------------------------------------------ number arguments


def test_whole_number_arguments_are_refused_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    # One parser for every whole-number option (cli._int): a value that is not a
    # whole number, or out of range, is refused naming the option and the range.
    # Before: `--limit x` said "invalid _positive_int value", and the worker
    # processes' own parser (python -m fastrpc.workers) took --workers 0, --port 70000
    # and --grace nan, and failed later with a traceback.
    from fastrpc import workers
    from fastrpc.cli import _parser

    cases = [
        (["stream", "ws://h:1", "m", "--limit", "x"], "argument --limit: not a whole number: 'x'"),
        (
            ["stream", "ws://h:1", "m", "--limit", "0"],
            "argument --limit: 0 is not a whole number (it must be positive)",
        ),
        (["ping", "ws://h:1", "-c", "1.5"], "argument -c/--count: not a whole number: '1.5'"),
        (["serve", "m:a", "--workers", "-3"], "argument --workers: -3 is not a whole number of 0 or more"),
        (["serve", "m:a", "--port", "http"], "argument --port: not a port number: 'http'"),
        (["serve", "m:a", "--port", "70000"], "argument --port: 70000 is not a port number from 0 to 65535"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            _parser().parse_args(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err, (argv, err)
    assert _parser().parse_args(["demo", "--items", "1_000"]).items == 1000
    assert _parser().parse_args(["demo", "--items", "1,000"]).items == 1000

    for argv, message in (
        (["m:a", "--workers", "0"], "argument --workers: 0 is not a whole number (it must be positive)"),
        (["m:a", "--port", "70000"], "argument --port: 70000 is not a port number from 0 to 65535"),
        (["m:a", "--grace", "nan"], "argument --grace: must be a number, not NaN"),
    ):
        with pytest.raises(SystemExit) as info:
            workers.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err, (argv, err)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    yield


# ------------------------------------------------------------------ ASGI


@pytest.mark.external
def test_asgi_client_that_does_not_read_is_closed_1008_naming_the_option_as_under_serve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Checked, not a bug: a binary client that stops reading, served through
    # fastrpc.asgi under uvicorn (whose send waits for its socket), is closed as
    # `serve` closes it: 1008 with a reason naming output_stall_timeout, the close
    # frame queued after what waits for it (it sees the close once it reads within
    # the close's patience; a client that never reads sees no close under either).
    uvicorn = pytest.importorskip("uvicorn")
    if not uvicorn_send_waits():
        pytest.skip("this uvicorn's send never waits for a client that does not read (docs/json-mode.md)")
    from _hostile import Attacker, request

    import fastrpc.asgi

    router = fastrpc.Router()

    @router.method
    def echo(blob: bytes) -> bytes:
        return blob

    rpc = fastrpc.asgi.app(router, keepalive_interval=None, output_stall_timeout=0.5)
    blob = bytes(256 << 10)

    async def main() -> None:
        config = uvicorn.Config(
            rpc, host="127.0.0.1", port=0, log_level="critical", lifespan="on", ws="websockets-sansio",
            ws_ping_interval=None,
        )  # fmt: skip
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve())
        a: Attacker | None = None
        try:
            await until(lambda: server.started or task.done(), 10, "uvicorn to start")
            port = server.servers[0].sockets[0].getsockname()[1]
            a = await Attacker.open(f"ws://127.0.0.1:{port}/", reading=False)
            cid = 1

            def stalled() -> bool:
                return any("output_stall_timeout" in r.getMessage() for r in caplog.records)

            # Echo calls until the server stops reading us (once it closes, it reads
            # and drops what we send, at transport.DROP_RATE: stop then).
            while a.sent < 64 and not stalled():
                msg = b"".join(request(cid + 2 * i, "echo", blob, 0x40) for i in range(12))
                cid += 24
                if not await a.send(msg, timeout=1):
                    break
            await until(stalled, 5, "the close for not reading")
            outcome = await a.outcome(5)  # read now: what waited, then the close frame
            # (The reason is cut to 120 characters, as under serve.)
            assert outcome.code == 1008 and "(output_stall_" in outcome.reason, outcome
        finally:
            if a is not None:
                await a.abort()
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    run(main(), 20)
