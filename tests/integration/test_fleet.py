"""Many instances behind a real load balancer: three ``flashgate serve`` (2 workers
each) on one Redis behind HAProxy (Debian's ``haproxy``) started from the shipped
deploy/haproxy.cfg, as operators run it: PROXY protocol v2 to the instances, health
checks on /readyz, buyers' keep-alive connections, signed buyer tokens and the rate
limits on.

Buyers connect to HAProxy from addresses of their own (127.0.0.10 and up: Linux
routes all of 127/8 to lo), so the per-IP limit is seen to key on the address HAProxy
reports in its PROXY header; HAProxy reaches the instances from 127.0.0.1, the only
address they take PROXY headers from (``--proxy-protocol-from 127.0.0.1/32``), and
the test's own requests straight to an instance (operator calls, stream subscribers)
come from 127.0.0.2, as plain HTTP.

Then: a sale through the balancer (invariants, the per-user limit across instances,
the per-IP limit on the real client address, stats and streams that agree on every
instance); a rolling restart under load that fails no request; a kill -9 of a whole
instance under load that loses no acknowledged order (accounted Jepsen-style, as in
test_faults.py). And the deploy files' facts (compose topology, Dockerfile), which
no Docker engine here can run."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest

from flashgate.embedded import free_port
from tests.integration.test_faults import History
from tests.integration.test_stream import Sse, snapshot
from tests.support import (
    ADMIN,
    USER_SECRET,
    Gateway,
    check_invariants,
    event_body,
    new_id,
    now_ms,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
HAPROXY_CFG = DEPLOY / "haproxy.cfg"

# Debian's haproxy is in /usr/sbin, which a user's PATH may lack; each test that runs
# it is also marked ci_required (CI installs it)
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/local/sbin:/usr/sbin")
no_haproxy = pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (Debian's package)")

DIRECT = "127.0.0.2"  # the test's own connections straight to an instance
# Every instance: PROXY headers from the balancer only; a drain keeps /readyz 503 for
# 3 s before the listener closes (HAProxy's checks, 1 s apart then 0.5 s, take a
# server out after two failures: within about 1.5 s); the default per-user rate
# limit; a per-IP limit of 20/s, burst 40 (per worker process).
IP_RATE, IP_BURST = 20, 40
FLEET_FLAGS = ["--proxy-protocol-from", "127.0.0.1/32", "--drain-delay", "3",
               "--ip-rate", str(IP_RATE), "--ip-burst", str(IP_BURST),
               "--user-rate", "5", "--user-burst", "10"]


def buyer_address(k: int) -> str:
    """The source address of buyer connection ``k`` (127.0.0.10 ... 127.0.0.249)."""
    return f"127.0.0.{10 + k % 240}"


class Fleet:
    """``n`` gateways of ``workers`` workers on one Redis, and HAProxy in front of them
    from deploy/haproxy.cfg (the servers' addresses and the ports in its environment)."""

    def __init__(self, redis_url: str, tmp: Path, n: int = 3, workers: int = 2):
        self.redis_url = redis_url
        self.tmp = tmp
        self.workers = workers
        # the production identity: signed buyer tokens, the secret from a file (0600)
        self.secret = tmp / "user_secret"
        self.secret.write_text(USER_SECRET + "\n")
        self.secret.chmod(0o600)
        self.gws = [self._gateway(i) for i in range(n)]
        self.haproxy: subprocess.Popen | None = None
        self.port = self.stats_port = 0

    def _gateway(self, i: int, port: int = 0) -> Gateway:
        # (no --dev: the user secret makes buyers who their tokens say; the rate limits
        # given here replace the helper's "off" for dev identity, the later flag wins)
        extra = [*FLEET_FLAGS, "--user-secret-file", str(self.secret), "--port", str(port)]
        return Gateway(self.redis_url, self.tmp / f"fg{i + 1}", workers=self.workers,
                       extra=extra, source=DIRECT)

    def start(self) -> Fleet:
        for g in self.gws:
            g.start()
        self.port, self.stats_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FG")}
        env |= {"FG_LISTEN": f"127.0.0.1:{self.port}",
                "FG_STATS_LISTEN": f"127.0.0.1:{self.stats_port}"}
        for i, g in enumerate(self.gws):
            env[f"FG{i + 1}_ADDR"] = f"127.0.0.1:{g.port}"
        self.log = open(self.tmp / "haproxy.log", "w")  # (closed in stop)
        self.haproxy = subprocess.Popen([HAPROXY, "-f", str(HAPROXY_CFG), "-db"], env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        for i in range(len(self.gws)):
            self.wait_server(i, "UP", timeout=15)
        return self

    def haproxy_log(self) -> str:
        return (self.tmp / "haproxy.log").read_text()

    def stop(self) -> None:
        """Stop HAProxy, then drain every instance at once (tests/conftest.py then checks
        each one's exit code and log)."""
        if self.haproxy is not None:  # (None: the gateways did not all start)
            if self.haproxy.poll() is None:
                self.haproxy.terminate()
                try:
                    self.haproxy.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.haproxy.pid, signal.SIGKILL)
                    self.haproxy.wait()
            self.log.close()
        running = [g for g in self.gws if g.proc is not None and g.proc.poll() is None]
        for g in running:
            os.kill(g.supervisor_pid(), signal.SIGTERM)
        for g in running:
            try:
                g.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass  # (the check of its end says so)

    # -- HAProxy's view ------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's stats CSV: the backend's rows by server name (fg1, ..., BACKEND) and
        the buyers' frontend as FRONTEND."""
        conn = HTTPConnection("127.0.0.1", self.stats_port, timeout=5)
        try:
            conn.request("GET", "/stats;csv")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {row["svname"]: row for row in rows
                if row["pxname"] == "flashgate" or (row["pxname"], row["svname"])
                == ("buyers", "FRONTEND")}

    def status(self, i: int) -> str:
        """HAProxy's word for instance ``i`` (UP, DOWN, "DOWN 1/2", ...), or "" while
        HAProxy does not answer yet."""
        assert self.haproxy.poll() is None, f"haproxy exited:\n{self.haproxy_log()}"
        try:
            return self.stats()[f"fg{i + 1}"]["status"]
        except OSError:
            return ""

    def wait_server(self, i: int, status: str, timeout: float = 10.0) -> float:
        """Wait until HAProxy reports instance ``i`` ``status`` (UP, DOWN): when it did."""
        wait_for(lambda: self.status(i).startswith(status), f"HAProxy: fg{i + 1} {status}",
                 timeout, interval=0.05)
        return time.monotonic()

    def counts(self, name: str) -> dict[str, int]:
        row = self.stats()[name]
        return {k: int(row[k] or 0) for k in ("stot", "hrsp_2xx", "hrsp_4xx", "hrsp_5xx",
                                                "econ", "eresp", "wretr", "wredis")
                if k in row}

    # -- the instances -------------------------------------------------------------

    def replace(self, i: int) -> Gateway:
        """A new gateway in place of instance ``i`` (stopped), on its port, started."""
        g = self._gateway(i, port=self.gws[i].port)
        self.gws[i] = g
        return g.start()

    def request(self, method: str, path: str, headers=None, source: str = buyer_address(238)):
        """One request through the balancer: ``(status, body)``."""
        conn = HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(source, 0))
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            payload = resp.read()
            try:
                return resp.status, json.loads(payload)
            except ValueError:
                return resp.status, payload
        finally:
            conn.close()

    def put_event(self, ev: str, body: dict) -> None:
        self.gws[0].put_event(ev, body)
        for g in self.gws[1:]:
            g.wait_event(ev)


@pytest.fixture
def fleet(redis_server, tmp_path):
    f = Fleet(redis_server.url, tmp_path)
    try:
        yield f.start()
    finally:
        f.stop()  # (the gateways are stopped and checked by tests/conftest.py)


# -- buyers through the balancer -----------------------------------------------------


async def read_answer(reader: asyncio.StreamReader, timeout: float = 15.0):
    """One response: ``(status, body, close)``, the body parsed as JSON if it is (an
    error page of HAProxy is not), or None when the connection ended first."""
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line:
        return None
    status = int(line.split()[1])
    length, close = 0, False
    while True:
        h = await asyncio.wait_for(reader.readline(), timeout)
        if h in (b"\r\n", b""):
            break
        name, _, value = h.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and b"close" in value.lower():
            close = True
    payload = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
    try:
        body = json.loads(payload) if payload else None
    except ValueError:
        body = payload
    return status, body, close


class Buyer:
    """A keep-alive connection to the balancer from its own source address; a new one
    after the balancer closes it."""

    def __init__(self, port: int, source: str):
        self.port = port
        self.source = source
        self.reader = self.writer = None
        self.connections = 0

    async def send(self, raw: bytes):
        """``(status, body)``, or None: no answer (the connection failed or ended)."""
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(self.source, 0))
                self.connections += 1
            self.writer.write(raw)
            got = await read_answer(self.reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            got = None
        if got is None or got[2]:
            self.close()
        return None if got is None else got[:2]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def boot_of(order_id: str) -> str:
    """The worker part of an order id (``<event>.<sku>.<boot><16 hex digits>``)."""
    return order_id.rsplit(".", 1)[1][:-16]


def admin_stats(g: Gateway, ev: str) -> dict:
    status, data, _ = g.admin("GET", f"/api/v1/admin/events/{ev}/stats")
    assert status == 200, data
    return data


# -- the sale ------------------------------------------------------------------------


@pytest.mark.ci_required
@no_haproxy
def test_a_sale_through_haproxy_across_three_instances(fleet, r, capsys):
    """Buyers through HAProxy, each request of a user balanced on its own: the sale
    sells out with every invariant; no user gets more than the per-user limit although
    their requests reach different instances (Redis decides it); every instance sold;
    the per-IP limit counts the address HAProxy reports (one address's burst is limited,
    another address is not), and adds up over the instances' workers; stats asked of
    every instance, and streams on every worker and through HAProxy, agree."""
    ev = new_id("fleet")
    body = event_body(stock=(600, 300), limits=(2, 1))
    fleet.put_event(ev, body)
    g0 = fleet.gws[0]

    # a subscriber on every worker of every instance (the snapshot's id names its
    # worker), and one through the balancer
    subs: dict[str, tuple[int, Sse]] = {}  # worker boot id -> (instance, subscriber)
    for i, g in enumerate(fleet.gws):
        for _ in range(60):
            c = Sse(g.port, ev, source=DIRECT)
            snapshot(c, 2)
            boot = c.last_id.split(".")[0]
            if boot in subs:
                c.close()
            else:
                subs[boot] = (i, c)
            if sum(1 for j, _ in subs.values() if j == i) == fleet.workers:
                break
    assert len(subs) == len(fleet.gws) * fleet.workers, "a worker without a subscriber"
    via_lb = Sse(fleet.port, ev, source=buyer_address(239))
    assert via_lb.status == 200, via_lb.headers
    snapshot(via_lb, 2)
    streams = [c for _, c in subs.values()] + [via_lb]

    # the rush: 400 users, each asking 3 times for s0 (limit 2) and twice for s1
    # (limit 1), the requests shuffled over 64 keep-alive connections from 64 addresses
    users = [f"buyer{n:03d}x" for n in range(400)]
    wanted = [(u, "s0") for u in users for _ in range(3)] + [(u, "s1") for u in users
                                                             for _ in range(2)]
    random.Random(7).shuffle(wanted)
    conns = 64
    answers: list[tuple[str, str, int, object]] = []

    async def rush():
        async def one(k):
            b = Buyer(fleet.port, buyer_address(k))
            for user, sku in wanted[k::conns]:
                got = await b.send(g0.buy_bytes(ev, sku, user))
                assert got is not None, f"no answer for {user} {sku}"
                answers.append((user, sku, *got))
            b.close()
        await asyncio.gather(*(one(k) for k in range(conns)))

    t0 = time.monotonic()
    asyncio.run(rush())
    rush_s = time.monotonic() - t0
    kinds = {}
    for _, _, status, data in answers:
        key = (status, data.get("error") if isinstance(data, dict) else None)
        kinds[key] = kinds.get(key, 0) + 1
    assert set(kinds) <= {(200, None), (409, "sold_out"), (409, "limit_exceeded")}, kinds
    acked = [data for _, _, status, data in answers if status == 200]
    figures = check_invariants(r, g0, ev, body, acked)
    assert {s: f["sold"] for s, f in figures.items()} == {"s0": 600, "s1": 300}
    # the per-user limit, over every instance
    per_user: dict[tuple[str, str], list[str]] = {}
    for o in acked:
        per_user.setdefault((o["user_id"], o["sku"]), []).append(o["order_id"])
    limits = {"s0": 2, "s1": 1}
    over = {k: v for k, v in per_user.items() if len(v) > limits[k[1]]}
    assert not over, over
    assert kinds[(409, "limit_exceeded")] > 0
    instance_of = {boot: i for boot, (i, _) in subs.items()}
    sold_by = [0] * len(fleet.gws)
    for o in acked:
        sold_by[instance_of[boot_of(o["order_id"])]] += 1
    assert all(sold_by), f"an instance sold nothing: {sold_by}"
    # users whose two units of s0 were sold by two instances: the limit held across them
    across = sum(1 for (u, s), ids in per_user.items()
                 if s == "s0" and len({instance_of[boot_of(o)] for o in ids}) == 2)
    assert across > 0
    routed = {f"fg{i + 1}": fleet.counts(f"fg{i + 1}")["hrsp_2xx"] for i in range(3)}

    # the per-IP limit: a burst from one address (each request another user's, for an
    # event that has not started: an admitted request is 409 not_started), then a few
    # requests from another address
    later = new_id("later")
    start = now_ms() + 3_600_000
    later_body = event_body(stock=(5,), starts=start, ends=start + 600_000)
    fleet.put_event(later, later_body)
    burst_answers: list[int] = []
    other_answers: list[int] = []

    async def burst():
        async def one(k, n, source, out):
            b = Buyer(fleet.port, source)
            tag = source.rsplit(".", 1)[1]
            for j in range(n):
                got = await b.send(g0.buy_bytes(later, "s0", f"ip{tag}-{k}-{j}"))
                assert got is not None
                out.append(got[0])
            b.close()
        await asyncio.gather(*(one(k, 75, "127.0.0.250", burst_answers) for k in range(8)))
        t = time.monotonic()
        await one(0, 30, "127.0.0.251", other_answers)
        return t

    t0 = time.monotonic()
    t_end = asyncio.run(burst())
    burst_s = t_end - t0
    admitted = burst_answers.count(409)
    limited = burst_answers.count(429)
    assert admitted + limited == len(burst_answers) == 600, set(burst_answers)
    n_workers = len(fleet.gws) * fleet.workers
    # each worker of each instance has a bucket per address: together they admit more
    # than one worker's burst, and at most every worker's burst and rate
    assert IP_BURST < admitted <= n_workers * (IP_BURST + IP_RATE * burst_s) + n_workers, (
        admitted, burst_s)
    assert limited > 0
    assert other_answers == [409] * 30, other_answers  # another address: its own buckets
    check_invariants(r, g0, later, later_body, [])

    # stats asked of every instance (and through the balancer) agree with Redis and
    # with what the buyers were told
    orders, units = len(acked), sum(o["qty"] for o in acked)

    def agreed():
        got = [admin_stats(g, ev) for g in fleet.gws]
        return got if all(s["attempts"] == len(answers) for s in got) else None

    every = wait_for(agreed, "every instance's stats to count every attempt", timeout=5)
    for s in every:
        assert (s["orders"], s["units_sold"]) == (orders, units), s
        assert {k["id"]: k["sold"] for k in s["skus"]} == {"s0": 600, "s1": 300}
        assert s["rejections"].get("limit_exceeded") == kinds[(409, "limit_exceeded")]
    status, via = fleet.request("GET", f"/api/v1/admin/events/{ev}/stats",
                                {"Authorization": f"Bearer {ADMIN}"})
    assert status == 200 and via["units_sold"] == units, via
    # every stream (each worker's, and the balancer's) told every order and the end
    for c in streams:
        c.wait(lambda n, d: n == "state" and d["state"] == "sold_out", "sold_out", timeout=5)
        told = sum(d.get("more", 1) for d in c.named("order"))
        assert told == orders, (told, orders)
        last = {d["sku"]: d["sold"] for d in c.named("stock")}
        assert last == {"s0": 600, "s1": 300}, last
        c.close()
    with capsys.disabled():
        print(f"\n[fleet sale] {len(answers)} requests in {rush_s:.1f} s over {conns} "
              f"connections: {kinds}; orders per instance {sold_by}; routed 2xx {routed}; "
              f"users sold s0 by two instances: {across}; per-IP burst: {admitted} of 600 "
              f"admitted in {burst_s:.2f} s over {n_workers} workers, another address "
              f"30 of 30; streams agreeing: {len(streams)}")


# -- instances going away under load -----------------------------------------------


def from_an_instance(got):
    """A buyer's answer as an instance gave it: None for no answer, and for HAProxy's
    own error page (502/503/504, not JSON: the instance gave no answer, or none was
    reachable)."""
    if got is not None and got[0] >= 500 and not isinstance(got[1], dict):
        return None
    return got


async def load(fleet: Fleet, ev: str, record, done: threading.Event, prefix: str,
               buyers: list[Buyer], clients: int = 32, rate: float = 30.0):
    """``clients`` keep-alive buyers through the balancer (appended to ``buyers``),
    each from its own address and at most ``rate`` requests a second (well within the
    per-IP limit of the instances' workers together), each request a new user's
    purchase of s0, until ``done``; ``record(user, answer)`` for each."""
    signer = fleet.gws[0]  # (every instance has the same user secret)

    async def one(k):
        b = Buyer(fleet.port, buyer_address(k))
        buyers.append(b)
        n = 0
        while not done.is_set():
            user = f"{prefix}{k}x{n}"
            n += 1
            t = time.monotonic()
            record(user, await b.send(signer.buy_bytes(ev, "s0", user)))
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - t)))
        b.close()

    await asyncio.gather(*(one(k) for k in range(clients)))


def run_with_load(fleet: Fleet, ev: str, record, prefix: str, action) -> list[Buyer]:
    """Buyers through the balancer while ``action()`` runs (in a thread of its own),
    and for half a second after it: the buyers."""
    done = threading.Event()
    buyers: list[Buyer] = []

    def act():
        try:
            action()
            time.sleep(0.5)
        finally:
            done.set()

    async def main():
        loop = asyncio.get_running_loop()
        await asyncio.gather(load(fleet, ev, record, done, prefix, buyers),
                             loop.run_in_executor(None, act))

    asyncio.run(main())
    return buyers


@pytest.mark.ci_required
@no_haproxy
def test_a_rolling_restart_under_load_fails_no_request(fleet, r, capsys):
    """Each instance in turn, under load through the balancer: SIGTERM; its /readyz
    turns 503 and HAProxy takes it out before its listener closes (--drain-delay 3);
    it exits 0; a new one starts on its port, is ready, HAProxy puts it back and it
    sells again. Every request the balancer routed got a real answer (200): no reset,
    no 5xx of HAProxy, no buyer's connection closed; the invariants hold with every
    order acknowledged."""
    ev = new_id("roll")
    body = event_body(stock=(1_000_000,))
    fleet.put_event(ev, body)
    answers: dict[object, int] = {}
    acked: list[dict] = []
    failed: list[tuple[str, object]] = []
    steps: list[dict] = []

    def record(user, got):
        key = None if got is None else got[0]
        answers[key] = answers.get(key, 0) + 1
        if got is not None and got[0] == 200:
            acked.append(got[1])
        else:
            failed.append((user, got))

    def roll():
        wait_for(lambda: len(acked) >= 300, "300 units sold", timeout=20)
        for i in range(len(fleet.gws)):
            old = fleet.gws[i]
            name = f"fg{i + 1}"
            sold_before = len(acked)
            t0 = time.monotonic()
            os.kill(old.supervisor_pid(), signal.SIGTERM)
            t_down = fleet.wait_server(i, "DOWN", timeout=10)
            code = old.proc.wait(30)
            t_exit = time.monotonic()
            assert old.stop() == code == 0, f"{name} exited with {code}"
            new = fleet.replace(i)  # (started and ready)
            t_ready = time.monotonic()
            t_up = fleet.wait_server(i, "UP", timeout=10)
            served = fleet.counts(name)["hrsp_2xx"]
            wait_for(lambda n=name, s=served: fleet.counts(n)["hrsp_2xx"] > s + 50,
                     f"{name} to sell again", timeout=10)
            steps.append({"instance": name, "down_s": round(t_down - t0, 2),
                          "exit_s": round(t_exit - t0, 2), "ready_s": round(t_ready - t0, 2),
                          "up_s": round(t_up - t0, 2), "sold_meanwhile": len(acked) - sold_before,
                          "pid": new.proc.pid})
            # HAProxy took it out while its listener was still open (the drain delay)
            assert t_down - t0 < 3.0, steps[-1]

    buyers = run_with_load(fleet, ev, record, "r", roll)
    front = fleet.counts("FRONTEND")
    back = fleet.counts("BACKEND")
    assert not failed, f"{len(failed)} requests failed, e.g. {failed[:5]}; answers {answers}"
    # and no buyer's keep-alive connection to the balancer was closed
    assert [b.connections for b in buyers] == [1] * len(buyers)
    assert front["hrsp_5xx"] == 0 and back["eresp"] == 0, (front, back)
    check_invariants(r, fleet.gws[0], ev, body, acked)
    with capsys.disabled():
        print(f"\n[fleet rolling restart] answers {answers}, failed {len(failed)}; "
              f"HAProxy: connection errors {back['econ']}, retries {back['wretr']}, "
              f"redispatches {back['wredis']}, 5xx {front['hrsp_5xx']}; "
              f"per instance (s after SIGTERM): {steps}")


@pytest.mark.ci_required
@no_haproxy
def test_kill_9_of_a_whole_instance_under_load_loses_no_acknowledged_order(fleet, r, capsys):
    """kill -9 of an instance's supervisor and workers (its process group) while buyers
    buy through the balancer, with requests in flight on it: those are indeterminate
    (HAProxy answers 502, or, after the first request of a buyer's keep-alive
    connection, closes it without an answer, as a server would), the other instances
    go on selling, HAProxy takes it out;
    started again on its port it sells again. Accounted as in test_faults.py: every acknowledged order is in
    Redis, every order in Redis was acknowledged or indeterminate, no definite refusal
    left one; the invariants hold."""
    ev = new_id("kill")
    body = event_body(stock=(1_000_000,))
    fleet.put_event(ev, body)
    history = History()
    seen: dict[str, object] = {}

    raw: dict[object, int] = {}  # the answers as the buyers got them

    def record(user, got):
        key = None if got is None else got[0]
        raw[key] = raw.get(key, 0) + 1
        history.record(user, from_an_instance(got))

    def chaos():
        wait_for(lambda: len(history.ok) >= 500, "500 units sold", timeout=20)
        victim = fleet.gws[1]
        # requests in flight on it for sure: its processes stopped (SIGSTOP) until
        # HAProxy has a few open on it, then killed
        os.killpg(victim.proc.pid, signal.SIGSTOP)
        wait_for(lambda: int(fleet.stats()["fg2"]["scur"] or 0) >= 3,
                 "requests in flight on fg2", timeout=5)
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        t0 = time.monotonic()
        seen["ok_at_kill"] = len(history.ok)
        seen["down_s"] = round(fleet.wait_server(1, "DOWN", timeout=10) - t0, 2)
        at_down = len(history.ok)
        wait_for(lambda: len(history.ok) >= at_down + 500, "selling on two instances",
                 timeout=20)
        # its end is this test's subject: no exit code to check, and no error logged
        Gateway.live.remove(victim)
        assert not victim.log_problems(), victim.log_problems()
        fleet.replace(1)
        seen["up_s"] = round(fleet.wait_server(1, "UP", timeout=10) - t0, 2)
        served = fleet.counts("fg2")["hrsp_2xx"]
        wait_for(lambda: fleet.counts("fg2")["hrsp_2xx"] > served + 50,
                 "the new instance to sell", timeout=10)

    buyers = run_with_load(fleet, ev, record, "k", chaos)
    figures = history.check(r, ev, body)
    check_invariants(r, fleet.gws[0], ev, body, list(history.ok.values()), exact=False)
    assert figures["lost"] == 0 and history.ok
    assert figures["indeterminate"] >= 3, "the kill cut no request"
    back = fleet.counts("BACKEND")
    with capsys.disabled():
        print(f"\n[fleet kill -9 of an instance] answers {raw}; buyers' connections "
              f"{sum(b.connections for b in buyers)} for {len(buyers)} buyers; {figures}; "
              f"HAProxy: 5xx "
              f"{fleet.counts('FRONTEND')['hrsp_5xx']}, connection errors {back['econ']}, "
              f"retries {back['wretr']}, redispatches {back['wredis']}; {seen}")


# -- the deploy files ------------------------------------------------------------------
# No Docker engine runs here: the compose topology's HAProxy configuration is the one
# the tests above run; the rest is checked for the facts it must hold.


def seconds(text: str) -> float:
    """An HAProxy or compose duration ("500ms", "1s", "25s", "1h", "2m30s")."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?", text.strip())
    assert parts and "".join(n + u for n, u in parts) == text.strip(), text
    return sum(float(n) * units[u or "ms"] for n, u in parts)


def haproxy_cfg() -> dict:
    """The facts of deploy/haproxy.cfg that the instances' settings depend on."""
    lines = [line.split("#", 1)[0].strip() for line in HAPROXY_CFG.read_text().splitlines()]
    lines = [line for line in lines if line]
    default_server = next(line.split()[1:] for line in lines
                          if line.startswith("default-server "))
    params = dict(zip(default_server[1::2], default_server[2::2], strict=False)) | {
        "check": "check" in default_server, "send-proxy-v2": "send-proxy-v2" in default_server}
    timeouts = {line.split()[1]: seconds(line.split()[2]) for line in lines
                if line.startswith("timeout ")}
    return {"lines": lines, "server": params, "timeouts": timeouts}


def flags(command: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(command, command[1:], strict=False) if a.startswith("--")}


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions: ``(INSTRUCTION, arguments)``, continuations joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.ci_required
@no_haproxy
def test_the_haproxy_configuration_is_valid_and_fit_for_the_instances():
    """haproxy -c accepts deploy/haproxy.cfg with the compose file's environment, and
    with a third server; it refuses it without the second. Its timeouts outlast two
    stream heartbeats; only failed connections are retried, on another instance; the
    checks take an instance out well within the drain delay of the deploy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FG")}
    compose_env = load_compose()["services"]["haproxy"]["environment"]

    def check(extra):
        return subprocess.run([HAPROXY, "-c", "-f", str(HAPROXY_CFG)], env={**env, **extra},
                              capture_output=True, text=True, timeout=30)

    ok = check(compose_env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert check({**compose_env, "FG3_ADDR": "172.28.0.13:8080"}).returncode == 0
    missing = check({k: v for k, v in compose_env.items() if k != "FG2_ADDR"})
    assert missing.returncode != 0 and "server" in missing.stdout + missing.stderr

    cfg = haproxy_cfg()
    lines, server, timeouts = cfg["lines"], cfg["server"], cfg["timeouts"]
    assert "mode http" in lines and "option http-server-close" in lines
    assert "option httpchk GET /readyz" in lines and "http-check expect status 200" in lines
    assert "balance leastconn" in lines
    assert server["check"] and server["send-proxy-v2"]
    # retries: connection failures only (a request that reached an instance is never
    # sent again), each to another instance
    assert "retry-on conn-failure" in lines and "option redispatch 1" in lines
    assert not [line for line in lines if line.startswith("retry-on") and
                line != "retry-on conn-failure"]
    from flashgate.config import Config

    heartbeat = Config().stream_heartbeat
    assert min(timeouts["client"], timeouts["server"]) > 2 * heartbeat, timeouts
    # a draining instance answers /readyz 503 at once: it is out after a check within
    # "inter" and "fall - 1" more at "fastinter"; its drain delay (the listener still
    # open) must outlast that, with a second to spare
    out_within = seconds(server["inter"]) + (int(server["fall"]) - 1) * seconds(
        server["fastinter"])
    delays = [float(flags(FLEET_FLAGS)["--drain-delay"])] + [
        float(flags(load_compose()["services"][name]["command"])["--drain-delay"])
        for name in ("flashgate1", "flashgate2")]
    assert all(d >= out_within + 1.0 for d in delays), (out_within, delays)
    # a check may wait for an answer longer than a busy instance could take to give it
    assert timeouts["check"] >= 2.0


def load_compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_the_compose_topology(tmp_path, monkeypatch):
    """deploy/docker-compose.yml: Redis with AOF (everysec) on a volume; two instances
    built from the Dockerfile, each a valid `flashgate serve` command line in the
    image's environment (secrets from files, the shared Redis, PROXY headers from
    HAProxy's address alone, its own data volume), stopped with a grace longer than
    their drain; HAProxy with deploy/haproxy.cfg (the tests' file) and each instance's
    address."""
    c = load_compose()
    services = c["services"]
    assert set(services) == {"redis", "flashgate1", "flashgate2", "haproxy"}

    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--appendfsync everysec" in redis_cmd
    assert "--maxmemory-policy noeviction" in redis_cmd
    assert any(v.split(":")[0] in c["volumes"] and v.split(":")[1] == "/data"
               for v in services["redis"]["volumes"])

    hap = services["haproxy"]
    source, target, *_ = hap["volumes"][0].split(":")
    assert (DEPLOY / source).resolve() == HAPROXY_CFG.resolve()
    assert target == "/usr/local/etc/haproxy/haproxy.cfg"
    lb_address = hap["networks"]["sale"]["ipv4_address"]

    image_env = dict(kv.split("=", 1) for instr, args in dockerfile() if instr == "ENV"
                     for kv in args.split())
    data_dir = image_env["FLASHGATE_DATA_DIR"]
    volumes_seen = set()
    for i, name in enumerate(("flashgate1", "flashgate2"), start=1):
        s = services[name]
        assert (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == \
            (REPO / "Dockerfile").resolve()
        f = flags(s["command"])
        assert f["--redis"] == "redis://redis:6379/0"
        assert f["--proxy-protocol-from"] == f"{lb_address}/32"
        assert hap["environment"][f"FG{i}_ADDR"] == \
            f"{s['networks']['sale']['ipv4_address']}:{image_env['FLASHGATE_PORT']}"
        # the supervisor gives its workers drain delay + grace + 5 s before SIGKILL
        bound = float(f["--drain-delay"]) + float(f["--drain-grace"]) + 5
        assert seconds(s["stop_grace_period"]) > bound, (name, s["stop_grace_period"])
        assert s["stop_signal"] == "SIGTERM"
        # secrets by file only
        env = s["environment"]
        assert not {"FLASHGATE_USER_SECRET", "FLASHGATE_ADMIN_TOKEN"} & set(env)
        for key in ("user_secret", "admin_token"):
            assert key in s["secrets"] and "file" in c["secrets"][key]
            assert env[f"FLASHGATE_{key.upper()}_FILE"] == f"/run/secrets/{key}"
        (vol,) = [v for v in s["volumes"] if v.endswith(":" + data_dir)]
        volumes_seen.add(vol.split(":")[0])
        # the command line parses as `flashgate serve` would in the container
        from flashgate import config

        for k, v in image_env.items():
            monkeypatch.setenv(k, v)
        for key in ("user_secret", "admin_token"):
            secret = tmp_path / key
            secret.write_text("x" * 64)
            secret.chmod(0o600)
            monkeypatch.setenv(f"FLASHGATE_{key.upper()}_FILE", str(secret))
        cfg = config.from_args(list(s["command"]))
        assert (cfg.workers, cfg.host, cfg.port) == (2, "0.0.0.0", 8080)
        assert cfg.proxy_protocol_from == f"{lb_address}/32" and not cfg.dev
    assert len(volumes_seen) == 2, "each instance needs a data directory of its own"
    assert set(c["networks"]["sale"]["ipam"]["config"][0]["subnet"].split("/")[:1]) == \
        {"172.28.0.0"}
    assert (REPO / ".gitignore").read_text().count("deploy/secrets/") == 1


def test_the_dockerfile():
    """What no Docker engine here can build is checked for its facts: the extensions
    are built in a builder stage and only the wheel is shipped; a non-root user; tini
    as PID 1 and an exec-form entry point; the data directory a volume; a health check
    of /livez on the listening port; SIGTERM to stop (its grace is documented)."""
    steps = dockerfile()
    froms = [args for instr, args in steps if instr == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build"), froms
    final = steps[[i for i, (instr, _) in enumerate(steps) if instr == "FROM"][1]:]
    assert any(instr == "COPY" and args.startswith("--from=build ") for instr, args in final)
    assert not any("gcc" in args for instr, args in final if instr == "RUN")
    users = [args for instr, args in final if instr == "USER"]
    assert users and users[-1] not in ("root", "0")
    installs = " ".join(args for instr, args in final if instr == "RUN")
    assert re.search(r"apt-get install [^&]*\btini\b", installs)
    (entry,) = [json.loads(args) for instr, args in final if instr == "ENTRYPOINT"]
    assert entry[:2] == ["/usr/bin/tini", "--"] and entry[2:] == ["flashgate", "serve"]
    env = dict(kv.split("=", 1) for instr, args in final if instr == "ENV"
               for kv in args.split())
    (volume,) = [json.loads(args) for instr, args in final if instr == "VOLUME"]
    assert volume == [env["FLASHGATE_DATA_DIR"]]
    assert f"-d -o {users[-1]} -g {users[-1]} -m 0700 {env['FLASHGATE_DATA_DIR']}" in installs
    (health,) = [args for instr, args in final if instr == "HEALTHCHECK"]
    assert "/livez" in health and "FLASHGATE_PORT" in health and " CMD " in f" {health}"
    assert ("EXPOSE", env["FLASHGATE_PORT"]) in final
    assert ("STOPSIGNAL", "SIGTERM") in final
    text = (REPO / "Dockerfile").read_text()
    assert "docker stop -t 20" in text and "stop_grace_period" in text
