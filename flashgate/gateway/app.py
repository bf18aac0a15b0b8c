"""One worker's gateway, put together: the parts, their wiring, their life cycle.

    request -> _buy.BuyPath.handle          the purchase (C), or the router's entry
                 routing.Router.dispatch    every other route: handlers/
    purchases -> committer.Committer        group commit; _commit.pyx answers replies
    Redis -> refresher.Refresher            sold/stock, definitions, the clock
    counters.Counters                       the event counters into Redis
    metrics.Exporter                        this worker's figures for GET /metrics
    peers.Peers                             definition changes across this instance
    broadcast.Broadcaster                   the event streams (SSE), a frame per tick

Everything this worker knows of other workers and instances comes from Redis (the
commit replies and the refresh tick), except that the workers of one instance tell
each other when a definition changed, so an operator's 2xx means every worker of
the instance serves it.

Background work (the refresh tick, the counters' flush, the expiry of parked
requests) is registered in ``_services`` and started and stopped together.
"""

from __future__ import annotations

import asyncio
import logging
import os

from flashgate.config import Config
from flashgate.core import scripts
from flashgate.core._stock import Ledger
from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable
from flashgate.gateway import answers, handlers
from flashgate.gateway._buy import BuyPath
from flashgate.gateway.broadcast import Broadcaster
from flashgate.gateway.committer import Committer
from flashgate.gateway.counters import Counters
from flashgate.gateway.metrics import Exporter
from flashgate.gateway.peers import Peers
from flashgate.gateway.refresher import Refresher
from flashgate.gateway.routes import ROUTES
from flashgate.gateway.routing import Router
from flashgate.gateway.runtime import Runtimes
from flashgate.gateway.sweeper import Sweeper

log = logging.getLogger("flashgate.app")

PARKED_TICK_S = 0.05  # how often parked requests past their deadline are answered


def command_timeout(cfg: Config) -> float:
    """Seconds the worker's Redis connection waits for its oldest command before it
    gives the connection up (redisconn.py). 2 s; with --commit-replicas longer: a WAIT
    may take its whole timeout, and Redis runs a blocked connection's next commands
    (the next flushes, each with its WAIT, and the refresh tick) only after it."""
    if not cfg.commit_replicas:
        return 2.0
    return max(2.0, (cfg.commit_flights + 1) * cfg.commit_replicas_timeout / 1000 + 1.0)


class Gateway:
    """Everything one worker process knows and does; ``handle`` is the HTTP entry.
    ``peer_dir`` is the directory of the instance's peer channel, whose workers are told
    of definition changes (peers.py); None: a lone worker."""

    def __init__(self, cfg: Config, worker_id: int = 0, peer_dir: str | None = None):
        self.cfg = cfg
        self.worker_id = worker_id
        self.boot = os.urandom(6).hex()  # this worker's part of its order ids
        self.ledger = Ledger()
        self.conn = RedisConnection(cfg.redis, on_connect=self._on_connect,
                                    command_timeout=command_timeout(cfg))
        self.path = BuyPath(cfg, self.ledger, self.conn)
        self.runtimes = Runtimes(self.ledger, self.boot)
        self.path.skus = self.runtimes.skus  # (the same list: the path expires their waiters)
        self.committer = Committer(self.path, self.ledger, self.conn, self.runtimes,
                                   cfg.commit_flights, cfg.commit_replicas,
                                   cfg.commit_replicas_timeout)
        self.counters = Counters(self.conn, self.runtimes, self.boot, now_ms=self.path.now_ms,
                                 subscribers=self._subscribers,
                                 left=self._left if worker_id == 0 else None)
        self.exporter = Exporter(self, peer_dir)
        self.router = Router(ROUTES, handlers.make(self), self.path, cfg.admin_token.encode())
        self.refresher = Refresher(self.conn, self.ledger, self.path, self.runtimes,
                                   self._events_loaded, max_clock_skew_ms=cfg.max_clock_skew_ms)
        self.peers = None
        if peer_dir is not None and cfg.workers > 1:
            self.peers = Peers(peer_dir, worker_id, cfg.workers, self._peer_reload,
                               lambda: self.refresher.version)
        self._started = asyncio.Event()  # the first load is done
        self.handle = self.path.handle  # the HTTP entry
        self.peer_of = self.path.peer_of  # a connection's client, resolved when it opens
        self.draining = False
        self.broadcast = Broadcaster(self)
        self.sweeper = Sweeper(self.conn, self.runtimes, self.refresher, self.path.now_ms)
        self._services = (
            ("refresher", lambda: self.refresher.run(cfg.refresh_interval)),
            ("counters", self._flush_counters),
            ("parked", self._expire_parked),
            ("stream", self.broadcast.run),
            # unpaid orders past their deadline: one worker of the instance
            *((("sweeper", lambda: self.sweeper.run(cfg.sweep_interval)),)
              if worker_id == 0 else ()),
        )
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.path.bind(loop, self.router, self.committer.flush)
        self.committer.bind(loop)
        if self.peers is not None:
            self.peers.start(loop)  # before the first load: see peers.py
        said = 0.0  # when the wait was last logged: at once, then every 5 s
        while True:
            try:
                await self.conn.connect()
                break
            except (RedisUnavailable, RedisError, OSError, TimeoutError) as e:
                if loop.time() - said >= 5.0:
                    log.warning("waiting for Redis: %s", e)  # (the URL's password hidden)
                    said = loop.time()
                await asyncio.sleep(0.5)
        await self.refresher.reload()
        self._started.set()
        for name, run in self._services:
            self._tasks.append(loop.create_task(self._supervised(name, run)))

    async def stop(self) -> None:
        self.exporter.write()  # its last figures, for the instance's counters
        try:  # the last counts, if Redis answers quickly: never hold the exit up
            await asyncio.wait_for(self.counters.flush(), 0.5)
        except Exception:
            pass
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        if self.peers is not None:
            self.peers.close()
        self.conn.close()

    async def _supervised(self, name: str, run) -> None:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s stopped", name)

    async def _flush_counters(self) -> None:
        interval = self.cfg.stats_interval
        while True:
            # on the clock's multiples of the interval: the series' seconds then hold
            # exactly what was counted in them (counters.py)
            await asyncio.sleep(interval - (self.path.now_ms() / 1000) % interval)
            self.exporter.write()
            try:
                await self.counters.flush()
            except (RedisUnavailable, RedisError):
                pass
            except Exception:
                log.exception("flushing counters failed")

    def _subscribers(self, event_id: str) -> int:
        ch = self.broadcast.channels.get(event_id)
        return len(ch.subs) if ch is not None else 0

    def _left(self, ert) -> dict[str, int]:
        out = {}
        for srt in ert.skus:
            stock, sold, _, _ = self.ledger.state(srt.idx)
            out[srt.sku.id] = max(0, stock - sold)
        return out

    async def _expire_parked(self) -> None:
        while True:
            await asyncio.sleep(PARKED_TICK_S)
            try:
                self.path.expire_waiters()
            except Exception:
                log.exception("expiring parked requests failed")

    async def _on_connect(self, execute) -> None:
        await scripts.load(execute)
        self.refresher.forget()  # whatever happened while away: the next tick reloads

    def _events_loaded(self, runtimes: Runtimes) -> None:
        self.router.compile_events(runtimes.events)

    # -- state ----------------------------------------------------------------

    def ready(self) -> bool:
        return (self.refresher.loaded and self.conn.connected and self.path.clock_ok
                and not self.draining)

    @property
    def busy(self) -> bool:
        """Commits or parked requests not answered yet."""
        return self.path.queued > 0 or self.path.waiting > 0

    def head_answer(self, req):
        """The answer to a request under /api/v1/admin/ with a body, from its head alone
        (the connection asks before it reads the body): 401 without the admin token,
        else None (read the body, then route it)."""
        return None if self.router.is_admin(req) else answers.UNAUTHENTICATED

    async def _peer_reload(self) -> int:
        # another worker changed a definition: load it, once this worker has started (a
        # worker still connecting to Redis answers when it can, not with a failure)
        await self._started.wait()
        return await self.refresher.reload()

    async def changed(self) -> bool:
        """A definition changed in Redis: load it here, and see that every other
        worker of this instance has; False if that could not be done."""
        try:
            version = await self.refresher.reload()
        except (RedisUnavailable, RedisError) as e:
            log.warning("cannot reload the definitions: %s", e)
            return False
        if self.peers is None:
            return True
        return await self.peers.announce(version)
