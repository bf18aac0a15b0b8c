"""``flashgate orders follow``: the orders of the sale, as they happen, into the shop's
database (a PostgreSQL table) or a JSON-lines file.

The loop: a batch of order events from the streams (core/follow.py) -> written to
the sink (sinks.py) -> acknowledged in Redis. Nothing is acknowledged before the sink
made it durable; a sink that fails is retried with back-off (the batch kept, nothing
acknowledged) for as long as it takes; a Redis that goes away is reconnected to.
SIGTERM / SIGINT: the batch in hand is finished (written and acknowledged, unless the
sink is down), then the follower exits 0.

Exit codes: 0 stopped by a signal, 1 Redis or the sink cannot be reached at start,
2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import time

from flashgate import __version__

log = logging.getLogger("flashgate.follow")

STOP_GRACE = 3.0  # seconds a write in progress may take to finish after SIGTERM

USAGE = """usage: flashgate orders follow --to TARGET [options]

Follows the orders of the sale into the shop's database. (flashgate orders follow --help)
"""


def parser() -> argparse.ArgumentParser:
    from flashgate.core.follow import DEFAULT_GROUP

    p = argparse.ArgumentParser(
        prog="flashgate orders follow", allow_abbrev=False,
        description="Follow every order event (created, paid, cancelled, expired) of the "
        "sale's events into a PostgreSQL table (flashgate_orders, created if missing: one "
        "row per order with its latest status) or a JSON-lines file. Followers of the same "
        "--group share the work and take over the entries of one that died; an entry is "
        "acknowledged only once the database committed it (or the file was fsynced).")
    p.add_argument("--version", action="version", version=f"flashgate {__version__}")
    p.add_argument("--to", required=True, metavar="TARGET",
                   help="postgresql://USER@HOST:PORT/DB (a password is better given by "
                        "PGPASSWORD or ~/.pgpass; any libpq option as ?name=value), or "
                        "jsonl:PATH (a line per order event, appended)")
    p.add_argument("--event", action="append", metavar="ID",
                   help="follow this event only (repeatable); default: every event, those "
                        "created later included")
    p.add_argument("--redis", default=os.environ.get("FLASHGATE_REDIS", ""), metavar="URL",
                   help="the sale's Redis, as for flashgate serve [env FLASHGATE_REDIS]; "
                        "none: the embedded Redis of --data-dir, if one runs there")
    p.add_argument("--data-dir", default=os.environ.get("FLASHGATE_DATA_DIR", "./.flashgate"),
                   metavar="DIR",
                   help="the data directory of a flashgate serve with an embedded Redis "
                        "[env FLASHGATE_DATA_DIR, default ./.flashgate]")
    p.add_argument("--group", default=DEFAULT_GROUP, metavar="NAME",
                   help=f"the Redis consumer group (default {DEFAULT_GROUP}); followers "
                        "that write to different places need different groups")
    p.add_argument("--consumer", metavar="NAME",
                   help="this follower's consumer name, one no running follower of the group "
                        "has (default: host-pid-random)")
    p.add_argument("--claim-idle", type=float, default=30.0, metavar="SECONDS",
                   help="entries delivered to a follower and not acknowledged for this long "
                        "are taken over (its follower died; default 30)")
    p.add_argument("--batch", type=int, default=1000, metavar="N",
                   help="stream entries read per stream and batch (default 1000)")
    p.add_argument("--write-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a database write that takes longer fails and is tried again on a "
                        "new connection (a database that stopped answering; default 30)")
    p.add_argument("--progress", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines (default 10; 0: none)")
    p.add_argument("--log-level", default=os.environ.get("FLASHGATE_LOG_LEVEL", "info"),
                   choices=("debug", "info", "warning", "error"),
                   help="[env FLASHGATE_LOG_LEVEL, default info]")
    p.add_argument("--log-format", default=os.environ.get("FLASHGATE_LOG_FORMAT", "json"),
                   choices=("json", "text"),
                   help="json: one JSON object per line on stdout; text: a human line per "
                        "record, as flashgate serve's [env FLASHGATE_LOG_FORMAT, default json]")
    return p


def _fail(message: str, code: int) -> int:
    print(f"flashgate orders follow: {message}", file=sys.stderr)
    return code


def redis_url(a: argparse.Namespace) -> str:
    """--redis, else the embedded Redis that flashgate serve runs in --data-dir (its
    unix socket, DATA_DIR/redis/redis.sock), else ""."""
    if a.redis:
        return a.redis
    sock = os.path.join(os.path.abspath(a.data_dir), "redis", "redis.sock")
    return f"unix://{sock}" if os.path.exists(sock) else ""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] != "follow":
        print(f"flashgate orders: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    a = parser().parse_args(argv[1:])  # (a usage error exits 2)
    from flashgate.core.redisconn import parse_url
    from flashgate.sinks import check_target

    try:
        check_target(a.to)
    except ValueError as e:
        return _fail(str(e), 2)
    if a.event:
        from flashgate.core.events import ID_RE

        bad = [e for e in a.event if not ID_RE.match(e)]
        if bad:
            return _fail(f"--event {bad[0]!r} is not an event id ([A-Za-z0-9_-]{{1,64}})", 2)
    if not a.claim_idle > 0:
        return _fail("--claim-idle must be a positive number of seconds", 2)
    if not a.write_timeout > 0:
        return _fail("--write-timeout must be a positive number of seconds", 2)
    if a.batch < 1:
        return _fail("--batch must be at least 1", 2)
    if a.log_format not in ("json", "text"):
        return _fail("--log-format must be json or text", 2)
    url = redis_url(a)
    if not url:
        return _fail(f"no Redis: give --redis URL (or FLASHGATE_REDIS); no embedded Redis "
                     f"runs in {os.path.abspath(a.data_dir)} (--data-dir)", 2)
    try:
        parse_url(url)
    except ValueError as e:
        return _fail(f"--redis: {e}", 2)
    from flashgate import logs

    logs.setup("follower", level=a.log_level, fmt=a.log_format)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - a dependency
        runner = asyncio.run
    return runner(Follow(a, url).run())


class Follow:
    def __init__(self, a: argparse.Namespace, url: str):
        self.a = a
        self.url = url
        self.stopping = False
        self.wake = None
        self.written = self.entries = self.changed = 0
        self._last = (time.monotonic(), 0)

    def _stop(self, signame: str) -> None:
        if self.stopping:
            log.warning("%s again: leaving now (unacknowledged entries will be taken over)",
                        signame)
            os._exit(1)
        log.info("%s: finishing the batch in hand, then stopping", signame)
        self.stopping = True
        self.follower.stop()
        self.wake.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, or less if a stop is asked for."""
        try:
            await asyncio.wait_for(self.wake.wait(), seconds)
        except TimeoutError:
            pass

    async def run(self) -> int:
        from flashgate.core.follow import OrderFollower, redis_version
        from flashgate.core.redisconn import (
            RedisConnection,
            RedisError,
            RedisUnavailable,
            redact,
        )
        from flashgate.sinks import SinkError, make_sink

        a = self.a
        self.wake = asyncio.Event()
        block_ms = 500
        conn = RedisConnection(self.url, command_timeout=10.0)
        try:
            await conn.connect()
            version = await redis_version(conn)
        except (RedisUnavailable, RedisError, OSError) as e:
            why = str(e) if isinstance(e, RedisUnavailable) else f"Redis at {redact(self.url)}: {e}"
            return _fail(why, 1)
        if version < (6, 2):
            conn.close()
            return _fail(f"Redis {version[0]}.{version[1]} at {redact(self.url)}: the "
                         "follower needs Redis 6.2 or later (XAUTOCLAIM)", 1)
        sink = make_sink(a.to, write_timeout=a.write_timeout)
        try:
            await sink.open()
        except SinkError as e:
            conn.close()
            return _fail(str(e), 1)
        self.follower = follower = OrderFollower(
            conn, group=a.group, consumer=a.consumer, events=a.event,
            claim_idle_ms=int(a.claim_idle * 1000), count=a.batch, block_ms=block_ms)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig.name)
        log.info("following the orders of %s from %s into %s (group %s, consumer %s)",
                 ", ".join(a.event) if a.event else "every event", redact(self.url), sink.where,
                 a.group, follower.consumer)
        progress_at = time.monotonic() + a.progress if a.progress > 0 else float("inf")
        redis_delay = 0.1
        try:
            while not self.stopping:
                if time.monotonic() >= progress_at:
                    self._progress()
                    progress_at = time.monotonic() + a.progress
                try:
                    batch = await follower.next_batch()
                    redis_delay = 0.1
                except (RedisUnavailable, RedisError) as e:
                    log.warning("Redis: %s; trying again in %.1f s", e, redis_delay)
                    if not conn.connected:
                        conn.start_reconnecting()
                    await self._pause(redis_delay)
                    redis_delay = min(redis_delay * 2, 5.0)
                    continue
                if not batch.entries:
                    continue
                if not await self._write(sink, batch):
                    break  # stopped while the sink was down: nothing acknowledged
                try:
                    await follower.ack(batch)
                except (RedisUnavailable, RedisError) as e:
                    # written but not acknowledged: the entries stay pending and are
                    # delivered again after --claim-idle (a repeat changes nothing)
                    log.warning("Redis: %s; %d entries written but not acknowledged (they "
                                "will come again)", e, len(batch.entries))
        finally:
            self._progress(final=True)
            await sink.close()
            conn.close()
        return 0

    async def _write(self, sink, batch) -> bool:
        """Write the batch, retrying with back-off until it is durable: True, or False
        if a stop came first."""
        from flashgate.sinks import SinkError

        delay = 0.2
        while True:
            try:
                changed = await self._write_once(sink, batch)
            except SinkError as e:
                if self.stopping:
                    log.warning("%s; stopping with %d entries not written (not acknowledged: "
                                "they will come again)", e, len(batch.entries))
                    return False
                wait = delay * random.uniform(0.8, 1.2)
                log.warning("%s; %d entries kept, trying again in %.1f s", e,
                            len(batch.entries), wait)
                await self._pause(wait)
                delay = min(delay * 2, 30.0)
                continue
            if delay > 0.2:
                log.warning("%s works again", sink.where)
            self.entries += len(batch.entries)
            self.written += sum(len(e.orders) for e in batch.entries)
            self.changed += changed
            return True

    async def _write_once(self, sink, batch) -> int:
        """One write; a stop that comes meanwhile gives it STOP_GRACE seconds, then
        abandons it (not committed, or committed and not acknowledged: either way the
        entries come again)."""
        from flashgate.sinks import SinkError

        task = asyncio.ensure_future(sink.write(batch))
        waker = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait((task, waker), return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait((task,), timeout=STOP_GRACE)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await sink.close()
                raise SinkError(f"{sink.where}: the write in progress was abandoned at the stop")
            return task.result()
        finally:
            waker.cancel()

    def _progress(self, final: bool = False) -> None:
        now = time.monotonic()
        then, before = self._last
        self._last = (now, self.written)
        if self.written == before and not final:
            return
        rate = (self.written - before) / max(now - then, 1e-9)
        log.info("%s%d order events from %d entries written (%d rows changed); %.0f orders/s "
                 "over the last %.1f s", "stopped: " if final else "", self.written,
                 self.entries, self.changed, rate, now - then)
