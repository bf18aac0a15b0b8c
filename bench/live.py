"""The live scenario's parts: the stream subscribers, a steady trickle of purchases, and
what their figures add up to.

`Subscribers` runs bench/sse/subscribers.c (compiled into the run's directory with the
system's cc): N stream connections read by one epoll loop, each frame timed on arrival
against the tick time flashgate writes at the start of every tick's frame (`: t=<ms>`).
`Trickle` buys at a fixed low rate (a new user per purchase, the configuration's
identity), so that every tick has news and sends a frame while no load runs: the idle
cost of a delivery is then measured on frames like the loaded ones (the orders of the
tick, at most --stream-orders-per-tick of them, then the stock).
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import resource
import shutil
import subprocess
import threading
import time
from pathlib import Path

from .runner import BENCH_DIR, HOST, BenchError, Proc, Processes

SOURCE = BENCH_DIR / "sse" / "subscribers.c"
BOUND_MS = 50  # every delivery within 50 ms of its tick
MEMORY_TARGET_KIB = 4.0  # per subscriber
# the subscribers' program sleeps this long after each batch of readable sockets, so that
# the server's writes do not pay for waking it at every frame (subscribers.c)
PAUSE_US = 500
P99_RATIO_TARGET = 1.25  # purchase p99 with subscribers / without


def build_generator(workdir: Path) -> Path:
    """Compiles the subscribers' program into `workdir` with the system's cc."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BenchError("live: no C compiler (cc) to build bench/sse/subscribers.c")
    out = workdir / "sse-subscribers"
    proc = subprocess.run([cc, "-O2", "-o", str(out), str(SOURCE)], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise BenchError(f"live: cannot compile {SOURCE}: {proc.stderr.strip()[-2000:]}")
    return out


def raise_nofile(need: int) -> int:
    """Raises this process's open-files limit to its hard limit (the servers and the
    subscribers it starts inherit it); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need and (hard == resource.RLIM_INFINITY or hard > soft):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def serve_defaults(help_text: str) -> dict[str, int]:
    """`--max-connections` and `--stream-max-subscribers` defaults of `serve --help`."""
    text = " ".join(help_text.split())
    out = {}
    for name in ("max_connections", "stream_max_subscribers"):
        m = re.search(rf"FLASHGATE_{name.upper()}, default (\d+)\]", text)
        out[name] = int(m.group(1)) if m else 10_000
    return out


def server_flags(defaults: dict[str, int], subscribers: int, connections: int) -> list[str]:
    """The flags a worker needs to hold `subscribers` streams next to the load's
    `connections` (and a few of the bench's own): none when the defaults do."""
    flags = []
    need = subscribers + connections + 32
    if need > defaults.get("max_connections", 10_000):
        flags += ["--max-connections", str(need)]
    if subscribers > defaults.get("stream_max_subscribers", 10_000):
        flags += ["--stream-max-subscribers", str(subscribers)]
    return flags


def schedstat(pid: int) -> tuple[float, float, int]:
    """A process's main thread: seconds on a CPU, seconds waiting for one (runnable),
    times it was switched in (/proc/<pid>/schedstat)."""
    try:
        run, wait, slices = open(f"/proc/{pid}/schedstat").read().split()[:3]
    except (OSError, ValueError):
        return 0.0, 0.0, 0
    return int(run) / 1e9, int(wait) / 1e9, int(slices)


def sockstat_tcp_pages() -> int | None:
    """Pages the kernel holds for TCP sockets, all of the machine's (/proc/net/sockstat)."""
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                f = line.split()
                return int(f[f.index("mem") + 1])
    except (OSError, ValueError):
        return None
    return None


class Subscribers:
    """One run of the subscribers' program: connect, then measurement windows."""

    def __init__(self, procs: Processes, exe: Path, port: int, path: str, n: int,
                 batch: int = 200, pending: int = 2000, ready_timeout: float = 60.0,
                 pause_us: int = PAUSE_US, first: int = 0):
        self.n = n
        self.subscribed = 0
        self.pause_us = pause_us
        self.procs = procs
        log = procs.workdir / "sse-subscribers.log"
        self.errf = open(log, "ab")  # noqa: SIM115 - closed in close()
        argv = [str(exe), HOST, str(port), path, str(n), str(batch), str(pending),
                str(ready_timeout), str(pause_us), str(first)]
        self.ready_timeout = ready_timeout
        popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.errf, start_new_session=True)
        self.proc = Proc("sse-subscribers", popen, log)
        procs.procs.append(self.proc)  # stopped with the rest, also on Ctrl-C
        self.lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.popen.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def _expect(self, word: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise queue.Empty
                line = self.lines.get(timeout=left)
            except queue.Empty:
                raise BenchError(f"live: the subscribers did not answer {word!r} within "
                                 f"{timeout:.0f} s") from None
            if line == b"":
                raise BenchError(f"live: the subscribers exited ({self.proc.popen.poll()}): "
                                 + self.proc.log_tail())
            text = line.decode(errors="replace")
            if text.startswith(word + " "):
                return json.loads(text[len(word) + 1:])

    def _send(self, cmd: str) -> None:
        try:
            self.proc.popen.stdin.write(cmd.encode() + b"\n")
            self.proc.popen.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise BenchError(f"live: the subscribers exited: {e}") from e

    def wait_ready(self) -> dict:
        ready = self._expect("ready", self.ready_timeout + 10)
        self.subscribed = ready["subscribed"]
        return ready

    def more(self) -> dict:
        """Connects the subscribers beyond `first`; their `ready` line."""
        self._send("more")
        return self.wait_ready()

    def start(self) -> None:
        self._send("start")

    def stop(self) -> dict:
        self._send("stop")
        return self._expect("window", 10)

    def cpu_seconds(self) -> float:
        from .runner import cpu_seconds
        return cpu_seconds([self.proc.pid])

    def close(self) -> None:
        try:
            self._send("quit")
            self.proc.popen.wait(10)
        except (BenchError, subprocess.TimeoutExpired):
            pass
        self.procs.stop(self.proc)
        self.errf.close()


class Trickle(threading.Thread):
    """Buys one unit every 1/rate s, a new user each time, on one kept-alive connection;
    counts the answers (200s: orders acknowledged)."""

    def __init__(self, port: int, event_id: str, sku: str, rate: float, headers_of,
                 prefix: str):
        super().__init__(name="trickle", daemon=True)
        self.port = port
        self.path = f"/api/v1/events/{event_id}/buy"
        self.body = json.dumps({"sku": sku, "qty": 1}).encode()
        self.interval = 1.0 / rate
        self.headers_of = headers_of  # user, number -> headers (identity, client IP)
        self.prefix = prefix
        self.stop_flag = threading.Event()
        self.answers: dict[int, int] = {}
        self.sent = 0
        self.error: str | None = None

    @property
    def acked(self) -> int:
        return self.answers.get(200, 0)

    def _buy(self, conn: http.client.HTTPConnection, k: int) -> int:
        headers = {"Content-Type": "application/json"}
        headers.update(self.headers_of(f"{self.prefix}{k}", k))
        conn.request("POST", self.path, self.body, headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        next_at = time.monotonic()
        try:
            while not self.stop_flag.is_set():
                self.sent += 1
                try:
                    status = self._buy(conn, self.sent)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                    status = self._buy(conn, self.sent)
                self.answers[status] = self.answers.get(status, 0) + 1
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop_flag.wait(delay)
                else:
                    next_at = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported by the scenario
            self.error = f"{type(e).__name__}: {e}"
        finally:
            conn.close()

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(15)


def client_ip(k: int) -> str:
    """A client IP per trickle buyer (172.16.0.0/12; the load's are 10.x.y.z)."""
    return f"172.{16 + ((k >> 16) & 15)}.{(k >> 8) & 255}.{k & 255}"


# ------------------------------------------------------------------ figures


def window_figures(win: dict, subscribers: int, pause_us: int = PAUSE_US) -> dict:
    """What one measurement window of the subscribers adds up to."""
    ticks = sorted(win.get("ticks") or [])
    d = win["deliveries"]
    wall = win["wall_s"] or 0.0
    lat = win["latency_us"]
    inner = ticks[1:-1]  # the first and last may straddle the window's edges
    gaps = [(b[1] - a[1]) for a, b in zip(ticks, ticks[1:], strict=False) if b[0] == a[0] + 1]
    last = sorted(k[4] for k in ticks)
    return {
        "subscribers": subscribers,
        "open_at_end": win["open"],
        "frames": len(ticks),
        "deliveries": d,
        "deliveries_per_s": d / wall if wall else None,
        "within_50ms": win["within_50ms"],
        "within_50ms_share": win["within_50ms"] / d if d else None,
        "latency_ms": {k: (v / 1000 if v is not None and v >= 0 else None)
                       for k, v in lat.items()},
        "missed_frames": win["missed"],
        "subscribers_missed": win["subs_missed"],
        "repeats": win["repeats"],
        "closed": win["closed"],
        "heartbeats": win["heartbeats"],
        "unstamped_frames": win["unstamped"],
        # frames every subscriber got (the window's first and last left out)
        "frames_short": sum(1 for k in inner if k[2] < win["open"]),
        # per frame: when its last subscriber had it, after the tick
        "fanout_done_ms_p50": last[len(last) // 2] / 1000 if last else None,
        "fanout_done_ms_max": last[-1] / 1000 if last else None,
        "tick_gap_ms_max": max(gaps) if gaps else None,
        "frame_bytes": win["bytes"] / (d + win["unstamped"]) if d + win["unstamped"] else None,
        "generator_cpu_pct": win["cpu_s"] * 100 / wall if wall else None,
        "generator_reads": win["reads"],
        "wall_s": wall,
        "pause_us": pause_us,
    }
