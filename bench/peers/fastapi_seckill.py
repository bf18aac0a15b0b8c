"""The conventional flash-sale design, as a peer for the benchmarks.

FastAPI under uvicorn (uvloop, httptools, one worker) and redis-py's asyncio client
(hiredis parser). Every purchase is ONE Lua script call (`seckill.lua`): it checks
the window against Redis TIME, the pause flag, the stock and the per-user limit,
then counts the sale, stores the order (a hash per order, the conventional layout)
and appends it to the SKU's stream. The other Redis keys are flashgate's
(`fg:{<event>:<sku>}:stock|sold|buyers|orders`), so the bench checks both with the
same invariant code, which reads the stream, not the orders' storage.

It speaks the subset of flashgate's API the bench uses, with the same request and
response shapes: buy, event view, admin event PUT and stats, /readyz. Not
implemented: Idempotency-Key, registration, payments. Configuration comes from the
environment: PEER_REDIS_URL, PEER_EVENT_FILE (an event as flashgate's --event),
PEER_ADMIN_TOKEN, PEER_USER_SECRET (empty: dev mode, `X-User-Id`).

With PEER_USER_SECRET (the bench's prod configuration) every buy's bearer token is
verified as flashgate verifies it: user id syntax, expiry, HMAC-SHA256 compared in
constant time, with the standard library's `hmac` (one-shot C digest: a few µs against
the ~200 µs the peer spends on a request). Rate limits and X-Forwarded-For are not
implemented: in this design they are a proxy's job, and the bench starts no proxy.
"""

from __future__ import annotations

import hmac
import os
import re
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
EVENT_FILE = os.environ.get("PEER_EVENT_FILE", "")
ADMIN_TOKEN = os.environ.get("PEER_ADMIN_TOKEN", "")
USER_SECRET = os.environ.get("PEER_USER_SECRET", "").encode()
BUY_SCRIPT = (Path(__file__).parent / "seckill.lua").read_text()
USER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
JSON = "application/json"

events: dict[str, dict] = {}
stats: dict[str, dict] = {}


def error(status: int, code: str, message: str = "") -> Response:
    body = orjson.dumps({"error": code, "message": message or code.replace("_", " ")})
    return Response(body, status_code=status, media_type=JSON)


def keys(event_id: str, sku: str) -> str:
    return f"fg:{{{event_id}:{sku}}}:"


def identify(request: Request) -> str | None:
    """The buyer's user id, from the signed token (or X-User-Id in dev mode)."""
    auth = request.headers.get("authorization", "")
    if USER_SECRET:
        if not auth.startswith("Bearer "):
            return None
        try:
            user, expires, sig = auth[7:].rsplit(".", 2)
        except ValueError:
            return None
        if (not USER_RE.match(user) or not (expires.isascii() and expires.isdigit())
                or int(expires) < time.time() * 1000):
            return None
        good = hmac.digest(USER_SECRET, f"{user}.{expires}".encode(), "sha256").hex()
        # as bytes: compare_digest refuses str with non-ASCII characters
        return user if hmac.compare_digest(good.encode(), sig.encode("latin-1")) else None
    user = request.headers.get("x-user-id", "")
    return user if USER_RE.match(user) else None


def is_admin(request: Request) -> bool:
    got = request.headers.get("authorization", "")
    return bool(ADMIN_TOKEN) and hmac.compare_digest(got.encode(), f"Bearer {ADMIN_TOKEN}".encode())


async def install_event(r: aioredis.Redis, event: dict) -> None:
    """Keep the event in memory; create each SKU's stock (raising it keeps units sold)."""
    eid = event["id"]
    event["_skus"] = {s["id"]: s for s in event["skus"]}
    for s in event["skus"]:
        s["_tiers"] = ",".join(f"{t['units']}:{t['price']}" for t in s.get("tiers") or [])
        await r.set(keys(eid, s["id"]) + "stock", int(s["stock"]))
    events[eid] = event
    stats.setdefault(eid, {"attempts": 0, "orders": 0, "units_sold": 0, "rejections": Counter()})


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.redis = aioredis.Redis.from_url(REDIS_URL, max_connections=256)
    app.state.buy = app.state.redis.register_script(BUY_SCRIPT)
    if EVENT_FILE:
        await install_event(app.state.redis, orjson.loads(Path(EVENT_FILE).read_bytes()))
    yield
    await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None)


@app.post("/api/v1/events/{event_id}/buy")
async def buy(event_id: str, request: Request) -> Response:
    event = events.get(event_id)
    if event is None:
        return error(404, "not_found")
    user = identify(request)
    if user is None:
        return error(401, "unauthenticated")
    try:
        body = orjson.loads(await request.body())
        sku_id = body["sku"]
        qty = body.get("qty", 1)
        if not isinstance(sku_id, str) or type(qty) is not int or qty < 1:
            raise ValueError
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return error(400, "bad_request")
    sku = event["_skus"].get(sku_id)
    if sku is None:
        return error(404, "not_found")
    st = stats[event_id]
    st["attempts"] += 1
    order_id = uuid.uuid4().hex
    k = keys(event_id, sku_id)
    try:
        res = await request.app.state.buy(
            keys=[k + "stock", k + "sold", k + "buyers", k + "orders", k + "paused",
                  k + "order:" + order_id],
            args=[user, qty, event["starts_at_ms"], event["ends_at_ms"], sku["per_user_limit"],
                  sku["price"], sku["_tiers"], order_id, event_id, sku_id,
                  int(event.get("payment_timeout_s", 900)) * 1000],
        )
    except (aioredis.ConnectionError, aioredis.TimeoutError):
        return Response(b'{"error":"unavailable","message":"store unreachable"}', 503,
                        {"Retry-After": "1"}, media_type=JSON)
    outcome = res[0].decode() if isinstance(res[0], bytes) else res[0]
    if outcome != "ok":
        st["rejections"][outcome] += 1
        return error(409, outcome)
    unit_price, created = int(res[1]), int(res[2])
    st["orders"] += 1
    st["units_sold"] += qty
    return Response(orjson.dumps({
        "order_id": order_id, "event_id": event_id, "sku": sku_id, "user_id": user,
        "qty": qty, "unit_price": unit_price, "amount": unit_price * qty, "status": "reserved",
        "created_ms": created, "pay_by_ms": created + int(event.get("payment_timeout_s", 900)) * 1000,
    }), media_type=JSON)


@app.get("/api/v1/events/{event_id}")
async def view(event_id: str, request: Request) -> Response:
    event = events.get(event_id)
    if event is None:
        return error(404, "not_found")
    r = request.app.state.redis
    names = []
    for s in event["skus"]:
        names += [keys(event_id, s["id"]) + "stock", keys(event_id, s["id"]) + "sold"]
    values = await r.mget(names)
    now = int(time.time() * 1000)
    skus, all_gone = [], True
    for i, s in enumerate(event["skus"]):
        stock, sold = int(values[2 * i] or 0), int(values[2 * i + 1] or 0)
        all_gone &= sold >= stock
        skus.append({"id": s["id"], "name": s.get("name", s["id"]), "price": s["price"],
                     "original_price": s.get("original_price", s["price"]), "stock": stock,
                     "left": max(0, stock - sold), "sold": sold,
                     "per_user_limit": s["per_user_limit"]})
    if now < event["starts_at_ms"]:
        state = "scheduled"
    elif now >= event["ends_at_ms"]:
        state = "ended"
    else:
        state = "sold_out" if all_gone else "live"
    return Response(orjson.dumps({
        "id": event_id, "name": event.get("name", event_id), "state": state,
        "server_time_ms": now, "starts_at_ms": event["starts_at_ms"],
        "ends_at_ms": event["ends_at_ms"],
        "registration_required": event.get("registration_required", False), "skus": skus,
    }), media_type=JSON)


@app.put("/api/v1/admin/events/{event_id}")
async def put_event(event_id: str, request: Request) -> Response:
    if not is_admin(request):
        return error(401, "unauthenticated")
    try:
        event = orjson.loads(await request.body())
        event["id"] = event_id
        created = event_id not in events
        await install_event(request.app.state.redis, event)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return error(400, "bad_request")
    body = {k: v for k, v in event.items() if not k.startswith("_")}
    return Response(orjson.dumps(body), 201 if created else 200, media_type=JSON)


@app.get("/api/v1/admin/events/{event_id}/stats")
async def event_stats(event_id: str, request: Request) -> Response:
    if not is_admin(request):
        return error(401, "unauthenticated")
    st = stats.get(event_id)
    if st is None:
        return error(404, "not_found")
    return Response(orjson.dumps({**st, "rejections": dict(st["rejections"])}), media_type=JSON)


@app.get("/readyz")
async def readyz(request: Request) -> Response:
    try:
        await request.app.state.redis.ping()
    except (aioredis.ConnectionError, aioredis.TimeoutError):
        return error(503, "unavailable")
    return Response(b'{"ready":true}', media_type=JSON)
