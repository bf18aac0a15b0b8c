"""The report's words in Chinese and English: numbers, money, durations, times, the
labels of the page and the share image, and the summary line."""

from __future__ import annotations

import datetime

LANGS = ("zh", "en")

STRINGS = {
    "zh": {
        "title": "战报", "final": "最终战报", "in_progress": "进行中",
        "in_progress_note": "活动仍在进行：数字会继续变化。",
        "final_note": "活动已结束，以上数字为最终结果（订单付款截止前，已付金额仍可增加）。",
        "window": "活动时间", "as_of": "数据截至",
        "sold_out_in": "售罄用时", "not_sold_out": "未售罄",
        "units_sold": "售出件数", "buyers": "抢到人数", "orders": "订单数",
        "revenue": "成交金额", "revenue_paid": "已付金额", "peak_rps": "峰值每秒请求",
        "conversion": "转化率", "attempts": "抢购请求",
        "per_minute": "每分钟订单与件数", "per_second": "每秒抢购请求",
        "minute": "分钟", "orders_l": "订单", "units_l": "件数", "attempts_l": "请求",
        "peak": "峰值",
        "funnel": "转化漏斗", "pv": "浏览量 PV", "uv": "访客 UV", "participants": "参与抢购",
        "paid": "已付款",
        "rejections": "拒绝原因", "no_rejections": "没有被拒绝的请求",
        "skus": "商品", "sku": "商品", "price": "价格", "stock": "库存", "sold": "售出",
        "left": "剩余", "sold_out_col": "售罄用时",
        "milestones": "里程碑", "reward": "奖励", "reached_at": "达成时间",
        "not_reached": "未达成", "no_milestones": "没有设置里程碑",
        "goals": "目标达成", "goal": "目标", "actual": "实际", "attainment": "达成率",
        "no_goals": "没有设置目标", "goal_units": "件数", "goal_revenue": "金额",
        "goal_buyers": "人数",
        "latency": "下单耗时（服务器内）", "after_start": "开场后",
        "no_requests": "还没有抢购请求", "none": "—",
        "state_scheduled": "未开始", "state_preheat": "预热中", "state_live": "进行中",
        "state_paused": "已暂停", "state_sold_out": "已售罄", "state_ended": "已结束",
        "lang_switch": "English",
        "sold_out": "已抢光", "limit_exceeded": "超出限购", "not_started": "未开始",
        "ended": "已结束", "paused": "已暂停", "not_registered": "未预约",
        "rate_limited": "限流", "unavailable": "服务繁忙", "unauthenticated": "未登录",
        "bad_request": "请求有误", "not_found": "不存在", "idempotency_mismatch": "重复请求",
        "d": "天", "h": "小时", "min": "分", "s": "秒",
    },
    "en": {
        "title": "Battle report", "final": "Final report", "in_progress": "In progress",
        "in_progress_note": "The sale is still on: these numbers will change.",
        "final_note": "The sale is over and these numbers are final (the paid revenue may "
                      "still grow until the orders' payment deadlines).",
        "window": "Sale window", "as_of": "Figures as of",
        "sold_out_in": "Sold out in", "not_sold_out": "Not sold out",
        "units_sold": "Units sold", "buyers": "Buyers", "orders": "Orders",
        "revenue": "Revenue", "revenue_paid": "Paid", "peak_rps": "Peak requests/s",
        "conversion": "Conversion", "attempts": "Buy requests",
        "per_minute": "Orders and units per minute", "per_second": "Buy requests per second",
        "minute": "min", "orders_l": "orders", "units_l": "units", "attempts_l": "requests",
        "peak": "peak",
        "funnel": "Funnel", "pv": "Page views", "uv": "Visitors", "participants": "Tried to buy",
        "paid": "Paid",
        "rejections": "Why requests were refused", "no_rejections": "No request was refused",
        "skus": "Products", "sku": "Product", "price": "Price", "stock": "Stock",
        "sold": "Sold", "left": "Left", "sold_out_col": "Sold out in",
        "milestones": "Milestones", "reward": "Reward", "reached_at": "Reached",
        "not_reached": "not reached", "no_milestones": "No milestones",
        "goals": "Goals", "goal": "Goal", "actual": "Actual", "attainment": "Attained",
        "no_goals": "No goals were set", "goal_units": "Units", "goal_revenue": "Revenue",
        "goal_buyers": "Buyers",
        "latency": "Time to take an order (in the server)", "after_start": "after the start",
        "no_requests": "No buy request yet", "none": "-",
        "state_scheduled": "scheduled", "state_preheat": "preheat", "state_live": "live",
        "state_paused": "paused", "state_sold_out": "sold out", "state_ended": "ended",
        "lang_switch": "中文",
        "sold_out": "sold out", "limit_exceeded": "over the limit", "not_started": "not started",
        "ended": "ended", "paused": "paused", "not_registered": "not registered",
        "rate_limited": "rate limited", "unavailable": "busy", "unauthenticated": "no identity",
        "bad_request": "bad request", "not_found": "not found",
        "idempotency_mismatch": "repeated key", "d": "d", "h": "h", "min": "min", "s": "s",
    },
}


def t(lang: str, key: str) -> str:
    return STRINGS[lang].get(key) or STRINGS["en"].get(key) or key


def number(n: int | float) -> str:
    """``1,234`` (both languages write thousands so)."""
    return f"{n:,}"


def money(minor: int) -> str:
    """Minor units (fen) as ``¥1,234.50``."""
    sign = "-" if minor < 0 else ""
    minor = abs(minor)
    return f"{sign}¥{minor // 100:,}.{minor % 100:02d}"


def percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def duration(ms: int, lang: str) -> str:
    """``3 min 12 s`` / ``3分12秒``; under 10 s with a tenth (``1.2 s``); an hour and
    more in hours and minutes."""
    ms = max(0, int(ms))
    sep = "" if lang == "zh" else " "
    if ms < 10_000:
        return f"{ms / 1000:.1f}{sep}{t(lang, 's')}"
    s = ms // 1000
    if s < 60:
        return f"{s}{sep}{t(lang, 's')}"
    if s < 3600:
        m, s = divmod(s, 60)
        if lang == "zh":
            return f"{m}分{s}秒" if s else f"{m}分钟"
        return f"{m} min {s} s" if s else f"{m} min"
    h, rest = divmod(s, 3600)
    m = rest // 60
    if lang == "zh":
        return f"{h}小时{m}分" if m else f"{h}小时"
    return f"{h} h {m} min" if m else f"{h} h"


def utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _plural(n: int, one: str, many: str) -> str:
    return f"{number(n)} {one if n == 1 else many}"


def summary(rep: dict) -> dict[str, str]:
    """The plain-words line of a report (``build.build``'s figures), in both languages:
    "500 units sold out in 3 min 12 s, 1,234 buyers" / "500件商品3分12秒售罄，1,234人抢到"."""
    stock = sum(s["stock"] for s in rep["skus"])
    sold, buyers = rep["units_sold"], rep["buyers"]
    if rep["state"] in ("scheduled", "preheat"):
        zh = f"活动尚未开始，共{number(stock)}件商品"
        en = f"The sale has not started: {_plural(stock, 'unit', 'units')} on offer"
        return {"zh": zh, "en": en}
    if rep["sold_out_ms"] is not None:
        zh = f"{number(sold)}件商品{duration(rep['sold_out_ms'], 'zh')}售罄，{number(buyers)}人抢到"
        en = (f"{_plural(sold, 'unit', 'units')} sold out in "
              f"{duration(rep['sold_out_ms'], 'en')}, {_plural(buyers, 'buyer', 'buyers')}")
    else:
        zh = f"{number(stock)}件商品售出{number(sold)}件，{number(buyers)}人抢到"
        en = (f"{number(sold)} of {_plural(stock, 'unit', 'units')} sold, "
              f"{_plural(buyers, 'buyer', 'buyers')}")
    if not rep["final"]:
        zh, en = "进行中：" + zh, "In progress: " + en
    return {"zh": zh, "en": en}
