# C types for the fields of calltable.py's CallTable, when setup.py compiles that
# source as fastrpc._calltable (Cython's "augmenting .pxd": the .py stays the pure
# twin). Typed fields are read and written as C struct members, not looked up: the
# table is on every call's path, twice a side. Limits are long long: a peer's HELLO
# may say up to 2**62 on any platform.

cdef class CallTable:
    cdef public object budget
    cdef public long long call_limit
    cdef public object channels  # dict or None
    cdef public bint closed
    cdef public object control
    cdef public long long frame_limit
    cdef public dict inbound
    cdef public long long max_inbound
    cdef public object next_id  # a varint: up to 2**62, past a C long on some platforms
    cdef public dict out
    cdef public object peer_parity
    cdef public dict streaming_out
    cdef public dict streams_out

    # A C call from call() (every peer.call's path), and a method for the call lane.
    cpdef object reserve(self, object method, Py_ssize_t size)
    # C calls from lane_admit and lane_finish (the server's lane, every call).
    cpdef bint admit(self, object call_id, Py_ssize_t cost) except -1
    cpdef object finish(self, object call_id)


# Exported C functions (this module's __pyx_capi__): the call lane in fastrpc._frames
# finds them when it builds its first lane and calls them in C. (A cimport would make
# the codec import this module as it loads, and this module imports the codec.)
cpdef bint lane_admit(CallTable table, object call_id, Py_ssize_t cost) except -1
cpdef bint lane_finish(CallTable table, object call_id, Py_ssize_t size) except -1
