"""What flashgate keeps in Redis, and the scripts that change it.

Keys (every SKU's keys share one hash tag so each script touches one slot):

    fg:{<event>:<sku>}:meta        hash: window, pause flag, limit, prices, ids
    fg:{<event>:<sku>}:stock       units in total
    fg:{<event>:<sku>}:sold        units held by live orders
    fg:{<event>:<sku>}:buyers      hash user -> units held
    fg:{<event>:<sku>}:orders      stream of order events (type=created, ...)
    fg:{<event>:<sku>}:orders_n    orders created
    fg:{<event>:<sku>}:order_by_id hash order id -> the order's record (order_record);
                                   also the order ids' guard against a re-sent batch
    fg:{<event>:<sku>}:order:<id>  an order of the earlier layout (hash), still read
    fg:{<event>:<sku>}:idem:<user>:<key>  "order_id|fingerprint", 24 h
    fg:{<event>:<sku>}:reg         set of pre-registered users
    fg:{<event>:<sku>}:revenue     sum of the amounts of orders created
    fg:{<event>:<sku>}:sold_out_ms Redis TIME when sold first reached stock
    fg:{<event>}:idem:<user>:<key> the request fingerprint that first used the key, 24 h
    fg:event:<event>               the definition (JSON; its "paused" is not read back)
    fg:paused:<event>              "1" while the operator has paused the event
    fg:events                      set of event ids
    fg:events:version              bumped on every change of any definition
    fg:stats:<event>               hash of counters summed over workers and instances

Order ids are ``<event>.<sku>.<unique>``: the ids need no index to find their keys.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import hiredis
import orjson

from flashgate.core.events import Event, EventError, check_replace
from flashgate.core.redisconn import RedisConnection, RedisError

EVENTS_KEY = "fg:events"
VERSION_KEY = "fg:events:version"


def sku_prefix(event_id: str, sku_id: str) -> str:
    return "fg:{" + event_id + ":" + sku_id + "}:"


def event_key(event_id: str) -> str:
    return "fg:event:" + event_id


def paused_key(event_id: str) -> str:
    return "fg:paused:" + event_id


def stats_key(event_id: str) -> str:
    return "fg:stats:" + event_id


def split_order_id(order_id: str) -> tuple[str, str] | None:
    """``(event, sku)`` of an order id, or None if it is not one of ours."""
    parts = order_id.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1]


class Script:
    """A Lua script called by SHA, re-sent whole when the server does not know it."""

    def __init__(self, name: str):
        self.source = resources.files("flashgate.core").joinpath("lua", name).read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def args(self, keys, argv) -> list:
        return ["EVALSHA", self.sha, len(keys), *keys, *argv]

    def packed_head(self, keys, argv, whole: bool = False) -> tuple[bytes, int]:
        """The RESP of a call's first arguments (by SHA, or with the whole source),
        without the leading argument count, and how many arguments it holds: the
        start of a call the caller completes (see ``_commit.pack_commit``)."""
        args = ["EVAL", self.source] if whole else ["EVALSHA", self.sha]
        args += [len(keys), *keys, *argv]
        packed = hiredis.pack_command(tuple(args))
        return packed[packed.index(b"\r\n") + 2:], len(args)

    async def run(self, conn: RedisConnection, keys, argv):
        try:
            return await conn.execute(*self.args(keys, argv))
        except RedisError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            return await conn.execute("EVAL", self.source, len(keys), *keys, *argv)


def reservation_args(order_id, user, qty, idem, fp) -> list:
    """One reservation's values in a commit call (see commit.lua's ARGV): order id,
    user, and the qty, or "<qty>|<fingerprint>|<key>" when it has an Idempotency-Key
    (``idem``; "" or None for none). The purchase path packs the same values in C
    (gateway/_commit.pyx ``pack_commit``)."""
    if idem:
        return [order_id, user, f"{qty}|{fp}|{idem}"]
    return [order_id, user, qty]


COMMIT = Script("commit.lua")
CONFIGURE_SKU = Script("configure_sku.lua")
SCRIPTS = (COMMIT, CONFIGURE_SKU)


def commit_keys(prefix: str) -> list[str]:
    return [prefix + "meta", prefix + "stock", prefix + "sold", prefix + "buyers",
            prefix + "orders", prefix + "orders_n", prefix + "order_by_id"]


async def load_scripts(execute) -> None:
    """Make the scripts known to the server (after every connect: a restarted
    Redis has an empty script cache). ``execute`` is a connection's execute."""
    for s in SCRIPTS:
        await execute("SCRIPT", "LOAD", s.source)


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


async def redis_time_ms(conn: RedisConnection) -> int:
    sec, usec = await conn.execute("TIME")
    return int(sec) * 1000 + int(usec) // 1000


async def save_event(conn: RedisConnection, event: Event) -> bool:
    """Create or replace a definition; True if created. Raises EventError
    ("conflict") when the change would break a sale in progress."""
    old_raw = await conn.execute("GET", event_key(event.id))
    old = Event.from_dict(orjson.loads(old_raw)) if old_raw else None
    now = await redis_time_ms(conn)
    if old is not None:
        sold = await read_sold(conn, old)
        check_replace(old, event, sold, now)
    # the pause flag is the operator's: a definition never writes it (a new SKU
    # of a paused event starts paused)
    event.paused = await conn.execute("GET", paused_key(event.id)) == b"1"
    for s in event.skus:
        p = sku_prefix(event.id, s.id)
        meta = [
            "event", event.id, "sku", s.id,
            "starts", event.starts_at_ms, "ends", event.ends_at_ms,
            "limit", s.per_user_limit,
            "price", s.price, "tiers", s.tiers_arg(),
            "pay_ms", event.payment_timeout_s * 1000,
            "reg", int(event.registration_required),
        ]
        status, sold_now = await CONFIGURE_SKU.run(
            conn, [p + "meta", p + "stock", p + "sold"], [s.stock, int(event.paused), *meta]
        )
        if status == b"conflict":
            raise EventError(
                "conflict", f"sku {s.id!r}: stock {s.stock} is below the {sold_now} units sold"
            )
    await conn.pipeline([
        ["SET", event_key(event.id), orjson.dumps(event.to_dict())],
        ["SADD", EVENTS_KEY, event.id],
        ["INCR", VERSION_KEY],
    ])
    return old is None


async def set_paused(conn: RedisConnection, event: Event, paused: bool) -> None:
    """The kill switch: every SKU's meta (read by the commit script) and the event's
    flag (read by workers on reload); ``event.paused`` changes once Redis has it."""
    raw = await conn.execute("GET", event_key(event.id))
    current = Event.from_dict(orjson.loads(raw)) if raw else event  # SKUs added meanwhile
    cmds = [["HSET", sku_prefix(event.id, s.id) + "meta", "paused", int(paused)]
            for s in current.skus]
    cmds.append(["SET", paused_key(event.id), int(paused)])
    cmds.append(["INCR", VERSION_KEY])
    for r in await conn.pipeline(cmds):
        if isinstance(r, Exception):
            raise r
    event.paused = paused


async def read_sold(conn: RedisConnection, event: Event) -> dict[str, int]:
    replies = await conn.pipeline([["GET", sku_prefix(event.id, s.id) + "sold"] for s in event.skus])
    return {s.id: int(r or 0) for s, r in zip(event.skus, replies, strict=True)}


async def load_events(conn: RedisConnection) -> tuple[int, list[Event]]:
    """``(version, events)``: every stored definition."""
    version, ids = await conn.pipeline([["GET", VERSION_KEY], ["SMEMBERS", EVENTS_KEY]])
    events = []
    if ids:
        cmds = []
        for i in sorted(ids):
            cmds += [["GET", event_key(i.decode())], ["GET", paused_key(i.decode())]]
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
    cmds = [["SADD", sku_prefix(event.id, s.id) + "reg", user] for s in event.skus]
    for r in await conn.pipeline(cmds):
        if isinstance(r, Exception):
            raise r


_ORDER_INT_FIELDS = ("qty", "unit_price", "created_ms", "pay_by_ms")
# the fields of an order's record, in order (commit.lua writes them)
RECORD_FIELDS = ("status", "user_id", "qty", "unit_price", "created_ms", "pay_by_ms")


def order_record(status: str, user_id: str, qty: int, unit_price: int, created_ms: int,
                 pay_by_ms: int, **later: str | int) -> str:
    """An order as the SKU's ``order_by_id`` hash holds it:
    ``<status>|<user_id>|<qty>|<unit_price>|<created_ms>|<pay_by_ms>``, then any field a
    later state adds as ``|<name>=<value>``. No part holds a ``|``: user ids are
    ``[A-Za-z0-9_-]``, the rest are numbers and status names."""
    parts = [status, user_id, str(qty), str(unit_price), str(created_ms), str(pay_by_ms)]
    parts += [f"{k}={v}" for k, v in later.items()]
    return "|".join(parts)


def order_from_record(order_id: str, raw: bytes | None) -> dict | None:
    """The API's order object from its record (``order_record``), or None for none
    (or for a record that is not one)."""
    if not raw:
        return None
    parts = raw.decode().split("|")
    if len(parts) < len(RECORD_FIELDS):
        return None
    d: dict = dict(zip(RECORD_FIELDS, parts, strict=False))
    for extra in parts[len(RECORD_FIELDS):]:
        name, _, value = extra.partition("=")
        d[name] = int(value) if value.isdigit() else value
    try:
        for f in _ORDER_INT_FIELDS:
            d[f] = int(d[f])
    except ValueError:
        return None
    return _api_order(order_id, d)


def order_from_hash(order_id: str, flat) -> dict | None:
    """The API's order object from an order hash of the earlier layout (a key per
    order, ``…:order:<id>``; HGETALL reply): the hash holds user_id, qty, unit_price,
    status, created_ms and pay_by_ms; the id names the event and the sku, and amount
    is unit_price * qty."""
    if not flat:
        return None
    it = iter(flat)
    d = {k.decode(): v.decode() for k, v in zip(it, it, strict=True)}
    for f in _ORDER_INT_FIELDS:
        if f in d:
            d[f] = int(d[f])
    for derived in ("order_id", "event_id", "sku", "amount"):
        d.pop(derived, None)  # (hashes written before the key said them hold them too)
    return _api_order(order_id, d)


def _api_order(order_id: str, d: dict) -> dict:
    """The API's order object from the stored fields ``d`` (emptied): the id names the
    event and the SKU, amount is unit_price * qty, the rest is as stored."""
    where = split_order_id(order_id)
    qty, unit_price = d.pop("qty", 0), d.pop("unit_price", 0)
    order = {"order_id": order_id, "event_id": where[0] if where else "",
             "sku": where[1] if where else "", "user_id": d.pop("user_id", ""),
             "qty": qty, "unit_price": unit_price, "amount": unit_price * qty}
    order.update(d)  # status, created_ms, pay_by_ms (and whatever later states add)
    return order


async def get_order(conn: RedisConnection, order_id: str) -> dict | None:
    where = split_order_id(order_id)
    if where is None:
        return None
    p = sku_prefix(*where)
    order = order_from_record(order_id, await conn.execute("HGET", p + "order_by_id", order_id))
    if order is None:  # an order of the earlier layout?
        order = order_from_hash(order_id, await conn.execute("HGETALL", p + "order:" + order_id))
    return order


async def export_orders(conn: RedisConnection, event: Event) -> list[dict]:
    """Every order of the event, in commit order per SKU, read from the streams."""
    out: list[dict] = []
    for s in event.skus:
        p = sku_prefix(event.id, s.id)
        start = "-"
        ids: list[str] = []
        while True:
            entries = await conn.execute("XRANGE", p + "orders", start, "+", "COUNT", 1000)
            for _entry_id, fields in entries:
                it = iter(fields)
                f = dict(zip(it, it, strict=True))
                if f.get(b"type") == b"created":
                    ids.append(f[b"order_id"].decode())
            if len(entries) < 1000:
                break
            start = "(" + entries[-1][0].decode()
        for i in range(0, len(ids), 1000):
            chunk = ids[i:i + 1000]
            records = await conn.execute("HMGET", p + "order_by_id", *chunk)
            orders = [order_from_record(o, raw) for o, raw in zip(chunk, records, strict=True)]
            earlier = [o for o, order in zip(chunk, orders, strict=True) if order is None]
            if earlier:  # orders of the earlier layout (a hash per order)
                hashes = await conn.pipeline([["HGETALL", p + "order:" + o] for o in earlier])
                found = {o: order_from_hash(o, h) for o, h in zip(earlier, hashes, strict=True)}
                orders = [order or found[o] for o, order in zip(chunk, orders, strict=True)]
            out.extend(order for order in orders if order is not None)
    return out


async def sku_totals(conn: RedisConnection, event: Event) -> list[dict]:
    cmds = []
    for s in event.skus:
        p = sku_prefix(event.id, s.id)
        cmds.append(["MGET", p + "stock", p + "sold", p + "orders_n", p + "revenue"])
    out = []
    for s, (stock, sold, n, rev) in zip(event.skus, await conn.pipeline(cmds), strict=True):
        out.append({"id": s.id, "stock": int(stock or 0), "sold": int(sold or 0),
                    "orders": int(n or 0), "revenue": int(rev or 0)})
    return out

