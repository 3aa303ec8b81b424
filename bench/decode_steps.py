#!/usr/bin/env python
"""How long one loop pass of decoding a long message holds the event loop: the
longest ``Connection.decode`` / ``decode_more`` step, and all of them together.

    python bench/decode_steps.py [--frames N] [--repeat R]
    FASTRPC_NO_EXTENSIONS=1 python bench/decode_steps.py   # the pure-Python codec
    PYTHONPATH=/other/tree/src python bench/decode_steps.py  # another checkout

The message is what a peer may send at most: ``N`` (65,535 by default) empty
extension frames, which the core skips, so the figures are the decoding and the
check alone. The I/O layer runs one step a loop pass (``PeerIO._feed``); no other
connection is served during a step. The collector is off while steps are timed (a
collection lands on whichever step allocates last, whatever the step does).
"""

from __future__ import annotations

import argparse
import gc
import time

from fastrpc import frames as F
from fastrpc.protocol import Connection, Role, Settings


def _server() -> Connection:
    """A server connection that took a client's HELLO and sent its own."""
    server, client = Connection(Role.SERVER, Settings()), Connection(Role.CLIENT, Settings())
    hello = client.next_message()
    assert isinstance(hello, bytes)
    server.receive_message(hello)
    server.next_message()
    return server


def steps(message: bytes) -> list[tuple[int, float]]:
    """``(frames given, seconds)`` of each step that decodes ``message``."""
    conn = _server()
    out = []
    gc.disable()
    try:
        t = time.perf_counter()
        got = conn.decode(message)
        out.append((len(got), time.perf_counter() - t))
        while conn.decoding:
            t = time.perf_counter()
            got = conn.decode_more()
            out.append((len(got), time.perf_counter() - t))
    finally:
        gc.enable()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=F.MAX_FRAMES - 1)
    ap.add_argument("--repeat", type=int, default=5, help="runs; the one with the shortest total is shown")
    args = ap.parse_args()
    message = F.encode_frame(0x40, 0, 0) * args.frames
    best = min((steps(message) for _ in range(args.repeat)), key=lambda s: sum(t for _, t in s))
    longest = max(range(len(best)), key=lambda i: best[i][1])
    first = next(i for i, (n, _) in enumerate(best) if n)
    print(f"codec {F.IMPLEMENTATION}, a message of {args.frames:,} empty frames ({len(message):,} bytes)")
    print(f"  steps (loop passes):        {len(best)}")
    print(f"  longest step:               {best[longest][1] * 1e3:.2f} ms (step {longest + 1})")
    print(f"  all steps:                  {sum(t for _, t in best) * 1e3:.2f} ms")
    print(f"  first frames given at step: {first + 1}")


if __name__ == "__main__":
    main()
