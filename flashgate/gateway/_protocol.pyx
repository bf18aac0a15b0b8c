"""``HttpProtocol``: the HTTP/1.1 connection state machine, compiled, with typed state
and ``cdef`` methods. Import it from ``flashgate.gateway.protocol``.

``protocol.py`` holds the theory of operation (its module docstring, which this class
follows rule by rule) and the helpers that are not on the hot path (``Request``,
``ConnectionRegistry``, ``HttpLimits``, the response builders, the answer rewriting
and the table of parse errors); they are imported from there, not copied. How the
work is done here:

* the parser is ``cimport``-ed: the next head is pulled with its C ``_next()`` and
  its parts are read as C attributes, not as a tuple built per request;
* ``feed`` of a chunk and ``take`` of a body are the parser's ``cpdef`` methods,
  direct C calls on its final class;
* the per-connection flags and counters are C fields.

``HttpProtocol`` (bottom of the file) is a Python subclass of the compiled
``HttpProtocolCore`` and of ``asyncio.Protocol``, so ``isinstance`` checks and
``asyncio`` transports see an ordinary protocol; it adds no state.

The answers an app may give besides bytes are compiled here too: ``Pending`` (an
answer given later) and ``Stream`` (a response written frame by frame, rule 9).
"""

import asyncio
import logging

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

from httptools import HttpParserError, parse_url

from flashgate.gateway._http cimport Request, RequestParser, S_FAILED, S_START

from flashgate.gateway import _http
from flashgate.gateway.proxyproto import ProxyHeaderError, parse as parse_proxy_header
from flashgate.gateway.protocol import (
    _CONTINUE,
    _FIX_CLOSE as _PY_FIX_CLOSE,
    _FIX_HEAD as _PY_FIX_HEAD,
    _FIX_HTTP10 as _PY_FIX_HTTP10,
    _FIX_KEEP as _PY_FIX_KEEP,
    _PARSE_ERRORS,
    _RESP_500,
    _RESP_503,
    ADMIN_PREFIX,
    LINGER_SECONDS,
    ConnectionRegistry,
    HttpLimits,
    _apply_fix,
    _check_stream_head,
    error_response,
)

# ConnectionRegistry and HttpLimits are re-exported, so that a worker switches with
# one import line: from flashgate.gateway._protocol import ConnectionRegistry, ...
__all__ = [
    "ConnectionRegistry", "HttpLimits", "HttpProtocol", "HttpProtocolCore", "Pending", "Stream",
    "on_refused", "send_all",
]

log = logging.getLogger("flashgate.http")

# RequestParser._next() results (the parser's private enum: HEAD_ = 1).
cdef enum:
    HEAD_ = 1

# Parser flags, as C ints.
cdef int F_CONTENT_LENGTH = _http.F_CONTENT_LENGTH
cdef int F_HTTP10 = _http.F_HTTP10
cdef int F_NOT_ORIGIN = _http.F_NOT_ORIGIN
# Heads that need more than the hot path (see protocol.py's _SLOW_FLAGS).
cdef int SLOW_FLAGS = ~F_CONTENT_LENGTH

# Answer rewrites (bit flags in _fix), the values protocol.py uses.
cdef int FIX_CLOSE = _PY_FIX_CLOSE
cdef int FIX_KEEP = _PY_FIX_KEEP
cdef int FIX_HEAD = _PY_FIX_HEAD
cdef int FIX_HTTP10 = _PY_FIX_HTTP10

# The parser's method constants: the hot path tests identity, as protocol.py does.
cdef object GET = _http._METHODS[0]
cdef object POST = _http._METHODS[1]

cdef bytes RESP_500 = _RESP_500
cdef bytes RESP_503 = _RESP_503
cdef bytes CONTINUE = _CONTINUE
cdef str ADMIN = ADMIN_PREFIX
cdef double LINGER = LINGER_SECONDS
cdef object ensure_future = asyncio.ensure_future

# Why a Stream ended (the reason given to its on_close; compared by identity here).
cdef str CLOSED = "closed"  # the app's close(), or a HEAD request (the head was all)
cdef str OVERFLOW = "overflow"  # a frame would have passed max_buffer: the subscriber is dropped
cdef str DISCONNECT = "disconnect"  # the connection was lost
cdef str SHUTDOWN = "shutdown"  # the server drains (ConnectionRegistry.close_idle)

# hook(peer_ip, status, size) of every answer the connection gives without the app
# (a malformed, too large or too slow request: _reject, _reject_with), or None; set by
# on_refused (the access log)
cdef object _refused = None


def on_refused(hook):
    """Call ``hook(peer_ip, status, size)`` for every answer a connection gives a
    request the app never saw (400 malformed, 408, 413, a refusal from the head); None:
    no call."""
    global _refused
    if hook is not None and not callable(hook):
        raise TypeError("the hook must be callable or None")
    _refused = hook


cdef int _tell_refused(str peer_ip, bytes answer) except -1:
    try:
        _refused(peer_ip, int(answer[9:12]), len(answer))
    except Exception:
        log.exception("the refusals' hook failed")
    return 0


cdef bytes TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"
cdef bytes LAST_CHUNK = b"0\r\n\r\n"
cdef const char *HEX = b"0123456789abcdef"


# ------------------------------------------------------------------- parser buffer


cdef inline Py_ssize_t _buffered(RequestParser parser):
    return len(parser._data) - parser._pos


cdef object _result_of(object fut):
    """A completed future's answer: its bytes, a ``Stream``, or the 500 answer."""
    if fut.cancelled() or fut.exception() is not None:
        return RESP_500
    res = fut.result()
    if type(res) is bytes or type(res) is Stream:
        return res
    if isinstance(res, (bytearray, memoryview)):
        return bytes(res)
    log.error("request handler resolved to %r, not bytes", type(res))
    return RESP_500


# ------------------------------------------------------------------- pending answers


cdef class HttpProtocolCore


@cython.final
cdef class Pending:
    """An answer the app gives later: ``set_result(bytes)`` once. The purchase path's
    light stand-in for an ``asyncio.Future``: the connection that owes it is told at
    once, in the call (no loop callback per answer); ``done()`` / ``result()`` as a
    Future's, and ``await pending`` works too (for app coroutines). Its fields are
    declared in _protocol.pxd: C callers resolve it without a Python call."""

    cpdef bint done(self):
        return self._value is not None

    def result(self):
        if self._value is None:
            raise asyncio.InvalidStateError("answer not given yet")
        return self._value

    cpdef set_result(self, value):
        if self._value is not None:
            raise asyncio.InvalidStateError("answer given twice")
        if type(value) is not bytes:
            if isinstance(value, (bytearray, memoryview)):
                value = bytes(value)
            else:
                log.error("request handler resolved to %r, not bytes", type(value))
                value = RESP_500
        self._value = value
        proto = self._proto
        if proto is not None:
            self._proto = None
            try:
                (<HttpProtocolCore>proto)._answered()
            except Exception:  # the connection's trouble, never the caller's
                log.exception("writing an answer failed")
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(value)
        then = self._then
        if then is not None:
            self._then = None
            try:
                then(value)
            except Exception:
                log.exception("a Pending's callback failed")

    def then(self, callback):
        """Call ``callback(answer)`` once the answer is given (at once if it is); one
        callback per Pending (a second replaces the first)."""
        if self._value is not None:
            callback(self._value)
        else:
            self._then = callback

    def __await__(self):
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
            if self._value is not None:
                self._waiter.set_result(self._value)
        return self._waiter.__await__()


# ------------------------------------------------------------------- streams


cdef bytes _chunk(bytes data):
    """``data`` as one HTTP/1.1 chunk: hex size, CRLF, data, CRLF (one copy)."""
    cdef Py_ssize_t n = len(data)
    cdef Py_ssize_t digits = 1
    cdef size_t v = <size_t>n >> 4
    while v:
        digits += 1
        v >>= 4
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, digits + n + 4)
    cdef char *p = PyBytes_AS_STRING(frame)
    cdef Py_ssize_t i = digits - 1
    v = <size_t>n
    while i >= 0:
        p[i] = HEX[v & 15]
        v >>= 4
        i -= 1
    p[digits] = 13
    p[digits + 1] = 10
    memcpy(p + digits + 2, PyBytes_AS_STRING(data), n)
    p[digits + 2 + n] = 13
    p[digits + 3 + n] = 10
    return frame


cdef class Stream:
    """A response written frame by frame (rule 9 of protocol.py): return it from
    ``app.handle`` like any answer, then ``send`` frames and ``close`` it.

    ``head`` is the status line and header fields, ending with the empty line, with
    no Content-Length, Transfer-Encoding or Connection (``build_stream_head`` makes
    one): the connection frames the body as chunks for HTTP/1.1 and by closing the
    connection for HTTP/1.0; for a HEAD request it writes the head alone and the
    stream ends at once. ``max_buffer`` bounds the bytes the stream has queued and
    not yet handed to the kernel; ``on_close(stream, reason)`` is called once, in
    the call that ends the stream, with ``"closed"``, ``"overflow"``,
    ``"disconnect"`` or ``"shutdown"``."""

    cdef bytes _head  # the app's head, unframed
    cdef readonly Py_ssize_t max_buffer
    cdef object _on_close  # cleared once called
    cdef HttpProtocolCore _proto  # the connection, from attachment until the stream ends
    cdef int _fix  # the connection's rewrites for the head (FIX_*)
    cdef list _frames  # payloads sent before the stream reached the head of its queue
    cdef Py_ssize_t _buffered  # their total size
    cdef bint _attached  # returned as the answer to a request (once only)
    cdef bint _live  # its head is written: frames go straight to the transport
    cdef bint _chunked  # framed as chunks (HTTP/1.1), else close-delimited (HTTP/1.0)
    cdef object _reason  # None while open, else why it ended (one of the str above)

    def __init__(self, head, Py_ssize_t max_buffer=256 * 1024, on_close=None):
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        if on_close is not None and not callable(on_close):
            raise TypeError("on_close must be callable or None")
        self._head = _check_stream_head(head)
        self.max_buffer = max_buffer
        self._on_close = on_close
        self._proto = None
        self._fix = 0
        self._frames = []
        self._buffered = 0
        self._attached = self._live = False
        self._chunked = True
        self._reason = None

    @property
    def closed(self):
        """True once the stream has ended (``send`` refuses frames from then on)."""
        return self._reason is not None

    @property
    def reason(self):
        """Why the stream ended, or None while it is open."""
        return self._reason

    @property
    def transport(self):
        """The connection's transport once the stream answers a request (and until it
        ends), else None: for socket options (a bound on the kernel's buffer)."""
        return self._proto._transport if self._proto is not None else None

    @property
    def buffered(self):
        """Payload bytes held by the stream until it reaches the head of its queue."""
        return self._buffered

    @property
    def status(self):
        """The status code of its head."""
        return int(self._head[9:12])

    @property
    def head_size(self):
        """The size of its head as the app gave it."""
        return len(self._head)

    def send(self, data):
        """Queue one frame; False (nothing queued) once the stream has ended, or when
        this frame would pass ``max_buffer`` (the stream then ends with "overflow" and
        its connection is aborted). An empty frame is a no-op. Never blocks."""
        if self._reason is not None:
            return False
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"a frame is bytes, not {type(data).__name__}")
            data = bytes(data)
        cdef Py_ssize_t n = len(<bytes>data)
        if n == 0:
            return True  # (an empty chunk would end the body)
        if self._live:
            transport = self._proto._transport
            frame = _chunk(<bytes>data) if self._chunked else data
            if transport.get_write_buffer_size() + len(frame) > self.max_buffer:
                self._end(OVERFLOW)
                return False
            transport.write(frame)
            return True
        if self._buffered + n > self.max_buffer:
            self._end(OVERFLOW)
            return False
        self._frames.append(data)
        self._buffered += n
        return True

    def close(self):
        """End the stream normally: what it queued is still written, then the last
        chunk (HTTP/1.1; the connection carries on) or the connection's close
        (HTTP/1.0). Idempotent."""
        self._end(CLOSED)

    def __repr__(self):
        state = "open" if self._reason is None else self._reason
        return f"<Stream {self._head[9:12].decode('latin-1')} {state}>"

    cdef int _end(self, str reason) except -1:
        """End the stream once: tell its connection, then ``on_close``."""
        if self._reason is not None:
            return 0
        self._reason = reason
        proto = self._proto
        self._proto = None
        if proto is not None and not proto._closed:
            try:
                if reason is OVERFLOW:
                    self._frames = []
                    self._buffered = 0
                    proto._drop()
                elif self._live:
                    proto._stream_done(self)
                # (otherwise it is still queued: its frames go out when it gets there)
            except Exception:  # the connection's trouble, never the caller's
                log.exception("ending a stream failed")
        elif reason is not CLOSED and reason is not SHUTDOWN:
            self._frames = []
            self._buffered = 0
        callback = self._on_close
        if callback is not None:
            self._on_close = None
            try:
                callback(self, reason)
            except Exception:
                log.exception("a stream's on_close failed")
        return 0

    cdef bytes _framed_head(self, int fix):
        """The head as written: the framing header, then the connection's rewrites."""
        head = self._head
        if self._chunked:
            cut = head.find(b"\r\n") + 2
            head = head[:cut] + TE_CHUNKED + head[cut:]
        if fix & (FIX_CLOSE | FIX_KEEP):
            head = _apply_fix(head, fix)
        return head


def send_all(streams, data):
    """``send(data)`` to every Stream of ``streams`` (a list), the chunk framed once
    for all: one frame fanned out to many subscribers, the same bytes to each (a stream
    that would pass its bound ends with "overflow", as in ``send``). Returns how many
    took it."""
    if type(data) is not bytes:
        raise TypeError(f"a frame is bytes, not {type(data).__name__}")
    if not data:
        return len(streams)
    cdef bytes chunk = _chunk(<bytes>data)
    cdef Py_ssize_t size = len(chunk)
    cdef Stream stream
    cdef Py_ssize_t sent = 0
    for obj in streams:
        stream = <Stream?>obj
        if stream._reason is not None:
            continue
        if stream._live and stream._chunked:
            transport = stream._proto._transport
            if transport.get_write_buffer_size() + size > stream.max_buffer:
                stream._end(OVERFLOW)
                continue
            transport.write(chunk)
            sent += 1
        elif stream.send(data):
            sent += 1
    return sent


# ------------------------------------------------------------------- protocol


cdef class HttpProtocolCore:
    """The state machine of ``protocol.HttpProtocol``; use ``HttpProtocol`` below."""

    # wiring
    cdef object _app_handle
    cdef object _app_head  # app.head_answer: a refusal from the head of a request with a body under ADMIN
    cdef readonly object _limits
    cdef readonly object _registry
    cdef readonly object _transport
    cdef readonly object _loop
    cdef object _time
    cdef readonly RequestParser _parser
    cdef readonly str _peer_ip
    cdef readonly object _peer  # app.peer_of(_peer_ip): the client, resolved once
    cdef object _app_peer_of
    cdef readonly object _proxy_buf  # bytes so far while a PROXY header is owed, else None
    # limits copied out of HttpLimits for the hot path
    cdef readonly double _head_timeout
    cdef readonly double _keepalive_timeout
    cdef readonly Py_ssize_t _max_pipeline
    # message in progress: 0 = between requests, 1 = head, 2 = body
    cdef readonly int _state
    cdef readonly object _req  # the request whose body is awaited (state 2)
    cdef readonly long long _body_need  # its Content-Length
    cdef readonly long long _body_size  # body bytes received so far
    cdef public object _body_limit
    cdef readonly int _fix
    cdef readonly int _conn_fix  # FIX_CLOSE once a graceful drain asked this connection to end
    # answers: ready bytes for this wake-up's write; owed answers behind a pending one
    cdef readonly list _out
    # answers owed, in request order: bytes, Pending or Stream. A list, not a deque:
    # at most --max-pipeline entries (popping the head moves a few pointers), and an
    # empty list is 56 bytes against a deque's 760, on every idle connection
    cdef readonly list _queue
    # timing and connection state
    cdef readonly double _last_rx
    cdef readonly double _deadline  # 0.0 = no deadline running
    cdef readonly bint _closing  # no more requests: close once the owed answers are out
    cdef readonly bint _lingering  # FIN sent, discarding input until EOF or the deadline
    cdef readonly bint _closed  # connection_lost seen (or never registered)
    cdef readonly bint _peer_eof
    cdef readonly bint _rpaused
    cdef readonly bint _wpaused
    cdef readonly double _wpaused_at

    def __init__(self, app, limits, registry):
        self._app_handle = app.handle
        self._app_head = getattr(app, "head_answer", None)
        self._app_peer_of = getattr(app, "peer_of", None)
        self._peer = None
        self._limits = limits
        self._registry = registry
        self._transport = None
        self._loop = None
        self._time = None
        self._parser = RequestParser(limits.max_head, limits.max_request_line,
                                     limits.max_headers)
        self._peer_ip = ""
        self._proxy_buf = None

        self._head_timeout = limits.head_timeout
        self._keepalive_timeout = limits.keepalive_timeout
        self._max_pipeline = limits.max_pipeline

        self._state = 0
        self._req = None
        self._body_need = 0
        self._body_size = 0
        self._body_limit = limits.max_body
        self._fix = 0
        self._conn_fix = 0

        self._out = []
        self._queue = []

        self._last_rx = 0.0
        self._deadline = 0.0
        self._closing = False
        self._lingering = False
        self._closed = False
        self._peer_eof = False
        self._rpaused = False
        self._wpaused = False
        self._wpaused_at = 0.0

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport):
        self._transport = transport
        loop = self._loop = asyncio.get_running_loop()
        self._time = loop.time
        self._last_rx = loop.time()
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else ""
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]  # an IPv4 peer on a dual-stack socket: one address, one form
        self._peer_ip = ip
        if self._app_peer_of is not None:
            self._peer = self._app_peer_of(ip)
        registry = self._registry
        if not registry.now:  # registry not started yet: give its clock a sane origin
            registry.now = self._last_rx
        if len(registry) >= self._limits.max_connections:
            # Over the per-worker cap: say so and go. Never registered, never swept.
            self._closing = self._closed = True
            transport.write(RESP_503)
            transport.close()
            return
        transport.set_write_buffer_limits(high=self._limits.write_buffer_high)
        registry._conns.add(self)
        proxies = self._limits.proxy_protocol_from
        if proxies and self._peer_ip in proxies:
            # A load balancer's connection: it owes a PROXY header before any HTTP
            # byte (see proxyproto.py). Until its first byte the connection is idle
            # like any other (balancers open connections ahead of their clients).
            self._proxy_buf = b""

    def connection_lost(self, exc):
        # Owed answers are dropped; the app's awaitables keep running to completion
        # (their done callback sees _closed and only logs failures).
        self._closed = self._closing = True
        self._registry._conns.discard(self)
        queue = self._queue
        streams = [entry for entry in queue if type(entry) is Stream] if queue else None
        queue.clear()
        self._out.clear()
        self._state = 0
        self._deadline = 0.0
        self._req = None
        self._parser = None  # drop the buffered input
        if streams:
            for stream in streams:
                (<Stream>stream)._end(DISCONNECT)

    def eof_received(self):
        self._peer_eof = True
        if self._queue:
            # A stream is never done: a client that closes its side has left it (an
            # EventSource never half-closes). It ends now (what it had queued still goes
            # out when its turn comes), so the answers owed after it are sent too.
            for entry in [e for e in self._queue if type(e) is Stream]:
                (<Stream>entry)._end(DISCONNECT)
            if self._closed:
                return False
        if self._lingering or self._closing and not self._queue:
            return False  # close now
        if self._queue:
            # The client half-closed after its requests: still send what is owed.
            self._closing = True
            self._state = 0
            self._deadline = 0.0
            return True
        return False  # nothing owed (a partial request is abandoned): close

    def pause_writing(self):
        self._wpaused = True
        self._wpaused_at = self._time()
        self._update_reading()

    def resume_writing(self):
        self._wpaused = False
        self._update_reading()

    def data_received(self, data):
        if self._closing:
            return  # closing or lingering: input is ignored
        self._last_rx = self._registry.now
        if self._proxy_buf is not None:
            data = self._proxy_header(data)
            if not data:  # header incomplete or refused, or nothing after it yet
                if self._out:
                    self._write_out()
                return
        self._parser.feed(data)
        try:
            if self._state != 2 or self._read_body():
                self._read_requests()
        except Exception:
            log.exception("unexpected error while parsing a request")
            self._reject(500, "internal", "internal error")
        if self._out:
            # everything that became ready while parsing this chunk, in one write
            self._write_out()

    # ---------------------------------------------------------------- parsing

    cdef object _proxy_header(self, data):
        """Consume the PROXY header owed at the start of the connection: the bytes
        that follow it, or None while it is incomplete or once it was refused."""
        buf = self._proxy_buf + bytes(data)
        try:
            found = parse_proxy_header(buf)
        except ProxyHeaderError as exc:
            self._proxy_buf = None
            self._reject(400, "bad_request", str(exc))
            return None
        if found is None:
            self._proxy_buf = buf
            if not self._state:  # begun: it must be complete within head_timeout
                self._state = 1
                self._deadline = self._last_rx + self._head_timeout
            return None
        size, address = found
        self._proxy_buf = None
        if address is not None:
            self._peer_ip = address
            if self._app_peer_of is not None:
                self._peer = self._app_peer_of(address)
        self._state = 0
        self._deadline = 0.0
        return buf[size:]

    cdef int _read_requests(self) except -1:
        """Dispatch every complete request buffered, in order; stop at an incomplete one."""
        cdef RequestParser parser = self._parser
        cdef Request req
        cdef int flags
        cdef long long n
        cdef bint keep_alive
        while not self._closing:
            if parser._next() != HEAD_:
                if parser.error:
                    self._parse_failed(parser.error)
                elif not self._state and parser._state != S_START and parser._state != S_FAILED:
                    # A head has begun: it must be complete within head_timeout.
                    self._state = 1
                    self._deadline = self._last_rx + self._head_timeout
                return 0
            self._state = 0
            self._fix = self._conn_fix
            # Request() without its Python __init__, its fields set in C
            req = <Request>Request.__new__(Request)
            method = parser.method
            keep_alive = parser.keep_alive
            flags = parser.flags
            n = parser.content_length
            req.method = method
            req.path = parser.path
            req.query = parser.query
            req.headers = parser.headers
            req.keep_alive = keep_alive
            req.peer_ip = self._peer_ip
            req.peer = self._peer
            if (
                flags & SLOW_FLAGS
                or not keep_alive
                or (method is not GET and method is not POST)  # the parser's constants
            ):
                if not self._head_slow(req, flags):
                    return 0
            if n > 0:
                body = self._body_of(req, <dict>parser.headers, n)
                if body is None:
                    return 0  # refused, or wait for the rest of the body
                req.body = body
            else:
                req.body = b""
            if self._dispatch(req):
                return 0  # the request ended the connection: ignore what follows
        return 0

    cdef int _head_slow(self, req, int flags) except -1:
        """The unusual parts of a head; 0 when it is refused."""
        if req.method == b"HEAD":
            self._fix |= FIX_HEAD
        if flags & F_HTTP10:  # (and keep-alive only if it asked for it)
            self._fix |= FIX_HTTP10 | (FIX_KEEP if req.keep_alive else FIX_CLOSE)
        elif not req.keep_alive:
            self._fix |= FIX_CLOSE
        if not flags & F_NOT_ORIGIN:
            return 1  # origin-form: path and query are the parser's
        target = self._parser.target
        if target == b"*":  # asterisk-form (OPTIONS *)
            req.path, req.query = "*", b""
            return 1
        # absolute-form; authority-form is CONNECT only (the parser refuses it)
        try:
            parsed = parse_url(target)
        except HttpParserError:
            parsed = None
        if parsed is None or not parsed.schema:
            self._reject(400, "bad_request", "invalid request target")
            return 0
        req.path = (parsed.path or b"/").decode("latin-1")
        req.query = parsed.query or b""
        return 1

    cdef object _body_of(self, req, dict headers, long long n):
        """The body of ``req`` (Content-Length ``n`` > 0; ``headers`` is its
        ``req.headers``) if it is all buffered; else None, with the request refused
        (413) or waiting in state 2."""
        limits = self._limits
        cdef str path = req.path  # (the target's, or _head_slow's for other forms)
        cdef bint admin = path.startswith(ADMIN)
        if admin and self._app_head is not None:
            # the operator's paths are refused from the head: a stranger's body is never
            # read (and is not measured either: 401 whatever its size)
            refusal = self._app_head(req)
            if refusal is not None:
                self._reject_with(refusal)
                return None
        limit = limits.max_body_admin if admin else limits.max_body
        if n > limit:
            self._reject(413, "payload_too_large", "request body too large")
            return None
        expect = headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue":
            self._push(CONTINUE)
        body = self._parser.take(n)
        if body is None:
            self._state = 2
            self._req = req
            self._body_need = n
            self._body_limit = limit
            self._deadline = self._last_rx + limits.body_timeout
            self._body_size = _buffered(self._parser)  # (< n)
        return body

    cdef int _read_body(self) except -1:
        """State 2: 1 once the body is complete and its request dispatched."""
        cdef RequestParser parser = self._parser
        cdef long long n = self._body_need
        cdef long long size = _buffered(parser)
        if size > n:
            size = n
        self._body_size = size
        if size > self._body_limit:
            self._reject(413, "payload_too_large", "request body too large")
            return 0
        if size < n:
            return 0
        self._state = 0  # (_deadline is only looked at while _state or _lingering)
        req = self._req
        self._req = None
        req.body = parser.take(n)
        return not self._dispatch(req)

    cdef int _dispatch(self, req) except -1:
        """Hand ``req`` to the app and queue its answer; 1 if it ends the connection."""
        try:
            answer = self._app_handle(req)
        except Exception:
            log.exception("request handler failed: %r", req)
            answer = RESP_500
        cdef int fix = self._fix
        if fix:
            self._answer_fixed(answer, fix)
            return fix & FIX_CLOSE != 0
        if type(answer) is bytes and not self._queue:
            self._out.append(answer)
        else:
            self._enqueue(answer, 0)
        return 0

    cdef int _parse_failed(self, int code) except -1:
        status, error, message = _PARSE_ERRORS.get(code) or (
            400,
            "bad_request",
            "malformed request: " + self._parser.reason,
        )
        self._reject(status, error, message)
        return 0

    # ---------------------------------------------------------------- answers

    cdef int _answer_fixed(self, answer, int fix) except -1:
        """Queue the answer of a request whose response needs rewriting."""
        if fix & FIX_CLOSE:
            self._closing = True
            self._update_reading()
        if type(answer) is bytes:
            self._push(_apply_fix(answer, fix))
        else:
            self._enqueue(answer, fix)
        return 0

    cdef int _push(self, data) except -1:
        """Append ready bytes behind everything owed so far."""
        if self._queue:
            self._queue.append(data)
        else:
            self._out.append(data)
        return 0

    cdef int _enqueue(self, answer, int fix) except -1:
        cdef Pending pending
        if type(answer) is Pending:
            pending = <Pending>answer
            if pending._value is None:
                pending._proto = self
                pending._fix = fix
                entry = pending
            else:
                entry = _apply_fix(pending._value, fix) if fix else pending._value
        elif type(answer) is bytes:
            entry = _apply_fix(answer, fix) if fix else answer
        elif type(answer) is Stream:
            entry = self._adopt(<Stream>answer, fix)
        elif isinstance(answer, (bytearray, memoryview)):
            entry = _apply_fix(bytes(answer), fix) if fix else bytes(answer)
        else:
            try:
                fut = ensure_future(answer)
            except TypeError:
                log.error("request handler returned %r, not bytes or an awaitable", type(answer))
                entry = _apply_fix(RESP_500, fix) if fix else RESP_500
            else:
                fut.add_done_callback(self._on_answer_done)
                entry = (fut, fix)
        queue = self._queue
        if not queue and type(entry) is bytes:
            self._out.append(entry)
            return 0
        queue.append(entry)
        if len(queue) > self._max_pipeline and not self._rpaused:
            self._update_reading()
        if len(queue) == 1 and type(entry) is Stream:
            self._drain()  # a stream at the head: its head goes out now (rule 9)
        return 0

    cdef object _adopt(self, Stream stream, int fix):
        """Attach a Stream returned as an answer; the entry to queue for it: the
        stream, or the bytes that answer it whole (HEAD, or a 500 for a reused one)."""
        if stream._attached:
            log.error("request handler returned a Stream that already answered a request")
            return _apply_fix(RESP_500, fix) if fix else RESP_500
        stream._attached = True
        stream._chunked = not fix & FIX_HTTP10
        if fix & FIX_HEAD:  # the head is the whole answer
            stream._frames = []
            stream._buffered = 0
            stream._end(CLOSED)
            return stream._framed_head(fix)
        if not stream._chunked:  # HTTP/1.0: the body ends with the connection
            fix |= FIX_CLOSE
            if not self._closing:
                self._closing = True
                self._update_reading()
        stream._fix = fix
        if stream._reason is None:
            stream._proto = self
            if self._conn_fix & FIX_CLOSE:  # the server drains: no stream may start
                stream._end(SHUTDOWN)
        elif stream._reason is OVERFLOW:  # overflowed before it was returned
            self._drop()
        return stream

    cdef int _answered(self) except -1:
        # a Pending this connection owes was resolved
        if not self._closed:
            self._drain()
        return 0

    def _on_answer_done(self, fut):
        # Always look at the outcome, so a failure is logged once even when the
        # client has gone (and asyncio does not complain about it later).
        if not fut.cancelled():
            exc = fut.exception()
            if exc is not None:
                log.error("request handler failed", exc_info=exc)
            elif type(fut.result()) is Stream and self._closed:
                (<Stream>fut.result())._end(DISCONNECT)  # its client left before it began
        if self._closed:
            return
        self._drain()

    cdef int _drain(self) except -1:
        """Move answers from the head of the queue to the wire, in order."""
        queue = self._queue
        cdef list out = self._out
        cdef int fix
        while queue:
            entry = queue[0]
            if type(entry) is Pending:
                if (<Pending>entry)._value is None:
                    break
                fix = (<Pending>entry)._fix
                entry = (<Pending>entry)._value
                if fix:
                    entry = _apply_fix(entry, fix)
            elif type(entry) is not bytes:
                if type(entry) is Stream:
                    if self._stream_at_head(<Stream>entry, out):
                        break  # it writes on its own until it ends
                    del queue[0]
                    continue
                fut = (<tuple>entry)[0]
                fix = (<tuple>entry)[1]
                if not fut.done():
                    break
                entry = _result_of(fut)
                if type(entry) is Stream:
                    queue[0] = self._adopt(<Stream>entry, fix)
                    continue
                if fix:
                    entry = _apply_fix(entry, fix)
            out.append(entry)
            del queue[0]
        if self._rpaused:
            self._update_reading()
        if out:
            self._last_rx = self._registry.now  # keep-alive idle time starts now
            self._write_out()
        return 0

    cdef int _stream_at_head(self, Stream stream, list out) except -1:
        """``stream`` heads the queue: put its head and buffered frames in ``out``.
        1 while it stays at the head (now live, or dropped), 0 once all of it is out."""
        if stream._live or stream._reason is OVERFLOW:
            return 1
        cdef bint chunked = stream._chunked
        out.append(stream._framed_head(stream._fix))
        if stream._buffered:
            data = b"".join(stream._frames)
            out.append(_chunk(data) if chunked else data)
        stream._frames = []
        stream._buffered = 0
        if stream._reason is None:
            stream._live = True
            return 1
        if chunked:  # it ended before it got here (closed by the app, or the drain)
            out.append(LAST_CHUNK)
        return 0

    cdef int _stream_done(self, Stream stream) except -1:
        """The live stream at the head of the queue ended normally: end its body and
        let the answers behind it go."""
        queue = self._queue
        if not queue or queue[0] is not stream:  # (cannot happen: a live stream heads it)
            log.error("a live stream was not at the head of its connection's queue")
            return 0
        del queue[0]
        if stream._chunked:
            self._out.append(LAST_CHUNK)
        self._last_rx = self._registry.now
        self._drain()  # one write; it finishes the connection if that was the last answer
        if not stream._chunked:
            self._finish()  # close-delimited: the FIN ends the body (nothing queued behind)
        return 0

    cdef int _drop(self) except -1:
        """A stream overflowed its bound: its client is cut off, with whatever else the
        connection owed (connection_lost follows)."""
        self._closing = True
        self._transport.abort()
        return 0

    cdef int _write_out(self) except -1:
        # a single answer is written as the app's own bytes object, several joined
        cdef list out = self._out
        if len(out) == 1:
            data = out[0]
        else:
            data = b"".join(out)
        out.clear()
        self._transport.write(data)
        if self._closing and not self._queue:
            self._finish()
        return 0

    # ---------------------------------------------------------------- closing

    cdef int _reject(self, int status, str code, str message) except -1:
        """Owe a final error answer, then close. Parsing stops (``_closing``)."""
        if self._closing:
            return 0
        self._closing = True
        self._state = 0
        self._deadline = 0.0
        answer = error_response(status, code, message, close=True)
        self._push(answer)
        if _refused is not None:
            _tell_refused(self._peer_ip, answer)
        self._update_reading()
        return 0

    cdef int _reject_with(self, bytes answer) except -1:
        """Owe the app's final answer to a request it refused from its head (its body
        is not read), then close, as ``_reject``."""
        if self._closing:
            return 0
        self._closing = True
        self._state = 0
        self._deadline = 0.0
        self._push(_apply_fix(answer, FIX_CLOSE | self._fix))
        if _refused is not None:
            _tell_refused(self._peer_ip, answer)
        self._update_reading()
        return 0

    cdef int _finish(self) except -1:
        """Everything owed is written: half-close, then linger briefly discarding input."""
        if self._lingering or self._closed:
            return 0
        transport = self._transport
        self._deadline = 0.0
        if self._peer_eof or not transport.can_write_eof():
            transport.close()
            return 0
        self._lingering = True
        transport.write_eof()
        self._deadline = self._time() + LINGER
        self._update_reading()
        return 0

    cdef int _update_reading(self) except -1:
        """Pause or resume reading to match the three reasons for pausing."""
        if self._closed:
            return 0
        cdef Py_ssize_t n = len(self._queue)
        cdef bint want
        if self._lingering:
            want = False  # read (and discard) so the peer's close is seen
        elif self._wpaused or self._closing:
            want = True
        elif n > self._max_pipeline:
            want = True
        elif n < self._max_pipeline:
            want = False
        else:
            want = self._rpaused
        if want == self._rpaused:
            return 0
        self._rpaused = want
        try:
            if want:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()
        except (RuntimeError, AttributeError):  # transport closing
            pass
        return 0

    # ---------------------------------------------------------------- registry hooks

    def _check_timeouts(self, double now):
        if self._closed:
            return
        if self._lingering:
            if now >= self._deadline:
                self._transport.close()
        elif self._state:
            if now >= self._deadline:
                self._reject(408, "request_timeout", "request not received in time")
                if self._out:
                    self._write_out()
        elif self._wpaused:
            if now - self._wpaused_at >= self._keepalive_timeout:
                self._transport.abort()  # the client stopped reading long ago
        elif (
            not self._queue and not self._closing
            and now - self._last_rx >= self._keepalive_timeout
        ):
            self._transport.close()

    def _close_when_idle(self):
        if self._closed or self._lingering:
            return
        # No stream may start from now on; the open ones end (last chunk sent), so
        # the drain is not held up by a response that never ends.
        self._conn_fix |= FIX_CLOSE
        if self._queue:
            self._end_streams(SHUTDOWN)
            if self._closed or self._lingering:
                return
        if self._state:
            # Mid-request: its answer will carry Connection: close and end it.
            self._conn_fix |= FIX_CLOSE
            self._fix |= FIX_CLOSE
        elif self._queue:
            # Answers still owed, no request being read: the last one says
            # Connection: close, and the connection ends once it is written.
            queue = self._queue
            last = len(queue) - 1  # (compiled with wraparound=False: no queue[-1])
            tail = queue[last]
            if type(tail) is bytes:
                queue[last] = _apply_fix(tail, FIX_CLOSE)
            elif type(tail) is Pending:
                (<Pending>tail)._fix |= FIX_CLOSE
            elif type(tail) is Stream:  # (ended above; not begun, or it was not the tail)
                (<Stream>tail)._fix |= FIX_CLOSE
            else:
                queue[last] = (tail[0], tail[1] | FIX_CLOSE)
            self._closing = True
            self._update_reading()
        elif not self._closing:
            self._closing = True
            self._transport.close()

    cdef int _end_streams(self, str reason) except -1:
        """End every stream this connection owes, in order."""
        for entry in tuple(self._queue):
            if type(entry) is Stream:
                (<Stream>entry)._end(reason)
        return 0

    def _is_busy(self):
        if self._closed:
            return False
        if self._state or self._queue:
            return True
        return bool(self._transport.get_write_buffer_size())


class HttpProtocol(HttpProtocolCore, asyncio.Protocol):
    """HTTP/1.1 server side of one connection. Factory: ``lambda: HttpProtocol(app, limits, registry)``."""

    __slots__ = ()
