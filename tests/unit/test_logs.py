"""flashgate/logs.py: the JSON line of a record, a happening's fields, the text line."""

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
