"""The event stream (GET /api/v1/events/{id}/stream, Server-Sent Events) through real
gateways on a real Redis: the snapshot, orders, stock, milestones and states as they
happen, masking, Last-Event-ID resumes, the heartbeat, the bounds (a reader that does
not read, the cap), and orders committed by another worker or another instance."""

from __future__ import annotations

import json
import select
import socket
import time

import pytest

from flashgate.core import keys
from tests.support import (
    Gateway,
    check_invariants,
    event_body,
    new_id,
    now_ms,
    server_side_open,
    serving_pid,
)

TICK = 0.25  # the default --stream-tick
HEARTBEAT = 0.5


class Sse:
    """A raw-socket SSE client: the head, the chunked body, the events as they come
    (``events``: (name, data, id, time received); ``comments``: their times)."""

    def __init__(self, port: int, event_id: str, last_id: str | None = None,
                 rcvbuf: int | None = None, read: bool = True, source: str | None = None):
        self.sock = socket.socket()
        if source is not None:  # the local address to connect from
            self.sock.bind((source, 0))
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        extra = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
        self.sock.sendall(f"GET /api/v1/events/{event_id}/stream HTTP/1.1\r\nHost: t\r\n"
                          f"Accept: text/event-stream\r\n{extra}\r\n".encode())
        self.buf = b""
        self.body = b""  # de-chunked, not yet parsed into events
        self.status = 0
        self.headers: dict[str, str] = {}
        self.events: list[tuple[str, dict, str | None, float]] = []
        self.comments: list[float] = []
        self.closed = False
        self.last_id: str | None = None
        if read:
            self._head()

    def _recv(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    def _head(self) -> None:
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in self.buf:
            assert time.monotonic() < deadline and not self.closed, self.buf
            self._recv(0.5)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in lines[1:])}
        if self.status != 200:
            n = int(self.headers.get("content-length", 0))
            while len(self.buf) < n and self._recv(2):
                pass
            self.error = json.loads(self.buf[:n])
            return
        self._dechunk()  # (the snapshot may have come with the head)
        self._parse()

    def _dechunk(self) -> None:
        while True:
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                return
            n = int(line, 16)
            if len(rest) < n + 2:
                return
            self.body += rest[:n]
            self.buf = rest[n + 2:]
            if n == 0:
                self.closed = True
                return

    def _parse(self) -> None:
        now = time.monotonic()
        while b"\n\n" in self.body:
            block, _, self.body = self.body.partition(b"\n\n")
            name, data, eid = "message", None, None
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments.append(now)
                    continue
                field, _, value = line.partition(": ")
                if field == "event":
                    name = value
                elif field == "data":
                    data = json.loads(value)
                elif field == "id":
                    eid = self.last_id = value
            if data is not None:
                self.events.append((name, data, eid, now))

    def pump(self, timeout: float = 0.05) -> None:
        if self._recv(timeout):
            self._dechunk()
            self._parse()

    def wait(self, predicate, what: str, timeout: float = 5.0):
        """Read until ``predicate(event name, data)`` holds for an event not yet seen by
        a wait; that event's (name, data, id, time)."""
        start = getattr(self, "_seen", 0)
        deadline = time.monotonic() + timeout
        while True:
            for i in range(start, len(self.events)):
                name, data, _, _ = self.events[i]
                if predicate(name, data):
                    self._seen = i + 1
                    return self.events[i]
            start = len(self.events)
            assert time.monotonic() < deadline, f"no {what}: {self.events[-5:]}"
            assert not self.closed, f"closed before {what}"
            self.pump(0.05)

    def named(self, name: str) -> list[dict]:
        return [d for n, d, _, _ in self.events if n == name]

    def close(self) -> None:
        self.sock.close()


def wait_all(clients: list[Sse], predicate, what: str, timeout: float = 5.0) -> list[float]:
    """Read every client at once until each has an event for which ``predicate``
    holds; when each received it."""
    found: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while True:
        for i, c in enumerate(clients):
            if i not in found:
                at = next((t for n, d, _, t in c.events if predicate(n, d)), None)
                if at is not None:
                    found[i] = at
        if len(found) == len(clients):
            return [found[i] for i in range(len(clients))]
        assert time.monotonic() < deadline, f"no {what} on {set(range(len(clients))) - set(found)}"
        waiting = [c for i, c in enumerate(clients) if i not in found]
        ready, _, _ = select.select([c.sock for c in waiting], [], [], 0.05)
        for c in waiting:
            if c.sock in ready:
                c.pump(0.01)


@pytest.fixture(scope="module")
def sgw(redis_server, tmp_path_factory):
    g = Gateway(redis_server.url, tmp_path_factory.mktemp("sse"), shared=True,
                extra=["--stream-heartbeat", str(HEARTBEAT)]).start()
    yield g
    g.close()


def snapshot(c: Sse, n_skus: int) -> dict:
    """The snapshot's events: state first, then every SKU's stock."""
    c.wait(lambda n, d: n == "state", "the snapshot's state")
    for _ in range(n_skus):
        c.wait(lambda n, d: n == "stock", "the snapshot's stock")
    return {d["sku"]: d for d in c.named("stock")}


def test_snapshot_then_orders_stock_milestones_and_sold_out(sgw, r):
    ev = new_id("sse")
    body = event_body(stock=(3, 2), limits=(2, 2),
                      milestones=[{"sold": 2, "reward": "tote"}, {"sold": 99, "reward": "car"}])
    sgw.put_event(ev, body)
    c = Sse(sgw.port, ev)
    assert c.status == 200 and c.headers["content-type"] == "text/event-stream"
    stock = snapshot(c, 2)
    assert stock == {"s0": {"sku": "s0", "left": 3, "sold": 0},
                     "s1": {"sku": "s1", "left": 2, "sold": 0}}
    state = c.named("state")[0]
    assert state["state"] == "live" and abs(state["server_time_ms"] - now_ms()) < 2000
    assert (state["starts_at_ms"], state["ends_at_ms"]) == (body["starts_at_ms"],
                                                            body["ends_at_ms"])
    assert all(eid is None for _, _, eid, _ in c.events[:-1]) and c.events[-1][2]
    acked = []
    for user, sku, qty in (("alice2", "s0", 2), ("bob", "s0", 1), ("carol9", "s1", 2)):
        status, order, _ = sgw.buy(ev, sku, user, qty)
        assert status == 200, order
        answered = time.monotonic()
        acked.append(order)
        _, got, _, at = c.wait(lambda n, d, u=user: n == "order" and "user" in d
                                 and d["user"][0] == u[0], f"{user}'s order")
        assert at - answered <= TICK + 0.1, at - answered
        assert got["sku"] == sku and got["qty"] == qty
        assert got["user"] == user[0] + "***" + user[-1]
        assert abs(got["ts_ms"] - order["created_ms"]) < 1000
    c._seen = 0  # (from the start again: the waits above may have passed these)
    c.wait(lambda n, d: n == "stock" and d == {"sku": "s0", "left": 0, "sold": 3}, "s0 gone")
    c._seen = 0
    c.wait(lambda n, d: n == "stock" and d == {"sku": "s1", "left": 0, "sold": 2}, "s1 gone")
    c._seen = 0
    _, ms, _, _ = c.wait(lambda n, d: n == "milestone", "the milestone")
    assert ms["sold"] == 2 and ms["reward"] == "tote" and ms["reached_ms"] > 0
    c.wait(lambda n, d: n == "state" and d["state"] == "sold_out", "sold_out")
    assert [d["sold"] for d in c.named("milestone")] == [2]
    # a newcomer's snapshot has it all
    c2 = Sse(sgw.port, ev)
    c2.wait(lambda n, d: n == "milestone", "the snapshot's milestone")
    assert c2.named("state")[0]["state"] == "sold_out"
    assert {d["sku"]: d["left"] for d in c2.named("stock")} == {"s0": 0, "s1": 0}
    c.close()
    c2.close()
    check_invariants(r, sgw, ev, body, acked)


def test_ended_and_unknown_event(sgw, r):
    ev = new_id("sseend")
    body = event_body(stock=(5,), ends=now_ms() + 1500)
    sgw.put_event(ev, body)
    c = Sse(sgw.port, ev)
    c.wait(lambda n, d: n == "state" and d["state"] == "live", "live")
    status, order, _ = sgw.buy(ev, "s0", "dave")
    assert status == 200, order
    c.wait(lambda n, d: n == "order", "the order")
    c.wait(lambda n, d: n == "state" and d["state"] == "ended", "ended", timeout=5)
    c.close()
    missing = Sse(sgw.port, new_id("nosuch"))
    assert missing.status == 404 and missing.error["error"] == "not_found"
    missing.close()
    check_invariants(r, sgw, ev, body, [order])


def test_resume_with_last_event_id_and_fallback_to_snapshot(sgw, r):
    ev = new_id("sseresume")
    body = event_body(stock=(10,), limits=(5,))
    sgw.put_event(ev, body)
    c = Sse(sgw.port, ev)
    snapshot(c, 1)
    pid = serving_pid(sgw, c.sock)
    acked = []
    status, o, _ = sgw.buy(ev, "s0", "erin")
    assert status == 200, o
    acked.append(o)
    c.wait(lambda n, d: n == "order", "erin's order")
    c.wait(lambda n, d: n == "stock" and d["sold"] == 1, "stock 9")
    last = c.last_id
    c.close()
    # orders while away
    for user in ("fay1", "gus2"):
        status, o, _ = sgw.buy(ev, "s0", user)
        assert status == 200, o
        acked.append(o)
    time.sleep(TICK * 3)
    # reconnect until the same worker serves (ids are a worker's own)
    for _ in range(40):
        c2 = Sse(sgw.port, ev, last_id=last)
        if serving_pid(sgw, c2.sock) == pid:
            break
        c2.close()
    else:
        pytest.fail("never reached the same worker")
    c2.wait(lambda n, d: n == "order" and d["user"] == "f***1", "fay's order")
    c2.wait(lambda n, d: n == "order" and d["user"] == "g***2", "gus's order")
    c2.wait(lambda n, d: n == "stock" and d["sold"] == 3, "stock 7")
    # resumed: no snapshot (no state event, no stock of sold 1 again)
    assert not c2.named("state") and all(d["sold"] > 1 for d in c2.named("stock"))
    c2.close()
    # an id too old (or another worker's, or garbage): the snapshot
    for stale in (last.split(".")[0] + ".0", "nosuchboot.5", "junk"):
        c3 = Sse(sgw.port, ev, last_id=stale)
        stock = snapshot(c3, 1)
        assert stock["s0"]["sold"] == 3 and c3.named("state")[0]["state"] == "live"
        c3.close()
    check_invariants(r, sgw, ev, body, acked)


def test_heartbeat(sgw):
    ev = new_id("ssehb")
    sgw.put_event(ev, event_body(stock=(5,)))
    c = Sse(sgw.port, ev)
    snapshot(c, 1)
    deadline = time.monotonic() + HEARTBEAT * 6
    while len(c.comments) < 3 and time.monotonic() < deadline:
        c.pump(0.1)
    assert len(c.comments) >= 3, c.comments
    gaps = [b - a for a, b in zip(c.comments, c.comments[1:], strict=False)]
    assert all(HEARTBEAT - 0.1 <= g <= HEARTBEAT + TICK + 0.2 for g in gaps), gaps
    c.close()


def test_orders_from_another_worker_and_another_instance(sgw, redis_server, r, tmp_path):
    ev = new_id("ssecross")
    body = event_body(stock=(50,), limits=(1,))
    sgw.put_event(ev, body)
    # subscribers on both workers of sgw
    subs: dict[int, Sse] = {}
    for _ in range(60):
        c = Sse(sgw.port, ev)
        pid = serving_pid(sgw, c.sock)
        if pid in subs or pid is None:
            c.close()
        else:
            subs[pid] = c
        if len(subs) == 2:
            break
    assert len(subs) == 2
    other = Gateway(redis_server.url, tmp_path, workers=1).start()
    try:
        other.wait_event(ev)
        far = Sse(other.port, ev)
        everyone = [*subs.values(), far]
        for c in everyone:
            snapshot(c, 1)
        acked = []
        # buys through each worker of sgw (whichever the connection lands on) and the other
        for i, g in enumerate([sgw, sgw, sgw, sgw, other]):
            user = f"x{i}y"
            status, o, _ = g.buy(ev, "s0", user)
            assert status == 200, o
            answered = time.monotonic()
            acked.append(o)
            times = wait_all(everyone, lambda n, d, u=user: n == "order"
                             and d.get("user") == u[0] + "***" + u[-1], f"{user}'s order")
            assert max(times) - answered <= TICK + 0.1, [t - answered for t in times]
        for c in everyone:
            c.close()
    finally:
        other.close()
    check_invariants(r, sgw, ev, body, acked)


def test_slow_reader_dropped_and_the_cap(redis_server, r, tmp_path):
    """A subscriber that never reads is disconnected at its bound; one that reads keeps
    receiving. The orders are written straight into the SKU's orders stream (the feed
    is what is under test: the frames must outgrow the kernel's buffers quickly)."""
    g = Gateway(redis_server.url, tmp_path, workers=1,
                extra=["--stream-max-buffer", "16384", "--stream-orders-per-tick", "150",
                       "--stream-tick", "0.02", "--stream-max-subscribers", "3"]).start()
    try:
        ev = new_id("sseslow")
        g.put_event(ev, event_body(stock=(5,)))
        slow = Sse(g.port, ev, rcvbuf=4096, read=False)
        fast = Sse(g.port, ev)
        snapshot(fast, 1)
        third = Sse(g.port, ev)
        snapshot(third, 1)
        full = Sse(g.port, ev)  # the fourth: over the cap
        assert full.status == 503 and full.error["error"] == "unavailable"
        assert full.headers.get("retry-after") == "1"
        full.close()
        third.close()
        key = keys.SkuKeys(ev, "s0").orders
        fields = {"type": "created", "ts": str(now_ms())}
        fields.update({f"{ev}.s0.o{i}": f"user{i:05d}|1|100" for i in range(1000)})
        dropped = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r.xadd(key, fields)
            until = time.monotonic() + 0.05
            while time.monotonic() < until:
                fast.pump(0.01)
            # the server's side of it is gone (its unread bytes stay unread here)
            dropped = not server_side_open(g, slow.sock)
            if dropped:
                break
        assert dropped, "the slow reader was never dropped"
        before = len(fast.named("order"))
        assert before > 0
        r.xadd(key, fields)
        fast.wait(lambda nm, d: nm == "order" and len(fast.named("order")) > before + 100,
                  "orders after the drop")
        # its slot is free again (the cap counts open streams)
        again = Sse(g.port, ev)
        assert again.status == 200
        again.close()
        fast.close()
        slow.close()
    finally:
        g.close()


def test_a_drain_ends_open_streams(redis_server, tmp_path):
    """SIGTERM with subscribers connected: their streams end (the last chunk) and the
    gateway exits 0 without waiting for them."""
    g = Gateway(redis_server.url, tmp_path, workers=1).start()
    ev = new_id("ssedrain")
    g.put_event(ev, event_body(stock=(5,)))
    subs = [Sse(g.port, ev) for _ in range(3)]
    for c in subs:
        snapshot(c, 1)
    t0 = time.monotonic()
    assert g.stop() == 0
    assert time.monotonic() - t0 < 5
    for c in subs:
        while not c.closed:
            c.pump(0.5)
        assert c.buf == b"" and c.body == b""  # the last chunk, nothing cut
        c.close()


def test_pause_and_resume_are_states(sgw):
    ev = new_id("ssepause")
    sgw.put_event(ev, event_body(stock=(5,)))
    c = Sse(sgw.port, ev)
    snapshot(c, 1)
    assert sgw.admin("POST", f"/api/v1/admin/events/{ev}/pause")[0] == 200
    c.wait(lambda n, d: n == "state" and d["state"] == "paused", "paused")
    assert sgw.admin("POST", f"/api/v1/admin/events/{ev}/resume")[0] == 200
    c.wait(lambda n, d: n == "state" and d["state"] == "live", "live again")
    c.close()


def test_a_scheduled_event_goes_live(sgw):
    ev = new_id("ssesched")
    body = event_body(stock=(5,), starts=now_ms() + 800)
    sgw.put_event(ev, body)
    c = Sse(sgw.port, ev)
    _, first, _, _ = c.wait(lambda n, d: n == "state", "the snapshot's state")
    assert first["state"] == "scheduled" and first["starts_at_ms"] == body["starts_at_ms"]
    _, live, _, _ = c.wait(lambda n, d: n == "state" and d["state"] == "live", "live")
    assert live["server_time_ms"] >= body["starts_at_ms"]
    c.close()


def test_subscribers_are_counted_in_the_metrics(redis_server, tmp_path):
    """flashgate_sse_subscribers: the instance's open streams, whichever worker holds
    them and whichever answers the scrape; a closed stream leaves the count at once,
    with nothing written to it (the heartbeat is 15 s: the server sees the client's
    close, not a failed write). Its own gateway: on the shared one, the streams other
    tests leave to the garbage collector change the count while this test reads it."""
    from tests.integration.test_metrics import scrape, value
    from tests.support import wait_for

    g = Gateway(redis_server.url, tmp_path, shared=True).start()
    try:
        ev = new_id("ssemet")
        g.put_event(ev, event_body(stock=(5,)))

        def subscribers():
            return value(scrape(g)[1], "flashgate_sse_subscribers")

        assert subscribers() == 0
        streams = [Sse(g.port, ev) for _ in range(3)]
        for c in streams:
            snapshot(c, 1)
        wait_for(lambda: subscribers() == 3, "3 subscribers counted", 5)
        for c in streams:
            c.close()
        wait_for(lambda: subscribers() == 0, "the closed streams no longer counted", 5)
    finally:
        g.close()
