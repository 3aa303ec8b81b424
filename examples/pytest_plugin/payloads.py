"""The payloads to measure with: replace them with your own."""

from __future__ import annotations

import random

_rng = random.Random(42)

PAYLOADS = {
    "small": [_rng.random() for _ in range(16)],
    "large": [_rng.random() for _ in range(20_000)],
    "record": {"id": 123, "name": "sensor-7", "tags": ["a", "b", "c"], "values": [1.5] * 64},
}
