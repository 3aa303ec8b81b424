"""Wire-format constants: frame types, flags and limits, defined here and only here.

The format is specified in ``docs/protocol.md``. Both frame codecs (the compiled
``_frames.pyx`` and the pure ``_frames_py.py``) import these names from this module,
and ``fastrpc.frames`` re-exports them.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1  # sent in HELLO; a peer of another version is answered with GOAWAY

# Frame types (docs/protocol.md, "Frame types").
HELLO = 0x01  # first frame of each side: protocol version and settings
REQUEST = 0x02  # opens a call
RESPONSE = 0x03  # a call's result
ERROR = 0x04  # a call's error
NOTIFY = 0x05  # a one-way message (no call id, no answer)
CANCEL = 0x06  # asks the callee to cancel a call
STREAM_DATA = 0x10  # a stream item, or a fragment of one
STREAM_END = 0x11  # the sender finished the stream
STREAM_ERROR = 0x12  # the stream ended with an error
STREAM_ABORT = 0x13  # the sender gave up on the stream
STREAM_CLOSE = 0x14  # the receiver stopped reading the stream
CREDIT = 0x15  # flow-control credit for a stream (or, on id 0, the connection)
STREAMS = 0x16  # grant of more stream slots (like QUIC's MAX_STREAMS)
PING = 0x20  # liveness check: answered with PONG
PONG = 0x21  # the answer to PING, with its payload
GOAWAY = 0x22  # the sender is closing the connection: error code and reason
RESUME = 0x30  # session resumption: the client's session token and received position
RESUME_OK = 0x31  # session resumption: the server's session token and received position
ACK = 0x32  # session resumption: frames received so far
EXTENSION_BASE = 0x40  # types at or above this value are extensions: skipped when unknown

# Flags.
FLAG_MORE = 0x01  # STREAM_DATA: the item continues in the next STREAM_DATA frame
FLAG_COMPRESSED = 0x02  # payload is compressed with the negotiated algorithm
FLAG_STREAM = 0x04  # REQUEST: the response is a stream with the call's id
FLAG_CHANNEL = 0x08  # REQUEST: the caller sends an input stream with the call's id
FLAG_DEADLINE = 0x10  # REQUEST: payload starts with a varint deadline in ms
FLAG_OPEN = 0x20  # STREAM_*: first frame of the stream (opens it)
FLAG_KWARGS = 0x01  # REQUEST, NOTIFY: the arguments end with a map of keyword arguments
FLAG_NEW = 0x01  # RESUME_OK: a new session (the one asked for is unknown)

# Limits.
VARINT_MAX = (1 << 62) - 1  # largest QUIC varint: ids, lengths and settings are <= this
DEFAULT_MAX_FRAME_SIZE = 1 << 20  # decode_message's default limit on a frame's payload
VIEW_THRESHOLD = 512  # decoded payloads this long or longer are zero-copy memoryviews

# A message carries at most this many frames: a receiver refuses more (LIMIT_EXCEEDED)
# before decoding them, so that decoding costs memory proportional to what it keeps.
MAX_FRAMES = 1 << 16
