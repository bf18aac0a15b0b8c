"""Settings of ``flashgate serve``: command-line flags, each also an environment
variable ``FLASHGATE_<NAME>`` (flags win).

``from_args`` parses and checks them and settles the identity mode; whatever cannot
work raises ``ConfigError`` (``flashgate serve`` prints it and exits 2) before
anything is started or written:

* secrets come from a flag, a variable, or a file (``--user-secret-file``,
  ``--admin-token-file``, ``--webhook-secret-file``: nothing in the process list); the
  user secret and the webhook secret have at least 32 bytes, the admin token at least
  16 characters; an empty value is no value;
* without a user secret buyers are whoever ``X-User-Id`` says (dev identity). That
  is allowed only with ``--dev``, or for the out-of-the-box demo: a loopback address
  and the embedded Redis (``dev`` is then turned on, and the banner says so).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import stat
from dataclasses import MISSING, asdict, dataclass, field, fields

from flashgate import __version__

MIN_USER_SECRET_BYTES = 32
MIN_ADMIN_TOKEN_CHARS = 16
MIN_WEBHOOK_SECRET_BYTES = 32

_GROUPS = {
    "listen": "listening",
    "redis": "Redis and the data directory",
    "identity": "identity and secrets (values of secrets: prefer the variables or the files, "
                "a flag's value is visible in the process list)",
    "events": "events",
    "limits": "rate limits (per worker process; a rate <= 0 turns its limit off)",
    "path": "purchase path",
    "shutdown": "shutdown (SIGTERM / SIGINT)",
    "http": "HTTP limits",
    "stream": "the event stream (GET /api/v1/events/{id}/stream, Server-Sent Events; per "
              "worker process)",
    "webhooks": "webhooks (notifications POSTed to an event's webhook_url, signed with the "
                "webhook secret; sent by a process of their own, never by a worker)",
    "misc": "other",
}


def _opt(default, group: str, help: str, metavar: str = ""):  # noqa: A002 - argparse's word
    return field(default=default, metadata={"group": group, "help": help, "metavar": metavar})


@dataclass(slots=True)
class Config:
    host: str = _opt("127.0.0.1", "listen",
                     "address to listen on; 0.0.0.0 (every IPv4 address) or :: (every "
                     "address) takes connections from other hosts, and then needs a user "
                     "secret or --dev")
    port: int = _opt(8080, "listen", "TCP port (0: a free one, printed at start)")
    workers: int = _opt(0, "listen",
                        "worker processes sharing the port; a dead one is restarted "
                        "(0: the CPU count)")
    redis: str = _opt("", "redis",
                      "Redis URL: redis://[[user]:password@]host[:port][/db], rediss://... "
                      "for TLS (certificate verified; ?ssl_ca_certs=/path/ca.pem for a private "
                      "CA), or unix:///path.sock[?db=N]; a password is better given by the "
                      "variable. Empty: a private embedded redis-server in the data directory",
                      "URL")
    data_dir: str = _opt("./.flashgate", "redis",
                         "directory of this server, locked while it runs (one server per "
                         "directory): the embedded Redis's data and the generated admin token; "
                         "mode 0700")
    appendfsync: str = _opt("everysec", "redis",
                            "embedded Redis: when its append-only file is fsynced, everysec "
                            "(a machine crash can lose about 1 s of orders) or always (an fsync "
                            "per commit batch)", "POLICY")
    commit_replicas: int = _opt(0, "redis",
                                "replicas that must hold a commit batch before its sales are "
                                "answered 200: the batch is followed by WAIT N (same write, "
                                "no extra round trip); fewer within the timeout: its sales "
                                "are answered 503 (committed on the master, not known "
                                "durable; an Idempotency-Key retry finds the order). 0: no "
                                "WAIT, a 200 once the master has the order")
    commit_replicas_timeout: int = _opt(1000, "redis",
                                        "milliseconds WAIT waits for --commit-replicas "
                                        "replicas; then that batch's sales get 503")
    dev: bool = _opt(False, "identity",
                     "dev identity: buyers are whoever the X-User-Id header names, anyone can "
                     "buy as anyone (needed without a user secret, except for the loopback "
                     "demo with the embedded Redis)")
    user_secret: str = _opt("", "identity",
                            f"HMAC secret of buyer tokens, at least {MIN_USER_SECRET_BYTES} "
                            "bytes; mint tokens with `flashgate token USER_ID`")
    user_secret_file: str = _opt("", "identity",
                                 "file holding the user secret (surrounding whitespace ignored)")
    admin_token: str = _opt("", "identity",
                            f"operator bearer token, at least {MIN_ADMIN_TOKEN_CHARS} "
                            "characters; none: one is generated into DATA_DIR/admin_token "
                            "(mode 0600) and reused")
    admin_token_file: str = _opt("", "identity",
                                 "file holding the admin token (surrounding whitespace ignored)")
    max_token_ttl: int = _opt(86400, "identity",
                              "seconds: a buyer token that expires further ahead than this is "
                              "refused (flashgate token refuses to mint one)")
    event: str = _opt("", "events",
                      "JSON file with an event (the PUT body of docs/API.md plus \"id\"), "
                      "created or replaced at start", "FILE")
    demo: bool = _opt(True, "events",
                      "load a demo event (starts now, runs 30 minutes) when Redis holds no event")
    ip_rate: float = _opt(50.0, "limits", "requests/s per client IP")
    ip_burst: float = _opt(100.0, "limits", "requests a client IP may send at once")
    user_rate: float = _opt(5.0, "limits", "purchase requests/s per buyer")
    user_burst: float = _opt(10.0, "limits", "purchase requests a buyer may send at once")
    global_rate: float = _opt(0.0, "limits", "purchases/s admitted into the ledger")
    global_burst: float = _opt(1000.0, "limits",
                               "purchases admitted at once above the global rate")
    limiter_capacity: int = _opt(1 << 20, "limits",
                                 "slots of each rate-limit table (16 bytes each; rounded up "
                                 "to a power of two)")
    trusted_proxies: str = _opt("", "limits",
                                "comma-separated CIDRs of load balancers whose X-Forwarded-For "
                                "is believed (the right-most untrusted hop is the client)", "CIDRS")
    proxy_protocol_from: str = _opt("", "limits",
                                    "comma-separated CIDRs of load balancers whose connections "
                                    "must open with a PROXY protocol v1/v2 header (its source "
                                    "address is the client; v2 LOCAL health checks accepted)",
                                    "CIDRS")
    commit_queue: int = _opt(20000, "path",
                             "reservations waiting for Redis, per worker; beyond it a purchase "
                             "gets 503")
    commit_flights: int = _opt(2, "path",
                               "group-commit writes to Redis in flight at once, per worker "
                               "(batches grow under load)")
    wait_queue: int = _opt(10000, "path",
                           "requests parked on units in flight, per worker; beyond it 503")
    wait_timeout: float = _opt(2.0, "path",
                               "seconds a parked request may wait for its units; then 503")
    refresh_interval: float = _opt(0.1, "path",
                                   "seconds between reads of every SKU's sold and stock counts")
    stats_interval: float = _opt(0.5, "path", "seconds between flushes of counters to Redis")
    sweep_interval: float = _opt(0.5, "path",
                                 "seconds between passes of the payment-timeout sweeper (an "
                                 "unpaid order expires at most this long after its deadline)")
    max_clock_skew_ms: int = _opt(2000, "path",
                                  "milliseconds this host's clock may differ from Redis TIME; "
                                  "beyond, no sale")
    drain_delay: float = _opt(0.0, "shutdown",
                              "seconds /readyz answers 503 before the listener closes")
    drain_grace: float = _opt(10.0, "shutdown",
                              "seconds requests in flight and their commits may take to finish")
    max_body: int = _opt(16 * 1024, "http", "largest request body, bytes")
    keepalive_timeout: float = _opt(75.0, "http",
                                    "seconds an idle keep-alive connection is kept open")
    head_timeout: float = _opt(10.0, "http",
                               "seconds a client may take to send a request's head")
    max_connections: int = _opt(10000, "http",
                                "open connections per worker; beyond, a new one gets 503")
    stream_tick: float = _opt(0.25, "stream",
                              "seconds between a stream's frames: what changed is sent to "
                              "every subscriber once per tick")
    stream_heartbeat: float = _opt(15.0, "stream",
                                   "seconds of silence after which a stream gets a comment "
                                   "line (keeps proxies' idle timers from closing it)")
    stream_max_subscribers: int = _opt(10000, "stream",
                                       "open streams per worker; beyond, a new one gets 503")
    stream_max_buffer: int = _opt(256 * 1024, "stream",
                                  "bytes a subscriber may leave unread; beyond, it is "
                                  "disconnected")
    stream_orders_per_tick: int = _opt(20, "stream",
                                       "order events per tick per event; the rest are "
                                       "summed up in one {\"more\": n}")
    stream_resume_frames: int = _opt(1024, "stream",
                                     "recent frames kept per event for Last-Event-ID resumes; "
                                     "an older id gets a fresh snapshot")
    webhook_secret: str = _opt("", "webhooks",
                               f"HMAC secret that signs notifications, at least "
                               f"{MIN_WEBHOOK_SECRET_BYTES} bytes; none: this instance sends "
                               "none (they wait in Redis for an instance that has it)")
    webhook_secret_file: str = _opt("", "webhooks",
                                    "file holding the webhook secret (surrounding whitespace "
                                    "ignored)")
    webhook_timeout: float = _opt(10.0, "webhooks",
                                  "seconds one delivery attempt may take in all (connect, "
                                  "send, answer)")
    webhook_concurrency: int = _opt(16, "webhooks",
                                    "deliveries this instance sends at once")
    webhook_retry_min: float = _opt(1.0, "webhooks",
                                    "seconds before the first retry; each next one doubles")
    webhook_retry_max: float = _opt(300.0, "webhooks",
                                    "seconds: the longest wait between two attempts")
    webhook_give_up: float = _opt(86400.0, "webhooks",
                                  "seconds after it was queued when a delivery that still "
                                  "fails is given up (a dead letter)")
    log_level: str = _opt("info", "misc", "debug, info, warning or error")
    log_format: str = _opt("json", "misc",
                           "json: one JSON object per line on stdout (ts, level, proc, "
                           "worker, logger, msg, and a happening's event and fields; the "
                           "banner then goes to stderr); text: a human line per record, "
                           "the banner on stdout", "FORMAT")
    access_log: bool = _opt(False, "misc",
                            "a log line per HTTP request (method, path, status, bytes, "
                            "duration in µs, client IP, worker), written in batches; off, "
                            "requests cost the log nothing")

    def to_dict(self) -> dict:
        return asdict(self)


class ConfigError(ValueError):
    """A setting that cannot work; ``flashgate serve`` prints it and exits 2."""


# flags whose value is a secret: visible to every local user in the process list
SECRET_FLAGS = ("--user-secret", "--admin-token", "--webhook-secret")


def env_name(name: str) -> str:
    return "FLASHGATE_" + name.upper()


def _coerce(kind, raw: str, name: str):
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env_name(name)}={raw!r} is not a valid {kind.__name__}") from None


def _kind(f) -> type:
    return type(f.default) if f.default is not MISSING else str


def parser(prog: str = "flashgate serve") -> argparse.ArgumentParser:
    """The ``serve`` options; a set variable ``FLASHGATE_<NAME>`` is an option's default."""
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Run the flash-sale gateway. Every option is also an environment "
        "variable FLASHGATE_<NAME> (e.g. FLASHGATE_PORT=8080); a flag wins over its variable. "
        "Out of the box (no option) it serves a demo sale on 127.0.0.1:8080 from an embedded "
        "Redis, with dev identity.",
    )
    p.add_argument("--version", action="version", version=f"flashgate {__version__}")
    groups = {key: p.add_argument_group(title) for key, title in _GROUPS.items()}
    for f in fields(Config):
        kind = _kind(f)
        flag = "--" + f.name.replace("_", "-")
        env = os.environ.get(env_name(f.name))
        default = _coerce(kind, env, f.name) if env is not None else f.default
        help_ = f.metadata.get("help", f.name.replace("_", " "))
        # (a default is shown when there is one, never a variable's value)
        shown = f", default {f.default!r}" if f.default or kind is not str else ""
        help_ += f" [env {env_name(f.name)}{shown}]"
        group = groups[f.metadata.get("group", "misc")]
        if kind is bool:
            group.add_argument(flag, default=default, action=argparse.BooleanOptionalAction,
                               help=help_)
        else:
            meta = f.metadata.get("metavar") or {int: "N", float: "X"}.get(
                kind, f.name.split("_")[-1].upper())
            group.add_argument(flag, default=default, type=kind, help=help_, metavar=meta)
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_secret_file(path: str, what: str, warnings: list[str] | None = None) -> str:
    """The content of a secret file, stripped of surrounding whitespace. A file other
    users may read is used, with a warning."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} file {path}: {e.strerror or e}") from None
    if warnings is not None and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(f"the {what} file {path} is readable by other users "
                        f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
    try:
        value = raw.decode().strip()
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} file {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"the {what} file {path} is empty")
    return value


def _secret(cfg: Config, name: str, what: str, warnings: list[str]) -> None:
    """Settle ``cfg.<name>`` from its value or its ``<name>_file``."""
    value, path = getattr(cfg, name), getattr(cfg, name + "_file")
    flag = "--" + name.replace("_", "-")
    if value and path:
        raise ConfigError(f"give the {what} once: {flag} / {env_name(name)} or "
                          f"{flag}-file / {env_name(name + '_file')}, not both")
    if path:
        setattr(cfg, name, read_secret_file(path, what, warnings))
        setattr(cfg, name + "_file", os.path.abspath(path))


# Settings whose values outside a range would stop the gateway from working: (name,
# least value, the rule in words).
_BOUNDS = (
    ("commit_queue", 1, "at least 1 reservation"),
    ("commit_flights", 1, "at least 1 flush in flight"),
    ("commit_replicas", 0, "0 or more replicas"),
    ("commit_replicas_timeout", 1, "at least 1 ms (WAIT's 0 would wait for ever)"),
    ("wait_queue", 0, "0 or more requests"),
    ("wait_timeout", 0.0, "0 or more seconds"),
    ("refresh_interval", 0.01, "at least 0.01 s"),
    ("stats_interval", 0.01, "at least 0.01 s"),
    ("sweep_interval", 0.01, "at least 0.01 s"),
    ("max_clock_skew_ms", 0, "0 or more ms"),
    ("drain_delay", 0.0, "0 or more seconds"),
    ("drain_grace", 0.0, "0 or more seconds"),
    ("limiter_capacity", 8, "at least 8 keys"),
    ("max_body", 0, "0 or more bytes"),
    ("keepalive_timeout", 0.1, "at least 0.1 s"),
    ("head_timeout", 0.1, "at least 0.1 s"),
    ("max_connections", 1, "at least 1"),
    ("ip_burst", 1.0, "at least 1"),
    ("user_burst", 1.0, "at least 1"),
    ("global_burst", 1.0, "at least 1"),
    ("stream_tick", 0.01, "at least 0.01 s"),
    ("stream_heartbeat", 0.01, "at least 0.01 s"),
    ("stream_max_subscribers", 0, "0 or more streams"),
    ("stream_max_buffer", 1024, "at least 1024 bytes"),
    ("stream_orders_per_tick", 1, "at least 1 order"),
    ("stream_resume_frames", 1, "at least 1 frame"),
    ("webhook_timeout", 0.1, "at least 0.1 s"),
    ("webhook_concurrency", 1, "at least 1"),
    ("webhook_retry_min", 0.01, "at least 0.01 s"),
    ("webhook_retry_max", 0.01, "at least 0.01 s"),
    ("webhook_give_up", 0.0, "0 or more seconds"),
)


def check_identity(cfg: Config) -> None:
    """Settle ``cfg.dev`` (see the module's docstring); ConfigError when no identity
    mode may be used."""
    if cfg.user_secret:
        if cfg.dev:
            raise ConfigError("--dev and a user secret exclude each other: with a secret, "
                              "buyers prove who they are with signed tokens; drop one of them")
        return
    if cfg.dev:
        return
    if not cfg.redis and is_loopback(cfg.host):
        cfg.dev = True  # the out-of-the-box demo, on this machine only
        return
    where = (f"on {cfg.host or 'every address'}, which other hosts can reach"
             if not is_loopback(cfg.host) else "with an external Redis")
    raise ConfigError(
        f"no user secret: {where}, anyone could buy as anyone (dev identity takes "
        "X-User-Id on trust). Set FLASHGATE_USER_SECRET (at least "
        f"{MIN_USER_SECRET_BYTES} bytes, e.g. `python -c \"import secrets; "
        "print(secrets.token_hex(32))\"`) or --user-secret-file FILE, or pass --dev to "
        "run with dev identity anyway")


def from_args(argv: list[str] | None = None, warnings: list[str] | None = None) -> Config:
    """Parse and check ``flashgate serve``'s options. Warnings (a secret given as a
    flag, a secret file others may read) are appended to ``warnings``."""
    warnings = [] if warnings is None else warnings
    ns = parser().parse_args(argv)
    cfg = Config(**{f.name: getattr(ns, f.name) for f in fields(Config)})
    given = argv if argv is not None else []
    for flag in SECRET_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in given):
            warnings.append(f"{flag} is visible to every local user in the process list: "
                            f"prefer {env_name(flag[2:].replace('-', '_'))} or {flag}-file")
    _secret(cfg, "user_secret", "user secret", warnings)
    _secret(cfg, "admin_token", "admin token", warnings)
    _secret(cfg, "webhook_secret", "webhook secret", warnings)
    if cfg.user_secret and len(cfg.user_secret.encode()) < MIN_USER_SECRET_BYTES:
        raise ConfigError(f"the user secret is too short: {len(cfg.user_secret.encode())} "
                          f"bytes, at least {MIN_USER_SECRET_BYTES} are needed")
    if cfg.admin_token and len(cfg.admin_token) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(f"the admin token is too short: {len(cfg.admin_token)} characters, "
                          f"at least {MIN_ADMIN_TOKEN_CHARS} are needed")
    if cfg.webhook_secret and len(cfg.webhook_secret.encode()) < MIN_WEBHOOK_SECRET_BYTES:
        raise ConfigError(f"the webhook secret is too short: "
                          f"{len(cfg.webhook_secret.encode())} bytes, at least "
                          f"{MIN_WEBHOOK_SECRET_BYTES} are needed")
    check_identity(cfg)
    if cfg.workers < 0:
        raise ConfigError("--workers must be >= 0 (0: the CPU count)")
    if cfg.workers == 0:
        cfg.workers = os.cpu_count() or 1
    if not 0 <= cfg.port <= 65535:
        raise ConfigError("--port must be in 0-65535")
    if cfg.max_token_ttl <= 0:
        raise ConfigError("--max-token-ttl must be a positive number of seconds")
    for name, least, what in _BOUNDS:
        value = getattr(cfg, name)
        if not value >= least:  # (also NaN)
            raise ConfigError(f"--{name.replace('_', '-')} must be {what} (got {value})")
    if cfg.webhook_retry_max < cfg.webhook_retry_min:
        raise ConfigError("--webhook-retry-max must not be below --webhook-retry-min")
    if cfg.commit_replicas and not cfg.redis:
        raise ConfigError("--commit-replicas needs --redis: the embedded Redis has no replicas "
                          "(every sale would wait for them and get 503)")
    if cfg.appendfsync not in ("everysec", "always"):
        raise ConfigError("--appendfsync must be everysec or always")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("--log-level must be debug, info, warning or error")
    if cfg.log_format not in ("json", "text"):
        raise ConfigError("--log-format must be json or text")
    if cfg.redis:
        from flashgate.core.redisconn import parse_url, tls_context

        try:
            opts = parse_url(cfg.redis)
            if opts["tls"] is not None:
                tls_context(opts["tls"])
        except (ValueError, OSError) as e:
            raise ConfigError(f"--redis: {e}") from None
        tls = opts["tls"] or {}
        if tls.get("ssl_cert_reqs", "").lower() == "none" or \
                tls.get("ssl_check_hostname", "").lower() in ("0", "false", "no", "off"):
            warnings.append("--redis: the Redis server's certificate or name is not checked "
                            "(ssl_cert_reqs=none / ssl_check_hostname=false): anyone on the "
                            "path can pose as Redis")
        if opts["password"] and any(a == "--redis" or a.startswith("--redis=") for a in given):
            warnings.append("the password in --redis is visible to every local user in the "
                            "process list: prefer FLASHGATE_REDIS")
    from flashgate.gateway._net import ClientIP, NetSet

    try:
        ClientIP(cfg.trusted_proxies)
    except ValueError as e:
        raise ConfigError(f"--trusted-proxies: {e}") from None
    try:
        NetSet(cfg.proxy_protocol_from)
    except ValueError as e:
        raise ConfigError(f"--proxy-protocol-from: {e}") from None
    return cfg
