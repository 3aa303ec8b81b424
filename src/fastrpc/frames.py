"""The frame codec: the compiled ``_frames`` module, or its pure-Python twin.

``FASTRPC_NO_EXTENSIONS=1`` forces the pure-Python implementation; ``IMPLEMENTATION``
says which one is live (``"cython"`` or ``"python"``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Both implementations have the same API; type-check against the pure one.
    from ._frames_py import *  # noqa: F403
    from ._frames_py import IMPLEMENTATION
elif os.environ.get("FASTRPC_NO_EXTENSIONS", "") not in ("", "0"):
    from ._frames_py import *  # noqa: F403
    from ._frames_py import IMPLEMENTATION
else:
    try:
        from ._frames import *  # noqa: F403
        from ._frames import IMPLEMENTATION
    except ImportError:
        from ._frames_py import *  # noqa: F403
        from ._frames_py import IMPLEMENTATION

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
    "FLAG_MORE",
    "FLAG_NEW",
    "FLAG_OPEN",
    "FLAG_STREAM",
    "GOAWAY",
    "HELLO",
    "IMPLEMENTATION",
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
    "Decoder",
    "Frame",
    "FrameWriter",
    "StreamLedger",
    "decode_message",
    "decode_settings",
    "decode_varint",
    "encode_batch",
    "encode_frame",
    "encode_settings",
    "encode_varint",
    "varint_size",
]
