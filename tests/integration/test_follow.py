"""``flashgate orders follow``: orders committed through a real gateway reach a real
PostgreSQL (a private cluster the tests start: tests/pg_support.py) or a JSON-lines
file, once each with their latest status, through a follower killed with kill -9
mid-rush, and a database that goes away. The tests that need PostgreSQL are marked
ci_required: CI installs its binaries (.ci/run)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import redis

from flashgate.core import keys, orders
from flashgate.core.follow import Batch, Entry
from flashgate.sinks import PostgresSink
from tests.faultproxy import FaultProxy
from tests.support import (
    check_invariants,
    event_body,
    http_session,
    log_records,
    new_id,
    now_ms,
    problem,
    wait_for,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Follower:
    """``flashgate orders follow`` in a subprocess; its output collected."""

    def __init__(self, redis_url: str, to: str, *extra: str):
        self.args = [sys.executable, "-m", "flashgate.cli", "orders", "follow", "--to", to,
                     "--redis", redis_url, "--claim-idle", "1", "--progress", "0.5",
                     *extra]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.output: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self):
        for line in self.proc.stdout:
            self.output.append(line)

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the follower did not stop:\n" + self.text()) from None
        self._pump.join(5)
        return rc

    def text(self) -> str:
        return "".join(self.output)

    def assert_clean(self, allowed=()) -> None:
        bad = [record for _, record in log_records(list(self.output))
               if problem(record, [re.escape(a) for a in allowed])]
        assert not bad, self.text()


def table(url: str) -> dict[str, dict]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT * FROM flashgate_orders")
        names = [d.name for d in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def count(url: str) -> int:
    try:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT count(*) FROM flashgate_orders").fetchone()[0]
    except psycopg.errors.UndefinedTable:
        return 0


def redis_orders(r, event_id: str, body: dict) -> dict[str, dict]:
    """Every order of the event as its record says (the API's object)."""
    out = {}
    for sku in body["skus"]:
        k = keys.SkuKeys(event_id, sku["id"])
        for oid, rec in r.hgetall(k.order_by_id).items():
            o = orders.from_record(oid.decode(), rec)
            o.setdefault("updated_ms", o["created_ms"])
            out[o["order_id"]] = o
    return out


def transition(r, order_id: str, status: str, at_ms: int) -> None:
    """What the order lifecycle does to an order (without the units: only ``paid`` is
    used, which keeps them): the record's status rewritten, ``updated_ms`` set, and a
    stream entry of the same layout as ``created``."""
    event_id, sku = keys.split_order_id(order_id)
    k = keys.SkuKeys(event_id, sku)
    parts = r.hget(k.order_by_id, order_id).decode().split("|")
    parts[0] = status
    parts = [p for p in parts if not p.startswith("updated_ms=")] + [f"updated_ms={at_ms}"]
    pipe = r.pipeline(transaction=True)
    pipe.hset(k.order_by_id, order_id, "|".join(parts))
    pipe.xadd(k.orders, {"type": status, "ts": at_ms,
                         order_id: f"{parts[1]}|{parts[2]}|{parts[3]}"})
    pipe.execute()


def pay(gw, r, order_id: str, at_ms: int) -> None:
    """Mark an order paid: through the API where this build serves it, else as the
    order lifecycle does (``transition``)."""
    status, data, _ = gw.admin("POST", f"/api/v1/admin/orders/{order_id}/paid")
    if status == 200:
        return
    assert status == 404, (status, data)  # (a planned route)
    transition(r, order_id, "paid", at_ms)


def same(row: dict, o: dict) -> bool:
    return all(row[f] == o[f] for f in ("order_id", "event_id", "sku", "user_id", "qty",
                                        "unit_price", "amount", "status", "created_ms",
                                        "pay_by_ms", "updated_ms"))


def buy_many(gw, ev, users, skus=("s0",), conns=16):
    """One buy per user over ``conns`` keep-alive connections; the 200 answers."""
    reqs = [gw.buy_request(ev, skus[i % len(skus)], u) for i, u in enumerate(users)]
    sessions = [reqs[i::conns] for i in range(conns)]
    results: list = []

    async def main():
        await asyncio.gather(*(http_session(gw.port, s, results) for s in sessions))

    asyncio.run(main())
    return [b for _, status, b in results if status == 200]


@pytest.mark.ci_required
def test_orders_reach_postgres_once_with_their_latest_status(gw, r, redis_server, pg_url):
    ev = new_id("follow")
    body = event_body(stock=(40, 20), limits=(1, 1))
    gw.put_event(ev, body)
    acked = buy_many(gw, ev, [f"u{i}" for i in range(30)], skus=("s0", "s1"))
    assert len(acked) == 30
    f = Follower(redis_server.url, pg_url, "--event", ev, "--group", new_id("g"))
    try:
        wait_for(lambda: count(pg_url) == 30, "30 rows", timeout=10)
        rows = table(pg_url)
        truth = redis_orders(r, ev, body)
        assert set(rows) == set(truth) == {o["order_id"] for o in acked}
        for oid, row in rows.items():
            assert same(row, truth[oid]), (row, truth[oid])
            assert row["status"] == "reserved" and row["price_breakdown"] is None
        # an order paid: its row follows; orders bought later come too
        paid = acked[3]["order_id"]
        at = truth[paid]["created_ms"] + 5000
        pay(gw, r, paid, at)
        more = buy_many(gw, ev, [f"v{i}" for i in range(5)], skus=("s1",))
        assert len(more) == 5
        wait_for(lambda: table(pg_url)[paid]["status"] == "paid" and count(pg_url) == 35,
                 "the paid row and 5 more", timeout=10)
        assert table(pg_url)[paid]["updated_ms"] == redis_orders(r, ev, body)[paid]["updated_ms"]
    finally:
        assert f.stop() == 0, f.text()
    f.assert_clean()
    assert "stopped: " in f.text()
    rows = table(pg_url)
    truth = redis_orders(r, ev, body)
    assert len(rows) == 35 and all(same(rows[o], truth[o]) for o in truth)
    check_invariants(r, gw, ev, body, acked + more)


@pytest.mark.ci_required
def test_events_created_later_are_followed(gw, r, redis_server, pg_url, tmp_path):
    """Without --event: every event, those created after the follower started too
    (the session's other events are followed as well: only this one is checked)."""
    group = new_id("g")
    f = Follower(redis_server.url, pg_url, "--group", group)
    try:
        wait_for(lambda: "following" in f.text(), "the follower to start", timeout=10)
        ev = new_id("later")
        body = event_body(stock=(10,))
        gw.put_event(ev, body)
        acked = buy_many(gw, ev, [f"u{i}" for i in range(6)])
        ids = {o["order_id"] for o in acked}
        wait_for(lambda: ids <= set(table(pg_url)), "the new event's orders", timeout=10)
    finally:
        assert f.stop() == 0, f.text()
    f.assert_clean()
    check_invariants(r, gw, ev, body, acked)


@pytest.mark.ci_required
def test_kill_9_mid_rush_then_restart(gw, r, redis_server, pg_url):
    """A rush of 2,000 orders (and payments of some of them); the follower is killed
    with kill -9 while it writes, a second one starts (a new consumer of the group):
    it takes over what the first left pending. Every order ends in the table exactly
    once, with the status Redis has."""
    ev = new_id("kill")
    body = event_body(stock=(1200, 1200), limits=(1, 1))
    gw.put_event(ev, body)
    group = new_id("g")
    first = Follower(redis_server.url, pg_url, "--event", ev, "--group", group, "--batch", "50")
    acked: list = []
    done = threading.Event()

    def rush():
        try:
            for part in range(4):
                acked.extend(buy_many(gw, ev, [f"u{part}-{i}" for i in range(500)],
                                      skus=("s0", "s1")))
        finally:
            done.set()

    t = threading.Thread(target=rush)
    t.start()
    try:
        streams = [keys.SkuKeys(ev, sku).orders for sku in ("s0", "s1")]

        def pending() -> int:
            try:
                return sum(r.xpending(s, group)["pending"] for s in streams)
            except redis.ResponseError:  # no group yet
                return 0

        # mid-stream: rows written, and entries delivered but not yet acknowledged. The
        # follower is frozen (SIGSTOP) while that is checked, so it cannot acknowledge
        # them between the check and the kill

        def frozen_with_pending() -> bool:
            if count(pg_url) == 0:
                return False
            first.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.01)  # (the signal is taken before the next read)
            if pending() > 0:
                return True
            first.proc.send_signal(signal.SIGCONT)
            return False

        wait_for(frozen_with_pending, "the first rows, and entries pending", timeout=15,
                 interval=0.002)
        first.proc.kill()  # kill -9
        first.proc.wait()
        killed_at = count(pg_url)
        left = pending()
        second = Follower(redis_server.url, pg_url, "--event", ev, "--group", group)
        t.join(60)
        assert done.is_set()
        rnd = random.Random(3)
        paid = rnd.sample(acked, 100)
        for o in paid:
            pay(gw, r, o["order_id"], o["created_ms"] + 1000)
        assert len(acked) == 2000
        truth = redis_orders(r, ev, body)

        def caught_up():
            rows = table(pg_url)
            # the entries the killed follower left pending are taken over too (their
            # rows may all be there already: it can die after the commit, before the ack)
            return (len(rows) == len(truth) and all(same(rows[o], truth[o]) for o in truth)
                    and (left == 0 or "took over" in second.text()))

        wait_for(caught_up, "every order with its status", timeout=40, interval=0.1)
    finally:
        first.stop()
        assert second.stop() == 0, second.text()
    second.assert_clean()
    assert killed_at < 2000, "the follower was killed after the rush, not during it"
    assert left > 0 and "took over" in second.text(), (left, second.text())
    rows = table(pg_url)
    assert sum(row["status"] == "paid" for row in rows.values()) == 100
    assert set(rows) == {o["order_id"] for o in acked}
    # nothing left pending in the group
    for sku in ("s0", "s1"):
        assert r.xpending(keys.SkuKeys(ev, sku).orders, group)["pending"] == 0
    check_invariants(r, gw, ev, body, acked)


@pytest.mark.ci_required
def test_a_database_that_goes_away_loses_nothing(gw, r, redis_server, pg_cluster, pg_url):
    """Between the follower and PostgreSQL a proxy cuts every connection, then drops
    everything for a while (a silent network), during sales: the batches are kept and
    written again; nothing is acknowledged before it is in the table."""
    ev = new_id("dbgone")
    body = event_body(stock=(300,), limits=(1,))
    gw.put_event(ev, body)
    proxy = FaultProxy(pg_cluster.port).start()
    url = pg_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
    group = new_id("g")
    f = Follower(redis_server.url, url, "--event", ev, "--group", group, "--write-timeout", "1")
    try:
        acked = buy_many(gw, ev, [f"a{i}" for i in range(50)])
        wait_for(lambda: count(pg_url) == 50, "50 rows", timeout=10)
        proxy.cut()
        proxy.blackhole = True
        proxy.cut()
        acked += buy_many(gw, ev, [f"b{i}" for i in range(50)])
        time.sleep(1.5)
        assert count(pg_url) == 50
        k = keys.SkuKeys(ev, "s0")
        assert r.xpending(k.orders, group)["pending"] > 0, "acknowledged before written"
        proxy.blackhole = False
        proxy.cut()
        acked += buy_many(gw, ev, [f"c{i}" for i in range(50)])
        wait_for(lambda: count(pg_url) == 150, "150 rows", timeout=20, interval=0.1)
        wait_for(lambda: r.xpending(k.orders, group)["pending"] == 0, "every entry acked")
    finally:
        assert f.stop() == 0, f.text()
        proxy.stop()
    assert "trying again" in f.text()
    f.assert_clean()
    truth = redis_orders(r, ev, body)
    rows = table(pg_url)
    assert set(rows) == set(truth) and all(same(rows[o], truth[o]) for o in truth)
    check_invariants(r, gw, ev, body, acked)


@pytest.mark.ci_required
def test_upsert_never_goes_back(pg_url):
    """The sink's rules: a row moves only to a state at least as recent, a final state
    is never replaced by reserved, a repeat changes nothing; a straddled order keeps
    its breakdown (jsonb) and exact amount."""
    base = {"order_id": "e1.s0.a1", "event_id": "e1", "sku": "s0", "user_id": "u1", "qty": 3,
            "unit_price": 100, "amount": 320, "status": "reserved", "created_ms": 1000,
            "pay_by_ms": 901000, "updated_ms": 1000,
            "price_breakdown": [{"qty": 2, "unit_price": 100}, {"qty": 1, "unit_price": 120}]}

    def batch(*states):
        return Batch([Entry("k", "e1", "s0", f"{i}-0", "x", 0, [dict(base, **s)])
                      for i, s in enumerate(states)])

    async def main():
        sink = PostgresSink(pg_url)
        await sink.open()
        try:
            assert await sink.write(batch({})) == 1
            assert await sink.write(batch({})) == 0  # a repeat
            assert await sink.write(batch({"status": "paid", "updated_ms": 2000})) == 1
            assert await sink.write(batch({})) == 0  # the older reserved state: ignored
            assert await sink.write(batch({"updated_ms": 2000})) == 0  # reserved, same ms
            assert await sink.write(batch({"status": "paid", "updated_ms": 2000})) == 0
            # two states of one order in one batch: the latest wins
            assert await sink.write(batch({"order_id": "e1.s0.a2", "status": "expired",
                                           "updated_ms": 9000},
                                          {"order_id": "e1.s0.a2"})) == 1
            # a final state beats reserved even when its time is earlier (Redis TIME that
            # stepped back between the commit and the payment): never stuck reserved
            assert await sink.write(batch({"order_id": "e1.s0.a3", "updated_ms": 5000})) == 1
            assert await sink.write(batch({"order_id": "e1.s0.a3", "status": "paid",
                                           "updated_ms": 4000},
                                          {"order_id": "e1.s0.a3", "updated_ms": 6000})) == 1
        finally:
            await sink.close()

    asyncio.run(main())
    rows = table(pg_url)
    assert rows["e1.s0.a1"]["status"] == "paid" and rows["e1.s0.a1"]["updated_ms"] == 2000
    assert rows["e1.s0.a1"]["amount"] == 320
    assert rows["e1.s0.a1"]["price_breakdown"] == base["price_breakdown"]
    assert rows["e1.s0.a2"]["status"] == "expired"
    assert rows["e1.s0.a3"]["status"] == "paid"


def test_jsonl(gw, r, redis_server, tmp_path):
    """jsonl:PATH: a line per order event, the order as the API shows it; a torn last
    line (a crash mid-write) is cut off when the file is opened again."""
    ev = new_id("jsonl")
    body = event_body(stock=(10,))
    gw.put_event(ev, body)
    acked = buy_many(gw, ev, [f"u{i}" for i in range(5)])
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b'{"order_id": "torn')
    f = Follower(redis_server.url, f"jsonl:{path}", "--event", ev, "--group", new_id("g"))
    try:
        wait_for(lambda: path.read_text().count("\n") == 5, "5 lines", timeout=10)
        paid = acked[0]["order_id"]
        pay(gw, r, paid, acked[0]["created_ms"] + 7)
        wait_for(lambda: path.read_text().count("\n") == 6, "the paid line", timeout=10)
    finally:
        assert f.stop(signal.SIGINT) == 0, f.text()  # (Ctrl-C)
    f.assert_clean()
    assert "torn by a crash" in f.text()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    truth = redis_orders(r, ev, body)
    assert {o["order_id"] for o in lines} == set(truth)
    assert lines[-1] == truth[paid] and lines[-1]["status"] == "paid"
    for o in lines[:-1]:
        if o["order_id"] != paid:
            assert o == truth[o["order_id"]]
        assert o == {**acked_by_id(acked)[o["order_id"]], **o}  # the API's fields, at least
    check_invariants(r, gw, ev, body, acked)


def acked_by_id(acked):
    return {o["order_id"]: o for o in acked}


@pytest.mark.ci_required
def test_bad_arguments(redis_server, pg_cluster, tmp_path):
    def run(*args, env=None):
        out = subprocess.run([sys.executable, "-m", "flashgate.cli", "orders", "follow", *args],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
                             cwd=tmp_path)
        return out.returncode, out.stderr

    rc, err = run("--to", "mysql://u@h/db", "--redis", redis_server.url)
    assert rc == 2 and "unknown kind 'mysql'" in err, err
    rc, err = run("--to", "orders.txt", "--redis", redis_server.url)
    assert rc == 2 and "jsonl:PATH" in err, err
    rc, err = run("--redis", redis_server.url)
    assert rc == 2 and "--to" in err, err
    rc, err = run("--to", "jsonl:x", "--redis", redis_server.url, "--event", "a b")
    assert rc == 2 and "not an event id" in err, err
    rc, err = run("--to", "jsonl:x", "--redis", redis_server.url, "--claim-idle", "0")
    assert rc == 2, err
    rc, err = run("--to", "jsonl:x", env={"FLASHGATE_REDIS": ""})
    assert rc == 2 and "no Redis" in err, err
    rc, err = run("--to", "jsonl:x", "--redis", "ftp://h")
    assert rc == 2 and "--redis" in err, err
    from flashgate.embedded import free_port

    dead = free_port()
    rc, err = run("--to", f"postgresql://postgres@127.0.0.1:{dead}/x", "--redis", redis_server.url)
    assert rc == 1 and f"cannot connect to postgresql://postgres@127.0.0.1:{dead}/x" in err, err
    rc, err = run("--to", pg_cluster.url("no_such_db"), "--redis", redis_server.url)
    assert rc == 1 and "no_such_db" in err, err
    rc, err = run("--to", "jsonl:x", "--redis", f"redis://127.0.0.1:{dead}")
    assert rc == 1 and "Redis" in err, err
    rc, err = run("--to", f"jsonl:{tmp_path}/no/such/dir/x", "--redis", redis_server.url)
    assert rc == 1 and "cannot open" in err, err


def test_the_embedded_redis_of_a_data_dir(tmp_path):
    """Without --redis: the embedded Redis that flashgate serve runs in --data-dir (its
    unix socket), commands renamed away and all."""
    import orjson

    from flashgate.core.events import parse_event
    from flashgate.embedded import EmbeddedRedis

    data = tmp_path / "d"
    server = EmbeddedRedis(data / "redis", private=True, persist=False).start()
    try:
        if not str(server.socket_path).startswith(str(data)):
            pytest.skip("the data directory's path is too long for a unix socket here")
        rc = redis.Redis(unix_socket_path=server.socket_path)
        ev = "emb"
        rc.set(keys.event(ev), orjson.dumps(parse_event(ev, event_body()).to_dict()))
        rc.sadd(keys.EVENTS, ev)
        k = keys.SkuKeys(ev, "s0")
        oid = f"{ev}.s0.abc1"
        rc.hset(k.order_by_id, oid, orders.record("reserved", "u1", 1, 100, 5, 905))
        rc.xadd(k.orders, {"type": "created", "ts": 5, oid: "u1|1|100"})
        path = tmp_path / "out.jsonl"
        env_redis = os.environ.pop("FLASHGATE_REDIS", None)
        try:
            f = Follower("", f"jsonl:{path}", "--data-dir", str(data))
        finally:
            if env_redis is not None:
                os.environ["FLASHGATE_REDIS"] = env_redis
        try:
            wait_for(lambda: path.exists() and path.read_text().count("\n") == 1, "the line",
                     timeout=10)
        finally:
            assert f.stop() == 0, f.text()
        f.assert_clean()
        assert json.loads(path.read_text()) == {
            "order_id": oid, "event_id": ev, "sku": "s0", "user_id": "u1", "qty": 1,
            "unit_price": 100, "amount": 100, "status": "reserved", "created_ms": 5,
            "pay_by_ms": 905, "updated_ms": 5}
        rc.close()
    finally:
        server.stop()


@pytest.mark.skipif(not os.environ.get("FLASHGATE_FOLLOW_RATE"),
                    reason="a measurement: FLASHGATE_FOLLOW_RATE=<orders> runs it")
def test_follow_rate(redis_server, r, tmp_path):
    """How many orders a second one follower writes into a durable PostgreSQL (fsync
    and synchronous commit on) and a JSON-lines file: a backlog of N orders (entries of
    50 orders, as a rush's commit batches make them) followed from scratch."""
    from tests.pg_support import PostgresCluster

    n = int(os.environ["FLASHGATE_FOLLOW_RATE"])
    per = int(os.environ.get("FLASHGATE_FOLLOW_RATE_ENTRY", "50"))  # orders per entry
    ev = new_id("rate")
    body = event_body(stock=(n, n))
    import orjson

    from flashgate.core.events import parse_event

    r.set(keys.event(ev), orjson.dumps(parse_event(ev, body).to_dict()))
    t0 = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    for start in range(0, n, per):
        sku = "s0" if start // per % 2 == 0 else "s1"
        k = keys.SkuKeys(ev, sku)
        entry = {"type": "created", "ts": t0}
        recs = {}
        for i in range(start, min(start + per, n)):
            oid = f"{ev}.{sku}.{i:012x}"
            recs[oid] = orders.record("reserved", f"u{i}", 1, 100, t0, t0 + 900_000)
            entry[oid] = f"u{i}|1|100"
        pipe.hset(k.order_by_id, mapping=recs)
        pipe.xadd(k.orders, entry)
        if len(pipe) > 200:
            pipe.execute()
    pipe.execute()
    cluster = PostgresCluster(durable=True).start()
    try:
        results = {}
        for kind, to, done in (
                ("postgresql", cluster.create_db(), lambda to: count(to) == n),
                ("jsonl", f"jsonl:{tmp_path}/o.jsonl",
                 lambda to: os.path.exists(to[6:]) and
                 open(to[6:], "rb").read().count(b"\n") == n)):
            f = Follower(redis_server.url, to, "--event", ev, "--group", new_id("g"))
            try:
                wait_for(lambda f=f: "following 2 more" in f.text(), "the follower", timeout=20)
                start = time.monotonic()
                wait_for(lambda to=to, done=done: done(to), f"{n} orders", timeout=600,
                         interval=0.05)
                results[kind] = n / (time.monotonic() - start)
            finally:
                assert f.stop() == 0, f.text()
            f.assert_clean()
        print(f"\nfollow rate, {n} orders, {per} per entry: " + ", ".join(
            f"{k} {v:,.0f} orders/s" for k, v in results.items()))
    finally:
        cluster.stop()


def put_definition(r, ev: str, body: dict) -> None:
    """A definition the follower reads (only it: not in ``fg:events``, so the session's
    gateways never load this event, whose SKUs were never configured)."""
    import orjson

    from flashgate.core.events import parse_event

    r.set(keys.event(ev), orjson.dumps(parse_event(ev, body).to_dict()))


def add_order(r, ev: str, sku: str, n: int, *later, status="reserved") -> str:
    k = keys.SkuKeys(ev, sku)
    oid = f"{ev}.{sku}.{n:012x}"
    rec = orders.record(status, f"u{n}", 3, 100, 1000 + n, now_ms() + 3_600_000)
    r.hset(k.order_by_id, oid, "|".join([rec, *later]))
    r.xadd(k.orders, {"type": "created", "ts": 1000 + n, oid: f"u{n}|3|100"})
    return oid


def test_the_follower_itself(redis_server, r):
    """core/follow.py in process: batches with the records' truth (a straddled order's
    breakdown and exact amount, updated_ms always there), a SKU added later, another
    consumer's entries taken over once idle, a stream deleted (its group with it)
    followed again."""
    from flashgate.core.follow import OrderFollower
    from flashgate.core.redisconn import RedisConnection

    ev = new_id("unit")
    put_definition(r, ev, event_body(stock=(10,)))
    o1 = add_order(r, ev, "s0", 1)
    o2 = add_order(r, ev, "s0", 2, "bd=2x100,1x120", "updated_ms=5000", status="paid")
    group = new_id("g")

    async def main():
        conn = RedisConnection(redis_server.url, command_timeout=10)
        await conn.connect()
        try:
            a = OrderFollower(conn, group=group, consumer="a", events=[ev], claim_idle_ms=200,
                              block_ms=50, rescan_interval=0.05)
            b = OrderFollower(conn, group=group, consumer="b", events=[ev], claim_idle_ms=200,
                              block_ms=50, rescan_interval=0.05)
            batch = await a.next_batch()
            got = {o["order_id"]: o for o in batch.orders()}
            assert set(got) == {o1, o2}
            assert got[o1]["updated_ms"] == got[o1]["created_ms"] == 1001
            assert got[o2]["price_breakdown"] == [{"qty": 2, "unit_price": 100},
                                                  {"qty": 1, "unit_price": 120}]
            assert got[o2]["amount"] == 320 and got[o2]["status"] == "paid"
            assert "bd" not in got[o2]
            assert [(e.event_id, e.sku, e.kind) for e in batch.entries] == [(ev, "s0",
                                                                               "created")] * 2
            # a dies with the batch unacknowledged: b takes it over once it is idle
            assert not (await b.next_batch()).entries
            await asyncio.sleep(0.3)
            b._next_claim = 0
            taken = await b.next_batch()
            assert {o["order_id"] for o in taken.orders()} == {o1, o2}
            await b.ack(taken)
            assert r.xpending(keys.SkuKeys(ev, "s0").orders, group)["pending"] == 0
            # a SKU added to the event later
            put_definition(r, ev, event_body(stock=(10, 5)))
            await b.rescan(force=True)  # (fg:events:version is not bumped: see above)
            o3 = add_order(r, ev, "s1", 3)
            later = await b.next_batch()
            assert [o["order_id"] for o in later.orders()] == [o3]
            await b.ack(later)
            # the stream deleted: the group is created again and what comes is followed
            r.delete(keys.SkuKeys(ev, "s0").orders)
            assert not (await b.next_batch()).entries
            o4 = add_order(r, ev, "s0", 4)
            for _ in range(20):
                again = await b.next_batch()
                if again.entries:
                    break
            assert [o["order_id"] for o in again.orders()] == [o4]
        finally:
            conn.close()

    asyncio.run(main())


@pytest.mark.ci_required
def test_a_table_made_by_the_shop(gw, r, redis_server, pg_cluster, pg_url):
    """The shop made the table and lets flashgate only read and write its rows (no right
    to create anything in the schema): the follower uses it. A table without the
    columns it needs stops the follower at start with exit code 1."""
    from flashgate.sinks import CREATE_TABLE

    role = new_id("shop").replace("-", "_")
    db = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(CREATE_TABLE)
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE ON flashgate_orders TO {role}")
    ev = new_id("shop")
    body = event_body(stock=(10,))
    gw.put_event(ev, body)
    acked = buy_many(gw, ev, [f"u{i}" for i in range(4)])
    f = Follower(redis_server.url, pg_cluster.url(db, user=role), "--event", ev,
                 "--group", new_id("g"))
    try:
        wait_for(lambda: count(pg_url) == 4, "4 rows", timeout=10)
    finally:
        assert f.stop() == 0, f.text()
    f.assert_clean()
    check_invariants(r, gw, ev, body, acked)

    other = pg_cluster.create_db()
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE flashgate_orders (order_id text PRIMARY KEY, total int)")
    out = subprocess.run([sys.executable, "-m", "flashgate.cli", "orders", "follow", "--to",
                          other, "--redis", redis_server.url], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1 and "cannot take the orders" in out.stderr, out.stderr


def test_a_redis_connection_that_breaks(gw, r, redis_server, tmp_path):
    """The follower's connection to Redis is cut (twice, once mid-batch likely): it
    reconnects and goes on; every order arrives, none is left pending."""
    ev = new_id("redis-cut")
    body = event_body(stock=(200,))
    gw.put_event(ev, body)
    port = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
    proxy = FaultProxy(port).start()
    path = tmp_path / "o.jsonl"
    group = new_id("g")
    f = Follower(f"redis://127.0.0.1:{proxy.port}/0", f"jsonl:{path}", "--event", ev,
                 "--group", group)

    def ids():
        return {json.loads(x)["order_id"] for x in path.read_text().splitlines()} \
            if path.exists() else set()

    try:
        wait_for(lambda: "following 1 more" in f.text(), "the follower", timeout=10)
        acked = buy_many(gw, ev, [f"a{i}" for i in range(50)])
        wait_for(lambda: len(ids()) == 50, "the first orders", timeout=10)
        proxy.cut()
        acked += buy_many(gw, ev, [f"b{i}" for i in range(50)])
        proxy.cut()
        acked += buy_many(gw, ev, [f"c{i}" for i in range(50)])
        wait_for(lambda: ids() == {o["order_id"] for o in acked}, "every order", timeout=15,
                 interval=0.1)
        k = keys.SkuKeys(ev, "s0")
        wait_for(lambda: r.xpending(k.orders, group)["pending"] == 0, "nothing pending",
                 timeout=10)
    finally:
        assert f.stop() == 0, f.text()
        proxy.stop()
    assert f.text().count("lost the connection to Redis") >= 2, f.text()
    f.assert_clean()
    check_invariants(r, gw, ev, body, acked)


def test_a_consumer_is_forgotten_only_with_nothing_pending(r):
    """The check and the removal are one script: a consumer holding entries is kept,
    one with nothing pending and idle long enough is removed."""
    from flashgate.core.follow import FORGET_CONSUMER

    stream, group = "fg:{forget-test:s0}:orders", "g"
    r.delete(stream)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    r.xadd(stream, {"type": "created", "ts": "1"})
    r.xreadgroup(group, "busy", {stream: ">"})
    r.xgroup_createconsumer(stream, group, "idle")

    def forget(name, idle_ms):
        return r.evalsha(r.script_load(FORGET_CONSUMER.source), 1, stream, group, name,
                         idle_ms)

    assert forget("busy", 0) == 0  # an entry pending: kept
    assert forget("idle", 60_000) == 0  # not idle long enough
    time.sleep(0.01)
    assert forget("idle", 1) == 1
    assert forget("nobody", 1) == 0
    assert {c["name"] for c in r.xinfo_consumers(stream, group)} == {b"busy"}
    r.delete(stream)
