"""The OpenAPI 3.1 document of the HTTP API (docs/API.md), served at ``GET /openapi.json``.

``document()`` builds it as a plain dict (a new one on every call); ``document_bytes()``
is its JSON encoding, computed once. Every path of docs/API.md is described; the ones
this server does not serve yet carry ``x-flashgate-status: planned``.

Schemas name the fields clients may rely on as ``required`` and leave
``additionalProperties`` open: the API may add fields, never remove them.
"""

from __future__ import annotations

import copy
from functools import cache

import orjson

from flashgate import __version__
from flashgate.core.events import (
    DEFAULT_REMINDERS_S,
    MAX_GOAL,
    MAX_LIMIT,
    MAX_MILESTONES,
    MAX_PAYMENT_TIMEOUT_S,
    MAX_PRICE,
    MAX_REMINDER_S,
    MAX_REMINDERS,
    MAX_SKUS,
    MAX_STOCK,
    MAX_TIERS,
    MAX_TIME_MS,
    MAX_URL,
)
from flashgate.gateway.handlers.pages import ASSET_TYPES
from flashgate.gateway.routes import ROUTES

ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
IDEM_PATTERN = "^[!-~]{1,255}$"  # 1-255 visible ASCII characters

EVENT_STATES = ["scheduled", "preheat", "live", "paused", "sold_out", "ended"]
ORDER_STATUSES = ["reserved", "paid", "cancelled", "expired"]
BUY_REFUSALS = ["not_started", "ended", "paused", "sold_out", "limit_exceeded",
                "not_registered"]

BUYER = [{"buyerToken": []}, {"devUser": []}]
ADMIN = [{"admin": []}]
PUBLIC: list = []

# Error answers shared by many operations: component name -> (status, codes, description)
COMMON_ERRORS = {
    "BadRequest": (400, ["bad_request"], "Invalid body or fields, or a malformed request."),
    "Unauthenticated": (401, ["unauthenticated"], "No or bad identity."),
    "NotFound": (404, ["not_found"], "Unknown event, SKU or order."),
    "RequestTimeout": (408, ["request_timeout"],
                       "The request head or body did not arrive in time; the connection "
                       "is closed."),
    "LengthRequired": (411, ["length_required"],
                       "Chunked bodies are not accepted; send Content-Length."),
    "PayloadTooLarge": (413, ["payload_too_large"],
                        "Body too large (16 KiB; 1 MiB under /api/v1/admin/)."),
    "UriTooLong": (414, ["uri_too_long"], "Request line too long."),
    "RateLimited": (429, ["rate_limited"], "The limiter refused; retry after Retry-After "
                                           "seconds."),
    "HeadersTooLarge": (431, ["headers_too_large"],
                        "Request head too large or too many headers."),
    "Internal": (500, ["internal"], "Unexpected server error."),
    "Unavailable": (503, ["unavailable"], "Store unreachable or overloaded, not ready, or "
                                          "too many connections; retry after Retry-After."),
}
# The HTTP layer (protocol.py) may give these on any operation ...
TRANSPORT_ERRORS = ("BadRequest", "RequestTimeout", "UriTooLong", "HeadersTooLarge",
                    "Internal", "Unavailable")
# ... and these on operations that take a body.
BODY_TRANSPORT_ERRORS = ("LengthRequired", "PayloadTooLarge")
RETRY_AFTER_STATUSES = (429, 503)

DESCRIPTION = """\
The flash-sale gateway's HTTP API, v1 (docs/API.md is the reference text).

* Bodies are JSON (UTF-8). Times are integers, milliseconds since the Unix epoch
  (UTC), named `*_ms`. Money is an integer in minor units (990 is 9.90).
* Every error is `{"error": "<code>", "message": "<text>"}`; codes are stable,
  messages are not. Each response below lists the codes its status can carry.
* Unknown JSON fields in requests are ignored; wrong types are 400 `bad_request`.
* A method other than the ones listed on a served path is 405 `method_not_allowed`;
  an unknown path is 404 `not_found`.
* Operations marked `x-flashgate-status: planned` are part of the contract but not
  served yet (they answer 404 `not_found` for now).
"""


# -- small builders --------------------------------------------------------------------


def _ref(name: str, kind: str = "schemas") -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _int(minimum: int | None = 0, maximum: int | None = None, description: str = "") -> dict:
    s: dict = {"type": "integer"}
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if description:
        s["description"] = description
    return s


def _ms(description: str = "", nullable: bool = False, bounded: bool = False) -> dict:
    """A time: integer milliseconds since the Unix epoch (``bounded``: as an event
    definition accepts it)."""
    s = _int(0, MAX_TIME_MS if bounded else None,
             description or "milliseconds since the Unix epoch (UTC)")
    if nullable:
        s["type"] = ["integer", "null"]
    return s


def _nullable_int(description: str) -> dict:
    return _int(0, None, description) | {"type": ["integer", "null"]}


def _str(description: str = "", **extra) -> dict:
    s: dict = {"type": "string", **extra}
    if description:
        s["description"] = description
    return s


def _id(description: str) -> dict:
    return _str(description, pattern=ID_PATTERN)


def _array(items: dict, **extra) -> dict:
    return {"type": "array", "items": items, **extra}


def _obj(required: dict, optional: dict | None = None, description: str = "") -> dict:
    """An object with these required and optional properties; other properties allowed."""
    s: dict = {"type": "object", "required": list(required),
               "properties": {**required, **(optional or {})}}
    if description:
        s["description"] = description
    return s


def _const(value) -> dict:
    return {"const": value}


def _error_schema(codes: list[str]) -> dict:
    return {"allOf": [_ref("Error"),
                      {"type": "object", "properties": {"error": {"enum": list(codes)}}}]}


def _error(codes: list[str], description: str, retry_after: bool = False) -> dict:
    r: dict = {"description": description,
               "content": {"application/json": {"schema": _error_schema(codes)}}}
    if retry_after:
        r["headers"] = {"Retry-After": _ref("RetryAfter", "headers")}
    return r


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _content(media_type: str, description: str, line_schema: dict | None = None) -> dict:
    """A response that is not one JSON value; ``line_schema``: the schema of each line."""
    media: dict = {"schema": {"type": "string"}}
    if line_schema is not None:
        media["x-flashgate-line-schema"] = line_schema
    return {"description": description, "content": {media_type: media}}


def _op(op_id: str, summary: str, tag: str, security: list, responses: dict,
        errors: tuple[str, ...] = (), *, description: str = "", params: list | None = None,
        body: dict | None = None) -> dict:
    """One operation. ``responses``: by status, a response object or, for an error
    specific to the operation, ``(codes, description)``; ``errors``: names of
    COMMON_ERRORS it answers. The HTTP layer's errors are added."""
    out: dict = {}
    for status, r in responses.items():
        if isinstance(r, tuple):
            r = _error(r[0], r[1], retry_after=status in RETRY_AFTER_STATUSES)
        out[str(status)] = r
    names = errors + TRANSPORT_ERRORS + (BODY_TRANSPORT_ERRORS if body is not None else ())
    for name in names:
        out.setdefault(str(COMMON_ERRORS[name][0]), _ref(name, "responses"))
    op: dict = {"operationId": op_id, "summary": summary, "tags": [tag],
                "security": [dict(s) for s in security], "responses": dict(sorted(out.items()))}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    return op


# -- the shapes ----------------------------------------------------------------------


def _sku_fields() -> dict:
    return {
        "id": _id("SKU id, unique in the event"),
        "name": _str("display name (defaults to the id)", maxLength=200),
        "price": _int(0, MAX_PRICE, "price in minor units"),
        "original_price": _int(0, MAX_PRICE, "struck-through price (defaults to price)"),
        "stock": _int(0, MAX_STOCK, "units for sale"),
        "per_user_limit": _int(1, MAX_LIMIT, "units one user may hold (default 1)"),
    }


def _event_fields() -> dict:
    return {
        "name": _str("display name (defaults to the event id)", maxLength=200),
        "starts_at_ms": _ms("the sale opens", bounded=True),
        "ends_at_ms": _ms("the sale closes; must be after starts_at_ms", bounded=True),
        "preheat_at_ms": _ms("the page shows the event (state preheat); not after "
                             "starts_at_ms", nullable=True, bounded=True),
        "registration_required": {"type": "boolean", "default": False},
        "payment_timeout_s": _int(1, MAX_PAYMENT_TIMEOUT_S,
                                  "seconds to pay a reserved order (default 900)"),
        "webhook_url": _str("where notifications are POSTed (http:// or https://, no "
                            "credentials); null: none", maxLength=MAX_URL, format="uri")
        | {"type": ["string", "null"]},
        "reminders_s": _array(_int(0, MAX_REMINDER_S), maxItems=MAX_REMINDERS,
                              description="seconds before starts_at_ms at which registered "
                                          "users are announced (stored distinct, largest "
                                          "first)", default=list(DEFAULT_REMINDERS_S)),
        "goals": _obj({}, {k: _int(0, MAX_GOAL) for k in ("units", "revenue", "buyers")},
                      "targets the report measures the sale against"),
    }


def _schemas() -> dict:
    sku = _sku_fields()
    ev = _event_fields()
    tier = _obj({"units": _int(1, MAX_STOCK), "price": _int(0, MAX_PRICE)},
                description="the first `units` units (after earlier tiers) sell at `price`")
    milestone = _obj({"sold": _int(1, MAX_STOCK * MAX_SKUS), "reward": _str(maxLength=200)})
    sku_in = _obj({k: sku[k] for k in ("id", "price", "stock")},
                  {"name": sku["name"], "original_price": sku["original_price"],
                   "per_user_limit": sku["per_user_limit"],
                   "tiers": _array(_ref("Tier"), maxItems=MAX_TIERS)})
    skus_in = _array(_ref("SkuDefinition"), minItems=1, maxItems=MAX_SKUS)
    return {
        "Error": _obj({"error": _str("stable error code"),
                       "message": _str("text for humans; may change")}),
        "Tier": tier,
        "Milestone": milestone,
        "SkuDefinition": sku_in,
        "EventDefinition": _obj(
            {"starts_at_ms": ev["starts_at_ms"], "ends_at_ms": ev["ends_at_ms"],
             "skus": skus_in},
            {k: ev[k] for k in ("name", "preheat_at_ms", "registration_required",
                                "payment_timeout_s", "webhook_url", "reminders_s", "goals")}
            | {"milestones": _array(_ref("Milestone"), maxItems=MAX_MILESTONES)},
            "Body of PUT /api/v1/admin/events/{event_id}."),
        "StoredSku": _obj(sku | {"tiers": _array(_ref("Tier"))}),
        "StoredEvent": _obj(
            {"id": _id("event id"), **ev, "paused": {"type": "boolean"},
             "skus": _array(_ref("StoredSku")), "milestones": _array(_ref("Milestone"))},
            description="An event definition as stored, defaults filled in."),
        "SkuView": _obj(sku | {"left": _int(0, None, "units left; lags by at most 1 s"),
                               "sold": _int(0),
                               "tiers": _array(_ref("Tier"), description="the price ladder"),
                               "price_now": _int(0, None, "the next unit's price: its "
                                                          "tier's, else `price`")}),
        "MilestoneView": _obj(milestone["properties"] | {
            "reached": {"type": "boolean", "description": "once reached, stays reached"},
            "reached_ms": _ms("when the event's units first reached `sold`; null until "
                              "then", nullable=True)}),
        "EventView": _obj(
            {"id": _id("event id"), "name": _str(),
             "state": _str("where the sale stands now", enum=EVENT_STATES),
             "server_time_ms": _ms("the server's clock, to count down against"),
             "starts_at_ms": ev["starts_at_ms"], "ends_at_ms": ev["ends_at_ms"],
             "registration_required": {"type": "boolean"},
             "skus": _array(_ref("SkuView")), "milestones": _array(_ref("MilestoneView"))},
            {"preheat_at_ms": ev["preheat_at_ms"]}),
        "Registration": _obj({"registered": _const(True)}),
        "BuyRequest": _obj(
            {"sku": _str("SKU id")},
            {"qty": _int(1, None, "units to buy (default 1); more than the SKU's "
                                  "per_user_limit is 409 limit_exceeded")
             | {"default": 1}}),
        "Order": _obj({
            "order_id": _str(minLength=1), "event_id": _str(), "sku": _str(),
            "user_id": _str(), "qty": _int(1),
            "unit_price": _int(0, None, "the price of its first unit"),
            "amount": _int(0, None, "unit_price * qty; for an order across price tiers, "
                                    "the sum of its price_breakdown"),
            "status": _str(enum=ORDER_STATUSES),
            "updated_ms": _ms("when the status last changed (created_ms if never)"),
            "created_ms": _ms(), "pay_by_ms": _ms("unpaid after this, the order expires"),
        }, {"price_breakdown": _array(_ref("PricePart"), minItems=2, description=(
            "only on an order whose units straddle price tiers: each run of units at "
            "its tier's price, in the order they were sold"))}),
        "PricePart": _obj({"qty": _int(1), "unit_price": _int(0)}),
        "ExportedOrder": {"allOf": [_ref("Order"), _obj({"rewards": _array(_str(), description=(
            "the rewards of the reached milestones its buyer earned (a buyer holding a "
            "reserved or paid order of the event earns every reached milestone's reward; "
            "each line of theirs lists them)"))})]},
        "PauseState": _obj({"id": _id("event id"), "paused": {"type": "boolean"},
                            "state": _str(enum=EVENT_STATES)}),
        "StockAdd": _obj({"add": _int(1, MAX_STOCK, "units to add to the SKU's stock")}),
        "StockAdded": _obj({"event_id": _id("event id"), "sku": _str(),
                            "stock": _int(0, None, "the SKU's stock now: defined + added"),
                            "sold": _int(), "left": _int(),
                            "added": _int(0, None, "units added to this SKU so far")}),
        "Stats": _obj(
            {"as_of_ms": _ms("when the figures were read (server time)"),
             "lag_ms": _int(0, None, "the counted figures (pv, uv, participants, buyers, "
                                     "attempts, rejections, latency) include every count "
                                     "made up to this long before as_of_ms"),
             "pv": _int(0, None, "page views: event views, sale page loads, stream "
                                 "connects"),
             "uv": _int(0, None, "distinct visitors (viewers and buyers): identities, "
                                 "else client IPs; HyperLogLog estimate"),
             "participants": _int(0, None, "distinct users who sent a buy request "
                                           "(HyperLogLog estimate)"),
             "buyers": _int(0, None, "distinct users who got an order (HyperLogLog "
                                     "estimate)"),
             "attempts": _int(0, None, "buy requests"),
             "orders": _int(0, None, "orders created"),
             "units_sold": _int(0, None, "units held by live (reserved or paid) orders"),
             "units_paid": _int(), "revenue": _int(),
             "revenue_paid": _int(),
             "rejections": {"type": "object", "additionalProperties": _int(),
                            "description": "refused buys by error code"},
             "conversion": {"type": "number", "minimum": 0, "maximum": 1,
                            "description": "buyers / uv"},
             "sold_out_ms": _int(0, None, "from the start to sold out; null if not sold out")
             | {"type": ["integer", "null"]},
             "latency_ms": _obj({q: {"type": ["number", "null"]}
                                 for q in ("p50", "p99", "p999")}),
             "skus": _array(_ref("SkuStats"))},
            {"event_id": _id("event id"), "milestones": _array(_ref("MilestoneView")),
             "registered": _int(0, None, "registered users")},
            "Totals across all workers and instances."),
        "SkuStats": _obj(
            {"id": _str(), "stock": _int(), "sold": _int()},
            {"left": _int(), "orders": _int(), "revenue": _int(),
             "units_paid": _int(), "revenue_paid": _int(),
             "units_returned": _int(0, None, "units given back by cancelled and expired "
                                             "orders"),
             "added": _int(0, None, "units added by the operator"),
             "sold_out_at_ms": _ms(nullable=True),
             "sold_out_ms": _int(0, None, "from the start to this SKU's sell-out; null if "
                                          "not sold out") | {"type": ["integer", "null"]}}),
        "SeriesPoint": _obj(
            {"ts_ms": _ms("the second's start"),
             "attempts": _int(0, None, "buy requests in that second"),
             "orders": _int(0, None, "orders created"),
             "units": _int(0, None, "units sold"),
             "rejections": {"type": "object", "additionalProperties": _int(1),
                            "description": "refused buys by error code (codes with a count)"},
             "left": {"type": "object", "additionalProperties": _int(),
                      "description": "units left per SKU id as of that second (SKUs not "
                                     "measured yet are absent)"},
             "subscribers": _int(0, None, "open event streams, over every worker")}),
        "Series": _obj(
            {"event_id": _id("event id"), "step_ms": _const(1000),
             "from_ms": _ms(), "to_ms": _ms(),
             "points": _array(_ref("SeriesPoint"), description=(
                 "one per second s with from_ms <= s < to_ms, up to now"))}),
        "Report": _obj(
            {"event_id": _id("event id"), "name": _str(),
             "state": _str("where the sale stands now", enum=EVENT_STATES),
             "final": {"type": "boolean", "description": (
                 "true once as_of_ms is at least ends_at_ms + lag_ms: every count of the "
                 "sale is in (paid figures may still grow as reserved orders are paid)")},
             "as_of_ms": _ms("when the figures were read (server time)"),
             "lag_ms": _int(0, None, "as in the stats"),
             "starts_at_ms": _ms(), "ends_at_ms": _ms(),
             "summary": _obj({"zh": _str(), "en": _str()},
                             description="the result in plain words, in each language"),
             "sold_out_ms": _nullable_int("from the start to the last SKU's sell-out; null "
                                          "while any is left"),
             "stock": _int(0, None, "units over every SKU (defined plus added)"),
             "units_sold": _int(0, None, "as in the stats"),
             "units_paid": _int(), "orders": _int(0, None, "orders created"),
             "paid_orders": _int(0, None, "orders paid (from the orders)"),
             "buyers": _int(0, None, "distinct users with an order, counted exactly from "
                                     "the orders"),
             "revenue": _int(0, None, "amounts of the orders holding units (reserved and "
                                      "paid)"),
             "revenue_paid": _int(), "pv": _int(), "uv": _int(), "participants": _int(),
             "registered": _int(), "attempts": _int(0, None, "buy requests"),
             "rejections": {"type": "object", "additionalProperties": _int(),
                            "description": "refused buys by error code (the rejection mix)"},
             "conversion": {"type": "number", "minimum": 0, "maximum": 1,
                            "description": "buyers / uv"},
             "funnel": _array(_ref("FunnelStep"), minItems=5, maxItems=5, description=(
                 "pv, uv, participants, orders, paid (orders), in that order")),
             "peak_rps": _obj({"attempts": _int(0, None, "the most buy requests in one "
                                                        "second of the sale"),
                               "at_ms": _ms("that second (the first of a tie); null without "
                                            "a request", nullable=True)}),
             "per_minute": _array(_ref("ReportMinute"), description=(
                 "each minute from the start up to the end (or now): the orders created "
                 "in it and their units")),
             "per_second": _obj(
                 {"from_ms": _ms("the first second (the start's)", nullable=True),
                  "step_ms": _const(1000),
                  "attempts": _array(_int(), description="buy requests in each second"),
                  "orders": _array(_int(), description="orders created in each second")},
                 description="the series from the start to a few seconds past the last "
                             "second with a request"),
             "latency_ms": _obj({q: {"type": ["number", "null"]}
                                 for q in ("p50", "p99", "p999")}),
             "skus": _array(_ref("ReportSku")),
             "milestones": _array(_ref("ReportMilestone")),
             "goals": _obj({}, {k: _ref("GoalResult") for k in ("units", "revenue", "buyers")},
                           "each goal of the definition against what happened")},
            description="The battle report: the sale's figures put together (docs/API.md, "
                        "\"The report\")."),
        "FunnelStep": _obj({"step": _str(enum=["pv", "uv", "participants", "orders", "paid"]),
                            "count": _int()}),
        "ReportMinute": _obj({"from_ms": _ms("the minute's start"),
                              "to_ms": _ms("its end (a minute later; several minutes "
                                           "later in a sale of more than 720 minutes)"),
                              "orders": _int(), "units": _int()}),
        "ReportSku": {"allOf": [_ref("SkuStats"), _obj(
            {"name": _str(), "price": _int(0, None, "the price after the tiers") |
             {"type": ["integer", "null"]},
             "paid_orders": _int(0, None, "its orders paid")})]},
        "ReportMilestone": {"allOf": [_ref("MilestoneView"), _obj(
            {"after_ms": _nullable_int("from the start to reached_ms; null until reached")})]},
        "GoalResult": _obj({"target": _int(), "actual": _int(),
                            "attainment": {"type": ["number", "null"], "minimum": 0,
                                           "description": "actual / target (null for a "
                                                          "target of 0)"},
                            "reached": {"type": "boolean",
                                        "description": "actual >= target"}}),
        "EventSummary": _obj({"id": _id("event id"), "name": _str(),
                              "state": _str(enum=EVENT_STATES),
                              "starts_at_ms": _ms(), "ends_at_ms": _ms()}),
        "StreamStock": _obj({"sku": _str(), "left": _int(), "sold": _int()}),
        "StreamOrder": {"oneOf": [
            _obj({"sku": _str(), "qty": _int(1),
                  "user": _str("masked user id: its first character, ***, its last "
                               "(u***2)"), "ts_ms": _ms()}),
            _obj({"more": _int(1, None, "orders of this tick beyond the ones sent")},
                 description="the orders of a tick beyond --stream-orders-per-tick")]},
        "StreamState": _obj({"state": _str(enum=EVENT_STATES), "server_time_ms": _ms(),
                             "starts_at_ms": _ms(), "ends_at_ms": _ms()}),
        "StreamMilestone": _obj({"sold": _int(1), "reward": _str(), "reached_ms": _ms()}),
        "Live": _obj({"live": _const(True)}),
        "Ready": _obj({"ready": _const(True)}),
    }


def _components() -> dict:
    responses = {
        name: _error(codes, desc, retry_after=status in RETRY_AFTER_STATUSES)
        for name, (status, codes, desc) in COMMON_ERRORS.items()
    }
    return {
        "schemas": _schemas(),
        "responses": responses,
        "parameters": {
            "EventId": _path_param("event_id", _id("event id") | {"example": "noon"}),
            "OrderId": _path_param("order_id", _str("order id", minLength=1)
                                   | {"example": "noon.tea-500g.5f3a9c0e12ab1"}),
            "SkuId": _path_param("sku", _id("SKU id") | {"example": "tea-500g"}),
            "AssetName": _path_param("name", _str("the file's name") | {"example": "README.txt"}),
            "IdempotencyKey": {
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": "Repeating a buy with the same key (same user, same body) "
                               "within 24 h returns the same 200 body and takes no further "
                               "stock; the same key with another body is 422.",
                "schema": _str(pattern=IDEM_PATTERN, minLength=1, maxLength=255),
            },
        },
        "headers": {
            "RetryAfter": {"description": "seconds to wait before retrying", "required": True,
                           "schema": _int(1)},
        },
        "securitySchemes": {
            "buyerToken": {
                "type": "http", "scheme": "bearer",
                "bearerFormat": "<user_id>.<expires_ms>.<hex HMAC-SHA256>",
                "description": "Buyer token: sig = hex(HMAC-SHA256(user_secret, "
                               "\"<user_id>.<expires_ms>\")); `flashgate token USER_ID` "
                               "prints one.",
            },
            "devUser": {
                "type": "apiKey", "in": "header", "name": "X-User-Id",
                "description": "Dev mode only (no user secret configured): the user id "
                               "itself, [A-Za-z0-9_-]{1,64}.",
            },
            "admin": {"type": "http", "scheme": "bearer",
                      "description": "The operator's admin token, on every /api/v1/admin/ path."},
        },
    }


def _path_param(name: str, schema: dict) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema}


# -- the paths -----------------------------------------------------------------------

ADMIN_ERRORS = ("Unauthenticated", "NotFound", "Unavailable")


def _operations() -> dict:
    """Every operation by its operationId (routes.py names the one of each route);
    paths, methods, path parameters, security and ``planned`` come from the route."""
    conflict = (["conflict"], "The change would break a sale in progress.")
    ops = {
        "putEvent": _op(
            "putEvent", "Create or replace an event", "admin", ADMIN,
            {200: _json(_ref("StoredEvent"), "Replaced."),
             201: _json(_ref("StoredEvent"), "Created."),
             409: conflict},
            ("BadRequest", "Unauthenticated", "Unavailable"),
            body=_ref("EventDefinition"),
            description="After the start, moving the start, removing a SKU, lowering "
                        "stock below units sold or lowering a per-user limit is 409. "
                        "The answer comes once every worker of the instance serves the "
                        "new definition."),
        "getEventDefinition": _op("getEventDefinition", "An event's stored definition", "admin",
                                  ADMIN, {200: _json(_ref("StoredEvent"), "The definition.")},
                                  ADMIN_ERRORS),
        "listEvents": _op("listEvents", "Every event", "admin", ADMIN,
                          {200: _json(_obj({"events": _array(_ref("EventSummary"))}),
                                      "The events.")},
                          ("Unauthenticated", "Unavailable")),
        "getEvent": _op("getEvent", "Public view of an event, served from memory", "events",
                        PUBLIC, {200: _json(_ref("EventView"), "The event.")}, ("NotFound",),
                        description="`left` may lag the truth by at most one broadcast tick "
                                    "(1 s) but is never below 0."),
        "register": _op(
            "register", "Pre-register (remind me)", "events", BUYER,
            {200: _json(_ref("Registration"), "Registered; repeating it is harmless."),
             409: (["ended", "not_started"],
                   "The event has ended, or registration has not opened yet.")},
            ("Unauthenticated", "NotFound", "RateLimited", "Unavailable"),
            description="Open from preheat_at_ms (or creation) until ends_at_ms. When "
                        "registration_required, only registered users can buy."),
        "buy": _op(
            "buy", "Buy units of a SKU", "buying", BUYER,
            {200: _json(_ref("Order"), "The order is committed in Redis and will not "
                                       "be lost."),
             400: (["bad_request"], "Body not JSON, missing sku, qty < 1 or not an "
                                    "integer (or a malformed Idempotency-Key)."),
             409: (BUY_REFUSALS, "Not started, ended, paused, sold out, over the "
                                 "per-user limit, or not registered."),
             422: (["idempotency_mismatch"], "The key was used with a different body.")},
            ("Unauthenticated", "NotFound", "RateLimited", "Unavailable"),
            params=[_ref("IdempotencyKey", "parameters")], body=_ref("BuyRequest")),
        "getOrder": _op("getOrder", "An order (its buyer, or the operator)", "orders",
                        BUYER + ADMIN,
                        {200: _json(_ref("Order"), "The order."),
                         404: (["not_found"], "No such order, or not the caller's.")},
                        ("Unauthenticated", "RateLimited", "Unavailable"),
                        description="A buyer's look-ups count against the client IP's and "
                                    "the user's rate limits; the operator's do not."),
        "markPaid": _op("markPaid", "Payment confirmed", "orders", ADMIN,
                        {200: _json(_ref("Order"), "The order (status paid); repeating is "
                                                   "harmless."),
                         409: (["conflict"], "The order already expired or was cancelled, "
                                             "or is past its pay_by_ms (it expires now).")},
                        ("BadRequest",) + ADMIN_ERRORS,
                        description="No body, or any JSON object (ignored)."),
        "cancelOrder": _op("cancelOrder", "Cancel an order", "orders", ADMIN,
                           {200: _json(_ref("Order"), "The order (status cancelled); its "
                                                      "units return to the pool if the event "
                                                      "has not ended. Repeating is harmless."),
                            409: (["conflict"], "The order is paid or expired, or is past "
                                                "its pay_by_ms (it expires now).")},
                           ("BadRequest",) + ADMIN_ERRORS,
                           description="No body, or any JSON object (ignored)."),
        "addStock": _op("addStock", "Add stock to a SKU", "admin", ADMIN,
                        {200: _json(_ref("StockAdded"), "Stock added; every worker of the "
                                                        "instance serves it."),
                         409: (["ended"], "At or after ends_at_ms.")},
                        ("BadRequest",) + ADMIN_ERRORS, body=_ref("StockAdd")),
        "getStats": _op("getStats", "Totals of an event", "admin", ADMIN,
                        {200: _json(_ref("Stats"), "The figures.")}, ADMIN_ERRORS),
        "exportOrders": _op("exportOrders", "Every order of an event, as JSON lines", "admin",
                            ADMIN,
                            {200: _content("application/x-ndjson",
                                           "One order (JSON object) per line, with "
                                           "its buyer's rewards.",
                                           line_schema=_ref("ExportedOrder"))},
                            ADMIN_ERRORS),
        "exportRegistrations": _op(
            "exportRegistrations", "Every registration of an event, as JSON lines", "admin",
            ADMIN,
            {200: _content("application/x-ndjson",
                           "One {\"user_id\", \"registered_ms\"} per line.",
                           line_schema=_obj({"user_id": _str(), "registered_ms": _ms()}))},
            ADMIN_ERRORS),
        "getSeries": _op(
            "getSeries", "Per-second figures of an event", "admin", ADMIN,
            {200: _json(_ref("Series"), "The series.")},
            ("BadRequest",) + ADMIN_ERRORS,
            description=("Every second's figures, summed over every worker and instance, "
                         "kept until the event's end plus 7 days. Default range: from a "
                         "minute before the start (or the preheat, if earlier) to a minute "
                         "after the end; at most 21,600 points (six hours) per request."),
            params=[{"name": n, "in": "query", "required": False, "schema": _ms()}
                    for n in ("from_ms", "to_ms")]),
        "getReport": _op(
            "getReport", "The battle report of an event", "admin", ADMIN,
            {200: {"description": "The report (JSON), or its page with format=html.",
                   "content": {"application/json": {"schema": _ref("Report")},
                               "text/html": {"schema": {"type": "string"}}}},
             400: (["bad_request"], "format is neither json nor html."),
             404: {"description": "No such event: the error (JSON), or with format=html "
                                  "the not-found page.",
                   "content": {"application/json": {"schema": _error_schema(["not_found"])},
                               "text/html": {"schema": {"type": "string"}}}}},
            ADMIN_ERRORS,
            description="During the sale it says so (final: false); after the end (and "
                        "one counting interval) it is final. The page is rendered by the "
                        "server: numbers and SVG charts inline, no script.",
            params=[{"name": "format", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["json", "html"],
                                "default": "json"}},
                    {"name": "lang", "in": "query", "required": False,
                     "description": "the page's language (else by Accept-Language)",
                     "schema": {"type": "string", "enum": ["zh", "en"]}}]),
        "streamEvent": _op("streamEvent", "Live updates (Server-Sent Events)", "events", PUBLIC,
                           {200: _content("text/event-stream",
                                          "Events `state` (StreamState), `stock` "
                                          "(StreamStock), `order` (StreamOrder) and "
                                          "`milestone` (StreamMilestone): a snapshot first, "
                                          "then a frame per tick with news; ids for "
                                          "Last-Event-ID; `: hb` comments when idle. "
                                          "503 beyond --stream-max-subscribers.")
                            | {"x-flashgate-sse-events": {
                                "state": _ref("StreamState"), "stock": _ref("StreamStock"),
                                "order": _ref("StreamOrder"),
                                "milestone": _ref("StreamMilestone")}}},
                           ("NotFound",)),
        "salePage": _op("salePage", "The buyer's sale page", "pages", PUBLIC,
                        {200: _content("text/html", "The page (a page view of the event)."),
                         404: _content("text/html", "The not-found page: no such event.")},
                        description="One self-contained HTML page (gzipped when accepted), "
                                    "in Chinese or English by Accept-Language."),
        "dashboard": _op("dashboard", "The live dashboard page", "pages", PUBLIC,
                         {200: _content("text/html", "The page; it signs in with the "
                                                     "admin token itself."),
                          404: _content("text/html", "The not-found page: no such event.")}),
        "asset": _op("asset", "A file a page loads apart (a vendored library)", "pages",
                     PUBLIC, {200: {"description": "The file (cached for a day).",
                                    "content": {t.decode().split(";")[0]: {"schema": {
                                        "type": "string"}} for t in ASSET_TYPES.values()}},
                              404: _content("text/html", "The not-found page.")}),
        "livez": _op("livez", "Liveness", "operations", PUBLIC,
                     {200: _json(_ref("Live"), "The process runs.")}),
        "readyz": _op("readyz", "Readiness", "operations", PUBLIC,
                      {200: _json(_ref("Ready"), "The worker can sell."),
                       503: (["unavailable"], "Redis unreachable, events not loaded, clock "
                                              "off or draining.")}),
        "metrics": _op("metrics", "Prometheus metrics (names start with flashgate_)",
                       "operations", PUBLIC,
                       {200: _content("text/plain; version=0.0.4; charset=utf-8",
                                      "Prometheus text format 0.0.4: the instance's "
                                      "figures summed over its workers.")}),
        "openapi": _op("openapi", "This document", "operations", PUBLIC,
                       {200: _json({"type": "object"}, "The OpenAPI document.")}),
    }
    for action in ("pause", "resume"):
        ops[f"{action}Event"] = _op(f"{action}Event", f"Kill switch: {action} the sale", "admin",
                                    ADMIN, {200: _json(_ref("PauseState"), "Done.")},
                                    ADMIN_ERRORS)
    return ops


_PARAMETERS = {"event_id": "EventId", "order_id": "OrderId", "sku": "SkuId",
               "name": "AssetName"}


def _paths() -> dict:
    """The paths of the route table (routes.py), each route with its operation."""
    ops = _operations()
    paths: dict = {}
    for route in ROUTES:
        op = ops[route.op]
        if route.handler is None:
            op["x-flashgate-status"] = "planned"
        item = paths.setdefault(route.pattern, {})
        if route.params:
            item["parameters"] = [_ref(_PARAMETERS[n], "parameters") for n in route.params]
        item[route.method.lower()] = op
    return dict(sorted(paths.items()))


def document() -> dict:
    """The OpenAPI 3.1 document, as a new dict (safe to change)."""
    return copy.deepcopy(_build())


def _build() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "flashgate HTTP API", "version": f"1 (flashgate {__version__})",
                 "description": DESCRIPTION},
        "tags": [{"name": n} for n in ("events", "buying", "orders", "admin", "pages",
                                       "operations")],
        "security": PUBLIC,
        "paths": _paths(),
        "webhooks": _webhooks(),
        "components": _components(),
    }


def _webhooks() -> dict:
    """The notifications flashgate POSTs to an event's webhook_url (one entry: the
    body's ``type`` says which)."""
    kinds = ["reminder", "order.created", "order.paid", "order.cancelled", "order.expired",
             "milestone.reached", "sku.sold_out", "event.ended"]
    notification = _obj(
        {"id": _str("unique delivery id: de-duplicate by it (delivery is at least once)"),
         "type": _str(enum=kinds), "event_id": _id("event id"),
         "ts_ms": _ms("when what it tells happened"),
         "data": {"type": "object", "description":
                  "reminder: {starts_at_ms, offset_s, batch, batches, users}; order.*: the "
                  "order; milestone.reached: {sold, reward, reached_ms, order_id}; "
                  "sku.sold_out: {sku, sold_out_ms, stock}; event.ended: the totals"}})
    return {"notification": {"post": {
        "operationId": "notification",
        "summary": "A notification about an event (to its webhook_url)",
        "parameters": [{
            "name": "X-Flashgate-Signature", "in": "header", "required": True,
            "description": "t=<ms>,v1=<hex HMAC-SHA256(webhook secret, \"<t>.<body>\")>: "
                           "check it over the raw body, and refuse a t far from your clock",
            "schema": {"type": "string", "pattern": "^t=[0-9]+,v1=[0-9a-f]{64}$"}}],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": notification}}},
        "responses": {"2XX": {"description": "Acknowledged; anything else is retried "
                                             "with back-off, then given up."}},
    }}}


@cache
def document_bytes() -> bytes:
    """``document()`` as JSON, encoded once."""
    return orjson.dumps(_build())
