"""Where ``flashgate orders follow`` puts orders: a PostgreSQL table, or a JSON-lines file.

A sink's ``write(batch)`` returns only once the batch is durable there (a committed
transaction; an fsync), and raises ``SinkError`` when it is not: the follower then
acknowledges nothing, waits, and writes the same batch again. Delivery is at least
once, so a write must make a repeat harmless:

* PostgreSQL: one row per order (``order_id`` primary key), upserted so that a row
  never goes back to an older state: a row changes only to a state at least as recent
  (``updated_ms``), a final state (paid, cancelled, expired) is never replaced by
  ``reserved``, and an unchanged row is not rewritten. A batch is COPYed into a
  temporary table and merged by one ``INSERT ... SELECT ... ON CONFLICT`` in one
  transaction (rows taken in order id order, so two followers lock rows in the same
  order).
* JSON lines: one line per order event (the order object as the API shows it, in its
  state when the event was delivered), appended and fsynced; a repeat appends the
  line again. A line torn by a crash is cut off when the file is opened again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from urllib.parse import urlparse

import orjson

from flashgate.core.follow import Batch
from flashgate.core.redisconn import redact

log = logging.getLogger("flashgate.sink")

TABLE = "flashgate_orders"
COLUMNS = ("order_id", "event_id", "sku", "user_id", "qty", "unit_price", "amount", "status",
           "created_ms", "pay_by_ms", "updated_ms", "price_breakdown")

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    order_id        text PRIMARY KEY,
    event_id        text NOT NULL,
    sku             text NOT NULL,
    user_id         text NOT NULL,
    qty             integer NOT NULL,
    unit_price      bigint NOT NULL,
    amount          bigint NOT NULL,
    status          text NOT NULL,
    created_ms      bigint NOT NULL,
    pay_by_ms       bigint NOT NULL,
    updated_ms      bigint NOT NULL,
    price_breakdown jsonb
);
CREATE INDEX IF NOT EXISTS {TABLE}_event_sku ON {TABLE} (event_id, sku);
"""

_cols = ", ".join(COLUMNS)
_changed = ", ".join(c for c in COLUMNS if c != "order_id")
UPSERT = f"""
INSERT INTO {TABLE} AS t ({_cols})
SELECT DISTINCT ON (order_id) {_cols} FROM {TABLE}_in
ORDER BY order_id, (status <> 'reserved') DESC, updated_ms DESC
ON CONFLICT (order_id) DO UPDATE SET ({_changed}) = ROW({", ".join(
    "excluded." + c for c in COLUMNS if c != "order_id")})
WHERE ((t.status = 'reserved' AND excluded.status <> 'reserved')
       OR (excluded.updated_ms >= t.updated_ms
           AND (t.status = 'reserved' OR excluded.status <> 'reserved')))
  AND ({", ".join("t." + c for c in COLUMNS if c != "order_id")}) IS DISTINCT FROM ({", ".join("excluded." + c for c in COLUMNS
                                                if c != "order_id")})
"""
# one follower at a time creates the table (CREATE TABLE IF NOT EXISTS races otherwise)
_LOCK_KEY = 0x666C617368676174  # "flashgat"


class SinkError(Exception):
    """The sink cannot take the batch now (the database went away, a full disk...)."""


def check_target(to: str) -> str:
    """The kind of ``--to`` (``postgresql`` or ``jsonl``); ValueError for one that is not."""
    scheme, sep, rest = to.partition(":")
    if not sep:
        raise ValueError(f"--to {to!r}: give postgresql://USER@HOST:PORT/DB or jsonl:PATH")
    if scheme in ("postgresql", "postgres"):
        u = urlparse(to)
        if not u.hostname and "host=" not in u.query:
            raise ValueError(f"--to {redact(to)}: no host (postgresql://USER@HOST:PORT/DB)")
        try:
            u.port  # noqa: B018 - raises for a bad port
        except ValueError:
            raise ValueError(f"--to {redact(to)}: the port is not a number in 0-65535") from None
        return "postgresql"
    if scheme == "jsonl":
        if not rest:
            raise ValueError("--to jsonl:PATH needs a path")
        return "jsonl"
    raise ValueError(f"--to {redact(to)}: unknown kind {scheme!r} (postgresql://USER@HOST:PORT/DB "
                     "or jsonl:PATH)")


def make_sink(to: str, write_timeout: float = 30.0):
    if check_target(to) == "postgresql":
        return PostgresSink(to, write_timeout=write_timeout)
    return JsonlSink(to.partition(":")[2])


def row(o: dict) -> tuple:
    bd = o.get("price_breakdown")
    return (o["order_id"], o["event_id"], o["sku"], o["user_id"], o["qty"], o["unit_price"],
            o["amount"], o["status"], o["created_ms"], o["pay_by_ms"], o["updated_ms"],
            orjson.dumps(bd).decode() if bd else None)


class PostgresSink:
    """Orders upserted into ``flashgate_orders`` (created if missing)."""

    def __init__(self, dsn: str, connect_timeout: float = 5.0, write_timeout: float = 30.0):
        self.dsn = dsn
        self.where = redact(dsn)
        self.connect_timeout = connect_timeout
        # a database that stops answering (a silent network path) fails the write
        self.write_timeout = write_timeout
        self.conn = None

    async def open(self) -> None:
        """Connect, create the table if missing; SinkError when that cannot be done."""
        import psycopg

        await self.close()
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, connect_timeout=max(1, int(self.connect_timeout)),
                application_name="flashgate orders follow")
        except psycopg.Error as e:
            raise SinkError(f"cannot connect to {self.where}: {_why(e)}") from None
        try:
            # (a table made by the shop, with only the rights to write its rows, is used
            # as it is: CREATE ... IF NOT EXISTS would still ask for the right to create)
            cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,))
            if not (await cur.fetchone())[0]:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                    await conn.execute(CREATE_TABLE)
                log.info("created the table %s in %s", TABLE, self.where)
            await conn.commit()
        except psycopg.Error as e:
            await conn.close()
            raise SinkError(f"cannot create the table {TABLE} in {self.where}: {_why(e)}") \
                from None
        try:
            await conn.execute(f"SELECT {_cols} FROM {TABLE} LIMIT 0")
            await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {TABLE}_in "
                               f"(LIKE {TABLE}) ON COMMIT DELETE ROWS")
            await conn.commit()
        except psycopg.Error as e:
            await conn.close()
            raise SinkError(f"the table {TABLE} in {self.where} cannot take the orders "
                            f"(it needs the columns {_cols}): {_why(e)}") from None
        self.conn = conn

    async def write(self, batch: Batch) -> int:
        """Upsert the batch's orders in one transaction; the rows that changed."""
        import psycopg

        rows = sorted((row(o) for o in batch.orders()), key=lambda r: r[0])
        if not rows:
            return 0
        if self.conn is None or self.conn.closed:
            await self.open()
        conn = self.conn
        try:
            async with asyncio.timeout(self.write_timeout):
                async with conn.transaction():
                    async with conn.cursor() as cur:
                        async with cur.copy(f"COPY {TABLE}_in ({_cols}) FROM STDIN") as copy:
                            for r in rows:
                                await copy.write_row(r)
                        await cur.execute(UPSERT)
                        changed = cur.rowcount
        except (psycopg.Error, TimeoutError) as e:
            await self.close()  # a fresh connection for the retry
            if isinstance(e, TimeoutError):
                raise SinkError(f"{self.where}: no answer within {self.write_timeout:g} s") \
                    from None
            raise SinkError(f"{self.where}: {_why(e)}") from None
        return changed

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.close()


class JsonlSink:
    """One JSON line per order event appended to ``path`` and fsynced."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.where = f"jsonl:{path}"
        self.fd = -1

    async def open(self) -> None:
        await self.close()
        created = not os.path.exists(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SinkError(f"cannot open {self.path}: {e.strerror or e}") from None
        try:
            self._cut_torn_line(fd)
            if created:
                dfd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as e:
            os.close(fd)
            raise SinkError(f"cannot use {self.path}: {e.strerror or e}") from None
        self.fd = fd

    def _cut_torn_line(self, fd: int) -> None:
        """A last line without its newline was torn by a crash (its entries were never
        acknowledged, so they come again): cut it off."""
        size = os.fstat(fd).st_size
        if not size or os.pread(fd, 1, size - 1) == b"\n":
            return
        pos = size
        while pos > 0:
            chunk = os.pread(fd, min(65536, pos), max(0, pos - 65536))
            i = chunk.rfind(b"\n")
            if i >= 0:
                pos = pos - len(chunk) + i + 1
                break
            pos -= len(chunk)
        log.warning("%s: its last line (%d bytes) was torn by a crash: cut off", self.path,
                    size - pos)
        os.ftruncate(fd, pos)
        os.fsync(fd)

    async def write(self, batch: Batch) -> int:
        data = b"".join(orjson.dumps(o) + b"\n" for e in batch.entries for o in e.orders)
        if not data:
            return 0
        if self.fd < 0:
            await self.open()
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            os.fsync(self.fd)
        except OSError as e:
            await self.close()
            raise SinkError(f"cannot write {self.path}: {e.strerror or e}") from None
        return data.count(b"\n")

    async def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _why(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
