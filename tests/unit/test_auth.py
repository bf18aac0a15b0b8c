"""Identity helpers without I/O."""

from hypothesis import given, settings
from hypothesis import strategies as st

from flashgate.auth import USER_RE, mint
from flashgate.gateway._buy import user_of_header
from flashgate.gateway._token import TokenKey


def regex_user(raw: bytes):
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if USER_RE.match(text) else None


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.binary(max_size=80),
    st.text(alphabet="abcXYZ019_-.:é\n ", max_size=70).map(str.encode),
    st.from_regex(r"[A-Za-z0-9_-]{1,70}", fullmatch=True).map(str.encode),
))
def test_user_of_header_is_the_regex(raw):
    assert user_of_header(raw) == regex_user(raw)


def test_user_of_header_every_byte():
    for c in range(256):
        raw = bytes([c])
        assert user_of_header(raw) == regex_user(raw), raw
        assert user_of_header(b"a" * 63 + raw) == regex_user(b"a" * 63 + raw), raw
    assert user_of_header(None) is None


def test_user_of_header_edges():
    assert user_of_header(b"u" * 64) == "u" * 64
    assert user_of_header(b"u" * 65) is None
    assert user_of_header(b"") is None
    assert user_of_header(b"a\n") is None
    assert user_of_header(b"Ab-9_") == "Ab-9_"
    assert user_of_header(b"a\x00b") is None and user_of_header(b"\xe9") is None
    assert user_of_header("u1") is None  # not bytes


def test_tokens_round_trip():
    token = b"Bearer " + mint(b"k", "u42", 60).encode()
    assert TokenKey(b"k").user(token, 0) == "u42"
    assert TokenKey(b"x").user(token, 0) is None


def test_the_order_template_writes_what_orjson_writes():
    import orjson

    from flashgate.core.events import parse_event
    from flashgate.gateway.runtime import EventRuntime, SkuRuntime
    from tests.support import event_body

    event = parse_event("ev-1_x", event_body(stock=(5,)))
    srt = SkuRuntime(0, event.skus[0], event.id, EventRuntime(event), "b00t")
    values = (b"ev-1_x.s0.abc12f", b"user_Z-9", 2, 1999, 3998, 1795496850531, 1795497750531,
              1795496850531)
    doc = {"order_id": values[0].decode(), "event_id": "ev-1_x", "sku": "s0",
           "user_id": values[1].decode(), "qty": 2, "unit_price": 1999, "amount": 3998,
           "status": "reserved", "created_ms": values[5], "pay_by_ms": values[6],
           "updated_ms": values[7]}
    assert srt.order_json % values == orjson.dumps(doc)


def test_the_sale_answer_is_the_whole_200_response():
    import orjson

    from flashgate.core.events import parse_event
    from flashgate.gateway._commit import sale_answer
    from flashgate.gateway.protocol import build_response
    from flashgate.gateway.runtime import EventRuntime, SkuRuntime
    from tests.support import event_body

    event = parse_event("ev-1_x", event_body(stock=(5,)))
    srt = SkuRuntime(0, event.skus[0], event.id, EventRuntime(event), "b00t")
    for qty, price in ((1, 100), (3, 0), (2, 10**12)):
        for seq, user in ((1, b"u"), (0xABCDEF, b"user_Z-9" * 8)):
            oid = b"%s%x" % (srt.oid_prefix, seq)
            doc = {"order_id": oid.decode(), "event_id": "ev-1_x", "sku": "s0",
                   "user_id": user.decode(), "qty": qty, "unit_price": price,
                   "amount": price * qty, "status": "reserved",
                   "created_ms": 1795496850531, "pay_by_ms": 1795497750531,
                   "updated_ms": 1795496850531}
            answer = sale_answer(srt, oid, user.decode(), qty, price, 1795496850531,
                                 1795497750531)
            assert answer == build_response(200, orjson.dumps(doc))
    assert srt.oid_prefix == b"ev-1_x.s0.b00t"
