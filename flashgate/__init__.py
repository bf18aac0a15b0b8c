"""flashgate: a flash-sale gateway with a native stock ledger and group commit to Redis."""

__version__ = "0.1.0"
