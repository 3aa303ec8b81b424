"""fastrpc's loggers, as the websockets library does it: ``fastrpc.server``,
``fastrpc.client`` (the connections of each side, and the handlers they run) and
``fastrpc.protocol`` (a peer that broke the protocol or a limit). No handler is
installed: configure them with :mod:`logging` as any other library's.

What is logged, at which level:

* ERROR, with the traceback: a handler raised (once, with the method name and the
  peer's address); a server's connection handler or a reconnect hook failed.
* WARNING: a notification to a method nobody handles; a peer closed for breaking a
  limit (the reason names the option); a call refused by ``authorize``.
* INFO: a server's connection opened and closed, with the peer's address.
* DEBUG: a client's connection opened and closed; a handshake refused by
  ``authenticate``; retries.
"""

from __future__ import annotations

import logging

__all__ = ["client_logger", "protocol_logger", "server_logger"]

server_logger = logging.getLogger("fastrpc.server")
client_logger = logging.getLogger("fastrpc.client")
protocol_logger = logging.getLogger("fastrpc.protocol")


def side_logger(server: bool) -> logging.Logger:
    """The logger of a connection's side."""
    return server_logger if server else client_logger
