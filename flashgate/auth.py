"""Buyer tokens and operator authentication (API.md, "Identity").

A buyer token is ``<user_id>.<expires_ms>.<hex HMAC-SHA256(secret, "<user_id>.<expires_ms>")>``.
Verified tokens are remembered (bounded) so a hammering client costs one dict
lookup, not one HMAC, per request; the expiry is still checked every time.
"""

from __future__ import annotations

import hmac
import re
import time

USER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
IDEM_RE = re.compile(r"[\x21-\x7e]{1,255}\Z")
# the bytes of user, event and SKU ids (and so of order ids, with "."): none needs
# escaping in JSON
ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def user_from_header(raw: bytes) -> str | None:
    """The user id of an ``X-User-Id`` value if it matches ``USER_RE``, else None.
    (Deleting the allowed bytes leaves nothing: one C pass, no decode or regex first.)"""
    if not 0 < len(raw) <= 64 or raw.translate(None, ID_CHARS):
        return None
    return raw.decode("ascii")


def sign(secret: bytes, user_id: str, expires_ms: int) -> str:
    msg = f"{user_id}.{expires_ms}".encode()
    return f"{user_id}.{expires_ms}." + hmac.digest(secret, msg, "sha256").hex()


def mint(secret: bytes, user_id: str, ttl_s: int = 3600) -> str:
    if not USER_RE.match(user_id):
        raise ValueError("user id must match [A-Za-z0-9_-]{1,64}")
    return sign(secret, user_id, time.time_ns() // 1_000_000 + ttl_s * 1000)


class TokenVerifier:
    """Checks buyer tokens; ``user(token_bytes, now_ms)`` -> user id or None."""

    def __init__(self, secret: bytes, cache_size: int = 65536):
        self.secret = secret
        self.cache: dict[bytes, tuple[str, int]] = {}
        self.cache_size = cache_size

    def user(self, token: bytes, now_ms: int) -> str | None:
        hit = self.cache.get(token)
        if hit is not None:
            return hit[0] if hit[1] > now_ms else None
        parts = token.split(b".")
        if len(parts) != 3 or len(token) > 200:
            return None
        uid_b, exp_b, sig = parts
        try:
            uid = uid_b.decode("ascii")
            exp = int(exp_b)
        except (UnicodeDecodeError, ValueError):
            return None
        if not USER_RE.match(uid) or exp <= now_ms:
            return None
        want = hmac.digest(self.secret, uid_b + b"." + exp_b, "sha256").hex().encode()
        if not hmac.compare_digest(want, sig):
            return None
        if len(self.cache) >= self.cache_size:
            self.cache.clear()
        self.cache[token] = (uid, exp)
        return uid


def admin_ok(header: bytes | None, expected: bytes) -> bool:
    """``Authorization: Bearer <admin_token>``, compared in constant time; an empty
    expected token never matches."""
    if not expected or header is None or not header.startswith(b"Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip(), expected)
