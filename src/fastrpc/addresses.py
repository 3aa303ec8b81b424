"""Host and port to URL: IPv6 literals go in brackets (``ws://[::1]:8765``)."""

from __future__ import annotations

__all__ = ["host_for_url", "ws_url"]


def host_for_url(host: str) -> str:
    """``host`` as it appears in a URL: an IPv6 literal in brackets, anything else as is."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def ws_url(host: str, port: int, secure: bool = False, path: str = "") -> str:
    """The WebSocket URL of ``host:port`` (``wss://`` when ``secure``)."""
    return f"{'wss' if secure else 'ws'}://{host_for_url(host)}:{port}{path}"
