"""The signature of a notification (API.md, Webhooks):

    X-Flashgate-Signature: t=<ms>,v1=<hex HMAC-SHA256(webhook secret, "<t>.<body>")>

``t`` is when this attempt was sent (milliseconds since the epoch); a receiver checks
the HMAC over the exact bytes of the body, refuses a ``t`` too far from its clock
(a replay), and de-duplicates by the body's ``id``. ``verify`` is what a receiver
written in Python does.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Flashgate-Signature"
DEFAULT_TOLERANCE_MS = 5 * 60 * 1000


def signature(secret: bytes, body: bytes, t_ms: int) -> str:
    """The header's value for ``body`` sent at ``t_ms``."""
    mac = hmac.new(secret, b"%d." % t_ms + body, hashlib.sha256).hexdigest()
    return f"t={t_ms},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, now_ms: int | None = None,
           tolerance_ms: int = DEFAULT_TOLERANCE_MS) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` and its time is within
    ``tolerance_ms`` of ``now_ms`` (default: this host's clock)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        t = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if abs(now - t) > tolerance_ms:
        return False
    want = hmac.new(secret, b"%d." % t + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(want, v) for v in fields.get("v1", []))
