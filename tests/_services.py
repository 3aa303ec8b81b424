"""Real redis-server and nginx for the tests that need them, started in temporary
folders on loopback (or a unix socket) and stopped by pid."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def need(binary: str, package: str) -> None:
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not installed (apt-get install {package}; .ci/run installs it)")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_RNG = random.Random()


def free_port() -> int:
    """A free loopback port outside the ephemeral range: a server started on it a
    moment later cannot find it taken by some client's outgoing connection (the
    ephemeral range is where those come from)."""
    low, high = _ephemeral_range()
    ranges = [(1024 + 1, low - 1), (high + 1, 65535)]
    for _ in range(500):
        lo, hi = _RNG.choice([r for r in ranges if r[1] - r[0] > 100] or [(1025, 65535)])
        port = _RNG.randint(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port outside the ephemeral range")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop ``proc`` by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class _Process:
    """A server process of a test, in a temporary folder of its own: ``stop`` ends it
    by its pid, ``close`` also removes the folder."""

    dir: str | Path
    proc: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis(_Process):
    """A redis-server without persistence (a restart loses every key, as an
    ephemeral cache would) on a loopback port of its own."""

    def __init__(self) -> None:
        need(REDIS_SERVER, "redis-server")
        self.dir = tempfile.mkdtemp(prefix="fastrpc-redis-")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", self.dir, "--logfile", str(Path(self.dir) / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self


def free_ports(n: int) -> int:
    """A base port such that base .. base + n - 1 are all free on loopback."""
    for _ in range(200):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


DOCS = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"


def documented_nginx_config() -> str:
    """The nginx block of docs/deployment.md (the configuration the docs promise)."""
    text = DOCS.read_text()
    start = text.index("```nginx\n") + len("```nginx\n")
    return text[start : text.index("```", start)]


class Nginx(_Process):
    """nginx running ``http_block`` (the docs' configuration with its ports replaced)
    in a temporary prefix, in the foreground, stopped by pid."""

    def __init__(self, http_block: str, listen: int) -> None:
        need(NGINX, "nginx")
        self.dir = Path(tempfile.mkdtemp(prefix="fastrpc-nginx-"))
        self.listen = listen
        d = self.dir
        temp = " ".join(f"{k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (d / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
            f"events {{ worker_connections 4096; }}\n"
            f"http {{\naccess_log off;\n{temp}\n{http_block}\n}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        args = [NGINX, "-e", str(self.dir / "error.log"), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.listen)
        except TimeoutError:
            stop(self.proc)
            raise RuntimeError(f"nginx did not start: {(self.dir / 'error.log').read_text()}") from None
        return self


TESTS = Path(__file__).resolve().parent


class Workers:
    """``python -m fastrpc.workers _topics_app:router --workers N ...`` (the
    supervisor), stopped with SIGTERM (a drain) by its pid."""

    def __init__(self, n: int, port: int, broker: str | None, *extra: str) -> None:
        self.n = n
        self.port = port
        args = [sys.executable, "-m", "fastrpc.workers", "_topics_app:router", "--workers", str(n)]
        args += ["--port", str(port), "--grace", "3", *extra]
        if broker:
            args += ["--broker", broker]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  # a file, not a pipe nobody reads; closed by close()
        self.proc = subprocess.Popen(args, cwd=TESTS, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, ports: list[int]) -> None:
        for p in ports:
            wait_port(p, 20)

    def close(self) -> int | None:
        stop(self.proc, 15)
        self.log.close()
        return self.proc.returncode

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")
