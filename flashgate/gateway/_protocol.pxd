# C-level API of the HTTP connection (see protocol.py for the theory of operation).

cimport cython


# An answer the app gives later: the purchase path resolves it from C.
@cython.final
cdef class Pending:
    cdef object _value   # the answer's bytes once resolved, else None
    cdef object _proto   # the connection waiting for it (a HttpProtocolCore), or None
    cdef int _fix        # the connection's rewrites for this answer
    cdef object _waiter  # a Future for ``await``, made on demand
    cdef object _then    # called with the answer once given (``then``), or None

    cpdef bint done(self)
    cpdef set_result(self, value)
