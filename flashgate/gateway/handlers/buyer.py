"""What a buyer may do besides buying (the purchase is the C path's: _buy.pyx):
register for a sale, read their orders."""

from __future__ import annotations

import orjson

from flashgate.core import store
from flashgate.core.outcomes import ENDED
from flashgate.core.redisconn import RedisError, RedisUnavailable
from flashgate.gateway import answers
from flashgate.gateway._buy import rate_limited
from flashgate.gateway.protocol import build_response
from flashgate.gateway.routes import OPERATOR

_REGISTERED = build_response(200, b'{"registered":true}')


class Buyer:
    def __init__(self, gw):
        self.gw = gw

    def register(self, req, m, user: str):
        """Pre-registration ("remind me"): open from preheat_at_ms (or creation) until
        the end; rate-limited per client IP."""
        ert = m.ert
        if ert is None:
            return answers.NOT_FOUND
        path = self.gw.path
        wait = path.limit_ip(req)
        if wait:
            return rate_limited(wait)
        ev = ert.event
        now = path.now_ms()
        if now >= ev.ends_at_ms:
            return answers.BY_CODE[ENDED]
        if ev.preheat_at_ms is not None and now < ev.preheat_at_ms:
            return answers.REGISTRATION_NOT_OPEN
        return self._register(ev, user)

    async def _register(self, ev, user: str) -> bytes:
        try:
            await store.register(self.gw.conn, ev, user)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        return _REGISTERED

    def get_order(self, req, m, who):
        """An order: its buyer's, or anyone's for the operator; 404 for anyone else.
        A buyer's look-ups count against their client IP's and their own rate limits."""
        if who != OPERATOR:
            path = self.gw.path
            wait = path.limit_ip(req) or path.limit_user(who)
            if wait:
                return rate_limited(wait)
        return self._get_order(m.params["order_id"], who)

    async def _get_order(self, order_id: str, who) -> bytes:
        try:
            order = await store.get_order(self.gw.conn, order_id)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        if order is None or (who != OPERATOR and order.get("user_id") != who):
            return answers.NOT_FOUND
        return build_response(200, orjson.dumps(order))
