"""The chaos proxy (tests/_chaos.py) in a process of its own, for the JavaScript client's
resume test: ``python tests/_js_proxy.py TARGET_PORT SEED LO HI COUNT MESSAGE_CUTS``.

Prints ``port N`` once listening on 127.0.0.1, then cuts every open connection COUNT
times at intervals drawn from LO..HI seconds, and each of the first MESSAGE_CUTS new
connections at one of its first messages (so cuts hit handshakes and replays). SIGUSR1
silences every open connection (a partition: nothing forwarded, nothing closed). On
SIGTERM it prints ``cuts C resumes R new_sessions S`` and exits."""

from __future__ import annotations

import asyncio
import signal
import sys

from _chaos import ChaosProxy


async def main(target: int, seed: int, lo: float, hi: float, count: int, message_cuts: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with ChaosProxy(target) as proxy:
        loop.add_signal_handler(signal.SIGUSR1, proxy.partition)
        print(f"port {proxy.port}", flush=True)
        if count:
            proxy.start_random_cuts(seed, lo, hi, count)
        if message_cuts:
            proxy.start_message_cuts(seed, message_cuts)
        await stop.wait()
        print(f"cuts {len(proxy.cuts)} resumes {proxy.resumes} new_sessions {proxy.new_sessions}", flush=True)


if __name__ == "__main__":
    t, seed, lo, hi, count, mc = sys.argv[1:7]
    asyncio.run(main(int(t), int(seed), float(lo), float(hi), int(count), int(mc)))
