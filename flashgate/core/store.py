"""The Redis operations of everything but the purchase path's commit (which the
gateway's committer packs itself): event definitions, registration, orders, totals.

Key names are core/keys.py's, scripts core/scripts.py's, the order record
core/orders.py's.
"""

from __future__ import annotations

import orjson

from flashgate.core import keys, orders, scripts
from flashgate.core.events import MAX_STOCK, Event, EventError, check_replace
from flashgate.core.redisconn import RedisConnection, RedisError

# The order layout this build writes: 2 = every order of a SKU is one field of its
# ``order_by_id`` hash (1 was a hash per order; ``migrate_layout`` moves those).
LAYOUT = 2


def evicting_policy(info: bytes | str) -> str | None:
    """The ``maxmemory-policy`` of an ``INFO memory`` reply when the server may evict
    keys (a ``maxmemory`` is set and the policy is not ``noeviction``), else None.
    Evicting any of flashgate's keys can lose orders: the SKU's hash of orders is every
    order's record and its guard against a re-sent batch, the buyers hash holds the
    limits, an Idempotency-Key's key its replay."""
    text = info.decode() if isinstance(info, bytes) else info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    maxmemory = fields.get("maxmemory", "0").strip()
    policy = fields.get("maxmemory_policy", "noeviction").strip()
    return policy if maxmemory not in ("", "0") and policy != "noeviction" else None


def replication(info: bytes | str) -> tuple[str, int]:
    """The role (``master``, ``slave``) and the count of connected replicas of an
    ``INFO replication`` reply."""
    text = info.decode() if isinstance(info, bytes) else info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        connected = int(fields.get("connected_slaves", "0").strip())
    except ValueError:
        connected = 0
    return fields.get("role", "").strip(), connected


async def migrate_layout(conn: RedisConnection) -> int:
    """Move orders kept in the earlier layout (a hash per order, ``<SKU prefix>order:<id>``)
    into their SKU's ``order_by_id`` hash, once (``fg:layout`` then says 2); returns how
    many moved. A record already in the hash wins (the commit script wrote it). Only a
    hash whose name is exactly an order's key of its own SKU, and which reads as an
    order, is moved and removed; anything else the pattern finds (an Idempotency-Key
    holding ``}:order:``, a hash that is not an order) is left as it is."""
    if int(await conn.execute("GET", keys.LAYOUT) or 0) >= LAYOUT:
        return 0
    moved = 0
    cursor = b"0"
    while True:
        cursor, found = await conn.execute("SCAN", cursor, "MATCH", keys.EARLIER_ORDER_PATTERN,
                                           "COUNT", 1000)
        for raw in found:
            key = raw.decode()
            prefix, _, order_id = key.rpartition("order:")
            where = keys.split_order_id(order_id)
            if where is None or key != keys.earlier_order(keys.sku_prefix(*where), order_id) \
                    or await conn.execute("TYPE", key) != b"hash":
                continue
            rec = orders.record_of_hash(await conn.execute("HGETALL", key))
            if rec is None:
                continue
            await conn.execute("HSETNX", prefix + "order_by_id", order_id, rec)
            await conn.execute("DEL", key)
            moved += 1
        if cursor in (b"0", 0, "0"):
            break
    await conn.execute("SET", keys.LAYOUT, LAYOUT)
    return moved


async def redis_time_ms(conn: RedisConnection) -> int:
    sec, usec = await conn.execute("TIME")
    return int(sec) * 1000 + int(usec) // 1000


async def save_event(conn: RedisConnection, event: Event) -> bool:
    """Create or replace a definition; True if created. Raises EventError
    ("conflict") when the change would break a sale in progress."""
    old_raw = await conn.execute("GET", keys.event(event.id))
    old = Event.from_dict(orjson.loads(old_raw)) if old_raw else None
    now = await redis_time_ms(conn)
    if old is not None:
        # a SKU's stock is its defined stock plus the units added since (add_stock):
        # the definition's stock need only cover the units sold beyond those
        sold = await read_sold(conn, old)
        added = await conn.pipeline([["GET", keys.SkuKeys(event.id, s.id).added]
                                     for s in old.skus])
        check_replace(old, event, {s.id: sold[s.id] - int(a or 0)
                                   for s, a in zip(old.skus, added, strict=True)}, now)
    # the pause flag is the operator's: a definition never writes it (a new SKU
    # of a paused event starts paused)
    event.paused = await conn.execute("GET", keys.paused(event.id)) == b"1"
    for s in event.skus:
        meta = [
            "event", event.id, "sku", s.id,
            "starts", event.starts_at_ms, "ends", event.ends_at_ms,
            "limit", s.per_user_limit,
            "price", s.price, "tiers", s.tiers_arg(),
            "pay_ms", event.payment_timeout_s * 1000,
            "reg", int(event.registration_required),
            "ms", event.milestones_arg(),
        ]
        status, sold_now = await scripts.CONFIGURE_SKU.run(
            conn, keys.SkuKeys(event.id, s.id).configure(), [s.stock, int(event.paused), *meta]
        )
        if status == b"conflict":
            raise EventError(
                "conflict", f"sku {s.id!r}: stock {s.stock} is below the {sold_now} units sold"
            )
    await record_passed_milestones(conn, event)
    await conn.pipeline([
        ["SET", keys.event(event.id), orjson.dumps(event.to_dict())],
        ["SADD", keys.EVENTS, event.id],
        # where its notifications go: the webhook outbox reads it when it enqueues
        # and when it sends (webhooks/outbox.py)
        ["HSET", keys.HOOKS_URLS, event.id, event.webhook_url] if event.webhook_url
        else ["HDEL", keys.HOOKS_URLS, event.id],
        ["INCR", keys.VERSION],
    ])
    return old is None


async def record_passed_milestones(conn: RedisConnection, event: Event) -> None:
    """A milestone defined when the event's units are already at or past it is reached
    now, by no order (``"<ms>|"``): the commit script records only the thresholds a
    batch crosses. Run after the SKUs' meta has the thresholds, so a sale that crosses
    one meanwhile records it itself (HSETNX: the first record stays)."""
    if not event.milestones:
        return
    units, now = await conn.pipeline([["GET", keys.event_units(event.id)], ["TIME"]])
    units = int(units or 0)
    passed = sorted({n for n, _ in event.milestones if n <= units})
    if passed:
        ms = int(now[0]) * 1000 + int(now[1]) // 1000
        for r in await conn.pipeline([["HSETNX", keys.milestones(event.id), n, f"{ms}|"]
                                      for n in passed]):
            if isinstance(r, Exception):
                raise r


async def count_event_units(conn: RedisConnection) -> int:
    """Give every event that has none its units (the sum of its SKUs' sold), for events
    sold before the commit script counted them; returns how many were set. (The commit
    script adds to the count from then on; run when ``serve`` starts.)"""
    _, events = await load_events(conn)
    n = 0
    for event in events:
        if await conn.execute("EXISTS", keys.event_units(event.id)):
            continue
        units = sum((await read_sold(conn, event)).values())
        n += await conn.execute("SET", keys.event_units(event.id), units, "NX") is not None
        await record_passed_milestones(conn, event)
    return n


def parse_milestones(flat) -> dict[int, tuple[int, str]]:
    """threshold -> ``(reached_ms, order id)`` of an HGETALL of ``keys.milestones`` (a
    flat list or a dict; bytes or str); fields that do not read are left out."""
    if isinstance(flat, dict):
        flat = [x for kv in flat.items() for x in kv]
    it = iter(x.decode() if isinstance(x, bytes) else x for x in flat or ())
    out = {}
    for name, value in zip(it, it, strict=True):
        ms, _, oid = value.partition("|")
        if name.isdigit() and ms.isdigit():
            out[int(name)] = (int(ms), oid)
    return out


def milestones_view(event: Event, reached: dict[int, tuple[int, str]]) -> list[dict]:
    """The event's milestones as the API shows them (event view, stats):
    ``{"sold", "reward", "reached", "reached_ms"}``."""
    out = []
    for n, reward in event.milestones:
        got = reached.get(n)
        out.append({"sold": n, "reward": reward, "reached": got is not None,
                    "reached_ms": got[0] if got else None})
    return out


# an order whose buyer earns the reached milestones' rewards (docs/API.md)
EARNING = ("reserved", "paid")


def add_rewards(found: list[dict], event: Event, reached: dict[int, tuple[int, str]]) -> None:
    """Give each order of ``found`` (every order of the event) ``"rewards"``: the rewards
    of the reached milestones its buyer earned. A buyer earns every reached milestone's
    reward while they hold a live (reserved or paid) order of the event; each line of
    theirs lists them (a shop gives each reward once per buyer)."""
    rewards = [reward for n, reward in event.milestones if n in reached]
    earners = {o["user_id"] for o in found if o.get("status") in EARNING} if rewards else ()
    for o in found:
        o["rewards"] = rewards if o["user_id"] in earners else []


async def read_milestones(conn: RedisConnection, event: Event) -> dict[int, tuple[int, str]]:
    return parse_milestones(await conn.execute("HGETALL", keys.milestones(event.id)))


async def set_paused(conn: RedisConnection, event: Event, paused: bool) -> None:
    """The kill switch: every SKU's meta (read by the commit script) and the event's
    flag (read by workers on reload); ``event.paused`` changes once Redis has it."""
    raw = await conn.execute("GET", keys.event(event.id))
    current = Event.from_dict(orjson.loads(raw)) if raw else event  # SKUs added meanwhile
    cmds = [["HSET", keys.SkuKeys(event.id, s.id).meta, "paused", int(paused)]
            for s in current.skus]
    cmds.append(["SET", keys.paused(event.id), int(paused)])
    cmds.append(["INCR", keys.VERSION])
    for r in await conn.pipeline(cmds):
        if isinstance(r, Exception):
            raise r
    event.paused = paused


async def read_sold(conn: RedisConnection, event: Event) -> dict[str, int]:
    replies = await conn.pipeline([["GET", keys.SkuKeys(event.id, s.id).sold] for s in event.skus])
    return {s.id: int(r or 0) for s, r in zip(event.skus, replies, strict=True)}


async def load_events(conn: RedisConnection) -> tuple[int, list[Event]]:
    """``(version, events)``: every stored definition."""
    version, ids = await conn.pipeline([["GET", keys.VERSION], ["SMEMBERS", keys.EVENTS]])
    events = []
    if ids:
        cmds = []
        for i in sorted(ids):
            cmds += [["GET", keys.event(i.decode())], ["GET", keys.paused(i.decode())]]
        replies = await conn.pipeline(cmds)
        for raw, paused in zip(replies[0::2], replies[1::2], strict=True):
            if isinstance(raw, Exception) or isinstance(paused, Exception):
                raise raw if isinstance(raw, Exception) else paused
            if raw:
                ev = Event.from_dict(orjson.loads(raw))
                ev.paused = paused == b"1"
                events.append(ev)
    return int(version or 0), events


async def register(conn: RedisConnection, event: Event, user: str) -> None:
    """Register ``user``: in every SKU's set (the commit script reads it) and in the
    event's hash of registrations with the Redis TIME of the first time (a repeat
    keeps it; read and written in one script, lua/register.lua)."""
    cmds = [["SADD", keys.SkuKeys(event.id, s.id).reg, user] for s in event.skus]
    cmds.append(scripts.REGISTER.args([keys.registered(event.id)], [user]))
    replies = await conn.pipeline(cmds)
    if isinstance(replies[-1], RedisError) and str(replies[-1]).startswith("NOSCRIPT"):
        replies[-1] = await scripts.REGISTER.run(conn, [keys.registered(event.id)], [user])
    for r in replies:
        if isinstance(r, Exception):
            raise r


async def registrations(conn: RedisConnection, event_id: str, count: int = 1000):
    """The event's registrations, ``[(user, registered_ms)]`` a page at a time (HSCAN:
    a large hash is read without blocking Redis). As with any SCAN, a user may come
    in two pages (the caller de-duplicates); one registered during the scan may be
    missing."""
    cursor = b"0"
    while True:
        cursor, flat = await conn.execute("HSCAN", keys.registered(event_id), cursor,
                                          "COUNT", count)
        it = iter(flat)
        yield [(u.decode(), int(ms)) for u, ms in zip(it, it, strict=True)]
        if cursor in (b"0", 0, "0"):
            return


async def get_order(conn: RedisConnection, order_id: str) -> dict | None:
    where = keys.split_order_id(order_id)
    if where is None:
        return None
    raw = await conn.execute("HGET", keys.SkuKeys(*where).order_by_id, order_id)
    return orders.from_record(order_id, raw)


ACTIONS = ("paid", "cancel", "expire")  # lua/transition.lua
MAX_TRANSITION_IDS = 500  # order ids per script call


async def transition(conn: RedisConnection, event_id: str, sku_id: str, action: str,
                     order_ids: list[str]) -> tuple[int, list[tuple[str, dict | None]]]:
    """Pay, cancel or expire orders of one SKU (``action``: ``ACTIONS``), at most
    ``MAX_TRANSITION_IDS``: ``(sold after, [(outcome, order or None) per id])``, the
    outcomes lua/transition.lua's ('done', 'same', 'conflict', 'not_found', 'not_due')."""
    assert action in ACTIONS and len(order_ids) <= MAX_TRANSITION_IDS
    reply = await scripts.TRANSITION.run(
        conn, keys.SkuKeys(event_id, sku_id).transition(event_id), [action, *order_ids])
    out = []
    for k, oid in enumerate(order_ids):
        outcome, raw = reply[1 + 2 * k], reply[2 + 2 * k]
        out.append((outcome.decode(), orders.from_record(oid, raw)))
    return int(reply[0]), out


async def transition_order(conn: RedisConnection, action: str,
                           order_id: str) -> tuple[str, dict | None]:
    """One order's transition (``transition``): ``(outcome, order or None)``."""
    where = keys.split_order_id(order_id)
    if where is None:
        return "not_found", None
    _, [(outcome, order)] = await transition(conn, *where, action, [order_id])
    return outcome, order


async def add_stock(conn: RedisConnection, event_id: str, sku_id: str,
                    add: int) -> tuple[str, int, int, int]:
    """Add ``add`` units to a SKU's stock before its end: ``(status, stock, sold,
    added)``, status 'ok', 'ended' or 'too_much' (beyond ``MAX_STOCK``; nothing added),
    or 'not_found'. Workers learn it from the definitions' version, bumped here."""
    reply = await scripts.ADD_STOCK.run(conn, keys.SkuKeys(event_id, sku_id).add_stock(),
                                        [add, MAX_STOCK])
    status = reply[0].decode()
    if status == "not_found":
        return status, 0, 0, 0
    if status == "ok":
        await conn.execute("INCR", keys.VERSION)
    return status, int(reply[1]), int(reply[2]), int(reply[3])


async def export_orders(conn: RedisConnection, event: Event) -> list[dict]:
    """Every order of the event, in commit order per SKU, read from the streams."""
    out: list[dict] = []
    for s in event.skus:
        k = keys.SkuKeys(event.id, s.id)
        start = "-"
        ids: list[str] = []
        while True:
            entries = await conn.execute("XRANGE", k.orders, start, "+", "COUNT", 1000)
            for _entry_id, fields in entries:
                kind, _, found = orders.stream_orders(fields)
                if kind == "created":
                    ids += [o[0] for o in found]
            if len(entries) < 1000:
                break
            start = "(" + entries[-1][0].decode()
        for i in range(0, len(ids), 1000):
            chunk = ids[i:i + 1000]
            records = await conn.execute("HMGET", k.order_by_id, *chunk)
            found = (orders.from_record(o, raw) for o, raw in zip(chunk, records, strict=True))
            out.extend(order for order in found if order is not None)
    return out


async def sku_totals(conn: RedisConnection, event: Event) -> list[dict]:
    cmds = []
    for s in event.skus:
        k = keys.SkuKeys(event.id, s.id)
        cmds.append(["MGET", k.stock, k.sold, k.orders_n, k.revenue, k.units_paid,
                     k.revenue_paid, k.returned, k.added])
    out = []
    for s, reply in zip(event.skus, await conn.pipeline(cmds), strict=True):
        stock, sold, n, rev, paid, rev_paid, returned, added = (int(v or 0) for v in reply)
        out.append({"id": s.id, "stock": stock, "sold": sold, "orders": n, "revenue": rev,
                    "units_paid": paid, "revenue_paid": rev_paid, "units_returned": returned,
                    "added": added})
    return out

