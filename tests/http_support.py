"""The connection's test bench: ``HttpProtocol`` served by a real uvloop server on
127.0.0.1:0 in a thread, and a raw-socket client that reads responses byte-exactly
(Content-Length bodies, chunked bodies, close-delimited bodies)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time

import orjson
import uvloop

from flashgate.gateway.protocol import ConnectionRegistry, HttpLimits, HttpProtocol

# --------------------------------------------------------------------------- server



class ServerThread:
    """A uvloop event loop in a thread, serving HttpProtocol on 127.0.0.1:0."""

    def __init__(self, app, limits: HttpLimits, interval: float = 0.05) -> None:
        self.app = app
        self.loop = uvloop.new_event_loop()
        self.loop_errors: list[dict] = []
        self.loop.set_exception_handler(lambda loop, ctx: self.loop_errors.append(ctx))
        self.registry = ConnectionRegistry(interval=interval)
        ready = threading.Event()

        async def start() -> None:
            self.registry.start(self.loop)
            self.server = await self.loop.create_server(
                lambda: HttpProtocol(app, limits, self.registry), "127.0.0.1", 0
            )
            self.port = self.server.sockets[0].getsockname()[1]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()
            self.registry.stop()
            self.server.close()
            for proto in self.registry:
                proto._transport.abort()
            self.loop.run_until_complete(asyncio.sleep(0.01))
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5), "server did not start"

    def call(self, fn):
        """Run fn() on the loop thread and return its result."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def wrapper() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # pragma: no cover - surfaced to the test
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(wrapper)
        return done.result(5)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def serving(default_app):
    """Body of a ``serve`` fixture: yields ``start(app=None, interval=0.05, **limits)``,
    which starts a ``ServerThread`` (``default_app()`` when no app is given); at the
    end stops them all and fails if an event loop reported an error."""
    servers: list[ServerThread] = []

    def start(app=None, interval: float = 0.05, **limits) -> ServerThread:
        srv = ServerThread(app or default_app(), HttpLimits(**limits), interval)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()
    for srv in servers:
        assert not srv.loop_errors, f"event loop reported errors: {srv.loop_errors}"


# --------------------------------------------------------------------------- client


class Client:
    """A raw-socket HTTP/1.1 client that reads responses byte-exactly."""

    def __init__(self, port: int, timeout: float = 3.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, target: str = "/echo", headers: str = "") -> tuple[int, dict, bytes]:
        self.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode())
        return self.response()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; buffered: {self.buf!r}")
        self.buf += chunk

    def response(self, head_only: bool = False) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", 0))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def chunk(self) -> bytes:
        """The data of the next chunk of a chunked body (strict framing: lower-case hex
        size, no extensions, CRLF after the data); b"" for the last chunk, whose empty
        trailer section is consumed with it."""
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        assert line and line.strip(b"0123456789abcdef") == b"", f"bad chunk size line {line!r}"
        size = int(line, 16)
        while len(self.buf) < size + 2:
            self._fill()
        data, end, self.buf = self.buf[:size], self.buf[size:size + 2], self.buf[size + 2:]
        assert end == b"\r\n", f"chunk not followed by CRLF: {end!r}"
        return data

    def chunked_body(self) -> bytes:
        """Every chunk up to and including the last one, joined."""
        parts = []
        while data := self.chunk():
            parts.append(data)
        return b"".join(parts)

    def until_eof(self) -> bytes:
        """What the server sends until it closes the connection (a close-delimited body);
        then closes the socket, as a client does on EOF."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                data, self.buf = self.buf, b""
                self.sock.close()
                return data
            self.buf += chunk

    def json(self) -> tuple[int, dict, dict]:
        status, headers, body = self.response()
        return status, headers, orjson.loads(body)

    def is_closed(self, timeout: float = 2.0) -> bool:
        """True when the server closed cleanly (recv gives b"" after any buffered reply)."""
        self.sock.settimeout(timeout)
        try:
            extra = self.sock.recv(65536)
        except TimeoutError:
            return False
        assert not self.buf and not extra, f"unexpected bytes before close: {self.buf + extra!r}"
        self.sock.close()  # as a client does on EOF; ends the server's linger
        return True

    def close(self) -> None:
        self.sock.close()


def req(target: str = "/echo", extra: str = "", method: str = "GET", body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: t\r\n{extra}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def wait_until(predicate, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
