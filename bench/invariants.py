"""The sale invariants, checked after every scenario in Redis and through the API.

Per SKU (keys `fg:{<event>:<sku>}:…`):
* `sold <= stock`                                  (no oversell)
* `sum(buyers) == sold == live units in the stream` (created minus cancelled/expired)
* no buyer above the SKU's `per_user_limit`
* every 200 a client received is an order in the stream (`acked <= orders`)
Through the API (when the target has it): the stats' `units_sold` equals Redis's
`sold`, and the orders listing has every order.
After payments, cancels and expiries (`check_lifecycle`, flashgate's layout):
* `sold` == the units of the reserved and paid orders (and of those that ended after
  the sale's end, `kept=1`); `units_paid` == the units of the paid orders
* every order the client was told is paid is paid, and never ended otherwise
* an order is created once and ends at most once (one `paid`, `cancelled` or `expired`
  entry), in the state its record has
* every cancelled or expired order's units were returned once: `returned` == their units
"""

from __future__ import annotations

import json
import time

from .runner import HOST, http

# Reads the counters, walks the whole stream and the buyers hash inside Redis: one
# atomic snapshot in one round trip, even for millions of orders. Returns {stock,
# sold, created units, created orders, units given back, id of the last "created"
# entry, sum of buyers, max units of one buyer, buyers over the limit}.
AUDIT_LUA = """
local stock = redis.call('GET', KEYS[1]) or '0'
local sold = redis.call('GET', KEYS[2]) or '0'
local created, entries, gone, last = 0, 0, 0, ''
local start = '-'
while true do
  local batch = redis.call('XRANGE', KEYS[3], start, '+', 'COUNT', 10000)
  if #batch == 0 then break end
  for _, e in ipairs(batch) do
    -- flashgate's entry: type, ts, then per order: its id -> "<user>|<qty>|<unit_price>";
    -- the FastAPI peer's: one order, its figures as fields (order_id, user, qty, ...)
    local f, typ, qty, n, single = e[2], nil, 0, 0, nil
    for i = 1, #f, 2 do
      local name = f[i]
      if name == 'type' then typ = f[i + 1]
      elseif name == 'qty' then single = tonumber(f[i + 1]) or 1
      elseif name ~= 'ts' and name ~= 'order_id' and name ~= 'user' and name ~= 'unit_price' then
        qty = qty + (tonumber(string.match(f[i + 1], '^[^|]*|(%d+)|')) or 0); n = n + 1
      end
    end
    if single then qty, n = single, 1 end
    if typ == 'created' then
      created = created + qty; entries = entries + n; last = e[1]
    elseif typ == 'cancelled' or typ == 'expired' then
      gone = gone + qty
    end
  end
  start = '(' .. batch[#batch][1]
end
local total, most, over = 0, 0, 0
local limit = tonumber(ARGV[1])
for _, v in ipairs(redis.call('HVALS', KEYS[4])) do
  local n = tonumber(v)
  total = total + n
  if n > most then most = n end
  if n > limit then over = over + 1 end
end
return {stock, sold, created, entries, gone, last, total, most, over}
"""


def sku_prefix(event_id: str, sku: str) -> str:
    return f"fg:{{{event_id}:{sku}}}:"


def audit_sku(r, event_id: str, sku: dict) -> dict:
    p = sku_prefix(event_id, sku["id"])
    stock, sold, created, entries, gone, last, buyers, most, over = r.eval(
        AUDIT_LUA, 4, p + "stock", p + "sold", p + "orders", p + "buyers", sku["per_user_limit"]
    )
    return {
        "sku": sku["id"],
        "stock": int(stock or 0),
        "sold": int(sold or 0),
        "orders": int(entries),
        "live_units": int(created) - int(gone),
        "buyers_units": int(buyers),
        "max_per_user": int(most),
        "users_over_limit": int(over),
        "per_user_limit": sku["per_user_limit"],
        "last_order_ms": int(last.split("-")[0]) if last else None,
    }


def settle(r, event: dict, quiet: float = 0.3, timeout: float = 10.0) -> None:
    """Waits until the units sold stop moving: requests wrk left in flight finish."""
    keys = [sku_prefix(event["id"], s["id"]) + "sold" for s in event["skus"]]
    last, since = None, time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        now = r.mget(keys)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def check_event(r, event: dict, acked: int = 0, api_port: int | None = None,
                admin_token: str = "", api_orders_max: int = 200_000) -> dict:
    """Audits one event. `acked`: 200s that clients saw for it."""
    problems: list[str] = []
    settle(r, event)
    skus = [audit_sku(r, event["id"], s) for s in event["skus"]]
    for s in skus:
        name = f"{event['id']}/{s['sku']}"
        if s["sold"] > s["stock"]:
            problems.append(f"OVERSOLD {name}: sold {s['sold']} > stock {s['stock']}")
        if not s["sold"] == s["buyers_units"] == s["live_units"]:
            problems.append(
                f"{name}: sold {s['sold']}, sum(buyers) {s['buyers_units']}, "
                f"units in the stream {s['live_units']} differ"
            )
        if s["users_over_limit"]:
            problems.append(
                f"{name}: {s['users_over_limit']} users over the limit {s['per_user_limit']} "
                f"(max {s['max_per_user']})"
            )
    orders = sum(s["orders"] for s in skus)
    sold = sum(s["sold"] for s in skus)
    if acked > orders:
        problems.append(f"{event['id']}: clients got {acked} 200s but only {orders} orders exist")
    api = {}
    if api_port is not None:
        api = _check_api(event, api_port, admin_token, sold, orders, api_orders_max, problems)
    return {"event": event["id"], "ok": not problems, "problems": problems, "skus": skus,
            "orders": orders, "units_sold": sold, "acked": acked, "api": api}


def _check_api(event, port, token, sold, orders, orders_max, problems) -> dict:
    base = f"http://{HOST}:{port}/api/v1/admin/events/{event['id']}"
    auth = {"Authorization": f"Bearer {token}"}
    stats = None
    deadline = None  # totals across workers may lag a tick: 5 s from the first answer
    unready = time.monotonic() + 15
    while True:
        status, body = http("GET", base + "/stats", headers=auth)
        if status == 503 and time.monotonic() < unready:
            # the audit's walk of a large stream held Redis for seconds: the gateway
            # answers 503 until its connection has recovered
            time.sleep(0.2)
            continue
        if status != 200:
            problems.append(f"{event['id']}: GET stats answered {status}")
            return {}
        if deadline is None:
            deadline = time.monotonic() + 5
        stats = json.loads(body)
        if stats.get("units_sold") == sold or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out = {"stats": stats}
    if stats.get("units_sold") != sold:
        problems.append(f"{event['id']}: stats units_sold {stats.get('units_sold')} != Redis sold {sold}")
    if orders <= orders_max:
        status, body = http("GET", base + "/orders", headers=auth, timeout=60)
        if status == 200:
            listed = sum(1 for line in body.splitlines() if line.strip())
            out["orders_listed"] = listed
            if listed != orders:
                problems.append(f"{event['id']}: orders listing has {listed} lines, stream has {orders}")
        elif status != 404:  # the FastAPI peer has no listing
            problems.append(f"{event['id']}: GET orders answered {status}")
    return out


def check_lifecycle(r, event: dict, paid: list[str] | None = None) -> dict:
    """The lifecycle's invariants of one event (flashgate's streams and records); `paid`:
    the orders a client was answered `paid`. Run once no transition is in flight."""
    problems: list[str] = []
    counts = {"reserved": 0, "paid": 0, "cancelled": 0, "expired": 0}
    paid_set = set(paid or ())
    for sku in event["skus"]:
        name = f"{event['id']}/{sku['id']}"
        p = sku_prefix(event["id"], sku["id"])
        records = r.hgetall(p + "order_by_id")
        sold, units_paid, returned = (int(x or 0) for x in
                                      r.mget(p + "sold", p + "units_paid", p + "returned"))
        created: set[str] = set()
        ended: dict[str, str] = {}
        given_back = 0
        start = "-"
        while True:
            batch = r.xrange(p + "orders", start, "+", count=10_000)
            for _, fields in batch:
                typ = fields.get("type")
                for oid, value in fields.items():
                    if oid in ("type", "ts"):
                        continue
                    if typ == "created":
                        if oid in created:
                            problems.append(f"{name}: order {oid} created twice")
                        created.add(oid)
                        continue
                    state = {"paid": "paid", "cancelled": "cancelled", "expired": "expired"}.get(typ)
                    if state is None:
                        continue
                    if oid in ended:
                        problems.append(f"{name}: order {oid} {ended[oid]} and then {state}")
                    ended[oid] = state
                    if state != "paid" and not _kept(records.get(oid)):
                        given_back += int(value.split("|")[1])
            if len(batch) < 10_000:
                break
            start = "(" + batch[-1][0]
        live = paid_units = 0
        for oid, rec in records.items():
            status, _, qty = rec.split("|")[:3]
            counts[status] = counts.get(status, 0) + 1
            if status in ("reserved", "paid") or _kept(rec):
                live += int(qty)
            if status == "paid":
                paid_units += int(qty)
            if oid not in created:
                problems.append(f"{name}: order {oid} has a record but no created entry")
            if ended.get(oid, "reserved") != status:
                problems.append(f"{name}: order {oid} is {status}, its stream says "
                                f"{ended.get(oid, 'reserved')}")
        if len(created) != len(records):
            problems.append(f"{name}: {len(created)} orders created, {len(records)} records")
        if live != sold:
            problems.append(f"{name}: sold {sold} != units of live orders {live}")
        if paid_units != units_paid:
            problems.append(f"{name}: units_paid {units_paid} != units of paid orders {paid_units}")
        if given_back != returned:
            problems.append(f"{name}: returned {returned} != units of the orders that "
                            f"ended unpaid {given_back}")
        for oid in paid_set:
            if oid.startswith(f"{event['id']}.{sku['id']}.") and \
                    (records.get(oid) or "").split("|")[0] != "paid":
                problems.append(f"{name}: order {oid} was answered paid, is now "
                                f"{(records.get(oid) or 'missing').split('|')[0]}")
    if len(problems) > 20:
        problems[20:] = [f"... and {len(problems) - 20} more"]
    return {"ok": not problems, "problems": problems, "statuses": counts,
            "paid_answered": len(paid_set)}


def _kept(rec: str | None) -> bool:
    return bool(rec) and (rec.endswith("|kept=1") or "|kept=1|" in rec)
