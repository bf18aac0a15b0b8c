"""Trust at the process level, with real processes: one server per data directory;
the embedded Redis reachable by flashgate alone (no TCP port, a 0700 unix socket,
CONFIG and the other admin commands gone; data 0700/0600); the admin token file
written safely and checked when reused; secrets out of the process list; Redis
passwords never printed; Redis over TLS with its certificate verified."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
import uvloop

from flashgate.core.redisconn import RedisConnection, RedisUnavailable
from flashgate.embedded import find_redis_server, free_port
from tests.support import ADMIN, Gateway, check_invariants, event_body, new_id


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}
    env.update(extra)
    return env


def demo_server(data: Path, *extra) -> Gateway:
    """``flashgate serve`` out of the box (embedded Redis, demo, loopback)."""
    gw = Gateway("", data)
    gw.args = [sys.executable, "-m", "flashgate", "serve", "--port", "0", "--workers", "1",
               "--data-dir", str(data), *extra]
    return gw.start()


def serve(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flashgate", "serve", "--port", "0",
                           "--workers", "1", *args], capture_output=True, text=True,
                          env=env or clean_env(), timeout=timeout)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout
        for k in map(int, kids.split()):
            out.append(k)
            todo.append(k)
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def redis_servers_of(data: Path) -> list[int]:
    """Pids of the redis-servers whose socket is under ``data`` (a running Redis sets
    its title to ``redis-server unixsocket:PATH``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            title = " ".join(cmdline(int(entry.name)))
            if "redis-server" in title and str(data) + "/" in title:
                pids.append(int(entry.name))
    return pids


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A":  # LISTEN
                inodes.add(cols[9])
    return inodes


# -- one data directory, one server --------------------------------------------------


def test_one_data_directory_one_server(tmp_path):
    """A second server on a directory in use exits 2 at once, names the directory and
    the pid holding it, and touches nothing: the first keeps selling."""
    data = tmp_path / "data"
    first = demo_server(data)
    try:
        status, order, _ = first.buy("demo", "tea-500g", "first-1")
        assert status == 200, order
        token = (data / "admin_token").read_bytes()
        sock = data / "redis" / "redis.sock"
        sock_inode = os.stat(sock).st_ino
        aof_files = sorted(p.name for p in (data / "redis").rglob("*.aof*"))
        [redis_pid] = redis_servers_of(data)
        # the embedded Redis holds the lock too: the directory stays locked while it lives
        assert any(os.readlink(fd) == str(data / "lock")
                   for fd in Path(f"/proc/{redis_pid}/fd").iterdir())

        second = serve("--data-dir", str(data))
        assert second.returncode == 2, second
        assert (f"the data directory {data} is in use by another flashgate server "
                f"(pid {first.proc.pid})") in second.stderr, second.stderr
        assert "--data-dir" in second.stderr
        assert redis_servers_of(data) == [redis_pid], "the second server started a Redis"
        assert (data / "admin_token").read_bytes() == token
        assert os.stat(sock).st_ino == sock_inode
        assert sorted(p.name for p in (data / "redis").rglob("*.aof*")) == aof_files
        assert (data / "lock").read_text().strip() == str(first.proc.pid)

        status, order2, _ = first.buy("demo", "tea-500g", "first-2")  # the first sells on
        assert status == 200, order2
        r = redis.Redis(unix_socket_path=str(sock))
        try:
            view = first.request("GET", "/api/v1/events/demo")[1]
            check_invariants(r, None, "demo", view, [order, order2])
        finally:
            r.close()
    finally:
        assert first.stop() == 0, "".join(first.output)
    assert not redis_servers_of(data)
    again = demo_server(data)  # the lock went with the server
    assert again.stop() == 0


# -- the embedded Redis is flashgate's alone ------------------------------------------------


NOT_NEEDED = [("CONFIG", "GET", "dir"), ("CONFIG", "SET", "dir", "/tmp"), ("DEBUG", "SLEEP", "0"),
              ("FLUSHALL",), ("FLUSHDB",), ("SHUTDOWN", "NOSAVE"), ("MODULE", "LIST"), ("SAVE",),
              ("BGSAVE",), ("BGREWRITEAOF",), ("REPLICAOF", "NO", "ONE"), ("SLAVEOF", "NO", "ONE"),
              ("ACL", "LIST"), ("MONITOR",), ("SWAPDB", "0", "1"), ("MIGRATE",), ("RESTORE",),
              ("MOVE", "k", "1"), ("COPY", "a", "b")]


def test_the_embedded_redis_is_reachable_by_flashgate_alone(tmp_path):
    data = tmp_path / "data"
    # what an earlier version left, readable by everyone
    (data / "redis").mkdir(parents=True)
    (data / "redis" / "old.log").write_text("old\n")
    for p, mode in ((data, 0o755), (data / "redis", 0o755), (data / "redis" / "old.log", 0o644)):
        os.chmod(p, mode)
    gw = demo_server(data)
    try:
        status, order, _ = gw.buy("demo", "cup", "u1")
        assert status == 200, order
        [pid] = redis_servers_of(data)
        mine = socket_inodes(pid)
        assert mine, "the embedded Redis has no socket at all"
        assert not mine & listening_tcp_inodes(), "the embedded Redis listens on TCP"

        r = redis.Redis(unix_socket_path=str(data / "redis" / "redis.sock"))
        try:
            for command in NOT_NEEDED:
                with pytest.raises(redis.ResponseError, match="unknown command"):
                    r.execute_command(*command)
            # what flashgate uses still works
            assert r.ping() and r.execute_command("TIME")
            assert "used_memory" in r.info("memory")
            assert r.execute_command("SCRIPT", "EXISTS", "0" * 40) == [0]
        finally:
            r.close()

        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for p in [data, *data.rglob("*")]:
            mode = stat.S_IMODE(p.lstat().st_mode)
            assert mode & 0o077 == 0, f"{p} is {mode:04o}"
        for name in ("admin_token", "lock"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
        aof = [p for p in (data / "redis").rglob("*.aof*") if p.is_file()]
        assert aof and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in aof)
        assert stat.S_IMODE((data / "redis" / "redis.log").stat().st_mode) == 0o600
    finally:
        assert gw.stop() == 0


def _unused_uid() -> int:
    for uid in range(42000, 43000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    pytest.skip("no unused uid in 42000-42999")


def _interpreter_for(uid: int) -> str:
    """A Python that another user may run (this one may live in a private home)."""
    for exe in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(exe):
            continue
        try:
            ok = subprocess.run([exe, "-c", "pass"], user=uid, group=uid, extra_groups=[],
                                capture_output=True, cwd="/", env={"PATH": "/usr/bin:/bin"})
        except OSError:
            continue
        if ok.returncode == 0:
            return exe
    pytest.skip("no Python interpreter that another user may run")


PROBE = r"""
import json, os, socket, sys
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = type(e).__name__
def connect(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(b"PING\r\n")
        assert s.recv(16).startswith(b"+PONG")
paths = json.loads(sys.argv[1])
attempt("public", lambda: open(paths["public"]).read())
attempt("list", lambda: os.listdir(paths["data"]))
attempt("admin_token", lambda: open(paths["admin_token"]).read())
attempt("aof", lambda: open(paths["aof"], "rb").read())
attempt("socket", lambda: connect(paths["socket"]))
print(json.dumps(out))
"""


@pytest.mark.ci_required  # CI runs as root
def test_another_local_user_cannot_reach_the_embedded_redis_or_its_files():
    if os.geteuid() != 0:
        pytest.skip("acting as another local user needs root")
    uid = _unused_uid()  # a local user with no other rights than being someone else
    python = _interpreter_for(uid)
    base = Path(tempfile.mkdtemp(prefix="flashgate-security-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)  # everyone may come this far
        public = base / "public.txt"
        public.write_text("anyone may read this\n")
        public.chmod(0o644)
        data = base / "data"
        gw = demo_server(data)
        try:
            assert gw.buy("demo", "cup", "u1")[0] == 200
            aof = next(p for p in (data / "redis").rglob("*.aof*") if p.is_file())
            paths = {"public": str(public), "data": str(data), "aof": str(aof),
                     "admin_token": str(data / "admin_token"),
                     "socket": str(data / "redis" / "redis.sock")}
            out = subprocess.run([python, "-c", PROBE, json.dumps(paths)], user=uid, group=uid,
                                 extra_groups=[], capture_output=True, text=True, cwd="/",
                                 env={"PATH": "/usr/bin:/bin"}, timeout=30)
            assert out.returncode == 0, out.stderr
            seen = json.loads(out.stdout)
            assert seen["public"] == "ok", seen  # the probe itself works
            for what in ("list", "admin_token", "aof", "socket"):
                assert seen[what] == "PermissionError", seen
            # and flashgate's own user can
            r = redis.Redis(unix_socket_path=paths["socket"])
            try:
                assert r.ping()
            finally:
                r.close()
        finally:
            assert gw.stop() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- the admin token file -------------------------------------------------------------------


def test_the_generated_admin_token_file(redis_server, tmp_path):
    data = tmp_path / "data"
    gw = Gateway(redis_server.url, data, workers=1)
    gw.args.remove("--admin-token")
    gw.args.remove(ADMIN)
    gw.start()
    try:
        path = data / "admin_token"
        token = path.read_text().strip()
        assert len(token) >= 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(p.name for p in data.iterdir()) == ["admin_token", "lock"]  # no temp file
        ev = new_id("tok")
        status, _, _ = gw.request("PUT", f"/api/v1/admin/events/{ev}", event_body(),
                                  {"Authorization": f"Bearer {token}"})
        assert status == 201
        assert gw.admin("GET", f"/api/v1/admin/events/{ev}/stats")[0] == 401  # not ADMIN
    finally:
        assert gw.stop() == 0
    # reused as it is
    again = Gateway(redis_server.url, data, workers=1)
    again.args.remove("--admin-token")
    again.args.remove(ADMIN)
    again.start()
    try:
        assert path.read_text().strip() == token
        assert again.request("GET", f"/api/v1/admin/events/{ev}/stats",
                             headers={"Authorization": f"Bearer {token}"})[0] == 200
    finally:
        assert again.stop() == 0


def _bad_token_files():
    cases = {
        "readable-by-the-group": ("0640", "t" * 32, ["may be read by other users", "0640"]),
        "readable-by-everyone": ("0644", "t" * 32, ["may be read by other users", "0644"]),
        "empty": ("0600", "\n", ["is empty"]),
        "too-short": ("0600", "short\n", ["too short", "5 characters"]),
        "a-symlink": ("link", "", ["cannot read the admin token file"]),
    }
    if os.geteuid() == 0:
        cases["another-users"] = ("chown", "t" * 32, ["belongs to uid 42424"])
    return cases


@pytest.mark.parametrize("case", sorted(_bad_token_files()))
def test_a_doubtful_admin_token_file_is_refused(case, redis_server, tmp_path):
    how, content, words = _bad_token_files()[case]
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    path = data / "admin_token"
    if how == "link":
        target = tmp_path / "elsewhere"
        target.write_text("t" * 32)
        target.chmod(0o600)
        path.symlink_to(target)
    else:
        path.write_text(content)
        path.chmod(0o600 if how == "chown" else int(how, 8))
        if how == "chown":
            os.chown(path, 42424, -1)
    before = path.read_bytes() if how != "link" else None
    out = serve("--redis", redis_server.url, "--dev", "--data-dir", str(data), "--no-demo")
    assert out.returncode == 2, out
    message = " ".join(out.stderr.split())
    assert str(path) in message, message
    for w in words:
        assert w in message, (w, message)
    assert "listening" not in out.stdout
    if before is not None:
        assert path.read_bytes() == before  # left as it was, for the operator to look at


# -- secrets out of the process list ----------------------------------------------------------


def test_secrets_from_a_file_and_a_variable_stay_out_of_the_process_list(redis_server, tmp_path):
    secret = "s" * 20 + uuid.uuid4().hex  # 52 bytes
    admin = "admin-" + uuid.uuid4().hex
    secret_file = tmp_path / "user_secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o644)  # used, with a warning
    env = clean_env(FLASHGATE_ADMIN_TOKEN=admin, FLASHGATE_REDIS=redis_server.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashgate", "serve", "--port", "0", "--workers", "2",
         "--data-dir", str(tmp_path / "data"), "--no-demo", "--user-secret-file",
         str(secret_file)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, start_new_session=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "identity:" in line:  # the banner's last line without events
                break
        text = "".join(lines)
        assert "listening on http://" in text, text
        pids = [proc.pid, *descendants(proc.pid)]
        assert len(pids) >= 3  # the supervisor and its two workers
        for pid in pids:
            args = "\0".join(cmdline(pid))
            assert secret not in args and admin not in args, (pid, args)
        assert secret not in text and admin not in text
        assert "is visible to every local user" not in text
        assert f"the user secret file {secret_file} is readable by other users" in text
        assert "admin token: the one given" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        proc.stdout.close()


def test_secrets_given_as_flags_are_warned_of(redis_server, tmp_path):
    secret = "f" * 40
    gw = Gateway(redis_server.url, tmp_path / "gw", workers=1,
                 extra=["--user-secret", secret]).start()
    try:
        text = "".join(gw.output)
        assert "--user-secret is visible to every local user in the process list" in text
        assert "--admin-token is visible to every local user in the process list" in text
        assert secret not in text and ADMIN not in text
    finally:
        assert gw.stop() == 0


# -- Redis passwords are never printed ------------------------------------------------------


def test_a_redis_password_is_never_printed(tmp_path, r):
    """Banner and logs of a server whose Redis URL has a password (the 'waiting for
    Redis' message included, said once, not every retry) show it as ***."""
    password = "pw-" + uuid.uuid4().hex
    port = free_port()
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server: list[subprocess.Popen] = []

    def start_redis():
        server.append(subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
             "--requirepass", password, "--save", "", "--appendonly", "no",
             "--dir", str(redis_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    gw = Gateway(url, tmp_path / "gw", workers=1, extra=["--log-level", "info"])
    timer = threading.Timer(2.5, start_redis)  # the gateway waits for Redis first
    timer.start()
    try:
        gw.start(timeout=60)
        ev = new_id("pw")
        body = event_body()
        gw.put_event(ev, body)
        status, order, _ = gw.buy(ev, "s0", "u1")
        assert status == 200, order
        # a wrong password: refused at once, and not printed either
        wrong = serve("--redis", url.replace(password, password + "-wrong"), "--dev",
                      "--data-dir", str(tmp_path / "wrong"), "--admin-token", ADMIN)
        assert wrong.returncode == 2, wrong
        assert "cannot load the events" in wrong.stderr and "WRONGPASS" in wrong.stderr.upper() \
            or "invalid password" in wrong.stderr, wrong.stderr
        assert password not in wrong.stdout + wrong.stderr
    finally:
        timer.cancel()
        timer.join()
        assert gw.stop() == 0
        for p in server:
            p.terminate()
            p.wait(10)
    text = "".join(gw.output)
    assert password not in text, text
    waits = [line for line in text.splitlines() if "waiting for Redis" in line]
    assert len(waits) == 1, waits  # 2.5 s of retries every 0.5 s, said once
    assert f"waiting for Redis at redis://:***@127.0.0.1:{port}/0" in waits[0]
    assert f"Redis: redis://:***@127.0.0.1:{port}/0" in text  # the banner
    assert "the password in --redis is visible to every local user" in text


# -- Redis over TLS ---------------------------------------------------------------------------


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(where: Path) -> dict[str, str]:
    """A test CA; a server certificate for localhost and 127.0.0.1; a client
    certificate; and a second, unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    where.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=flashgate test {ca}", "-addext",
                 "basicConstraints=critical,CA:TRUE", "-addext",
                 "keyUsage=critical,keyCertSign,cRLSign", cwd=where)
    for name, ext in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                 "extendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (where / f"{name}.ext").write_text(
            ext + "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else 'flashgate'}", cwd=where)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
                 f"{name}.ext", cwd=where)
    return {n: str(where / n) for n in ("ca.pem", "other-ca.pem", "server.pem", "server.key",
                                         "client.pem", "client.key")}


def _tls_ping(port: int, pki: dict, host: str = "127.0.0.1") -> bool:
    ctx = ssl.create_default_context(cafile=pki["ca.pem"])
    ctx.load_cert_chain(pki["client.pem"], pki["client.key"])
    try:
        with socket.create_connection((host, port), timeout=1) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # Redis answered over TLS
    except OSError:
        return False


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server with TLS only (client certificates required) and a password;
    skipped when no redis-server here is built with TLS."""
    pki = make_pki(tmp_path / "pki")
    password = "tls-pw-" + uuid.uuid4().hex
    candidates, seen = [], set()
    for exe in (shutil.which("redis-server"), "/usr/bin/redis-server",
                "/usr/local/bin/redis-server"):
        # (run by its own name: Debian's is a link to a binary that acts on argv[0])
        if exe and os.path.exists(exe) and os.path.realpath(exe) not in seen:
            seen.add(os.path.realpath(exe))
            candidates.append(exe)
    for exe in candidates:
        port = free_port()
        data = tmp_path / f"redis-{len(candidates)}-{port}"
        data.mkdir()
        proc = subprocess.Popen(
            [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "127.0.0.2",
             "--tls-cert-file", pki["server.pem"], "--tls-key-file", pki["server.key"],
             "--tls-ca-cert-file", pki["ca.pem"], "--tls-auth-clients", "yes",
             "--requirepass", password, "--save", "", "--appendonly", "no",
             "--dir", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            if _tls_ping(port, pki):
                break
            time.sleep(0.05)
        if proc.poll() is None and _tls_ping(port, pki):
            yield {"port": port, "pki": pki, "password": password}
            proc.terminate()
            proc.wait(10)
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    pytest.skip(f"no redis-server built with TLS (tried {', '.join(candidates) or 'none'})")


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}  # workers: uvloop


@pytest.mark.ci_required  # .ci/run installs openssl and a redis-server built with TLS
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_rediss_verifies_the_server_certificate(tls_redis, loop):
    port, pki, pw = tls_redis["port"], tls_redis["pki"], tls_redis["password"]

    def _ping(url: str):
        async def go():
            conn = RedisConnection(url, connect_timeout=5)
            await conn.connect()
            try:
                return await conn.execute("PING")
            finally:
                conn.close()

        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            return runner.run(go())

    client = f"ssl_certfile={pki['client.pem']}&ssl_keyfile={pki['client.key']}"
    good = f"?ssl_ca_certs={pki['ca.pem']}&{client}"
    assert _ping(f"rediss://:{pw}@localhost:{port}/0{good}") == b"PONG"
    assert _ping(f"rediss://:{pw}@127.0.0.1:{port}/0{good}") == b"PONG"
    # a server whose certificate another CA signed, or no CA that knows it
    for query in (f"?ssl_ca_certs={pki['other-ca.pem']}&{client}", f"?{client}"):
        with pytest.raises(RedisUnavailable, match="certificate verify failed"):
            _ping(f"rediss://:{pw}@localhost:{port}/0{query}")
    # a name the certificate does not carry: refused, unless the check is turned off
    with pytest.raises(RedisUnavailable, match="mismatch"):
        _ping(f"rediss://:{pw}@127.0.0.2:{port}/0{good}")
    assert _ping(f"rediss://:{pw}@127.0.0.2:{port}/0{good}&ssl_check_hostname=false") == b"PONG"
    # no client certificate: this server refuses the connection
    with pytest.raises(RedisUnavailable):
        _ping(f"rediss://:{pw}@localhost:{port}/0?ssl_ca_certs={pki['ca.pem']}")
    # plain text to a TLS port gets nowhere
    with pytest.raises((RedisUnavailable, TimeoutError)):
        _ping(f"redis://:{pw}@localhost:{port}/0")


@pytest.mark.ci_required
def test_a_gateway_sells_over_rediss(tls_redis, tmp_path):
    port, pki, pw = tls_redis["port"], tls_redis["pki"], tls_redis["password"]
    url = (f"rediss://:{pw}@localhost:{port}/0?ssl_ca_certs={pki['ca.pem']}"
           f"&ssl_certfile={pki['client.pem']}&ssl_keyfile={pki['client.key']}")
    gw = Gateway(url, tmp_path / "gw", workers=2).start()
    r = redis.Redis(host="localhost", port=port, password=pw, ssl=True,
                    ssl_ca_certs=pki["ca.pem"], ssl_certfile=pki["client.pem"],
                    ssl_keyfile=pki["client.key"])
    try:
        ev = new_id("tls")
        body = event_body(stock=(3,))
        gw.put_event(ev, body)
        acked = []
        for user in ("a", "b", "c", "d"):
            status, order, _ = gw.buy(ev, "s0", user)
            if status == 200:
                acked.append(order)
        assert len(acked) == 3
        check_invariants(r, gw, ev, body, acked)
    finally:
        r.close()
        assert gw.stop() == 0
    text = "".join(gw.output)
    assert pw not in text
    assert f"Redis: rediss://:***@localhost:{port}/0?ssl_ca_certs=" in text


def test_an_embedded_redis_whose_version_cannot_be_told_is_not_started(tmp_path, monkeypatch):
    """Renaming a command the server does not know stops it from starting, so the list
    follows its version; a server whose version cannot be read is refused rather than
    run with CONFIG and the rest."""
    import flashgate.embedded as embedded

    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'a Redis that will not say'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(embedded, "find_redis_server", lambda: str(fake))
    r = embedded.EmbeddedRedis(tmp_path / "data", private=True)
    try:
        with pytest.raises(RuntimeError, match="cannot tell the version"):
            r.start(timeout=5)
    finally:
        r.stop()
