"""Rate limiting: GCRA token buckets in a fixed-size table (Cython)."""
