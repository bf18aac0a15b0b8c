"""Stock ledger (Cython) and the Redis side of the purchase path."""
