"""Processes of a bench run: Redis, the servers under test, wrk.

Every process is started in its own session (process group) and registered with
a `Processes` object; `Processes.stop_all()` (called from a `finally`) sends
SIGTERM to each group, waits, then SIGKILLs what is left. Nothing listens on
anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "wrk" / "flashsale.lua"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A process did not start, answer or behave; the message says which."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, headers=None, timeout: float = 10.0):
    """A small HTTP client for set-up and checks: returns (status, bytes)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ------------------------------------------------------------------ /proc


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def process_tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes (reaped children's time included)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        # fields[0] is field 3 (state): utime, stime, cutime, cstime are 14..17
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), for the load that
    is not ours: other processes on a shared machine disturb a benchmark."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children (wrk runs)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def status_kib(pid: int, key: str) -> int | None:
    """A `VmHWM`/`VmRSS`-style line of /proc/<pid>/status, in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ------------------------------------------------------------------ processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def workers(self) -> list[int]:
        """The processes that serve: the children if there are any, else the process.
        multiprocessing's resource tracker is not a worker."""
        kids = [p for p in _children(self.pid) if b"resource_tracker" not in _cmdline(p)]
        return kids or [self.pid]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.popen.returncode}; its log ends with:\n"
                + self.log_tail()
            )


@dataclass
class Processes:
    """Owns every process the bench starts."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict | None = None, cwd=None,
              drop_env: str | None = None) -> Proc:
        """Starts argv in its own session; `drop_env`: a prefix of environment variables
        the child must not inherit."""
        log = self.workdir / f"{name}.log"
        inherited = {k: v for k, v in os.environ.items()
                     if drop_env is None or not k.startswith(drop_env)}
        f = open(log, "ab")  # noqa: SIM115 - kept open by the child
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**inherited, **(env or {})},
                cwd=cwd or REPO_DIR,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise BenchError(f"cannot start {name}: {e}") from e
        finally:
            f.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        if proc in self.procs:
            self.procs.remove(proc)
        _stop_group(proc.popen, grace)

    def stop_all(self) -> None:
        while self.procs:
            self.stop(self.procs[-1])


def _stop_group(popen: subprocess.Popen, grace: float) -> None:
    try:
        pgid = os.getpgid(popen.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None:
        if popen.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                popen.wait(grace)
        with suppress(ProcessLookupError):  # the group leader may be gone, workers not
            os.killpg(pgid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        popen.wait(grace)


def wait_until(what: str, probe, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None:
            proc.check_alive()
        try:
            if probe():
                return
        except Exception as e:  # noqa: BLE001 - not ready yet, keep the reason
            last = e
        time.sleep(0.05)
    tail = ("\nlog:\n" + proc.log_tail()) if proc is not None else ""
    raise BenchError(f"{what} not ready after {timeout:.0f} s (last error: {last}){tail}")


def http_ok(url: str) -> bool:
    return http("GET", url, timeout=1.0)[0] == 200


# ------------------------------------------------------------------ Redis


@dataclass
class Redis:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self, audit: bool = False):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if not audit:
            return redis.Redis(host=HOST, port=self.port, db=0, decode_responses=True)
        # The audit walks millions of orders in one script call (seconds): no retries
        # and a long timeout, since a client that gave up and retried would only get
        # BUSY while the first call is still running.
        return redis.Redis(host=HOST, port=self.port, db=0, decode_responses=True,
                           socket_timeout=600, retry=Retry(NoBackoff(), 0))


def redis_persistence(aof: bool) -> list[str]:
    """The persistence flags of every Redis the bench starts. With AOF, no automatic
    rewrite: a rewrite forks a copy of the whole dataset that competes with the run for
    the machine's cores. A sale's AOF stays far below the 64 MB that sets one off; the
    commit scenario writes millions of orders and would set off several per run, each
    of a larger dataset, so that later repetitions measured the rewrites (BENCHMARKS.md)."""
    if aof:
        return ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                "--auto-aof-rewrite-percentage", "0"]
    return ["--save", "", "--appendonly", "no"]


def start_redis(procs: Processes, name: str, aof: bool = True,
                replica_of: Redis | None = None) -> Redis:
    """A private redis-server; `replica_of`: a replica of that one (same persistence),
    returned once its link to the master is up."""
    port = free_port()
    data = procs.workdir / name
    data.mkdir(exist_ok=True)
    argv = [
        "redis-server", "--bind", HOST, "--port", str(port), "--dir", str(data),
        *redis_persistence(aof),
        "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
    ]  # fmt: skip
    if replica_of is not None:
        argv += ["--replicaof", HOST, str(replica_of.port)]
    proc = procs.start(name, argv)
    r = Redis(proc, port)
    client = r.client()
    wait_until(name, client.ping, 10, proc)
    if replica_of is not None:
        wait_until(f"{name}'s link to its master",
                   lambda: client.info("replication").get("master_link_status") == "up", 30, proc)
    return r


# ------------------------------------------------------------------ nginx

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""

# The same length as a sold-out answer, so the bytes on the wire are comparable.
NGINX_BODY = '{"error":"sold_out","message":"no unit left for this sku"}'


def start_nginx(procs: Processes) -> tuple[Proc, int]:
    port = free_port()
    d = procs.workdir / "nginx"
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=d, host=HOST, port=port, body=NGINX_BODY))
    proc = procs.start("nginx", ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)])
    wait_until("nginx", lambda: http_ok(f"http://{HOST}:{port}/"), 10, proc)
    return proc, port


# ------------------------------------------------------------------ the FastAPI peer


def start_fastapi(procs: Processes, redis: Redis, event_file: Path, admin_token: str,
                  user_secret: str | None) -> tuple[Proc, int]:
    port = free_port()
    env = {
        "PEER_REDIS_URL": redis.url,
        "PEER_EVENT_FILE": str(event_file),
        "PEER_ADMIN_TOKEN": admin_token,
        "PEER_USER_SECRET": user_secret or "",
    }
    argv = [
        sys.executable, "-m", "uvicorn", "bench.peers.fastapi_seckill:app",
        "--host", HOST, "--port", str(port), "--workers", "1",
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning", "--backlog", "4096",
    ]  # fmt: skip
    proc = procs.start("fastapi", argv, env=env)
    wait_until("fastapi peer", lambda: http_ok(f"http://{HOST}:{port}/readyz"), 30, proc)
    return proc, port


# ------------------------------------------------------------------ flashgate


def _serve_help(argv0: list[str]) -> str | None:
    import tempfile

    # not from the checkout: a `python -c ...` command must import the flashgate the
    # servers will run (PYTHONPATH's), as start_flashgate does
    try:
        out = subprocess.run(argv0 + ["serve", "--help"], capture_output=True, text=True,
                             timeout=30, cwd=tempfile.gettempdir(), env=_server_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _server_env() -> dict:
    # flashgate reads FLASHGATE_<NAME> variables as flags: none may reach the servers
    # the bench starts, or a configuration would not be what the report says
    return {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}


def flashgate_argv(argv0: list[str] | None = None) -> tuple[list[str] | None, str]:
    """How to start flashgate (argv0, else the console script, else `python -m
    flashgate`) if `serve --help` works, and that help's text."""
    import shutil

    if argv0 is None:
        exe = shutil.which("flashgate")
        argv0 = [exe] if exe else [sys.executable, "-m", "flashgate"]
    text = _serve_help(argv0)
    ok = text is not None and "--workers" in text
    return (argv0 if ok else None), text or ""


LIMIT_FLAGS = ("ip_rate", "ip_burst", "user_rate", "user_burst", "global_rate", "global_burst")


def flashgate_limits(help_text: str) -> dict[str, float] | None:
    """The limiter defaults in flashgate's `serve --help` ("[env FLASHGATE_IP_RATE,
    default 50.0]"): what a server started without limit flags applies, per worker."""
    import re

    text = " ".join(help_text.split())
    out = {}
    for name in LIMIT_FLAGS:
        m = re.search(rf"FLASHGATE_{name.upper()}, default ([0-9.eE+-]+)\]", text)
        if m is None:
            return None
        out[name] = float(m.group(1))
    return out


def start_flashgate(procs: Processes, argv0: list[str], redis: Redis, event_file: Path,
                    admin_token: str, user_secret: str | None, workers: int,
                    flags: list[str], name: str = "flashgate") -> tuple[Proc, int]:
    port = free_port()
    data = procs.workdir / f"{name}-data"
    data.mkdir(exist_ok=True)
    argv = argv0 + [
        "serve", "--host", HOST, "--port", str(port), "--workers", str(workers),
        "--redis", redis.url, "--event", str(event_file), "--data-dir", str(data),
        "--admin-token", admin_token,
    ]  # fmt: skip
    if user_secret:
        argv += ["--user-secret", user_secret]
    argv += flags
    # run from the work dir: a `--flashgate "python -c ..."` command then imports the
    # flashgate that PYTHONPATH names (e.g. a snapshot), not the checkout's
    # without a user secret an external Redis needs dev identity asked for (a variable:
    # a flashgate that predates the setting ignores it)
    env = None if user_secret else {"FLASHGATE_DEV": "1"}
    proc = procs.start(name, argv, env=env, cwd=procs.workdir, drop_env="FLASHGATE_")
    wait_until("flashgate", lambda: "listening on" in proc.log.read_text(errors="replace"), 90, proc)
    wait_until("flashgate /readyz", lambda: http_ok(f"http://{HOST}:{port}/readyz"), 60, proc)
    return proc, port


# ------------------------------------------------------------------ wrk


@dataclass
class WrkResult:
    data: dict
    stdout: str

    @property
    def requests(self) -> int:
        return int(self.data["requests"])

    @property
    def seconds(self) -> float:
        return self.data["duration_us"] / 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def statuses(self) -> dict[str, int]:
        st = self.data.get("statuses") or {}
        return st if isinstance(st, dict) else {}

    def codes(self) -> dict[str, int]:
        cd = self.data.get("codes") or {}
        return cd if isinstance(cd, dict) else {}

    @property
    def signed_live(self) -> int:
        """Tokens wrk signed while it ran (its pool ran out)."""
        return int(self.data.get("signed_live") or 0)

    @property
    def init_cpu_s(self) -> float:
        """CPU time of the script's init(), before the run (reading token pools)."""
        return float(self.data.get("init_cpu_us") or 0) / 1e6


def run_wrk(port: int, path: str, seconds: float, connections: int, threads: int,
            lua_args: dict, timeout_s: float = 5.0, flag_dir: Path | None = None,
            until=None) -> WrkResult:
    """One wrk run of fixed duration against 127.0.0.1:port; parses BENCH_JSON.

    With `flag_dir` (and a `limit` in lua_args), wrk is interrupted as soon as every
    thread has sent its share; with `until` (a callable, asked every 0.1 s), as soon
    as it returns true; `seconds` is then only the cap.
    """
    if flag_dir is not None:
        lua_args = {**lua_args, "flag": f"{flag_dir}/wrk-done-"}
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--latency", f"--timeout={timeout_s:g}s", "-s", str(LUA_SCRIPT),
        f"http://{HOST}:{port}{path}", "--",
    ] + [f"{k}={v}" for k, v in lua_args.items()]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as wrk:
        try:
            if flag_dir is not None:
                deadline = time.monotonic() + seconds + 5
                flags = [flag_dir / f"wrk-done-{i}" for i in range(1, threads + 1)]
                while wrk.poll() is None and time.monotonic() < deadline:
                    if all(f.exists() for f in flags):
                        time.sleep(0.2)  # the last answers arrive
                        wrk.send_signal(signal.SIGINT)
                        break
                    time.sleep(0.1)
                for f in flags:
                    f.unlink(missing_ok=True)
            elif until is not None:
                deadline = time.monotonic() + seconds + 5
                while wrk.poll() is None and time.monotonic() < deadline:
                    if until():
                        wrk.send_signal(signal.SIGINT)
                        break
                    time.sleep(0.1)
            stdout, stderr = wrk.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired as e:
            wrk.kill()
            wrk.wait()
            raise BenchError(f"wrk did not finish: {' '.join(argv)}") from e
        except BaseException:
            wrk.kill()
            wrk.wait()
            raise
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return WrkResult(json.loads(line[len("BENCH_JSON ") :]), stdout)
    raise BenchError(f"wrk failed ({wrk.returncode}): {stderr.strip() or stdout[-2000:]}")
