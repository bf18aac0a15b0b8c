"""Slow reference implementations of the gateway's C paths, kept as test oracles."""
