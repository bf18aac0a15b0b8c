"""Rate limiting: GCRA token buckets in a fixed-size table (Cython)."""

from flashgate.limiter._gcra import MAX_NOW_US, Gcra, Limiter

__all__ = ["MAX_NOW_US", "Gcra", "Limiter"]
