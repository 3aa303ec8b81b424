# Included by _frames.pyx: payload_cost, the twin of _frames_py.payload_cost (same
# cost table, same result for every input; tests/test_frames.py runs both).

cdef enum:
    _LIST = 56
    _DICT = 64
    _ENTRY = 40
    _STR = 49
    _BYTES = 33
    _INT = 32
    _FLOAT = 24
    _EXT = 64
    _JSON_VALUE = 64


cdef inline uint64_t _be(const unsigned char *p, int width) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(width):
        v = (v << 8) | p[i]
    return v


def payload_cost(data, limit=VARINT_MAX):
    """About how many bytes of Python objects decoding ``data`` makes (a payload of
    MessagePack, or of JSON when it starts with ``[``, ``{``, ``"`` or white space): at least
    ``len(data)``. Work is linear in ``len(data)``; declared lengths count in full even
    where the payload is cut short (a decoder may allocate them up front). Past
    ``limit`` the walk stops: the result is then ``max(limit + 1, len(data))``."""
    cdef const unsigned char[::1] view = memoryview(data).cast("B")
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t pos = 0
    cdef uint64_t cap = min(max(limit, 0), VARINT_MAX)
    cdef uint64_t cost = 0
    cdef uint64_t length, values
    cdef unsigned char b
    cdef int width, kind, base
    if n == 0:
        return 0
    cdef const unsigned char *p = &view[0]
    b = p[0]
    # JSON: an array, an object, white space, or a string (a MessagePack value
    # that starts with '"' is the one-byte int 34: longer, it is not one value).
    if b == 0x5B or b == 0x7B or b == 0x20 or b == 0x09 or b == 0x0D or b == 0x0A or (b == 0x22 and n > 1):
        # A value per comma or opening bracket, but not those inside a string (up to
        # its closing quote, a backslash escaping the byte after it): they are text.
        values = 1
        while pos < n:
            b = p[pos]
            if b == 0x22:
                pos += 1
                while pos < n and p[pos] != 0x22:
                    pos += 2 if p[pos] == 0x5C else 1
            elif b == 0x2C or b == 0x5B or b == 0x7B:
                values += 1
            pos += 1
        cost = n + values * _JSON_VALUE
        return cost if cost <= cap else max(cap + 1, <uint64_t>n)
    with nogil:
        while pos < n and cost <= cap:
            b = p[pos]
            pos += 1
            if b < 0x80 or b >= 0xE0 or 0xC0 <= b <= 0xC3:
                continue
            if b < 0x90:
                cost += _DICT + _ENTRY * (b & 0x0F)
            elif b < 0xA0:
                cost += _LIST + 8 * (b & 0x0F)
            elif b < 0xC0:
                cost += _STR + (b & 0x1F)
                pos += b & 0x1F
            elif b == 0xCA:
                cost += _FLOAT
                pos += 4
            elif b == 0xCB:
                cost += _FLOAT
                pos += 8
            elif 0xCC <= b <= 0xCF:
                cost += _INT
                pos += 1 << (b - 0xCC)
            elif 0xD0 <= b <= 0xD3:
                cost += _INT
                pos += 1 << (b - 0xD0)
            elif 0xD4 <= b <= 0xD8:
                cost += _EXT + (1 << (b - 0xD4))
                pos += (1 << (b - 0xD4)) + 1
            else:
                # Length-prefixed: bin, str, ext, array, map (16 or 32 bit lengths, or 8).
                if b == 0xC4 or b == 0xD9 or b == 0xC7:
                    width = 1
                elif b == 0xC5 or b == 0xDA or b == 0xC8 or b == 0xDC or b == 0xDE:
                    width = 2
                else:
                    width = 4
                if pos + width <= n:
                    length = _be(p + pos, width)
                else:
                    length = _be(p + pos, <int>(n - pos))  # cut short: what is there
                pos += width
                if b == 0xDC or b == 0xDD:
                    cost += _LIST + 8 * length
                elif b == 0xDE or b == 0xDF:
                    cost += _DICT + _ENTRY * length
                elif 0xC7 <= b <= 0xC9:
                    cost += _EXT + length
                    pos += <Py_ssize_t>length + 1 if length < <uint64_t>n else n
                else:
                    cost += (_BYTES if b <= 0xC6 else _STR) + length
                    pos += <Py_ssize_t>length if length < <uint64_t>n else n
    if cost > cap:
        return max(cap + 1, <uint64_t>n)
    return cost if cost > <uint64_t>n else n
