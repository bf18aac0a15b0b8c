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
"""

import asyncio
import collections
import logging


from httptools import HttpParserError, parse_url

from flashgate.gateway._http cimport RequestParser, S_FAILED, S_START

from flashgate.gateway import _http
from flashgate.gateway.proxyproto import ProxyHeaderError, parse as parse_proxy_header
from flashgate.gateway.protocol import (
    _CONTINUE,
    _FIX_CLOSE as _PY_FIX_CLOSE,
    _FIX_HEAD as _PY_FIX_HEAD,
    _FIX_KEEP as _PY_FIX_KEEP,
    _PARSE_ERRORS,
    _RESP_500,
    _RESP_503,
    ADMIN_PREFIX,
    LINGER_SECONDS,
    ConnectionRegistry,
    HttpLimits,
    Request,
    _apply_fix,
    error_response,
)

# ConnectionRegistry and HttpLimits are re-exported, so that a worker switches with
# one import line: from flashgate.gateway._protocol import ConnectionRegistry, ...
__all__ = ["ConnectionRegistry", "HttpLimits", "HttpProtocol", "HttpProtocolCore", "Pending"]

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

# The parser's method constants: the hot path tests identity, as protocol.py does.
cdef object GET = _http._METHODS[0]
cdef object POST = _http._METHODS[1]

cdef object new_request = Request.__new__
cdef object RequestType = Request
cdef bytes RESP_500 = _RESP_500
cdef bytes RESP_503 = _RESP_503
cdef bytes CONTINUE = _CONTINUE
cdef str ADMIN = ADMIN_PREFIX
cdef double LINGER = LINGER_SECONDS
cdef object ensure_future = asyncio.ensure_future
cdef object deque = collections.deque


# ------------------------------------------------------------------- parser buffer


cdef inline Py_ssize_t _buffered(RequestParser parser):
    return len(parser._data) - parser._pos


cdef bytes _result_of(object fut):
    if fut.cancelled() or fut.exception() is not None:
        return RESP_500
    res = fut.result()
    if type(res) is bytes:
        return <bytes>res
    if isinstance(res, (bytearray, memoryview)):
        return bytes(res)
    log.error("request handler resolved to %r, not bytes", type(res))
    return RESP_500


# ------------------------------------------------------------------- pending answers


cdef class Pending:
    """An answer the app gives later: ``set_result(bytes)`` once. The purchase path's
    light stand-in for an ``asyncio.Future``: the connection that owes it is told at
    once, in the call (no loop callback per answer); ``done()`` / ``result()`` as a
    Future's, and ``await pending`` works too (for app coroutines)."""

    cdef object _value  # the answer's bytes once resolved, else None
    cdef object _proto  # the connection waiting for it (a HttpProtocolCore), or None
    cdef int _fix  # the connection's rewrites for this answer
    cdef object _waiter  # a Future for ``await``, made on demand

    def done(self):
        return self._value is not None

    def result(self):
        if self._value is None:
            raise asyncio.InvalidStateError("answer not given yet")
        return self._value

    def set_result(self, value):
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
                proto._answer_ready()
            except Exception:  # the connection's trouble, never the caller's
                log.exception("writing an answer failed")
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def __await__(self):
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
            if self._value is not None:
                self._waiter.set_result(self._value)
        return self._waiter.__await__()


# ------------------------------------------------------------------- protocol


cdef class HttpProtocolCore:
    """The state machine of ``protocol.HttpProtocol``; use ``HttpProtocol`` below."""

    # wiring
    cdef object _app_handle
    cdef readonly object _limits
    cdef readonly object _registry
    cdef readonly object _transport
    cdef readonly object _loop
    cdef object _time
    cdef readonly RequestParser _parser
    cdef readonly str _peer_ip
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
    cdef readonly object _queue  # collections.deque of bytes or (future, fix)
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
        self._queue = deque()

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
        self._queue.clear()
        self._out.clear()
        self._state = 0
        self._deadline = 0.0
        self._req = None
        self._parser = None  # drop the buffered input

    def eof_received(self):
        self._peer_eof = True
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
        self._state = 0
        self._deadline = 0.0
        return buf[size:]

    cdef int _read_requests(self) except -1:
        """Dispatch every complete request buffered, in order; stop at an incomplete one."""
        cdef RequestParser parser = self._parser
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
            # Request() without its Python __init__: about half the cost per request.
            req = new_request(RequestType)
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
        if not req.keep_alive:
            self._fix |= FIX_CLOSE
        elif flags & F_HTTP10:  # an HTTP/1.0 client that asked for keep-alive
            self._fix |= FIX_KEEP
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
        limit = limits.max_body_admin if path.startswith(ADMIN) else limits.max_body
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
        elif type(answer) is bytes or isinstance(answer, (bytearray, memoryview)):
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
        return 0

    def _answer_ready(self):
        # a Pending this connection owes was resolved
        if not self._closed:
            self._drain()

    def _on_answer_done(self, fut):
        # Always look at the outcome, so a failure is logged once even when the
        # client has gone (and asyncio does not complain about it later).
        if not fut.cancelled():
            exc = fut.exception()
            if exc is not None:
                log.error("request handler failed", exc_info=exc)
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
                fut = (<tuple>entry)[0]
                fix = (<tuple>entry)[1]
                if not fut.done():
                    break
                entry = _result_of(fut)
                if fix:
                    entry = _apply_fix(entry, fix)
            out.append(entry)
            queue.popleft()
        if self._rpaused:
            self._update_reading()
        if out:
            self._last_rx = self._registry.now  # keep-alive idle time starts now
            self._write_out()
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
        self._push(error_response(status, code, message, close=True))
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
            else:
                queue[last] = (tail[0], tail[1] | FIX_CLOSE)
            self._closing = True
            self._update_reading()
        elif not self._closing:
            self._closing = True
            self._transport.close()

    def _is_busy(self):
        if self._closed:
            return False
        if self._state or self._queue:
            return True
        return bool(self._transport.get_write_buffer_size())


class HttpProtocol(HttpProtocolCore, asyncio.Protocol):
    """HTTP/1.1 server side of one connection. Factory: ``lambda: HttpProtocol(app, limits, registry)``."""

    __slots__ = ()
