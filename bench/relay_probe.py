#!/usr/bin/env python3
"""A copy of this tree's ``src/`` whose sequential echo call skips the RPC's
bookkeeping: how fast ``compare.py``'s ``seq_calls`` row could be if that
bookkeeping cost nothing (``bench/README.md``, "A bare relay: the ceiling of a
compiled call path").

    python bench/relay_probe.py /tmp/relay [--half server|client|both]
    python bench/compare.py --only seq_calls --libs fastrpc,fastrpc-base,picows,tcp \\
        --baseline /tmp/relay --rounds 5

In that comparison "fastrpc-base" is the bare relay and "fastrpc" this tree as it is.

``server``: a read that is one whole masked WebSocket frame holding one REQUEST of
``echo`` with raw arguments (what the benchmark's ``peer.call("echo", b"...")`` sends)
is answered from the transport's read callback: the frame decoded by the codec, the
RESPONSE encoded by it and written at once. No call table, memory budget, event,
handler lookup, output queue or counter is touched.

``client``: ``peer.call("echo", b"...")`` (no keyword arguments, no timeout) encodes
its REQUEST and writes it masked straight to the socket, with an id of its own (odd, as
a client's, from 2**22 + 1 up: clear of the core's), and parks its future in a dict; a read that is one
whole frame holding one RESPONSE to such an id settles that future from the read
callback.

What stays is this tree's transport (its read callback, masking, the socket
write), its codec (the compiled ``_frames`` when built), ``peer.call``'s coroutine,
the future and the loop: what a call costs when the RPC does nothing but frame and
route. A probe, not a build of fastrpc, and wrong for any other use (no limits, no
ordering with other output). Each edit must match this tree exactly once, so that the
probe fails loudly once the code it touches changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # bench/ is not a package

from compile_probe import copy_tree  # noqa: E402 - the same copy of src/ as that probe's

# What both halves add to transport.py: the codec's two functions and the client's
# table of bare calls (id -> future), beside the data path.
_SHARED = (
    "transport",
    "class _Wire(Transport, asyncio.BufferedProtocol):\n",
    "from .frames import decode_message as _relay_decode\n"
    "from .frames import encode_frame as _relay_encode\n\n"
    "_RELAY_CALLS: dict[int, Any] = {}  # relay_probe: a bare call's id -> its future\n"
    "_RELAY_ID = [(1 << 22) + 1]  # odd: a client's parity\n\n\n"
    "class _Wire(Transport, asyncio.BufferedProtocol):\n",
)

# Where both halves hook in: the transport's read callback, once a read was unwrapped
# as one whole small frame (``lone_frame``); each puts its block before this text.
_READ = "            reader = self._sink\n            if msg is not None and reader is not None:\n"

# (module, text in this tree, what the copy gets), by half.
EDITS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "server": (
        _SHARED,
        (
            "transport",
            _READ,
            "            if msg is not None and not self._client and msg[:1] == b'\\x02':  # relay_probe: a REQUEST\n"
            "                got = _relay_decode(msg, 1 << 20, 10, False)\n"
            "                f = got[0]\n"
            "                if len(got) == 1 and f.type == 2 and f.flags == 0x40:\n"
            "                    head = f.payload\n"
            "                    end = 1 + head[0]\n"
            "                    if head[1:end] == b'echo':\n"
            "                        answer = _relay_encode(3, 0x40, f.id, head[end:])\n"
            "                        self._tcp.write(bytes((0x82, len(answer))) + answer)\n"
            "                        self._read_slice(nbytes)\n"
            "                        return\n" + _READ,
        ),
    ),
    "client": (
        _SHARED,
        (
            "transport",
            _READ,
            "            if msg is not None and self._client and msg[:1] == b'\\x03' and _RELAY_CALLS:  # relay_probe\n"
            "                got = _relay_decode(msg, 1 << 20, 10, False)  # a RESPONSE\n"
            "                fut = _RELAY_CALLS.pop(got[0].id, None) if len(got) == 1 else None\n"
            "                if fut is not None:\n"
            "                    fut.set_result(got[0].payload)\n"
            "                    self._read_slice(nbytes)\n"
            "                    return\n" + _READ,
        ),
        (
            "api",
            "        kw = False\n        if kwargs:\n",
            "        if method == 'echo' and not kwargs and timeout is None and len(args) == 1 and type(args[0]) is bytes:\n"
            "            from . import transport as relay  # relay_probe: a bare call\n"
            "            relay._RELAY_ID[0] += 2\n"
            "            cid = relay._RELAY_ID[0]\n"
            "            msg = relay._relay_encode(2, 0x40, cid, b'\\x04echo' + args[0])\n"
            "            self._transport._tcp.write(relay.mask_frame(msg, next(relay._MASKS)[0]))  # type: ignore[union-attr]\n"
            "            fut = self._loop.create_future()\n"
            "            relay._RELAY_CALLS[cid] = fut\n"
            "            return await fut\n"
            "        kw = False\n        if kwargs:\n",
        ),
    ),
}
EDITS["both"] = (*EDITS["server"], *EDITS["client"][1:])


def apply_edits(pkg: Path, half: str) -> int:
    """Apply the edits of ``half``; each must match exactly once, not applied yet. Returns how many."""
    for module, old, new in EDITS[half]:
        path = pkg / f"{module}.py"
        text = path.read_text()
        if text.count(old) != 1 or new[: -len(old)] in text:  # (an edit's text stays in its result)
            raise SystemExit(f"relay_probe: the edit of {module}.py no longer matches: {old.splitlines()[0]!r}")
        path.write_text(text.replace(old, new))
    return len(EDITS[half])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="directory for the copy (its src/ is replaced)")
    ap.add_argument("--half", choices=("server", "client", "both"), default="both")
    args = ap.parse_args(argv)
    pkg = copy_tree(args.dest)
    n = apply_edits(pkg, args.half)
    print(f"relay_probe: {args.dest / 'src'} ({args.half}: {n} edits); compare.py --baseline {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
