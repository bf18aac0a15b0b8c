"""Buyer tokens checked in C (type stub of the Cython module).

See the theory of operation at the top of ``_token.pyx``; SHA-256 itself is in
``_sha256.h``.
"""

from typing import Final, final

IMPLEMENTATIONS: Final[tuple[str, ...]]
"""The SHA-256 compression functions this build can run on this CPU, the default
first: ``("x86-sha", "portable")`` where the CPU has the x86 SHA extensions (and the
compiler could target them), else ``("portable",)``. Each ``impl`` argument below
takes one of these names, or None for the default."""

@final
class TokenKey:
    """The secret of buyer tokens (API.md, "Identity"), ready to check them.

    ``secret``: the bytes the tokens are signed with (``flashgate.auth.sign``); not
    empty (``ValueError``), not str (``TypeError``). The two HMAC-SHA256 midstates are
    computed here, once; the secret itself is not kept.

    ``max_ttl_ms``: if > 0, a token expiring more than this many milliseconds after
    ``now_ms`` is refused (the operator does not allow tokens to live that long);
    0 (the default): no such limit. ``ValueError`` if negative.

    ``impl``: the SHA-256 compression function, one of ``IMPLEMENTATIONS``
    (``ValueError`` otherwise); None: the first, the fastest this CPU can run.

    A check costs one pass over the header value and, only for a well-formed,
    unexpired token, two or three SHA-256 compressions; nothing is remembered
    between checks.
    """

    max_ttl_ms: Final[int]
    """As given."""
    impl: Final[str]
    """The SHA-256 compression function in use (one of ``IMPLEMENTATIONS``)."""

    def __init__(self, secret: bytes, max_ttl_ms: int = 0, *, impl: str | None = None) -> None: ...
    def user(self, authorization: bytes | None, now_ms: int) -> str | None:
        """The user id of a valid, unexpired buyer token, else None.

        ``authorization`` is the raw ``Authorization`` header value (None when the
        header is absent). Accepted: ``Bearer`` (any case), one or more spaces,
        ``<user_id>.<expires_ms>.<sig>``, then only spaces or tabs; the user id
        ``[A-Za-z0-9_-]{1,64}``, ``expires_ms`` 1 to 15 digits with
        ``now_ms < expires_ms`` (and ``expires_ms <= now_ms + max_ttl_ms`` if
        ``max_ttl_ms > 0``), ``sig`` the 64 lowercase hex digits of
        HMAC-SHA256(secret, ``"<user_id>.<expires_ms>"``), compared in constant time.

        Never raises on any bytes (nor on None or another type: None).
        ``now_ms`` is epoch milliseconds (``OverflowError`` outside a C long long).
        """

def sha256(data: bytes, impl: str | None = None) -> bytes:
    """SHA-256 (FIPS 180-4) of ``data``: 32 bytes. For tests (``impl``: as TokenKey's)."""

def hmac_sha256(key: bytes, msg: bytes, impl: str | None = None) -> bytes:
    """HMAC-SHA256 (RFC 2104) of ``msg`` under ``key``: 32 bytes. For tests (``impl``:
    as TokenKey's)."""
