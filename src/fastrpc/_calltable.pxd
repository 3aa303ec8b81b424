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
