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
    "IMPLEMENTATION",
    "PROTOCOL_VERSION",
    "HELLO", "REQUEST", "RESPONSE", "ERROR", "NOTIFY", "CANCEL",
    "STREAM_DATA", "STREAM_END", "STREAM_ERROR", "STREAM_ABORT", "STREAM_CLOSE", "CREDIT", "STREAMS",
    "PING", "PONG", "GOAWAY", "RESUME", "RESUME_OK", "ACK", "EXTENSION_BASE",
    "FLAG_MORE", "FLAG_COMPRESSED", "FLAG_STREAM", "FLAG_CHANNEL", "FLAG_DEADLINE", "FLAG_OPEN", "FLAG_NEW",
    "VARINT_MAX", "DEFAULT_MAX_FRAME_SIZE", "VIEW_THRESHOLD",
    "varint_size", "encode_varint", "decode_varint",
    "encode_frame", "encode_batch", "decode_message",
    "Frame", "Decoder", "FrameWriter", "StreamLedger",
    "encode_settings", "decode_settings",
]
