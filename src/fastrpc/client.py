"""fastrpc.connect: open a connection to a fastrpc server."""

from __future__ import annotations

from typing import Any, Generator

from websockets.asyncio.client import connect as _ws_connect

from .options import PeerOptions
from .peer import RpcPeer
from .protocol import Role
from .router import Router

__all__ = ["connect"]


class connect:
    """Connect to ``url``; ``async with connect(url) as peer`` or ``peer = await connect(url)``.

    Options as for :func:`fastrpc.serve`, plus ``router`` for methods the server may
    call back on this client.
    """

    def __init__(self, url: str, *, router: Router | None = None, **options: Any) -> None:
        self.url = url
        self.router = router
        self.options, self.ws_kwargs = PeerOptions.split(options)
        self.peer: RpcPeer | None = None

    async def _connect(self) -> RpcPeer:
        ws = await _ws_connect(self.url, **self.options.websocket_kwargs(), **self.ws_kwargs)
        peer = RpcPeer(ws, Role.CLIENT, router=self.router, **self.options.peer_kwargs())
        await peer._start(self.options.handshake_timeout)
        self.peer = peer
        return peer

    def __await__(self) -> Generator[Any, None, RpcPeer]:
        return self._connect().__await__()

    async def __aenter__(self) -> RpcPeer:
        return await self._connect()

    async def __aexit__(self, *exc: object) -> None:
        if self.peer is not None:
            await self.peer.close()
