# C-level API of the HTTP/1.1 request-head parser (see _http.pyx for the grammar,
# the states and the invariants).

cimport cython


# Scanner states: where the next byte of the head in progress goes.
cdef enum ScanState:
    S_START         # before the request line (empty lines are skipped here)
    S_METHOD        # in the method token
    S_TARGET        # in the request-target
    S_VERSION       # in "HTTP/x.y"
    S_RL_LF         # the request line's CR is seen, its LF must follow
    S_LINE          # at the start of a header line, or of the final empty line
    S_NAME          # in a field name
    S_OWS           # after the colon, skipping leading whitespace
    S_VALUE         # in a field value
    S_HDR_LF        # a header line's CR is seen, its LF must follow
    S_END_LF        # the final empty line's CR is seen, its LF must follow
    S_FAILED        # an error was reported; the parser stays here


# One header line of the head in progress: offsets from the head's first byte.
cdef struct field_span:
    Py_ssize_t name
    Py_ssize_t name_len
    Py_ssize_t value
    Py_ssize_t value_len


@cython.final
cdef class RequestParser:
    # limits (as given)
    cdef readonly Py_ssize_t max_head
    cdef readonly Py_ssize_t max_request_line
    cdef readonly Py_ssize_t max_headers

    # the last complete head (valid after next_head() returned HEAD)
    cdef readonly bytes method
    cdef readonly object path          # str (latin-1) for origin-form, else None
    cdef readonly bytes query          # after "?" for origin-form, else b""
    cdef readonly dict headers         # lower-case name -> value, last one wins
    cdef readonly int version          # 10 or 11
    cdef readonly long long content_length  # -1 when there is no Content-Length
    cdef readonly bint keep_alive
    cdef readonly int flags            # F_* bits
    # why next_head() failed (valid once it returned an error)
    cdef readonly int error
    cdef readonly str reason

    # the byte buffer: _data[_pos:] is not consumed yet (bytes or bytearray)
    cdef object _data
    cdef Py_ssize_t _pos

    # the head in progress; every offset counts from its first byte (_data[_pos])
    cdef ScanState _state
    cdef Py_ssize_t _at                # bytes of the head already scanned
    cdef Py_ssize_t _mark              # start of the token being scanned
    cdef Py_ssize_t _method_len
    cdef int _method_id                # index in _METHODS
    cdef Py_ssize_t _target_start
    cdef Py_ssize_t _target_len
    cdef int _major
    cdef int _minor
    cdef Py_ssize_t _colon             # of the header line being scanned
    cdef Py_ssize_t _value
    cdef Py_ssize_t _value_end
    cdef field_span *_fields           # complete header lines (_nfields of _cap)
    cdef Py_ssize_t _nfields
    cdef Py_ssize_t _cap
    cdef int _hflags                   # H_* bits gathered from the header lines
    cdef unsigned long long _cl        # value of Content-Length (when H_CL)
    cdef Py_ssize_t _te                # field index of the last Transfer-Encoding
    cdef int _nte                      # how many Transfer-Encoding lines
    cdef bytes _target                 # raw target of a head not in origin-form
    cdef bint _has_query               # origin-form target with a "?"

    cpdef feed(self, object data)
    cpdef object take(self, Py_ssize_t n)
    cdef int _next(self) except -100
    cdef int _scan(self, const unsigned char *head, Py_ssize_t avail) noexcept
    cdef int _check_target(self, const unsigned char *t, Py_ssize_t n) noexcept
    cdef int _version_byte(self, unsigned char c, Py_ssize_t k) noexcept
    cdef int _field_done(self, const unsigned char *head) noexcept
    cdef int _head_done(self, const unsigned char *head) except -100
    cdef int _fail(self, int code, str reason) noexcept
    cdef void _reset(self) noexcept


# One parsed request, as the connection hands it to the app (the parts the parser
# found, its body, and who sent it). A C type, so the purchase path reads its fields
# without an attribute lookup.
@cython.final
cdef class Request:
    cdef public bytes method       # b"GET"
    cdef public str path           # latin-1 decoded, not percent-decoded, no query
    cdef public bytes query        # raw, without '?'; b"" if none
    cdef public dict headers       # lower-case name -> value (last one wins)
    cdef public bytes body
    cdef public bint keep_alive
    cdef public str peer_ip        # the client's address ("" for unix sockets)
    cdef public object peer        # the connection's client, resolved once (_net.Peer), or None
