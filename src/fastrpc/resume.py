"""Session resumption: positions, the replay buffer, ACK, tokens (sans-I/O).

``docs/protocol.md``, "Resuming a session": each side counts the frames it sent and
received after the handshake (positions). A receiver acknowledges what it got (ACK);
a sender keeps what was not acknowledged (the replay buffer). On a new transport the
client's RESUME and the server's RESUME_OK carry the session token and the position
each side received up to; each side then replays what the other missed.
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from typing import Union

from . import frames as F
from . import options as O
from .exceptions import ProtocolError
from .scheduler import split_message

__all__ = ["TOKEN_SIZE", "ResumeState", "SessionLost"]

Payload = Union[bytes, bytearray, memoryview]

TOKEN_SIZE = 32


class SessionLost(Exception):
    """Raised by a client core when the server did not resume its session (it expired,
    or the server restarted): the connection's state is gone; start a new one."""


class ResumeState:
    """One session's resumption state: its token, what was sent and not acknowledged,
    and where to resume from on the next transport."""

    __slots__ = (
        "acked",
        "awaiting_hello",
        "broken",
        "chunk",
        "enabled",
        "handshake_sent",
        "max_chunk",
        "max_replay_bytes",
        "new_session",
        "previous_token",
        "refused",
        "replay",
        "replay_bytes",
        "replay_from",
        "since_ack_bytes",
        "since_ack_frames",
        "token",
        "transports",
    )

    def __init__(self, max_replay_bytes: int = O.MAX_REPLAY_BYTES, max_chunk: int = O.BATCH_SIZE) -> None:
        self.enabled = False  # both sides asked for resumption in their HELLO
        self.broken = ""  # why this session can no longer be resumed
        self.token: bytes | None = None
        self.transports = 1  # transports this session has had
        self.max_replay_bytes = max_replay_bytes
        # (first position, end position, message); made when the first is recorded.
        self.replay: deque[tuple[int, int, bytes]] | None = None
        self.replay_bytes = 0
        self.replay_from: int | None = None  # the peer's received position, to replay from
        # The highest position the peer acknowledged: what is before it was freed, so a
        # resume from before it cannot be served (a protocol error).
        self.acked = 0
        # Received since our last ACK.
        self.since_ack_frames = 0
        self.since_ack_bytes = 0
        self.new_session = False  # (server) this transport started the session afresh
        # (Server) the token before the current one: still valid until the client
        # proves it received the current one (a RESUME_OK lost in a cut must not
        # lose the session). None once proved.
        self.previous_token: bytes | None = None
        self.refused = False  # (server) the client asked for a session we do not know
        # How many bytes one message (and one new frame) may carry on this link. A
        # WebSocket message is received whole or not at all: on a link cut before a
        # large message gets through, resending it whole never progresses. Halved on
        # every resume after a transport that got nothing outstanding through (down to
        # MIN_CHUNK), doubled on every ACK that frees replay (up to max_chunk).
        self.max_chunk = max_chunk
        self.chunk = max_chunk
        # The current transport's handshake: ours sent, the peer's not yet processed.
        self.handshake_sent = False
        self.awaiting_hello = True

    @property
    def resumable(self) -> bool:
        """Both sides agreed to resumption and nothing broke it."""
        return self.enabled and not self.broken

    def frame_cap(self) -> int:
        """The largest new stream frame this link takes (no cap while it is healthy)."""
        return self.chunk if self.chunk < self.max_chunk else F.VARINT_MAX

    def new_transport(self) -> None:
        """The session moves to a new transport: handshakes again, then replay."""
        self.transports += 1
        self.handshake_sent = False
        self.awaiting_hello = True
        self.replay_from = None

    # ------------------------------------------------------------- sending side

    def record(self, first: int, end: int, msg: bytes) -> None:
        """Keep sent message ``msg`` (frames ``first`` to ``end``) until acknowledged
        (nothing once the session can no longer be resumed: no replay will use it)."""
        if self.broken:
            return
        if self.replay is None:
            self.replay = deque()
        self.replay.append((first, end, msg))
        self.replay_bytes += len(msg)
        if self.replay_bytes > self.max_replay_bytes:
            self.broken = "replay buffer overflow: the peer acknowledged too little"
            self.replay.clear()
            self.replay_bytes = 0

    def ack(self, pos: int, sent: int) -> bool:
        """The peer received every frame before position ``pos``: forget them; True
        when that freed anything."""
        if pos > sent:
            raise ProtocolError("acknowledged frames that were never sent")
        if pos > self.acked:
            self.acked = pos
        replay = self.replay
        progressed = False
        while replay and replay[0][1] <= pos:
            self.replay_bytes -= len(replay.popleft()[2])
            progressed = True
        if progressed:
            self.chunk = min(self.chunk * 2, self.max_chunk)
        return progressed

    def take_replay(self, sent: int) -> list[bytes]:
        """After a resumed handshake: the messages the peer missed, in order (they stay
        buffered until acknowledged, in case this transport drops too)."""
        pos = self.replay_from
        self.replay_from = None
        if pos is None:
            return []
        if not self.ack(pos, sent) and self.replay:
            # The last transport got nothing of what was outstanding through: smaller
            # messages from now on.
            self.chunk = max(O.MIN_CHUNK, self.chunk // 2)
        out: list[bytes] = []
        replay = self.replay or deque()
        chunk = self.chunk
        for i, (first, end, msg) in enumerate(replay):
            if first < pos:
                # The peer has the start of this message: resend the rest of it.
                frames = F.decode_message(msg, F.VARINT_MAX)[pos - first :]
                rest = F.encode_batch([(f.type, f.flags, f.id, f.payload) for f in frames])
                self.replay_bytes -= len(msg) - len(rest)
                replay[i] = (pos, end, rest)
                msg = rest
            if len(msg) > chunk:
                out.extend(piece for piece, _ in split_message(msg, chunk))
            else:
                out.append(msg)
        return out

    # ----------------------------------------------------------- receiving side

    def received(self, frames: int) -> bool:
        """``frames`` frames arrived (their bytes are counted as each message is
        decoded): True when an ACK is due."""
        self.since_ack_frames += frames
        if self.since_ack_frames >= O.ACK_FRAMES or self.since_ack_bytes >= O.ACK_BYTES:
            self.since_ack_frames = self.since_ack_bytes = 0
            return True
        return False

    # --------------------------------------------------------------- handshake

    def handshake(self, client: bool, hello: bytes, received: int) -> bytes:
        """The first message on a transport: HELLO (payload ``hello``), plus RESUME (a
        client with a session to resume) or RESUME_OK (a server answering a client
        that asked for resumption); ``received``: our received position."""
        self.handshake_sent = True
        frames: list[tuple[int, int, int, bytes]] = [(F.HELLO, 0, 0, hello)]
        extra = self.resume_frame(received) if client else self.resume_ok_frame(received)
        if extra is not None:
            frames.append(extra)
        return F.encode_batch(frames)

    def accept(self, client: bool, nxt: F.Frame | None, sent: int) -> int:
        """The peer's HELLO was processed; ``nxt`` is the frame after it, ``sent`` our
        position. Settle the session's fate; return how many frames after HELLO the
        handshake used."""
        self.awaiting_hello = False
        if client:
            resume_ok = nxt if nxt is not None and nxt.type == F.RESUME_OK else None
            self.client_handshake(resume_ok, sent)
            return 0 if resume_ok is None else 1
        resume = nxt if nxt is not None and nxt.type == F.RESUME else None
        self.server_handshake(resume, sent)
        return 0 if resume is None else 1

    def resume_frame(self, received: int) -> tuple[int, int, int, bytes] | None:
        """(Client) RESUME for the handshake of a new transport, if there is a session."""
        if self.token is not None and self.transports > 1:
            return (F.RESUME, 0, 0, self.token + F.encode_varint(received))
        return None

    def resume_ok_frame(self, received: int) -> tuple[int, int, int, bytes] | None:
        """(Server) RESUME_OK for our handshake, when resumption is on."""
        if self.enabled and self.token is not None:
            flags = F.FLAG_NEW if self.new_session else 0
            return (F.RESUME_OK, flags, 0, self.token + F.encode_varint(received))
        return None

    def accepts(self, token: bytes) -> bool:
        """(Server) whether a RESUME with ``token`` may resume this session: the current
        token, or the previous one while the client has not proved it got the current
        (docs/protocol.md, "Handshake on reconnect")."""
        current, previous = self.token, self.previous_token
        return (current is not None and hmac.compare_digest(token, current)) or (
            previous is not None and hmac.compare_digest(token, previous)
        )

    def adopt(self, token: bytes) -> None:
        """(Server) this new session stands for an empty one with ``token`` that was
        dropped before a frame came or left: a RESUME with it resumes this one at 0."""
        self.token = token
        self.transports = 2

    def proved(self) -> None:
        """(Server) a frame arrived after our RESUME_OK: the client holds the current
        token, the previous one is void."""
        self.previous_token = None

    def server_handshake(self, resume: F.Frame | None, sent: int) -> None:
        """(Server) the client's handshake asked to resume (``resume``: its RESUME) or
        not; choose the session's fate and a fresh token. ``sent``: our position."""
        if not self.enabled:
            if resume is not None:
                raise ProtocolError("RESUME was not negotiated")
            return
        if resume is not None and self.transports > 1:
            token, pos = _session_frame(resume)
            if not self.accepts(token):
                raise ProtocolError("wrong session token")
            self.check_position(pos, sent)
            self.replay_from = pos
            self.new_session = False
            if self.token is not None and hmac.compare_digest(token, self.token):
                # The client holds the current token: it stays valid for one retry
                # of this resume (until a frame proves the client got the next one).
                self.previous_token = token
            # else: a retry with the previous token (the last RESUME_OK was lost): that
            # one stays valid; the token it never got is void.
        else:
            # A new session, or one we do not know (expired, or another server).
            self.new_session = True
            self.refused = resume is not None
        self.token = secrets.token_bytes(TOKEN_SIZE)

    def check_position(self, pos: int, sent: int) -> None:
        """The peer's received position in its RESUME / RESUME_OK: within what we sent,
        and not before what it acknowledged (that was freed: it cannot be replayed)."""
        if pos > sent:
            raise ProtocolError(f"resume position {pos} is past the {sent} frames sent")
        if pos < self.acked:
            raise ProtocolError(f"resume position {pos} is before the {self.acked} frames acknowledged")

    def client_handshake(self, resume_ok: F.Frame | None, sent: int) -> None:
        """(Client) the server's handshake answered with ``resume_ok`` (or not);
        raises :class:`SessionLost` when our session was not resumed."""
        if resume_ok is not None:
            token, pos = _session_frame(resume_ok)
            if resume_ok.flags & F.FLAG_NEW and self.transports > 1:
                raise SessionLost("the server did not resume the session")
            self.check_position(pos, sent)
            self.token = token
            if not resume_ok.flags & F.FLAG_NEW:
                self.replay_from = pos
        elif self.transports > 1 and self.enabled:
            raise SessionLost("the server does not resume sessions")

    def view(self) -> dict[str, object]:
        return {"replay_messages": len(self.replay or ()), "replay_bytes": self.replay_bytes}

    def clear(self) -> None:
        self.replay = None
        self.replay_bytes = 0


def _session_frame(f: F.Frame) -> tuple[bytes, int]:
    data = bytes(f.payload)
    if len(data) < TOKEN_SIZE + 1:
        raise ProtocolError("truncated session frame")
    pos, _ = F.decode_varint(data, TOKEN_SIZE)
    return data[:TOKEN_SIZE], pos


def session_token(handshake: Payload, max_frame_size: int) -> bytes | None:
    """The session token a client's first message asks to resume, if any (a server
    looks its session up before a core is involved); None for anything else. Only the
    first two frames are decoded: the rest of the message (up to ``wire.MAX_FRAMES``
    frames, or a broken one) is the core's to check, a slice at a time."""
    try:
        frames, _ = F.decode_frames(handshake, 0, 2, max_frame_size)
    except Exception:
        return None
    if len(frames) < 2 or frames[1].type != F.RESUME or len(frames[1].payload) <= TOKEN_SIZE:
        return None
    return bytes(frames[1].payload[:TOKEN_SIZE])
