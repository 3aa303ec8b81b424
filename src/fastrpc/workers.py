"""Worker processes: one fastrpc application served by N processes on one port.

    python -m fastrpc.workers myapp:router --workers 4 --port 8765 --broker redis://127.0.0.1:6379/0

:func:`run_workers` (what the ``serve`` command calls) starts N worker processes and
supervises them: a worker that dies is started again (after
``WORKER_RESTART_DELAY`` seconds, doubling while it keeps dying within a second, up to
``WORKER_RESTART_MAX_DELAY``), and
SIGTERM or SIGINT drains them all (:func:`drain`: stop accepting, let in-flight calls
finish within ``grace`` seconds, then GOAWAY and close).

How N processes share a port: with ``SO_REUSEPORT`` (Linux, the BSDs, macOS) every
worker binds the port itself and the kernel spreads new connections over them. Where
the platform has no ``SO_REUSEPORT`` (Windows), the supervisor binds one listening
socket and the workers inherit it (POSIX only; on Windows run one worker per port
with ``distinct_ports`` behind a proxy). ``distinct_ports``: worker ``i`` listens on
``port + i`` instead, for a proxy that routes each client to its own worker (nginx
``hash ... consistent``, docs/deployment.md).

TLS: ``ssl_cert``/``ssl_key`` (``fastrpc serve --workers N --ssl-cert PEM --ssl-key
PEM``) are loaded once by the supervisor (a bad certificate fails there, once) and
then by every worker, which serves ``wss://``.

Topics reach every worker through the broker (``--broker redis://...``,
:class:`fastrpc.redis_broker.RedisBroker`); without one each worker has its own
in-memory topics. Resumable sessions stay in the worker that holds them: a client
that reconnects to another worker gets :class:`fastrpc.ResumeFailed` for its in-flight
calls and streams, while its subscriptions resubscribe from their position and
recover from the broker's history (docs/deployment.md, "Sessions and workers").
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

from . import options as O
from .server import Server, serve

__all__ = ["drain", "load_target", "main", "run_workers", "serve_worker", "server_ssl"]

logger = logging.getLogger("fastrpc.workers")

HAS_REUSEPORT = hasattr(socket, "SO_REUSEPORT")


def load_target(spec: str) -> Any:
    """``"module:attr"`` -> the object (a :class:`fastrpc.Router` or an async
    ``handler(peer)``); the current directory is importable."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"expected MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


async def drain(server: Server, grace: float = O.WORKER_GRACE) -> None:
    """Shut ``server`` down gently: stop accepting, wait up to ``grace`` seconds for
    the calls running on its connections to finish (topic subscriptions do not count:
    they resume elsewhere), then close every connection (GOAWAY, close 1001)."""
    server.stop_accepting()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline:
        busy = [
            p for p in server.peers if len(p.stats()["peer.tasks"]) > server.topics.subscriptions_of(p) and not p.closed
        ]
        if not busy:
            break
        await asyncio.sleep(0.02)
    await server.close()


async def serve_worker(
    target: Any,
    host: str | None,
    port: int | None,
    *,
    broker_url: str | None = None,
    grace: float = O.WORKER_GRACE,
    reuse_port: bool = False,
    sock: socket.socket | None = None,
    options: dict[str, Any] | None = None,
    parent: int | None = None,
) -> None:
    """Serve ``target`` in this process until SIGTERM/SIGINT, then :func:`drain`.

    ``parent``: the supervisor's pid (a worker of :func:`run_workers`); when that
    process is gone (killed with SIGKILL, it could not drain its workers), this
    worker drains too, within ``WORKER_PARENT_CHECK`` seconds, instead of serving
    on as an orphan that nothing restarts or stops."""
    broker = None
    if broker_url:
        from .redis_broker import RedisBroker  # the redis package is an extra

        broker = RedisBroker(broker_url)
    kw: dict[str, Any] = dict(options or {})
    if sock is not None:
        kw["sock"] = sock
        host, port = None, None
    elif reuse_port:
        kw["reuse_port"] = True
    server = serve(target, host, port, broker=broker, **kw)  # type: ignore[arg-type]
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fastrpc worker {os.getpid()} serving on port {server.port}", flush=True)
    watch = loop.create_task(_watch_parent(parent, stop)) if parent is not None else None
    try:
        await stop.wait()
    finally:
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
    await drain(server, grace)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Set ``stop`` once this process's parent is no longer ``parent`` (it died: the
    orphan was adopted by init or a subreaper)."""
    while os.getppid() == parent:
        await asyncio.sleep(O.WORKER_PARENT_CHECK)
    logger.warning("the supervisor (pid %d) is gone: draining worker %d", parent, os.getpid())
    stop.set()


def restart_delay(previous: float, lived: float) -> float:
    """Seconds before a worker that died after ``lived`` seconds is started again,
    ``previous`` being the delay before its last start: ``WORKER_RESTART_DELAY``, doubled
    while it keeps dying within a second, up to ``WORKER_RESTART_MAX_DELAY`` (a port
    taken for ten minutes must not put the next try ten minutes away)."""
    if lived >= 1.0:
        return O.WORKER_RESTART_DELAY
    return min(previous * 2, O.WORKER_RESTART_MAX_DELAY)


def server_ssl(cert: str | None, key: str | None = None) -> ssl.SSLContext | None:
    """The TLS context of a server with certificate (chain) ``cert`` and private key
    ``key`` (None: in ``cert``); None without ``cert``. Raises ValueError for a key
    without a certificate, OSError or ssl.SSLError for files that do not load."""
    if cert is None:
        if key is not None:
            raise ValueError("a private key (--ssl-key) needs its certificate (--ssl-cert)")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _reserve(host: str, port: int) -> socket.socket:
    """With SO_REUSEPORT: bind (not listen) so that port 0 becomes one port for all."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
    except BaseException:
        s.close()  # (a port in use: not left to the garbage collector)
        raise
    return s


def run_workers(
    target: str,
    *,
    workers: int = 1,
    host: str = "127.0.0.1",
    port: int = 8765,
    broker: str | None = None,
    grace: float = O.WORKER_GRACE,
    distinct_ports: bool = False,
    resume: bool = True,
    ssl_cert: str | None = None,
    ssl_key: str | None = None,
) -> int:
    """Serve ``target`` (``"module:attr"``) with ``workers`` processes on ``host:port``
    (or ``port + i`` each with ``distinct_ports``); supervise them until SIGTERM or
    SIGINT, then drain them. Returns the exit status (0: drained cleanly).

    ``ssl_cert``, ``ssl_key``: every worker serves ``wss://`` with this certificate
    (chain) and private key (None: in ``ssl_cert``); see :func:`server_ssl` for what a
    bad pair raises, here, before any worker starts."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    load_target(target)  # fail here, not N times in the workers
    # The same for the certificate (and before: --ssl-key alone was dropped silently).
    tls = server_ssl(ssl_cert, ssl_key) is not None
    listener: socket.socket | None = None
    mode: list[str]
    if distinct_ports:
        mode = ["--distinct-ports"]
    elif HAS_REUSEPORT:
        listener = _reserve(host, port)
        port = listener.getsockname()[1]
        mode = ["--reuse-port"]
    else:
        listener = socket.create_server((host, port))
        listener.set_inheritable(True)
        port = listener.getsockname()[1]
        mode = ["--fd", str(listener.fileno())]
    base = [sys.executable, "-m", "fastrpc.workers", target, "--host", host, "--grace", str(grace), *mode]
    base += ["--parent", str(os.getpid())]
    if broker:
        base += ["--broker", broker]
    if not resume:
        base += ["--no-resume"]
    if ssl_cert is not None:
        # Absolute: a worker started again later still finds the files.
        base += ["--ssl-cert", os.path.abspath(ssl_cert)]
        if ssl_key is not None:
            base += ["--ssl-key", os.path.abspath(ssl_key)]
    pass_fds = (listener.fileno(),) if listener is not None and not HAS_REUSEPORT else ()

    def start(i: int) -> subprocess.Popen[bytes]:
        p = port + i if distinct_ports else port
        return subprocess.Popen([*base, "--port", str(p), "--child"], pass_fds=pass_fds)

    procs = {i: start(i) for i in range(workers)}
    started = dict.fromkeys(procs, time.monotonic())
    delays = dict.fromkeys(procs, O.WORKER_RESTART_DELAY)
    due: dict[int, float] = {}
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    scheme = "wss" if tls else "ws"
    print(f"fastrpc: {workers} workers on {host}:{port}{' + i' if distinct_ports else ''} ({scheme}://)", flush=True)
    try:
        while not stopping:
            time.sleep(0.05)
            now = time.monotonic()
            for i, proc in list(procs.items()):
                if proc.poll() is None or i in due:
                    continue
                # A worker died: start it again, later if it keeps dying at once.
                delays[i] = restart_delay(delays[i], now - started[i])
                due[i] = now + delays[i]
                logger.warning(
                    "worker %d (pid %d) exited with %s; restarting in %.1f s",
                    i,
                    proc.pid,
                    proc.returncode,
                    delays[i],
                )
            for i, when in list(due.items()):
                if now >= when and not stopping:
                    del due[i]
                    procs[i] = start(i)
                    started[i] = now
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        status = 0
        # A worker's drain: its grace, then closing its connections (GOAWAY, up to 2 s
        # for its writer, the close handshake up to close_timeout), then a margin.
        deadline = time.monotonic() + grace + 2.0 + O.CLOSE_TIMEOUT + 5.0
        for proc in procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                status = 1
        return status
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if listener is not None:
            listener.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m fastrpc.workers MODULE:ATTR --workers N [--broker URL] ...``"""
    # The command line's argument types: numbers refused as `fastrpc serve` refuses them.
    from .cli import _int, _port, _seconds

    ap = argparse.ArgumentParser(prog="python -m fastrpc.workers", description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="MODULE:ATTR, a fastrpc.Router or an async handler(peer)")
    ap.add_argument(
        "--workers", type=functools.partial(_int, minimum=1), default=1, help="worker processes (default 1)"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=_port, default=8765)
    ap.add_argument("--broker", default=None, help="redis://host:port/db: topics shared by the workers")
    ap.add_argument("--grace", type=_seconds, default=O.WORKER_GRACE, help="seconds in-flight calls get on SIGTERM")
    ap.add_argument("--ssl-cert", metavar="PEM", help="serve wss:// with this certificate (chain)")
    ap.add_argument("--ssl-key", metavar="PEM", help="the certificate's private key (if not in --ssl-cert)")
    ap.add_argument("--distinct-ports", action="store_true", help="worker i listens on port + i (for a proxy)")
    ap.add_argument("--no-resume", action="store_true", help="do not keep sessions for clients that reconnect")
    # Internal: how the supervisor starts each worker.
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=functools.partial(_int, minimum=0), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--parent", type=functools.partial(_int, minimum=1), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.child:
        return run_workers(
            args.target,
            workers=args.workers,
            host=args.host,
            port=args.port,
            broker=args.broker,
            grace=args.grace,
            distinct_ports=args.distinct_ports,
            resume=not args.no_resume,
            ssl_cert=args.ssl_cert,
            ssl_key=args.ssl_key,
        )
    from . import run

    options: dict[str, Any] = {"resume": not args.no_resume}
    context = server_ssl(args.ssl_cert, args.ssl_key)
    if context is not None:
        options["ssl"] = context
    sock = socket.socket(fileno=args.fd) if args.fd is not None else None
    run(
        serve_worker(
            load_target(args.target),
            args.host,
            args.port,
            broker_url=args.broker,
            grace=args.grace,
            reuse_port=args.reuse_port,
            sock=sock,
            options=options,
            parent=args.parent,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
