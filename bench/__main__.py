"""python -m bench: reproducible flash-sale load scenarios, flashgate and its peers side by side.

Starts everything itself (private Redis servers, flashgate, nginx, the FastAPI peer,
wrk), all on 127.0.0.1, and stops it all at the end, also on Ctrl-C or failure.
Exit status: 0 all invariants held, 1 an invariant failed (e.g. oversold),
2 the bench could not run (a process did not start, wrk failed, ...).

flashgate runs in the configuration operators run, prod: signed buyer tokens
(--user-secret), X-Forwarded-For from a trusted proxy with a client IP per user
(--trusted-proxies 127.0.0.0/8), the default rate limits, Redis with appendonly yes
and appendfsync everysec. soldout and commit also run dev in the same run, as a second
column: X-User-Id, --ip-rate 0 --user-rate 0, the same Redis.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .live import serve_defaults
from .runner import BENCH_DIR, BenchError, Processes, flashgate_argv, flashgate_limits
from .scenarios import CONFIGS, SCENARIOS, TARGETS, Bench, Settings

MEMORY_FLAGS = ("--ip-rate 1000000 --ip-burst 1000000 --user-rate 1000000 "
                "--user-burst 1000000 --global-rate 0")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n"
        "  soldout  every buy answered sold_out (1 unit, bought before the run); peers: nginx, fastapi\n"
        "  commit   10,000,000 units, limit 1, a new user per request: every buy commits\n"
        "  rush     5 SKUs x 500 units, 200,000 users, 90% buys / 10% views, through sell-out\n"
        "  scale    flashgate only: connections x workers, then RSS per worker after N distinct users\n"
        "  lifecycle  flashgate only: 2 SKUs x 300 units, payment timeout 2 s, 60% of the orders\n"
        "           paid as they come, the rest expire and are sold again; re-sale latency,\n"
        "           the sweeper's cost per expired order (apart, in a private Redis)\n"
        "  live     flashgate only, 1 worker: the commit load without and with 10,000 event-\n"
        "           stream subscribers (A B A B): delivery latency of every frame after its\n"
        "           tick, missed frames, purchase p99 with / without, worker CPU per\n"
        "           delivery (also at rest), memory per subscriber\n"
        "  replicas flashgate only: the commit load on a lone Redis, on a master with a\n"
        "           replica, and on such a pair with --commit-replicas 1 (A B C A B C): the\n"
        "           cost of WAIT in orders/s and CPU per order; the replicas audited too\n"
        "\nconfigurations (--config):\n"
        "  prod     signed tokens, a trusted proxy's X-Forwarded-For (a client IP per user),\n"
        "           the default rate limits, Redis AOF everysec: what operators run\n"
        "  dev      X-User-Id, rate limits off, Redis AOF everysec\n"
        "  default: soldout and commit both (nginx, flashgate-prod, flashgate-dev, fastapi,\n"
        "  repeated), rush, scale, lifecycle, live and replicas prod\n"
        "\nexamples:\n"
        "  python -m bench --quick                    # seconds-long smoke run of everything\n"
        "  python -m bench soldout commit --reps 3 --duration 10\n"
        "  python -m bench commit --targets flashgate,fastapi --config prod\n",
    )
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"scenarios to run, in order: {', '.join(SCENARIOS)} "
                        "(default: soldout commit rush; with --quick: all)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 repetition of 1 s, no warm-up, small scale sweep; "
                        "finishes in well under a minute (numbers are not meaningful)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="comma-separated servers to run: flashgate,fastapi,nginx (default: all)")
    p.add_argument("--reps", type=int, help="repetitions per target, alternating A B A B (default 3)")
    p.add_argument("--duration", type=int, help="seconds per repetition (default 10)")
    p.add_argument("--warmup", type=int,
                   help="seconds of warm-up per target (default 3; 0 = none, as with --quick)")
    p.add_argument("--connections", "-c", type=int, default=64,
                   help="wrk connections for soldout/commit/rush (default 64)")
    p.add_argument("--threads", "-t", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--workers", "-w", type=int, default=1,
                   help="flashgate workers for soldout/commit/rush (default 1)")
    p.add_argument("--config", choices=["prod", "dev", "both"], default=None,
                   help="flashgate's configuration(s): prod (signed tokens, trusted proxy's "
                        "X-Forwarded-For, default rate limits), dev (X-User-Id, limits off), "
                        "both = two columns of the same run (default: both for soldout and "
                        "commit, prod for rush and scale)")
    p.add_argument("--no-aof", dest="aof", action="store_false",
                   help="run the Redis servers without persistence instead of appendonly yes, "
                        "appendfsync everysec (not a configuration operators run)")
    p.add_argument("--users", type=int,
                   help="size of the random user pool of soldout, rush and scale; large "
                        "enough that the per-user and per-IP limits of prod refuse no "
                        "buyer (default 200000; 50000 with --quick)")
    p.add_argument("--rush-run", type=int, help="seconds of rush after the start (default 6)")
    p.add_argument("--life-run", type=int,
                   help="lifecycle: seconds of load after the opening at most; a run ends "
                        "earlier once every unit is paid (default 30; 3 with --quick)")
    p.add_argument("--life-pay", type=float,
                   help="lifecycle: percent of the orders the payer pays (default 60)")
    p.add_argument("--life-stock", type=int,
                   help="lifecycle: units per SKU, 2 SKUs (default 300; 1 SKU of 40 with --quick)")
    p.add_argument("--life-timeout", type=int,
                   help="lifecycle: the event's payment_timeout_s (default 2; 1 with --quick)")
    p.add_argument("--live-subscribers", type=int,
                   help="live: event-stream subscribers on the worker (default 10000; "
                        "500 with --quick)")
    p.add_argument("--live-idle", type=float,
                   help="live: seconds of each measurement at rest (default 5; 1 with --quick)")
    p.add_argument("--live-rate", type=float,
                   help="live: purchases/s of the trickle at rest, so that every tick has "
                        "a frame (default 100)")
    p.add_argument("--scale-connections", type=_ints,
                   help="connection counts for scale (default 16,64,256,1024)")
    p.add_argument("--scale-workers", type=_ints,
                   help=f"worker counts for scale (default 1..{cpus})")
    p.add_argument("--distinct", type=int,
                   help="distinct users (and client IPs) for the memory run (default 1000000)")
    p.add_argument("--memory-flags", default=MEMORY_FLAGS,
                   help="flashgate limiter flags for the memory run; the default turns the "
                        "per-IP and per-user limiters on with rates no client reaches, so their "
                        f"state is counted (default: {MEMORY_FLAGS!r}; 'off' = every limiter off)")
    p.add_argument("--xff-flags", default="--trusted-proxies 127.0.0.0/8",
                   help="flashgate flags that make it trust X-Forwarded-For from 127.0.0.1, so "
                        "the memory run varies the client IP per request "
                        "(default: '--trusted-proxies 127.0.0.0/8'; '' = one client IP)")
    p.add_argument("--flashgate", default="",
                   help="command that runs flashgate (default: the `flashgate` script, else "
                        "`python -m flashgate`)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results",
                   help="directory for the JSON, Markdown and PNG results (default bench/results)")
    p.add_argument("--name", default="", help="file name stem of the results (default: a timestamp)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the temporary directory with server logs (kept anyway on failure)")
    args = p.parse_args(argv)
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad:
        p.error(f"unknown scenario(s) {', '.join(bad)}; choose from {', '.join(SCENARIOS)}")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if any(t not in TARGETS for t in targets):
        p.error(f"--targets: choose from {', '.join(TARGETS)}")
    args.target_list = targets
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    cpus = os.cpu_count() or 1
    scenarios = args.scenarios or (list(SCENARIOS) if quick else ["soldout", "commit", "rush"])

    def pick(value, normal, fast):
        return value if value is not None else (fast if quick else normal)

    return Settings(
        scenarios=scenarios,
        targets=args.target_list,
        reps=pick(args.reps, 3, 1),
        duration=pick(args.duration, 10, 1),
        warmup=pick(args.warmup, 3, 0),
        connections=args.connections,
        threads=args.threads,
        workers=args.workers,
        configs=None if args.config is None
        else list(CONFIGS) if args.config == "both" else [args.config],
        aof=args.aof,
        users=pick(args.users, 200_000, 50_000),
        rush_lead=1,
        rush_run=pick(args.rush_run, 6, 1),
        life_skus=pick(None, 2, 1),
        life_stock=pick(args.life_stock, 300, 40),
        life_timeout_s=pick(args.life_timeout, 2, 1),
        life_pay_pct=pick(args.life_pay, 60.0, 60.0),
        life_run=pick(args.life_run, 30, 3),
        life_sweep_orders=pick(None, 5000, 500),
        live_subscribers=pick(args.live_subscribers, 10_000, 500),
        live_idle=pick(args.live_idle, 5.0, 1.0),
        live_rate=pick(args.live_rate, 100.0, 100.0),
        live_settle=pick(None, 2.0, 0.5),
        scale_connections=pick(args.scale_connections, [16, 64, 256, 1024], [64]),
        scale_workers=pick(args.scale_workers, list(range(1, cpus + 1)), [1]),
        distinct=pick(args.distinct, 1_000_000, 20_000),
        memory_flags=[] if args.memory_flags == "off" else shlex.split(args.memory_flags),
        xff_flags=shlex.split(args.xff_flags),
    )


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings_from(args)
    for tool in ("wrk", "redis-server") + (("nginx",) if "nginx" in s.targets else ()):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not on PATH", file=sys.stderr)
            return 2
    needs_flashgate = "flashgate" in s.targets and any(
        sc in ("soldout", "commit", "rush", "scale", "lifecycle", "live", "replicas")
        for sc in s.scenarios)
    if needs_flashgate:
        s.flashgate_argv, help_text = flashgate_argv(
            shlex.split(args.flashgate) if args.flashgate else None)
        if s.flashgate_argv is None:
            print("bench: `flashgate serve --help` does not work; install flashgate "
                  "(pip install -e .) or leave it out with --targets fastapi,nginx", file=sys.stderr)
            return 2
        s.limits = flashgate_limits(help_text)
        s.serve_defaults = serve_defaults(help_text)
        if s.limits is None:
            print("bench: cannot read the default rate limits from `flashgate serve --help`",
                  file=sys.stderr)
            return 2
    for only in ("scale", "lifecycle", "live", "replicas"):
        if only in s.scenarios and "flashgate" not in s.targets:
            print(f"bench: {only} measures flashgate only; skipping it", file=sys.stderr)
            s.scenarios = [x for x in s.scenarios if x != only]

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    stem = args.name or time.strftime("%Y%m%d-%H%M%S") + "-" + "-".join(s.scenarios)
    workdir = Path(tempfile.mkdtemp(prefix="flashgate-bench-"))
    procs = Processes(workdir)
    bench = Bench(s, procs, log=lambda m: print(m, flush=True))
    error = None
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    t0 = time.monotonic()
    load_before = os.getloadavg()
    try:
        bench.run()
    except BenchError as e:
        error = str(e)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, old)

    results = {
        "started": started,
        "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "machine": report.machine(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "settings": {k: v for k, v in vars(s).items()},
        # what each configuration is, per kind of server; every row names its own
        "setups": bench.setups(),
        "configs": bench.configs,
        "audits": bench.audits,
        "notes": bench.notes,
        "error": error,
    }
    report.add_ratios(bench.configs)
    results["goals"] = report.goals(bench.configs)
    results["invariants_ok"] = all(a["ok"] for a in bench.audits)
    paths = report.write(results, args.out, stem, with_chart=not args.no_chart)
    print()
    print(report.markdown(results))
    print("results: " + ", ".join(paths.values()))
    if error:
        print(f"bench: {error}\nserver logs kept in {workdir}", file=sys.stderr)
        return 2
    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"server logs in {workdir}")
    if not results["invariants_ok"]:
        print("bench: FAILED: an invariant did not hold (see above)", file=sys.stderr)
        return 1
    print(f"invariants: passed ({len(bench.audits)} audits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
