"""Memory usage: stream a large result instead of returning it in one piece.

Seed document, "Performance Considerations / 3. Memory Usage": loading a whole
dataset and sending it at once holds all of it in memory on both sides; yielding
it chunk by chunk releases each chunk once it is sent and processed.

The server has a fake database cursor. ``load_all`` returns every row in one
reply; ``stream_rows`` yields pages of rows. The client sums a column either way.
``tracemalloc`` reports the peak memory of this process (server and client both
run in it). A single reply must also fit in one frame (``max_frame_size``, 1 MiB
by default), so a large ``load_all`` fails outright, while a stream has no limit
on its total size.

Run: python examples/09_memory_usage.py
"""

from __future__ import annotations

import gc
import tracemalloc

import fastrpc

ROWS = 20_000  # about 0.7 MB of msgpack: fits in one reply
PAGE = 500


def load_data_chunks(rows: int, page: int):
    """A database cursor: pages of rows, made on demand."""
    for start in range(0, rows, page):
        yield [{"id": i, "name": f"row {i}", "value": i * 0.5} for i in range(start, min(rows, start + page))]


router = fastrpc.Router()


@router.method
def load_all(rows: int) -> list:
    # Bad: load the entire dataset into memory and send it at once
    return [row for chunk in load_data_chunks(rows, PAGE) for row in chunk]


@router.method
async def stream_rows(rows: int, page: int):
    # Good: stream data incrementally
    for chunk in load_data_chunks(rows, page):
        yield chunk  # memory is released as each chunk is sent


async def peak_of(coro) -> tuple[object, int]:
    gc.collect()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = await coro
    return result, tracemalloc.get_traced_memory()[1] - base


async def main() -> None:
    tracemalloc.start()
    async with fastrpc.serve(router, "127.0.0.1", 0) as server, fastrpc.connect(server.url) as peer:

        async def all_at_once(rows: int) -> float:
            data = await peer.call("load_all", rows)
            return sum(row["value"] for row in data)

        async def streamed(rows: int) -> float:
            total = 0.0
            async for chunk in peer.stream("stream_rows", rows, PAGE):
                total += sum(row["value"] for row in chunk)
            return total

        await streamed(1000)  # warm-up
        # (streamed first: the event loop may keep a reference to the last
        # call's result until the next message, which would skew a later baseline)
        total_b, peak_b = await peak_of(streamed(ROWS))
        total_a, peak_a = await peak_of(all_at_once(ROWS))
        assert total_a == total_b
        print(f"{ROWS} rows, all at once: peak {peak_a / 1e6:6.1f} MB")
        print(f"{ROWS} rows, streamed:    peak {peak_b / 1e6:6.1f} MB  ({peak_a / peak_b:.1f}x less)")
        assert peak_b < peak_a

        big = ROWS * 10
        try:
            await peer.call("load_all", big)
        except fastrpc.RemoteError as exc:
            print(f"{big} rows, all at once: {exc.type_name}: {exc.message}")
        total, peak = await peak_of(streamed(big))
        print(f"{big} rows, streamed:    peak {peak / 1e6:6.1f} MB, sum={total:.0f}")
    tracemalloc.stop()
    print("done")


if __name__ == "__main__":
    fastrpc.run(main())
