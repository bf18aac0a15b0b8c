"""Test support: a real gateway process, HTTP clients, and the invariant check that
every test which sells stock ends with."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.client import HTTPConnection

import redis

from flashgate.core import keys, orders

ADMIN = "test-admin-token"


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


class Gateway:
    """``flashgate serve`` in a subprocess, on a free port."""

    def __init__(self, redis_url: str, tmp, *, workers: int = 2, extra=()):
        self.redis_url = redis_url
        self.args = [
            sys.executable, "-m", "flashgate.cli", "serve",
            "--host", "127.0.0.1", "--port", "0", "--workers", str(workers),
            "--redis", redis_url, "--admin-token", ADMIN, "--data-dir", str(tmp),
            "--ip-rate", "0", "--user-rate", "0", "--no-demo", "--log-level", "warning",
            # an external Redis: dev identity (X-User-Id) must be asked for, unless the
            # test gives a user secret
            *(() if any(str(a).startswith("--user-secret") for a in extra) else ("--dev",)),
            *extra,
        ]
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.output: list[str] = []

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> Gateway:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        found = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.output.append(line)
                if "listening on http://" in line and not found.is_set():
                    self.port = int(line.split("listening on http://")[1].split()[0]
                                    .rsplit(":", 1)[1])
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
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

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                # the whole session: the supervisor, its workers, and any wrapper
                # (faketime) between the test and the supervisor
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    # -- one-shot requests (a new connection each: spreads over workers) -------

    def request(self, method, path, body=None, headers=None, raw_body: bytes | None = None):
        conn = HTTPConnection("127.0.0.1", self.port, timeout=10)
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

    def buy(self, event_id, sku, user, qty=1, headers=None):
        h = {"X-User-Id": user, **(headers or {})}
        return self.request("POST", f"/api/v1/events/{event_id}/buy", {"sku": sku, "qty": qty}, h)

    def orders_export(self, event_id) -> list[dict]:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", f"/api/v1/admin/events/{event_id}/orders",
                         headers={"Authorization": f"Bearer {ADMIN}"})
            r = conn.getresponse()
            assert r.status == 200
            return [json.loads(line) for line in r.read().splitlines() if line]
        finally:
            conn.close()


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
                     acked: list[dict], *, exact: bool = True) -> dict:
    """The promises, checked against Redis (and the API when ``gw`` is given):
    sold <= stock; sum(buyers) == sold == created orders in the stream == orders_n;
    nobody over the limit; every acknowledged order present; no duplicate order ids.
    ``exact``: every order in Redis was acknowledged (no client saw an indeterminate
    answer, and no order came another way). Returns per-SKU figures."""
    figures = {}
    acked_ids = [o["order_id"] for o in acked]
    assert len(acked_ids) == len(set(acked_ids)), "an order id was acknowledged twice"
    all_stream_ids: set[str] = set()
    for sku in event["skus"]:
        k = keys.SkuKeys(event_id, sku["id"])
        stock = int(r.get(k.stock) or 0)
        sold = int(r.get(k.sold) or 0)
        buyers = {u.decode(): int(v) for u, v in r.hgetall(k.buyers).items()}
        entries = r.xrange(k.orders)
        created = [f for _, f in entries if f[b"type"] == b"created"]
        ids = [f[b"order_id"].decode() for f in created]
        units = sum(int(f[b"qty"]) for f in created)
        assert len(ids) == len(set(ids)), f"{sku['id']}: duplicate order ids in the stream"
        assert stock == sku["stock"], f"{sku['id']}: stock {stock}, defined {sku['stock']}"
        assert sold <= stock, f"{sku['id']}: oversold {sold} > {stock}"
        assert sum(buyers.values()) == sold, f"{sku['id']}: sum(buyers) {sum(buyers.values())} != sold {sold}"
        assert units == sold, f"{sku['id']}: units in the stream {units} != sold {sold}"
        assert int(r.get(k.orders_n) or 0) == len(ids)
        # every order of the stream has its record, and no record is without its entry
        records = {}
        for i in range(0, len(ids), 1000):
            chunk = ids[i:i + 1000]
            records.update(zip(chunk, r.hmget(k.order_by_id, chunk), strict=True))
        for f in created:
            o = f[b"order_id"].decode()
            got = orders.from_record(o, records[o])
            assert got is not None, f"{sku['id']}: order {o} of the stream has no record"
            assert (got["user_id"], got["qty"]) == (f[b"user"].decode(), int(f[b"qty"])), o
        assert r.hlen(k.order_by_id) == sum(v is not None for v in records.values()), (
            f"{sku['id']}: records without a stream entry")
        over = {u: n for u, n in buyers.items() if n > sku["per_user_limit"]}
        assert not over, f"{sku['id']}: users over the limit: {over}"
        per_user_stream: dict[str, int] = {}
        for f in created:
            u = f[b"user"].decode()
            per_user_stream[u] = per_user_stream.get(u, 0) + int(f[b"qty"])
        assert per_user_stream == buyers, f"{sku['id']}: buyers hash != stream per user"
        all_stream_ids.update(ids)
        figures[sku["id"]] = {"stock": stock, "sold": sold, "orders": len(ids),
                              "buyers": len(buyers)}
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
