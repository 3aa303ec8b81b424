"""Options shared by :func:`fastrpc.serve` and :func:`fastrpc.connect`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from . import compression as _compression
from .protocol import Settings
from .streams import StreamManager

__all__ = ["PeerOptions"]


@dataclass
class PeerOptions:
    """Connection options with safe defaults; every limit is per connection."""

    max_frame_size: int = 1 << 20
    max_message_size: int = 4 << 20
    max_streams: int = 1024
    max_pending_calls: int = 1024
    max_item_size: int = 16 << 20
    connection_window: int = 16 << 20
    codec: str = "msgpack"
    compression: bool | str = False  # True: zstd if installed else zlib; or "zlib"/"zstd"
    compression_threshold: int = 1024
    streams: StreamManager | None = None
    expose_tracebacks: bool = False
    keepalive_interval: float | None = 20.0
    keepalive_timeout: float | None = 20.0
    handshake_timeout: float = 10.0
    # WebSocket-level pings stay on: proxies close idle connections otherwise.
    ws_ping_interval: float | None = 20.0
    write_limit: int = 64 << 10
    # Session resumption (docs/protocol.md, "Resuming a session"): a server keeps a
    # lost session this long for its client to come back.
    resume: bool = False
    session_grace: float = 120.0
    max_replay_bytes: int = 32 << 20
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[PeerOptions, dict[str, Any]]:
        """Separate fastrpc's options from those meant for ``websockets``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        ours = {k: v for k, v in kwargs.items() if k in names}
        rest = {k: v for k, v in kwargs.items() if k not in names}
        return cls(**ours), rest

    def compression_mask(self) -> int:
        c = self.compression
        if c is False or c is None:
            return 0
        if c is True:
            return _compression.available()
        if c == "zlib":
            return _compression.ZLIB
        if c == "zstd":
            if not _compression.available() & _compression.ZSTD:
                raise ValueError("compression='zstd' needs the zstandard package (fastrpc[zstd])")
            return _compression.ZSTD
        raise ValueError(f"unknown compression {c!r}")

    def settings(self, manager: StreamManager) -> Settings:
        return Settings(
            max_frame_size=self.max_frame_size,
            max_message_size=self.max_message_size,
            initial_stream_window=manager.initial_window,
            max_streams=self.max_streams,
            max_pending_calls=self.max_pending_calls,
            max_item_size=self.max_item_size,
            connection_window=self.connection_window,
            compression=self.compression_mask(),
            resume=int(self.resume),
        )

    def peer_kwargs(self) -> dict[str, Any]:
        manager = self.streams.copy() if self.streams is not None else StreamManager()
        return {
            "settings": self.settings(manager),
            "codec": self.codec,
            "streams": manager,
            "expose_tracebacks": self.expose_tracebacks,
            "keepalive_interval": self.keepalive_interval,
            "keepalive_timeout": self.keepalive_timeout,
            "compression_threshold": self.compression_threshold,
            "max_replay_bytes": self.max_replay_bytes,
        }

    def websocket_kwargs(self) -> dict[str, Any]:
        return {
            # fastrpc compresses per frame itself; permessage-deflate costs ~64 KiB
            # of zlib state per connection.
            "compression": None,
            "max_size": self.max_message_size + 64,
            "ping_interval": self.ws_ping_interval,
            "ping_timeout": self.ws_ping_interval,
            "write_limit": self.write_limit,
        }
