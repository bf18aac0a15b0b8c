"""Pre-encoded answers: the hot refusals cost one tuple index and one write.

``BY_CODE[code]`` is the answer of an outcome (core/outcomes.py) that has one of its
own; the rest are the gateway's fixed answers.
"""

from __future__ import annotations

from flashgate.core.outcomes import OUTCOMES
from flashgate.gateway.protocol import build_response, error_response

RETRY = ((b"Retry-After", b"1"),)


def _outcome(o) -> bytes | None:
    if o.status < 400:
        return None
    headers = RETRY if o.status == 503 else ()
    return error_response(o.status, o.name, o.message, headers=headers)


# outcome code -> its answer (None for the codes that are not refusals)
BY_CODE: tuple[bytes | None, ...] = tuple(_outcome(o) for o in OUTCOMES)

NOT_FOUND = error_response(404, "not_found", "no such event, sku or order")
UNAUTHENTICATED = error_response(401, "unauthenticated", "missing or invalid identity")
UNAVAILABLE = error_response(503, "unavailable",
                             "the store is unreachable or overloaded; retry", headers=RETRY)
# --commit-replicas: the order was made on the master, but fewer replicas than asked
# acknowledged it in time; not known durable, so not a 200 (committer.py)
UNREPLICATED = error_response(
    503, "unavailable",
    "the order was taken but not yet copied to enough Redis replicas; retry with the same "
    "Idempotency-Key to get it", headers=RETRY)
STREAM_FULL = error_response(503, "unavailable", "too many streams on this server; retry",
                             headers=RETRY)
BAD_JSON = error_response(400, "bad_request", "the body must be a JSON object")
BAD_SKU = error_response(400, "bad_request", "sku is required and must be a string")
BAD_QTY = error_response(400, "bad_request", "qty must be an integer >= 1")
BAD_IDEM = error_response(400, "bad_request",
                          "Idempotency-Key must be 1-255 visible ASCII characters")
REGISTRATION_NOT_OPEN = error_response(409, "not_started", "registration opens at preheat_at_ms")
READY = build_response(200, b'{"ready":true}')
NOT_READY = error_response(503, "unavailable", "not ready", headers=RETRY)
LIVE = build_response(200, b'{"live":true}')

# 429 with Retry-After in whole seconds, 1..60
RATE_LIMITED: tuple[bytes, ...] = tuple(
    error_response(429, "rate_limited", "too many requests; slow down",
                   headers=((b"Retry-After", str(s).encode()),))
    for s in range(1, 61)
)

# The head build_response(200, body) writes, as a template for the sales' answers.
OK_JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def method_not_allowed(allow: str) -> bytes:
    """405 with the methods the path takes."""
    return error_response(405, "method_not_allowed", "method not allowed on this path",
                          headers=((b"Allow", allow.encode()),))
