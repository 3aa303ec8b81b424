"""A Python client of the seed's JSON protocol: ``fastrpc.connect(url, protocol="json")``.

It talks to the seed's servers (its relay ``serve.ts``, ``runServer()`` of its
``examples/stream.ts``) and to fastrpc servers in JSON mode, with the surface of
:class:`fastrpc.jsonmode.JsonPeer` (``call``/``request``, ``notify``/``send``,
``send_stream``/``receive_stream``, ``close``/``abort``). What it does on opening:

1. it sends the seed's heartbeat ``{"category": "ping"}`` at once: the seed's servers
   answer it (or ignore it), and a fastrpc server takes the connection for a JSON one
   at once instead of after its ``json_wait``;
2. it waits up to ``welcome_timeout`` seconds for the server's welcome, whose
   ``clientId`` becomes ``peer.client_id`` (sent as ``from`` with each request, so
   that a relay routes the answers back). A server that sends no welcome costs that
   wait once; ``welcome_timeout=None`` does not wait.

The seed's ``RetrySocket`` reconnection has no counterpart here (``reconnect`` is
for the binary protocol).
"""

from __future__ import annotations

import asyncio
import logging

from .exceptions import ConnectionClosed
from .jsonmode import JsonPeer
from .options import PeerOptions
from .router import Router
from .transport import open_connection

__all__ = ["WELCOME_TIMEOUT", "open_json"]

logger = logging.getLogger("fastrpc.jsonclient")

WELCOME_TIMEOUT = 4.0  # the seed's RpcPeer.Timeouts.Welcome


async def open_json(
    url: str,
    router: Router | None,
    options: PeerOptions,
    ws_kwargs: dict[str, object],
    welcome_timeout: float | None = WELCOME_TIMEOUT,
) -> JsonPeer:
    """Open a JSON-mode connection to ``url`` (see the module docstring); the peer
    is served by a task of its own until it closes."""
    kwargs = {**options.websocket_kwargs(), **ws_kwargs}
    transport = await asyncio.wait_for(open_connection(url, **kwargs), options.handshake_timeout)
    o = options
    peer = JsonPeer(
        transport,
        router,
        role="client",
        dec_hook=o.dec_hook,  # a handler served to the server converts as a binary call's
        **o.json_limits(),
    )
    runner = peer.start()
    pinged = asyncio.get_running_loop().create_task(peer.ping())
    try:
        if welcome_timeout is not None:
            try:
                await peer.wait_welcome(welcome_timeout)
            except asyncio.TimeoutError:
                logger.debug("no welcome from %s within %s s", url, welcome_timeout)
    except BaseException:  # cancelled (a timeout around connect), or the connection failed
        peer.abort()
        await asyncio.gather(runner, return_exceptions=True)
        raise
    finally:
        # A server may not answer pings (examples/stream.ts does not); cancelled or
        # not, the ping's task ends here, its outcome retrieved.
        pinged.cancel()
        await asyncio.gather(pinged, return_exceptions=True)
    if peer.closed:
        raise ConnectionClosed("the server closed the connection while it opened")
    return peer
