"""A private PostgreSQL cluster for the tests: ``initdb`` into a temporary directory,
``postgres`` on a free port of 127.0.0.1 with its unix socket in that directory.
Never the machine's own service or its data.

PostgreSQL refuses to run as root: when the tests run as root, the cluster's
directory belongs to ``nobody`` and the binaries run as that user (``setpriv``).
The binaries come from PATH, else from Debian's ``/usr/lib/postgresql/<version>/bin``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid

from flashgate.embedded import free_port


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def missing() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    for name in ("initdb", "pg_ctl", "postgres"):
        if find_bin(name) is None:
            return f"no PostgreSQL binary {name!r} (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "running as root and no setpriv to run PostgreSQL as nobody"
    return None


class PostgresCluster:
    """``start()``, ``url(db)``, ``create_db()``, ``stop()``."""

    def __init__(self, durable: bool = False):
        # durable: fsync and synchronous commit on, as a shop's server runs (slower);
        # else off, for the speed of the tests
        self.durable = durable
        self.port = free_port()
        # (as root: in /tmp, whose parents nobody can pass through, whatever TMPDIR says)
        where = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
        self.base = tempfile.mkdtemp(prefix="flashgate-pg-", dir=where)
        self.data = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "postgres.log")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.base, nobody.pw_uid, nobody.pw_gid)
            self.as_user = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                            "--clear-groups", "--"]
        self.pg_ctl = find_bin("pg_ctl")
        self.initdb = find_bin("initdb")

    def _run(self, args: list[str], timeout: float = 60) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        out = subprocess.run(self.as_user + args, capture_output=True, text=True, env=env,
                             timeout=timeout, cwd=self.base)
        if out.returncode != 0:
            log = open(self.log).read() if os.path.exists(self.log) else ""
            raise RuntimeError(f"{args[0]} failed ({out.returncode}):\n{out.stdout}\n"
                               f"{out.stderr}\n{log[-3000:]}")

    def start(self) -> PostgresCluster:
        self._run([self.initdb, "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                   "--no-locale", "--no-sync", "--no-instructions"])
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                "-c max_connections=50 -c shared_buffers=64MB")
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run([self.pg_ctl, "-D", self.data, "-l", self.log, "-o", opts, "-w", "-t", "30",
                   "start"])
        return self

    def url(self, db: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def create_db(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop"])
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        for _ in range(50):
            if not os.path.exists(os.path.join(self.data, "postmaster.pid")):
                break
            time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)
