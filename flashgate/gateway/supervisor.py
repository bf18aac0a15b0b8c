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
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

import orjson

from flashgate.config import Config
from flashgate.core import scripts, store
from flashgate.core.events import EventError, parse_event
from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable

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


def admin_token(cfg: Config) -> str:
    if cfg.admin_token:
        return cfg.admin_token
    path = Path(cfg.data_dir) / "admin_token"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


async def prepare(cfg: Config) -> list[tuple[str, str]]:
    """Load the --event file (or the demo when Redis holds no event); returns the
    events Redis holds, as (event id, id of its first SKU)."""
    conn = RedisConnection(cfg.redis)
    deadline = time.monotonic() + 30
    while True:
        try:
            await conn.connect()
            break
        except (RedisUnavailable, RedisError, TimeoutError) as e:
            # RedisError: e.g. -LOADING while Redis replays its AOF
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for Redis: %s", e)
            await asyncio.sleep(0.5)
    try:
        await scripts.load(conn.execute)
        moved = await store.migrate_layout(conn)
        if moved:
            log.info("moved %d orders of the earlier layout into their SKUs' hashes", moved)
        with contextlib.suppress(RedisError):  # INFO may be disabled on a managed Redis
            policy = store.evicting_policy(await conn.execute("INFO", "memory"))
            if policy:
                log.warning("Redis may evict keys (maxmemory-policy %s): evicted keys lose "
                            "orders; set maxmemory-policy noeviction", policy)
        if cfg.event:
            raw = orjson.loads(Path(cfg.event).read_bytes())
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
                raise EventError("bad_request", "the event file needs an \"id\"")
            await store.save_event(conn, parse_event(raw["id"], raw))
        _, events = await store.load_events(conn)
        if not events and cfg.demo:
            d = demo_event(await store.redis_time_ms(conn))
            await store.save_event(conn, parse_event(d["id"], d))
            _, events = await store.load_events(conn)
        return [(e.id, e.skus[0].id if e.skus else "") for e in events]
    finally:
        conn.close()


def _worker_main(cfg_dict: dict, worker_id: int, ready, parent: int) -> None:
    die_with_parent()
    from flashgate.gateway import worker

    worker.run(Config(**cfg_dict), worker_id, ready, parent)


def serve(cfg: Config) -> int:
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO),
                        format="%(asctime)s supervisor %(levelname)s %(name)s: %(message)s")
    embedded = None
    if not cfg.redis:
        from flashgate.embedded import EmbeddedRedis, RedisNotFound

        try:
            embedded = EmbeddedRedis(Path(cfg.data_dir) / "redis",
                                     appendfsync=cfg.appendfsync).start()
        except (RedisNotFound, RuntimeError) as e:
            print(f"flashgate: {e}", file=sys.stderr)
            return 2
        cfg.redis = embedded.url
        log.info("embedded redis-server on %s (data in %s, appendfsync %s)",
                 embedded.url, embedded.data_dir, cfg.appendfsync)
    try:
        cfg.admin_token = admin_token(cfg)
        try:
            event_ids = asyncio.run(prepare(cfg))
        except (EventError, OSError, orjson.JSONDecodeError, RedisUnavailable, RedisError,
                TimeoutError) as e:
            print(f"flashgate: cannot load the events: {e}", file=sys.stderr)
            return 2
        # hold the port (bound, not listening: it takes no connections) so that
        # port 0 resolves once for every worker
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            holder.bind((cfg.host, cfg.port))
        except OSError as e:
            print(f"flashgate: cannot listen on {cfg.host}:{cfg.port}: {e}", file=sys.stderr)
            return 2
        cfg.port = holder.getsockname()[1]
        return Supervisor(cfg, event_ids).run()
    finally:
        if embedded is not None:
            embedded.stop()


class Supervisor:
    def __init__(self, cfg: Config, event_ids: list[tuple[str, str]]):
        self.cfg = cfg
        self.event_ids = event_ids
        self.ctx = multiprocessing.get_context("spawn")
        self.ready = self.ctx.Queue()
        self.procs: dict[int, multiprocessing.Process] = {}
        self.restarts: list[float] = []
        self.stopping = False

    def _start(self, worker_id: int) -> None:
        p = self.ctx.Process(target=_worker_main, args=(self.cfg.to_dict(), worker_id, self.ready, os.getpid()),
                             name=f"flashgate-worker-{worker_id}", daemon=False)
        p.start()
        self.procs[worker_id] = p

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
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
        self._banner()
        while not self.stopping:
            time.sleep(0.1)
            for wid, p in list(self.procs.items()):
                if p.is_alive() or self.stopping:
                    continue
                log.error("worker %d (pid %d) exited with %s; restarting", wid, p.pid, p.exitcode)
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < 10] + [now]
                if len(self.restarts) > 5 * cfg.workers:
                    time.sleep(1.0)  # crash loop: do not spin
                self._start(wid)
        return self._drain()

    def _drain(self) -> int:
        log.info("draining %d workers", len(self.procs))
        for p in self.procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.drain_delay + self.cfg.drain_grace + 5
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.error("worker pid %d did not stop in time; killing it", p.pid)
                p.kill()
                p.join()
        log.info("stopped")
        return 0

    def _banner(self) -> None:
        cfg = self.cfg
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
        base = f"http://{host}:{cfg.port}"
        lines = [
            f"flashgate: listening on {base} ({cfg.workers} workers, Redis {cfg.redis})",
            f"  admin token: {cfg.admin_token}",
            "  identity: " + ("signed buyer tokens (flashgate token USER_ID)" if cfg.user_secret
                              else "dev mode, send X-User-Id: <user>"),
        ]
        for ev, _ in self.event_ids:
            lines.append(f"  event {ev}: {base}/api/v1/events/{ev}")
        if self.event_ids:
            ev, sku = self.event_ids[0]
            who = "-H 'X-User-Id: u1'" if not cfg.user_secret else \
                "-H \"Authorization: Bearer $(flashgate token u1)\""
            lines.append(f"  try: curl {base}/api/v1/events/{ev}")
            lines.append(f"       curl -X POST {who} -d '{{\"sku\": \"{sku}\"}}' "
                         f"{base}/api/v1/events/{ev}/buy")
            lines.append(f"       curl -H 'Authorization: Bearer {cfg.admin_token}' "
                         f"{base}/api/v1/admin/events/{ev}/stats")
        print("\n".join(lines), flush=True)
