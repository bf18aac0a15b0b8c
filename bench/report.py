"""Results: the machine, a JSON file, a Markdown report and a PNG chart."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

# The numbers the gateway is held to (1 worker, wrk -t1 -c64).
GOALS = [
    ("soldout", "nginx", 0.85, "soldout >= 0.85x nginx"),
    ("commit", "fastapi", 12.0, "commit >= 12x the FastAPI peer"),
    ("commit", "nginx", 0.45, "commit >= 0.45x nginx"),
]
P99_GOALS_MS = {"soldout": 2.0, "commit": 3.0}


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
    return (cfg["scenario"], cfg["auth"], cfg["connections"], cfg["threads"])


def add_ratios(configs: list[dict]) -> None:
    """vs_nginx / vs_fastapi: req/s over the peer's in the same scenario and load."""
    base: dict[tuple, dict] = {}
    for c in configs:
        if c.get("summary") and c["target"] in ("nginx", "fastapi"):
            base[(_key(c), c["target"])] = c["summary"]["rps"]
    for c in configs:
        if not c.get("summary"):
            continue
        for peer in ("nginx", "fastapi"):
            ref = base.get((_key(c), peer))
            c["summary"][f"vs_{peer}"] = (
                c["summary"]["rps"] / ref if ref and c["target"] != peer else None
            )


def goals(configs: list[dict]) -> list[dict]:
    out = []
    for c in configs:
        if c["target"] != "flashgate" or not c.get("summary"):
            continue
        if (c["workers"], c["threads"], c["connections"]) != (1, 1, 64):
            continue
        for scenario, peer, ratio, text in GOALS:
            got = c["summary"].get(f"vs_{peer}")
            if c["scenario"] == scenario and got is not None:
                out.append({"goal": text, "auth": c["auth"], "measured": f"{got:.2f}x",
                            "met": got >= ratio})
        limit = P99_GOALS_MS.get(c["scenario"])
        if limit is not None:
            p99 = c["summary"]["p99_us"] / 1000
            out.append({"goal": f"{c['scenario']} p99 <= {limit:g} ms", "auth": c["auth"],
                        "measured": f"{p99:.2f} ms", "met": p99 <= limit})
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


def markdown(results: dict) -> str:
    m = results["machine"]
    configs = results["configs"]
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
        f"Each row: median of {results['settings']['reps']} repetitions of "
        f"{results['settings']['duration']} s (targets alternating), after a "
        f"{results['settings']['warmup']} s warm-up; min–max of req/s across repetitions.",
        "",
        "| scenario | target | auth | workers | conns | req/s | req/s min–max | p50 ms | p99 ms "
        "| p99.9 ms | server CPU µs/req | Redis CPU µs/req | Redis cmds/order | Redis calls/order "
        "| peak RSS/worker MiB | non-2xx, socket errors | wrk CPU % | other load % | vs nginx | vs fastapi "
        "| invariants |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:"
        "|---:|---:|---|",
    ]
    for c in configs:
        s = c.get("summary")
        if not s:
            continue
        rss = max(c.get("peak_rss_kib") or [0]) / 1024
        inv = {True: "ok", False: "**FAILED**", None: "—"}[c.get("invariants_ok")]
        lines.append(
            f"| {c['scenario']} | {c['target']} | {c['auth']} | {c['workers']} | {c['connections']} "
            f"| {_num(s['rps'])} | {_num(s['rps_min'])}–{_num(s['rps_max'])} | {_ms(s['p50_us'])} "
            f"| {_ms(s['p99_us'])} | {_ms(s['p999_us'])} | {_num(s['cpu_us_per_req'], '{:.1f}')} "
            f"| {_num(s['redis_cpu_us_per_req'], '{:.1f}')} "
            f"| {_num(s['redis_cmds_per_order'], '{:.2f}')} "
            f"| {_num(s['redis_scripts_per_order'], '{:.3f}')} | {rss:.0f} "
            f"| {_mix(s['non2xx'])} | {_num(s['wrk_cpu_pct'])} | {_num(s['other_cpu_pct'])} "
            f"| {_ratio(s.get('vs_nginx'))} | {_ratio(s.get('vs_fastapi'))} "
            f"| {inv} |"
        )
    lines += [
        "",
        "Server CPU: utime+stime of the server's processes (all workers, nginx master and "
        "worker) per request; Redis's own CPU is the next column. wrk CPU: the load "
        "generator's CPU in % of one core (near 100 % with -t1: the client is the limit). "
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
                  "| target | auth | sold out after start (ms, median) | min–max | sales p50 ms "
                  "| sales p99 ms | answers other than 200 |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for c in rush:
            s = c["summary"]
            lines.append(
                f"| {c['target']} | {c['auth']} | {_num(s['sold_out_ms'])} "
                f"| {_num(s['sold_out_ms_min'])}–{_num(s['sold_out_ms_max'])} "
                f"| {_ms(s['sales_p50_us'])} | {_ms(s['sales_p99_us'])} | {_mix(s['rejection_mix'])} |"
            )
        lines.append("")
        lines.append("Sales latency: client-side, only the requests answered 200 (matched by user).")
    mem = [c for c in configs if c["scenario"] == "memory"]
    if mem:
        lines += ["", "## memory per worker", "",
                  "| workers | auth | distinct users | distinct IPs | RSS before MiB | RSS after MiB "
                  "| peak MiB | bytes per user | flags |",
                  "|---:|---|---:|---:|---|---|---|---:|---|"]
        for c in mem:
            lines.append(
                f"| {c['workers']} | {c['auth']} | {c['distinct_users']:,} | {c['distinct_ips']:,} "
                f"| {', '.join(f'{x / 1024:.0f}' for x in c['rss_before_kib'])} "
                f"| {', '.join(f'{x / 1024:.0f}' for x in c['rss_after_kib'])} "
                f"| {', '.join(f'{x / 1024:.0f}' for x in c['peak_rss_kib'])} "
                f"| {_num(c['bytes_per_user'])} | `{' '.join(c['flags']) or 'limiters off'}` |"
            )
    g = results.get("goals") or []
    if g:
        lines += ["", "## goals (1 worker, wrk -t1 -c64)", "", "| goal | auth | measured | met |",
                  "|---|---|---:|---|"]
        for x in g:
            lines.append(f"| {x['goal']} | {x['auth']} | {x['measured']} | {'yes' if x['met'] else '**no**'} |")
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


def _cpu_table(configs: list[dict]) -> list[str]:
    """CPU per request (server + Redis): steadier than req/s on a shared machine."""
    rows = [c for c in configs if c.get("summary") and c["scenario"] in ("soldout", "commit", "rush")]
    if not rows:
        return []
    out = ["", "## CPU per request", "",
           "req/s depend on whatever else the machine runs; CPU time per request much less. "
           "`per core` is 1,000,000 / (server + Redis µs per request): the requests one "
           "fully busy core could answer.", "",
           "| scenario | target | auth | server µs/req | Redis µs/req | total µs/req | per core req/s "
           "| CPU vs fastapi |", "|---|---|---|---:|---:|---:|---:|---:|"]
    total = {}
    for c in rows:
        s = c["summary"]
        total[id(c)] = (s["cpu_us_per_req"] or 0) + (s["redis_cpu_us_per_req"] or 0)
    ref = {(c["scenario"], c["auth"]): total[id(c)] for c in rows if c["target"] == "fastapi"}
    for c in rows:
        s, t = c["summary"], total[id(c)]
        peer = ref.get((c["scenario"], c["auth"]))
        ratio = peer / t if peer and t and c["target"] != "fastapi" else None
        out.append(f"| {c['scenario']} | {c['target']} | {c['auth']} "
                   f"| {_num(s['cpu_us_per_req'], '{:.1f}')} | {_num(s['redis_cpu_us_per_req'], '{:.1f}')} "
                   f"| {t:.1f} | {_num(1e6 / t if t else None)} | {_ratio(ratio)} |")
    return out


# ------------------------------------------------------------------ chart


def chart(results: dict, path: Path) -> bool:
    rows = [c for c in results["configs"] if c.get("summary") and c["scenario"] != "memory"]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    labels, rps, p99, colors, err = [], [], [], [], [[], []]
    palette = {"flashgate": "#d9480f", "fastapi": "#1971c2", "nginx": "#868e96"}
    for c in rows:
        label = f"{c['scenario']}\n{c['target']}"
        if c["scenario"] == "scale" or c["workers"] != 1:
            label += f"\nw{c['workers']} c{c['connections']}"
        if len(results["settings"]["auth"]) > 1:
            label += f"\n{c['auth']}"
        labels.append(label)
        rps.append(c["summary"]["rps"] / 1000)
        err[0].append(rps[-1] - c["summary"]["rps_min"] / 1000)
        err[1].append(c["summary"]["rps_max"] / 1000 - rps[-1])
        p99.append(c["summary"]["p99_us"] / 1000)
        colors.append(palette.get(c["target"], "#495057"))
    width = max(6.0, 0.75 * len(rows) + 1.5)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(width, 6.2), sharex=True)
    x = range(len(rows))
    ax1.bar(x, rps, color=colors, yerr=err, capsize=3, ecolor="#343a40")
    ax1.set_ylabel("thousand req/s (median, min–max)")
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
