"""--commit-replicas N: a sale is answered 200 only once N replicas have it.

A master redis-server and a replica of it (both appendonly yes, appendfsync everysec,
on free ports, in the test's directory) behind a gateway whose --redis is the master.
With --commit-replicas 1 every 200 is already in the replica's memory; a replica that
does not answer turns the sales into 503s (never a 200), whose orders an
Idempotency-Key retry returns once it is back; and a failover under load (the
replica cut off its master, the master killed with -9 a moment later, the replica
promoted with REPLICAOF NO ONE) loses no acknowledged order, checked Jepsen-style as
in test_faults.py. With --commit-replicas 0 the same failover loses the orders
acknowledged after the cut: counted and printed (how many depends on timing; that
there are some shows the test can see a loss). Every test that sells ends with the
invariants on the master or on the promoted replica.

(A replica merely stopped, SIGSTOP, loses nothing in such a failover on one machine:
what the master wrote sits in the sockets' buffers and reaches it when it runs again.
A cut link is what loses writes.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest
import redis

from flashgate.core import keys
from flashgate.embedded import find_redis_server, free_port
from tests.integration.test_faults import REDIS_AWAY, History, buyer_loop, until_state, users_of
from tests.support import Gateway, check_invariants, event_body, new_id, wait_for

pytestmark = pytest.mark.timeout(180)


class Node:
    """A redis-server of the test's own on a free port, AOF fsynced every second;
    ``master``: the port of the server it replicates."""

    def __init__(self, data, master: int | None = None):
        self.data = data
        self.port = free_port()
        data.mkdir(parents=True, exist_ok=True)
        args = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(data), "--save", "", "--appendonly", "yes",
                "--appendfsync", "everysec", "--daemonize", "no",
                "--logfile", str(data / "redis.log")]
        if master is not None:
            args += ["--replicaof", "127.0.0.1", str(master)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.client = redis.Redis(port=self.port, socket_timeout=10)
        wait_for(self._pong, f"redis-server on port {self.port}", timeout=10)

    def _pong(self) -> bool:
        try:
            return self.client.ping()
        except redis.ConnectionError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def replication(self) -> dict:
        return self.client.info("replication")

    def signal(self, sig) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # (a stopped one cannot exit)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()


@pytest.fixture
def pair(tmp_path):
    """(master, replica), the replica's link up."""
    master = Node(tmp_path / "master")
    replica = Node(tmp_path / "replica", master=master.port)
    try:
        wait_for(lambda: replica.replication().get("master_link_status") == "up",
                 "the replica's link to the master", timeout=15)
        yield master, replica
    finally:
        replica.stop()
        master.stop()


def has_order(r: redis.Redis, ev: str, order: dict) -> bool:
    return r.hexists(keys.SkuKeys(ev, order["sku"]).order_by_id, order["order_id"])


def test_every_200_is_on_the_replica_and_a_silent_replica_gets_503(pair, tmp_path):
    """--commit-replicas 1: the replica has each order the moment its 200 is read
    (also for a call re-sent whole after NOSCRIPT, with a WAIT of its own). With the
    replica stopped (SIGSTOP), buys are answered 503 with Retry-After after the
    timeout, never 200; their orders are on the master; once the replica runs again,
    a retry with the same Idempotency-Key returns each order (200, the same id), and
    the replica has them all."""
    master, replica = pair
    gw = Gateway(master.url, tmp_path / "gw", workers=2,
                 extra=["--commit-replicas", "1", "--commit-replicas-timeout", "300"]).start()
    ev = new_id("rep")
    body = event_body(stock=(1000,), limits=(1,))
    gw.put_event(ev, body)
    acked = []
    for i in range(20):
        if i == 10:
            master.client.script_flush()  # the next call meets NOSCRIPT
        status, order, _ = gw.buy(ev, "s0", f"u{i}")
        assert status == 200, order
        assert has_order(replica.client, ev, order), f"the 200 of {order} came first"
        acked.append(order)

    keyed = {f"late{i}": f"key-{i}" for i in range(6)}
    replica.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        answers = {u: gw.buy(ev, "s0", u, headers={"Idempotency-Key": k})
                   for u, k in keyed.items()}
        took = time.monotonic() - t0
    finally:
        replica.signal(signal.SIGCONT)
    for user, (status, data, headers) in answers.items():
        assert status == 503, (user, status, data)
        assert data["error"] == "unavailable" and "replicas" in data["message"], data
        assert headers.get("Retry-After") == "1"
    assert took >= 6 * 0.3 * 0.9, f"6 buys answered in {took:.2f} s: before the timeout?"
    buyers = master.client.hgetall(keys.SkuKeys(ev, "s0").buyers)
    assert all(u.encode() in buyers for u in keyed), "a 503'd sale is not on the master"
    h = gw.happenings("replicas_behind")
    assert h and h[0]["replicas"] == 1 and h[0]["acknowledged"] == 0, h
    _, metrics, _ = gw.request("GET", "/metrics")
    assert "flashgate_commit_unreplicated_total" in metrics.decode()

    wait_for(lambda: replica.replication().get("master_link_status") == "up",
             "the replica back", timeout=15)
    for user, key in keyed.items():
        status, order, _ = gw.buy(ev, "s0", user, headers={"Idempotency-Key": key})
        assert status == 200, order
        assert has_order(replica.client, ev, order)
        acked.append(order)
    # every order in Redis was acknowledged in the end: exact
    check_invariants(master.client, gw, ev, body, acked, exact=True)
    wait_for(lambda: replica.replication().get("slave_repl_offset")
             == master.replication().get("master_repl_offset"), "the replica caught up")
    check_invariants(replica.client, None, ev, body, acked, exact=True)


def test_no_replica_connected_warns_and_sells_nothing(redis_server, r, tmp_path):
    """--commit-replicas 2 against a Redis with no replica: a warning at start, and a
    buy is answered 503 after the timeout (its order is on the server: indeterminate)."""
    gw = Gateway(redis_server.url, tmp_path / "gw", workers=1,
                 extra=["--commit-replicas", "2", "--commit-replicas-timeout", "100"]).start()
    assert any("--commit-replicas 2: Redis has 0 replica(s) connected" in line
               for line in gw.output), "".join(gw.output[-20:])
    ev = new_id("norep")
    body = event_body(stock=(5,))
    gw.put_event(ev, body)
    t0 = time.monotonic()
    status, data, _ = gw.buy(ev, "s0", "alone")
    assert status == 503 and "replicas" in data["message"], data
    assert time.monotonic() - t0 >= 0.09
    figures = check_invariants(r, None, ev, body, [], exact=False)
    assert figures["s0"]["sold"] == 1  # committed on the master, not acknowledged


def partition(master: Node, replica: Node) -> None:
    """Cut the replica off its master: the master drops the link, and the replica
    cannot come back (it now authenticates as a user the master does not have)."""
    replica.client.config_set("masteruser", "cut-off")
    replica.client.config_set("masterauth", "no-such-password")
    master.client.client_kill_filter(_type="replica")
    wait_for(lambda: master.replication().get("connected_slaves") == 0, "the link cut")


@pytest.mark.expected_log(*REDIS_AWAY)
@pytest.mark.parametrize("replicas", [1, 0])
def test_failover_after_the_master_is_killed(tmp_path, replicas, capsys):
    """Load of 8 keep-alive buyers; once 300 are sold the replica is cut off its
    master (a partition: what the master writes from then on never reaches it); the
    load goes on until 50 more are acknowledged or 1 s passed, then the master is
    killed (-9) and the replica promoted (REPLICAOF NO ONE). On it: with
    --commit-replicas 1 every acknowledged order (acknowledged ⊆ stored), no order
    nobody may have asked for, and the invariants. With 0 the acknowledged orders the
    promoted replica lacks are counted and printed: some must be (the test can see a
    loss), and the invariants hold all the same."""
    master = Node(tmp_path / "master")
    replica = Node(tmp_path / "replica", master=master.port)
    gw = None
    try:
        wait_for(lambda: replica.replication().get("master_link_status") == "up",
                 "the replica's link", timeout=15)
        gw = Gateway(master.url, tmp_path / "gw", workers=2,
                     extra=["--commit-replicas", str(replicas)]).start()
        ev = new_id(f"fail{replicas}")
        body = event_body(stock=(1_000_000,))
        gw.put_event(ev, body)
        history = History()
        mark: dict = {}

        async def fault():
            await until_state(lambda: len(history.ok) >= 300, "300 units sold", timeout=30)
            await asyncio.get_running_loop().run_in_executor(None, partition, master, replica)
            mark["cut"] = len(history.ok)
            deadline = time.monotonic() + 1.0
            while len(history.ok) < mark["cut"] + 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            master.kill()
            mark["killed"] = len(history.ok)
            await asyncio.sleep(0.2)
            mark["done"] = True

        async def main():
            until = time.monotonic() + 60
            await asyncio.gather(fault(), *(buyer_loop(gw, ev, history, u, until,
                                                       enough=lambda: "done" in mark)
                                           for u in users_of("b", 8)))

        asyncio.run(main())
        replica.client.replicaof("NO", "ONE")
        wait_for(lambda: replica.replication().get("role") == "master", "the promotion")
        r = replica.client
        stored = {k.decode() for k, _ in r.hscan_iter(keys.SkuKeys(ev, "s0").buyers)}
        lost = sorted(set(history.ok) - stored)
        figures = {"acknowledged": len(history.ok), "indeterminate": len(history.indeterminate),
                   "stored_on_replica": len(stored), "lost": len(lost),
                   "acknowledged_after_the_cut": mark["killed"] - mark["cut"]}
        with capsys.disabled():
            print(f"\n[failover, --commit-replicas {replicas}] {figures}")
        if replicas:
            figures.update(history.check(r, ev, body))  # acknowledged ⊆ stored, invariants
            assert figures["lost"] == 0
        else:
            assert lost, "the replica has every order: the test would not see a loss"
            kept = {u: o for u, o in history.ok.items() if u not in lost}
            check_invariants(r, None, ev, body, list(kept.values()), exact=False)
            assert not stored - set(history.ok) - history.indeterminate, "phantom orders"
            assert not history.other_5xx and not history.other_4xx
    finally:
        if gw is not None:
            gw.stop()
        replica.stop()
        master.stop()
