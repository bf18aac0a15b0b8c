"""Buyer tokens and operator authentication (API.md, "Identity").

A buyer token is ``<user_id>.<expires_ms>.<hex HMAC-SHA256(secret, "<user_id>.<expires_ms>")>``.
This module signs them (``flashgate token``, tests); the purchase path checks them in
C (gateway/_token.pyx).
"""

from __future__ import annotations

import hmac
import re
import time

USER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
# the bytes of user, event and SKU ids (and so of order ids, with "."): none needs
# escaping in JSON
ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def sign(secret: bytes, user_id: str, expires_ms: int) -> str:
    msg = f"{user_id}.{expires_ms}".encode()
    return f"{user_id}.{expires_ms}." + hmac.digest(secret, msg, "sha256").hex()


def mint(secret: bytes, user_id: str, ttl_s: int = 3600) -> str:
    if not USER_RE.match(user_id):
        raise ValueError("user id must match [A-Za-z0-9_-]{1,64}")
    return sign(secret, user_id, time.time_ns() // 1_000_000 + ttl_s * 1000)


def admin_ok(header: bytes | None, expected: bytes) -> bool:
    """``Authorization: Bearer <admin_token>``, compared in constant time; an empty
    expected token never matches."""
    if not expected or header is None or not header.startswith(b"Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip(), expected)
