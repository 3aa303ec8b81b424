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
        "awaiting_hello",
        "broken",
        "enabled",
        "handshake_sent",
        "max_replay_bytes",
        "new_session",
        "replay",
        "replay_bytes",
        "replay_from",
        "since_ack_bytes",
        "since_ack_frames",
        "token",
        "transports",
    )

    def __init__(self, max_replay_bytes: int = O.MAX_REPLAY_BYTES) -> None:
        self.enabled = False  # both sides asked for resumption in their HELLO
        self.broken = ""  # why this session can no longer be resumed
        self.token: bytes | None = None
        self.transports = 1  # transports this session has had
        self.max_replay_bytes = max_replay_bytes
        # (first position, end position, message); made when the first is recorded.
        self.replay: deque[tuple[int, int, bytes]] | None = None
        self.replay_bytes = 0
        self.replay_from: int | None = None  # the peer's received position, to replay from
        # Received since our last ACK.
        self.since_ack_frames = 0
        self.since_ack_bytes = 0
        self.new_session = False  # (server) the client asked for a session we do not know
        # The current transport's handshake: ours sent, the peer's not yet processed.
        self.handshake_sent = False
        self.awaiting_hello = True

    @property
    def resumable(self) -> bool:
        """Both sides agreed to resumption and nothing broke it."""
        return self.enabled and not self.broken

    def new_transport(self) -> None:
        """The session moves to a new transport: handshakes again, then replay."""
        self.transports += 1
        self.handshake_sent = False
        self.awaiting_hello = True
        self.replay_from = None

    # ------------------------------------------------------------- sending side

    def record(self, first: int, end: int, msg: bytes) -> None:
        """Keep sent message ``msg`` (frames ``first`` to ``end``) until acknowledged."""
        if self.replay is None:
            self.replay = deque()
        self.replay.append((first, end, msg))
        self.replay_bytes += len(msg)
        if self.replay_bytes > self.max_replay_bytes:
            self.broken = "replay buffer overflow: the peer acknowledged too little"
            self.replay.clear()
            self.replay_bytes = 0

    def ack(self, pos: int, sent: int) -> None:
        """The peer received every frame before position ``pos``: forget them."""
        if pos > sent:
            raise ProtocolError("acknowledged frames that were never sent")
        replay = self.replay
        while replay and replay[0][1] <= pos:
            self.replay_bytes -= len(replay.popleft()[2])

    def take_replay(self, sent: int) -> list[bytes]:
        """After a resumed handshake: the messages the peer missed, in order (they stay
        buffered until acknowledged, in case this transport drops too)."""
        pos = self.replay_from
        self.replay_from = None
        if pos is None:
            return []
        self.ack(pos, sent)
        out = []
        replay = self.replay or deque()
        for i, (first, end, msg) in enumerate(replay):
            if first < pos:
                # The peer has the start of this message: resend the rest of it.
                frames = F.decode_message(msg, F.VARINT_MAX)[pos - first :]
                rest = F.encode_batch([(f.type, f.flags, f.id, f.payload) for f in frames])
                self.replay_bytes -= len(msg) - len(rest)
                replay[i] = (pos, end, rest)
                msg = rest
            out.append(msg)
        return out

    # ----------------------------------------------------------- receiving side

    def received(self, frames: int, nbytes: int) -> bool:
        """``frames`` frames in ``nbytes`` arrived: True when an ACK is due."""
        self.since_ack_frames += frames
        self.since_ack_bytes += nbytes
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

    def accept(self, client: bool, nxt: F.Frame | None) -> int:
        """The peer's HELLO was processed; ``nxt`` is the frame after it. Settle the
        session's fate; return how many frames after HELLO the handshake used."""
        self.awaiting_hello = False
        if client:
            resume_ok = nxt if nxt is not None and nxt.type == F.RESUME_OK else None
            self.client_handshake(resume_ok)
            return 0 if resume_ok is None else 1
        resume = nxt if nxt is not None and nxt.type == F.RESUME else None
        self.server_handshake(resume)
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

    def server_handshake(self, resume: F.Frame | None) -> None:
        """(Server) the client's handshake asked to resume (``resume``: its RESUME) or
        not; choose the session's fate and a fresh token."""
        if not self.enabled:
            if resume is not None:
                raise ProtocolError("RESUME was not negotiated")
            return
        if resume is not None and self.transports > 1:
            token, pos = _session_frame(resume)
            if self.token is None or not hmac.compare_digest(token, self.token):
                raise ProtocolError("wrong session token")
            self.replay_from = pos
            self.new_session = False
        else:
            # A new session, or one we do not know (expired, or another server).
            self.new_session = True
        self.token = secrets.token_bytes(TOKEN_SIZE)  # a fresh token every time

    def client_handshake(self, resume_ok: F.Frame | None) -> None:
        """(Client) the server's handshake answered with ``resume_ok`` (or not);
        raises :class:`SessionLost` when our session was not resumed."""
        if resume_ok is not None:
            token, pos = _session_frame(resume_ok)
            if resume_ok.flags & F.FLAG_NEW and self.transports > 1:
                raise SessionLost("the server did not resume the session")
            self.token = token
            if not resume_ok.flags & F.FLAG_NEW:
                self.replay_from = pos
        elif self.transports > 1 and self.enabled:
            raise SessionLost("the server does not resume sessions")

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
    looks its session up before a core is involved); None for anything else."""
    try:
        frames = F.decode_message(handshake, max_frame_size)
    except Exception:
        return None
    if len(frames) < 2 or frames[1].type != F.RESUME:
        return None
    return bytes(frames[1].payload[:TOKEN_SIZE])
