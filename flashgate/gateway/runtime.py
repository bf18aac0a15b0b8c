"""Events and SKUs as one worker runs them: their definitions, their place in the
ledger, the purchase path's fields (``_buy.EventCore`` / ``SkuCore``), their keys.

``Runtimes.apply(events)`` turns the definitions Redis holds into runtimes. A SKU
keeps its ledger index (and its parked requests, and its event's counters) across
changes of its definition; the SKUs of a removed event stay in the ledger
(indexes are stable) but unreachable.
"""

from __future__ import annotations

from flashgate.core import keys
from flashgate.core._stock import Ledger
from flashgate.core.events import Event, Sku
from flashgate.gateway._buy import EventCore, SkuCore
from flashgate.gateway._commit import pack_bulks


class SkuRuntime(SkuCore):
    __slots__ = ("event_id", "keys", "commit_keys", "returned")

    def __init__(self, idx: int, sku: Sku, event_id: str, ert: EventRuntime, boot: str):
        self.idx = idx
        self.event_id = event_id
        self.keys = keys.SkuKeys(event_id, sku.id)
        self.returned = -1  # units given back, as last read (refresher.py); -1: not yet
        self.commit_keys = pack_bulks(self.keys.commit())  # the commit's fixed KEYS, packed
        # order ids: "<event>.<sku>.<worker boot id><sequence in hex>", as bytes
        self.oid_prefix = f"{event_id}.{sku.id}.{boot}".encode()
        self.idem_prefix = self.keys.idem("", "")[:-1]  # + "<user>:<key>"
        # a committed order's JSON, as orjson writes it, with the ids that need no
        # escaping (checked where they enter) formatted in: order id, user, then figures
        self.order_json = (
            b'{"order_id":"%s","event_id":"' + event_id.encode() + b'","sku":"'
            + sku.id.encode() + b'","user_id":"%s","qty":%d,"unit_price":%d,"amount":%d,'
            b'"status":"reserved","created_ms":%d,"pay_by_ms":%d,"updated_ms":%d}'
        )
        self.define(sku, ert)

    def define(self, sku: Sku, ert: EventRuntime) -> None:
        self.sku = sku
        self.limit = sku.per_user_limit
        self.ert = ert


class EventRuntime(EventCore):
    __slots__ = ("skus", "reached")

    def __init__(self, event: Event):
        self.event = event
        self.skus: list[SkuRuntime] = []
        # its reached milestones, as the refresher last read them: threshold ->
        # (reached_ms, order id) (store.parse_milestones)
        self.reached: dict[int, tuple[int, str]] = {}


class Runtimes:
    """Every event this worker knows, and every SKU by ledger index."""

    def __init__(self, ledger: Ledger, boot: str):
        self.ledger = ledger
        self.boot = boot
        self.events: dict[str, EventRuntime] = {}
        self.skus: list[SkuRuntime] = []  # by ledger index
        # every event ever known: one defined again finds its counters where they were
        self.known: dict[str, EventRuntime] = {}

    def apply(self, events: list[Event]) -> list[SkuRuntime]:
        """Make ``events`` the current definitions; returns the SKUs new to the ledger.
        The ledger keeps each SKU's stock and sold as Redis last reported them: the
        caller reads them again."""
        known = {(srt.event_id, srt.sku.id): srt for srt in self.skus}
        new: dict[str, EventRuntime] = {}
        added = []
        for ev in events:
            ert = self.known.get(ev.id)
            if ert is None:
                ert = self.known[ev.id] = EventRuntime(ev)
            ert.event = ev
            ert.skus = []
            by_id = {}
            for s in ev.skus:
                srt = known.get((ev.id, s.id))
                if srt is None:
                    idx = self.ledger.add_sku(s.stock, 0, s.per_user_limit, ev.starts_at_ms,
                                              ev.ends_at_ms, ev.paused)
                    srt = SkuRuntime(idx, s, ev.id, ert, self.boot)
                    self.skus.append(srt)
                    added.append(srt)
                else:
                    stock, _, _, _ = self.ledger.state(srt.idx)
                    self.ledger.configure(srt.idx, stock, s.per_user_limit, ev.starts_at_ms,
                                          ev.ends_at_ms, ev.paused)
                    srt.define(s, ert)
                ert.skus.append(srt)
                by_id[s.id] = srt
            ert.by_id = by_id
            new[ev.id] = ert
        self.events = new
        return added

    def all_skus(self) -> list[SkuRuntime]:
        """The SKUs of the current events."""
        return [srt for ert in self.events.values() for srt in ert.skus]


def state_of(ert: EventRuntime, ledger: Ledger, now_ms: int) -> str:
    """The event's state (API.md): scheduled, preheat, live, paused, sold_out, ended."""
    ev = ert.event
    if now_ms >= ev.ends_at_ms:
        return "ended"
    if now_ms < ev.starts_at_ms:
        if ev.preheat_at_ms is not None and now_ms >= ev.preheat_at_ms:
            return "preheat"
        return "scheduled"
    if ev.paused:
        return "paused"
    if all(ledger.left(s.idx) == 0 for s in ert.skus):
        return "sold_out"
    return "live"
