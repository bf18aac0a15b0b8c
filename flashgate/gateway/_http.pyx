"""Sans-IO HTTP/1.1 request-head parser (RFC 9112), strict, incremental.

Theory of operation
===================

``RequestParser`` owns a byte buffer. ``feed(data)`` appends what the socket gave;
``next_head()`` looks for one complete request head at the front of the buffer
and either returns ``HEAD`` (the head is consumed and its parts are readable as
attributes), ``NEED_DATA``, or a negative error code (``error``/``reason`` say
why; the parser then stays failed). ``take(n)`` consumes ``n`` body bytes once
they are all buffered. Bodies are framed by Content-Length only: the parser
refuses Transfer-Encoding with a code of its own, the caller decides the rest.

The grammar accepted (a strict subset of RFC 9112 and of what llhttp accepts)::

    head          = *( CRLF ) request-line *( field-line CRLF ) CRLF
    request-line  = method SP request-target SP HTTP-version CRLF
    method        = one of _METHODS (the methods llhttp knows for HTTP; its RTSP
                    ones and PRI, the HTTP/2 preface, are refused)
    request-target= origin-form   : "/" *VCHAR
                  / asterisk-form : "*"
                  / absolute-form : 1*ALPHA "://" 1*server-char [ ("/" / "?") *VCHAR ]
                    (CONNECT: any 1*VCHAR; it is refused after the head anyway)
    HTTP-version  = "HTTP/" DIGIT "." DIGIT   (1.0 and 1.1; 0.9 and 2.0 -> E_VERSION)
    field-line    = field-name ":" *( SP / HTAB ) field-value
    field-name    = 1*tchar
    field-value   = *( VCHAR / obs-text / SP / HTAB )

So: no bare LF, no CR without LF, no obs-fold (a line may not start with SP or
HTAB), no whitespace before the colon, no CTL but HTAB in a value. Like llhttp,
leading whitespace of a value is dropped and trailing whitespace is kept.

Rules everything else follows:

1. **One pass, resumable.** The scanner is a byte-level state machine
   (``ScanState``) run by C loops over the buffer. When the buffer ends mid-head
   it records its state and how far it got (``_at``), and the next call resumes
   there: a head arriving one byte at a time costs O(length), not O(length^2).
   Errors are found at the byte that makes the head invalid (a method at its
   first byte no known method has there), not at the head's end; only the form
   of the request-target is judged when the target ends.

2. **Offsets, not objects.** While scanning, the parser records offsets from the
   head's first byte (``_mark``, ``_colon``, the ``field_span`` array): they stay
   valid when ``feed`` compacts the buffer, because a head is consumed only once
   it is complete. Python objects (method, path, query, headers) are created
   once, when the final empty line is seen; the method is a shared constant.

3. **Limits are byte counts over the raw head.** The scanner never looks further
   than ``max_head`` bytes into a head: a head not complete by then is
   ``E_HEAD_TOO_LARGE``. A request-target longer than ``max_request_line`` is
   ``E_URI_TOO_LONG`` and field line number ``max_headers + 1`` is
   ``E_TOO_MANY_HEADERS``, each as soon as it is seen.

4. **Framing is decided per field line, semantics at the end.** A second
   Content-Length, a bad one, or Content-Length together with Transfer-Encoding
   fail at the line that makes them so. After the last line, in this order:
   CONNECT, a protocol upgrade (``Upgrade`` + ``Connection: upgrade``),
   Transfer-Encoding (``E_CHUNKED`` if it is exactly ``chunked``), and an HTTP
   version other than 1.0/1.1 are refused with distinct codes.

5. **Keep-alive is llhttp's rule.** HTTP/1.1: unless a Connection header lists
   ``close``; HTTP/1.0: only if one lists ``keep-alive``. Connection values must be
   comma-separated tokens (empty elements allowed), over all Connection lines.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.string cimport memcmp

# --------------------------------------------------------------------------- results

# (C constants; the Python names below are the same values.)
cdef enum:
    NEED_DATA_ = 0
    HEAD_ = 1
    # Errors (negative). E_MALFORMED covers every syntax error; ``reason`` says which.
    E_MALFORMED_ = -1
    E_URI_TOO_LONG_ = -2
    E_HEAD_TOO_LARGE_ = -3
    E_TOO_MANY_HEADERS_ = -4
    E_VERSION_ = -5             # HTTP/0.9 or HTTP/2.0 (llhttp parses those)
    E_CONNECT_ = -6
    E_UPGRADE_ = -7
    E_CHUNKED_ = -8             # Transfer-Encoding: chunked (a body we do not accept)
    E_TRANSFER_ENCODING_ = -9   # any other Transfer-Encoding
    # ``flags`` of a complete head
    F_CONNECTION_ = 1           # a Connection header is present
    F_CONTENT_LENGTH_ = 2       # a Content-Length header is present
    F_NOT_ORIGIN_ = 4           # the target is not origin-form ("*" or absolute-form)
    F_HTTP10_ = 8               # HTTP/1.0

NEED_DATA = NEED_DATA_
HEAD = HEAD_
E_MALFORMED = E_MALFORMED_
E_URI_TOO_LONG = E_URI_TOO_LONG_
E_HEAD_TOO_LARGE = E_HEAD_TOO_LARGE_
E_TOO_MANY_HEADERS = E_TOO_MANY_HEADERS_
E_VERSION = E_VERSION_
E_CONNECT = E_CONNECT_
E_UPGRADE = E_UPGRADE_
E_CHUNKED = E_CHUNKED_
E_TRANSFER_ENCODING = E_TRANSFER_ENCODING_
F_CONNECTION = F_CONNECTION_
F_CONTENT_LENGTH = F_CONTENT_LENGTH_
F_NOT_ORIGIN = F_NOT_ORIGIN_
F_HTTP10 = F_HTTP10_

cdef enum:
    CR = 13
    LF = 10
    SP = 32
    HTAB = 9
    MAX_METHOD_LEN = 13  # "GET_PARAMETER"
    FIRST_FIELDS = 16    # field spans allocated up front

# Header-line facts gathered while scanning (_hflags).
cdef enum:
    H_CL = 1             # Content-Length seen
    H_CONNECTION = 2     # Connection seen
    H_CLOSE = 4          # ... listing "close"
    H_KEEP_ALIVE = 8     # ... listing "keep-alive"
    H_CONN_UPGRADE = 16  # ... listing "upgrade"
    H_UPGRADE = 32       # Upgrade seen
    H_TE = 64            # Transfer-Encoding seen

# --------------------------------------------------------------------------- byte classes

cdef enum:
    C_TCHAR = 1          # token character (RFC 9110 5.6.2)
    C_VCHAR = 2          # visible US-ASCII, 0x21-0x7e
    C_FIELD = 4          # field-value content: VCHAR, obs-text, SP, HTAB
    C_METHOD = 8         # what a known method is made of: A-Z, "-" and "_"
    C_SERVER = 16        # authority of an absolute-form target
    C_ALPHA = 32

cdef unsigned char CLASS[256]
cdef unsigned char LOWER[256]


def _init_tables():
    tchar = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    server = b"-._~!$&'()*+,;=:@[]%0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    cdef int c, k
    for c in range(256):
        k = 0
        if c in tchar:
            k |= C_TCHAR
        if 0x21 <= c <= 0x7E:
            k |= C_VCHAR | C_FIELD
        if c >= 0x80 or c == SP or c == HTAB:
            k |= C_FIELD
        if 65 <= c <= 90 or c == 45 or c == 95:
            k |= C_METHOD
        if c in server:
            k |= C_SERVER
        if 65 <= c <= 90 or 97 <= c <= 122:
            k |= C_ALPHA
        CLASS[c] = k
        LOWER[c] = c + 32 if 65 <= c <= 90 else c


_init_tables()

# The methods llhttp accepts in an HTTP request (RTSP's are refused for HTTP/x.y;
# PRI is the HTTP/2 preface, refused here as there). The objects handed out as
# ``method`` are these very bytes objects.
_METHODS = (
    b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
    b"TRACE", b"COPY", b"LOCK", b"MKCOL", b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH",
    b"UNLOCK", b"BIND", b"REBIND", b"UNBIND", b"ACL", b"REPORT", b"MKACTIVITY",
    b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE",
    b"PURGE", b"MKCALENDAR", b"LINK", b"UNLINK", b"SOURCE", b"QUERY",
)  # fmt: skip
# llhttp also knows these, for RTSP (and, quirk, in a request line without a
# version): refused here with a reason of their own.
_RTSP_METHODS = (
    b"DESCRIBE", b"ANNOUNCE", b"SETUP", b"PLAY", b"PAUSE", b"TEARDOWN", b"GET_PARAMETER",
    b"SET_PARAMETER", b"REDIRECT", b"RECORD", b"FLUSH",
)  # fmt: skip
cdef int M_CONNECT = _METHODS.index(b"CONNECT")
cdef tuple METHODS = _METHODS
cdef tuple RTSP_METHODS = _RTSP_METHODS


cdef int _find_method(tuple methods, const unsigned char *p, Py_ssize_t n,
                      bint prefix) noexcept:
    """Index of method p[:n] in ``methods`` (with ``prefix``: of one that starts with
    p[:n], so that a method arriving in pieces is refused at its first wrong byte),
    or -1."""
    cdef bytes m
    cdef int i
    for i in range(len(methods)):
        m = <bytes>methods[i]
        if ((PyBytes_GET_SIZE(m) >= n if prefix else PyBytes_GET_SIZE(m) == n)
                and memcmp(PyBytes_AS_STRING(m), p, n) == 0):
            return i
    return -1


# Field names handed out as shared objects (no allocation, hash computed once):
# the usual ones, grouped by length for the lookup.
_COMMON_NAMES = (
    b"host", b"accept", b"cookie", b"expect", b"origin", b"referer", b"upgrade",
    b"x-user-id", b"connection", b"user-agent", b"content-type", b"authorization",
    b"cache-control", b"content-length", b"accept-encoding", b"accept-language",
    b"x-forwarded-for", b"x-request-id", b"idempotency-key", b"transfer-encoding",
)  # fmt: skip
cdef list NAMES_BY_LEN = [[] for _ in range(32)]
for _name in _COMMON_NAMES:
    NAMES_BY_LEN[len(_name)].append(_name)


cdef bytes _field_name(const unsigned char *p, Py_ssize_t n):
    """The lower-cased field name p[:n]: a shared object for the usual names."""
    cdef bytes name
    cdef char *w
    cdef Py_ssize_t j
    if n < 32:
        for name in <list>NAMES_BY_LEN[n]:
            if _lower_eq(p, n, PyBytes_AS_STRING(name), n):
                return name
    name = PyBytes_FromStringAndSize(NULL, n)
    w = PyBytes_AS_STRING(name)
    for j in range(n):
        w[j] = LOWER[p[j]]
    return name


cdef bint _lower_eq(const unsigned char *p, Py_ssize_t n, const char *lower_name,
                    Py_ssize_t m) noexcept:
    """p[:n], lower-cased, equals the lower-case C string lower_name of length m."""
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if LOWER[p[i]] != <unsigned char>lower_name[i]:
            return False
    return True


cdef bint _absolute_form(const unsigned char *p, Py_ssize_t n) noexcept:
    """1*ALPHA "://" 1*server-char [ ("/" / "?") *VCHAR ]; p[:n] is all VCHAR already."""
    cdef Py_ssize_t i = 0
    while i < n and CLASS[p[i]] & C_ALPHA:
        i += 1
    if i == 0 or n - i < 3 or p[i] != 58 or p[i + 1] != 47 or p[i + 2] != 47:  # "://"
        return False
    i += 3
    cdef Py_ssize_t host = i
    while i < n and CLASS[p[i]] & C_SERVER:
        i += 1
    if i == host:
        return False
    return i == n or p[i] == 47 or p[i] == 63  # end, "/" or "?"


cdef int _connection_tokens(const unsigned char *p, Py_ssize_t n) noexcept:
    """H_CLOSE / H_KEEP_ALIVE / H_CONN_UPGRADE for a Connection value, -1 if it is
    not a comma-separated list of tokens (#token, empty elements allowed)."""
    cdef int found = 0
    cdef Py_ssize_t i = 0, k, start, end
    while i <= n:
        start = i
        while i < n and p[i] != 44:  # ","
            i += 1
        end = i
        i += 1
        while start < end and (p[start] == SP or p[start] == HTAB):
            start += 1
        while end > start and (p[end - 1] == SP or p[end - 1] == HTAB):
            end -= 1
        for k in range(start, end):
            if not CLASS[p[k]] & C_TCHAR:
                return -1
        if _lower_eq(p + start, end - start, b"close", 5):
            found |= H_CLOSE
        elif _lower_eq(p + start, end - start, b"keep-alive", 10):
            found |= H_KEEP_ALIVE
        elif _lower_eq(p + start, end - start, b"upgrade", 7):
            found |= H_CONN_UPGRADE
    return found


cdef class RequestParser:
    """See the module docstring; the stub (_http.pyi) documents the Python API."""

    def __cinit__(self, Py_ssize_t max_head=16384, Py_ssize_t max_request_line=8192,
                  Py_ssize_t max_headers=100):
        if max_head < 1 or max_request_line < 1 or max_headers < 0:
            raise ValueError("limits must be positive")
        self.max_head = max_head
        self.max_request_line = max_request_line
        self.max_headers = max_headers
        self._fields = <field_span *>PyMem_Realloc(NULL, FIRST_FIELDS * sizeof(field_span))
        if self._fields is NULL:
            raise MemoryError()
        self._cap = FIRST_FIELDS
        self._data = b""
        self._pos = 0
        self.method = b""
        self.path = None
        self.query = b""
        self.headers = {}
        self.version = 11
        self.content_length = -1
        self.keep_alive = True
        self.flags = 0
        self.error = 0
        self.reason = ""
        self._reset()

    def __dealloc__(self):
        PyMem_Free(self._fields)

    cdef void _reset(self) noexcept:
        self._state = S_START
        self._at = 0
        self._nfields = 0
        self._hflags = 0
        self._cl = 0
        self._nte = 0

    # ---------------------------------------------------------------- buffer

    cpdef feed(self, object data):
        """Append ``data`` (bytes-like) to the buffer."""
        if type(data) is not bytes:
            data = bytes(data)
        cdef object buf = self._data
        cdef Py_ssize_t size = len(buf)
        if self._pos >= size:
            # Everything before was consumed: hold the caller's bytes, no copy.
            self._data = data
            self._pos = 0
        elif type(buf) is bytes:
            # Unconsumed bytes left (a partial head or body): from now on append to
            # a bytearray, amortised O(1) per byte however small the pieces.
            ba = bytearray(buf[self._pos:])
            ba += data
            self._data = ba
            self._pos = 0
        else:
            if self._pos:
                del buf[:self._pos]  # O(1): bytearray moves its start
                self._pos = 0
            buf += data

    @property
    def buffered(self):
        """Bytes fed and not consumed yet."""
        return len(self._data) - self._pos

    @property
    def started(self):
        """True while a head is in progress (some of it is buffered, not complete)."""
        return self._state != S_START and self._state != S_FAILED

    cpdef object take(self, Py_ssize_t n):
        """Consume and return the next ``n`` bytes, or None while fewer are buffered."""
        cdef object buf = self._data
        cdef Py_ssize_t pos = self._pos, size = len(buf)
        if size - pos < n or n < 0:
            return None
        if pos == 0 and n == size and type(buf) is bytes:
            out = buf  # a chunk that is exactly the body: no copy
        elif type(buf) is bytes:
            out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(buf) + pos, n)
        else:
            out = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(buf) + pos, n)
        self._pos = pos + n
        if self._pos == size:
            self._data = b""
            self._pos = 0
        return out

    # ---------------------------------------------------------------- heads

    def next_head(self):
        """HEAD, NEED_DATA or an error code (< 0); see the module docstring."""
        return self._next()

    def pop_head(self):
        """``next_head()`` for the hot path: the parts of the next complete head as
        one tuple ``(method, path, query, headers, keep_alive, flags,
        content_length)``, or None (then ``error`` is < 0 if it failed)."""
        if self._next() != HEAD_:
            return None
        return (self.method, self.path, self.query, self.headers, self.keep_alive,
                self.flags, self.content_length)

    cdef int _next(self) except -100:
        if self._state == S_FAILED:
            return self.error
        cdef object buf = self._data
        cdef const unsigned char *p
        cdef Py_ssize_t size
        if type(buf) is bytes:
            p = <const unsigned char *>PyBytes_AS_STRING(buf)
            size = PyBytes_GET_SIZE(buf)
        else:
            p = <const unsigned char *>PyByteArray_AS_STRING(buf)
            size = PyByteArray_GET_SIZE(buf)
        cdef Py_ssize_t pos = self._pos
        if self._state == S_START:
            # Empty lines before a request line are skipped (RFC 9112 2.2).
            while size - pos >= 2 and p[pos] == CR and p[pos + 1] == LF:
                pos += 2
            self._pos = pos
            if pos == size or (size - pos == 1 and p[pos] == CR):
                return NEED_DATA_
            if p[pos] == CR or p[pos] == LF:
                return self._fail(E_MALFORMED_, "Empty line before request line is not CRLF")
            self._state = S_METHOD
        cdef int r = self._scan(p + pos, size - pos)
        if r != HEAD_:
            return r
        r = self._head_done(p + pos)
        if r == HEAD_:
            self._pos = pos + self._at
            if self._pos == size:
                self._data = b""
                self._pos = 0
            self._reset()
        return r

    cdef int _fail(self, int code, str reason) noexcept:
        self._state = S_FAILED
        self.error = code
        self.reason = reason
        return code

    cdef int _scan(self, const unsigned char *head, Py_ssize_t avail) noexcept:
        """Run the state machine over head[_at:avail]; HEAD once the final LF is seen."""
        cdef Py_ssize_t limit = avail if avail <= self.max_head else self.max_head
        cdef Py_ssize_t i = self._at
        cdef ScanState st = self._state
        cdef unsigned char c
        cdef int r
        while i < limit:
            c = head[i]
            if st == S_VALUE:
                # The bulk of a head: run over field content.
                while CLASS[c] & C_FIELD:
                    i += 1
                    if i == limit:
                        break
                    c = head[i]
                else:
                    if c == CR:
                        self._value_end = i
                        st = S_HDR_LF
                        i += 1
                        continue
                    return self._fail(E_MALFORMED_, "Bare LF in header value" if c == LF
                                      else "Invalid header value char")
                break
            elif st == S_NAME:
                while CLASS[c] & C_TCHAR:
                    i += 1
                    if i == limit:
                        break
                    c = head[i]
                else:
                    if c == 58:  # ":"
                        self._colon = i
                        st = S_OWS
                        i += 1
                        continue
                    if c == SP or c == HTAB:
                        return self._fail(E_MALFORMED_, "Whitespace before colon in header")
                    return self._fail(E_MALFORMED_, "Invalid header token")
                break
            elif st == S_OWS:
                if c == SP or c == HTAB:
                    i += 1
                else:
                    self._value = i
                    st = S_VALUE
            elif st == S_HDR_LF:
                if c != LF:
                    return self._fail(E_MALFORMED_, "Missing expected LF after header value")
                i += 1
                r = self._field_done(head)
                if r:
                    return r
                st = S_LINE
            elif st == S_LINE:
                if CLASS[c] & C_TCHAR:
                    self._mark = i
                    st = S_NAME
                elif c == CR:
                    st = S_END_LF
                    i += 1
                elif c == SP or c == HTAB:
                    return self._fail(E_MALFORMED_, "Obsolete line folding (obs-fold)")
                elif c == LF:
                    return self._fail(E_MALFORMED_, "Bare LF after header line")
                else:
                    return self._fail(E_MALFORMED_, "Invalid header token")
            elif st == S_END_LF:
                if c != LF:
                    return self._fail(E_MALFORMED_, "Missing expected LF after headers")
                self._at = i + 1
                self._state = S_START
                return HEAD_
            elif st == S_METHOD:
                while CLASS[c] & C_METHOD and i < MAX_METHOD_LEN:
                    i += 1
                    if i == limit:
                        break
                    c = head[i]
                else:
                    if c != SP or i == 0:
                        return self._fail(E_MALFORMED_, "Invalid method encountered")
                    self._method_id = _find_method(METHODS, head, i, False)
                    if self._method_id < 0:
                        if i == 3 and memcmp(head, b"PRI", 3) == 0:
                            return self._fail(E_MALFORMED_, "HTTP/2 connection preface (PRI)")
                        if _find_method(RTSP_METHODS, head, i, False) >= 0:
                            return self._fail(E_MALFORMED_, "RTSP method in an HTTP request")
                        return self._fail(E_MALFORMED_, "Invalid method encountered")
                    self._method_len = i
                    i += 1
                    self._target_start = i
                    st = S_TARGET
                    continue
                if (_find_method(METHODS, head, i, True) < 0
                        and _find_method(RTSP_METHODS, head, i, True) < 0
                        and not (i <= 3 and memcmp(head, b"PRI", i) == 0)):
                    return self._fail(E_MALFORMED_, "Invalid method encountered")
                break
            elif st == S_TARGET:
                while CLASS[c] & C_VCHAR:
                    i += 1
                    if i == limit:
                        break
                    c = head[i]
                else:
                    if c != SP:
                        return self._fail(E_MALFORMED_, "Invalid characters in url")
                    self._target_len = i - self._target_start
                    r = self._check_target(head + self._target_start, self._target_len)
                    if r:
                        return r
                    i += 1
                    self._mark = i
                    st = S_VERSION
                    continue
                break
            elif st == S_VERSION:
                r = self._version_byte(c, i - self._mark)
                if r:
                    return r
                if c == CR:
                    st = S_RL_LF
                i += 1
            elif st == S_RL_LF:
                if c != LF:
                    return self._fail(E_MALFORMED_, "Expected CRLF after version")
                st = S_LINE
                i += 1
            else:  # S_START is handled by next_head, S_FAILED never scans
                return self._fail(E_MALFORMED_, "internal parser state")
        self._at = i
        self._state = st
        if st == S_TARGET and i - self._target_start > self.max_request_line:
            return self._fail(E_URI_TOO_LONG_, "request target too long")
        if limit < avail:
            return self._fail(E_HEAD_TOO_LARGE_, "request head too large")
        return NEED_DATA_

    cdef int _check_target(self, const unsigned char *t, Py_ssize_t n) noexcept:
        if n > self.max_request_line:
            return self._fail(E_URI_TOO_LONG_, "request target too long")
        if n == 0:
            return self._fail(E_MALFORMED_, "Invalid characters in url")
        if t[0] == 47 or self._method_id == M_CONNECT:  # "/": origin-form
            return 0
        if n == 1 and t[0] == 42:  # "*"
            return 0
        if not _absolute_form(t, n):
            return self._fail(E_MALFORMED_, "Invalid request target")
        return 0

    cdef int _version_byte(self, unsigned char c, Py_ssize_t k) noexcept:
        """Byte k of "HTTP/x.y" CR; records the version at the CR."""
        if k < 5:
            if c != b"HTTP/"[k]:
                return self._fail(E_MALFORMED_, "Expected HTTP/")
        elif k == 5 or k == 7:
            if not 48 <= c <= 57:
                return self._fail(E_MALFORMED_, "Invalid HTTP version")
            if k == 5:
                self._major = c - 48
            else:
                self._minor = c - 48
        elif k == 6:
            if c != 46:
                return self._fail(E_MALFORMED_, "Expected dot")
        elif c != CR:
            return self._fail(E_MALFORMED_, "Expected CRLF after version")
        elif not (self._major == 1 and self._minor <= 1 or
                  self._major == 0 and self._minor == 9 or
                  self._major == 2 and self._minor == 0):
            return self._fail(E_MALFORMED_, "Invalid HTTP version")
        return 0

    cdef int _field_done(self, const unsigned char *head) noexcept:
        """A field line ended (its LF was just seen): record it, check framing."""
        cdef Py_ssize_t n = self._nfields
        cdef field_span *f
        if n >= self.max_headers:
            return self._fail(E_TOO_MANY_HEADERS_, "too many headers")
        if n == self._cap:
            f = <field_span *>PyMem_Realloc(self._fields, 2 * self._cap * sizeof(field_span))
            if f is NULL:
                return self._fail(E_HEAD_TOO_LARGE_, "out of memory for headers")
            self._fields = f
            self._cap *= 2
        f = &self._fields[n]
        f.name = self._mark
        f.name_len = self._colon - self._mark
        f.value = self._value
        f.value_len = self._value_end - self._value
        self._nfields = n + 1
        cdef const unsigned char *name = head + f.name
        cdef const unsigned char *value = head + f.value
        cdef Py_ssize_t vlen = f.value_len
        cdef int tokens
        cdef unsigned long long cl = 0
        cdef Py_ssize_t i, end
        if f.name_len == 14 and _lower_eq(name, 14, b"content-length", 14):
            if self._hflags & H_CL:
                return self._fail(E_MALFORMED_, "Duplicate Content-Length")
            if self._hflags & H_TE:
                return self._fail(E_MALFORMED_,
                                  "Transfer-Encoding can't be present with Content-Length")
            end = vlen
            while end and (value[end - 1] == SP or value[end - 1] == HTAB):
                end -= 1
            if end == 0:
                return self._fail(E_MALFORMED_, "Empty Content-Length")
            for i in range(end):
                if not 48 <= value[i] <= 57:
                    return self._fail(E_MALFORMED_, "Invalid character in Content-Length")
                # the same overflow rule as llhttp: the value must fit in 64 bits
                if cl > 0xFFFFFFFFFFFFFFFF // 10 or cl * 10 > 0xFFFFFFFFFFFFFFFF - (value[i] - 48):
                    return self._fail(E_MALFORMED_, "Content-Length overflow")
                cl = cl * 10 + (value[i] - 48)
            self._cl = cl
            self._hflags |= H_CL
        elif f.name_len == 10 and _lower_eq(name, 10, b"connection", 10):
            tokens = _connection_tokens(value, vlen)
            if tokens < 0:
                return self._fail(E_MALFORMED_, "Invalid Connection header value")
            self._hflags |= H_CONNECTION | tokens
        elif f.name_len == 17 and _lower_eq(name, 17, b"transfer-encoding", 17):
            if self._hflags & H_CL:
                return self._fail(E_MALFORMED_,
                                  "Transfer-Encoding can't be present with Content-Length")
            self._hflags |= H_TE
            self._te = n
            self._nte += 1
        elif f.name_len == 7 and _lower_eq(name, 7, b"upgrade", 7):
            self._hflags |= H_UPGRADE
        return 0

    cdef int _head_done(self, const unsigned char *head) except -100:
        """The final empty line is seen: refuse what the head cannot ask for, then
        build the Python objects of a head that is accepted."""
        cdef int hf = self._hflags
        cdef field_span *f
        cdef Py_ssize_t i, end
        if self._method_id == M_CONNECT:
            return self._fail(E_CONNECT_, "CONNECT is not supported")
        if hf & H_UPGRADE and hf & H_CONN_UPGRADE:
            return self._fail(E_UPGRADE_, "protocol upgrade is not supported")
        if hf & H_TE:
            f = &self._fields[self._te]
            end = f.value_len
            while end and (head[f.value + end - 1] == SP or head[f.value + end - 1] == HTAB):
                end -= 1
            if self._nte == 1 and _lower_eq(head + f.value, end, b"chunked", 7):
                return self._fail(E_CHUNKED_, "chunked bodies are not accepted")
            return self._fail(E_TRANSFER_ENCODING_, "unsupported Transfer-Encoding")
        if self._major != 1:
            return self._fail(E_VERSION_, "HTTP version not supported")

        self.method = <bytes>METHODS[self._method_id]
        cdef const unsigned char *t = head + self._target_start
        cdef Py_ssize_t tlen = self._target_len
        cdef int flags = 0
        if t[0] == 47:  # origin-form: split the path from the query
            self._target = None
            i = 0
            while i < tlen and t[i] != 63:  # "?"
                i += 1
            self.path = PyUnicode_DecodeLatin1(<const char *>t, i, NULL)
            self._has_query = i < tlen
            if self._has_query:
                self.query = PyBytes_FromStringAndSize(<const char *>t + i + 1, tlen - i - 1)
            else:
                self.query = b""
        else:
            self.path = None
            self.query = b""
            self._target = PyBytes_FromStringAndSize(<const char *>t, tlen)
            flags |= F_NOT_ORIGIN_

        cdef dict headers = {}
        for i in range(self._nfields):
            f = &self._fields[i]
            headers[_field_name(head + f.name, f.name_len)] = PyBytes_FromStringAndSize(
                <const char *>head + f.value, f.value_len)
        self.headers = headers

        self.version = 10 + self._minor
        if self._minor == 0:
            flags |= F_HTTP10_
            self.keep_alive = hf & H_KEEP_ALIVE != 0
        else:
            self.keep_alive = hf & H_CLOSE == 0
        if hf & H_CONNECTION:
            flags |= F_CONNECTION_
        if hf & H_CL:
            flags |= F_CONTENT_LENGTH_
            self.content_length = <long long>self._cl if self._cl < 0x7FFFFFFFFFFFFFFF \
                else 0x7FFFFFFFFFFFFFFF
        else:
            self.content_length = -1
        self.flags = flags
        return HEAD_

    @property
    def target(self):
        """The raw request-target of the last head."""
        if self._target is not None:
            return self._target
        if self._has_query:
            return self.path.encode("latin-1") + b"?" + self.query
        return self.path.encode("latin-1")


# ------------------------------------------------------------------- the request


@cython.final
cdef class Request:
    """One parsed request, as handed to ``app.handle`` (fields: see _http.pxd)."""

    def __init__(self, method=b"GET", path="/", query=b"", headers=None, body=b"",
                 keep_alive=True, peer_ip="", peer=None):
        self.method = method
        self.path = path
        self.query = query
        self.headers = {} if headers is None else headers
        self.body = body
        self.keep_alive = keep_alive
        self.peer_ip = peer_ip
        self.peer = peer

    def header(self, name: bytes, default=None):
        """Value of header ``name`` (lower-case bytes), or ``default``."""
        return self.headers.get(name, default)

    def __repr__(self):
        return f"<Request {self.method.decode('latin-1')} {self.path!r} from {self.peer_ip!r}>"
