"""The logs of every flashgate process: one line per record on stdout, a JSON object
(``--log-format json``, the default) or today's human line (``text``); named
happenings with their fields; and the access log (``--access-log``).

A JSON line holds, in this order:

* ``ts``: when, ISO-8601 UTC with milliseconds (``2026-12-05T03:35:41.713Z``);
* ``level``: ``debug``, ``info``, ``warning``, ``error`` or ``critical``;
* ``proc``: the process, ``supervisor``, ``worker``, ``notifier`` or ``follower``;
  ``worker``: the worker's number (workers only);
* ``logger``: the module's logger (``flashgate.commit``, ...);
* ``msg``: the message, rendered;
* ``event``: the happening's name, when the record is one (``happening``), then its
  fields, each a key of its own (``event_id``, ``sku``, ...); a field named like one
  of the keys above is written ``field_<name>``;
* ``exc``: the traceback's text, for a record logged with an exception.

A text line is ``<local time> <process> <LEVEL> <logger>: <message>`` (the process:
``supervisor``, ``worker-<n>``, ``notifier``, ``follow``), a traceback on the lines
after it. Every record is written with one ``write(2)``: the processes of a server
share stdout, and a line under ``PIPE_BUF`` (4 KiB) is never cut by another's.

Happenings (``happening(log, name, message, **fields)``) are the things an operator
looks for; each is logged once, where it is known (README.md, "Logs").

The access log (``AccessLog``) is written apart from the logging machinery: a line
per request is formatted into a buffer and the buffer written every
``FLUSH_INTERVAL_S`` (and when it grows past ``FLUSH_BYTES``), in writes of whole
lines of at most ``PIPE_BUF`` bytes each.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson

FORMATS = ("json", "text")
PROCS = ("supervisor", "worker", "notifier", "follower")
# the process as a text line names it
_TEXT_NAMES = {"supervisor": "supervisor", "notifier": "notifier", "follower": "follow"}
_RESERVED = frozenset(("ts", "level", "proc", "worker", "logger", "msg", "event", "exc"))
PIPE_BUF = 4096  # bytes a write(2) to a pipe delivers whole, whoever else writes
FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 256 * 1024

_gmtime = time.gmtime
_strftime = time.strftime
_time = time.time
_dumps = orjson.dumps
# an access log line (AccessLog.add): the keys of every line, in the same order
_ACCESS_LINE = (b'{"ts":"%s.%03dZ","level":"info","proc":"worker","worker":%d,'
                b'"logger":"flashgate.access","msg":%s,"event":"request","method":%s,'
                b'"path":%s,"status":%d,"bytes":%d,"duration_us":%d,"client_ip":%s}\n')
_second: list = [None, ""]  # the second last formatted, and its text (a cache)


def iso_ms(t: float) -> str:
    """``t`` (seconds since the epoch) as ISO-8601 UTC with milliseconds."""
    sec = int(t)
    cached = _second
    if cached[0] != sec:
        cached[1] = _strftime("%Y-%m-%dT%H:%M:%S", _gmtime(sec))
        cached[0] = sec
    return f"{cached[1]}.{int((t - sec) * 1000):03d}Z"


def happening(log: logging.Logger, event: str, msg: str, *, level: int = logging.INFO,
              exc_info=None, **fields) -> None:
    """Log the happening ``event`` (a name: ``sold_out``) with its message and fields;
    a JSON line carries ``"event": event`` and every field as a key of its own."""
    if log.isEnabledFor(level):
        log.log(level, msg, exc_info=exc_info, stacklevel=2,
                extra={"event": event, "fields": fields})


def _stdout_fd() -> int:
    """stdout's file descriptor (1 if sys.stdout was replaced by something without one)."""
    try:
        return sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class JsonFormatter(logging.Formatter):
    """A record as one JSON object (see the module's docstring), no newline."""

    def __init__(self, proc: str, worker: int | None = None):
        super().__init__()
        self.proc = proc
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": iso_ms(record.created), "level": record.levelname.lower(),
               "proc": self.proc}
        if self.worker is not None:
            out["worker"] = self.worker
        out["logger"] = record.name
        out["msg"] = record.getMessage()
        event = getattr(record, "event", None)
        if event is not None:
            out["event"] = event
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                out["field_" + key if key in _RESERVED else key] = value
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=repr).decode()


def text_formatter(proc: str, worker: int | None = None) -> logging.Formatter:
    name = f"worker-{worker}" if worker is not None else _TEXT_NAMES.get(proc, proc)
    return logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")


class LineHandler(logging.Handler):
    """Writes each record, formatted, with its newline, in one write(2) to ``fd``."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            _write_all(self.fd, data)
        except Exception:
            self.handleError(record)


def setup(proc: str, *, level: str = "info", fmt: str = "json",
          worker: int | None = None, fd: int | None = None) -> logging.Handler:
    """Send this process's logging to stdout (or ``fd``) in ``fmt``, from ``level`` up;
    ``proc`` (one of PROCS) and ``worker`` name the process on every line. Replaces
    whatever handlers the root logger had."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: json or text")
    if fd is None:
        fd = _stdout_fd()
    handler = LineHandler(fd)
    handler.setFormatter(JsonFormatter(proc, worker) if fmt == "json"
                         else text_formatter(proc, worker))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler


class AccessLog:
    """The access log of one worker: ``add`` formats a request's line into a buffer,
    ``flush`` writes it (``start`` flushes every ``interval`` seconds on the loop);
    nothing is written per request. JSON lines hold ``ts``, ``level`` (info),
    ``proc``, ``worker``, ``logger`` (``flashgate.access``), ``msg``, ``event``
    (``request``), ``method``, ``path``, ``status``, ``bytes``, ``duration_us`` and
    ``client_ip``."""

    def __init__(self, worker: int, fmt: str = "json", fd: int | None = None, *,
                 interval: float = FLUSH_INTERVAL_S, max_bytes: int = FLUSH_BYTES):
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r}: json or text")
        self.worker = worker
        self.json = fmt == "json"
        self.fd = _stdout_fd() if fd is None else fd
        self.interval = interval
        self.max_bytes = max_bytes
        self.lines: list[bytes] = []
        self.size = 0
        self.written = 0  # lines written so far
        self._timer = None
        self._loop = None
        self._text_name = f"worker-{worker}"
        self._sec = -1  # the second of _stamp
        self._stamp = b""

    def add(self, method, path, status: int, nbytes: int, duration_us: int,
            client_ip) -> None:
        """One request's line: ``method`` and ``path`` as str or bytes (None for a
        request refused before they were read)."""
        if type(method) is bytes:
            method = method.decode("latin-1")
        now = _time()
        if self.json:
            sec = int(now)
            if sec != self._sec:  # the date and time to the second, once a second
                self._sec = sec
                self._stamp = _strftime("%Y-%m-%dT%H:%M:%S", _gmtime(sec)).encode()
            line = _ACCESS_LINE % (
                self._stamp, int((now - sec) * 1000), self.worker,
                _dumps(f"{method or '-'} {path or '-'} {status}"), _dumps(method),
                _dumps(path), status, nbytes, duration_us, _dumps(client_ip))
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            line = (f"{stamp},{int(now * 1000) % 1000:03d} {self._text_name} INFO "
                    f"flashgate.access: {client_ip or '-'} \"{method or '-'} {path or '-'}\" "
                    f"{status} {nbytes} {duration_us}us\n").encode("utf-8", "backslashreplace")
        self.lines.append(line)
        self.size += len(line)
        if self.size >= self.max_bytes:
            self.flush()

    def start(self, loop) -> None:
        self._loop = loop
        self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        try:
            self.flush()
        finally:
            self._timer = self._loop.call_later(self.interval, self._tick)

    def flush(self) -> None:
        """Write the buffered lines: whole lines, at most PIPE_BUF bytes a write (a
        longer line alone)."""
        lines, self.lines, self.size = self.lines, [], 0
        if not lines:
            return
        chunk: list[bytes] = []
        size = 0
        try:
            for line in lines:
                if size + len(line) > PIPE_BUF and chunk:
                    _write_all(self.fd, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                _write_all(self.fd, b"".join(chunk))
        except OSError:
            pass  # stdout gone: the lines are lost, the requests are not
        self.written += len(lines)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
