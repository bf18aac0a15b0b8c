"""Results: the machine, a JSON file, a Markdown report and a PNG chart."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

# The targets, written for 1 worker, wrk -t1 -c64 (REFERENCE_LOAD): (scenario, column,
# measure, reference column of the same run, comparison, bound, text). "rate" is
# answers/s in soldout and orders/s in commit; "cpu" is the server's CPU per answer.
GOALS = [
    ("soldout", "flashgate-prod", "rate", "nginx", ">=", 0.85, "prod soldout >= 0.85x nginx"),
    ("soldout", "flashgate-prod", "cpu", "nginx", "<=", 1.3,
     "prod server CPU per answer <= 1.3x nginx's"),
    ("commit", "flashgate-prod", "rate", "flashgate-dev", ">=", 0.9,
     "prod commits >= 0.9x dev commits (same run)"),
    ("commit", "flashgate-prod", "rate", "fastapi", ">=", 14.0,
     "prod commits >= 14x the FastAPI peer"),
    ("soldout", "flashgate-dev", "rate", "nginx", ">=", 0.85, "dev soldout >= 0.85x nginx"),
    ("commit", "flashgate-dev", "rate", "fastapi", ">=", 14.0,
     "dev commits >= 14x the FastAPI peer"),
]
P99_GOALS_MS = {"soldout": 2.0, "commit": 3.0}
# scenarios of steady load reported as columns side by side (the p99 goals: P99_GOALS_MS)
STEADY = ("soldout", "commit", "replicas")
REFERENCE_LOAD = {"workers": 1, "threads": 1, "connections": 64}
# the reference columns every other column of a run is compared with
REFERENCES = {"nginx": "vs_nginx", "fastapi": "vs_fastapi", "flashgate-dev": "vs_dev"}
STATUS_NAMES = {"429": "rate_limited", "401": "unauthenticated", "503": "unavailable"}


def _version(argv: list[str], pattern: str = r"\d+\.\d+(\.\d+)?") -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(0) if m else None


def _pkg(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis": _version(["redis-server", "--version"], r"(?<=v=)[\d.]+"),
        "nginx": _version(["nginx", "-v"], r"(?<=nginx/)[\d.]+"),
        "wrk": _version(["wrk", "-v"], r"(?<=wrk )\S+"),
        "flashgate": _pkg("flashgate"),
        "fastapi": _pkg("fastapi"),
        "uvicorn": _pkg("uvicorn"),
        "redis-py": _pkg("redis"),
        "hiredis": _pkg("hiredis"),
        "uvloop": _pkg("uvloop"),
    }


# ------------------------------------------------------------------ ratios


def _key(cfg: dict) -> tuple:
    """The rows measured against each other: one scenario at one load."""
    return (cfg["scenario"], cfg["connections"], cfg["threads"])


def _label(cfg: dict) -> str:
    return cfg.get("label") or cfg["target"]


def add_ratios(configs: list[dict]) -> None:
    """vs_nginx / vs_fastapi / vs_dev: rate over that column's in the same scenario and
    load (answers/s, orders/s in commit); cpu_vs_nginx: server CPU per answer over nginx's."""
    base: dict[tuple, dict] = {}
    for c in configs:
        if c.get("summary") and _label(c) in REFERENCES:
            base[(_key(c), _label(c))] = c["summary"]
    for c in configs:
        s = c.get("summary")
        if not s:
            continue
        for ref, key in REFERENCES.items():
            r = base.get((_key(c), ref))
            ok = r is not None and _label(c) != ref and r.get("rate")
            if ref == "flashgate-dev":  # prod against dev; a peer against dev says nothing new
                ok = ok and c["target"] == "flashgate"
            s[key] = s["rate"] / r["rate"] if ok and s.get("rate") is not None else None
        ng = base.get((_key(c), "nginx"))
        s["cpu_vs_nginx"] = (s["cpu_us_per_req"] / ng["cpu_us_per_req"]
                             if ng and _label(c) != "nginx" and ng.get("cpu_us_per_req")
                             and s.get("cpu_us_per_req") is not None else None)


def _at_reference_load(c: dict) -> bool:
    return all(c[k] == v for k, v in REFERENCE_LOAD.items())


def goals(configs: list[dict]) -> list[dict]:
    """The targets, each met or missed (never a failure of the run). Only rows at the
    reference load are judged."""
    rows = {(c["scenario"], _label(c)): c for c in configs
            if c.get("summary") and c["scenario"] in P99_GOALS_MS and _at_reference_load(c)}
    out = []
    for scenario, label, measure, ref, op, bound, text in GOALS:
        c, r = rows.get((scenario, label)), rows.get((scenario, ref))
        if c is None or r is None:
            continue
        key = "rate" if measure == "rate" else "cpu_us_per_req"
        if not c["summary"].get(key) or not r["summary"].get(key):
            continue
        got = c["summary"][key] / r["summary"][key]
        met = got >= bound if op == ">=" else got <= bound
        out.append({"goal": text, "scenario": scenario, "config": c.get("config"),
                    "value": got, "bound": bound, "measured": f"{got:.2f}x", "met": met})
    for (scenario, _), c in rows.items():
        if c["target"] != "flashgate":
            continue
        limit = P99_GOALS_MS[scenario]
        p99 = c["summary"]["p99_us"] / 1000
        cfg = c.get("config")
        out.append({"goal": f"{cfg} {scenario} p99 <= {limit:g} ms", "scenario": scenario,
                    "config": cfg, "value": p99, "bound": limit, "measured": f"{p99:.2f} ms",
                    "met": p99 <= limit})
    return out + live_goals(configs)


def live_goals(configs: list[dict]) -> list[dict]:
    """The live scenario's targets (1 worker, its subscribers next to the commit load)."""
    from .live import BOUND_MS, MEMORY_TARGET_KIB, P99_RATIO_TARGET

    out = []
    for c in configs:
        lv = c.get("live")
        if not lv:
            continue
        n, cfg = lv["subscribers"], c.get("config")

        def goal(text, value, bound, measured, met, cfg=cfg):
            out.append({"goal": text, "scenario": "live", "config": cfg, "value": value,
                        "bound": bound, "measured": measured, "met": met})

        share, missed = lv["within_50ms_share"], lv["missed_frames"]
        if share is not None:
            goal(f"live: each of {n:,} subscribers gets every tick's frame within "
                 f"{BOUND_MS} ms", share, 1.0,
                 f"{share * 100:.2f} % within, p99 {lv['latency_p99_ms']:.1f} ms, "
                 f"{missed:,} missed", share >= 1.0 and missed == 0)
        if lv["p99_ratio"] is not None:
            goal(f"live: purchase p99 with {n:,} subscribers <= {P99_RATIO_TARGET:g}x without",
                 lv["p99_ratio"], P99_RATIO_TARGET, f"{lv['p99_ratio']:.2f}x",
                 lv["p99_ratio"] <= P99_RATIO_TARGET)
        mem = lv["rss_kib_per_subscriber"]
        if mem is not None:
            goal(f"live: memory per subscriber <= {MEMORY_TARGET_KIB:g} KiB", mem,
                 MEMORY_TARGET_KIB, f"{mem:.2f} KiB", mem <= MEMORY_TARGET_KIB)
    return out


# ------------------------------------------------------------------ Markdown


def _ms(us) -> str:
    return "—" if us is None else f"{us / 1000:.2f}"


def _num(x, fmt="{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def _ratio(x) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _mix(d: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def _pct(share: float) -> str:
    if share == 0:
        return "0 %"
    if share < 0.0001:
        return "<0.01 %"
    return f"{share * 100:.2f} %".replace(".00 %", " %")


def answers_text(statuses: dict, socket_errors: dict | None = None) -> str:
    """Each HTTP status's share of the answers (and count); 429 is rate_limited."""
    total = sum(statuses.values())
    parts = []
    for code, n in sorted(statuses.items(), key=lambda kv: -kv[1]):
        name = f" {STATUS_NAMES[code]}" if code in STATUS_NAMES else ""
        parts.append(f"{code}{name} {_pct(n / total)} ({n:,})")
    for k, v in (socket_errors or {}).items():
        if v and k != "status":
            parts.append(f"socket {k}: {v:,}")
    return ", ".join(parts) or "none"


def _socket_errors(c: dict) -> dict:
    out: dict[str, int] = {}
    for r in c.get("reps") or []:
        for k, v in (r.get("socket_errors") or {}).items():
            out[k] = out.get(k, 0) + (v or 0)
    return out


def _sells(c: dict) -> bool:
    """Whether the row's 200s are orders."""
    return (c["scenario"] in ("commit", "rush", "lifecycle", "live", "replicas")
            and c["target"] != "nginx")


def _inv(c: dict) -> str:
    return {True: "ok", False: "**FAILED**", None: "—"}[c.get("invariants_ok")]


def _setup_table(results: dict) -> list[str]:
    setups = results.get("setups") or {}
    if not setups:
        return []
    out = ["## Configurations", "",
           "flashgate runs in **prod**, the configuration operators run; **dev** is a second "
           "column of the same run. The peers get the first configuration's requests.", "",
           "| config | server | identity | client IP | rate limits | Redis | flags |",
           "|---|---|---|---|---|---|---|"]
    for name, kinds in setups.items():
        for kind in ("flashgate", "fastapi", "nginx"):
            d = kinds.get(kind)
            if d:
                out.append(f"| {name} | {kind} | {d['identity']} | {d['client_ip']} "
                           f"| {d['limits']} | {d['redis']} | `{d['flags'] or '—'}` |")
    return out + [""]


def _columns_table(rows: list[dict]) -> list[str]:
    """One scenario of one run, a column per server and configuration."""
    unit = rows[0]["summary"]["rate_unit"]
    head = "| | " + " | ".join(f"{_label(c)}" for c in rows) + " |"
    lines = [head, "|---|" + "---:|" * len(rows)]

    def line(name, fn):
        lines.append(f"| {name} | " + " | ".join(fn(c) for c in rows) + " |")

    line("config", lambda c: c.get("config") or "—")
    line(f"{unit} (median)", lambda c: _num(c["summary"]["rate"]))
    line(f"{unit} min–max", lambda c: f"{_num(c['summary']['rate_min'])}–"
         f"{_num(c['summary']['rate_max'])}")
    line("p50 ms", lambda c: _ms(c["summary"]["p50_us"]))
    line("p99 ms", lambda c: _ms(c["summary"]["p99_us"]))
    line("server CPU µs/answer", lambda c: _num(c["summary"]["cpu_us_per_req"], "{:.1f}"))
    line("Redis CPU µs/answer", lambda c: _num(c["summary"]["redis_cpu_us_per_req"], "{:.1f}"))
    line("vs nginx", lambda c: _ratio(c["summary"].get("vs_nginx")))
    line("server CPU vs nginx's", lambda c: _ratio(c["summary"].get("cpu_vs_nginx")))
    line("vs flashgate-dev", lambda c: _ratio(c["summary"].get("vs_dev")))
    line("vs fastapi", lambda c: _ratio(c["summary"].get("vs_fastapi")))
    line("answers", lambda c: answers_text(c["summary"]["statuses"], _socket_errors(c)))
    line("wrk CPU µs/request", lambda c: _num(c["summary"].get("wrk_cpu_us_per_req"), "{:.1f}"))
    line("invariants", _inv)
    return lines


def markdown(results: dict) -> str:
    m = results["machine"]
    configs = results["configs"]
    st = results["settings"]
    lines = [
        f"# flashgate benchmarks ({results['started']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, Linux {m['kernel']}; "
        f"Python {m['python']}, Redis {m['redis']}, nginx {m['nginx']}, wrk {m['wrk']}; "
        f"flashgate {m['flashgate']}, FastAPI {m['fastapi']}, uvicorn {m['uvicorn']}, "
        f"redis-py {m['redis-py']} (hiredis {m['hiredis']}).",
        "",
        f"Command: `{results['command']}`  ",
        "Load average (1, 5, 15 min) before: "
        + ", ".join(f"{x:.2f}" for x in results["load_average"]["before"])
        + "; after: " + ", ".join(f"{x:.2f}" for x in results["load_average"]["after"]) + "  ",
        f"Each column: median of {st['reps']} repetitions of {st['duration']} s (columns "
        f"alternating), after "
        + (f"a {st['warmup']} s warm-up" if st["warmup"] else "no warm-up")
        + "; min–max across repetitions.",
        "",
    ]
    lines += _setup_table(results)
    steady = [c for c in configs if c.get("summary") and c["scenario"] in STEADY]
    groups: dict[tuple, list[dict]] = {}
    for c in steady:
        groups.setdefault(_key(c), []).append(c)
    for (scenario, conns, threads), rows in groups.items():
        lines += [f"## {scenario} (wrk -t{threads} -c{conns}, "
                  f"{', '.join(sorted({str(c['workers']) for c in rows}))} worker(s))", ""]
        lines += _columns_table(rows)
        if scenario == "commit" and any(c["target"] == "nginx" for c in rows):
            lines += ["", "nginx's orders/s are its answers/s: a fixed 200 to every buy."]
        lines.append("")
    g = results.get("goals") or []
    if g and any(c["scenario"] in P99_GOALS_MS for c in steady):
        lines += ["## Targets (1 worker, wrk -t1 -c64; reported, never failing the run)", "",
                  "| target | measured | met |", "|---|---:|---|"]
        for x in g:
            lines.append(f"| {x['goal']} | {x['measured']} | {'met' if x['met'] else '**missed**'} |")
        lines.append("")
    elif any(c["scenario"] in P99_GOALS_MS for c in steady):
        lines += ["Targets not judged: they are written for 1 worker, wrk -t1 -c64, and "
                  "need nginx, both flashgate columns and the FastAPI peer in one run.", ""]
    lines += [
        "## All rows",
        "",
        "| scenario | column | config | workers | conns | req/s | req/s min–max | orders/s "
        "| p50 ms | p99 ms | p99.9 ms | server CPU µs/req | Redis CPU µs/req | Redis cmds/order "
        "| Redis calls/order | peak RSS/worker MiB | answers | wrk µs/req | wrk CPU % "
        "| other load % | vs nginx | vs fastapi | invariants |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---"
        "|---:|---:|---:|---:|---:|---|",
    ]
    for c in configs:
        s = c.get("summary")
        if not s:
            continue
        rss = max(c.get("peak_rss_kib") or [0]) / 1024
        lines.append(
            f"| {c['scenario']} | {_label(c)} | {c.get('config', '—')} | {c['workers']} "
            f"| {c['connections']} | {_num(s['rps'])} | {_num(s['rps_min'])}–{_num(s['rps_max'])} "
            f"| {_num(s.get('orders_per_s') if _sells(c) else None)} | {_ms(s['p50_us'])} "
            f"| {_ms(s['p99_us'])} | {_ms(s['p999_us'])} | {_num(s['cpu_us_per_req'], '{:.1f}')} "
            f"| {_num(s['redis_cpu_us_per_req'], '{:.1f}')} "
            f"| {_num(s['redis_cmds_per_order'], '{:.2f}')} "
            f"| {_num(s['redis_scripts_per_order'], '{:.3f}')} | {rss:.0f} "
            f"| {answers_text(s['statuses'], _socket_errors(c))} "
            f"| {_num(s.get('wrk_cpu_us_per_req'), '{:.1f}')} | {_num(s['wrk_cpu_pct'])} "
            f"| {_num(s['other_cpu_pct'])} | {_ratio(s.get('vs_nginx'))} "
            f"| {_ratio(s.get('vs_fastapi'))} | {_inv(c)} |"
        )
    lines += [
        "",
        "Server CPU: utime+stime of the server's processes (all workers, nginx master and "
        "worker) per answer; Redis's own CPU is the next column. Answers: each HTTP "
        "status's share (429 = rate_limited by flashgate's limits), then wrk's socket "
        "errors. wrk µs/req: the load generator's CPU per request while it ran (its "
        "init(), which reads the signed tokens, excluded); wrk CPU %: in % of one core "
        "over the whole run (near 100 % with -t1: the client is the limit). "
        "Other load: CPU used by everything else on the machine during the run, in % of "
        "one core (a shared machine disturbs the numbers; alternating A B A B spreads it). "
        "Redis cmds/order: INFO commandstats "
        "calls (commands run inside scripts included) per unit sold; calls/order: "
        "EVAL/EVALSHA calls per unit sold (round trips that commit).",
    ]
    lines += _cpu_table(configs)
    rush = [c for c in configs if c["scenario"] == "rush" and c.get("summary")]
    if rush:
        lines += ["", "## rush", "",
                  "| column | config | sold out after start (ms, median) | min–max | sales p50 ms "
                  "| sales p99 ms | answers other than 200 |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for c in rush:
            s = c["summary"]
            lines.append(
                f"| {_label(c)} | {c.get('config', '—')} | {_num(s['sold_out_ms'])} "
                f"| {_num(s['sold_out_ms_min'])}–{_num(s['sold_out_ms_max'])} "
                f"| {_ms(s['sales_p50_us'])} | {_ms(s['sales_p99_us'])} | {_mix(s['rejection_mix'])} |"
            )
        lines.append("")
        lines.append("Sales latency: client-side, only the requests answered 200 (matched by user).")
    lines += _lifecycle_tables(configs)
    lines += _live_tables(configs)
    lines += _replicas_tables(configs)
    mem = [c for c in configs if c["scenario"] == "memory"]
    if mem:
        lines += ["", "## memory per worker", "",
                  "| workers | config | identity | distinct users | distinct IPs | RSS before MiB "
                  "| RSS after MiB | peak MiB | bytes per user | flags |",
                  "|---:|---|---|---:|---:|---|---|---|---:|---|"]
        for c in mem:
            lines.append(
                f"| {c['workers']} | {c.get('config', '—')} | {c.get('identity', '—')} "
                f"| {c['distinct_users']:,} | {c['distinct_ips']:,} "
                f"| {', '.join(f'{x / 1024:.0f}' for x in c['rss_before_kib'])} "
                f"| {', '.join(f'{x / 1024:.0f}' for x in c['rss_after_kib'])} "
                f"| {', '.join(f'{x / 1024:.0f}' for x in c['peak_rss_kib'])} "
                f"| {_num(c['bytes_per_user'])} | `{' '.join(c['flags']) or 'limiters off'}` |"
            )
    reps = [(c, r) for c in configs if c.get("reps") for r in c["reps"]]
    if reps:
        lines += ["", "## answers by repetition", "",
                  "| scenario | column | conns | rep | requests | answers |",
                  "|---|---|---:|---:|---:|---|"]
        for c, r in reps:
            lines.append(f"| {c['scenario']} | {_label(c)} | {c['connections']} | {r['rep'] + 1} "
                         f"| {r['requests']:,} | {answers_text(r['statuses'], r.get('socket_errors'))} |")
    bad = [a for a in results["audits"] if not a["ok"]]
    lines += ["", "## invariants", ""]
    lines.append(f"{len(results['audits'])} audits, {len(bad)} failed.")
    for a in bad:
        lines.append(f"* FAILED {a['scenario']} / {a['target']}: " + "; ".join(a["problems"]))
    for n in results.get("notes") or []:
        lines.append(f"* note: {n}")
    if results.get("error"):
        lines += ["", f"**The run stopped early:** {results['error']}"]
    return "\n".join(lines) + "\n"


def _lifecycle_tables(configs: list[dict]) -> list[str]:
    rows = [c for c in configs if c["scenario"] == "lifecycle" and c.get("summary")]
    if not rows:
        return []
    s0 = rows[0]["summary"]
    out = ["", "## lifecycle", "",
           f"A rush on events with payment_timeout_s {s0['payment_timeout_s']}, "
           f"{s0['stock']:,} units in all; a payer pays {s0['pay_share_pct']:g} % of the orders "
           "as they are committed, the rest expire and their units go back on sale. Counts "
           "are summed over the repetitions, latencies pooled over their expired orders.", "",
           "| column | config | orders | paid | expired | re-sold | re-sale p50 / p99 / max ms "
           "| expiry after pay_by_ms p50 / p99 / max ms | first sold out ms | first sell-out "
           "orders/s | sold out for good ms | payer lag p99 ms |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def trio(s, key):
        return " / ".join(_num(s.get(f"{key}_{p}_ms")) for p in ("p50", "p99", "max"))

    notes: list[str] = []
    for c in rows:
        s = c["summary"]
        good = _num(s["sold_out_for_good_ms"])
        if s["not_sold_out_for_good"]:
            good += f" ({s['not_sold_out_for_good']} run(s) not)"
        out.append(
            f"| {_label(c)} | {c.get('config', '—')} | {s['orders_created']:,} "
            f"| {s['orders_paid']:,} | {s['orders_expired']:,} | {s['expired_resold']:,} "
            f"| {trio(s, 'resale')} | {trio(s, 'expiry_lag')} | {_num(s['first_sold_out_ms'])} "
            f"| {_num(s['first_sellout_orders_per_s'])} | {good} "
            f"| {_num(s['payer_lag_p99_ms'], '{:.1f}')} |")
        refused = {k: v for k, v in (s.get("payer_answers") or {}).items() if k != "200"}
        if refused:
            notes.append(f"{_label(c)}: payments not answered 200: {_mix(refused)} (409: "
                         "the order had expired before its payment reached Redis).")
    for n in notes:
        out += ["", n]
    out += ["", "Re-sale: from an order's `expired` stream entry to the `created` entry that "
            "took the last of its units again (new orders take the never-sold stock first, "
            "then the returned units, oldest first). Expiry: the `expired` entry's time minus "
            "the order's `pay_by_ms` (the sweeper passes every 0.5 s). Sold out for good: "
            "every unit paid. Orders per commit batch (`created` entry): "
            + _num(s0.get("orders_per_created_entry"), "{:.1f}")
            + "; per expiry call (`expired` entry): "
            + _num(s0.get("orders_per_expired_entry"), "{:.1f}") + "."]
    costs = rows[0].get("sweeper_cost") or []
    if costs:
        out += ["", "The sweeper's cost per expired order, apart from any load: due orders of "
                "1 unit in a private Redis (the same persistence), expired by the sweeper's "
                "own code (gateway/sweeper.py: XRANGE, HMGET of the records, the transition "
                "script).", "",
                "| orders per stream entry | expired | script calls | Redis CPU µs/order "
                "| of it the script µs | sweeper CPU µs/order | sweeper wall µs/order | ok |",
                "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for x in costs:
            out.append(
                f"| {x['orders_per_entry']} | {x['expired']:,} | {x['script_calls']:,} "
                f"| {_num(x['redis_cpu_us_per_order'], '{:.1f}')} "
                f"| {_num(x['script_us_per_order'], '{:.1f}')} "
                f"| {_num(x['worker_cpu_us_per_order'], '{:.1f}')} "
                f"| {_num(x['wall_us_per_order'], '{:.1f}')} | {'ok' if x['ok'] else '**FAILED**'} |")
        out += ["", "Redis CPU: INFO cpu (used_cpu_user + used_cpu_sys) over the sweep, AOF "
                "writes included; the script: INFO commandstats `evalsha` usec (Lua time). "
                "Sweeper CPU: the sweeping process's CPU time (its Redis client included)."]
    return out


def _live_tables(configs: list[dict]) -> list[str]:
    rows = [c for c in configs if c["scenario"] == "live" and c.get("summary")]
    loaded = next((c for c in rows if c.get("live")), None)
    if loaded is None:
        return []
    from .live import BOUND_MS

    lv = loaded["live"]
    rest = lv["at_rest"]
    n = lv["subscribers"]
    out = ["", f"## live ({n:,} event-stream subscribers, 1 worker, commit load wrk "
           f"-t{loaded['threads']} -c{loaded['connections']})", "",
           "Repetitions alternate the commit load without and with the subscribers (A B A B). "
           "The subscribers are idle keep-alive connections to "
           "`GET /api/v1/events/{id}/stream` read by one epoll loop (bench/sse/subscribers.c); "
           "a delivery's latency is its arrival minus the tick time the frame carries "
           "(`: t=<ms>`).", "",
           "| | without subscribers | with subscribers |", "|---|---:|---:|"]
    base = next((c for c in rows if not c.get("live")), None)
    pair = [base, loaded]

    def line(name, fn):
        out.append(f"| {name} | " + " | ".join("—" if c is None else fn(c) for c in pair) + " |")

    line("orders/s (median)", lambda c: _num(c["summary"]["rate"]))
    line("orders/s min–max", lambda c: f"{_num(c['summary']['rate_min'])}–"
         f"{_num(c['summary']['rate_max'])}")
    line("purchase p50 ms", lambda c: _ms(c["summary"]["p50_us"]))
    line("purchase p99 ms (median)", lambda c: _ms(c["summary"]["p99_us"]))
    line("purchase p99 ms min–max", lambda c: f"{_ms(c['summary']['p99_us_min'])}–"
         f"{_ms(c['summary']['p99_us_max'])}")
    line("worker CPU µs/request", lambda c: _num(
        median_of([r["worker_cpu_us_per_req"] for r in c["reps"]]), "{:.1f}"))
    line("worker waiting for a CPU, ms/s", lambda c: _num(
        median_of([r["worker_sched"]["wait_ms_per_s"] for r in c["reps"]])))
    line("other load, % of a core", lambda c: _num(c["summary"]["other_cpu_pct"]))
    line("answers", lambda c: answers_text(c["summary"]["statuses"], _socket_errors(c)))
    out += ["", "p99 with / without, per repetition: "
            + ", ".join(f"{x:.2f}×" for x in lv["p99_ratios"])
            + "; orders/s with / without: " + ", ".join(f"{x:.2f}×" for x in lv["orders_ratios"])
            + ".", "",
            "| run | subscribers | frames | deliveries/s | within "
            f"{BOUND_MS} ms | latency p50 / p99 / max ms | last subscriber served p50 / max ms "
            "| missed frames (subscribers) | closed | longest tick gap ms | generator CPU % |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def stream_row(name, st):
        lat = st["latency_ms"]
        out.append(
            f"| {name} | {st['subscribers']:,} | {st['frames']} | {_num(st['deliveries_per_s'])} "
            f"| {_pct(st['within_50ms_share'] or 0)} "
            f"| {_num(lat['p50'], '{:.1f}')} / {_num(lat['p99'], '{:.1f}')} / "
            f"{_num(lat['max'], '{:.1f}')} "
            f"| {_num(st['fanout_done_ms_p50'], '{:.1f}')} / {_num(st['fanout_done_ms_max'], '{:.1f}')} "
            f"| {st['missed_frames']:,} ({st['subscribers_missed']:,}) | {st['closed']:,} "
            f"| {_num(st['tick_gap_ms_max'])} | {_num(st['generator_cpu_pct'], '{:.1f}')} |")

    stream_row(f"at rest ({rest['trickle_rate']:g} purchases/s)", rest["stream"])
    for r in loaded["reps"]:
        stream_row(f"commit load, rep {r['rep'] + 1}", r["stream"])
    sched = rest.get("worker_sched") or {}
    out += ["", f"**CPU per delivery** (the worker's): {_num(lv['cpu_us_per_delivery'], '{:.1f}')} µs "
            "under the commit load (median; per repetition "
            + ", ".join(f"{x:.1f}" for x in lv["cpu_us_per_delivery_reps"])
            + " µs: the worker's CPU with subscribers minus its CPU per request without them "
            f"times the requests, over the deliveries); {_num(lv['cpu_us_per_delivery_at_rest'], '{:.1f}')} µs "
            f"at rest ({rest['trickle_rate']:g} purchases/s: every tick has news; worker "
            f"{rest['worker_cpu_pct_without']:.1f} % of a core without subscribers, "
            f"{rest['worker_cpu_pct_with']:.1f} % with; waiting for a CPU "
            f"{_num((sched.get('without') or {}).get('wait_ms_per_s'))} and "
            f"{_num((sched.get('with') or {}).get('wait_ms_per_s'))} ms/s).", "",
            f"**Memory per subscriber** (the worker's RSS, settled): "
            f"{_num(lv['rss_kib_per_subscriber'], '{:.2f}')} KiB at their first connection "
            f"({_num(rest['connect']['rss_kib_per_subscriber_first_half'], '{:.2f}')} KiB for the "
            f"first half, {_num(lv['rss_kib_per_subscriber_marginal'], '{:.2f}')} KiB for the "
            "second); at the reconnections before each loaded repetition "
            + ", ".join(_num(x, "{:.2f}") for x in lv["rss_kib_per_subscriber_reps"])
            + " KiB (memory the previous subscribers left to the allocator is reused). The "
            f"kernel's TCP memory grew {_num(lv['tcp_kernel_kib_per_subscriber'], '{:.2f}')} KiB "
            "per subscriber (both ends; idle sockets hold no buffers). The server counted "
            f"{_num(rest['connect']['server_gauge'])} subscribers (flashgate_sse_subscribers).",
            "",
            "Latency: from the tick's start (before the tick reads the orders from Redis) to "
            "the frame's arrival, stamped when epoll_wait returned (the tick time is whole "
            "ms, so up to 1 ms is added; the generator sleeps "
            f"{rest['stream']['pause_us']} µs between batches, up to as much "
            "again). Last subscriber served: per frame, when its last delivery arrived. "
            "Missed: frame ids a subscriber skipped. Tick gap: between consecutive frames' "
            "tick times (0.25 s when every tick is on time)."]
    return out


def _replicas_tables(configs: list[dict]) -> list[str]:
    """The replicas scenario: each column's orders/s and CPU per order, and the ratios
    of the same repetition (A B C run one after the other)."""
    rows = [c for c in configs if c["scenario"] == "replicas" and c.get("summary")]
    if not rows:
        return []
    out = ["", "## replicas (the cost of --commit-replicas)", "",
           "| column | replica | --commit-replicas | orders/s (median) | min–max | p99 ms "
           "| server µs/req | Redis µs/req | replica µs/req | WAITs per order | answers |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in rows:
        s = c["summary"]
        out.append(
            f"| {_label(c)} | {'yes' if c.get('replica') else 'no'} "
            f"| {c.get('commit_replicas', 0)} | {_num(s['rate'])} "
            f"| {_num(s['rate_min'])}–{_num(s['rate_max'])} | {_ms(s['p99_us'])} "
            f"| {_num(s['cpu_us_per_req'], '{:.1f}')} | {_num(s['redis_cpu_us_per_req'], '{:.1f}')} "
            f"| {_num(s.get('replica_cpu_us_per_req'), '{:.1f}')} "
            f"| {_num(s.get('redis_waits_per_order'), '{:.3f}')} "
            f"| {answers_text(s['statuses'], _socket_errors(c))} |")
    base = next((c for c in rows if c.get("replica") and not c.get("commit_replicas")), None)
    if base is not None:
        out += ["", "Same repetition, over the column with a replica and no WAIT "
                "(orders/s; server + Redis + replica CPU per request):", ""]
        for c in rows:
            if c is base:
                continue
            rates = [b["orders_per_s"] / a["orders_per_s"]
                     for a, b in zip(base["reps"], c["reps"], strict=False) if a["orders_per_s"]]

            def cpu(r):
                return (r["cpu_us_per_req"] + (r.get("redis_cpu_us_per_req") or 0)
                        + (r.get("replica_cpu_us_per_req") or 0))

            cpus = [cpu(b) / cpu(a) for a, b in zip(base["reps"], c["reps"], strict=False)
                    if cpu(a)]
            out.append(f"* {_label(c)}: orders/s {', '.join(f'{x:.2f}x' for x in rates)}; "
                       f"CPU per request {', '.join(f'{x:.2f}x' for x in cpus)}")
    return out


def median_of(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _cpu_table(configs: list[dict]) -> list[str]:
    """CPU per request (server + Redis): steadier than req/s on a shared machine."""
    rows = [c for c in configs if c.get("summary")
            and c["scenario"] in ("soldout", "commit", "rush", "replicas")]
    if not rows:
        return []
    out = ["", "## CPU per request", "",
           "req/s depend on whatever else the machine runs; CPU time per request much less. "
           "`per core` is 1,000,000 / (server + Redis µs per request): the requests one "
           "fully busy core could answer.", "",
           "| scenario | column | config | server µs/req | Redis µs/req | total µs/req "
           "| per core req/s | CPU vs fastapi |", "|---|---|---|---:|---:|---:|---:|---:|"]
    total = {}
    for c in rows:
        s = c["summary"]
        total[id(c)] = (s["cpu_us_per_req"] or 0) + (s["redis_cpu_us_per_req"] or 0)
    ref = {_key(c): total[id(c)] for c in rows if c["target"] == "fastapi"}
    for c in rows:
        s, t = c["summary"], total[id(c)]
        peer = ref.get(_key(c))
        ratio = peer / t if peer and t and c["target"] != "fastapi" else None
        out.append(f"| {c['scenario']} | {_label(c)} | {c.get('config', '—')} "
                   f"| {_num(s['cpu_us_per_req'], '{:.1f}')} | {_num(s['redis_cpu_us_per_req'], '{:.1f}')} "
                   f"| {t:.1f} | {_num(1e6 / t if t else None)} | {_ratio(ratio)} |")
    return out


# ------------------------------------------------------------------ chart

PALETTE = {"flashgate-prod": "#d9480f", "flashgate-dev": "#ffa94d", "fastapi": "#1971c2",
           "nginx": "#868e96"}


def _setup_caption(results: dict) -> str:
    out = []
    for name, kinds in (results.get("setups") or {}).items():
        d = kinds.get("flashgate")
        if d:
            out.append(f"flashgate-{name}: {d['identity']}; client IP {d['client_ip']}; "
                       f"rate limits {d['limits']}; Redis {d['redis']}")
    return "\n".join(out)


def chart(results: dict, path: Path) -> bool:
    rows = [c for c in results["configs"] if c.get("summary") and c["scenario"] != "memory"]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    labels, rps, p99, colors, err = [], [], [], [], [[], []]
    for c in rows:
        label = f"{c['scenario']}\n{_label(c)}"
        if c["scenario"] == "scale" or c["workers"] != 1:
            label += f"\nw{c['workers']} c{c['connections']}"
        labels.append(label)
        s = c["summary"]
        rps.append(s["rate"] / 1000)
        err[0].append(rps[-1] - s["rate_min"] / 1000)
        err[1].append(s["rate_max"] / 1000 - rps[-1])
        p99.append(s["p99_us"] / 1000)
        colors.append(PALETTE.get(_label(c), "#495057"))
    caption = _setup_caption(results)
    width = max(7.0, 0.8 * len(rows) + 1.5)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(width, 6.2 + 0.25 * caption.count("\n")),
                                   sharex=True)
    x = range(len(rows))
    ax1.bar(x, rps, color=colors, yerr=err, capsize=3, ecolor="#343a40")
    ax1.set_ylabel("thousand req/s, orders/s in commit\n(median, min–max)", fontsize=8)
    ax1.set_title(f"flashgate vs peers — {results['machine']['cpu']}, "
                  f"{results['machine']['cores']} cores", fontsize=9)
    for i, v, up in zip(x, rps, err[1], strict=True):
        ax1.text(i, v + up, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax2.bar(x, p99, color=colors)
    ax2.set_ylabel("p99 latency, ms")
    ax2.set_yscale("log")
    ax2.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.yaxis.set_major_formatter(ScalarFormatter())
    ax2.yaxis.set_minor_formatter(NullFormatter())
    for i, v in zip(x, p99, strict=True):
        ax2.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(labels, fontsize=7)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=6, va="bottom", ha="left", wrap=True)
        fig.tight_layout(rect=(0, 0.03 + 0.025 * (caption.count("\n") + 1), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write(results: dict, out_dir: Path, stem: str, with_chart: bool = True) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    if with_chart:
        png = out_dir / f"{stem}.png"
        try:
            if chart(results, png):
                paths["png"] = png
        except Exception as e:  # noqa: BLE001 - a chart must not lose the numbers
            results.setdefault("notes", []).append(f"chart not drawn: {e}")
    paths["json"].write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results)
    if "png" in paths:
        md += f"\n![requests/s and p99]({paths['png'].name})\n"
    paths["md"].write_text(md)
    return {k: str(v) for k, v in paths.items()}
