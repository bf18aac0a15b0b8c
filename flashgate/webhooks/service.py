"""The notifier: the process of an instance that sends its webhooks.

The supervisor starts it (and restarts it when it dies) when a webhook secret is
configured; it runs the producers (producers.py, and orderfeed.py for the orders'
notifications) and the sender (sender.py) on a
uvloop loop of its own, with its own Redis connection, so neither a slow receiver nor
the work of signing and sending ever takes time from a worker's purchase path.
Several instances each run one: the outbox's claims decide who sends what.

SIGTERM: stop claiming and producing, let attempts in flight finish (at most the
webhook timeout), exit 0; a delivery cut short is sent again when its lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from flashgate import logs
from flashgate.config import Config
from flashgate.core import keys
from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable
from flashgate.gateway.lifeline import stop_future
from flashgate.webhooks import outbox
from flashgate.webhooks.orderfeed import OrderFeed
from flashgate.webhooks.producers import Producers
from flashgate.webhooks.sender import Sender

log = logging.getLogger("flashgate.webhooks")

PRODUCER_TICK_S = 0.5
HOUSEKEEPING_S = 60.0  # how often the outbox's memory of ids is trimmed


async def _serve(cfg: Config, parent: int) -> int:
    loop = asyncio.get_running_loop()
    stop = stop_future(loop, parent, "notifier", log)
    conn = RedisConnection(cfg.redis)
    said = float("-inf")
    while not stop.done():
        try:
            await conn.connect()
            break
        except (RedisUnavailable, RedisError, OSError, TimeoutError) as e:
            if time.monotonic() - said >= 5.0:
                log.warning("notifier: waiting for Redis: %s", e)
                said = time.monotonic()
            await asyncio.wait([stop], timeout=0.5)
    if stop.done():
        conn.close()
        return 0
    sender = Sender(conn, cfg.webhook_secret.encode(), concurrency=cfg.webhook_concurrency,
                    timeout=cfg.webhook_timeout, retry_min=cfg.webhook_retry_min,
                    retry_max=cfg.webhook_retry_max, give_up=cfg.webhook_give_up)
    producers = Producers(conn)
    feed = OrderFeed(cfg.redis)
    tasks = [loop.create_task(_supervised("sender", sender.run)),
             loop.create_task(_supervised("producers",
                                          lambda: producers.run(PRODUCER_TICK_S))),
             loop.create_task(_supervised("housekeeping", lambda: _housekeeping(conn))),
             loop.create_task(_supervised("order feed", feed.run))]
    await stop
    feed.stop()
    for t in tasks[1:]:
        t.cancel()
    await sender.stop(grace=cfg.webhook_timeout)
    await asyncio.wait(tasks, timeout=2.0)
    for t in tasks:
        t.cancel()
    conn.close()
    log.info("notifier: stopped (%d delivered, %d failed attempts, %d given up)",
             sender.sent, sender.failed, sender.dead)
    return 0


async def _supervised(name: str, run) -> None:
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notifier: %s stopped; restarting it", name)
            await asyncio.sleep(1.0)


async def _housekeeping(conn: RedisConnection) -> None:
    last_dead = 0
    while True:
        try:
            sec, _ = await conn.execute("TIME")
            await outbox.forget_old(conn, int(sec) * 1000)
            state = await outbox.pending(conn)
            if state["dead"] > last_dead:
                log.warning("notifier: %d webhook deliveries given up are kept in %s",
                            state["dead"], keys.HOOKS_DEAD)
            last_dead = state["dead"]
        except (RedisUnavailable, RedisError):
            pass
        await asyncio.sleep(HOUSEKEEPING_S)


def run(cfg: Config, parent: int | None = None) -> None:
    """Entry point of the notifier process; ``parent`` is the supervisor's pid."""
    logs.setup("notifier", level=cfg.log_level, fmt=cfg.log_format)
    import uvloop

    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:
        sys.exit(0)
    sys.exit(uvloop.run(_serve(cfg, parent)))
