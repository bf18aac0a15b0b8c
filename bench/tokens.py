"""Buyer tokens signed before a run, so that wrk does not sign them while it measures.

A buyer token is `<user>.<expires_ms>.<hex HMAC-SHA256(secret, "<user>.<expires_ms>")>`
(flashgate/auth.py). At 64 connections wrk uses most of a core; an HMAC and its hex
encoding per request in wrk's Lua would make the client, not the server, the cost
that differs between the prod and the dev configuration. So the harness signs the
tokens and wrk only reads them (bench/wrk/flashsale.lua, `pool=`):

* random users u1..uN (soldout, rush, scale): one file per bench, written once, read
  whole by wrk's init() into ready-made header lines;
* new users (commit): per wrk run and thread a file of the users that run may need,
  estimated from the rates seen so far; wrk reads one line per request (buffered)
  and signs in Lua only if the file runs out (counted as `signed_live`).

The key's inner and outer pads are hashed once, so a token costs two SHA-256 copies
and updates: about 1.4 µs in CPython.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


class Signer:
    """Signs buyer tokens for one secret and one expiry time."""

    def __init__(self, secret: bytes, expires_ms: int):
        key = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._suffix = b".%d" % expires_ms
        self.expires_ms = expires_ms

    def _sign(self, user: bytes) -> bytes:
        msg = user + self._suffix
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return msg + b"." + outer.hexdigest().encode()

    def token(self, user: str) -> str:
        return self._sign(user.encode()).decode()

    def write(self, path: Path, prefix: str, first: int, count: int) -> None:
        """One token a line for the users `<prefix><first>` .. `<prefix><first + count - 1>`."""
        sign, pre = self._sign, prefix.encode()
        with open(path, "wb") as f:
            for start in range(first, first + count, 65536):
                stop = min(start + 65536, first + count)
                f.write(b"".join(sign(b"%s%d" % (pre, n)) + b"\n" for n in range(start, stop)))
