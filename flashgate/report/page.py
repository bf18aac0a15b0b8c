"""The report as one HTML page, rendered on the server from the report's dict
(``build.build``): the numbers written in, the charts drawn as inline SVG, the pages'
look (``static/common.css``) inline; no script, nothing loaded from anywhere. Every
string an operator gave (the event's and SKUs' names, the rewards) is escaped."""

from __future__ import annotations

import math
from html import escape
from importlib import resources

from flashgate import __version__
from flashgate.report import words
from flashgate.report.words import duration, money, number, percent

RED, INK, MUTED, LINE, AMBER = "#e1251b", "#1f2329", "#6b7280", "#e5e7eb", "#f59e0b"
PALETTE = ("#e1251b", "#f59e0b", "#2563eb", "#0a8f4f", "#7c3aed", "#db2777", "#0891b2",
           "#65a30d", "#9ca3af", "#b45309", "#4b5563", "#1d4ed8")
MAX_COLUMNS = 600  # the per-second chart: at most this many columns (each the max of its seconds)

CSS = """
.top { background: linear-gradient(135deg, #e1251b, #b71c14); color: #fff; padding: 18px 0 22px; }
.wrap { max-width: 980px; margin: 0 auto; padding: 0 14px; }
.top .row { display: flex; justify-content: space-between; align-items: center; gap: 8px; }
.top a.lang { color: #fff; text-decoration: none; border: 1px solid rgba(255,255,255,.7);
  border-radius: 8px; padding: .15em .6em; font-size: .85em; }
.badge { display: inline-block; border-radius: 999px; padding: .15em .8em; font-size: .85em;
  font-weight: 600; background: #fff; color: var(--red); }
.badge.live { background: #fde68a; color: #92400e; }
h1 { margin: .35em 0 .15em; font-size: 1.7em; line-height: 1.2; overflow-wrap: anywhere; }
.summary { font-size: 1.25em; font-weight: 600; margin: .3em 0; }
.top .muted { color: rgba(255,255,255,.85); margin: .2em 0 0; }
h2 { font-size: 1.05em; margin: 0 0 .6em; }
.kpis { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin: 14px 0 4px; }
.kpi { margin: 0; }
.kpi b { display: block; font-size: 1.45em; color: var(--red); line-height: 1.25;
  overflow-wrap: anywhere; }
.kpi span { color: var(--muted); font-size: .85em; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
.grid2 > .card { margin: 0; }
table { width: 100%; border-collapse: collapse; font-size: .92em; }
th, td { text-align: right; padding: .4em .35em; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
th { color: var(--muted); font-weight: 500; }
td .muted { display: block; font-size: .8em; }
.scroll { overflow-x: auto; }
svg { display: block; width: 100%; height: auto; }
.narrow { display: none; }
th, td { white-space: nowrap; }
td.l, th.l { text-align: left; white-space: normal; }
svg text { font-family: inherit; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 14px; list-style: none; padding: 0;
  margin: .6em 0 0; font-size: .88em; }
.legend i { display: inline-block; width: .8em; height: .8em; border-radius: 2px;
  margin-right: .35em; vertical-align: -1px; }
.goal { margin: .2em 0 .8em; }
.goal .line { display: flex; justify-content: space-between; gap: 8px; font-size: .92em; }
.goal .bar { margin-top: .3em; }
.goal .bar > i { transition: none; }
.goal.reached .bar > i { background: var(--ok); }
.ok { color: var(--ok); font-weight: 600; }
footer { color: var(--muted); font-size: .85em; padding: 8px 0 28px; }
@media (max-width: 720px) {
  .wide { display: none; }
  .narrow { display: block; }
  .kpis { grid-template-columns: repeat(2, 1fr); }
  .grid2 { grid-template-columns: 1fr; }
  .grid2 > .card { margin: 0; }
  h1 { font-size: 1.4em; }
  .summary { font-size: 1.1em; }
}
"""


def common_css() -> str:
    return resources.files("flashgate").joinpath("static", "common.css").read_text("utf-8")


def render(rep: dict, lang: str) -> str:
    """The page of report ``rep`` in ``lang`` (``zh`` or ``en``)."""
    T = lambda key: escape(words.t(lang, key))  # noqa: E731
    other = "en" if lang == "zh" else "zh"
    badge = (f'<span class="badge" id="status">{T("final")}</span>' if rep["final"] else
             f'<span class="badge live" id="status">{T("in_progress")}</span>')
    name = escape(rep["name"])
    parts = [
        "<!doctype html>",
        f'<html lang="{lang}">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{T('title')} · {name}</title>",
        f"<style>\n{common_css()}{CSS}</style>",
        "</head>",
        "<body>",
        '<header class="top"><div class="wrap">',
        f'<div class="row">{badge}<a class="lang" href="?format=html&amp;lang={other}" '
        f'hreflang="{other}">{T("lang_switch")}</a></div>',
        f'<h1 id="name">{name}</h1>',
        f'<p class="summary" id="summary">{escape(rep["summary"][lang])}</p>',
        f'<p class="muted">{T("window")}: {words.utc(rep["starts_at_ms"])} – '
        f'{words.utc(rep["ends_at_ms"])} · {T("state_" + rep["state"])}<br>'
        f'{T("as_of")}: {words.utc(rep["as_of_ms"])}</p>',
        "</div></header>",
        '<main class="wrap">',
        _kpis(rep, lang),
        _skus(rep, lang),
        _card(T("per_minute"), _per_minute_chart(rep, lang), "per-minute"),
        _card(T("per_second"), _per_second_chart(rep, lang), "per-second"),
        '<div class="grid2">',
        _card(T("funnel"), _funnel(rep, lang), "funnel"),
        _card(T("rejections"), _rejections(rep, lang), "rejections"),
        "</div>",
        '<div class="grid2">',
        _card(T("milestones"), _milestones(rep, lang), "milestones"),
        _card(T("goals"), _goals(rep, lang), "goals"),
        "</div>",
        _card(T("latency"), _latency(rep), "latency"),
        f'<footer><p>{T("final_note" if rep["final"] else "in_progress_note")}</p>'
        f"<p>flashgate {escape(__version__)} · {escape(rep['event_id'])}</p></footer>",
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _card(title: str, inner: str, ident: str) -> str:
    return f'<section class="card" id="{ident}"><h2>{title}</h2>\n{inner}\n</section>'


def _kpi(key: str, value: str, label: str) -> str:
    return (f'<div class="card kpi"><b data-k="{key}">{escape(value)}</b>'
            f"<span>{escape(label)}</span></div>")


def _kpis(rep: dict, lang: str) -> str:
    t = lambda key: words.t(lang, key)  # noqa: E731
    so = rep["sold_out_ms"]
    peak = rep["peak_rps"]["attempts"]
    cells = [
        _kpi("sold_out_ms", duration(so, lang) if so is not None else t("not_sold_out"),
             t("sold_out_in")),
        _kpi("units_sold", f"{number(rep['units_sold'])} / {number(rep['stock'])}",
             t("units_sold")),
        _kpi("buyers", number(rep["buyers"]), t("buyers")),
        _kpi("orders", number(rep["orders"]), t("orders")),
        _kpi("revenue", money(rep["revenue"]), t("revenue")),
        _kpi("revenue_paid", money(rep["revenue_paid"]), t("revenue_paid")),
        _kpi("peak_rps", number(peak), t("peak_rps")),
        _kpi("conversion", percent(rep["conversion"]), t("conversion")),
    ]
    return '<section class="kpis" id="kpis">' + "".join(cells) + "</section>"


def _skus(rep: dict, lang: str) -> str:
    T = lambda key: escape(words.t(lang, key))  # noqa: E731
    head = "".join(f"<th>{T(k)}</th>" for k in (
        "sku", "price", "stock", "sold", "left", "orders", "paid", "revenue", "sold_out_col"))
    rows = []
    for s in rep["skus"]:
        so = s["sold_out_ms"]
        rows.append(
            f'<tr data-sku="{escape(s["id"])}"><td class="l">{escape(s["name"])}'
            f'<span class="muted">{escape(s["id"])}</span></td>'
            f"<td>{money(s['price']) if s['price'] is not None else '-'}</td>"
            f"<td>{number(s['stock'])}</td><td>{number(s['sold'])}</td>"
            f"<td>{number(s['left'])}</td><td>{number(s['orders'])}</td>"
            f"<td>{number(s['paid_orders'])}</td><td>{money(s['revenue'])}</td>"
            f"<td>{escape(duration(so, lang)) if so is not None else T('not_sold_out')}</td></tr>")
    table = (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
             f"<tbody>{''.join(rows)}</tbody></table></div>")
    return _card(T("skus"), table, "skus")


# -- charts ---------------------------------------------------------------------------


def _nice(n: float) -> int:
    """A round number at least ``n`` for an axis: 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8
    times a power of ten (219 -> 250, not 500: the bars fill most of the chart)."""
    if n <= 1:
        return 1
    p = 1
    while p * 10 <= n:
        p *= 10
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * p >= n:
            return math.ceil(m * p)
    return 10 * p


def _text(x: float, y: float, s: str, anchor: str = "middle", size: int = 11,
          fill: str = MUTED, weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{fill}" font-weight="{weight}">{escape(s)}</text>')


def _axes(w: int, h: int, left: int, right: int, top: int, bottom: int,
          top_value: int) -> list[str]:
    """The value axis' grid lines (0, half, top) and their labels."""
    out = []
    ph = h - top - bottom
    for frac in (0, 0.5, 1):
        y = top + ph * (1 - frac)
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{LINE}"/>')
        v = top_value * frac
        out.append(_text(left - 6, y + 4, number(int(v)) if v == int(v) else f"{v:,.1f}", "end"))
    return out


def _legend(items: list[tuple[str, str]]) -> str:
    return '<ul class="legend">' + "".join(
        f'<li><i style="background:{c}"></i>{escape(label)}</li>' for c, label in items) + "</ul>"


# a chart is drawn twice: wide (shown on a desktop) and narrow (on a phone), each at
# about its real size, so that its labels read the same on both
SIZES = ((900, 260, "wide"), (360, 240, "narrow"))


def _both(draw, *args) -> str:
    return "".join(f'<div class="{cls}">{draw(w, h, *args)}</div>' for w, h, cls in SIZES)


def _per_minute_chart(rep: dict, lang: str) -> str:
    t = lambda key: words.t(lang, key)  # noqa: E731
    if not rep["per_minute"]:
        return f'<p class="muted">{escape(t("no_requests"))}</p>'
    legend = _legend([(RED, t("orders_l")), (AMBER, t("units_l")),
                      (LINE, f"x: {t('minute')} ({t('after_start')})")])
    return _both(_per_minute_svg, rep, lang) + legend


def _per_minute_svg(w: int, h: int, rep: dict, lang: str) -> str:
    t = lambda key: words.t(lang, key)  # noqa: E731
    mins = rep["per_minute"]
    left, right, top, bottom = 44, 8, 12, 26
    pw, ph = w - left - right, h - top - bottom
    hi = _nice(max(max(m["orders"], m["units"]) for m in mins))
    n = len(mins)
    slot = pw / n
    bar = min(36.0, max(0.6, slot * 0.36))
    every = max(1, -(-n // (12 if w > 500 else 6)))
    out = [f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{escape(t("per_minute"))}">']
    out += _axes(w, h, left, right, top, bottom, hi)
    for i, m in enumerate(mins):
        minute = (m["from_ms"] - rep["starts_at_ms"]) // 60_000  # since the start
        x0 = left + (i + 0.5) * slot - bar
        for j, (key, color) in enumerate((("orders", RED), ("units", AMBER))):
            bh = ph * m[key] / hi
            out.append(f'<rect x="{x0 + j * bar:.2f}" y="{top + ph - bh:.2f}" width="{bar:.2f}" '
                       f'height="{bh:.2f}" fill="{color}"><title>{minute} {escape(t("minute"))}: '
                       f'{number(m[key])} {escape(t(key + "_l"))}</title></rect>')
        if i % every == 0:
            out.append(_text(left + (i + 0.5) * slot, h - 8, str(minute)))
    out.append("</svg>")
    return "".join(out)


def _columns(values: list[int], most: int) -> tuple[list[int], int]:
    """``values`` in at most ``most`` columns, each the max of its run; the run."""
    k = max(1, -(-len(values) // most))
    return [max(values[i:i + k]) for i in range(0, len(values), k)], k


def _per_second_chart(rep: dict, lang: str) -> str:
    t = lambda key: words.t(lang, key)  # noqa: E731
    if not rep["per_second"]["attempts"]:
        return f'<p class="muted">{escape(t("no_requests"))}</p>'
    return (_both(_per_second_svg, rep, lang)
            + _legend([(RED, t("attempts_l")), (AMBER, t("orders_l"))]))


def _per_second_svg(w: int, h: int, rep: dict, lang: str) -> str:
    t = lambda key: words.t(lang, key)  # noqa: E731
    ps = rep["per_second"]
    left, right, top, bottom = 44, 16, 24, 26
    pw, ph = w - left - right, h - top - bottom
    attempts, k = _columns(ps["attempts"], min(MAX_COLUMNS, pw))
    orders, _ = _columns(ps["orders"], min(MAX_COLUMNS, pw))
    hi = _nice(max(attempts))
    n = len(attempts)
    step = pw / (n - 1) if n > 1 else 0.0
    x_of = (lambda i: left + i * step) if n > 1 else (lambda i: left + pw / 2)  # noqa: E731

    def y_of(v: int) -> float:
        return top + ph - ph * v / hi

    out = [f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{escape(t("per_second"))}">']
    out += _axes(w, h, left, right, top, bottom, hi)
    if n == 1:
        out.append(f'<rect x="{x_of(0) - 6:.1f}" y="{y_of(attempts[0]):.2f}" width="12" '
                   f'height="{top + ph - y_of(attempts[0]):.2f}" fill="{RED}" '
                   f'fill-opacity=".5"/>')
    else:
        line = " ".join(f"{x_of(i):.2f},{y_of(v):.2f}" for i, v in enumerate(attempts))
        out.append(f'<polygon points="{left},{top + ph} {line} {x_of(n - 1):.2f},{top + ph}" '
                   f'fill="{RED}" fill-opacity=".18"/>')
        out.append(f'<polyline points="{line}" fill="none" stroke="{RED}" stroke-width="1.6"/>')
        out.append('<polyline points="'
                   + " ".join(f"{x_of(i):.2f},{y_of(v):.2f}" for i, v in enumerate(orders))
                   + f'" fill="none" stroke="{AMBER}" stroke-width="1.6"/>')
    peak = attempts.index(max(attempts))
    px, py = x_of(peak), y_of(attempts[peak])
    out.append(f'<circle cx="{px:.2f}" cy="{py:.2f}" r="3.5" fill="{RED}"/>')
    label = f"{t('peak')} {number(rep['peak_rps']['attempts'])}/s"
    anchor = "start" if px < left + pw * 0.6 else "end"
    out.append(_text(px + (6 if anchor == "start" else -6), max(14.0, py - 6), label, anchor,
                     12, INK, "600"))
    seconds = len(ps["attempts"])
    every = _nice(seconds / (8 if w > 500 else 4))
    unit = "秒" if lang == "zh" else "s"
    for sec in range(0, seconds, every):
        x = x_of(sec / k) if n > 1 else x_of(0)
        out.append(_text(x, h - 8, f"{sec}{unit}", "end" if x > w - right - 12 else "middle"))
    out.append("</svg>")
    return "".join(out)


def _funnel(rep: dict, lang: str) -> str:
    t = lambda key: words.t(lang, key)  # noqa: E731
    steps = rep["funnel"]
    top = max(1, max(s["count"] for s in steps))
    w, row = 360, 38
    h = row * len(steps)
    out = [f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{escape(t("funnel"))}">']
    prev = None
    for i, s in enumerate(steps):
        y = i * row
        bw = max(2.0, (w - 4) * s["count"] / top)
        shade = 1 - i * 0.15
        out.append(f'<rect x="{(w - bw) / 2:.2f}" y="{y + 16}" width="{bw:.2f}" height="18" '
                   f'rx="3" fill="{RED}" fill-opacity="{shade:.2f}"/>')
        # of the step above; more orders than participants (one per SKU each) is a
        # ratio, not a share over 100 %
        share = ("" if not prev else f" · {percent(s['count'] / prev)}" if s["count"] <= prev
                 else f" · ×{s['count'] / prev:.2f}")
        out.append(_text(2, y + 12, t(s["step"]), "start", 12, INK))
        out.append(f'<text x="{w - 2}" y="{y + 12}" text-anchor="end" font-size="12" '
                   f'fill="{INK}" font-weight="600" data-step="{s["step"]}">'
                   f"{number(s['count'])}{escape(share)}</text>")
        prev = s["count"]
    out.append("</svg>")
    return "".join(out)


def _rejections(rep: dict, lang: str) -> str:
    t = lambda key: words.t(lang, key)  # noqa: E731
    codes = [(k, n) for k, n in rep["rejections"].items() if n]
    codes.sort(key=lambda kv: -kv[1])
    total = sum(n for _, n in codes)
    if not total:
        return f'<p class="muted">{escape(t("no_rejections"))}</p>'
    w, h = 360, 22
    out = [f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{escape(t("rejections"))}">']
    x = 0.0
    items = []
    for i, (code, n) in enumerate(codes):
        color = PALETTE[i % len(PALETTE)]
        bw = w * n / total
        out.append(f'<rect x="{x:.2f}" y="0" width="{bw:.2f}" height="{h}" fill="{color}">'
                   f"<title>{escape(code)}: {number(n)}</title></rect>")
        x += bw
        items.append((color, f"{t(code)} ({code}) {number(n)} · {percent(n / total)}"))
    out.append("</svg>")
    return "".join(out) + _legend(items)


def _milestones(rep: dict, lang: str) -> str:
    T = lambda key: escape(words.t(lang, key))  # noqa: E731
    if not rep["milestones"]:
        return f'<p class="muted">{T("no_milestones")}</p>'
    rows = []
    for m in rep["milestones"]:
        if m["reached"]:
            when = (f'<span class="ok">{escape(duration(m["after_ms"], lang))}</span>'
                    f'<span class="muted">{escape(words.utc(m["reached_ms"]))}</span>')
        else:
            when = f'<span class="muted">{T("not_reached")}</span>'
        rows.append(f'<tr data-sold="{m["sold"]}"><td>{number(m["sold"])}</td>'
                    f'<td class="l">{escape(m["reward"])}</td><td>{when}</td></tr>')
    return (f"<table><thead><tr><th>{T('sold')}</th><th class='l'>{T('reward')}</th>"
            f"<th>{T('reached_at')} ({T('after_start')})</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _goals(rep: dict, lang: str) -> str:
    T = lambda key: escape(words.t(lang, key))  # noqa: E731
    if not rep["goals"]:
        return f'<p class="muted">{T("no_goals")}</p>'
    out = []
    for k, g in rep["goals"].items():
        fmt = money if k == "revenue" else number
        share = g["attainment"]
        width = 100 if share is None else min(100.0, share * 100)
        attained = "-" if share is None else percent(share)
        out.append(
            f'<div class="goal{" reached" if g["reached"] else ""}" data-goal="{k}">'
            f'<div class="line"><span>{T("goal_" + k)}</span>'
            f"<span>{escape(fmt(g['actual']))} / {escape(fmt(g['target']))} · "
            f'<b>{escape(attained)}</b></span></div>'
            f'<div class="bar"><i style="width:{width:.1f}%"></i></div></div>')
    return "".join(out)


def _latency(rep: dict) -> str:
    lat = rep["latency_ms"]
    cells = " · ".join(f"{q} {'-' if lat.get(q) is None else str(lat[q]) + ' ms'}"
                       for q in ("p50", "p99", "p999"))
    return f"<p>{escape(cells)}</p>"
