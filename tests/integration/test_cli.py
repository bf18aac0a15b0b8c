"""The command line as a new user meets it: ``flashgate`` / ``python -m flashgate``,
``--version``, ``serve --help``, ``flashgate token``, every refusal of ``serve`` to
start (exit 2 and a message naming the cause), and the banner: the address actually
bound, and commands that work when copied into another shell."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from flashgate import __version__
from flashgate.config import Config
from flashgate.gateway._token import TokenKey
from tests.support import ADMIN, Gateway, check_invariants, event_body, new_id, now_ms

REPO = Path(__file__).resolve().parents[2]
SECRET = "a-user-secret-for-the-cli-tests-0123456789"  # >= 32 bytes


def clean_env(**extra) -> dict:
    """The environment without any FLASHGATE_ setting of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHGATE_")}
    env.update(extra)
    return env


def flashgate(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flashgate", *args], capture_output=True,
                          text=True, env=env or clean_env(), timeout=timeout)


# -- the command ----------------------------------------------------------------------


def test_version_has_one_place():
    want = f"flashgate {__version__}"
    for args in (["--version"], ["-V"], ["serve", "--version"]):
        out = flashgate(*args)
        assert (out.returncode, out.stdout.strip()) == (0, want), (args, out)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "flashgate.__version__"}


def test_python_m_flashgate_is_the_flashgate_command():
    usage = flashgate()
    assert usage.returncode == 0 and "serve" in usage.stdout and "token" in usage.stdout
    unknown = flashgate("sell")
    assert unknown.returncode == 2 and "unknown command 'sell'" in unknown.stderr
    out = flashgate("token", "u7", "--ttl", "60", env=clean_env(FLASHGATE_USER_SECRET=SECRET))
    assert out.returncode == 0, out.stderr
    assert TokenKey(SECRET.encode()).user(b"Bearer " + out.stdout.strip().encode(), now_ms()) == "u7"
    # the console script is the same entry point
    script = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert script == {"flashgate": "flashgate.cli:main"}


def test_serve_help_gives_every_option_its_meaning_and_unit():
    out = flashgate("serve", "--help")
    assert out.returncode == 0
    helps: dict[str, str] = {}  # flag -> its help, unwrapped
    flag = ""
    for line in out.stdout.split("\noptions:", 1)[1].splitlines():
        m = re.match(r"  (--[a-z-]+)(?: [A-Z]+|, --no-[a-z-]+)?(?:\s+(.*))?$", line)
        if m:
            flag = m.group(1)
            helps[flag] = m.group(2) or ""
        elif line.startswith("    ") and flag:
            helps[flag] += " " + line.strip()
        else:
            flag = ""
    for f in Config.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        assert flag in helps, flag
        assert len(f.metadata.get("help", "")) > 15, f"{flag} has no help of its own"
        assert f"[env FLASHGATE_{f.name.upper()}" in helps[flag], helps[flag]

    def help_of(flag: str) -> str:
        return helps[flag].split(" [env", 1)[0]

    units = {"--wait-timeout": "seconds", "--drain-grace": "seconds", "--drain-delay": "seconds",
             "--keepalive-timeout": "seconds", "--head-timeout": "seconds",
             "--max-token-ttl": "seconds", "--refresh-interval": "seconds",
             "--commit-replicas-timeout": "milliseconds",
             "--stats-interval": "seconds", "--max-clock-skew-ms": "milliseconds",
             "--ip-rate": "requests/s", "--user-rate": "requests/s",
             "--global-rate": "purchases/s", "--max-body": "bytes", "--user-secret": "bytes",
             "--admin-token": "characters", "--port": "0: a free one",
             "--workers": "0: the CPU count"}
    for flag, unit in units.items():
        assert unit in help_of(flag), (flag, help_of(flag))


def test_token_refuses_what_the_gateway_would_refuse(tmp_path):
    env = clean_env(FLASHGATE_USER_SECRET=SECRET)
    for ttl in ("0", "-5"):
        out = flashgate("token", "u1", "--ttl", ttl, env=env)
        assert out.returncode == 2 and "--ttl must be a positive number" in out.stderr, out
        assert out.stdout == ""
    # above the gateway's --max-token-ttl: its default, the variable, the flag
    for args, extra in ((["--ttl", "86401"], {}),
                        (["--ttl", "120"], {"FLASHGATE_MAX_TOKEN_TTL": "60"}),
                        (["--ttl", "120", "--max-token-ttl", "60"], {})):
        out = flashgate("token", "u1", *args, env={**env, **extra})
        assert out.returncode == 2 and "above the gateway's --max-token-ttl" in out.stderr, out
    assert flashgate("token", "u1", "--ttl", "86400", env=env).returncode == 0
    short = flashgate("token", "u1", env=clean_env(FLASHGATE_USER_SECRET="s3cret"))
    assert short.returncode == 2 and "too short: 6 bytes, at least 32" in short.stderr
    none = flashgate("token", "u1", env=clean_env(FLASHGATE_USER_SECRET=""))
    assert none.returncode == 2 and "no user secret" in none.stderr
    bad_user = flashgate("token", "u 1", env=env)
    assert bad_user.returncode == 2 and "user id must match" in bad_user.stderr
    # from a file, named by the flag or by the variable: the same secret
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    for out in (flashgate("token", "u1", "--secret-file", str(secret_file)),
                flashgate("token", "u1",
                          env=clean_env(FLASHGATE_USER_SECRET_FILE=str(secret_file)))):
        assert out.returncode == 0, out.stderr
        assert TokenKey(SECRET.encode()).user(b"Bearer " + out.stdout.strip().encode(), now_ms()) == "u1"
    flag = flashgate("token", "u1", "--secret", SECRET)
    assert flag.returncode == 0 and "visible to every local user" in flag.stderr


# -- serve: every refusal to start -------------------------------------------------------


REFUSALS = {
    # name: (extra args, extra env, words of the message)
    "no-secret-on-every-address": (["--host", "0.0.0.0"], {},
                                   ["no user secret", "0.0.0.0", "--dev"]),
    "no-secret-with-an-external-redis": (["--redis", "redis://127.0.0.1:1/0"], {},
                                         ["no user secret", "external Redis"]),
    "an-empty-secret-is-none": (["--redis", "redis://127.0.0.1:1/0"],
                                {"FLASHGATE_USER_SECRET": ""}, ["no user secret"]),
    "short-user-secret": (["--user-secret", "x" * 31], {}, ["user secret is too short",
                                                          "31 bytes", "at least 32"]),
    "short-user-secret-in-a-file": (["--user-secret-file", "{tmp}/short"], {},
                                    ["user secret is too short"]),
    "missing-secret-file": (["--user-secret-file", "{tmp}/nothing"], {},
                            ["cannot read the user secret file", "nothing"]),
    "empty-secret-file": (["--user-secret-file", "{tmp}/empty"], {},
                          ["user secret file", "is empty"]),
    "secret-twice": (["--user-secret-file", "{tmp}/secret"], {"FLASHGATE_USER_SECRET": SECRET},
                     ["give the user secret once"]),
    "short-admin-token": (["--admin-token", "fifteen-chars-x", "--dev"], {},
                          ["admin token is too short", "15 characters", "at least 16"]),
    "short-admin-token-variable": (["--dev"], {"FLASHGATE_ADMIN_TOKEN": "short"},
                                   ["admin token is too short"]),
    "dev-and-a-secret": (["--dev"], {"FLASHGATE_USER_SECRET": SECRET},
                         ["--dev and a user secret exclude each other"]),
    "bad-appendfsync": (["--appendfsync", "never"], {}, ["--appendfsync must be"]),
    "bad-redis-url": (["--redis", "http://127.0.0.1/", "--dev"], {},
                      ["--redis", "unsupported Redis URL scheme"]),
    "tls-options-without-tls": (["--redis", "redis://h/0?ssl_ca_certs=/x", "--dev"], {},
                                ["ssl_* options need rediss://"]),
    "admin-token-twice": (["--admin-token-file", "{tmp}/secret", "--dev"],
                          {"FLASHGATE_ADMIN_TOKEN": "t" * 16}, ["give the admin token once"]),
    "secret-file-not-text": (["--user-secret-file", "{tmp}/binary"], {},
                             ["user secret file", "is not UTF-8 text"]),
    "negative-workers": (["--workers", "-1"], {}, ["--workers must be >= 0"]),
    "port-out-of-range": (["--port", "70000"], {}, ["--port must be in 0-65535"]),
    "bad-log-level": (["--log-level", "loud"], {}, ["--log-level must be"]),
    "bad-trusted-proxies": (["--trusted-proxies", "10.0.0.0/33"], {}, ["--trusted-proxies"]),
    "bad-proxy-protocol-from": (["--proxy-protocol-from", "nowhere"], {},
                                ["--proxy-protocol-from"]),
    "bad-max-token-ttl": (["--max-token-ttl", "0"], {},
                          ["--max-token-ttl must be a positive number of seconds"]),
    "bad-variable": ([], {"FLASHGATE_PORT": "eighty"}, ["FLASHGATE_PORT", "not a valid int"]),
    # values with which the gateway would start and never answer (or never sell)
    "no-commit-flights": (["--commit-flights", "0", "--dev"], {},
                          ["--commit-flights must be at least 1"]),
    "no-commit-queue": (["--commit-queue", "0", "--dev"], {},
                        ["--commit-queue must be at least 1"]),
    "refresh-busy-loop": (["--refresh-interval", "0", "--dev"], {},
                          ["--refresh-interval must be at least 0.01 s"]),
    "sweep-busy-loop": (["--sweep-interval", "0", "--dev"], {},
                        ["--sweep-interval must be at least 0.01 s"]),
    "stream-busy-loop": (["--stream-tick", "0", "--dev"], {},
                         ["--stream-tick must be at least 0.01 s"]),
    "stream-heartbeat-busy-loop": (["--stream-heartbeat", "0.001", "--dev"], {},
                                   ["--stream-heartbeat must be at least 0.01 s"]),
    "stream-tiny-buffer": (["--stream-max-buffer", "10", "--dev"], {},
                           ["--stream-max-buffer must be at least 1024 bytes"]),
    "stream-no-orders": (["--stream-orders-per-tick", "0", "--dev"], {},
                         ["--stream-orders-per-tick must be at least 1"]),
    "stream-no-ring": (["--stream-resume-frames", "0", "--dev"], {},
                       ["--stream-resume-frames must be at least 1"]),
    "stream-negative-cap": (["--stream-max-subscribers", "-1", "--dev"], {},
                            ["--stream-max-subscribers must be 0 or more"]),
    "negative-clock-skew": (["--max-clock-skew-ms", "-1", "--dev"], {},
                            ["--max-clock-skew-ms must be 0 or more"]),
    "burst-below-one": (["--user-burst", "0.5", "--dev"], {}, ["--user-burst must be at least 1"]),
    "wait-timeout-nan": (["--wait-timeout", "nan", "--dev"], {},
                         ["--wait-timeout must be 0 or more seconds"]),
    "negative-commit-replicas": (["--commit-replicas", "-1", "--dev"], {},
                                 ["--commit-replicas must be 0 or more replicas"]),
    "commit-replicas-forever": (["--commit-replicas-timeout", "0", "--dev"], {},
                                ["--commit-replicas-timeout must be at least 1 ms"]),
    "commit-replicas-embedded": (["--commit-replicas", "1"], {},
                                 ["--commit-replicas needs --redis", "no replicas"]),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_serve_refuses_to_start(name, tmp_path):
    args, env, words = REFUSALS[name]
    (tmp_path / "short").write_text("x" * 20)
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "binary").write_bytes(b"\xff" * 40)
    data = tmp_path / "data"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = flashgate("serve", "--workers", "1", "--data-dir", str(data), "--port", "0", *args,
                    env=clean_env(**env), timeout=30)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    message = " ".join(out.stderr.split())
    for w in words:
        assert w in message, (w, out.stderr)
    assert "Traceback" not in out.stderr
    assert not data.exists(), "a refused server wrote to its data directory"


def test_serve_refuses_what_it_cannot_use(redis_server, tmp_path):
    """Refusals found when starting: each exits 2 with its cause, and nothing keeps
    running."""
    base = ["--redis", redis_server.url, "--dev", "--admin-token", ADMIN, "--no-demo"]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # a port another program holds (no SO_REUSEPORT)
    taken.listen(1)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    cases = [
        (["--port", str(taken.getsockname()[1])], ["cannot listen on 127.0.0.1:"]),
        (["--event", str(tmp_path / "no-such-event.json")], ["cannot load the events"]),
        (["--data-dir", str(a_file), "--admin-token", ""], ["cannot use the data directory",
                                                           str(a_file)]),
    ]
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 42424, 42424)
        cases.append((["--data-dir", str(theirs), "--admin-token", ""],
                      [f"the data directory {theirs} belongs to uid 42424"]))
    try:
        for extra, words in cases:
            args = ["--workers", "1", "--port", "0", "--data-dir", str(tmp_path / "data"),
                    *base, *extra]
            out = flashgate("serve", *args, timeout=60)
            assert out.returncode == 2, (extra, out)
            message = " ".join(out.stderr.split())
            for w in words:
                assert w in message, (w, out.stderr)
            assert "listening on" not in out.stdout
        if os.geteuid() == 0:
            assert list(theirs.iterdir()) == []  # nothing written in another user's directory
    finally:
        taken.close()


# -- serve: the banner --------------------------------------------------------------------


def event_file(tmp_path: Path, stock=5) -> tuple[str, dict, Path]:
    ev = new_id("cli")
    body = event_body(stock=(stock,))
    path = tmp_path / f"{ev}.json"
    path.write_text(json.dumps({"id": ev, **body}))
    return ev, body, path


def banner_of(gw: Gateway) -> str:
    text = "".join(gw.output)
    assert "listening on http://" in text
    return text


def test_banner_says_every_ipv4_address_and_gives_a_url_that_reaches_it(redis_server, tmp_path):
    ev, _, path = event_file(tmp_path)
    gw = Gateway(redis_server.url, tmp_path / "gw", workers=1,
                 extra=["--host", "0.0.0.0", "--event", str(path)]).start()
    try:
        text = banner_of(gw)
        m = re.search(r"listening on http://0\.0\.0\.0:(\d+) \(every IPv4 address of this "
                      r"host; from here: (http://127\.0\.0\.1:\d+)\)", text)
        assert m, text
        assert m.group(2) == f"http://127.0.0.1:{m.group(1)}"
        assert f"event {ev}: {m.group(2)}/api/v1/events/{ev}" in text
    finally:
        assert gw.stop() == 0


def test_banner_on_ipv6_every_address(redis_server, tmp_path):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 on this host")
    gw = Gateway(redis_server.url, tmp_path / "gw", workers=1, extra=["--host", "::"]).start()
    try:
        text = banner_of(gw)
        m = re.search(r"listening on http://\[::\]:(\d+) \(every address of this host, IPv6 and "
                      r"IPv4; from here: http://\[::1\]:(\d+)\)", text)
        assert m and m.group(1) == m.group(2), text
        with socket.create_connection(("::1", int(m.group(1))), timeout=5):
            pass
    finally:
        assert gw.stop() == 0


def test_banner_on_a_given_address_names_it(redis_server, tmp_path):
    gw = Gateway(redis_server.url, tmp_path / "gw", workers=1, extra=["--host", "127.0.0.2"])
    gw.start(wait_ready=False)
    try:
        text = banner_of(gw)
        assert re.search(r"listening on http://127\.0\.0\.2:\d+\n", text), text
        assert "admin token: the one given" in text and ADMIN not in text
        assert "DEV MODE" in text
    finally:
        assert gw.stop() == 0


@pytest.fixture
def shell_bin(tmp_path) -> dict:
    """An environment whose PATH finds `flashgate` (this tree's) first, as after
    `pip install`."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "flashgate"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m flashgate \"$@\"\n")
    script.chmod(0o755)
    return clean_env(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
                     PYTHONPATH=os.environ.get("PYTHONPATH", str(REPO)))


def run_printed(command: str, env: dict) -> str:
    """A command of the banner, run by a shell as it was printed."""
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, (command, out.stderr)
    return out.stdout


@pytest.mark.ci_required  # .ci/run installs curl
@pytest.mark.parametrize("source", ["file", "variable"])
def test_banner_token_commands_work_as_printed(redis_server, r, tmp_path, shell_bin, source,
                                               monkeypatch):
    ev, body, path = event_file(tmp_path)
    if source == "file":
        secret_file = tmp_path / "user_secret"
        secret_file.write_text(SECRET + "\n")
        secret_file.chmod(0o600)
        extra = ["--user-secret-file", str(secret_file)]
    else:
        monkeypatch.setenv("FLASHGATE_USER_SECRET", SECRET)  # inherited by the gateway
        extra = ["--no-dev"]  # (after support's --dev: the last flag wins)
    gw = Gateway(redis_server.url, tmp_path / "gw", workers=1,
                 extra=[*extra, "--event", str(path)]).start()
    try:
        text = banner_of(gw)
        assert SECRET not in text
        assert "--user-secret is visible" not in text  # the secret is not in the process list
        assert "--admin-token is visible" in text  # (support's Gateway gives it as a flag)
        mint = re.search(r"identity: signed buyer tokens; mint one: (.+)", text).group(1)
        buy = re.search(r"\s(curl -X POST .+)", text).group(1)
        if source == "variable":
            assert mint == "flashgate token u1"
            assert "reads the gateway's secret from FLASHGATE_USER_SECRET" in text
            env = {**shell_bin, "FLASHGATE_USER_SECRET": SECRET}  # as the banner says
        else:
            assert mint == f"flashgate token u1 --secret-file {secret_file}"
            env = shell_bin
        token = run_printed(mint, env).strip()
        assert TokenKey(SECRET.encode()).user(b"Bearer " + token.encode(), now_ms()) == "u1"
        order = json.loads(run_printed(buy, env))
        assert (order.get("user_id"), order.get("event_id")) == ("u1", ev), order
        check_invariants(r, gw, ev, body, [order])
    finally:
        assert gw.stop() == 0


@pytest.mark.ci_required
def test_banner_dev_commands_work_as_printed(tmp_path, shell_bin):
    """The out-of-the-box demo: its buy and its admin commands, run by a shell."""
    data = tmp_path / "data"
    gw = Gateway("", data)
    gw.args = [sys.executable, "-m", "flashgate", "serve", "--port", "0", "--workers", "1",
               "--data-dir", str(data)]
    gw.start()
    try:
        text = banner_of(gw)
        assert "DEV MODE" in text and "anyone can buy as anyone" in text
        assert "listening on http://127.0.0.1:" in text  # the default host: loopback
        lines = [line.strip().removeprefix("try:").strip() for line in text.splitlines()
                 if line.strip().startswith(("try:", "curl "))]
        view, buy, stats = lines
        assert '"id":"demo"' in run_printed(view, shell_bin).replace(" ", "")
        order = json.loads(run_printed(buy, shell_bin))
        assert order["user_id"] == "u1", order
        assert '"attempts"' in run_printed(stats, shell_bin)
        # the pages it names answer (the buyer's, and the operator's sign-in)
        for label in ("sale page", "dashboard"):
            url = re.search(rf"{label}: (\S+)", text).group(1)
            assert run_printed(f"curl -s {url}", shell_bin).startswith("<!doctype html>")
    finally:
        assert gw.stop() == 0


def test_admin_token_is_printed_once_to_a_terminal(tmp_path):
    """On a terminal the generated token is shown, once; elsewhere only its file."""
    data = tmp_path / "data"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashgate", "serve", "--port", "0", "--workers", "1",
         "--data-dir", str(data)], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        env=clean_env(), start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while b"/stats" not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        text = out.decode(errors="replace")
        token = (data / "admin_token").read_text().strip()
        assert f"admin token: {token}  (kept in {data / 'admin_token'})" in text, text
        assert text.count(token) == 1, text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        os.close(master)


def test_warnings_of_the_configuration():
    """What works but should not be so, said at start: loosened TLS to Redis, a Redis
    password or a secret on the command line."""
    from flashgate import config

    def warnings_of(*args):
        out: list[str] = []
        config.from_args(["--dev", *args], out)
        return " ".join(out)

    assert warnings_of() == ""
    assert warnings_of("--redis", "rediss://h/0") == ""
    for query in ("ssl_cert_reqs=none", "ssl_check_hostname=false"):
        assert "anyone on the path can pose as Redis" in warnings_of("--redis",
                                                                   f"rediss://h/0?{query}")
    assert "the password in --redis is visible" in warnings_of("--redis", "redis://:pw@h/0")
    assert "--admin-token is visible" in warnings_of("--admin-token=" + "t" * 16)
