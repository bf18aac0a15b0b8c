"""HTTP/1.1 protocol layer: bytes in, ``Request`` objects to the app, answers out.

Theory of operation
===================

One ``HttpProtocol`` per TCP (or unix) connection. It knows nothing of routing: it
turns bytes into ``Request`` objects, hands each to ``app.handle(request)`` and
writes back the complete response bytes the app returns. Everything follows from a
handful of rules:

1. **One sans-IO parser, pulled.** ``data_received`` feeds the chunk to a
   ``_http.RequestParser`` (strict RFC 9112, proven against llhttp: see
   ``_http.pyx``) and then pulls complete heads out of it, one call each; the
   parser does every byte-level check in C and hands back the method, path,
   query, headers, Content-Length and keep-alive decision. Requests whose body
   is buffered too are dispatched to the app at once, one after another
   (pipelining); an incomplete head or body waits for the next chunk.

2. **Answers leave in request order.** An answer is either ready (``bytes``) or
   pending (an awaitable, wrapped in a future). Ready answers go to ``_out`` while
   ``_queue`` is empty; once one pending answer sits in ``_queue`` every later
   answer, ready or not, queues behind it. A future completing drains ``_queue``
   from the head up to the first answer still pending.

3. **One write per wake-up.** ``_out`` is joined and written once at the end of
   ``data_received`` (or of a drain after a future completed), so N pipelined
   requests in one chunk cost one ``transport.write``. The usual case - one small
   request per chunk answered synchronously - is exactly one write of the app's
   own bytes object (``b"".join`` of a one-element list returns that element).

4. **Closing is an answer like any other.** Errors the protocol detects (malformed
   input, limits, smuggling attempts, timeouts) queue a final error response with
   ``Connection: close`` behind the answers already owed, set ``_closing`` and stop
   parsing (the parsing loop checks ``_closing``). Once the last answer is written the
   connection half-closes (``write_eof``) and lingers briefly, discarding input,
   so the client reads the error instead of a reset; then it closes. A request that
   itself ends the connection (``Connection: close``, HTTP/1.0 without keep-alive)
   goes the same way; bytes pipelined after it are ignored.

5. **No timers per request.** Each protocol keeps plain timestamps: ``_last_rx``
   (last chunk received, or last async answer written) and ``_deadline`` (when the
   head / body in progress, or the linger after a close, must be over). Activity
   is stamped with ``registry.now``, the loop time as of the last sweep, so the
   resolution of every timeout is the sweep interval. The ``ConnectionRegistry``
   sweeps every live protocol about once a second and acts on those (408,
   keep-alive close, linger end).

6. **Reading is paused for exactly three reasons:** the transport's write buffer is
   above ``write_buffer_high`` (``pause_writing``), more than ``max_pipeline``
   answers are owed, or the connection is closing and waits for owed answers.
   ``_update_reading`` is the single place that reconciles them.

7. **Answers are the app's bytes, untouched, except in rare cases** flagged per
   request in ``_fix``: ``Connection: close`` is added when the request ends the
   connection, ``Connection: keep-alive`` for an HTTP/1.0 client that asked for
   it, and the body is cut off for HEAD.

States of the message in progress (``_state``): 0 = between requests, 1 = head
(request line and headers), 2 = body. ``connection_lost`` drops owed answers but
cancels nothing: an app's commit must finish even when its client has gone.

The hot path (one small GET or POST with its body, answered synchronously) is one
``feed`` and two ``next_head`` calls into the parser, one ``Request`` and one
``transport.write``; everything unusual (HEAD, HTTP/1.0, ``Connection``, targets
not in origin-form, a body still to come) is branched off to ``_head_slow`` /
``_body_of`` / ``_read_body`` by testing the parser's flags. What the parser
refuses (syntax, limits, Transfer-Encoding, upgrades, CONNECT, versions) maps
to the same answers as before through ``_PARSE_ERRORS``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from http import HTTPStatus

import orjson
from httptools import HttpParserError, parse_url

from flashgate.gateway._http import _METHODS as _http_methods
from flashgate.gateway._http import (
    E_CHUNKED,
    E_CONNECT,
    E_HEAD_TOO_LARGE,
    E_TOO_MANY_HEADERS,
    E_TRANSFER_ENCODING,
    E_UPGRADE,
    E_URI_TOO_LONG,
    E_VERSION,
    F_CONTENT_LENGTH,
    F_HTTP10,
    F_NOT_ORIGIN,
    RequestParser,
)

__all__ = [
    "ConnectionRegistry",
    "HttpLimits",
    "HttpProtocol",
    "Request",
    "build_response",
    "error_response",
]

log = logging.getLogger("flashgate.http")

ADMIN_PREFIX = "/api/v1/admin/"

# How long a connection closed by the server keeps discarding input after its last
# answer (and the FIN that follows it) before the socket is really closed.
LINGER_SECONDS = 2.0


class HttpLimits:
    """Per-connection limits and timeouts.

    The class attributes are the defaults; any of them can be overridden by keyword
    (``HttpLimits(head_timeout=0.5)``). Unknown names are a TypeError.
    """

    max_head = 16 * 1024  # request line + headers -> 431
    max_request_line = 8 * 1024  # request target -> 414
    max_headers = 100  # header count -> 431
    max_body = 16 * 1024  # -> 413
    max_body_admin = 1024 * 1024  # paths under /api/v1/admin/ -> 413
    max_pipeline = 64  # owed answers per connection before reading pauses
    max_connections = 10000  # per ConnectionRegistry -> 503 + close
    head_timeout = 10.0  # first byte of a head -> end of head, else 408 + close
    body_timeout = 30.0  # end of head -> end of body, else 408 + close
    keepalive_timeout = 75.0  # idle between requests -> close
    write_buffer_high = 256 * 1024  # transport write buffer high-water mark

    _FIELDS = (
        "max_head",
        "max_request_line",
        "max_headers",
        "max_body",
        "max_body_admin",
        "max_pipeline",
        "max_connections",
        "head_timeout",
        "body_timeout",
        "keepalive_timeout",
        "write_buffer_high",
    )

    def __init__(self, **overrides) -> None:
        for name in self._FIELDS:
            setattr(self, name, overrides.pop(name, getattr(type(self), name)))
        if overrides:
            raise TypeError(f"unknown HttpLimits field(s): {', '.join(sorted(overrides))}")

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"HttpLimits({inner})"


class Request:
    """One parsed request, as handed to ``app.handle``."""

    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "peer_ip")

    def __init__(self, method, path, query, headers, body, keep_alive, peer_ip):
        self.method: bytes = method  # b"GET"
        self.path: str = path  # latin-1 decoded, not percent-decoded, no query
        self.query: bytes = query  # raw, without '?'; b"" if none
        self.headers: dict = headers  # lower-case name -> value (last one wins)
        self.body: bytes = body
        self.keep_alive: bool = keep_alive
        self.peer_ip: str = peer_ip  # "" for unix sockets

    def header(self, name: bytes, default=None):
        """Value of header ``name`` (lower-case bytes), or ``default``."""
        return self.headers.get(name, default)

    def __repr__(self) -> str:
        return f"<Request {self.method.decode('latin-1')} {self.path!r} from {self.peer_ip!r}>"


# --------------------------------------------------------------------------- responses

_STATUS_LINES = {
    int(s): b"HTTP/1.1 %d %s\r\n" % (int(s), s.phrase.encode("latin-1")) for s in HTTPStatus
}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status!r}")
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


def _check_field(value: bytes) -> bytes:
    # A CR or LF in a header name or value would let the caller inject headers.
    if 13 in value or 10 in value:
        raise ValueError(f"CR/LF in header field {value!r}")
    return value


def build_response(
    status: int,
    body: bytes = b"",
    content_type: bytes | None = b"application/json",
    headers: tuple | list = (),
    close: bool = False,
) -> bytes:
    """Complete HTTP/1.1 response bytes.

    Status line with the standard reason phrase, ``Content-Type`` (unless
    ``content_type`` is None), ``Content-Length``, the extra ``headers`` (pairs of
    bytes), ``Connection: close`` when ``close``. 1xx, 204 and 304 carry neither a
    body nor a Content-Length, as RFC 9110 requires.
    """
    parts = [_status_line(status)]
    no_body = status < 200 or status == 204 or status == 304
    if content_type is not None and not no_body:
        parts.append(b"Content-Type: " + _check_field(content_type) + b"\r\n")
    if not no_body:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    for name, value in headers:
        parts.append(_check_field(name) + b": " + _check_field(value) + b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if body and not no_body:
        parts.append(body)
    return b"".join(parts)


def error_response(
    status: int, code: str, message: str, headers: tuple | list = (), close: bool = False
) -> bytes:
    """``build_response`` with the API's error body ``{"error": code, "message": message}``."""
    body = orjson.dumps({"error": code, "message": message})
    return build_response(status, body, headers=headers, close=close)


_RESP_500 = error_response(500, "internal", "internal error")
_RESP_503 = error_response(
    503, "unavailable", "too many connections", headers=((b"Retry-After", b"1"),), close=True
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Rewrites applied to an answer before it is written (bit flags in ``_fix``); all rare.
_FIX_CLOSE = 1  # add "Connection: close"; the connection ends after this answer
_FIX_KEEP = 2  # add "Connection: keep-alive" (HTTP/1.0 client that asked for it)
_FIX_HEAD = 4  # HEAD request: drop the body, keep the Content-Length


def _apply_fix(answer: bytes, fix: int) -> bytes:
    end = answer.find(b"\r\n\r\n")
    if end < 0:  # not a response we can edit; send as is
        return answer
    if fix & _FIX_HEAD:
        answer = answer[: end + 4]
    if fix & (_FIX_CLOSE | _FIX_KEEP):
        if b"\r\nconnection:" not in answer[:end].lower():
            cut = answer.find(b"\r\n") + 2
            extra = b"Connection: close\r\n" if fix & _FIX_CLOSE else b"Connection: keep-alive\r\n"
            answer = answer[:cut] + extra + answer[cut:]
    return answer


_new_request = Request.__new__


# What the parser's refusals are answered with (anything else: 400 malformed request).
_PARSE_ERRORS = {
    E_URI_TOO_LONG: (414, "uri_too_long", "request line too long"),
    E_HEAD_TOO_LARGE: (431, "headers_too_large", "request head too large"),
    E_TOO_MANY_HEADERS: (431, "headers_too_large", "too many headers"),
    E_VERSION: (505, "bad_request", "HTTP version not supported"),
    E_CONNECT: (400, "bad_request", "CONNECT is not supported"),
    E_UPGRADE: (400, "bad_request", "protocol upgrade is not supported"),
    E_CHUNKED: (411, "length_required", "chunked bodies are not accepted; send Content-Length"),
    E_TRANSFER_ENCODING: (400, "bad_request", "unsupported Transfer-Encoding"),
}

# Heads that need more than the hot path: not origin-form, HTTP/1.0, a Connection
# header (the parser's flags), or (checked apart) a method other than GET/POST.
_SLOW_FLAGS = ~F_CONTENT_LENGTH
_GET = _http_methods[0]
_POST = _http_methods[1]


# --------------------------------------------------------------------------- registry


class ConnectionRegistry:
    """The live ``HttpProtocol`` instances of one worker.

    Counts them for ``max_connections`` and sweeps them every ``interval`` seconds
    (``start(loop)`` / ``stop()``) to enforce the head, body and keep-alive timeouts
    from the timestamps each protocol keeps; there is no timer per request.
    """

    __slots__ = ("_conns", "_interval", "_loop", "_timer", "now")

    def __init__(self, interval: float = 1.0) -> None:
        # Loop time as of the last sweep: the coarse clock connections stamp their
        # activity with (reading it is cheaper than calling loop.time() per chunk).
        self.now = 0.0
        self._conns: set[HttpProtocol] = set()
        self._interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self):
        return iter(tuple(self._conns))

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the periodic sweep on ``loop`` (default: the running loop)."""
        self.stop()
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self.now = self._loop.time()
        self._timer = self._loop.call_later(self._interval, self._sweep)

    def stop(self) -> None:
        """Stop the sweep. Connections stay open."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sweep(self, now: float | None = None) -> None:
        """Enforce the timeouts once, now (the periodic sweep calls this)."""
        if now is None:
            now = (self._loop or asyncio.get_running_loop()).time()
        self.now = now
        for proto in tuple(self._conns):
            try:
                proto._check_timeouts(now)
            except Exception:  # one broken connection must not stop the sweep
                log.exception("connection sweep failed")

    def _sweep(self) -> None:
        self._timer = self._loop.call_later(self._interval, self._sweep)
        self.sweep(self._loop.time())

    def close_idle(self) -> None:
        """Close every connection with no request in progress (for a graceful drain).

        A connection that is busy is marked so that it closes as soon as it has
        answered what it is working on (its last answer says ``Connection: close``).
        """
        for proto in tuple(self._conns):
            proto._close_when_idle()

    def busy_count(self) -> int:
        """Connections with a request in progress or answers not yet sent."""
        return sum(1 for proto in tuple(self._conns) if proto._is_busy())


# --------------------------------------------------------------------------- protocol


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 server side of one connection. Factory: ``lambda: HttpProtocol(app, limits, registry)``."""

    __slots__ = (
        # wiring
        "_app_handle", "_limits", "_registry", "_transport", "_loop", "_time",
        "_parser", "_feed", "_pop_head", "_peer_ip",
        # limits copied out of HttpLimits for the hot path
        "_head_timeout", "_keepalive_timeout", "_max_pipeline",
        # message in progress
        "_state", "_req", "_body_need", "_body_size", "_body_limit", "_fix", "_conn_fix",
        # answers
        "_out", "_queue",
        # timing and connection state
        "_last_rx", "_deadline", "_closing", "_lingering", "_closed", "_peer_eof",
        "_rpaused", "_wpaused", "_wpaused_at",
    )  # fmt: skip

    def __init__(self, app, limits: HttpLimits, registry: ConnectionRegistry) -> None:
        self._app_handle = app.handle
        self._limits = limits
        self._registry = registry
        self._transport = None
        self._loop = None
        self._time = None
        parser = RequestParser(limits.max_head, limits.max_request_line, limits.max_headers)
        self._parser = parser
        self._feed = parser.feed
        self._pop_head = parser.pop_head
        self._peer_ip = ""

        self._head_timeout = limits.head_timeout
        self._keepalive_timeout = limits.keepalive_timeout
        self._max_pipeline = limits.max_pipeline

        self._state = 0
        self._req: Request | None = None  # the request whose body is awaited (state 2)
        self._body_need = 0  # its Content-Length
        self._body_size = 0  # body bytes received so far
        self._body_limit = limits.max_body
        self._fix = 0
        self._conn_fix = 0  # _FIX_CLOSE once a graceful drain asked this connection to end

        self._out: list[bytes] = []
        self._queue: collections.deque = collections.deque()

        self._last_rx = 0.0
        self._deadline = 0.0  # 0.0 = no deadline running
        self._closing = False  # no more requests: close once the owed answers are out
        self._lingering = False  # FIN sent, discarding input until EOF or the deadline
        self._closed = False  # connection_lost seen (or never registered)
        self._peer_eof = False
        self._rpaused = False
        self._wpaused = False
        self._wpaused_at = 0.0

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport) -> None:
        self._transport = transport
        loop = self._loop = asyncio.get_running_loop()
        self._time = loop.time
        self._last_rx = loop.time()
        peer = transport.get_extra_info("peername")
        self._peer_ip = peer[0] if isinstance(peer, tuple) and peer else ""
        registry = self._registry
        if not registry.now:  # registry not started yet: give its clock a sane origin
            registry.now = self._last_rx
        if len(registry) >= self._limits.max_connections:
            # Over the per-worker cap: say so and go. Never registered, never swept.
            self._closing = self._closed = True
            transport.write(_RESP_503)
            transport.close()
            return
        transport.set_write_buffer_limits(high=self._limits.write_buffer_high)
        registry._conns.add(self)

    def connection_lost(self, exc) -> None:
        # Owed answers are dropped; the app's awaitables keep running to completion
        # (their done callback sees _closed and only logs failures).
        self._closed = self._closing = True
        self._registry._conns.discard(self)
        self._queue.clear()
        self._out.clear()
        self._state = 0
        self._deadline = 0.0
        self._req = None
        self._parser = self._feed = self._pop_head = None  # drop the buffered input

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

    def pause_writing(self) -> None:
        self._wpaused = True
        self._wpaused_at = self._time()
        self._update_reading()

    def resume_writing(self) -> None:
        self._wpaused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # closing or lingering: input is ignored
        self._last_rx = self._registry.now
        self._feed(data)
        try:
            if self._state != 2 or self._read_body():
                self._read_requests()
        except Exception:
            log.exception("unexpected error while parsing a request")
            self._reject(500, "internal", "internal error")
        out = self._out
        if out:
            # Everything that became ready while parsing this chunk, in one write
            # (b"".join of a single answer is that answer, not a copy).
            self._transport.write(b"".join(out))
            out.clear()
            if self._closing and not self._queue:
                self._finish()

    # ---------------------------------------------------------------- parsing

    def _read_requests(self) -> None:
        """Dispatch every complete request buffered, in order; stop at an incomplete one.

        The hot path: a GET/POST in origin-form, HTTP/1.1, no Connection header,
        and its Content-Length body (if any) already here.
        """
        parser = self._parser
        pop_head = self._pop_head
        while not self._closing:
            head = pop_head()
            if head is None:
                if parser.error:
                    self._parse_failed(parser.error)
                elif not self._state and parser.started:
                    # A head has begun: it must be complete within head_timeout.
                    self._state = 1
                    self._deadline = self._last_rx + self._head_timeout
                return
            self._state = 0
            self._fix = self._conn_fix
            # Request() without its Python __init__: about half the cost per request.
            req = _new_request(Request)
            method, req.path, req.query, req.headers, keep_alive, flags, n = head
            req.method = method
            req.keep_alive = keep_alive
            req.peer_ip = self._peer_ip
            if (
                flags & _SLOW_FLAGS
                or not keep_alive
                or (method is not _GET and method is not _POST)  # the parser's constants
            ):
                if not self._head_slow(req):
                    return
            if n > 0:
                body = self._body_of(req, n)
                if body is None:
                    return  # refused, or wait for the rest of the body
                req.body = body
            else:
                req.body = b""
            if self._dispatch(req):
                return  # the request ended the connection: ignore what follows

    def _head_slow(self, req: Request) -> bool:
        """The unusual parts of a head; False when it is refused."""
        parser = self._parser
        flags = parser.flags
        if req.method == b"HEAD":
            self._fix |= _FIX_HEAD
        if not req.keep_alive:
            self._fix |= _FIX_CLOSE
        elif flags & F_HTTP10:  # an HTTP/1.0 client that asked for keep-alive
            self._fix |= _FIX_KEEP
        if not flags & F_NOT_ORIGIN:
            return True  # origin-form: path and query are the parser's
        target = parser.target
        if target == b"*":  # asterisk-form (OPTIONS *)
            req.path, req.query = "*", b""
            return True
        # absolute-form; authority-form is CONNECT only (the parser refuses it)
        try:
            parsed = parse_url(target)
        except HttpParserError:
            parsed = None
        if parsed is None or not parsed.schema:
            self._reject(400, "bad_request", "invalid request target")
            return False
        req.path = (parsed.path or b"/").decode("latin-1")
        req.query = parsed.query or b""
        return True

    def _body_of(self, req: Request, n: int) -> bytes | None:
        """The body of ``req`` (Content-Length ``n`` > 0) if it is all buffered; else
        None, with the request refused (413) or waiting in state 2."""
        limits = self._limits
        limit = limits.max_body_admin if req.path.startswith(ADMIN_PREFIX) else limits.max_body
        if n > limit:
            self._reject(413, "payload_too_large", "request body too large")
            return None
        expect = req.headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue":
            self._push(_CONTINUE)
        body = self._parser.take(n)
        if body is None:
            self._state = 2
            self._req = req
            self._body_need = n
            self._body_limit = limit
            self._deadline = self._last_rx + limits.body_timeout
            self._body_size = self._parser.buffered  # (< n)
        return body

    def _read_body(self) -> bool:
        """State 2: True once the body is complete and its request dispatched."""
        parser = self._parser
        n = self._body_need
        size = parser.buffered
        if size > n:
            size = n
        self._body_size = size
        if size > self._body_limit:
            self._reject(413, "payload_too_large", "request body too large")
            return False
        if size < n:
            return False
        self._state = 0  # (_deadline is only looked at while _state or _lingering)
        req = self._req
        self._req = None
        req.body = parser.take(n)
        return not self._dispatch(req)

    def _dispatch(self, req: Request) -> bool:
        """Hand ``req`` to the app and queue its answer; True if it ends the connection."""
        try:
            answer = self._app_handle(req)
        except Exception:
            log.exception("request handler failed: %r", req)
            answer = _RESP_500
        fix = self._fix
        if fix:
            self._answer_fixed(answer, fix)
            return fix & _FIX_CLOSE != 0
        if type(answer) is bytes and not self._queue:
            self._out.append(answer)
        else:
            self._enqueue(answer, 0)
        return False

    def _parse_failed(self, code: int) -> None:
        status, error, message = _PARSE_ERRORS.get(code) or (
            400,
            "bad_request",
            "malformed request: " + self._parser.reason,
        )
        self._reject(status, error, message)

    # ---------------------------------------------------------------- answers

    def _answer_fixed(self, answer, fix: int) -> None:
        """Queue the answer of a request whose response needs rewriting."""
        if fix & _FIX_CLOSE:
            self._closing = True
            self._update_reading()
        if type(answer) is bytes:
            self._push(_apply_fix(answer, fix))
        else:
            self._enqueue(answer, fix)

    def _push(self, data: bytes) -> None:
        """Append ready bytes behind everything owed so far."""
        if self._queue:
            self._queue.append(data)
        else:
            self._out.append(data)

    def _enqueue(self, answer, fix: int) -> None:
        if type(answer) is bytes or isinstance(answer, (bytearray, memoryview)):
            entry = _apply_fix(bytes(answer), fix) if fix else bytes(answer)
        else:
            try:
                fut = asyncio.ensure_future(answer)
            except TypeError:
                log.error("request handler returned %r, not bytes or an awaitable", type(answer))
                entry = _apply_fix(_RESP_500, fix) if fix else _RESP_500
            else:
                fut.add_done_callback(self._on_answer_done)
                entry = (fut, fix)
        if not self._queue and type(entry) is bytes:
            self._out.append(entry)
            return
        self._queue.append(entry)
        if len(self._queue) > self._max_pipeline and not self._rpaused:
            self._update_reading()

    def _on_answer_done(self, fut: asyncio.Future) -> None:
        # Always look at the outcome, so a failure is logged once even when the
        # client has gone (and asyncio does not complain about it later).
        if not fut.cancelled():
            exc = fut.exception()
            if exc is not None:
                log.error("request handler failed", exc_info=exc)
        if self._closed:
            return
        self._drain()

    def _drain(self) -> None:
        """Move answers from the head of the queue to the wire, in order."""
        queue = self._queue
        out = self._out
        while queue:
            entry = queue[0]
            if type(entry) is not bytes:
                fut, fix = entry
                if not fut.done():
                    break
                entry = self._result_of(fut)
                if fix:
                    entry = _apply_fix(entry, fix)
            out.append(entry)
            queue.popleft()
        if self._rpaused:
            self._update_reading()
        if out:
            self._last_rx = self._time()  # keep-alive idle time starts now
            self._write_out()

    @staticmethod
    def _result_of(fut: asyncio.Future) -> bytes:
        if fut.cancelled() or fut.exception() is not None:
            return _RESP_500
        res = fut.result()
        if type(res) is bytes:
            return res
        if isinstance(res, (bytearray, memoryview)):
            return bytes(res)
        log.error("request handler resolved to %r, not bytes", type(res))
        return _RESP_500

    def _write_out(self) -> None:
        out = self._out
        data = b"".join(out)  # the element itself when there is only one
        out.clear()
        self._transport.write(data)
        if self._closing and not self._queue:
            self._finish()

    # ---------------------------------------------------------------- closing

    def _reject(self, status: int, code: str, message: str) -> None:
        """Owe a final error answer, then close. Parsing stops (``_closing``)."""
        if self._closing:
            return
        self._closing = True
        self._state = 0
        self._deadline = 0.0
        self._push(error_response(status, code, message, close=True))
        self._update_reading()

    def _finish(self) -> None:
        """Everything owed is written: half-close, then linger briefly discarding input."""
        if self._lingering or self._closed:
            return
        transport = self._transport
        self._deadline = 0.0
        if self._peer_eof or not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        transport.write_eof()
        self._deadline = self._time() + LINGER_SECONDS
        self._update_reading()

    def _update_reading(self) -> None:
        """Pause or resume reading to match the three reasons for pausing."""
        if self._closed:
            return
        n = len(self._queue)
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
            return
        self._rpaused = want
        try:
            if want:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()
        except (RuntimeError, AttributeError):  # transport closing
            pass

    # ---------------------------------------------------------------- registry hooks

    def _check_timeouts(self, now: float) -> None:
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
            not self._queue and not self._closing and now - self._last_rx >= self._keepalive_timeout
        ):
            self._transport.close()

    def _close_when_idle(self) -> None:
        if self._closed or self._lingering:
            return
        if self._state:
            # Mid-request: its answer will carry Connection: close and end it.
            self._conn_fix |= _FIX_CLOSE
            self._fix |= _FIX_CLOSE
        elif self._queue:
            # Answers still owed, no request being read: the last one says
            # Connection: close, and the connection ends once it is written.
            queue = self._queue
            tail = queue[-1]
            if type(tail) is bytes:
                queue[-1] = _apply_fix(tail, _FIX_CLOSE)
            else:
                queue[-1] = (tail[0], tail[1] | _FIX_CLOSE)
            self._closing = True
            self._update_reading()
        elif not self._closing:
            self._closing = True
            self._transport.close()

    def _is_busy(self) -> bool:
        if self._closed:
            return False
        if self._state or self._queue:
            return True
        return bool(self._transport.get_write_buffer_size())
