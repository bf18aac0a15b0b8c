"""The operator's figures: an event's totals (stats), its per-second series and the
battle report made of both and of its orders (JSON, or the page).

Every figure is defined in docs/API.md ("The figures"). What Redis holds exactly (units,
orders, revenue, paid) is read from the SKUs' keys; what the workers count (page views,
attempts, rejections, latency, the HyperLogLogs) is what every worker flushed, at most
``--stats-interval`` old (counters.py), the answering worker's own flushed first.
"""

from __future__ import annotations

import gzip
from urllib.parse import parse_qsl

import orjson

from flashgate.core import keys, store
from flashgate.core.outcomes import REJECTIONS
from flashgate.core.redisconn import RedisError, RedisUnavailable
from flashgate.gateway import answers
from flashgate.gateway.counters import LATENCY_BUCKETS, latency_percentiles
from flashgate.gateway.handlers.pages import HTML, LANGS, accepts_gzip, html_headers, language
from flashgate.gateway.protocol import build_response, error_response
from flashgate.gateway.runtime import state_of
from flashgate.report import build, page

SERIES_MAX_POINTS = 6 * 3600  # one answer covers at most six hours
SERIES_BEFORE_MS = 60_000  # the default range starts this long before the start
SERIES_AFTER_MS = 60_000  # and ends this long after the end (or now, if sooner)
REPORT_FORMATS = ("json", "html")
# the report page: no script at all, its styles inline, nothing from anywhere
REPORT_HEADERS = html_headers(b"style-src 'unsafe-inline'; img-src data:", b"no-store")

def _bad(message: str) -> bytes:
    return error_response(400, "bad_request", message)


class Figures:
    def __init__(self, gw, not_found_page=None):
        self.gw = gw
        self.not_found_page = not_found_page  # (pages.Page) the report page's 404

    async def stats(self, req, m, who) -> bytes:
        ert = m.ert
        if ert is None:
            return answers.NOT_FOUND
        try:
            figures = await read_stats(self.gw, ert)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        return build_response(200, orjson.dumps(figures))

    async def series(self, req, m, who) -> bytes:
        """The event's figures second by second over ``[from_ms, to_ms)`` (up to now)."""
        ert = m.ert
        if ert is None:
            return answers.NOT_FOUND
        gw = self.gw
        ev = ert.event
        now = gw.path.now_ms()
        try:
            q = dict(parse_qsl(req.query.decode("latin-1"), strict_parsing=False))
            start = int(q["from_ms"]) if "from_ms" in q else min(
                ev.preheat_at_ms or ev.starts_at_ms, ev.starts_at_ms - SERIES_BEFORE_MS)
            end = int(q["to_ms"]) if "to_ms" in q else ev.ends_at_ms + SERIES_AFTER_MS
        except ValueError:
            return _bad("from_ms and to_ms must be integers (ms since the epoch)")
        if start < 0 or end < start:
            return _bad("from_ms must be >= 0 and to_ms >= from_ms")
        end = max(start, min(end, now + 1))  # (now's second, as far as it goes)
        first, last = -(-start // 1000), -(-end // 1000)  # the seconds s: from <= s*1000 < to
        if last - first > SERIES_MAX_POINTS:
            return _bad(f"at most {SERIES_MAX_POINTS} points (six hours) per request")
        try:
            points = await read_series(gw.conn, ev, first, last)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        return build_response(200, orjson.dumps({
            "event_id": ev.id, "step_ms": 1000, "from_ms": start, "to_ms": end,
            "points": points}))

    async def report(self, req, m, who) -> bytes:
        """The battle report (docs/API.md, "The report"): JSON, or with ``format=html``
        the page, in ``lang`` (else by Accept-Language)."""
        q = dict(parse_qsl(req.query.decode("latin-1"), strict_parsing=False))
        fmt = q.get("format", "json")
        if fmt not in REPORT_FORMATS:
            return _bad("format must be json or html")
        ert = m.ert
        if ert is None:
            if fmt == "html" and self.not_found_page is not None:
                return self.not_found_page.answer(req)
            return answers.NOT_FOUND
        gw = self.gw
        ev = ert.event
        try:
            stats = await read_stats(gw, ert)
            as_of = stats["as_of_ms"]
            # the sale's seconds: from the start's to the end's (or now's), six hours at most
            first = ev.starts_at_ms // 1000
            last = max(first, min(ev.ends_at_ms, as_of) // 1000 + 1)
            points = await read_series(gw.conn, ev, first,
                                       min(last, first + SERIES_MAX_POINTS))
            orders = await store.export_orders(gw.conn, ev)
        except (RedisUnavailable, RedisError):
            return answers.UNAVAILABLE
        rep = build.build(ev, state_of(ert, gw.ledger, as_of), stats, orders, points)
        if fmt == "json":
            return build_response(200, orjson.dumps(rep))
        lang = q.get("lang")
        if lang not in LANGS:
            lang = language(req.headers.get(b"accept-language"))
        body = page.render(rep, lang).encode()
        headers = REPORT_HEADERS
        if accepts_gzip(req):
            body = gzip.compress(body, 6)
            headers += ((b"Content-Encoding", b"gzip"),)
        return build_response(200, body, HTML, headers)


async def read_stats(gw, ert) -> dict:
    """The event's figures as ``GET …/stats`` answers them (docs/API.md, "The figures"):
    the answering worker's counts flushed first, then Redis read. Raises
    RedisUnavailable or RedisError."""
    ev = ert.event
    key = keys.stats(ev.id)
    await gw.counters.flush()
    visitors, participants, buyers = (keys.stats_hll(ev.id, n) for n in keys.HLLS)
    as_of = gw.path.now_ms()
    raw, uv, n_participants, n_buyers, registered = await gw.conn.pipeline([
        ["HGETALL", key], ["PFCOUNT", visitors, participants],
        ["PFCOUNT", participants], ["PFCOUNT", buyers],
        ["HLEN", keys.registered(ev.id)]])
    for reply in (raw, uv, n_participants, n_buyers, registered):
        if isinstance(reply, Exception):
            raise reply
    skus = await store.sku_totals(gw.conn, ev)
    so = await gw.conn.pipeline([["GET", s.keys.sold_out_ms] for s in ert.skus])
    for reply in so:
        if isinstance(reply, Exception):
            raise reply
    reached = await store.read_milestones(gw.conn, ev)
    it = iter(raw)
    c = {k.decode(): int(v) for k, v in zip(it, it, strict=True)}
    lat = [c.get(f"lat:{i}", 0) for i in range(LATENCY_BUCKETS)]
    orders = sum(s["orders"] for s in skus)
    units = sum(s["sold"] for s in skus)
    uv, n_buyers = int(uv or 0), int(n_buyers or 0)
    sold_out_ms = None
    if skus and all(s["sold"] >= s["stock"] for s in skus) and all(so):
        sold_out_ms = max(int(x) for x in so) - ev.starts_at_ms
    for s, t in zip(skus, so, strict=True):
        s["left"] = max(0, s["stock"] - s["sold"])
        s["sold_out_at_ms"] = int(t) if t else None
        s["sold_out_ms"] = int(t) - ev.starts_at_ms if t else None
    return {
        "event_id": ev.id,
        "as_of_ms": as_of, "lag_ms": round(gw.cfg.stats_interval * 1000),
        "pv": c.get("pv", 0), "uv": uv, "participants": int(n_participants or 0),
        "buyers": n_buyers, "attempts": c.get("attempts", 0),
        "orders": orders, "units_sold": units,
        "units_paid": sum(s["units_paid"] for s in skus),
        "revenue": sum(s["revenue"] for s in skus),
        "revenue_paid": sum(s["revenue_paid"] for s in skus),
        "rejections": {k: c.get(k, 0) for k in REJECTIONS},
        # (the two estimates may cross by their error: a share is at most 1)
        "conversion": min(1.0, round(n_buyers / uv, 4)) if uv else 0.0,
        "sold_out_ms": sold_out_ms,
        "latency_ms": latency_percentiles(lat),
        "skus": skus,
        "milestones": store.milestones_view(ev, reached),
        "registered": int(registered or 0),
    }


async def read_series(conn, ev, first: int, last: int) -> list[dict]:
    """The event's series point of every second ``s`` with ``first <= s < last`` (unix
    seconds; docs/API.md, "The series"). Raises RedisUnavailable or RedisError."""
    # a minute before the range too: the units left as last written before it
    minutes = range((first - 60) // 60, (last - 1) // 60 + 1) if last > first else ()
    raw = await conn.pipeline([["HGETALL", keys.series(ev.id, mi)]
                               for mi in minutes]) if minutes else []
    by_second: dict[int, dict] = {}
    for minute, fields in zip(minutes, raw, strict=True):
        if isinstance(fields, Exception):
            raise fields
        it = iter(fields)
        for f, v in zip(it, it, strict=True):
            sec, _, name = f.decode().partition(":")
            by_second.setdefault(minute * 60 + int(sec), {})[name] = int(v)
    skus = [s.id for s in ev.skus]
    left: dict[str, int] = {}
    for sec in sorted(s for s in by_second if s < first):  # carried into the range
        _left_from(by_second[sec], skus, left)
    points = []
    for sec in range(first, last):
        got = by_second.get(sec, {})
        _left_from(got, skus, left)
        points.append({
            "ts_ms": sec * 1000,
            "attempts": got.get("a", 0), "orders": got.get("o", 0),
            "units": got.get("u", 0),
            "rejections": {k: got["r:" + k] for k in REJECTIONS if got.get("r:" + k)},
            "left": dict(left), "subscribers": got.get("s", 0),
        })
    return points


def _left_from(got: dict, skus: list[str], left: dict[str, int]) -> None:
    """The units left a second's fields say (``l:<sku>``), into ``left``."""
    for sku in skus:
        n = got.get("l:" + sku)
        if n is not None:
            left[sku] = n
