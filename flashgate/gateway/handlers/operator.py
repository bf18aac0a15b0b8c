"""The operator's API: event definitions, the kill switch, the orders and registrations.

A change of a definition (PUT, pause, resume) is answered only once every worker of
this instance serves it (``Gateway.changed``: the other workers are told through the
instance's peer channel and answer when they have reloaded); other instances see it
on their next refresh tick.
"""

from __future__ import annotations

import logging

import orjson

from flashgate.core import store
from flashgate.core.events import EventError, parse_event
from flashgate.core.redisconn import RedisError, RedisUnavailable
from flashgate.gateway import answers
from flashgate.gateway.protocol import build_response, error_response
from flashgate.gateway.runtime import state_of
from flashgate.logs import happening

log = logging.getLogger("flashgate.operator")


class Operator:
    def __init__(self, gw):
        self.gw = gw

    async def put_event(self, req, m, who) -> bytes:
        event_id = m.params["event_id"]
        try:
            data = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return answers.BAD_JSON
        gw = self.gw
        try:
            event = parse_event(event_id, data)
            created = await store.save_event(gw.conn, event)
        except EventError as e:
            return error_response(409 if e.code == "conflict" else 400, e.code, e.message)
        except (RedisUnavailable, RedisError) as e:
            log.warning("cannot save event %s: %s", event_id, e)
            return answers.UNAVAILABLE
        happening(log, "event_created" if created else "event_changed",
                  f"event {event_id} {'created' if created else 'changed'} by the operator",
                  event_id=event_id, source="api", skus=[s.id for s in event.skus],
                  starts_at_ms=event.starts_at_ms, ends_at_ms=event.ends_at_ms)
        if event.webhook_url and not gw.cfg.webhook_secret:
            log.warning("event %s has a webhook_url, but this instance has no webhook secret: "
                        "its notifications wait for an instance that has one", event_id)
        if not await gw.changed():
            return answers.UNAVAILABLE
        return build_response(201 if created else 200, orjson.dumps(event.to_dict()))

    def get_event(self, req, m, who) -> bytes:
        if m.ert is None:
            return answers.NOT_FOUND
        return build_response(200, orjson.dumps(m.ert.event.to_dict()))

    def pause(self, req, m, who):
        return self._pause(m, True)

    def resume(self, req, m, who):
        return self._pause(m, False)

    async def _pause(self, m, paused: bool) -> bytes:
        ert = m.ert
        if ert is None:
            return answers.NOT_FOUND
        gw = self.gw
        try:
            await store.set_paused(gw.conn, ert.event, paused)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        happening(log, "paused" if paused else "resumed",
                  f"event {ert.event.id} {'paused' if paused else 'resumed'} by the operator",
                  event_id=ert.event.id)
        for srt in ert.skus:
            gw.ledger.set_paused(srt.idx, paused)
        if not await gw.changed():
            return answers.UNAVAILABLE
        ert = gw.runtimes.events.get(ert.event.id, ert)
        return build_response(200, orjson.dumps({
            "id": ert.event.id, "paused": paused,
            "state": state_of(ert, gw.ledger, gw.path.now_ms())}))

    def list_events(self, req, m, who) -> bytes:
        """Every event this worker serves (as the public view sees them), by start."""
        gw = self.gw
        now = gw.path.now_ms()
        erts = sorted(gw.runtimes.events.values(),
                      key=lambda e: (e.event.starts_at_ms, e.event.id))
        return build_response(200, orjson.dumps({"events": [
            {"id": e.event.id, "name": e.event.name, "state": state_of(e, gw.ledger, now),
             "starts_at_ms": e.event.starts_at_ms, "ends_at_ms": e.event.ends_at_ms}
            for e in erts]}))

    async def registrations(self, req, m, who) -> bytes:
        """The registered users, one JSON line each, in the order they registered."""
        if m.ert is None:
            return answers.NOT_FOUND
        seen: dict[str, int] = {}
        try:
            async for page in store.registrations(self.gw.conn, m.ert.event.id):
                seen.update(page)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        body = b"".join(orjson.dumps({"user_id": u, "registered_ms": ms}) + b"\n"
                        for u, ms in sorted(seen.items(), key=lambda x: (x[1], x[0])))
        return build_response(200, body, content_type=b"application/x-ndjson")

    async def orders(self, req, m, who) -> bytes:
        if m.ert is None:
            return answers.NOT_FOUND
        try:
            orders = await store.export_orders(self.gw.conn, m.ert.event)
            reached = await store.read_milestones(self.gw.conn, m.ert.event)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        store.add_rewards(orders, m.ert.event, reached)
        body = b"".join(orjson.dumps(o) + b"\n" for o in orders)
        return build_response(200, body, content_type=b"application/x-ndjson")
