"""flashgate/logs.py: the JSON line of a record, a happening's fields, the text line,
and the access log's batched writes."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest

from flashgate import logs


def record(msg="hello %s", args=("you",), level=logging.WARNING, exc_info=None, **extra):
    rec = logging.LogRecord("flashgate.test", level, __file__, 1, msg, args, exc_info)
    rec.created, rec.msecs = 1796459997.1239, 123.9
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_a_json_line_holds_ts_level_proc_worker_logger_msg():
    line = logs.JsonFormatter("worker", 3).format(record())
    assert "\n" not in line
    assert json.loads(line) == {"ts": "2026-12-05T08:39:57.123Z", "level": "warning",
                                "proc": "worker", "worker": 3, "logger": "flashgate.test",
                                "msg": "hello you"}
    assert list(json.loads(line)) == ["ts", "level", "proc", "worker", "logger", "msg"]
    assert "worker" not in json.loads(logs.JsonFormatter("supervisor").format(record()))


def test_a_happening_has_its_event_and_fields_and_an_exception_its_traceback():
    rec = record("sold out", (), level=logging.INFO, event="sold_out",
                 fields={"event_id": "e1", "sku": "s0", "msg": "clash", "odd": {1, 2}})
    out = json.loads(logs.JsonFormatter("worker", 0).format(rec))
    assert out["event"] == "sold_out" and out["event_id"] == "e1" and out["sku"] == "s0"
    assert out["msg"] == "sold out" and out["field_msg"] == "clash"  # (a reserved name)
    assert out["odd"] == repr({1, 2})  # what JSON cannot say: its repr
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = record(level=logging.ERROR, exc_info=sys.exc_info())
    out = json.loads(logs.JsonFormatter("notifier").format(rec))
    assert out["exc"].startswith("Traceback (most recent call last)")
    assert out["exc"].endswith("ValueError: boom")


def test_happening_logs_a_record_with_its_name_and_fields(caplog):
    log = logging.getLogger("flashgate.test")
    with caplog.at_level(logging.INFO, logger="flashgate.test"):
        logs.happening(log, "paused", "event e1 paused 100% (no %s formatting)", event_id="e1")
        logs.happening(log, "quiet", "not logged", level=logging.DEBUG)
    [rec] = caplog.records
    assert (rec.event, rec.fields, rec.getMessage()) == (
        "paused", {"event_id": "e1"}, "event e1 paused 100% (no %s formatting)")


def test_text_lines_are_todays():
    line = logs.text_formatter("worker", 2).format(record())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,123 worker-2 WARNING flashgate\.test: "
                        r"hello you", line), line
    assert " follow WARNING " in logs.text_formatter("follower").format(record())
    assert " supervisor WARNING " in logs.text_formatter("supervisor").format(record())


def test_setup_writes_a_line_per_record_to_its_fd():
    r, w = os.pipe()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("follower", level="info", fmt="json", fd=w)
        logging.getLogger("flashgate.x").info("one")
        logging.getLogger("flashgate.x").debug("not this")
        logs.happening(logging.getLogger("flashgate.x"), "redis_back", "two", away_ms=5)
        os.close(w)
        w = -1
        lines = os.read(r, 65536).decode().splitlines()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        os.close(r)
        if w >= 0:
            os.close(w)
    assert [json.loads(x)["msg"] for x in lines] == ["one", "two"]
    assert json.loads(lines[1])["event"] == "redis_back" and json.loads(lines[1])["away_ms"] == 5
    with pytest.raises(ValueError):
        logs.setup("worker", fmt="xml")


def test_the_access_log_writes_whole_lines_in_batches_of_at_most_pipe_buf():
    r, w = os.pipe()
    try:
        access = logs.AccessLog(1, "json", fd=w, max_bytes=10**9)
        for i in range(100):
            access.add(b"GET", f"/p{i}", 200, 10 + i, 42, "10.0.0.1")
        assert access.size > logs.PIPE_BUF and access.written == 0  # nothing written yet
        access.flush()
        os.close(w)
        w = -1
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    lines = [json.loads(x) for x in data.decode().splitlines()]
    assert [x["path"] for x in lines] == [f"/p{i}" for i in range(100)]
    assert lines[0] == {**lines[0], "level": "info", "proc": "worker", "worker": 1,
                        "logger": "flashgate.access", "msg": "GET /p0 200", "event": "request",
                        "method": "GET", "status": 200, "bytes": 10, "duration_us": 42,
                        "client_ip": "10.0.0.1"}
    assert access.written == 100 and access.size == 0


def test_the_access_log_flushes_once_its_buffer_is_full(monkeypatch):
    writes = []
    monkeypatch.setattr(logs.os, "write", lambda fd, data: writes.append(bytes(data)) or len(data))
    access = logs.AccessLog(0, "text", fd=99, max_bytes=300)
    for _ in range(10):
        access.add(None, None, 400, 120, 0, "127.0.0.1")
    assert writes, "a full buffer is written at once"
    assert all(w.endswith(b"\n") and len(w) <= logs.PIPE_BUF for w in writes)
    assert b'worker-0 INFO flashgate.access: 127.0.0.1 "- -" 400 120 0us\n' in writes[0]
