"""Reproducible flash-sale load scenarios for flashgate and its peers: `python -m bench --help`."""
