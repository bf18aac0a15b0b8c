"""The order lifecycle after the sale's 200, for the operator: payment confirmed,
cancel, and units added to a SKU's stock. (Unpaid orders past their deadline are
expired by the sweeper: gateway/sweeper.py.)

Redis decides every transition in one script (lua/transition.lua, by its own clock):
an order past its ``pay_by_ms`` expires whatever was asked, so a payment and the
expiry cannot both win; the loser is 409 ``conflict``. Units go back to the sale only
while it is open; a returned unit is served by this worker at once, by the other
workers on their next refresh tick (they then drop their local buyer tables: see
refresher.py).
"""

from __future__ import annotations

import logging

import orjson

from flashgate.core import store
from flashgate.core.events import MAX_STOCK
from flashgate.core.redisconn import RedisError, RedisUnavailable
from flashgate.gateway import answers
from flashgate.gateway.protocol import build_response, error_response
from flashgate.logs import happening

log = logging.getLogger("flashgate.lifecycle")

_BAD_BODY = error_response(400, "bad_request", "the body, if any, must be a JSON object")
_BAD_ADD = error_response(400, "bad_request", f"add must be an integer from 1 to {MAX_STOCK}")
_ENDED = error_response(409, "ended", "the sale has ended: no stock can be added")
_CONFLICT = {
    "paid": "the order was {status}: it cannot be paid",
    "cancel": "the order was {status}: it cannot be cancelled",
}


def _json_object(body: bytes) -> dict | None:
    """The request's JSON object (an empty body: ``{}``), or None if it is not one."""
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class Lifecycle:
    def __init__(self, gw):
        self.gw = gw

    def mark_paid(self, req, m, who):
        return self._transition(req, m.params["order_id"], "paid")

    def cancel(self, req, m, who):
        return self._transition(req, m.params["order_id"], "cancel")

    def _transition(self, req, order_id: str, action: str):
        if _json_object(req.body) is None:
            return _BAD_BODY
        return self._run(order_id, action)

    async def _run(self, order_id: str, action: str) -> bytes:
        gw = self.gw
        try:
            outcome, order = await store.transition_order(gw.conn, action, order_id)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        if order is None:
            return answers.NOT_FOUND
        if outcome == "conflict":
            await self._learn(order)
            return error_response(409, "conflict",
                                  _CONFLICT[action].format(status=order["status"]))
        if outcome == "done":
            await self._learn(order)
        return build_response(200, orjson.dumps(order))

    async def _learn(self, order: dict) -> None:
        """Units may have come back: this worker reads its SKU's counts again now (in
        wire order with its commits, like a refresh)."""
        ert = self.gw.runtimes.events.get(order["event_id"])
        srt = ert.by_id.get(order["sku"]) if ert is not None else None
        if srt is not None:
            try:
                await self.gw.refresher.read_counts([srt])
            except (RedisUnavailable, RedisError):
                pass  # the next refresh tick

    def add_stock(self, req, m, who):
        ert = m.ert
        srt = ert.by_id.get(m.params["sku"]) if ert is not None else None
        if srt is None:
            return answers.NOT_FOUND
        data = _json_object(req.body)
        if data is None:
            return answers.BAD_JSON
        add = data.get("add")
        if type(add) is not int or not 1 <= add <= MAX_STOCK:
            return _BAD_ADD
        return self._add_stock(srt, add)

    async def _add_stock(self, srt, add: int) -> bytes:
        gw = self.gw
        try:
            status, stock, sold, added = await store.add_stock(gw.conn, srt.event_id,
                                                               srt.sku.id, add)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        if status == "not_found":
            return answers.NOT_FOUND
        if status == "ended":
            return _ENDED
        if status == "too_much":
            return error_response(400, "bad_request",
                                  f"stock {stock} + {add} would exceed {MAX_STOCK}")
        happening(log, "stock_added",
                  f"{srt.event_id}/{srt.sku.id}: {added} units added, stock {stock}",
                  event_id=srt.event_id, sku=srt.sku.id, added=added, stock=stock, sold=sold)
        # every worker of this instance serves the new stock before the 200; one that
        # does not confirm reads the stock on its next refresh tick anyway, and the
        # units are added: the answer is 200 then too (a 503 would invite a second add)
        await gw.changed()
        return build_response(200, orjson.dumps({
            "event_id": srt.event_id, "sku": srt.sku.id, "stock": stock, "sold": sold,
            "left": max(0, stock - sold), "added": added}))
