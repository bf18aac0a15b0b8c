"""The notification signature (no I/O), and the definition fields of notifications."""

import hashlib
import hmac

import pytest

from flashgate.core.events import DEFAULT_REMINDERS_S, Event, EventError, parse_event
from flashgate.webhooks.signing import signature, verify

SECRET = b"0123456789abcdef0123456789abcdef"
BODY = b'{"id":"e:ended","type":"event.ended","event_id":"e","ts_ms":1,"data":{}}'


def test_the_signature_is_hmac_sha256_of_t_dot_body():
    header = signature(SECRET, BODY, 1_764_000_000_123)
    mac = hmac.new(SECRET, b"1764000000123." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1764000000123,v1={mac}"
    assert verify(SECRET, BODY, header, now_ms=1_764_000_000_123)


@pytest.mark.parametrize("mangle", [
    lambda h: h.replace("t=1764000000123", "t=1764000000124"),  # another time
    lambda h: h[:-1] + ("0" if h[-1] != "0" else "1"),  # another MAC
    lambda h: h.split(",")[1],  # no t
    lambda h: h.split(",")[0],  # no v1
    lambda h: "t=abc," + h.split(",")[1],
    lambda h: "",
])
def test_a_mangled_header_does_not_verify(mangle):
    header = signature(SECRET, BODY, 1_764_000_000_123)
    assert not verify(SECRET, BODY, mangle(header), now_ms=1_764_000_000_123)


def test_a_replay_outside_the_tolerance_does_not_verify():
    header = signature(SECRET, BODY, 1_000_000)
    assert verify(SECRET, BODY, header, now_ms=1_000_000 + 300_000)
    assert not verify(SECRET, BODY, header, now_ms=1_000_000 + 300_001)
    assert not verify(SECRET, BODY, header, now_ms=1_000_000 - 300_001)
    assert verify(SECRET, BODY, header, now_ms=2_000_000, tolerance_ms=10**6)


def test_several_v1_values_one_matching_verifies():
    """(A receiver that rotates secrets may be sent two signatures.)"""
    good = signature(SECRET, BODY, 5)
    header = "t=5,v1=" + "0" * 64 + "," + good.split(",")[1]
    assert verify(SECRET, BODY, header, now_ms=5)


BASE = {"starts_at_ms": 1000, "ends_at_ms": 2000, "skus": [{"id": "a", "price": 1, "stock": 1}]}


def test_notification_fields_default_and_round_trip():
    ev = parse_event("e", BASE)
    assert (ev.webhook_url, ev.reminders_s, ev.goals) == (None, list(DEFAULT_REMINDERS_S), {})
    ev = parse_event("e", {**BASE, "webhook_url": "http://[::1]:8080/h?x=1",
                           "reminders_s": [0, 600, 600], "goals": {"revenue": 0, "other": 1}})
    assert ev.reminders_s == [600, 0] and ev.goals == {"revenue": 0}
    assert Event.from_dict(ev.to_dict()) == ev
    old = ev.to_dict()
    for k in ("webhook_url", "reminders_s", "goals"):
        del old[k]
    assert Event.from_dict(old).reminders_s == list(DEFAULT_REMINDERS_S)
    assert parse_event("e", {**BASE, "reminders_s": None}).reminders_s == list(DEFAULT_REMINDERS_S)
    assert parse_event("e", {**BASE, "reminders_s": []}).reminders_s == []


@pytest.mark.parametrize("field,value", [
    ("webhook_url", "http://x/#frag"),
    ("webhook_url", "http://x/\x00"),
    ("webhook_url", "https://:80/"),
    ("webhook_url", "javascript:alert(1)"),
    ("reminders_s", [30 * 24 * 3600 + 1]),
    ("reminders_s", {"a": 1}),
    ("goals", "units"),
])
def test_bad_notification_fields(field, value):
    with pytest.raises(EventError) as e:
        parse_event("e", {**BASE, field: value})
    assert e.value.code == "bad_request"
