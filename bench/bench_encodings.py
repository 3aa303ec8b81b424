"""Cost and size of integer encodings for the frame header (docs/encoding-measurements.md).

    PYTHONPATH=src python bench/bench_encodings.py [--repeat N] [--number N]

Three headers for ``type:u8, flags:u8, id, length`` + payload, each with a minimal
pure-Python codec written the same way (no validation, frames as tuples):

* fixed: little-endian ``<BBQI`` through one ``struct.Struct`` (14 header bytes)
* QUIC varint (RFC 9000, section 16; fastrpc's format): 1/2/4/8 bytes
* LEB128 (protobuf, WebAssembly): 7 bits a byte

plus fastrpc's real codecs for the QUIC varint: ``fastrpc._frames_py`` (pure) and
``fastrpc._frames`` (Cython), which also validate and make ``Frame`` objects.
Prints markdown tables: header bytes per frame for several id ranges, then the time
to encode and decode a batch of 1000 frames with 16-byte payloads.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import platform
import struct
import sys
import timeit
from collections.abc import Callable
from typing import Any

try:
    import fastrpc  # noqa: F401
except ImportError:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))

Frames = list[tuple[int, int, int, bytes]]

# ------------------------------------------------------------------ fixed width

_FIXED = struct.Struct("<BBQI")


def fixed_encode(frames: Frames) -> bytes:
    out = bytearray()
    pack = _FIXED.pack
    for ftype, flags, fid, payload in frames:
        out += pack(ftype, flags, fid, len(payload))
        out += payload
    return bytes(out)


def fixed_decode(data: bytes) -> Frames:
    unpack_from = _FIXED.unpack_from
    size = _FIXED.size
    out = []
    pos = 0
    end = len(data)
    while pos < end:
        ftype, flags, fid, n = unpack_from(data, pos)
        pos += size
        out.append((ftype, flags, fid, data[pos : pos + n]))
        pos += n
    return out


# ------------------------------------------------------------------ QUIC varint


def _quic(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def quic_encode(frames: Frames) -> bytes:
    out = bytearray()
    for ftype, flags, fid, payload in frames:
        out.append(ftype)
        out.append(flags)
        out += _quic(fid)
        out += _quic(len(payload))
        out += payload
    return bytes(out)


_QUIC_MASK = {2: 0x3FFF, 4: 0x3FFFFFFF, 8: 0x3FFFFFFFFFFFFFFF}


def quic_decode(data: bytes) -> Frames:
    out = []
    pos = 0
    end = len(data)
    from_bytes = int.from_bytes
    while pos < end:
        ftype = data[pos]
        flags = data[pos + 1]
        pos += 2
        first = data[pos]
        if first < 0x40:
            fid = first
            pos += 1
        else:
            n = 1 << (first >> 6)
            fid = from_bytes(data[pos : pos + n], "big") & _QUIC_MASK[n]
            pos += n
        first = data[pos]
        if first < 0x40:
            length = first
            pos += 1
        else:
            n = 1 << (first >> 6)
            length = from_bytes(data[pos : pos + n], "big") & _QUIC_MASK[n]
            pos += n
        out.append((ftype, flags, fid, data[pos : pos + length]))
        pos += length
    return out


# ---------------------------------------------------------------------- LEB128


def _leb(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def leb_encode(frames: Frames) -> bytes:
    out = bytearray()
    for ftype, flags, fid, payload in frames:
        out.append(ftype)
        out.append(flags)
        out += _leb(fid)
        out += _leb(len(payload))
        out += payload
    return bytes(out)


def _leb_at(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def leb_decode(data: bytes) -> Frames:
    out = []
    pos = 0
    end = len(data)
    while pos < end:
        ftype = data[pos]
        flags = data[pos + 1]
        pos += 2
        if data[pos] < 0x80:
            fid = data[pos]
            pos += 1
        else:
            fid, pos = _leb_at(data, pos)
        if data[pos] < 0x80:
            length = data[pos]
            pos += 1
        else:
            length, pos = _leb_at(data, pos)
        out.append((ftype, flags, fid, data[pos : pos + length]))
        pos += length
    return out


# ----------------------------------------------------------------- measuring

ID_RANGES = [
    ("id < 64 (a young connection)", [2 * k + 1 for k in range(32)]),
    ("id < 16,384", [2 * k + 1 for k in range(1000, 8000, 7)]),
    ("id ~ 1,000,000", [10**6 + k for k in range(1000)]),
    ("id ~ 2^40", [2**40 + k for k in range(1000)]),
    ("id ~ 2^61", [2**61 + k for k in range(1000)]),
]


def header_sizes() -> list[tuple[str, float, float, float]]:
    rows = []
    for label, ids in ID_RANGES:
        frames = [(0x10, 0, i, bytes(16)) for i in ids]
        n = len(frames)
        rows.append(
            (
                label,
                len(fixed_encode(frames)) / n - 16,
                len(quic_encode(frames)) / n - 16,
                len(leb_encode(frames)) / n - 16,
            )
        )
    return rows


def best(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Best time of one call, in seconds."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def codec_times(number: int, repeat: int) -> list[tuple[str, int, float, float]]:
    frames = [(0x10, 0, 2 * k + 1, bytes(range(16))) for k in range(1000)]
    candidates: list[tuple[str, Callable[[Frames], bytes], Callable[[bytes], Any]]] = [
        ("fixed `<BBQI` (struct), pure Python", fixed_encode, fixed_decode),
        ("LEB128, pure Python", leb_encode, leb_decode),
        ("QUIC varint, pure Python", quic_encode, quic_decode),
    ]
    for module, label in (("fastrpc._frames_py", "pure"), ("fastrpc._frames", "Cython")):
        try:
            codec = importlib.import_module(module)
        except ImportError:
            print(f"({module} is not available: skipped)", file=sys.stderr)
            continue
        candidates.append((f"QUIC varint, fastrpc `{module}` ({label})", codec.encode_batch, codec.decode_message))
    rows = []
    for label, encode, decode in candidates:
        message = encode(frames)
        decoded = decode(message)
        assert [
            (f[0], f[1], f[2], bytes(f[3])) if isinstance(f, tuple) else (f.type, f.flags, f.id, bytes(f.payload))
            for f in decoded
        ] == frames, label
        rows.append(
            (
                label,
                len(message),
                best(lambda: encode(frames), number, repeat),
                best(lambda: decode(message), number, repeat),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=200, help="calls per timing (default 200)")
    parser.add_argument("--repeat", type=int, default=7, help="timings, the best is kept (default 7)")
    args = parser.parse_args()

    print(f"Python {platform.python_version()} on {platform.machine()}, {platform.processor() or platform.system()}\n")
    print("Header bytes per frame (type + flags + id + length; the 16-byte payload not counted):\n")
    print("| ids | fixed `<BBQI` | QUIC varint | LEB128 |")
    print("| --- | ---: | ---: | ---: |")
    for label, fixed, quic, leb in header_sizes():
        print(f"| {label} | {fixed:.2f} | {quic:.2f} | {leb:.2f} |")
    print(
        "\nA batch of 1000 frames, 16-byte payloads, ids 1, 3, ... 1999 (best of "
        f"{args.repeat} x {args.number} calls):\n"
    )
    print("| codec | bytes/frame | encode, us/batch (= ns/frame) | decode, us/batch (= ns/frame) |")
    print("| --- | ---: | ---: | ---: |")
    for label, size, enc, dec in codec_times(args.number, args.repeat):
        print(f"| {label} | {size / 1000:.1f} | {enc * 1e6:.1f} | {dec * 1e6:.1f} |")
    print("\n(timeit switches the garbage collector off while timing.)")


if __name__ == "__main__":
    main()
