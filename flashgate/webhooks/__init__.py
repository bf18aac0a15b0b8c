"""Webhooks: signed JSON notifications POSTed to an event's ``webhook_url``.

    outbox.py     the deliveries in Redis: enqueue (once per id), claim (a lease),
                  done / retry / dead letters; ``enqueue`` is the API other parts call
    sender.py     claims and POSTs them (httpx), with back-off, give-up and a bound on
                  concurrency and time
    signing.py    the X-Flashgate-Signature header, and its check for receivers
    producers.py  reminders, milestones, sold out, the end: each enqueued once
    service.py    the process of an instance that runs the sender and the producers

Nothing here runs on the purchase path: the producers read the keys the commit
script writes, and the sender runs in a process of its own.
"""

from flashgate.webhooks.outbox import (
    DUPLICATE,
    ENQUEUED,
    KINDS,
    NO_WEBHOOK,
    enqueue,
    enqueue_many,
)
from flashgate.webhooks.signing import HEADER, signature, verify

__all__ = ["DUPLICATE", "ENQUEUED", "HEADER", "KINDS", "NO_WEBHOOK", "enqueue", "enqueue_many",
           "signature", "verify"]
