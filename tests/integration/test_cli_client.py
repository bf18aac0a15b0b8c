"""``flashgate events`` and ``flashgate stats EVENT``: clients of a running server's
HTTP API, with the admin token from a flag, a file, the variables or the data
directory ``serve`` generated it into; clear refusals and exit codes."""

from __future__ import annotations

import json
import os
import socket

from tests.integration.test_cli import REPO, clean_env, flashgate
from tests.support import ADMIN, Gateway, check_invariants, event_body, new_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_events_and_stats_from_the_command_line(gw, r, tmp_path):
    ev = new_id()
    body = event_body(stock=(4,), name="Noon sale")
    gw.put_event(ev, body)
    status, order, _ = gw.buy(ev, "s0", "cli-buyer")
    assert status == 200
    assert gw.request("POST", f"/api/v1/events/{ev}/register", None, gw.who("cli-fan"))[0] == 200
    url = f"http://127.0.0.1:{gw.port}"
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN + "\n")
    token_file.chmod(0o600)
    for args, env in ((["--admin-token-file", str(token_file)], {}),
                      ([], {"FLASHGATE_ADMIN_TOKEN": ADMIN}),
                      ([], {"FLASHGATE_ADMIN_TOKEN_FILE": str(token_file)})):
        out = flashgate("events", "--url", url, *args, env=clean_env(**env))
        assert out.returncode == 0, out.stderr
        row = next(line for line in out.stdout.splitlines() if line.startswith(ev))
        assert "live" in row and row.endswith("Noon sale")
    out = flashgate("events", "--json", env=clean_env(FLASHGATE_URL=url,
                                                      FLASHGATE_ADMIN_TOKEN=ADMIN))
    assert out.returncode == 0
    listed = {e["id"]: e for e in json.loads(out.stdout)["events"]}
    assert listed[ev]["state"] == "live"
    out = flashgate("stats", ev, "--url", url, env=clean_env(FLASHGATE_ADMIN_TOKEN=ADMIN))
    assert out.returncode == 0, out.stderr
    # (orders are read from Redis, exact; buyers are counted by the workers, flushed
    # within lag_ms: the buy may be younger than that)
    assert f"event {ev}" in out.stdout and "orders 1  buyers " in out.stdout
    assert "registered 1" in out.stdout and "sku s0: stock 4  sold 1  left 3" in out.stdout
    out = flashgate("stats", ev, "--json", "--url", url,
                    env=clean_env(FLASHGATE_ADMIN_TOKEN=ADMIN))
    figures = json.loads(out.stdout)
    assert (figures["units_sold"], figures["registered"]) == (1, 1)
    check_invariants(r, gw, ev, body, [order])


def test_unknown_event_unreachable_server_and_wrong_token(gw):
    url = f"http://127.0.0.1:{gw.port}"
    env = clean_env(FLASHGATE_ADMIN_TOKEN=ADMIN)
    out = flashgate("stats", "no-such-event", "--url", url, env=env)
    assert out.returncode == 4 and "not found" in out.stderr and out.stdout == ""
    nobody = f"http://127.0.0.1:{free_port()}"
    for cmd in (["events"], ["stats", "x"]):
        out = flashgate(*cmd, "--url", nobody, env=env)
        assert out.returncode == 3, out
        assert "cannot reach the server" in out.stderr and nobody in out.stderr
    out = flashgate("events", "--url", url,
                    env=clean_env(FLASHGATE_ADMIN_TOKEN="a-wrong-token-0123456789"))
    assert out.returncode == 1 and "refused the admin token" in out.stderr


def test_no_token_anywhere_is_a_usage_error(tmp_path):
    out = flashgate("events", "--data-dir", str(tmp_path / "nothing"),
                    "--url", "http://127.0.0.1:1")
    assert out.returncode == 2 and "no admin token" in out.stderr
    assert str(tmp_path / "nothing" / "admin_token") in out.stderr
    both = flashgate("events", "--admin-token", "x" * 20, "--admin-token-file", "/nope")
    assert both.returncode == 2 and "not both" in both.stderr


def test_the_token_serve_generated_and_its_address(redis_server, tmp_path):
    """Out of the box: the data directory's token and the address from the serve
    settings (FLASHGATE_PORT), as an operator on the same host would run them."""
    data = tmp_path / "data"
    port = free_port()
    g = Gateway(redis_server.url, data, workers=1, extra=["--port", str(port)])
    g.args.remove("--admin-token")
    g.args.remove(ADMIN)
    g.start()
    assert g.port == port
    ev = new_id()
    token = (data / "admin_token").read_text().strip()
    status, _, _ = g.request("PUT", f"/api/v1/admin/events/{ev}", event_body(),
                             {"Authorization": f"Bearer {token}"})
    assert status == 201
    out = flashgate("events", env=clean_env(FLASHGATE_PORT=str(port),
                                            FLASHGATE_DATA_DIR=str(data)))
    assert out.returncode == 0, out.stderr
    assert any(line.startswith(ev) for line in out.stdout.splitlines())
    # the data directory given by the flag, from another working directory
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        out = flashgate("stats", ev, "--data-dir", str(data), "--url",
                        f"http://127.0.0.1:{port}", env=clean_env(PYTHONPATH=str(REPO)))
    finally:
        os.chdir(cwd)
    assert out.returncode == 0 and f"event {ev}" in out.stdout


def test_webhooks_command_shows_and_requeues_dead_letters(hooks_db):
    import asyncio

    from flashgate.core import keys
    from flashgate.webhooks import outbox
    from flashgate.webhooks.sender import Sender
    from tests.webhook_support import SECRET, connect, run_sender

    url, r = hooks_db
    r.hset(keys.HOOKS_URLS, "evd", f"http://127.0.0.1:{free_port()}/nobody")

    async def make_dead():
        conn = await connect(url)
        for i in range(2):
            await outbox.enqueue(conn, "evd", "sku.sold_out", {"sku": f"s{i}"}, f"evd:so:{i}")
        await run_sender(Sender(conn, SECRET, give_up=0, poll=0.01),
                         lambda: r.hlen(keys.HOOKS_DEAD) == 2)
        conn.close()

    asyncio.run(make_dead())
    env = clean_env(FLASHGATE_REDIS=url)
    out = flashgate("webhooks", "status", env=env)
    assert out.returncode == 0 and json.loads(out.stdout) == {"due": 0, "in_flight": 0, "dead": 2}
    out = flashgate("webhooks", "dead", env=env)
    dead = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(d["id"] for d in dead) == ["evd:so:0", "evd:so:1"]
    assert all(d["attempts"] == 1 and d["error"].startswith("ConnectError") for d in dead)
    out = flashgate("webhooks", "retry", "evd:so:1", "nope", env=env)
    assert out.returncode == 1 and "queued again: 1" in out.stdout and "nope" in out.stderr
    assert r.zscore(keys.HOOKS_DUE, "evd:so:1") is not None
    assert r.hget(keys.HOOKS_META, "evd:so:1").startswith(b"0|")
    assert flashgate("webhooks", "retry", "--all", env=env).stdout.strip() == "queued again: 1"
    assert json.loads(flashgate("webhooks", "status", env=env).stdout) == {
        "due": 2, "in_flight": 0, "dead": 0}
    assert flashgate("webhooks", "retry", env=env).returncode == 2
    assert flashgate("webhooks", "status").returncode == 2  # no Redis named
    out = flashgate("webhooks", "status", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert out.returncode == 3 and "cannot connect" in out.stderr
