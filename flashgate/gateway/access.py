"""``--access-log``: a line per HTTP request a worker answers (logs.AccessLog writes
them in batches).

Off (the default), nothing here runs: the connections call the purchase path's
``handle`` directly. On, ``attach`` puts ``logged(handle)`` in its place, a Python
call per request that times it and, once its answer is known, adds its line:

* bytes (the hot answers: sold out, rate limited, every refusal from memory): at once;
* a ``Pending`` (a purchase waiting for its commit): when it is resolved
  (``Pending.then``), in the same call that writes it;
* an awaitable (the operator's and the other routes' coroutines): when it is done;
  a failure is a 500, as the connection answers it;
* a ``Stream`` (the event stream): when it begins, with the status and the size of
  its head (what it sends later is not counted).

Requests the app never sees (400 malformed, 408 too slow, 413 too large, a refusal
from the head) are told by the connection (``_protocol.on_refused``), with no method
or path. ``duration_us`` runs from the dispatch of the parsed request to its answer;
``bytes`` is the answer's size (head and body) as the app gave it.
"""

from __future__ import annotations

import asyncio

from flashgate.gateway import _protocol
from flashgate.gateway._buy import mono_us
from flashgate.gateway._protocol import Pending, Stream
from flashgate.logs import AccessLog

_ensure_future = asyncio.ensure_future


def _status(answer) -> tuple[int, int]:
    """(status, size) of an answer as the connection writes it."""
    if type(answer) is bytes:
        return int(answer[9:12]), len(answer)
    if type(answer) is Stream:
        return answer.status, answer.head_size
    if isinstance(answer, (bytearray, memoryview)):
        return int(bytes(answer[9:12])), len(answer)
    return 500, 0


def logged(handle, access: AccessLog, client_of=None):
    """``handle`` (the app's request entry) with a line in ``access`` per request;
    ``client_of(req)`` gives the client IP (None: the connection's peer)."""
    add = access.add

    def client(req):
        if client_of is None:
            return req.peer_ip
        try:
            return client_of(req)
        except Exception:
            return req.peer_ip

    def log(req, answer, t0):
        status, size = _status(answer)
        add(req.method, req.path, status, size, mono_us() - t0, client(req))

    def handle_logged(req):
        t0 = mono_us()
        try:
            answer = handle(req)
        except Exception:
            add(req.method, req.path, 500, 0, mono_us() - t0, client(req))
            raise
        kind = type(answer)
        if kind is bytes:  # (most answers: the line at once, no more calls)
            add(req.method, req.path, int(answer[9:12]), len(answer), mono_us() - t0,
                req.peer_ip if client_of is None else client(req))
        elif kind is Pending:
            answer.then(lambda value: log(req, value, t0))
        elif kind is Stream:
            log(req, answer, t0)
        else:
            try:
                fut = _ensure_future(answer)
            except TypeError:  # not an answer: the connection's 500
                log(req, None, t0)
                return answer

            def done(f):
                value = None
                if not f.cancelled() and f.exception() is None:
                    value = f.result()
                log(req, value, t0)

            fut.add_done_callback(done)
            return fut
        return answer

    return handle_logged


def attach(gateway, access: AccessLog) -> None:
    """Log every request of this worker's connections opened from now on in
    ``access``."""
    ips = gateway.path.client_ip

    def client_of(req):  # behind trusted proxies: the X-Forwarded-For client
        return ips.of(req.peer_ip, req.headers.get(b"x-forwarded-for"))

    gateway.handle = logged(gateway.handle, access, client_of if ips.trusted else None)
    _protocol.on_refused(lambda ip, status, size: access.add(None, None, status, size, 0, ip))
