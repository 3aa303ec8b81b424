"""Per-frame payload compression: zstandard where installed, zlib otherwise.

Decompression is always bounded: a payload that would inflate past the limit, a zstd
frame that asks for a window past it (:func:`window_limit`), bytes after the end of the
compressed data, and an item that would decode to more than the connection's memory
budget (``Connection.decodes_past_budget``, once inflated) are a :class:`ProtocolError`
(COMPRESSION_ERROR), never a large allocation nor data dropped. See
``docs/protocol.md``, "Compression".
"""

from __future__ import annotations

import zlib
from types import ModuleType
from typing import Any

from .exceptions import ErrorCode, ProtocolError

ZLIB = 1
ZSTD = 2
_KIB = 1 << 10

# The most bytes of objects ``frames.payload_cost`` charges per encoded byte of a
# payload that decodes (_frames_py.payload_cost, kept in step with _frames.pyx): an
# array of empty maps, b"\xdd" + length + b"\x80" * n, costs the list's 8-byte
# pointer + a 64-byte dict (_DICT) per byte, 72 (b"\x80" * n alone 64, b"\x90" * n
# 56, JSON "[[],[],...]" ~44). Lengths declared past the end of the payload score
# higher, but the codec (msgspec) refuses those as truncated before allocating them.
# A plain payload of at most limit // MAX_DECODE_RATIO bytes cannot decode past
# ``limit``: only a longer one is walked (one integer comparison on the hot path;
# Connection.decode_free, Connection.decodes_past_budget).
MAX_DECODE_RATIO = 72

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


ZSTD_MIN_WINDOW = 8 << 20  # the window zstd's format asks every decoder to accept


def window_limit(max_size: int) -> int:
    """The largest window a zstd frame may ask of a side whose ``max_item_size`` is
    ``max_size``: that rounded up to a power of two, at least ``ZSTD_MIN_WINDOW``
    (8 MiB: RFC 8878 recommends decoders accept it, and a streaming encoder's default
    level asks 2-8 MiB whatever the item's size), at most zstd's 2 GiB. zstandard
    alone would allow 128 MiB, whatever the limit."""
    return max(ZSTD_MIN_WINDOW, 1 << min(max(max_size - 1, 1).bit_length(), 31))


def decompress(algorithm: int, data: bytes | bytearray | memoryview, max_size: int) -> bytes:
    """Inflate ``data``: one whole compressed payload (a zlib stream, or one zstd
    frame) and nothing after it. :class:`ProtocolError` (COMPRESSION_ERROR) for more
    than ``max_size`` bytes out (it stops there: nothing past it is inflated), a zstd
    frame asking for a window past :func:`window_limit`, bytes after the end of the
    compressed data, or a corrupt or truncated payload."""
    try:
        if algorithm == ZLIB:
            d = zlib.decompressobj()
            out = d.decompress(data, max_size + 1)
            if len(out) > max_size or d.unconsumed_tail:
                raise _too_large(max_size)
            if not d.eof:
                raise ProtocolError("truncated compressed payload", ErrorCode.COMPRESSION_ERROR)
            _no_trailer(len(d.unused_data))
            return out
        if algorithm == ZSTD and _zstd is not None:
            return _zstd_decompress(bytes(data), max_size)
    except ProtocolError:
        raise
    except Exception as exc:  # zlib.error, zstd.ZstdError: corrupt input
        raise ProtocolError(f"corrupt compressed payload: {exc}", ErrorCode.COMPRESSION_ERROR) from None
    raise ProtocolError("compressed frame without negotiated compression", ErrorCode.COMPRESSION_ERROR)


def _zstd_decompress(raw: bytes, max_size: int) -> bytes:
    assert _zstd is not None
    params = _zstd.get_frame_parameters(raw)  # ZstdError for a header that is not one
    known = _zstd.frame_content_size(raw)  # -1: not in the header
    if known > max_size:  # refused from the header: nothing allocated, nothing inflated
        raise _too_large(max_size)
    window = window_limit(max_size)
    if params.window_size > window:
        raise ProtocolError(
            f"a zstd frame asks for a window of {params.window_size} bytes, over {window} "
            f"(max_item_size ({max_size}) rounded up to a power of two, at least 8 MiB)",
            ErrorCode.COMPRESSION_ERROR,
        )
    dctx = _zstd.ZstdDecompressor(max_window_size=window)
    out: bytes | None = None
    if known < 0:
        # No size in the header: inflate at most max_size + 1 bytes first. (With a
        # size, zstd checks each block against it: the pass below stays bounded.)
        out = dctx.stream_reader(raw, read_across_frames=False).read(max_size + 1)
        if len(out) > max_size:
            raise _too_large(max_size)
    # One pass that stops at the end of the frame, telling where that is (zstandard's
    # own decompress() lets bytes after an empty frame through).
    d = dctx.decompressobj(read_across_frames=False)
    whole = d.decompress(raw)
    if not d.eof or (out is not None and whole != out):
        raise ProtocolError("truncated compressed payload", ErrorCode.COMPRESSION_ERROR)
    _no_trailer(len(d.unused_data))
    return bytes(whole)


def _too_large(max_size: int) -> ProtocolError:
    return ProtocolError(f"an item inflates past max_item_size ({max_size})", ErrorCode.COMPRESSION_ERROR)


def _no_trailer(extra: int) -> None:
    # zlib and zstd stop at the end of their data: what follows would be dropped
    # without a word (lost, or smuggled past whatever checks the inflated item).
    if extra:
        raise ProtocolError(
            f"{extra} bytes after the end of the compressed data of an item", ErrorCode.COMPRESSION_ERROR
        )
