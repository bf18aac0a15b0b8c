"""The router: the route table (routes.py) compiled into what a request is matched
against.

* Exact paths: a dict path -> ``_buy.Target``, the first (and for the hot paths the
  only) lookup of every request, done by the C path. It holds the static paths
  (``/readyz``...) and, for every event the worker knows, each path of a route whose
  only parameter is ``{event_id}`` (``/api/v1/events/noon/buy``...): rebuilt when the
  events change (``compile_events``).
* Patterns: one regular expression per route pattern, for the rest (order ids, an
  event not loaded yet, ...).

``dispatch`` serves what the C path does not (it takes ``POST`` to a buy path): a
path that matches nothing is 404; one that matches with another method is 405 with
``Allow``; a route's access is checked before its handler runs (``OPERATOR``: the
admin token, compared in constant time; ``BUYER``: a buyer identity; a route open
to both takes the operator's token first). Under ``/api/v1/admin/`` a request
without the admin token is 401 whatever the path, so the operator's paths are not
revealed to strangers. HEAD is served as GET (the connection drops the body).

``requests`` counts what ``dispatch`` answers by (operationId, status) for GET
/metrics: a dict increment where the answer is bytes, at the end of a handler's
coroutine otherwise; a path of no route counts under ``unknown``. The purchase the C
path answers is not counted here (gateway/metrics.py derives it from its outcomes).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict

from flashgate.auth import admin_ok
from flashgate.gateway import answers
from flashgate.gateway._buy import BuyPath, Target
from flashgate.gateway.routes import ADMIN_PREFIX, BUY, BUYER, OPERATOR, PUBLIC, Route

_ERT_PARAM = "{event_id}"


class Match:
    """A request's route, its handler and its parameters."""

    __slots__ = ("route", "handler", "params", "ert")

    def __init__(self, route: Route, handler, params: dict[str, str], ert=None):
        self.route = route
        self.handler = handler
        self.params = params
        self.ert = ert  # the event's runtime, for a route with {event_id} (None: unknown)


def _methods(route: Route) -> list[bytes]:
    m = route.method.encode()
    return [m, b"HEAD"] if m == b"GET" else [m]


def _allow(routes: list[Route]) -> bytes:
    names = []
    for r in routes:
        names += [m.decode() for m in _methods(r)]
    return answers.method_not_allowed(", ".join(names))


class Router:
    """``dispatch(req, target)``: the answer of a request the C path does not serve."""

    def __init__(self, routes: tuple[Route, ...], handlers: dict[str, object], path: BuyPath,
                 admin_token: bytes, events: dict | None = None):
        self.path = path
        self.admin_token = admin_token
        self.events = events if events is not None else {}
        self.requests: defaultdict[tuple[str, bytes], int] = defaultdict(int)
        by_pattern: dict[str, list[Route]] = {}
        for r in routes:
            if r.handler is not None:  # a planned route is not served: 404
                by_pattern.setdefault(r.pattern, []).append(r)
        self._handlers = {r: self._handler_of(r, handlers)
                          for rs in by_pattern.values() for r in rs}
        self._static: dict[str, Target] = {}
        self._per_event: list[tuple[str, list[Route]]] = []
        self._patterns: list[tuple[re.Pattern, str, list[Route]]] = []
        for pattern, rs in by_pattern.items():
            params = rs[0].params
            if not params:
                self._static[pattern] = self._target(pattern, rs, {}, None)
                continue
            if params == ("event_id",):
                self._per_event.append((pattern, rs))
            rx = "".join(f"(?P<{s[1:-1]}>[^/]+)" if s.startswith("{") else re.escape(s)
                         for s in re.split(r"(\{[a-z_]+\})", pattern))
            self._patterns.append((re.compile(rx + r"\Z"), pattern, rs))
        path.targets = dict(self._static)

    def _handler_of(self, route: Route, handlers: dict[str, object]):
        if route.handler == BUY:
            return _unknown_event  # the C path takes every buy of a known event
        area, _, name = route.handler.partition(".")
        return getattr(handlers[area], name)

    def _target(self, path: str, rs: list[Route], params: dict, ert) -> Target:
        bound = {}
        buy = False
        for r in rs:
            m = Match(r, self._handlers[r], params, ert)
            for method in _methods(r):
                bound[method] = m
            buy = buy or (r.handler == BUY and ert is not None)
        return Target(bound, _allow(rs), ert, buy)

    def compile_events(self, events: dict) -> None:
        """The exact paths of the events the worker now knows (``events``: id ->
        runtime), for the C path's first lookup."""
        self.events = events
        targets = dict(self._static)
        for ev_id, ert in events.items():
            params = {"event_id": ev_id}
            for pattern, rs in self._per_event:
                path = pattern.replace(_ERT_PARAM, ev_id)
                targets[path] = self._target(path, rs, params, ert)
        self.path.targets = targets

    def _match(self, path: str) -> Target | None:
        for rx, _pattern, rs in self._patterns:
            m = rx.match(path)
            if m is not None:
                params = m.groupdict()
                ert = self.events.get(params["event_id"]) if "event_id" in params else None
                return self._target(path, rs, params, ert)
        return None

    def is_admin(self, req) -> bool:
        return admin_ok(req.headers.get(b"authorization"), self.admin_token)

    def dispatch(self, req, target: Target | None):
        answer = self._dispatch(req, target)
        if type(answer) is bytes:
            self.requests[("unknown", answer[9:12])] += 1
            return answer
        if type(answer) is tuple:  # (the route's, its handler's answer)
            op, answer = answer
            if type(answer) is bytes:
                self.requests[(op, answer[9:12])] += 1
            elif asyncio.iscoroutine(answer):
                return self._counted(op, answer)
        return answer

    async def _counted(self, op: str, coro):
        answer = await coro
        if type(answer) is bytes:
            self.requests[(op, answer[9:12])] += 1
        return answer

    def _dispatch(self, req, target: Target | None):
        path = req.path
        if path.startswith(ADMIN_PREFIX) and not self.is_admin(req):
            return answers.UNAUTHENTICATED
        if target is None:
            target = self._match(path)
            if target is None:
                return answers.NOT_FOUND
        m = target.routes.get(req.method)
        if m is None:
            return target.not_allowed
        op = m.route.op
        access = m.route.access
        if PUBLIC in access:
            who = None
        elif OPERATOR in access and self.is_admin(req):
            who = OPERATOR
        elif BUYER in access:
            who = self.path.user_of(req)
            if who is None:
                return op, answers.UNAUTHENTICATED
        else:
            return op, answers.UNAUTHENTICATED
        return op, m.handler(req, m, who)


def _unknown_event(req, m: Match, who) -> bytes:
    # a buy the C path did not take: its event is not one this worker knows
    return answers.NOT_FOUND
