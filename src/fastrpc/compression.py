"""Per-frame payload compression: zstandard where installed, zlib otherwise.

Decompression is always bounded: a payload that would inflate past the limit is a
:class:`ProtocolError` (COMPRESSION_ERROR), never a large allocation.
"""

from __future__ import annotations

import zlib
from types import ModuleType
from typing import Any

from .exceptions import ErrorCode, ProtocolError

ZLIB = 1
ZSTD = 2

_zstd: ModuleType | None
try:  # optional extra: pip install fastrpc[zstd]
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None


def available() -> int:
    """Bitmask of the algorithms this process can use."""
    return ZLIB | (ZSTD if _zstd is not None else 0)


def choose(local: int, remote: int) -> int:
    """The algorithm both sides support, zstd first; 0 for none."""
    common = local & remote
    if common & ZSTD and _zstd is not None:
        return ZSTD
    if common & ZLIB:
        return ZLIB
    return 0


class Compressor:
    """Compresses payloads with one algorithm; keeps its context between calls."""

    __slots__ = ("_ctx", "algorithm")

    def __init__(self, algorithm: int, level: int | None = None) -> None:
        self.algorithm = algorithm
        self._ctx: Any
        if algorithm == ZSTD:
            if _zstd is None:
                raise ValueError("zstandard is not installed")
            self._ctx = _zstd.ZstdCompressor(level=3 if level is None else level)
        elif algorithm == ZLIB:
            self._ctx = 1 if level is None else level
        else:
            raise ValueError(f"unknown compression algorithm {algorithm}")

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if self.algorithm == ZSTD:
            return bytes(self._ctx.compress(data))
        return zlib.compress(data, self._ctx)


def decompress(algorithm: int, data: bytes | bytearray | memoryview, max_size: int) -> bytes:
    """Inflate ``data``; more than ``max_size`` bytes out is a ProtocolError."""
    try:
        if algorithm == ZLIB:
            d = zlib.decompressobj()
            out = d.decompress(data, max_size + 1)
            if len(out) > max_size or d.unconsumed_tail:
                raise ProtocolError(f"an item inflates past max_item_size ({max_size})", ErrorCode.COMPRESSION_ERROR)
            if not d.eof:
                raise ProtocolError("truncated compressed payload", ErrorCode.COMPRESSION_ERROR)
            return out
        if algorithm == ZSTD and _zstd is not None:
            raw = bytes(data)
            reader = _zstd.ZstdDecompressor().stream_reader(raw)
            out = reader.read(max_size + 1)
            if len(out) > max_size:
                raise ProtocolError(f"an item inflates past max_item_size ({max_size})", ErrorCode.COMPRESSION_ERROR)
            # The reader ends quietly where its input does: a truncated frame reads as
            # its prefix (b"" often). Whole only if it gave the size its header names,
            # or (size unknown, or 0) if a decompressor reaches the frame's end (its
            # output is ``out`` again, already bounded).
            size = _zstd.frame_content_size(raw)
            if size > 0:
                whole = size == len(out)
            else:
                d = _zstd.ZstdDecompressor().decompressobj()
                d.decompress(raw)
                whole = bool(d.eof)
            if not whole:
                raise ProtocolError("truncated compressed payload", ErrorCode.COMPRESSION_ERROR)
            return bytes(out)
    except ProtocolError:
        raise
    except Exception as exc:  # zlib.error, zstd.ZstdError: corrupt input
        raise ProtocolError(f"corrupt compressed payload: {exc}", ErrorCode.COMPRESSION_ERROR) from None
    raise ProtocolError("compressed frame without negotiated compression", ErrorCode.COMPRESSION_ERROR)
