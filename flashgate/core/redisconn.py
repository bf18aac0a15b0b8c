"""A small pipelined Redis client for one event loop, on hiredis's sans-IO reader.

One TCP (or unix) connection; commands are written as soon as they are issued and
answered in order, so several commands in one loop turn travel in one segment
(pipelining) and a reply is matched to its command by position. Each command
carries either a Future or a plain callback ``cb(reply)``; a Redis error reply
arrives as a ``RedisError`` instance, a lost connection as ``RedisUnavailable``.

Only what flashgate needs: no pub/sub, no cluster redirections (every script's
keys share one hash tag, so a cluster-aware proxy routes them whole).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from urllib.parse import unquote, urlparse

import hiredis

log = logging.getLogger("flashgate.redis")


class RedisError(Exception):
    """An error reply from Redis."""


class RedisUnavailable(ConnectionError):
    """Redis cannot be reached, or the connection broke before the reply came."""


def parse_url(url: str) -> dict:
    """``redis://[:password@]host[:port][/db]`` or ``unix:///path/to.sock[?db=N]``."""
    u = urlparse(url)
    opts: dict = {"password": unquote(u.password) if u.password else None, "db": 0}
    if u.scheme == "unix":
        opts["path"] = u.path
        for part in u.query.split("&"):
            if part.startswith("db="):
                opts["db"] = int(part[3:])
    elif u.scheme in ("redis", ""):
        opts["host"] = u.hostname or "127.0.0.1"
        opts["port"] = u.port or 6379
        if u.path and u.path != "/":
            opts["db"] = int(u.path.lstrip("/"))
    else:
        raise ValueError(f"unsupported Redis URL scheme {u.scheme!r} (use redis:// or unix://)")
    return opts


class _Protocol(asyncio.Protocol):
    __slots__ = ("transport", "reader", "waiters", "lost")

    def __init__(self, lost: Callable[[Exception | None], None]):
        self.transport = None
        self.reader = hiredis.Reader(replyError=RedisError)
        self.waiters: deque = deque()
        self.lost = lost

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        reader = self.reader
        reader.feed(data)
        popleft = self.waiters.popleft
        while True:
            reply = reader.gets()
            if reply is False:
                return
            waiter = popleft()
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    if isinstance(reply, RedisError):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
            else:
                try:
                    waiter(reply)
                except Exception:  # a callback's bug must not break the connection
                    log.exception("redis reply callback failed")

    def connection_lost(self, exc):
        self.transport = None
        err = RedisUnavailable(f"connection to Redis lost: {exc or 'closed'}")
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_exception(err)
            else:
                try:
                    waiter(err)
                except Exception:
                    log.exception("redis reply callback failed")
        self.lost(exc)


class RedisConnection:
    """A connection that knows how to reconnect. ``connected`` is False while down;
    commands issued then fail at once with RedisUnavailable."""

    def __init__(self, url: str, *, on_connect=None, on_lost=None, connect_timeout: float = 2.0):
        self.url = url
        self.opts = parse_url(url)
        self.on_connect = on_connect  # async callable(conn), run after each (re)connect
        self.on_lost = on_lost  # callable(), when the connection breaks
        self.connect_timeout = connect_timeout
        self._proto: _Protocol | None = None
        self._closing = False
        self._reconnect_task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self._proto is not None and self._proto.transport is not None

    @property
    def pending(self) -> int:
        """Commands written and not answered yet."""
        return len(self._proto.waiters) if self._proto is not None else 0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        proto = _Protocol(self._lost)
        o = self.opts
        if "path" in o:
            coro = loop.create_unix_connection(lambda: proto, o["path"])
        else:
            coro = loop.create_connection(lambda: proto, o["host"], o["port"])
        try:
            await asyncio.wait_for(coro, self.connect_timeout)
        except (TimeoutError, OSError) as e:
            raise RedisUnavailable(f"cannot connect to Redis at {self.url}: {e}") from None
        self._proto = proto
        if o["password"]:
            await self.execute("AUTH", o["password"])
        if o["db"]:
            await self.execute("SELECT", o["db"])
        if self.on_connect is not None:
            await self.on_connect(self)

    def _lost(self, exc) -> None:
        self._proto = None
        if self._closing:
            return
        log.warning("lost the connection to Redis (%s); reconnecting", exc or "closed")
        if self.on_lost is not None:
            self.on_lost()
        self.start_reconnecting()

    def start_reconnecting(self) -> None:
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        while not self._closing and not self.connected:
            try:
                await self.connect()
                log.warning("reconnected to Redis")
                return
            except (RedisUnavailable, RedisError, OSError) as e:
                log.debug("reconnect failed: %s", e)
                if self._proto is not None and self._proto.transport is not None:
                    self._proto.transport.close()
                self._proto = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def send(self, args, callback) -> None:
        """Issue one command; ``callback(reply)`` gets the reply, a RedisError or a
        RedisUnavailable (at once when not connected)."""
        proto = self._proto
        if proto is None or proto.transport is None:
            callback(RedisUnavailable("Redis is not connected"))
            return
        data = hiredis.pack_command(tuple(args))
        proto.waiters.append(callback)
        proto.transport.write(data)

    def send_many(self, commands, callbacks) -> None:
        """Issue several commands in one write; callbacks as for ``send``."""
        proto = self._proto
        if proto is None or proto.transport is None:
            err = RedisUnavailable("Redis is not connected")
            for cb in callbacks:
                cb(err)
            return
        data = b"".join([hiredis.pack_command(tuple(c)) for c in commands])
        proto.waiters.extend(callbacks)
        proto.transport.write(data)

    def execute(self, *args) -> asyncio.Future:
        """Issue one command; the Future resolves to the reply (or raises)."""
        fut = asyncio.get_running_loop().create_future()
        proto = self._proto
        if proto is None or proto.transport is None:
            fut.set_exception(RedisUnavailable("Redis is not connected"))
            return fut
        data = hiredis.pack_command(args)
        proto.waiters.append(fut)
        proto.transport.write(data)
        return fut

    async def pipeline(self, commands) -> list:
        """Issue several commands in one write and wait for all replies. Error
        replies come back as RedisError instances in the list (not raised)."""
        loop = asyncio.get_running_loop()
        proto = self._proto
        if proto is None or proto.transport is None:
            raise RedisUnavailable("Redis is not connected")
        data = b"".join([hiredis.pack_command(tuple(c)) for c in commands])
        futs = [loop.create_future() for _ in commands]
        proto.waiters.extend(futs)
        proto.transport.write(data)
        out = []
        for f in futs:
            try:
                out.append(await f)
            except RedisError as e:
                out.append(e)
        return out

    def close(self) -> None:
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
