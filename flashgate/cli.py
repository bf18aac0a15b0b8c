"""``flashgate serve``, ``flashgate token``, ``flashgate orders follow`` (orders_cli.py),
``flashgate events``, ``flashgate stats``, ``flashgate report`` and ``flashgate
--version`` (also ``python -m flashgate``). Exit codes: 0 done, 2 a usage or
configuration error, or a server that cannot start (the reason on stderr); ``events``,
``stats`` and ``report`` (clients of a running server's HTTP API): 3 the server cannot
be reached, 4 no such event, 1 any other refusal (a wrong admin token, a server error)
or files that cannot be written; ``report``: 5 the HTML and JSON are written but the
share image cannot be drawn (no Pillow); ``webhooks`` (reads Redis): 3 Redis cannot be
reached."""

from __future__ import annotations

import argparse
import os
import sys

from flashgate import __version__

USAGE = f"""usage: flashgate <command> [options]

flashgate {__version__}: a flash-sale gateway.

commands:
  serve            run the gateway (flashgate serve --help for its options)
  token USER_ID    print a signed buyer token (needs the gateway's user secret)
  orders follow    follow the orders into a PostgreSQL table or a JSON-lines file
                   (flashgate orders follow --help)
  events           list the events of a running server
  stats EVENT      print an event's figures from a running server
  report EVENT --out DIR   write an event's battle report: page, JSON, share image
  webhooks         the webhook outbox in Redis: pending, dead letters, send again

options:
  -h, --help       this text
  -V, --version    the version
"""


def _fail(message: str) -> int:
    print(f"flashgate token: {message}", file=sys.stderr)
    return 2


def _token(argv: list[str]) -> int:
    from flashgate.auth import mint
    from flashgate.config import (
        MIN_USER_SECRET_BYTES,
        Config,
        ConfigError,
        env_name,
    )

    p = argparse.ArgumentParser(
        prog="flashgate token", allow_abbrev=False,
        description="Print a signed buyer token for USER_ID. The secret is the gateway's "
        "user secret: --secret-file FILE, or the variable FLASHGATE_USER_SECRET (or "
        "FLASHGATE_USER_SECRET_FILE), as for flashgate serve.")
    p.add_argument("user_id", metavar="USER_ID", help="the buyer's id, [A-Za-z0-9_-]{1,64}")
    p.add_argument("--ttl", type=int, default=3600, metavar="SECONDS",
                   help="seconds the token is valid, from 1 to the gateway's --max-token-ttl "
                        "(default 3600)")
    p.add_argument("--secret-file", metavar="FILE",
                   help="file holding the user secret [env FLASHGATE_USER_SECRET_FILE]")
    p.add_argument("--secret", help="the user secret itself (visible in the process list: "
                                    "prefer the variable or --secret-file) "
                                    "[env FLASHGATE_USER_SECRET]")
    max_default = Config.__dataclass_fields__["max_token_ttl"].default
    p.add_argument("--max-token-ttl", type=int, metavar="SECONDS", default=None,
                   help="the gateway's --max-token-ttl: a longer --ttl is refused "
                        f"[env FLASHGATE_MAX_TOKEN_TTL, default {max_default}]")
    a = p.parse_args(argv)
    if a.ttl <= 0:
        return _fail(f"--ttl must be a positive number of seconds, not {a.ttl}")
    if a.secret is not None and a.secret_file is not None:
        return _fail("give --secret or --secret-file, not both")
    if a.secret is not None and a.secret_file is None:
        print("flashgate token: warning: --secret is visible to every local user in the "
              "process list; prefer FLASHGATE_USER_SECRET or --secret-file", file=sys.stderr)
    try:
        secret = _given_secret(a.secret, a.secret_file, "FLASHGATE_USER_SECRET", "user secret")
    except ConfigError as e:
        return _fail(str(e))
    if not secret:
        return _fail("no user secret: give --secret-file FILE or set FLASHGATE_USER_SECRET "
                     "(the gateway's own; a gateway without one runs with dev identity and "
                     "takes X-User-Id)")
    if len(secret.encode()) < MIN_USER_SECRET_BYTES:
        return _fail(f"the user secret is too short: {len(secret.encode())} bytes, at least "
                     f"{MIN_USER_SECRET_BYTES} are needed (the gateway refuses a shorter one)")
    max_ttl = a.max_token_ttl
    if max_ttl is None:
        raw = os.environ.get(env_name("max_token_ttl"))
        try:
            max_ttl = int(raw) if raw else max_default
        except ValueError:
            return _fail(f"FLASHGATE_MAX_TOKEN_TTL={raw!r} is not a number of seconds")
    if a.ttl > max_ttl:
        return _fail(f"--ttl {a.ttl} is above the gateway's --max-token-ttl {max_ttl} seconds: "
                     "the gateway would refuse the token (give a shorter --ttl, or the "
                     "gateway's setting with --max-token-ttl / FLASHGATE_MAX_TOKEN_TTL)")
    try:
        print(mint(secret.encode(), a.user_id, a.ttl))
    except ValueError as e:
        return _fail(str(e))
    return 0


def _serve(argv: list[str]) -> int:
    from flashgate import config

    warnings: list[str] = []
    try:
        cfg = config.from_args(argv, warnings)
    except config.ConfigError as e:
        print(f"flashgate serve: {e}", file=sys.stderr)
        return 2
    from flashgate.gateway.supervisor import serve

    return serve(cfg, warnings)


def _serve_url() -> str:
    """The URL of the server ``flashgate serve`` would run with this environment's
    settings (FLASHGATE_HOST / FLASHGATE_PORT, else its defaults), from this host."""
    from flashgate.config import Config, env_name

    host = os.environ.get(env_name("host")) or Config.__dataclass_fields__["host"].default
    port = os.environ.get(env_name("port")) or str(Config.__dataclass_fields__["port"].default)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def _admin_client(prog: str, argv: list[str], add_args=None):
    """The options every client command takes, parsed: ``(args, url, token)``; raises
    SystemExit(2) with the reason when no admin token can be found."""
    from flashgate.config import Config, ConfigError, env_name, read_secret_file

    data_default = Config.__dataclass_fields__["data_dir"].default
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Ask a running flashgate server (its HTTP API) with the admin token: "
        "--admin-token-file FILE, or FLASHGATE_ADMIN_TOKEN / FLASHGATE_ADMIN_TOKEN_FILE, "
        "else the token `flashgate serve` generated into its data directory.")
    if add_args is not None:
        add_args(p)
    p.add_argument("--url", default=os.environ.get("FLASHGATE_URL") or None,
                   help="the server's base URL [env FLASHGATE_URL; default: the address "
                        "flashgate serve takes from FLASHGATE_HOST / FLASHGATE_PORT, "
                        "else http://127.0.0.1:8080]")
    p.add_argument("--admin-token", help="the admin token (visible in the process list: "
                                         "prefer the variable or the file) "
                                         "[env FLASHGATE_ADMIN_TOKEN]")
    p.add_argument("--admin-token-file", metavar="FILE",
                   help="file holding the admin token [env FLASHGATE_ADMIN_TOKEN_FILE]")
    p.add_argument("--data-dir", default=os.environ.get(env_name("data_dir")) or data_default,
                   help="the server's data directory, where serve keeps a generated token "
                        f"[env FLASHGATE_DATA_DIR, default {data_default!r}]")
    p.add_argument("--json", action="store_true", help="print the server's JSON as it is")
    a = p.parse_args(argv)
    try:
        if a.admin_token and a.admin_token_file:
            raise ConfigError("give --admin-token or --admin-token-file, not both")
        token = _given_secret(a.admin_token or None, a.admin_token_file or None,
                              "FLASHGATE_ADMIN_TOKEN", "admin token")
        if not token:
            path = os.path.join(a.data_dir, "admin_token")
            if not os.path.exists(path):
                raise ConfigError(
                    f"no admin token: none given (--admin-token-file FILE, "
                    f"FLASHGATE_ADMIN_TOKEN) and no {path} (the file `flashgate serve` "
                    "writes when it generates one; --data-dir names its directory)")
            token = read_secret_file(path, "admin token")
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return a, (a.url or _serve_url()).rstrip("/"), token


class _Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _get_json(url: str, token: str, what: str):
    """GET ``url`` with the admin token: its JSON, or _Refused with the exit code."""
    import json

    try:
        return json.loads(_get(url, token, what, "application/json"))
    except ValueError:
        raise _Refused(1, f"the server at {url} did not answer JSON") from None


def _get(url: str, token: str, what: str, accept: str) -> bytes:
    """GET ``url`` with the admin token: its body, or _Refused with the exit code."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                               "Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())
            detail = f"{err.get('error')}: {err.get('message')}"
        except ValueError:
            detail = e.reason
        if e.code == 404:
            raise _Refused(4, f"{what} not found ({detail})") from None
        if e.code == 401:
            raise _Refused(1, "the server refused the admin token (401): give the token "
                              "of that server") from None
        raise _Refused(1, f"the server answered {e.code} ({detail})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise _Refused(3, f"cannot reach the server at {url}: {reason} (is `flashgate "
                          "serve` running there? --url or FLASHGATE_URL names it)") from None


def _when(ms) -> str:
    import datetime

    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _events(argv: list[str]) -> int:
    import json

    a, base, token = _admin_client("flashgate events", argv)
    try:
        data = _get_json(base + "/api/v1/admin/events", token, "the events list")
    except _Refused as e:
        print(f"flashgate events: {e}", file=sys.stderr)
        return e.code
    if a.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = [("ID", "STATE", "STARTS (UTC)", "ENDS (UTC)", "NAME")]
    rows += [(e["id"], e["state"], _when(e["starts_at_ms"]), _when(e["ends_at_ms"]), e["name"])
             for e in data["events"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    if not data["events"]:
        print("(no events)")
    return 0


def _stats(argv: list[str]) -> int:
    import json
    import urllib.parse

    def add(p):
        p.add_argument("event", metavar="EVENT", help="the event's id")

    a, base, token = _admin_client("flashgate stats", argv, add)
    url = f"{base}/api/v1/admin/events/{urllib.parse.quote(a.event, safe='')}/stats"
    try:
        s = _get_json(url, token, f"event {a.event!r}")
    except _Refused as e:
        print(f"flashgate stats: {e}", file=sys.stderr)
        return e.code
    if a.json:
        print(json.dumps(s, indent=2))
        return 0
    lat = s.get("latency_ms") or {}
    lines = [
        f"event {s.get('event_id', a.event)}",
        f"  visitors     pv {s['pv']}  uv {s['uv']}  registered {s.get('registered', 0)}",
        f"  buying       participants {s.get('participants', '-')}  attempts "
        f"{s['attempts']}  orders {s['orders']}  buyers {s.get('buyers', '-')}  "
        f"conversion {s['conversion']}",
        f"  units        sold {s['units_sold']}  paid {s['units_paid']}",
        f"  revenue      {s['revenue']}",
        f"  sold out     {'-' if s['sold_out_ms'] is None else str(s['sold_out_ms']) + ' ms after the start'}",
        f"  latency ms   p50 {lat.get('p50')}  p99 {lat.get('p99')}  p999 {lat.get('p999')}",
    ]
    refused = {k: v for k, v in (s.get("rejections") or {}).items() if v}
    lines.append("  refused      " + ("  ".join(f"{k} {v}" for k, v in refused.items())
                                      or "none"))
    for sku in s.get("skus", []):
        lines.append(f"  sku {sku['id']}: stock {sku['stock']}  sold {sku['sold']}  "
                     f"left {sku.get('left', '-')}  orders {sku.get('orders', '-')}  "
                     f"revenue {sku.get('revenue', '-')}")
    print("\n".join(lines))
    return 0


def _report(argv: list[str]) -> int:
    """The battle report into DIR: the page (the server renders it), the JSON, and a
    share image drawn here from the JSON."""
    import json
    import urllib.parse

    def add(p):
        p.add_argument("event", metavar="EVENT", help="the event's id")
        p.add_argument("--out", required=True, metavar="DIR",
                       help="the directory to write into (made if missing): "
                            "EVENT-report.html, EVENT-report.json, EVENT-share.png")
        p.add_argument("--lang", choices=("zh", "en"), default="zh",
                       help="the language of the page and the image (default zh)")
        p.add_argument("--font", metavar="FILE",
                       help="a font file with Chinese characters for the image "
                            "[env FLASHGATE_REPORT_FONT; default: found by fontconfig]")

    prog = "flashgate report"
    a, base, token = _admin_client(prog, argv, add)
    url = f"{base}/api/v1/admin/events/{urllib.parse.quote(a.event, safe='')}/report"
    try:
        rep = _get_json(url, token, f"event {a.event!r}")
        page = _get(f"{url}?format=html&lang={a.lang}", token, f"event {a.event!r}",
                    "text/html")
    except _Refused as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.code
    out = a.out
    # (an event id is [A-Za-z0-9_-]: a file name as it is)
    paths = {k: os.path.join(out, f"{a.event}-{k}") for k in
             ("report.html", "report.json", "share.png")}
    try:
        os.makedirs(out, exist_ok=True)
        with open(paths["report.html"], "wb") as f:
            f.write(page)
        with open(paths["report.json"], "w", encoding="utf-8") as f:
            json.dump(rep, f, ensure_ascii=False, indent=2)
            f.write("\n")
    except OSError as e:
        print(f"{prog}: cannot write into {out}: {e}", file=sys.stderr)
        return 1
    written = [paths["report.html"], paths["report.json"]]
    code = 0
    try:
        from flashgate.report import share

        png, notes = share.draw(rep, a.lang, a.font)
    except ImportError as e:
        print(f"{prog}: the share image needs Pillow ({e}): pip install pillow; the page "
              "and the JSON are written", file=sys.stderr)
        code = 5
    except OSError as e:  # (a font that cannot be read)
        print(f"{prog}: cannot draw the share image: {e}; the page and the JSON are "
              "written", file=sys.stderr)
        code = 5
    else:
        for note in notes:
            print(f"{prog}: {note}", file=sys.stderr)
        try:
            with open(paths["share.png"], "wb") as f:
                f.write(png)
        except OSError as e:
            print(f"{prog}: cannot write {paths['share.png']}: {e}", file=sys.stderr)
            return 1
        written.append(paths["share.png"])
    if a.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        print(rep["summary"][a.lang])
        for path in written:
            print(f"  {path}")
    if not rep.get("final"):
        print(f"{prog}: the sale is not over (state {rep.get('state')}): this report is "
              "not final", file=sys.stderr)
    return code


def _webhooks(argv: list[str]) -> int:
    import asyncio
    import json

    p = argparse.ArgumentParser(
        prog="flashgate webhooks", allow_abbrev=False,
        description="The webhook outbox in Redis: what waits to be sent, and the deliveries "
        "given up on (dead letters), which `retry` queues again.")
    p.add_argument("action", choices=("status", "dead", "retry"),
                   help="status: counts; dead: each dead letter as a JSON line; retry: queue "
                        "dead letters again (the IDs given, or --all)")
    p.add_argument("ids", nargs="*", metavar="ID", help="delivery ids (retry)")
    p.add_argument("--all", action="store_true", help="retry: every dead letter")
    p.add_argument("--redis", default=os.environ.get("FLASHGATE_REDIS") or None,
                   help="the Redis URL the servers use (an embedded Redis's is in the serve "
                        "banner) [env FLASHGATE_REDIS]")
    a = p.parse_args(argv)
    if not a.redis:
        print("flashgate webhooks: no Redis: give --redis URL or FLASHGATE_REDIS (the URL "
              "`flashgate serve` uses; its banner shows an embedded one's)", file=sys.stderr)
        return 2
    if a.action == "retry" and not (a.ids or a.all):
        print("flashgate webhooks: retry needs delivery ids or --all", file=sys.stderr)
        return 2
    from flashgate.core.redisconn import RedisConnection, RedisError, RedisUnavailable
    from flashgate.webhooks import outbox

    async def run() -> int:
        conn = RedisConnection(a.redis)
        try:
            await conn.connect()
            if a.action == "status":
                print(json.dumps(await outbox.pending(conn)))
            elif a.action == "dead":
                for d in await outbox.dead_letters(conn):
                    print(json.dumps(d))
            else:
                done = await outbox.requeue_dead(conn, () if a.all else a.ids)
                missing = sorted(set(a.ids) - set(done))
                print(f"queued again: {len(done)}")
                if missing:
                    print(f"flashgate webhooks: not dead letters: {' '.join(missing)}",
                          file=sys.stderr)
                    return 1
            return 0
        finally:
            conn.close()

    try:
        return asyncio.run(run())
    except (RedisUnavailable, RedisError, OSError, ValueError) as e:
        print(f"flashgate webhooks: {e}", file=sys.stderr)
        return 3


def _given_secret(value: str | None, path: str | None, env: str, what: str) -> str:
    """A secret from the first of: its file flag, its flag, ``$<env>``,
    ``$<env>_FILE``; "" if none is given. ConfigError for a file that cannot be read."""
    from flashgate.config import read_secret_file

    if path is not None:  # a flag wins over the variables
        return read_secret_file(path, what)
    if value is not None:
        return value
    if os.environ.get(env):
        return os.environ[env]
    if os.environ.get(env + "_FILE"):
        return read_secret_file(os.environ[env + "_FILE"], what)
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version", "version"):
        print(f"flashgate {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        return _serve(rest)
    if cmd == "token":
        return _token(rest)
    if cmd == "orders":
        from flashgate.orders_cli import main as orders_main

        return orders_main(rest)
    if cmd == "events":
        return _events(rest)
    if cmd == "stats":
        return _stats(rest)
    if cmd == "report":
        return _report(rest)
    if cmd == "webhooks":
        return _webhooks(rest)
    print(f"flashgate: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
