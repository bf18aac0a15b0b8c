"""flashgate: a flash-sale gateway with a native stock ledger and group commit to Redis."""

# the one place of the version (pyproject.toml reads it from here)
__version__ = "0.1.0"
