"""Serving files over plain HTTP on the WebSocket port: ``serve(..., static=DIR)``.

A request that is not a WebSocket upgrade (``GET /index.html``) is answered from
``DIR``; upgrade requests go on to fastrpc. Meant for the page that runs a browser
client next to its server, not as a general web server:

* only files under ``DIR`` are served: the path is percent-decoded, then any ``..``
  segment, NUL byte, backslash or absolute part is refused, and the resolved file
  (symbolic links followed) must still be inside ``DIR``;
* a directory serves its ``index.html``; anything else missing is 404;
* ``Content-Type`` from the file name (:mod:`mimetypes`; text types in UTF-8),
  ``X-Content-Type-Options: nosniff``, ``Cache-Control: no-cache``;
* a response is held whole in memory: files larger than ``max_file_size``
  (:data:`fastrpc.options.MAX_STATIC_FILE_SIZE`, 16 MiB) are refused with 403;
* the file is read in a worker thread, not on the event loop.

This module knows nothing of the WebSocket library: :mod:`fastrpc.transport` turns an
:class:`HttpResponse` into the library's response.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from . import options as O

__all__ = ["HttpResponse", "StaticFiles", "is_upgrade"]


@dataclass
class HttpResponse:
    """A plain HTTP response: status, headers, body."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """Whether request ``headers`` ask for a WebSocket upgrade."""
    return "websocket" in str(headers.get("Upgrade", "")).lower()


def _text(status: int, reason: str, text: str) -> HttpResponse:
    body = text.encode()
    return HttpResponse(
        status,
        reason,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("X-Content-Type-Options", "nosniff"),
        ],
        body,
    )


class StaticFiles:
    """Files under ``directory``, for GET requests that are not WebSocket upgrades.

    ``await static(path, headers)`` returns an :class:`HttpResponse`, or None for an
    upgrade request (fastrpc handles it).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        index: str = "index.html",
        max_file_size: int = O.MAX_STATIC_FILE_SIZE,
    ) -> None:
        root = os.path.realpath(os.fspath(directory))
        if not os.path.isdir(root):
            raise ValueError(f"static directory {os.fspath(directory)!r} does not exist or is not a directory")
        self.root = root
        self.index = index
        self.max_file_size = max_file_size

    def resolve(self, path: str) -> str | None:
        """The file a request path names, or None when it is outside the directory
        (or not a regular file)."""
        # (Not urlsplit: it reads a target that starts with "//" as a host and a path.)
        raw = unquote(path.partition("?")[0].partition("#")[0])
        if "\x00" in raw or "\\" in raw:
            return None
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            return None
        candidate = os.path.realpath(os.path.join(self.root, *parts))
        if os.path.isdir(candidate):
            # The index is resolved too: a symbolic link named index.html is a file
            # like any other, checked below.
            candidate = os.path.realpath(os.path.join(candidate, self.index))
        if os.path.commonpath((self.root, candidate)) != self.root:
            return None  # a symbolic link out of the directory
        return candidate if os.path.isfile(candidate) else None

    async def __call__(self, path: str, headers: Mapping[str, str]) -> HttpResponse | None:
        if is_upgrade(headers):
            return None
        file = self.resolve(path)
        if file is None:
            return _text(404, "Not Found", "404 Not Found\n")
        try:
            size = os.path.getsize(file)
            if size > self.max_file_size:
                return _text(
                    403,
                    "Forbidden",
                    f"403 Forbidden: the file is larger than max_file_size ({self.max_file_size} bytes)\n",
                )
            body = await asyncio.to_thread(_read, file, self.max_file_size)
        except OSError:
            return _text(404, "Not Found", "404 Not Found\n")
        ctype, encoding = mimetypes.guess_type(file)
        if ctype is None or encoding is not None:  # x.tar.gz is sent as is, not unpacked by browsers
            ctype = "application/octet-stream"
        elif ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        out = [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("X-Content-Type-Options", "nosniff"),
            ("Cache-Control", "no-cache"),
        ]
        return HttpResponse(200, "OK", out, body)


def _read(file: str, limit: int) -> bytes:
    with open(file, "rb") as f:
        return f.read(limit + 1)[:limit]
