# C declarations of the compiled frame codec (_frames.pyx).
#
# The Python-visible API is the same as the pure twin _frames_py.py; this file holds
# the C side only: the structs and the cdef classes' fields and cdef methods.

from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef struct _Buf:
    # A growable byte buffer (PyMem_Malloc'd): FrameWriter, encode_settings.
    unsigned char *data
    Py_ssize_t len
    Py_ssize_t cap


cdef struct _Held:
    # A FrameWriter payload held by reference (an exact bytes: it cannot change).
    PyObject *payload    # an owned reference
    Py_ssize_t at        # where in the writer's buffer it goes


cdef struct _Item:
    # One frame of encode_batch between its sizing pass and its writing pass.
    const unsigned char *ptr
    Py_ssize_t len
    uint64_t id
    uint8_t type
    uint8_t flags


cdef struct _Slot:
    # One open stream's counters in StreamLedger (56 bytes, kept dense).
    uint64_t id
    int64_t bytes        # payload bytes sent or received
    int64_t items        # frames sent or received
    int64_t window       # credit left
    int64_t buffered     # received, not consumed yet
    int64_t unacked      # consumed, not granted back yet
    int64_t window_size  # the window the credit is measured against


cdef class Frame:
    cdef readonly object type
    cdef readonly object flags
    cdef readonly object id
    cdef readonly object payload


cdef class FrameWriter:
    cdef _Buf _buf
    cdef Py_ssize_t _count
    cdef _Held *_held          # payloads held by reference, in order (PyMem_Malloc'd)
    cdef Py_ssize_t _nheld
    cdef Py_ssize_t _held_cap
    cdef Py_ssize_t _held_len  # bytes in the held payloads

    cdef Py_ssize_t _add(self, uint8_t t, uint8_t f, uint64_t i, object payload,
                         const unsigned char *src, Py_ssize_t n) except -1
    cdef bytes _join(self)
    cdef int _grow_held(self) except -1
    cdef void _release_held(self) noexcept
    cdef void _start_over(self) noexcept


cdef class Traffic:
    # A connection's counters (Connection.traffic): C fields the call lane adds to.
    cdef public long long messages_in, frames_in, bytes_in
    cdef public long long messages_out, frames_out, bytes_out

    cpdef long long sent(self, long long frames, long long nbytes)


cdef class StreamLedger:
    cdef _Slot *_slots         # the open streams' counters, dense: _slots[0:_count]
    cdef Py_ssize_t _cap       # room in _slots
    cdef uint32_t *_index      # open-addressing table: 1 + a position in _slots, 0 free
    cdef Py_ssize_t _mask      # table size - 1 (the size is a power of two)
    cdef int _bits             # log2(table size)
    cdef Py_ssize_t _count
    cdef int64_t _initial_window
    cdef int64_t _divisor      # grant_divisor, capped at 2**62 (same results)

    cdef int _key(self, object stream_id, uint64_t *key) except -1
    cdef Py_ssize_t _probe(self, uint64_t key) noexcept
    cdef Py_ssize_t _find(self, uint64_t key) noexcept
    cdef _Slot *_get(self, object stream_id) except NULL
    cdef _Slot *_sending(self, object stream_id, object nbytes, int64_t *v, bint *big) except NULL
    cdef int _rehash(self, int bits) except -1
    cdef int _resize(self, Py_ssize_t cap) except -1
    cdef void _delete(self, Py_ssize_t i) noexcept
