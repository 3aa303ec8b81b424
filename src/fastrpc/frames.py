"""The frame codec: the compiled ``_frames`` module, or its pure-Python twin.

``FASTRPC_NO_EXTENSIONS=1`` forces the pure-Python implementation; ``IMPLEMENTATION``
says which one is live (``"cython"`` or ``"python"``). The wire constants (frame
types, flags, limits) come from :mod:`fastrpc.wire`, where they are defined.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .wire import (
    ACK,
    CANCEL,
    CREDIT,
    DEFAULT_MAX_FRAME_SIZE,
    ERROR,
    EXTENSION_BASE,
    FLAG_CHANNEL,
    FLAG_COMPRESSED,
    FLAG_DEADLINE,
    FLAG_KWARGS,
    FLAG_MORE,
    FLAG_NEW,
    FLAG_OPEN,
    FLAG_STREAM,
    GOAWAY,
    HELLO,
    MAX_FRAMES,
    NOTIFY,
    PING,
    PONG,
    PROTOCOL_VERSION,
    REQUEST,
    RESPONSE,
    RESUME,
    RESUME_OK,
    STREAM_ABORT,
    STREAM_CLOSE,
    STREAM_DATA,
    STREAM_END,
    STREAM_ERROR,
    STREAMS,
    VARINT_MAX,
    VIEW_THRESHOLD,
)

if TYPE_CHECKING:
    # Both implementations have the same API; type-check against the pure one.
    from . import _frames_py as _codec
elif os.environ.get("FASTRPC_NO_EXTENSIONS", "") not in ("", "0"):
    from . import _frames_py as _codec
else:
    try:
        from . import _frames as _codec
    except ImportError:
        from . import _frames_py as _codec

IMPLEMENTATION = _codec.IMPLEMENTATION
# The compiled call lane (_lane.pxi), which the transport's read callback answers a
# lone plain call with; None with the pure codec (the Python path is its twin).
# (the cdef class made an asyncio.BufferedProtocol: the transport's protocol once made)
CallLane: Any = getattr(_codec, "CallLaneProtocol", None)
LANE_MAX_READ: int = getattr(_codec, "LANE_MAX_READ", 0)  # the largest read it takes
Frame = _codec.Frame
FrameWriter = _codec.FrameWriter
StreamLedger = _codec.StreamLedger
Traffic = _codec.Traffic
count_frames = _codec.count_frames
decode_frames = _codec.decode_frames
decode_message = _codec.decode_message
decode_settings = _codec.decode_settings
decode_varint = _codec.decode_varint
encode_batch = _codec.encode_batch
encode_frame = _codec.encode_frame
encode_settings = _codec.encode_settings
encode_varint = _codec.encode_varint
lone_frame = _codec.lone_frame
mask_frame = _codec.mask_frame
payload_cost = _codec.payload_cost
take_items = _codec.take_items
take_run = _codec.take_run
unfilled = _codec.unfilled
unmask = _codec.unmask
varint_size = _codec.varint_size
walk_frames = _codec.walk_frames
WALK_STEP = _codec.WALK_STEP  # frame headers Connection.decode checks a loop pass

__all__ = [
    "ACK",
    "CANCEL",
    "CREDIT",
    "DEFAULT_MAX_FRAME_SIZE",
    "ERROR",
    "EXTENSION_BASE",
    "FLAG_CHANNEL",
    "FLAG_COMPRESSED",
    "FLAG_DEADLINE",
    "FLAG_KWARGS",
    "FLAG_MORE",
    "FLAG_NEW",
    "FLAG_OPEN",
    "FLAG_STREAM",
    "GOAWAY",
    "HELLO",
    "IMPLEMENTATION",
    "MAX_FRAMES",
    "NOTIFY",
    "PING",
    "PONG",
    "PROTOCOL_VERSION",
    "REQUEST",
    "RESPONSE",
    "RESUME",
    "RESUME_OK",
    "STREAMS",
    "STREAM_ABORT",
    "STREAM_CLOSE",
    "STREAM_DATA",
    "STREAM_END",
    "STREAM_ERROR",
    "VARINT_MAX",
    "VIEW_THRESHOLD",
    "Frame",
    "FrameWriter",
    "StreamLedger",
    "Traffic",
    "count_frames",
    "decode_frames",
    "decode_message",
    "decode_settings",
    "decode_varint",
    "encode_batch",
    "encode_frame",
    "encode_settings",
    "encode_varint",
    "lone_frame",
    "mask_frame",
    "payload_cost",
    "take_items",
    "take_run",
    "unfilled",
    "unmask",
    "varint_size",
    "walk_frames",
]
