"""The OpenAPI document (GET /openapi.json) against docs/API.md and the live gateway.

* the document is valid OpenAPI 3.1;
* it has exactly the operations docs/API.md names, and the buy table's statuses and
  error codes exactly;
* a live gateway serves exactly ``document()``; every served operation answers as
  the document says, and every operation marked planned still answers 404;
* a bounded schemathesis run over the served operations (on a gateway of its own)
  finds no 5xx and no response that breaks the document;
* the largest numbers an event definition accepts work end to end.
"""

from __future__ import annotations

import json
import re
import time
from http.client import HTTPConnection
from pathlib import Path

import orjson
import pytest
import redis

from flashgate.gateway.openapi import document, document_bytes
from tests.support import ADMIN, check_invariants, event_body, new_id

ROOT = Path(__file__).resolve().parents[2]
API_MD = ROOT / "docs" / "API.md"
SHARED_API_MD = ROOT.parent / "shared" / "API.md"
METHODS = ("get", "put", "post", "delete", "patch")
# statuses the HTTP layer may answer on any operation (protocol.py)
TRANSPORT_STATUSES = {"400", "408", "411", "413", "414", "431", "500", "503"}
BUYER = "u-openapi"


# -- helpers ----------------------------------------------------------------------------


def api_md_operations(text: str) -> set[tuple[str, str]]:
    """Every `METHOD /path` in the markdown (its query string dropped); `…/x` right after
    one is its sibling path."""
    ops: set[tuple[str, str]] = set()
    for line in text.splitlines():
        last = None
        for token in re.findall(r"`([^`]+)`", line):
            m = re.fullmatch(r"(GET|PUT|POST|DELETE|PATCH) (/\S*)", token)
            if m:
                last = (m.group(1), m.group(2).split("?", 1)[0])
                ops.add(last)
            elif last and re.fullmatch(r"…/[\w{}-]+", token):
                last = (last[0], last[1].rsplit("/", 1)[0] + token[1:])
                ops.add(last)
    return ops


def document_operations(doc: dict) -> dict[tuple[str, str], dict]:
    return {(m.upper(), path): op for path, item in doc["paths"].items()
            for m, op in item.items() if m in METHODS}


def resolve(doc: dict, obj: dict) -> dict:
    while "$ref" in obj:
        node = doc
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        obj = node
    return obj


def error_codes(doc: dict, response: dict) -> set[str]:
    """The error codes an error response allows (its ``error`` enum)."""
    schema = resolve(doc, response)["content"]["application/json"]["schema"]
    for part in schema["allOf"]:
        enum = part.get("properties", {}).get("error", {}).get("enum")
        if enum:
            return set(enum)
    raise AssertionError(f"no error enum in {schema}")


def table_rows(text: str, heading: str) -> set[tuple[str, str]]:
    """(status, error code) rows of the first table under ``heading``."""
    section = text.split(heading, 1)[1]
    rows = set()
    for line in section.splitlines():
        m = re.fullmatch(r"\| (\d{3}) \| `(\w+)` \|.*", line.strip())
        if m:
            rows.add((m.group(1), m.group(2)))
        elif rows and not line.startswith("|"):
            break
    return rows


class SchemaChecker:
    """Validates instances against schemas of the document, ``$ref``s resolved."""

    def __init__(self, doc: dict):
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.doc = doc
        self.validator_cls = Draft202012Validator
        self.registry = Registry().with_resource(
            "urn:flashgate-api", Resource.from_contents(doc, default_specification=DRAFT202012))

    def validate(self, pointer: str, instance) -> None:
        schema = {"$ref": "urn:flashgate-api#" + pointer}
        self.validator_cls(schema, registry=self.registry).validate(instance)


def pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def schema_pointer(doc: dict, path: str, method: str, status: int | str,
                   media: str = "application/json", key: str = "schema") -> str:
    """Where the schema of a response (or of each line: ``key``) is in the document."""
    response = doc["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        base = response["$ref"].removeprefix("#")
    else:
        base = pointer("paths", path, method, "responses", str(status))
    return base + pointer("content", media, key)


# -- the document itself -----------------------------------------------------------


def test_document_is_valid_openapi_31():
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate

    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_document_is_a_fresh_dict_and_the_bytes_encode_it():
    doc = document()
    doc["paths"].clear()
    doc["components"]["schemas"]["Order"]["required"].append("x")
    assert document()["paths"]
    assert "x" not in document()["components"]["schemas"]["Order"]["required"]
    assert document_bytes() is document_bytes()
    assert orjson.loads(document_bytes()) == document()


def test_document_has_exactly_the_operations_of_api_md():
    md = api_md_operations(API_MD.read_text())
    doc = set(document_operations(document()))
    assert ("POST", "/api/v1/admin/events/{event_id}/resume") in md  # the `…/resume` form
    assert len(md) >= 19
    assert md - doc == set(), "in docs/API.md, missing from the OpenAPI document"
    assert doc - md == set(), "in the OpenAPI document, not in docs/API.md"


def test_buy_responses_are_the_buy_table():
    text = API_MD.read_text()
    table = table_rows(text, "## Buying")
    assert ("409", "sold_out") in table and ("503", "unavailable") in table
    doc = document()
    responses = doc["paths"]["/api/v1/events/{event_id}/buy"]["post"]["responses"]
    documented = {(status, code) for status, r in responses.items() if status != "200"
                  for code in error_codes(doc, r)}
    table_statuses = {s for s, _ in table}
    assert {r for r in documented if r[0] in table_statuses} == table
    assert {s for s, _ in documented} - table_statuses <= TRANSPORT_STATUSES
    assert "Retry-After" in resolve(doc, responses["429"])["headers"]
    assert "Retry-After" in resolve(doc, responses["503"])["headers"]
    params = [resolve(doc, p) for p in
              doc["paths"]["/api/v1/events/{event_id}/buy"]["post"]["parameters"]]
    assert [(p["name"], p["in"]) for p in params] == [("Idempotency-Key", "header")]


def test_every_error_response_has_the_error_shape():
    """Every error of the API is the JSON error object; a page's not-found is its HTML
    page (the pages never show a raw error object)."""
    doc = document()
    for (method, path), op in document_operations(doc).items():
        for status, r in op["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            if "pages" in op["tags"] and "text/html" in resolve(doc, r).get("content", {}):
                assert status == "404", (method, path, status)
                continue
            assert error_codes(doc, r), (method, path, status)


def test_docs_api_md_starts_with_the_contract():
    if not SHARED_API_MD.exists():
        pytest.skip("shared/API.md is not beside the repository")
    contract = SHARED_API_MD.read_text()
    ours = API_MD.read_text()
    assert ours.startswith(contract.rstrip("\n") + "\n"), \
        "docs/API.md must begin with shared/API.md unchanged"
    assert "## Implementation notes" in ours[len(contract.rstrip("\n")):]


# -- the live gateway ------------------------------------------------------------------


def test_live_openapi_json_is_the_document(gw):
    status, body, headers = gw.request("GET", "/openapi.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body == document()


@pytest.fixture(scope="module")
def live_event(gw):
    """A live event (SKU s0, stock 1000, limit 100) and one order of BUYER."""
    event_id = new_id("oa")
    body = event_body(stock=(1000,), limits=[100])
    gw.put_event(event_id, body)
    status, order, _ = gw.buy(event_id, "s0", BUYER)
    assert status == 200, order
    return event_id, body, order


def _request_for(op_id: str, method: str, path: str, op: dict, event_id: str, body: dict,
                 order: dict):
    url = (path.replace("{event_id}", event_id).replace("{order_id}", order["order_id"])
           .replace("{sku}", "s0").replace("{name}", "README.txt"))
    schemes = {name for req in op["security"] for name in req}
    headers = {}
    if schemes == {"admin"}:
        headers["Authorization"] = f"Bearer {ADMIN}"
    elif schemes:
        headers["X-User-Id"] = BUYER
    payload = {"putEvent": body, "buy": {"sku": "s0", "qty": 1},
               "addStock": {"add": 1}}.get(op_id)
    return method, url, payload, headers


def test_served_operations_answer_as_documented(gw, r, live_event):
    event_id, body, order = live_event
    acked = [order]
    doc = document()
    checker = SchemaChecker(doc)
    ops = document_operations(doc)
    # a registration, so the registrations export has a line to check
    assert gw.request("POST", f"/api/v1/events/{event_id}/register", None,
                      {"X-User-Id": BUYER})[0] == 200
    # the kill switch last (resume reaches the other worker within a refresh tick)
    order_of = sorted(ops, key=lambda k: k[1].endswith(("/pause", "/resume")))
    for method, path in order_of:
        op = ops[(method, path)]
        if op.get("x-flashgate-status") == "planned":
            continue
        this = order
        if op["operationId"] == "cancelOrder":  # (the shared order gets paid)
            status, this, _ = gw.buy(event_id, "s0", BUYER)
            assert status == 200, this
            acked.append(this)
        m, url, payload, headers = _request_for(op["operationId"], method, path, op,
                                                event_id, body, this)
        if "text/event-stream" in op["responses"]["200"].get("content", {}):
            # a stream never ends: its head is what is checked here (the events:
            # test_stream.py)
            conn = HTTPConnection("127.0.0.1", gw.port, timeout=10)
            conn.request(m, url)
            resp = conn.getresponse()
            assert resp.status == 200, (url, resp.status)
            assert resp.getheader("Content-Type").startswith("text/event-stream")
            conn.close()
            continue
        status, data, resp_headers = gw.request(m, url, payload, headers)
        where = f"{m} {url} -> {status} {data!r:.300}"
        assert str(status) in op["responses"], where
        assert status < 300, where
        if op["operationId"] == "buy":
            acked.append(data)
        response = resolve(doc, op["responses"][str(status)])
        # (the media type the answer has: an operation may document several)
        media, content = next(((m, c) for m, c in response["content"].items()
                               if resp_headers["Content-Type"].startswith(m.split(";")[0])),
                              (None, None))
        assert media is not None, where
        if media == "application/json":
            checker.validate(schema_pointer(doc, path, method.lower(), status), data)
        elif "x-flashgate-line-schema" in content:
            # (the client helper has parsed a one-line body already)
            lines = [data] if isinstance(data, dict) else \
                [json.loads(line) for line in data.splitlines() if line]
            assert lines, where
            line_at = schema_pointer(doc, path, method.lower(), status, media,
                                     "x-flashgate-line-schema")
            for line in lines:
                checker.validate(line_at, line)
    wait_live(gw, event_id)
    # (other tests sell on this event too: every order here is acknowledged, not the
    # reverse)
    check_invariants(r, gw, event_id, body, acked, exact=False)


def wait_live(gw, event_id: str, timeout: float = 5.0) -> None:
    """Every worker sees the event live (not paused)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gw.request("GET", f"/api/v1/events/{event_id}")[1]["state"] == "live"
               for _ in range(8)):
            return
        time.sleep(0.05)
    raise AssertionError(f"event {event_id} not live on every worker")


def test_planned_operations_are_not_served_yet(gw, live_event):
    """When one of these is implemented, drop its ``planned`` mark (openapi.py) and its
    line in docs/API.md's implementation notes."""
    event_id, body, order = live_event
    doc = document()
    planned = [(k, op) for k, op in document_operations(doc).items()
               if op.get("x-flashgate-status") == "planned"]
    assert {op["operationId"] for _, op in planned} == set()
    for (method, path), op in planned:
        m, url, payload, headers = _request_for(op["operationId"], method, path, op,
                                                event_id, body, order)
        status, data, _ = gw.request(m, url, payload, headers)
        assert (status, data["error"]) == (404, "not_found"), f"{m} {url} -> {status} {data}"


def test_error_answers_match_the_document(gw, r, live_event):
    """A few refusals of the served operations, checked against their schemas."""
    event_id, body, order = live_event
    acked = [order]
    doc = document()
    checker = SchemaChecker(doc)
    buy = f"/api/v1/events/{event_id}/buy"
    cases = [
        ("/api/v1/events/{event_id}/buy", "post", ("POST", buy, {"sku": "s0"}, {}), 401),
        ("/api/v1/events/{event_id}/buy", "post",
         ("POST", buy, {"sku": "s0", "qty": 0}, {"X-User-Id": BUYER}), 400),
        ("/api/v1/events/{event_id}/buy", "post",
         ("POST", buy, {"sku": "nope"}, {"X-User-Id": BUYER}), 404),
        ("/api/v1/events/{event_id}/buy", "post",
         ("POST", buy, {"sku": "s0"}, {"X-User-Id": BUYER, "Idempotency-Key": "k-" + event_id}),
         200),
        ("/api/v1/events/{event_id}/buy", "post",
         ("POST", buy, {"sku": "s0", "qty": 2},
          {"X-User-Id": BUYER, "Idempotency-Key": "k-" + event_id}), 422),
        ("/api/v1/events/{event_id}", "get", ("GET", "/api/v1/events/nope-x", None, {}), 404),
        ("/api/v1/orders/{order_id}", "get",
         ("GET", "/api/v1/orders/" + order["order_id"], None, {"X-User-Id": "someone-else"}),
         404),
        ("/api/v1/admin/events/{event_id}", "put",
         ("PUT", f"/api/v1/admin/events/{event_id}", {"starts_at_ms": 1},
          {"Authorization": f"Bearer {ADMIN}"}), 400),
        ("/api/v1/admin/events/{event_id}/stats", "get",
         ("GET", f"/api/v1/admin/events/{event_id}/stats", None, {"Authorization": "Bearer x"}),
         401),
    ]
    for path, method, (m, url, payload, headers), expected in cases:
        status, data, resp_headers = gw.request(m, url, payload, headers)
        assert status == expected, (m, url, status, data)
        checker.validate(schema_pointer(doc, path, method, status), data)
        if status == 200 and url.endswith("/buy"):
            acked.append(data)
    check_invariants(r, gw, event_id, body, acked, exact=False)


# -- schemathesis ------------------------------------------------------------------------

# (the stream's answer never ends, which a generated request's client would wait
# for: its 200 and 404 are checked by test_stream.py)
SERVED = sorted(op["operationId"] for op in document_operations(document()).values()
                if op.get("x-flashgate-status") != "planned" and op["operationId"] != "streamEvent")
EXAMPLES = 20  # per operation and generation mode: about 350 requests in all
FUZZ_USER = "fz-user"


def _start_private(tmp_path_factory, name: str, shared: bool = False):
    """A Redis and a gateway of their own (what fuzzing leaves behind stays there)."""
    from flashgate.embedded import EmbeddedRedis
    from tests.support import Gateway

    server = EmbeddedRedis(tmp_path_factory.mktemp(name + "-redis"), persist=False).start()
    try:
        gateway = Gateway(server.url, tmp_path_factory.mktemp(name + "-gw"),
                          shared=shared).start()
    except Exception:
        server.stop()
        raise
    return server, gateway


@pytest.fixture(scope="module")
def fuzz_gw(tmp_path_factory):
    server, gateway = _start_private(tmp_path_factory, "fuzz", shared=True)
    yield gateway
    try:
        gateway.close()
    finally:
        server.stop()


@pytest.fixture
def private_gw(tmp_path_factory):
    """``(redis url, gateway)`` for one test."""
    server, gateway = _start_private(tmp_path_factory, "own")
    yield server.url, gateway
    gateway.stop()
    server.stop()


def _path_param(name: str, real: str, missing: str) -> dict:
    """A path parameter naming a real thing, or a missing one (negative mode: anything)."""
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "enum": [real, missing]}}


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_gw):
    """The document as schemathesis gets it, and the headers of each operation.

    Changed from document(): ids in paths and the buy's sku name a real event, order
    and sku, or a missing one (valid random ids are only ever 404; negative mode still
    sends invalid ones)."""
    schemathesis = pytest.importorskip("schemathesis")  # (the test extra has it)
    main, switch = new_id("fz"), new_id("fzp")  # ``switch`` is paused and resumed
    main_body = event_body(stock=(100_000,), limits=[10_000])
    fuzz_gw.put_event(main, main_body)
    fuzz_gw.put_event(switch, event_body(stock=(10,)))
    status, order, _ = fuzz_gw.buy(main, "s0", FUZZ_USER)
    assert status == 200, order
    doc = document()
    schemas = doc["components"]["schemas"]
    schemas["BuyRequest"]["properties"]["sku"] = {"type": "string", "enum": ["s0", "s9"]}
    headers = {}
    for (_, path), op in document_operations(doc).items():
        params = op.get("parameters", [])
        if "{event_id}" in path and op["operationId"] != "putEvent":
            real = switch if path.endswith(("/pause", "/resume")) else main
            params = [_path_param("event_id", real, "no-such-event"), *params]
        if "{order_id}" in path:
            params = [_path_param("order_id", order["order_id"], "no.such.order"), *params]
        if params:
            op["parameters"] = params
        schemes = {name for req in op["security"] for name in req}
        headers[op["operationId"]] = (
            {"Authorization": f"Bearer {ADMIN}"} if schemes == {"admin"}
            else {"X-User-Id": FUZZ_USER} if schemes else {})
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=f"http://127.0.0.1:{fuzz_gw.port}")
    # what the fuzz sells: the main event, and every order a buy was answered with
    sale = {"event": main, "body": main_body, "acked": {order["order_id"]: order}}
    return schema, headers, sale


@pytest.mark.ci_required
@pytest.mark.parametrize("op_id", SERVED)
def test_schemathesis(fuzz_gw, fuzz_schema, op_id):
    """Generated requests, valid and invalid, to one served operation: no 5xx, and every
    response as the document describes it (status, body schema); then the sale's
    invariants, every order a buy was answered with included."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    schema, headers, sale = fuzz_schema
    operation = schema.find_operation_by_id(op_id)
    failures = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call(headers=headers[op_id], timeout=10)
            if op_id == "buy" and response.status_code == 200:
                order = response.json()
                sale["acked"][order["order_id"]] = order
            case.validate_response(response, headers=headers[op_id],
                                   checks=[not_a_server_error, response_schema_conformance])

        try:
            run()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # nothing to make invalid (no input)
        except Exception as e:  # noqa: BLE001 - every mode's failure is reported
            failures.append(f"{mode.value}: {e}")
    assert not failures, "\n\n".join(failures)
    if op_id == "buy":
        assert len(sale["acked"]) > 1, "the fuzz bought nothing"
    client = redis.Redis.from_url(fuzz_gw.redis_url)
    try:
        check_invariants(client, fuzz_gw, sale["event"], sale["body"],
                         list(sale["acked"].values()))
    finally:
        client.close()


# -- the largest numbers an event accepts, end to end ---------------------------------


def test_largest_accepted_numbers_work_end_to_end(private_gw):
    """Every bound of an event definition at once (openapi.py takes them from
    flashgate.core.events): the buy, the order read back, the export and Redis agree
    exactly, and one unit more is refused. Past these bounds a per_user_limit overflowed
    the ledger's C int (500 and stuck reloads), and amounts or pay_by_ms >= 1e17 reached
    Redis as floats (a half-written commit; 500 on reading the order). On a gateway of
    its own: a regression here damages the state of the gateway it runs on."""
    from flashgate.core import events

    url, gateway = private_gw
    body = event_body(stock=(events.MAX_STOCK,), limits=[events.MAX_LIMIT],
                      ends=events.MAX_TIME_MS, payment_timeout_s=events.MAX_PAYMENT_TIMEOUT_S)
    body["skus"][0]["price"] = events.MAX_PRICE
    for field, path in (("per_user_limit", ("skus", 0)), ("price", ("skus", 0)),
                        ("payment_timeout_s", ()), ("ends_at_ms", ())):
        over = json.loads(json.dumps(body))
        node = over
        for key in path:
            node = node[key]
        node[field] += 1
        status, data, _ = gateway.admin("PUT", f"/api/v1/admin/events/{new_id()}", over)
        assert (status, data["error"]) == (400, "bad_request"), (field, status, data)
    event_id = new_id()
    gateway.put_event(event_id, body)
    status, order, _ = gateway.buy(event_id, "s0", "u-max", qty=events.MAX_LIMIT)
    assert status == 200, order
    assert order["amount"] == events.MAX_PRICE * events.MAX_LIMIT
    assert order["pay_by_ms"] == order["created_ms"] + events.MAX_PAYMENT_TIMEOUT_S * 1000
    status, got, _ = gateway.request("GET", f"/api/v1/orders/{order['order_id']}",
                                     headers={"X-User-Id": "u-max"})
    assert (status, got) == (200, order)
    client = redis.Redis.from_url(url)
    try:
        check_invariants(client, gateway, event_id, body, [order])
    finally:
        client.close()
    checker = SchemaChecker(document())
    checker.validate(schema_pointer(document(), "/api/v1/orders/{order_id}", "get", 200), got)
