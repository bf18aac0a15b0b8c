"""Streamed responses over real sockets: a real uvloop server (``HttpProtocol`` on
127.0.0.1:0, ``tests/http_support.py``) running a tiny app whose streams the test
drives from its own thread, and raw-socket clients that parse the framing strictly.
No Redis: the connection is the unit under test."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from flashgate.gateway._protocol import Pending
from flashgate.gateway.protocol import Request, Stream, build_response, build_stream_head
from tests.http_support import Client, req, serving, wait_until

HEAD = build_stream_head(headers=((b"Cache-Control", b"no-cache"),))


def frame_of(i: int) -> bytes:
    """Frame i of a counted stream: its number and a body of varying size."""
    return b"data: %d %s\n\n" % (i, b"x" * (i * 7 % 300))


class FeedApp:
    """/stream[?MAX]: a Stream the test feeds (``streams``; how each ended in
    ``ended``), MAX its bound; /stream?early: one that sends "early" before it is
    returned; /count?N: N frames from a task, then the end; /pending?MS: a Pending
    resolved after MS ms; anything else: the path, as text."""

    def __init__(self) -> None:
        self.streams: list[Stream] = []
        self.ended: dict[int, str] = {}

    def _on_close(self, stream: Stream, reason: str) -> None:
        assert stream.closed and stream.reason == reason
        index = self.streams.index(stream)
        assert index not in self.ended, "on_close called twice"
        self.ended[index] = reason

    def new_stream(self, max_buffer: int = 256 * 1024) -> Stream:
        stream = Stream(HEAD, max_buffer=max_buffer, on_close=self._on_close)
        self.streams.append(stream)
        return stream

    def handle(self, req: Request):
        if req.path == "/stream":
            if req.query == b"early":
                stream = self.new_stream()
                stream.send(b"early")
                return stream
            return self.new_stream(int(req.query or 256 * 1024))
        if req.path == "/count":
            stream = self.new_stream()
            asyncio.get_running_loop().create_task(self._count(stream, int(req.query)))
            return stream
        if req.path == "/pending":
            pending = Pending()
            asyncio.get_running_loop().call_later(
                int(req.query) / 1000, pending.set_result, self.text(req.path))
            return pending
        return self.text(req.path)

    @staticmethod
    def text(path: str) -> bytes:
        return build_response(200, path.encode(), b"text/plain")

    @staticmethod
    async def _count(stream: Stream, n: int) -> None:
        for i in range(n):
            assert stream.send(frame_of(i))
            if i % 64 == 0:
                await asyncio.sleep(0)  # let the loop write and read in between
        stream.close()


@pytest.fixture
def serve():
    yield from serving(FeedApp)


@pytest.fixture
def no_errors(caplog):
    """Fails the test if the connection or the app logged an error."""
    with caplog.at_level(logging.WARNING, logger="flashgate"):
        yield
    errors = [r for r in caplog.records if r.name.startswith("flashgate") and r.levelno >= 40]
    assert not errors, [r.getMessage() for r in errors]


def stream_head(c: Client) -> dict:
    status, headers, body = c.response(head_only=True)
    assert status == 200 and body == b""
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert headers["content-type"] == "text/event-stream" and headers["cache-control"] == "no-cache"
    return headers


def test_many_frames_arrive_in_order_and_intact(serve, no_errors):
    srv = serve()
    c = Client(srv.port)
    c.send(req("/count?3000"))
    stream_head(c)
    assert c.chunked_body() == b"".join(frame_of(i) for i in range(3000))
    assert srv.app.ended == {0: "closed"}
    assert c.get("/after")[2] == b"/after"  # the framing left the connection usable


def test_a_request_pipelined_after_a_stream_is_answered_once_it_ends(serve, no_errors):
    srv = serve()
    c = Client(srv.port)
    c.send(req("/stream") + req("/after"))
    stream_head(c)
    stream = srv.app.streams[0]
    for i in range(3):
        assert srv.call(lambda i=i: stream.send(frame_of(i)))
        assert c.chunk() == frame_of(i)
    srv.call(stream.close)
    assert srv.call(lambda: stream.send(b"late")) is False  # refused once closed
    assert c.chunk() == b""  # the last chunk, then the answer that waited behind it
    assert c.response() == (200, {"content-type": "text/plain", "content-length": "6"}, b"/after")
    assert c.get("/again")[2] == b"/again" and srv.app.ended == {0: "closed"}
    assert srv.call(srv.registry.busy_count) == 0


def test_a_slow_reader_is_cut_off_at_the_bound_while_others_are_served(serve, no_errors):
    bound = 64 * 1024
    srv = serve()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window; never read
    slow.connect(("127.0.0.1", srv.port))
    slow.sendall(req(f"/stream?{bound}"))
    fast = Client(srv.port)
    fast.send(req("/stream"))
    stream_head(fast)
    assert wait_until(lambda: len(srv.app.streams) == 2)
    slow_stream, fast_stream = sorted(srv.app.streams, key=lambda s: s.max_buffer)

    def send_both(frame: bytes) -> tuple[bool, bool, int]:
        held = max(p._transport.get_write_buffer_size() for p in srv.registry)
        return slow_stream.send(frame), fast_stream.send(frame), held

    frame = b"data: " + b"y" * 16000 + b"\n\n"
    rounds, slow_ok = 0, True
    while slow_ok:  # the kernel's buffers fill first, then the stream's bound
        rounds += 1
        assert rounds < 5000, "the slow reader was never cut off"
        slow_ok, fast_ok, held = srv.call(lambda: send_both(frame))
        assert fast_ok and held <= bound  # never more queued than the bound
        assert fast.chunk() == frame  # the fast reader is served all along
    assert rounds > 1 and srv.app.ended == {srv.app.streams.index(slow_stream): "overflow"}
    assert slow_stream.reason == "overflow" and not srv.call(lambda: slow_stream.send(b"x"))
    # the slow client finds its connection aborted: what it reads ends in a reset or an
    # EOF (a connection left open would time out here)
    slow.settimeout(3)
    try:
        while slow.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    slow.close()
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 1)
    for i in range(3):  # the other connection goes on
        assert srv.call(lambda i=i: fast_stream.send(frame_of(i)))
        assert fast.chunk() == frame_of(i)
    assert Client(srv.port).get("/plain")[2] == b"/plain"


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_leaves_mid_stream_ends_it_with_disconnect(serve, no_errors, how):
    srv = serve()
    c = Client(srv.port)
    c.send(req("/stream"))
    stream_head(c)
    stream = srv.app.streams[0]
    assert srv.call(lambda: stream.send(b"tick"))
    assert c.chunk() == b"tick"
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    # The broadcaster keeps ticking; the stream ends once the loss is seen (a FIN alone
    # may be a half-close: the first write after it is what meets the reset).

    def tick() -> bool:
        stream.send(b"tick")
        return stream.closed

    assert wait_until(lambda: srv.call(tick))
    assert srv.app.ended == {0: "disconnect"}
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 0)


def test_a_half_close_ends_the_stream_at_once_and_owed_answers_still_go(serve, no_errors):
    """A FIN with a stream queued: the client has left the stream (an EventSource never
    half-closes), so it ends with "disconnect" without waiting for a write, and what is
    owed is still written (what the stream had, its last chunk, the answer pipelined
    behind it), then the connection closes."""
    srv = serve()
    c = Client(srv.port)
    c.send(req("/stream") + req("/after"))
    stream_head(c)
    stream = srv.app.streams[0]
    assert srv.call(lambda: stream.send(b"tick"))
    assert c.chunk() == b"tick"
    c.sock.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: srv.call(lambda: stream.closed))
    assert srv.app.ended == {0: "disconnect"}
    assert c.chunk() == b""
    assert c.response()[2] == b"/after"
    assert c.until_eof() == b""
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 0)


def test_drain_ends_the_stream_with_its_last_chunk(serve, no_errors):
    srv = serve()
    c = Client(srv.port)
    c.send(req("/stream"))
    stream_head(c)
    stream = srv.app.streams[0]
    assert srv.call(lambda: stream.send(b"before the drain"))
    assert srv.call(srv.registry.busy_count) == 1
    srv.call(srv.registry.close_idle)
    assert c.chunk() == b"before the drain"
    assert c.chunk() == b""  # the last chunk: a complete response
    assert c.is_closed()
    assert srv.app.ended == {0: "shutdown"}
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 0)


def test_http10_gets_a_close_delimited_stream(serve, no_errors):
    srv = serve()
    c = Client(srv.port)
    c.send(b"GET /stream HTTP/1.0\r\n\r\n")
    status, headers, _ = c.response(head_only=True)
    assert status == 200 and headers["connection"] == "close"
    assert "transfer-encoding" not in headers and "content-length" not in headers
    stream = srv.app.streams[0]
    for i in range(5):
        assert srv.call(lambda i=i: stream.send(frame_of(i)))
    srv.call(stream.close)
    assert c.until_eof() == b"".join(frame_of(i) for i in range(5))
    assert srv.app.ended == {0: "closed"}
    assert wait_until(lambda: srv.call(lambda: len(srv.registry)) == 0)


def test_head_gets_the_head_alone(serve, no_errors):
    srv = serve()
    c = Client(srv.port)
    c.send(req("/stream", method="HEAD") + req("/after"))
    stream_head(c)
    assert c.response()[2] == b"/after"  # no chunk came between: the head was all
    assert srv.app.ended == {0: "closed"}


def test_a_stream_behind_a_pending_answer_buffers_then_flushes_in_order(serve, no_errors):
    srv = serve()
    c = Client(srv.port)
    c.send(req("/pending?300") + req("/stream?early") + req("/after"))
    assert wait_until(lambda: len(srv.app.streams) == 1)
    stream = srv.app.streams[0]
    assert srv.call(lambda: stream.send(b"+queued"))
    assert srv.call(lambda: stream.buffered) == len(b"early+queued")  # held, in its turn
    assert c.response()[2] == b"/pending"
    stream_head(c)
    assert c.chunk() == b"early+queued"
    assert srv.call(lambda: stream.buffered) == 0
    assert srv.call(lambda: stream.send(b"live"))
    assert c.chunk() == b"live"
    srv.call(stream.close)
    assert c.chunk() == b""
    assert c.response()[2] == b"/after"
