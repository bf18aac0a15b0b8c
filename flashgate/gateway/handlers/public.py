"""What anyone may read: an event's public view, served from memory."""

from __future__ import annotations

import orjson

from flashgate.core import store
from flashgate.gateway import answers
from flashgate.gateway.protocol import build_response
from flashgate.gateway.runtime import EventRuntime, state_of


def price_now(sku, sold: int) -> int:
    """The price of the next unit of ``sku`` after ``sold`` (its tier, else ``price``)."""
    for units, price in sku.tiers:
        if sold < units:
            return price
        sold -= units
    return sku.price


class Public:
    def __init__(self, gw):
        self.gw = gw

    def event_view(self, req, m, who) -> bytes:
        ert: EventRuntime | None = m.ert
        if ert is None:
            return answers.NOT_FOUND
        self.viewed(ert, req)
        return build_response(200, orjson.dumps(self.view(ert)))

    def stream(self, req, m, who):
        """The event's live updates (Server-Sent Events): gateway/broadcast.py."""
        ert: EventRuntime | None = m.ert
        if ert is None:
            return answers.NOT_FOUND
        answer = self.gw.broadcast.subscribe(ert, req)
        # a stream opened (not the cap's 503) is a page view, unless its page says it is
        # not one (?view=0: the operator's dashboard)
        if type(answer) is not bytes and req.query != b"view=0":
            self.viewed(ert, req)
        return answer

    def viewed(self, ert: EventRuntime, req) -> None:
        """A page view of the event (docs/API.md, "The figures"): PV and its visitor."""
        ert.pv += 1
        ert.visitors.add(self.gw.path.visitor_of(req))

    def view(self, ert: EventRuntime) -> dict:
        """The public view of an event (API.md), as of this worker's ledger."""
        gw = self.gw
        ev = ert.event
        now = gw.path.now_ms()
        skus = []
        for srt in ert.skus:
            s = srt.sku
            stock, sold, _, _ = gw.ledger.state(srt.idx)
            skus.append({"id": s.id, "name": s.name, "price": s.price,
                         "original_price": s.original_price, "stock": stock,
                         "left": max(0, stock - sold), "sold": sold,
                         "per_user_limit": s.per_user_limit,
                         "tiers": [{"units": u, "price": p} for u, p in s.tiers],
                         "price_now": price_now(s, sold)})
        return {
            "id": ev.id, "name": ev.name, "state": state_of(ert, gw.ledger, now),
            "server_time_ms": now, "starts_at_ms": ev.starts_at_ms, "ends_at_ms": ev.ends_at_ms,
            "preheat_at_ms": ev.preheat_at_ms,
            "registration_required": ev.registration_required, "skus": skus,
            # reached as the refresher last read them (once reached, they stay reached)
            "milestones": store.milestones_view(ev, ert.reached),
        }
