"""fastrpc's loggers, as the websockets library does it: ``fastrpc.server``,
``fastrpc.client`` (the connections of each side, and the handlers they run) and
``fastrpc.protocol`` (a peer that broke the protocol or a limit). No handler is
installed: configure them with :mod:`logging` as any other library's.

What is logged, at which level:

* ERROR, with the traceback: a handler raised (once, with the method name and the
  peer's address); a server's connection handler or a reconnect hook failed.
* WARNING: a notification to a method nobody handles; a peer closed for breaking a
  limit (the reason names the option); a call or a notification refused by
  ``authorize``; a handler or a stream source that did not stop within
  ``HANDLER_STOP_TIMEOUT`` / ``SENDER_STOP_TIMEOUT`` of its cancellation.
* INFO: a server's connection opened and closed, with the peer's address.
* DEBUG: a client's connection opened and closed; a handshake refused by
  ``authenticate``; retries.

The WARNINGs a peer can cause (protocol errors, unknown notifications, refused calls
and notifications)
are rate-limited: at most ``WARNINGS_PER_SECOND`` a second per logger, then one line
saying how many were left out, so that a flood of bad connections cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["client_logger", "protocol_logger", "redact", "server_logger", "warn_limited"]


def redact(target: str) -> str:
    """A URL or request path as it may be logged: without its query string (a browser
    client's ``?token=``, docs/security.md) nor the password of ``user:password@``;
    ``?...`` says a query was there."""
    path, sep, _ = target.partition("?")
    scheme, slashes, rest = path.partition("://")
    if slashes:
        authority, slash, tail = rest.partition("/")
        userinfo, at, host = authority.rpartition("@")
        if at:
            authority = userinfo.partition(":")[0] + ":...@" + host if ":" in userinfo else authority
        path = scheme + slashes + authority + slash + tail
    return path + ("?..." if sep else "")


server_logger = logging.getLogger("fastrpc.server")
client_logger = logging.getLogger("fastrpc.client")
protocol_logger = logging.getLogger("fastrpc.protocol")


def side_logger(server: bool) -> logging.Logger:
    """The logger of a connection's side."""
    return server_logger if server else client_logger


WARNINGS_PER_SECOND = 10
_windows: dict[str, list[float]] = {}  # logger name -> [window start, count, suppressed]


def warn_limited(logger: logging.Logger, msg: str, *args: Any) -> None:
    """``logger.warning(msg, *args)``, at most WARNINGS_PER_SECOND a second."""
    if not logger.isEnabledFor(logging.WARNING):
        return
    now = time.monotonic()
    window = _windows.get(logger.name)
    if window is None or now - window[0] >= 1.0:
        if window is not None and window[2]:
            logger.warning("%d more warnings like these in the last second were left out", int(window[2]))
        window = _windows[logger.name] = [now, 0.0, 0.0]
    if window[1] >= WARNINGS_PER_SECOND:
        window[2] += 1
        return
    window[1] += 1
    logger.warning(msg, *args)
