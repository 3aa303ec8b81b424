"""The sending side against the limits its peer announced, over real loopback
connections: what a sender queues always leaves in messages the peer accepts (frames
per message, message size), whatever the sender's own options and however its
stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from _util import QUIET, pair, raw_client, run, server_peer, until

import fastrpc
from fastrpc import frames as F
from fastrpc.protocol import Settings


async def _empties(n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b""


def test_a_large_stream_buffer_of_tiny_items_stays_within_the_frames_of_a_message() -> None:
    # A sender whose stream_buffer_size (1 MiB) holds more 4-byte frames than a message
    # may carry (wire.MAX_FRAMES, 65,536), to a receiver whose window (4 MiB: 131,072
    # empty frames at 32 bytes of credit each) lets it queue them: the stream's whole
    # queue went as one message, which the receiver refused ("too many frames in one
    # message", 1008), closing the connection.
    n = 140_000

    async def main() -> None:
        async with pair(
            fastrpc.Router(),
            server_opts={"streams": fastrpc.StreamManager(initial_window=4 << 20)},
            client_opts={"streams": fastrpc.StreamManager(stream_buffer_size=1 << 20)},
        ) as (server, peer):
            sp = await server_peer(server)
            sid = await peer.send_stream(_empties(n))
            _, stream = sp.receive_stream(sid)
            got = 0
            async for _ in stream:
                got += 1
            assert got == n
            assert not peer.closed and not sp.closed

    run(main(), 60)


def test_a_full_stream_queue_and_its_terminal_frame_fit_in_one_of_the_peers_messages() -> None:
    # A peer that takes messages of 64 KiB (frames of 32 KiB): a stream's queue is held
    # to a buffer of what fits beside one frame (32,750 bytes), and may take one frame
    # past it. A streaming call whose deadline passed while its queue was that full
    # (the peer reading slowly) appended its STREAM_ERROR to it: one message past the
    # peer's max_message_size (which it may refuse, 1009: the whole connection).
    method = "a_streaming_method_with_a_long_name"
    router = fastrpc.Router()
    server: fastrpc.Server | None = None

    def queue() -> tuple[int, int, int]:
        """(frames, bytes) in the results' queue, and the stream's buffer size."""
        assert server is not None
        out = next(iter(server.peers)).core._outbound
        s = out.streams.get(1)
        return (s.writer.count, len(s.writer), out.stream_buffer_size) if s is not None else (0, 0, 0)

    @router.method(method)
    async def feed() -> AsyncIterator[bytes]:
        while True:
            # An item that leaves the queue one byte short of its buffer (its frame's
            # header is 7 bytes), then the largest frame: the fullest queue there is.
            frames, _, buffer = queue()
            yield bytes(buffer - 8 if frames == 0 else 32 << 10)

    async def main() -> None:
        nonlocal server
        async with fastrpc.serve(router, "127.0.0.1", 0, **QUIET) as server:
            limits = Settings(max_frame_size=32 << 10, max_message_size=64 << 10, initial_stream_window=16 << 20)
            async with raw_client(server.url, limits) as raw:
                # Nothing is read until the deadline passed: the server's socket backs
                # up, and the stream's queue stays full.
                raw.core.send_request(method, raw.core_payload(()), stream=True, timeout=1.0)
                await raw.send(raw.core.next_message())
                await until(lambda: server.peers and queue()[0] == 2 and queue()[1] > 64000, 10, "a full queue")
                await until(lambda: not next(iter(server.peers)).core.running_calls, 10, "the deadline")
                sizes: list[int] = []
                while True:
                    msg = await asyncio.wait_for(raw.ws.recv(), 10)
                    sizes.append(len(msg))
                    frames = F.decode_message(msg, 1 << 30)
                    ends = [f for f in frames if f.type == F.STREAM_ERROR and f.id == 1]
                    if ends:
                        break
                assert max(sizes) <= 64 << 10, max(sizes)
                assert b"TimeoutError" in bytes(ends[0].payload)

    run(main(), 30)
