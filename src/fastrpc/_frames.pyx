# cython: language_level=3
"""Compiled frame codec: the twin of ``_frames_py.py``.

Same API, byte-for-byte the same output and the same errors (exception class,
``reason`` and ``code``) as the pure-Python module; ``fastrpc.frames`` picks this
one when it is built. The C declarations are in ``_frames.pxd``.

Where the two differ, by design:

* ``Frame`` attributes are read-only here (``__slots__`` attributes in the pure one).
* ``StreamLedger.ids()`` lists the ids in hash-table order, not in opening order.
* ``StreamLedger.initial_window`` checks what is assigned to it (ValueError/TypeError).
* ``encode_batch`` holds every payload's buffer until it returns (it writes them all
  at the end): a generator that resizes an earlier bytearray payload gets BufferError.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport (
    PyByteArray_AS_STRING,
    PyByteArray_Check,
    PyByteArray_FromStringAndSize,
    PyByteArray_GET_SIZE,
)
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_CheckExact, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_Check, PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Realloc
from cpython.memoryview cimport PyMemoryView_Check, PyMemoryView_GET_BUFFER
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from operator import index as _index
from typing import Union

from fastrpc.exceptions import ErrorCode, ProtocolError

# The wire constants are defined once, in wire.py; they are part of this module's API.
from fastrpc.wire import (
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

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

cdef extern from *:
    """
    #define FASTRPC_VARINT_MAX ((int64_t)0x3FFFFFFFFFFFFFFFLL)  /* must equal wire.VARINT_MAX */
    #define FASTRPC_DIVISOR_CAP ((int64_t)0x4000000000000000LL)
    #define FASTRPC_GENERIC_LIMIT ((int64_t)-2)
    #define FASTRPC_FIB_MULT 0x9E3779B97F4A7C15ULL
    """
    const int64_t _VMAX "FASTRPC_VARINT_MAX"
    const int64_t _DIVISOR_CAP "FASTRPC_DIVISOR_CAP"
    const int64_t _GENERIC "FASTRPC_GENERIC_LIMIT"
    const uint64_t _FIB "FASTRPC_FIB_MULT"

Buffer = Union[bytes, bytearray, memoryview]

IMPLEMENTATION = "cython"

cdef enum:
    _VIEW_THRESHOLD = 512    # must equal wire.VIEW_THRESHOLD (tests/test_frames.py checks)
    _MIN_BITS = 1            # StreamLedger: at least 2 slots (an idle connection has two ledgers)
    _KEEP_BUFFER = 1 << 20   # FrameWriter: free a buffer larger than this when empty
    _HOLD_THRESHOLD = 4096   # FrameWriter: hold (not copy) a bytes payload this large
    _KEEP_HELD = 64          # FrameWriter: free a held-payload array longer than this when empty

HOLD_THRESHOLD = _HOLD_THRESHOLD
# Frame headers walk_frames checks in one step of Connection.decode's check of a long
# message: here, the most a message may hold (~0.1 ms); the pure twin takes 8,192 a step.
WALK_STEP = MAX_FRAMES + 1

cdef object _FRAME_TOO_LARGE = ErrorCode.FRAME_TOO_LARGE
cdef object _FLOW_CONTROL_ERROR = ErrorCode.FLOW_CONTROL_ERROR
cdef object _LIMIT_EXCEEDED = ErrorCode.LIMIT_EXCEEDED


# ---------------------------------------------------------------------------------
# Helpers: integer arguments, varints, buffers.


cdef inline int _i64(object o, int64_t *out) except -1:
    """``o`` is an int: 0 (and ``*out = o``) when it fits int64, 1 above, 2 below."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(o, &overflow)
    if overflow > 0:
        return 1
    if overflow < 0:
        return 2
    out[0] = v
    return 0


cdef int _varint_arg(object value, uint64_t *out) except -1:
    """The pure ``varint_size`` check: range first, then an integer is required."""
    cdef int64_t v
    if PyLong_Check(value):
        if _i64(value, &v) or v < 0 or v > _VMAX:
            raise ValueError("varint out of range")
        out[0] = <uint64_t>v
        return 0
    if value < 0 or value > VARINT_MAX:
        raise ValueError("varint out of range")
    return _varint_arg(_index(value), out)


cdef int _header_args(object ftype, object flags, object fid,
                      uint8_t *t, uint8_t *f, uint64_t *i) except -1:
    """The pure ``_check_header``: the three range checks, then integers are required."""
    cdef int64_t v
    cdef bint slow = False
    if PyLong_Check(ftype):
        if _i64(ftype, &v) or v < 0 or v > 0xFF:
            raise ValueError("frame type out of range")
        t[0] = <uint8_t>v
    elif not 0 <= ftype <= 0xFF:
        raise ValueError("frame type out of range")
    else:
        slow = True
    if PyLong_Check(flags):
        if _i64(flags, &v) or v < 0 or v > 0xFF:
            raise ValueError("frame flags out of range")
        f[0] = <uint8_t>v
    elif not 0 <= flags <= 0xFF:
        raise ValueError("frame flags out of range")
    else:
        slow = True
    if PyLong_Check(fid):
        if _i64(fid, &v) or v < 0 or v > _VMAX:
            raise ValueError("frame id out of range")
        i[0] = <uint64_t>v
    elif not 0 <= fid <= VARINT_MAX:
        raise ValueError("frame id out of range")
    else:
        slow = True
    if slow:
        return _header_args(
            ftype if PyLong_Check(ftype) else _index(ftype),
            flags if PyLong_Check(flags) else _index(flags),
            fid if PyLong_Check(fid) else _index(fid),
            t, f, i,
        )
    return 0


cdef inline int64_t _limit_of(object max_frame_size) except? -3:
    """``max_frame_size`` as a C limit: -1 rejects every frame, _GENERIC means compare
    in Python (not an int: a float, None...), as the pure codec does."""
    cdef int64_t v
    cdef int r
    if not PyLong_Check(max_frame_size):
        return _GENERIC
    r = _i64(max_frame_size, &v)
    if r == 1 or (r == 0 and v >= _VMAX):
        return _VMAX  # no length is larger
    if r == 2 or v < 0:
        return -1
    return v


cdef inline Py_ssize_t _vsize(uint64_t v) noexcept nogil:
    if v < 0x40:
        return 1
    if v < 0x4000:
        return 2
    if v < 0x40000000:
        return 4
    return 8


cdef inline unsigned char *_put_varint(unsigned char *p, uint64_t v) noexcept nogil:
    if v < 0x40:
        p[0] = <unsigned char>v
        return p + 1
    if v < 0x4000:
        p[0] = <unsigned char>(0x40 | (v >> 8))
        p[1] = <unsigned char>v
        return p + 2
    if v < 0x40000000:
        p[0] = <unsigned char>(0x80 | (v >> 24))
        p[1] = <unsigned char>(v >> 16)
        p[2] = <unsigned char>(v >> 8)
        p[3] = <unsigned char>v
        return p + 4
    p[0] = <unsigned char>(0xC0 | (v >> 56))
    p[1] = <unsigned char>(v >> 48)
    p[2] = <unsigned char>(v >> 40)
    p[3] = <unsigned char>(v >> 32)
    p[4] = <unsigned char>(v >> 24)
    p[5] = <unsigned char>(v >> 16)
    p[6] = <unsigned char>(v >> 8)
    p[7] = <unsigned char>v
    return p + 8


cdef inline uint64_t _get_varint(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """The varint at ``p`` whose length ``n`` (1, 2, 4 or 8) the caller has checked."""
    cdef uint64_t v
    if n == 1:
        return p[0]
    if n == 2:
        return (<uint64_t>(p[0] & 0x3F) << 8) | p[1]
    if n == 4:
        return ((<uint64_t>(p[0] & 0x3F) << 24) | (<uint64_t>p[1] << 16)
                | (<uint64_t>p[2] << 8) | p[3])
    v = p[0] & 0x3F
    v = (v << 8) | p[1]
    v = (v << 8) | p[2]
    v = (v << 8) | p[3]
    v = (v << 8) | p[4]
    v = (v << 8) | p[5]
    v = (v << 8) | p[6]
    v = (v << 8) | p[7]
    return v


cdef inline unsigned char *_put_header(unsigned char *p, uint8_t t, uint8_t f,
                                       uint64_t fid, uint64_t length) noexcept nogil:
    p[0] = t
    p[1] = f
    return _put_varint(_put_varint(p + 2, fid), length)


cdef inline bint _flat_view(object o) except -1:
    """``o`` is a contiguous 1-D memoryview of bytes: its buffer is what ``cast("B")``
    gives. (``c_contiguous`` raises ValueError on a released view, as the cast would.)"""
    cdef Py_buffer *pb
    if not PyMemoryView_Check(o) or not o.c_contiguous:
        return False
    pb = PyMemoryView_GET_BUFFER(o)
    return pb.ndim == 1 and pb.itemsize == 1


cdef inline object _payload(object payload, const unsigned char **ptr, Py_ssize_t *n):
    """Point at the bytes of ``payload``; return the object that keeps them alive.

    Anything but ``bytes`` goes through ``memoryview(payload).cast("B")`` as in the pure
    codec (same TypeError for a non-buffer or a non-contiguous view); the view pins
    the buffer (a bytearray cannot be resized while it lives).
    """
    cdef Py_buffer *pb
    if PyBytes_CheckExact(payload):
        ptr[0] = <const unsigned char *>PyBytes_AS_STRING(payload)
        n[0] = PyBytes_GET_SIZE(payload)
        return payload
    if _flat_view(payload):
        view = payload  # cast("B") would give these very bytes
    else:
        view = memoryview(payload).cast("B")
    pb = PyMemoryView_GET_BUFFER(view)
    ptr[0] = <const unsigned char *>pb.buf
    n[0] = pb.len
    return view


cdef int _buf_reserve(_Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need, cap
    cdef unsigned char *p
    if extra <= b.cap - b.len:
        return 0
    if extra > PY_SSIZE_T_MAX - b.len:
        raise MemoryError()
    need = b.len + extra
    cap = b.cap * 2 if b.cap <= PY_SSIZE_T_MAX // 2 else PY_SSIZE_T_MAX
    if cap < need:
        cap = need
    if cap < 256:
        cap = 256
    p = <unsigned char *>PyMem_Realloc(b.data, <size_t>cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline void _buf_free(_Buf *b) noexcept:
    PyMem_Free(b.data)
    b.data = NULL
    b.len = 0
    b.cap = 0


# ---------------------------------------------------------------------------------
# Buffers.


def unfilled(Py_ssize_t n):
    """A ``bytearray`` of ``n`` bytes to be read into: not zeroed first (64 KiB of
    zeroes cost about what copying them does), so its bytes are garbage until
    written. The pure twin's is zeroed."""
    if n < 0:
        raise ValueError("negative size")
    return PyByteArray_FromStringAndSize(NULL, n)


# ---------------------------------------------------------------------------------
# A client's WebSocket frames (RFC 6455 5.2, 5.3).


cdef extern from *:
    """
    /* dst[i] = src[i] ^ mask[(off + i) % 4] (dst may be src: unmasking in place).
       Sixteen bytes a step where the compiler has vector types (gcc, clang: SSE2 on
       x86-64, NEON on arm64), four of them a loop pass; eight bytes a step elsewhere.
       Loads and stores go through memcpy: unaligned, and no aliasing assumed. */
    static inline void fastrpc_xor_into(unsigned char *dst, const unsigned char *src,
                                        Py_ssize_t n, const unsigned char *mask,
                                        Py_ssize_t off) {
        unsigned char r[16];
        Py_ssize_t i = 0;
        int j;
        for (j = 0; j < 16; j++) r[j] = mask[(off + j) & 3];
    #if defined(__GNUC__) || defined(__clang__)
        typedef unsigned long long fastrpc_v2 __attribute__((vector_size(16)));
        fastrpc_v2 m, a, b, c, d;
        memcpy(&m, r, 16);
        for (; i + 64 <= n; i += 64) {
            memcpy(&a, src + i, 16); memcpy(&b, src + i + 16, 16);
            memcpy(&c, src + i + 32, 16); memcpy(&d, src + i + 48, 16);
            a ^= m; b ^= m; c ^= m; d ^= m;
            memcpy(dst + i, &a, 16); memcpy(dst + i + 16, &b, 16);
            memcpy(dst + i + 32, &c, 16); memcpy(dst + i + 48, &d, 16);
        }
        for (; i + 16 <= n; i += 16) {
            memcpy(&a, src + i, 16);
            a ^= m;
            memcpy(dst + i, &a, 16);
        }
    #else
        uint64_t m8, x;
        memcpy(&m8, r, 8);
        for (; i + 8 <= n; i += 8) {
            memcpy(&x, src + i, 8);
            x ^= m8;
            memcpy(dst + i, &x, 8);
        }
    #endif
        for (; i < n; i++) dst[i] = src[i] ^ r[i & 15];
    }
    """
    void _xor_into "fastrpc_xor_into" (unsigned char *dst, const unsigned char *src, Py_ssize_t n,
                                       const unsigned char *mask, Py_ssize_t off) noexcept nogil


cdef int _mask_of(mask, unsigned char *m4) except -1:
    """Copy the 4-byte ``mask`` (any bytes-like object) into ``m4``."""
    cdef Py_buffer mb
    PyObject_GetBuffer(mask, &mb, PyBUF_SIMPLE)
    try:
        if mb.len != 4:
            raise ValueError(f"a mask is 4 bytes, not {mb.len}")
        memcpy(m4, mb.buf, 4)
    finally:
        PyBuffer_Release(&mb)
    return 0


def mask_frame(data, mask):
    """A client's final binary WebSocket frame, whole: its header, the 4-byte
    ``mask`` and ``data`` masked with it, in one ``bytes`` (one copy of the payload,
    one write). ``data``: a bytes-like object, or a list of them sent as one
    message (their bytes in order, not joined first)."""
    cdef Py_buffer pb
    cdef Py_ssize_t total = 0, head, off, k, count
    cdef list parts
    cdef unsigned char m4[4]
    cdef unsigned char *out
    _mask_of(mask, m4)
    if PyBytes_CheckExact(data) and PyBytes_GET_SIZE(data) < 126:  # a call, an answer
        total = PyBytes_GET_SIZE(data)
        frame = PyBytes_FromStringAndSize(NULL, 6 + total)
        out = <unsigned char *>PyBytes_AS_STRING(frame)
        out[0] = 0x82
        out[1] = 0x80 | <unsigned char>total
        memcpy(out + 2, m4, 4)
        _xor_into(out + 6, <const unsigned char *>PyBytes_AS_STRING(data), total, m4, 0)
        return frame
    parts = data if PyList_CheckExact(data) else [data]
    count = PyList_GET_SIZE(parts)
    for k in range(count):
        PyObject_GetBuffer(<object>PyList_GET_ITEM(parts, k), &pb, PyBUF_SIMPLE)
        total += pb.len
        PyBuffer_Release(&pb)
    head = 6 if total < 126 else 8 if total < 65536 else 14
    frame = PyBytes_FromStringAndSize(NULL, head + total)
    out = <unsigned char *>PyBytes_AS_STRING(frame)
    out[0] = 0x82
    if total < 126:
        out[1] = 0x80 | <unsigned char>total
    elif total < 65536:
        out[1] = 0xFE
        out[2] = <unsigned char>(total >> 8)
        out[3] = <unsigned char>total
    else:
        out[1] = 0xFF
        for k in range(8):
            out[2 + k] = <unsigned char>((<uint64_t>total) >> (56 - 8 * k))
    memcpy(out + head - 4, m4, 4)
    off = 0
    for k in range(count):
        PyObject_GetBuffer(<object>PyList_GET_ITEM(parts, k), &pb, PyBUF_SIMPLE)
        try:
            if pb.len > total - off:  # a part that grew meanwhile (its buffer hook ran code)
                raise ValueError("a part changed size while it was being masked")
            _xor_into(out + head + off, <const unsigned char *>pb.buf, pb.len, m4, off)
            off += pb.len
        finally:
            PyBuffer_Release(&pb)
    if off != total:
        raise ValueError("a part changed size while it was being masked")
    return frame


def unmask(data, mask):
    """XOR the writable buffer ``data`` in place with the 4-byte ``mask`` repeated
    from its first byte (RFC 6455 5.3: a client's frame payload unmasked where it was
    read, not copied)."""
    cdef Py_buffer db
    cdef unsigned char m4[4]
    _mask_of(mask, m4)
    PyObject_GetBuffer(data, &db, PyBUF_WRITABLE)
    try:
        _xor_into(<unsigned char *>db.buf, <const unsigned char *>db.buf, db.len, m4, 0)
    finally:
        PyBuffer_Release(&db)


def lone_frame(data, Py_ssize_t n, bint masked, Py_ssize_t max_size):
    """The payload of ``data[:n]`` when those bytes are one whole final binary
    WebSocket frame of under 126 bytes (a call's or an answer's read), masked (RFC
    6455 5.3: unmasked here) when ``masked``, not masked otherwise, and at most
    ``max_size`` bytes; else None (and nothing read). One step for what slicing the
    read buffer and unmasking the slice cost ~3,000 instructions a read."""
    cdef Py_buffer b
    cdef const unsigned char *p
    cdef Py_ssize_t length
    cdef unsigned char b1
    PyObject_GetBuffer(data, &b, PyBUF_SIMPLE)
    try:
        if n < 2 or n > b.len:
            return None
        p = <const unsigned char *>b.buf
        b1 = p[1]
        length = b1 & 0x7F
        if p[0] != 0x82 or length >= 126 or length > max_size:
            return None
        if not masked:
            if b1 != length or n != 2 + length:
                return None
            return PyBytes_FromStringAndSize(<const char *>p + 2, length)
        if b1 != (0x80 | length) or n != 6 + length:
            return None
        out = PyBytes_FromStringAndSize(NULL, length)
        _xor_into(<unsigned char *>PyBytes_AS_STRING(out), p + 6, length, p + 2, 0)
        return out
    finally:
        PyBuffer_Release(&b)


# ---------------------------------------------------------------------------------
# Varints.


def varint_size(value):
    """Bytes taken by ``value`` as a QUIC variable-length integer."""
    cdef uint64_t v
    _varint_arg(value, &v)
    return _vsize(v)


def encode_varint(value):
    """Encode ``value`` (0 <= value < 2**62) in its shortest QUIC varint form."""
    cdef uint64_t v
    _varint_arg(value, &v)
    out = PyBytes_FromStringAndSize(NULL, _vsize(v))
    _put_varint(<unsigned char *>PyBytes_AS_STRING(out), v)
    return out


def decode_varint(data, pos=0):
    """Decode one varint at ``pos``; return ``(value, next_pos)``."""
    cdef const unsigned char *d
    cdef Py_ssize_t n, k
    cdef int64_t p
    cdef Py_buffer *pb
    if PyBytes_Check(data) or PyByteArray_Check(data) or _flat_view(data):
        src = data
    else:
        # Index bytes, not items (array("H"), a memoryview of format "i", a 2-D view).
        src = memoryview(data).cast("B")
    if not PyLong_Check(pos):
        if pos < 0 or pos >= len(src):
            raise ProtocolError("truncated varint")
        return decode_varint(src, _index(pos))
    # No Python code runs from here on: the pointer stays valid.
    if PyBytes_Check(src):
        d = <const unsigned char *>PyBytes_AS_STRING(src)
        n = PyBytes_GET_SIZE(src)
    elif PyByteArray_Check(src):
        d = <const unsigned char *>PyByteArray_AS_STRING(src)
        n = PyByteArray_GET_SIZE(src)
    else:
        pb = PyMemoryView_GET_BUFFER(src)
        d = <const unsigned char *>pb.buf
        n = pb.len
    if _i64(pos, &p) or p < 0 or p >= n:
        raise ProtocolError("truncated varint")
    k = <Py_ssize_t>1 << (d[p] >> 6)
    if k > n - <Py_ssize_t>p:
        raise ProtocolError("truncated varint")
    return PyLong_FromUnsignedLongLong(_get_varint(d + p, k)), p + k


# ---------------------------------------------------------------------------------
# Encoding.


def encode_frame(ftype, flags, fid, payload=b""):
    """Encode one frame."""
    cdef const unsigned char *src
    cdef Py_ssize_t n
    cdef uint8_t t = 0, f = 0
    cdef uint64_t i = 0
    cdef unsigned char *p
    keep = _payload(payload, &src, &n)
    _header_args(ftype, flags, fid, &t, &f, &i)
    if <uint64_t>n > <uint64_t>_VMAX:
        raise ValueError("varint out of range")
    out = PyBytes_FromStringAndSize(NULL, 2 + _vsize(i) + _vsize(<uint64_t>n) + n)
    p = _put_header(<unsigned char *>PyBytes_AS_STRING(out), t, f, i, <uint64_t>n)
    if n:
        memcpy(p, src, <size_t>n)
    del keep
    return out


def encode_batch(frames):
    """Encode ``(type, flags, id, payload)`` tuples back to back into one message.

    Two passes: the first checks every frame (in the pure codec's order, so the same
    error comes first) and sums the sizes, the second writes into one bytes object.
    """
    cdef _Item *items = NULL
    cdef _Item *it
    cdef _Item *grown
    cdef Py_ssize_t count = 0, cap = 0, total = 0, size, j
    cdef list keep = []
    cdef unsigned char *p
    try:
        for ftype, flags, fid, payload in frames:
            if count == cap:
                cap = cap * 2 if cap else 64
                grown = <_Item *>PyMem_Realloc(items, <size_t>cap * sizeof(_Item))
                if grown == NULL:
                    raise MemoryError()
                items = grown
            it = &items[count]
            keep.append(_payload(payload, &it.ptr, &it.len))
            _header_args(ftype, flags, fid, &it.type, &it.flags, &it.id)
            if <uint64_t>it.len > <uint64_t>_VMAX:
                raise ValueError("varint out of range")
            size = 2 + _vsize(it.id) + _vsize(<uint64_t>it.len)
            if it.len > PY_SSIZE_T_MAX - size - total:
                raise MemoryError()
            total += size + it.len
            count += 1
        out = PyBytes_FromStringAndSize(NULL, total)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        for j in range(count):
            it = &items[j]
            p = _put_header(p, it.type, it.flags, it.id, <uint64_t>it.len)
            if it.len:
                memcpy(p, it.ptr, <size_t>it.len)
                p += it.len
        return out
    finally:
        PyMem_Free(items)


# ---------------------------------------------------------------------------------
# Frames and decoding.


@cython.freelist(256)
cdef class Frame:
    """One decoded frame: ``type``, ``flags``, ``id`` and ``payload``.

    ``payload`` is ``bytes``, or a read-only ``memoryview`` into the message when it is
    at least ``VIEW_THRESHOLD`` bytes long. The attributes are read-only.
    """

    def __init__(self, ftype, flags, fid, payload=b""):
        self.type = ftype
        self.flags = flags
        self.id = fid
        self.payload = payload

    def __eq__(self, other):
        if not isinstance(other, Frame):
            return NotImplemented
        cdef Frame o = <Frame>other
        return (
            self.type == o.type
            and self.flags == o.flags
            and self.id == o.id
            and bytes(self.payload) == bytes(o.payload)
        )

    def __repr__(self):
        return (
            f"Frame(type=0x{self.type:02x}, flags=0x{self.flags:02x}, id={self.id}, "
            f"payload={bytes(self.payload)[:32]!r}{'...' if len(self.payload) > 32 else ''})"
        )

    def __reduce__(self):
        return (type(self), (self.type, self.flags, self.id, self.payload))


cdef inline Py_ssize_t _header(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos, int64_t limit,
                               object max_frame_size, uint64_t *fid, uint64_t *length) except -2:
    """Read the header of the frame at ``pos``: return where its payload starts, with
    its id and length, or -1 when the frame runs past ``n``. Every length is compared
    with the bytes left before it is used, as unsigned 64-bit integers: lengths up to
    2**62 cannot overflow the pointer arithmetic."""
    cdef Py_ssize_t q, k
    if n - pos < 3:
        return -1
    q = pos + 2
    k = <Py_ssize_t>1 << (d[q] >> 6)
    if k > n - q:
        return -1
    fid[0] = _get_varint(d + q, k)
    q += k
    if q >= n:
        return -1
    k = <Py_ssize_t>1 << (d[q] >> 6)
    if k > n - q:
        return -1
    length[0] = _get_varint(d + q, k)
    q += k
    if limit == _GENERIC:
        if PyLong_FromUnsignedLongLong(length[0]) > max_frame_size:
            raise ProtocolError("frame too large", _FRAME_TOO_LARGE)
    elif <int64_t>length[0] > limit:
        raise ProtocolError("frame too large", _FRAME_TOO_LARGE)
    if length[0] > <uint64_t>(n - q):
        return -1
    return q


cdef Py_ssize_t _parse(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos, object owner, object view,
                       int64_t limit, object max_frame_size, list out, Py_ssize_t max_frames,
                       Py_ssize_t count) except -1:
    """Decode the frames in ``d[pos:n]`` (the rest of a whole message), at most
    ``count`` of them (-1: all), and append them to ``out``; return the position after
    the last one.

    Large payloads are slices of ``view``, made from ``owner`` (bytes) on first use
    (``view`` False: every payload is copied into bytes of its own). An
    incomplete frame is a "truncated frame".
    """
    cdef Py_ssize_t q
    cdef uint64_t fid, length
    cdef Frame fr
    while pos < n:
        if max_frames >= 0 and PyList_GET_SIZE(out) >= max_frames:
            raise ProtocolError("too many frames in one message", _LIMIT_EXCEEDED)
        if count >= 0 and PyList_GET_SIZE(out) >= count:
            return pos
        q = _header(d, n, pos, limit, max_frame_size, &fid, &length)
        if q < 0:
            break
        fr = Frame.__new__(Frame)
        fr.type = d[pos]
        fr.flags = d[pos + 1]
        fr.id = PyLong_FromUnsignedLongLong(fid)
        if length >= _VIEW_THRESHOLD and view is not False:
            if view is None:
                view = memoryview(owner)
            fr.payload = view[q:q + <Py_ssize_t>length]
        else:
            fr.payload = PyBytes_FromStringAndSize(<const char *>d + q, <Py_ssize_t>length)
        out.append(fr)
        pos = q + <Py_ssize_t>length
    if pos < n:
        raise ProtocolError("truncated frame")
    return pos


cdef Py_ssize_t _walk(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t count, int64_t limit,
                      object max_frame_size, Py_ssize_t *walked) except -1:
    """Walk at most ``count`` frame headers in ``d[pos:n]`` (no bound when negative),
    building no frame: the position after the last, their number in ``walked``.
    Raises what :func:`_parse` would raise for the frames it reaches, in the same order."""
    cdef Py_ssize_t q, k = 0
    cdef uint64_t fid, length
    while pos < n and k != count:
        q = _header(d, n, pos, limit, max_frame_size, &fid, &length)
        if q < 0:
            raise ProtocolError("truncated frame")
        k += 1
        pos = q + <Py_ssize_t>length
    walked[0] = k
    return pos


cdef Py_ssize_t _max_frames(max_frames) except -2:
    if max_frames is None:
        return -1
    if max_frames < 0:
        raise ValueError("max_frames must be >= 0")
    return max_frames


def decode_message(data, max_frame_size=DEFAULT_MAX_FRAME_SIZE, max_frames=None, copy=False):
    """Decode a whole WebSocket message into its frames.

    Payloads of ``VIEW_THRESHOLD`` bytes or more are views of ``data``, unless
    ``copy``: then every payload is bytes of its own (``data`` may be reused as soon
    as this returns: a read buffer).

    Raises :class:`ProtocolError` for an empty message, a frame that runs past the
    end of the message, a frame larger than ``max_frame_size``, or (``LIMIT_EXCEEDED``,
    before any more is decoded) more than ``max_frames`` frames.
    """
    cdef list out = []
    cdef Py_buffer *pb
    cdef int64_t limit = _limit_of(max_frame_size)
    cdef Py_ssize_t cap = _max_frames(max_frames)
    if PyBytes_CheckExact(data):
        # bytes: no view unless a payload needs one (then memoryview(data), read-only).
        if PyBytes_GET_SIZE(data) == 0:
            raise ProtocolError("empty message")
        _parse(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), 0,
               data, False if copy else None, limit, max_frame_size, out, cap, -1)
        return out
    view = memoryview(data).cast("B").toreadonly()
    pb = PyMemoryView_GET_BUFFER(view)
    if pb.len == 0:
        raise ProtocolError("empty message")
    _parse(<const unsigned char *>pb.buf, pb.len, 0, None, False if copy else view, limit,
           max_frame_size, out, cap, -1)
    return out


def decode_frames(data, Py_ssize_t start, Py_ssize_t count, max_frame_size=DEFAULT_MAX_FRAME_SIZE, copy=False):
    """Decode at most ``count`` frames of the message ``data``, from ``start`` (a frame
    boundary); return ``(frames, end)``, ``end`` the position after the last of them
    (``len(data)``: the message is done). A message of many frames decoded in parts,
    one part a loop pass; payloads as :func:`decode_message` makes them. Raises what
    :func:`decode_message` would raise for the frames it reaches (not ``max_frames``:
    the caller checks the whole message first, :func:`walk_frames`)."""
    cdef list out = []
    cdef int64_t limit = _limit_of(max_frame_size)
    view = memoryview(data).cast("B").toreadonly()
    cdef Py_buffer *pb = PyMemoryView_GET_BUFFER(view)
    if start < 0 or start > pb.len:
        raise IndexError("start out of range")
    if count < 0:
        raise ValueError("count must be >= 0")
    end = _parse(<const unsigned char *>pb.buf, pb.len, start, None, False if copy else view, limit,
                 max_frame_size, out, -1, count)
    return out, end


def walk_frames(data, Py_ssize_t start, Py_ssize_t count, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
    """Walk at most ``count`` frame headers of the message ``data`` from ``start`` (a
    frame boundary), building no frame: ``(end, walked)``, ``end`` the position after
    the last frame walked (``len(data)``: the message is done). A long message checked
    a step at a time (``Connection.decode``); raises what :func:`decode_message` would
    raise for the frames it reaches (not ``max_frames``: the caller counts)."""
    cdef int64_t limit = _limit_of(max_frame_size)
    cdef Py_ssize_t n, pos, walked = 0
    view = memoryview(data).cast("B").toreadonly()
    cdef Py_buffer *pb = PyMemoryView_GET_BUFFER(view)
    cdef const unsigned char *d = <const unsigned char *>pb.buf
    n = pb.len
    if start < 0 or start > n:
        raise IndexError("start out of range")
    if count < 0:
        raise ValueError("count must be >= 0")
    pos = _walk(d, n, start, count, limit, max_frame_size, &walked)
    return pos, walked


def count_frames(data, Py_ssize_t start=0, max_frame_size=DEFAULT_MAX_FRAME_SIZE, max_frames=None):
    """The number of frames ``decode_message(data[start:], max_frame_size, max_frames)``
    would return, or what it would raise: the frame headers are walked, no frame is
    built."""
    cdef int64_t limit = _limit_of(max_frame_size)
    cdef Py_ssize_t cap = _max_frames(max_frames), walked = 0
    view = memoryview(data).cast("B").toreadonly()
    cdef Py_buffer *pb = PyMemoryView_GET_BUFFER(view)
    if start < 0 or start > pb.len:
        raise IndexError("start out of range")
    if start == pb.len:
        raise ProtocolError("empty message")
    if _walk(<const unsigned char *>pb.buf, pb.len, start, cap, limit, max_frame_size, &walked) < pb.len:
        raise ProtocolError("too many frames in one message", _LIMIT_EXCEEDED)  # frames left past max_frames
    return walked


def take_items(list frames, Py_ssize_t start, list items, Py_ssize_t extra, kind_mask, bare=-1):
    """Append ``(payload, flags & kind_mask, len(payload) + extra)`` to ``items`` for
    ``frames[start]`` and each frame after it of the same type, flags and id: the run
    of one stream's items in a message, taken in one call. When ``flags & kind_mask``
    is ``bare`` the payloads are appended alone (their kind and charge are implied:
    ``take_run`` with the same ``extra`` and ``bare``), which saves a tuple an item.
    Return ``(end, charge, size)``: ``frames[start:end]`` were taken, ``charge`` the
    sum of their charges, ``size`` of their payload lengths."""
    cdef Py_ssize_t n = PyList_GET_SIZE(frames), end = start, k, size = 0
    if start < 0 or start >= n:
        raise IndexError("start out of range")
    cdef Frame first = <Frame?>frames[start]
    cdef Frame f
    # type and flags are small ints (one byte each): cached objects, compared by identity.
    ftype, flags, fid = first.type, first.flags, first.id
    kind = flags & kind_mask
    cdef bint alone = kind == bare
    while end < n:
        f = <Frame?>frames[end]
        if f.type is not ftype or f.flags is not flags or (f.id is not fid and f.id != fid):
            break
        payload = f.payload
        k = len(payload)
        size += k
        if alone:
            items.append(payload)
        else:
            items.append((payload, kind, k + extra))
        end += 1
    return end, size + (end - start) * extra, size


def take_run(items, Py_ssize_t limit, long refuse, Py_ssize_t extra=0, long bare=-1, Py_ssize_t max_size=-1):
    """Take from the front of the queue ``items`` (a list or a deque of ``(payload,
    kind, charge)`` entries, as ``take_items`` makes them) the first entry and the
    entries after it of the same kind, at most ``limit``, and (``max_size`` >= 0)
    while their payloads come to at most ``max_size`` bytes (the first entry is taken
    whatever its size); none when the first one's kind has a bit of ``refuse``. An
    entry that is not a tuple is a payload alone, of kind ``bare`` and charge
    ``len(payload) + extra`` (``bare`` < 0: there is none). Return ``(payloads, kind,
    size, charge, largest)``: the payloads in order, their kind, the sum of their
    lengths and of their charges, and the largest charge."""
    cdef Py_ssize_t n = 0, total, size = 0, charge = 0, top = 0, c, k_len
    cdef long kind = 0, k
    cdef list out = []
    cdef tuple entry
    if limit < 1 or not items:
        return out, 0, 0, 0, 0
    total = len(items)
    for e in items:
        if PyTuple_CheckExact(e):
            entry = <tuple>e
            if PyTuple_GET_SIZE(entry) != 3:
                raise ValueError("a queue entry is (payload, kind, charge)")
            k = entry[1]
            payload = entry[0]
            c = entry[2]
            k_len = len(payload)
        elif bare < 0:
            raise TypeError("a queue entry is a tuple (no bare kind given)")
        else:
            k = bare
            payload = e
            k_len = len(payload)
            c = k_len + extra
        if n == 0:
            if k & refuse:
                break
            kind = k
        elif k != kind or (max_size >= 0 and k_len > max_size - size):
            break
        out.append(payload)
        size += k_len
        charge += c
        if c > top:
            top = c
        n += 1
        if n == limit:
            break
    if n == 0:
        return out, 0, 0, 0, 0
    if n == total:
        items.clear()
    elif PyList_CheckExact(items):
        del items[:n]
    elif total - n < n:
        rest = list(items)[n:]  # a deque, mostly taken: rebuilt from what is left
        items.clear()
        items.extend(rest)
    else:
        popleft = items.popleft
        for _ in range(n):
            popleft()
    return out, kind, size, charge, top


cdef class FrameWriter:
    """Accumulates frames for one outgoing message; ``take()`` returns its bytes.

    A ``bytes`` payload of at least ``HOLD_THRESHOLD`` bytes is held by reference (it
    cannot change) and copied once, by ``take()``, straight into the message (or
    handed out as it is, by ``take_parts()``); any
    other payload is copied at once, as the caller may change it afterwards.
    """

    def __init__(self):
        self._buf.len = 0
        self._count = 0
        self._release_held()

    def __dealloc__(self):
        _buf_free(&self._buf)
        self._release_held()
        PyMem_Free(self._held)

    def add(self, ftype, flags, fid, payload=b""):
        """Append one frame; return its size in bytes (header and payload)."""
        cdef uint8_t t = 0, f = 0
        cdef uint64_t i = 0
        cdef const unsigned char *src
        cdef Py_ssize_t n
        keep = _payload(payload, &src, &n)
        _header_args(ftype, flags, fid, &t, &f, &i)
        return self._add(t, f, i, payload, src, n)

    def add_run(self, ftype, flags, fid, payloads, credit, Py_ssize_t max_len, Py_ssize_t charge,
                Py_ssize_t stop_len):
        """Append a frame ``(ftype, flags, fid, p)`` for each ``p`` of the list
        ``payloads`` in order, while ``p`` has at most ``max_len`` bytes and its charge
        (``len(p) + charge``) fits in what is left of ``credit``, until the message has
        ``stop_len`` bytes or more (after one frame at least). Return ``(count,
        charged)``: the frames added and the total of their charges."""
        cdef uint8_t t = 0, f = 0
        cdef uint64_t i = 0
        cdef const unsigned char *src
        cdef Py_ssize_t n, k, count = 0
        cdef int64_t left, spent = 0
        if not PyList_CheckExact(payloads):
            raise TypeError("payloads must be a list")
        if charge < 0 or charge > 0xFFFF:
            raise ValueError("charge out of range")
        _header_args(ftype, flags, fid, &t, &f, &i)
        cdef int r = _i64(_index(credit), &left)
        if r == 1:
            left = INT64_MAX
        elif r == 2:
            left = INT64_MIN
        k = 0
        while k < PyList_GET_SIZE(payloads):  # (re-read: a payload's buffer may run code)
            if self._buf.len + self._held_len >= stop_len and count:
                break
            payload = <object>PyList_GET_ITEM(payloads, k)
            k += 1
            keep = _payload(payload, &src, &n)
            if n > max_len or n + charge > left - spent:  # (spent <= left once a frame went)
                break
            self._add(t, f, i, payload, src, n)
            spent += n + charge
            count += 1
        return count, spent

    cdef Py_ssize_t _add(self, uint8_t t, uint8_t f, uint64_t i, object payload,
                         const unsigned char *src, Py_ssize_t n) except -1:
        """Append one frame whose header arguments are checked (``src``/``n``: the
        payload's bytes, kept alive by the caller)."""
        cdef unsigned char *p
        cdef _Held *h
        if <uint64_t>n > <uint64_t>_VMAX:
            raise ValueError("varint out of range")
        if n > PY_SSIZE_T_MAX - 18:
            raise MemoryError()
        if n >= _HOLD_THRESHOLD and PyBytes_CheckExact(payload):
            if n > PY_SSIZE_T_MAX - 18 - self._buf.len - self._held_len:
                raise MemoryError()
            if self._nheld == self._held_cap:
                self._grow_held()
            _buf_reserve(&self._buf, 18)
            p = _put_header(self._buf.data + self._buf.len, t, f, i, <uint64_t>n)
            h = &self._held[self._nheld]
            h.at = p - self._buf.data
            h.payload = <PyObject *>payload
            Py_INCREF(payload)
            self._nheld += 1
            self._held_len += n
        else:
            _buf_reserve(&self._buf, 2 + _vsize(i) + _vsize(<uint64_t>n) + n)
            p = _put_header(self._buf.data + self._buf.len, t, f, i, <uint64_t>n)
            if n:
                memcpy(p, src, <size_t>n)
                p += n
        cdef Py_ssize_t size = (p - self._buf.data) - self._buf.len
        if n >= _HOLD_THRESHOLD and PyBytes_CheckExact(payload):
            size += n  # held, not in the buffer
        self._buf.len = p - self._buf.data
        self._count += 1
        return size

    def __len__(self):
        return self._buf.len + self._held_len

    @property
    def count(self):
        """Frames added since the last ``take()``."""
        return self._count

    def take(self):
        """Return the message built so far and start a new one."""
        if self._nheld:
            out = self._join()
        else:
            out = PyBytes_FromStringAndSize(<const char *>self._buf.data, self._buf.len)
        self._start_over()
        return out

    def take_parts(self):
        """As :meth:`take`, but a message with held payloads comes as a list of its
        parts in order (the bytes between them, and the held payloads themselves, not
        copied), for a writer that writes a list whole (``writelines``)."""
        cdef Py_ssize_t k, pos = 0
        cdef _Held *h
        if not self._nheld:
            return self.take()
        out = []
        for k in range(self._nheld):
            h = &self._held[k]
            if h.at > pos:
                out.append(PyBytes_FromStringAndSize(<const char *>self._buf.data + pos, h.at - pos))
            pos = h.at
            out.append(<object>h.payload)
        if self._buf.len > pos:
            out.append(PyBytes_FromStringAndSize(<const char *>self._buf.data + pos, self._buf.len - pos))
        self._start_over()
        return out

    cdef void _start_over(self) noexcept:
        """Empty, for the next message (take, take_parts): the held payloads
        released; the buffer and the held array kept unless they grew large."""
        if self._nheld:
            self._release_held()
        if self._held_cap > _KEEP_HELD:
            PyMem_Free(self._held)
            self._held = NULL
            self._held_cap = 0
        self._buf.len = 0
        self._count = 0
        if self._buf.cap > _KEEP_BUFFER:
            _buf_free(&self._buf)

    cdef bytes _join(self):
        """The buffer with the held payloads spliced in, each byte copied once (the
        caller starts over: _start_over releases them)."""
        cdef Py_ssize_t k, n, pos = 0
        cdef _Held *h
        cdef char *dst
        out = PyBytes_FromStringAndSize(NULL, self._buf.len + self._held_len)
        dst = PyBytes_AS_STRING(out)
        for k in range(self._nheld):
            h = &self._held[k]
            memcpy(dst, self._buf.data + pos, <size_t>(h.at - pos))
            dst += h.at - pos
            pos = h.at
            n = PyBytes_GET_SIZE(<object>h.payload)
            memcpy(dst, PyBytes_AS_STRING(<object>h.payload), <size_t>n)
            dst += n
        memcpy(dst, self._buf.data + pos, <size_t>(self._buf.len - pos))
        return out

    cdef int _grow_held(self) except -1:
        cdef Py_ssize_t cap = self._held_cap * 2 if self._held_cap else 4
        cdef _Held *p = <_Held *>PyMem_Realloc(self._held, <size_t>cap * sizeof(_Held))
        if p == NULL:
            raise MemoryError()
        self._held = p
        self._held_cap = cap
        return 0

    cdef void _release_held(self) noexcept:
        # Only exact bytes are held: dropping them runs no Python code.
        cdef Py_ssize_t k, n = self._nheld
        self._nheld = 0
        self._held_len = 0
        for k in range(n):
            Py_DECREF(<object>self._held[k].payload)


# ---------------------------------------------------------------------------------
# HELLO settings.


def encode_settings(version, settings):
    """HELLO payload: varint version, then varint ``(key, value)`` pairs."""
    cdef _Buf b
    cdef uint64_t v
    b.data = NULL
    b.len = 0
    b.cap = 0
    try:
        _varint_arg(version, &v)
        _buf_reserve(&b, 8)
        b.len = _put_varint(b.data, v) - b.data
        for key, value in settings.items():
            _varint_arg(key, &v)
            _buf_reserve(&b, 16)
            b.len = _put_varint(b.data + b.len, v) - b.data
            _varint_arg(value, &v)
            b.len = _put_varint(b.data + b.len, v) - b.data
        return PyBytes_FromStringAndSize(<const char *>b.data, b.len)
    finally:
        _buf_free(&b)


def decode_settings(payload):
    """Parse a HELLO payload; a repeated key or a dangling key is a ProtocolError."""
    cdef const unsigned char *d
    cdef Py_ssize_t n, pos, k
    cdef dict settings = {}
    keep = _payload(payload, &d, &n)
    if n == 0:
        raise ProtocolError("truncated varint")
    k = <Py_ssize_t>1 << (d[0] >> 6)
    if k > n:
        raise ProtocolError("truncated varint")
    version = PyLong_FromUnsignedLongLong(_get_varint(d, k))
    pos = k
    while pos < n:
        k = <Py_ssize_t>1 << (d[pos] >> 6)
        if k > n - pos:
            raise ProtocolError("truncated varint")
        key = PyLong_FromUnsignedLongLong(_get_varint(d + pos, k))
        pos += k
        if pos >= n:
            raise ProtocolError("setting without a value")
        k = <Py_ssize_t>1 << (d[pos] >> 6)
        if k > n - pos:
            raise ProtocolError("truncated varint")
        value = PyLong_FromUnsignedLongLong(_get_varint(d + pos, k))
        pos += k
        if key in settings:
            raise ProtocolError("duplicate setting")
        settings[key] = value
    del keep
    return version, settings


# ---------------------------------------------------------------------------------
# Flow-control accounting.


cdef inline Py_ssize_t _home(uint64_t key, int bits) noexcept nogil:
    # Fibonacci hashing: stream ids are sequential (and all odd or all even).
    return <Py_ssize_t>((key * _FIB) >> (64 - bits))


cdef class Traffic:
    """One connection's traffic counters: messages, frames and bytes each way. The
    frame counts are resumption's positions (``docs/protocol.md``, "Resumption").
    The call lane counts its messages in C; every other path through these
    methods (one call for a message's counters)."""

    def __init__(self):
        pass  # (C fields start at 0)

    cpdef long long sent(self, long long frames, long long nbytes):
        """A message of ``frames`` frames and ``nbytes`` bytes went out: the position
        of its first frame (``frames_out`` before it)."""
        cdef long long first = self.frames_out
        self.frames_out = first + frames
        self.messages_out += 1
        self.bytes_out += nbytes
        return first

    def received(self, long long nbytes):
        """A message of ``nbytes`` bytes arrived (its frames are counted as they are
        taken, past the handshake: :meth:`took`)."""
        self.messages_in += 1
        self.bytes_in += nbytes

    def took(self, long long frames):
        """``frames`` more frames taken in: ``frames_in`` now (the position to ACK)."""
        self.frames_in += frames
        return self.frames_in


cdef class StreamLedger:
    """Per-stream byte accounting for one direction of a connection.

    For each open stream: bytes and items counted, the flow-control window (credit
    the sender may still use; on the receiving side, what the peer may still send),
    the bytes buffered and not yet consumed, and consumed bytes not yet granted back.
    Lookup by id is O(1): the counters are C structs kept dense (56 bytes a stream),
    found through an open-addressing table of 4-byte positions (linear probing,
    backward-shift deletion); a sparse table of whole structs cost up to 170 bytes a
    stream. Counters are signed 64-bit: an update that would leave that range raises
    OverflowError and changes nothing (as in the pure twin). ``ids()`` is in the
    order of the structs, which differs from the pure twin's.
    """

    def __cinit__(self, *args, **kwargs):
        self._slots = NULL
        self._index = NULL
        self._resize(1 << _MIN_BITS)
        self._rehash(_MIN_BITS)

    def __dealloc__(self):
        PyMem_Free(self._slots)
        PyMem_Free(self._index)

    def __init__(self, initial_window, grant_divisor=4):
        cdef int64_t w, d
        cdef int r
        if not PyLong_Check(initial_window):
            if initial_window < 0 or initial_window > VARINT_MAX:
                raise ValueError("window out of range")
        elif _i64(initial_window, &w) or w < 0 or w > _VMAX:
            raise ValueError("window out of range")
        if not PyLong_Check(grant_divisor):
            if grant_divisor < 1:
                raise ValueError("grant_divisor must be >= 1")
            grant_divisor = _index(grant_divisor)
        r = _i64(grant_divisor, &d)
        if r == 2 or (r == 0 and d < 1):
            raise ValueError("grant_divisor must be >= 1")
        self.initial_window = initial_window
        # A divisor above 2**62 gives the same grants as 2**62 (windows are < 2**62).
        self._divisor = _DIVISOR_CAP if r == 1 or d > _DIVISOR_CAP else d
        if self._count:  # __init__ again: start empty, as the pure one
            memset(self._index, 0, <size_t>(self._mask + 1) * sizeof(uint32_t))
            self._count = 0

    @property
    def initial_window(self):
        return self._initial_window

    @initial_window.setter
    def initial_window(self, value):
        cdef int64_t w = 0
        if not PyLong_Check(value):
            if value < 0 or value > VARINT_MAX:
                raise ValueError("window out of range")
            value = _index(value)
        if _i64(value, &w) or w < 0 or w > _VMAX:
            raise ValueError("window out of range")
        self._initial_window = w

    # -- the table ----------------------------------------------------------------

    cdef int _key(self, object stream_id, uint64_t *key) except -1:
        """1 and ``*key`` when ``stream_id`` may name a stream, else 0.

        As a dict lookup: an unhashable id is a TypeError, and a number equal to an
        int (1.0) finds that int's stream.
        """
        cdef int64_t v
        if PyLong_Check(stream_id):
            if _i64(stream_id, &v) or v < 0 or v > _VMAX:
                return 0
            key[0] = <uint64_t>v
            return 1
        hash(stream_id)
        try:
            as_int = int(stream_id)
        except (TypeError, ValueError, OverflowError):
            return 0
        if not (as_int == stream_id):
            return 0
        return self._key(as_int, key)

    cdef Py_ssize_t _probe(self, uint64_t key) noexcept:
        """The table position that points at ``key``'s struct, or -1."""
        cdef Py_ssize_t i = _home(key, self._bits)
        cdef uint32_t k = self._index[i]
        while k:
            if self._slots[k - 1].id == key:
                return i
            i = (i + 1) & self._mask
            k = self._index[i]
        return -1

    cdef Py_ssize_t _find(self, uint64_t key) noexcept:
        """The position of ``key``'s struct in ``_slots``, or -1."""
        cdef Py_ssize_t i = self._probe(key)
        if i < 0:
            return -1
        return <Py_ssize_t>self._index[i] - 1

    cdef _Slot *_get(self, object stream_id) except NULL:
        cdef uint64_t key
        cdef Py_ssize_t i
        if self._key(stream_id, &key):
            i = self._find(key)
            if i >= 0:
                return &self._slots[i]
        raise KeyError(stream_id)

    cdef _Slot *_sending(self, object stream_id, object nbytes, int64_t *v, bint *big) except NULL:
        """The slot of ``stream_id`` and ``nbytes`` as an int64 (``big``: past int64)
        for sent() and spend(); a negative size is a ValueError."""
        cdef _Slot *s = self._get(stream_id)
        cdef int r
        if not PyLong_Check(nbytes):
            if nbytes < 0:
                raise ValueError("negative size")
            nbytes = _index(nbytes)
            s = self._get(stream_id)  # (Python code ran: the table may have moved)
        r = _i64(nbytes, v)
        if r == 2 or (r == 0 and v[0] < 0):
            raise ValueError("negative size")
        big[0] = r == 1
        return s

    cdef int _rehash(self, int bits) except -1:
        """A table of ``2**bits`` positions, built from the structs."""
        cdef Py_ssize_t j, i, mask = ((<Py_ssize_t>1) << bits) - 1
        cdef uint32_t *index = <uint32_t *>PyMem_Calloc(<size_t>(mask + 1), sizeof(uint32_t))
        if index == NULL:
            raise MemoryError()
        for j in range(self._count):
            i = _home(self._slots[j].id, bits)
            while index[i]:
                i = (i + 1) & mask
            index[i] = <uint32_t>(j + 1)
        PyMem_Free(self._index)
        self._index = index
        self._mask = mask
        self._bits = bits
        return 0

    cdef int _resize(self, Py_ssize_t cap) except -1:
        """Room for ``cap`` structs (``cap >= _count``)."""
        cdef _Slot *slots = <_Slot *>PyMem_Realloc(self._slots, <size_t>cap * sizeof(_Slot))
        if slots == NULL:
            raise MemoryError()
        self._slots = slots
        self._cap = cap
        return 0

    cdef void _delete(self, Py_ssize_t i) noexcept:
        """Forget the stream at table position ``i``."""
        cdef uint32_t *index = self._index
        cdef Py_ssize_t mask = self._mask, j = i, home, gone = index[i] - 1, last
        # Backward-shift deletion: pull later entries of the probe run into the hole
        # unless their home slot lies cyclically in (hole, entry].
        while True:
            j = (j + 1) & mask
            if not index[j]:
                break
            home = _home(self._slots[index[j] - 1].id, self._bits)
            if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                index[i] = index[j]
                i = j
        index[i] = 0
        # Keep the structs dense: the last one moves into the hole.
        last = self._count - 1
        if gone != last:
            self._slots[gone] = self._slots[last]
            index[self._probe(self._slots[gone].id)] = <uint32_t>(gone + 1)
        self._count = last

    # -- the API --------------------------------------------------------------------

    def open(self, stream_id, window=-1):
        """Start accounting for ``stream_id``; ``window`` defaults to the initial one."""
        cdef uint64_t key
        cdef int64_t w = 0
        cdef int r
        cdef Py_ssize_t i
        cdef _Slot *s
        if self._key(stream_id, &key) and self._find(key) >= 0:
            raise KeyError(stream_id)
        if not PyLong_Check(stream_id):
            if not 0 <= stream_id <= VARINT_MAX:
                raise ValueError("stream id out of range")
        elif not self._key(stream_id, &key):
            raise ValueError("stream id out of range")
        if PyLong_Check(window):
            r = _i64(window, &w)
            if r == 2 or (r == 0 and w < 0):
                w = self._initial_window
            elif r == 1 or w > _VMAX:
                raise ValueError("window out of range")
        elif window < 0:
            window = w = self._initial_window
        elif window > VARINT_MAX:
            raise ValueError("window out of range")
        if not PyLong_Check(stream_id):
            stream_id = _index(stream_id)
            if not self._key(stream_id, &key):
                raise ValueError("stream id out of range")
        if not PyLong_Check(window):
            window = _index(window)
            if _i64(window, &w) or w < 0 or w > _VMAX:
                raise ValueError("window out of range")
        # Python code may have run above (non-int arguments): look again.
        if self._find(key) >= 0:
            raise KeyError(stream_id)
        if self._count == self._cap:
            if self._cap > 0x3FFFFFFF:  # positions are 32-bit
                raise MemoryError("a StreamLedger holds at most 2**31 streams")
            self._resize(self._cap * 2)
        if (self._count + 1) * 4 > (self._mask + 1) * 3:
            self._rehash(self._bits + 1)  # load above 3/4: double
        i = _home(key, self._bits)
        while self._index[i]:
            i = (i + 1) & self._mask
        self._index[i] = <uint32_t>(self._count + 1)
        s = &self._slots[self._count]
        s.id = key
        s.bytes = 0
        s.items = 0
        s.window = w
        s.buffered = 0
        s.unacked = 0
        s.window_size = w
        self._count += 1

    def close(self, stream_id):
        """Forget ``stream_id``; unknown ids are ignored."""
        cdef uint64_t key
        cdef Py_ssize_t i
        if not self._key(stream_id, &key):
            return
        i = self._probe(key)
        if i < 0:
            return
        self._delete(i)
        try:  # give back room (best effort): under 1/8 full, halve
            if self._bits > _MIN_BITS and self._count * 8 < self._mask + 1:
                self._rehash(self._bits - 1)
            if self._cap > (1 << _MIN_BITS) and self._count * 8 < self._cap:
                self._resize(self._cap // 2)
        except MemoryError:
            pass

    def __contains__(self, stream_id):
        cdef uint64_t key
        return bool(self._key(stream_id, &key)) and self._find(key) >= 0

    def __len__(self):
        return self._count

    def ids(self):
        """Ids of the open streams, in no particular order (not the pure twin's order:
        compare sorted)."""
        cdef list out = []
        cdef Py_ssize_t j
        for j in range(self._count):
            out.append(PyLong_FromUnsignedLongLong(self._slots[j].id))
        return out

    def window(self, stream_id):
        """Credit left: bytes that may still be sent on the stream."""
        return self._get(stream_id).window

    def spend(self, stream_id, nbytes, Py_ssize_t items=1):
        """Sender side: when the window holds ``nbytes`` of credit, spend them on
        ``items`` frames and return the credit left; else spend nothing and return -1
        (a ``window()`` check and ``sent()`` in one call)."""
        cdef int64_t v
        cdef bint big
        if items < 0:
            raise ValueError("negative count")
        cdef _Slot *s = self._sending(stream_id, nbytes, &v, &big)
        if big or v > s.window:
            return -1
        if v > INT64_MAX - s.bytes:
            raise OverflowError("stream counter overflow")
        s.bytes += v
        s.items += items
        s.window -= v
        return s.window

    def sent(self, stream_id, nbytes):
        """Sender side: ``nbytes`` of one item left; return the credit left.

        The credit goes negative when more than the window was sent.
        """
        cdef int64_t v
        cdef bint big
        cdef _Slot *s = self._sending(stream_id, nbytes, &v, &big)
        if big or v > INT64_MAX - s.bytes or s.window < INT64_MIN + v:
            raise OverflowError("stream counter overflow")
        s.bytes += v
        s.items += 1
        s.window -= v
        return s.window

    def grant(self, stream_id, nbytes):
        """Sender side: the peer granted ``nbytes`` of credit; return the new window."""
        cdef _Slot *s = self._get(stream_id)
        cdef int64_t v
        cdef int r
        if not PyLong_Check(nbytes):
            if nbytes < 0:
                raise ValueError("negative grant")
            if self._get(stream_id).window + nbytes > VARINT_MAX:
                raise ProtocolError("flow-control window overflow", _FLOW_CONTROL_ERROR)
            nbytes = _index(nbytes)
            s = self._get(stream_id)
        r = _i64(nbytes, &v)
        if r == 2 or (r == 0 and v < 0):
            raise ValueError("negative grant")
        if r == 1:
            # Above 2**63: only a window far below zero could take it.
            v = s.window
            total = int(nbytes) + v
            if total > VARINT_MAX:
                raise ProtocolError("flow-control window overflow", _FLOW_CONTROL_ERROR)
            s = self._get(stream_id)
            _i64(total, &s.window)
            return s.window
        if s.window > _VMAX - v:
            raise ProtocolError("flow-control window overflow", _FLOW_CONTROL_ERROR)
        s.window += v
        return s.window

    def received(self, stream_id, nbytes, Py_ssize_t items=1):
        """Receiver side: ``nbytes`` arrived, in ``items`` frames; return the credit
        left (the sender's window). A peer past its window is a ProtocolError."""
        cdef _Slot *s = self._get(stream_id)
        cdef int64_t v
        cdef int r
        if items < 0:
            raise ValueError("negative count")
        if not PyLong_Check(nbytes):
            if nbytes < 0:
                raise ValueError("negative size")
            if nbytes > self._get(stream_id).window:
                raise ProtocolError("flow-control window exceeded", _FLOW_CONTROL_ERROR)
            nbytes = _index(nbytes)
            s = self._get(stream_id)
        r = _i64(nbytes, &v)
        if r == 2 or (r == 0 and v < 0):
            raise ValueError("negative size")
        if r == 1 or v > s.window:
            raise ProtocolError("flow-control window exceeded", _FLOW_CONTROL_ERROR)
        if v > INT64_MAX - s.bytes or v > INT64_MAX - s.buffered:
            raise OverflowError("stream counter overflow")
        s.bytes += v
        s.items += items
        s.window -= v
        s.buffered += v
        return s.window

    def consumed(self, stream_id, nbytes):
        """Receiver side: the consumer took ``nbytes``; return the credit to grant now.

        Credit is returned in batches, once a ``1/grant_divisor`` of the window has
        been consumed, so that CREDIT frames stay a small share of the traffic.
        """
        cdef _Slot *s = self._get(stream_id)
        cdef int64_t v, unacked, buffered, d
        cdef int r
        if not PyLong_Check(nbytes):
            if nbytes < 0:
                raise ValueError("negative size")
            if nbytes > self._get(stream_id).buffered:
                raise ValueError("consumed more than buffered")
            nbytes = _index(nbytes)
            s = self._get(stream_id)
        r = _i64(nbytes, &v)
        if r == 2 or (r == 0 and v < 0):
            raise ValueError("negative size")
        if r == 1 or v > s.buffered:
            raise ValueError("consumed more than buffered")
        if v > INT64_MAX - s.unacked:
            raise OverflowError("stream counter overflow")
        buffered = s.buffered - v
        unacked = s.unacked + v
        # unacked * divisor >= window_size, without the product: all are >= 0.
        d = self._divisor
        if (unacked >= s.window_size // d + (s.window_size % d != 0)
                or (unacked > 0 and buffered == 0 and s.window == 0)):
            if s.window > 0 and unacked > INT64_MAX - s.window:
                raise OverflowError("stream counter overflow")
            s.window += unacked
            s.buffered = buffered
            s.unacked = 0
            return unacked
        s.buffered = buffered
        s.unacked = unacked
        return 0

    def resize(self, stream_id, window_size):
        """Receiver side: grow the stream's window to ``window_size``; return extra credit."""
        cdef _Slot *s = self._get(stream_id)
        cdef int64_t v, extra
        cdef int r
        if not PyLong_Check(window_size):
            if window_size > VARINT_MAX:
                raise ValueError("window out of range")
            window_size = _index(window_size)
            s = self._get(stream_id)
        r = _i64(window_size, &v)
        if r == 1 or (r == 0 and v > _VMAX):
            raise ValueError("window out of range")
        if r == 2 or v <= s.window_size:
            return 0
        extra = v - s.window_size
        if s.window > 0 and extra > INT64_MAX - s.window:
            raise OverflowError("stream counter overflow")
        s.window_size = v
        s.window += extra
        return extra

    def stats(self, stream_id):
        """``(bytes, items, window, buffered)`` for the stream."""
        cdef _Slot *s = self._get(stream_id)
        return s.bytes, s.items, s.window, s.buffered


include "_payload_cost.pxi"
include "_lane.pxi"
