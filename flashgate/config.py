"""Settings of ``flashgate serve``: command-line flags, each also an environment
variable ``FLASHGATE_<NAME>`` (flags win)."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields


@dataclass(slots=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 0  # 0 = the CPU count
    redis: str = ""  # empty: start an embedded private redis-server
    event: str = ""  # a JSON event definition to create or replace at start
    data_dir: str = "./.flashgate"
    admin_token: str = ""  # empty: generated once and kept in data_dir/admin_token
    user_secret: str = ""  # empty: dev mode, X-User-Id identifies buyers
    appendfsync: str = "everysec"  # embedded Redis: everysec or always
    demo: bool = True  # load the demo event when no event exists
    # limiter (rate <= 0 turns a limit off); per worker process
    ip_rate: float = 50.0
    ip_burst: float = 100.0
    user_rate: float = 5.0
    user_burst: float = 10.0
    global_rate: float = 0.0
    global_burst: float = 1000.0
    limiter_capacity: int = 1 << 20
    trusted_proxies: str = ""  # CIDRs whose X-Forwarded-For is believed, comma-separated
    proxy_protocol_from: str = ""  # CIDRs of L4 balancers that must send a PROXY header
    # purchase path
    commit_queue: int = 20000  # reservations waiting for Redis per worker; beyond: 503
    commit_flights: int = 2  # group-commit writes in flight per worker (batches grow under load)
    wait_queue: int = 10000  # requests parked on units in flight, per worker; beyond: 503
    wait_timeout: float = 2.0  # seconds a parked request may wait; then 503
    refresh_interval: float = 0.1  # seconds between reads of every SKU's sold / stock
    stats_interval: float = 0.5  # seconds between flushes of counters to Redis
    max_clock_skew_ms: int = 2000  # refuse to sell beyond this difference to Redis TIME
    # shutdown
    drain_delay: float = 0.0  # seconds /readyz says 503 before the listener closes
    drain_grace: float = 10.0  # seconds in-flight requests may take to finish
    # HTTP limits
    max_body: int = 16 * 1024
    keepalive_timeout: float = 75.0
    head_timeout: float = 10.0
    max_connections: int = 10000
    log_level: str = "info"

    def to_dict(self) -> dict:
        return asdict(self)


_HELP = {
    "host": "address to listen on",
    "port": "TCP port (0 picks a free one and prints it)",
    "workers": "worker processes sharing the port (default: CPU count)",
    "redis": "Redis URL (redis://host:port/db or unix:///path); none: embedded redis-server",
    "event": "JSON file with an event definition (PUT body plus \"id\") to load at start",
    "data_dir": "directory of the embedded Redis's data and the generated admin token",
    "admin_token": "operator bearer token (default: generated, kept in the data dir)",
    "user_secret": "HMAC secret of buyer tokens (none: dev mode, X-User-Id accepted)",
    "appendfsync": "embedded Redis AOF fsync policy: everysec or always",
    "demo": "load a demo event when Redis holds no event",
    "trusted_proxies": "comma-separated CIDRs of load balancers whose X-Forwarded-For is "
                       "believed (the right-most untrusted hop is the client)",
    "proxy_protocol_from": "comma-separated CIDRs of load balancers whose connections must "
                           "open with a PROXY protocol v1/v2 header (its source address is "
                           "the client; v2 LOCAL health checks accepted)",
}


def _env_name(name: str) -> str:
    return "FLASHGATE_" + name.upper()


def _coerce(kind, raw: str):
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return kind(raw)


def parser(prog: str = "flashgate serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run the flash-sale gateway. Every option is also an environment "
        "variable FLASHGATE_<NAME> (e.g. FLASHGATE_PORT=8080).",
    )
    defaults = Config()
    for f in fields(Config):
        kind = type(getattr(defaults, f.name))
        flag = "--" + f.name.replace("_", "-")
        env = os.environ.get(_env_name(f.name))
        default = _coerce(kind, env) if env is not None else getattr(defaults, f.name)
        help_ = _HELP.get(f.name, f.name.replace("_", " "))
        help_ += f" [env {_env_name(f.name)}, default {getattr(defaults, f.name)!r}]"
        if kind is bool:
            p.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=help_)
        else:
            p.add_argument(flag, default=default, type=kind, help=help_)
    return p


def from_args(argv: list[str] | None = None) -> Config:
    ns = parser().parse_args(argv)
    cfg = Config(**{f.name: getattr(ns, f.name) for f in fields(Config)})
    if cfg.workers <= 0:
        cfg.workers = os.cpu_count() or 1
    if cfg.appendfsync not in ("everysec", "always"):
        raise SystemExit("flashgate: --appendfsync must be everysec or always")
    from flashgate.gateway.clientip import ClientIP, Networks

    try:
        ClientIP(cfg.trusted_proxies)
    except ValueError as e:
        raise SystemExit(f"flashgate: --trusted-proxies: {e}") from None
    try:
        Networks(cfg.proxy_protocol_from)
    except ValueError as e:
        raise SystemExit(f"flashgate: --proxy-protocol-from: {e}") from None
    return cfg
