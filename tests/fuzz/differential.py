"""Differential oracle: flashgate's request-head parser against llhttp (httptools).

``check(chunks)`` feeds the same byte pieces to both parsers and asserts the
contract of ``flashgate.gateway._http``:

* every request ours accepts, llhttp accepts too, with the same method, target,
  version, headers (lower-cased names, last one wins), body and keep-alive;
* when llhttp refuses a request, ours does not accept it either: it refuses it,
  or (input cut short) is still waiting, and then refuses every completion of the
  head tried here rather than accepting one;
* ours refuses what llhttp accepts only for a reason listed in ``STRICTER`` (the
  documented differences), or with a code the protocol layer turns into the same
  answer llhttp's acceptance led to (``REFUSED_BY_PROTOCOL``).

Comparison stops after a request that does not keep the connection alive: the
protocol ignores whatever follows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools

from flashgate.gateway import _http

# Limits high enough not to trigger on fuzz inputs (llhttp has none of its own).
LIMITS = {"max_head": 1 << 20, "max_request_line": 1 << 20, "max_headers": 1 << 16}

# Ours refuses, llhttp accepts: the documented differences (``reason`` strings).
STRICTER = {
    # request line: exactly "METHOD SP target SP HTTP/x.y" (llhttp: runs of SP, a
    # missing version meaning HTTP/0.9, "RTSP/" and "ICE/" protocols)
    "Invalid characters in url",
    "Expected HTTP/",
    "Invalid HTTP version",  # "HTTP/0.9" is accepted, a line without a version is not
    # request-target: "*" alone; absolute-form only as scheme "://" authority [path]
    "Invalid request target",
    # an empty line before the request line must be CRLF (llhttp also skips a lone
    # CR or LF there)
    "Empty line before request line is not CRLF",
    # Connection must be a comma-separated list of tokens (RFC 9110 7.6.1)
    "Invalid Connection header value",
    # PRI is the HTTP/2 preface; llhttp waits for the rest of it
    "HTTP/2 connection preface (PRI)",
    # RTSP methods: llhttp takes them in a request line without a version (HTTP/0.9)
    "RTSP method in an HTTP request",
}
# Refusals that stand for what the protocol decided from llhttp's result before:
# 400 CONNECT, 400 upgrade, 411/400 Transfer-Encoding, 505 HTTP/0.9 and HTTP/2.0.
REFUSED_BY_PROTOCOL = {
    _http.E_CONNECT,
    _http.E_UPGRADE,
    _http.E_CHUNKED,
    _http.E_TRANSFER_ENCODING,
    _http.E_VERSION,
}

# What may complete a head that was cut short (see ``check``).
COMPLETIONS = (b"\r\n\r\n", b"\r\n", b" HTTP/1.1\r\n\r\n", b" / HTTP/1.1\r\n\r\n", b"\n\r\n")


@dataclass
class Outcome:
    messages: list = field(default_factory=list)  # (method, target, version, headers, body, ka)
    end: str = "idle"  # "idle", "partial", "error"
    error: int = 0
    reason: str = ""


def run_ours(chunks, **limits) -> Outcome:
    parser = _http.RequestParser(**(limits or LIMITS))
    out = Outcome()
    head = None  # (message without body, content length) while a body is awaited
    for chunk in chunks:
        parser.feed(chunk)
        while True:
            if head is not None:
                body = parser.take(head[1])
                if body is None:
                    break
                out.messages.append(head[0] + (body, head[2]))
                head = None
                if not out.messages[-1][5]:
                    return out  # the connection ends with this request
                continue
            r = parser.next_head()
            if r == _http.NEED_DATA:
                break
            if r < 0:
                out.end, out.error, out.reason = "error", r, parser.reason
                return out
            version = f"1.{parser.version - 10}"
            msg = (parser.method, parser.target, version, parser.headers)
            head = (msg, max(parser.content_length, 0), parser.keep_alive)
    if head is not None or parser.started or parser.buffered:
        out.end = "partial"
    return out


class _Collector:
    def __init__(self, parser_box):
        self.box = parser_box
        self.messages = []
        self.cur = None

    def on_message_begin(self):
        self.cur = {"url": b"", "headers": {}, "body": b""}

    def on_url(self, url):
        self.cur["url"] += url

    def on_header(self, name, value):
        self.cur["headers"][name.lower()] = value

    def on_headers_complete(self):
        p = self.box[0]
        self.cur["ka"] = p.should_keep_alive()
        self.cur["version"] = p.get_http_version()
        self.cur["method"] = p.get_method()

    def on_body(self, body):
        self.cur["body"] += body

    def on_message_complete(self):
        c = self.cur
        self.messages.append(
            (c["method"], c["url"], c["version"], c["headers"], c["body"], c["ka"])
        )
        self.cur = None


def run_llhttp(chunks) -> Outcome:
    box = [None]
    col = _Collector(box)
    parser = httptools.HttpRequestParser(col)
    box[0] = parser
    out = Outcome(messages=col.messages)
    for chunk in chunks:
        try:
            parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            # CONNECT or an upgrade: the request is not served as HTTP.
            if col.messages and col.cur is None:
                col.messages.pop()
            out.end, out.reason = "error", "upgrade"
            return out
        except httptools.HttpParserError as exc:
            out.end, out.reason = "error", str(exc)
            return out
        if any(not m[5] for m in col.messages):
            break
    if col.cur is not None:
        out.end = "partial"
    return out


def _first_close(messages) -> int | None:
    for i, m in enumerate(messages):
        if not m[5]:
            return i
    return None


def check(chunks) -> tuple[Outcome, Outcome]:
    """Assert the contract for one input (a list of byte pieces); return both outcomes."""
    ours = run_ours(chunks)
    ref = run_llhttp(chunks)
    stop = _first_close(ours.messages)
    n = len(ours.messages)
    ctx = f"input={b''.join(chunks)!r} ours={ours} llhttp={ref}"

    # 1. What ours accepted, llhttp accepted identically.
    assert n <= len(ref.messages), "accepted a request llhttp does not: " + ctx
    for i in range(n):
        assert ours.messages[i] == ref.messages[i], f"message {i} differs: " + ctx
    if stop is not None:
        return ours, ref  # the connection ends there

    # 2. llhttp refused message n (ours accepted the ones before it).
    if ref.end == "error" and len(ref.messages) == n:
        if ours.end == "partial":
            # Cut short: ours must refuse, not accept, whatever completes the head.
            whole = b"".join(chunks)
            for tail in COMPLETIONS:
                more = run_ours([whole + tail])
                assert len(more.messages) <= n, f"accepted after completion {tail!r}: " + ctx
        else:
            assert ours.end == "error", "llhttp refused, ours did not: " + ctx
        return ours, ref

    # 3. Ours refused a request llhttp accepted (or has not seen the end of).
    if ours.end == "error":
        allowed = ours.error in REFUSED_BY_PROTOCOL or ours.reason in STRICTER
        if not allowed and ref.end == "partial" and len(ref.messages) == n:
            # llhttp has not decided yet (ours refuses earlier, e.g. at the first
            # byte no method starts with): fine if llhttp refuses the completions.
            whole = b"".join(chunks)
            allowed = all(len(run_llhttp([whole + t]).messages) == n for t in COMPLETIONS)
        assert allowed, "refused what llhttp accepts, undocumented: " + ctx
    else:
        # 4. Neither refused: llhttp completed no request that ours is still waiting for.
        assert len(ref.messages) == n, "llhttp completed a request ours did not: " + ctx
    return ours, ref
