"""The parent process of ``flashgate serve``: starts the embedded Redis if needed,
loads the start-up event, starts N workers on one port (SO_REUSEPORT), restarts a
worker that dies, and on SIGTERM / SIGINT drains them all and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from flashgate import __version__, datadir, logs
from flashgate.config import Config
from flashgate.core import scripts, store
from flashgate.core.events import EventError, parse_event
from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable, redact
from flashgate.gateway import metrics
from flashgate.logs import happening

log = logging.getLogger("flashgate")


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def demo_event(now_ms: int) -> dict:
    """A sale that starts now and runs 30 minutes."""
    return {
        "id": "demo",
        "name": "Demo flash sale",
        "starts_at_ms": now_ms,
        "ends_at_ms": now_ms + 30 * 60 * 1000,
        "payment_timeout_s": 900,
        "skus": [
            {"id": "tea-500g", "name": "Green tea 500 g", "price": 990, "original_price": 2990,
             "stock": 500, "per_user_limit": 1, "tiers": [{"units": 100, "price": 100}]},
            {"id": "cup", "name": "Tea cup", "price": 500, "original_price": 1500,
             "stock": 200, "per_user_limit": 2},
        ],
        "milestones": [{"sold": 150, "reward": "free tote bag"},
                       {"sold": 300, "reward": "free tea cup"}],
    }


async def prepare(cfg: Config) -> list[tuple[str, str]]:
    """Load the --event file (or the demo when Redis holds no event); returns the
    events Redis holds, as (event id, id of its first SKU), the --event one first."""
    conn = RedisConnection(cfg.redis)
    deadline = time.monotonic() + 30
    said = float("-inf")  # when "waiting for Redis" was last logged
    while True:
        try:
            await conn.connect()
            break
        except (RedisUnavailable, RedisError, TimeoutError) as e:
            # a Redis error other than -LOADING (Redis replays its AOF) will not pass
            # by waiting: a wrong password, an unknown user, a bad db
            if isinstance(e, RedisError) and not str(e).startswith("LOADING"):
                raise
            if time.monotonic() > deadline:
                raise
            if time.monotonic() - said >= 5.0:
                log.warning("waiting for Redis at %s: %s", redact(cfg.redis), e)
                said = time.monotonic()
            await asyncio.sleep(0.5)
    try:
        await scripts.load(conn.execute)
        moved = await store.migrate_layout(conn)
        if moved:
            log.info("moved %d orders of the earlier layout into their SKUs' hashes", moved)
        if await store.count_event_units(conn):  # events sold before units were counted
            log.info("counted the units of events sold by an earlier version")
        with contextlib.suppress(RedisError):  # INFO may be disabled on a managed Redis
            policy = store.evicting_policy(await conn.execute("INFO", "memory"))
            if policy:
                log.warning("Redis may evict keys (maxmemory-policy %s): evicted keys lose "
                            "orders; set maxmemory-policy noeviction", policy)
        if cfg.commit_replicas:
            with contextlib.suppress(RedisError):
                role, connected = store.replication(await conn.execute("INFO", "replication"))
                if role and role != "master":
                    log.warning("--commit-replicas %d: Redis at %s is a %s, not a master: "
                                "no sale can be committed there", cfg.commit_replicas,
                                redact(cfg.redis), role)
                elif connected < cfg.commit_replicas:
                    log.warning("--commit-replicas %d: Redis has %d replica(s) connected; "
                                "until %d are, every sale waits %d ms and is answered 503",
                                cfg.commit_replicas, connected, cfg.commit_replicas,
                                cfg.commit_replicas_timeout)
        loaded = ""
        if cfg.event:
            raw = orjson.loads(Path(cfg.event).read_bytes())
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
                raise EventError("bad_request", "the event file needs an \"id\"")
            event = parse_event(raw["id"], raw)
            _defined(event, await store.save_event(conn, event), "file", file=cfg.event)
            loaded = raw["id"]
        _, events = await store.load_events(conn)
        if not events and cfg.demo:
            d = demo_event(await store.redis_time_ms(conn))
            event = parse_event(d["id"], d)
            _defined(event, await store.save_event(conn, event), "demo")
            _, events = await store.load_events(conn)
        return sorted(((e.id, e.skus[0].id if e.skus else "") for e in events),
                      key=lambda e: e[0] != loaded)
    finally:
        conn.close()


def _defined(event, created: bool, source: str, **more) -> None:
    """Log the start-up's event (``source``: file, demo) as created or changed."""
    happening(log, "event_created" if created else "event_changed",
              f"event {event.id} {'created' if created else 'changed'} at start ({source})",
              event_id=event.id, source=source, skus=[s.id for s in event.skus],
              starts_at_ms=event.starts_at_ms, ends_at_ms=event.ends_at_ms, **more)


def _worker_main(cfg_dict: dict, worker_id: int, ready, parent: int, peer_dir: str) -> None:
    die_with_parent()
    from flashgate.gateway import worker

    worker.run(Config(**cfg_dict), worker_id, ready, parent, peer_dir)


def _notifier_main(cfg_dict: dict, parent: int) -> None:
    die_with_parent()
    from flashgate.webhooks import service

    service.run(Config(**cfg_dict), parent)


NOTIFIER = -1  # the notifier's key among the supervised processes (workers: 0, 1, ...)


def _refuse(message: str) -> int:
    print(f"flashgate: {message}", file=sys.stderr, flush=True)
    return 2


def serve(cfg: Config, warnings: Sequence[str] = ()) -> int:
    """Run ``flashgate serve`` with a checked configuration (``config.from_args``);
    ``warnings`` are logged first. Returns the exit code: 0 after a drain, 2 when the
    server cannot start (the reason on stderr)."""
    logs.setup("supervisor", level=cfg.log_level, fmt=cfg.log_format)
    for w in warnings:
        log.warning("%s", w)
    if cfg.dev:
        log.warning("dev identity: buyers are whoever X-User-Id names, anyone can buy as "
                    "anyone; give a user secret for a real sale")
    held = None
    if not cfg.redis or not cfg.admin_token:  # the server keeps state in its data dir
        try:
            held = datadir.lock(cfg.data_dir)
        except datadir.DataDirError as e:
            return _refuse(str(e))
    embedded = None
    try:
        if not cfg.admin_token:
            try:
                cfg.admin_token, path = datadir.admin_token(cfg.data_dir)
            except datadir.DataDirError as e:
                return _refuse(str(e))
            cfg.admin_token_file = str(path)
        if not cfg.redis:
            from flashgate.embedded import EmbeddedRedis, RedisNotFound

            try:
                embedded = EmbeddedRedis(Path(cfg.data_dir).absolute() / "redis",
                                         appendfsync=cfg.appendfsync, private=True,
                                         die_with_parent=True, pass_fds=(held.fd,)).start()
            except (RedisNotFound, RuntimeError, OSError) as e:
                return _refuse(str(e))
            cfg.redis = embedded.url
            log.info("embedded redis-server on %s (data in %s, appendfsync %s)",
                     embedded.url, embedded.data_dir, cfg.appendfsync)
        try:
            event_ids = asyncio.run(prepare(cfg))
        except (EventError, OSError, orjson.JSONDecodeError, RedisUnavailable, RedisError,
                TimeoutError) as e:
            return _refuse(f"cannot load the events: {e}")
        # hold the port (bound, not listening: it takes no connections) so that
        # port 0 resolves once for every worker
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            holder.bind((cfg.host, cfg.port))
        except OSError as e:
            return _refuse(f"cannot listen on {cfg.host}:{cfg.port}: {e}")
        bound, cfg.port = holder.getsockname()[:2]
        listen = f"{_url_host(bound)}:{cfg.port}"
        workers = f"{cfg.workers} worker" + ("s" if cfg.workers != 1 else "")
        happening(log, "start", f"flashgate {__version__} starting on {listen}: {workers}, "
                  f"{'dev identity' if cfg.dev else 'signed tokens'}",
                  version=__version__, listen=listen, port=cfg.port, workers=cfg.workers,
                  identity="dev" if cfg.dev else "tokens",
                  redis="embedded" if embedded is not None else redact(cfg.redis),
                  webhooks=bool(cfg.webhook_secret), access_log=cfg.access_log,
                  pid=os.getpid())
        return Supervisor(cfg, event_ids, bound=bound, embedded=embedded).run()
    finally:
        if embedded is not None:
            embedded.stop()
        if held is not None:
            held.release()


class Supervisor:
    """``bound``: the address the port is bound to (for the banner); ``embedded``: the
    embedded Redis, if any (for the banner)."""

    def __init__(self, cfg: Config, event_ids: list[tuple[str, str]], *, bound: str = "",
                 embedded=None):
        self.cfg = cfg
        self.event_ids = event_ids
        self.bound = bound or cfg.host
        self.embedded = embedded
        self.ctx = multiprocessing.get_context("spawn")
        self.ready = self.ctx.Queue()
        self.procs: dict[int, multiprocessing.Process] = {}
        self.restarts: list[float] = []
        self.stopping = False
        # where the workers' peer channel lives (gateway/peers.py): a directory of this
        # server's own, 0700, so no other user can reach or take a worker's address
        self.peer_dir = tempfile.mkdtemp(prefix="flashgate-")
        # the workers' metrics snapshots, and this supervisor's count of restarts
        # (gateway/metrics.py): every worker's scrape sums the instance from there
        self.restarted = 0
        metrics.write_restarts(self.peer_dir, 0)

    def _start(self, worker_id: int) -> None:
        # the configuration (secrets included) travels through the spawn pipe, not argv
        if worker_id == NOTIFIER:  # the webhooks' sender (webhooks/service.py)
            p = self.ctx.Process(target=_notifier_main, args=(self.cfg.to_dict(), os.getpid()),
                                 name="flashgate-notifier", daemon=False)
            p.start()
            self.procs[worker_id] = p
            return
        p = self.ctx.Process(target=_worker_main,
                             args=(self.cfg.to_dict(), worker_id, self.ready, os.getpid(),
                                   self.peer_dir),
                             name=f"flashgate-worker-{worker_id}", daemon=False)
        p.start()
        self.procs[worker_id] = p

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        try:
            return self._run()
        finally:
            shutil.rmtree(self.peer_dir, ignore_errors=True)

    def _run(self) -> int:
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for i in range(cfg.workers):
            self._start(i)
        started = 0
        deadline = time.monotonic() + 60
        while started < cfg.workers and not self.stopping and time.monotonic() < deadline:
            try:
                self.ready.get(timeout=0.2)
                started += 1
            except Exception:
                if all(not p.is_alive() for p in self.procs.values()):
                    print("flashgate: every worker died at start; see the log above",
                          file=sys.stderr)
                    return 1
        if cfg.webhook_secret and not self.stopping:
            self._start(NOTIFIER)
        self._banner()
        while not self.stopping:
            time.sleep(0.1)
            for wid, p in list(self.procs.items()):
                if p.is_alive() or self.stopping:
                    continue
                who = _child(wid)
                code = p.exitcode
                happening(log, "worker_died", f"{who} (pid {p.pid}) exited with {code}; "
                          "restarting", level=logging.ERROR, **self._which(wid), pid=p.pid,
                          exit_code=code, signal=_signal_name(code))
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < 10] + [now]
                if wid != NOTIFIER:
                    self.restarted += 1
                    metrics.write_restarts(self.peer_dir, self.restarted)
                if len(self.restarts) > 5 * cfg.workers:
                    time.sleep(1.0)  # crash loop: do not spin
                self._start(wid)
                happening(log, "worker_restarted",
                          f"{who} restarted: pid {self.procs[wid].pid} in place of {p.pid}",
                          **self._which(wid), pid=self.procs[wid].pid, old_pid=p.pid,
                          restarts=self.restarted)
        return self._drain()

    @staticmethod
    def _which(wid: int) -> dict:
        """The fields that name a supervised process: ``child`` (``worker`` or
        ``notifier``) and, for a worker, ``worker_id``."""
        return {"child": "notifier"} if wid == NOTIFIER else {"child": "worker",
                                                               "worker_id": wid}

    def _drain(self) -> int:
        t0 = time.monotonic()
        workers = len([w for w in self.procs if w != NOTIFIER])
        happening(log, "drain", f"draining {workers} workers", phase="start", workers=workers,
                  drain_delay=self.cfg.drain_delay, drain_grace=self.cfg.drain_grace)
        for p in self.procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.drain_delay + self.cfg.drain_grace + 5
        killed = 0
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.error("worker pid %d did not stop in time; killing it", p.pid)
                p.kill()
                p.join()
                killed += 1
        happening(log, "drain", f"stopped: drained in {time.monotonic() - t0:.2f} s",
                  phase="done", duration_ms=round((time.monotonic() - t0) * 1000),
                  killed=killed)
        return 0

    def _banner(self) -> None:
        # with JSON logs, stdout is theirs alone: the banner (for people) goes to stderr
        out = sys.stdout if self.cfg.log_format == "text" else sys.stderr
        print("\n".join(banner(self.cfg, self.bound, self.event_ids, self.embedded,
                               out.isatty())), file=out, flush=True)
        base = banner_base(self.bound, self.cfg.port)
        happening(log, "ready", f"every worker is ready: {base}", url=base,
                  workers=self.cfg.workers, events=[ev for ev, _ in self.event_ids],
                  pid=os.getpid())


def _child(wid: int) -> str:
    return "the notifier" if wid == NOTIFIER else f"worker {wid}"


def _signal_name(code: int | None) -> str | None:
    """The signal that ended a process of exit code ``code`` (negative), else None."""
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return str(-code)


def _url_host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def banner_base(bound: str, port: int) -> str:
    """The URL that reaches a server bound to ``bound`` from this host."""
    if bound in ("0.0.0.0", "::"):
        return f"http://{_url_host('127.0.0.1' if bound == '0.0.0.0' else '::1')}:{port}"
    return f"http://{_url_host(bound)}:{port}"


def banner(cfg: Config, bound: str, event_ids: list[tuple[str, str]], embedded=None,
           tty: bool = False) -> list[str]:
    """The lines printed once every worker is up: where it listens (the address
    bound, and a URL that reaches it from this host), Redis (password hidden), where
    the admin token is (printed only to a terminal, and once), the identity mode, and
    commands to try that work as printed."""
    base = banner_base(bound, cfg.port)
    where = ""
    if bound in ("0.0.0.0", "::"):
        scope = "every IPv4 address of this host" if bound == "0.0.0.0" else \
            "every address of this host, IPv6 and IPv4"
        where = f" ({scope}; from here: {base})"
    lines = [f"flashgate {__version__}: listening on http://{_url_host(bound)}:{cfg.port}{where}"]
    workers = f"{cfg.workers} worker" + ("s" if cfg.workers != 1 else "")
    if embedded is not None:
        lines.append(f"  Redis: embedded, private ({embedded.url}, data in {embedded.data_dir}); "
                     f"{workers}")
    else:
        lines.append(f"  Redis: {redact(cfg.redis)}; {workers}")
    if cfg.admin_token_file:
        if tty:
            lines.append(f"  admin token: {cfg.admin_token}  (kept in {cfg.admin_token_file})")
        else:
            lines.append(f"  admin token: in {cfg.admin_token_file}")
        admin = f"-H \"Authorization: Bearer $(cat {shlex.quote(cfg.admin_token_file)})\""
    else:
        lines.append("  admin token: the one given (--admin-token / FLASHGATE_ADMIN_TOKEN)")
        admin = "-H \"Authorization: Bearer $FLASHGATE_ADMIN_TOKEN\""
    if cfg.webhook_secret:
        lines.append("  webhooks: signed with the webhook secret"
                     + (f" (from {cfg.webhook_secret_file})" if cfg.webhook_secret_file else "")
                     + "; sent by this instance's notifier process")
    else:
        lines.append("  webhooks: not sent by this instance (no webhook secret: "
                     "--webhook-secret-file or FLASHGATE_WEBHOOK_SECRET)")
    if cfg.user_secret:
        mint = "flashgate token u1"
        if cfg.max_token_ttl < 3600:
            mint += f" --ttl {cfg.max_token_ttl}"
        if cfg.user_secret_file:
            mint += f" --secret-file {shlex.quote(cfg.user_secret_file)}"
        lines.append(f"  identity: signed buyer tokens; mint one: {mint}")
        if not cfg.user_secret_file:
            lines.append("            (it reads the gateway's secret from FLASHGATE_USER_SECRET: "
                         "set it in that shell, or use --secret-file FILE)")
        who = f"-H \"Authorization: Bearer $({mint})\""
    else:
        lines.append("  identity: DEV MODE, X-User-Id is taken on trust: anyone can buy as anyone")
        lines.append("            (for a real sale give a user secret: FLASHGATE_USER_SECRET or "
                     "--user-secret-file; see flashgate serve --help)")
        who = "-H 'X-User-Id: u1'"
    for ev, _ in event_ids:
        lines.append(f"  event {ev}: {base}/api/v1/events/{ev}")
        lines.append(f"    sale page: {base}/e/{ev}")
        lines.append(f"    dashboard: {base}/dashboard/{ev}  (sign in with the admin token)")
    if event_ids:
        ev, sku = event_ids[0]
        lines.append(f"  try: curl {base}/api/v1/events/{ev}")
        lines.append(f"       curl -X POST {who} -d '{{\"sku\": \"{sku}\"}}' "
                     f"{base}/api/v1/events/{ev}/buy")
        lines.append(f"       curl {admin} {base}/api/v1/admin/events/{ev}/stats")
    return lines
