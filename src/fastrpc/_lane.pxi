# The call lane, compiled (included by _frames.pyx; its pure twin is the Python path
# it short-cuts: PeerIO.message_received -> RpcPeer._process -> Connection.take_call ->
# CallTable.take -> Handlers.call -> PeerIO._answer -> Connection.answer_now ->
# CallTable.reply -> _Wire.write_now).
#
# A read that is one whole WebSocket frame holding one plain raw REQUEST (what
# ``peer.call("echo", b"...")`` sends) for a plain sync handler is answered here, from
# the transport's read callback, when nothing else is going on: the same checks, books
# and bytes as that path, without its ~690 interpreted opcodes. A check that does not
# hold returns False before anything is touched, and the read takes the Python path.
# Once the handler has run, whatever is not the common case (a result that is not
# bytes, an exception, output the handler queued, a closing or full transport) goes to
# the peer's Python continuation (``RpcPeer._lane_result``): both paths end in the
# same state.
#
# Speed comes from reading the Python objects' ``__slots__`` where they are: each
# slot's offset in its object is resolved once per type (``_Slots``), as the
# interpreter's specialised LOAD_ATTR_SLOT does; a generic attribute look-up costs
# ~170 instructions, ~55 of them a call. ``_LANE_SLOTS`` lists every slot the lane
# reads or writes; a class that no longer has one of them makes building the lane
# fail (tests/test_lane.py), never a silent slow path.

from cpython.contextvars cimport PyContextVar_Get
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from cpython.long cimport PyLong_AsSsize_t, PyLong_CheckExact, PyLong_FromSsize_t
from cpython.dict cimport PyDict_GetItem
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.string cimport memcmp

import os

cdef extern from *:
    """
    #include "structmember.h"
    /* The offset of the writable object slot ``name`` of ``tp`` (a __slots__ entry),
       or -1 when it is not one. */
    static Py_ssize_t fastrpc_slot_offset(PyObject *tp, PyObject *name) {
        PyObject *d = PyObject_GetAttr(tp, name);
        Py_ssize_t off = -1;
        if (d == NULL) { PyErr_Clear(); return -1; }
        if (Py_TYPE(d) == &PyMemberDescr_Type) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READONLY)) off = m->offset;
        }
        Py_DECREF(d);
        return off;
    }
    static inline PyObject *fastrpc_slot(PyObject *o, Py_ssize_t off) {
        return *(PyObject **)((char *)o + off);  /* borrowed; NULL when unset */
    }
    static inline void fastrpc_set_slot(PyObject *o, Py_ssize_t off, PyObject *v) {
        PyObject **p = (PyObject **)((char *)o + off);
        PyObject *old = *p;
        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
    }
    """
    Py_ssize_t fastrpc_slot_offset(object tp, object name) except? -2
    PyObject *fastrpc_slot(object o, Py_ssize_t off) noexcept
    void fastrpc_set_slot(object o, Py_ssize_t off, object v) noexcept


cdef enum:
    _LANE_REQUEST = 0x02
    _LANE_RESPONSE = 0x03
    _LANE_RAW = 0x40       # calls.FLAG_RAW
    _LANE_MAX_IN = 125     # a WebSocket payload with a one-byte length
    _LANE_MAX_OUT = 4096   # larger answers go through _Wire._write (writelines)

# The largest read the lane takes: a masked frame's 6 header bytes and 125 of payload
# (the transport does not offer it larger ones: frames.LANE_MAX_READ).
LANE_MAX_READ = 6 + _LANE_MAX_IN

# The slots the lane reads and writes, by object: (index, object, slot name). The
# index names its offset in _Slots.off.
cdef enum:
    P_TRANSPORT, P_BUSY, P_DIRECT, P_CALL_WAITERS, P_READY, P_LINK, P_WRITER, P_CORE,
    P_HANDLERS, P_IN_READ, P_FRESH, P_PROCESSING, P_MAX_BACKLOG, P_STREAMS, P_CALLS,
    W_SINK, W_INTO, W_MODE, W_BUF, W_PARTS, W_TAKEN, W_READS,
    M_DRAIN_WAITERS,
    L_FLUSH_PENDING, L_CLOSED,
    C_CLOSED, C_DECODING, C_SESSION, C_SCHED, C_FLOW, C_CALLS, C_TRAFFIC,
    S_ENABLED, S_AWAITING_HELLO, S_HANDSHAKE_SENT,
    Q_CONTROL, Q_BACKLOG_BYTES, Q_READY,
    F_SLOT_GRANTS,
    H_OWN, H_ROUTER,
    R_VIEW,
    _N_SLOTS

_LANE_SLOTS = (
    ("peer", ("_transport", "_busy", "_direct", "_call_waiters", "_ready", "_link", "_writer", "_core",
              "_handlers", "_in_read", "_fresh", "_processing", "_max_backlog", "streams", "_calls")),
    ("wire", ("_sink", "_into", "_mode", "_buf", "_parts", "_taken", "_reads")),
    ("streams", ("_drain_waiters",)),
    ("link", ("flush_pending", "closed")),
    ("core", ("closed", "decoding", "session", "_sched", "_flow", "_calls", "traffic")),
    ("session", ("enabled", "awaiting_hello", "handshake_sent")),
    ("sched", ("control", "backlog_bytes", "ready")),
    ("flow", ("slot_grants",)),
    ("handlers", ("own", "router")),
    ("reads", ("view",)),
)


cdef class _Slots:
    """The offsets of ``_LANE_SLOTS`` for one peer's classes (the same for every peer
    of those classes: shared), and the classes themselves, checked on each use."""

    cdef Py_ssize_t off[_N_SLOTS]
    cdef dict types  # object name -> its class

    def __init__(self, dict types):
        cdef Py_ssize_t i = 0, o
        self.types = types
        for what, names in _LANE_SLOTS:
            tp = types[what]
            for name in names:
                o = fastrpc_slot_offset(tp, name)
                if o < 0:
                    raise TypeError(f"the call lane reads {tp.__name__}.{name}, which is not a slot of it")
                self.off[i] = o
                i += 1
        assert i == _N_SLOTS


cdef dict _LANE_OFFSETS = {}  # (the peer's classes) -> _Slots

# A client frame's mask (RFC 6455 5.3): 4 bytes cut from a pool of urandom, one
# getrandom call per 1,024 frames, as the transport's own pool (transport._MASKS);
# a forked child draws a pool of its own.
cdef bytes _lane_masks = b""
cdef Py_ssize_t _lane_mask_at = 0


def _lane_new_masks():
    global _lane_masks, _lane_mask_at
    _lane_masks = b""
    _lane_mask_at = 0


os.register_at_fork(after_in_child=_lane_new_masks)


cdef const unsigned char *_lane_mask() except NULL:
    global _lane_masks, _lane_mask_at
    if _lane_mask_at + 4 > PyBytes_GET_SIZE(_lane_masks):
        _lane_masks = os.urandom(4096)
        _lane_mask_at = 0
    _lane_mask_at += 4
    return <const unsigned char *>PyBytes_AS_STRING(_lane_masks) + _lane_mask_at - 4


cdef inline object _get(object o, Py_ssize_t off):
    cdef PyObject *p = fastrpc_slot(o, off)
    if p == NULL:
        raise AttributeError("a slot the call lane reads is not set")
    return <object>p


cdef inline bint _true(object o, Py_ssize_t off) except -1:
    cdef PyObject *p = fastrpc_slot(o, off)
    if p == NULL:
        raise AttributeError("a slot the call lane reads is not set")
    if p == <PyObject *>True:
        return True
    if p == <PyObject *>False or p == <PyObject *>None:
        return False
    return bool(<object>p)


# Router.methods and Router.specs, MethodSpec.authorize and .args, ArgumentSpec.raw_ok,
# read in their slots (of those classes, not of subclasses, which may make them
# something else): resolved with the first lane.
cdef object _router_type = None
cdef type _spec_type = None, _args_type = None
cdef Py_ssize_t _ROUTER_METHODS = 0, _ROUTER_SPECS = 0
cdef Py_ssize_t _SPEC_AUTHORIZE = 0, _SPEC_ARGS = 0, _ARGS_RAW_OK = 0

# The compiled call table's admission and finish (calltable.lane_admit/lane_finish),
# called in C through fastrpc._calltable's exported functions. Found with the first
# lane, not cimported: a cimport would import _calltable as this module loads, and
# _calltable imports this module (through frames). The signature is checked: a
# _calltable built otherwise leaves them NULL and the lane calls them in Python.
ctypedef int (*_table_fn)(object, object, Py_ssize_t, int) except -1
cdef _table_fn _table_admit = NULL, _table_finish = NULL
cdef type _table_type = None   # the CallTable they take; None: Python calls
cdef object _py_lane_finish = None


cdef Py_ssize_t _slot_of(tp, str name) except -1:
    cdef Py_ssize_t o = fastrpc_slot_offset(tp, name)
    if o < 0:
        raise TypeError(f"the call lane reads {tp.__name__}.{name}, which is not a slot of it")
    return o


cdef _resolve_router():
    global _router_type, _ROUTER_METHODS, _ROUTER_SPECS, _spec_type, _args_type
    global _SPEC_AUTHORIZE, _SPEC_ARGS, _ARGS_RAW_OK
    global _table_admit, _table_finish, _table_type, _py_lane_finish
    from fastrpc.arguments import ArgumentSpec
    from fastrpc.router import MethodSpec, Router
    from fastrpc import calltable
    _ROUTER_METHODS = _slot_of(Router, "methods")
    _ROUTER_SPECS = _slot_of(Router, "specs")
    _SPEC_AUTHORIZE = _slot_of(MethodSpec, "authorize")
    _SPEC_ARGS = _slot_of(MethodSpec, "args")
    _ARGS_RAW_OK = _slot_of(ArgumentSpec, "raw_ok")
    _spec_type, _args_type = MethodSpec, ArgumentSpec
    _py_lane_finish = calltable.lane_finish
    if calltable.COMPILED:
        from fastrpc import _calltable
        api = getattr(_calltable, "__pyx_capi__", {})
        sig = b"int (struct __pyx_obj_7fastrpc_10_calltable_CallTable *, PyObject *, Py_ssize_t, int __pyx_skip_dispatch)"
        admit = api.get("lane_admit")
        finish = api.get("lane_finish")
        if PyCapsule_IsValid(admit, sig) and PyCapsule_IsValid(finish, sig):
            _table_admit = <_table_fn>PyCapsule_GetPointer(admit, sig)
            _table_finish = <_table_fn>PyCapsule_GetPointer(finish, sig)
            _table_type = calltable.CallTable
    _router_type = Router


def lane_table_in_c():
    """Whether the lanes call the compiled call table's admission and finish in C
    (True with a build of this version; tests/test_lane.py checks it)."""
    if _router_type is None:
        _resolve_router()
    return _table_type is not None


cdef inline object _router_table(object r, Py_ssize_t off):
    cdef PyObject *p
    if type(r) is _router_type:
        p = fastrpc_slot(r, off)
        if p != NULL:
            return <object>p
    return getattr(r, "methods" if off == _ROUTER_METHODS else "specs")


cdef inline bint _past(Py_ssize_t n, object limit) except -1:
    # n > limit, for an int limit in C (a limit past a long long is never passed).
    cdef int overflow = 0
    cdef long long v
    if PyLong_CheckExact(limit):
        v = PyLong_AsLongLongAndOverflow(limit, &overflow)
        if overflow == 0:
            return n > v
        return overflow < 0
    return n > limit


cdef inline bint _counts(object core, Py_ssize_t off) except -1:
    # Connection.traffic is the codec's Traffic: the lane adds to its C fields.
    return type(_get(core, off)) is Traffic


cdef inline Traffic _traffic(object core, Py_ssize_t off):
    # (Its type checked before the lane took the message: _counts.)
    return <Traffic><object>fastrpc_slot(core, off)


cdef class CallLane:
    """One peer's compiled call lane on one transport (``PeerIO`` makes it when it
    starts reading a ``_Wire``; see this file's header)."""

    cdef readonly object peer
    # What it took (tests, inspection): calls of the peer it answered or ran, answers
    # to our calls it settled, our calls it wrote.
    cdef readonly Py_ssize_t served, settled, sent
    cdef object wire
    cdef object tcp
    cdef object ws
    cdef dict ws_dict          # ws.__dict__, where its state property reads (None: not so)
    cdef Py_ssize_t out_bound  # the socket's buffer after the lane's last answer, at most
    cdef object open_state     # websockets' State.OPEN
    cdef object framing        # the transport's _FRAMING mode
    cdef object current        # peer_io._current_peer (a ContextVar)
    cdef dict names            # calls.METHOD_NAMES: a name's bytes -> its str
    cdef dict heads            # calls.METHOD_HEADS: a name -> its encoded head (calls.method_head)
    cdef object method_head
    cdef object sync           # router.SYNC: the kind of a plain sync handler
    cdef object failed         # the exceptions a sync handler's call answers
    cdef object ready          # the peer's _ready future, once seen done
    cdef bytes last_name       # the last method name taken, and its str
    cdef object last_method
    cdef Py_ssize_t high       # the transport's write_limit
    cdef Py_ssize_t read_slice # the transport's _READ_SLICE
    cdef bint masked           # frames received are masked (a server's lane)
    cdef _Slots s
    cdef type peer_type, wire_type, link_type, core_type, session_type, sched_type
    cdef type flow_type, handlers_type, streams_type, reads_type

    def __init__(self, peer, current, dict names, dict heads, method_head, sync, failed,
                 wire, tcp, ws, open_state, Py_ssize_t high, bint client, framing, Py_ssize_t read_slice):
        self.peer = peer
        self.wire = wire
        self.tcp = tcp
        self.ws = ws
        if _router_type is None:
            _resolve_router()
        # websockets' ``state`` is a property returning ``_state`` (a Python frame a
        # call): read in the instance's dict when it holds what the property returns,
        # else through the property (tests/test_lane.py checks the dict is used).
        d = getattr(ws, "__dict__", None)
        self.ws_dict = d if type(d) is dict and (<dict>d).get("_state", self) is ws.state else None
        self.open_state = open_state
        self.framing = framing
        self.high = high
        self.read_slice = read_slice
        self.masked = not client
        self.current = current
        self.names = names
        self.heads = heads
        self.method_head = method_head
        self.sync = sync
        self.failed = failed
        self.last_name = b""
        core = peer._core
        types = {
            "peer": type(peer),
            "wire": type(wire),
            "streams": type(peer.streams),
            "link": type(peer._link),
            "core": type(core),
            "session": type(core.session),
            "sched": type(core._sched),
            "flow": type(core._flow),
            "handlers": type(peer._handlers),
            "reads": type(wire._reads),
        }
        key = tuple(types.values())
        slots = _LANE_OFFSETS.get(key)
        if slots is None:
            slots = _LANE_OFFSETS[key] = _Slots(types)
        self.s = slots
        self.peer_type, self.wire_type, self.link_type = types["peer"], types["wire"], types["link"]
        self.core_type, self.session_type, self.sched_type = types["core"], types["session"], types["sched"]
        self.flow_type = types["flow"]
        self.handlers_type, self.streams_type = types["handlers"], types["streams"]
        self.reads_type = types["reads"]

    @property
    def state_in_place(self):
        """Whether websockets' state is read in its instance dict (not through its
        property): True with the websockets versions fastrpc supports."""
        return self.ws_dict is not None

    cdef inline bint _open(self) except -1:
        # websockets' ws.state is State.OPEN, read where the property reads it.
        cdef PyObject *p
        if self.ws_dict is not None:
            p = PyDict_GetItem(self.ws_dict, "_state")
            if p != NULL:
                return p == <PyObject *>self.open_state
        return self.ws.state is self.open_state

    cdef inline bint _has_output(self, core) except -1:
        # Connection.has_output, read in place.
        cdef Py_ssize_t *off = self.s.off
        sched = _get(core, off[C_SCHED])
        flow = _get(core, off[C_FLOW])
        if type(sched) is not self.sched_type or type(flow) is not self.flow_type:
            return True  # (not what the lane knows: as if output waited, the Python path)
        return (len(_get(sched, off[Q_CONTROL])) != 0 or _true(sched, off[Q_BACKLOG_BYTES])
                or _true(flow, off[F_SLOT_GRANTS]) or _true(sched, off[Q_READY]))

    cdef object _method(self, const unsigned char *name, Py_ssize_t n):
        # The str of a method name seen before (calls.METHOD_NAMES), the last one kept.
        cdef bytes last = self.last_name
        if PyBytes_GET_SIZE(last) == n and memcmp(PyBytes_AS_STRING(last), name, <size_t>n) == 0:
            return self.last_method
        b = PyBytes_FromStringAndSize(<const char *>name, n)
        method = self.names.get(b)
        if method is not None:
            self.last_name = b
            self.last_method = method
        return method

    cdef object _handler(self, handlers, method):
        # Handlers.find and Handlers.call's test: a plain sync handler, or one whose
        # spec takes raw bytes unchecked; None for any other (the Python path).
        cdef Py_ssize_t *off = self.s.off
        own = _get(handlers, off[H_OWN])
        methods = _router_table(own, _ROUTER_METHODS)
        specs = _router_table(own, _ROUTER_SPECS)
        if type(methods) is not dict:
            return None
        found = (<dict>methods).get(method)
        if found is None:
            router = _get(handlers, off[H_ROUTER])
            methods = _router_table(router, _ROUTER_METHODS)
            specs = _router_table(router, _ROUTER_SPECS)
            if type(methods) is not dict:
                return None
            found = (<dict>methods).get(method)
            if found is None:
                return None
        if type(found) is not tuple or PyTuple_GET_SIZE(found) != 2:
            return None
        fn, kind = found
        if kind != self.sync:
            return None
        if specs:
            if type(specs) is not dict:
                return None
            spec = (<dict>specs).get(method)
            if spec is not None:
                if type(spec) is not _spec_type:
                    return None
                if _get(spec, _SPEC_AUTHORIZE) is not None:
                    return None
                args = _get(spec, _SPEC_ARGS)
                if args is not None and (type(args) is not _args_type or not _true(args, _ARGS_RAW_OK)):
                    return None
        return fn

    cdef bint _reading(self, peer, wire) except -1:
        # The peer reads this transport, a message at a time, its session set up (the
        # conditions of PeerIO.message_received and RpcPeer._process's lane).
        cdef Py_ssize_t *off = self.s.off
        cdef PyObject *value = NULL
        if _get(peer, off[P_TRANSPORT]) is not wire or _get(wire, off[W_SINK]) is not peer:
            return False
        if _true(peer, off[P_BUSY]):
            return False
        PyContextVar_Get(self.current, NULL, &value)
        if value == NULL:
            return False
        same = value == <PyObject *>peer
        Py_DECREF(<object>value)
        if not same:
            return False
        ready = _get(peer, off[P_READY])
        if ready is not self.ready:
            if not ready.done():
                return False
            self.ready = ready
        core = _get(peer, off[P_CORE])
        if (type(core) is not self.core_type or _true(core, off[C_CLOSED]) or _true(core, off[C_DECODING])
                or not _counts(core, off[C_TRAFFIC])):
            return False
        session = _get(core, off[C_SESSION])
        if (type(session) is not self.session_type or _true(session, off[S_ENABLED])
                or _true(session, off[S_AWAITING_HELLO])):
            return False
        return True

    cdef bint _idle(self, peer, wire) except -1:
        # Reading (above), and nothing else going on: no output queued or being
        # written (the conditions of PeerIO._answer and Connection.answer_now for a
        # sequential call's reply).
        cdef Py_ssize_t *off = self.s.off
        if not self._reading(peer, wire):
            return False
        if not _true(peer, off[P_DIRECT]) or _true(peer, off[P_CALL_WAITERS]):
            return False
        link = _get(peer, off[P_LINK])
        if type(link) is not self.link_type or _true(link, off[L_FLUSH_PENDING]) or _true(link, off[L_CLOSED]):
            return False
        writer = _get(peer, off[P_WRITER])
        if writer is not None and not writer.done():
            return False
        return not self._has_output(_get(peer, off[P_CORE]))

    # ------------------------------------------ the transport's protocol (attach_lane)
    # The lane is the socket's protocol: every read comes here first, from C, and what
    # the lane does not take goes to the transport (_Wire) as if it were the protocol
    # (a Python read callback of ~40 opcodes a call on each side, saved).

    def get_buffer(self, Py_ssize_t sizehint):
        """The shared read buffer while no frame is read in place; else the wire's."""
        cdef Py_ssize_t *off = self.s.off
        wire = self.wire
        if _get(wire, off[W_INTO]) is None:
            reads = _get(wire, off[W_READS])
            if type(reads) is self.reads_type:
                return _get(reads, off[R_VIEW])
        return wire.get_buffer(sizehint)

    def buffer_updated(self, Py_ssize_t nbytes):
        """A read: a lone plain call answered, or a lone answer settled, here; any
        other read is the wire's (``_Wire.buffer_updated``)."""
        cdef Py_ssize_t *off = self.s.off
        wire = self.wire
        if nbytes <= LANE_MAX_READ and _get(wire, off[W_INTO]) is None:
            reads = _get(wire, off[W_READS])
            if type(reads) is self.reads_type and self._serve(_get(reads, off[R_VIEW]), nbytes):
                return
        wire.buffer_updated(nbytes)

    def data_received(self, data):
        self.wire.data_received(data)

    def eof_received(self):
        return self.wire.eof_received()

    def connection_lost(self, exc):
        self.wire.connection_lost(exc)

    def pause_writing(self):
        self.wire.pause_writing()

    def resume_writing(self):
        self.wire.resume_writing()

    # -------------------------------------------------------------------- the lane

    def serve(self, view, Py_ssize_t n):
        """Answer the read ``view[:n]`` if it is a lone plain call the lane takes:
        True when it did (the read is handled), False when nothing was done."""
        return self._serve(view, n)

    cdef bint _serve(self, view, Py_ssize_t n) except -1:
        cdef Py_buffer *pb
        cdef const unsigned char *p
        cdef unsigned char m[_LANE_MAX_IN]
        cdef Py_ssize_t length, q, k, plen, nlen, cost, taken
        cdef uint64_t fid, v
        cdef unsigned char b1
        cdef Py_ssize_t *off = self.s.off
        if not PyMemoryView_Check(view):
            return False
        pb = PyMemoryView_GET_BUFFER(view)
        if n < 2 or n > pb.len:
            return False
        p = <const unsigned char *>pb.buf
        b1 = p[1]
        length = b1 & 0x7F
        if p[0] != 0x82 or length >= 126 or length < 4:
            return False
        if self.masked:
            if b1 != (0x80 | length) or n != 6 + length:
                return False
            _xor_into(m, p + 6, length, p + 2, 0)
        else:
            if b1 != length or n != 2 + length:
                return False
            memcpy(m, p + 2, <size_t>length)
        # One frame, the whole message: a REQUEST or a RESPONSE, raw; its id and
        # payload length.
        if (m[0] != _LANE_REQUEST and m[0] != _LANE_RESPONSE) or m[1] != _LANE_RAW:
            return False
        q = 2
        k = <Py_ssize_t>1 << (m[q] >> 6)
        if q + k > length:
            return False
        fid = _get_varint(m + q, k)
        q += k
        if q >= length:
            return False
        k = <Py_ssize_t>1 << (m[q] >> 6)
        if q + k > length:
            return False
        v = _get_varint(m + q, k)
        q += k
        if v != <uint64_t>(length - q):
            return False
        plen = length - q
        if m[0] == _LANE_RESPONSE:
            return self._settle(m + q, plen, fid, n, length)
        # The method's name: under 64 bytes (a one-byte length), a name seen before.
        if plen < 1 or m[q] >= 0x40 or 1 + m[q] > plen:
            return False
        nlen = m[q]
        cost = plen - 1 - nlen
        peer = self.peer
        wire = self.wire
        try:
            if type(peer) is not self.peer_type or type(wire) is not self.wire_type:
                return False
            # The transport: framing, nothing half read (_Wire.buffer_updated's tests).
            mode = _get(wire, off[W_MODE])
            if mode is not self.framing and mode != self.framing:
                return False
            if _get(wire, off[W_INTO]) is not None or _get(wire, off[W_PARTS]) is not None:
                return False
            if _true(wire, off[W_BUF]):
                return False
            method = self._method(m + q + 1, nlen)
            if method is None or not self._idle(peer, wire):
                return False
            handlers = _get(peer, off[P_HANDLERS])
            if type(handlers) is not self.handlers_type:
                return False
            fn = self._handler(handlers, method)
            if fn is None:
                return False
            core = _get(peer, off[P_CORE])
            calls = _get(core, off[C_CALLS])
            key = PyLong_FromUnsignedLongLong(fid)
            # Last: the call table's admission (CallTable.admit, as take): the call
            # runs from here, or nothing was done.
            if type(calls) is _table_type:
                if not _table_admit(calls, key, cost, 0):
                    return False
            elif not calls.admit(key, cost):
                return False
        except Exception:
            return False  # (the Python path meets the same and says what it is)
        # Taken: the books as the Python path keeps them, then the handler.
        self.served += 1
        try:
            self._books(peer, wire, core, n, length)
            arg = PyBytes_FromStringAndSize(<const char *>m + q + 1 + nlen, cost)
            try:
                result = fn(arg)
            except self.failed as exc:
                peer._lane_result(wire, key, method, fn, arg, None, exc)
                return True
            if not self._answer(peer, core, calls, key, fid, result):
                peer._lane_result(wire, key, method, fn, arg, result, None)
                return True
            fastrpc_set_slot(peer, off[P_PROCESSING], False)
            if _true(peer, off[P_CALL_WAITERS]) and core.can_call():
                peer._call_done()
            # (Past max_output_backlog only if the buffer before the answer and the
            # answer are: the socket's size asked again only then.)
            backlog = _get(peer, off[P_MAX_BACKLOG])
            if _past(self.out_bound, backlog) and self.tcp.get_write_buffer_size() > backlog:
                peer._serve_less_soon(wire)
        except Exception as e:
            fastrpc_set_slot(peer, off[P_PROCESSING], False)
            peer._read_failed(wire, e)
        return True

    def call(self, method, payload):
        """Make the plain raw call ``method(payload)`` and write its REQUEST at once,
        as ``PeerIO._send_call`` and ``Connection.call_now`` do when nothing else
        waits to be written: its id; None, and nothing done, when that path would not
        write it at once (the caller takes it). ``CallTable.call``'s errors."""
        cdef Py_ssize_t *off = self.s.off
        cdef Py_ssize_t flen, head, hlen, plen
        cdef int k
        cdef unsigned char *o
        cdef const unsigned char *mask
        peer = self.peer
        wire = self.wire
        if self.masked or type(peer) is not self.peer_type or type(payload) is not bytes:
            return None  # (a server's calls: not taken here)
        if _get(peer, off[P_TRANSPORT]) is not wire or not _true(peer, off[P_FRESH]):
            return None
        if (not _true(peer, off[P_DIRECT]) or _true(peer, off[P_PROCESSING])
                or _true(peer, off[P_IN_READ])):
            return None
        link = _get(peer, off[P_LINK])
        if type(link) is not self.link_type or _true(link, off[L_FLUSH_PENDING]):
            return None
        writer = _get(peer, off[P_WRITER])
        if writer is not None and not writer.done():
            return None
        core = _get(peer, off[P_CORE])
        if type(core) is not self.core_type or self._has_output(core) or not _counts(core, off[C_TRAFFIC]):
            return None
        session = _get(core, off[C_SESSION])
        if (type(session) is not self.session_type or _true(session, off[S_ENABLED])
                or not _true(session, off[S_HANDSHAKE_SENT])):
            return None
        tcp = self.tcp
        if not self._open():
            return None
        if tcp.get_write_buffer_size() > self.high:
            return None
        mhead = self.heads.get(method)
        if mhead is None:
            mhead = self.method_head(method)
        if type(mhead) is not bytes:
            return None
        hlen = PyBytes_GET_SIZE(mhead)
        plen = PyBytes_GET_SIZE(payload)
        # Connection.call_now (CallTable.call): the call made (its errors raised as
        # they are), its REQUEST written here, not queued, and counted.
        cid = _get(core, off[C_CALLS]).reserve(method, hlen + plen)
        fid = <uint64_t>cid
        flen = 2 + _vsize(fid) + _vsize(<uint64_t>(hlen + plen)) + hlen + plen
        head = 6 if flen < 126 else (8 if flen < 65536 else 14)
        out = PyBytes_FromStringAndSize(NULL, head + flen)
        o = <unsigned char *>PyBytes_AS_STRING(out)
        o[0] = 0x82
        if head == 6:
            o[1] = <unsigned char>(0x80 | flen)
        elif head == 8:
            o[1] = 0x80 | 126
            o[2] = <unsigned char>(flen >> 8)
            o[3] = <unsigned char>flen
        else:
            o[1] = 0x80 | 127
            for k in range(8):
                o[2 + k] = <unsigned char>((<uint64_t>flen) >> (56 - 8 * k))
        mask = _lane_mask()
        memcpy(o + head - 4, mask, 4)
        o += head
        k = _put_header(o, _LANE_REQUEST, _LANE_RAW, fid, <uint64_t>(hlen + plen)) - o
        memcpy(o + k, PyBytes_AS_STRING(mhead), <size_t>hlen)
        memcpy(o + k + hlen, PyBytes_AS_STRING(payload), <size_t>plen)
        _xor_into(o, o, flen, mask, 0)  # (in place: each block read before it is written)
        _traffic(core, off[C_TRAFFIC]).sent(1, flen)
        tcp.write(out)
        fastrpc_set_slot(peer, off[P_FRESH], False)
        streams = _get(peer, off[P_STREAMS])
        if type(streams) is not self.streams_type or _true(streams, off[M_DRAIN_WAITERS]):
            streams.on_drained()
        self.sent += 1
        return cid

    cdef int _books(self, peer, wire, core, Py_ssize_t n, Py_ssize_t length) except -1:
        # What reading a lone message of ``length`` bytes (a read of ``n``) counts,
        # as _Wire._read_slice, PeerIO.message_received, Connection.decode,
        # RpcPeer._process and Connection.take_call / take_answer count it.
        cdef Py_ssize_t *off = self.s.off
        cdef Py_ssize_t taken = PyLong_AsSsize_t(_get(wire, off[W_TAKEN])) + n
        cdef Traffic t
        if taken < self.read_slice:
            fastrpc_set_slot(wire, off[W_TAKEN], PyLong_FromSsize_t(taken))
        else:
            wire._read_slice(n)
        fastrpc_set_slot(peer, off[P_IN_READ], False)
        t = _traffic(core, off[C_TRAFFIC])
        t.messages_in += 1
        t.bytes_in += length
        t.frames_in += 1
        # (Not session.since_ack_bytes: counted with resumption on, which the lane
        # never is; nor message_count, which no call message needs.)
        fastrpc_set_slot(peer, off[P_FRESH], True)
        fastrpc_set_slot(peer, off[P_PROCESSING], True)
        return 0

    cdef object _settle(self, const unsigned char *payload, Py_ssize_t plen, uint64_t fid,
                        Py_ssize_t n, Py_ssize_t length):
        # A lone raw RESPONSE to a pending plain call of ours: the call is over
        # (CallTable.answered_now, as take_answer) and its caller's future gets the
        # bytes (RpcPeer._settle), then _process's tail. True: taken.
        cdef Py_ssize_t *off = self.s.off
        cdef int state
        peer = self.peer
        wire = self.wire
        try:
            if type(peer) is not self.peer_type or type(wire) is not self.wire_type:
                return False
            mode = _get(wire, off[W_MODE])
            if mode is not self.framing and mode != self.framing:
                return False
            if _get(wire, off[W_INTO]) is not None or _get(wire, off[W_PARTS]) is not None:
                return False
            if _true(wire, off[W_BUF]) or not self._reading(peer, wire):
                return False
            core = _get(peer, off[P_CORE])
            futures = _get(peer, off[P_CALLS])
            if type(futures) is not dict:
                return False
            key = PyLong_FromUnsignedLongLong(fid)
            state = _get(core, off[C_CALLS]).answered_now(key)  # last: from here it is taken
            if state < 0:
                return False
        except Exception:
            return False  # (the Python path meets the same and says what it is)
        self.settled += 1
        try:
            self._books(peer, wire, core, n, length)
            try:
                if state:
                    fut = (<dict>futures).pop(key, None)
                    if _true(peer, off[P_CALL_WAITERS]):
                        peer._call_done()
                    if fut is not None and not fut.done():
                        fut.set_result(PyBytes_FromStringAndSize(<const char *>payload, plen))
            finally:
                fastrpc_set_slot(peer, off[P_PROCESSING], False)
            if _true(peer, off[P_CALL_WAITERS]) and core.can_call():
                peer._call_done()
            if _true(core, off[C_CLOSED]) or self._has_output(core):
                peer._kick()
        except Exception as e:
            peer._read_failed(wire, e)
        return True

    cdef bint _answer(self, peer, core, calls, key, uint64_t fid, result) except -1:
        """Write ``result``, the handler's bytes, as the call's RESPONSE at once, as
        ``PeerIO._answer`` does for a sequential call's reply; False (nothing done)
        when that path would not write it at once."""
        cdef Py_ssize_t rlen, flen, head, size
        cdef unsigned char *o
        cdef Py_ssize_t *off = self.s.off
        if type(result) is not bytes or _true(core, off[C_CLOSED]):
            return False
        link = _get(peer, off[P_LINK])
        if type(link) is not self.link_type or _true(link, off[L_CLOSED]) or _true(link, off[L_FLUSH_PENDING]):
            return False
        rlen = PyBytes_GET_SIZE(result)
        flen = 2 + _vsize(fid) + _vsize(<uint64_t>rlen) + rlen
        if flen >= _LANE_MAX_OUT or not self.masked:
            return False  # (a client's lane would write masked frames: not taken here)
        if (_get(peer, off[P_TRANSPORT]) is not self.wire or _true(peer, off[P_IN_READ])
                or not _true(peer, off[P_DIRECT])):
            return False
        writer = _get(peer, off[P_WRITER])
        if writer is not None and not writer.done():
            return False
        if self._has_output(core) or _true(_get(core, off[C_SESSION]), off[S_ENABLED]):
            return False  # (the handler queued output: the answer follows it)
        tcp = self.tcp
        if not self._open():
            return False
        size = tcp.get_write_buffer_size()
        if size > self.high:
            return False
        # Last (CallTable.reply): the call is over, or the answer is past the
        # caller's frame limit and nothing was done (reply sends the error).
        if type(calls) is _table_type:
            if not _table_finish(calls, key, rlen, 0):
                return False
        elif not _py_lane_finish(calls, key, rlen):
            return False
        head = 2 if flen < 126 else 4
        out = PyBytes_FromStringAndSize(NULL, head + flen)
        o = <unsigned char *>PyBytes_AS_STRING(out)
        o[0] = 0x82
        if head == 2:
            o[1] = <unsigned char>flen
        else:
            o[1] = 126
            o[2] = <unsigned char>(flen >> 8)
            o[3] = <unsigned char>flen
        o = _put_header(o + head, _LANE_RESPONSE, _LANE_RAW, fid, <uint64_t>rlen)
        memcpy(o, PyBytes_AS_STRING(result), <size_t>rlen)
        _traffic(core, off[C_TRAFFIC]).sent(1, flen)
        tcp.write(out)
        self.out_bound = size + head + flen
        fastrpc_set_slot(peer, off[P_FRESH], False)
        streams = _get(peer, off[P_STREAMS])
        if type(streams) is not self.streams_type or _true(streams, off[M_DRAIN_WAITERS]):
            streams.on_drained()  # (StreamManager.on_drained: nothing to do without waiters)
        return True


import asyncio as _asyncio


class CallLaneProtocol(CallLane, _asyncio.BufferedProtocol):
    """The lane as the socket's protocol (``_Wire.attach_lane``): asyncio's transports
    call ``get_buffer``/``buffer_updated`` only on a ``BufferedProtocol`` instance."""

    __slots__ = ()
