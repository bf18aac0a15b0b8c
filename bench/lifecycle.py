"""The order lifecycle under load: payments, expiries, re-sales; the sweeper's cost.

`Payer` follows the SKUs' orders streams (XREAD) and pays a fixed share of the new
orders through the admin API as they are committed; the others are left to expire.
`resales` reads the streams after a run and ties each expired order to the orders
that took its returned units; `sweeper_cost` measures the expiry of N due orders in a
private Redis, through the sweeper's own code.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import math
import threading
import time
from collections import deque

from .runner import HOST


def pays(order_id: str, share_pct: float) -> bool:
    """Whether the payer pays this order: a fixed share, decided by the order id's hash
    (the same order is decided the same way in every run)."""
    h = int.from_bytes(hashlib.blake2b(order_id.encode(), digest_size=8).digest(), "big")
    return h % 10_000 < share_pct * 100


def _fields(flat) -> tuple[str, int, list[tuple[str, int]]]:
    """(type, ts, [(order id, qty)]) of a flashgate stream entry (str fields)."""
    if isinstance(flat, dict):
        flat = [x for kv in flat.items() for x in kv]
    it = iter(flat)
    kind, ts, found = "", 0, []
    for name, value in zip(it, it, strict=True):
        if name == "type":
            kind = value
        elif name == "ts":
            ts = int(value)
        else:
            found.append((name, int(value.split("|")[1])))
    return kind, ts, found


class Payer(threading.Thread):
    """Pays `share_pct` % of the orders of `streams` as they appear, through
    `POST /api/v1/admin/orders/{id}/paid` on one kept-alive connection."""

    def __init__(self, redis_client, port: int, admin_token: str, streams: list[str],
                 share_pct: float):
        super().__init__(name="payer", daemon=True)
        self.r = redis_client
        self.port = port
        self.auth = {"Authorization": f"Bearer {admin_token}", "Content-Length": "0"}
        self.streams = {s: "0-0" for s in streams}
        self.share = share_pct
        self.stop_flag = threading.Event()
        self.paid: list[str] = []  # answered 200 paid
        self.answers: dict[int, int] = {}
        self.lag_ms: list[float] = []  # the order's created entry to the 200
        self.error: str | None = None

    def _pay(self, conn: http.client.HTTPConnection, oid: str) -> int:
        conn.request("POST", f"/api/v1/admin/orders/{oid}/paid", headers=self.auth)
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            while not self.stop_flag.is_set():
                got = self.r.xread(self.streams, block=50, count=500)
                for stream, entries in got or ():
                    for entry_id, fields in entries:
                        self.streams[stream] = entry_id
                        kind, ts, found = _fields(fields)
                        if kind != "created":
                            continue
                        for oid, _qty in found:
                            if not pays(oid, self.share):
                                continue
                            try:
                                status = self._pay(conn, oid)
                            except (OSError, http.client.HTTPException):
                                conn.close()
                                conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                                status = self._pay(conn, oid)
                            self.answers[status] = self.answers.get(status, 0) + 1
                            if status == 200:
                                self.paid.append(oid)
                                self.lag_ms.append(time.time() * 1000 - ts)
        except Exception as e:  # noqa: BLE001 - reported by the scenario
            self.error = f"{type(e).__name__}: {e}"
        finally:
            conn.close()

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(10)


def read_stream(r, key: str) -> list[tuple[str, dict]]:
    out, start = [], "-"
    while True:
        batch = r.xrange(key, start, "+", count=10_000)
        out += batch
        if len(batch) < 10_000:
            return out
        start = "(" + batch[-1][0]


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, math.ceil(len(xs) * p / 100) - 1))]


def resales(r, prefix: str, stock: int, starts_at_ms: int) -> dict:
    """One SKU's lifecycle, read from its orders stream (and the records of its
    expired orders, for their deadlines).

    Units are taken by new orders from the stock never sold first, then from the
    units returned, oldest first: an expired order is re-sold when the last of its
    units is taken again, and its re-sale latency is that `created` entry's `ts`
    minus its `expired` entry's `ts`. The sweeper's lag is the `expired` entry's `ts`
    minus the order's `pay_by_ms`."""
    entries = read_stream(r, prefix + "orders")
    fresh = stock
    back: deque[list] = deque()  # [expired entry ts, units not yet re-sold, order id]
    resale_ms: dict[str, int] = {}
    expired_ts: dict[str, int] = {}
    counts = {"created": 0, "paid": 0, "expired": 0, "cancelled": 0}
    n_entries = {"created": 0, "expired": 0}
    sold = paid_units = 0
    first_sold_out = for_good = None
    for _entry_id, fields in entries:
        kind, ts, found = _fields(fields)
        counts[kind] = counts.get(kind, 0) + len(found)
        n_entries[kind] = n_entries.get(kind, 0) + 1
        for oid, qty in found:
            if kind == "created":
                sold += qty
                take = min(fresh, qty)
                fresh -= take
                qty -= take
                while qty and back:
                    head = back[0]
                    n = min(qty, head[1])
                    head[1] -= n
                    qty -= n
                    if head[1] == 0:
                        back.popleft()
                        resale_ms[head[2]] = ts - head[0]
            elif kind in ("expired", "cancelled"):
                sold -= qty
                if kind == "expired":
                    expired_ts[oid] = ts
                back.append([ts, qty, oid])
            elif kind == "paid":
                paid_units += qty
        if first_sold_out is None and sold >= stock:
            first_sold_out = ts - starts_at_ms
        if for_good is None and paid_units >= stock:
            for_good = ts - starts_at_ms
    lag = []
    ids = list(expired_ts)
    for i in range(0, len(ids), 1000):
        chunk = ids[i:i + 1000]
        for oid, raw in zip(chunk, r.hmget(prefix + "order_by_id", chunk), strict=True):
            if raw:
                lag.append(expired_ts[oid] - int(raw.split("|")[5]))
    return {
        "orders_created": counts["created"], "orders_paid": counts["paid"],
        "orders_expired": counts["expired"], "orders_cancelled": counts["cancelled"],
        "expired_resold": sum(1 for o in expired_ts if o in resale_ms),
        "resale_ms": [resale_ms[o] for o in expired_ts if o in resale_ms],
        "expiry_lag_ms": lag,
        "first_sold_out_ms": first_sold_out,
        "sold_out_for_good_ms": for_good,
        "units_paid": paid_units,
        "created_entries": n_entries["created"], "expired_entries": n_entries["expired"],
    }


def combine_skus(per_sku: list[dict]) -> dict:
    """Figures of one run over its SKUs: counts added, latencies pooled."""
    resale = [x for s in per_sku for x in s["resale_ms"]]
    lag = [x for s in per_sku for x in s["expiry_lag_ms"]]
    out = {k: sum(s[k] for s in per_sku) for k in (
        "orders_created", "orders_paid", "orders_expired", "orders_cancelled",
        "expired_resold", "units_paid", "created_entries", "expired_entries")}
    firsts = [s["first_sold_out_ms"] for s in per_sku]
    goods = [s["sold_out_for_good_ms"] for s in per_sku]
    out.update({
        "resale_ms": resale,
        "expiry_lag_ms": lag,
        "first_sold_out_ms": max(firsts) if None not in firsts else None,
        "sold_out_for_good_ms": max(goods) if None not in goods else None,
    })
    return out


# ------------------------------------------------------------------ the sweeper's cost


class _Sku:
    def __init__(self, keys, event_id: str, sku_id: str):
        self.keys = keys
        self.event_id = event_id
        self.sku = type("SkuId", (), {"id": sku_id})()


class _Runtimes:
    def __init__(self, skus):
        self.skus = skus

    def all_skus(self):
        return self.skus


class _Refresher:
    def read_counts(self, skus) -> None:
        pass


def _info_cpu(r) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _cmdstats(r) -> dict:
    return {k[len("cmdstat_"):]: v for k, v in r.info("commandstats").items()}


def fill_due_orders(r, event_id: str, sku_id: str, n: int, per_entry: int) -> None:
    """N reserved orders of 1 unit, past their deadline, as the commit script leaves
    them (records, `created` entries of `per_entry` orders, sold, buyers, the event's
    units), in a SKU whose sale is open for a day more."""
    from flashgate.core import keys, orders

    k = keys.SkuKeys(event_id, sku_id)
    now = int(time.time() * 1000)
    created, pay_by = now - 10_000, now - 5_000
    p = r.pipeline(transaction=False)
    p.hset(k.meta, mapping={"event": event_id, "sku": sku_id, "starts": created - 1000,
                            "ends": now + 86_400_000, "limit": 1, "price": 100})
    p.set(k.stock, n)
    p.set(k.sold, n)
    p.set(k.orders_n, n)
    p.set(k.revenue, 100 * n)
    p.set(keys.event_units(event_id), n)
    for start in range(0, n, per_entry):
        ids = [f"{event_id}.{sku_id}.o{i}" for i in range(start, min(n, start + per_entry))]
        p.hset(k.order_by_id, mapping={
            oid: orders.record("reserved", f"u{oid.rsplit('o', 1)[1]}", 1, 100, created, pay_by)
            for oid in ids})
        p.hset(k.buyers, mapping={f"u{oid.rsplit('o', 1)[1]}": 1 for oid in ids})
        fields = {"type": "created", "ts": created}
        fields.update({oid: f"u{oid.rsplit('o', 1)[1]}|1|100" for oid in ids})
        p.xadd(k.orders, fields)
        if len(p) > 200:
            p.execute()
    p.execute()


def sweeper_cost(redis, n: int, per_entry: int) -> dict:
    """Expire `n` due orders (`per_entry` to a `created` entry) with the sweeper's code
    (gateway/sweeper.py: XRANGE, HMGET of the records, the transition script) against
    `redis` (a private server): Redis CPU (INFO cpu, user + sys) and the sweeping
    process's CPU per expired order, and the script's own time (commandstats)."""
    from flashgate.core import keys, scripts
    from flashgate.core.redisconn import RedisConnection
    from flashgate.gateway.sweeper import Sweeper

    event_id, sku_id = f"sweepcost{per_entry}", "s1"
    r = redis.client()
    fill_due_orders(r, event_id, sku_id, n, per_entry)
    k = keys.SkuKeys(event_id, sku_id)

    async def sweep() -> dict:
        conn = RedisConnection(redis.url, command_timeout=60)
        await conn.connect()
        try:
            await scripts.load(conn.execute)
            sw = Sweeper(conn, _Runtimes([_Sku(k, event_id, sku_id)]), _Refresher(),
                         lambda: int(time.time() * 1000))
            cpu0, stats0 = _info_cpu(r), _cmdstats(r)
            own0, t0 = time.process_time(), time.perf_counter()
            passes = 0
            while sw.expired < n and passes < 100:
                sw.cursors.clear()  # a pass reads on; a stalled cursor must not wait a second
                await sw.sweep()
                passes += 1
            own, wall = time.process_time() - own0, time.perf_counter() - t0
            cpu, stats1 = _info_cpu(r) - cpu0, _cmdstats(r)
        finally:
            conn.close()
        done = sw.expired

        def delta(cmd, what):
            return (stats1.get(cmd, {}).get(what, 0) - stats0.get(cmd, {}).get(what, 0))

        return {
            "orders": n, "orders_per_entry": per_entry, "expired": done, "passes": passes,
            "redis_cpu_us_per_order": cpu * 1e6 / done if done else None,
            "script_us_per_order": delta("evalsha", "usec") / done if done else None,
            "script_calls": delta("evalsha", "calls"),
            "xrange_us_per_order": delta("xrange", "usec") / done if done else None,
            "hmget_us_per_order": delta("hmget", "usec") / done if done else None,
            "worker_cpu_us_per_order": own * 1e6 / done if done else None,
            "wall_us_per_order": wall * 1e6 / done if done else None,
        }

    try:  # the workers' loop
        import uvloop

        out = uvloop.run(sweep())
    except ImportError:
        out = asyncio.run(sweep())
    # what the sweep left: every unit back, each order expired once
    sold, returned = r.mget(k.sold, k.returned)
    expired = sum(len(_fields(f)[2]) for _, f in read_stream(r, k.orders)
                  if _fields(f)[0] == "expired")
    out.update({"sold_after": int(sold or 0), "returned": int(returned or 0),
                "expired_in_stream": expired})
    out["ok"] = out["sold_after"] == 0 and out["returned"] == n == expired == out["expired"]
    return out
