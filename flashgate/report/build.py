"""The report of an event, as a dict (the JSON of ``GET …/report``), from what the
figures' readers give: the stats (``handlers/figures.read_stats``), the per-second
series (``read_series``) and every order (``store.export_orders``). docs/API.md ("The
report") defines each field."""

from __future__ import annotations

from flashgate.core.events import Event
from flashgate.report import words

GOALS = ("units", "revenue", "buyers")
MINUTE_MS = 60_000
MAX_BUCKETS = 720  # per_minute: a longer sale is counted in buckets of several minutes
TAIL_S = 5  # the per-second chart runs this long past the last second with requests


def build(ev: Event, state: str, stats: dict, orders: list[dict], points: list[dict]) -> dict:
    """The report. ``points``: the series' seconds from the start up to the end (or
    now, while the sale is on); ``orders``: the API's order objects."""
    as_of = stats["as_of_ms"]
    final = as_of >= ev.ends_at_ms + stats["lag_ms"]
    paid = [o for o in orders if o["status"] == "paid"]
    buyers = len({o["user_id"] for o in orders})
    uv = stats["uv"]
    per_sku_paid: dict[str, int] = {}
    for o in paid:
        per_sku_paid[o["sku"]] = per_sku_paid.get(o["sku"], 0) + 1
    defined = {s.id: s for s in ev.skus}
    skus = []
    for s in stats["skus"]:
        d = defined.get(s["id"])
        skus.append({**s, "name": d.name if d else s["id"], "price": d.price if d else None,
                     "paid_orders": per_sku_paid.get(s["id"], 0)})
    rep = {
        "event_id": ev.id, "name": ev.name, "state": state, "final": final,
        "as_of_ms": as_of, "lag_ms": stats["lag_ms"],
        "starts_at_ms": ev.starts_at_ms, "ends_at_ms": ev.ends_at_ms,
        "summary": None,  # (below: it reads the rest)
        "sold_out_ms": stats["sold_out_ms"],
        "stock": sum(s["stock"] for s in stats["skus"]),
        "units_sold": stats["units_sold"], "units_paid": stats["units_paid"],
        "orders": stats["orders"], "paid_orders": len(paid), "buyers": buyers,
        "revenue": stats["revenue"], "revenue_paid": stats["revenue_paid"],
        "pv": stats["pv"], "uv": uv, "participants": stats["participants"],
        "registered": stats["registered"], "attempts": stats["attempts"],
        "rejections": stats["rejections"],
        "conversion": min(1.0, round(buyers / uv, 4)) if uv else 0.0,
        "funnel": [{"step": "pv", "count": stats["pv"]}, {"step": "uv", "count": uv},
                   {"step": "participants", "count": stats["participants"]},
                   {"step": "orders", "count": stats["orders"]},
                   {"step": "paid", "count": len(paid)}],
        "peak_rps": _peak(points),
        "per_minute": _per_minute(ev, orders, as_of),
        "per_second": _per_second(points),
        "latency_ms": stats["latency_ms"],
        "skus": skus,
        "milestones": [{**m, "after_ms": (m["reached_ms"] - ev.starts_at_ms
                                          if m["reached_ms"] is not None else None)}
                       for m in stats["milestones"]],
        "goals": _goals(ev, stats, buyers),
    }
    rep["summary"] = words.summary(rep)
    return rep


def _peak(points: list[dict]) -> dict:
    """The most buy requests in one second, and that second (the first, on a tie)."""
    best = max(points, key=lambda p: p["attempts"], default=None)
    if best is None or not best["attempts"]:
        return {"attempts": 0, "at_ms": None}
    return {"attempts": best["attempts"], "at_ms": best["ts_ms"]}


def _per_minute(ev: Event, orders: list[dict], as_of: int) -> list[dict]:
    """Orders created and their units in each minute from the start (by the orders'
    ``created_ms``), up to the end or now; a sale longer than ``MAX_BUCKETS`` minutes
    in buckets of as many whole minutes as keep it within that many."""
    span = min(ev.ends_at_ms, as_of) - ev.starts_at_ms
    n = max(0, -(-span // MINUTE_MS))
    for o in orders:  # (an order read after as_of, while the sale is on)
        n = max(n, (o["created_ms"] - ev.starts_at_ms) // MINUTE_MS + 1)
    step = max(1, -(-n // MAX_BUCKETS)) * MINUTE_MS
    n = -(-n * MINUTE_MS // step)
    out = [{"from_ms": ev.starts_at_ms + i * step, "to_ms": ev.starts_at_ms + (i + 1) * step,
            "orders": 0, "units": 0} for i in range(n)]
    for o in orders:
        m = out[min(n - 1, max(0, (o["created_ms"] - ev.starts_at_ms) // step))]
        m["orders"] += 1
        m["units"] += o["qty"]
    return out


def _per_second(points: list[dict]) -> dict:
    """Buy requests and orders per second from the start to a few seconds past the
    last second with a request."""
    busy = [i for i, p in enumerate(points) if p["attempts"]]
    upto = min(len(points), busy[-1] + 1 + TAIL_S) if busy else 0
    shown = points[:upto]
    return {"from_ms": points[0]["ts_ms"] if points else None, "step_ms": 1000,
            "attempts": [p["attempts"] for p in shown],
            "orders": [p["orders"] for p in shown]}


def _goals(ev: Event, stats: dict, buyers: int) -> dict:
    actual = {"units": stats["units_sold"], "revenue": stats["revenue"], "buyers": buyers}
    out = {}
    for k in GOALS:
        if k not in ev.goals:
            continue
        target = ev.goals[k]
        out[k] = {"target": target, "actual": actual[k],
                  "attainment": round(actual[k] / target, 4) if target else None,
                  "reached": actual[k] >= target}
    return out
