"""The whole request path under a bounded fuzz: bytes in -> HttpProtocol -> the real
Gateway -> a real Redis -> well-formed responses out, no exception, no hang.

The properties are those of ``tests/fuzz/request_path.py`` (``RequestPath.check``),
which the atheris harness ``tests/fuzz/fuzz_request_path.py`` runs for as long as one
lets it; here
a grammar-aware hypothesis strategy (valid requests to every route of docs/API.md,
then random damage: inserted, deleted, overwritten bytes, cuts, chunking, client
behaviours) and a fixed list of regression inputs run in a few seconds. The harness
uses its own database (9) of the session's private redis-server; the last test
checks the stock invariants of every event it holds.
"""

from __future__ import annotations

import gc
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.request_path import (
    ADMIN,
    EVENT,
    PathFailure,
    Plan,
    RequestPath,
    event_definition,
)

AUTH = b"Authorization: Bearer " + ADMIN.encode()
EV = EVENT.encode()


@pytest.fixture(scope="module")
def path(redis_server):
    harness = RequestPath(redis_server.url.rsplit("/", 1)[0] + "/9", timeout=5.0).start()
    yield harness
    harness.close()


# --------------------------------------------------------------------------- grammar


def req(method: bytes, target: bytes, headers: bytes = b"", body: bytes = b"",
        version: bytes = b"HTTP/1.1") -> bytes:
    head = method + b" " + target + b" " + version + b"\r\nHost: t\r\n" + headers
    if body:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def buy(user: bytes = b"u1", sku: bytes = b"s1", qty: bytes = b"1", extra: bytes = b"") -> bytes:
    body = b'{"sku":"' + sku + b'","qty":' + qty + b"}"
    return req(b"POST", b"/api/v1/events/" + EV + b"/buy", b"X-User-Id: " + user + b"\r\n" + extra,
               body)


ADMIN_EV = b"/api/v1/admin/events/" + EV

# (method, target, body kind): every route of docs/API.md, and near misses
ROUTES = [
    (b"GET", b"/api/v1/events/" + EV, None),
    (b"POST", b"/api/v1/events/" + EV + b"/register", None),
    (b"POST", b"/api/v1/events/" + EV + b"/buy", "buy"),
    (b"POST", b"/api/v1/events/" + EV + b"/buy", "buy"),
    (b"POST", b"/api/v1/events/" + EV + b"/buy", "buy"),
    (b"POST", b"/api/v1/events/nope/buy", "buy"),
    (b"GET", b"/api/v1/orders/{order}", None),
    (b"GET", b"/api/v1/orders/fz.s1.nope", None),
    (b"POST", b"/api/v1/admin/orders/{order}/paid", None),
    (b"POST", b"/api/v1/admin/orders/{order}/cancel", None),
    (b"PUT", ADMIN_EV, "event"),
    (b"PUT", b"/api/v1/admin/events/hz1", "event"),
    (b"GET", ADMIN_EV, None),
    (b"POST", ADMIN_EV + b"/pause", None),
    (b"POST", ADMIN_EV + b"/resume", None),
    (b"POST", ADMIN_EV + b"/skus/s0/stock", "add"),
    (b"GET", ADMIN_EV + b"/stats", None),
    (b"GET", ADMIN_EV + b"/orders", None),
    (b"GET", ADMIN_EV + b"/report?format=html", None),
    (b"GET", b"/api/v1/events/" + EV + b"/stream", None),
    (b"GET", b"/dashboard/" + EV, None),
    (b"GET", b"/metrics", None),
    (b"GET", b"/livez", None),
    (b"GET", b"/readyz", None),
    (b"GET", b"/openapi.json", None),
    (b"GET", b"/api/v1/events/", None),
    (b"POST", b"/api/v1/events/" + EV + b"/buy/x", "buy"),
    (b"GET", b"/api/v1/admin/", None),
    (b"OPTIONS", b"*", None),
    (b"POST", b"http://t/api/v1/events/" + EV + b"/buy?x=1", "buy"),
    (b"GET", b"/api/v1/events/" + EV + b"?a=%20#f", None),
]
_methods = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"get"])
_users = st.one_of(st.sampled_from([b"u1", b"u2"]), st.integers(0, 999).map(b"hyp-%d".__mod__))
_odd_identity = st.sampled_from([
    b"", b"X-User-Id: bad user\r\n", b"X-User-Id: \xff\r\n", b"X-User-Id: \r\n",
    AUTH + b"\r\n", b"Authorization: Bearer nope\r\n", b"Authorization: Bearer u1.1.ab\r\n",
    b"X-User-Id: u1\r\n",
])  # fmt: skip
# extras: the usual ones often, the ones that end a connection rarely
_extras = st.lists(st.sampled_from([
    b"Idempotency-Key: k1\r\n", b"Idempotency-Key: k2\r\n", b"Connection: keep-alive\r\n",
    b"Expect: 100-continue\r\n", b"X-Forwarded-For: 192.0.2.7, 10.0.0.2\r\n",
    b"Content-Type: application/json\r\n",
]), max_size=2)  # fmt: skip
_rare_extras = st.sampled_from([
    b"Idempotency-Key: \r\n", b"Idempotency-Key: a b\r\n",
    b"Idempotency-Key: " + b"k" * 256 + b"\r\n", b"Connection: close\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Upgrade: h2c\r\n",
])  # fmt: skip
_versions = st.sampled_from([b"HTTP/1.1"] * 20 + [b"HTTP/1.0", b"HTTP/1.0", b"HTTP/2.0"])
_valid_buy = st.fixed_dictionaries(
    {"sku": st.sampled_from(["s1", "s1", "s0"])}, optional={"qty": st.sampled_from([1, 1, 2])}
).map(orjson.dumps)
_odd_buy = st.fixed_dictionaries(
    {"sku": st.sampled_from(["s9", 1, None, "s1"])},
    optional={"qty": st.sampled_from([5, 6, 0, -1, "1", 1.5, True, None, 2**63])},
).map(orjson.dumps)


def _event_variant(change: str) -> bytes:
    d = event_definition()
    if change == "more stock":
        d["skus"][0]["stock"] = 5
    elif change == "less stock":
        d["skus"][0]["stock"] = 0
    elif change == "higher limit":
        d["skus"][1]["per_user_limit"] = 9
    elif change == "lower limit":
        d["skus"][1]["per_user_limit"] = 1
    elif change == "new sku":
        d["skus"].append({"id": "s2", "price": 5, "stock": 2})
    elif change == "drop sku":
        d["skus"].pop()
    elif change == "move start":
        d["starts_at_ms"] += 1
    elif change == "ends first":
        d["ends_at_ms"] = d["starts_at_ms"]
    elif change == "registration":
        d["registration_required"] = True
    elif change == "bad type":
        d["skus"][0]["price"] = "1"
    return orjson.dumps(d)


_event_bodies = st.sampled_from(
    ["same", "same", "same", "more stock", "less stock", "higher limit", "lower limit", "new sku", "drop sku",
     "move start", "ends first", "registration", "bad type"]
).map(_event_variant)
_junk = st.binary(max_size=24)


@st.composite
def requests(draw) -> bytes:
    method, target, kind = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:
        method = draw(_methods)
    if draw(st.integers(0, 4)):  # the identity the route wants
        if target.startswith(b"/api/v1/admin/") or (b"{order}" in target and draw(st.booleans())):
            identity = AUTH + b"\r\n"
        else:
            identity = b"X-User-Id: " + draw(_users) + b"\r\n"
    else:
        identity = draw(_odd_identity)
    headers = identity + b"".join(draw(_extras))
    if draw(st.integers(0, 15)) == 0:
        headers += draw(_rare_extras)
    if kind == "buy":
        body = draw(st.one_of(_valid_buy, _valid_buy, _valid_buy, _odd_buy, _junk))
    elif kind == "event":
        body = draw(st.one_of(_event_bodies, _junk))
    elif kind == "add":
        body = b'{"add":100}'
    else:
        body = draw(st.sampled_from([b"", b"", b"", b"{}"]))
    length = draw(st.sampled_from(["right"] * 30 + ["none", "short", "long", "huge"]))
    if length == "right" and body:
        headers += b"Content-Length: %d\r\n" % len(body)
    elif length == "short" and body:
        headers += b"Content-Length: %d\r\n" % (len(body) - 1)
    elif length == "long":
        headers += b"Content-Length: %d\r\n" % (len(body) + 2)
    elif length == "huge":
        headers += b"Content-Length: 99999999\r\n"
    head = method + b" " + target + b" " + draw(_versions) + b"\r\nHost: t\r\n" + headers
    return head + b"\r\n" + body


_proxy_headers = st.sampled_from([
    b"PROXY TCP4 198.51.100.7 10.0.0.1 51000 80\r\n",
    b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n",
    b"PROXY UNKNOWN\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc6\x33\x64\x09\x0a\x00\x00\x01\xc7\x38\x00\x50",
    b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
    b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n",
    b"",
])  # fmt: skip
_damage = st.sampled_from([b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"\x80", b"{", b"/",
                           b"0", b"9"])


@st.composite
def plans(draw) -> Plan:
    behind_proxy = draw(st.integers(0, 7)) == 0
    data = bytearray(draw(_proxy_headers) if behind_proxy else b"")
    data += b"".join(draw(st.lists(requests(), min_size=1, max_size=5)))
    if b"/pause " in data:  # a pause lasts for this connection only, if it gets that far
        data += req(b"POST", ADMIN_EV + b"/resume", AUTH + b"\r\n")
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2, 3]))):
        what = draw(st.sampled_from(["insert", "delete", "overwrite", "cut", "repeat"]))
        pos = draw(st.integers(0, len(data)))
        if what == "insert":
            data[pos:pos] = draw(_damage)
        elif what == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif what == "overwrite" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif what == "cut":
            del data[pos:]
        elif what == "repeat":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 40))]
    data = bytes(data)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    bounds = [0, *cuts, len(data)]
    return Plan(
        [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a],
        ending=draw(st.sampled_from(["eof", "eof", "wait", "reset"])),
        yield_between=draw(st.booleans()),
        patient=draw(st.integers(0, 3)) == 0,
        behind_proxy=behind_proxy,
    )


# --------------------------------------------------------------------------- regressions

IDEM = b"Idempotency-Key: r-1\r\n"
REGRESSIONS = {
    "every route once": Plan([b"".join(req(m, t, AUTH + b"\r\n" if b"admin" in t else
                                           b"X-User-Id: r1\r\n")
                                       for m, t, kind in ROUTES if kind is None)]),
    "buys pipelined, then close mid-stream": Plan(
        [buy(b"r2") + buy(b"r3") + req(b"GET", b"/livez", b"Connection: close\r\n") + buy(b"r4")]),
    "EOF while commits are owed": Plan([buy(b"r5") * 3], ending="eof"),
    "reset while commits are in flight": Plan([buy(b"r6", b"s1", b"2")], ending="reset"),
    "one byte at a time with loop turns": Plan([bytes([b]) for b in buy(b"r7")],
                                               yield_between=True),
    "over max_pipeline: reading pauses, then resumes":
        Plan([buy(b"r8") + b"GET /livez HTTP/1.1\r\n\r\n" * 69 + buy(b"r9")]),
    "idempotent replays, pipelined": Plan([buy(b"r10", extra=IDEM) * 3]),
    "idempotent replay, one by one": Plan([buy(b"r10", extra=IDEM)] * 2, patient=True),
    "same key, another body": Plan([buy(b"r10", b"s0", extra=IDEM)]),
    "413 behind owed answers": Plan([buy(b"r11") + req(b"POST", b"/x", b"Content-Length: 20000\r\n")]),
    "100-continue, body late": Plan([buy(b"r12", extra=b"Expect: 100-continue\r\n")[:-5],
                                     buy(b"r12")[-5:]], yield_between=True),
    "HEAD of a large document, HTTP/1.0 keep-alive":
        Plan([req(b"HEAD", b"/openapi.json") + req(b"GET", b"/livez", b"Connection: keep-alive\r\n",
                                                   version=b"HTTP/1.0") + req(b"GET", b"/readyz")]),
    "pause, buy, resume, buy": Plan([
        req(b"POST", ADMIN_EV + b"/pause", AUTH + b"\r\n") + buy(b"r13")
        + req(b"POST", ADMIN_EV + b"/resume", AUTH + b"\r\n") + buy(b"r13")], patient=True),
    "replace the event, read it back": Plan([
        req(b"PUT", ADMIN_EV, AUTH + b"\r\n", _event_variant("higher limit"))
        + req(b"GET", ADMIN_EV, AUTH + b"\r\n") + req(b"GET", b"/api/v1/events/" + EV)]),
    "sell s0 out": Plan([b"".join(buy(b"r%d" % i, b"s0") for i in range(20, 30))]),
    "order lookups": Plan([req(b"GET", b"/api/v1/orders/{order}", b"X-User-Id: r2\r\n")
                           + req(b"GET", b"/api/v1/orders/{order}", AUTH + b"\r\n")
                           + req(b"GET", b"/api/v1/orders/a.b", b"X-User-Id: r2\r\n")]),
    "PROXY v1 then a buy": Plan(
        [b"PROXY TCP4 198.51.100.7 10.0.0.1 51000 80\r\n" + buy(b"r14")], behind_proxy=True),
    "PROXY header missing": Plan([req(b"GET", b"/livez")], behind_proxy=True),
    "PROXY v2 in pieces": Plan([b"\r\n\r\n\x00\r\nQUIT\n\x21", b"\x11\x00\x0c\xc6\x33\x64\x09",
                                b"\x0a\x00\x00\x01\xc7\x38\x00\x50" + req(b"GET", b"/readyz")],
                               behind_proxy=True, yield_between=True),
    "Transfer-Encoding with Content-Length behind a buy": Plan([
        buy(b"r15") + req(b"POST", b"/", b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n")]),
    "CONNECT behind a view": Plan([req(b"GET", b"/api/v1/events/" + EV) + req(b"CONNECT", b"h:1")]),
    "an upgrade behind a buy": Plan([buy(b"r17") + req(b"GET", b"/", b"Connection: Upgrade\r\n"
                                                       b"Upgrade: websocket\r\n")]),
    "HTTP/2.0 behind a buy, one byte at a time": Plan(
        [bytes([b]) for b in buy(b"r18") + req(b"GET", b"/", version=b"HTTP/2.0")]),
    "a cut head, then EOF": Plan([buy(b"r16")[:30]]),
    "garbage": Plan([b"\x00\xff GET / HTTP/1.1\r\n\r\n"]),
}


@pytest.mark.parametrize("plan", REGRESSIONS.values(), ids=REGRESSIONS.keys())
def test_regression_inputs(path, plan):
    path.check(plan)
    path.check_store()


def test_the_answers_are_the_expected_ones(path):
    """A sanity check of the harness itself: a known stream, known answers."""
    out = path.check(Plan([buy(b"x1") + buy(b"x1", b"s9") + req(b"GET", b"/api/v1/events/" + EV)
                           + req(b"GET", b"/livez", b"Connection: close\r\n") + buy(b"x2")]))
    assert [r.status for r in out.responses] == [200, 404, 200, 200]
    assert out.dispatched == 4 and out.closed_by_server
    path.check_store()
    out = path.check(Plan([b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"]))
    assert [r.status for r in out.responses] == [411] and out.dispatched == 0


def test_the_purchase_path_leaves_no_reference_cycles(path):
    """Every purchase is freed by reference counting once answered, none waits for
    the cyclic GC: under load a young collection then found tens of thousands of them
    at a time, a pause of milliseconds in the latency tail. Sales, refusals from
    memory and from Redis, an idempotent replay, parked requests (s0 sells out).
    (The harness keeps the answers it checks, so those are not counted.)"""
    def alive() -> Counter:
        return Counter(type(o).__qualname__ for o in gc.get_objects()
                       if type(o).__qualname__ in ("Purchase", "_CommitReply"))

    gc.collect()
    gc.disable()
    try:
        before = alive()
        stream = b"".join(buy(b"cyc%d" % i, b"s1", b"2") for i in range(30))
        stream += buy(b"cyc0", b"s1", b"5")  # over the limit: Redis says no
        key = b"Idempotency-Key: cyc-key\r\n"
        stream += buy(b"cyc1", b"s1", b"1", key) + buy(b"cyc1", b"s1", b"1", key)
        stream += b"".join(buy(b"cycr%d" % i, b"s0") for i in range(6))
        out = path.check(Plan([stream]))
        assert Counter(r.status for r in out.responses)[200] >= 30
        after = alive()
    finally:
        gc.enable()
    leaked = after - before  # (objects of earlier inputs freed meanwhile do not count)
    assert not leaked, f"purchase objects only the cyclic GC would free: {leaked}"
    path.check_store()


def test_the_oracle_sees_a_500_a_hang_and_a_malformed_answer(path, monkeypatch):
    """The harness itself: a failing handler, an answer that never comes and a broken
    answer are all reported (then the real handler is back for the fuzz)."""
    real = path.gateway.handle
    never = path.loop.create_future()
    broken = {
        "/raise": RuntimeError("boom"),
        "/never": never,
        "/short": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
        "/500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    }

    def handle(request):
        answer = broken.get(request.path)
        if isinstance(answer, Exception):
            raise answer
        return real(request) if answer is None else answer

    monkeypatch.setattr(path.gateway, "handle", handle)
    monkeypatch.setattr(path, "timeout", 0.3)
    for target, message in [("/raise", "raised"), ("/never", "hang"), ("/short", "body of"),
                            ("/500", "status 500")]:
        with pytest.raises(PathFailure, match=message):
            path.check(Plan([req(b"GET", target.encode())], ending="wait"))
    never.set_result(b"")
    path.errors.records.clear()  # what the protocol logged about /raise
    path.loop_errors.clear()
    monkeypatch.undo()
    path.check(Plan([req(b"GET", b"/livez")]))


# --------------------------------------------------------------------------- regressions


def test_recreating_an_event_with_a_lower_limit_after_redis_lost_its_data(redis_server):
    # a harness of its own (database 10): this one flushes its Redis
    lost = RequestPath(redis_server.url.rsplit("/", 1)[0] + "/10", timeout=5.0).start()
    try:
        raised = event_definition()
        raised["skus"][0]["per_user_limit"] = 2  # raising a limit during the sale is allowed
        out = lost.check(Plan([req(b"PUT", ADMIN_EV, AUTH + b"\r\n", orjson.dumps(raised)),
                               buy(b"r1", b"s0", b"2")], patient=True))
        assert [r.status for r in out.responses] == [200, 200]  # r1 holds 2 units of s0

        async def lose_everything():
            await lost.gateway.conn.execute("FLUSHDB")  # Redis restarted empty, say

        lost.loop.run_until_complete(lose_everything())
        lost.acked.clear()  # r1's order went with the data, as the scenario says
        # the operator re-creates the event as it first was (limit 1): a new event for
        # Redis, so no replacement rule applies; the worker's ledger still has r1: 2
        again = orjson.dumps(event_definition())
        out = lost.check(Plan([req(b"PUT", ADMIN_EV, AUTH + b"\r\n", again)]))
        assert [r.status for r in out.responses] == [201]  # was: 500 internal, reload aborted
        out = lost.check(Plan([buy(b"r2", b"s0", b"1")], patient=True))
        assert [r.status for r in out.responses] == [200]  # and the new event sells
        figures = lost.check_store()  # sold <= stock, buyers == sold == stream, limits
        assert figures[EVENT]["s0"]["sold"] == 1
    finally:
        lost.close()


# --------------------------------------------------------------------------- fuzz


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plans())
def test_request_path_fuzz(path, plan):
    path.check(plan)
    path.check_store()


def test_stock_invariants_hold_in_redis(path):
    """Last: sold <= stock, sum(buyers) == sold == orders in the stream, every order
    acknowledged to a client stored, for every event the inputs created or changed."""
    figures = path.check_store()
    assert EVENT in figures
    assert path.acked, "no buy succeeded: the fuzz did not reach the purchase path"
