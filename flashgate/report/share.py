"""The share image of a report: a phone-sized PNG (1080 x 1920) with the headline
numbers, drawn with Pillow from the report's JSON.

Chinese needs a font that has its characters: ``find_cjk_font`` asks fontconfig
(``fc-list``/``fc-match``, on Linux) and looks in the usual places of macOS and
Windows; ``--font FILE`` (or ``FLASHGATE_REPORT_FONT``) names one. Without one the
image is drawn in English with Pillow's own font, and ``draw`` says so."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess

from flashgate import __version__
from flashgate.report import words
from flashgate.report.words import duration, money, number, percent

WIDTH, HEIGHT = 1080, 1920
RED, RED_DARK, INK, MUTED, LINE, BG, AMBER, GREEN, WHITE = (
    (225, 37, 27), (183, 28, 20), (31, 35, 41), (107, 114, 128), (229, 231, 235),
    (246, 247, 249), (245, 158, 11), (10, 143, 79), (255, 255, 255))
# files of fonts with Chinese characters where fontconfig is not there to ask
KNOWN_CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)
HINT = ("install a font with Chinese characters (Debian/Ubuntu: apt-get install "
        "fonts-noto-cjk or fonts-wqy-zenhei) or name one with --font FILE")


def _index_of(path: str) -> int:
    """The face of a font collection to use: Noto's CJK collections hold Japanese,
    Korean, Simplified Chinese... in that order."""
    return 2 if re.search(r"(Noto|SourceHan)(Sans|Serif)CJK.*\.ttc$", path) else 0


def find_cjk_font() -> tuple[str, int] | None:
    """``(file, face index)`` of a font that has Chinese characters, or None."""
    given = os.environ.get("FLASHGATE_REPORT_FONT")
    if given:
        return given, _index_of(given)
    if shutil.which("fc-list"):
        try:
            listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True,
                                    text=True, timeout=10).stdout
            files = sorted({line.split(":")[0].strip() for line in listed.splitlines()
                            if line.strip()})
            best = subprocess.run(["fc-match", "-f", "%{file}|%{index}",
                                   "sans-serif:lang=zh-cn:weight=bold"],
                                  capture_output=True, text=True, timeout=10).stdout
            path, _, index = best.partition("|")
            if path in files:
                return path, int(index or 0)
            if files:
                return files[0], _index_of(files[0])
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    for path in KNOWN_CJK_FONTS:
        if os.path.exists(path):
            return path, _index_of(path)
    return None


class _Fonts:
    """Fonts by size: the CJK font given, else Pillow's own (Latin only)."""

    def __init__(self, cjk: tuple[str, int] | None):
        from PIL import ImageFont

        self.ImageFont = ImageFont
        self.cjk = cjk
        self.cache: dict[int, object] = {}

    def __call__(self, size: int):
        f = self.cache.get(size)
        if f is None:
            if self.cjk is not None:
                f = self.ImageFont.truetype(self.cjk[0], size, index=self.cjk[1])
            else:
                f = self.ImageFont.load_default(size)
            self.cache[size] = f
        return f


_UNITS = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]|[^\s\u2e80-\u9fff"
                    r"\uf900-\ufaff\uff00-\uffef\u3000-\u303f]+|\s+")


def _wrap(draw, text: str, font, width: int, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of at most ``width`` pixels (a Chinese
    character, or a word, at a time); the last ends in an ellipsis if it is cut."""
    out: list[str] = []
    line = ""
    units = _UNITS.findall(text)
    for i, u in enumerate(units):
        if draw.textlength(line + u, font=font) <= width or not line.strip():
            line += u
            continue
        out.append(line.rstrip())
        line = u.lstrip()
        if len(out) == lines:
            rest = "".join(units[i:])
            out[-1] = _fit(draw, out[-1] + rest, font, width)
            return out
    if line.strip():
        out.append(line.rstrip())
    if len(out) > lines:
        out = out[:lines - 1] + [_fit(draw, " ".join(out[lines - 1:]), font, width)]
    return [_fit(draw, x, font, width) for x in out]


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def draw(rep: dict, lang: str = "zh", font: str | None = None) -> tuple[bytes, list[str]]:
    """The PNG of report ``rep`` (its JSON as a dict) in ``lang``, and what the caller
    should be told (no Chinese font: drawn in English)."""
    from PIL import Image, ImageDraw

    notes: list[str] = []
    cjk = (font, _index_of(font)) if font else find_cjk_font()
    if cjk is None and lang == "zh":
        notes.append(f"no font with Chinese characters found: the share image is in "
                     f"English ({HINT})")
        lang = "en"
    fonts = _Fonts(cjk)
    t = lambda key: words.t(lang, key)  # noqa: E731
    # (Pillow's own font has no yen sign)
    cash = money if cjk is not None else (lambda v: money(v).replace("¥", "CNY "))
    img = Image.new("RGB", (WIDTH, HEIGHT), BG)
    d = ImageDraw.Draw(img)
    pad = 72
    inner = WIDTH - 2 * pad
    # the red band's text, laid out first: the band ends below it
    name = _wrap(d, rep["name"], fonts(60), inner, 2)
    if rep["sold_out_ms"] is not None:
        hero, label = duration(rep["sold_out_ms"], lang), t("sold_out_in")
    else:
        hero = f"{number(rep['units_sold'])} / {number(rep['stock'])}"
        label = t("units_sold")
    lines = _wrap(d, rep["summary"][lang], fonts(44), inner, 2)
    english = _wrap(d, rep["summary"]["en"], fonts(30), inner, 2) if lang == "zh" else []
    hero_y = 170 + 74 * len(name) + 28
    summary_y = hero_y + 56 + 160
    cards_y = summary_y + 60 * len(lines) + 42 * len(english) + 56
    band = cards_y + 70
    for y in range(band):
        k = y / band
        d.line([(0, y), (WIDTH, y)], fill=tuple(round(a + (b - a) * k)
                                                for a, b in zip(RED, RED_DARK, strict=True)))
    # what it is, and whether it is final
    d.text((pad, 96), t("title").upper() if lang == "en" else f"{t('title')} · BATTLE REPORT",
           font=fonts(34), fill=WHITE)
    status = t("final") if rep["final"] else t("in_progress")
    sw = d.textlength(status, font=fonts(30))
    d.rounded_rectangle([WIDTH - pad - sw - 40, 86, WIDTH - pad, 140], radius=27,
                        fill=WHITE if rep["final"] else (253, 230, 138))
    d.text((WIDTH - pad - 20, 113), status, font=fonts(30),
           fill=RED if rep["final"] else (146, 64, 14), anchor="rm")
    for i, line in enumerate(name):
        d.text((pad, 170 + 74 * i), line, font=fonts(60), fill=WHITE, stroke_width=1,
               stroke_fill=WHITE)
    # the headline: how fast it sold out, else how much of it sold
    d.text((pad, hero_y), label, font=fonts(40), fill=(255, 220, 215))
    d.text((pad, hero_y + 56), _fit(d, hero, fonts(136), inner), font=fonts(136), fill=WHITE,
           stroke_width=2, stroke_fill=WHITE)
    for i, line in enumerate(lines):
        d.text((pad, summary_y + 60 * i), line, font=fonts(44), fill=WHITE)
    for i, line in enumerate(english):
        d.text((pad, summary_y + 60 * len(lines) + 8 + 42 * i), line, font=fonts(30),
               fill=(255, 220, 215))
    # the numbers: two columns of three cards
    cards = [(number(rep["units_sold"]), t("units_sold")), (number(rep["buyers"]), t("buyers")),
             (number(rep["orders"]), t("orders")), (cash(rep["revenue"]), t("revenue")),
             (number(rep["peak_rps"]["attempts"]), t("peak_rps")),
             (percent(rep["conversion"]), t("conversion"))]
    gap, ch = 24, 168
    cw = (inner - gap) // 2
    for i, (value, label) in enumerate(cards):
        x0 = pad + (i % 2) * (cw + gap)
        y0 = cards_y + (i // 2) * (ch + gap)
        d.rounded_rectangle([x0 + 2, y0 + 4, x0 + cw + 2, y0 + ch + 4], radius=26,
                            fill=(225, 227, 231))
        d.rounded_rectangle([x0, y0, x0 + cw, y0 + ch], radius=26, fill=WHITE)
        d.text((x0 + 34, y0 + 28), _fit(d, value, fonts(64), cw - 68), font=fonts(64),
               fill=RED, stroke_width=1, stroke_fill=RED)
        d.text((x0 + 34, y0 + 110), _fit(d, label, fonts(32), cw - 68), font=fonts(32),
               fill=MUTED)
    y = cards_y + 3 * (ch + gap) + 16
    foot = HEIGHT - 64
    # the rush (buy requests per second), then the goals or milestones as far as they fit
    y = _rush(d, rep, fonts, t, pad, y, inner, min(180, max(80, foot - y - 330)))
    _goals(d, rep, fonts, t, lang, cash, pad, y + 30, inner, foot - 40)
    when = words.utc(rep["as_of_ms"])
    d.text((pad, foot), f"{when} · flashgate {__version__}", font=fonts(28), fill=MUTED,
           anchor="ls")
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue(), notes


def _rush(d, rep, fonts, t, x0: int, y0: int, w: int, h: int) -> int:
    """The buy requests per second as an area, its peak marked; the y below it."""
    ps = rep["per_second"]["attempts"]
    d.text((x0, y0), t("per_second"), font=fonts(34), fill=INK)
    y0 += 54
    if not ps:
        d.text((x0, y0 + 20), t("no_requests"), font=fonts(30), fill=MUTED)
        return y0 + 80
    k = max(1, -(-len(ps) // w))
    cols = [max(ps[i:i + k]) for i in range(0, len(ps), k)]
    hi = max(cols) or 1
    n = len(cols)
    step = w / (n - 1) if n > 1 else 0
    base = y0 + h
    pts = [(x0 + i * step if n > 1 else x0 + w / 2, base - h * v / hi * 0.86)
           for i, v in enumerate(cols)]
    d.line([(x0, base), (x0 + w, base)], fill=LINE, width=2)
    if n > 1:
        d.polygon([(x0, base), *pts, (x0 + w, base)], fill=(249, 205, 202))
        d.line(pts, fill=RED, width=4, joint="curve")
    else:
        d.rectangle([pts[0][0] - 10, pts[0][1], pts[0][0] + 10, base], fill=RED)
    peak = max(range(n), key=lambda i: cols[i])
    px, py = pts[peak]
    d.ellipse([px - 9, py - 9, px + 9, py + 9], fill=RED)
    label = f"{t('peak')} {number(rep['peak_rps']['attempts'])}/s"
    right = px < x0 + w * 0.6
    d.text((px + 18 if right else px - 18, py - 4), label, font=fonts(32), fill=INK,
           anchor="lm" if right else "rm")
    return base + 10


def _goals(d, rep, fonts, t, lang, cash, x0: int, y0: int, w: int, bottom: int) -> int:
    """The goals' attainment as bars (or, with no goal, the milestones reached), as
    many as fit above ``bottom``."""
    goals = rep["goals"]
    if goals:
        room = (bottom - y0 - 58 + 24) // 86  # (the last needs no space below it)
        if room < 1:
            return y0
        d.text((x0, y0), t("goals"), font=fonts(34), fill=INK)
        y = y0 + 58
        for k, g in list(goals.items())[:room]:
            fmt = cash if k == "revenue" else number
            share = g["attainment"]
            right = f"{fmt(g['actual'])} / {fmt(g['target'])} · " + (
                "-" if share is None else percent(share))
            d.text((x0, y), t("goal_" + k), font=fonts(30), fill=INK)
            d.text((x0 + w, y), right, font=fonts(30), fill=INK, anchor="ra")
            y += 46
            d.rounded_rectangle([x0, y, x0 + w, y + 16], radius=8, fill=LINE)
            fill = 1.0 if share is None else min(1.0, share)
            if fill > 0:
                d.rounded_rectangle([x0, y, x0 + max(16, round(w * fill)), y + 16], radius=8,
                                    fill=GREEN if g["reached"] else RED)
            y += 40
        return y
    reached = [m for m in rep["milestones"] if m["reached"]]
    room = (bottom - y0 - 58) // 48
    if not rep["milestones"] or room < 1:
        return y0
    d.text((x0, y0), f"{t('milestones')} {len(reached)}/{len(rep['milestones'])}",
           font=fonts(34), fill=INK)
    y = y0 + 58
    for m in rep["milestones"][:room]:
        mark = duration(m["after_ms"], lang) if m["reached"] else t("not_reached")
        d.text((x0, y), _fit(d, f"{number(m['sold'])} · {m['reward']}", fonts(30), w - 260),
               font=fonts(30), fill=INK)
        d.text((x0 + w, y), mark, font=fonts(30), fill=GREEN if m["reached"] else MUTED,
               anchor="ra")
        y += 48
    return y
