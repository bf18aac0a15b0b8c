"""HttpProtocol: a real uvloop server on 127.0.0.1:0 driven by raw sockets
(``tests/http_support.py``), plus sans-socket tests that feed a protocol through a
fake transport."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import select
import socket
import struct
import time

import orjson
import pytest
import uvloop

from flashgate.gateway._net import NetSet
from flashgate.gateway._protocol import Pending, Stream
from flashgate.gateway.protocol import (
    ConnectionRegistry,
    HttpLimits,
    HttpProtocol,
    Request,
    build_response,
    build_stream_head,
    error_response,
)
from flashgate.gateway.proxyproto import V2_SIGNATURE
from tests.http_support import Client, req, serving, wait_until

# --------------------------------------------------------------------------- test app


class EchoApp:
    """/echo (and anything else): JSON echo of the request, answered synchronously.
    /slow?MS: answered by a coroutine after MS milliseconds. /raise, /araise: fail
    synchronously / asynchronously. /future: answered through a plain Future."""

    def __init__(self) -> None:
        self.completed: list[str] = []  # async answers that ran to completion

    @staticmethod
    def echo(req: Request) -> bytes:
        doc = {
            "method": req.method.decode(),
            "path": req.path,
            "query": req.query.decode("latin-1"),
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers.items()},
            "body": req.body.decode("latin-1"),
            "keep_alive": req.keep_alive,
            "peer_ip": req.peer_ip,
        }
        return build_response(200, orjson.dumps(doc))

    def handle(self, req: Request):
        if req.path == "/raise":
            raise RuntimeError("secret-internal-detail")
        if req.path == "/slow":
            return self._slow(req)
        if req.path == "/araise":
            return self._araise()
        if req.path == "/future":
            fut = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.02, fut.set_result, self.echo(req))
            return fut
        if req.path == "/pending":  # a Pending resolved after MS ms (0: before it is returned)
            pending = Pending()
            ms = int(req.query or b"0")
            if ms:
                asyncio.get_running_loop().call_later(ms / 1000, self._resolve, pending, req)
            else:
                pending.set_result(self.echo(req))
            return pending
        if req.path == "/awaits-pending":
            return self._awaits_pending(req)
        return self.echo(req)

    async def _slow(self, req: Request) -> bytes:
        await asyncio.sleep(int(req.query or b"0") / 1000)
        self.completed.append(req.path + "?" + req.query.decode())
        return self.echo(req)

    def _resolve(self, pending, req) -> None:
        self.completed.append(req.path + "?" + req.query.decode())
        pending.set_result(self.echo(req))

    async def _awaits_pending(self, req) -> bytes:
        pending = Pending()
        asyncio.get_running_loop().call_later(0.01, pending.set_result, b"unused")
        await pending
        assert pending.done() and pending.result() == b"unused"
        return self.echo(req)

    async def _araise(self) -> bytes:
        await asyncio.sleep(0)
        raise RuntimeError("secret-internal-detail")


@pytest.fixture
def serve():
    yield from serving(EchoApp)


# --------------------------------------------------------------------------- basics


def test_keep_alive_several_requests(serve):
    srv = serve()
    c = Client(srv.port)
    for i in range(5):
        c.send(req(f"/echo?i={i}", f"X-Num: {i}\r\n"))
        status, headers, doc = c.json()
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert "connection" not in headers
        assert doc["path"] == "/echo" and doc["query"] == f"i={i}"
        assert doc["headers"]["x-num"] == str(i) and doc["headers"]["host"] == "t"
        assert doc["method"] == "GET" and doc["keep_alive"] is True
        assert doc["peer_ip"] == "127.0.0.1"
    assert srv.call(lambda: len(srv.registry)) == 1
    c.close()
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 0)


def test_body_with_content_length(serve):
    c = Client(serve().port)
    c.send(req("/echo", method="POST", body=b'{"sku": "tea", "qty": 2}'))
    status, _, doc = c.json()
    assert status == 200 and doc["method"] == "POST" and doc["body"] == '{"sku": "tea", "qty": 2}'
    c.send(req("/next"))
    assert c.json()[2]["path"] == "/next"


def test_path_is_not_percent_decoded_and_absolute_form(serve):
    c = Client(serve().port)
    c.send(b"GET /a%20b/%C3%A9?q=%20&x HTTP/1.1\r\nHost: t\r\n\r\n")
    doc = c.json()[2]
    assert doc["path"] == "/a%20b/%C3%A9" and doc["query"] == "q=%20&x"
    c.send(b"GET http://example.com/abs/path?z=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    doc = c.json()[2]
    assert doc["path"] == "/abs/path" and doc["query"] == "z=1"


def test_pipelining_keeps_request_order_with_async_and_sync_answers(serve):
    srv = serve()
    c = Client(srv.port)
    c.send(
        req("/slow?150") + req("/echo?n=1") + req("/slow?30") + req("/future?f") + req("/echo?n=2")
    )
    got = [c.json()[2] for _ in range(5)]
    assert [(d["path"], d["query"]) for d in got] == [
        ("/slow", "150"),
        ("/echo", "n=1"),
        ("/slow", "30"),
        ("/future", "f"),
        ("/echo", "n=2"),
    ]
    # the later, shorter sleep really did finish first: ordering is the protocol's work
    assert srv.app.completed == ["/slow?30", "/slow?150"]


def test_pending_answers_keep_request_order(serve):
    srv = serve()
    c = Client(srv.port)
    c.send(req("/pending?120") + req("/echo?n=1") + req("/pending?20") + req("/pending")
           + req("/slow?10") + req("/awaits-pending") + req("/pending?5"))
    got = [c.json()[2] for _ in range(7)]
    assert [(d["path"], d["query"]) for d in got] == [
        ("/pending", "120"), ("/echo", "n=1"), ("/pending", "20"), ("/pending", ""),
        ("/slow", "10"), ("/awaits-pending", ""), ("/pending", "5"),
    ]
    assert srv.app.completed[:2] == ["/pending?5", "/slow?10"]  # resolved out of order


def test_pending_answers_once_and_only_bytes(caplog):
    p = Pending()
    assert not p.done()
    with pytest.raises(asyncio.InvalidStateError):
        p.result()
    p.set_result(b"x")
    assert p.done() and p.result() == b"x"
    with pytest.raises(asyncio.InvalidStateError):
        p.set_result(b"y")
    q = Pending()
    with caplog.at_level(logging.ERROR, logger="flashgate.http"):
        q.set_result("not bytes")
    assert q.result().startswith(b"HTTP/1.1 500 ") and "not bytes" in caplog.text
    r = Pending()
    r.set_result(bytearray(b"HTTP/1.1 204 No Content\r\n\r\n"))
    assert r.result() == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_commit_answer_template_is_build_response():
    from flashgate.gateway.answers import OK_JSON_HEAD as _OK_JSON_HEAD

    body = b'{"order_id":"e.s.1"}'
    assert _OK_JSON_HEAD % len(body) + body == build_response(200, body)


def test_one_byte_at_a_time_over_a_socket(serve):
    c = Client(serve().port)
    for byte in req("/frag?x=1", "X-A: b\r\n", method="POST", body=b"hello"):
        c.send(bytes([byte]))
    status, _, doc = c.json()
    assert status == 200 and doc["path"] == "/frag" and doc["body"] == "hello"
    assert doc["headers"]["x-a"] == "b"


def test_head_request_gets_no_body(serve):
    c = Client(serve().port)
    c.send(req("/echo", method="HEAD"))
    status, headers, _ = c.response(head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0
    c.send(req("/after-head"))  # framing intact: the next answer parses
    assert c.json()[2]["path"] == "/after-head"


def test_expect_100_continue(serve):
    c = Client(serve().port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert c.response()[0] == 100
    c.send(b"abcde")
    status, _, doc = c.json()
    assert status == 200 and doc["body"] == "abcde"


# --------------------------------------------------------------------------- closing


def test_connection_close_answers_then_closes_and_ignores_pipelined_bytes(serve):
    c = Client(serve().port)
    c.send(req("/first", "Connection: close\r\n") + req("/ignored"))
    status, headers, doc = c.json()
    assert status == 200 and doc["path"] == "/first" and doc["keep_alive"] is False
    assert headers["connection"] == "close"
    assert c.is_closed()


def test_http10_without_and_with_keep_alive(serve):
    srv = serve()
    c = Client(srv.port)
    c.send(b"GET /old HTTP/1.0\r\n\r\n")
    status, headers, doc = c.json()
    assert status == 200 and doc["keep_alive"] is False and headers["connection"] == "close"
    assert c.is_closed()

    c = Client(srv.port)
    for i in range(2):
        c.send(b"GET /old%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
        status, headers, doc = c.json()
        assert status == 200 and doc["keep_alive"] is True and doc["path"] == f"/old{i}"
        assert headers["connection"] == "keep-alive"
    assert not c.is_closed(timeout=0.1)


def test_keepalive_timeout_closes_idle_connection(serve):
    srv = serve(keepalive_timeout=0.3)
    c = Client(srv.port)
    assert c.get()[0] == 200
    t0 = time.monotonic()
    assert c.is_closed(timeout=3)
    assert 0.15 < time.monotonic() - t0 < 2.0
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 0)


@pytest.mark.parametrize("slow", ["/slow", "/pending"])
def test_close_idle_and_busy_count(serve, slow):
    srv = serve()
    idle = Client(srv.port)
    assert idle.get()[0] == 200
    busy = Client(srv.port)
    busy.send(req(slow + "?300"))
    assert wait_until(lambda: srv.call(srv.registry.busy_count) == 1)
    srv.call(srv.registry.close_idle)
    assert idle.is_closed()
    status, headers, doc = busy.json()  # the request in progress is still answered...
    assert status == 200 and doc["path"] == slow and headers["connection"] == "close"
    assert busy.is_closed()  # ...and then that connection ends too
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 0)


@pytest.mark.parametrize("target", ["/slow?100", "/pending?80"])
def test_client_leaving_does_not_cancel_the_app(serve, target):
    # a coroutine runs to its end; a Pending resolved after the client left is harmless
    srv = serve()
    c = Client(srv.port)
    c.send(req(target))
    assert wait_until(lambda: srv.call(srv.registry.busy_count) == 1)  # the app has it
    c.close()
    assert wait_until(lambda: srv.app.completed == [target])
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 0)


def test_half_closed_client_still_gets_its_answers(serve):
    c = Client(serve().port)
    c.send(req("/slow?50") + req("/echo?after"))
    c.sock.shutdown(socket.SHUT_WR)
    assert c.json()[2]["path"] == "/slow"
    assert c.json()[2]["query"] == "after"
    assert c.is_closed()


def test_max_connections_gets_503_and_close(serve):
    srv = serve(max_connections=2)
    a, b = Client(srv.port), Client(srv.port)
    assert a.get()[0] == 200 and b.get()[0] == 200
    c = Client(srv.port)
    status, headers, doc = c.json()
    assert status == 503 and doc["error"] == "unavailable" and headers["retry-after"] == "1"
    assert c.is_closed()
    a.close()
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 1)
    assert Client(srv.port).get()[0] == 200


# --------------------------------------------------------------------------- errors


def test_app_exception_is_500_without_internals(serve, caplog):
    c = Client(serve().port)
    with caplog.at_level(logging.ERROR, logger="flashgate.http"):
        for target in ("/raise", "/araise"):
            c.send(req(target))
            status, _, body = c.response()
            assert status == 500
            assert orjson.loads(body) == {"error": "internal", "message": "internal error"}
            assert b"secret" not in body and b"Traceback" not in body
            c.send(req("/still-works"))  # the connection stays usable
            assert c.json()[0] == 200
    failures = [r for r in caplog.records if r.name == "flashgate.http" and r.exc_info]
    assert len(failures) == 2


def test_malformed_garbage_is_400_and_close_and_others_are_served(serve):
    srv = serve()
    c = Client(srv.port)
    c.send(req("/before") + b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    status, _, doc = c.json()
    assert status == 200 and doc["path"] == "/before"  # earlier answers first
    status, headers, doc = c.json()
    assert status == 400 and doc["error"] == "bad_request" and headers["connection"] == "close"
    assert c.is_closed()
    assert Client(srv.port).get()[0] == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.7\r\nHost: t\r\n\r\n",
    ],
    ids=["upgrade", "connect", "h2-preface", "bad-version"],
)
def test_unsupported_protocols_are_400_and_close(serve, raw):
    c = Client(serve().port)
    c.send(raw)
    status, headers, doc = c.json()
    assert status == 400 and doc["error"] == "bad_request" and headers["connection"] == "close"
    assert c.is_closed()


def test_http2_version_line_is_505(serve):
    c = Client(serve().port)
    c.send(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")
    assert c.response()[0] == 505
    assert c.is_closed()


# --------------------------------------------------------------------------- smuggling

SMUGGLING = {
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "te-and-cl": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "two-different-cl": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    ),
    "two-equal-cl": (  # llhttp refuses any repeated Content-Length; so do we
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "cl-list": (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "te-chunked": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        411,
    ),
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400),
    "te-gzip-chunked": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "bare-lf": (b"GET / HTTP/1.1\nHost: t\n\n", 400),
    "bare-lf-in-headers": (b"GET / HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smuggling_attempts_are_refused_and_closed(serve, name):
    raw, expected = SMUGGLING[name]
    c = Client(serve().port)
    c.send(raw)
    status, headers, doc = c.json()
    assert status == expected
    assert doc["error"] == ("length_required" if expected == 411 else "bad_request")
    assert headers["connection"] == "close"
    assert c.is_closed()


# --------------------------------------------------------------------------- limits


def test_request_line_too_long_is_414(serve):
    c = Client(serve(max_request_line=1024).port)
    c.send(req("/" + "a" * 1100))
    assert c.response()[0] == 414
    assert c.is_closed()


def test_head_too_large_is_431(serve):
    c = Client(serve(max_head=4096).port)
    c.send(req("/", "".join(f"X-H{i}: {'v' * 200}\r\n" for i in range(30))))
    status, _, doc = c.json()
    assert status == 431 and doc["error"] == "headers_too_large"
    assert c.is_closed()


def test_one_huge_header_trickled_is_431_before_it_ends(serve):
    # The line never completes, so only the raw-bytes guard can see it grow.
    c = Client(serve(max_head=4096).port)
    c.send(b"GET / HTTP/1.1\r\nX-Big: ")
    for _ in range(10):
        c.send(b"v" * 1000)
        time.sleep(0.01)
        if select.select([c.sock], [], [], 0)[0]:
            break
    assert c.response()[0] == 431
    assert c.is_closed()


def test_too_many_headers_is_431(serve):
    c = Client(serve(max_headers=20).port)
    c.send(req("/", "".join(f"X-H{i}: v\r\n" for i in range(20))))  # + Host = 21
    assert c.response()[0] == 431
    assert c.is_closed()
    c = Client(serve(max_headers=20).port)
    c.send(req("/", "".join(f"X-H{i}: v\r\n" for i in range(19))))  # exactly 20 is fine
    assert c.response()[0] == 200


def test_body_too_large_by_content_length_header_is_413(serve):
    c = Client(serve(max_body=1000).port)
    c.send(b"POST /api/v1/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
    status, _, doc = c.json()
    assert status == 413 and doc["error"] == "payload_too_large"
    assert c.is_closed()


def test_body_too_large_sent_in_full_still_reads_413(serve):
    # The client pushes the whole body; lingering close lets it read the 413 anyway.
    c = Client(serve(max_body=1000).port)
    c.send(req("/api/v1/x", method="POST", body=b"x" * 200_000))
    assert c.response()[0] == 413
    assert c.is_closed()


def test_admin_paths_have_their_own_body_limit(serve):
    srv = serve(max_body=1000, max_body_admin=5000)
    c = Client(srv.port)
    c.send(req("/api/v1/admin/events/e1", method="PUT", body=b"y" * 4000))
    status, _, doc = c.json()
    assert status == 200 and len(doc["body"]) == 4000
    c.send(req("/api/v1/admin/events/e1", method="PUT", body=b"y" * 5001))
    assert c.response()[0] == 413
    c = Client(srv.port)
    c.send(req("/api/v1/adminx", method="POST", body=b"y" * 4000))
    assert c.response()[0] == 413


# --------------------------------------------------------------------------- timeouts


def test_head_timeout_cuts_off_a_trickling_client(serve):
    c = Client(serve(head_timeout=0.5).port)
    t0 = time.monotonic()
    c.send(b"GET / HTTP/1.1\r\n")
    for i in range(30):  # one header every 0.1 s: never an idle gap, never done
        if select.select([c.sock], [], [], 0.1)[0]:
            break
        c.send(b"X-Trickle-%d: y\r\n" % i)
    status, headers, doc = c.json()
    elapsed = time.monotonic() - t0
    assert status == 408 and doc["error"] == "request_timeout" and headers["connection"] == "close"
    assert 0.35 < elapsed < 1.5
    assert c.is_closed()


def test_body_timeout(serve):
    c = Client(serve(body_timeout=0.3).port)
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
    assert c.response()[0] == 408
    assert c.is_closed()


# --------------------------------------------------------------------------- PROXY protocol

LB = NetSet("127.0.0.0/8")  # the test client's address is a configured balancer
V1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 51000 80\r\n"


def proxy_v2(command: int = 0x21, src: str = "2001:db8::7") -> bytes:
    block = ipaddress.ip_address(src).packed + ipaddress.ip_address("::1").packed
    block += struct.pack("!HH", 51000, 443) + b"\x03\x00\x04abcd"  # a TLV, skipped
    return V2_SIGNATURE + bytes([command, 0x21]) + struct.pack("!H", len(block)) + block


def test_proxy_v1_header_names_the_client_for_every_request(serve):
    c = Client(serve(proxy_protocol_from=LB).port)
    c.send(V1 + req("/echo?1"))
    assert c.json()[2]["peer_ip"] == "198.51.100.7"
    c.send(req("/echo?2"))
    assert c.json()[2]["peer_ip"] == "198.51.100.7"


def test_proxy_v2_in_fragments_then_pipelined_requests(serve):
    c = Client(serve(proxy_protocol_from=LB).port)
    stream = proxy_v2() + req("/echo?1") + req("/echo?2")
    for i in range(0, len(stream), 7):
        c.send(stream[i:i + 7])
        time.sleep(0.001)
    assert [c.json()[2]["peer_ip"] for _ in range(2)] == ["2001:db8::7"] * 2


def test_proxy_v2_local_health_check_keeps_the_socket_address(serve):
    c = Client(serve(proxy_protocol_from=LB).port)
    c.send(proxy_v2(command=0x20) + req("/livez"))
    assert c.json()[2]["peer_ip"] == "127.0.0.1"


@pytest.mark.parametrize("first", [
    req("/echo"),  # the balancer forgot the header
    b"PROXY TCP4 198.51.100.7 127.0.0.1 51000\r\n" + req("/echo"),
    b"PROXY TCP4 198.51.100.7 127.0.0.1 51000 80\n" + req("/echo"),
    proxy_v2(command=0x22) + req("/echo"),
    b"\x16\x03\x01\x02\x00\x01",  # TLS
])
def test_connection_from_a_balancer_without_a_valid_header_is_refused(serve, first):
    srv = serve(proxy_protocol_from=LB)
    c = Client(srv.port)
    c.send(first)
    status, headers, doc = c.json()
    assert status == 400 and doc["error"] == "bad_request" and "PROXY" in doc["message"]
    assert headers["connection"] == "close"
    assert c.is_closed()
    ok = Client(srv.port)  # the next connection is not affected
    ok.send(V1 + req())
    assert ok.json()[0] == 200


def test_the_header_comes_once_only(serve):
    c = Client(serve(proxy_protocol_from=LB).port)
    c.send(V1 + req() + V1)
    assert c.json()[2]["peer_ip"] == "198.51.100.7"
    assert c.response()[0] == 400
    assert c.is_closed()


def test_a_header_never_finished_times_out(serve):
    c = Client(serve(proxy_protocol_from=LB, head_timeout=0.3).port)
    c.send(V1[:10])
    status, headers, _ = c.json()
    assert status == 408 and headers["connection"] == "close"
    assert c.is_closed()


def test_a_balancer_connection_idle_before_its_header_is_not_cut_by_the_head_deadline(serve):
    srv = serve(proxy_protocol_from=LB, head_timeout=0.2, keepalive_timeout=0.6)
    c = Client(srv.port)
    time.sleep(0.4)  # opened ahead of its client: idle, not a request in progress
    c.send(V1 + req())
    assert c.json()[2]["peer_ip"] == "198.51.100.7"
    silent = Client(srv.port)  # ... but idle connections still end at keepalive_timeout
    assert silent.is_closed(timeout=3.0)
    assert srv.call(srv.registry.busy_count) == 0


def test_peers_that_are_not_balancers_cannot_send_a_header(serve):
    srv = serve(proxy_protocol_from=NetSet("192.0.2.0/24"))
    c = Client(srv.port)
    c.send(V1 + req())
    assert c.response()[0] == 400  # a malformed request line, nothing more
    assert c.is_closed()
    c = Client(srv.port)
    c.send(req())
    assert c.json()[2]["peer_ip"] == "127.0.0.1"


# --------------------------------------------------------------------------- responses


def test_build_response():
    assert build_response(200, b"{}") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert build_response(404, b"", content_type=None) == (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    )
    resp = build_response(429, b"x", b"text/plain", headers=[(b"Retry-After", b"2")], close=True)
    assert resp == (
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n"
        b"Retry-After: 2\r\nConnection: close\r\n\r\nx"
    )
    assert build_response(204) == b"HTTP/1.1 204 No Content\r\n\r\n"
    with pytest.raises(ValueError):
        build_response(200, headers=[(b"X-A", b"a\r\nSet-Cookie: evil")])


def test_error_response():
    resp = error_response(409, "sold_out", "no unit left", headers=((b"X-A", b"1"),))
    head, body = resp.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 409 Conflict\r\n") and b"X-A: 1" in head
    assert orjson.loads(body) == {"error": "sold_out", "message": "no unit left"}


def test_limits_keywords():
    limits = HttpLimits(head_timeout=0.5, max_body=10)
    assert limits.head_timeout == 0.5 and limits.max_body == 10
    assert limits.max_head == HttpLimits.max_head == 16 * 1024
    with pytest.raises(TypeError):
        HttpLimits(max_bdy=1)


# --------------------------------------------------------------------------- fake transport


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.reading = True
        self.closed = False
        self.eof = False

    def get_extra_info(self, name, default=None):
        return ("10.1.2.3", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.high = high

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return 0


def run(coro):
    return uvloop.run(coro)


def make_protocol(app=None, **limits):
    registry = ConnectionRegistry()
    proto = HttpProtocol(app or EchoApp(), HttpLimits(**limits), registry)
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport, registry


STREAM = (
    req("/one?a=1", "X-A: 1\r\n")
    + req("/two", method="POST", body=b'{"k": "v"}')
    + req("/three", "Cookie: c=1\r\n")
)


def test_fragments_fed_one_byte_at_a_time_match_one_chunk():
    async def main():
        whole, t_whole, _ = make_protocol()
        whole.data_received(STREAM)
        assert len(t_whole.writes) == 1  # three answers coalesced into one write

        split, t_split, _ = make_protocol()
        for i in range(len(STREAM)):
            split.data_received(STREAM[i : i + 1])
        assert len(t_split.writes) == 3
        assert b"".join(t_split.writes) == t_whole.writes[0]
        assert t_whole.writes[0].count(b"HTTP/1.1 200 OK") == 3
        assert b'"peer_ip":"10.1.2.3"' in t_whole.writes[0]

    run(main())


def test_an_ipv4_peer_on_a_dual_stack_socket_is_its_ipv4_address():
    proto = HttpProtocol(EchoApp(), HttpLimits(), ConnectionRegistry())
    transport = FakeTransport()
    transport.get_extra_info = lambda name, default=None: (
        ("::ffff:10.1.2.3", 40000, 0, 0) if name == "peername" else default)

    async def connect():
        proto.connection_made(transport)

    run(connect())
    assert proto._peer_ip == "10.1.2.3"


def test_many_pipelined_sync_requests_one_write():
    async def main():
        proto, transport, _ = make_protocol()
        proto.data_received(b"".join(req(f"/p{i}") for i in range(50)))
        assert len(transport.writes) == 1
        assert transport.writes[0].count(b"HTTP/1.1 200 OK") == 50

    run(main())


class ControlledApp:
    """Every request is answered through a Future the test resolves."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future] = []

    def handle(self, req: Request):
        fut = asyncio.get_running_loop().create_future()
        fut.path = req.path
        self.futures.append(fut)
        return fut


def test_pipeline_limit_pauses_reading_until_answers_drain():
    async def main():
        app = ControlledApp()
        proto, transport, _ = make_protocol(app, max_pipeline=4)
        proto.data_received(b"".join(req(f"/p{i}") for i in range(6)))
        assert len(app.futures) == 6 and not transport.reading  # 6 owed > 4
        # resolve out of order: nothing may be written before /p0 is ready
        for fut in reversed(app.futures[1:]):
            fut.set_result(build_response(200, fut.path.encode()))
        await asyncio.sleep(0)
        assert transport.writes == [] and not transport.reading
        app.futures[0].set_result(build_response(200, b"/p0"))
        await asyncio.sleep(0)
        assert len(transport.writes) == 1  # the head and everything ready behind it
        bodies = [part[-3:] for part in transport.writes[0].split(b"HTTP/1.1 ")[1:]]
        assert bodies == [b"/p0", b"/p1", b"/p2", b"/p3", b"/p4", b"/p5"]
        assert transport.reading

    run(main())


def test_unix_socket_peer_is_empty_string():
    async def main():
        registry = ConnectionRegistry()
        proto = HttpProtocol(EchoApp(), HttpLimits(), registry)
        transport = FakeTransport()
        transport.get_extra_info = lambda name, default=None: ""  # what unix sockets give
        proto.connection_made(transport)
        proto.data_received(req("/"))
        assert b'"peer_ip":""' in transport.writes[0]

    run(main())


def test_write_back_pressure_pauses_reading():
    async def main():
        proto, transport, _ = make_protocol(write_buffer_high=1234)
        assert transport.high == 1234
        proto.pause_writing()
        assert not transport.reading
        proto.resume_writing()
        assert transport.reading

    run(main())


def test_accumulated_body_size_is_checked_too():
    # Content-Length is checked first, so this guard is defence in depth: shrink the
    # limit after the head to show the body is counted as it arrives.
    async def main():
        proto, transport, _ = make_protocol(max_body=100)
        proto.data_received(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n")
        proto._body_limit = 20
        proto.data_received(b"x" * 30)
        assert transport.writes and transport.writes[-1].startswith(b"HTTP/1.1 413 ")
        assert transport.eof

    run(main())


def test_sweep_enforces_deadlines_from_timestamps():
    async def main():
        proto, transport, registry = make_protocol(head_timeout=5.0, keepalive_timeout=60.0)
        t0 = asyncio.get_running_loop().time()
        registry.sweep(t0)  # also sets the clock connections stamp activity with
        proto.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n")  # head in progress
        registry.sweep(t0 + 4.9)
        assert transport.writes == []
        registry.sweep(t0 + 5.0)
        assert transport.writes[-1].startswith(b"HTTP/1.1 408 ")

        proto, transport, registry = make_protocol(keepalive_timeout=60.0)
        registry.sweep(t0 + 10)
        proto.data_received(req("/"))
        registry.sweep(t0 + 69.9)
        assert not transport.closed
        # (a hair past 60 s: (t0 + 70) - (t0 + 10) in floats can be just under 60)
        registry.sweep(t0 + 70.001)
        assert transport.closed and len(transport.writes) == 1

    run(main())


def test_registry_counts_and_start_stop():
    async def main():
        proto, transport, registry = make_protocol()
        assert len(registry) == 1 and registry.busy_count() == 0
        proto.data_received(b"GET / HTTP/1.1\r\n")
        assert registry.busy_count() == 1
        registry.start()
        registry.stop()
        proto.connection_lost(None)
        assert len(registry) == 0

    run(main())


def test_the_protocol_is_the_compiled_class():
    from flashgate.gateway import _protocol
    from flashgate.gateway import protocol as module

    assert module.HttpProtocol is _protocol.HttpProtocol
    assert issubclass(module.HttpProtocol, asyncio.Protocol)


# --------------------------------------------------------------------------- streams

HEAD_IN = build_stream_head(headers=((b"Cache-Control", b"no-cache"),))
HEAD_OUT = (  # as written for an HTTP/1.1 request: the framing header after the status line
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"


def answer(path: str) -> bytes:
    return build_response(200, path.encode(), b"text/plain")


class StreamApp:
    """/stream: a Stream (in ``streams``; how each ended in ``ended``); /stream?early
    sends a frame before returning it; /coro-stream: a coroutine that returns one a
    loop turn later; /pending: a Pending the test resolves (``owed``); /again: the
    first stream once more; anything else: bytes naming the path."""

    def __init__(self, max_buffer: int = 256 * 1024) -> None:
        self.max_buffer = max_buffer
        self.streams: list[Stream] = []
        self.ended: list[tuple[int, str]] = []
        self.owed: list[Pending] = []
        self.paths: list[str] = []

    def new_stream(self) -> Stream:
        stream = Stream(HEAD_IN, max_buffer=self.max_buffer, on_close=self._on_close)
        self.streams.append(stream)
        return stream

    def _on_close(self, stream, reason) -> None:
        assert stream.closed and stream.reason == reason
        self.ended.append((self.streams.index(stream), reason))

    def handle(self, req: Request):
        self.paths.append(req.path)
        if req.path == "/stream":
            stream = self.new_stream()
            if req.query == b"early":
                assert stream.send(b"early")
            return stream
        if req.path == "/coro-stream":
            return self._coro_stream()
        if req.path == "/pending":
            self.owed.append(Pending())
            return self.owed[-1]
        if req.path == "/again":
            return self.streams[0]
        return answer(req.path)

    async def _coro_stream(self) -> Stream:
        await asyncio.sleep(0)
        return self.new_stream()


class BufferingTransport(FakeTransport):
    """A FakeTransport whose write buffer holds ``buffered`` bytes, and which tells an
    abort from a close."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True


def stream_protocol(app, **limits):
    registry = ConnectionRegistry()
    proto = HttpProtocol(app, HttpLimits(**limits), registry)
    transport = BufferingTransport()
    proto.connection_made(transport)
    return proto, transport, registry


def test_stream_frames_are_chunks_and_the_connection_carries_on():
    async def main():
        app = StreamApp()
        proto, transport, registry = stream_protocol(app)
        proto.data_received(req("/a") + req("/stream") + req("/b"))
        stream = app.streams[0]
        assert transport.writes == [answer("/a") + HEAD_OUT]  # one write; /b waits behind
        assert stream.send(b"data: 10\n\n")  # 10 bytes: a hex size
        assert transport.writes[-1] == b"a\r\ndata: 10\n\n\r\n"
        assert stream.send(bytearray(b"x" * 300))
        assert transport.writes[-1] == b"12c\r\n" + b"x" * 300 + b"\r\n"
        assert stream.send(b"") and len(transport.writes) == 3  # never an empty chunk
        assert not stream.closed and stream.reason is None and registry.busy_count() == 1
        stream.close()
        assert transport.writes[-1] == LAST_CHUNK + answer("/b")
        assert app.ended == [(0, "closed")] and stream.closed and stream.reason == "closed"
        assert stream.send(b"late") is False and len(transport.writes) == 4
        stream.close()  # idempotent; on_close ran once
        assert app.ended == [(0, "closed")]
        proto.data_received(req("/c"))  # the connection carries on
        assert transport.writes[-1] == answer("/c") and registry.busy_count() == 0
        assert not transport.closed and not transport.eof

    run(main())


def test_a_stream_behind_a_pending_answer_buffers_then_flushes_in_order():
    async def main():
        app = StreamApp()
        proto, transport, _ = stream_protocol(app)
        proto.data_received(req("/pending") + req("/stream") + req("/b"))
        stream = app.streams[0]
        assert stream.send(b"one") and stream.send(b"two")
        assert transport.writes == [] and stream.buffered == 6
        app.owed[0].set_result(answer("/pending"))
        assert transport.writes == [answer("/pending") + HEAD_OUT + b"6\r\nonetwo\r\n"]
        assert stream.buffered == 0
        assert stream.send(b"three") and transport.writes[-1] == b"5\r\nthree\r\n"
        stream.close()
        assert transport.writes[-1] == LAST_CHUNK + answer("/b")

    run(main())


def test_a_stream_closed_before_its_turn_is_written_whole_when_it_comes():
    async def main():
        app = StreamApp()
        proto, transport, _ = stream_protocol(app)
        proto.data_received(req("/pending") + req("/stream?early") + req("/b"))
        stream = app.streams[0]
        assert stream.send(b"-late")
        stream.close()
        assert app.ended == [(0, "closed")] and not stream.send(b"refused")
        assert transport.writes == []
        app.owed[0].set_result(answer("/pending"))
        assert transport.writes == [
            answer("/pending") + HEAD_OUT + b"a\r\nearly-late\r\n" + LAST_CHUNK + answer("/b")
        ]

    run(main())


def test_pipelined_streams_take_their_turns():
    async def main():
        app = StreamApp()
        proto, transport, _ = stream_protocol(app)
        proto.data_received(req("/stream") + req("/stream?early") + req("/b"))
        first, second = app.streams
        assert second.send(b"2") and second.buffered == 6  # waits for the first to end
        assert first.send(b"1") and transport.writes == [HEAD_OUT, b"1\r\n1\r\n"]
        first.close()
        assert transport.writes[-1] == LAST_CHUNK + HEAD_OUT + b"6\r\nearly2\r\n"
        assert second.send(b"3") and transport.writes[-1] == b"1\r\n3\r\n"
        second.close()
        assert transport.writes[-1] == LAST_CHUNK + answer("/b")
        assert app.ended == [(0, "closed"), (1, "closed")]

    run(main())


def test_a_stream_returned_by_a_coroutine():
    async def main():
        app = StreamApp()
        proto, transport, _ = stream_protocol(app)
        proto.data_received(req("/coro-stream") + req("/b"))
        assert transport.writes == []
        await asyncio.sleep(0.01)
        stream = app.streams[0]
        assert transport.writes == [HEAD_OUT]
        stream.send(b"x")
        stream.close()
        assert transport.writes[1:] == [b"1\r\nx\r\n", LAST_CHUNK + answer("/b")]

    run(main())


def test_the_bound_while_waiting_for_its_turn():
    async def main():
        app = StreamApp(max_buffer=100)
        proto, transport, _ = stream_protocol(app)
        proto.data_received(req("/pending") + req("/stream"))
        stream = app.streams[0]
        assert stream.send(b"x" * 60) and stream.send(b"y" * 40)  # 100: at the bound
        assert stream.send(b"z") is False  # 101: the subscriber is dropped
        assert stream.reason == "overflow" and app.ended == [(0, "overflow")]
        assert transport.aborted and stream.buffered == 0
        app.owed[0].set_result(answer("/pending"))
        assert HEAD_OUT not in b"".join(transport.writes)  # never begun
        proto.connection_lost(None)
        assert app.ended == [(0, "overflow")]  # once

    run(main())


def test_the_bound_while_writing_counts_the_transport_buffer():
    async def main():
        app = StreamApp(max_buffer=100)
        proto, transport, _ = stream_protocol(app)
        proto.data_received(req("/stream"))
        stream = app.streams[0]
        transport.buffered = 54
        assert stream.send(b"x" * 40)  # a 46-byte chunk ("28" CRLF data CRLF): 100, the bound
        transport.buffered = 55
        assert stream.send(b"x" * 40) is False  # 101
        assert transport.aborted and app.ended == [(0, "overflow")]
        assert transport.writes == [HEAD_OUT, b"28\r\n" + b"x" * 40 + b"\r\n"]
        proto.connection_lost(None)
        assert app.ended == [(0, "overflow")]

    run(main())


def test_a_stream_that_overflows_before_it_is_returned_drops_the_connection():
    class Hasty(StreamApp):
        def handle(self, req):
            stream = self.new_stream()
            assert not stream.send(b"x" * 11)
            return stream

    async def main():
        app = Hasty(max_buffer=10)
        proto, transport, _ = stream_protocol(app)
        proto.data_received(req("/stream") + req("/ignored"))
        assert app.ended == [(0, "overflow")] and transport.aborted
        assert len(app.streams) == 1 and transport.writes == []

    run(main())


@pytest.mark.parametrize("extra", ["", "Connection: keep-alive\r\n"])
def test_a_stream_for_http10_is_close_delimited(extra):
    async def main():
        app = StreamApp()
        proto, transport, _ = stream_protocol(app)
        proto.data_received(f"GET /stream?early HTTP/1.0\r\n{extra}\r\n".encode() + req("/no"))
        stream = app.streams[0]
        assert transport.writes == [
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n\r\nearly"
        ]
        assert stream.send(b"raw") and transport.writes[-1] == b"raw"
        assert not transport.eof
        stream.close()
        assert transport.eof and transport.writes[-1] == b"raw"  # the FIN ends the body
        assert app.paths == ["/stream"]  # what was pipelined behind it is ignored

    run(main())


def test_a_head_request_gets_the_head_alone_and_the_stream_ends():
    async def main():
        app = StreamApp()
        proto, transport, _ = stream_protocol(app)
        proto.data_received(req("/stream?early", method="HEAD") + req("/b"))
        assert transport.writes == [HEAD_OUT + answer("/b")]
        assert app.ended == [(0, "closed")] and not app.streams[0].send(b"x")

        proto, transport, _ = stream_protocol(app)
        proto.data_received(b"HEAD /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert transport.writes == [  # no chunked framing for HTTP/1.0, and no body to end
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n\r\n"
        ]
        assert app.ended[1] == (1, "closed") and not transport.eof

    run(main())


def test_close_idle_ends_open_streams_then_the_connection():
    async def main():
        app = StreamApp()
        proto, transport, registry = stream_protocol(app)
        proto.data_received(req("/stream") + req("/pending") + req("/stream?early"))
        live, queued = app.streams
        live.send(b"x")
        registry.close_idle()
        assert app.ended == [(0, "shutdown"), (1, "shutdown")]
        assert transport.writes[-1] == LAST_CHUNK  # the live one; the pending answer is owed
        assert registry.busy_count() == 1 and not transport.eof
        assert not live.send(b"y") and not queued.send(b"y")
        app.owed[0].set_result(answer("/pending"))
        # the last answer owed says Connection: close, and the connection ends after it
        assert transport.writes[-1] == (
            answer("/pending") + HEAD_OUT.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n", 1)
            + b"5\r\nearly\r\n" + LAST_CHUNK
        )
        assert transport.eof and registry.busy_count() == 0

    run(main())


def test_close_idle_refuses_a_stream_that_begins_afterwards():
    async def main():
        app = StreamApp()
        proto, transport, registry = stream_protocol(app)
        proto.data_received(req("/coro-stream"))
        registry.close_idle()  # the coroutine has not returned its stream yet
        await asyncio.sleep(0.01)
        assert app.ended == [(0, "shutdown")]
        assert transport.writes == [
            HEAD_OUT.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n", 1) + LAST_CHUNK
        ]
        assert transport.eof

    run(main())


def test_a_stream_is_busy_and_outlives_the_keepalive_sweep():
    async def main():
        app = StreamApp()
        proto, transport, registry = stream_protocol(app, keepalive_timeout=60.0)
        t0 = asyncio.get_running_loop().time()
        registry.sweep(t0)
        proto.data_received(req("/stream"))
        registry.sweep(t0 + 1000.0)
        assert not transport.closed and registry.busy_count() == 1
        app.streams[0].close()  # the idle time starts when the stream ends
        registry.sweep(t0 + 1059.0)
        assert not transport.closed
        registry.sweep(t0 + 1060.001)
        assert transport.closed and registry.busy_count() == 0

    run(main())


def test_connection_lost_ends_every_stream_with_disconnect():
    async def main():
        app = StreamApp()
        proto, transport, registry = stream_protocol(app)
        proto.data_received(req("/stream") + req("/pending") + req("/stream") + req("/coro-stream"))
        proto.connection_lost(None)
        assert app.ended == [(0, "disconnect"), (1, "disconnect")]
        assert not app.streams[0].send(b"x") and not app.streams[1].send(b"x")
        app.owed[0].set_result(answer("/pending"))  # harmless
        await asyncio.sleep(0.01)  # the coroutine returns its stream to a closed connection
        assert app.ended[2:] == [(2, "disconnect")]
        assert len(registry) == 0 and transport.writes == [HEAD_OUT]

    run(main())


def test_a_stream_answers_one_request_only(caplog):
    async def main():
        app = StreamApp()
        proto, transport, _ = stream_protocol(app)
        with caplog.at_level(logging.ERROR, logger="flashgate.http"):
            proto.data_received(req("/stream") + req("/again"))
            app.streams[0].close()
        assert transport.writes[-1].startswith(LAST_CHUNK + b"HTTP/1.1 500 ")
        assert "already answered" in caplog.text

    run(main())


def test_on_close_failing_is_logged_not_raised(caplog):
    def broken(stream, reason):
        raise RuntimeError("subscriber bookkeeping failed")

    stream = Stream(HEAD_IN, on_close=broken)
    with caplog.at_level(logging.ERROR, logger="flashgate.http"):
        stream.close()
    assert stream.closed and "on_close failed" in caplog.text


def test_stream_heads_and_frames_are_checked():
    assert build_stream_head() == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    )
    assert build_stream_head(404, None) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    for head in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n",  # no empty line
        b"HTTP/1.1 200 OK\r\n\r\nbody",  # a body is sent with send()
        b"HTTP/1.0 200 OK\r\n\r\n",
    ):
        with pytest.raises(ValueError):
            Stream(head)
    with pytest.raises(ValueError):
        build_stream_head(headers=((b"Content-Length", b"1"),))
    with pytest.raises(ValueError):
        build_stream_head(headers=((b"X-A", b"a\r\nSet-Cookie: evil"),))
    with pytest.raises(TypeError):
        Stream("HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(ValueError):
        Stream(HEAD_IN, max_buffer=0)
    with pytest.raises(TypeError):
        Stream(HEAD_IN, on_close="not callable")
    stream = Stream(HEAD_IN, max_buffer=10)
    assert stream.max_buffer == 10 and not stream.closed and stream.reason is None
    with pytest.raises(TypeError):
        stream.send("text")
    assert stream.send(memoryview(b"abc")) and stream.buffered == 3
