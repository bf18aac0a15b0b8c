"""The sender: claims due deliveries from the outbox (outbox.py) and POSTs them.

* At most ``concurrency`` POSTs at once; it claims only as many deliveries as it has
  free slots, so nothing it holds waits behind others while its lease runs.
* Each attempt is bounded by ``timeout`` seconds in all (connect, send, answer); the
  lease of a claim is that plus ``LEASE_MARGIN_S``, so the attempt (and its
  acknowledgement) is over before another sender could claim the delivery.
* A 2xx acknowledges. Anything else (another status, a refused connection, a
  timeout) is retried after ``retry_min * 2**(attempt-1)`` seconds, at most
  ``retry_max``, with "equal jitter" (half of it fixed, half random: two senders do
  not retry in lock-step, and no delay is shorter than half the one before it was
  meant to be, so the delays grow). A ``Retry-After`` of a 429 or 503 (in seconds) is
  honoured up to ``retry_max``. Once the next attempt would come more than
  ``give_up`` seconds after the delivery was enqueued it is given up: a dead letter.
* Redirects are not followed (a 3xx is a failure): the URL is the operator's, to fix.

HTTP: httpx (an asyncio client with connection pooling, total-timeout-friendly
cancellation, TLS verification against the system's CAs, proxies from the usual
variables). The sender runs in a process of its own (service.py), never in a worker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import httpx

from flashgate import __version__
from flashgate.core.redisconn import RedisError, RedisUnavailable
from flashgate.webhooks import outbox
from flashgate.webhooks.signing import HEADER, signature

log = logging.getLogger("flashgate.webhooks")

LEASE_MARGIN_S = 10.0


def backoff_s(attempt: int, retry_min: float, retry_max: float, rand=random.random) -> float:
    """The delay after failed attempt ``attempt`` (1, 2, ...): equal jitter over
    ``min(retry_max, retry_min * 2**(attempt-1))``."""
    d = min(retry_max, retry_min * 2 ** min(attempt - 1, 60))
    return d / 2 + rand() * d / 2


class Sender:
    """``run()`` until ``stop()``; ``clock`` is wall time in ms (the signature's t)."""

    def __init__(self, conn, secret: bytes, *, concurrency: int = 16, timeout: float = 10.0,
                 retry_min: float = 1.0, retry_max: float = 300.0, give_up: float = 86400.0,
                 poll: float = 0.25, client: httpx.AsyncClient | None = None, clock=None,
                 lease_margin: float = LEASE_MARGIN_S):
        self.conn = conn
        self.secret = secret
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.give_up_ms = int(give_up * 1000)
        self.lease_ms = int((timeout + lease_margin) * 1000)
        self.poll = poll
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.client = client or httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency),
            headers={"User-Agent": f"flashgate/{__version__}"},
        )
        self._own_client = client is None
        self._inflight: set[asyncio.Task] = set()
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._said = float("-inf")  # when a Redis failure was last logged
        self.sent = 0  # acknowledged deliveries
        self.failed = 0  # failed attempts
        self.dead = 0  # deliveries given up

    async def run(self) -> None:
        while not self._stopping:
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                claimed = await outbox.claim(self.conn, free, self.lease_ms)
            except (RedisUnavailable, RedisError) as e:
                now = time.monotonic()
                if now - self._said >= 10.0:  # once in a while, not twice a second
                    log.warning("webhooks: cannot claim deliveries: %s", e)
                    self._said = now
                await asyncio.sleep(max(self.poll, 0.5))
                continue
            for d in claimed:
                task = asyncio.get_running_loop().create_task(self._deliver(d))
                self._inflight.add(task)
                task.add_done_callback(self._finished)
            if len(claimed) < free:
                await asyncio.sleep(self.poll)

    def _finished(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhooks: a delivery failed unexpectedly",
                      exc_info=task.exception())

    async def _deliver(self, d: outbox.Claimed) -> None:
        if not d.url:  # the event no longer has a webhook_url
            await self._settle(outbox.done(self.conn, d), d)
            log.info("webhooks: %s dropped: its event has no webhook_url now", d.id)
            return
        retry_after = None
        try:
            async with asyncio.timeout(self.timeout):
                t = self.clock()
                resp = await self.client.post(d.url, content=d.body, headers={
                    "Content-Type": "application/json",
                    HEADER: signature(self.secret, d.body, t),
                    "X-Flashgate-Delivery": d.id,
                    "X-Flashgate-Attempt": str(d.attempt),
                })
            if 200 <= resp.status_code < 300:
                self.sent += 1
                if await self._settle(outbox.done(self.conn, d), d) is False:
                    log.warning("webhooks: %s delivered, but its claim had run out (it may "
                                "be delivered again)", d.id)
                return
            error = f"HTTP {resp.status_code}"
            if resp.status_code in (429, 503):
                retry_after = _seconds(resp.headers.get("Retry-After"))
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        except (httpx.InvalidURL, ValueError, OSError) as e:  # a URL the client refuses
            error = f"{type(e).__name__}: {e}"
        self.failed += 1
        delay = backoff_s(d.attempt, self.retry_min, self.retry_max)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_max))
        outcome = await self._settle(
            outbox.retry(self.conn, d, int(delay * 1000), self.give_up_ms, error), d)
        if outcome == "dead":
            self.dead += 1
            log.error("webhooks: gave up on %s to %s after %d attempts (last: %s); kept "
                      "in the dead letters", d.id, d.url, d.attempt, error)
        elif outcome == "retry":
            log.warning("webhooks: %s to %s failed (attempt %d: %s); again in %.1f s",
                        d.id, d.url, d.attempt, error, delay)

    async def _settle(self, call, d):
        """Tell the outbox how an attempt ended; on a Redis failure the lease will run
        out and the delivery is tried again (at least once)."""
        try:
            return await call
        except (RedisUnavailable, RedisError) as e:
            log.warning("webhooks: cannot record the outcome of %s: %s", d.id, e)
            return None

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; let the attempts in flight finish for ``grace`` seconds, then
        cancel them (their leases run out and another sender takes them over)."""
        self._stopping = True
        self._slot_free.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._inflight and loop.time() < deadline:
            await asyncio.wait(set(self._inflight), timeout=deadline - loop.time())
        pending = set(self._inflight)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        if self._own_client:
            await self.client.aclose()


def _seconds(raw: str | None) -> float | None:
    try:
        v = float(raw) if raw is not None else None
    except ValueError:
        return None
    return v if v is not None and 0 <= v < 1e9 else None
