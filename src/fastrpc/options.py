"""Every default of fastrpc, and the options shared by :func:`fastrpc.serve` and
:func:`fastrpc.connect`.

This module is the one home of defaults: the core (:mod:`fastrpc.settings`,
:mod:`fastrpc.flow`, :mod:`fastrpc.resume`), the stream layer and the server and client
take their defaults from the constants below. It imports nothing of fastrpc but the
compression module, so that any module may import it. ``docs/protocol.md`` ("Limits
and budgets") lists what breaking each limit does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from . import compression as _compression

__all__ = ["JsonLimits", "PeerOptions"]

# -- limits announced in HELLO (what one side is willing to receive) ------------------
MAX_FRAME_SIZE = 1 << 20
MAX_MESSAGE_SIZE = 4 << 20
MAX_STREAMS = 1024
MAX_PENDING_CALLS = 1024
MAX_ITEM_SIZE = 16 << 20
# Every byte a peer can make one connection hold (unread items, partial items, the
# arguments of running calls: budget.py); past it the connection is closed (1008).
MAX_CONNECTION_MEMORY = 32 << 20

# -- flow control ------------------------------------------------------------------------
INITIAL_STREAM_WINDOW = 256 << 10  # credit a new stream starts with (bytes)
CONNECTION_WINDOW = 16 << 20  # data in flight on all streams together (bytes)
MAX_WINDOW = 4 << 20  # a fast consumer's stream window grows up to this
MAX_GROWTH = 16 << 20  # growth of all the windows of one connection together
# A stream's window also grows while one item is more than 1/this of it, so that
# CREDIT messages stay few per item.
ITEMS_PER_WINDOW = 8

# -- sending -------------------------------------------------------------------------------
STREAM_BUFFER_SIZE = 64 << 10  # bytes one stream may queue before its sender waits
BATCH_SIZE = 128 << 10  # stream data per outgoing message
MAX_BUFFERED_AMOUNT = 1 << 20  # senders wait while more is queued on a connection
BACKPRESSURE_DELAY = 0.010  # seconds between re-checks of a waiting sender
COMPRESSION_THRESHOLD = 1024  # items at least this large are compressed
# A sender loop gathers the small bytes items its source yields (at most SEND_RUN_ITEM
# bytes each) in runs of up to SEND_RUN_BYTES, queued in one step (streams.py): a
# run leaves no later than one item would have, at the end of the loop pass.
SEND_RUN_ITEM = 2048
SEND_RUN_BYTES = 8 << 10

# -- receiving -----------------------------------------------------------------------------
# ``async for`` over a stream takes the items that have arrived in runs of up to this
# many, and this many payload bytes (the first item whatever its size): their memory
# leaves the connection's budget and their credit goes back when the run is taken, so a
# stream holds at most READ_RUN_BYTES more than its window (and one item past it).
READ_RUN_ITEMS = 128
READ_RUN_BYTES = 8 << 10
# While more than this waits to be sent to a peer (its answers, credit, PONGs: what
# its own messages make us send), its input is not read: a peer that does not read
# stops being served instead of growing our memory.
MAX_OUTPUT_BACKLOG = 4 << 20
# ... and a peer that meanwhile reads nothing at all for this long is closed (1008).
OUTPUT_STALL_TIMEOUT = 2.0

# A received message of more frames than this is decoded and processed in slices of
# this many (Connection.decode, decode_more), the event loop serving other
# connections in between: the pure codec decodes ~2,048 frames in 5 ms.
FRAMES_PER_SLICE = 2048
# Answers and calls queued in one read or one loop pass leave together, but once this
# many control bytes wait (~40 small calls) they leave at once: the peer works on them
# while this side makes the rest. Sent only at the end, a window of calls crosses as
# one batch and the two sides take turns instead of working at the same time.
EARLY_FLUSH = 1024

# PINGs a peer may send (fastrpc's and WebSocket's, each counted on its own): bursts of
# PING_BURST, then MAX_PING_RATE a second; past it the connection is closed (1008).
# Keepalive sends one every few seconds; None turns the limit off (a tight loop of
# RpcPeer.ping() measuring round trips, say).
MAX_PING_RATE: float | None = 1000.0
PING_BURST = 1024

# -- liveness --------------------------------------------------------------------------
# A silent partition is noticed within interval + timeout (20 s) for one tiny frame each
# way every 10 s; docs/protocol.md, "Noticing a silent partition".
KEEPALIVE_INTERVAL: float | None = 10.0
KEEPALIVE_TIMEOUT: float | None = 10.0
HANDSHAKE_TIMEOUT = 10.0
WS_PING_INTERVAL: float | None = 20.0
WRITE_LIMIT = 64 << 10  # the transport's high-water mark
WS_MAX_QUEUE = 4  # received messages the WebSocket library buffers before pausing reads

# -- the seed's JSON mode (docs/json-mode.md) --------------------------------------------
# A connection that has sent nothing this long (seconds) gets the seed's welcome: the
# seed's clients wait for it before they speak. With a handler target, the connection
# is then served in JSON mode (the handler speaks first, as to the seed's runner.ts);
# with a Router target its first message still decides the mode.
JSON_WAIT: float | None = 0.5

# -- reconnecting (RetryPolicy): the first retry is immediate, then these ------------
RETRY_INITIAL_DELAY = 1.0
RETRY_MAX_DELAY = 16.0
RETRY_MULTIPLIER = 2.0
RETRY_JITTER = 0.2  # each delay scaled by a random factor within 1 +- this
# Seconds a reconnected connection must stay up for the next drop to count as a first
# one again (an immediate retry, the attempts counted afresh): a server or a proxy
# that drops every connection right after its handshake meets the backoff, not a
# storm of immediate reconnects.
RETRY_STABLE = 1.0

# -- session resumption ----------------------------------------------------------------
SESSION_GRACE = 120.0  # seconds a server keeps a session whose client went away
MAX_REPLAY_BYTES = 16 << 20  # sent and not acknowledged; past it a session is not resumable
# What all the sessions a server keeps for clients that went away hold (their replay
# buffers, unread items, running calls' arguments, queued output), and how many
# there are; past either the oldest sessions are given up (their clients get
# ResumeFailed).
MAX_DETACHED_REPLAY = 32 << 20
MAX_DETACHED_SESSIONS = 1024
# Tokens of sessions dropped empty (nothing sent or received yet), kept for
# session_grace so that their clients resume at 0: at most this many (oldest dropped).
MAX_TOMBSTONES = 65536
# A receiver acknowledges (ACK) after this many frames or bytes, so that the sender's
# replay buffer holds little more than what is in flight.
ACK_FRAMES = 64
ACK_BYTES = 256 << 10
# On a link that keeps dropping before anything is acknowledged, messages (and new
# stream frames) shrink down to this many bytes, so that each connection that carries
# some bytes advances the session by about as many (see resume.ResumeState.chunk).
MIN_CHUNK = 4 << 10

# -- serving files (serve(..., static=DIR), static.py) -----------------------------------
# A file larger than this is refused (403): a response is held whole in memory.
MAX_STATIC_FILE_SIZE = 16 << 20
# -- topics (server.publish / peer.subscribe: topics.py, broker.py) --------------------
# A topic's history window: the newest this many items, none older than this many
# seconds; a subscriber resuming from further back gets HistoryLost.
TOPIC_HISTORY_SIZE = 1000
TOPIC_HISTORY_TTL = 300.0
# Items queued for one subscription on the server (its policy decides what happens
# past it: block the publisher, drop the oldest, keep the latest per key, or end it).
TOPIC_QUEUE_SIZE = 256
# Seconds a `block` subscription may hold its topic's local publishers with a full
# queue and nothing taken from it: then it ends as SlowSubscriber (`disconnect`), so
# one reader that stops (or a hostile one) cannot stall a feed for every subscriber.
TOPIC_BLOCK_TIMEOUT = 10.0
# Deliveries (items x subscriptions) a publisher makes in one loop pass before it lets
# the connections write them: larger passes cost fewer writes, smaller ones let the
# subscribers work while the server publishes the next items (bench/README.md, fan-out).
# The default of serve(topic_pass_deliveries=...).
TOPIC_PASS_DELIVERIES = 65536
MAX_TOPIC_NAME = 256  # bytes of UTF-8; a longer name is refused (ValueError)
# Redis broker: how long a publish or history read may take before it fails.
BROKER_TIMEOUT = 5.0
BROKER_CONNECTIONS = 16  # per process, for publishing and history reads
# Workers (workers.py): seconds a draining worker lets in-flight calls finish after
# SIGTERM, and the fastest a crashed worker is restarted again.
WORKER_GRACE = 10.0
WORKER_RESTART_DELAY = 0.5
WORKER_RESTART_MAX_DELAY = 30.0  # the doubling stops here
# Seconds between a worker's checks that its supervisor still lives (one whose
# supervisor died, SIGKILLed, drains instead of serving on as an orphan).
WORKER_PARENT_CHECK = 0.5
# Seconds a closing connection waits for the peer's close frame before it drops the
# TCP connection (the transports' ``close_timeout``); a draining worker's close takes
# up to this past its grace (a client that vanished without a FIN), and its
# supervisor waits for that.
CLOSE_TIMEOUT = 10.0


class JsonLimits(TypedDict):
    """:meth:`PeerOptions.json_limits`: keyword arguments of ``JsonPeer``."""

    max_message_size: int
    max_item_size: int
    max_pending_calls: int
    max_streams: int
    max_held_bytes: int
    max_pending_bytes: int
    max_ping_rate: float | None


@dataclass
class PeerOptions:
    """Connection options with safe defaults; every limit is per connection."""

    max_frame_size: int = MAX_FRAME_SIZE
    max_message_size: int = MAX_MESSAGE_SIZE
    max_streams: int = MAX_STREAMS
    max_pending_calls: int = MAX_PENDING_CALLS
    max_item_size: int = MAX_ITEM_SIZE
    max_connection_memory: int = MAX_CONNECTION_MEMORY
    connection_window: int = CONNECTION_WINDOW
    codec: str = "msgpack"
    # msgspec's hooks for custom types (codec.py): enc_hook(obj) -> a supported value;
    # dec_hook(type, obj) -> an instance of type (for annotated handler parameters).
    enc_hook: Any = None
    dec_hook: Any = None
    compression: bool | str = False  # True: zstd if installed else zlib; or "zlib"/"zstd"
    compression_threshold: int = COMPRESSION_THRESHOLD
    streams: Any = None  # a StreamManager used as a template (copied per connection)
    expose_tracebacks: bool = False
    keepalive_interval: float | None = KEEPALIVE_INTERVAL
    keepalive_timeout: float | None = KEEPALIVE_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    # WebSocket-level pings stay on: proxies close idle connections otherwise.
    ws_ping_interval: float | None = WS_PING_INTERVAL
    write_limit: int = WRITE_LIMIT
    # Session resumption (docs/protocol.md, "Resuming a session"): a server keeps a
    # lost session this long for its client to come back.
    resume: bool = False
    session_grace: float = SESSION_GRACE
    max_replay_bytes: int = MAX_REPLAY_BYTES
    max_detached_replay: int = MAX_DETACHED_REPLAY
    max_detached_sessions: int = MAX_DETACHED_SESSIONS
    max_output_backlog: int = MAX_OUTPUT_BACKLOG
    output_stall_timeout: float = OUTPUT_STALL_TIMEOUT
    max_ping_rate: float | None = MAX_PING_RATE
    # The seed's JSON mode (server): see JSON_WAIT; paths whose connections are JSON
    # from the start (welcomed at once, never binary).
    json_wait: float | None = JSON_WAIT
    json_paths: tuple[str, ...] = ()
    # Answer the reserved call ``fastrpc.methods`` with the method list (introspection.py).
    introspection: bool = True
    # Topics (a server's): the history window and each subscription's queue.
    topic_history_size: int = TOPIC_HISTORY_SIZE
    topic_history_ttl: float = TOPIC_HISTORY_TTL
    topic_queue_size: int = TOPIC_QUEUE_SIZE
    topic_block_timeout: float | None = TOPIC_BLOCK_TIMEOUT
    topic_pass_deliveries: int = TOPIC_PASS_DELIVERIES
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[PeerOptions, dict[str, Any]]:
        """Separate fastrpc's options from those meant for ``websockets``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        ours = {k: v for k, v in kwargs.items() if k in names}
        rest = {k: v for k, v in kwargs.items() if k not in names}
        options = cls(**ours)
        options.check_limits()
        return options, rest

    def hello_limits(self) -> dict[str, int]:
        """The limits these options announce in HELLO, as ``Settings`` fields."""
        return {
            "max_frame_size": self.max_frame_size,
            "max_message_size": self.max_message_size,
            "max_streams": self.max_streams,
            "max_pending_calls": self.max_pending_calls,
            "max_item_size": self.max_item_size,
            "connection_window": self.connection_window,
        }

    def check_limits(self) -> None:
        """Raise ValueError, naming the option, when a limit announced in HELLO is out
        of its range (docs/protocol.md, "HELLO and settings"): refused where it is
        given, not by every connection made with it."""
        from .settings import Settings  # (settings imports this module)

        Settings(**self.hello_limits())

    def compression_mask(self) -> int:
        """The compression algorithms to offer in HELLO (a bit mask)."""
        c = self.compression
        if c is False or c is None:
            return 0
        if c is True:
            return _compression.available()
        if c == "zlib":
            return _compression.ZLIB
        if c == "zstd":
            if not _compression.available() & _compression.ZSTD:
                raise ValueError("compression='zstd' needs the zstandard package (fastrpc[zstd])")
            return _compression.ZSTD
        raise ValueError(f"unknown compression {c!r}")

    def json_limits(self) -> JsonLimits:
        """The bounds of a JSON-mode (seed) connection, server or client side, from
        these options: the binary protocol's limits, the memory budget split between
        held stream items and pending requests."""
        half = self.max_connection_memory // 2
        return {  # a JsonLimits
            "max_message_size": self.max_message_size,
            "max_item_size": self.max_frame_size,
            "max_pending_calls": self.max_pending_calls,
            "max_streams": self.max_streams,
            "max_held_bytes": half,
            "max_pending_bytes": half,
            "max_ping_rate": self.max_ping_rate,
        }

    def websocket_kwargs(self) -> dict[str, Any]:
        """Options for the WebSocket library's server or client."""
        return {
            # fastrpc compresses per frame itself; permessage-deflate costs ~64 KiB
            # of zlib state per connection.
            "compression": None,
            # Exactly the max_message_size our HELLO announces, no room added: its
            # max_size counts a message's payload (not the WebSocket frame headers),
            # and a fastrpc sender keeps each message, its frames' own headers
            # included, within the peer's max_message_size (docs/protocol.md).
            "max_size": self.max_message_size,
            "ping_interval": self.ws_ping_interval,
            "ping_timeout": self.ws_ping_interval,
            "write_limit": self.write_limit,
            # Messages the library holds before it stops reading the socket: with
            # max_size, what one peer can park in it (4 x 4 MiB; its default 16 x).
            "max_queue": WS_MAX_QUEUE,
            "max_ping_rate": self.max_ping_rate,  # WebSocket PINGs (the data path's)
        }
