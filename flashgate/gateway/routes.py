"""The HTTP API as data: every route, once.

The router (routing.py) compiles this table; the OpenAPI document (openapi.py)
is made from it. A route names its handler as ``"<area>.<name>"`` (an attribute of
the handlers of gateway/handlers/), or ``BUY`` for the purchase, which the C path
(``_buy.BuyPath``) serves; a route without a handler is part of the contract
(docs/API.md) but not served yet: it answers 404 like an unknown path, and the
OpenAPI document marks it ``x-flashgate-status: planned``.
"""

from __future__ import annotations

from dataclasses import dataclass

PUBLIC = "public"
BUYER = "buyer"
OPERATOR = "operator"

BUY = "buy"  # the purchase's handler: the C path

ADMIN_PREFIX = "/api/v1/admin/"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str  # with {name} parameters, each one whole path segment
    op: str  # its OpenAPI operationId
    access: tuple[str, ...]  # who may call it
    handler: str | None  # "<area>.<name>", BUY, or None (planned)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(s[1:-1] for s in self.pattern.split("/") if s.startswith("{"))


_EV = "/api/v1/events/{event_id}"
_ADMIN_EV = "/api/v1/admin/events/{event_id}"

ROUTES: tuple[Route, ...] = (
    # the sale, public and buyers'
    Route("GET", _EV, "getEvent", (PUBLIC,), "public.event_view"),
    Route("POST", _EV + "/buy", "buy", (BUYER,), BUY),
    Route("POST", _EV + "/register", "register", (BUYER,), "buyer.register"),
    Route("GET", _EV + "/stream", "streamEvent", (PUBLIC,), "public.stream"),
    Route("GET", "/e/{event_id}", "salePage", (PUBLIC,), "pages.sale"),
    Route("GET", "/api/v1/orders/{order_id}", "getOrder", (BUYER, OPERATOR),
          "buyer.get_order"),
    # the operator's
    Route("GET", "/api/v1/admin/events", "listEvents", (OPERATOR,), "operator.list_events"),
    Route("PUT", _ADMIN_EV, "putEvent", (OPERATOR,), "operator.put_event"),
    Route("GET", _ADMIN_EV, "getEventDefinition", (OPERATOR,), "operator.get_event"),
    Route("POST", _ADMIN_EV + "/pause", "pauseEvent", (OPERATOR,), "operator.pause"),
    Route("POST", _ADMIN_EV + "/resume", "resumeEvent", (OPERATOR,), "operator.resume"),
    Route("POST", _ADMIN_EV + "/skus/{sku}/stock", "addStock", (OPERATOR,),
          "lifecycle.add_stock"),
    Route("GET", _ADMIN_EV + "/stats", "getStats", (OPERATOR,), "figures.stats"),
    Route("GET", _ADMIN_EV + "/orders", "exportOrders", (OPERATOR,), "operator.orders"),
    Route("GET", _ADMIN_EV + "/registrations", "exportRegistrations", (OPERATOR,),
          "operator.registrations"),
    Route("GET", _ADMIN_EV + "/series", "getSeries", (OPERATOR,), "figures.series"),
    Route("GET", _ADMIN_EV + "/report", "getReport", (OPERATOR,), "figures.report"),
    Route("POST", "/api/v1/admin/orders/{order_id}/paid", "markPaid", (OPERATOR,),
          "lifecycle.mark_paid"),
    Route("POST", "/api/v1/admin/orders/{order_id}/cancel", "cancelOrder", (OPERATOR,),
          "lifecycle.cancel"),
    Route("GET", "/dashboard/{event_id}", "dashboard", (PUBLIC,), "pages.dashboard"),
    Route("GET", "/assets/{name}", "asset", (PUBLIC,), "pages.asset"),
    # operations
    Route("GET", "/livez", "livez", (PUBLIC,), "operations.livez"),
    Route("GET", "/readyz", "readyz", (PUBLIC,), "operations.readyz"),
    Route("GET", "/metrics", "metrics", (PUBLIC,), "operations.metrics"),
    Route("GET", "/openapi.json", "openapi", (PUBLIC,), "operations.openapi"),
)
