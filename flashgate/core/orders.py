"""An order as Redis keeps it, and as the API shows it; the stream of order events.

Every order of a SKU is one field of the SKU's ``order_by_id`` hash (core/keys.py):
order id -> ``<status>|<user_id>|<qty>|<unit_price>|<created_ms>|<pay_by_ms>``, then
any field a later state adds as ``|<name>=<value>``. No part holds a ``|``: user ids
are ``[A-Za-z0-9_-]``, the rest are numbers and status names. The commit script
writes the first six; the id names the event and the SKU, and amount is
unit_price * qty, so neither is stored. An order whose units straddle price tiers
carries ``|bd=<qty>x<price>,<qty>x<price>...`` (each run of units at its tier's price,
in the order they were sold): its API object has ``price_breakdown``
(``[{"qty", "unit_price"}]``), ``amount`` is the exact sum, and ``unit_price`` is the
first unit's price.

The SKU's ``orders`` stream tells what happened to orders, in order: each entry is
``type`` (``created``, later ``paid``, ``cancelled``, ``expired``), ``ts`` (Redis TIME,
ms), then one field per order it is about: the order id -> ``<user>|<qty>|<unit_price>``.
The commit script writes one ``created`` entry per batch (all its new orders).

After the sale (lua/transition.lua): a ``reserved`` order becomes ``paid``, or
``cancelled`` (by the operator) or ``expired`` (unpaid at ``pay_by_ms``), each final. The
record then carries ``updated_ms=<ms>``, and ``kept=1`` when the order ended at or after
the sale's end and so kept its units; the stream gets an entry of that type.
"""

from __future__ import annotations

from flashgate.core.keys import split_order_id

STATUSES = ("reserved", "paid", "cancelled", "expired")
# the statuses whose order holds its units (and a cancelled or expired one with kept=1:
# it ended after the sale's end, when no unit comes back)
LIVE = ("reserved", "paid")
# the fields of a record, in order (lua/commit.lua writes them)
RECORD_FIELDS = ("status", "user_id", "qty", "unit_price", "created_ms", "pay_by_ms")
_INT_FIELDS = ("qty", "unit_price", "created_ms", "pay_by_ms")


def record(status: str, user_id: str, qty: int, unit_price: int, created_ms: int,
           pay_by_ms: int, **later: str | int) -> str:
    """An order's record (see the module docstring)."""
    parts = [status, user_id, str(qty), str(unit_price), str(created_ms), str(pay_by_ms)]
    parts += [f"{k}={v}" for k, v in later.items()]
    return "|".join(parts)


def kept(raw: bytes | None) -> bool:
    """Whether a record is of an order that ended after the sale's end, keeping its
    units (``kept=1``)."""
    return bool(raw) and (raw.endswith(b"|kept=1") or b"|kept=1|" in raw)


def from_record(order_id: str, raw: bytes | None) -> dict | None:
    """The API's order object from its record, or None for none (or for a record that
    is not one). ``updated_ms`` is the last transition's time, or ``created_ms`` for an
    order never changed; ``kept`` (an order that ended after the sale's end, its units
    not returned) is the store's and not shown."""
    if not raw:
        return None
    parts = raw.decode().split("|")
    if len(parts) < len(RECORD_FIELDS):
        return None
    d: dict = dict(zip(RECORD_FIELDS, parts, strict=False))
    for extra in parts[len(RECORD_FIELDS):]:
        name, _, value = extra.partition("=")
        if name == "bd":
            breakdown = parse_breakdown(value)
            if breakdown is None:
                return None
            d["price_breakdown"] = breakdown
            continue
        d[name] = int(value) if value.isdigit() else value
    try:
        for f in _INT_FIELDS:
            d[f] = int(d[f])
    except ValueError:
        return None
    d.setdefault("updated_ms", d["created_ms"])
    d.pop("kept", None)
    return api_order(order_id, d)


def parse_breakdown(text: str) -> list[dict] | None:
    """``[{"qty", "unit_price"}, ...]`` of a record's ``bd`` (``1x100,1x990``), or None
    if it is not one."""
    out = []
    for part in text.split(","):
        qty, x, price = part.partition("x")
        if not x or not qty.isdigit() or not price.isdigit():
            return None
        out.append({"qty": int(qty), "unit_price": int(price)})
    return out


def breakdown_arg(breakdown: list[dict]) -> str:
    """A record's ``bd`` of a ``price_breakdown``."""
    return ",".join(f"{p['qty']}x{p['unit_price']}" for p in breakdown)


def record_of_hash(flat) -> str | None:
    """The record of an order kept in the earlier layout (a hash per order; HGETALL
    reply: user_id, qty, unit_price, status, created_ms, pay_by_ms), or None if the
    hash is not one (store.migrate_layout moves such orders into their SKU's hash)."""
    if not flat:
        return None
    it = iter(flat)
    d = {k.decode(): v.decode() for k, v in zip(it, it, strict=True)}
    try:
        return record(d.get("status", "reserved"), d["user_id"],
                      *(int(d[f]) for f in _INT_FIELDS))
    except (KeyError, ValueError):
        return None


def api_order(order_id: str, d: dict) -> dict:
    """The API's order object from the stored fields ``d`` (emptied): the id names the
    event and the SKU, amount is unit_price * qty (or the sum of the price breakdown of
    an order that straddles tiers), the rest is as stored."""
    where = split_order_id(order_id)
    qty, unit_price = d.pop("qty", 0), d.pop("unit_price", 0)
    breakdown = d.get("price_breakdown")
    amount = (sum(p["qty"] * p["unit_price"] for p in breakdown) if breakdown
              else unit_price * qty)
    order = {"order_id": order_id, "event_id": where[0] if where else "",
             "sku": where[1] if where else "", "user_id": d.pop("user_id", ""),
             "qty": qty, "unit_price": unit_price, "amount": amount}
    order.update(d)  # status, created_ms, pay_by_ms (and price_breakdown, later states' fields)
    return order


def stream_orders(fields) -> tuple[str, int, list[tuple[str, str, int, int]]]:
    """``(type, ts, [(order id, user, qty, unit_price), ...])`` of a stream entry's fields
    (a flat list of names and values, or a dict; bytes or str)."""
    if isinstance(fields, dict):
        fields = [x for kv in fields.items() for x in kv]
    it = iter(x.decode() if isinstance(x, bytes) else x for x in fields)
    pairs = list(zip(it, it, strict=True))
    if any(name == "order_id" for name, _ in pairs):
        # an entry of the earlier layout: one order, each figure a field of its own
        f = dict(pairs)
        return (f.get("type", ""), int(f.get("ts", 0)),
                [(f["order_id"], f["user"], int(f["qty"]), int(f.get("unit_price", 0)))])
    kind, ts, found = "", 0, []
    for name, value in pairs:
        if name == "type":
            kind = value
        elif name == "ts":
            ts = int(value)
        else:
            user, qty, price = value.split("|")
            found.append((name, user, int(qty), int(price)))
    return kind, ts, found
