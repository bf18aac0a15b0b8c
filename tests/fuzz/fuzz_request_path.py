"""Coverage-guided fuzzing of the whole request path with atheris: bytes in ->
``HttpProtocol`` -> the real ``Gateway`` -> a real Redis -> responses out.

Each input is one connection. Its first byte chooses how the bytes arrive and how
the client behaves (chunk size 1 to 64 bytes or all at once, a loop turn between
chunks or not, a patient client that waits for every answer before sending more,
half-close / read everything then reset / reset at once, direct or from a load
balancer that must send a PROXY header first); the rest is the byte stream. It is
fed to a new ``HttpProtocol`` on an in-memory transport; the app is one real
``Gateway`` (set up as a worker does, dev identity, rate limits off) on a private
redis-server this script starts, holding one live event ``fz`` with two SKUs
(``s0``: 3 units, ``s1``: 100,000 with a price ladder). ``{order}`` in the input
stands for the last order id acknowledged. The loop, the Gateway and the Redis
data are reused across inputs; every 50,000 inputs (or beyond 8 events) the store
invariants are checked, Redis is flushed and, after a refresh tick, the event is
loaded again.

The properties (read ``tests/fuzz/request_path.py`` for the exact list): no
exception escapes, nothing reaches the loop's exception handler, no ERROR is
logged; the output is a sequence of well-formed HTTP/1.1 responses, one per
dispatched request, in order, plus at most one final protocol error; no 5xx but
503 (and 505 for an unsupported version); no traceback or source path in any
answer; error bodies are ``{"error", "message"}``; 200 answers match their
request (order, event, user); no hang: every answer within 5 s, and once the
connection is lost nothing the input started is still running. The stock
invariants (tests/support.py ``check_invariants``) hold at every reset, and after the
last input of a run bounded by ``-runs=N``.

Run (from the repository root; one process: it is CPU-bound)::

    nice -n 19 python tests/fuzz/fuzz_request_path.py -max_total_time=300 -max_len=4096 -timeout=60

Results (atheris 3.0.0, CPython 3.11, uvloop, redis-server 6.2, 2-core VM shared
with other work; the flashgate Python modules are coverage-instrumented, the
Cython protocol, parser, ledger and limiter are not):

* 60 s run while writing it: 228,636 executions (3,748/s), 272 corpus units,
  cov 731 edges / 2,335 features, 0 failures.
* 150 s run: 740,001 executions (4,933/s), 317 corpus units, cov 739 / 2,382,
  then 1 failure, a real bug: at a reset (FLUSHDB, then the base event PUT
  again) after some input had raised ``s0``'s per_user_limit to 2 and bought 2
  units, the PUT answered 500 - ``Ledger.configure`` asserts that no buyer holds
  more than the new limit, and the worker still remembered that buyer (fixed; the
  regression test is in tests/integration/test_request_path_fuzz.py). Since then a
  reset lets a refresh tick pass before the PUT (the worker then forgets the
  buyers, as it would in life), so the fuzzer gets past it.
* 121 s run on the final harness: 602,196 executions (4,976/s), 319 corpus units,
  cov 736 edges / 2,417 features, 0 failures, no Redis stall.
* In all about 5.5 minutes, 1.57 million inputs, one failure (the bug above); the
  hypothesis version (1,500 examples plus the regression inputs) runs in ~7 s.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
with atheris.instrument_imports(include=["flashgate"]):
    from tests.fuzz.request_path import (
        ADMIN,
        EVENT,
        RequestPath,
        event_definition,
    )

import orjson  # noqa: E402

AUTH = b"Authorization: Bearer " + ADMIN.encode() + b"\r\n"
EV = EVENT.encode()


def req(method: bytes, target: bytes, headers: bytes = b"", body: bytes = b"",
        version: bytes = b"HTTP/1.1", length: bool = True) -> bytes:
    head = method + b" " + target + b" " + version + b"\r\nHost: t\r\n" + headers
    if body and length:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def user(uid: bytes) -> bytes:
    return b"X-User-Id: " + uid + b"\r\n"


def buy(uid: bytes = b"u1", sku: bytes = b"s1", qty: bytes = b"1", extra: bytes = b"") -> bytes:
    body = b'{"sku":"' + sku + b'","qty":' + qty + b"}"
    return req(b"POST", b"/api/v1/events/" + EV + b"/buy", user(uid) + extra, body)


EVENT_PUT = orjson.dumps(event_definition())
EVENT_PUT_MORE = EVENT_PUT.replace(b'"stock":3,', b'"stock":4,')  # a valid replacement
ADMIN_EV = b"/api/v1/admin/events/" + EV

# (control byte, stream): every route of docs/API.md, valid, then malformed.
SEEDS = [
    (0, req(b"GET", b"/api/v1/events/" + EV)),
    (0, req(b"POST", b"/api/v1/events/" + EV + b"/register", user(b"u1"))),
    (0, buy()),
    (0x10, buy(b"u2", b"s0")),
    (0x80 | 3, buy(b"u3", extra=b"Idempotency-Key: k-1\r\n") * 2),
    (0, buy(b"u4", b"s1", b"2", b"Idempotency-Key: k-2\r\n") + buy(b"u4", b"s0", b"1",
                                                                  b"Idempotency-Key: k-2\r\n")),
    (0, req(b"GET", b"/api/v1/orders/{order}", user(b"u1"))),
    (0x20, req(b"GET", b"/api/v1/orders/{order}", AUTH)),
    (0, req(b"POST", b"/api/v1/admin/orders/{order}/paid", AUTH)),
    (0, req(b"POST", b"/api/v1/admin/orders/{order}/cancel", AUTH)),
    (0, req(b"PUT", ADMIN_EV + b"2", AUTH, EVENT_PUT)),
    (0x10, req(b"PUT", ADMIN_EV, AUTH, EVENT_PUT_MORE)),
    (0, req(b"PUT", ADMIN_EV, AUTH, EVENT_PUT.replace(b'"stock":3,', b'"stock":0,'))),
    (0, req(b"GET", ADMIN_EV, AUTH)),
    (0x80 | 7, req(b"POST", ADMIN_EV + b"/pause", AUTH) + buy(b"u5")
     + req(b"POST", ADMIN_EV + b"/resume", AUTH) + buy(b"u5")),
    (0, req(b"POST", ADMIN_EV + b"/skus/s0/stock", AUTH, b'{"add":100}')),
    (0, req(b"GET", ADMIN_EV + b"/stats", AUTH)),
    (0, req(b"GET", ADMIN_EV + b"/orders", AUTH)),
    (0, req(b"GET", ADMIN_EV + b"/report?format=html", AUTH)),
    (0, req(b"GET", b"/api/v1/events/" + EV + b"/stream")),
    (0, req(b"GET", b"/dashboard/" + EV)),
    (0, req(b"GET", b"/metrics") + req(b"GET", b"/livez") + req(b"GET", b"/readyz")),
    (0, req(b"GET", b"/openapi.json")),
    # the connection's own rules
    (5, buy(b"u6") + req(b"GET", b"/api/v1/events/" + EV, b"Connection: close\r\n") + buy(b"u7")),
    (0x18 | 2, req(b"HEAD", b"/api/v1/events/" + EV) + req(b"HEAD", b"/livez", version=b"HTTP/1.0")),
    (1, req(b"GET", b"/livez", b"Connection: keep-alive\r\n", version=b"HTTP/1.0") * 2),
    (0, req(b"POST", b"/api/v1/events/" + EV + b"/buy", user(b"u8") + b"Expect: 100-continue\r\n",
            b'{"sku":"s1"}')),
    (0, req(b"GET", b"http://t/api/v1/events/" + EV + b"?a=b") + req(b"OPTIONS", b"*")),
    # 70 answers owed behind a buy's (> max_pipeline): reading pauses until they drain
    (0, buy(b"p1") + b"GET /livez HTTP/1.1\r\n\r\n" * 69),
    (0x20, buy(b"u9") * 3 + req(b"GET", ADMIN_EV + b"/stats", AUTH)),
    # malformed
    (0, req(b"POST", b"/api/v1/events/" + EV + b"/buy", user(b"u1"), b"not json")),
    (0, buy(b"u1", b"s9") + buy(b"u1", b"s1", b"0") + buy(b"u1", b"s1", b"1.0")
     + buy(b"u1", b"s1", b"99999999999999999999")),
    (0, buy(b"u1", extra=b"Idempotency-Key: \x80x\r\n") + buy(b"bad user")),
    (0, req(b"GET", ADMIN_EV, b"Authorization: Bearer wrong\r\n")),
    (0, req(b"PUT", ADMIN_EV + b"3", AUTH, b'{"starts_at_ms":5,"ends_at_ms":1,"skus":[]}')),
    (0, req(b"POST", b"/", b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n", length=False)),
    (0, req(b"POST", b"/", b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd", length=False)),
    (0, req(b"POST", b"/api/v1/events/" + EV + b"/buy", b"Content-Length: 99999\r\n", b"x",
            length=False)),
    (0, req(b"GET", b"/", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")),
    (0, req(b"CONNECT", b"h:443") + req(b"GET", b"/", version=b"HTTP/2.0")),
    (0x10 | 4, buy() + b"GET / HTTP/1.1\r\nA\x00: b\r\n\r\n"),
    (0, b"\r\n\r\nGET /livez HTTP/1.1\r\n\r\n"),
    (0, buy()[:40]),  # cut short: the head is never complete
    # from a load balancer: a PROXY header first
    (0x40, b"PROXY TCP4 198.51.100.7 10.0.0.1 51000 80\r\n" + buy(b"lb1")),
    (0x40 | 1, b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n"
     + req(b"GET", b"/api/v1/events/" + EV, b"X-Forwarded-For: 192.0.2.1, 10.9.9.9\r\n")),
    (0x40, b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([198, 51, 100, 9, 10, 0, 0, 1])
     + b"\xc7\x38\x00\x50" + req(b"POST", b"/api/v1/events/" + EV + b"/register", user(b"lb2"))),
    (0x40, b"PROXY UNKNOWN\r\n" + req(b"GET", b"/readyz")),
    (0x40, req(b"GET", b"/livez")),  # the PROXY header is missing
]

# libFuzzer dictionary: the Cython layers are not instrumented, these steer the mutations
TOKENS = [
    b"\r\n", b"\r\n\r\n", b"HTTP/1.1", b"HTTP/1.0", b"GET ", b"POST ", b"PUT ", b"HEAD ",
    b"OPTIONS ", b"DELETE ", b"/api/v1/events/", b"/api/v1/events/" + EV, b"/buy", b"/register",
    b"/api/v1/orders/", b"{order}", b"/api/v1/admin/events/", b"/api/v1/admin/orders/",
    b"/pause", b"/resume", b"/stats", b"/orders", b"/livez", b"/readyz", b"/openapi.json",
    b"Content-Length: ", b"Connection: close", b"Connection: keep-alive", b"X-User-Id: ",
    b"Idempotency-Key: ", b"Authorization: Bearer ", ADMIN.encode(), b"Expect: 100-continue",
    b"Transfer-Encoding: chunked", b"X-Forwarded-For: ", b"PROXY TCP4 ", b"PROXY TCP6 ",
    b'{"sku":"s0","qty":1}', b'"sku"', b'"qty"', b'"s0"', b'"s1"', b'"stock"',
    b'"per_user_limit"', b'"starts_at_ms"', b'"ends_at_ms"', b'"preheat_at_ms"', b'"tiers"',
    b'"registration_required":true', b'"milestones"', b'"paused"', b"null", b"true", b"-1",
    b"18446744073709551616", b"4102444800000", b"1e3",
]  # fmt: skip

harness: RequestPath | None = None
last_run = 0  # -runs=N: after the N-th input the stock invariants are checked once more


def test_one_input(data: bytes) -> None:
    harness.check_bytes(data)
    if harness.inputs == last_run:
        figures = harness.check_store()
        print(f"stock invariants hold after {last_run} inputs: {figures}", file=sys.stderr,
              flush=True)


def main() -> None:
    global harness, last_run
    for arg in sys.argv[1:]:
        if arg.startswith("-runs="):
            last_run = int(arg.split("=", 1)[1])
    harness = RequestPath(timeout=5.0, reset_every=50_000, max_events=8).start()
    corpus = tempfile.mkdtemp(prefix="flashgate-path-corpus-")
    for i, (ctl, stream) in enumerate(SEEDS):
        with open(os.path.join(corpus, f"seed{i:02d}"), "wb") as f:
            f.write(bytes([ctl]) + stream)
    dict_path = corpus + ".dict"
    with open(dict_path, "w") as f:
        for token in TOKENS:
            f.write('"' + "".join(f"\\x{b:02x}" for b in token) + '"\n')
    atheris.Setup([sys.argv[0], "-dict=" + dict_path, *sys.argv[1:], corpus], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
