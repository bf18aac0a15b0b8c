"""Test support: a real gateway process in either identity mode, HTTP clients, the
check of every gateway's log and exit code, and the invariant check that every test
which sells stock ends with.

Identity modes (``Gateway(mode=...)``, ``MODES``):

* ``"dev"``: X-User-Id taken on trust (``--dev``), rate limits off;
* ``"prod"``: the configuration operators run: signed buyer tokens (a user secret
  from a file), the DEFAULT rate limits (per worker: per IP 50/s burst 100, per user
  5/s burst 10), a trusted proxy (127.0.0.0/8) whose ``X-Forwarded-For`` names a
  client IP per user, and a global admission rate.

``gw.who(user)`` gives the headers that make a request ``user``'s in the gateway's
mode; ``gw.buy``, ``gw.buy_request`` and the tests' clients build on it. A test that
sends many requests per user or per IP must use many users (``gw.user_burst`` and
``gw.ip_burst`` say how many requests one user or IP may send at once on a worker).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.client import HTTPConnection
from pathlib import Path

import redis

from flashgate.auth import sign
from flashgate.core import keys, orders

ADMIN = "test-admin-token"
MODES = ("dev", "prod")
# the prod mode's user secret (every prod gateway of a run has the same: a sale that
# moves from one gateway to another keeps its buyers' tokens)
USER_SECRET = "flashgate-tests-user-secret-0123456789abcdef"
PROD_FLAGS = ("--trusted-proxies", "127.0.0.0/8", "--global-rate", "100000")
TOKEN_TTL_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id(prefix: str = "ev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def event_body(stock=(5,), limits=None, starts=None, ends=None, **extra) -> dict:
    """A live event with one SKU per entry of ``stock`` (ids s0, s1, ...)."""
    limits = limits or [1] * len(stock)
    t = now_ms()
    body = {
        "name": "test sale",
        "starts_at_ms": t - 1000 if starts is None else starts,
        "ends_at_ms": t + 600_000 if ends is None else ends,
        "skus": [
            {"id": f"s{i}", "name": f"sku {i}", "price": 100, "stock": n,
             "per_user_limit": limits[i]}
            for i, n in enumerate(stock)
        ],
    }
    body.update(extra)
    return body


def client_ip(user: str) -> str:
    """The client address a user's requests come from behind the trusted proxy: one
    per user (10.x.y.z from a hash of the id), so that per-IP limits see real clients."""
    d = hashlib.sha256(user.encode()).digest()
    return f"10.{d[0]}.{d[1]}.{d[2]}"


def wait_for(predicate, what: str, timeout: float = 5.0, interval: float = 0.02):
    """Poll ``predicate()`` until it returns something true (returned), or fail after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- the log of a gateway ---------------------------------------------------------------
#
# A gateway logs JSON lines (flashgate/logs.py) unless it runs with --log-format text.
# The checks below read both: a JSON line is judged as the text line of the same record
# would be (``render``), so that an expected line is one regex for either format.

_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
_BAD_LEVEL = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \S+ (ERROR|CRITICAL) ")
_TRACEBACK = ("Traceback (most recent call last)", "Exception ignored in", "Fatal Python error")


# Errors of known product defects, expected of any gateway until they are fixed:
# regexes searched in a whole record. Each has a strict xfail test that checks without
# them (``assert_finished_cleanly``) and fails once the defect is gone: remove it here then.
KNOWN_DEFECTS: tuple[str, ...] = ()


def log_entry(line: str) -> dict | None:
    """A JSON log line's object (it has ``ts``, ``level``, ``proc`` and ``msg``), else
    None."""
    if not line.startswith("{"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not {"ts", "level", "proc", "msg"} <= entry.keys():
        return None
    return entry


def render(entry: dict) -> list[str]:
    """A JSON log line's record as text lines: ``<date> <time> <process> <LEVEL>
    <logger>: <msg>`` (the process as text lines name it: ``worker-0``), then its
    traceback."""
    ts = entry["ts"].rstrip("Z").replace("T", " ").replace(".", ",")
    who = (f"worker-{entry['worker']}" if "worker" in entry
           else {"follower": "follow"}.get(entry["proc"], entry["proc"]))
    text = f"{ts} {who} {entry['level'].upper()} {entry.get('logger', '')}: {entry['msg']}\n"
    if entry.get("exc"):
        text += entry["exc"].rstrip("\n") + "\n"
    return text.splitlines(keepends=True)


def log_records(lines: list[str]) -> list[tuple[int, list[str]]]:
    """The output split into records ``(index of its first line, lines)``: a record
    starts at a log line (a JSON log line, rendered as text, or a text one:
    ``<date> <time> <process> <LEVEL> ...``), and lines that are not log lines (a
    traceback, a banner) belong to the record before them."""
    records: list[tuple[int, list[str]]] = []
    for i, line in enumerate(lines):
        entry = log_entry(line)
        if entry is not None:
            records.append((i, render(entry)))
        elif not records or _LOG_LINE.match(line):
            records.append((i, [line]))
        else:
            records[-1][1].append(line)
    return records


def problem(record: list[str], allowed, known=KNOWN_DEFECTS) -> bool:
    """An ERROR or CRITICAL log line, or a traceback, that no pattern of ``allowed``
    (regexes searched in the record's first line) expects, and that is no known
    defect (``known``: regexes searched in the whole record). A traceback is expected
    only as part of an expected ERROR record (``log.exception``)."""
    head = record[0]
    if any(re.search(k, "".join(record)) for k in known):
        return False
    bad_level = bool(_BAD_LEVEL.match(head))
    traceback = any(line.startswith(_TRACEBACK) for line in record)
    if not (bad_level or traceback):
        return False
    if traceback and not bad_level:
        return True  # a traceback under a warning, or printed by a dying process
    return not any(re.search(p, head) for p in allowed)


class GatewayLogError(AssertionError):
    """A gateway ended with an exit code other than 0, or logged an unexpected error."""


class Gateway:
    """``flashgate serve`` in a subprocess, on a free port, in identity ``mode``.

    Every gateway started is checked when its test ends (tests/conftest.py): it must
    stop with exit code 0, and its output must hold no ERROR or CRITICAL line and no
    traceback but those the test declares (``@pytest.mark.expected_log(regex, ...)``,
    or ``expect_log``). A gateway shared by several tests (a module- or session-scoped
    fixture: ``shared=True``) has the lines of each test checked when the test ends,
    and its exit code and last lines when the fixture calls ``finish()``."""

    live: list[Gateway] = []  # started and not yet finished (the teardown checks)

    def __init__(self, redis_url: str, tmp, *, workers: int = 2, extra=(), mode: str = "dev",
                 expect_log=(), shared: bool = False, split_stderr: bool = False,
                 source: str | None = None):
        assert mode in MODES, mode
        # the local address the helpers' requests come from (None: the kernel's choice,
        # 127.0.0.1): another one when 127.0.0.1 is a balancer's that must send PROXY
        # headers (--proxy-protocol-from 127.0.0.1/32)
        self.source = source
        self.redis_url = redis_url
        self.mode = mode
        extra = [str(a) for a in extra]
        if mode == "prod":
            secret_file = Path(tmp).parent / (Path(tmp).name + "-user_secret")
            secret_file.write_text(USER_SECRET + "\n")
            secret_file.chmod(0o600)
            identity = ["--user-secret-file", str(secret_file), *PROD_FLAGS]
            limits: list[str] = []  # the defaults: never turned off in prod
        else:
            # an external Redis: dev identity (X-User-Id) must be asked for, unless the
            # test gives a user secret
            gives_secret = any(a.startswith("--user-secret") for a in extra)
            identity = [] if gives_secret else ["--dev"]
            limits = ["--ip-rate", "0", "--user-rate", "0"]
        self.args = [
            sys.executable, "-m", "flashgate.cli", "serve",
            "--host", "127.0.0.1", "--port", "0", "--workers", str(workers),
            "--redis", redis_url, "--admin-token", ADMIN, "--data-dir", str(tmp),
            *limits, "--no-demo", "--log-level", "warning", *identity, *extra,
        ]
        if mode == "prod":
            assert math.isfinite(self.user_burst) and math.isfinite(self.ip_burst), \
                "the prod mode runs with the rate limits on"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.output: list[str] = []
        # split_stderr: stderr apart, in ``errors`` (else it is in ``output``, in order)
        self.split_stderr = split_stderr
        self.errors: list[str] = []
        self.expected_log: list[str] = list(expect_log)
        self.shared = shared
        self.wrapped = False  # args[0] runs the server as its child (faketime)
        self._pumps: list[threading.Thread] = []
        self._checked = 0  # first line of the first record not yet checked
        self._reported: set[int] = set()
        self._last_allowed: list[str] = []  # what the record at _checked was judged by
        self._tokens: dict[str, tuple[str, int]] = {}
        self._secret: bytes | None | bool = False  # (False: not read yet)

    # -- identity ------------------------------------------------------------------

    def _flag(self, name: str, default: str | None = None) -> str | None:
        """The value the server takes for ``name`` from its arguments (the last one)."""
        value = default
        for i, a in enumerate(self.args):
            if a == name and i + 1 < len(self.args):
                value = self.args[i + 1]
            elif a.startswith(name + "="):
                value = a.split("=", 1)[1]
        return value

    @property
    def secret(self) -> bytes | None:
        """The user secret the server was given (flag or file), or None: dev identity."""
        if self._secret is False:
            value = self._flag("--user-secret")
            if value is None and (path := self._flag("--user-secret-file")) is not None:
                value = Path(path).read_text().strip()
            self._secret = value.encode() if value else None
        return self._secret

    @property
    def trusts_proxy(self) -> bool:
        return self._flag("--trusted-proxies") is not None

    def _burst(self, rate: str, burst: str, default_burst: float) -> float:
        if float(self._flag(rate, "1")) <= 0:
            return math.inf
        return float(self._flag(burst, str(default_burst)))

    @property
    def user_burst(self) -> float:
        """How many requests one user may send at once to one worker (inf: no limit)."""
        return self._burst("--user-rate", "--user-burst", 10)

    @property
    def ip_burst(self) -> float:
        """How many requests one client IP may send at once to one worker."""
        return self._burst("--ip-rate", "--ip-burst", 100)

    def token(self, user: str) -> str:
        """A buyer token of ``user`` signed with the server's secret (an hour ahead)."""
        got = self._tokens.get(user)
        if got is None or got[1] - now_ms() < TOKEN_TTL_MS // 2:
            expires = now_ms() + TOKEN_TTL_MS
            got = self._tokens[user] = (sign(self.secret, user, expires), expires)
        return got[0]

    def who(self, user: str) -> dict[str, str]:
        """The headers of a request of ``user``: X-User-Id (dev identity), or a signed
        token, and behind the trusted proxy the user's own client IP."""
        if self.secret is None:
            return {"X-User-Id": user}
        headers = {"Authorization": "Bearer " + self.token(user)}
        if self.trusts_proxy:
            headers["X-Forwarded-For"] = client_ip(user)
        return headers

    # -- life cycle ----------------------------------------------------------------

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> Gateway:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if self.split_stderr else subprocess.STDOUT,
            text=True, start_new_session=True)
        Gateway.live.append(self)
        found = threading.Event()

        def pump(stream, into):
            # the banner's first line says the port (on stderr with JSON logs)
            for line in stream:
                into.append(line)
                if "listening on http://" in line and not found.is_set():
                    self.port = int(line.split("listening on http://")[1].split()[0]
                                    .rsplit(":", 1)[1])
                    found.set()

        self._pumps = [threading.Thread(target=pump, args=(self.proc.stdout, self.output),
                                        daemon=True)]
        if self.split_stderr:
            self._pumps.append(threading.Thread(target=pump, args=(self.proc.stderr, self.errors),
                                                daemon=True))
        for t in self._pumps:
            t.start()
        if not found.wait(timeout):
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "".join(self.output))
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ok = all(self.request("GET", "/readyz")[0] == 200 for _ in range(6))
                if ok:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("gateway not ready:\n" + "".join(self.output))

    def supervisor_pid(self) -> int:
        """The pid of ``flashgate serve`` (the child of a wrapper such as faketime)."""
        if not self.wrapped:
            return self.proc.pid
        kids = children(self.proc.pid)
        assert len(kids) == 1, f"the wrapper has children {kids}"
        return kids[0]

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                # the whole session: the supervisor, its workers, and any wrapper
                # (faketime) between the test and the supervisor
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                try:
                    os.kill(self.supervisor_pid(), sig)
                except (ProcessLookupError, AssertionError):
                    self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for t in self._pumps:
            t.join(5)  # every line it wrote
        return self.proc.returncode

    # -- its log --------------------------------------------------------------------

    def entries(self) -> list[dict]:
        """The JSON log lines of its output so far, as objects."""
        return [e for e in map(log_entry, list(self.output)) if e is not None]

    def happenings(self, name: str, **fields) -> list[dict]:
        """Its log's happenings ``name`` (``"event": name``) whose fields have the
        values given."""
        return [e for e in self.entries() if e.get("event") == name
                and all(e.get(k) == v for k, v in fields.items())]

    def wait_happening(self, name: str, timeout: float = 10.0, **fields) -> dict:
        """The first happening ``name`` with those fields, once it is logged."""
        return wait_for(lambda: self.happenings(name, **fields),
                        f"the happening {name} {fields}", timeout)[0]

    # -- the checks of its end -------------------------------------------------------

    def expect_log(self, *patterns: str) -> None:
        """Lines this gateway's log may have although they are errors (regexes searched
        in the record's first line): a test that provokes them on purpose says so."""
        self.expected_log.extend(patterns)

    def settle_output(self, quiet: float = 0.2, timeout: float = 3.0) -> None:
        """Wait until the output has been still for ``quiet`` seconds: what the workers
        logged about the last requests is in (a worker may log after it answered)."""
        deadline = time.monotonic() + timeout
        seen, since = len(self.output), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < quiet:
            time.sleep(0.02)
            if len(self.output) != seen:
                seen, since = len(self.output), time.monotonic()

    def log_problems(self, allowed=(), known=KNOWN_DEFECTS) -> list[str]:
        """The records of the output not checked yet that are errors nobody expected;
        each is reported once."""
        out = []
        records = log_records(list(self.output))
        for start, record in records:
            if start < self._checked or start in self._reported:
                continue
            expected = [*self.expected_log, *allowed]
            if start == self._checked:  # judged before, under the test of its time
                expected += self._last_allowed
            if problem(record, expected, known):
                self._reported.add(start)
                out.append("".join(record).rstrip("\n"))
        if records:  # the last record may grow (a traceback being written): again later
            if records[-1][0] != self._checked:
                self._last_allowed = []
            self._checked = records[-1][0]
            self._last_allowed = [*self._last_allowed, *allowed]
        return out

    def finish(self, allowed=(), known=KNOWN_DEFECTS) -> list[str]:
        """Stop (SIGTERM: a drain) and say what is wrong: an exit code other than 0, and
        the unexpected errors of the log. Done once; the gateway leaves ``live``."""
        if self in Gateway.live:
            Gateway.live.remove(self)
        code = self.stop()
        failures = []
        if self.proc is not None and code != 0:
            tail = "".join(self.output[-30:])
            failures.append(f"gateway {self.args[2:5]} on port {self.port} exited with {code}; "
                            f"its last lines:\n{tail}")
        failures += [f"gateway on port {self.port} logged:\n{p}"
                     for p in self.log_problems(allowed, known)]
        return failures

    def close(self) -> None:
        """For a fixture that owns a shared gateway: finish it, failing on what is wrong."""
        failures = self.finish()
        if failures:
            raise GatewayLogError("\n\n".join(failures))

    def assert_finished_cleanly(self, allowed=()) -> None:
        """``finish`` inside the test itself (GatewayLogError on what is wrong), known
        defects included: for a test whose gateway's end is its subject."""
        failures = self.finish(allowed, known=())
        if failures:
            raise GatewayLogError("\n\n".join(failures))

    # -- one-shot requests (a new connection each: spreads over workers) -------

    def request(self, method, path, body=None, headers=None, raw_body: bytes | None = None):
        conn = HTTPConnection("127.0.0.1", self.port, timeout=10,
                              source_address=(self.source, 0) if self.source else None)
        try:
            data = raw_body if raw_body is not None else (
                json.dumps(body).encode() if body is not None else None)
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            payload = r.read()
            try:
                parsed = json.loads(payload) if payload else None
            except ValueError:
                parsed = payload
            return r.status, parsed, dict(r.getheaders())
        finally:
            conn.close()

    def admin(self, method, path, body=None):
        return self.request(method, path, body, {"Authorization": f"Bearer {ADMIN}"})

    def put_event(self, event_id: str, body: dict) -> dict:
        status, data, _ = self.admin("PUT", f"/api/v1/admin/events/{event_id}", body)
        assert status in (200, 201), (status, data)
        self.wait_event(event_id)
        return data

    def wait_event(self, event_id: str, timeout: float = 5.0) -> None:
        """Every worker knows the event: 24 fresh connections in a row see it (with 2
        workers, the chance that all 24 landed on one is about 1 in 8 million)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.request("GET", f"/api/v1/events/{event_id}")[0] == 200
                   for _ in range(24)):
                return
            time.sleep(0.05)
        raise AssertionError(f"event {event_id} not visible on every worker")

    def on_every_worker(self, check, what: str, timeout: float = 5.0, n: int = 24) -> None:
        """Wait until ``check()`` (one request on a fresh connection) holds ``n`` times in
        a row: the kernel spreads connections over the workers at random, so 24 in a row
        have all met the same one of 2 workers with a chance of 1 in 8 million."""
        wait_for(lambda: all(check() for _ in range(n)), f"{what} on every worker", timeout)

    def wait_state(self, event_id: str, state: str, timeout: float = 5.0) -> None:
        """Every worker's public view of the event is in ``state`` (live, sold_out...)."""
        self.on_every_worker(
            lambda: self.request("GET", f"/api/v1/events/{event_id}")[1].get("state") == state,
            f"event {event_id} {state}", timeout)

    def buy(self, event_id, sku, user, qty=1, headers=None):
        h = {**self.who(user), **(headers or {})}
        return self.request("POST", f"/api/v1/events/{event_id}/buy", {"sku": sku, "qty": qty}, h)

    def buy_request(self, event_id, sku, user, qty=1, idem=None, tag=None):
        """A buy of ``user`` as ``http_session`` sends it: (method, path, headers,
        body, tag)."""
        headers = {**self.who(user), "Content-Type": "application/json"}
        if idem is not None:
            headers["Idempotency-Key"] = idem
        body = json.dumps({"sku": sku, "qty": qty}).encode()
        return ("POST", f"/api/v1/events/{event_id}/buy", headers, body, tag or (user, sku))

    def buy_bytes(self, event_id, sku, user, qty=1, extra: str = "") -> bytes:
        """A whole buy request of ``user`` as bytes (keep-alive; ``extra``: more header
        lines, each ending in CRLF)."""
        payload = json.dumps({"sku": sku, "qty": qty}).encode()
        head = f"POST /api/v1/events/{event_id}/buy HTTP/1.1\r\nHost: t\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self.who(user).items())
        head += f"Content-Length: {len(payload)}\r\n{extra}\r\n"
        return head.encode() + payload

    def orders_export(self, event_id) -> list[dict]:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=30,
                              source_address=(self.source, 0) if self.source else None)
        try:
            conn.request("GET", f"/api/v1/admin/events/{event_id}/orders",
                         headers={"Authorization": f"Bearer {ADMIN}"})
            r = conn.getresponse()
            assert r.status == 200
            return [json.loads(line) for line in r.read().splitlines() if line]
        finally:
            conn.close()


# -- the processes of a gateway ---------------------------------------------------------


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def worker_pids(gw: Gateway) -> list[int]:
    """The supervisor's children, less multiprocessing's resource tracker."""
    pids = []
    for pid in children(gw.supervisor_pid()):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"resource_tracker" not in cmd:
            pids.append(pid)
    return pids


def _socket_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the server side of a loopback TCP connection (IPv4)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if int(local.split(":")[1], 16) == local_port and \
                    int(remote.split(":")[1], 16) == remote_port and inode:
                return inode
    return None


def serving_pid(gw: Gateway, sock) -> int | None:
    """The pid of the worker that accepted the client socket ``sock`` (connected to
    ``gw``): the worker process holding the server side of that connection."""
    inode = _socket_inode(gw.port, sock.getsockname()[1])
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in worker_pids(gw):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def server_side_open(gw: Gateway, sock) -> bool:
    """Whether the server still holds its side of the client socket ``sock`` (a
    connection the server closed or aborted has none, whatever the client left unread)."""
    return _socket_inode(gw.port, sock.getsockname()[1]) is not None


# -- a small asyncio keep-alive client for concurrent load -------------------------


async def read_response(reader: asyncio.StreamReader, timeout: float = 30.0):
    """One HTTP/1.1 response with a Content-Length body: ``(status, json or None)``,
    or ``None`` when the server closed the connection instead."""
    status_line = await asyncio.wait_for(reader.readline(), timeout)
    if not status_line:
        return None
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    payload = await reader.readexactly(length) if length else b""
    return status, (json.loads(payload) if payload else None)


async def http_session(port: int, requests, results: list, *, timeout=30.0):
    """Send ``requests`` ([(method, path, headers, body_bytes, tag)]) one after the
    other on ONE keep-alive connection; append (tag, status, json) to ``results``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for method, path, headers, body, tag in requests:
            head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(head.encode() + b"\r\n" + body)
            status, data = await read_response(reader, timeout)
            results.append((tag, status, data))
    finally:
        writer.close()


# -- invariants -----------------------------------------------------------------------


def check_invariants(r: redis.Redis, gw: Gateway | None, event_id: str, event: dict,
                     acked: list[dict], *, exact: bool = True, revenue: bool = True) -> dict:
    """The promises, checked against Redis (and the API when ``gw`` is given):
    sold <= stock; sum(buyers) == sold == created orders in the stream == orders_n;
    the event's units == sum of its SKUs' sold; revenue == sum of the live orders'
    amounts; nobody over the limit; every acknowledged order present; no duplicate
    order ids.
    ``exact``: every order in Redis was acknowledged (no client saw an indeterminate
    answer, and no order came another way). ``revenue``: check it (False only for a
    test that breaks the revenue key on purpose). Returns per-SKU figures."""
    # The order lifecycle: stock is the defined stock plus the units added; sold and each
    # buyer's units are those of the live orders (reserved, paid, or ended after the
    # sale's end with their units kept), not of every created one; no order is in two
    # final states (at most one transition each, and its record says the last); the
    # units returned and paid are as the orders say.
    figures = {}
    acked_ids = [o["order_id"] for o in acked]
    assert len(acked_ids) == len(set(acked_ids)), "an order id was acknowledged twice"
    all_stream_ids: set[str] = set()
    for sku in event["skus"]:
        k = keys.SkuKeys(event_id, sku["id"])
        stock = int(r.get(k.stock) or 0)
        sold = int(r.get(k.sold) or 0)
        added = int(r.get(k.added) or 0)
        buyers = {u.decode(): int(v) for u, v in r.hgetall(k.buyers).items()}
        created = []  # (order id, user, qty, unit_price) of every "created" entry
        ended: dict[str, list[str]] = {}  # order id -> the transitions of the stream
        for _, fields in r.xrange(k.orders):
            kind, _, found = orders.stream_orders(fields)
            if kind == "created":
                created += found
            else:
                assert kind in ("paid", "cancelled", "expired"), f"stream entry type {kind!r}"
                for o in found:
                    ended.setdefault(o[0], []).append(kind)
        ids = [o[0] for o in created]
        assert len(ids) == len(set(ids)), f"{sku['id']}: duplicate order ids in the stream"
        assert stock == sku["stock"] + added, (
            f"{sku['id']}: stock {stock}, defined {sku['stock']} + {added} added")
        assert sold <= stock, f"{sku['id']}: oversold {sold} > {stock}"
        assert sum(buyers.values()) == sold, f"{sku['id']}: sum(buyers) {sum(buyers.values())} != sold {sold}"
        assert int(r.get(k.orders_n) or 0) == len(ids)
        # every order of the stream has its record, and no record is without its entry
        records = {}
        for i in range(0, len(ids), 1000):
            chunk = ids[i:i + 1000]
            records.update(zip(chunk, r.hmget(k.order_by_id, chunk), strict=True))
        live_per_user: dict[str, int] = {}
        returned = paid = 0
        for o, user, qty, price in created:
            got = orders.from_record(o, records[o])
            assert got is not None, f"{sku['id']}: order {o} of the stream has no record"
            assert (got["user_id"], got["qty"], got["unit_price"]) == (user, qty, price), o
            steps = ended.pop(o, [])
            assert len(steps) <= 1, f"{sku['id']}: order {o} ended twice: {steps}"
            status = got["status"]
            assert status == ({"paid": "paid", "cancelled": "cancelled", "expired": "expired"}
                              [steps[0]] if steps else "reserved"), (o, status, steps)
            if status in orders.LIVE or orders.kept(records[o]):
                live_per_user[user] = live_per_user.get(user, 0) + qty
            else:
                returned += qty
            if status == "paid":
                paid += qty
        assert not ended, f"{sku['id']}: transitions of orders never created: {list(ended)[:5]}"
        assert sum(live_per_user.values()) == sold, (
            f"{sku['id']}: units of live orders {sum(live_per_user.values())} != sold {sold}")
        assert int(r.get(k.returned) or 0) == returned, f"{sku['id']}: units returned"
        assert int(r.get(k.units_paid) or 0) == paid, f"{sku['id']}: units paid"
        assert r.hlen(k.order_by_id) == sum(v is not None for v in records.values()), (
            f"{sku['id']}: records without a stream entry")
        over = {u: n for u, n in buyers.items() if n > sku["per_user_limit"]}
        assert not over, f"{sku['id']}: users over the limit: {over}"
        assert live_per_user == buyers, f"{sku['id']}: buyers hash != live orders per user"
        all_stream_ids.update(ids)
        figures[sku["id"]] = {"stock": stock, "sold": sold, "orders": len(ids),
                              "buyers": len(buyers)}
    # the event's units (milestones count them) are the units its SKUs hold; each
    # SKU's revenue is the exact sum of its live orders' amounts (across price tiers)
    units = r.get(keys.event_units(event_id))
    if units is not None:
        total = sum(f["sold"] for f in figures.values())
        assert int(units) == total, f"event units {int(units)} != sold over its SKUs {total}"
    for sku in event["skus"] if revenue else ():
        k = keys.SkuKeys(event_id, sku["id"])
        amounts = 0
        for o, raw in r.hscan_iter(k.order_by_id):
            got = orders.from_record(o.decode(), raw)
            if got["status"] in orders.LIVE or orders.kept(raw):
                amounts += got["amount"]
        assert int(r.get(k.revenue) or 0) == amounts, (
            f"{sku['id']}: revenue {int(r.get(k.revenue) or 0)} != amounts of live orders {amounts}")
    missing = [o for o in acked_ids if o not in all_stream_ids]
    assert not missing, f"acknowledged orders missing from Redis: {missing[:5]}"
    for o in acked:
        k = keys.SkuKeys(event_id, o["sku"])
        stored = orders.from_record(o["order_id"], r.hget(k.order_by_id, o["order_id"]))
        assert stored and stored["user_id"] == o["user_id"], f"order {o['order_id']} not stored"
        assert stored["qty"] == o["qty"]
    if exact:
        unacked = all_stream_ids - set(acked_ids)
        assert not unacked, f"orders in Redis that no client was told of: {sorted(unacked)[:5]}"
    if gw is not None:
        exported = gw.orders_export(event_id)
        ex_ids = [o["order_id"] for o in exported]
        assert len(ex_ids) == len(set(ex_ids)), "duplicate order ids in the export"
        assert set(ex_ids) == all_stream_ids, "export != orders in the streams"
    return figures


def crossing_bounds(r, ev, sku_ids):
    """Every created order of the event in commit order, as far as the streams tell it:
    ``{order id: (lo, hi, qty)}`` where the event's units before the order lie in
    [lo, hi]. Entries of one SKU are in order; entries of different SKUs are ordered
    by their stream ids' time, and those of the same millisecond may be in either
    order (hi - lo counts them). For sales without returns (``created`` entries only)."""
    entries = []  # (ms, sku index, seq, [(order id, qty)])
    for i, sku in enumerate(sku_ids):
        for eid, fields in r.xrange(keys.SkuKeys(ev, sku).orders):
            kind, _, found = orders.stream_orders(fields)
            ms, seq = (int(x) for x in eid.split(b"-"))
            if kind == "created":
                entries.append((ms, i, seq, [(o, q) for o, _u, q, _p in found]))
    entries.sort()
    out = {}
    for ms, i, seq, found in entries:
        lo = sum(q for m2, i2, s2, f2 in entries for _, q in f2
                 if m2 < ms or (i2 == i and (m2, s2) < (ms, seq)))
        tied = sum(q for m2, i2, _s2, f2 in entries for _, q in f2 if m2 == ms and i2 != i)
        for o, q in found:
            out[o] = (lo, lo + tied, q)
            lo += q
    return out
