"""Hostile clients: half-open connections and random bytes must not hurt the others.
Both identity modes (``any_gw``): dev, and the production configuration."""

from __future__ import annotations

import os
import random
import socket
import time

from tests.support import check_invariants, event_body, new_id


def test_800_half_open_connections_do_not_block_a_normal_client(any_gw, r):
    gw = any_gw
    ev = new_id("half")
    body = event_body(stock=(10,))
    gw.put_event(ev, body)
    stalled = []
    try:
        for i in range(800):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            who = "".join(f"{k}: {v}\r\n" for k, v in gw.who(f"h{i}").items())
            s.sendall(f"POST /api/v1/events/{ev}/buy HTTP/1.1\r\nHost: a\r\n{who}"
                      .encode())  # a head that never ends
            stalled.append(s)
        t0 = time.monotonic()
        status, view, _ = gw.request("GET", f"/api/v1/events/{ev}")
        assert status == 200 and view["id"] == ev
        status, order, _ = gw.buy(ev, "s0", "normal")
        took = time.monotonic() - t0
        assert status == 200, order
        assert took < 1.0, f"a normal client waited {took:.2f} s"
    finally:
        for s in stalled:
            s.close()
    check_invariants(r, gw, ev, body, [order])


def test_a_storm_of_random_bytes_leaves_the_server_healthy(any_gw, r):
    gw = any_gw
    ev = new_id("storm")
    body = event_body(stock=(10,))
    gw.put_event(ev, body)
    rnd = random.Random(5)
    answers = {"400": 0, "closed": 0, "other": 0}
    for i in range(300):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        try:
            junk = os.urandom(rnd.randint(1, 4096))
            if i % 3 == 0:  # a plausible start, then garbage
                junk = f"POST /api/v1/events/{ev}/buy HTTP/1.1\r\n".encode() + junk
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, BrokenPipeError):
            reply = b""
        finally:
            s.close()
        if reply.startswith(b"HTTP/1.1 400") or reply.startswith(b"HTTP/1.1 4"):
            answers["400"] += 1
            assert b"Traceback" not in reply and b"flashgate/" not in reply
        elif not reply:
            answers["closed"] += 1
        else:
            answers["other"] += 1
    assert answers["other"] == 0, answers
    assert all(gw.request("GET", "/readyz")[0] == 200 for _ in range(6))
    status, order, _ = gw.buy(ev, "s0", "after-storm")
    assert status == 200, order
    check_invariants(r, gw, ev, body, [order])
