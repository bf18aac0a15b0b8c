"""The live scenario's subscriber program (bench/sse/subscribers.c) reads flashgate's
event stream as the gateway writes it: frames made by gateway/broadcast.py, chunked as
the connection frames them, fed to the parser a few bytes at a time; and what a
measurement window adds up to (bench/live.py)."""

import shutil
import subprocess

import pytest

from bench import live
from flashgate.gateway.broadcast import HEARTBEAT, _event, _frame

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
BOOT = b"0123456789ab"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    return live.build_generator(tmp_path_factory.mktemp("sse"))


def parse(program, response: bytes, step: int) -> list[str]:
    out = subprocess.run([str(program), "--parse", str(step)], input=response,
                         capture_output=True, timeout=10, check=True)
    return out.stdout.decode().splitlines()


def test_frames_heartbeats_gaps_and_repeats(program):
    snapshot = _frame([_event(b"state", {"state": "live"}),
                       _event(b"stock", {"sku": "a", "left": 5, "sold": 0})], BOOT + b".7")
    tick8 = _frame([_event(b"order", {"sku": "a", "qty": 1, "user": "u***1", "ts_ms": 1}),
                    _event(b"stock", {"sku": "a", "left": 4, "sold": 1})],
                   BOOT + b".8", 1764000012345)
    tick10 = _frame([_event(b"stock", {"sku": "a", "left": 3, "sold": 2})],
                    BOOT + b".10", 1764000012595)
    assert tick8.startswith(b": t=1764000012345\n") and b": t=" not in snapshot
    body = chunk(snapshot) + chunk(tick8) + chunk(HEARTBEAT) + chunk(tick10) + chunk(tick10)
    for step in (1, 2, 5, 13, 4096):  # any cut: mid-size line, mid-CRLF, mid-id
        got = parse(program, HEAD + body + b"0\r\n\r\n", step)
        assert got[:5] == ["frame 7 -1", "frame 8 1764000012345", "heartbeat",
                           "frame 10 1764000012595", "frame 10 1764000012595"], (step, got)
        stats = dict(line.split(" ", 1) for line in got[5:])
        assert stats == {"status": "200", "end": "last-chunk", "missed": "1", "repeats": "1",
                         "unstamped": "1", "deliveries": "3"}, (step, stats)


def test_a_refusal_and_a_stream_left_open(program):
    full = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\n\r\n{}")
    stats = dict(line.split(" ", 1) for line in parse(program, full, 7))
    assert stats["status"] == "503" and stats["end"] == "error"
    frame = _frame([_event(b"stock", {"sku": "a"})], BOOT + b".3", 5)
    got = parse(program, HEAD + chunk(frame) + chunk(frame[:10]), 3)
    assert got[0] == "frame 3 5" and "end open" in got


def test_window_figures():
    win = {"open": 3, "deliveries": 9, "unstamped": 0, "within_50ms": 6, "heartbeats": 0,
           "bytes": 900, "reads": 9, "missed": 0, "subs_missed": 0, "repeats": 0,
           "closed": 0, "errors": 0, "wall_s": 0.75, "cpu_s": 0.075,
           "latency_us": {"min": 1000, "p50": 30000, "p90": 60000, "p99": 70000,
                          "p999": 70000, "max": 70000},
           # seq, tick ms, deliveries, first and last arrival after the tick (µs)
           "ticks": [[12, 1250, 3, 1000, 70000], [11, 1000, 3, 2000, 60000],
                     [13, 1501, 3, 1500, 20000]]}
    f = live.window_figures(win, 3)
    assert f["frames"] == 3 and f["deliveries_per_s"] == 12
    assert f["within_50ms_share"] == 6 / 9 and f["latency_ms"]["p99"] == 70
    assert f["fanout_done_ms_p50"] == 60 and f["fanout_done_ms_max"] == 70
    assert f["tick_gap_ms_max"] == 251 and f["frames_short"] == 0
    assert f["generator_cpu_pct"] == pytest.approx(10)


def test_server_flags_only_beyond_the_defaults():
    help_text = ("--max-connections N open connections per worker [env "
                 "FLASHGATE_MAX_CONNECTIONS, default 10000]\n --stream-max-subscribers N "
                 "open streams [env\n FLASHGATE_STREAM_MAX_SUBSCRIBERS, default 10000]")
    d = live.serve_defaults(help_text)
    assert d == {"max_connections": 10000, "stream_max_subscribers": 10000}
    assert live.server_flags(d, 500, 64) == []
    assert live.server_flags(d, 10_000, 64) == ["--max-connections", "10096"]
    assert live.server_flags(d, 12_000, 64) == ["--max-connections", "12096",
                                                "--stream-max-subscribers", "12000"]
