"""The route table as a client meets it (404, 405 + Allow, the operator's 401), and
read-your-writes: a definition change answered 2xx is served by every worker."""

from __future__ import annotations

import asyncio

import pytest

from flashgate.gateway.routes import ADMIN_PREFIX, ROUTES, Route
from tests.support import ADMIN, Gateway, check_invariants, event_body, new_id, read_response

ALL_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


@pytest.fixture(scope="module")
def live(gw):
    event_id = new_id("rt")
    body = event_body(stock=(100,), limits=(5,))
    gw.put_event(event_id, body)
    status, order, _ = gw.buy(event_id, "s0", "rt-buyer")
    assert status == 200, order
    return event_id, body, order


def _url(route: Route, event_id: str, order_id: str) -> str:
    return (route.pattern.replace("{event_id}", event_id).replace("{order_id}", order_id)
            .replace("{sku}", "s0"))


def _allowed(pattern: str) -> set[str]:
    methods = {r.method for r in ROUTES if r.pattern == pattern and r.handler is not None}
    return methods | ({"HEAD"} if "GET" in methods else set())


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.pattern}")
def test_every_route_answers_its_methods_and_refuses_the_others(gw, live, route):
    """A served path with another method is 405 with the path's methods in Allow; a
    planned path is 404 whatever the method (it is not served yet)."""
    event_id, _, order = live
    url = _url(route, event_id, order["order_id"])
    auth = {"Authorization": f"Bearer {ADMIN}"}
    allowed = _allowed(route.pattern)
    for method in ALL_METHODS:
        if method == "GET" and route.op == "streamEvent":
            continue  # (an answer that never ends: test_stream.py; its HEAD is the head)
        status, data, headers = gw.request(method, url, headers=auth)
        if not allowed:
            assert (status, data["error"]) == (404, "not_found"), (method, url, status, data)
        elif method not in allowed:
            assert (status, data["error"]) == (405, "method_not_allowed"), (method, url)
            assert set(headers["Allow"].split(", ")) == allowed, (method, url, headers)
        else:
            assert status != 405, (method, url, status, data)
    check_invariants(gw_redis(gw), gw, event_id, live[1], [order], exact=False)


def gw_redis(gw):
    import redis

    return redis.Redis.from_url(gw.redis_url)


@pytest.mark.parametrize("path", [
    "/", "/api", "/api/v1", "/api/v1/events", "/api/v1/events/x/y/z", "/api/v1/orders",
    "/api/v1/orders/a/b", "/nope", "/livez/", "/api/v1/events/nope/buy/",
    "/openapi.json/x", "/e", "/dashboard",
])
def test_an_unknown_path_is_404(gw, path):
    for method in ("GET", "POST"):
        status, data, _ = gw.request(method, path, headers=gw.who("u1"))
        assert (status, data["error"]) == (404, "not_found"), (method, path, status)


@pytest.mark.parametrize("path", ["/api/v1/admin/events/x", "/api/v1/admin/nope",
                                  "/api/v1/admin/", "/api/v1/admin/orders/a/paid"])
@pytest.mark.parametrize("token", [None, "", "wrong", ADMIN + "x"])
def test_an_operator_path_without_the_token_is_401_whatever_it_is(gw, path, token):
    assert path.startswith(ADMIN_PREFIX)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    for method in ("GET", "POST", "PUT", "DELETE"):
        status, data, _ = gw.request(method, path, headers=headers)
        assert (status, data["error"]) == (401, "unauthenticated"), (method, path, token)


def test_a_known_event_path_with_the_wrong_method_is_405(gw, live):
    event_id = live[0]
    status, data, headers = gw.request("GET", f"/api/v1/events/{event_id}/buy")
    assert (status, data["error"], headers["Allow"]) == (405, "method_not_allowed", "POST")
    status, data, headers = gw.request("DELETE", f"/api/v1/events/{event_id}")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")


def test_head_is_served_as_get_without_a_body(gw, live):
    status, data, headers = gw.request("HEAD", f"/api/v1/events/{live[0]}")
    assert status == 200 and data is None and int(headers["Content-Length"]) > 0


# -- read-your-writes ---------------------------------------------------------------


async def _fresh_requests(port: int, requests: list[tuple[str, str, dict, bytes]]):
    """Each request on a new connection (so they spread over the workers), all at once."""

    async def one(method, path, headers, body):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(head.encode() + b"\r\n" + body)
            return await read_response(reader, timeout=10)
        finally:
            writer.close()

    return await asyncio.gather(*(one(*req) for req in requests))


@pytest.fixture(scope="module")
def four_workers(redis_server, tmp_path_factory):
    g = Gateway(redis_server.url, tmp_path_factory.mktemp("ryw"), workers=4, shared=True).start()
    yield g
    g.close()


def test_a_created_event_is_served_by_every_worker_once_put_answers(four_workers, r):
    """Right after PUT answered 201, requests on new connections (spread over the four
    workers) all find the event: no 404, neither for a view nor for a buy."""
    gw = four_workers
    for round_ in range(8):
        event_id = new_id(f"ryw{round_}")
        body = event_body(stock=(1000,), limits=(1,))
        status, data, _ = gw.admin("PUT", f"/api/v1/admin/events/{event_id}", body)
        assert status == 201, data
        reqs = []
        for i in range(60):
            reqs.append(("GET", f"/api/v1/events/{event_id}", {}, b""))
            reqs.append(("POST", f"/api/v1/events/{event_id}/buy",
                         gw.who(f"r{round_}u{i}"), b'{"sku": "s0"}'))
        answers = asyncio.run(_fresh_requests(gw.port, reqs))
        statuses = [a[0] for a in answers]
        assert 404 not in statuses, [a for a in answers if a[0] == 404][:3]
        acked = [a[1] for a in answers if a[0] == 200 and "order_id" in a[1]]
        assert len(acked) == 60
        check_invariants(r, gw, event_id, body, acked)


def test_pause_and_resume_reach_every_worker_before_their_answer(four_workers, r):
    gw = four_workers
    event_id = new_id("rywp")
    body = event_body(stock=(1000,), limits=(1,))
    gw.put_event(event_id, body)
    acked = []
    for round_ in range(4):
        status, data, _ = gw.admin("POST", f"/api/v1/admin/events/{event_id}/pause")
        assert (status, data["paused"]) == (200, True)
        buys = [("POST", f"/api/v1/events/{event_id}/buy", gw.who(f"p{round_}u{i}"),
                 b'{"sku": "s0"}') for i in range(40)]
        answers = asyncio.run(_fresh_requests(gw.port, buys))
        assert {(a[0], a[1]["error"]) for a in answers} == {(409, "paused")}
        status, data, _ = gw.admin("POST", f"/api/v1/admin/events/{event_id}/resume")
        assert (status, data["paused"]) == (200, False)
        answers = asyncio.run(_fresh_requests(gw.port, buys))
        assert {a[0] for a in answers} == {200}, [a for a in answers if a[0] != 200][:3]
        acked += [a[1] for a in answers]
    check_invariants(r, gw, event_id, body, acked)


def test_a_stock_change_reaches_every_worker_before_put_answers(four_workers, r):
    """A definition that raises the stock of a sold-out SKU: once PUT answered, no
    worker answers sold_out while the new units are open."""
    gw = four_workers
    event_id = new_id("ryws")
    body = event_body(stock=(2,), limits=(1,))
    gw.put_event(event_id, body)
    acked = [gw.buy(event_id, "s0", f"s{i}")[1] for i in range(2)]
    assert all("order_id" in o for o in acked)
    # every worker learns it is sold out
    answers = asyncio.run(_fresh_requests(gw.port, [
        ("POST", f"/api/v1/events/{event_id}/buy", gw.who(f"x{i}"), b'{"sku": "s0"}')
        for i in range(40)]))
    assert {(a[0], a[1]["error"]) for a in answers} == {(409, "sold_out")}
    body["skus"][0]["stock"] = 50
    status, data, _ = gw.admin("PUT", f"/api/v1/admin/events/{event_id}", body)
    assert status == 200, data
    answers = asyncio.run(_fresh_requests(gw.port, [
        ("POST", f"/api/v1/events/{event_id}/buy", gw.who(f"y{i}"), b'{"sku": "s0"}')
        for i in range(40)]))
    assert {a[0] for a in answers} == {200}, [a for a in answers if a[0] != 200][:3]
    acked += [a[1] for a in answers]
    check_invariants(r, gw, event_id, body, acked)


def test_the_peer_channel_is_private_and_gone_with_the_server(redis_server, tmp_path):
    """The workers' channel for definition changes is a directory of the server's own
    (0700): no other user can reach a worker's address or take it first; it goes when
    the server stops. The workers' metrics snapshots live there too (``metrics``)."""
    import glob
    import os
    import stat
    import tempfile

    pattern = os.path.join(tempfile.gettempdir(), "flashgate-*")
    before = set(glob.glob(pattern))
    g = Gateway(redis_server.url, tmp_path, workers=3).start()
    try:
        new = [d for d in set(glob.glob(pattern)) - before
               if sorted(os.listdir(d)) == ["metrics", "w0", "w1", "w2"]]
        assert len(new) == 1, new
        mode = os.stat(new[0]).st_mode
        assert stat.S_IMODE(mode) == 0o700 and os.stat(new[0]).st_uid == os.getuid()
        assert all(stat.S_ISSOCK(os.stat(os.path.join(new[0], w)).st_mode)
                   for w in ("w0", "w1", "w2"))
        assert stat.S_IMODE(os.stat(os.path.join(new[0], "metrics")).st_mode) == 0o700
    finally:
        assert g.stop() == 0
    assert not os.path.exists(new[0])
