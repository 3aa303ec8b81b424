"""Frame codec micro-benchmarks: compiled ``fastrpc._frames`` vs pure ``fastrpc._frames_py``.

    PYTHONPATH=src pytest bench/bench_frames.py --benchmark-only

One group per scenario, each with an ``impl=cython`` and an ``impl=python`` variant;
bench/conftest.py prints the compiled/pure ratio of every group at the end. Scenarios:
one small frame (16-byte payload), a batch of 1000 small frames (encode_batch,
FrameWriter, decode_message) and one 64 KiB frame.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

from fastrpc import _frames_py

try:
    _compiled: ModuleType | None = importlib.import_module("fastrpc._frames")
except ImportError:
    _compiled = None

SMALL = bytes(range(16))
LARGE = bytes(range(256)) * 256  # 64 KiB
BATCH = [(_frames_py.STREAM_DATA, 0, 2 * i + 1, SMALL) for i in range(1000)]


@pytest.fixture(
    params=[
        pytest.param("cython", marks=pytest.mark.skipif(_compiled is None, reason="fastrpc._frames is not built")),
        "python",
    ]
)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return _compiled if request.param == "cython" else _frames_py  # type: ignore[return-value]


def _tuples(frames: list[Any]) -> list[tuple[int, int, int, bytes]]:
    return [(f.type, f.flags, f.id, bytes(f.payload)) for f in frames]


# ------------------------------------------------------------------- one small frame


@pytest.mark.benchmark(group="small frame: encode_frame")
def test_small_encode(benchmark: Any, impl: ModuleType) -> None:
    out = benchmark(impl.encode_frame, impl.STREAM_DATA, 0, 1, SMALL)
    assert out == bytes.fromhex("10000110") + SMALL


@pytest.mark.benchmark(group="small frame: decode_message")
def test_small_decode(benchmark: Any, impl: ModuleType) -> None:
    message = impl.encode_frame(impl.STREAM_DATA, 0, 1, SMALL)
    frames = benchmark(impl.decode_message, message)
    assert _tuples(frames) == [(impl.STREAM_DATA, 0, 1, SMALL)]


# ---------------------------------------------------------- a batch of 1000 frames


@pytest.mark.benchmark(group="1000 frames: encode_batch")
def test_batch_encode(benchmark: Any, impl: ModuleType) -> None:
    out = benchmark(impl.encode_batch, BATCH)
    assert out == _frames_py.encode_batch(BATCH)


@pytest.mark.benchmark(group="1000 frames: FrameWriter")
def test_batch_writer(benchmark: Any, impl: ModuleType) -> None:
    writer = impl.FrameWriter()

    def write() -> bytes:
        add = writer.add
        for ftype, flags, fid, payload in BATCH:
            add(ftype, flags, fid, payload)
        out: bytes = writer.take()
        return out

    assert benchmark(write) == _frames_py.encode_batch(BATCH)


@pytest.mark.benchmark(group="1000 frames: decode_message")
def test_batch_decode(benchmark: Any, impl: ModuleType) -> None:
    message = impl.encode_batch(BATCH)
    frames = benchmark(impl.decode_message, message)
    assert _tuples(frames) == BATCH


# ------------------------------------------------------------- one 64 KiB frame


@pytest.mark.benchmark(group="64 KiB frame: encode_frame")
def test_large_encode(benchmark: Any, impl: ModuleType) -> None:
    out = benchmark(impl.encode_frame, impl.STREAM_DATA, 0, 1, LARGE)
    assert out == bytes.fromhex("10000180010000") + LARGE


@pytest.mark.benchmark(group="64 KiB frame: decode_message")
def test_large_decode(benchmark: Any, impl: ModuleType) -> None:
    message = impl.encode_frame(impl.STREAM_DATA, 0, 1, LARGE)
    frames = benchmark(impl.decode_message, message)
    assert isinstance(frames[0].payload, memoryview) and frames[0].payload.nbytes == len(LARGE)
