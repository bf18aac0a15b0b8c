"""Event definitions: validation of the admin API's body, storage form, change rules."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MAX_SKUS = 64
MAX_TIERS = 32
MAX_MILESTONES = 64
# Bounds that keep every number the commit script computes (amounts, times, sold)
# an exact integer of at most 14 digits, which is how Lua hands numbers to Redis.
MAX_PRICE = 1_000_000_000  # minor units
MAX_STOCK = 1_000_000_000
MAX_LIMIT = 10_000  # per user: price * limit stays below 10**13
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01
MAX_PAYMENT_TIMEOUT_S = 7 * 24 * 3600
MAX_URL = 2048  # characters of a webhook_url
MAX_REMINDERS = 16
MAX_REMINDER_S = 30 * 24 * 3600  # a reminder at most 30 days before the start
DEFAULT_REMINDERS_S = (21600, 7200, 1800, 0)  # 6 h, 2 h, 30 min, and at the start
GOALS = ("units", "revenue", "buyers")
MAX_GOAL = 10**15


class EventError(ValueError):
    """An event definition that cannot be accepted; ``code`` is the API error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Sku:
    id: str
    name: str
    price: int
    original_price: int
    stock: int
    per_user_limit: int
    tiers: list[tuple[int, int]] = field(default_factory=list)

    def tiers_arg(self) -> str:
        """The ladder as the commit script reads it: "units,price,units,price"."""
        return ",".join(f"{u},{p}" for u, p in self.tiers)


@dataclass(slots=True)
class Event:
    id: str
    name: str
    starts_at_ms: int
    ends_at_ms: int
    preheat_at_ms: int | None
    registration_required: bool
    payment_timeout_s: int
    skus: list[Sku]
    milestones: list[tuple[int, str]] = field(default_factory=list)
    paused: bool = False
    webhook_url: str | None = None  # where notifications go (gateway/webhooks)
    reminders_s: list[int] = field(default_factory=lambda: list(DEFAULT_REMINDERS_S))
    goals: dict[str, int] = field(default_factory=dict)  # any of GOALS

    def milestones_arg(self) -> str:
        """The milestones' thresholds as the commit script reads them: "150,300"
        (ascending, each once)."""
        return ",".join(str(n) for n in sorted({n for n, _ in self.milestones}))

    def sku(self, sku_id: str) -> Sku | None:
        for s in self.skus:
            if s.id == sku_id:
                return s
        return None

    def to_dict(self) -> dict:
        """The storage (and admin) form; ``from_dict`` reads it back."""
        return {
            "id": self.id,
            "name": self.name,
            "starts_at_ms": self.starts_at_ms,
            "ends_at_ms": self.ends_at_ms,
            "preheat_at_ms": self.preheat_at_ms,
            "registration_required": self.registration_required,
            "payment_timeout_s": self.payment_timeout_s,
            "paused": self.paused,
            "skus": [
                {
                    "id": s.id,
                    "name": s.name,
                    "price": s.price,
                    "original_price": s.original_price,
                    "stock": s.stock,
                    "per_user_limit": s.per_user_limit,
                    "tiers": [{"units": u, "price": p} for u, p in s.tiers],
                }
                for s in self.skus
            ],
            "milestones": [{"sold": n, "reward": r} for n, r in self.milestones],
            "webhook_url": self.webhook_url,
            "reminders_s": list(self.reminders_s),
            "goals": dict(self.goals),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Event:
        ev = parse_event(d["id"], d)
        ev.paused = bool(d.get("paused", False))
        return ev


def _int(d: dict, key: str, *, hi: int, default=None, lo: int | None = None,
         where: str = "") -> int:
    v = d.get(key, default)
    if v is None:
        raise EventError("bad_request", f"{where}{key} is required")
    if not isinstance(v, int) or isinstance(v, bool):
        raise EventError("bad_request", f"{where}{key} must be an integer")
    if lo is not None and v < lo:
        raise EventError("bad_request", f"{where}{key} must be >= {lo}")
    if v > hi:
        raise EventError("bad_request", f"{where}{key} must be <= {hi}")
    return v


def _str(d: dict, key: str, *, default=None, where: str = "", maxlen: int = 200) -> str:
    v = d.get(key, default)
    if v is None:
        raise EventError("bad_request", f"{where}{key} is required")
    if not isinstance(v, str):
        raise EventError("bad_request", f"{where}{key} must be a string")
    if len(v) > maxlen:
        raise EventError("bad_request", f"{where}{key} is longer than {maxlen} characters")
    return v


def parse_event(event_id: str, body) -> Event:
    """Validate a PUT body (or a stored definition); raises EventError("bad_request")."""
    if not ID_RE.match(event_id):
        raise EventError("bad_request", "event id must match [A-Za-z0-9_-]{1,64}")
    if not isinstance(body, dict):
        raise EventError("bad_request", "the body must be a JSON object")
    name = _str(body, "name", default=event_id)
    starts = _int(body, "starts_at_ms", lo=0, hi=MAX_TIME_MS)
    ends = _int(body, "ends_at_ms", lo=0, hi=MAX_TIME_MS)
    if ends <= starts:
        raise EventError("bad_request", "ends_at_ms must be after starts_at_ms")
    preheat = body.get("preheat_at_ms")
    if preheat is not None:
        preheat = _int(body, "preheat_at_ms", lo=0, hi=MAX_TIME_MS)
        if preheat > starts:
            raise EventError("bad_request", "preheat_at_ms must not be after starts_at_ms")
    reg = body.get("registration_required", False)
    if not isinstance(reg, bool):
        raise EventError("bad_request", "registration_required must be a boolean")
    timeout = _int(body, "payment_timeout_s", default=900, lo=1, hi=MAX_PAYMENT_TIMEOUT_S)
    raw_skus = body.get("skus")
    if not isinstance(raw_skus, list) or not raw_skus:
        raise EventError("bad_request", "skus must be a non-empty list")
    if len(raw_skus) > MAX_SKUS:
        raise EventError("bad_request", f"at most {MAX_SKUS} skus per event")
    skus: list[Sku] = []
    seen: set[str] = set()
    for i, rs in enumerate(raw_skus):
        where = f"skus[{i}]."
        if not isinstance(rs, dict):
            raise EventError("bad_request", f"skus[{i}] must be an object")
        sid = _str(rs, "id", where=where, maxlen=64)
        if not ID_RE.match(sid):
            raise EventError("bad_request", f"{where}id must match [A-Za-z0-9_-]{{1,64}}")
        if sid in seen:
            raise EventError("bad_request", f"duplicate sku id {sid!r}")
        seen.add(sid)
        price = _int(rs, "price", lo=0, hi=MAX_PRICE, where=where)
        tiers_raw = rs.get("tiers") or []
        if not isinstance(tiers_raw, list) or len(tiers_raw) > MAX_TIERS:
            raise EventError("bad_request", f"{where}tiers must be a list of at most {MAX_TIERS}")
        tiers = []
        for k, t in enumerate(tiers_raw):
            tw = f"{where}tiers[{k}]."
            if not isinstance(t, dict):
                raise EventError("bad_request", f"{where}tiers[{k}] must be an object")
            tiers.append((_int(t, "units", lo=1, hi=MAX_STOCK, where=tw),
                          _int(t, "price", lo=0, hi=MAX_PRICE, where=tw)))
        skus.append(
            Sku(
                id=sid,
                name=_str(rs, "name", default=sid, where=where),
                price=price,
                original_price=_int(rs, "original_price", default=price, lo=0, hi=MAX_PRICE,
                                    where=where),
                stock=_int(rs, "stock", lo=0, hi=MAX_STOCK, where=where),
                per_user_limit=_int(rs, "per_user_limit", default=1, lo=1, hi=MAX_LIMIT,
                                    where=where),
                tiers=tiers,
            )
        )
    raw_ms = body.get("milestones") or []
    if not isinstance(raw_ms, list) or len(raw_ms) > MAX_MILESTONES:
        raise EventError("bad_request", f"milestones must be a list of at most {MAX_MILESTONES}")
    milestones = []
    for k, ms in enumerate(raw_ms):
        if not isinstance(ms, dict):
            raise EventError("bad_request", f"milestones[{k}] must be an object")
        where = f"milestones[{k}]."
        milestones.append((_int(ms, "sold", lo=1, hi=MAX_STOCK * MAX_SKUS, where=where),
                           _str(ms, "reward", where=where)))
    milestones.sort()
    webhook_url = _webhook_url(body.get("webhook_url"))
    raw_reminders = body.get("reminders_s")
    reminders = _reminders(list(DEFAULT_REMINDERS_S) if raw_reminders is None else raw_reminders)
    goals = _goals(body.get("goals"))
    return Event(
        id=event_id,
        name=name,
        starts_at_ms=starts,
        ends_at_ms=ends,
        preheat_at_ms=preheat,
        registration_required=reg,
        payment_timeout_s=timeout,
        skus=skus,
        milestones=milestones,
        webhook_url=webhook_url,
        reminders_s=reminders,
        goals=goals,
    )


def _webhook_url(v) -> str | None:
    """An absolute http(s) URL with a host, or None (no webhooks)."""
    if v is None:
        return None
    if not isinstance(v, str):
        raise EventError("bad_request", "webhook_url must be a string")
    if len(v) > MAX_URL:
        raise EventError("bad_request", f"webhook_url is longer than {MAX_URL} characters")
    bad = EventError("bad_request", "webhook_url must be an absolute http:// or https:// URL")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in v):
        raise bad
    try:
        u = urlsplit(v)
        u.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise bad from None
    if u.scheme not in ("http", "https") or not u.hostname or u.fragment:
        raise bad
    if u.username is not None or u.password is not None:
        raise EventError("bad_request", "webhook_url must not carry credentials "
                                        "(notifications are signed: see API.md)")
    return v


def _reminders(v) -> list[int]:
    """Distinct offsets in seconds before the start, largest first."""
    if not isinstance(v, list) or len(v) > MAX_REMINDERS:
        raise EventError("bad_request",
                         f"reminders_s must be a list of at most {MAX_REMINDERS} integers")
    out = set()
    for x in v:
        if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= MAX_REMINDER_S:
            raise EventError("bad_request", "reminders_s must hold integers from 0 to "
                                            f"{MAX_REMINDER_S} (seconds before the start)")
        out.add(x)
    return sorted(out, reverse=True)


def _goals(v) -> dict[str, int]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise EventError("bad_request", "goals must be an object")
    out = {}
    for k in GOALS:
        if k in v:
            out[k] = _int(v, k, lo=0, hi=MAX_GOAL, where="goals.")
    return out


def check_replace(old: Event, new: Event, sold: dict[str, int], now_ms: int) -> None:
    """Refuse (409 conflict) a replacement that would break a sale in progress.

    Before the start anything may change. From the start on: the start may not
    move, no SKU may disappear, no stock may drop below units sold, no per-user
    limit may be lowered. After the end ("the end is the end") the end may not
    move and no stock may be added."""
    if now_ms < old.starts_at_ms:
        return
    if now_ms >= old.ends_at_ms and new.ends_at_ms != old.ends_at_ms:
        raise EventError("conflict", "the sale has ended: ends_at_ms cannot move")
    if new.starts_at_ms != old.starts_at_ms:
        raise EventError("conflict", "the sale has started: starts_at_ms cannot move")
    for s in old.skus:
        n = new.sku(s.id)
        if n is None:
            raise EventError("conflict", f"the sale has started: sku {s.id!r} cannot be removed")
        if n.stock < sold.get(s.id, 0):
            raise EventError(
                "conflict", f"sku {s.id!r}: stock {n.stock} is below the {sold[s.id]} units sold"
            )
        if n.per_user_limit < s.per_user_limit:
            raise EventError("conflict", f"sku {s.id!r}: per_user_limit cannot be lowered now")
        if now_ms >= old.ends_at_ms and n.stock > s.stock:
            raise EventError("conflict", f"sku {s.id!r}: the sale has ended, stock cannot grow")
    if now_ms >= old.ends_at_ms:
        for n in new.skus:
            if old.sku(n.id) is None:
                raise EventError("conflict", "the sale has ended: skus cannot be added")
