"""Benchmarks of the example service with fastrpc's pytest fixtures.

    pytest --benchmark-only                       # measure
    pytest --benchmark-only --benchmark-autosave  # and keep the run (.benchmarks/)
    pytest --benchmark-only --benchmark-compare   # measure again, compared with the last saved run

Each group compares like with like: two handlers on the same payload, or the same
payload through fastrpc and through a raw websockets round trip.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from payloads import PAYLOADS

NUMBERS = [name for name, value in PAYLOADS.items() if isinstance(value, list)]


@pytest.mark.parametrize("payload", NUMBERS)
@pytest.mark.parametrize("handler", ["stats_loop", "stats_builtin"])
def test_handlers(benchmark: Any, fastrpc_client: Any, handler: str, payload: str) -> None:
    values = PAYLOADS[payload]
    benchmark.group = f"handlers, payload {payload}"
    result = benchmark(fastrpc_client.call, handler, values)
    assert result == {"n": len(values), "total": pytest.approx(sum(values)), "min": min(values), "max": max(values)}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_fastrpc_call(benchmark: Any, fastrpc_client: Any, payload: str) -> None:
    benchmark.group = f"round trip, payload {payload}"
    assert benchmark(fastrpc_client.call, "echo", PAYLOADS[payload]) == PAYLOADS[payload]


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_raw_websockets(benchmark: Any, raw_websocket: Any, payload: str) -> None:
    benchmark.group = f"round trip, payload {payload}"

    def round_trip() -> Any:
        raw_websocket.send(msgspec.msgpack.encode(PAYLOADS[payload]))
        return msgspec.msgpack.decode(raw_websocket.recv(timeout=10))

    assert benchmark(round_trip) == PAYLOADS[payload]


@pytest.mark.parametrize("fastrpc_codec", ["msgpack", "json"])
def test_codecs(benchmark: Any, fastrpc_client: Any, fastrpc_codec: str) -> None:
    benchmark.group = "payload codec, record"
    assert benchmark(fastrpc_client.call, "echo", PAYLOADS["record"]) == PAYLOADS["record"]
