"""The HTML pages: the buyer's sale page, the operator's dashboard, and their assets.

Each page is one file of ``flashgate/static/`` with its styles and scripts inline
(``<!--#include NAME-->`` takes in another file of that directory when the server
starts): one request, nothing from another origin. It is rendered once per language
when the handlers are made (``{{LANG}}``: ``zh`` or ``en``, chosen per request by
``Accept-Language``; the page can switch; the sale page's ``{{IDENTITY}}``: ``dev`` or
``token``, how this server knows its buyers), kept plain and gzipped, and the data come
from the API and the event stream. ``GET /assets/<name>`` serves the few files a
page loads apart (a vendored chart library), gzipped when accepted, cached by the
browser for a day.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from importlib import resources

from flashgate.gateway.protocol import build_response

HTML = b"text/html; charset=utf-8"
LANGS = ("zh", "en")


def html_headers(may: bytes, cache: bytes) -> tuple:
    """The headers of an HTML page that may do only ``may`` (Content-Security-Policy
    directives; nothing else, no framing), cached as ``cache`` says."""
    return (
        (b"Content-Security-Policy",
         b"default-src 'none'; " + may + b"; form-action 'none'; base-uri 'none'; "
         b"frame-ancestors 'none'"),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Referrer-Policy", b"no-referrer"),
        (b"Cache-Control", cache),
        (b"Vary", b"Accept-Encoding, Accept-Language"),
    )


def accepts_gzip(req) -> bool:
    return b"gzip" in (req.headers.get(b"accept-encoding") or b"")


# what a page may do: its own inline code, the API and stream of this origin
PAGE_HEADERS = html_headers(b"script-src 'self' 'unsafe-inline'; style-src 'self' "
                            b"'unsafe-inline'; img-src 'self' data:; connect-src 'self'",
                            b"no-cache")
ASSET_TYPES = {".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8",
               ".txt": b"text/plain; charset=utf-8", ".svg": b"image/svg+xml",
               ".png": b"image/png"}
_INCLUDE = re.compile(rb"<!--#include ([A-Za-z0-9_.-]+)-->")
_LANG_Q = re.compile(r"\s*([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*")


def static_file(name: str) -> bytes:
    return resources.files("flashgate").joinpath("static", name).read_bytes()


def render(name: str, lang: str, values: dict[str, str] | None = None) -> bytes:
    """A page's bytes in ``lang``: its includes taken in, ``{{LANG}}`` and each
    ``{{NAME}}`` of ``values`` filled."""
    page = _INCLUDE.sub(lambda m: static_file(m.group(1).decode()).rstrip(b"\n"),
                        static_file(name))
    for key, value in {"LANG": lang, **(values or {})}.items():
        page = page.replace(b"{{" + key.encode() + b"}}", value.encode())
    return page


def language(header: bytes | None) -> str:
    """``zh`` or ``en`` by an Accept-Language header: the first of the two by the
    client's preference; neither (or no header): ``zh``."""
    if not header:
        return "zh"
    best, best_q = "zh", -1.0
    for i, part in enumerate(header.decode("latin-1").split(",")):
        m = _LANG_Q.fullmatch(part)
        if m is None:
            continue
        tag = m.group(1).lower()
        try:
            q = float(m.group(2)) if m.group(2) else 1.0
        except ValueError:
            continue
        if tag in LANGS and q > 0 and q - i * 1e-6 > best_q:
            best, best_q = tag, q - i * 1e-6
    return best


class Page:
    """One page in every language, plain and gzipped: the answer to a request."""

    def __init__(self, name: str, status: int = 200, values: dict[str, str] | None = None):
        self.answers = {}
        for lang in LANGS:
            body = render(name, lang, values)
            for gz in (False, True):
                data = gzip.compress(body, 9, mtime=0) if gz else body
                headers = PAGE_HEADERS + ((b"Content-Encoding", b"gzip"),) if gz else PAGE_HEADERS
                self.answers[lang, gz] = build_response(status, data, HTML, headers)

    def answer(self, req) -> bytes:
        return self.answers[language(req.headers.get(b"accept-language")), accepts_gzip(req)]


class Pages:
    def __init__(self, gw, viewed):
        self.gw = gw
        self.viewed = viewed  # a page view of an event: counted (PV, its visitor)
        cfg = gw.cfg
        # how a buyer proves who they are here: the page asks for a name (X-User-Id) or
        # takes the token the shop's app hands it
        identity = "dev" if cfg.dev and not cfg.user_secret else "token"
        self.sale_page = Page("sale.html", values={"IDENTITY": identity})
        self.dashboard_page = Page("dashboard.html")
        self.not_found_page = Page("notfound.html", 404)
        self.assets: dict[tuple[str, bool], bytes] = {}  # (name, gzipped) -> answer
        for entry in resources.files("flashgate").joinpath("static", "assets").iterdir():
            kind = ASSET_TYPES.get("." + entry.name.rpartition(".")[2])
            if kind is None or not entry.is_file():
                continue
            data = entry.read_bytes()
            etag = hashlib.sha256(data).hexdigest()[:16].encode()
            headers = ((b"Cache-Control", b"public, max-age=86400"),
                       (b"X-Content-Type-Options", b"nosniff"), (b"Vary", b"Accept-Encoding"))
            self.assets[entry.name, False] = build_response(
                200, data, kind, headers + ((b"ETag", b'"' + etag + b'"'),))
            packed = gzip.compress(data, 9, mtime=0)
            if len(packed) < len(data) and kind != ASSET_TYPES[".png"]:
                self.assets[entry.name, True] = build_response(200, packed, kind, headers + (
                    (b"ETag", b'"' + etag + b'-gz"'), (b"Content-Encoding", b"gzip")))
            else:
                self.assets[entry.name, True] = self.assets[entry.name, False]

    def sale(self, req, m, who) -> bytes:
        """``GET /e/{event_id}``: the buyer's page (a page view of the event)."""
        if m.ert is None:
            return self.not_found_page.answer(req)
        self.viewed(m.ert, req)
        return self.sale_page.answer(req)

    def dashboard(self, req, m, who) -> bytes:
        """``GET /dashboard/{event_id}``: the operator's page (it signs in itself)."""
        if m.ert is None:
            return self.not_found_page.answer(req)
        return self.dashboard_page.answer(req)

    def asset(self, req, m, who) -> bytes:
        """``GET /assets/{name}``: a file a page loads apart."""
        got = self.assets.get((m.params["name"], accepts_gzip(req)))
        return got if got is not None else self.not_found_page.answer(req)
