"""Event definitions: validation and the rules for changing a sale in progress."""

import copy

import pytest

from flashgate.core.events import (
    MAX_LIMIT,
    MAX_PAYMENT_TIMEOUT_S,
    MAX_PRICE,
    EventError,
    check_replace,
    parse_event,
)

BASE = {
    "name": "n", "starts_at_ms": 1000, "ends_at_ms": 2000,
    "skus": [{"id": "a", "price": 100, "stock": 10, "per_user_limit": 2,
              "tiers": [{"units": 3, "price": 1}]}],
    "milestones": [{"sold": 5, "reward": "cup"}],
}


def with_(path, value):
    body = copy.deepcopy(BASE)
    target = body
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return body


def test_a_valid_definition_round_trips():
    ev = parse_event("e1", BASE)
    assert ev.skus[0].tiers == [(3, 1)] and ev.skus[0].tiers_arg() == "3,1"
    again = type(ev).from_dict(ev.to_dict())
    assert again == ev


@pytest.mark.parametrize("path,value", [
    (("ends_at_ms",), 1000),
    (("starts_at_ms",), -1),
    (("starts_at_ms",), "1000"),
    (("starts_at_ms",), True),
    (("preheat_at_ms",), 1500),
    (("skus",), []),
    (("skus", 0, "stock"), -1),
    (("skus", 0, "per_user_limit"), 0),
    (("skus", 0, "per_user_limit"), MAX_LIMIT + 1),
    (("skus", 0, "price"), MAX_PRICE + 1),
    (("skus", 0, "price"), 1.5),
    (("skus", 0, "id"), "bad id"),
    (("skus", 0, "tiers"), [{"units": 0, "price": 1}]),
    (("payment_timeout_s",), MAX_PAYMENT_TIMEOUT_S + 1),
    (("registration_required",), "yes"),
    (("milestones",), [{"sold": 0, "reward": "x"}]),
])
def test_invalid_fields_are_bad_request(path, value):
    with pytest.raises(EventError) as e:
        parse_event("e1", with_(path, value))
    assert e.value.code == "bad_request"


def test_duplicate_sku_ids_and_bad_event_id():
    body = copy.deepcopy(BASE)
    body["skus"].append(dict(body["skus"][0]))
    with pytest.raises(EventError):
        parse_event("e1", body)
    with pytest.raises(EventError):
        parse_event("e.1", BASE)


def test_changes_before_the_start_are_free():
    old = parse_event("e1", BASE)
    new = parse_event("e1", with_(("starts_at_ms",), 1500))
    check_replace(old, new, {"a": 0}, now_ms=999)


@pytest.mark.parametrize("path,value,sold", [
    (("starts_at_ms",), 900, 0),           # the start moves
    (("skus",), [{"id": "b", "price": 1, "stock": 1}], 0),  # a SKU disappears
    (("skus", 0, "stock"), 3, 4),          # below units sold
    (("skus", 0, "per_user_limit"), 1, 0),  # the limit drops
])
def test_changes_that_break_a_sale_in_progress_conflict(path, value, sold):
    old = parse_event("e1", BASE)
    with pytest.raises(EventError) as e:
        check_replace(old, parse_event("e1", with_(path, value)), {"a": sold}, now_ms=1500)
    assert e.value.code == "conflict"


def test_allowed_changes_during_the_sale_and_no_growth_after_the_end():
    old = parse_event("e1", BASE)
    check_replace(old, parse_event("e1", with_(("skus", 0, "stock"), 20)), {"a": 4}, now_ms=1500)
    check_replace(old, parse_event("e1", with_(("ends_at_ms",), 3000)), {"a": 4}, now_ms=1500)
    with pytest.raises(EventError):
        check_replace(old, parse_event("e1", with_(("skus", 0, "stock"), 20)), {"a": 4},
                      now_ms=2000)


def test_an_ended_sale_cannot_be_reopened():
    old = parse_event("e1", BASE)
    with pytest.raises(EventError) as e:
        check_replace(old, parse_event("e1", with_(("ends_at_ms",), 5000)), {"a": 4}, now_ms=2000)
    assert e.value.code == "conflict"
