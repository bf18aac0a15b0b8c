"""Every refusal of the API (API.md, the buy table and the operator endpoints), against
a real Redis and a 2-worker gateway.

Each refusal is checked twice: the documented status and error code, and that the
SKU's keys in Redis did not change (no unit, no order, no buyer, no idempotency
record). Tests that sell end with the invariant check. The Idempotency-Key cases run
in both identity modes (``any_gw``: dev, and the production configuration); the
cases of dev identity itself (X-User-Id) only in dev."""

from __future__ import annotations

import json
import socket
import time
from contextlib import contextmanager

import pytest

from flashgate.auth import mint, sign
from tests.support import (
    ADMIN,
    Gateway,
    check_invariants,
    event_body,
    new_id,
    now_ms,
)

SECRET = b"s3cret-of-the-tests-32-bytes-long"
MAX_BODY = 16 * 1024


# -- helpers ----------------------------------------------------------------------------


def sku_prefix(event_id: str, sku_id: str) -> str:
    return "fg:{" + event_id + ":" + sku_id + "}:"


def snapshot(r, event_id: str, body: dict) -> dict:
    """The Redis state of every SKU of the event: its definition, stock and the four
    sale keys (sold, buyers, orders stream, orders_n), plus the names of every key
    that shares the SKU's prefix (orders, idempotency records)."""
    snap = {}
    for sku in body["skus"]:
        p = sku_prefix(event_id, sku["id"])
        snap[sku["id"]] = {
            "meta": r.hgetall(p + "meta"),
            "stock": r.get(p + "stock"),
            "sold": r.get(p + "sold"),
            "buyers": r.hgetall(p + "buyers"),
            "orders": r.xlen(p + "orders"),
            "orders_n": r.get(p + "orders_n"),
            "keys": sorted(r.scan_iter(match=p + "*", count=1000)),
        }
    return snap


@contextmanager
def unchanged(r, event_id: str, body: dict):
    """Asserts that nothing the block does changes the event's SKUs in Redis."""
    before = snapshot(r, event_id, body)
    yield before
    after = snapshot(r, event_id, body)
    assert after == before, f"Redis changed:\nbefore={before}\nafter={after}"


def assert_error(resp, status: int, code: str) -> None:
    got_status, data, _ = resp
    assert (got_status, data.get("error") if isinstance(data, dict) else data) == (status, code), resp
    assert isinstance(data.get("message"), str), resp


def buy_path(event_id: str) -> str:
    return f"/api/v1/events/{event_id}/buy"


def buy_raw(gw, event_id: str, raw: bytes, user: str | None = "u1", headers=None):
    h = gw.who(user) if user is not None else {}
    h.update(headers or {})
    return gw.request("POST", buy_path(event_id), headers=h, raw_body=raw)


def buy_ok(gw, event_id: str, sku: str, user: str, qty: int = 1, headers=None) -> dict:
    status, data, _ = gw.buy(event_id, sku, user, qty, headers)
    assert status == 200, (status, data)
    assert (data["event_id"], data["sku"], data["user_id"], data["qty"]) == (event_id, sku, user, qty)
    return data


def on_every_worker(check, what: str, timeout: float = 5.0, n: int = 24) -> None:
    """Wait until ``check()`` (one request on a fresh connection) holds ``n`` times in a
    row: the kernel spreads connections over the workers at random, so 24 in a row
    have all met the same worker with a chance of 1 in 8 million (2 workers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(check() for _ in range(n)):
            return
        time.sleep(0.02)
    raise AssertionError(f"not on every worker: {what}")


def wait_event(gw, event_id: str) -> None:
    on_every_worker(lambda: gw.request("GET", f"/api/v1/events/{event_id}")[0] == 200,
                    f"event {event_id} visible")


def wait_state(gw, event_id: str, state: str) -> None:
    on_every_worker(
        lambda: gw.request("GET", f"/api/v1/events/{event_id}")[1]["state"] == state,
        f"event {event_id} {state}")


def new_event(gw, **kw) -> tuple[str, dict]:
    """A new event (default: live, one SKU s0 of stock 5, limit 1), known to every worker."""
    event_id = new_id("err")
    body = event_body(**kw)
    gw.put_event(event_id, body)
    wait_event(gw, event_id)
    return event_id, body


def admin_headers(token: str = ADMIN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict, object]:
    """Send raw bytes on a new connection and read until the server closes it (a
    timeout here means the connection stayed open). Returns (status, headers, json)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open; got {chunks!r}") from None
    raw = b"".join(chunks)
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", len(payload)))
    assert len(payload) == length, f"one answer then close expected, got {raw!r}"
    return status, headers, json.loads(payload) if payload else None


# -- 400 bad_request: the body ----------------------------------------------------------

BAD_BODIES = {
    "not-json": b"{sku: s0}",
    "truncated-json": b'{"sku": "s0", "qty": 1',
    "trailing-garbage": b'{"sku": "s0"} x',
    "not-utf8": b'{"sku": "s0\xff"}',
    "empty": b"",
    "whitespace": b"  \r\n ",
    "list": b'[{"sku": "s0", "qty": 1}]',
    "string": b'"s0"',
    "number": b"1",
    "null": b"null",
    "true": b"true",
    "missing-sku": b'{"qty": 1}',
    "sku-null": b'{"sku": null}',
    "sku-number": b'{"sku": 0}',
    "sku-list": b'{"sku": ["s0"]}',
    "sku-object": b'{"sku": {"id": "s0"}}',
    "sku-bool": b'{"sku": true}',
    "qty-0": b'{"sku": "s0", "qty": 0}',
    "qty-negative": b'{"sku": "s0", "qty": -1}',
    "qty-float": b'{"sku": "s0", "qty": 1.5}',
    "qty-float-integral": b'{"sku": "s0", "qty": 1.0}',
    "qty-string": b'{"sku": "s0", "qty": "1"}',
    "qty-true": b'{"sku": "s0", "qty": true}',
    "qty-null": b'{"sku": "s0", "qty": null}',
    "qty-list": b'{"sku": "s0", "qty": [1]}',
}


@pytest.fixture(scope="module")
def shared_event(gw):
    """A live event (SKU s0: stock 5, limit 1) for the cases that must never sell."""
    return new_event(gw)


@pytest.fixture(scope="module")
def _events_of_gateways():
    return {}


@pytest.fixture
def any_shared_event(any_gw, _events_of_gateways):
    """``shared_event`` on the gateway of ``any_gw`` (one event per gateway)."""
    if any_gw.port not in _events_of_gateways:
        _events_of_gateways[any_gw.port] = new_event(any_gw)
    return _events_of_gateways[any_gw.port]


@pytest.mark.parametrize("raw", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_body_is_400(gw, r, shared_event, raw):
    event_id, body = shared_event
    with unchanged(r, event_id, body):
        assert_error(buy_raw(gw, event_id, raw, user=new_id("u")), 400, "bad_request")


# -- 400 bad_request: the Idempotency-Key -----------------------------------------------

BAD_KEYS = {
    "too-long-256": "k" * 256,
    "empty": "",
    "space-inside": "a b",
    "tab-inside": "a\tb",
    "non-ascii": "clé",
    "control-char": "a\x7fb",
}


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_bad_idempotency_key_is_400(any_gw, r, any_shared_event, key):
    gw = any_gw
    event_id, body = any_shared_event
    with unchanged(r, event_id, body):
        resp = gw.buy(event_id, "s0", new_id("u"), headers={"Idempotency-Key": key})
        assert_error(resp, 400, "bad_request")


def test_limits_of_the_input_are_accepted(any_gw, r):
    """The edges that are still valid: a 64-char user id, a 255-char key of every
    visible ASCII character, a body of exactly 16 KiB (unknown fields ignored)."""
    gw = any_gw
    event_id, body = new_event(gw, stock=(5,))
    acked = [buy_ok(gw, event_id, "s0", "u" * 64)]
    visible = "".join(chr(c) for c in range(0x21, 0x7F))
    key = (visible * 3)[:255]
    acked.append(buy_ok(gw, event_id, "s0", "u-key", headers={"Idempotency-Key": key}))
    raw = json.dumps({"sku": "s0", "qty": 1, "pad": ""}).encode()
    raw = raw.replace(b'"pad": ""', b'"pad": "' + b"x" * (MAX_BODY - len(raw)) + b'"')
    assert len(raw) == MAX_BODY
    status, data, _ = buy_raw(gw, event_id, raw, user="u-big")
    assert status == 200, (status, data)
    acked.append(data)
    check_invariants(r, gw, event_id, body, acked)


# -- 413: body too large -----------------------------------------------------------------


def test_oversized_body_is_413_and_closes(gw, r, shared_event):
    event_id, body = shared_event
    payload = b'{"sku": "s0", "qty": 1, "pad": "' + b"x" * MAX_BODY + b'"}'
    who = "".join(f"{k}: {v}\r\n" for k, v in gw.who("u-big").items())
    request = (f"POST {buy_path(event_id)} HTTP/1.1\r\nHost: t\r\n{who}"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
               ).encode() + payload
    with unchanged(r, event_id, body):
        status, headers, data = raw_exchange(gw.port, request)
    assert status == 413, (status, data)
    assert isinstance(data["error"], str) and isinstance(data["message"], str)
    assert headers.get("connection", "").lower() == "close"


# -- malformed HTTP ----------------------------------------------------------------------

GARBAGE = {
    "garbage": b"\x00\x01\x02 this is not http\r\n\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),
    "bad-version": b"GET /livez HTTP/7.3\r\nHost: t\r\n\r\n",
    "bad-content-length": b"POST /livez HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n",
    "two-content-lengths": (b"POST /livez HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
                            b"Content-Length: 2\r\n\r\nab"),
    "bad-header-line": b"GET /livez HTTP/1.1\r\nHost t\r\nno colon here\r\n\r\n",
}


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_malformed_http_is_400_and_closes(gw, data):
    status, headers, body = raw_exchange(gw.port, data)
    assert (status, body["error"]) == (400, "bad_request"), (status, body)
    assert headers.get("connection", "").lower() == "close"
    # the worker is fine: the next clients are served
    for _ in range(4):
        assert gw.request("GET", "/livez")[0] == 200


# -- 401 unauthenticated (dev mode) --------------------------------------------------------

BAD_USERS = {
    "no-header": None,
    "empty": "",
    "space": "u 1",
    "bad-char": "u!1",
    "dot": "u.1",
    "non-ascii": "ü1",
    "65-chars": "u" * 65,
}


@pytest.mark.parametrize("user", BAD_USERS.values(), ids=BAD_USERS.keys())
def test_bad_dev_identity_is_401(gw, r, shared_event, user):
    """Dev identity itself (X-User-Id): dev mode only."""
    event_id, body = shared_event
    raw = json.dumps({"sku": "s0", "qty": 1}).encode()
    with unchanged(r, event_id, body):
        assert_error(buy_raw(gw, event_id, raw, user=user), 401, "unauthenticated")


# -- 401 unauthenticated (user secret configured) ------------------------------------------


@pytest.fixture(scope="module")
def secure_gw(redis_server, tmp_path_factory):
    g = Gateway(redis_server.url, tmp_path_factory.mktemp("gw-secret"),
                extra=["--user-secret", SECRET.decode()], shared=True)
    g.start()
    yield g
    g.close()


def _flip_last(token: str) -> str:
    return token[:-1] + ("0" if token[-1] != "0" else "1")


BAD_TOKENS = {
    "x-user-id-alone": lambda: {"X-User-Id": "u1"},
    "bad-signature": lambda: {"Authorization": "Bearer " + _flip_last(mint(SECRET, "u1", 60))},
    "other-secret": lambda: {"Authorization": "Bearer " + mint(b"other", "u1", 60)},
    "expired": lambda: {"Authorization": "Bearer " + sign(SECRET, "u1", now_ms() - 1)},
    "user-swapped": lambda: {
        "Authorization": "Bearer " + mint(SECRET, "u1", 60).replace("u1.", "u2.", 1)},
    "not-a-token": lambda: {"Authorization": "Bearer u1"},
    "no-bearer": lambda: {"Authorization": mint(SECRET, "u1", 60)},
    "empty-bearer": lambda: {"Authorization": "Bearer "},
}


@pytest.mark.parametrize("make_headers", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_bad_token_is_401(secure_gw, r, make_headers):
    event_id, body = new_event(secure_gw)
    raw = json.dumps({"sku": "s0", "qty": 1}).encode()
    with unchanged(r, event_id, body):
        resp = secure_gw.request("POST", buy_path(event_id), headers=make_headers(),
                                 raw_body=raw)
        assert_error(resp, 401, "unauthenticated")


def test_valid_token_buys(secure_gw, r):
    event_id, body = new_event(secure_gw)
    headers = {"Authorization": "Bearer " + mint(SECRET, "u1", 60)}
    status, data, _ = secure_gw.request("POST", buy_path(event_id), {"sku": "s0"}, headers)
    assert status == 200, (status, data)
    assert (data["user_id"], data["qty"], data["status"]) == ("u1", 1, "reserved")
    check_invariants(r, secure_gw, event_id, body, [data])


# -- 404 not_found -------------------------------------------------------------------------


def test_unknown_event_is_404(gw):
    assert_error(gw.buy(new_id("nope"), "s0", "u1"), 404, "not_found")


def test_unknown_sku_is_404(gw, r, shared_event):
    event_id, body = shared_event
    with unchanged(r, event_id, body):
        for sku in ("s9", "", "S0", "s0 "):
            assert_error(gw.buy(event_id, sku, "u1"), 404, "not_found")


@pytest.mark.parametrize("method,path", [
    ("GET", "/nope"),
    ("GET", "/api/v1/nope"),
    ("POST", "/api/v1/events/{ev}/nope"),
    ("POST", "/api/v1/events/{ev}/buy/more"),
    ("POST", "/api/v1/events//buy"),
    ("GET", "/api/v1/orders/"),
])
def test_unknown_path_is_404(gw, r, shared_event, method, path):
    event_id, body = shared_event
    with unchanged(r, event_id, body):
        resp = gw.request(method, path.format(ev=event_id), {"sku": "s0"}, gw.who("u1"))
        assert_error(resp, 404, "not_found")


@pytest.mark.parametrize("order_id", ["nope", "a.b.c", "{ev}.s0.000000000000ff"])
@pytest.mark.parametrize("who", ["buyer", "admin"])
def test_unknown_order_is_404(gw, shared_event, order_id, who):
    headers = gw.who("u1") if who == "buyer" else admin_headers()
    path = "/api/v1/orders/" + order_id.format(ev=shared_event[0])
    assert_error(gw.request("GET", path, headers=headers), 404, "not_found")


def test_order_without_identity_is_401(gw, shared_event):
    path = "/api/v1/orders/" + shared_event[0] + ".s0.000000000000ff"
    assert_error(gw.request("GET", path), 401, "unauthenticated")


def test_order_is_visible_to_its_owner_and_the_operator_only(gw, r):
    event_id, body = new_event(gw)
    order = buy_ok(gw, event_id, "s0", "owner")
    path = "/api/v1/orders/" + order["order_id"]
    for _ in range(4):  # over both workers
        assert_error(gw.request("GET", path, headers=gw.who("someone-else")),
                     404, "not_found")
        for headers in (gw.who("owner"), admin_headers()):
            status, data, _ = gw.request("GET", path, headers=headers)
            assert status == 200, (status, data)
            assert data == order  # the very object the buy answered, field for field
    # the export's line is the order with its buyer's rewards (the event has none)
    assert [o for o in gw.orders_export(event_id)
            if o["order_id"] == order["order_id"]] == [{**order, "rewards": []}]
    check_invariants(r, gw, event_id, body, [order])


# -- 405 method_not_allowed -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_on_buy_is_405(gw, r, shared_event, method):
    event_id, body = shared_event
    with unchanged(r, event_id, body):
        resp = gw.request(method, buy_path(event_id), headers=gw.who("u1"))
        assert_error(resp, 405, "method_not_allowed")


# -- 409: the sale window -------------------------------------------------------------------


def test_before_the_start_is_not_started(gw, r):
    t = now_ms()
    event_id, body = new_event(gw, starts=t + 60_000, ends=t + 120_000)
    with unchanged(r, event_id, body):
        for i in range(4):
            assert_error(gw.buy(event_id, "s0", f"u{i}"), 409, "not_started")


def test_after_the_end_is_ended(gw, r):
    t = now_ms()
    event_id, body = new_event(gw, starts=t - 120_000, ends=t - 60_000)
    with unchanged(r, event_id, body):
        for i in range(4):
            assert_error(gw.buy(event_id, "s0", f"u{i}"), 409, "ended")


def test_the_end_closes_the_sale(gw, r):
    """An event that ends 1.5 s after its creation: a buy before the end sells, every
    buy after it is 409 ended and sells nothing."""
    ends = now_ms() + 1500
    event_id, body = new_event(gw, stock=(5,), limits=[5], ends=ends)
    assert now_ms() < ends - 200, "the event was too slow to create"
    acked = [buy_ok(gw, event_id, "s0", "early")]
    gw.wait_state(event_id, "ended")  # every worker's clock has passed the end
    with unchanged(r, event_id, body) as before:
        for i in range(6):
            assert_error(gw.buy(event_id, "s0", f"late{i}"), 409, "ended")
        assert_error(gw.buy(event_id, "s0", "early"), 409, "ended")
    assert before["s0"]["sold"] == b"1"
    check_invariants(r, gw, event_id, body, acked)


def test_pause_and_resume(gw, r):
    event_id, body = new_event(gw, stock=(5,))
    base = f"/api/v1/admin/events/{event_id}"
    status, data, _ = gw.admin("POST", base + "/pause")
    assert status == 200, (status, data)
    # the kill switch holds at once, on every worker
    with unchanged(r, event_id, body):
        for i in range(6):
            assert_error(gw.buy(event_id, "s0", f"u{i}"), 409, "paused")
    wait_state(gw, event_id, "paused")
    with unchanged(r, event_id, body):
        for i in range(6):
            assert_error(gw.buy(event_id, "s0", f"u{i}"), 409, "paused")
    status, data, _ = gw.admin("POST", base + "/resume")
    assert status == 200, (status, data)
    wait_state(gw, event_id, "live")
    acked = [buy_ok(gw, event_id, "s0", f"after{i}") for i in range(4)]
    check_invariants(r, gw, event_id, body, acked)


# -- 409: stock and limits --------------------------------------------------------------------


def test_sold_out(gw, r):
    event_id, body = new_event(gw, stock=(2, 0), limits=[5, 5])
    acked = [buy_ok(gw, event_id, "s0", "first", qty=2)]
    with unchanged(r, event_id, body):
        for i in range(4):
            assert_error(gw.buy(event_id, "s0", f"late{i}"), 409, "sold_out")
        assert_error(gw.buy(event_id, "s1", "u1"), 409, "sold_out")  # stock 0
    check_invariants(r, gw, event_id, body, acked)


def test_more_than_is_left_is_sold_out(gw, r):
    event_id, body = new_event(gw, stock=(3,), limits=[10])
    with unchanged(r, event_id, body):
        for _ in range(4):
            assert_error(gw.buy(event_id, "s0", "greedy", qty=4), 409, "sold_out")
    acked = [buy_ok(gw, event_id, "s0", "greedy", qty=3)]
    check_invariants(r, gw, event_id, body, acked)


def test_limit_exceeded(any_gw, r):
    gw = any_gw
    u1, u2 = new_id("u1"), new_id("u2")  # (the shared prod gateway limits each user)
    event_id, body = new_event(gw, stock=(10,), limits=[2])
    with unchanged(r, event_id, body):
        assert_error(gw.buy(event_id, "s0", u1, qty=3), 409, "limit_exceeded")
    acked = [buy_ok(gw, event_id, "s0", u1, qty=2)]
    with unchanged(r, event_id, body):
        for _ in range(4):  # on both workers
            assert_error(gw.buy(event_id, "s0", u1), 409, "limit_exceeded")
        # an Idempotency-Key does not get around the limit
        resp = gw.buy(event_id, "s0", u1, headers={"Idempotency-Key": "fresh-key"})
        assert_error(resp, 409, "limit_exceeded")
    acked.append(buy_ok(gw, event_id, "s0", u2))
    check_invariants(r, gw, event_id, body, acked)


@pytest.mark.parametrize("qty", [2, 10_001, 2**40])
def test_large_qty_is_limit_exceeded(gw, r, shared_event, qty):
    event_id, body = shared_event
    with unchanged(r, event_id, body):
        assert_error(gw.buy(event_id, "s0", "u1", qty=qty), 409, "limit_exceeded")


# -- 409 not_registered -----------------------------------------------------------------------


def test_registration_required(gw, r):
    event_id, body = new_event(gw, stock=(5,), registration_required=True)
    register = f"/api/v1/events/{event_id}/register"
    with unchanged(r, event_id, body):
        for _ in range(4):
            assert_error(gw.buy(event_id, "s0", "fan"), 409, "not_registered")
        assert_error(gw.request("POST", register), 401, "unauthenticated")
    assert_error(gw.request("POST", f"/api/v1/events/{new_id('nope')}/register",
                            headers=gw.who("fan")), 404, "not_found")
    for _ in range(2):  # repeating is harmless
        status, data, _ = gw.request("POST", register, headers=gw.who("fan"))
        assert (status, data) == (200, {"registered": True})
    acked = [buy_ok(gw, event_id, "s0", "fan")]
    with unchanged(r, event_id, body):
        assert_error(gw.buy(event_id, "s0", "stranger"), 409, "not_registered")
    check_invariants(r, gw, event_id, body, acked)


# -- 422 idempotency_mismatch ------------------------------------------------------------------


def test_same_key_with_another_qty_is_422(any_gw, r):
    gw = any_gw
    u1 = new_id("u1")  # (the shared prod gateway limits each user)
    event_id, body = new_event(gw, stock=(10,), limits=[5])
    key = {"Idempotency-Key": "k-" + new_id()}
    first = buy_ok(gw, event_id, "s0", u1, headers=key)
    with unchanged(r, event_id, body):
        for _ in range(4):
            assert_error(gw.buy(event_id, "s0", u1, qty=2, headers=key), 422,
                         "idempotency_mismatch")
        # the same body again is a replay: the same answer, no further stock
        status, data, _ = gw.buy(event_id, "s0", u1, headers=key)
        assert (status, data) == (200, first)
    check_invariants(r, gw, event_id, body, [first])


def test_same_key_with_another_sku_is_422(any_gw, r):
    gw = any_gw
    u1 = new_id("u1")  # (the shared prod gateway limits each user)
    event_id, body = new_event(gw, stock=(5, 5))
    key = {"Idempotency-Key": "k-" + new_id()}
    first = buy_ok(gw, event_id, "s0", u1, headers=key)
    with unchanged(r, event_id, body):
        assert_error(gw.buy(event_id, "s1", u1, headers=key), 422, "idempotency_mismatch")
    check_invariants(r, gw, event_id, body, [first])


def test_replay_of_the_last_unit_is_not_sold_out(any_gw, r):
    """A replay is not a new purchase: once the SKU is sold out, repeating the request
    that took the last unit still returns its 200."""
    gw = any_gw
    u1 = new_id("u1")  # (the shared prod gateway limits each user)
    event_id, body = new_event(gw, stock=(1,))
    key = {"Idempotency-Key": "k-" + new_id()}
    first = buy_ok(gw, event_id, "s0", u1, headers=key)
    with unchanged(r, event_id, body):
        for _ in range(4):
            status, data, _ = gw.buy(event_id, "s0", u1, headers=key)
            assert (status, data) == (200, first)
    check_invariants(r, gw, event_id, body, [first])


# -- operator: authentication -------------------------------------------------------------------

ADMIN_CALLS = [
    ("PUT", "/api/v1/admin/events/{ev}"),
    ("PUT", "/api/v1/admin/events/{new}"),
    ("GET", "/api/v1/admin/events/{ev}"),
    ("POST", "/api/v1/admin/events/{ev}/pause"),
    ("POST", "/api/v1/admin/events/{ev}/resume"),
    ("POST", "/api/v1/admin/events/{ev}/skus/s0/stock"),
    ("GET", "/api/v1/admin/events/{ev}/stats"),
    ("GET", "/api/v1/admin/events/{ev}/orders"),
    ("GET", "/api/v1/admin/events/{ev}/report"),
    ("POST", "/api/v1/admin/orders/{order}/paid"),
    ("POST", "/api/v1/admin/orders/{order}/cancel"),
]
BAD_ADMIN_AUTH = {
    "none": {},
    "wrong-token": {"Authorization": "Bearer wrong"},
    "token-prefix": {"Authorization": "Bearer " + ADMIN[:-1]},
    "token-longer": {"Authorization": "Bearer " + ADMIN + "x"},
    "no-bearer": {"Authorization": ADMIN},
    "basic": {"Authorization": "Basic " + ADMIN},
    "buyer": {"X-User-Id": "u1"},
}


@pytest.fixture(scope="module")
def sold_event(gw, r):
    """A live event with one order (owner "owner"), for the operator-auth cases."""
    event_id, body = new_event(gw, stock=(5,))
    order = buy_ok(gw, event_id, "s0", "owner")
    yield event_id, body, order
    check_invariants(r, gw, event_id, body, [order])


@pytest.mark.parametrize("headers", BAD_ADMIN_AUTH.values(), ids=BAD_ADMIN_AUTH.keys())
@pytest.mark.parametrize("method,path", ADMIN_CALLS, ids=[f"{m} {p}" for m, p in ADMIN_CALLS])
def test_admin_without_the_token_is_401(gw, r, sold_event, method, path, headers):
    event_id, body, order = sold_event
    new = new_id("never")
    path = path.format(ev=event_id, new=new, order=order["order_id"])
    payload = {"add": 100} if path.endswith("/stock") else event_body(stock=(99,))
    definition = gw.admin("GET", f"/api/v1/admin/events/{event_id}")
    with unchanged(r, event_id, body):
        assert_error(gw.request(method, path, payload, headers), 401, "unauthenticated")
    assert gw.admin("GET", f"/api/v1/admin/events/{event_id}")[:2] == definition[:2]
    assert gw.request("GET", f"/api/v1/events/{event_id}")[1]["state"] == "live"
    assert_error(gw.request("GET", f"/api/v1/events/{new}"), 404, "not_found")
    status, data, _ = gw.request("GET", "/api/v1/orders/" + order["order_id"],
                                 headers=gw.who("owner"))
    assert (status, data["status"]) == (200, "reserved")


# -- operator: event definitions ------------------------------------------------------------------


def _set(path: str, value):
    """A mutation of an event body: set ``path`` ("skus.0.stock") to ``value``."""
    def apply(body):
        *parents, last = path.split(".")
        node = body
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return body
    return apply


def _ends_at_start(body):
    body["ends_at_ms"] = body["starts_at_ms"]
    return body


def _ends_before_start(body):
    body["ends_at_ms"] = body["starts_at_ms"] - 1
    return body


def _duplicate_sku(body):
    body["skus"].append(dict(body["skus"][0]))
    return body


def _drop(key):
    def apply(body):
        del body[key]
        return body
    return apply


BAD_DEFINITIONS = {
    "ends-equal-starts": _ends_at_start,
    "ends-before-starts": _ends_before_start,
    "stock-negative": _set("skus.0.stock", -1),
    "limit-0": _set("skus.0.per_user_limit", 0),
    "limit-negative": _set("skus.0.per_user_limit", -1),
    "duplicate-sku": _duplicate_sku,
    "starts-string": _set("starts_at_ms", "1764000000000"),
    "ends-float": _set("ends_at_ms", 1.5e12),
    "starts-missing": _drop("starts_at_ms"),
    "skus-missing": _drop("skus"),
    "skus-empty": _set("skus", []),
    "skus-object": _set("skus", {"s0": {"stock": 1}}),
    "sku-not-object": _set("skus.0", "s0"),
    "sku-id-missing": lambda b: (b["skus"][0].pop("id"), b)[1],
    "sku-id-number": _set("skus.0.id", 7),
    "sku-id-bad-chars": _set("skus.0.id", "a.b"),
    "stock-string": _set("skus.0.stock", "5"),
    "stock-float": _set("skus.0.stock", 5.5),
    "stock-bool": _set("skus.0.stock", True),
    "limit-string": _set("skus.0.per_user_limit", "1"),
    "price-negative": _set("skus.0.price", -1),
    "price-string": _set("skus.0.price", "9.90"),
    "name-number": _set("name", 5),
    "registration-string": _set("registration_required", "yes"),
    "payment-timeout-0": _set("payment_timeout_s", 0),
    "tiers-object": _set("skus.0.tiers", {"units": 1, "price": 1}),
    "tier-units-0": _set("skus.0.tiers", [{"units": 0, "price": 1}]),
    "milestones-bad": _set("milestones", [{"sold": "ten", "reward": "x"}]),
    "preheat-after-start": lambda b: {**b, "preheat_at_ms": b["starts_at_ms"] + 1},
}
BAD_RAW_DEFINITIONS = {
    "not-json": b"{name: x}",
    "empty": b"",
    "list": b"[]",
    "string": b'"event"',
    "null": b"null",
}


def _put(gw, event_id: str, *, body=None, raw: bytes | None = None):
    return gw.request("PUT", f"/api/v1/admin/events/{event_id}", body, admin_headers(),
                      raw_body=raw)


def assert_definition_kept(gw, r, event_id: str, body: dict | None, resp) -> None:
    """An invalid PUT: 400 bad_request, and the event (if any) is as it was."""
    assert_error(resp, 400, "bad_request")
    if body is None:
        for _ in range(4):
            assert_error(gw.request("GET", f"/api/v1/events/{event_id}"), 404, "not_found")
        assert not list(r.scan_iter(match="fg:{" + event_id + ":*"))
        assert not r.exists("fg:event:" + event_id)


@pytest.mark.parametrize("mutate", BAD_DEFINITIONS.values(), ids=BAD_DEFINITIONS.keys())
@pytest.mark.parametrize("existing", [False, True], ids=["create", "replace"])
def test_invalid_definition_is_400(gw, r, mutate, existing):
    event_id = new_id("def")
    body = event_body(stock=(5,))
    if existing:
        gw.put_event(event_id, body)
        wait_event(gw, event_id)
        before = gw.admin("GET", f"/api/v1/admin/events/{event_id}")
        with unchanged(r, event_id, body):
            resp = _put(gw, event_id, body=mutate(json.loads(json.dumps(body))))
        assert_definition_kept(gw, r, event_id, body, resp)
        assert gw.admin("GET", f"/api/v1/admin/events/{event_id}")[:2] == before[:2]
    else:
        resp = _put(gw, event_id, body=mutate(json.loads(json.dumps(body))))
        assert_definition_kept(gw, r, event_id, None, resp)


@pytest.mark.parametrize("raw", BAD_RAW_DEFINITIONS.values(), ids=BAD_RAW_DEFINITIONS.keys())
def test_definition_not_a_json_object_is_400(gw, r, raw):
    event_id = new_id("def")
    assert_definition_kept(gw, r, event_id, None, _put(gw, event_id, raw=raw))


@pytest.mark.parametrize("event_id", ["bad!id", "e" * 65, "a.b"])
def test_invalid_event_id_is_400(gw, r, event_id):
    resp = _put(gw, event_id, body=event_body())
    assert_definition_kept(gw, r, event_id, None, resp)


def test_create_is_201_and_replace_is_200(gw, r):
    event_id = new_id("def")
    body = event_body(stock=(5,), starts=now_ms() + 60_000, ends=now_ms() + 120_000)
    status, data, _ = _put(gw, event_id, body=body)
    assert (status, data["id"]) == (201, event_id), (status, data)
    wait_event(gw, event_id)
    body["skus"][0]["stock"] = 7
    body["name"] = "renamed"
    status, data, _ = _put(gw, event_id, body=body)
    assert (status, data["name"], data["skus"][0]["stock"]) == (200, "renamed", 7), (status, data)
    status, data, _ = _put(gw, event_id, body=body)
    assert status == 200, (status, data)


def _lower_stock(body):
    body["skus"][0]["stock"] = 1
    return body


def _move_start_later(body):
    body["starts_at_ms"] += 500
    return body


def _move_start_earlier(body):
    body["starts_at_ms"] -= 500
    return body


def _remove_sku(body):
    body["skus"] = body["skus"][:1]
    return body


CONFLICTS = {
    "stock-below-sold": _lower_stock,
    "start-later": _move_start_later,
    "start-earlier": _move_start_earlier,
    "sku-removed": _remove_sku,
}


@pytest.mark.parametrize("mutate", CONFLICTS.values(), ids=CONFLICTS.keys())
def test_breaking_change_after_the_start_is_409(gw, r, mutate):
    event_id, body = new_event(gw, stock=(5, 5), limits=[5, 5])
    acked = [buy_ok(gw, event_id, "s0", "u1", qty=2), buy_ok(gw, event_id, "s1", "u1")]
    definition = gw.admin("GET", f"/api/v1/admin/events/{event_id}")
    with unchanged(r, event_id, body):
        resp = _put(gw, event_id, body=mutate(json.loads(json.dumps(body))))
        assert_error(resp, 409, "conflict")
    for _ in range(4):
        assert gw.admin("GET", f"/api/v1/admin/events/{event_id}")[:2] == definition[:2]
    # the sale goes on as defined
    acked.append(buy_ok(gw, event_id, "s1", "u2"))
    check_invariants(r, gw, event_id, body, acked)


def test_stock_down_to_units_sold_is_allowed(gw, r):
    event_id, body = new_event(gw, stock=(5,), limits=[5])
    acked = [buy_ok(gw, event_id, "s0", "u1", qty=2)]
    body["skus"][0]["stock"] = 2
    status, data, _ = _put(gw, event_id, body=body)
    assert status == 200, (status, data)
    wait_state(gw, event_id, "sold_out")
    with unchanged(r, event_id, body):
        for i in range(4):
            assert_error(gw.buy(event_id, "s0", f"late{i}"), 409, "sold_out")
    check_invariants(r, gw, event_id, body, acked)
