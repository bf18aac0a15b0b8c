"""HTTP/1.1 protocol layer: bytes in, ``Request`` objects to the app, answers out.

Theory of operation
===================

One ``HttpProtocol`` per TCP (or unix) connection; the class is compiled Cython
(``_protocol.pyx``, typed state and ``cdef`` methods) and is imported from here, with
the helpers below that it shares. It knows nothing of routing: it
turns bytes into ``Request`` objects, hands each to ``app.handle(request)`` and
writes back the complete response bytes the app returns, or the frames of a
``Stream`` it returns (rule 9). Everything follows from a handful of rules:

1. **One sans-IO parser, pulled.** ``data_received`` feeds the chunk to a
   ``_http.RequestParser`` (strict RFC 9112, proven against llhttp: see
   ``_http.pyx``) and then pulls complete heads out of it, one call each; the
   parser does every byte-level check in C and hands back the method, path,
   query, headers, Content-Length and keep-alive decision. Requests whose body
   is buffered too are dispatched to the app at once, one after another
   (pipelining); an incomplete head or body waits for the next chunk.

2. **Answers leave in request order.** An answer is either ready (``bytes``) or
   pending: a ``Pending`` (the purchase path's: resolved with ``set_result``, which
   tells the connection in the call) or any other awaitable (wrapped in a future,
   whose done callback runs on a later loop turn; it may resolve to a ``Stream``).
   A ``Stream`` is an answer that stays open (rule 9). Ready answers go to ``_out``
   while ``_queue`` is empty; once one pending answer sits in ``_queue`` every later
   answer, ready or not, queues behind it. A pending answer resolving drains
   ``_queue`` from the head up to the first answer still pending.

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
   it, and the body is cut off for HEAD. (A Stream's head also gets its framing
   header, rule 9.)

8. **A load balancer's PROXY header comes first.** On a connection whose socket
   peer is in ``limits.proxy_protocol_from``, the bytes before the first request
   must be one PROXY protocol v1 or v2 header (``proxyproto.py``). They collect in
   ``_proxy_buf``, under the head deadline from the first byte (state 1; before it,
   the connection is idle like any other); the header's client address
   replaces ``peer_ip`` (a v2 LOCAL health check keeps the socket's); what follows
   goes to the parser. A missing or invalid header is refused like malformed input.

9. **A Stream is an answer written frame by frame, in its turn.** ``Stream(head,
   max_buffer, on_close)`` is queued like any answer (rule 2) and stays in ``_queue``
   until it ends, so answers to requests pipelined after it wait behind it. Frames
   ``send()`` before it heads the queue collect in the stream (``_frames``); when it
   gets there its head (plus ``Transfer-Encoding: chunked``) and those frames join
   ``_out``, and from then on (``_live``) each ``send()`` writes one chunk straight to
   the transport: no await, one copy. ``close()`` writes the last chunk and drains
   ``_queue`` behind it, so a keep-alive connection carries on. For HTTP/1.0 (flag
   ``_FIX_HTTP10``) the body is close-delimited: the head says ``Connection: close``,
   parsing stops (``_closing``) and the connection finishes (rule 4) when the stream
   ends. A HEAD request gets the head alone; the stream ends at once. Bound: the
   bytes a stream holds (its ``_frames``, then the transport's whole write buffer
   while it is the one writing) plus the new frame never pass ``max_buffer``; a
   frame that would is refused, the connection is aborted and the stream ends with
   "overflow" - one slow reader is dropped, never waited for. An open stream keeps
   ``_queue`` non-empty, so it is busy for the sweep (rule 5, no keep-alive close)
   and for ``busy_count``; ``close_idle`` ends it ("shutdown", last chunk sent) and
   refuses streams that begin afterwards, so a drain completes; ``connection_lost``
   ends it ("disconnect"). ``on_close(stream, reason)`` runs once, synchronously, in
   the call that ended the stream. Only code paths that meet a non-bytes answer
   look for a Stream: a bytes answer pays nothing for them.

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
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

import orjson

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
    Request,
)

__all__ = [
    "ConnectionRegistry",
    "HttpLimits",
    "HttpProtocol",
    "Request",
    "Stream",
    "build_response",
    "build_stream_head",
    "error_response",
]

log = logging.getLogger("flashgate.http")

if TYPE_CHECKING:
    from flashgate.gateway._protocol import HttpProtocol, Stream

ADMIN_PREFIX = "/api/v1/admin/"

# How long a connection closed by the server keeps discarding input after its last
# answer (and the FIN that follows it) before the socket is really closed.
LINGER_SECONDS = 2.0


class HttpLimits:
    """Per-connection limits and timeouts, and the listener's PROXY protocol sources.

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
    # Peers that must open with a PROXY protocol header (a _net.NetSet, or any
    # container of address strings); None or empty: no header is ever parsed.
    proxy_protocol_from = None

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
        "proxy_protocol_from",
    )

    def __init__(self, **overrides) -> None:
        for name in self._FIELDS:
            setattr(self, name, overrides.pop(name, getattr(type(self), name)))
        if overrides:
            raise TypeError(f"unknown HttpLimits field(s): {', '.join(sorted(overrides))}")

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"HttpLimits({inner})"


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


def build_stream_head(
    status: int = 200,
    content_type: bytes | None = b"text/event-stream",
    headers: tuple | list = (),
) -> bytes:
    """The head of a streamed response, for ``Stream(head)``.

    Status line, ``Content-Type`` (unless None) and the extra ``headers`` (pairs of
    bytes), ending with the empty line; no ``Content-Length``: the connection adds
    the framing (``Transfer-Encoding: chunked``, or ``Connection: close`` for an
    HTTP/1.0 client). ``headers`` must not name Content-Length, Transfer-Encoding or
    Connection.
    """
    parts = [_status_line(status)]
    if content_type is not None:
        parts.append(b"Content-Type: " + _check_field(content_type) + b"\r\n")
    for name, value in headers:
        parts.append(_check_field(name) + b": " + _check_field(value) + b"\r\n")
    parts.append(b"\r\n")
    return _check_stream_head(b"".join(parts))


# Header fields a stream's head must leave to the connection (its framing).
_STREAM_FRAMING_FIELDS = (b"\r\ncontent-length:", b"\r\ntransfer-encoding:", b"\r\nconnection:")


def _check_stream_head(head) -> bytes:
    """``head`` as bytes, if it can start a streamed response; else ValueError/TypeError."""
    if not isinstance(head, (bytes, bytearray, memoryview)):
        raise TypeError(f"a stream's head is bytes, not {type(head).__name__}")
    head = bytes(head)
    if not head.startswith(b"HTTP/1.1 ") or head.find(b"\r\n\r\n") != len(head) - 4:
        raise ValueError("a stream's head is an HTTP/1.1 status line and header fields, "
                         "ending with an empty line")
    code = head[9:12]
    if len(code) != 3 or not code.isdigit() or code[:1] == b"1" or code in (b"204", b"304"):
        raise ValueError(f"a stream needs a status that has a body, not {code!r}")
    lowered = head.lower()
    for field in _STREAM_FRAMING_FIELDS:
        if field in lowered:
            raise ValueError(f"a stream's head must not carry {field[2:-1].decode()!r}: "
                             "the connection frames the stream")
    return head


_RESP_500 = error_response(500, "internal", "internal error")
_RESP_503 = error_response(
    503, "unavailable", "too many connections", headers=((b"Retry-After", b"1"),), close=True
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Rewrites applied to an answer before it is written (bit flags in ``_fix``); all rare.
_FIX_CLOSE = 1  # add "Connection: close"; the connection ends after this answer
_FIX_KEEP = 2  # add "Connection: keep-alive" (HTTP/1.0 client that asked for it)
_FIX_HEAD = 4  # HEAD request: drop the body, keep the Content-Length
_FIX_HTTP10 = 8  # HTTP/1.0 request (no rewrite: a Stream answer is close-delimited, not chunked)


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
        Open streams end at once (reason "shutdown", their last chunk written) and no
        new one may begin, so every connection gets there.
        """
        for proto in tuple(self._conns):
            proto._close_when_idle()

    def busy_count(self) -> int:
        """Connections with a request in progress or answers not yet sent."""
        return sum(1 for proto in tuple(self._conns) if proto._is_busy())


# --------------------------------------------------------------------------- protocol


def __getattr__(name: str):
    # ``HttpProtocol`` and ``Stream`` are compiled (_protocol.pyx), and that module
    # imports this one's helpers: resolving them on first use keeps the import acyclic.
    if name in ("HttpProtocol", "Stream"):
        from flashgate.gateway import _protocol

        value = globals()[name] = getattr(_protocol, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
