"""A small pipelined Redis client for one event loop, on hiredis's sans-IO reader.

One TCP (or unix) connection; commands are written as soon as they are issued and
answered in order, so several commands in one loop turn travel in one segment
(pipelining) and a reply is matched to its command by position. Each command
carries either a Future or a plain callback ``cb(reply)``; a Redis error reply
arrives as a ``RedisError`` instance, a lost connection as ``RedisUnavailable``.

A connection is published (``connected``) only once AUTH, SELECT and the
``on_connect`` hook have run on it. A watchdog closes a connection whose oldest
unanswered command is older than ``command_timeout``: a stalled Redis (a stuck
script, a silent network path) then fails fast, like a lost one, instead of
leaving requests hanging.

Only what flashgate needs: no pub/sub, no cluster redirections (every script's
keys share one hash tag, so a cluster-aware proxy routes them whole).

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` for TLS (the
server's certificate is verified against the system CAs, or the CA file of
``?ssl_ca_certs=/path/ca.pem``; ``ssl_certfile`` and ``ssl_keyfile`` give a client
certificate, ``ssl_check_hostname=false`` and ``ssl_cert_reqs=none`` loosen the
checks), and ``unix://[[user]:password@]/path/to.sock[?db=N]``. ``redact(url)``
hides the password wherever a URL is printed or logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote, urlparse

import hiredis

from flashgate.logs import happening

log = logging.getLogger("flashgate.redis")


class RedisError(Exception):
    """An error reply from Redis."""


class RedisUnavailable(ConnectionError):
    """Redis cannot be reached, or the connection broke before the reply came."""


_TLS_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                "ssl_check_hostname")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_url(url: str) -> dict:
    """The parts of a Redis URL (see the module's docstring): ``password``,
    ``username`` (None when not given), ``db``, then ``path`` (unix) or ``host`` and
    ``port``, and ``tls`` (a dict of the ``ssl_*`` query options, for rediss://) or
    None. Raises ValueError for what cannot work."""
    u = urlparse(url)
    opts: dict = {"password": unquote(u.password) if u.password is not None else None,
                  "username": unquote(u.username) if u.username else None,
                  "db": 0, "tls": None}
    query = dict(parse_qsl(u.query, keep_blank_values=True))
    if "db" in query:
        opts["db"] = _int(query.pop("db"), "db")
    if u.scheme == "unix":
        if not u.path:
            raise ValueError("a unix:// Redis URL needs a socket path (unix:///path/to.sock)")
        opts["path"] = u.path
    elif u.scheme in ("redis", "rediss", ""):
        opts["host"] = u.hostname or "127.0.0.1"
        try:
            opts["port"] = u.port or 6379
        except ValueError:
            raise ValueError("the Redis URL's port is not a number in 0-65535") from None
        if u.path and u.path != "/":
            opts["db"] = _int(u.path.lstrip("/"), "db")
        if u.scheme == "rediss":
            opts["tls"] = {k: query.pop(k) for k in _TLS_OPTIONS if k in query}
    else:
        raise ValueError(f"unsupported Redis URL scheme {u.scheme!r} "
                         "(use redis://, rediss:// or unix://)")
    if query:
        names = ", ".join(sorted(query))
        raise ValueError(f"unknown Redis URL option(s) {names}"
                         + (" (ssl_* options need rediss://)" if "ssl_" in names else ""))
    return opts


def _int(raw: str, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"the Redis URL's {what} is not a number: {raw!r}") from None


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to print."""
    try:
        u = urlparse(url)
        if u.password is None:
            return url
    except ValueError:
        return "<unparsable Redis URL>"
    user = u.username or ""
    host = u.netloc.rpartition("@")[2]
    return u._replace(netloc=f"{user}:***@{host}").geturl()


def tls_context(tls: dict) -> ssl.SSLContext:
    """The client TLS context of a rediss:// URL's options: certificate and host name
    verified (system CAs, or ``ssl_ca_certs`` / ``ssl_ca_path``) unless loosened."""
    ctx = ssl.create_default_context(cafile=tls.get("ssl_ca_certs") or None,
                                     capath=tls.get("ssl_ca_path") or None)
    if tls.get("ssl_certfile"):
        ctx.load_cert_chain(tls["ssl_certfile"], tls.get("ssl_keyfile") or None)
    elif tls.get("ssl_keyfile"):
        raise ValueError("ssl_keyfile needs ssl_certfile")
    check = tls.get("ssl_check_hostname", "true").lower()
    if check not in _TRUE + _FALSE:
        raise ValueError(f"ssl_check_hostname must be true or false, not {check!r}")
    reqs = tls.get("ssl_cert_reqs", "required").lower()
    if reqs not in ("required", "none"):
        raise ValueError(f"ssl_cert_reqs must be required or none, not {reqs!r}")
    if check in _FALSE or reqs == "none":
        ctx.check_hostname = False
    if reqs == "none":
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Protocol(asyncio.Protocol):
    __slots__ = ("transport", "reader", "waiters", "sent", "lost")

    def __init__(self, lost: Callable[[_Protocol, Exception | None], None]):
        self.transport = None
        self.reader = hiredis.Reader(replyError=RedisError)
        self.waiters: deque = deque()
        self.sent: deque = deque()  # monotonic time each waiting command was written
        self.lost = lost

    def issue(self, data: bytes, waiters) -> None:
        now = time.monotonic()
        self.waiters.extend(waiters)
        self.sent.extend([now] * len(waiters))
        self.transport.write(data)

    def oldest(self) -> float | None:
        return self.sent[0] if self.sent else None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        reader = self.reader
        reader.feed(data)
        popleft = self.waiters.popleft
        sent_pop = self.sent.popleft
        while True:
            reply = reader.gets()
            if reply is False:
                return
            waiter = popleft()
            sent_pop()
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
        self.sent = deque()
        for waiter in waiters:
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_exception(err)
            else:
                try:
                    waiter(err)
                except Exception:
                    log.exception("redis reply callback failed")
        self.lost(self, exc)


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class RedisConnection:
    """A connection that knows how to reconnect. ``connected`` is False while down;
    commands issued then fail at once with RedisUnavailable."""

    def __init__(self, url: str, *, on_connect=None, on_lost=None, connect_timeout: float = 2.0,
                 command_timeout: float = 2.0, happenings: bool = True):
        self.url = url
        self.opts = parse_url(url)
        self.ssl = tls_context(self.opts["tls"]) if self.opts["tls"] is not None else None
        # async callable(execute), run on each new connection before it is published;
        # ``execute(*args)`` sends a command on that connection
        self.on_connect = on_connect
        self.on_lost = on_lost  # callable(), when the connection breaks
        # log its losses and returns as the happenings redis_lost / redis_back (a
        # process's second connection to the same Redis says them at debug level)
        self.happenings = happenings
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._proto: _Protocol | None = None
        self._closing = False
        self._reconnect_task: asyncio.Task | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._lost_at = 0.0  # when the live connection was last lost (monotonic)

    @property
    def connected(self) -> bool:
        return self._proto is not None and self._proto.transport is not None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        proto = _Protocol(self._lost)
        o = self.opts
        if "path" in o:
            coro = loop.create_unix_connection(lambda: proto, o["path"])
        else:
            coro = loop.create_connection(lambda: proto, o["host"], o["port"], ssl=self.ssl,
                                          server_hostname=o["host"] if self.ssl else None)
        try:
            await asyncio.wait_for(coro, self.connect_timeout)
        except (TimeoutError, OSError) as e:  # ssl.SSLError is an OSError
            raise RedisUnavailable(
                f"cannot connect to Redis at {redact(self.url)}: {e or type(e).__name__}"
            ) from None

        def execute(*args) -> asyncio.Future:
            fut = loop.create_future()
            if proto.transport is None:
                fut.set_exception(RedisUnavailable("connection to Redis lost"))
            else:
                proto.issue(hiredis.pack_command(args), (fut,))
            return fut

        try:
            async with asyncio.timeout(self.connect_timeout + self.command_timeout):
                if o["password"]:
                    if o["username"]:
                        await execute("AUTH", o["username"], o["password"])
                    else:
                        await execute("AUTH", o["password"])
                if o["db"]:
                    await execute("SELECT", o["db"])
                if self.on_connect is not None:
                    await self.on_connect(execute)
        except BaseException:
            if proto.transport is not None:
                proto.transport.close()
            raise
        self._proto = proto  # published: commands from now on go to the right db
        if self._watchdog is None:
            self._watchdog = loop.call_later(0.25, self._watch)

    def _watch(self) -> None:
        """Close a connection whose oldest command waits longer than command_timeout."""
        self._watchdog = None
        if self._closing:
            return
        proto = self._proto
        if proto is not None and proto.transport is not None:
            oldest = proto.oldest()
            if oldest is not None and time.monotonic() - oldest > self.command_timeout:
                log.error("Redis has not answered for %.1f s: closing the connection",
                          time.monotonic() - oldest)
                proto.transport.abort()
        self._watchdog = asyncio.get_running_loop().call_later(0.25, self._watch)

    def _lost(self, proto: _Protocol, exc) -> None:
        if proto is not self._proto:
            return  # a connection that never was (or no longer is) the live one
        self._proto = None
        if self._closing:
            return
        happening(log, "redis_lost",
                  f"lost the connection to Redis ({exc or 'closed'}); reconnecting",
                  level=logging.WARNING if self.happenings else logging.DEBUG,
                  redis=redact(self.url), reason=str(exc or "closed"))
        self._lost_at = time.monotonic()
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
                happening(log, "redis_back", "reconnected to Redis",
                          level=logging.INFO if self.happenings else logging.DEBUG,
                          redis=redact(self.url),
                          away_ms=round((time.monotonic() - self._lost_at) * 1000))
                return
            except (RedisUnavailable, RedisError, OSError, TimeoutError) as e:
                log.debug("reconnect failed: %s", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def send(self, args, callback) -> None:
        """Issue one command; ``callback(reply)`` gets the reply, a RedisError or a
        RedisUnavailable (at once when not connected)."""
        self.send_packed(hiredis.pack_command(tuple(args)), (callback,))

    def send_many(self, commands, callbacks) -> None:
        """Issue several commands in one write; callbacks as for ``send``."""
        self.send_packed(b"".join([hiredis.pack_command(tuple(c)) for c in commands]), callbacks)

    def send_packed(self, data: bytes, callbacks) -> None:
        """Issue commands already packed in RESP (``data``), one callback per command,
        as for ``send``."""
        proto = self._proto
        if proto is None or proto.transport is None:
            err = RedisUnavailable("Redis is not connected")
            for cb in callbacks:
                cb(err)
            return
        proto.issue(data, callbacks)

    def execute(self, *args) -> asyncio.Future:
        """Issue one command; the Future resolves to the reply (or raises)."""
        fut = asyncio.get_running_loop().create_future()
        proto = self._proto
        if proto is None or proto.transport is None:
            fut.set_exception(RedisUnavailable("Redis is not connected"))
            return fut
        proto.issue(hiredis.pack_command(args), (fut,))
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
        proto.issue(data, futs)
        out = []
        try:
            for f in futs:
                try:
                    out.append(await f)
                except RedisError as e:
                    out.append(e)
        finally:
            # replies nobody awaits (an error, or the caller cancelled): their failure is
            # seen here, not reported by the GC as never retrieved
            for f in futs:
                if f.done():
                    _retrieve(f)
                else:
                    f.add_done_callback(_retrieve)
        return out

    def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
