"""``flashgate serve`` and ``flashgate token``."""

from __future__ import annotations

import argparse
import os
import sys

USAGE = """usage: flashgate <command> [options]

commands:
  serve            run the gateway (flashgate serve --help for its options)
  token USER_ID    print a signed buyer token (needs the user secret)
"""


def _token(argv: list[str]) -> int:
    from flashgate.auth import mint

    p = argparse.ArgumentParser(prog="flashgate token", description="Print a signed buyer token.")
    p.add_argument("user_id", help="the buyer's id, [A-Za-z0-9_-]{1,64}")
    p.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (3600)")
    p.add_argument("--secret", default=os.environ.get("FLASHGATE_USER_SECRET", ""),
                   help="the gateway's user secret [env FLASHGATE_USER_SECRET]")
    a = p.parse_args(argv)
    if not a.secret:
        print("flashgate token: no user secret: pass --secret or set FLASHGATE_USER_SECRET "
              "(a gateway without one runs in dev mode and takes X-User-Id)", file=sys.stderr)
        return 2
    try:
        print(mint(a.secret.encode(), a.user_id, a.ttl))
    except ValueError as e:
        print(f"flashgate token: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        from flashgate import config
        from flashgate.gateway.supervisor import serve

        return serve(config.from_args(rest))
    if cmd == "token":
        return _token(rest)
    print(f"flashgate: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
