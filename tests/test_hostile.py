"""A server that trusts no peer (issue 11): hostile and broken clients against a fastrpc
server in a child process, at default settings unless a test says otherwise.

Every test runs one attack through :func:`_hostile.hostile` and asserts the issue's
targets: the server's RSS grows by less than 64 MiB, the attacker's connection is
closed with a documented close code (where the server has something to close), and a
well-behaved client on the same server (another process, calling every 20 ms) gets
every answer within 100 ms. Some attacks add a target of their own (a structure that
must stay bounded, a GOAWAY that must be sent).

``FASTRPC_HOSTILE_REPORT=path pytest tests/test_hostile.py`` appends the figures of
each attack to ``path`` as JSON lines; ``-s`` prints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import zlib
from collections.abc import Iterator

import msgspec
import pytest
from _hostile import ERROR_CODES, Attacker, Context, Outcome, RawWS, drop_spares, frame, hostile, request
from _util import recv_binary

from fastrpc import frames as F
from fastrpc import options as O
from fastrpc.protocol import Connection, Role, Settings
from fastrpc.transport import DROP_RATE

KiB = 1 << 10
MiB = 1 << 20
ADD_ARGS = msgspec.msgpack.encode([1, 2])
RAW = 0x40  # FLAG_RAW: the payload is raw bytes
PING64 = frame(F.PING, 0, 0, b"p" * 64)  # the largest PING docs/protocol.md allows


@pytest.fixture(scope="module", autouse=True)
def _no_spares_left() -> Iterator[None]:
    yield
    drop_spares()  # the processes _hostile started ahead for an attack after the last


# ------------------------------------------------------------ the harness itself


def test_baseline_without_attack() -> None:
    # The probe and the measurements on a server nobody attacks: the figures every
    # attack is compared with.
    async def attack(ctx: Context) -> Outcome:
        await asyncio.sleep(1.0)
        return Outcome(True)

    hostile("baseline", attack, expect=None).verify()


# ----------------------------------------- (a) control output that bypasses backpressure


def test_ping_flood_never_reading() -> None:
    # PINGs of 64 bytes (the documented maximum), 1 MiB per message, from a client that
    # never reads: every PONG is queued on the server.
    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url, reading=False)
        msg = PING64 * (MiB // len(PING64))
        while ctx.keep_going(4) and a.sent < 200 and await a.send(msg, timeout=1):
            pass
        ctx.note("mib_sent", a.sent)
        return await a.outcome(5)

    hostile("ping flood, never reading", attack, expect={1008}).verify()


def test_oversized_ping_payloads() -> None:
    # PINGs with 60 KiB payloads (docs/protocol.md allows 64 bytes), echoed in full.
    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url, reading=False)
        msg = frame(F.PING, 0, 0, bytes(60 * KiB)) * 64
        while ctx.keep_going(4) and a.sent < 50 and await a.send(msg, timeout=1):
            pass
        ctx.note("mib_sent", round(a.sent * len(msg) / MiB))
        return await a.outcome(5)

    hostile("oversized PING payloads", attack, expect={1002, 1008}).verify()


@pytest.mark.parametrize("kind", ["unknown_method", "echo_256k"])
def test_cheap_request_flood_never_reading(kind: str) -> None:
    # Requests answered at once (an unknown method: an ERROR naming it; an echo of raw
    # bytes, by a sync handler), from a client that never reads its answers; 200 MiB.
    # (Calls to a sync handler with a tiny answer, such as add(1, 2), pile up 4 bytes
    # a call: too slowly to show in a few seconds.)
    if kind == "unknown_method":
        name = "m" * KiB
        per_message, make = 200, lambda cid: request(cid, name, b"\x90")
        messages = 1000
    else:
        blob = bytes(256 * KiB)
        per_message, make = 12, lambda cid: request(cid, "echo", blob, RAW)
        messages = 64

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url, reading=False)
        cid = 1
        while ctx.keep_going(4) and a.sent < messages:
            msg = b"".join(make(cid + 2 * i) for i in range(per_message))
            cid += 2 * per_message
            if not await a.send(msg, timeout=1):
                break
        ctx.note("requests_sent", (cid - 1) // 2)
        # Never reading means not reading for longer than the server's patience:
        # only then read, to find how the server closed.
        await asyncio.sleep(O.OUTPUT_STALL_TIMEOUT + 1.5)
        return await a.outcome(5)

    hostile(f"request flood ({kind}), never reading", attack, expect={1008}).verify()


def test_a_peer_closed_for_not_reading_cannot_make_us_read_its_flood_meanwhile() -> None:
    # A client that never reads is closed (1008, output_stall_timeout), and the server
    # gives it up to keepalive_timeout to take its close frame. What the client still
    # sends meanwhile is read and dropped up to transport.DROP_LIMIT (1 MiB), then
    # read at transport.DROP_RATE (16 MiB/s) at most (its close frame may still come):
    # before, a flood was read and dropped at line rate (a core busy) until the close
    # timeout.
    blob = bytes(256 * KiB)

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url, reading=False)
        cid = 1
        while ctx.keep_going(4) and a.sent < 64:  # echo calls until the server stops reading
            msg = b"".join(request(cid + 2 * i, "echo", blob, RAW) for i in range(12))
            cid += 24
            if not await a.send(msg, timeout=1):
                break
        # The stall is seen (output_stall_timeout), the last messages are tried (a second
        # each), and the server waits for our close.
        await asyncio.sleep(O.OUTPUT_STALL_TIMEOUT + 3.5)
        flood = bytes(MiB)  # any data frames: they are dropped unread
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        marks: list[tuple[float, int]] = []  # (time, MiB taken) once the buffers are full
        while loop.time() - t0 < 3 and await a.send(flood, timeout=1):
            if loop.time() - t0 >= 1:
                marks.append((loop.time(), a.sent))
        assert len(marks) >= 2, marks
        (t1, n1), (t2, n2) = marks[0], marks[-1]
        rate = (n2 - n1) / (t2 - t1)
        ctx.note("mib_taken_while_closing", a.sent)
        ctx.note("mib_per_s_taken_once_buffers_are_full", round(rate, 1))
        # The first second fills both sides' socket buffers (their size varies with
        # loopback autotuning); after it, what the server reads is what it takes:
        # DROP_RATE (16 MiB/s) plus what the buffers may still grow (10 MiB at most
        # here, 5 MiB/s over 2 s). At line rate this was ~1,600 MiB/s.
        limit = 2 * DROP_RATE / MiB
        ctx.check(f"at most {limit:g} MiB/s taken from a peer being closed", rate <= limit)
        return await a.outcome(8)

    hostile(
        "flood from a peer being closed for not reading",
        attack,
        options={"keepalive_timeout": 8.0},
        expect={1008},
    ).verify()


# ---------------------------------------------------------- (b) super-linear work


def ping_backlog_split(where: str) -> None:
    # The attacker announces 1 KiB messages in its HELLO, so the server must split its
    # PONG backlog into 1 KiB messages. client_hello_1k: one 2 MiB message of PINGs to
    # a default server; server_64k: a server with max_message_size 64 KiB, 32 messages
    # of 64 KiB of PINGs.
    options: dict[str, int] = {}
    if where == "server_64k":
        options = {"max_message_size": 64 * KiB, "max_frame_size": 64 * KiB}
        count, size = 32, 64 * KiB - 128
    else:
        count, size = 1, 2 * MiB

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url, Settings(max_frame_size=KiB, max_message_size=KiB))
        a.start_reading(count=True)
        msg = PING64 * (size // len(PING64))
        for _ in range(count):
            if not await a.send(msg, timeout=2):
                break
        pings = count * (size // len(PING64))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while loop.time() - t0 < 8 and a.received.get(F.PONG, 0) < pings and not a.closed():
            await asyncio.sleep(0.05)
        ctx.note("pings", pings)
        ctx.note("pongs_received", a.received.get(F.PONG, 0))
        ctx.note("seconds_to_answer", round(loop.time() - t0, 2))
        return await a.outcome(3)

    hostile(f"PING backlog split into 1 KiB messages ({where})", attack, options=options, expect={1008}).verify()


@pytest.mark.parametrize("where", ["client_hello_1k", "server_64k"])
def test_ping_backlog_split_into_small_messages(where: str) -> None:
    # server_64k: ~900 PINGs a message, fewer than MAX_PINGS due at once, from a peer
    # that reads its PONGs: max_ping_rate closes it.
    ping_backlog_split(where)


def test_websocket_ping_flood_never_reading() -> None:
    # WebSocket PINGs (125 bytes, the most RFC 6455 allows), 64 KiB of them a write,
    # from a client that never reads: each would be answered into our write buffer.
    hello = Connection(Role.CLIENT).handshake()
    chunk = RawWS.encode(9, b"p" * 125) * 512

    async def attack(ctx: Context) -> Outcome:
        ws = await RawWS.open(ctx.url, rcvbuf=4096)
        ws.write(RawWS.encode(2, hello))
        seen = len(ctx.server.closes)
        sent = 0
        try:
            while ctx.keep_going(4) and len(ctx.server.closes) == seen:
                ws.write(chunk)
                await asyncio.wait_for(ws.drain(), 1)
                sent += len(chunk)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        ctx.note("kib_sent", sent // KiB)
        out = await ws.close_code(4)
        ws.abort()
        return out

    hostile("WebSocket PING flood, never reading", attack, expect={1008}).verify()


@pytest.mark.parametrize("kind", ["extension", "pong"])
def test_million_tiny_frames_in_one_message(kind: str) -> None:
    # 4 MiB messages of 4-byte frames: about a million frames each (extension frames
    # are skipped; unsolicited PONGs each make an event).
    ftype = 0x40 if kind == "extension" else F.PONG
    msg = frame(ftype, 0, 0) * ((4 * MiB) // 4)

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url)
        a.start_reading()
        for _ in range(3):
            if not ctx.keep_going(6) or not await a.send(msg, timeout=3):
                break
        ctx.note("messages_sent", a.sent)
        return await a.outcome(4)

    hostile(f"a million tiny frames per message ({kind})", attack, expect={1008}).verify()


def test_pending_calls_hold_their_arguments() -> None:
    # Calls to a handler that keeps its argument while it waits (an upload handler, say),
    # each with 1 MiB of raw bytes: max_pending_calls (1024) of them hold 1 GiB.
    blob = bytes(MiB - 64)

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url)
        a.start_reading()
        cid = 1
        while ctx.keep_going(5) and not a.closed() and cid < 2 * 250:
            msg = b"".join(request(cid + 2 * i, "keep", blob, RAW) for i in range(3))
            cid += 6
            if not await a.send(msg, timeout=2):
                break
        ctx.note("calls", (cid - 1) // 2)
        return await a.outcome(4)

    hostile("pending calls hold their arguments", attack, expect={1008}).verify()


def test_dense_msgpack_arguments() -> None:
    # Calls whose arguments are 1 MiB of MessagePack empty arrays (a million objects to
    # decode for one frame), four to a message. Legal traffic, but the arguments are
    # decoded inline while the message is processed: nothing to close, the other
    # clients must still be answered in time.
    n = MiB - 64
    args = b"\x91\xdd" + n.to_bytes(4, "big") + b"\x90" * n  # [[[], [], ...]]

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url)
        a.start_reading()
        cid = 1
        for _ in range(5):
            msg = b"".join(request(cid + 2 * i, "echo", args) for i in range(3))
            cid += 6
            if not ctx.keep_going(5) or not await a.send(msg, timeout=5):
                break
        await asyncio.sleep(1.0)
        ctx.note("calls", (cid - 1) // 2)
        await a.close()
        return Outcome(True)

    hostile("dense MessagePack arguments", attack, expect=None).verify()


# ------------------------------------------------------- (c) memory past the window


def test_compressed_items_inflate_past_the_window() -> None:
    # With compression negotiated, credit counts compressed bytes: 4 KiB of zlib that
    # inflate to 4 MiB each, 60 of them within one stream's 256 KiB window, on stream
    # after stream that nobody reads; at the end one item past the credit.
    bomb = zlib.compress(bytes(4 * MiB), 9)
    charge = len(bomb) + 32
    per_stream = (256 * KiB) // charge

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url, Settings(compression=1))
        a.start_reading()
        sid, sent = 1, 0
        while ctx.keep_going(5) and not a.closed() and ((sid - 1) // 2 * per_stream + sent) < 80:
            n = min(8, per_stream - sent)
            flags = F.FLAG_COMPRESSED
            frames = [
                frame(F.STREAM_DATA, flags | (F.FLAG_OPEN if sent == 0 and i == 0 else 0), sid, bomb) for i in range(n)
            ]
            if not await a.send(b"".join(frames), timeout=2):
                break
            sent += n
            if sent == per_stream:
                sid, sent = sid + 2, 0
        ctx.note("streams", (sid + 1) // 2)
        ctx.note("inflated_mib_sent", ((sid - 1) // 2 * per_stream + sent) * 4)
        await a.send(frame(F.STREAM_DATA, F.FLAG_COMPRESSED, 1, bomb))  # past stream 1's credit
        return await a.outcome(4)

    hostile("compressed items inflate past the window", attack, options={"compression": "zlib"}).verify()


def test_fragments_pile_up_in_reassembly() -> None:
    # Fragments (MORE) are credited back on arrival: 64 KiB fragments, 15 MiB of an
    # unfinished item per stream (under max_item_size), stream after stream.
    frag = bytes(64 * KiB)
    per_stream = (15 * MiB) // len(frag)

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url)
        a.start_reading()
        sid, sent = 1, 0
        while ctx.keep_going(5) and not a.closed() and ((sid - 1) // 2 * per_stream + sent) < 4096:
            frames = []
            for _ in range(16):
                flags = F.FLAG_MORE | (F.FLAG_OPEN if sent == 0 else 0)
                frames.append(frame(F.STREAM_DATA, flags, sid, frag))
                sent += 1
                if sent == per_stream:
                    sid, sent = sid + 2, 0
            if not await a.send(b"".join(frames), timeout=2):
                break
        ctx.note("partial_mib_sent", round(((sid - 1) // 2 * per_stream + sent) * len(frag) / MiB))
        return await a.outcome(4)

    hostile("fragments pile up in reassembly", attack, expect={1008}).verify()


def test_stream_opened_on_a_plain_call() -> None:
    # REQUEST (a plain call, no CHANNEL) and, in the same message, STREAM_DATA opening a
    # stream on the call's id: taken as the call's input, kept after the call ended.
    item = bytes(200 * KiB)

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url)
        a.start_reading()
        cid = 1
        while ctx.keep_going(5) and not a.closed() and cid < 2 * 1300:
            parts = []
            for _ in range(5):
                parts.append(request(cid, "add", ADD_ARGS))
                parts.append(frame(F.STREAM_DATA, F.FLAG_OPEN, cid, item))
                cid += 2
            if not await a.send(b"".join(parts), timeout=2):
                break
        ctx.note("calls", (cid - 1) // 2)
        return await a.outcome(4)

    hostile("stream opened on a plain call", attack, expect={1002, 1008}).verify()


def test_unclaimed_streams_fill_their_windows() -> None:
    # Streams nobody claims, each filled to its 256 KiB window, up to max_streams.
    item = bytes(256 * KiB - 32)  # its charge is the whole window

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url)
        a.start_reading()
        sid = 1
        # Bounded by max_streams (1024 x 256 KiB), not by the safety cap: the close that
        # comes at stream 1025 is worth seeing.
        while ctx.elapsed() < 5 and not a.closed() and sid < 2 * 1100:
            msg = b"".join(frame(F.STREAM_DATA, F.FLAG_OPEN, sid + 2 * i, item) for i in range(4))
            sid += 8
            if not await a.send(msg, timeout=2):
                break
        ctx.note("streams", (sid - 1) // 2)
        return await a.outcome(4)

    hostile("unclaimed streams fill their windows", attack, expect={1008}).verify()


@pytest.mark.parametrize("kind", ["stream_call_cancelled", "channel_input_never_sent"])
def test_refused_stream_ids_stay_bounded(kind: str) -> None:
    # Each call leaves an id in the server's set of refused stream ids: a streaming call
    # cancelled in the message that made it (the server refuses an "input" the call
    # never had), or a channel whose handler returns without reading an input the
    # client never sends. A client may do either legitimately: there is nothing to
    # close; the set must stay bounded (by the calls that can be pending).
    per_message = 200

    def calls(cid: int) -> bytes:
        parts = []
        for i in range(per_message):
            c = cid + 2 * i
            if kind == "stream_call_cancelled":
                parts.append(request(c, "blob", msgspec.msgpack.encode([1, 1]), F.FLAG_STREAM))
                parts.append(frame(F.CANCEL, 0, c))
            else:
                parts.append(request(c, "ignore_input", b"\x90", F.FLAG_STREAM | F.FLAG_CHANNEL))
        return b"".join(parts)

    def answered(a: Attacker) -> int:
        return sum(a.received.get(t, 0) for t in (F.STREAM_END, F.STREAM_ERROR, F.ERROR))

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url)
        a.start_reading(count=True)
        cid = 1
        while ctx.keep_going(3) and not a.closed():
            if not await a.send(calls(cid), timeout=2):
                break
            cid += 2 * per_message
            # Each batch is answered before the next goes: max_pending_calls is respected.
            while answered(a) < (cid - 1) // 2 and not a.closed() and ctx.keep_going(5):
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.2)
        state = await ctx.debug()
        ctx.note("calls", (cid - 1) // 2)
        ctx.note("server_state", state)
        ctx.check(
            f"refused stream ids grew to {state['refused'] + state['refused_inputs']} after {(cid - 1) // 2} calls",
            state["refused"] + state["refused_inputs"] <= 2048,
        )
        outcome = Outcome(a.closed(), None, "")
        if a.closed():
            outcome = await a.outcome(1)
        await a.close()
        return outcome

    hostile(f"refused stream ids ({kind})", attack, expect=None).verify()


def test_dropped_resumable_sessions_hold_replay() -> None:
    # Resumable sessions whose client acknowledges nothing and drops: each keeps up to
    # max_replay_bytes (32 MiB) of replay for session_grace (120 s). Four of them.
    blob = bytes(950 * KiB)

    async def attack(ctx: Context) -> Outcome:
        for k in range(4):
            if not ctx.keep_going(15):
                break
            a = await Attacker.open(ctx.url, Settings(resume=1))
            for i in range(33):
                await a.send(request(2 * i + 1, "echo", blob, RAW))
                while True:  # its answer (skipping ACKs and credit)
                    frames = await a.recv_frames(5)
                    if any(f.type in (F.RESPONSE, F.ERROR) for f in frames):
                        break
            await a.abort()  # no ACK ever: all of it stays in the session's replay buffer
            ctx.note("sessions", k + 1)
        await asyncio.sleep(0.3)
        state = await ctx.debug()
        ctx.note("server_state", state)
        return Outcome(True)

    hostile("dropped resumable sessions hold replay", attack, options={"resume": True}, expect=None).verify()


# --------------------------------------------------------------------- (d) resume


def _client_core() -> Connection:
    return Connection(Role.CLIENT, Settings(resume=1))


async def _session(url: str) -> tuple[Attacker, Connection]:
    """A resumable session with one call answered; the client core tracks positions."""
    core = _client_core()
    a = await Attacker.open(url, hello=core.handshake(), wait_hello=False)
    core.receive_message(await recv_binary(a.ws))
    core.send_request("add", ADD_ARGS)
    await a.send(core.next_message())
    while core.pending_calls:
        core.receive_message(await recv_binary(a.ws))
    assert core.session.token is not None
    return a, core


def test_resume_from_a_position_past_what_was_sent() -> None:
    # RESUME claiming to have received a million frames more than the server sent.
    async def attack(ctx: Context) -> Outcome:
        a, core = await _session(ctx.url)
        await a.abort()
        await asyncio.sleep(0.1)
        core.new_transport()
        core.traffic.frames_in += 1_000_000
        b = await Attacker.open(ctx.url, hello=core.next_message(), wait_hello=False)
        await b.send(PING64)
        return await b.outcome(3)

    hostile("RESUME past the sent position", attack, options={"resume": True}, expect={1002}).verify()


def test_same_token_resumed_from_two_sockets_at_once() -> None:
    # Two sockets resume one session with the same token at the same moment (both
    # upgraded first, then both handshakes written in one go), five sessions in a row.
    # Each time one of them must get the session (and an answer on it), the other a new
    # session or a documented close.
    async def race(ctx: Context) -> tuple[list[str], int, list[Outcome]]:
        a, core = await _session(ctx.url)
        await a.abort()
        await asyncio.sleep(0.05)
        core.new_transport()
        hello = core.next_message()
        pair = await asyncio.gather(*(Attacker.open(ctx.url, hello=b"", wait_hello=False) for _ in range(2)))
        await asyncio.gather(*(b.ws.send(hello) for b in pair))
        states = []
        for b in pair:
            try:
                frames = await b.recv_frames(5)
            except Exception:
                states.append("closed")
                continue
            ok = [f for f in frames if f.type == F.RESUME_OK]
            states.append("other" if not ok else "new" if ok[0].flags & F.FLAG_NEW else "resumed")
        answered = 0
        losers = []
        for state, b in zip(states, pair):
            if state == "resumed":
                await b.send(request(core._calls.next_id, "add", ADD_ARGS))
                with contextlib.suppress(Exception):
                    for _ in range(5):
                        if any(f.type == F.RESPONSE for f in await b.recv_frames(2)):
                            answered += 1
                            break
            elif state != "new":
                losers.append(await b.outcome(2))
        for b in pair:
            await b.close()
        return states, answered, losers

    async def attack(ctx: Context) -> Outcome:
        rounds = []
        for _ in range(5):
            states, answered, losers = await race(ctx)
            rounds.append((states, answered))
            ctx.check(f"neither socket got the session and an answer on it ({states})", answered == 1)
            for o in losers:
                ctx.check(f"the losing socket ended with {o.describe()}", o.code in ERROR_CODES)
        ctx.note("rounds", rounds)
        return Outcome(True)

    hostile("same token from two sockets", attack, options={"resume": True}, expect=None).verify()


@pytest.mark.parametrize("kind", ["unknown_tokens", "one_session_over_and_over"])
def test_resume_flood(kind: str) -> None:
    # unknown_tokens: new connections asking to resume made-up tokens, as fast as they
    # can. one_session_over_and_over: one session resumed (correctly) again and again.
    async def attack(ctx: Context) -> Outcome:
        n = 0
        if kind == "unknown_tokens":

            async def one() -> None:
                core = _client_core()
                core.session.token = os.urandom(32)
                core.session.transports = 2
                ws = await RawWS.open(ctx.url)
                try:
                    ws.write(RawWS.encode(2, core.handshake()))
                    await asyncio.wait_for(ws.read_frame(), 5)
                finally:
                    await ws.aclose()

            while ctx.keep_going(4):
                await asyncio.gather(*(one() for _ in range(20)))
                n += 20
        else:
            a, core = await _session(ctx.url)
            while ctx.keep_going(4):
                await a.abort()
                core.new_transport()
                a = await Attacker.open(ctx.url, hello=core.next_message(), wait_hello=False)
                core.receive_message(await recv_binary(a.ws))
                n += 1
            await a.close()
        await asyncio.sleep(0.3)
        state = await ctx.debug()
        ctx.note("resumes", n)
        ctx.note("server_state", state)
        return Outcome(True)

    hostile(f"resume flood ({kind})", attack, options={"resume": True}, expect=None).verify()


# ------------------------------------------------------------------- (e) HELLO


def test_hello_with_an_unknown_version() -> None:
    async def attack(ctx: Context) -> Outcome:
        hello = frame(F.HELLO, 0, 0, F.encode_settings(F.PROTOCOL_VERSION + 1, {}))
        a = await Attacker.open(ctx.url, hello=hello, wait_hello=False)
        out = await a.outcome(3)
        ctx.note("goaway", out.goaway)
        ctx.check(
            f"no GOAWAY UNSUPPORTED_VERSION naming version {F.PROTOCOL_VERSION} (got {out.goaway})",
            out.goaway is not None and out.goaway[0] == 6 and str(F.PROTOCOL_VERSION) in out.goaway[1],
        )
        return out

    hostile("HELLO with an unknown version", attack, expect={1002}).verify()


# ------------------------------------------------------------- (f) JSON (seed) mode


def _json(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


async def _json_attacker(ctx: Context) -> Attacker:
    return await Attacker.open(
        ctx.url, hello=_json({"category": "request", "requestId": "r0", "data": {"method": "add", "params": [1, 2]}})
    )


@pytest.mark.parametrize("where", ["first_message", "later_message"])
def test_json_deep_nesting(where: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000

    async def attack(ctx: Context) -> Outcome:
        if where == "first_message":
            a = await Attacker.open(ctx.url, hello=deep, wait_hello=False)
        else:
            a = await _json_attacker(ctx)
            await a.send(_json({"category": "request", "requestId": "r1", "data": None})[:-1] + ',"x":' + deep + "}")
        return await a.outcome(3)

    hostile(f"JSON deep nesting ({where})", attack, expect={1007, 1008}).verify()


@pytest.mark.parametrize(
    "message",
    [
        '{"category":"response","requestId":[1],"data":1}',
        '{"category":"response","requestId":{"a":1},"data":1}',
        '{"type":"StreamData","streamId":[1],"payload":1}',
        '{"type":"StreamEnd","streamId":{"a":[]}}',
        '{"category":"request","requestId":{"a":1},"data":{"method":"add","params":[1,2]}}',
        "[1,2,3]",
        '"just a string"',
        '{"category":"nonsense"}',
    ],
    ids=[
        "response_list_id",
        "response_dict_id",
        "stream_list_id",
        "stream_end_dict_id",
        "request_dict_id",
        "array",
        "string",
        "unknown_category",
    ],
)
def test_json_invalid_ids_and_shapes(message: str) -> None:
    async def attack(ctx: Context) -> Outcome:
        a = await _json_attacker(ctx)
        await a.send(message)
        return await a.outcome(3)

    hostile(f"JSON invalid message {message[:40]}", attack, expect={1007, 1008}).verify()


def test_json_unclaimed_streams_and_items() -> None:
    # Stream items nobody reads: 1 KiB items, on stream after stream.
    item = "x" * KiB

    async def attack(ctx: Context) -> Outcome:
        a = await _json_attacker(ctx)
        a.start_reading()
        n = 0
        while ctx.keep_going(5) and not a.closed() and n < 300_000:
            for _ in range(500):
                await a.ws.send(_json({"type": "StreamData", "streamId": f"s{n // 5000}", "payload": item}))
                n += 1
            await asyncio.sleep(0)
        ctx.note("items", n)
        return await a.outcome(4)

    hostile("JSON unclaimed streams and items", attack, expect={1008, 1009}).verify()


def test_json_large_items() -> None:
    # Stream items of almost 4 MiB each (the message limit) that nobody reads.
    item = "x" * (4 * MiB - 200)

    async def attack(ctx: Context) -> Outcome:
        a = await _json_attacker(ctx)
        a.start_reading()
        n = 0
        while ctx.keep_going(5) and not a.closed() and n < 64:
            if not await a.send(_json({"type": "StreamData", "streamId": "big", "payload": item}), timeout=2):
                break
            n += 1
        ctx.note("items", n)
        return await a.outcome(4)

    hostile("JSON large items", attack, expect={1008, 1009}).verify()


def test_json_request_task_flood() -> None:
    # Requests whose handler sleeps: each one a task on the server.
    async def attack(ctx: Context) -> Outcome:
        a = await _json_attacker(ctx)
        a.start_reading()
        n = 0
        while ctx.keep_going(5) and not a.closed() and n < 200_000:
            for _ in range(1000):
                await a.ws.send(
                    _json({"category": "request", "requestId": n, "data": {"method": "slow", "params": [30]}})
                )
                n += 1
            await asyncio.sleep(0)
        ctx.note("requests", n)
        return await a.outcome(4)

    hostile("JSON request task flood", attack, expect={1008}).verify()


def test_json_ping_flood_never_reading() -> None:
    # The seed's heartbeat, {"category":"ping"}, each answered with a pong, from a
    # client that never reads them (WebSocket messages of one ping each).
    ping = _json({"category": "ping", "timestamp": 1})

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url, hello=ping, reading=False)
        n = 0
        while ctx.keep_going(4) and not a.closed() and n < 20_000:  # 20x the burst
            for _ in range(1000):
                if not await a.send(ping, timeout=1):
                    break
                n += 1
            else:
                await asyncio.sleep(0)
                continue
            break
        ctx.note("pings", n)
        return await a.outcome(5)

    hostile("JSON ping flood, never reading", attack, expect={1008}).verify()


def test_json_dense_messages() -> None:
    # Messages of 4 MiB of tiny JSON containers: each takes the decoder a while.
    body = ",".join(["[[],{}]"] * ((4 * MiB - 200) // 8))
    msg = '{"category":"request","requestId":"d","data":{"method":"add","params":[1,2],"pad":[' + body + "]}}"

    async def attack(ctx: Context) -> Outcome:
        a = await _json_attacker(ctx)
        a.start_reading()
        n = 0
        while ctx.keep_going(4) and not a.closed():
            if not await a.send(msg, timeout=2):
                break
            n += 1
        ctx.note("messages", n)
        return await a.outcome(4)

    hostile("JSON dense messages", attack, expect={1008, 1009}).verify()


def test_json_pending_requests_hold_their_data() -> None:
    # Requests to a handler that keeps its argument while it waits, each with a 1 MiB
    # string.
    big = "x" * (MiB - 200)

    async def attack(ctx: Context) -> Outcome:
        a = await _json_attacker(ctx)
        a.start_reading()
        n = 0
        while ctx.keep_going(5) and not a.closed() and n < 250:
            msg = _json({"category": "request", "requestId": n, "data": {"method": "keep", "params": [big]}})
            if not await a.send(msg, timeout=2):
                break
            n += 1
        ctx.note("requests", n)
        return await a.outcome(4)

    hostile("JSON pending requests hold their data", attack, expect={1008}).verify()


def test_json_dense_messages_under_the_item_limit() -> None:
    # Requests whose data is 1 MiB (less 200 bytes) of small JSON objects: within
    # every limit, but each takes the decoder a while. Nothing to close; the other
    # clients must still be answered in time.
    body = ",".join(['{"a":1}'] * ((MiB - 200) // 8))
    msg = '{"category":"request","requestId":"d","data":{"method":"add","params":[1,2],"pad":[' + body + "]}}"

    async def attack(ctx: Context) -> Outcome:
        a = await _json_attacker(ctx)
        a.start_reading()
        n = 0
        while ctx.keep_going(4) and not a.closed() and n < 40:
            if not await a.send(msg, timeout=2):
                break
            n += 1
            await asyncio.sleep(0.05)
        ctx.note("messages", n)
        out = Outcome(True) if not a.closed() else await a.outcome(1)
        await a.close()
        return out

    hostile("JSON dense messages under the item limit", attack, expect=None).verify()


# ------------------------------------------------------------------ think past


def test_idle_connection_flood() -> None:
    # 800 connections that finish the WebSocket upgrade and never send a message (with
    # handshake_timeout 1 s, to keep the test short).
    async def attack(ctx: Context) -> Outcome:
        conns: list[RawWS] = []
        try:
            while len(conns) < 800 and ctx.keep_going(5):
                conns += await asyncio.gather(*(RawWS.open(ctx.url) for _ in range(50)))
            ctx.note("connections", len(conns))
            outcomes = await asyncio.gather(*(c.close_code(4) for c in conns))
        finally:
            for c in conns:
                c.abort()
        codes: dict[str, int] = {}
        for o in outcomes:
            codes[o.describe()[:20]] = codes.get(o.describe()[:20], 0) + 1
        ctx.note("closes", codes)
        # Every one of them must end the same documented way: report the worst.
        bad = [o for o in outcomes if not o.closed or o.code not in ERROR_CODES]
        return bad[0] if bad else outcomes[0]

    hostile("idle connection flood", attack, options={"handshake_timeout": 1.0}, connect_every=0.25).verify()


def test_connection_churn() -> None:
    # New connections as fast as 50 at a time can go: upgrade, HELLO, drop.
    hello = Connection(Role.CLIENT).handshake()

    async def attack(ctx: Context) -> Outcome:
        n = 0

        async def one() -> None:
            ws = await RawWS.open(ctx.url)
            try:
                ws.write(RawWS.encode(2, hello))
                await asyncio.wait_for(ws.read_frame(), 5)
            finally:
                await ws.aclose()

        while ctx.keep_going(4):
            await asyncio.gather(*(one() for _ in range(50)))
            n += 50
        ctx.note("connections", n)
        return Outcome(True)

    hostile("connection churn", attack, expect=None, connect_every=0.25).verify()


@pytest.mark.parametrize("end", ["end", "abort"])
def test_stream_open_and_end_flood(end: str) -> None:
    # Streams opened and ended (or aborted) at once, never claimed: each keeps its slot
    # until the application reads it, so max_streams (1024) is reached.
    ftype = F.STREAM_END if end == "end" else F.STREAM_ABORT

    async def attack(ctx: Context) -> Outcome:
        a = await Attacker.open(ctx.url)
        a.start_reading()
        sid = 1
        while ctx.keep_going(4) and not a.closed() and sid < 2 * 5000:
            parts = []
            for _ in range(256):
                parts += [frame(F.STREAM_DATA, F.FLAG_OPEN, sid, b"x"), frame(ftype, 0, sid)]
                sid += 2
            if not await a.send(b"".join(parts), timeout=2):
                break
        ctx.note("streams", (sid - 1) // 2)
        return await a.outcome(3)

    hostile(f"stream open and {end} flood", attack, expect={1008}).verify()


def test_tiny_websocket_fragments() -> None:
    # fastrpc messages sent as 1-byte WebSocket fragments (7 bytes on the wire each).
    hello = Connection(Role.CLIENT).handshake()
    message = PING64 * (MiB // len(PING64))
    fragments = b"".join(RawWS.fragments(message, 1))

    async def attack(ctx: Context) -> Outcome:
        ws = await RawWS.open(ctx.url)
        ws.write(RawWS.encode(2, hello))
        await asyncio.wait_for(ws.read_frame(), 5)
        sent = 0
        try:
            while ctx.keep_going(4):
                for i in range(0, len(fragments), 1 << 16):
                    ws.write(fragments[i : i + (1 << 16)])
                    await asyncio.wait_for(ws.drain(), 2)
                sent += 1
        except (ConnectionError, asyncio.TimeoutError):
            pass
        ctx.note("messages_sent", sent)
        out = await ws.close_code(4)
        ws.abort()
        return out

    hostile("tiny WebSocket fragments", attack).verify()


def test_slow_reader() -> None:
    # A streaming call whose client grants all the credit in the world and then reads
    # its socket at 100 bytes a second (4 KiB receive buffer). It cannot answer PINGs
    # in time: keepalive (1 s here, to keep the test short) must drop it.
    async def attack(ctx: Context) -> Outcome:
        core = Connection(Role.CLIENT)
        seen = len(ctx.server.closes)  # the probe's first connection may be among them
        ws = await RawWS.open(ctx.url, rcvbuf=4096)
        huge = F.encode_varint(1 << 40)
        msg = (
            core.handshake()
            + request(1, "blob", msgspec.msgpack.encode([100_000, 64 * KiB]), F.FLAG_STREAM)
            + frame(F.CREDIT, 0, 1, huge)
            + frame(F.CREDIT, 0, 0, huge)
        )
        ws.write(RawWS.encode(2, msg))
        got = 0

        try:
            while ctx.keep_going(6) and len(ctx.server.closes) == seen:
                await asyncio.wait_for(ws.reader.readexactly(1), 1)
                got += 1
                await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        ctx.note("bytes_read", got)
        ctx.note("server_closed_with", ctx.server.closes[seen:])
        # Neither a close frame nor the FIN can reach a client that reads this slowly
        # (both wait behind the data in the kernel's buffers): what counts is that the
        # server gave the connection up, and said why (1011, KEEPALIVE_TIMEOUT).
        ctx.check(
            "the server did not close the slow reader with KEEPALIVE_TIMEOUT (1011)",
            any(c.startswith("1011") for c in ctx.server.closes[seen:]),
        )
        outcome = Outcome(len(ctx.server.closes) > seen)
        ws.abort()
        return outcome

    hostile("slow reader", attack, options={"keepalive_interval": 1.0, "keepalive_timeout": 1.0}, expect=None).verify()
