"""flashgate.gateway._http.RequestParser: the accept/reject rules one by one, heads in
fragments, pipelining, limits, and a bounded differential fuzz against llhttp."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashgate.gateway import _http
from flashgate.gateway._http import HEAD, NEED_DATA, RequestParser
from tests.fuzz.differential import check

POST = (
    b"POST /api/v1/events/e/buy?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Content-Length: 20\r\nContent-Type: application/json\r\nX-User-Id: u1\r\n\r\n"
    b'{"sku":"s0","qty":1}'
)


def parse(data: bytes, **limits) -> RequestParser:
    p = RequestParser(**limits)
    p.feed(data)
    p.next_head()
    return p


def result(data: bytes, **limits) -> int:
    p = RequestParser(**limits)
    p.feed(data)
    return p.next_head()


# --------------------------------------------------------------------------- accepted


def test_a_typical_post():
    p = RequestParser()
    p.feed(POST)
    assert p.next_head() == HEAD
    assert p.method == b"POST" and p.path == "/api/v1/events/e/buy" and p.query == b"x=1"
    assert p.target == b"/api/v1/events/e/buy?x=1" and p.version == 11 and p.keep_alive
    assert p.headers == {
        b"host": b"127.0.0.1:8080",
        b"content-length": b"20",
        b"content-type": b"application/json",
        b"x-user-id": b"u1",
    }
    assert p.content_length == 20 and p.flags == _http.F_CONTENT_LENGTH
    assert p.take(21) is None and p.buffered == 20
    assert p.take(20) == b'{"sku":"s0","qty":1}'
    assert p.next_head() == NEED_DATA and p.buffered == 0 and not p.started


def test_method_is_a_shared_constant_and_names_are_lower_case():
    a, b = parse(b"GET / HTTP/1.1\r\nHOST: x\r\nX-Odd-NAME: V\r\n\r\n"), parse(POST)
    assert a.method is parse(b"GET /x HTTP/1.1\r\n\r\n").method
    assert a.headers == {b"host": b"x", b"x-odd-name": b"V"} and b.method == b"POST"


def test_value_whitespace_like_llhttp():
    # leading OWS dropped, trailing kept, inner kept; empty values allowed
    p = parse(b"GET / HTTP/1.1\r\nA: \t b c \t\r\nB:\r\nC:   \r\nD: \x80\xff\r\n\r\n")
    assert p.headers == {b"a": b"b c \t", b"b": b"", b"c": b"", b"d": b"\x80\xff"}


def test_last_duplicate_header_wins():
    assert parse(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\na: 3\r\n\r\n").headers == {
        b"a": b"3",
        b"b": b"2",
    }


@pytest.mark.parametrize(
    ("target", "path", "query", "flags"),
    [
        (b"/", "/", b"", 0),
        (b"/a%20b/%C3%A9?q=%20&x", "/a%20b/%C3%A9", b"q=%20&x", 0),
        (b"/a?", "/a", b"", 0),
        (b"/a#frag?x", "/a#frag", b"x", 0),
        (b"*", None, b"", _http.F_NOT_ORIGIN),
        (b"http://example.com/abs?z=1", None, b"", _http.F_NOT_ORIGIN),
        (b"http://[::1]:80", None, b"", _http.F_NOT_ORIGIN),
    ],
)
def test_target_forms(target, path, query, flags):
    p = parse(b"GET " + target + b" HTTP/1.1\r\n\r\n")
    assert (p.path, p.query, p.target, p.flags) == (path, query, target, flags)


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive", "flags"),
    [
        (b"1.1", b"", True, 0),
        (b"1.1", b"Connection: close\r\n", False, _http.F_CONNECTION),
        (b"1.1", b"Connection: keep-alive, CLOSE\r\n", False, _http.F_CONNECTION),
        (b"1.1", b"Connection: ,, Close ,\r\n", False, _http.F_CONNECTION),
        (b"1.1", b"Connection: te\r\nConnection: close\r\n", False, _http.F_CONNECTION),
        (b"1.1", b"Connection: keep-alive\r\n", True, _http.F_CONNECTION),
        (b"1.0", b"", False, _http.F_HTTP10),
        (b"1.0", b"Connection: Keep-Alive\r\n", True, _http.F_HTTP10 | _http.F_CONNECTION),
        # llhttp's rule: for HTTP/1.0 only keep-alive counts
        (b"1.0", b"Connection: keep-alive, close\r\n", True, _http.F_HTTP10 | _http.F_CONNECTION),
    ],
)
def test_keep_alive(version, connection, keep_alive, flags):
    p = parse(b"GET / HTTP/" + version + b"\r\n" + connection + b"\r\n")
    assert (p.keep_alive, p.flags, p.version) == (keep_alive, flags, 10 + int(version[2:]))


def test_content_length_forms():
    assert parse(b"POST / HTTP/1.1\r\nContent-Length: 007 \t\r\n\r\n").content_length == 7
    assert parse(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").content_length == 0
    assert parse(b"GET / HTTP/1.1\r\n\r\n").content_length == -1
    big = parse(b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n")
    assert big.content_length == 2**63 - 1  # clamped: above any body limit anyway


def test_empty_lines_before_a_request_are_skipped():
    p = RequestParser()
    p.feed(b"\r\n\r\n")
    assert p.next_head() == NEED_DATA and not p.started and p.buffered == 0
    p.feed(b"\r")
    assert p.next_head() == NEED_DATA and not p.started
    p.feed(b"\nGET / HTTP/1.1\r\n\r\n")
    assert p.next_head() == HEAD


def test_all_known_methods():
    for m in _http._METHODS:
        if m != b"CONNECT":
            assert parse(m + b" / HTTP/1.1\r\n\r\n").method == m


# --------------------------------------------------------------------------- refused

MALFORMED = {
    "bare-lf": b"GET / HTTP/1.1\nHost: t\n\n",
    "bare-lf-in-headers": b"GET / HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n",
    "bare-lf-ending-head": b"GET / HTTP/1.1\r\nHost: t\r\n\n",
    "cr-without-lf": b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
    "cr-without-lf-at-end": b"GET / HTTP/1.1\r\n\rX\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nX-A: one\r\n\ttwo\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    "tab-before-colon": b"GET / HTTP/1.1\r\nHost\t: t\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\n: t\r\n\r\n",
    "non-tchar-name": b"GET / HTTP/1.1\r\nA(b): t\r\n\r\n",
    "no-colon": b"GET / HTTP/1.1\r\nHost\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    "del-in-value": b"GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n",
    "ctl-in-value": b"GET / HTTP/1.1\r\nX-A: a\x1bb\r\n\r\n",
    "lower-case-method": b"get / HTTP/1.1\r\n\r\n",
    "unknown-method": b"FOO / HTTP/1.1\r\n\r\n",
    "rtsp-method": b"DESCRIBE / HTTP/1.1\r\n\r\n",
    "pri": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "two-spaces": b"GET  / HTTP/1.1\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\n\r\n",
    "ctl-in-target": b"GET /a\x01 HTTP/1.1\r\n\r\n",
    "non-ascii-target": b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
    "relative-target": b"GET a HTTP/1.1\r\n\r\n",
    "star-and-more": b"GET *x HTTP/1.1\r\n\r\n",
    "bad-scheme": b"GET h2c+x://a/ HTTP/1.1\r\n\r\n",
    "empty-authority": b"GET http:/// HTTP/1.1\r\n\r\n",
    "bad-authority": b'GET http://a"b/ HTTP/1.1\r\n\r\n',
    "no-version": b"GET /\r\n\r\n",
    "bad-version": b"GET / HTTP/1.7\r\n\r\n",
    "version-3": b"GET / HTTP/3.0\r\n\r\n",
    "rtsp-version": b"GET / RTSP/1.0\r\n\r\n",
    "lower-http": b"GET / http/1.1\r\n\r\n",
    "version-space": b"GET / HTTP/1.1 \r\n\r\n",
    "cl-empty": b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
    "cl-sign": b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
    "cl-negative": b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    "cl-list": b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc",
    "cl-inner-space": b"POST / HTTP/1.1\r\nContent-Length: 1 1\r\n\r\n",
    "cl-overflow": b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
    "two-equal-cl": b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "cl-and-te": b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    "connection-not-tokens": b"GET / HTTP/1.1\r\nConnection: close foo\r\n\r\n",
    "lf-before-request": b"\nGET / HTTP/1.1\r\n\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_is_refused_at_once_and_stays_refused(name):
    p = RequestParser()
    p.feed(MALFORMED[name])
    assert p.next_head() == _http.E_MALFORMED and p.reason
    assert p.next_head() == _http.E_MALFORMED  # a failed parser stays failed


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: t\r\n\r\n", _http.E_CONNECT),
        (b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", _http.E_UPGRADE),
        (b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: x, upgrade\r\n\r\n", _http.E_UPGRADE),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", _http.E_CHUNKED),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: ChunKed \r\n\r\n", _http.E_CHUNKED),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", _http.E_TRANSFER_ENCODING),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", _http.E_TRANSFER_ENCODING),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            _http.E_TRANSFER_ENCODING,
        ),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", _http.E_VERSION),
        (b"GET / HTTP/0.9\r\n\r\n", _http.E_VERSION),
    ],
)
def test_refused_after_the_head(raw, code):
    assert result(raw) == code


def test_upgrade_header_alone_or_connection_upgrade_alone_is_a_plain_request():
    assert result(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n") == HEAD
    assert result(b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n") == HEAD


def test_errors_are_found_before_the_head_ends():
    # an invalid byte fails the head at once, even with no CRLF CRLF in sight
    for raw in (b"GET / HTTP/1.1\r\nA: b\x00", b"GET /\x7f", b"GX", b"GET / HTTP/1.1\r\n "):
        assert result(raw) == _http.E_MALFORMED, raw


# --------------------------------------------------------------------------- limits


def test_target_limit_is_414_as_soon_as_it_is_exceeded():
    assert result(b"GET /" + b"a" * 99 + b" HTTP/1.1\r\n\r\n", max_request_line=100) == HEAD
    assert result(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", max_request_line=100) == (
        _http.E_URI_TOO_LONG
    )
    assert result(b"GET /" + b"a" * 100, max_request_line=100) == _http.E_URI_TOO_LONG


def test_head_limit_counts_raw_bytes_through_the_final_crlf():
    head = b"GET / HTTP/1.1\r\nA: " + b"v" * 100 + b"\r\n\r\n"
    assert result(head, max_head=len(head)) == HEAD
    assert result(head, max_head=len(head) - 1) == _http.E_HEAD_TOO_LARGE
    # a line that never ends is refused once it passes the limit
    p = RequestParser(max_head=1000)
    p.feed(b"GET / HTTP/1.1\r\nX-Big: ")
    for _ in range(10):
        p.feed(b"v" * 100)
        if p.next_head():
            break
    assert p.error == _http.E_HEAD_TOO_LARGE and p.buffered < 1200


def test_header_count_limit():
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(20))
    assert result(b"GET / HTTP/1.1\r\n" + lines + b"\r\n", max_headers=20) == HEAD
    assert result(b"GET / HTTP/1.1\r\n" + lines + b"A: b\r\n", max_headers=20) == (
        _http.E_TOO_MANY_HEADERS
    )


def test_many_headers_grow_the_field_table():
    lines = b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(500))
    p = parse(b"GET / HTTP/1.1\r\n" + lines + b"\r\n", max_headers=1000)
    assert len(p.headers) == 500 and p.headers[b"x-499"] == b"499"


# --------------------------------------------------------------------------- streaming

STREAM = (
    b"\r\nGET /one?a=1 HTTP/1.1\r\nX-A: 1\r\n\r\n"
    + POST
    + b"HEAD /three HTTP/1.0\r\nConnection: keep-alive\r\nCookie: c=1\r\n\r\n"
    + b"PUT /four HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
)


def collect(chunks) -> list:
    p = RequestParser()
    out, need = [], None
    for chunk in chunks:
        p.feed(chunk)
        while True:
            if need is not None:
                body = p.take(need[1])
                if body is None:
                    break
                out.append(need[0] + (body,))
                need = None
            r = p.next_head()
            assert r >= 0, p.reason
            if r == NEED_DATA:
                break
            head = (p.method, p.target, p.version, p.headers, p.keep_alive)
            need = (head, max(p.content_length, 0))
    assert need is None
    return out


def test_pipelined_requests_in_one_chunk():
    got = collect([STREAM])
    assert [(m, t) for m, t, *_ in got] == [
        (b"GET", b"/one?a=1"),
        (b"POST", b"/api/v1/events/e/buy?x=1"),
        (b"HEAD", b"/three"),
        (b"PUT", b"/four"),
    ]
    assert got[1][5] == b'{"sku":"s0","qty":1}' and got[2][4] is True and got[2][2] == 10


def test_every_split_point_gives_the_same_requests():
    whole = collect([STREAM])
    for i in range(len(STREAM) + 1):
        assert collect([STREAM[:i], STREAM[i:]]) == whole, i
    for i in range(0, len(STREAM), 7):
        for j in range(i, len(STREAM), 11):
            assert collect([STREAM[:i], STREAM[i:j], STREAM[j:]]) == whole, (i, j)


def test_one_byte_at_a_time():
    assert collect([STREAM[i : i + 1] for i in range(len(STREAM))]) == collect([STREAM])


def test_one_byte_at_a_time_is_linear():
    # a 60 kB head fed byte by byte: resumable scanning, amortised O(1) appends
    head = b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"v" * 60_000 + b"\r\n\r\n"
    p = RequestParser(max_head=1 << 20)
    t0 = time.perf_counter()
    for i in range(len(head)):
        p.feed(head[i : i + 1])
        r = p.next_head()
    assert r == HEAD and len(p.headers[b"x-long"]) == 60_000
    assert time.perf_counter() - t0 < 2.0


def test_take_without_copy_and_buffer_release():
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
    assert p.next_head() == HEAD and p.buffered == 0
    body = b"abcde"
    p.feed(body)
    assert p.take(5) is body and p.buffered == 0
    assert p.take(0) == b"" and p.take(1) is None


def test_feed_accepts_bytes_like():
    p = RequestParser()
    p.feed(bytearray(b"GET / HTTP/1.1\r\n"))
    p.feed(memoryview(b"\r\n"))
    assert p.next_head() == HEAD


def test_limits_are_checked():
    with pytest.raises(ValueError):
        RequestParser(max_head=0)


# --------------------------------------------------------------------------- differential

REFERENCE = [
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    POST,
    b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET http://h:1/p?q HTTP/1.1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    *MALFORMED.values(),
]


@pytest.mark.parametrize("raw", REFERENCE)
def test_differential_reference_inputs(raw):
    check([raw])
    check([raw[i : i + 1] for i in range(len(raw))])


_methods = st.sampled_from(
    [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"PRI", b"M-SEARCH"]
    + [b"get", b"FOO", b"GE", b"FLUSH", b"DESCRIBE"]
)
_targets = st.one_of(
    st.sampled_from([b"/", b"/a?b=c", b"/p#f", b"*", b"http://h/x?y", b"http://h", b"a:1", b""]),
    st.binary(min_size=1, max_size=12).map(lambda b: b"/" + b),
)
_versions = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.7", b"RTSP/1.0", b"http/1.1"]
)
_names = st.one_of(
    st.sampled_from(
        [b"Host", b"Content-Length", b"content-length", b"Connection", b"Transfer-Encoding"]
        + [b"Upgrade", b"Expect", b"X-User-Id", b"A", b""]
    ),
    st.binary(min_size=1, max_size=6),
)
_values = st.one_of(
    st.sampled_from(
        [b"t", b"0", b"5", b"05", b"5 ", b"5, 5", b"-1", b"", b"18446744073709551616"]
        + [b"close", b"keep-alive", b"Keep-Alive, close", b"upgrade", b"x, Upgrade", b"close x"]
        + [b"chunked", b"gzip, chunked", b"100-continue", b" \tv\t "]
    ),
    st.binary(max_size=8),
)
_seps = st.sampled_from([b": ", b":", b" : ", b":\t"])
_eols = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\n "])


@st.composite
def _requests(draw) -> bytes:
    line = draw(_methods) + b" " + draw(_targets) + b" " + draw(_versions) + draw(_eols)
    fields = b"".join(
        draw(_names) + draw(_seps) + draw(_values) + draw(_eols)
        for _ in range(draw(st.integers(0, 4)))
    )
    body = draw(st.binary(max_size=6))
    lead = draw(st.sampled_from([b"", b"", b"\r\n", b"\n"]))
    return lead + line + fields + draw(_eols) + body


@st.composite
def _streams(draw):
    data = bytearray(b"".join(draw(st.lists(_requests(), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 3))):  # mutations
        pos = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from([b"\r", b"\n", b" ", b"\t", b"\x00", b"\x7f", b"\x80", b":"]))
        if draw(st.booleans()) or pos == len(data):
            data[pos:pos] = what
        else:
            del data[pos]
    data = bytes(data)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
@given(_streams())
def test_differential_fuzz_against_llhttp(chunks):
    check(chunks)
