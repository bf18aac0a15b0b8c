"""The load scenarios: what each starts, sends and measures.

soldout  every buy is answered sold_out (a SKU of 1 unit, bought once before)
commit   ample stock, per_user_limit 1, a new user per request: every buy commits
rush     5 SKUs x 500 units, 200,000 users, 90% buys and 10% views, from before
         the start until sold out and beyond
scale    flashgate alone: requests/s and p99 over connections x workers on the
         sold-out path, then memory per worker after many distinct users (and
         client IPs, when the server trusts X-Forwarded-For)
lifecycle flashgate alone: a rush on an event with a short payment timeout; a payer
         pays a share of the orders as they are committed, the rest expire and are
         sold again to the buyers still trying; then the sweeper's cost per expired
         order, measured apart in a private Redis
live     flashgate alone: the commit load with and without N event-stream subscribers
         (A B A B): each frame's delivery latency after its tick, missed frames, the
         purchases' p99 with and without, the worker's CPU per delivery (also at rest,
         under a trickle of purchases) and its memory per subscriber
replicas flashgate alone: the commit load on a Redis without a replica, on a master
         with one replica (--commit-replicas 0), and on such a pair with
         --commit-replicas 1 (each commit batch followed by WAIT 1), A B C A B C: the
         cost of waiting for the replica in orders/s and CPU per order; the replica's
         copy audited too

Each scenario starts its servers (one private Redis per Redis-backed target), warms
every target up, then runs R repetitions alternating between targets (A B A B ...),
audits the invariants, and stops what it started.

Configurations (`Setup`): flashgate runs in the one an operator runs, `prod` (signed
buyer tokens, a trusted proxy's X-Forwarded-For with a client IP per user, the
server's default rate limits, Redis with AOF fsynced every second) and, as a second
column of the same run, `dev` (X-User-Id, rate limits off, the same Redis). soldout
and commit run both by default (nginx, flashgate-prod, flashgate-dev, fastapi, ...,
repeated); rush and scale run prod. The peers get the main configuration's requests
(prod's when it runs): nginx ignores them, the FastAPI peer verifies the tokens.
"""

from __future__ import annotations

import json
import math
import secrets
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import invariants, lifecycle, live
from .runner import (
    HOST,
    BenchError,
    Proc,
    Processes,
    Redis,
    children_cpu_seconds,
    cpu_seconds,
    http,
    machine_busy_seconds,
    run_wrk,
    start_fastapi,
    start_flashgate,
    start_nginx,
    start_redis,
    status_kib,
)
from .tokens import Signer

SCENARIOS = ("soldout", "commit", "rush", "scale", "lifecycle", "live", "replicas")
TARGETS = ("flashgate", "fastapi", "nginx")
# the order of a repetition; nginx answers a fixed 200: a floor for loopback HTTP,
# meaningless in a sale
SCENARIO_TARGETS = {
    "soldout": ("nginx", "flashgate", "fastapi"),
    "commit": ("nginx", "flashgate", "fastapi"),
    "rush": ("flashgate", "fastapi"),
    "scale": ("flashgate",),
    "lifecycle": ("flashgate",),
    "live": ("flashgate",),
    "replicas": ("flashgate",),
}
CONFIGS = ("prod", "dev")
# what each scenario runs without --config
DEFAULT_CONFIGS = {"soldout": ["prod", "dev"], "commit": ["prod", "dev"], "rush": ["prod"],
                   "scale": ["prod"], "lifecycle": ["prod"], "live": ["prod"],
                   "replicas": ["prod"]}
TRUSTED_PROXIES = "127.0.0.0/8"
DAY_MS = 86_400_000
# the replicas scenario's columns: (label suffix, a replica next to the Redis,
# --commit-replicas)
REPLICA_COLUMNS = (("", False, 0), ("+replica", True, 0), ("+wait1", True, 1))
# scenarios judged in orders/s (200s to a buy) rather than answers/s
ORDER_SCENARIOS = ("commit", "replicas")
# new users' tokens signed for a run of a target before any rate of it is known (per s)
FIRST_RATE_GUESS = 50_000


@dataclass(frozen=True)
class Setup:
    """A configuration of the servers under test, and of the requests wrk sends them.

    prod: signed buyer tokens (`--user-secret`), `X-Forwarded-For: 10.x.y.z` per user
    from a trusted proxy (`--trusted-proxies 127.0.0.0/8`), the server's default rate
    limits (no limit flag), Redis with `appendonly yes`, `appendfsync everysec`.
    dev: `X-User-Id`, `--ip-rate 0 --user-rate 0`, the same Redis.
    """

    name: str
    tokens: bool
    xff: bool
    limited: bool
    aof: bool
    limits: tuple = ()  # the server's defaults (name, value), when limited

    @classmethod
    def make(cls, name: str, aof: bool = True, limits: dict | None = None) -> Setup:
        prod = name == "prod"
        return cls(name, tokens=prod, xff=prod, limited=prod, aof=aof,
                   limits=tuple((limits or {}).items()) if prod else ())

    def flashgate_flags(self) -> list[str]:
        """Flags besides `--user-secret` (which start_target adds with the secret)."""
        flags = ["--trusted-proxies", TRUSTED_PROXIES] if self.xff else []
        if not self.limited:
            flags += ["--ip-rate", "0", "--user-rate", "0"]
        return flags

    def limits_text(self) -> str:
        if not self.limited:
            return "off (--ip-rate 0 --user-rate 0)"
        lim = dict(self.limits)
        if not lim:
            return "the server's defaults (not read)"

        def rate(prefix):
            r = lim.get(f"{prefix}_rate", 0)
            return f"{r:g}/s burst {lim.get(f'{prefix}_burst', 0):g}" if r > 0 else "off"

        return (f"defaults, per worker: per IP {rate('ip')}, per user {rate('user')}, "
                f"global {rate('global')}")

    def describe(self, kind: str) -> dict:
        """What a row of `kind` ran with, in words, for the reports."""
        redis = ("appendonly yes, appendfsync everysec, no automatic AOF rewrite" if self.aof
                 else "no persistence (appendonly no)")
        xff = f"X-Forwarded-For 10.x.y.z, one per user, sent through a trusted proxy " \
              f"({TRUSTED_PROXIES})"
        if kind == "flashgate":
            flags = (["--user-secret", "<secret>"] if self.tokens else []) + self.flashgate_flags()
            return {
                "identity": "signed bearer token per user (--user-secret)" if self.tokens
                            else "X-User-Id (dev mode)",
                "client_ip": xff if self.xff else "the connection's (127.0.0.1)",
                "limits": self.limits_text(),
                "redis": redis,
                "flags": " ".join(flags),
            }
        sent = "signed bearer token" if self.tokens else "X-User-Id"
        if kind == "fastapi":
            return {
                "identity": f"{sent}, verified (HMAC-SHA256, stdlib hmac)" if self.tokens
                            else "X-User-Id",
                "client_ip": "X-Forwarded-For sent, not used" if self.xff else "not used",
                "limits": "none",
                "redis": redis,
                "flags": "PEER_USER_SECRET set" if self.tokens else "",
            }
        return {"identity": f"{sent} sent, not read", "client_ip": "not used",
                "limits": "none", "redis": "none", "flags": "return 200"}


@dataclass
class Settings:
    scenarios: list[str]
    targets: list[str]
    reps: int = 3
    duration: int = 10
    warmup: int = 3
    connections: int = 64
    threads: int = 1
    workers: int = 1
    configs: list[str] | None = None  # None: DEFAULT_CONFIGS per scenario
    aof: bool = True
    limits: dict | None = None  # flashgate's default limits, read from `serve --help`
    users: int = 200_000
    commit_stock: int = 10_000_000
    rush_skus: int = 5
    rush_stock: int = 500
    rush_lead: int = 1
    rush_run: int = 6
    scale_connections: list[int] = field(default_factory=lambda: [16, 64, 256, 1024])
    scale_workers: list[int] = field(default_factory=lambda: [1, 2])
    distinct: int = 1_000_000
    memory_flags: list[str] = field(default_factory=list)
    xff_flags: list[str] = field(default_factory=list)
    life_skus: int = 2
    life_stock: int = 300
    life_timeout_s: int = 2  # the event's payment_timeout_s
    life_pay_pct: float = 60.0  # share of the orders the payer pays
    life_run: int = 30  # seconds of load after the opening at most (ends once all is paid)
    life_sweep_orders: int = 5000  # due orders of the sweeper's micro-measurement
    live_subscribers: int = 10_000  # event-stream subscribers of the live scenario
    live_idle: float = 5.0  # seconds of each of its measurements at rest
    live_rate: float = 100.0  # purchases/s of the trickle at rest
    live_settle: float = 2.0  # seconds after the subscribers connected, before RSS is read
    serve_defaults: dict | None = None  # --max-connections, --stream-max-subscribers
    flashgate_argv: list[str] | None = None


@dataclass
class Target:
    kind: str  # flashgate, fastapi, nginx
    setup: Setup
    proc: Proc
    port: int
    redis: Redis | None = None
    workers: int = 1
    client: object = None
    suffix: str = ""  # of the column's name (the replicas scenario's columns)
    replica: Redis | None = None  # a replica of `redis` (replicas scenario)

    @property
    def name(self) -> str:
        """The column: flashgate-prod, flashgate-dev, fastapi, nginx."""
        base = f"flashgate-{self.setup.name}" if self.kind == "flashgate" else self.kind
        return base + self.suffix

    def __post_init__(self):
        if self.redis is not None:
            self.client = self.redis.client()


def now_ms() -> int:
    return int(time.time() * 1000)


def make_event(event_id: str, skus: list[dict], starts_at_ms: int | None = None) -> dict:
    start = now_ms() - 60_000 if starts_at_ms is None else starts_at_ms
    return {
        "id": event_id,
        "name": f"bench {event_id}",
        "starts_at_ms": start,
        "ends_at_ms": start + DAY_MS,
        "preheat_at_ms": start - 60_000,
        "registration_required": False,
        "payment_timeout_s": 3600,
        "skus": skus,
        "milestones": [],
    }


def make_sku(sku_id: str, stock: int, limit: int = 1) -> dict:
    return {"id": sku_id, "name": f"item {sku_id}", "price": 100, "original_price": 1000,
            "stock": stock, "per_user_limit": limit}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Bench:
    """Runs the selected scenarios; collects configurations and audits."""

    def __init__(self, settings: Settings, procs: Processes, log=print):
        self.s = settings
        self.procs = procs
        self.log = log
        self.admin_token = secrets.token_hex(16)
        self.secret = secrets.token_hex(32)  # 64 characters (the server takes >= 32 bytes)
        # tokens live 12 h: within the server's default cap of 24 h, longer than any run
        self.signer = Signer(self.secret.encode(), now_ms() + DAY_MS // 2)
        self.pools: dict[int, Path] = {}  # random users' tokens, by pool size
        self.next_user: dict[str, int] = {}  # per column: the next new user's number
        self.rate_seen: dict[str, float] = {}  # per column: its fastest run so far
        self.wrk_runs = 0
        self.configs: list[dict] = []
        self.audits: list[dict] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------ set-up

    def setups_for(self, scenario: str) -> list[Setup]:
        names = self.s.configs or DEFAULT_CONFIGS[scenario]
        return [Setup.make(n, self.s.aof, self.s.limits) for n in CONFIGS if n in names]

    def setups(self) -> dict[str, dict]:
        """The configurations the run measured: per name, per kind of server that ran in
        it, what that server was given."""
        out: dict[str, dict] = {}
        for c in self.configs:
            if "setup" in c:
                out.setdefault(c["config"], {}).setdefault(c["target"], c["setup"])
        return {n: out[n] for n in CONFIGS if n in out}

    def write_event(self, event: dict, tag: str) -> Path:
        path = self.procs.workdir / f"event-{tag}.json"
        path.write_text(json.dumps(event))
        return path

    def start_target(self, kind: str, setup: Setup, event: dict, tag: str, workers: int = 1,
                     flashgate_flags: list[str] | None = None) -> Target:
        secret = self.secret if setup.tokens else None
        name = f"flashgate-{setup.name}-{tag}" if kind == "flashgate" else f"{kind}-{tag}"
        if kind == "nginx":
            proc, port = start_nginx(self.procs)
            return Target("nginx", setup, proc, port)
        redis = start_redis(self.procs, f"redis-{name}", aof=setup.aof)
        event_file = self.write_event(event, name)
        if kind == "fastapi":
            proc, port = start_fastapi(self.procs, redis, event_file, self.admin_token, secret)
            return Target("fastapi", setup, proc, port, redis)
        if self.s.flashgate_argv is None:
            raise BenchError("flashgate is not available (`flashgate serve --help` failed)")
        flags = setup.flashgate_flags() if flashgate_flags is None else flashgate_flags
        proc, port = start_flashgate(self.procs, self.s.flashgate_argv, redis, event_file,
                                     self.admin_token, secret, workers, flags, name)
        return Target("flashgate", setup, proc, port, redis, workers)

    def start_targets(self, scenario: str, setups: list[Setup], event: dict,
                      prepare=None) -> list[Target]:
        """The columns of a scenario, in the order of a repetition: nginx, flashgate in
        each configuration, the FastAPI peer. The peers get the first configuration's
        requests (prod's when it runs)."""
        started: list[Target] = []
        try:
            for kind in SCENARIO_TARGETS[scenario]:
                if kind not in self.s.targets:
                    continue
                for setup in setups if kind == "flashgate" else setups[:1]:
                    t = self.start_target(kind, setup, event, scenario, self.s.workers)
                    started.append(t)
                    if prepare and t.redis is not None:
                        prepare(t)
        except BaseException:
            for t in started:
                self.stop_target(t)
            raise
        return started

    def stop_target(self, t: Target) -> None:
        self.procs.stop(t.proc)
        if t.replica is not None:
            self.procs.stop(t.replica.proc)
        if t.redis is not None:
            self.procs.stop(t.redis.proc)

    def identity(self, user: str, setup: Setup) -> dict:
        if setup.tokens:
            return {"Authorization": f"Bearer {self.signer.token(user)}"}
        return {"X-User-Id": user}

    def put_event(self, t: Target, event: dict) -> None:
        body = {k: v for k, v in event.items() if k != "id"}
        status, resp = http("PUT", f"http://{HOST}:{t.port}/api/v1/admin/events/{event['id']}",
                            body, {"Authorization": f"Bearer {self.admin_token}"})
        if status not in (200, 201):
            raise BenchError(f"{t.name}: PUT event {event['id']} answered {status}: {resp[:300]!r}")

    def buy(self, t: Target, event_id: str, sku: str, user: str) -> tuple[int, bytes]:
        return http("POST", f"http://{HOST}:{t.port}/api/v1/events/{event_id}/buy",
                    {"sku": sku, "qty": 1}, self.identity(user, t.setup))

    def wait_visible(self, t: Target, event_id: str) -> None:
        """An event put through the admin API reaches every worker within a tick."""
        deadline = time.monotonic() + 5
        while http("GET", f"http://{HOST}:{t.port}/api/v1/events/{event_id}")[0] != 200:
            if time.monotonic() > deadline:
                raise BenchError(f"{t.name}: event {event_id} not visible after PUT")
            time.sleep(0.05)

    # ------------------------------------------------------------ tokens

    def random_pool(self, users: int) -> Path:
        """Tokens of users u1..u<users>, one a line: signed once per bench."""
        path = self.pools.get(users)
        if path is None:
            path = self.procs.workdir / f"tokens-u{users}.txt"
            self.signer.write(path, "u", 1, users)
            self.pools[users] = path
        return path

    def attach_pool(self, t: Target, lua: dict, seconds: float, connections: int) -> list[Path]:
        """Adds the signed tokens of a run to its wrk arguments; returns the files to
        delete after it. Random users: the bench's pool. New users: files of this run's
        users, numbered on from the column's previous runs (commit needs every user
        new), sized by the column's fastest run so far; nginx reads the random pool
        round and round (it answers 200 to anything)."""
        if lua.get("auth") != "token" or lua.get("limit"):
            return []  # the memory run signs in wrk: its client's CPU is not measured
        users = int(lua.get("users") or 0)
        if users > 0:
            lua["pool"] = self.random_pool(users)
            return []
        if t.kind == "nginx":
            lua.update(pool=self.random_pool(self.s.users), cycle=1, first=1, per=0)
            return []
        rate = self.rate_seen.get(t.name, FIRST_RATE_GUESS)
        need = int(seconds * rate * 1.3) + 2 * connections
        threads = self.s.threads
        per = math.ceil(need / threads)
        first = self.next_user.get(t.name, 1)
        self.next_user[t.name] = first + threads * per
        base = self.procs.workdir / f"tokens-{t.name}-{self.wrk_runs}-"
        files = []
        for i in range(1, threads + 1):
            path = Path(f"{base}{i}")
            self.signer.write(path, "c", first + (i - 1) * per, per)
            files.append(path)
        lua.update(pool=base, first=first, per=per)
        return files

    # ------------------------------------------------------------ measuring

    def lua_args(self, event: dict, setup: Setup, **extra) -> dict:
        self.wrk_runs += 1
        args = {
            "event": event["id"],
            "skus": ",".join(s["id"] for s in event["skus"]),
            "prefix": f"r{self.wrk_runs}x",
            "auth": "token" if setup.tokens else "dev",
            "seed": self.wrk_runs,
        }
        if setup.tokens:
            args["secret"] = self.secret
        if setup.xff:
            args["xff"] = 1
        args.update(extra)
        return args

    def snapshot(self, t: Target, event: dict) -> dict:
        snap = {"cpu": cpu_seconds(t.proc.tree()), "busy": machine_busy_seconds(),
                "wrk": children_cpu_seconds(), "t": time.monotonic()}
        if t.redis is not None:
            keys = [invariants.sku_prefix(event["id"], s["id"]) + "sold" for s in event["skus"]]
            snap["sold"] = sum(int(x or 0) for x in t.client.mget(keys))
            snap["redis_cpu"] = cpu_seconds([t.redis.proc.pid])
            stats = t.client.info("commandstats")
            snap["cmds"] = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")
            snap["scripts"] = sum(
                v["calls"] for k, v in stats.items()
                if k in ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_fcall")
            )
            snap["waits"] = stats.get("cmdstat_wait", {}).get("calls", 0)
        if t.replica is not None:
            snap["replica_cpu"] = cpu_seconds([t.replica.proc.pid])
        return snap

    def one_run(self, t: Target, event: dict, seconds: int, connections: int,
                lua: dict, rep: int, flag_dir: Path | None = None, until=None,
                around=None) -> dict:
        """One wrk run. `around`: (start, stop), called just before wrk starts and just
        after it ends; what stop returns goes into the record as `around`."""
        t.proc.check_alive()
        files = self.attach_pool(t, lua, seconds, connections)
        extra = None
        try:
            before = self.snapshot(t, event)
            if around is not None:
                around[0]()
            w = run_wrk(t.port, f"/api/v1/events/{event['id']}/buy", seconds, connections,
                        self.s.threads, lua, flag_dir=flag_dir, until=until)
            if around is not None:
                extra = around[1]()
            after = self.snapshot(t, event)
        finally:
            for f in files:
                f.unlink(missing_ok=True)
        self.rate_seen[t.name] = max(self.rate_seen.get(t.name, 0.0), w.rps)
        n = max(1, w.requests)
        statuses = w.statuses()
        answered = sum(statuses.values())
        wrk_cpu = after["wrk"] - before["wrk"]
        ours = after["cpu"] - before["cpu"] + wrk_cpu
        if t.redis is not None:
            ours += after["redis_cpu"] - before["redis_cpu"]
        if t.replica is not None:
            ours += after["replica_cpu"] - before["replica_cpu"]
        elapsed = after["t"] - before["t"]
        orders_acked = int(w.data.get("orders") or 0)
        rec = {
            "rep": rep,
            "rps": w.rps,
            "orders_per_s": orders_acked / w.seconds if w.seconds else 0.0,
            "requests": w.requests,
            "seconds": w.seconds,
            "latency_us": w.data["latency_us"],
            "statuses": statuses,
            # share of each HTTP status among the answers (429 = rate_limited)
            "answers": {k: v / answered for k, v in statuses.items()} if answered else {},
            "non2xx": {k: v for k, v in statuses.items() if not k.startswith("2")},
            "codes": w.codes(),
            "orders_acked": orders_acked,
            "socket_errors": w.data.get("errors"),
            "sales_latency_us": w.data.get("sales"),
            "cpu_us_per_req": (after["cpu"] - before["cpu"]) * 1e6 / n,
            "wrk_cpu_pct": wrk_cpu * 100 / elapsed,
            # the client's CPU per request while it ran (init, reading token pools, excluded)
            "wrk_cpu_us_per_req": max(0.0, wrk_cpu - w.init_cpu_s) * 1e6 / n,
            "wrk_init_cpu_s": w.init_cpu_s,
            "tokens_signed_live": w.signed_live,
            # busy CPU of everything else on the machine, in % of one core
            "other_cpu_pct": max(0.0, after["busy"] - before["busy"] - ours) * 100 / elapsed,
        }
        if extra is not None:
            rec["around"] = extra
        if w.signed_live and rep >= 0 and not lua.get("limit"):
            self.notes.append(f"{t.name}: wrk signed {w.signed_live:,} tokens during a run "
                              "(its pool ran out): that run's client did more per request")
        if t.redis is not None:
            orders = after["sold"] - before["sold"]
            cmds = after["cmds"] - before["cmds"]
            scripts = after["scripts"] - before["scripts"]
            rec.update({
                "orders": orders,
                "redis_cpu_us_per_req": (after["redis_cpu"] - before["redis_cpu"]) * 1e6 / n,
                "redis_cmds": cmds,
                "redis_cmds_per_req": cmds / n,
                "redis_cmds_per_order": cmds / orders if orders else None,
                "redis_scripts_per_order": scripts / orders if orders else None,
                # WAIT calls (--commit-replicas: one per group commit) per unit sold
                "redis_waits_per_order": (after["waits"] - before["waits"]) / orders
                if orders else None,
            })
        if t.replica is not None:
            rec["replica_cpu_us_per_req"] = (
                (after["replica_cpu"] - before["replica_cpu"]) * 1e6 / n)
        return rec

    def summarize(self, reps: list[dict], scenario: str) -> dict:
        def col(key, sub=None):
            return [(r[key] or {}).get(sub) if sub else r.get(key) for r in reps]

        rps, p99, ops = col("rps"), col("latency_us", "p99"), col("orders_per_s")
        non2xx: dict[str, int] = {}
        statuses: dict[str, int] = {}
        for r in reps:
            for k, v in r["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
            for k, v in r["non2xx"].items():
                non2xx[k] = non2xx.get(k, 0) + v
            # wrk's socket errors (its "status" count is the non-2xx above)
            for k, v in (r.get("socket_errors") or {}).items():
                if v and k != "status":
                    non2xx[k] = non2xx.get(k, 0) + v
        answered = sum(statuses.values())
        # commit is judged in orders/s (200s to a buy), the others in answers/s
        rate = ops if scenario in ORDER_SCENARIOS else rps
        return {
            "rps": median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "orders_per_s": median(ops),
            "rate": median(rate), "rate_min": min(rate), "rate_max": max(rate),
            "rate_unit": "orders/s" if scenario in ORDER_SCENARIOS else "req/s",
            "p50_us": median(col("latency_us", "p50")),
            "p99_us": median(p99), "p99_us_min": min(p99), "p99_us_max": max(p99),
            "p999_us": median(col("latency_us", "p999")),
            "cpu_us_per_req": median(col("cpu_us_per_req")),
            "wrk_cpu_pct": median(col("wrk_cpu_pct")),
            "wrk_cpu_us_per_req": median(col("wrk_cpu_us_per_req")),
            "other_cpu_pct": median(col("other_cpu_pct")),
            "redis_cpu_us_per_req": median(col("redis_cpu_us_per_req")),
            "redis_cmds_per_req": median(col("redis_cmds_per_req")),
            "redis_cmds_per_order": median(col("redis_cmds_per_order")),
            "redis_scripts_per_order": median(col("redis_scripts_per_order")),
            "redis_waits_per_order": median(col("redis_waits_per_order")),
            "replica_cpu_us_per_req": median(col("replica_cpu_us_per_req")),
            "requests": sum(col("requests")),
            "statuses": statuses,
            "answers": {k: v / answered for k, v in statuses.items()} if answered else {},
            "non2xx": non2xx,
            "tokens_signed_live": sum(col("tokens_signed_live")),
        }

    def peak_rss(self, t: Target) -> list[int]:
        return [status_kib(p, "VmHWM") or 0 for p in t.proc.workers()]

    def row(self, scenario: str, t: Target, connections: int) -> dict:
        """A column of the report: what ran, in which configuration; its repetitions."""
        return {"scenario": scenario, "target": t.kind, "label": t.name,
                "config": t.setup.name, "setup": t.setup.describe(t.kind),
                "workers": t.workers, "connections": connections, "threads": self.s.threads,
                "reps": []}

    def measure(self, scenario: str, targets: list[Target], event: dict,
                connections: int, lua_extra: dict) -> list[dict]:
        """Warm-up, then R repetitions alternating between the targets."""
        s = self.s
        cfgs = {t.name: self.row(scenario, t, connections) for t in targets}
        for t in targets if s.warmup > 0 else ():
            self.log(f"  {scenario}: warm-up {t.name} ({s.warmup} s)")
            self.one_run(t, event, s.warmup, connections,
                         self.lua_args(event, t.setup, **lua_extra), -1)
        for rep in range(s.reps):
            for t in targets:
                rec = self.one_run(t, event, s.duration, connections,
                                   self.lua_args(event, t.setup, **lua_extra), rep)
                cfgs[t.name]["reps"].append(rec)
                self.log(f"  {scenario}: {t.name} rep {rep + 1}/{s.reps}: {rec['rps']:,.0f} req/s, "
                         f"p99 {rec['latency_us']['p99'] / 1000:.2f} ms, non-2xx {rec['non2xx']}")
        out = []
        for t in targets:
            cfg = cfgs[t.name]
            cfg["summary"] = self.summarize(cfg["reps"], scenario)
            cfg["peak_rss_kib"] = self.peak_rss(t)
            out.append(cfg)
        return out

    def acked(self, cfg: dict) -> int:
        return sum(r["orders_acked"] for r in cfg["reps"])

    def audit(self, scenario: str, t: Target, event: dict, acked: int, cfgs: list[dict],
              paid: list[str] | None = None) -> dict:
        """The sale's invariants; with `paid` (the orders answered paid), the lifecycle's."""
        res = invariants.check_event(t.redis.client(audit=True), event, acked, t.port,
                                     self.admin_token)
        if paid is not None:
            life = invariants.check_lifecycle(t.redis.client(audit=True), event, paid)
            res["lifecycle"] = {k: v for k, v in life.items() if k != "problems"}
            res["problems"] += life["problems"]
            res["ok"] = res["ok"] and life["ok"]
        res.update({"scenario": scenario, "target": t.name, "config": t.setup.name})
        self.audits.append(res)
        for cfg in cfgs:
            if cfg["label"] == t.name:
                cfg["invariants_ok"] = cfg.get("invariants_ok", True) and res["ok"]
        state = "passed" if res["ok"] else "FAILED: " + "; ".join(res["problems"])
        self.log(f"  {scenario}: invariants on {t.name} ({res['orders']} orders): {state}")
        return res

    # ------------------------------------------------------------ scenarios

    def run(self) -> None:
        for name in self.s.scenarios:
            setups = self.setups_for(name)
            self.log(f"scenario {name} ({', '.join(x.name for x in setups)})")
            getattr(self, f"scenario_{name}")(setups)

    def _steady(self, scenario: str, setups: list[Setup], event: dict, lua_extra: dict,
                prepare=None) -> None:
        started = self.start_targets(scenario, setups, event, prepare)
        try:
            cfgs = self.measure(scenario, started, event, self.s.connections, lua_extra)
            self.configs.extend(cfgs)
            for t, cfg in zip(started, cfgs, strict=True):
                if t.redis is not None:
                    extra = 1 if prepare else 0
                    self.audit(scenario, t, event, self.acked(cfg) + extra, cfgs)
        finally:
            for t in started:
                self.stop_target(t)

    def buy_the_last_unit(self, t: Target, event: dict) -> None:
        sku = event["skus"][0]["id"]
        status, body = self.buy(t, event["id"], sku, "early-bird")
        if status != 200:
            raise BenchError(f"{t.name}: the pre-run buy answered {status}: {body[:300]!r}")

    def scenario_soldout(self, setups: list[Setup]) -> None:
        event = make_event("soldout", [make_sku("last-one", 1)])
        self._steady("soldout", setups, event, {"users": self.s.users},
                     lambda t: self.buy_the_last_unit(t, event))

    def scenario_commit(self, setups: list[Setup]) -> None:
        event = make_event("commit", [make_sku("plenty", self.s.commit_stock)])
        self._steady("commit", setups, event, {"users": 0})

    def scenario_replicas(self, setups: list[Setup]) -> None:
        """The commit load against a lone Redis, a master with a replica, and such a
        pair with --commit-replicas 1, alternating A B C A B C; then each master's and
        each replica's invariants (a replica once it has caught up)."""
        s = self.s
        setup = setups[0]
        event = make_event("replicas", [make_sku("plenty", s.commit_stock)])
        started: list[Target] = []
        try:
            for suffix, with_replica, waits in REPLICA_COLUMNS:
                started.append(self.start_replicated(setup, event, suffix, with_replica, waits))
            cfgs = self.measure("replicas", started, event, s.connections, {"users": 0})
            for t, cfg in zip(started, cfgs, strict=True):
                cfg["commit_replicas"] = int(t.suffix == "+wait1")
                cfg["replica"] = t.replica is not None
            self.configs.extend(cfgs)
            for t, cfg in zip(started, cfgs, strict=True):
                acked = self.acked(cfg)
                self.audit("replicas", t, event, acked, cfgs)
                if t.replica is not None:
                    self.audit_replica(t, event, acked, cfgs)
        finally:
            for t in started:
                self.stop_target(t)

    def start_replicated(self, setup: Setup, event: dict, suffix: str, with_replica: bool,
                         waits: int) -> Target:
        """flashgate on a Redis of its own, with a replica of it when `with_replica`,
        started with --commit-replicas `waits`."""
        if self.s.flashgate_argv is None:
            raise BenchError("flashgate is not available (`flashgate serve --help` failed)")
        name = f"flashgate-{setup.name}{suffix}-replicas"
        redis = start_redis(self.procs, f"redis-{name}", aof=setup.aof)
        replica = None
        try:
            if with_replica:
                replica = start_redis(self.procs, f"replica-{name}", aof=setup.aof,
                                      replica_of=redis)
            flags = setup.flashgate_flags() + (["--commit-replicas", str(waits)] if waits else [])
            secret = self.secret if setup.tokens else None
            proc, port = start_flashgate(self.procs, self.s.flashgate_argv, redis,
                                         self.write_event(event, name), self.admin_token,
                                         secret, self.s.workers, flags, name)
        except BaseException:
            for r in (replica, redis):
                if r is not None:
                    self.procs.stop(r.proc)
            raise
        return Target("flashgate", setup, proc, port, redis, self.s.workers, suffix=suffix,
                      replica=replica)

    def audit_replica(self, t: Target, event: dict, acked: int, cfgs: list[dict]) -> dict:
        """The replica's copy of the sale, once its offset reached its master's: the
        same invariants, every acknowledged order in it."""
        master, replica = t.redis.client(), t.replica.client(audit=True)
        deadline = time.monotonic() + 30
        while (replica.info("replication").get("slave_repl_offset")
               != master.info("replication").get("master_repl_offset")):
            if time.monotonic() > deadline:
                raise BenchError(f"{t.name}: the replica did not catch up with its master")
            time.sleep(0.05)
        res = invariants.check_event(replica, event, acked)
        res.update({"scenario": "replicas", "target": f"{t.name} (replica)",
                    "config": t.setup.name})
        self.audits.append(res)
        for cfg in cfgs:
            if cfg["label"] == t.name:
                cfg["invariants_ok"] = cfg.get("invariants_ok", True) and res["ok"]
        state = "passed" if res["ok"] else "FAILED: " + "; ".join(res["problems"])
        self.log(f"  replicas: invariants on {t.name}'s replica ({res['orders']} orders): "
                 f"{state}")
        return res

    def scenario_rush(self, setups: list[Setup]) -> None:
        s = self.s
        skus = [make_sku(f"sku{i + 1}", s.rush_stock) for i in range(s.rush_skus)]
        placeholder = make_event("rush-warm", skus)
        started = self.start_targets("rush", setups, placeholder)
        try:
            cfgs = {t.name: self.row("rush", t, s.connections) for t in started}
            events: dict[str, list[tuple[dict, int]]] = {t.name: [] for t in started}
            for t in started if s.warmup > 0 else ():
                self.log(f"  rush: warm-up {t.name}")
                self.one_run(t, placeholder, s.warmup, s.connections,
                             self.lua_args(placeholder, t.setup, users=s.users, views=10), -1)
            for rep in range(s.reps):
                for t in started:
                    event = make_event(f"rush{rep + 1}", skus, now_ms() + 60_000)
                    self.put_event(t, event)
                    self.wait_visible(t, event["id"])
                    # open the sale s.rush_lead seconds after wrk starts
                    event["starts_at_ms"] = now_ms() + s.rush_lead * 1000 + 200
                    event["ends_at_ms"] = event["starts_at_ms"] + DAY_MS
                    self.put_event(t, event)
                    lua = self.lua_args(event, t.setup, users=s.users, views=10, codes=1, track=1)
                    rec = self.one_run(t, event, s.rush_lead + s.rush_run, s.connections, lua, rep)
                    rec.update(self.sellout(t, event))
                    cfgs[t.name]["reps"].append(rec)
                    events[t.name].append((event, rec["orders_acked"]))
                    so = rec["sold_out_ms"]
                    so = "NOT sold out" if so is None else f"{so:.0f} ms"
                    sales = rec["sales_latency_us"] or {}
                    self.log(f"  rush: {t.name} rep {rep + 1}/{s.reps}: sold out in {so}, "
                             f"sales p99 {(sales.get('p99') or 0) / 1000:.1f} ms, mix {rec['codes']}")
            out = []
            for t in started:
                cfg = cfgs[t.name]
                cfg["summary"] = self.summarize(cfg["reps"], "rush")
                cfg["summary"].update(self.rush_summary(cfg["reps"]))
                cfg["peak_rss_kib"] = self.peak_rss(t)
                out.append(cfg)
            self.configs.extend(out)
            for t in started:
                for event, acked in events[t.name]:
                    self.audit("rush", t, event, acked, out)
        finally:
            for t in started:
                self.stop_target(t)

    def sellout(self, t: Target, event: dict) -> dict:
        invariants.settle(t.client, event)
        audits = [invariants.audit_sku(t.client, event["id"], s) for s in event["skus"]]
        all_gone = all(a["sold"] >= a["stock"] for a in audits)
        last = max((a["last_order_ms"] or 0) for a in audits)
        return {
            "sold_out_ms": last - event["starts_at_ms"] if all_gone and last else None,
            "units_sold": sum(a["sold"] for a in audits),
        }

    def rush_summary(self, reps: list[dict]) -> dict:
        mix: dict[str, int] = {}
        for r in reps:
            for k, v in r["codes"].items():
                mix[k] = mix.get(k, 0) + v
        sales = [r.get("sales_latency_us") or {} for r in reps]
        gone = [r["sold_out_ms"] for r in reps]
        return {
            "sold_out_ms": median(gone) if None not in gone else None,
            "sold_out_ms_min": min((g for g in gone if g is not None), default=None),
            "sold_out_ms_max": max((g for g in gone if g is not None), default=None),
            "sales_p50_us": median([x.get("p50") for x in sales]),
            "sales_p99_us": median([x.get("p99") for x in sales]),
            "rejection_mix": mix,
        }

    def scenario_lifecycle(self, setups: list[Setup]) -> None:
        s = self.s
        skus = [make_sku(f"sku{i + 1}", s.life_stock) for i in range(s.life_skus)]
        placeholder = make_event("life-warm", skus)
        started = self.start_targets("lifecycle", setups, placeholder)
        out = []
        try:
            cfgs = {t.name: self.row("lifecycle", t, s.connections) for t in started}
            runs: dict[str, list[tuple[dict, int, list[str]]]] = {t.name: [] for t in started}
            for t in started if s.warmup > 0 else ():
                self.log(f"  lifecycle: warm-up {t.name}")
                self.one_run(t, placeholder, s.warmup, s.connections,
                             self.lua_args(placeholder, t.setup, users=s.users, views=10), -1)
            for rep in range(s.reps):
                for t in started:
                    event, rec, paid = self.lifecycle_run(t, skus, rep)
                    cfgs[t.name]["reps"].append(rec)
                    runs[t.name].append((event, rec["orders_acked"], paid))
            for t in started:
                cfg = cfgs[t.name]
                cfg["summary"] = self.summarize(cfg["reps"], "lifecycle")
                cfg["summary"].update(self.lifecycle_summary(cfg["reps"]))
                cfg["peak_rss_kib"] = self.peak_rss(t)
                out.append(cfg)
            self.configs.extend(out)
            for t in started:
                for event, acked, paid in runs[t.name]:
                    self.audit("lifecycle", t, event, acked, out, paid=paid)
        finally:
            for t in started:
                self.stop_target(t)
        if out:
            costs = self.sweeper_costs()
            for cfg in out:
                cfg["sweeper_cost"] = costs

    def lifecycle_run(self, t: Target, skus: list[dict], rep: int) -> tuple[dict, dict, list]:
        """One sale: opens rush_lead s after wrk starts, runs until every unit is paid
        (or life_run s), then waits until no order is left reserved."""
        s = self.s
        event = make_event(f"life{rep + 1}", skus, now_ms() + 60_000)
        event["payment_timeout_s"] = s.life_timeout_s
        self.put_event(t, event)
        self.wait_visible(t, event["id"])
        event["starts_at_ms"] = now_ms() + s.rush_lead * 1000 + 200
        event["ends_at_ms"] = event["starts_at_ms"] + DAY_MS
        self.put_event(t, event)
        prefixes = [invariants.sku_prefix(event["id"], k["id"]) for k in skus]
        stock = sum(k["stock"] for k in skus)

        def units(key):
            return sum(int(x or 0) for x in t.client.mget([p + key for p in prefixes]))

        payer = lifecycle.Payer(t.redis.client(), t.port, self.admin_token,
                                [p + "orders" for p in prefixes], s.life_pay_pct)
        payer.start()
        try:
            lua = self.lua_args(event, t.setup, users=s.users, views=10, codes=1, track=1)
            rec = self.one_run(t, event, s.rush_lead + s.life_run, s.connections, lua, rep,
                               until=lambda: units("units_paid") >= stock)
            # the orders still reserved end: paid as they come, or expired
            deadline = time.monotonic() + s.life_timeout_s + 5
            while units("sold") != units("units_paid") and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.3)  # the payer's last answers
        finally:
            payer.stop()
        if payer.error:
            raise BenchError(f"{t.name}: the payer failed: {payer.error}")
        per_sku = [lifecycle.resales(t.client, p, k["stock"], event["starts_at_ms"])
                   for p, k in zip(prefixes, skus, strict=True)]
        life = lifecycle.combine_skus(per_sku)
        life.update({
            "stock": stock,
            "pay_share_pct": s.life_pay_pct,
            "payment_timeout_s": s.life_timeout_s,
            "payer_answers": {str(k): v for k, v in payer.answers.items()},
            "payer_lag_p50_ms": lifecycle.pct(payer.lag_ms, 50),
            "payer_lag_p99_ms": lifecycle.pct(payer.lag_ms, 99),
            "left_unsold": stock - units("sold"),
        })
        first = life["first_sold_out_ms"]
        life["first_sellout_orders_per_s"] = stock * 1000 / first if first and first > 0 else None
        rec["lifecycle"] = life
        self.log(
            f"  lifecycle: {t.name} rep {rep + 1}/{s.reps}: {life['orders_created']} orders, "
            f"{life['orders_paid']} paid, {life['orders_expired']} expired, "
            f"{life['expired_resold']} re-sold (p50 {lifecycle.pct(life['resale_ms'], 50)} ms, "
            f"p99 {lifecycle.pct(life['resale_ms'], 99)} ms); sold out first after "
            f"{first} ms, for good after {life['sold_out_for_good_ms']} ms")
        return event, rec, payer.paid

    def lifecycle_summary(self, reps: list[dict]) -> dict:
        lives = [r["lifecycle"] for r in reps]
        resale = [x for v in lives for x in v["resale_ms"]]
        lag = [x for v in lives for x in v["expiry_lag_ms"]]
        out = {k: sum(v[k] for v in lives) for k in (
            "orders_created", "orders_paid", "orders_expired", "orders_cancelled",
            "expired_resold", "left_unsold", "created_entries", "expired_entries")}
        goods = [v["sold_out_for_good_ms"] for v in lives]
        out.update({
            # the orders of one commit batch, of one call of the sweeper's expiry
            "orders_per_created_entry": out["orders_created"] / out["created_entries"]
            if out["created_entries"] else None,
            "orders_per_expired_entry": out["orders_expired"] / out["expired_entries"]
            if out["expired_entries"] else None,
            # pooled over the repetitions' expired orders
            "resale_p50_ms": lifecycle.pct(resale, 50), "resale_p99_ms": lifecycle.pct(resale, 99),
            "resale_max_ms": max(resale, default=None),
            "expiry_lag_p50_ms": lifecycle.pct(lag, 50), "expiry_lag_p99_ms": lifecycle.pct(lag, 99),
            "expiry_lag_max_ms": max(lag, default=None),
            "first_sold_out_ms": median([v["first_sold_out_ms"] for v in lives]),
            "first_sellout_orders_per_s": median([v["first_sellout_orders_per_s"] for v in lives]),
            "sold_out_for_good_ms": median(goods),
            "not_sold_out_for_good": sum(g is None for g in goods),
            "payer_lag_p99_ms": median([v["payer_lag_p99_ms"] for v in lives]),
            "payer_answers": {k: sum(v["payer_answers"].get(k, 0) for v in lives)
                              for k in sorted({k for v in lives for k in v["payer_answers"]})},
            "stock": lives[0]["stock"], "pay_share_pct": lives[0]["pay_share_pct"],
            "payment_timeout_s": lives[0]["payment_timeout_s"],
        })
        return out

    def sweeper_costs(self) -> list[dict]:
        """The sweeper's cost per expired order, apart from any load: due orders in a
        private Redis (the same persistence), 1 and 16 to a stream entry."""
        s = self.s
        redis = start_redis(self.procs, "redis-sweeper-cost", aof=s.aof)
        out = []
        try:
            for per in (1, 16):
                res = lifecycle.sweeper_cost(redis, s.life_sweep_orders, per)
                out.append(res)
                self.log(f"  lifecycle: sweeper, {res['expired']:,} due orders ({per} per "
                         f"entry): Redis CPU {res['redis_cpu_us_per_order']:.1f} µs/order "
                         f"(script {res['script_us_per_order']:.1f}), sweeper "
                         f"{res['worker_cpu_us_per_order']:.1f} µs/order")
                problems = [] if res["ok"] else [
                    f"sweeper micro-measurement: {res['expired']} of {res['orders']} expired, "
                    f"sold after {res['sold_after']}, returned {res['returned']}, "
                    f"{res['expired_in_stream']} in the stream"]
                self.audits.append({"scenario": "lifecycle", "target": f"sweeper-{per}",
                                    "config": "-", "ok": res["ok"], "problems": problems,
                                    "orders": res["orders"]})
        finally:
            self.procs.stop(redis.proc)
        return out

    def scenario_scale(self, setups: list[Setup]) -> None:
        s = self.s
        event = make_event("scale", [make_sku("last-one", 1)])
        for setup in setups:
            for workers in s.scale_workers:
                t = self.start_target("flashgate", setup, event, f"scale-w{workers}", workers)
                try:
                    self.buy_the_last_unit(t, event)
                    acked = 1
                    rows = []
                    for conns in s.scale_connections:
                        cfgs = self.measure("scale", [t], event, conns, {"users": s.users})
                        acked += self.acked(cfgs[0])
                        rows += cfgs
                    self.configs.extend(rows)
                    self.audit("scale", t, event, acked, rows)
                finally:
                    self.stop_target(t)
                self.memory(event, setup, workers)

    def memory(self, event: dict, setup: Setup, workers: int) -> None:
        """RSS per worker before and after `distinct` new users (and IPs) hit it."""
        s = self.s
        flags = s.memory_flags + s.xff_flags
        t = self.start_target("flashgate", setup, event, f"memory-w{workers}", workers,
                              flashgate_flags=flags)
        try:
            self.buy(t, event["id"], "last-one", "early-bird")
            before = {p: status_kib(p, "VmRSS") for p in t.proc.workers()}
            per_thread = -(-s.distinct // s.threads)
            cap = max(10, int(s.distinct / 5_000) + 10)  # a fixed cap; ends when all are sent
            lua = self.lua_args(event, setup, users=0, limit=per_thread,
                                xff=1 if s.xff_flags else 0)
            rec = self.one_run(t, event, cap, s.connections, lua, 0, flag_dir=self.procs.workdir)
            after = {p: status_kib(p, "VmRSS") for p in t.proc.workers()}
            hwm = {p: status_kib(p, "VmHWM") for p in t.proc.workers()}
            grew = [(after[p] or 0) - (before.get(p) or 0) for p in after]
            res = {
                "scenario": "memory", "target": "flashgate", "label": t.name,
                "config": setup.name, "workers": workers,
                "identity": "signed tokens" if setup.tokens else "X-User-Id",
                "distinct_users": rec["requests"],
                "distinct_ips": rec["requests"] if s.xff_flags else 0,
                "flags": flags,
                "rss_before_kib": list(before.values()), "rss_after_kib": list(after.values()),
                "peak_rss_kib": list(hwm.values()), "rss_growth_kib": grew,
                "bytes_per_user": (sum(grew) * 1024 / rec["requests"]) if rec["requests"] else None,
                "run": rec,
            }
            self.configs.append(res)
            self.log(f"  memory: {rec['requests']:,} distinct users, {workers} workers: RSS "
                     f"{[round(x / 1024) for x in before.values()]} -> "
                     f"{[round(x / 1024) for x in after.values()]} MiB")
            note = ("memory: distinct users only; client IPs were not varied "
                    "(the server was not started with a trusted proxy)")
            if not s.xff_flags and note not in self.notes:
                self.notes.append(note)
        finally:
            self.stop_target(t)

    # ------------------------------------------------------------ live

    def scenario_live(self, setups: list[Setup]) -> None:
        """The commit load without (A) and with (B) N event-stream subscribers on one
        worker, alternating A B A B; before them, the cost of the subscribers at rest
        (a trickle of purchases, so that every tick sends a frame)."""
        s = self.s
        setup = setups[0]
        n = s.live_subscribers
        event = make_event("live", [make_sku("plenty", s.commit_stock)])
        extra = live.server_flags(s.serve_defaults or {}, n, s.connections)
        flags = setup.flashgate_flags() + extra
        nofile = live.raise_nofile(n + s.connections + 256)
        exe = live.build_generator(self.procs.workdir)
        t = self.start_target("flashgate", setup, event, "live", 1, flashgate_flags=flags)
        try:
            workers = t.proc.workers()
            if len(workers) != 1:  # (no webhook secret: no notifier process either)
                raise BenchError(f"live: expected one worker process, found {workers}")
            worker = workers[0]
            base = self.row("live", t, s.connections)
            loaded = self.row("live", t, s.connections)
            described = dict(base["setup"])
            described["flags"] = " ".join(f for f in (described["flags"], " ".join(extra)) if f)
            base.update(setup=described, subscribers=0)
            loaded.update(setup=described, subscribers=n, label=f"{t.name}+streams")
            acked = 0
            if s.warmup > 0:
                self.log(f"  live: warm-up {t.name} ({s.warmup} s)")
                rec = self.one_run(t, event, s.warmup, s.connections,
                                   self.lua_args(event, t.setup, users=0), -1)
                acked += rec["orders_acked"]
            rest, trickled = self.live_at_rest(t, event, exe, worker)
            acked += trickled
            for rep in range(s.reps):
                rec = self.live_run(t, event, rep, worker, None)
                base["reps"].append(rec)
                acked += rec["orders_acked"]
                self.log(f"  live: without streams rep {rep + 1}/{s.reps}: "
                         f"{rec['orders_per_s']:,.0f} orders/s, p99 "
                         f"{rec['latency_us']['p99'] / 1000:.2f} ms")
                subs, connect = self.live_connect(t, exe, worker)
                try:
                    rec = self.live_run(t, event, rep, worker, subs)
                finally:
                    subs.close()
                rec["connect"] = connect
                loaded["reps"].append(rec)
                acked += rec["orders_acked"]
                st = rec["stream"]
                self.log(f"  live: with {st['subscribers']:,} streams rep {rep + 1}/{s.reps}: "
                         f"{rec['orders_per_s']:,.0f} orders/s, p99 "
                         f"{rec['latency_us']['p99'] / 1000:.2f} ms; {st['deliveries_per_s'] or 0:,.0f} "
                         f"deliveries/s, {_share(st['within_50ms_share'])} within {live.BOUND_MS} ms, "
                         f"p99 {_ms(st['latency_ms']['p99'])}, max {_ms(st['latency_ms']['max'])}, "
                         f"missed {st['missed_frames']}")
            for cfg in (base, loaded):
                cfg["summary"] = self.summarize(cfg["reps"], "commit")
                cfg["peak_rss_kib"] = self.peak_rss(t)
            loaded["live"] = self.live_summary(base["reps"], loaded["reps"], rest, n, nofile)
            self.configs.extend([base, loaded])
            res = self.audit("live", t, event, acked, [base, loaded])
            loaded["invariants_ok"] = res["ok"]
        finally:
            self.stop_target(t)

    def live_headers(self, setup: Setup):
        def headers(user: str, k: int) -> dict:
            h = self.identity(user, setup)
            if setup.xff:
                h["X-Forwarded-For"] = live.client_ip(k)
            return h
        return headers

    def live_connect(self, t: Target, exe: Path, worker: int) -> tuple[live.Subscribers, dict]:
        """Connects the subscribers, half, then the other half; the worker's memory before,
        after the first half and after all (each settled). The second half's growth is
        the marginal cost of a subscriber: the first pays too for what the worker grows
        once (its allocator's pools, the channel's set)."""
        s = self.s
        n = s.live_subscribers
        half = n // 2 if n >= 2 else n

        def settled_rss() -> int | None:
            time.sleep(s.live_settle)
            return status_kib(worker, "VmRSS")

        rss0 = status_kib(worker, "VmRSS")
        tcp0 = live.sockstat_tcp_pages()
        subs = live.Subscribers(self.procs, exe, t.port, "/api/v1/events/live/stream", n,
                                first=half)
        try:
            first = subs.wait_ready()
            rss1 = settled_rss()
            ready = subs.more() if half < n else first
            if not ready["subscribed"]:
                raise BenchError(f"live: no subscriber got its stream: {ready}")
            rss2 = settled_rss()
            tcp1 = live.sockstat_tcp_pages()
            gauge = None
            status, body = http("GET", f"http://{HOST}:{t.port}/metrics")
            if status == 200:
                for line in body.decode(errors="replace").splitlines():
                    if line.startswith("flashgate_sse_subscribers "):
                        gauge = float(line.split()[1])
        except BaseException:
            subs.close()
            raise
        got, got1 = ready["subscribed"], first["subscribed"]

        def per(a, b, k):
            return (b - a) / k if a and b and k else None

        info = {
            "ready": ready,
            "first_half": first,
            "rss_before_kib": rss0, "rss_half_kib": rss1, "rss_after_kib": rss2,
            "rss_kib_per_subscriber": per(rss0, rss2, got),
            "rss_kib_per_subscriber_first_half": per(rss0, rss1, got1),
            "rss_kib_per_subscriber_second_half": per(rss1, rss2, got - got1),
            "tcp_kernel_kib_per_subscriber":
                (tcp1 - tcp0) * 4 / got if tcp0 is not None and tcp1 is not None else None,
            "server_gauge": gauge,
        }
        self.log(f"  live: {got:,} of {n:,} subscribed in {first['connect_s'] + ready['connect_s']:.1f} s "
                 f"(refused {ready['refused']}, failed {ready['failed']}); worker RSS "
                 f"{rss0 / 1024:.1f} -> {rss1 / 1024:.1f} -> {rss2 / 1024:.1f} MiB: "
                 f"{_num1(info['rss_kib_per_subscriber'])} KiB per subscriber (the second "
                 f"half {_num1(info['rss_kib_per_subscriber_second_half'])})")
        return subs, info

    def live_run(self, t: Target, event: dict, rep: int, worker: int,
                 subs: live.Subscribers | None) -> dict:
        """One commit run; the worker's CPU over it, and with `subs`, their window."""
        s = self.s
        mark = {}

        def start():
            if subs is not None:
                subs.start()
            mark["cpu"] = cpu_seconds([worker])
            mark["sched"] = live.schedstat(worker)
            mark["t"] = time.monotonic()

        def stop():
            wall = time.monotonic() - mark["t"]
            out = {"worker_cpu_s": cpu_seconds([worker]) - mark["cpu"], "wall_s": wall}
            out.update(_sched(mark["sched"], live.schedstat(worker), wall))
            if subs is not None:
                out["window"] = subs.stop()
            return out

        rec = self.one_run(t, event, s.duration, s.connections,
                           self.lua_args(event, t.setup, users=0), rep, around=(start, stop))
        around = rec.pop("around")
        rec["worker_cpu_s"] = around["worker_cpu_s"]
        rec["worker_sched"] = {k: around[k] for k in ("wait_ms_per_s", "switches_per_s")}
        rec["worker_cpu_us_per_req"] = around["worker_cpu_s"] * 1e6 / max(1, rec["requests"])
        if subs is not None:
            win = around["window"]
            rec["stream"] = live.window_figures(win, subs.subscribed, subs.pause_us)
            rec["stream"]["generator_window"] = {k: v for k, v in win.items() if k != "ticks"}
        return rec

    def live_at_rest(self, t: Target, event: dict, exe: Path, worker: int) -> tuple[dict, int]:
        """No load but a trickle of purchases (so every tick has a frame): the worker's
        CPU without subscribers, then with them; their memory. Returns the figures and
        the orders the trickle was answered 200."""
        s = self.s
        trickle = live.Trickle(t.port, event["id"], event["skus"][0]["id"], s.live_rate,
                               self.live_headers(t.setup), "lt")
        trickle.start()
        try:
            time.sleep(min(1.0, s.live_idle))

            sched = {}

            def cpu_over(seconds: float, key: str) -> tuple[float, float]:
                c0, m0, s0 = cpu_seconds([worker]), time.monotonic(), live.schedstat(worker)
                time.sleep(seconds)
                wall = time.monotonic() - m0
                sched[key] = _sched(s0, live.schedstat(worker), wall)
                return cpu_seconds([worker]) - c0, wall

            cpu0, wall0 = cpu_over(s.live_idle, "without")
            subs, connect = self.live_connect(t, exe, worker)
            try:
                subs.start()
                cpu1, wall1 = cpu_over(s.live_idle, "with")
                win = subs.stop()
            finally:
                subs.close()
        finally:
            trickle.stop()
        if trickle.error:
            raise BenchError(f"live: the trickle of purchases failed: {trickle.error}")
        st = live.window_figures(win, subs.subscribed, subs.pause_us)
        extra_cpu = (cpu1 / wall1 - cpu0 / wall0) * wall1
        rest = {
            "trickle_rate": s.live_rate,
            "trickle_answers": {str(k): v for k, v in trickle.answers.items()},
            "seconds": s.live_idle,
            "worker_cpu_pct_without": cpu0 * 100 / wall0,
            "worker_cpu_pct_with": cpu1 * 100 / wall1,
            "cpu_us_per_delivery": extra_cpu * 1e6 / st["deliveries"] if st["deliveries"] else None,
            "worker_sched": sched,
            "stream": st,
            "connect": connect,
        }
        self.log(f"  live: at rest ({s.live_rate:g} purchases/s): worker CPU "
                 f"{rest['worker_cpu_pct_without']:.1f} % without streams, "
                 f"{rest['worker_cpu_pct_with']:.1f} % with {st['subscribers']:,}: "
                 f"{_num1(rest['cpu_us_per_delivery'])} µs per delivery (worker waited for a "
                 f"CPU {sched['with']['wait_ms_per_s']:.0f} ms/s); "
                 f"{st['deliveries_per_s'] or 0:,.0f} deliveries/s, p99 "
                 f"{_ms(st['latency_ms']['p99'])}, max {_ms(st['latency_ms']['max'])}, generator "
                 f"CPU {_num1(st['generator_cpu_pct'])} %")
        return rest, trickle.acked

    def live_summary(self, without: list[dict], with_: list[dict], rest: dict, n: int,
                     nofile: int) -> dict:
        """The scenario's figures over its repetitions: the ratios of the purchases' p99
        and throughput (same repetition, with / without), the CPU per delivery under
        load, the deliveries, the memory per subscriber."""
        pairs = list(zip(without, with_, strict=True))
        ratios = [b["latency_us"]["p99"] / a["latency_us"]["p99"] for a, b in pairs
                  if a["latency_us"]["p99"]]
        rates = [b["orders_per_s"] / a["orders_per_s"] for a, b in pairs if a["orders_per_s"]]
        per_delivery = []
        for a, b in pairs:
            d = b["stream"]["deliveries"]
            if d:
                # the worker's CPU with streams minus what its purchases cost without
                # them (per request, from the repetition without)
                own = a["worker_cpu_s"] / max(1, a["requests"]) * b["requests"]
                per_delivery.append((b["worker_cpu_s"] - own) * 1e6 / d)
        streams = [b["stream"] for b in with_]
        deliveries = sum(x["deliveries"] for x in streams)
        within = sum(x["within_50ms"] for x in streams)
        mem = [b["connect"]["rss_kib_per_subscriber"] for b in with_]
        mem_first = rest["connect"]["rss_kib_per_subscriber"]
        return {
            "subscribers": n,
            "open_files_limit": nofile,
            "p99_ratio": median(ratios), "p99_ratio_max": max(ratios, default=None),
            "p99_ratios": ratios,
            "orders_ratio": median(rates), "orders_ratios": rates,
            "cpu_us_per_delivery": median(per_delivery),
            "cpu_us_per_delivery_reps": per_delivery,
            "cpu_us_per_delivery_at_rest": rest["cpu_us_per_delivery"],
            "deliveries": deliveries,
            "deliveries_per_s": median([x["deliveries_per_s"] for x in streams]),
            "within_50ms_share": within / deliveries if deliveries else None,
            "latency_p50_ms": median([x["latency_ms"]["p50"] for x in streams]),
            "latency_p99_ms": median([x["latency_ms"]["p99"] for x in streams]),
            "latency_max_ms": max((x["latency_ms"]["max"] or 0 for x in streams), default=None),
            "missed_frames": sum(x["missed_frames"] for x in streams),
            "subscribers_missed": max((x["subscribers_missed"] for x in streams), default=0),
            "closed": sum(x["closed"] for x in streams),
            "generator_cpu_pct": max((x["generator_cpu_pct"] or 0 for x in streams), default=None),
            # the first connection of the subscribers (at rest) is the figure: later ones
            # reuse memory the allocator kept from the previous subscribers
            "rss_kib_per_subscriber": mem_first,
            "rss_kib_per_subscriber_marginal":
                rest["connect"]["rss_kib_per_subscriber_second_half"],
            "rss_kib_per_subscriber_reps": mem,
            # the worker's time runnable but waiting for a CPU (a shared 2-core machine)
            "worker_wait_ms_per_s_without": median([a["worker_sched"]["wait_ms_per_s"]
                                                    for a in without]),
            "worker_wait_ms_per_s_with": median([b["worker_sched"]["wait_ms_per_s"]
                                                 for b in with_]),
            "other_cpu_pct_without": median([a["other_cpu_pct"] for a in without]),
            "other_cpu_pct_with": median([b["other_cpu_pct"] for b in with_]),
            "tcp_kernel_kib_per_subscriber": rest["connect"]["tcp_kernel_kib_per_subscriber"],
            "at_rest": rest,
        }


def _sched(before: tuple, after: tuple, wall: float) -> dict:
    """The worker's time waiting for a CPU while runnable, and its switches, per second."""
    return {"wait_ms_per_s": (after[1] - before[1]) * 1000 / wall if wall else None,
            "switches_per_s": (after[2] - before[2]) / wall if wall else None}


def _ms(x) -> str:
    return "—" if x is None else f"{x:.1f} ms"


def _num1(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def _share(x) -> str:
    return "—" if x is None else f"{x * 100:.2f} %"
