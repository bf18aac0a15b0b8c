"""Who gets in, as the gateway decides it: operator paths refused from the request
head, unguessable order ids, order look-ups rate-limited, a token's identity against
a forged X-User-Id, the token lifetime cap."""

from __future__ import annotations

import socket
import time

import pytest

from flashgate.auth import mint, sign
from tests.support import ADMIN, Gateway, check_invariants, event_body, new_id, now_ms

SECRET = "the-trust-tests-secret-of-32-bytes!"


@pytest.fixture(scope="module")
def signed_gw(redis_server, tmp_path_factory):
    """Signed buyer tokens (lifetime at most an hour), a trusted local proxy, limits off."""
    g = Gateway(redis_server.url, tmp_path_factory.mktemp("trust"), workers=2,
                extra=["--user-secret", SECRET, "--max-token-ttl", "3600",
                       "--trusted-proxies", "127.0.0.0/8"], shared=True).start()
    yield g
    g.close()


def _bearer(user: str, ttl_s: int = 60) -> dict:
    return {"Authorization": "Bearer " + mint(SECRET.encode(), user, ttl_s)}


def _raw(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes: (what came back, seconds it took)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out, time.monotonic() - t0


@pytest.mark.parametrize("size", [1_000_000, 50_000_000])
@pytest.mark.parametrize("auth", [b"", b"Authorization: Bearer \r\n",
                                  b"Authorization: Bearer nope\r\n"])
def test_an_operator_path_is_refused_from_the_head_before_its_body(gw, auth, size):
    """A body announced and never sent: 401 at once and the connection closed; the body
    is not waited for (the body timeout is 30 s), nor measured (50 MB: 401, not 413)."""
    head = (b"PUT /api/v1/admin/events/x HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n" % size + auth + b"\r\n")
    out, took = _raw(gw.port, head)
    assert out.startswith(b"HTTP/1.1 401 "), out[:200]
    assert b"Connection: close" in out and b'"unauthenticated"' in out
    assert took < 3.0


def test_the_operator_s_own_body_is_read(gw, r):
    event_id = new_id("head")
    body = event_body(stock=(3,))
    data = __import__("json").dumps(body).encode()
    head = (f"PUT /api/v1/admin/events/{event_id} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            f"Authorization: Bearer {ADMIN}\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    out, _ = _raw(gw.port, head + data)
    assert out.startswith(b"HTTP/1.1 201 "), out[:200]
    check_invariants(r, None, event_id, body, [])


def test_order_ids_cannot_be_counted_or_walked(gw, r):
    event_id = new_id("oid")
    body = event_body(stock=(60,), limits=(1,))
    gw.put_event(event_id, body)
    orders = [gw.buy(event_id, "s0", f"walker{i}")[1] for i in range(60)]
    ids = [o["order_id"] for o in orders]
    tails = [int(i.rsplit(".", 1)[1][-16:], 16) for i in ids]
    assert all(len(i.rsplit(".", 1)[1]) >= 16 + 12 for i in ids)  # boot id + 64 bits
    assert len(set(tails)) == len(tails)
    # no two orders of a worker are neighbours, however they were made
    assert not {t + 1 for t in tails} & set(tails)
    # guessing a neighbour's id finds nothing
    for i in ids[:5]:
        guess = i[:-1] + ("0" if i[-1] != "0" else "1")
        status, data, _ = gw.admin("GET", f"/api/v1/orders/{guess}")
        assert status == 404, data
    check_invariants(r, gw, event_id, body, orders)


def test_order_lookups_count_against_the_rate_limits(redis_server, tmp_path, r):
    g = Gateway(redis_server.url, tmp_path, workers=1,
                extra=["--user-rate", "0.5", "--user-burst", "3"]).start()
    try:
        event_id = new_id("look")
        body = event_body(stock=(5,))
        g.put_event(event_id, body)
        status, order, _ = g.buy(event_id, "s0", "looker")  # 1 of the burst of 3
        assert status == 200, order
        url = f"/api/v1/orders/{order['order_id']}"
        answers = [g.request("GET", url, headers=g.who("looker")) for _ in range(4)]
        statuses = [a[0] for a in answers]
        assert statuses[:2] == [200, 200] and 429 in statuses, statuses
        limited = answers[statuses.index(429)]
        assert limited[1]["error"] == "rate_limited" and int(limited[2]["Retry-After"]) >= 1
        # the operator is not a buyer: not limited
        assert all(g.admin("GET", url)[0] == 200 for _ in range(5))
        check_invariants(r, g, event_id, body, [order])
    finally:
        assert g.stop() == 0


def test_a_token_decides_who_buys_whatever_x_user_id_says(signed_gw, r):
    gw = signed_gw
    event_id = new_id("forge")
    body = event_body(stock=(5,), limits=(1,))
    gw.put_event(event_id, body)
    buy = f"/api/v1/events/{event_id}/buy"
    status, order, _ = gw.request("POST", buy, {"sku": "s0"},
                                  {**_bearer("alice"), "X-User-Id": "bob"})
    assert status == 200 and order["user_id"] == "alice", order
    # X-User-Id alone is no identity when tokens are in use
    status, data, _ = gw.request("POST", buy, {"sku": "s0"}, {"X-User-Id": "bob"})
    assert (status, data["error"]) == (401, "unauthenticated")
    # alice, whatever X-User-Id names, is at her limit
    status, data, _ = gw.request("POST", buy, {"sku": "s0"},
                                 {**_bearer("alice"), "X-User-Id": "carol"})
    assert (status, data["error"]) == (409, "limit_exceeded")
    # bob's look-up of alice's order, even naming alice in X-User-Id, finds nothing
    url = f"/api/v1/orders/{order['order_id']}"
    assert gw.request("GET", url, headers={**_bearer("bob"), "X-User-Id": "alice"})[0] == 404
    assert gw.request("GET", url, headers=_bearer("alice"))[1] == order
    check_invariants(r, gw, event_id, body, [order])


def test_a_token_living_longer_than_the_cap_is_refused(signed_gw, r):
    gw = signed_gw
    event_id = new_id("ttl")
    body = event_body(stock=(5,), limits=(1,))
    gw.put_event(event_id, body)
    buy = f"/api/v1/events/{event_id}/buy"
    too_long = {"Authorization": "Bearer " + sign(SECRET.encode(), "u1",
                                                  now_ms() + 3600_000 + 60_000)}
    assert gw.request("POST", buy, {"sku": "s0"}, too_long)[0] == 401
    year_2121 = {"Authorization": "Bearer " + sign(SECRET.encode(), "u1", 4_765_132_800_000)}
    assert gw.request("POST", buy, {"sku": "s0"}, year_2121)[0] == 401
    status, order, _ = gw.request("POST", buy, {"sku": "s0"}, _bearer("u1", 3500))
    assert status == 200, order
    check_invariants(r, gw, event_id, body, [order])
