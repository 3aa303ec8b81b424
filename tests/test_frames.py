"""Frame codec tests: the data vectors in tests/vectors/, run against both codecs
(``codec`` fixture: compiled ``fastrpc._frames`` and pure ``fastrpc._frames_py``), plus
the wire constants, settings, StreamLedger, zero-copy views, argument errors and API
parity."""

from __future__ import annotations

import array
import inspect
import pathlib
import pickle
import random
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from fastrpc import wire
from fastrpc.exceptions import ErrorCode, ProtocolError

VECTORS = pathlib.Path(__file__).parent / "vectors"
VARINT_MAX = (1 << 62) - 1
FrameTuple = tuple[int, int, int, bytes]


# --------------------------------------------------------------------------- vectors


def unhex(field: str) -> bytes:
    """The hex notation of the vector files: "-" empty, "+" joins, "HH*N" repeats."""
    field = field.replace(" ", "")
    if field == "-":
        return b""
    out = bytearray()
    for piece in field.split("+"):
        if "*" in piece:
            byte, count = piece.split("*")
            out += bytes.fromhex(byte) * int(count)
        else:
            out += bytes.fromhex(piece)
    return bytes(out)


def _rows(filename: str, columns: int) -> Iterator[list[str]]:
    for number, raw in enumerate((VECTORS / filename).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("|")]
        assert len(fields) == columns, f"{filename}:{number}: {columns} fields expected"
        yield fields


@dataclass(frozen=True)
class Vector:
    name: str
    canonical: bool
    message: bytes
    frames: tuple[FrameTuple, ...]


@dataclass(frozen=True)
class BadVector:
    name: str
    function: str
    max_frame_size: int | None
    data: bytes
    reason: str
    code: ErrorCode


@dataclass(frozen=True)
class SettingsVector:
    name: str
    canonical: bool
    payload: bytes
    version: int
    settings: dict[int, int]


def _frame(text: str) -> FrameTuple:
    ftype, flags, fid, payload = (p.strip() for p in text.split(","))
    return int(ftype, 16), int(flags, 16), int(fid), unhex(payload)


def load_vectors() -> list[Vector]:
    out = []
    for name, form, message, frames in _rows("frames.txt", 4):
        assert form in ("canonical", "lenient"), name
        parsed = tuple(_frame(f) for f in frames.split(";"))
        out.append(Vector(name, form == "canonical", unhex(message), parsed))
    return out


def load_bad_vectors() -> list[BadVector]:
    out = []
    for name, function, mfs, data, reason, code in _rows("frames_invalid.txt", 6):
        limit = None if mfs == "-" else (1 << 20) if mfs == "default" else int(mfs)
        out.append(BadVector(name, function, limit, unhex(data), reason, ErrorCode[code]))
    return out


def load_settings_vectors() -> list[SettingsVector]:
    out = []
    for name, form, payload, version, pairs in _rows("settings.txt", 5):
        settings = {}
        if pairs != "-":
            for pair in pairs.split(","):
                key, value = pair.split("=")
                settings[int(key)] = int(value)
        out.append(SettingsVector(name, form == "canonical", unhex(payload), int(version), settings))
    return out


VALID = load_vectors()
INVALID = load_bad_vectors()
SETTINGS = load_settings_vectors()
WIRE_NAMES = sorted(n for n in vars(wire) if n.isupper())


def as_tuples(frames: list[Any]) -> list[FrameTuple]:
    return [(f.type, f.flags, f.id, bytes(f.payload)) for f in frames]


def error_of(exc: BaseException) -> tuple[type, str, int]:
    assert isinstance(exc, ProtocolError)
    return type(exc), exc.reason, int(exc.code)


def test_vector_files_cover_the_format(codec: ModuleType) -> None:
    types = {f[0] for v in VALID for f in v.frames}
    constants = {
        getattr(codec, n)
        for n in WIRE_NAMES
        if not n.startswith(("FLAG_", "VARINT", "DEFAULT", "VIEW", "PROTOCOL", "MAX_"))
    }
    assert constants <= types, f"frame types without a vector: {sorted(constants - types)}"
    ids = {f[2] for v in VALID for f in v.frames}
    assert {0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, VARINT_MAX} <= ids
    assert any(not v.canonical for v in VALID)
    assert any(len(v.frames) > 3 for v in VALID)
    sizes = {len(f[3]) for v in VALID for f in v.frames}
    assert {0, codec.VIEW_THRESHOLD - 1, codec.VIEW_THRESHOLD} <= sizes
    reasons = {(b.function, b.reason) for b in INVALID}
    assert {
        ("decode_message", "empty message"),
        ("decode_message", "truncated frame"),
        ("decode_message", "frame too large"),
        ("decode_varint", "truncated varint"),
        ("decode_settings", "setting without a value"),
        ("decode_settings", "duplicate setting"),
    } <= reasons


# ------------------------------------------------------------------- valid vectors


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_decode_message(codec: ModuleType, vec: Vector) -> None:
    assert as_tuples(codec.decode_message(vec.message)) == list(vec.frames)


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_decode_message_copy(codec: ModuleType, vec: Vector) -> None:
    """copy=True: every payload is bytes of its own, however large, so the buffer the
    message was read into may be reused at once (the transport's read buffer)."""
    buf = bytearray(vec.message)
    frames = codec.decode_message(memoryview(buf), copy=True)
    assert all(type(f.payload) is bytes for f in frames)
    buf[:] = bytes(len(buf))  # the read buffer is reused
    assert as_tuples(frames) == list(vec.frames)


def test_decode_message_views_unless_copy(codec: ModuleType) -> None:
    big = bytes(range(256)) * 8  # past VIEW_THRESHOLD
    message = codec.encode_frame(0x10, 0, 1, big) + codec.encode_frame(0x10, 0, 1, b"small")
    for data in (message, bytearray(message), memoryview(message)):
        viewed = codec.decode_message(data)
        assert type(viewed[0].payload) is memoryview and type(viewed[1].payload) is bytes
        copied = codec.decode_message(data, copy=True)
        assert [type(f.payload) for f in copied] == [bytes, bytes]
        assert as_tuples(copied) == as_tuples(viewed)


def frame_bounds(codec: ModuleType, message: bytes) -> list[tuple[int, int, int]]:
    """``(start, payload_start, end)`` of each frame of a valid message."""
    bounds = []
    pos = 0
    while pos < len(message):
        _, after_id = codec.decode_varint(message, pos + 2)
        length, payload_start = codec.decode_varint(message, after_id)
        bounds.append((pos, payload_start, payload_start + length))
        pos = payload_start + length
    return bounds


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_message_cut_short(codec: ModuleType, vec: Vector) -> None:
    """Cut at a frame boundary, a message gives the frames before the cut; cut inside
    a frame (every byte of its header, and its payload's first, middle and last), it is
    a "truncated frame"."""
    bounds = frame_bounds(codec, vec.message)
    assert bounds[-1][2] == len(vec.message)
    for k, (start, payload_start, end) in enumerate(bounds):
        if start:
            assert as_tuples(codec.decode_message(vec.message[:start])) == list(vec.frames[:k])
        cuts = set(range(start + 1, payload_start + 1))
        if end > payload_start:
            cuts |= {payload_start + 1, (payload_start + end) // 2, end - 1}
        for cut in sorted(cuts - {end}):
            with pytest.raises(ProtocolError) as info:
                codec.decode_message(vec.message[:cut])
            assert error_of(info.value) == (ProtocolError, "truncated frame", ErrorCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_whole_plus_trailing_partial_frame(codec: ModuleType, vec: Vector) -> None:
    partial = codec.encode_frame(*vec.frames[0])
    data = vec.message + partial[:-1]
    # A whole message must not end inside a frame.
    with pytest.raises(ProtocolError) as info:
        codec.decode_message(data)
    assert error_of(info.value) == (ProtocolError, "truncated frame", ErrorCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_decode_other_buffer_types(codec: ModuleType, vec: Vector) -> None:
    for data in (bytearray(vec.message), memoryview(vec.message), memoryview(b"xx" + vec.message)[2:]):
        assert as_tuples(codec.decode_message(data)) == list(vec.frames)


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_encode(codec: ModuleType, vec: Vector) -> None:
    batch = codec.encode_batch(vec.frames)
    single = b"".join(codec.encode_frame(*f) for f in vec.frames)
    writer = codec.FrameWriter()
    for f in vec.frames:
        writer.add(*f)
    assert writer.count == len(vec.frames)
    assert len(writer) == len(batch)
    written = writer.take()
    assert writer.count == 0 and len(writer) == 0 and writer.take() == b""
    assert type(batch) is bytes and type(written) is bytes
    assert batch == single == written
    if vec.canonical:
        assert batch == vec.message
    else:
        assert len(batch) < len(vec.message)  # the shortest form
        assert as_tuples(codec.decode_message(batch)) == list(vec.frames)


def test_encode_batch_accepts_any_iterable(codec: ModuleType) -> None:
    frames = [(0x10, 0, i, bytes([i]) * i) for i in range(20)]
    expected = b"".join(codec.encode_frame(*f) for f in frames)
    assert codec.encode_batch(iter(frames)) == expected
    assert codec.encode_batch(tuple(list(f) for f in frames)) == expected
    assert codec.encode_batch(f for f in frames) == expected
    assert codec.encode_batch([]) == b""


def test_encode_payload_buffer_types(codec: ModuleType) -> None:
    raw = bytes(range(200)) * 4
    expected = codec.encode_frame(0x10, 1, 9, raw)
    for payload in (
        bytearray(raw),
        memoryview(raw),
        memoryview(b"..." + raw)[3:],
        array.array("B", raw),
        memoryview(raw).cast("H"),  # items of 2 bytes: the bytes are what is sent
        memoryview(raw).cast("B", (40, 20)),  # 2-D
    ):
        assert codec.encode_frame(0x10, 1, 9, payload) == expected
        assert codec.encode_batch([(0x10, 1, 9, payload)]) == expected
        writer = codec.FrameWriter()
        writer.add(0x10, 1, 9, payload)
        assert writer.take() == expected
    assert codec.encode_frame(0x10, 1, 9) == codec.encode_frame(0x10, 1, 9, b"") == bytes.fromhex("10010900")


def test_frame_writer_grows_and_restarts(codec: ModuleType) -> None:
    writer = codec.FrameWriter()
    frames = [(0x10, 0, i, bytes(i % 700)) for i in range(3000)]
    for f in frames:
        writer.add(*f)
    assert writer.take() == codec.encode_batch(frames)
    writer.add(0x20, 0, 0, b"ping")
    assert writer.take() == bytes.fromhex("2000000470696e67")
    big = bytes(3 << 20)
    writer.add(0x10, 0, 1, big)
    assert writer.take() == codec.encode_frame(0x10, 0, 1, big)
    assert len(writer) == 0


def test_hold_threshold_same_in_both(codec_pair: tuple[ModuleType, ModuleType]) -> None:
    compiled, pure = codec_pair
    assert compiled.HOLD_THRESHOLD == pure.HOLD_THRESHOLD


def test_frame_writer_holds_large_bytes(codec: ModuleType) -> None:
    """A bytes payload of HOLD_THRESHOLD bytes or more is held by reference until
    take() (seen in its reference count), not copied by add(); a smaller one, or one
    that is not exactly bytes, is copied at once. The C enum is what decides in the
    compiled codec: this also checks it equals the Python-visible HOLD_THRESHOLD."""

    class Bytes(bytes):
        pass

    threshold = codec.HOLD_THRESHOLD
    writer = codec.FrameWriter()
    for payload, held in [
        (bytes(range(256)) * (threshold // 256), True),
        (bytes(threshold - 1), False),
        (bytes(64 << 10), True),
        (Bytes(threshold), False),
    ]:
        before = sys.getrefcount(payload)
        writer.add(0x31, 0, 5, payload)
        assert sys.getrefcount(payload) == before + held
        expected = codec.encode_frame(0x31, 0, 5, payload)
        assert (len(writer), writer.count) == (len(expected), 1)
        assert writer.take() == expected
        assert sys.getrefcount(payload) == before
        assert (len(writer), writer.count) == (0, 0)


def test_frame_writer_interleaves_held_and_copied(codec: ModuleType) -> None:
    threshold = codec.HOLD_THRESHOLD
    big = [bytes([i]) * (threshold + i) for i in range(3)]
    frames = [
        (0x10, 0, 1, big[0]),
        (0x10, 0, 1, big[1]),
        (0x20, 0, 0, b"ping"),
        (0x10, 1, 2, bytearray(threshold * 2)),
        (0x10, 0, 3, big[2]),
        (0x30, 0, 4, b""),
        (0x10, 0, 3, memoryview(big[2])),
    ]
    writer = codec.FrameWriter()
    for _ in range(2):  # the writer starts over after take()
        for f in frames:
            writer.add(*f)
        expected = b"".join(codec.encode_frame(*f) for f in frames)
        assert (len(writer), writer.count) == (len(expected), len(frames))
        assert writer.take() == expected
    writer.add(*frames[2])
    assert writer.take() == codec.encode_frame(*frames[2])


def test_frame_writer_take_parts_hands_held_payloads_out_as_they_are(codec: ModuleType) -> None:
    """take_parts(): the same message as take(), as a list of parts in order when it
    holds payloads (each held payload the very object given, not a copy; the bytes
    between them copied out), as bytes when it holds none; either way the writer
    starts over and keeps no reference to what it handed out."""
    threshold = codec.HOLD_THRESHOLD
    big = [bytes([i]) * (threshold + i) for i in range(3)]
    frames = [
        (0x10, 0, 1, big[0]),
        (0x10, 0, 1, big[1]),  # two held in a row: no empty part between them
        (0x20, 0, 0, b"ping"),
        (0x10, 1, 2, bytearray(threshold * 2)),  # copied: it could change
        (0x10, 0, 3, big[2]),
        (0x30, 0, 4, b""),
    ]
    writer = codec.FrameWriter()
    for _ in range(2):
        before = [sys.getrefcount(b) for b in big]
        for f in frames:
            writer.add(*f)
        expected = b"".join(codec.encode_frame(*f) for f in frames)
        parts = writer.take_parts()
        assert type(parts) is list and all(type(p) is bytes and p for p in parts)
        assert b"".join(parts) == expected
        assert [p for p in parts if any(p is b for b in big)] == big
        assert (len(writer), writer.count, writer.take()) == (0, 0, b"")
        del parts
        assert [sys.getrefcount(b) for b in big] == before
    writer.add(0x10, 0, 1, big[0])  # held alone, nothing after it
    parts = writer.take_parts()
    head = codec.encode_frame(0x10, 0, 1, big[0])[: -len(big[0])]
    assert parts == [head, big[0]] and parts[1] is big[0]
    writer.add(0x20, 0, 0, b"ping")
    assert writer.take_parts() == codec.encode_frame(0x20, 0, 0, b"ping")  # nothing held: bytes
    assert writer.take_parts() == b""


def test_unfilled_is_a_bytearray_of_its_size_to_read_into(codec: ModuleType) -> None:
    """unfilled(n): a new, resizable bytearray of n bytes each call (the compiled
    one not zeroed: only its length and that it takes writes are promised)."""
    for n in (0, 1, 7, 1 << 16):
        a, b = codec.unfilled(n), codec.unfilled(n)
        assert type(a) is bytearray and len(a) == n and a is not b
        memoryview(a)[:] = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        assert a[: min(n, 5)] == bytes(range(min(n, 5)))
        a += b"!"
        assert len(a) == n + 1
    with pytest.raises(ValueError):
        codec.unfilled(-1)
    with pytest.raises(TypeError):
        codec.unfilled(1.5)


def test_frame_writer_copies_buffers_that_can_change(codec: ModuleType) -> None:
    size = codec.HOLD_THRESHOLD * 2
    data = bytearray(b"a" * size)
    view_data = bytearray(b"b" * size)
    writer = codec.FrameWriter()
    writer.add(0x10, 0, 1, data)
    writer.add(0x10, 0, 2, memoryview(view_data))
    data[:] = b"x" * size
    view_data[:] = b"y" * size
    data += b"resized"  # add() kept no export of it
    assert writer.take() == codec.encode_frame(0x10, 0, 1, b"a" * size) + codec.encode_frame(0x10, 0, 2, b"b" * size)


def test_frame_writer_releases_held_payloads(codec: ModuleType) -> None:
    """A writer dropped or re-initialised with payloads still held lets them go."""
    payload = bytes(codec.HOLD_THRESHOLD)
    before = sys.getrefcount(payload)
    writer = codec.FrameWriter()
    for _ in range(100):  # more than one growth of the compiled codec's array
        writer.add(0x10, 0, 1, payload)
    assert sys.getrefcount(payload) == before + 100
    writer.__init__()
    assert sys.getrefcount(payload) == before
    assert (len(writer), writer.count, writer.take()) == (0, 0, b"")
    writer.add(0x10, 0, 1, payload)
    del writer
    assert sys.getrefcount(payload) == before


def test_frame_writer_error_leaves_large_payload_unheld(codec: ModuleType) -> None:
    payload = bytes(codec.HOLD_THRESHOLD)
    before = sys.getrefcount(payload)
    writer = codec.FrameWriter()
    writer.add(0x10, 0, 1, b"ok")
    for ftype, flags, fid in [(300, 0, 0), (0, 256, 0), (0, 0, -1)]:
        with pytest.raises(ValueError):
            writer.add(ftype, flags, fid, payload)
    assert sys.getrefcount(payload) == before
    assert (len(writer), writer.count) == (6, 1)  # unchanged
    assert writer.take() == bytes.fromhex("100001026f6b")


# ----------------------------------------------------------------- invalid vectors


def _run_bad(codec: ModuleType, vec: BadVector) -> Any:
    if vec.function == "decode_message":
        return codec.decode_message(vec.data, vec.max_frame_size)
    if vec.function == "decode_varint":
        return codec.decode_varint(vec.data, 0)
    assert vec.function == "decode_settings", vec.function
    return codec.decode_settings(vec.data)


@pytest.mark.parametrize("vec", INVALID, ids=lambda v: v.name)
def test_invalid(codec: ModuleType, vec: BadVector) -> None:
    with pytest.raises(ProtocolError) as info:
        _run_bad(codec, vec)
    assert error_of(info.value) == (ProtocolError, vec.reason, vec.code)
    assert info.value.close_code == (1009 if vec.code == ErrorCode.FRAME_TOO_LARGE else 1002)


def decode_in_parts(
    codec: ModuleType, data: Any, count: int, max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE
) -> list[Any]:
    """Every frame of ``data``, ``count`` at a time with decode_frames."""
    out: list[Any] = []
    pos = 0
    while pos < len(data):
        part, end = codec.decode_frames(data, pos, count, max_frame_size)
        assert len(part) == count or end == len(data)
        assert end > pos
        out += part
        pos = end
    return out


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_decode_frames_in_parts_and_count_frames(codec: ModuleType, vec: Vector) -> None:
    """A message decoded a few frames at a time (decode_frames, from each frame's
    start) gives decode_message's frames; count_frames counts them, from any frame."""
    for count in (1, 2, 3, len(vec.frames)):
        assert as_tuples(decode_in_parts(codec, vec.message, count)) == list(vec.frames)
    bounds = frame_bounds(codec, vec.message)
    for k, (start, _, _) in enumerate(bounds):
        assert codec.count_frames(vec.message, start) == len(vec.frames) - k
        assert (
            codec.count_frames(memoryview(vec.message), start, wire.DEFAULT_MAX_FRAME_SIZE, len(bounds) - k)
            == len(bounds) - k
        )
        part, end = codec.decode_frames(memoryview(bytearray(vec.message)), start, 1, copy=True)
        assert as_tuples(part) == [vec.frames[k]] and type(part[0].payload) is bytes and end == bounds[k][2]
    assert codec.decode_frames(vec.message, len(vec.message), 5) == ([], len(vec.message))
    assert codec.decode_frames(vec.message, 0, 0) == ([], 0)


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_walk_frames_steps_over_the_headers(codec: ModuleType, vec: Vector) -> None:
    """walk_frames, ``count`` headers a step from any frame, ends where those frames end
    (decode_frames' end) and says how many it walked; the last step ends the message."""
    bounds = frame_bounds(codec, vec.message)
    for count in (1, 2, 3, len(bounds) + 1):
        for k, (start, _, _) in enumerate(bounds):
            walked = min(count, len(bounds) - k)
            end = bounds[k + walked - 1][2]
            assert codec.walk_frames(vec.message, start, count) == (end, walked)
            assert codec.walk_frames(memoryview(bytearray(vec.message)), start, count, wire.DEFAULT_MAX_FRAME_SIZE) == (
                end,
                walked,
            )
            assert codec.decode_frames(vec.message, start, count)[1] == end
    assert codec.walk_frames(vec.message, len(vec.message), 5) == (len(vec.message), 0)
    assert codec.walk_frames(vec.message, 0, 0) == (0, 0)


@pytest.mark.parametrize("vec", [v for v in INVALID if v.function == "decode_message"], ids=lambda v: v.name)
def test_count_frames_and_decode_frames_refuse_what_decode_message_refuses(codec: ModuleType, vec: BadVector) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.count_frames(vec.data, 0, vec.max_frame_size)
    assert error_of(info.value) == (ProtocolError, vec.reason, vec.code)
    if vec.data and vec.code != ErrorCode.LIMIT_EXCEEDED:  # (walk_frames leaves max_frames to its caller)
        with pytest.raises(ProtocolError) as info:
            codec.walk_frames(vec.data, 0, len(vec.data), vec.max_frame_size)
        assert error_of(info.value) == (ProtocolError, vec.reason, vec.code)
    if vec.data:
        with pytest.raises(ProtocolError) as info:
            decode_in_parts(codec, vec.data, 1, vec.max_frame_size)
        assert error_of(info.value) == (ProtocolError, vec.reason, vec.code)


def test_count_frames_stops_at_max_frames_and_checks_its_arguments(codec: ModuleType) -> None:
    one = codec.encode_frame(0x10, 0, 1, b"x")
    message = one * 5
    assert codec.count_frames(message, 0, 100, 5) == 5
    with pytest.raises(ProtocolError) as info:
        codec.count_frames(message, 0, 100, 4)
    assert error_of(info.value) == (ProtocolError, "too many frames in one message", ErrorCode.LIMIT_EXCEEDED)
    assert codec.count_frames(message, len(one), 100, 4) == 4  # from the second frame
    with pytest.raises(ProtocolError, match="empty message"):
        codec.count_frames(message, len(message))
    for bad in (-1, len(message) + 1):
        with pytest.raises(IndexError):
            codec.count_frames(message, bad)
        with pytest.raises(IndexError):
            codec.decode_frames(message, bad, 1)
    with pytest.raises(ValueError):
        codec.count_frames(message, 0, 100, -1)
    with pytest.raises(ValueError):
        codec.decode_frames(message, 0, -1)


def test_walk_frames_checks_its_arguments_and_stops_at_a_broken_frame(codec: ModuleType) -> None:
    one = codec.encode_frame(0x10, 0, 1, b"x")
    message = one * 5
    for bad in (-1, len(message) + 1):
        with pytest.raises(IndexError):
            codec.walk_frames(message, bad, 1)
    with pytest.raises(ValueError):
        codec.walk_frames(message, 0, -1)
    # A step that stops before a broken frame raises nothing; the step that reaches it does.
    broken = message + one[:-1]
    assert codec.walk_frames(broken, 0, 5) == (len(message), 5)
    with pytest.raises(ProtocolError, match="truncated frame"):
        codec.walk_frames(broken, len(message), 1)
    large = message + codec.encode_frame(0x10, 0, 1, bytes(101))
    assert codec.walk_frames(large, 0, 5, 100) == (len(message), 5)
    with pytest.raises(ProtocolError, match="frame too large"):
        codec.walk_frames(large, 0, 6, 100)


def test_walk_step_is_the_whole_message_compiled_and_a_slice_of_it_pure(
    codec_pair: tuple[ModuleType, ModuleType],
) -> None:
    """Connection.decode checks a long message WALK_STEP headers a loop pass: the
    compiled codec, fast, a whole message at once; the pure one in steps."""
    compiled, pure = codec_pair
    assert compiled.WALK_STEP == wire.MAX_FRAMES + 1
    assert pure.WALK_STEP == 8192


def test_max_frame_size_boundary(codec: ModuleType) -> None:
    frame = codec.encode_frame(0x10, 0, 1, bytes(16))
    assert as_tuples(codec.decode_message(frame, 16)) == [(0x10, 0, 1, bytes(16))]
    assert as_tuples(codec.decode_message(codec.encode_frame(0x10, 0, 1), 0)) == [(0x10, 0, 1, b"")]
    for limit in (15, 0, -1, -(2**70)):
        with pytest.raises(ProtocolError, match="frame too large"):
            codec.decode_message(frame, limit)
    for limit in (2**62, 2**70, 16.0, 16.5, float("inf")):
        assert len(codec.decode_message(frame, limit)) == 1
    with pytest.raises(ProtocolError, match="frame too large"):
        codec.decode_message(frame, 15.9)


# -------------------------------------------------------------- wire constants


def test_wire_constants_are_defined_once(codec: ModuleType) -> None:
    """The codecs and fastrpc.frames re-export wire's constants: the same objects."""
    from fastrpc import frames

    assert set(WIRE_NAMES) == {n for n in frames.__all__ if n.isupper()} - {"IMPLEMENTATION"}
    for name in WIRE_NAMES:
        assert getattr(codec, name) is getattr(wire, name), name
        assert getattr(frames, name) is getattr(wire, name), name


def test_compiled_limits_equal_wire(codec: ModuleType) -> None:
    """The compiled codec's C copies of VIEW_THRESHOLD (``_VIEW_THRESHOLD``) and
    VARINT_MAX (``FASTRPC_VARINT_MAX``) equal wire's, seen from where they act."""
    threshold = wire.VIEW_THRESHOLD
    msg = codec.encode_batch([(0x10, 0, 1, bytes(threshold - 1)), (0x10, 0, 1, bytes(threshold))])
    small, large = (f.payload for f in codec.decode_message(msg))
    assert type(small) is bytes and isinstance(large, memoryview)
    assert codec.encode_varint(wire.VARINT_MAX) == b"\xff" * 8
    assert codec.decode_varint(b"\xff" * 8) == (wire.VARINT_MAX, 8)
    assert len(codec.encode_frame(0x10, 0, wire.VARINT_MAX)) == 11
    for call in (codec.encode_varint, codec.varint_size, codec.StreamLedger):
        with pytest.raises(ValueError, match="out of range"):
            call(wire.VARINT_MAX + 1)
    with pytest.raises(ValueError, match="frame id out of range"):
        codec.encode_frame(0x10, 0, wire.VARINT_MAX + 1)
    assert len(codec.decode_message(codec.encode_frame(0x10, 0, 1, b"x"), wire.VARINT_MAX)) == 1


# -------------------------------------------------------------------- settings


@pytest.mark.parametrize("vec", SETTINGS, ids=lambda v: v.name)
def test_settings(codec: ModuleType, vec: SettingsVector) -> None:
    version, settings = codec.decode_settings(vec.payload)
    assert (version, settings) == (vec.version, vec.settings)
    assert list(settings) == list(vec.settings)  # payload order
    encoded = codec.encode_settings(vec.version, vec.settings)
    if vec.canonical:
        assert encoded == vec.payload
    else:
        assert codec.decode_settings(encoded) == (vec.version, vec.settings)
    assert codec.decode_settings(bytearray(vec.payload)) == (vec.version, vec.settings)


def test_settings_argument_errors(codec: ModuleType) -> None:
    with pytest.raises(ValueError, match="varint out of range"):
        codec.encode_settings(-1, {})
    with pytest.raises(ValueError, match="varint out of range"):
        codec.encode_settings(1, {1: VARINT_MAX + 1})
    with pytest.raises(TypeError):
        codec.encode_settings(1, {1: 1.5})
    with pytest.raises(AttributeError):
        codec.encode_settings(1, [(1, 2)])


# ---------------------------------------------------------------------- varints


@pytest.mark.parametrize(
    "value,size",
    [(0, 1), (63, 1), (64, 2), (16383, 2), (16384, 4), (2**30 - 1, 4), (2**30, 8), (VARINT_MAX, 8)],
)
def test_varint(codec: ModuleType, value: int, size: int) -> None:
    encoded = codec.encode_varint(value)
    assert codec.varint_size(value) == len(encoded) == size
    assert codec.decode_varint(encoded) == (value, size)
    assert codec.decode_varint(b"\xff" + encoded, 1) == (value, size + 1)
    assert codec.decode_varint(bytearray(encoded)) == (value, size)
    assert codec.decode_varint(memoryview(b"\xff" + encoded)[1:]) == (value, size)


def test_varint_errors(codec: ModuleType) -> None:
    for bad in (-1, VARINT_MAX + 1, 2**64, -(2**70)):
        with pytest.raises(ValueError, match="varint out of range"):
            codec.varint_size(bad)
        with pytest.raises(ValueError, match="varint out of range"):
            codec.encode_varint(bad)
    for bad in (1.5, 100.0, "1", None):
        with pytest.raises(TypeError):
            codec.varint_size(bad)
        with pytest.raises(TypeError):
            codec.encode_varint(bad)
    with pytest.raises(ValueError):
        codec.encode_varint(-1.5)  # the range check comes first
    assert codec.encode_varint(True) == b"\x01"
    for pos in (-1, 1, 2, 2**70, -(2**70)):
        with pytest.raises(ProtocolError, match="truncated varint"):
            codec.decode_varint(b"\x05", pos)
    with pytest.raises(TypeError):
        codec.decode_varint(b"\x05", 0.0)
    with pytest.raises(TypeError):
        codec.decode_varint("abc")
    # A buffer of wider items is read as bytes.
    assert codec.decode_varint(memoryview(b"\x40\x25\x00\x00").cast("H")) == (37, 2)
    assert codec.decode_varint(array.array("B", b"\x40\x25")) == (37, 2)


# ------------------------------------------------------------ zero-copy payloads


def test_large_payloads_are_views_of_the_message(codec: ModuleType) -> None:
    threshold = codec.VIEW_THRESHOLD
    frames = [
        (0x10, 0, 1, b"a" * (threshold + 88)),
        (0x10, 0, 3, b"b" * (threshold - 1)),
        (0x10, 0, 5, b"c" * threshold),
        (0x10, 0, 7, b""),
    ]
    msg = codec.encode_batch(frames)
    decoded = codec.decode_message(msg)
    assert as_tuples(decoded) == frames
    views = [decoded[0].payload, decoded[2].payload]
    for view in views:
        assert isinstance(view, memoryview)
        assert view.readonly and view.format == "B" and view.ndim == 1
        assert view.obj is msg  # a slice of one view over the message, no copy
    assert type(decoded[1].payload) is bytes and type(decoded[3].payload) is bytes

    # Zero-copy: the views show the message's own bytes ...
    buf = bytearray(msg)
    decoded = codec.decode_message(buf)
    offset = msg.index(b"a" * 10)
    buf[offset] = ord("z")
    assert decoded[0].payload[0] == ord("z")
    assert bytes(decoded[1].payload) == b"b" * (threshold - 1)  # small ones are copies
    # ... pin it (a bytearray cannot be resized under them) ...
    with pytest.raises(BufferError):
        buf += b"x"
    # ... and keep it alive.
    view = codec.decode_message(bytes(msg))[0].payload
    assert bytes(view) == b"a" * (threshold + 88)
    with pytest.raises(TypeError):
        view[0] = 1  # read-only


# --------------------------------------------------------------------- Frame


def test_frame_object(codec: ModuleType) -> None:
    frame = codec.Frame(0x10, 0x21, 12345, b"payload")
    assert (frame.type, frame.flags, frame.id, frame.payload) == (0x10, 0x21, 12345, b"payload")
    assert frame == codec.Frame(ftype=0x10, flags=0x21, fid=12345, payload=bytearray(b"payload"))
    assert frame == codec.Frame(0x10, 0x21, 12345, memoryview(b"payload"))
    assert frame != codec.Frame(0x10, 0x21, 12345, b"other")
    assert frame != codec.Frame(0x11, 0x21, 12345, b"payload")
    assert frame != (0x10, 0x21, 12345, b"payload")
    assert codec.Frame(1, 0, 0).payload == b""
    with pytest.raises(TypeError):
        hash(frame)
    assert repr(frame) == "Frame(type=0x10, flags=0x21, id=12345, payload=b'payload')"
    assert repr(codec.Frame(1, 2, 3, b"x" * 40)) == (
        "Frame(type=0x01, flags=0x02, id=3, payload=b'" + "x" * 32 + "'...)"
    )
    assert pickle.loads(pickle.dumps(frame)) == frame


def test_compiled_frame_is_read_only(codec_pair: tuple[ModuleType, ModuleType]) -> None:
    compiled, _ = codec_pair
    frame = compiled.Frame(1, 0, 0, b"")
    with pytest.raises(AttributeError):
        frame.id = 5


# ------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "args,exc,message",
    [
        ((256, 0, 0, b""), ValueError, "frame type out of range"),
        ((-1, 0, 0, b""), ValueError, "frame type out of range"),
        ((0, 256, 0, b""), ValueError, "frame flags out of range"),
        ((0, -1, 0, b""), ValueError, "frame flags out of range"),
        ((0, 0, -1, b""), ValueError, "frame id out of range"),
        ((0, 0, VARINT_MAX + 1, b""), ValueError, "frame id out of range"),
        ((0, 0, 2**80, b""), ValueError, "frame id out of range"),
        ((1.5, 300, 0, b""), ValueError, "frame flags out of range"),  # ranges first
        ((1.5, 0, 0, b""), TypeError, None),
        ((0, 0, 100.0, b""), TypeError, None),
        (("1", 0, 0, b""), TypeError, None),
        ((0, 0, 0, 123), TypeError, None),
        ((0, 0, 0, "text"), TypeError, None),
        ((0, 0, 0, None), TypeError, None),
        ((300, 0, 0, 123), TypeError, None),  # the payload is checked first
        ((0, 0, 0, memoryview(b"abcdef")[::2]), TypeError, None),  # not contiguous
    ],
)
def test_encode_argument_errors(codec: ModuleType, args: tuple[Any, ...], exc: type, message: str | None) -> None:
    with pytest.raises(exc, match=message):
        codec.encode_frame(*args)
    with pytest.raises(exc, match=message):
        codec.encode_batch([(0x10, 0, 1, b"ok"), args])
    writer = codec.FrameWriter()
    writer.add(0x10, 0, 1, b"ok")
    with pytest.raises(exc, match=message):
        writer.add(*args)
    assert (len(writer), writer.count) == (6, 1)  # unchanged
    assert writer.take() == bytes.fromhex("100001026f6b")


def test_encode_batch_shape_errors(codec: ModuleType) -> None:
    with pytest.raises(ValueError):
        codec.encode_batch([(1, 0, 0)])
    with pytest.raises(ValueError):
        codec.encode_batch([(1, 0, 0, b"", b"")])
    with pytest.raises(TypeError):
        codec.encode_batch([1])
    with pytest.raises(TypeError):
        codec.encode_batch(None)


def test_decode_argument_errors(codec: ModuleType) -> None:
    for bad in ("text", 123, None, memoryview(b"abcdef")[::2]):
        with pytest.raises(TypeError):
            codec.decode_message(bad)
        with pytest.raises(TypeError):
            codec.decode_settings(bad)
    # The limit is compared with each frame's length: a TypeError once there is one.
    with pytest.raises(TypeError):
        codec.decode_message(codec.encode_frame(1, 0, 0, b"x"), None)
    with pytest.raises(ProtocolError, match="empty message"):
        codec.decode_message(b"", None)
    released = memoryview(b"\x01\x00\x00\x00")
    released.release()
    for call in (
        lambda: codec.encode_frame(1, 0, 0, released),
        lambda: codec.decode_varint(released),
        lambda: codec.decode_message(released),
        lambda: codec.decode_settings(released),
    ):
        with pytest.raises(ValueError, match="released"):
            call()


# ------------------------------------------------------------------ StreamLedger


def test_ledger_window_and_sending(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(1000)
    assert ledger.initial_window == 1000
    ledger.open(1)
    ledger.open(3, 50)
    assert ledger.window(1) == 1000 and ledger.window(3) == 50
    assert ledger.sent(1, 300) == 700
    assert ledger.sent(1, 0) == 700
    assert ledger.stats(1) == (300, 2, 700, 0)
    assert ledger.sent(3, 80) == -30  # over-sent: negative credit
    assert ledger.grant(3, 30) == 0
    assert ledger.grant(1, 300) == 1000
    with pytest.raises(ValueError, match="negative grant"):
        ledger.grant(1, -1)
    with pytest.raises(ValueError, match="negative size"):
        ledger.sent(1, -1)
    assert ledger.stats(1) == (300, 2, 1000, 0)


def test_ledger_spend_takes_credit_only_when_the_window_has_it(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(100)
    ledger.open(1)
    assert ledger.spend(1, 60) == 40
    assert ledger.spend(1, 41) == -1  # not enough: nothing spent
    assert ledger.stats(1) == (60, 1, 40, 0)
    assert ledger.spend(1, 40) == 0
    assert ledger.spend(1, 0) == 0
    assert ledger.spend(1, 1) == -1
    assert ledger.stats(1) == (100, 3, 0, 0)
    with pytest.raises(ValueError, match="negative size"):
        ledger.spend(1, -1)
    with pytest.raises(KeyError):
        ledger.spend(5, 1)


def test_frame_writer_add_returns_the_frame_size(codec: ModuleType) -> None:
    w = codec.FrameWriter()
    sizes = [
        w.add(0x10, 0, fid, payload)
        for fid, payload in ((1, b""), (2**20, b"x" * 10), (3, b"y" * 5000), (3, bytearray(5000)))
    ]
    assert sizes == [4, 2 + 4 + 1 + 10, 2 + 1 + 2 + 5000, 2 + 1 + 2 + 5000]  # (5000 bytes: held by reference)
    assert sum(sizes) == len(w) == len(w.take())


def test_ledger_spend_counts_the_frames_of_a_run(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(100)
    ledger.open(1)
    assert ledger.spend(1, 90, 3) == 10
    assert ledger.stats(1) == (90, 3, 10, 0)
    assert ledger.spend(1, 11, 2) == -1  # past the window: nothing spent, nothing counted
    assert ledger.stats(1) == (90, 3, 10, 0)
    with pytest.raises(ValueError, match="negative count"):
        ledger.spend(1, 1, -1)


def test_frame_writer_add_run_is_add_frame_by_frame(codec: ModuleType) -> None:
    rng = random.Random(17)
    for _ in range(200):
        payloads: list[Any] = [
            rng.choice((b"", b"x" * rng.randrange(1, 200), bytearray(rng.randrange(300)), b"h" * 5000))
            for _ in range(rng.randrange(0, 12))
        ]
        credit = rng.choice((-5, 0, 40, 500, 6000, 20000, 2**70))
        max_len, stop_len = rng.choice((0, 100, 250, 10**6)), rng.choice((0, 64, 1000, 10**9))
        run, one = codec.FrameWriter(), codec.FrameWriter()
        run.add(0x20, 0, 9, b"before")  # the run goes on after what the message holds
        one.add(0x20, 0, 9, b"before")
        count, charged = run.add_run(0x10, 4, 2**20, payloads, credit, max_len, 32, stop_len)
        # The reference: add() while each payload fits, stopping once the message is long enough.
        k = spent = 0
        for p in payloads:
            if k and len(one) >= stop_len:
                break
            if len(p) > max_len or spent + len(p) + 32 > credit:
                break
            one.add(0x10, 4, 2**20, p)
            spent += len(p) + 32
            k += 1
        assert (count, charged) == (k, spent)
        assert run.count == one.count == k + 1
        assert len(run) == len(one)
        assert run.take() == one.take()


def test_frame_writer_add_run_checks_its_arguments(codec: ModuleType) -> None:
    w = codec.FrameWriter()
    with pytest.raises(TypeError, match="list"):
        w.add_run(0x10, 0, 1, (b"x",), 100, 100, 32, 100)
    with pytest.raises(ValueError, match="charge"):
        w.add_run(0x10, 0, 1, [b"x"], 100, 100, -1, 100)
    with pytest.raises(ValueError, match="frame type"):
        w.add_run(0x100, 0, 1, [b"x"], 100, 100, 32, 100)
    with pytest.raises(TypeError):
        w.add_run(0x10, 0, 1, [b"x", 5], 1000, 100, 32, 1000)  # not a buffer
    assert w.count == 1  # the frames before the bad payload stay (as with add())
    assert w.add_run(0x10, 0, 1, [], 100, 100, 32, 100) == (0, 0)


def test_ledger_grant_overflow(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(VARINT_MAX - 10)
    ledger.open(1)
    assert ledger.grant(1, 10) == VARINT_MAX
    for nbytes in (1, 2**62, 2**64, 2**100):
        with pytest.raises(ProtocolError) as info:
            ledger.grant(1, nbytes)
        assert error_of(info.value) == (ProtocolError, "flow-control window overflow", ErrorCode.FLOW_CONTROL_ERROR)
        assert info.value.close_code == 1008
    assert ledger.window(1) == VARINT_MAX


def test_ledger_receiving_and_flow_control_violation(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(100)
    ledger.open(2)
    ledger.received(2, 60)
    assert ledger.stats(2) == (60, 1, 40, 60)
    for nbytes in (41, 2**63, 2**80):
        with pytest.raises(ProtocolError) as info:
            ledger.received(2, nbytes)
        assert error_of(info.value) == (ProtocolError, "flow-control window exceeded", ErrorCode.FLOW_CONTROL_ERROR)
    assert ledger.stats(2) == (60, 1, 40, 60)  # unchanged
    ledger.received(2, 40)
    assert ledger.window(2) == 0
    with pytest.raises(ProtocolError):
        ledger.received(2, 1)
    with pytest.raises(ValueError, match="negative size"):
        ledger.received(2, -1)
    with pytest.raises(ValueError, match="consumed more than buffered"):
        ledger.consumed(2, 101)
    with pytest.raises(ValueError, match="negative size"):
        ledger.consumed(2, -1)


def test_ledger_counts_the_frames_of_a_run(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(1000)
    ledger.open(2)
    assert ledger.received(2, 320, 10) == 680  # ten frames of 32 bytes, charged at once
    assert ledger.stats(2) == (320, 10, 680, 320)
    ledger.received(2, 0, 0)
    assert ledger.stats(2) == (320, 10, 680, 320)
    with pytest.raises(ValueError, match="negative count"):
        ledger.received(2, 1, -1)
    with pytest.raises(ProtocolError):
        ledger.received(2, 681, 3)
    assert ledger.stats(2) == (320, 10, 680, 320)  # unchanged


def _take_reference(frames: list[Any], start: int, extra: int, mask: int) -> tuple[list[Any], tuple[int, int, int]]:
    first, end = frames[start], start
    while end < len(frames) and (frames[end].type, frames[end].flags, frames[end].id) == (
        first.type,
        first.flags,
        first.id,
    ):
        end += 1
    items = [(bytes(f.payload), f.flags & mask, len(f.payload) + extra) for f in frames[start:end]]
    return items, (end, sum(c for _, _, c in items), sum(len(p) for p, _, _ in items))


@pytest.mark.parametrize("queue", [list, deque])
def test_take_run_takes_the_front_run_of_one_kind(codec: ModuleType, queue: type) -> None:
    rng = random.Random(5)
    for _ in range(300):
        entries = [
            (b"p" * rng.randrange(40), kind, rng.randrange(32, 100))
            for kind in rng.choices((0, 0, 0, 0x40, 0x80, 0xC0), k=rng.randrange(0, 40))
        ]
        limit, refuse = rng.choice((0, 1, 5, 64, 1000)), rng.choice((0, 0x80))
        max_size = rng.choice((-1, -1, 0, 1, 39, 100, 400))
        items = queue(entries)
        got = codec.take_run(items, limit, refuse, max_size=max_size)
        # The reference: the front entries of the first one's kind, up to the limit,
        # and while their payloads fit max_size (the first whatever its size).
        run: list[Any] = []
        for entry in entries[: max(limit, 0)]:
            if (not run and entry[1] & refuse) or (run and entry[1] != run[0][1]):
                break
            if run and max_size >= 0 and sum(len(p) for p, _, _ in run) + len(entry[0]) > max_size:
                break
            run.append(entry)
        if not run:
            assert got == ([], 0, 0, 0, 0)
        else:
            assert got == (
                [p for p, _, _ in run],
                run[0][1],
                sum(len(p) for p, _, _ in run),
                sum(c for _, _, c in run),
                max(c for _, _, c in run),
            )
        assert list(items) == entries[len(run) :] and type(items) is queue


def test_take_run_checks_the_entries(codec: ModuleType) -> None:
    with pytest.raises(TypeError):
        codec.take_run([[b"x", 0, 33]], 10, 0)  # not a tuple
    with pytest.raises(ValueError, match="payload, kind, charge"):
        codec.take_run([(b"x", 0)], 10, 0)
    items = [(b"x", 0, 33), (b"y", 0, 33), (b"z", 0)]
    with pytest.raises(ValueError):
        codec.take_run(items, 10, 0)
    assert len(items) == 3  # nothing taken


def test_take_items_takes_one_streams_run(codec: ModuleType) -> None:
    ids = (1, 3, 2**40 + 1)  # an id past the small-int cache: equal, not the same object
    message = b"".join(
        [codec.encode_frame(0x10, 0x40, ids[2], b"a" * n) for n in (0, 5, 3000)]  # 3000: a view
        + [codec.encode_frame(0x10, 0x40, ids[2], b"b")]
        + [codec.encode_frame(0x10, 0, ids[2], b"c")]  # other flags: a new run
        + [codec.encode_frame(0x10, 0, ids[0], b"d"), codec.encode_frame(0x10, 0, ids[1], b"e")]
        + [codec.encode_frame(0x11, 0, ids[1], b"f")]  # other type
    )
    frames = codec.decode_message(message)
    assert type(frames[2].payload) is memoryview
    got: list[Any] = [("before", 0, 0)]
    assert codec.take_items(frames, 0, got, 32, 0x40 | 0x04) == (4, 3006 + 4 * 32, 3006)
    assert [(bytes(p), k, c) for p, k, c in got[1:]] == _take_reference(frames, 0, 32, 0x44)[0]
    assert got[0] == ("before", 0, 0) and got[3][0] is frames[2].payload  # the payload as decoded
    for start, end in ((4, 5), (5, 6), (6, 7), (7, 8)):
        assert codec.take_items(frames, start, [], 32, 0x44)[0] == end
    for start in (-1, len(frames)):
        with pytest.raises(IndexError):
            codec.take_items(frames, start, [], 32, 0x44)


def test_take_items_matches_frame_by_frame(codec: ModuleType) -> None:
    rng = random.Random(17)
    for _ in range(300):
        specs = [
            (
                rng.choice((0x10, 0x10, 0x10, 0x02)),
                rng.choice((0, 0, 0x40, 0x04)),
                rng.choice((1, 1, 3, 300)),
                rng.randbytes(rng.randrange(0, 40)),
            )
            for _ in range(rng.randrange(1, 12))
        ]
        frames = codec.decode_message(b"".join(codec.encode_frame(*spec) for spec in specs))
        start = rng.randrange(len(frames))
        items: list[Any] = []
        result = codec.take_items(frames, start, items, 32, 0x44)
        expect_items, expect = _take_reference(frames, start, 32, 0x44)
        assert (result, [(bytes(p), k, c) for p, k, c in items]) == (expect, expect_items)


def test_take_items_holds_the_bare_kind_alone(codec: ModuleType) -> None:
    # Items of the ``bare`` kind are queued as their payload alone: take_run with the
    # same extra and bare gives back what the tuples would have given.
    rng = random.Random(23)
    for _ in range(300):
        specs = [
            (0x10, rng.choice((0, 0x40, 0x40, 0xC0)), 1, rng.randbytes(rng.randrange(0, 40)))
            for _ in range(rng.randrange(1, 12))
        ]
        frames = codec.decode_message(b"".join(codec.encode_frame(*spec) for spec in specs))
        bare_q: list[Any] = []
        tuple_q: list[Any] = []
        start = 0
        while start < len(frames):
            end = codec.take_items(frames, start, bare_q, 32, 0xC0, 0x40)[0]
            assert codec.take_items(frames, start, tuple_q, 32, 0xC0) == codec.take_items(
                frames, start, [], 32, 0xC0, 0x40
            )
            start = end
        assert [type(e) is tuple for e in bare_q] == [f.flags & 0xC0 != 0x40 for f in frames]
        assert [e if type(e) is tuple else (e, 0x40, len(e) + 32) for e in bare_q] == tuple_q
        limit, refuse = rng.choice((1, 3, 64)), rng.choice((0, 0x80))
        max_size = rng.choice((-1, 16, 64))
        while True:
            want = codec.take_run(tuple_q, limit, refuse, max_size=max_size)
            assert codec.take_run(bare_q, limit, refuse, 32, 0x40, max_size) == want
            assert len(bare_q) == len(tuple_q)
            if not want[0]:
                break


def test_take_run_refuses_a_bare_entry_without_a_bare_kind(codec: ModuleType) -> None:
    items = [b"xy", (b"z", 0, 33)]
    with pytest.raises(TypeError):
        codec.take_run(items, 10, 0)
    assert len(items) == 2
    assert codec.take_run(items, 10, 0, 32, 0x40) == ([b"xy"], 0x40, 2, 34, 34)
    assert codec.take_run(items, 10, 0, 32, 0x40) == ([b"z"], 0, 1, 33, 33) and not items


def test_ledger_grants_in_quarter_window_batches(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(1000)
    ledger.open(1)
    ledger.received(1, 1000)
    assert ledger.consumed(1, 100) == 0
    assert ledger.consumed(1, 149) == 0  # 249 < 1000 / 4
    assert ledger.consumed(1, 1) == 250  # a quarter: granted back
    assert ledger.stats(1) == (1000, 1, 250, 750)
    assert ledger.consumed(1, 250) == 250
    assert ledger.consumed(1, 0) == 0
    assert ledger.consumed(1, 500) == 500
    assert ledger.stats(1) == (1000, 1, 1000, 0)
    # Another divisor: a grant each time half the window is consumed.
    half = codec.StreamLedger(100, grant_divisor=2)
    half.open(1)
    half.received(1, 100)
    assert [half.consumed(1, 10) for _ in range(10)] == [0, 0, 0, 0, 50, 0, 0, 0, 0, 50]
    # Everything consumed and no window left: granted even under the batch size
    # (here the window went to zero through sent() on the same ledger).
    ledger = codec.StreamLedger(100)
    ledger.open(1)
    ledger.received(1, 10)
    ledger.sent(1, 90)
    assert ledger.window(1) == 0
    assert ledger.consumed(1, 10) == 10
    # A huge divisor grants every consumed byte at once.
    eager = codec.StreamLedger(100, grant_divisor=2**80)
    eager.open(1)
    eager.received(1, 5)
    assert eager.consumed(1, 1) == 1


def test_ledger_counter_overflow(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(0)
    ledger.open(1)
    ledger.sent(1, VARINT_MAX)
    ledger.sent(1, VARINT_MAX)
    before = ledger.stats(1)
    with pytest.raises(OverflowError, match="stream counter overflow"):
        ledger.sent(1, VARINT_MAX)
    with pytest.raises(OverflowError, match="stream counter overflow"):
        ledger.sent(1, 2**70)
    assert ledger.stats(1) == before == (2 * VARINT_MAX, 2, -2 * VARINT_MAX, 0)
    # A window far below zero can still take a grant above 2**63.
    assert ledger.grant(1, 2**63) == 2**63 - 2 * VARINT_MAX


def test_ledger_resize(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(100)
    ledger.open(1)
    ledger.received(1, 100)
    assert ledger.resize(1, 400) == 300
    assert ledger.window(1) == 300
    assert ledger.resize(1, 400) == 0
    assert ledger.resize(1, 200) == 0  # windows only grow
    assert ledger.resize(1, -(2**70)) == 0
    with pytest.raises(ValueError, match="window out of range"):
        ledger.resize(1, VARINT_MAX + 1)
    assert ledger.consumed(1, 99) == 0  # the batch is now a quarter of 400
    assert ledger.consumed(1, 1) == 100
    assert ledger.resize(1, VARINT_MAX) == VARINT_MAX - 400


def test_ledger_open_close(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(10)
    assert len(ledger) == 0 and ledger.ids() == []
    ledger.open(5)
    with pytest.raises(KeyError):
        ledger.open(5)
    ledger.sent(5, 3)
    ledger.close(5)
    ledger.close(5)  # unknown: ignored
    ledger.close(12345)
    assert 5 not in ledger and len(ledger) == 0
    for call in (ledger.window, ledger.stats):
        with pytest.raises(KeyError):
            call(5)
    for call in (ledger.sent, ledger.grant, ledger.received, ledger.consumed, ledger.resize):
        with pytest.raises(KeyError):
            call(5, 1)
    ledger.open(5, 20)  # reopened: fresh accounting
    assert ledger.stats(5) == (0, 0, 20, 0)
    ledger.open(0, 0)
    ledger.open(VARINT_MAX, -7)  # a negative window means the initial one
    assert ledger.window(0) == 0 and ledger.window(VARINT_MAX) == 10
    assert sorted(ledger.ids()) == [0, 5, VARINT_MAX] and len(ledger) == 3
    for bad in (-1, VARINT_MAX + 1, 2**64):
        with pytest.raises(ValueError, match="stream id out of range"):
            ledger.open(bad)
    with pytest.raises(ValueError, match="window out of range"):
        ledger.open(9, VARINT_MAX + 1)
    with pytest.raises(ValueError, match="window out of range"):
        codec.StreamLedger(-1)
    with pytest.raises(ValueError, match="window out of range"):
        codec.StreamLedger(VARINT_MAX + 1)
    with pytest.raises(ValueError, match="grant_divisor must be >= 1"):
        codec.StreamLedger(10, 0)
    with pytest.raises(ValueError, match="grant_divisor must be >= 1"):
        codec.StreamLedger(10, grant_divisor=-(2**70))


def test_ledger_id_types(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(10)
    ledger.open(1)
    ledger.open(2)
    # Lookups behave like a dict's: equal numbers find the stream ...
    assert 1 in ledger and 1.0 in ledger and True in ledger
    assert ledger.window(1.0) == 10
    assert "1" not in ledger and 1.5 not in ledger and None not in ledger and -1 not in ledger
    assert 2**70 not in ledger and float("nan") not in ledger and float("inf") not in ledger
    with pytest.raises(TypeError):
        [] in ledger  # noqa: B015 - unhashable, as for a dict
    with pytest.raises(KeyError):
        ledger.window("1")
    # ... but ids and sizes must be integers.
    with pytest.raises(TypeError):
        ledger.open(3.0)
    with pytest.raises(TypeError):
        ledger.open("x")
    with pytest.raises(TypeError):
        ledger.sent(1, 1.5)
    with pytest.raises(TypeError):
        ledger.received(1, 1.0)
    with pytest.raises(TypeError):
        codec.StreamLedger(10.0)
    ledger.close(1.0)
    assert sorted(ledger.ids()) == [2]


def test_ledger_many_streams(codec: ModuleType) -> None:
    ledger = codec.StreamLedger(1 << 16)
    ids = [i << 32 for i in range(3000)] + list(range(1, 6001, 2))  # clustered + sequential
    for i in ids:
        ledger.open(i)
    assert len(ledger) == len(ids) and sorted(ledger.ids()) == sorted(ids)
    for n, i in enumerate(ids):
        ledger.sent(i, n)
    for i in ids[::2]:
        ledger.close(i)
    kept = ids[1::2]
    assert sorted(ledger.ids()) == sorted(kept)
    for i in ids[::2]:
        assert i not in ledger
    for n, i in enumerate(ids):
        if n % 2:
            assert ledger.stats(i) == (n, 1, (1 << 16) - n, 0)
    for i in kept:
        ledger.close(i)
    assert len(ledger) == 0 and ledger.ids() == []
    ledger.open(7)
    assert ledger.ids() == [7]


def test_ledger_stress_against_the_other_codec(codec_pair: tuple[ModuleType, ModuleType]) -> None:
    """Random opens, closes and reopens over a shifting id pool (deletions and
    reinsertions in the compiled hash table) give the same state in both codecs."""
    compiled, pure = codec_pair
    rng = random.Random(20261125)
    ledgers = [compiled.StreamLedger(5000, 3), pure.StreamLedger(5000, 3)]
    model: set[int] = set()
    pool = [rng.randrange(VARINT_MAX) if k % 7 == 0 else k * 4 + 1 for k in range(6000)]

    def apply(name: str, *args: Any) -> Any:
        results = []
        for ledger in ledgers:
            try:
                results.append(("ok", getattr(ledger, name)(*args)))
            except (ProtocolError, ValueError, KeyError, OverflowError) as exc:
                results.append((type(exc).__name__, str(exc)))
        assert results[0] == results[1], (name, args)
        return results[0]

    for step in range(40000):
        sid = pool[rng.randrange(len(pool) if step < 20000 else 1500)]
        op = rng.random()
        if op < 0.25:
            if apply("open", sid, rng.choice([-1, 100, 5000]))[0] == "ok":
                model.add(sid)
        elif op < 0.40:
            apply("close", sid)
            model.discard(sid)
        elif op < 0.55:
            apply("received", sid, rng.randrange(0, 1200))
        elif op < 0.70:
            apply("consumed", sid, rng.randrange(0, 1200))
        elif op < 0.80:
            apply("sent", sid, rng.randrange(0, 900))
        elif op < 0.88:
            apply("grant", sid, rng.randrange(0, 900))
        elif op < 0.93:
            apply("resize", sid, rng.randrange(0, 20000))
        else:
            assert (sid in ledgers[0]) == (sid in ledgers[1]) == (sid in model)
        if step % 5000 == 0:
            assert len(ledgers[0]) == len(ledgers[1]) == len(model)
            assert sorted(ledgers[0].ids()) == sorted(ledgers[1].ids()) == sorted(model)
            for i in model:
                assert ledgers[0].stats(i) == ledgers[1].stats(i)
    for i in sorted(model):
        assert ledgers[0].stats(i) == ledgers[1].stats(i)
        apply("close", i)
    assert len(ledgers[0]) == len(ledgers[1]) == 0


# --------------------------------------------------------------------- API parity


def _signature(obj: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in inspect.signature(obj).parameters.values()]


def test_same_public_api(codec_pair: tuple[ModuleType, ModuleType]) -> None:
    from fastrpc import frames

    compiled, pure = codec_pair
    typing_helpers = {"annotations", "Iterable", "Sequence", "Union"}
    # isidentifier(): pytest rewrites the asserts of an installed plugin's whole package
    # (fastrpc ships one) and adds "@py_builtins"/"@pytest_ar" to each module's globals.
    names = {n for n in vars(pure) if n.isidentifier() and not n.startswith("_")}
    missing = names - typing_helpers - set(dir(compiled))
    assert not missing, f"in the pure twin, not in the compiled codec (add them to _frames.pyx): {missing}"
    for name in frames.__all__ + ["Buffer", "ProtocolError", "ErrorCode"]:
        a, b = getattr(compiled, name), getattr(pure, name)
        if name == "IMPLEMENTATION":
            assert (a, b) == ("cython", "python")
        elif a is b:
            continue  # shared: the exceptions
        elif isinstance(b, type):
            public = {m for m in vars(b) if not m.startswith("_")}
            assert public <= set(dir(a)), name
            for method in public:
                if callable(getattr(b, method)):
                    assert _signature(getattr(a, method)) == _signature(getattr(b, method)), (name, method)
        elif callable(b):
            assert _signature(a) == _signature(b), name
        else:
            assert a == b, name
    # Constructors (C slots: no introspectable signature) take the same keywords.
    for module in codec_pair:
        module.Frame(ftype=1, flags=0, fid=2, payload=b"")
        module.FrameWriter()
        module.StreamLedger(initial_window=10, grant_divisor=2)


@pytest.mark.parametrize("count", [0, 1, 5, 1000])
def test_decode_message_bounds_the_frames_it_makes(codec: ModuleType, count: int) -> None:
    # A message of many tiny frames is refused before they are all made (memory stays
    # proportional to the frames kept): the same error from both twins.
    msg = codec.encode_frame(codec.PING, 0, 0, b"") * count + codec.encode_frame(codec.PING, 0, 0, b"")
    assert len(codec.decode_message(msg, 1024, count + 1)) == count + 1
    with pytest.raises(ProtocolError) as info:
        codec.decode_message(msg, 1024, count)
    assert info.value.reason == "too many frames in one message"
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED
    # The limit is checked before a truncated tail is: the count comes first.
    with pytest.raises(ProtocolError, match="too many frames"):
        codec.decode_message(msg + b"\x01", 1024, count + 1)
    with pytest.raises(ValueError):
        codec.decode_message(msg, 1024, -1)


# ------------------------------------------------------------------ payload_cost


def _dense(n: int) -> bytes:
    return b"\x91\xdd" + n.to_bytes(4, "big") + b"\x90" * n  # [[[], [], ...]]


@pytest.mark.parametrize(
    "value",
    [
        [1, 2],
        [[[]] * 1000],
        [{"k": "v" * 100, "n": 1.5, "b": b"x" * 300}] * 50,
        [[2**40 + i for i in range(2000)]],
        ["é" * 1000, None, True, False, -5],
    ],
)
def test_payload_cost_covers_what_decoding_allocates(codec: ModuleType, value: Any) -> None:
    import tracemalloc

    import msgspec

    for data in (msgspec.msgpack.encode(value), msgspec.json.encode(value)):
        tracemalloc.start()
        try:
            decoded = msgspec.msgpack.decode(data) if data[:1] != b"[" else msgspec.json.decode(data)
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert decoded is not None
        cost = codec.payload_cost(data)
        assert cost >= max(len(data), held * 0.9), (cost, held)
        assert cost <= 8 * held + 64 * len(data) + 1024  # an estimate, not a wild guess


@pytest.mark.parametrize("text", ["д" * 200_000, "日本" * 100_000, "x" * 300_000, "😀" * 50_000, "a,[b{" * 1000])
def test_payload_cost_of_a_json_string_is_about_what_it_decodes_to(codec: ModuleType, text: str) -> None:
    # A JSON codec's answer or item may be a bare string. Walked as MessagePack, its
    # UTF-8 bytes read as headers: 400 KB of Cyrillic measured ~16x its size.
    import tracemalloc

    import msgspec

    data = msgspec.json.encode(text)
    tracemalloc.start()
    try:
        decoded = msgspec.json.decode(data)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert decoded == text
    cost = codec.payload_cost(data)
    # One value: the commas and brackets in a string are its text, not values.
    assert max(len(data), held * 0.9) <= cost == len(data) + 64
    assert codec.payload_cost(b'"') == 1  # MessagePack's int 34, alone


def test_payload_cost_counts_json_structure_outside_strings_only(codec: ModuleType) -> None:
    import msgspec

    csv = "a,b,[c],{d}\n" * 20_000  # CSV text in a string: ~13 commas and brackets a line
    data = msgspec.json.encode(["head", csv, [1, 2], {"k": "v,"}])
    # the list, its 4 values' commas, the inner list and its comma, the object: 8
    assert codec.payload_cost(data) == len(data) + 64 * 8
    # Escapes: a quote after a backslash does not close the string; a string cut
    # short runs to the end; a backslash may be the last byte.
    for data, values in ((b'["a\\",[,]"', 2), (b'[",,,', 2), (b'["\\', 2), (b'["\\\\",1]', 3)):
        assert codec.payload_cost(data) == len(data) + 64 * values, data


def test_payload_cost_stops_at_the_limit(codec: ModuleType) -> None:
    data = _dense(1 << 20)
    assert codec.payload_cost(data) >= (1 << 20) * 56
    assert codec.payload_cost(data, 1 << 22) == (1 << 22) + 1
    assert codec.payload_cost(data, 0) == len(data)  # never under the encoded size
    assert codec.payload_cost(b"") == 0
    # Declared lengths count in full, even cut short: a decoder may allocate them.
    assert codec.payload_cost(b"\xdd\x00\x10\x00\x00") == 56 + 8 * (1 << 20)
    assert codec.payload_cost(b"\xde\x10\x00") == 64 + 40 * (1 << 12)


def test_payload_cost_twins_agree(codec_pair: tuple[ModuleType, ModuleType]) -> None:
    compiled, pure = codec_pair
    rnd = random.Random(7)
    samples = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(64))) for _ in range(3000)]
    samples += [_dense(5000), b"[" + b"[]," * 1000 + b"[]]", b"\xc7\xff\x01", b"\xdb\xff\xff\xff\xff", b"\xd8\x01"]
    samples += [b'"' + sample for sample in samples[:300]] + [b'"', b'""', b'"\xd0\xb4' * 50]
    # JSON's alphabet: strings, escapes, commas and brackets, in and out of strings.
    samples += [bytes(rnd.choice(b'[]{},"\\ a:') for _ in range(rnd.randrange(1, 48))) for _ in range(3000)]
    for data in samples:
        for limit in (1 << 62, 1000, 100, 0, -1):
            assert compiled.payload_cost(data, limit) == pure.payload_cost(data, limit), (data, limit)


def test_max_frames_refusal_matches_between_twins(codec_pair: tuple[ModuleType, ModuleType]) -> None:
    # The pure twin counts frame headers first when a message has room for more than
    # max_frames frames; its errors must stay the compiled codec's, in the same order.
    compiled, pure = codec_pair
    rnd = random.Random(11)

    def outcome(codec: ModuleType, data: bytes, max_size: int, max_frames: int) -> Any:
        try:
            return [(f.type, f.flags, f.id, bytes(f.payload)) for f in codec.decode_message(data, max_size, max_frames)]
        except ProtocolError as e:
            return (e.reason, e.code)

    for _ in range(3000):
        frames = [
            (rnd.randrange(256), rnd.randrange(256), rnd.choice([0, 5, 300, 70000]), bytes(rnd.choice([0, 1, 3, 70])))
            for _ in range(rnd.randrange(1, 12))
        ]
        data = b"".join(pure.encode_frame(*f) for f in frames)
        if rnd.random() < 0.5 and len(data) > 1:
            data = data[: rnd.randrange(1, len(data))]
        for max_size, max_frames in ((1 << 20, 2), (50, 3), (1 << 20, 0), (100, 1)):
            assert outcome(compiled, data, max_size, max_frames) == outcome(pure, data, max_size, max_frames), data
    flood = pure.encode_frame(0x21, 0, 0) * 300_000
    for codec in (compiled, pure):
        with pytest.raises(ProtocolError, match="too many frames"):
            codec.decode_message(flood, 1 << 20, 65536)


def _parse_client_frame(data: bytes) -> bytes:
    """websockets' own parser on ``data``, one masked frame (as a server reads it)."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=True)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    else:
        raise AssertionError("the frame is incomplete")
    assert frame.fin and frame.opcode is Opcode.BINARY
    assert not reader.buffer, "bytes after the frame"
    return bytes(frame.data)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 70_001])
def test_mask_frame_is_one_client_frame_websockets_reads(codec: ModuleType, size: int) -> None:
    """mask_frame(data, mask): a final binary frame with the 7-, 16- and 64-bit
    lengths, the mask as given, the payload masked with it from any offset of any
    part; websockets' parser reads the payload back."""
    rnd = random.Random(size)
    body = rnd.randbytes(size)
    mask = rnd.randbytes(4)
    cuts = sorted(rnd.sample(range(size + 1), min(3, size + 1)))
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, size])]  # empty parts included
    frame = codec.mask_frame(body, mask)
    assert type(frame) is bytes
    head = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(frame) == head + 4 + size and frame[head : head + 4] == mask
    assert _parse_client_frame(frame) == body
    for data in (parts, bytearray(body), memoryview(body), [memoryview(body)]):
        assert codec.mask_frame(data, mask) == frame
    assert codec.mask_frame(body, bytearray(mask)) == frame


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 8, 125])
def test_lone_frame_unwraps_one_whole_small_frame_at_the_start_of_a_buffer(codec: ModuleType, size: int) -> None:
    """lone_frame(data, n, masked, max_size): the payload of ``data[:n]`` when it is
    one whole final binary frame under 126 bytes, masked (a client's: unmasked here)
    or not (a server's); the bytes after ``n`` are not looked at."""
    rnd = random.Random(size)
    body = rnd.randbytes(size)
    mask = rnd.randbytes(4)
    client_frame = codec.mask_frame(body, mask)
    server_frame = bytes((0x82, size)) + body
    for frame, masked in ((client_frame, True), (server_frame, False)):
        buf = bytearray(frame + rnd.randbytes(40))  # a read buffer: garbage after the read
        for data in (buf, memoryview(buf), bytes(buf)):
            got = codec.lone_frame(data, len(frame), masked, 1 << 20)
            assert type(got) is bytes and got == body
        assert codec.lone_frame(buf, len(frame), masked, size) == body  # max_size is inclusive


def test_lone_frame_is_none_for_any_other_read(codec: ModuleType) -> None:
    """None (nothing read: the framer takes the bytes) for a read that is not exactly
    one whole small final binary frame with the expected mask bit, or whose payload
    is over max_size."""
    body = b"0123456789"
    masked = codec.mask_frame(body, b"abcd")
    plain = bytes((0x82, len(body))) + body
    big = bytes((0x82, 126)) + (200).to_bytes(2, "big") + bytes(200)
    cases = [
        (masked, len(masked) - 1, True),  # a part of a frame
        (masked + plain, len(masked) + len(plain), True),  # two frames
        (masked, len(masked), False),  # masked where none is expected
        (plain, len(plain), True),  # not masked where a mask is expected
        (b"\x81" + masked[1:], len(masked), True),  # TEXT
        (b"\x02" + masked[1:], len(masked), True),  # not final
        (b"\xc2" + masked[1:], len(masked), True),  # a reserved bit
        (b"\x89" + plain[1:], len(plain), False),  # PING
        (big, len(big), False),  # a 16-bit length
        (b"\x82", 1, False),
        (b"", 0, True),
    ]
    for data, n, is_masked in cases:
        assert codec.lone_frame(data, n, is_masked, 1 << 20) is None, (data[:4], n, is_masked)
    assert codec.lone_frame(masked, len(masked), True, len(body) - 1) is None  # over max_size
    assert codec.lone_frame(plain, len(plain) + 1, False, 1 << 20) is None  # n past the buffer
    with pytest.raises(TypeError):
        codec.lone_frame("text", 2, False, 100)


@pytest.mark.parametrize("size", [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 125, 65_537])
def test_unmask_undoes_mask_frame_in_place(codec: ModuleType, size: int) -> None:
    """unmask(data, mask): the payload of a client's frame XORed with its mask where
    it lies (a bytearray, or a writable view into one at any offset), the bytes
    around it untouched; twice gives back what it was."""
    rnd = random.Random(size)
    body = rnd.randbytes(size)
    mask = rnd.randbytes(4)
    frame = codec.mask_frame(body, mask)
    masked = frame[len(frame) - size :]
    buf = bytearray(masked)
    assert codec.unmask(buf, mask) is None and buf == body
    codec.unmask(buf, bytearray(mask))
    assert buf == masked
    around = bytearray(b"<" * 3 + masked + b">" * 5)  # a payload inside a read buffer
    codec.unmask(memoryview(around)[3 : 3 + size], memoryview(frame)[len(frame) - size - 4 : len(frame) - size])
    assert around == b"<" * 3 + body + b">" * 5


def test_unmask_refuses_a_buffer_it_cannot_write_and_a_mask_not_of_4_bytes(codec: ModuleType) -> None:
    for data in (b"abcd", memoryview(b"abcd")):
        with pytest.raises(BufferError):
            codec.unmask(data, b"abcd")
    for data in ("text", 5, None):
        with pytest.raises(TypeError):
            codec.unmask(data, b"abcd")
    with pytest.raises(TypeError):
        codec.unmask(bytearray(4), 1234)
    for mask in (b"", b"abc", b"abcde"):
        buf = bytearray(b"payload")
        with pytest.raises(ValueError, match="a mask is 4 bytes"):
            codec.unmask(buf, mask)
        assert buf == b"payload"


def test_mask_frame_refuses_a_mask_not_of_4_bytes_and_what_is_not_bytes(codec: ModuleType) -> None:
    for mask in (b"", b"abc", b"abcde"):
        with pytest.raises(ValueError, match="a mask is 4 bytes"):
            codec.mask_frame(b"x", mask)
    for data in (5, "text", [b"a", 5], None):
        with pytest.raises(TypeError):
            codec.mask_frame(data, b"abcd")
    with pytest.raises(TypeError):
        codec.mask_frame(b"x", 1234)


def test_traffic_counts_messages_frames_and_bytes_each_way(codec: ModuleType) -> None:
    # Connection.traffic: the same counts from both codecs (the compiled one's C
    # fields are also what the call lane adds to).
    t = codec.Traffic()
    assert (t.messages_in, t.frames_in, t.bytes_in, t.messages_out, t.frames_out, t.bytes_out) == (0,) * 6
    assert t.sent(3, 100) == 0  # the position of the message's first frame
    assert t.sent(1, 7) == 3
    t.received(50)
    assert t.took(2) == 2 and t.took(0) == 2
    assert (t.messages_in, t.frames_in, t.bytes_in, t.messages_out, t.frames_out, t.bytes_out) == (1, 2, 50, 2, 4, 107)
    t.frames_in = 2**62  # a position as large as a varint carries
    assert t.took(1) == 2**62 + 1
    with pytest.raises(AttributeError):
        t.other = 1  # type: ignore[attr-defined]
