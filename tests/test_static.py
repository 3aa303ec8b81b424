"""Static files (``serve(static=DIR)``): what a path may reach, and what a client that
does not read its answer may hold. Real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from _util import QUIET, run

import fastrpc
from fastrpc.static import StaticFiles


def _get(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """A socket that sent ``GET path`` (and reads nothing yet)."""
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def _read_all(s: socket.socket, pause: float = 0.0, chunk: int = 1 << 16) -> bytes:
    out = bytearray()
    while True:
        try:
            data = s.recv(chunk)
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
        if pause:
            time.sleep(pause)
    s.close()
    return bytes(out)


def test_paths_stay_inside_the_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("a\n")
    (root / "index.html").write_text("<p>home</p>\n")
    # A directory whose index.html is a symbolic link out of the directory: before,
    # the index was joined after the check and served (only a direct request for it
    # was refused).
    (root / "docs" / "index.html").symlink_to(outside / "secret.txt")
    (root / "out.txt").symlink_to(outside / "secret.txt")
    static = StaticFiles(root)
    assert static.resolve("/docs/a.txt") == str((root / "docs" / "a.txt").resolve())
    assert static.resolve("/") == str((root / "index.html").resolve())
    assert static.resolve("/docs/") is None
    assert static.resolve("/docs/index.html") is None
    assert static.resolve("/out.txt") is None
    assert static.resolve("/../outside/secret.txt") is None
    # "//docs/a.txt" is a path, not a host and a path (urlsplit gave "/a.txt").
    assert static.resolve("//docs/a.txt?x=1") == str((root / "docs" / "a.txt").resolve())
    # The file system's root as the directory ("//" was the prefix checked: nothing).
    top = StaticFiles("/")
    assert top.resolve(str((root / "docs" / "a.txt").resolve())) == str((root / "docs" / "a.txt").resolve())


def test_a_client_that_does_not_read_its_file_is_dropped_and_close_does_not_wait(tmp_path: Path) -> None:
    # A static answer is a refused upgrade: the file is written, then the connection
    # closes. A client that read none of it within close_timeout is dropped (it held
    # the file's bytes and its socket for ever, and server.close() waited for it); a
    # slow client that keeps reading gets the whole file.
    size = 8 << 20  # past what the kernel's buffers take
    (tmp_path / "big.bin").write_bytes(os.urandom(size))
    (tmp_path / "slow.bin").write_bytes(b"s" * size)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await fastrpc.serve(
            fastrpc.Router(), "127.0.0.1", 0, static=tmp_path, close_timeout=0.5, **QUIET
        ).start()
        try:
            idle = _get(server.port, "/big.bin", rcvbuf=4096)
            slow = _get(server.port, "/slow.bin", rcvbuf=1 << 16)
            # Read 64 KiB at a time, 0.02 s apart: 3 s or so, past close_timeout.
            slow_read = loop.run_in_executor(None, _read_all, slow, 0.02)
            await asyncio.sleep(2.0)  # idle reads nothing meanwhile
            got = await loop.run_in_executor(None, _read_all, idle)
            assert got.startswith(b"HTTP/1.1 200 ") and len(got) < size, len(got)
            body = (await asyncio.wait_for(slow_read, 10)).partition(b"\r\n\r\n")[2]
            assert body == b"s" * size
            idle = _get(server.port, "/big.bin", rcvbuf=4096)
            await asyncio.sleep(0.2)
        finally:
            t0 = loop.time()
            await asyncio.wait_for(server.close(), 5)
            assert loop.time() - t0 < 2  # not waiting for a client that does not read
            idle.close()

    run(main(), 30)
