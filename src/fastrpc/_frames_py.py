"""Pure-Python frame codec: the twin of ``_frames.pyx``.

Same API and byte-for-byte the same output and errors as the compiled module; used
where no compiler was present at install time or when ``FASTRPC_NO_EXTENSIONS=1``.
The wire format is specified in ``docs/protocol.md``.
"""

from __future__ import annotations

import re as _re
from collections.abc import Iterable, Sequence
from operator import index as _index
from typing import Any as _Any
from typing import Union

from .exceptions import ErrorCode, ProtocolError

# The wire constants, re-exported from wire.py (where they are defined).
from .wire import ACK as ACK
from .wire import CANCEL as CANCEL
from .wire import CREDIT as CREDIT
from .wire import DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from .wire import ERROR as ERROR
from .wire import EXTENSION_BASE as EXTENSION_BASE
from .wire import FLAG_CHANNEL as FLAG_CHANNEL
from .wire import FLAG_COMPRESSED as FLAG_COMPRESSED
from .wire import FLAG_DEADLINE as FLAG_DEADLINE
from .wire import FLAG_KWARGS as FLAG_KWARGS
from .wire import FLAG_MORE as FLAG_MORE
from .wire import FLAG_NEW as FLAG_NEW
from .wire import FLAG_OPEN as FLAG_OPEN
from .wire import FLAG_STREAM as FLAG_STREAM
from .wire import GOAWAY as GOAWAY
from .wire import HELLO as HELLO
from .wire import MAX_FRAMES as MAX_FRAMES
from .wire import NOTIFY as NOTIFY
from .wire import PING as PING
from .wire import PONG as PONG
from .wire import PROTOCOL_VERSION as PROTOCOL_VERSION
from .wire import REQUEST as REQUEST
from .wire import RESPONSE as RESPONSE
from .wire import RESUME as RESUME
from .wire import RESUME_OK as RESUME_OK
from .wire import STREAM_ABORT as STREAM_ABORT
from .wire import STREAM_CLOSE as STREAM_CLOSE
from .wire import STREAM_DATA as STREAM_DATA
from .wire import STREAM_END as STREAM_END
from .wire import STREAM_ERROR as STREAM_ERROR
from .wire import STREAMS as STREAMS
from .wire import VARINT_MAX as VARINT_MAX
from .wire import VIEW_THRESHOLD as VIEW_THRESHOLD

Buffer = Union[bytes, bytearray, memoryview]

IMPLEMENTATION = "python"

# FrameWriter holds a bytes payload this large instead of copying it (the compiled
# twin has the same value: tests/test_frames.py checks).
HOLD_THRESHOLD = 4096

# Frame headers walk_frames checks in one step of Connection.decode's check of a long
# message (~0.3 us each here: ~2.5 ms a step, about one decoded slice's time). The
# compiled twin checks the most a message may hold in one step (~0.1 ms).
WALK_STEP = 8192

# StreamLedger counters are signed 64-bit (the compiled twin keeps them in C structs);
# an update that would leave this range raises OverflowError and changes nothing.
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)


def unfilled(n: int) -> bytearray:
    """A ``bytearray`` of ``n`` bytes to be read into (the compiled codec's is not
    zeroed first; this one is)."""
    if n < 0:
        raise ValueError("negative size")
    return bytearray(n)


def mask_frame(data: _Any, mask: _Any) -> bytes:
    """A client's final binary WebSocket frame, whole: its header, the 4-byte
    ``mask`` and ``data`` masked with it (RFC 6455 5.2, 5.3). ``data``: a
    bytes-like object, or a list of them sent as one message."""
    key = b"".join((mask,))
    if len(key) != 4:
        raise ValueError(f"a mask is 4 bytes, not {len(key)}")
    payload = b"".join(data if type(data) is list else (data,))
    n = len(payload)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 65536:
        head = bytes((0x82, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, 0xFF)) + n.to_bytes(8, "big")
    return head + key + _xor(payload, key)


def _xor(data: Buffer, key: bytes) -> bytes:
    """``data`` XORed with the 4-byte ``key`` repeated (RFC 6455 5.3), as two integers:
    bytewise, in C, whatever the length (the compiled twin's ``_xor_into``)."""
    n = len(data)
    keys = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def unmask(data: Buffer, mask: Buffer) -> None:
    """XOR the writable buffer ``data`` in place with the 4-byte ``mask`` repeated
    from its first byte (RFC 6455 5.3: a client's frame payload unmasked where it was
    read, not copied)."""
    key = memoryview(mask).tobytes()  # (TypeError for what is not bytes-like, as compiled)
    if len(key) != 4:
        raise ValueError(f"a mask is 4 bytes, not {len(key)}")
    view = memoryview(data).cast("B")
    if view.readonly:
        raise BufferError("Object is not writable.")  # as PyObject_GetBuffer says it
    view[:] = _xor(view, key)


def lone_frame(data: Buffer, n: int, masked: bool, max_size: int) -> bytes | None:
    """The payload of ``data[:n]`` when those bytes are one whole final binary
    WebSocket frame of under 126 bytes (a call's or an answer's read), masked (RFC
    6455 5.3: unmasked here) when ``masked``, not masked otherwise, and at most
    ``max_size`` bytes; else None (and nothing read)."""
    data = memoryview(data).cast("B")  # (TypeError for what is not bytes-like, as compiled)
    if n < 2 or n > len(data) or data[0] != 0x82:
        return None
    b1 = data[1]
    length = b1 & 0x7F
    if length >= 126 or length > max_size:
        return None
    if not masked:
        return bytes(data[2:n]) if b1 == length and n == 2 + length else None
    if b1 != 0x80 | length or n != 6 + length:
        return None
    return _xor(data[6:n], bytes(data[2:6]))


def varint_size(value: int) -> int:
    """Bytes taken by ``value`` as a QUIC variable-length integer."""
    if value < 0 or value > VARINT_MAX:
        raise ValueError("varint out of range")
    if type(value) is not int:
        value = _index(value)  # TypeError for non-integers (a float is not a varint)
    if value < 0x40:
        return 1
    if value < 0x4000:
        return 2
    if value < 0x40000000:
        return 4
    return 8


def encode_varint(value: int) -> bytes:
    """Encode ``value`` (0 <= value < 2**62) in its shortest QUIC varint form."""
    n = varint_size(value)
    if type(value) is not int:
        value = _index(value)  # e.g. numpy integers: int.to_bytes below needs an int
    if n == 1:
        return bytes((value,))
    if n == 2:
        return (value | 0x4000).to_bytes(2, "big")
    if n == 4:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def decode_varint(data: Buffer, pos: int = 0) -> tuple[int, int]:
    """Decode one varint at ``pos``; return ``(value, next_pos)``."""
    if not isinstance(data, (bytes, bytearray)):
        # Index bytes, not items: a buffer of wider items (array("H"), a memoryview of
        # format "i", a 2-D view) is read as its raw bytes.
        data = memoryview(data).cast("B")
    return _varint_at(data, pos)


def _varint_at(data: Buffer, pos: int) -> tuple[int, int]:
    """``decode_varint`` on a buffer already indexed by byte."""
    end = len(data)
    if pos < 0 or pos >= end:
        raise ProtocolError("truncated varint")
    first = data[pos]
    n = 1 << (first >> 6)
    if pos + n > end:
        raise ProtocolError("truncated varint")
    if n == 1:
        return first, pos + 1
    value = first & 0x3F
    for i in range(pos + 1, pos + n):
        value = (value << 8) | data[i]
    return value, pos + n


def _check_header(ftype: int, flags: int, fid: int) -> None:
    if not 0 <= ftype <= 0xFF:
        raise ValueError("frame type out of range")
    if not 0 <= flags <= 0xFF:
        raise ValueError("frame flags out of range")
    if not 0 <= fid <= VARINT_MAX:
        raise ValueError("frame id out of range")


def _header(ftype: int, flags: int, fid: int, length: int) -> bytes:
    _check_header(ftype, flags, fid)
    return bytes((ftype, flags)) + encode_varint(fid) + encode_varint(length)


def encode_frame(ftype: int, flags: int, fid: int, payload: Buffer = b"") -> bytes:
    """Encode one frame."""
    payload = memoryview(payload).cast("B")
    return _header(ftype, flags, fid, len(payload)) + payload


def encode_batch(frames: Iterable[Sequence[object]]) -> bytes:
    """Encode ``(type, flags, id, payload)`` tuples back to back into one message."""
    out = bytearray()
    for ftype, flags, fid, payload in frames:
        view = memoryview(payload).cast("B")  # type: ignore[arg-type]
        out += _header(ftype, flags, fid, len(view))  # type: ignore[arg-type]
        out += view
    return bytes(out)


class Frame:
    """One decoded frame: ``type``, ``flags``, ``id`` and ``payload``.

    ``payload`` is ``bytes``, or a read-only ``memoryview`` into the message when it is
    at least ``VIEW_THRESHOLD`` bytes long.
    """

    __slots__ = ("flags", "id", "payload", "type")

    def __init__(self, ftype: int, flags: int, fid: int, payload: Buffer = b"") -> None:
        self.type = ftype
        self.flags = flags
        self.id = fid
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            self.type == other.type
            and self.flags == other.flags
            and self.id == other.id
            and bytes(self.payload) == bytes(other.payload)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Frame(type=0x{self.type:02x}, flags=0x{self.flags:02x}, id={self.id}, "
            f"payload={bytes(self.payload)[:32]!r}{'...' if len(self.payload) > 32 else ''})"
        )


def _decode_one(
    view: memoryview, pos: int, end: int, max_frame_size: int, copy: bool = False
) -> tuple[Frame | None, int]:
    """Decode the frame at ``pos``; return ``(None, pos)`` when it is incomplete."""
    if end - pos < 2:
        return None, pos
    ftype = view[pos]
    flags = view[pos + 1]
    p = pos + 2
    if p >= end:
        return None, pos
    n = 1 << (view[p] >> 6)
    if p + n > end:
        return None, pos
    fid, p = _varint_at(view, p)
    if p >= end:
        return None, pos
    n = 1 << (view[p] >> 6)
    if p + n > end:
        return None, pos
    length, p = _varint_at(view, p)
    if length > max_frame_size:
        raise ProtocolError("frame too large", ErrorCode.FRAME_TOO_LARGE)
    if p + length > end:
        return None, pos
    if length >= VIEW_THRESHOLD and not copy:
        payload: Buffer = view[p : p + length]
    else:
        payload = bytes(view[p : p + length])
    return Frame(ftype, flags, fid, payload), p + length


def _walk(raw: bytes, start: int, count: int, max_frame_size: int) -> tuple[int, int]:
    """Walk at most ``count`` frame headers of ``raw`` from ``start``: ``(end, walked)``;
    raises what :func:`decode_message` would for the frames it reaches."""
    end = len(raw)
    pos = start
    n = 0
    while pos < end and n < count:
        p = pos + 2
        if p >= end:
            raise ProtocolError("truncated frame")
        p += 1 << (raw[p] >> 6)  # the id
        if p >= end:
            raise ProtocolError("truncated frame")
        first = raw[p]
        width = 1 << (first >> 6)
        if p + width > end:
            raise ProtocolError("truncated frame")
        length = (
            first & 0x3F if width == 1 else int.from_bytes(raw[p : p + width], "big") & ((1 << (8 * width - 2)) - 1)
        )
        if length > max_frame_size:
            raise ProtocolError("frame too large", ErrorCode.FRAME_TOO_LARGE)
        p += width + length
        if p > end:
            raise ProtocolError("truncated frame")
        pos = p
        n += 1
    return pos, n


def _count_frames(raw: bytes, start: int, max_frame_size: int, max_frames: int | None) -> int:
    """Walk the frame headers of ``raw`` from ``start``: raise what :func:`decode_message`
    would raise before it has decoded ``max_frames`` frames, else return the count."""
    pos, n = _walk(raw, start, len(raw) if max_frames is None else max_frames, max_frame_size)
    if pos < len(raw):  # frames left past max_frames (with None, len(raw) frames is no bound)
        raise ProtocolError("too many frames in one message", ErrorCode.LIMIT_EXCEEDED)
    return n


def _check_max_frames(max_frames: int | None) -> None:
    if max_frames is not None and max_frames < 0:
        raise ValueError("max_frames must be >= 0")


def decode_message(
    data: Buffer, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_frames: int | None = None, copy: bool = False
) -> list[Frame]:
    """Decode a whole WebSocket message into its frames.

    Payloads of ``VIEW_THRESHOLD`` bytes or more are views of ``data``, unless
    ``copy``: then every payload is bytes of its own (``data`` may be reused as soon
    as this returns: a read buffer).

    Raises :class:`ProtocolError` for an empty message, a frame that runs past the
    end of the message, a frame larger than ``max_frame_size``, or (``LIMIT_EXCEEDED``,
    before any more is decoded) more than ``max_frames`` frames.
    """
    _check_max_frames(max_frames)
    view = memoryview(data).cast("B").toreadonly()
    end = len(view)
    if end == 0:
        raise ProtocolError("empty message")
    if max_frames is not None and end // 4 > max_frames:
        # Room for more than max_frames frames (4 bytes at least each): count them
        # first, headers only, so that a flood of tiny frames is refused without
        # building tens of thousands of Frame objects (the compiled twin is fast
        # enough without this). The same errors, in the same order, as below.
        _count_frames(bytes(view), 0, max_frame_size, max_frames)
    frames, _ = _decode(view, 0, end, max_frame_size, max_frames, copy)
    return frames


def _decode(
    view: memoryview, pos: int, count: int, max_frame_size: int, max_frames: int | None, copy: bool
) -> tuple[list[Frame], int]:
    """At most ``count`` frames of ``view`` from ``pos``, and the position after them."""
    end = len(view)
    frames: list[Frame] = []
    while pos < end:
        if max_frames is not None and len(frames) >= max_frames:
            raise ProtocolError("too many frames in one message", ErrorCode.LIMIT_EXCEEDED)
        if len(frames) >= count:
            break
        frame, nxt = _decode_one(view, pos, end, max_frame_size, copy)
        if frame is None:
            raise ProtocolError("truncated frame")
        frames.append(frame)
        pos = nxt
    return frames, pos


def decode_frames(
    data: Buffer, start: int, count: int, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, copy: bool = False
) -> tuple[list[Frame], int]:
    """Decode at most ``count`` frames of the message ``data``, from ``start`` (a frame
    boundary); return ``(frames, end)``, ``end`` the position after the last of them
    (``len(data)``: the message is done). A message of many frames decoded in parts,
    one part a loop pass; payloads as :func:`decode_message` makes them. Raises what
    :func:`decode_message` would raise for the frames it reaches (not ``max_frames``:
    the caller checks the whole message first, :func:`walk_frames`)."""
    view = memoryview(data).cast("B").toreadonly()
    if not 0 <= start <= len(view):
        raise IndexError("start out of range")
    if count < 0:
        raise ValueError("count must be >= 0")
    return _decode(view, start, count, max_frame_size, None, copy)


def walk_frames(data: Buffer, start: int, count: int, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> tuple[int, int]:
    """Walk at most ``count`` frame headers of the message ``data`` from ``start`` (a
    frame boundary), building no frame: ``(end, walked)``, ``end`` the position after
    the last frame walked (``len(data)``: the message is done). A long message checked
    a step at a time (``Connection.decode``); raises what :func:`decode_message` would
    raise for the frames it reaches (not ``max_frames``: the caller counts)."""
    raw = data if type(data) is bytes else bytes(memoryview(data).cast("B"))
    if not 0 <= start <= len(raw):
        raise IndexError("start out of range")
    if count < 0:
        raise ValueError("count must be >= 0")
    return _walk(raw, start, count, max_frame_size)


def count_frames(
    data: Buffer, start: int = 0, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_frames: int | None = None
) -> int:
    """The number of frames ``decode_message(data[start:], max_frame_size, max_frames)``
    would return, or what it would raise: the frame headers are walked, no frame is
    built."""
    _check_max_frames(max_frames)
    raw = data if type(data) is bytes else bytes(memoryview(data).cast("B"))
    if not 0 <= start <= len(raw):
        raise IndexError("start out of range")
    if start == len(raw):
        raise ProtocolError("empty message")
    return _count_frames(raw, start, max_frame_size, max_frames)


def take_items(
    frames: list[Frame],
    start: int,
    items: list[_Any],
    extra: int,
    kind_mask: int,
    bare: int = -1,
) -> tuple[int, int, int]:
    """Append ``(payload, flags & kind_mask, len(payload) + extra)`` to ``items`` for
    ``frames[start]`` and each frame after it of the same type, flags and id: the run
    of one stream's items in a message, taken in one call. When ``flags & kind_mask``
    is ``bare`` the payloads are appended alone (their kind and charge are implied:
    ``take_run`` with the same ``extra`` and ``bare``), which saves a tuple an item.
    Return ``(end, charge, size)``: ``frames[start:end]`` were taken, ``charge`` the
    sum of their charges, ``size`` of their payload lengths."""
    n = len(frames)
    if not 0 <= start < n:
        raise IndexError("start out of range")
    first = frames[start]
    ftype, flags, fid = first.type, first.flags, first.id
    kind = flags & kind_mask
    alone = kind == bare
    end, size = start, 0
    append = items.append
    while end < n:
        f = frames[end]
        if f.type != ftype or f.flags != flags or f.id != fid:
            break
        payload = f.payload
        k = len(payload)
        size += k
        append(payload if alone else (payload, kind, k + extra))
        end += 1
    return end, size + (end - start) * extra, size


def take_run(
    items: _Any, limit: int, refuse: int, extra: int = 0, bare: int = -1, max_size: int = -1
) -> tuple[list[Buffer], int, int, int, int]:
    """Take from the front of the queue ``items`` (a list or a deque of ``(payload,
    kind, charge)`` entries, as ``take_items`` makes them) the first entry and the
    entries after it of the same kind, at most ``limit``, and (``max_size`` >= 0)
    while their payloads come to at most ``max_size`` bytes (the first entry is taken
    whatever its size); none when the first one's kind has a bit of ``refuse``. An
    entry that is not a tuple is a payload alone, of kind ``bare`` and charge
    ``len(payload) + extra`` (``bare`` < 0: there is none). Return ``(payloads, kind,
    size, charge, largest)``: the payloads in order, their kind, the sum of their
    lengths and of their charges, and the largest charge."""
    out: list[Buffer] = []
    if limit < 1 or not items:
        return out, 0, 0, 0, 0
    kind = size = charge = top = 0
    for entry in items:
        if type(entry) is tuple:
            if len(entry) != 3:
                raise ValueError("a queue entry is (payload, kind, charge)")
            payload, k, c = entry
        elif bare < 0:
            raise TypeError("a queue entry is a tuple (no bare kind given)")
        else:
            payload, k, c = entry, bare, len(entry) + extra
        if not out:
            if k & refuse:
                break
            kind = k
        elif k != kind or (max_size >= 0 and len(payload) > max_size - size):
            break
        out.append(payload)
        size += len(payload)
        charge += c
        top = max(top, c)
        if len(out) == limit:
            break
    n = len(out)
    if n == 0:
        return out, 0, 0, 0, 0
    if n == len(items):
        items.clear()
    elif type(items) is list:
        del items[:n]
    elif len(items) - n < n:
        rest = list(items)[n:]  # a deque, mostly taken: rebuilt from what is left
        items.clear()
        items.extend(rest)
    else:
        for _ in range(n):
            items.popleft()
    return out, kind, size, charge, top


class FrameWriter:
    """Accumulates frames for one outgoing message; ``take()`` returns its bytes.

    A ``bytes`` payload of at least ``HOLD_THRESHOLD`` bytes is held by reference (it
    cannot change) and copied once, by ``take()``, straight into the message (or
    handed out as it is, by ``take_parts()``); any
    other payload is copied at once, as the caller may change it afterwards.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[Buffer] = []  # the message before _buf: buffers and held payloads
        self._parts_len = 0
        self._count = 0

    def add(self, ftype: int, flags: int, fid: int, payload: Buffer = b"") -> int:
        """Append one frame; return its size in bytes (header and payload)."""
        view = memoryview(payload).cast("B")
        head = _header(ftype, flags, fid, len(view))
        self._buf += head
        if len(view) >= HOLD_THRESHOLD and type(payload) is bytes:
            self._parts += (self._buf, payload)
            self._parts_len += len(self._buf) + len(payload)
            self._buf = bytearray()
        else:
            self._buf += view
        self._count += 1
        return len(head) + len(view)

    def add_run(
        self,
        ftype: int,
        flags: int,
        fid: int,
        payloads: list[_Any],  # buffers (a list of bytes is not a list[Buffer])
        credit: int,
        max_len: int,
        charge: int,
        stop_len: int,
    ) -> tuple[int, int]:
        """Append a frame ``(ftype, flags, fid, p)`` for each ``p`` of the list
        ``payloads`` in order, while ``p`` has at most ``max_len`` bytes and its charge
        (``len(p) + charge``) fits in what is left of ``credit``, until the message has
        ``stop_len`` bytes or more (after one frame at least). Return ``(count,
        charged)``: the frames added and the total of their charges."""
        if type(payloads) is not list:
            raise TypeError("payloads must be a list")
        if not 0 <= charge <= 0xFFFF:
            raise ValueError("charge out of range")
        _check_header(ftype, flags, fid)
        left = _index(credit)
        count = spent = 0
        for payload in payloads:
            if count and len(self) >= stop_len:
                break
            n = len(memoryview(payload).cast("B"))
            if n > max_len or n + charge > left - spent:
                break
            self.add(ftype, flags, fid, payload)
            spent += n + charge
            count += 1
        return count, spent

    def __len__(self) -> int:
        return self._parts_len + len(self._buf)

    @property
    def count(self) -> int:
        """Frames added since the last ``take()``."""
        return self._count

    def take(self) -> bytes:
        """Return the message built so far and start a new one."""
        if self._parts:
            self._parts.append(self._buf)
            out = b"".join(self._parts)
            self._start_over()
        else:
            out = bytes(self._buf)
            self._buf.clear()
        self._count = 0
        return out

    def take_parts(self) -> bytes | list[bytes]:
        """As :meth:`take`, but a message with held payloads comes as a list of its
        parts in order (the bytes between them, and the held payloads themselves, not
        copied), for a writer that writes a list whole (``writelines``)."""
        if not self._parts:
            return self.take()
        out = [p if type(p) is bytes else bytes(p) for p in self._parts if len(p)]
        if self._buf:
            out.append(bytes(self._buf))
        self._start_over()
        return out

    def _start_over(self) -> None:
        """Empty, for the next message, after one with held payloads."""
        self._parts = []
        self._parts_len = 0
        self._buf = bytearray()
        self._count = 0


def encode_settings(version: int, settings: dict[int, int]) -> bytes:
    """HELLO payload: varint version, then varint ``(key, value)`` pairs."""
    out = bytearray(encode_varint(version))
    for key, value in settings.items():
        out += encode_varint(key)
        out += encode_varint(value)
    return bytes(out)


def decode_settings(payload: Buffer) -> tuple[int, dict[int, int]]:
    """Parse a HELLO payload; a repeated key or a dangling key is a ProtocolError."""
    data = memoryview(payload).cast("B")
    version, pos = _varint_at(data, 0)
    settings: dict[int, int] = {}
    end = len(data)
    while pos < end:
        key, pos = _varint_at(data, pos)
        if pos >= end:
            raise ProtocolError("setting without a value")
        value, pos = _varint_at(data, pos)
        if key in settings:
            raise ProtocolError("duplicate setting")
        settings[key] = value
    return version, settings


class Traffic:
    """One connection's traffic counters: messages, frames and bytes each way. The
    frame counts are resumption's positions (``docs/protocol.md``, "Resumption").
    Compiled, the call lane counts its messages in C; every other path through
    these methods (one call for a message's counters)."""

    __slots__ = ("bytes_in", "bytes_out", "frames_in", "frames_out", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.messages_in = self.frames_in = self.bytes_in = 0
        self.messages_out = self.frames_out = self.bytes_out = 0

    def sent(self, frames: int, nbytes: int) -> int:
        """A message of ``frames`` frames and ``nbytes`` bytes went out: the position
        of its first frame (``frames_out`` before it)."""
        first = self.frames_out
        self.frames_out = first + frames
        self.messages_out += 1
        self.bytes_out += nbytes
        return first

    def received(self, nbytes: int) -> None:
        """A message of ``nbytes`` bytes arrived (its frames are counted as they are
        taken, past the handshake: :meth:`took`)."""
        self.messages_in += 1
        self.bytes_in += nbytes

    def took(self, frames: int) -> int:
        """``frames`` more frames taken in: ``frames_in`` now (the position to ACK)."""
        self.frames_in += frames
        return self.frames_in


class StreamLedger:
    """Per-stream byte accounting for one direction of a connection.

    For each open stream: bytes and items counted, the flow-control window (credit
    the sender may still use; on the receiving side, what the peer may still send),
    the bytes buffered and not yet consumed, and consumed bytes not yet granted back.
    Lookup by id is O(1).
    """

    __slots__ = ("_grant_divisor", "_streams", "initial_window")

    def __init__(self, initial_window: int, grant_divisor: int = 4) -> None:
        if initial_window < 0 or initial_window > VARINT_MAX:
            raise ValueError("window out of range")
        if grant_divisor < 1:
            raise ValueError("grant_divisor must be >= 1")
        self.initial_window = _index(initial_window)
        self._grant_divisor = _index(grant_divisor)
        # id -> [bytes, items, window, buffered, unacked, window_size]
        self._streams: dict[int, list[int]] = {}

    def open(self, stream_id: int, window: int = -1) -> None:
        """Start accounting for ``stream_id``; ``window`` defaults to the initial one."""
        if stream_id in self._streams:
            raise KeyError(stream_id)
        if not 0 <= stream_id <= VARINT_MAX:
            raise ValueError("stream id out of range")
        if window < 0:
            window = self.initial_window
        elif window > VARINT_MAX:
            raise ValueError("window out of range")
        stream_id = _index(stream_id)
        window = _index(window)
        self._streams[stream_id] = [0, 0, window, 0, 0, window]

    def close(self, stream_id: int) -> None:
        """Forget ``stream_id``; unknown ids are ignored."""
        self._streams.pop(stream_id, None)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def ids(self) -> list[int]:
        """Ids of the open streams, in no particular order (the compiled twin's order
        differs from this one's: compare sorted)."""
        return list(self._streams)

    def _get(self, stream_id: int) -> list[int]:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise KeyError(stream_id) from None

    def window(self, stream_id: int) -> int:
        """Credit left: bytes that may still be sent on the stream."""
        return self._get(stream_id)[2]

    def sent(self, stream_id: int, nbytes: int) -> int:
        """Sender side: ``nbytes`` of one item left; return the credit left.

        The credit goes negative when more than the window was sent.
        """
        entry = self._get(stream_id)
        if nbytes < 0:
            raise ValueError("negative size")
        nbytes = _index(nbytes)
        total = entry[0] + nbytes
        window = entry[2] - nbytes
        if total > _INT64_MAX or window < _INT64_MIN:
            raise OverflowError("stream counter overflow")
        entry[0] = total
        entry[1] += 1
        entry[2] = window
        return window

    def spend(self, stream_id: int, nbytes: int, items: int = 1) -> int:
        """Sender side: when the window holds ``nbytes`` of credit, spend them on
        ``items`` frames and return the credit left; else spend nothing and return -1
        (a ``window()`` check and ``sent()`` in one call)."""
        if items < 0:
            raise ValueError("negative count")
        entry = self._get(stream_id)
        if nbytes < 0:
            raise ValueError("negative size")
        nbytes = _index(nbytes)
        if nbytes > entry[2]:
            return -1
        left = self.sent(stream_id, nbytes)
        entry[1] += items - 1  # sent() counted one
        return left

    def grant(self, stream_id: int, nbytes: int) -> int:
        """Sender side: the peer granted ``nbytes`` of credit; return the new window."""
        entry = self._get(stream_id)
        if nbytes < 0:
            raise ValueError("negative grant")
        if entry[2] + nbytes > VARINT_MAX:
            raise ProtocolError("flow-control window overflow", ErrorCode.FLOW_CONTROL_ERROR)
        entry[2] += _index(nbytes)
        return entry[2]

    def received(self, stream_id: int, nbytes: int, items: int = 1) -> int:
        """Receiver side: ``nbytes`` arrived, in ``items`` frames; return the credit
        left (the sender's window). A peer past its window is a ProtocolError."""
        entry = self._get(stream_id)
        if items < 0:
            raise ValueError("negative count")
        if nbytes < 0:
            raise ValueError("negative size")
        if nbytes > entry[2]:
            raise ProtocolError("flow-control window exceeded", ErrorCode.FLOW_CONTROL_ERROR)
        nbytes = _index(nbytes)
        total = entry[0] + nbytes
        buffered = entry[3] + nbytes
        if total > _INT64_MAX or buffered > _INT64_MAX:
            raise OverflowError("stream counter overflow")
        entry[0] = total
        entry[1] += items
        entry[2] -= nbytes
        entry[3] = buffered
        return entry[2]

    def consumed(self, stream_id: int, nbytes: int) -> int:
        """Receiver side: the consumer took ``nbytes``; return the credit to grant now.

        Credit is returned in batches, once a ``1/grant_divisor`` of the window has
        been consumed, so that CREDIT frames stay a small share of the traffic.
        """
        entry = self._get(stream_id)
        if nbytes < 0:
            raise ValueError("negative size")
        if nbytes > entry[3]:
            raise ValueError("consumed more than buffered")
        nbytes = _index(nbytes)
        buffered = entry[3] - nbytes
        unacked = entry[4] + nbytes
        if unacked > _INT64_MAX:
            raise OverflowError("stream counter overflow")
        if unacked * self._grant_divisor >= entry[5] or (unacked > 0 and buffered == 0 and entry[2] == 0):
            window = entry[2] + unacked
            if window > _INT64_MAX:
                raise OverflowError("stream counter overflow")
            entry[2] = window
            entry[3] = buffered
            entry[4] = 0
            return unacked
        entry[3] = buffered
        entry[4] = unacked
        return 0

    def resize(self, stream_id: int, window_size: int) -> int:
        """Receiver side: grow the stream's window to ``window_size``; return extra credit."""
        entry = self._get(stream_id)
        if window_size > VARINT_MAX:
            raise ValueError("window out of range")
        window_size = _index(window_size)
        extra = window_size - entry[5]
        if extra <= 0:
            return 0
        window = entry[2] + extra
        if window > _INT64_MAX:
            raise OverflowError("stream counter overflow")
        entry[5] = window_size
        entry[2] = window
        return extra

    def stats(self, stream_id: int) -> tuple[int, int, int, int]:
        """``(bytes, items, window, buffered)`` for the stream."""
        entry = self._get(stream_id)
        return entry[0], entry[1], entry[2], entry[3]


# ------------------------------------------------ what decoding a payload will cost
# Decoded sizes on CPython 64-bit (over-estimates, so that the budget errs safe): a
# list is 56 bytes + a pointer per item, a dict about 64 + 40 per entry, a str 49 + its
# bytes, bytes 33 + its bytes, an int outside the cached range 32, a float 24, an
# extension type 64 + its bytes. Kept in step with _frames.pyx by the shared tests.
_LIST, _DICT, _ENTRY, _STR, _BYTES, _INT, _FLOAT, _EXT = 56, 64, 40, 49, 33, 32, 24, 64
_JSON_VALUE = 64
# msgpack first bytes with a fixed-size body: byte -> (body bytes, cost).
_FIXED = {0xCA: (4, _FLOAT), 0xCB: (8, _FLOAT), 0xCC: (1, _INT), 0xCD: (2, _INT), 0xCE: (4, _INT), 0xCF: (8, _INT)}
_FIXED.update({0xD0: (1, _INT), 0xD1: (2, _INT), 0xD2: (4, _INT), 0xD3: (8, _INT)})
_FIXED.update({0xD4 + i: ((1 << i) + 1, _EXT + (1 << i)) for i in range(5)})  # fixext 1..16
# Length-prefixed: byte -> (length bytes, base cost, per-byte, kind) with kind 0: a
# body of that many bytes (+1 for ext's type byte), 1: that many items, 2: entries.
_SIZED = {0xC4: (1, _BYTES, 0), 0xC5: (2, _BYTES, 0), 0xC6: (4, _BYTES, 0)}
_SIZED.update({0xD9: (1, _STR, 0), 0xDA: (2, _STR, 0), 0xDB: (4, _STR, 0)})
_SIZED.update({0xC7: (1, _EXT, 3), 0xC8: (2, _EXT, 3), 0xC9: (4, _EXT, 3)})
_SIZED.update({0xDC: (2, _LIST, 1), 0xDD: (4, _LIST, 1), 0xDE: (2, _DICT, 2), 0xDF: (4, _DICT, 2)})
# Objects of one byte: fixints, nil, false, true (and the unused 0xC1), [], {}, "".
_ONE_BYTE = frozenset([*range(0x80), 0x80, 0x90, 0xA0, 0xC0, 0xC1, 0xC2, 0xC3, *range(0xE0, 0x100)])
_ONE_BYTE_RUN = _re.compile(rb"[\x00-\x80\x90\xa0\xc0-\xc3\xe0-\xff]+")
# A JSON string, from its quote to the closing one or to the end (cut short): a
# backslash escapes the byte after it (if any). Its commas and brackets are text.
_JSON_STRING = _re.compile(rb'"(?:[^"\\]|\\[\s\S]?)*"?')


def payload_cost(data: Buffer, limit: int = VARINT_MAX) -> int:
    """About how many bytes of Python objects decoding ``data`` makes (a payload of
    MessagePack, or of JSON when it starts with ``[``, ``{``, ``"`` or white space): at least
    ``len(data)``. Work is linear in ``len(data)``; declared lengths count in full even
    where the payload is cut short (a decoder may allocate them up front). Past
    ``limit`` the walk stops: the result is then ``max(limit + 1, len(data))``."""
    view = memoryview(data).cast("B")
    n = len(view)
    limit = min(max(limit, 0), VARINT_MAX)
    if n == 0:
        return 0
    # JSON: an array, an object, white space, or a string (a MessagePack value
    # that starts with '"' is the one-byte int 34: longer, it is not one value).
    if view[0] in b"[{ \t\r\n" or (view[0] == 0x22 and n > 1):
        raw = _JSON_STRING.sub(b"", bytes(view))  # (structure only: what is not in a string)
        values = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
        cost = n + values * _JSON_VALUE
        return cost if cost <= limit else max(limit + 1, n)
    raw = bytes(view)
    cost = 0
    pos = 0
    while pos < n and cost <= limit:
        b = raw[pos]
        if b in _ONE_BYTE:
            # A run of one-byte objects ([[], [], ...] is the costly case): counted
            # at C speed, not one Python step per byte.
            end = _ONE_BYTE_RUN.match(raw, pos).end()  # type: ignore[union-attr]
            run = raw[pos:end]
            cost += _DICT * run.count(0x80) + _LIST * run.count(0x90) + _STR * run.count(0xA0)
            pos = end
            continue
        pos += 1
        if b < 0x90:  # fixmap
            cost += _DICT + _ENTRY * (b & 0x0F)
        elif b < 0xA0:  # fixarray
            cost += _LIST + 8 * (b & 0x0F)
        elif b < 0xC0:  # fixstr
            cost += _STR + (b & 0x1F)
            pos += b & 0x1F
        elif b in _FIXED:
            body, c = _FIXED[b]
            cost += c
            pos += body
        else:
            width, base, kind = _SIZED[b]
            length = int.from_bytes(raw[pos : pos + width], "big")
            pos += width
            if kind == 0:
                cost += base + length
                pos += length
            elif kind == 3:
                cost += base + length
                pos += length + 1
            elif kind == 1:
                cost += base + 8 * length
            else:
                cost += base + _ENTRY * length
    if cost > limit:
        return max(limit + 1, n)
    return max(cost, n)
