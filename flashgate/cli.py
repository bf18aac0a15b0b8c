"""``flashgate serve``, ``flashgate token``, ``flashgate orders follow`` (orders_cli.py)
and ``flashgate --version`` (also
``python -m flashgate``). Exit codes: 0 done, 2 a usage or configuration error, or a
server that cannot start (the reason on stderr)."""

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
        read_secret_file,
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
    try:
        if a.secret_file is not None:  # a flag wins over the variables
            secret = read_secret_file(a.secret_file, "user secret")
        elif a.secret is not None:
            print("flashgate token: warning: --secret is visible to every local user in the "
                  "process list; prefer FLASHGATE_USER_SECRET or --secret-file", file=sys.stderr)
            secret = a.secret
        elif os.environ.get("FLASHGATE_USER_SECRET"):
            secret = os.environ["FLASHGATE_USER_SECRET"]
        elif os.environ.get("FLASHGATE_USER_SECRET_FILE"):
            secret = read_secret_file(os.environ["FLASHGATE_USER_SECRET_FILE"], "user secret")
        else:
            secret = ""
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
    print(f"flashgate: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
