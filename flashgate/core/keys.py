"""Every Redis key flashgate uses, spelled here and nowhere else.

A SKU's keys share one hash tag, ``{<event>:<sku>}``, so every script runs on one
Redis Cluster slot; the event-wide keys carry the event's own tag or none.

    fg:{<event>:<sku>}:meta        hash: window, pause flag, limit, prices, ids,
                                   the event's milestone thresholds (ms)
    fg:{<event>:<sku>}:stock       units in total (configured, plus units added)
    fg:{<event>:<sku>}:sold        units held by live orders
    fg:{<event>:<sku>}:buyers      hash user -> units held
    fg:{<event>:<sku>}:orders      stream of order events (type=created, ...)
    fg:{<event>:<sku>}:orders_n    orders created
    fg:{<event>:<sku>}:order_by_id hash order id -> the order's record (core/orders.py);
                                   also the order ids' guard against a re-sent batch
    fg:{<event>:<sku>}:idem:<user>:<key>  "<order id>|<fingerprint>", 24 h
    fg:{<event>:<sku>}:reg         set of pre-registered users
    fg:{<event>:<sku>}:revenue     sum of the amounts of orders created
    fg:{<event>:<sku>}:sold_out_ms Redis TIME when sold first reached stock
    fg:{<event>:<sku>}:added       units added by the operator (stock = configured + added)
    fg:{<event>:<sku>}:returned    units given back by cancelled and expired orders, ever
    fg:{<event>:<sku>}:units_paid  units of paid orders
    fg:{<event>:<sku>}:revenue_paid  sum of the amounts of paid orders
    fg:{<event>}:idem:<user>:<key> the request fingerprint that first used the key, 24 h
    fg:{<event>}:units             units held by live orders over all the event's SKUs
    fg:{<event>}:milestones        hash threshold -> "<reached_ms>|<order id>" once reached
                                   (no order id: reached when it was defined)
    fg:{<event>}:registered        hash user -> when they registered (ms)
    fg:{<event>}:notified          hash: the notifications of the event already enqueued
                                   ("reminder:<offset>", "milestone:<sold>", "sold_out:<sku>",
                                   "ended") -> how (webhooks/producers.py)
    fg:{hooks}:urls                hash event -> its webhook_url (written with the definition)
    fg:{hooks}:due                 zset delivery id -> when it may be sent (ms)
    fg:{hooks}:lease               zset delivery id -> when its sender's lease ends (ms)
    fg:{hooks}:body                hash delivery id -> the JSON body POSTed
    fg:{hooks}:meta                hash delivery id -> "<attempts>|<enqueued ms>|<event>|<error>"
    fg:{hooks}:seen                zset delivery id -> when it was enqueued (ms): an id is
                                   enqueued once (kept 7 days)
    fg:{hooks}:dead                hash delivery id -> JSON of a delivery given up on
    fg:event:<event>               the definition (JSON; its "paused" is not read back)
    fg:paused:<event>              "1" while the operator has paused the event
    fg:events                      set of event ids
    fg:events:version              bumped on every change of any definition
    fg:stats:<event>               hash of counters summed over workers and instances
    fg:{<event>}:hll:<name>        HyperLogLog of the event's visitors, participants or
                                   buyers (docs/API.md, "The figures")
    fg:{<event>}:hll:<name>:<worker>  a worker's registers on their way into it (PFMERGE)
    fg:{<event>}:series:<minute>   hash "<second of the minute>:<figure>" -> n: the
                                   per-second series of one minute (unix minute), kept
                                   until the event's end plus SERIES_RETENTION_S
    fg:layout                      the version of the order layout the data is in

Order ids are ``<event>.<sku>.<unique>``: the id names its SKU's keys.
"""

from __future__ import annotations

EVENTS = "fg:events"
VERSION = "fg:events:version"
LAYOUT = "fg:layout"

IDEM_TTL_S = 86400  # how long an Idempotency-Key is kept (API.md: 24 h)
# The commit script's fixed KEYS, in order (lua/commit.lua): names of SkuKeys' fields;
# each reservation with an Idempotency-Key adds its key after them. The last two are
# the event's (another hash slot than the SKU's: docs/DESIGN.md, "Milestones").
COMMIT_KEYS = ("meta", "stock", "sold", "buyers", "orders", "orders_n", "order_by_id", "reg",
               "revenue", "sold_out_ms", "event_units", "milestones")


def sku_prefix(event_id: str, sku_id: str) -> str:
    """The start every key of one SKU shares (its hash tag included)."""
    return "fg:{" + event_id + ":" + sku_id + "}:"


class SkuKeys:
    """The keys of one SKU."""

    __slots__ = ("prefix", "meta", "stock", "sold", "buyers", "orders", "orders_n",
                 "order_by_id", "reg", "revenue", "sold_out_ms", "added", "returned",
                 "units_paid", "revenue_paid", "event_units", "milestones")

    def __init__(self, event_id: str, sku_id: str):
        p = self.prefix = sku_prefix(event_id, sku_id)
        self.meta = p + "meta"
        self.stock = p + "stock"
        self.sold = p + "sold"
        self.buyers = p + "buyers"
        self.orders = p + "orders"
        self.orders_n = p + "orders_n"
        self.order_by_id = p + "order_by_id"
        self.reg = p + "reg"
        self.revenue = p + "revenue"
        self.sold_out_ms = p + "sold_out_ms"
        self.added = p + "added"
        self.returned = p + "returned"
        self.units_paid = p + "units_paid"
        self.revenue_paid = p + "revenue_paid"
        # the event's keys the commit script writes too (not of this SKU's hash tag)
        self.event_units = event_units(event_id)
        self.milestones = milestones(event_id)

    def idem(self, user: str, key: str) -> str:
        """The order an Idempotency-Key made on this SKU."""
        return self.prefix + "idem:" + user + ":" + key

    def commit(self) -> list[str]:
        """The fixed KEYS of the commit script, in its order (``COMMIT_KEYS``)."""
        return [getattr(self, name) for name in COMMIT_KEYS]

    def configure(self) -> list[str]:
        """The KEYS of the configure script (lua/configure_sku.lua)."""
        return [self.meta, self.stock, self.sold, self.added]

    def add_stock(self) -> list[str]:
        """The KEYS of the stock addition (lua/add_stock.lua)."""
        return [self.meta, self.stock, self.sold, self.added]

    def transition(self, event_id: str) -> list[str]:
        """The KEYS of the orders' transitions (lua/transition.lua): the SKU's, then
        the event's units (``event_units``)."""
        return [self.meta, self.sold, self.buyers, self.orders, self.order_by_id,
                self.revenue, self.returned, self.units_paid, self.revenue_paid,
                event_units(event_id)]


def event(event_id: str) -> str:
    return "fg:event:" + event_id


def paused(event_id: str) -> str:
    return "fg:paused:" + event_id


def stats(event_id: str) -> str:
    return "fg:stats:" + event_id


HLLS = ("visitors", "participants", "buyers")  # the event's HyperLogLogs


def stats_hll(event_id: str, name: str) -> str:
    """One of the event's HyperLogLogs (``HLLS``): all in the event's slot, so UV is
    one PFCOUNT of two of them."""
    return "fg:{" + event_id + "}:hll:" + name


def stats_hll_part(event_id: str, name: str, worker: str) -> str:
    """A worker's registers on their way into ``stats_hll`` (SET, PFMERGE, DEL)."""
    return stats_hll(event_id, name) + ":" + worker


SERIES_RETENTION_S = 7 * 86400  # the series outlive the event's end by this long


def series(event_id: str, minute: int) -> str:
    """The per-second figures of one unix minute (``ms // 60000``) of an event."""
    return f"fg:{{{event_id}}}:series:{minute}"


def event_idem(event_id: str, user: str, key: str) -> str:
    """The fingerprint of the request that first used an Idempotency-Key (event-wide:
    the same key with another body, even on another SKU, is refused)."""
    return "fg:{" + event_id + "}:idem:" + user + ":" + key


def event_units(event_id: str) -> str:
    """Units held by live orders over all the event's SKUs (milestones count these)."""
    return "fg:{" + event_id + "}:units"


def milestones(event_id: str) -> str:
    """The event's reached milestones: threshold -> ``<reached_ms>|<order id>``."""
    return "fg:{" + event_id + "}:milestones"


def registered(event_id: str) -> str:
    """The event's registered users: user -> when they registered (ms)."""
    return "fg:{" + event_id + "}:registered"


def notified(event_id: str) -> str:
    """The event's notifications already enqueued: what -> how (webhooks/producers.py)."""
    return "fg:{" + event_id + "}:notified"


# The webhook outbox (webhooks/outbox.py): one hash tag, so its scripts run on one slot.
HOOKS_URLS = "fg:{hooks}:urls"
HOOKS_DUE = "fg:{hooks}:due"
HOOKS_LEASE = "fg:{hooks}:lease"
HOOKS_BODY = "fg:{hooks}:body"
HOOKS_META = "fg:{hooks}:meta"
HOOKS_SEEN = "fg:{hooks}:seen"
HOOKS_DEAD = "fg:{hooks}:dead"


def earlier_order(prefix: str, order_id: str) -> str:
    """An order of the earlier layout (a hash per order), read only to move it into
    its SKU's ``order_by_id`` (store.migrate_layout)."""
    return prefix + "order:" + order_id


EARLIER_ORDER_PATTERN = "fg:{*}:order:*"


def split_order_id(order_id: str) -> tuple[str, str] | None:
    """``(event, sku)`` of an order id, or None if it is not one of ours."""
    parts = order_id.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1]
