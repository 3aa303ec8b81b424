"""Serving files over plain HTTP on the WebSocket port: ``serve(..., static=DIR)``.

A request that is not a WebSocket upgrade (``GET /index.html``) is answered from
``DIR``; upgrade requests go on to fastrpc. Meant for the page that runs a browser
client next to its server, not as a general web server:

* only files under ``DIR`` are served: the path is percent-decoded, then any ``..``
  segment, NUL byte, backslash or absolute part is refused, and the resolved file
  (symbolic links followed) must still be inside ``DIR``; the file is then opened
  from ``DIR`` one name at a time following no symbolic link (``O_NOFOLLOW``), so a
  link swapped in after the check is a 404, not a way out (where the platform has
  ``openat``: not on Windows, which opens the resolved path by name);
* a directory serves its ``index.html``; anything else missing is 404;
* ``Content-Type`` from the file name (:mod:`mimetypes`; text types in UTF-8),
  ``X-Content-Type-Options: nosniff``, ``Cache-Control: no-cache``;
* a response is held whole in memory: files larger than ``max_file_size``
  (:data:`fastrpc.options.MAX_STATIC_FILE_SIZE`, 16 MiB) are refused with 403, also
  one that grows past it while it is read; ``Content-Length`` is the size of what
  was read (a file that changes meanwhile is sent as read, never cut or overrun);
* the file is read in a worker thread, not on the event loop.

This module knows nothing of the WebSocket library: :mod:`fastrpc.transport` turns an
:class:`HttpResponse` into the library's response.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
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
            body = await asyncio.to_thread(_read, self.root, file, self.max_file_size)
        except _TooLarge:
            return _text(
                403,
                "Forbidden",
                f"403 Forbidden: the file is larger than max_file_size ({self.max_file_size} bytes)\n",
            )
        except OSError:  # gone, replaced by a symbolic link or by what is not a file
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


class _TooLarge(Exception):
    """The file is larger than ``max_file_size`` (found so at open or while read)."""


# Opening relative to a directory's descriptor, refusing symbolic links (POSIX).
_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_WALK = bool(_NOFOLLOW) and hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd
_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _open_under(root: str, file: str) -> int:
    """A descriptor of ``file`` (a real path under ``root``, as resolve() returns it).

    resolve() checked the path, but a symbolic link put in place of the file or of a
    directory on its way after that check would be followed by an open by name: the
    path is opened from ``root`` one name at a time with ``O_NOFOLLOW`` instead (a real
    path holds no link, so any link met was swapped in: OSError). ``O_NONBLOCK``: a
    FIFO swapped in does not block the open (it is then refused as not a file)."""
    flags = _FLAGS | getattr(os, "O_NONBLOCK", 0)
    if not _WALK:  # Windows: no openat, the resolved path by name
        return os.open(file, flags)
    names = os.path.relpath(file, root).split(os.sep)
    fd = os.open(root, _FLAGS | os.O_DIRECTORY)
    try:
        for name in names[:-1]:
            parent, fd = fd, -1
            try:
                fd = os.open(name, _FLAGS | os.O_DIRECTORY | _NOFOLLOW, dir_fd=parent)
            finally:
                os.close(parent)
        return os.open(names[-1], flags | _NOFOLLOW, dir_fd=fd)
    finally:
        if fd >= 0:
            os.close(fd)


def _read(root: str, file: str, limit: int) -> bytes:
    """The contents of ``file`` (under ``root``, opened by :func:`_open_under`); raises
    :class:`_TooLarge` past ``limit`` bytes, at open or as read (a file that grows
    meanwhile is refused, not cut at ``limit``), OSError when it is not a regular file."""
    fd = _open_under(root, file)
    with open(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{file!r} is no longer a regular file")
        if st.st_size > limit:
            raise _TooLarge
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _TooLarge
    return data
