"""Fuzz (SPEC §3): hypothesis against `/v1/*` and `/webhooks/*` over real HTTP.

Bodies are random bytes, random JSON, and Segment-shaped messages whose every field may have the
wrong type or a hostile value (impossible dates, huge numbers, deep objects); sent raw or gzipped
(also broken gzip, unknown encodings), with good, wrong or no credentials (webhooks with valid
signatures too, so that bodies get past auth). Whatever comes in:

- the answer is 200, 400, 401 or 429 with a JSON body (too large is a 400 naming the limit, SPEC
  §3.1), never a 5xx;
- what was refused is not stored, and what was accepted is stored exactly once: the inbox holds
  the accepted indexes of a batch (each item carries its index in a custom key) and nothing else;
- processing takes every stored message without setting any aside (SPEC §1: a message ingest
  accepted never fails later).
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.ingest_harness import WEBHOOK_SECRET, WRITE_KEY, IngestEnv, IngestServer, ingest_server, signature

ALLOWED_STATUSES = {200, 400, 401, 429}
BATCH_PATHS = ["/v1/batch", "/v1/import", "/v1/b"]
SINGLE_PATHS = ["/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias"]
SHORT_PATHS = ["/v1/t", "/v1/i", "/v1/p", "/v1/s", "/v1/g", "/v1/a"]
WEBHOOK_NAMES = ["engage"] * 8 + ["nosuch", "web"]
TYPES = ["track", "identify", "page", "screen", "group", "alias", "delete", "Track", "batch"]
EVENTS = [
    "Order Completed",
    "Product Viewed",
    "Products Searched",
    "Product Added",
    "Audience Entered",
    "Audience Exited",
    "Trial Started",
    "Subscription Started",
]
MARKER = "fuzz_index"  # a custom top-level key: which item of the request a stored message was
_unique = itertools.count(1)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The field as it should be, or anything at all."""
    return st.one_of(strategy, json_values)


def mostly(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The field as it should be, now and then anything at all (so that whole messages pass)."""
    return st.one_of(*[strategy] * 7, json_values)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={name: maybe(value) for name, value in fields.items()})


iso_pieces = st.builds(
    "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}{}".format,
    st.integers(0, 9999),
    st.integers(0, 14),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.sampled_from(["", ".5", ".123456789", ".1234567890"]),
    st.sampled_from(["", "Z", "+00:00", "-05:00", "+14:00", "+23:59", "+25:00", "+02:60", "-2359", "+01"]),
)
valid_times = st.datetimes().map(lambda moment: moment.isoformat() + "Z")
edge_times = st.sampled_from(
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "0001-01-01T00:59:59.999999+01:00",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:59:59+14:00",
        "1970-01-01T00:00:00Z",
        "2038-01-19T03:14:08Z",
    ]
)
timestamps = mostly(st.one_of(valid_times, valid_times, iso_pieces, edge_times))
ids = st.one_of(
    *[st.builds(lambda: f"id-{next(_unique)}")] * 6,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.emails(),
    st.sampled_from(["", "+33 6 12 34 56 78", "x" * 600]),
    json_values,
)
# Unique, so that no accepted message is a duplicate of another (dedupe is tested on its own).
message_ids = st.one_of(
    *[st.builds(lambda: f"mid-{next(_unique)}")] * 6,
    st.builds(lambda: 10**12 + next(_unique)),
    st.sampled_from([None, ""]),
    st.builds(lambda: f"{next(_unique)}-" + "m" * 100),
    st.lists(st.integers(), max_size=2),
    st.booleans(),
)
products = st.lists(
    maybe(
        optional(
            product_id=st.text(max_size=5) | st.integers(),
            sku=st.text(max_size=5),
            price=st.floats(allow_nan=False) | st.text(max_size=6),
            quantity=st.integers() | st.text(max_size=3),
            name=st.text(max_size=10),
            url=st.text(max_size=10),
            image_url=st.text(max_size=10),
            currency=st.sampled_from(["EUR", "usd", ""]),
        )
    ),
    max_size=4,
)
contexts = optional(
    traits=optional(email=st.emails(), phone=st.text(max_size=20), criteo_gum_id=st.text(max_size=8)),
    page=optional(url=st.text(max_size=20), path=st.sampled_from(["/", "/p/1"]), referrer=st.text(max_size=20)),
    consent=optional(categoryPreferences=st.dictionaries(st.sampled_from(["Advertising", "x"]), maybe(st.booleans()))),
    device=optional(advertisingId=st.uuids().map(str), adTrackingEnabled=st.booleans(), type=st.just("ios")),
    personas=optional(computation_class=st.sampled_from(["audience", "journey_step"]), computation_key=st.just("vip")),
    userAgent=st.text(max_size=30),
    ip=st.text(max_size=15),
)
properties = optional(
    audience_key=st.sampled_from(["vip", "cart"]),
    vip=st.booleans() | st.sampled_from(["true", "false"]),
    order_id=st.text(max_size=6) | st.integers(),
    revenue=st.floats(allow_nan=False) | st.text(max_size=6),
    total=st.floats(allow_nan=False),
    currency=st.sampled_from(["EUR", "usd", ""]),
    products=products,
    product_id=st.text(max_size=5),
    query=st.text(max_size=10),
    email=st.emails(),
)
traits = optional(email=st.emails(), phone_number=st.text(max_size=20), plan=st.text(max_size=8), score=st.integers())
messages = st.fixed_dictionaries(
    {"type": mostly(st.sampled_from(TYPES)), "userId": ids},
    optional={
        "anonymousId": ids,
        "previousId": ids,
        "groupId": ids,
        "messageId": message_ids,
        "event": mostly(st.sampled_from(EVENTS)),
        "name": maybe(st.just("Home")),
        "timestamp": timestamps,
        "sentAt": timestamps,
        "receivedAt": timestamps,
        "context": mostly(contexts),
        "properties": mostly(properties),
        "traits": mostly(traits),
        "integrations": maybe(st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
    },
)
items = st.lists(mostly(messages), max_size=6)
raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.just(b'{"batch": ' + b"[" * 40 + b"]" * 40 + b"}"),
    st.just(b'{"batch": [' + b'{"type": "track", "event": "E", "userId": "u"},' * 3),  # cut off
    st.just(b'{"batch": [{"userId": 1' + b"0" * 30 + b"}]}"),  # an integer JSON parsers refuse
    st.just(b'{"batch": [], "x": "' + b"x" * 600_000 + b'"}'),  # over 500 KB
)


def tagged(values: list[Any]) -> list[Any]:
    """The items, each object marked with its index (MARKER) so the stored copy can be traced."""
    return [{**value, MARKER: index} if isinstance(value, dict) else value for index, value in enumerate(values)]


@st.composite
def tracking_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str], list[Any] | None]:
    """(path, body, headers, the items the body holds, or None when it is not JSON we built)."""
    path = draw(st.sampled_from(BATCH_PATHS + SINGLE_PATHS + SHORT_PATHS))
    key = draw(st.sampled_from([WRITE_KEY] * 6 + ["wrong", None]))
    sent: list[Any] | None
    if draw(st.integers(0, 9)) == 0:
        body, sent = draw(raw_bodies), None
    elif path in BATCH_PATHS:
        sent = tagged(draw(items))
        envelope = draw(optional(context=contexts, integrations=st.just({}), sentAt=st.just("2026-11-28T13:03:10Z")))
        if draw(st.booleans()):
            envelope["sentAt"] = draw(timestamps)
        batch = draw(st.one_of(st.just(sent), json_values)) if draw(st.integers(0, 5)) == 0 else sent
        body_object = {"batch": batch, **envelope}
        if key is not None and draw(st.integers(0, 4)) > 0:
            body_object["writeKey"] = key
        body = json.dumps(body_object).encode()
        sent = sent if batch is sent else None
    else:
        single = draw(mostly(messages))
        sent = tagged([single])
        if key is not None and isinstance(sent[0], dict) and draw(st.integers(0, 4)) > 0:
            sent[0]["writeKey"] = key
        body = json.dumps(sent[0]).encode()
    headers = draw(tracking_auth(key))
    return path, body, headers, sent


@st.composite
def tracking_auth(draw: st.DrawFn, key: str | None) -> dict[str, str]:
    kind = draw(st.sampled_from(["basic"] * 6 + ["basic-no-colon", "bearer", "none", "junk"]))
    if kind.startswith("basic") and key is not None:
        user = key + (":" if kind == "basic" else "")
        return {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()}
    if kind == "bearer":
        return {"Authorization": "Bearer " + draw(st.text("abcdef0123456789", min_size=1, max_size=20))}
    if kind == "junk":  # any header value HTTP can carry (no edge whitespace)
        value = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30))
        return {"Authorization": value.strip() or "x"}
    return {}


@st.composite
def webhook_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str], list[Any] | None]:
    path = "/webhooks/" + draw(st.sampled_from(WEBHOOK_NAMES))
    sent: list[Any] | None
    if draw(st.integers(0, 9)) == 0:
        body, sent = draw(raw_bodies), None
        signed = body
    elif draw(st.booleans()):
        sent = tagged([draw(mostly(messages))])
        body = signed = json.dumps(sent[0]).encode()
    else:
        sent = tagged(draw(items))
        elements = [json.dumps(value).encode() for value in sent]
        body = b"[" + b",".join(elements) + b"]"
        signed = elements[0] if elements else body  # Segment signs element 0 of an array
    secret = draw(st.sampled_from([WEBHOOK_SECRET] * 8 + ["wrong", None]))
    headers = {"X-Signature": signature(signed, secret)} if secret is not None else {}
    return path, body, headers, sent


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str], list[Any] | None]:
    path, body, headers, sent = draw(st.one_of(tracking_requests(), webhook_requests()))
    method = draw(st.sampled_from(["POST", "PUT", "PATCH"])) if path.startswith("/webhooks/") else "POST"
    encoding = draw(st.sampled_from(["", "", "", "", "", "gzip", "gzip", "broken-gzip", "br"]))
    if encoding == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif encoding == "broken-gzip":
        body = gzip.compress(body)[: draw(st.integers(0, 20))]
        headers["Content-Encoding"] = "gzip"
    elif encoding == "br":
        headers["Content-Encoding"] = "br"
    headers["Content-Type"] = draw(
        st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"])
    )
    return method, path, body, headers, sent


@pytest.fixture(scope="module")
def server() -> Iterator[IngestServer]:
    with ingest_server() as running:
        yield running


def check_stored(env: IngestEnv, path: str, answer: dict[str, Any], sent: list[Any] | None) -> None:
    """The inbox holds each accepted item of the request once, and nothing refused."""
    stored = [event.message.get(MARKER) for event in env.inbox()]
    rejected = answer.get("rejected", [])
    assert all(isinstance(r["reason"], str) and r["reason"] for r in rejected)
    refused = [r["index"] for r in rejected]
    assert len(set(refused)) == len(refused)
    if sent is None:  # bytes we did not build: whatever was stored must be ours to trace
        assert all(isinstance(index, int) for index in stored)
        return
    assert all(0 <= index < len(sent) for index in refused)
    single = path.removeprefix("/v1/") in {p.removeprefix("/v1/") for p in SINGLE_PATHS + SHORT_PATHS}
    if single:
        assert refused == []  # a single message is stored or answered with a 400
    assert sorted(stored) == [index for index in range(len(sent)) if index not in refused]


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests())
def test_every_answer_is_json_never_a_5xx_and_only_what_was_accepted_is_stored(
    server: IngestServer, request: tuple[str, str, bytes, dict[str, str], list[Any] | None]
) -> None:
    method, path, body, headers, sent = request
    with server.fresh() as env:
        response = env.http.request(method, path, content=body, headers=headers)
        assert response.status_code in ALLOWED_STATUSES, response.text
        assert response.headers["content-type"].startswith("application/json")
        answer = response.json()
        assert isinstance(answer, dict)
        event(f"{response.status_code} {answer.get('code', '')}")  # --hypothesis-show-statistics
        if response.status_code != 200:
            assert answer["code"] and answer["error"]
            assert env.inbox() == []
            return
        assert answer["success"] is True
        check_stored(env, path, answer, sent)
        waiting = len(env.inbox())
        event("stored" if waiting else "nothing stored")
        assert env.drain() == waiting
        assert env.store.failed_event_count() == 0
