"""Support of the webhook tests: a real HTTP receiver (``Receiver``), the outbox's own
database of the test Redis (the ``hooks_db`` fixture, tests/integration/conftest.py),
and running a sender until a condition holds.

The receiver is a threading HTTP server on a free port of 127.0.0.1 that records
every POST (its time, headers and body) and answers as the test's ``behave(n, body)``
says: a status, or ``("sleep", seconds, status)`` to answer late (a timeout for the
sender), or ``"close"`` to drop the connection."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from flashgate.core.redisconn import RedisConnection

SECRET = b"webhook-secret-for-the-tests-0123456789abcdef"
DB = 9  # the outbox keys are global: the tests of webhooks have a database of their own


async def connect(url: str) -> RedisConnection:
    conn = RedisConnection(url)
    await conn.connect()
    return conn


async def run_sender(sender, until, timeout: float = 10.0):
    """Run ``sender`` until ``until()`` holds (or fail after ``timeout``), then stop it."""
    task = asyncio.get_running_loop().create_task(sender.run())
    deadline = time.monotonic() + timeout
    try:
        while not until():
            assert time.monotonic() < deadline, "timed out waiting for the deliveries"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
    finally:
        await sender.stop(grace=2.0)
        await asyncio.wait_for(task, 5)


class Received:
    __slots__ = ("at", "headers", "body", "status")

    def __init__(self, at: float, headers: dict, body: bytes, status):
        self.at = at
        self.headers = headers
        self.body = body
        self.status = status

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    def __init__(self, behave=None):
        self.behave = behave or (lambda n, body: 200)
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.in_progress: dict[str, int] = {}  # delivery id -> requests being answered
        self.overlaps: list[str] = []  # ids that were in two requests at once
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    did = json.loads(body)["id"]
                except (ValueError, KeyError):
                    did = ""
                with receiver.lock:
                    n = len(receiver.received)
                    if receiver.in_progress.get(did):
                        receiver.overlaps.append(did)
                    receiver.in_progress[did] = receiver.in_progress.get(did, 0) + 1
                    rec = Received(time.monotonic(), dict(self.headers), body, None)
                    receiver.received.append(rec)
                try:
                    what = receiver.behave(n, body)
                    if what == "close":
                        rec.status = "close"
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if isinstance(what, tuple) and what[0] == "sleep":
                        time.sleep(what[1])
                        what = what[2]
                    rec.status = what
                    self.send_response(what)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass
                finally:
                    with receiver.lock:
                        receiver.in_progress[did] -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def acknowledged(self) -> list[Received]:
        """The requests answered 2xx."""
        with self.lock:
            return [r for r in self.received if isinstance(r.status, int) and 200 <= r.status < 300]

    def of(self, delivery_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.json.get("id") == delivery_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
