"""Coverage-guided fuzzing of the sans-I/O core with atheris (libFuzzer), on demand:

    pip install atheris
    python tests/fuzz_atheris.py -max_total_time=300 [corpus_dir]
    FASTRPC_FUZZ_INVARIANTS=1 python tests/fuzz_atheris.py -max_total_time=300

Each input picks the server's settings and the application's behaviour, then is cut
into messages (a 2-byte length before each); they go to a server core after a valid
HELLO, once with each frame codec (tests/_core_fuzz.py). A crash is an exception other
than ProtocolError, two codecs that disagree, or (with FASTRPC_FUZZ_INVARIANTS=1) a
bound of issue 11 the core does not keep. libFuzzer's options pass through (``-runs=``,
``-max_total_time=``, ``-dict=``...); crashing inputs are written as ``crash-*`` files,
which ``python tests/fuzz_atheris.py crash-...`` replays.

The pure-Python core and codec are instrumented; the compiled codec is not (it is C),
but it runs on every input and must agree with the pure one.
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["fastrpc", "_core_fuzz"]):
    from _core_fuzz import CODECS, SERVER_SETTINGS, App, converse, hello, undocumented

    from fastrpc.protocol import Settings

INVARIANTS = os.environ.get("FASTRPC_FUZZ_INVARIANTS", "") not in ("", "0")
CLIENTS = [Settings(), Settings(compression=1), Settings(resume=1), Settings(compression=3, resume=1)]


def split(data: bytes) -> list[bytes]:
    """Messages of ``data``: each a 2-byte big-endian length and that many bytes."""
    out = []
    pos = 0
    while pos + 2 <= len(data) and len(out) < 16:
        n = int.from_bytes(data[pos : pos + 2], "big") % 4096
        pos += 2
        out.append(data[pos : pos + n])
        pos += n
    return out


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    server = SERVER_SETTINGS[data[0] % len(SERVER_SETTINGS)]
    client = CLIENTS[(data[0] >> 4) % len(CLIENTS)]
    flags = data[1]
    app = (bool(flags & 1), bool(flags & 2), bool(flags & 4), bool(flags & 8))
    messages = [hello(client), *split(data[2:])]
    transcripts = {
        name: converse(codec, server, messages, App(*app), check_invariants=INVARIANTS)
        for name, codec in CODECS.items()
    }
    first = None
    for name, t in transcripts.items():
        bad = undocumented(t)
        if bad is not None:
            raise RuntimeError(f"{name} codec: undocumented exception {bad}")
        if INVARIANTS and t[-1][0] == "INVARIANT":
            raise RuntimeError(f"{name} codec: bound not kept after message {t[-1][1]}: {t[-1][2]}")
        if first is None:
            first = t
        elif t != first:
            raise RuntimeError(f"codecs disagree:\n{first}\n{t}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
