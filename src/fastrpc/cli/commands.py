"""The network commands of the command line: ``serve``, ``call``, ``stream``,
``notify``, ``ping``, ``methods``; and ``version``.

Arguments of calls are JSON where they parse as JSON (``1``, ``"a"``, ``[1, 2]``,
``{"k": 1}``, ``true``, ``null``) and strings otherwise (``hello``). Results are printed
as JSON: ``bytes`` as base64 text, other values msgpack does not map to JSON
(datetime, UUID, Decimal, ...) as their ``str``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import logging
import os
import platform
import re
import signal
import ssl
import sys
import time
from typing import Any, TextIO

import fastrpc
from fastrpc.introspection import METHODS
from fastrpc.router import Router
from fastrpc.transport import OPEN_FAILED

__all__ = [
    "codec_explanation",
    "load_target",
    "parse_arg",
    "printable",
    "run_call",
    "run_methods",
    "run_notify",
    "run_ping",
    "run_serve",
    "run_stream",
    "to_json",
    "version_text",
]


class CommandError(Exception):
    """A failure the command line reports in one line (exit status 1)."""


# ------------------------------------------------------------------ values


def parse_arg(text: str) -> Any:
    """A command-line argument: its JSON value, or the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def to_json(value: Any) -> str:
    """``value`` as one line of JSON (bytes as base64)."""
    return json.dumps(value, default=_json_default, ensure_ascii=False)


# ------------------------------------------------------------------ version


def codec_explanation() -> str:
    """Which frame codec is live, and why."""
    impl = fastrpc.IMPLEMENTATION
    if impl == "cython":
        return "cython: the compiled extension fastrpc._frames is built and loaded"
    if os.environ.get("FASTRPC_NO_EXTENSIONS", "") not in ("", "0"):
        return "python: FASTRPC_NO_EXTENSIONS is set, so the pure-Python twin is used"
    return (
        "python: the compiled extension fastrpc._frames is not built for this interpreter "
        "(install with a C compiler, FASTRPC_BUILD_EXTENSION=yes to make a failed build an error)"
    )


def version_text(verbose: bool = False) -> str:
    """The version line (and with ``verbose``, why this codec)."""
    try:
        import uvloop

        loop = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:
        loop = "asyncio"
    line = (
        f"fastrpc {fastrpc.__version__} (codec implementation: {fastrpc.IMPLEMENTATION}; "
        f"{platform.python_implementation()} {platform.python_version()}; {loop})"
    )
    if verbose:
        line += f"\ncodec: {codec_explanation()}\npackage: {os.path.dirname(fastrpc.__file__)}"
    return line


# ------------------------------------------------------------------ serve


def load_target(spec: str) -> Router | Any:
    """``MODULE:ATTR`` -> the Router or ``async def handler(peer)`` it names (the
    current directory is importable, as with ``python -m``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"expected MODULE:ATTR (for example app:router), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import module {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Router) and not callable(obj):
        raise CommandError(f"{spec} is a {type(obj).__name__}: expected a fastrpc.Router or an async handler(peer)")
    return obj


def _server_ssl(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """``--ssl-cert``/``--ssl-key`` as a TLS context (None: plain ws://); one error
    line (CommandError) for a key without a certificate or files that do not load.
    The same check runs before worker processes start (they load the files again)."""
    from ..workers import server_ssl

    if cert is None and key is not None:
        raise CommandError("--ssl-key needs --ssl-cert")
    try:
        return server_ssl(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CommandError(f"cannot load the certificate {cert!r}: {exc}") from None


async def _serve(args: argparse.Namespace, out: TextIO) -> None:
    target = load_target(args.target)
    options: dict[str, Any] = {"introspection": not args.no_introspection, "busy_poll": args.busy_poll}
    context = _server_ssl(args.ssl_cert, args.ssl_key)
    if context is not None:
        options["ssl"] = context
    if args.static is not None and not os.path.isdir(args.static):
        raise CommandError(f"--static {args.static!r}: not a directory")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows
            pass
    server = fastrpc.serve(target, args.host, args.port, static=args.static, **options)
    try:
        await server.start()
    except OSError as exc:
        raise CommandError(f"cannot serve on {args.host} port {args.port}: {exc}") from None
    try:
        kind = "router" if isinstance(target, Router) else "handler"
        print(f"fastrpc {fastrpc.__version__}: serving {args.target} ({kind}) on {server.url}", file=out)
        if args.static is not None:
            print(
                f"static files from {os.path.abspath(args.static)} on {server.url.replace('ws', 'http', 1)}/", file=out
            )
        out.flush()
        await stop.wait()
    finally:
        await server.close()
    print("stopped", file=out)
    out.flush()


def run_serve(args: argparse.Namespace) -> int:
    """``fastrpc serve``: serve until SIGINT or SIGTERM."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("fastrpc").setLevel(args.log_level.upper())
    if args.workers or args.broker or args.distinct_ports:
        # Worker processes (fastrpc.workers): they serve the target with TLS when
        # asked, but no static files or other options of this command.
        unsupported = [f for f in ("static", "no_introspection", "busy_poll") if getattr(args, f)]
        if unsupported:
            names = ", ".join("--" + f.replace("_", "-") for f in unsupported)
            print(f"fastrpc serve: {names} cannot be used with --workers/--broker (yet)", file=sys.stderr)
            return 2
        from ..workers import run_workers

        extra = {} if args.grace is None else {"grace": args.grace}
        try:
            load_target(args.target)  # one line for a target that does not load, as without --workers
            # The same for TLS: checked (one line) before any worker starts; before,
            # --ssl-key without --ssl-cert was dropped here and the workers served ws://.
            _server_ssl(args.ssl_cert, args.ssl_key)
            return run_workers(
                args.target,
                workers=max(args.workers, 1),
                host=args.host,
                port=args.port,
                broker=args.broker,
                distinct_ports=args.distinct_ports,
                ssl_cert=args.ssl_cert,
                ssl_key=args.ssl_key,
                **extra,
            )
        except CommandError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # the port (taken, not ours to bind)
            print(f"error: cannot serve on {args.host} port {args.port}: {exc}", file=sys.stderr)
            return 1
    return _run(_serve(args, sys.stdout))


# ------------------------------------------------------------------ clients


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"keepalive_interval": None, "busy_poll": args.busy_poll}
    if args.timeout is not None:
        # --timeout bounds the opening (the WebSocket, then fastrpc's handshake) too:
        # a server that accepts and stays silent is not waited for 10 s more.
        options["handshake_timeout"] = args.timeout
    if args.cafile is not None:
        options["ssl"] = ssl.create_default_context(cafile=args.cafile)
    headers = getattr(args, "headers", None)
    if headers:
        # Sent by websockets' own client connection (fastrpc's data path does not
        # write extra headers), where busy polling does not apply; like the data path,
        # it connects directly (not through the environment's HTTP proxy).
        if args.busy_poll is not None:
            raise CommandError("--busy-poll cannot be used with --header (yet)")
        options["additional_headers"] = list(headers)
        options["proxy"] = None
    return options


def _connect(args: argparse.Namespace) -> fastrpc.connect[fastrpc.RpcPeer]:
    return fastrpc.connect(args.url, **_client_options(args))


async def _call(args: argparse.Namespace, out: TextIO) -> None:
    async with _connect(args) as peer:
        result = await peer.call(args.method, *map(parse_arg, args.args), timeout=args.timeout)
    print(to_json(result), file=out)


async def _notify(args: argparse.Namespace, out: TextIO) -> None:
    async with _connect(args) as peer:
        peer.notify(args.method, *map(parse_arg, args.args))
        await peer.ping(args.timeout)  # the notification left and was read before we close


class _Rate:
    """A progress line on a terminal: items, bytes, items/s (redrawn with \\r)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.start = self.next = time.perf_counter()
        self.drawn = 0

    def update(self, items: int, nbytes: int, final: bool = False) -> None:
        now = time.perf_counter()
        if now < self.next and not final:
            return
        self.next = now + 0.1
        elapsed = max(now - self.start, 1e-9)
        line = f"{items:,} items, {nbytes / 1e6:,.1f} MB, {items / elapsed:,.0f} items/s, {elapsed:.1f} s"
        self.stream.write("\r" + line.ljust(self.drawn))
        self.drawn = len(line)
        if final:
            self.stream.write("\n")
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


async def _stream(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    progress = _Rate(err) if _isatty(err) else None
    count = 0
    nbytes = 0
    loop = asyncio.get_running_loop()
    timeout: float | None = args.timeout
    deadline: asyncio.Timeout | None = None
    try:
        async with _connect(args) as peer:
            stream = peer.stream(args.method, *map(parse_arg, args.args))
            # --timeout bounds the wait for each item (not the whole call, which a live
            # stream may keep open as long as it likes): the deadline moves on per item.
            async with stream, asyncio.timeout(timeout) as deadline:
                try:
                    async for item in stream:
                        out.write(to_json(item) + "\n")
                        count += 1
                        if args.limit is not None and count >= args.limit:
                            break
                        if progress is not None:
                            stats = stream.stats()
                            if stats is not None:
                                nbytes = stats.bytes
                            progress.update(count, nbytes)
                        if timeout is not None:
                            deadline.reschedule(loop.time() + timeout)
                finally:
                    out.flush()
    except TimeoutError:
        if deadline is None or not deadline.expired():
            raise  # not ours (connecting: HandshakeTimeout)
        what = f"no further item after {count}" if count else "no item"
        raise CommandError(f"the stream sent {what} within --timeout ({timeout:g} s)") from None
    finally:
        if progress is not None:
            progress.update(count, nbytes, final=True)


async def _ping(args: argparse.Namespace, out: TextIO) -> None:
    async with _connect(args) as peer:
        times = []
        for i in range(args.count):
            # Timed here: the event loop's clock (uvloop's) may tick in whole milliseconds.
            start = time.perf_counter()
            await peer.ping(args.timeout)
            rtt = time.perf_counter() - start
            times.append(rtt)
            print(f"pong from {args.url}: seq={i} time={rtt * 1e3:.3f} ms", file=out)
            out.flush()
            if i + 1 < args.count:
                await asyncio.sleep(args.interval)
    ordered = sorted(times)
    print(
        f"{len(times)} pings: min {ordered[0] * 1e3:.3f} / median {ordered[len(ordered) // 2] * 1e3:.3f} "
        f"/ max {ordered[-1] * 1e3:.3f} ms",
        file=out,
    )


# What a terminal would act on instead of showing: C0/C1 controls (escape sequences
# start with them) and the bidirectional overrides that reorder what is shown.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with the characters a terminal would act on (escape sequences, bidi
    overrides; not tab or line feed) written as ``\\xNN``/``\\uNNNN`` escapes: what a
    server sends is shown, never run by the terminal."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _is_method(entry: Any) -> bool:
    """Whether ``entry`` is one method of ``fastrpc.methods``: ``{name, kind,
    signature, doc}``, strings (doc may be missing or null; more keys are allowed)."""
    return (
        isinstance(entry, dict)
        and all(isinstance(entry.get(k), str) for k in ("name", "kind", "signature"))
        and isinstance(entry.get("doc") or "", str)
    )


def _method_list(url: str, answer: Any) -> list[dict[str, Any]]:
    """The answer to ``fastrpc.methods`` if it is a list of methods (:func:`_is_method`);
    else CommandError: a server that answers otherwise is a failure in one line
    naming what it sent, not a traceback."""
    if isinstance(answer, list):
        bad = next((m for m in answer if not _is_method(m)), None)
        if bad is None:
            return answer
        shape = f"a list holding {printable(to_json(bad))[:80]}"
    else:
        shape = type(answer).__name__
    raise CommandError(
        f"{url} answered {METHODS} with {shape}, not a list of methods {{name, kind, signature, doc}} "
        "(is it a fastrpc server?)"
    )


async def _methods(args: argparse.Namespace, out: TextIO) -> None:
    async with _connect(args) as peer:
        try:
            answer = await peer.call(METHODS, timeout=args.timeout)
        except fastrpc.RemoteError as exc:
            if exc.type_name == "MethodNotFound":
                raise CommandError(f"{args.url} does not answer {METHODS} (introspection is off)") from None
            raise
    methods = _method_list(args.url, answer)
    if args.json:
        print(to_json(methods), file=out)
        return
    if not methods:
        print("(no methods)", file=out)
    for m in methods:
        print(printable(f"{m['name']}{m['signature']}  [{m['kind']}]"), file=out)
        for line in (m.get("doc") or "").splitlines():
            print(printable(f"    {line}".rstrip()), file=out)


def _run(coro: Any) -> int:
    try:
        fastrpc.run(coro)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except fastrpc.RemoteError as exc:
        print(f"error: the remote handler raised {exc.type_name}: {exc.message}", file=sys.stderr)
        return 1
    except fastrpc.ConnectionClosed as exc:
        print(f"error: connection closed: {exc}", file=sys.stderr)
        return 1
    except fastrpc.AuthError as exc:
        print(f"error: the server refused the connection: {exc}", file=sys.stderr)
        return 1
    except fastrpc.CallTimeout:
        print("error: no answer within --timeout", file=sys.stderr)
        return 1
    except fastrpc.FastRPCError as exc:  # HandshakeTimeout, ProtocolError, ...
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except asyncio.TimeoutError:
        print("error: no answer within --timeout", file=sys.stderr)
        return 1
    except OPEN_FAILED as exc:
        print(f"error: cannot connect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def run_call(args: argparse.Namespace) -> int:
    """``fastrpc call URL METHOD [ARG ...]``."""
    return _run(_call(args, sys.stdout))


def run_notify(args: argparse.Namespace) -> int:
    """``fastrpc notify URL METHOD [ARG ...]``."""
    return _run(_notify(args, sys.stdout))


def run_stream(args: argparse.Namespace) -> int:
    """``fastrpc stream URL METHOD [ARG ...]``."""
    return _run(_stream(args, sys.stdout, sys.stderr))


def run_ping(args: argparse.Namespace) -> int:
    """``fastrpc ping URL``."""
    return _run(_ping(args, sys.stdout))


def run_methods(args: argparse.Namespace) -> int:
    """``fastrpc methods URL``."""
    return _run(_methods(args, sys.stdout))
