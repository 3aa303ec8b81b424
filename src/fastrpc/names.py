"""Named streams (docs/protocol.md, "Named streams"): a stream an application names by
a string (the seed's ``crypto.randomUUID()`` pattern) travels on a wire id both sides
compute from the name, far above the ids the counters reach: no frame carries the
name. 48 bits of the name's FNV-1a hash, then the sender's parity."""

from __future__ import annotations

__all__ = ["NAMED_STREAM_BASE", "named_stream_id"]

NAMED_STREAM_BASE = 1 << 60
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


def named_stream_id(name: str, parity: int) -> int:
    """The wire id of the stream named ``name`` sent by the side of ``parity`` (1:
    the client, 0: the server)."""
    h = _FNV_OFFSET
    for byte in name.encode("utf-8", "surrogatepass"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return NAMED_STREAM_BASE + ((h & 0xFFFF_FFFF_FFFF) << 1) + parity
