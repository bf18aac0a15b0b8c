"""The sale invariants, checked after every scenario in Redis and through the API.

Per SKU (keys `fg:{<event>:<sku>}:…`):
* `sold <= stock`                                  (no oversell)
* `sum(buyers) == sold == live units in the stream` (created minus cancelled/expired)
* no buyer above the SKU's `per_user_limit`
* every 200 a client received is an order in the stream (`acked <= orders`)
Through the API (when the target has it): the stats' `units_sold` equals Redis's
`sold`, and the orders listing has every order.
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
