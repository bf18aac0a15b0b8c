"""What every process the supervisor starts (a worker, the webhooks' notifier) does
about its own end: SIGTERM asks it to stop, SIGINT is left to the supervisor, and a
child whose supervisor is gone stops too (the parent-death signal is set as well, but
this also covers a supervisor that died before it was set)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

CHECK_S = 0.5  # how often the parent is looked for


def stop_future(loop: asyncio.AbstractEventLoop, parent: int, who: str,
                log: logging.Logger) -> asyncio.Future:
    """A future done on SIGTERM, or once ``parent`` is no longer this process's parent
    (logged as ``who``)."""
    stop = loop.create_future()

    def on_term():
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides

    def watch_parent():
        if os.getppid() != parent:
            log.error("%s: the supervisor is gone; stopping", who)
            on_term()
        elif not stop.done():
            loop.call_later(CHECK_S, watch_parent)

    loop.call_later(CHECK_S, watch_parent)
    return stop
