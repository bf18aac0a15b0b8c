"""One worker process: a uvloop loop with its own ledger, limiter, Redis connection
and listening socket (SO_REUSEPORT: the kernel spreads connections over workers).

SIGTERM drains: /readyz turns 503, after ``drain_delay`` the listener closes, idle
keep-alive connections are closed, requests in progress and their commits finish
(at most ``drain_grace`` seconds), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import sys

from flashgate import logs
from flashgate.config import Config
from flashgate.gateway._net import NetSet
from flashgate.gateway.app import Gateway
from flashgate.gateway.lifeline import stop_future
from flashgate.gateway.protocol import ConnectionRegistry, HttpLimits, HttpProtocol
from flashgate.logs import happening

log = logging.getLogger("flashgate.worker")


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class Acceptor:
    """Accepts connections on the listening socket itself.

    The event loop's own server takes one connection per loop pass; a busy worker
    then accepts a few dozen a second while a sale's opening burst waits in the
    backlog for seconds. This takes every waiting connection (at most ``batch``
    per pass) each time the socket is readable."""

    def __init__(self, loop, sock: socket.socket, factory, batch: int = 512):
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.batch = batch
        self.fd = sock.fileno()

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(self.batch):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS: back off a little
                log.error("accept failed: %s", e)
                self.loop.remove_reader(self.fd)
                self.loop.call_later(0.1, self.start)
                return
            conn.setblocking(False)
            self.loop.create_task(self._attach(conn))

    async def _attach(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:
            conn.close()

    def close(self) -> None:
        """Stop accepting; connections already accepted go on."""
        self.loop.remove_reader(self.fd)
        self.sock.close()


async def _serve(cfg: Config, worker_id: int, ready, parent: int, peer_dir: str | None) -> int:
    loop = asyncio.get_running_loop()
    gateway = Gateway(cfg, worker_id, peer_dir=peer_dir)
    await gateway.start()
    # Everything allocated so far (modules, tables) lives as long as the process:
    # move it out of the collector's sight, so a full collection scans only what
    # requests allocate (otherwise it walks the whole heap every ~25k requests,
    # a pause of milliseconds in the latency tail).
    gc.collect()
    gc.freeze()
    # A young collection scans the young objects still alive (the requests in
    # flight), however many were allocated since the last one: collecting every
    # 10,000 allocations instead of 700 does about the same work 14x less often.
    gc.set_threshold(10_000, 10, 10)
    limits = HttpLimits(
        max_body=cfg.max_body,
        keepalive_timeout=cfg.keepalive_timeout,
        head_timeout=cfg.head_timeout,
        max_connections=cfg.max_connections,
        proxy_protocol_from=NetSet(cfg.proxy_protocol_from),
    )
    registry = ConnectionRegistry()
    registry.start(loop)
    access = None
    if cfg.access_log:
        from flashgate.gateway import access as access_mod

        access = logs.AccessLog(worker_id, cfg.log_format)
        access.start(loop)
        access_mod.attach(gateway, access)
    acceptor = Acceptor(loop, listen_socket(cfg.host, cfg.port),
                        lambda: HttpProtocol(gateway, limits, registry))
    acceptor.start()
    stop = stop_future(loop, parent, f"worker {worker_id}", log)
    happening(log, "ready", f"worker {worker_id} ready (pid {os.getpid()})", pid=os.getpid(),
              events=sorted(gateway.runtimes.events))
    if ready is not None:
        ready.put(worker_id)
    await stop

    # drain
    gateway.draining = True
    if cfg.drain_delay > 0:
        await asyncio.sleep(cfg.drain_delay)
    acceptor.close()
    # requests already in the sockets' buffers but not read yet would look idle:
    # let the loop read them before idle connections are closed
    await asyncio.sleep(0.1)
    registry.close_idle()
    deadline = loop.time() + cfg.drain_grace
    while (registry.busy_count() or gateway.busy) and loop.time() < deadline:
        await asyncio.sleep(0.02)
        registry.close_idle()
    leftover = registry.busy_count()
    if leftover:
        log.warning("worker %d: %d connections still busy after the grace period", worker_id,
                    leftover)
    registry.stop()
    await gateway.stop()
    if access is not None:
        access.close()
    return 0


def run(cfg: Config, worker_id: int, ready=None, parent: int | None = None,
        peer_dir: str | None = None) -> None:
    """Entry point of a worker process; ``parent`` is the supervisor's pid, ``peer_dir``
    the directory of the instance's peer channel."""
    logs.setup("worker", level=cfg.log_level, fmt=cfg.log_format, worker=worker_id)
    import uvloop

    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:
        sys.exit(0)  # the supervisor died while this worker was starting
    code = uvloop.run(_serve(cfg, worker_id, ready, parent, peer_dir))
    sys.exit(code)
