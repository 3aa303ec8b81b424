"""The command line: ``fastrpc COMMAND`` (the console script) or ``python -m fastrpc``.

::

    fastrpc serve app:router --port 8765 [--static web/]   # serve a Router or handler(peer)
    fastrpc serve app:router --workers 4 --broker redis://127.0.0.1:6379/0
    fastrpc methods ws://127.0.0.1:8765                    # what it serves
    fastrpc call ws://127.0.0.1:8765 add 1 2               # -> 3
    fastrpc stream ws://127.0.0.1:8765 ticks 5             # one JSON line per item
    fastrpc notify ws://127.0.0.1:8765 log hello
    fastrpc ping ws://127.0.0.1:8765
    fastrpc call ws://127.0.0.1:8765 whoami -H "Authorization: Bearer TOKEN"
    fastrpc demo | bench | version

IPv6 hosts are given bare to ``--host`` (``::1``) and in brackets in URLs
(``ws://[::1]:8765``).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Sequence

from ..polling import busy_poll_option
from . import commands
from .demo import DEFAULT_BATCH, DEFAULT_CALLS, DEFAULT_SECONDS, _Progress, run_demo

__all__ = ["_Progress", "main"]

DEFAULT_PORT = 8765
DEFAULT_TIMEOUT = 10.0


def _int(text: str, minimum: int, maximum: int | None = None, *, what: str = "a whole number", note: str = "") -> int:
    """The argparse type of every whole-number option (``functools.partial(_int,
    minimum=...)``): ``text`` as an int from ``minimum`` to ``maximum`` (None: no upper
    bound), ``1_000`` and ``1,000`` read as 1000. Refused (ArgumentTypeError, which
    argparse reports naming the option, status 2): not a whole number, or out of range,
    saying the range and ``note``."""
    try:
        value = int(text.replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        if maximum is None:
            span = "(it must be positive)" if minimum == 1 else f"of {minimum} or more"
        else:
            span = f"from {minimum} to {maximum}"
        raise argparse.ArgumentTypeError(f"{value} is not {what} {span}{note}")
    return value


_positive_int = functools.partial(_int, minimum=1)
# Worker processes: 0 serves from this process; the port: 0 picks a free one.
_workers = functools.partial(_int, minimum=0, note=" (0: no worker processes)")
_port = functools.partial(_int, minimum=0, maximum=65535, what="a port number", note=" (0 picks a free one)")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value:
        raise argparse.ArgumentTypeError("must be a number, not NaN")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _seconds(text: str) -> float:
    """A finite number of seconds, 0 or more (an interval, a grace period)."""
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of seconds, 0 or more")
    return value


# An HTTP header's name (RFC 9110 token) and a value on one line.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _HEADER_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE (e.g. 'Authorization: Bearer TOKEN'), got {text!r}")
    if any(c in value for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(f"the value of header {name} holds a line break or NUL")
    return name, value


def _busy_poll(text: str) -> float | None:
    try:
        return busy_poll_option(float(text))
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _busy_poll_arg(p: argparse.ArgumentParser, who: str) -> None:
    p.add_argument(
        "--busy-poll",
        type=_busy_poll,
        default=None,
        metavar="S",
        help=f"after each write, the {who} polls for S seconds instead of sleeping (a connection whose "
        "replies keep coming later than S stops): lower latency for CPU (e.g. 50e-6; default off; fastrpc.polling)",
    )


def _client_args(p: argparse.ArgumentParser, method: bool = True, stream: bool = False) -> None:
    p.add_argument("url", metavar="URL", help="the server's URL, e.g. ws://127.0.0.1:8765 or wss://[::1]:8765")
    if method:
        p.add_argument("method", metavar="METHOD")
        p.add_argument("args", nargs="*", metavar="ARG", help="arguments: JSON where they parse as JSON, else strings")
    # A live stream may be quiet for long: no limit unless one is asked for.
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=None if stream else DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds to wait for each item (the first, and each next one; default: no limit)"
        if stream
        else f"seconds to wait for the answer (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--cafile", metavar="PEM", help="trust this CA certificate for wss:// (a self-signed server)")
    p.add_argument(
        "-H",
        "--header",
        dest="headers",
        type=_header,
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="send this HTTP header with the opening request, e.g. 'Authorization: Bearer TOKEN' for a "
        "server's authenticate hook (repeatable)",
    )
    _busy_poll_arg(p, "client")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastrpc" if os.path.basename(sys.argv[0]) == "fastrpc" else "python -m fastrpc",
        description="fastrpc: RPC and multiplexed streaming over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=commands.version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve a Router or an async handler(peer) from a module",
        description="Serve MODULE:ATTR (a fastrpc.Router, or an async def handler(peer) run per connection) "
        "until Ctrl-C or SIGTERM. The current directory is importable.",
    )
    serve.add_argument("target", metavar="MODULE:ATTR")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; IPv6 bare: ::1)")
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port 0 to 65535 (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    serve.add_argument("--ssl-cert", metavar="PEM", help="serve wss:// with this certificate (chain)")
    serve.add_argument("--ssl-key", metavar="PEM", help="the certificate's private key (if not in --ssl-cert)")
    serve.add_argument(
        "--static", metavar="DIR", help="serve DIR's files over plain HTTP GET on the same port (not upgrades)"
    )
    serve.add_argument(
        "--no-introspection", action="store_true", help="do not answer fastrpc.methods (fastrpc methods URL)"
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=0,
        metavar="N",
        help="serve from N worker processes on one port, restarted when they crash (fastrpc.workers)",
    )
    serve.add_argument(
        "--broker", metavar="URL", help="redis://host:port/db: topics shared by the workers (default: in memory)"
    )
    serve.add_argument(
        "--grace", type=_seconds, default=None, metavar="S", help="seconds in-flight calls get on SIGTERM"
    )
    serve.add_argument("--distinct-ports", action="store_true", help="with --workers: worker i listens on port + i")
    _busy_poll_arg(serve, "server")
    serve.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log fastrpc's messages at this level and above on stderr (default warning)",
    )

    call = sub.add_parser("call", help="call a method and print its result as JSON")
    _client_args(call)
    stream = sub.add_parser(
        "stream",
        help="call a streaming method and print one JSON line per item",
        description="Print one JSON line per item on stdout; on a terminal, a progress line on stderr.",
    )
    _client_args(stream, stream=True)
    stream.add_argument("--limit", type=_positive_int, metavar="N", help="stop after N items (cancels the stream)")
    notify = sub.add_parser("notify", help="send a notification (no answer)")
    _client_args(notify)
    ping = sub.add_parser("ping", help="measure round-trip times (fastrpc PING frames)")
    _client_args(ping, method=False)
    ping.add_argument("-c", "--count", type=_positive_int, default=3, metavar="N", help="pings to send (default 3)")
    ping.add_argument(
        "-i",
        "--interval",
        type=_seconds,
        default=0.2,
        metavar="S",
        help="seconds between pings (default 0.2; a server closes a peer pinging faster than its max_ping_rate, 1000/s by default)",
    )
    methods = sub.add_parser("methods", help="list the server's methods, signatures and docstrings")
    _client_args(methods, method=False)
    methods.add_argument("--json", action="store_true", help="print the list as JSON")

    demo = sub.add_parser(
        "demo",
        help="stream a live feed between two processes and measure calls",
        description=(
            "Start a server in a child process and a client here, stream a live feed of "
            "small msgpack records ({'seq': int, 'price': float}) with a progress bar, "
            "then make sequential and concurrent calls. Prints items/s, MB/s and calls/s. "
            f"Without --items or --seconds the feed runs for {DEFAULT_SECONDS:g} seconds."
        ),
    )
    demo.add_argument("--items", type=_positive_int, metavar="N", help="stream N records (then stop)")
    demo.add_argument(
        "--seconds",
        "--duration",
        dest="seconds",
        type=_positive_float,
        metavar="S",
        help=f"stream for S seconds (default {DEFAULT_SECONDS:g} when --items is not given; "
        "with both, the feed stops at whichever comes first)",
    )
    demo.add_argument(
        "--batch",
        type=_positive_int,
        default=DEFAULT_BATCH,
        metavar="B",
        help=f"records per stream item (default {DEFAULT_BATCH})",
    )
    demo.add_argument(
        "--calls",
        type=_positive_int,
        default=DEFAULT_CALLS,
        metavar="N",
        help=f"calls in each of the sequential and concurrent runs (default {DEFAULT_CALLS})",
    )
    demo.add_argument("--host", default="127.0.0.1", help="interface for the server (default 127.0.0.1; or ::1)")

    bench = sub.add_parser(
        "bench",
        help="compare fastrpc with raw websockets (bench/compare.py when the repository is at hand)",
        description="In a checkout of the repository, run bench/compare.py with the arguments given after "
        "'--'. Elsewhere (an installed package), run its scenarios built into fastrpc._bench: fastrpc "
        "against the websockets library it is built on, both measured in this run.",
    )
    bench.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    bench.add_argument("--scale", type=_positive_float, default=1.0, metavar="X", help="multiply sizes by X")
    bench.add_argument("--only", metavar="S1,S2", help="scenarios to run (comma-separated)")
    bench.add_argument(
        "--builtin", action="store_true", help="run the built-in scenarios even in a checkout of the repository"
    )
    bench.add_argument("extra", nargs="*", metavar="-- ARGS", help="more arguments for bench/compare.py")

    version = sub.add_parser("version", help="print the version, the live codec and why, and the event loop")
    version.add_argument("-v", "--verbose", action="store_true", help="also say why this codec and where it is")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    command = args.command
    if command == "demo":
        return run_demo(args)
    if command == "version":
        print(commands.version_text(args.verbose))
        return 0
    if command == "bench":
        from .. import _bench

        return _bench.main_from_cli(args)
    runners = {
        "serve": commands.run_serve,
        "call": commands.run_call,
        "stream": commands.run_stream,
        "notify": commands.run_notify,
        "ping": commands.run_ping,
        "methods": commands.run_methods,
    }
    if command in runners:
        return runners[command](args)
    parser.print_help()
    return 2
