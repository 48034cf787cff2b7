"""The emulator's Events API and catalog (Product Importer API) over real HTTP on loopback."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from segcrit.clock import FakeClock
from segcrit.criteo.catalog_models import BatchAcceptedResponse, ReportOkResponse
from segcrit.criteo.constants import CATALOG_BATCH_PATH, CATALOG_REPORT_PATH, TOKEN_PATH
from segcrit.emulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, EmulatorState, Endpoint
from segcrit.emulator.state import REPORT_RETENTION_SECS
from tests.helpers import EVENTS_ORDER as ORDER
from tests.helpers import catalog_product as product
from tests.helpers import changed

EVENTS = "/m/event"
REGIONAL = "/m/event/regional"
QUERY = {"version": "s2s_v0"}
MERCHANT = 6789


def insert(*products: dict[str, Any], merchant: int = MERCHANT) -> dict[str, Any]:
    return {
        "entries": [
            {"batchId": index, "merchantId": merchant, "method": "insert", "product": item}
            for index, item in enumerate(products)
        ]
    }


def report_path(token: str) -> str:
    return CATALOG_REPORT_PATH.format(operation_token=token)


@pytest.fixture
def http(emulator_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator_url, timeout=10) as client:
        yield client


@pytest.fixture
def auth(http: httpx.Client) -> dict[str, str]:
    form = {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET, "grant_type": "client_credentials"}
    response = http.post(TOKEN_PATH, data=form)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def only_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert len(body["errors"]) == 1, body
    error: dict[str, Any] = body["errors"][0]
    return error


def submit(http: httpx.Client, auth: dict[str, str], body: dict[str, Any]) -> str:
    response = http.post(CATALOG_BATCH_PATH, headers=auth, json=body)
    assert response.status_code == 202, response.text
    return BatchAcceptedResponse.model_validate(response.json()).operation_token


# ================================================================================================
# Events API
# ================================================================================================


def test_a_document_is_accepted_without_oauth_and_kept(http: httpx.Client, emulator_state: EmulatorState) -> None:
    response = http.post(EVENTS, params=QUERY, json=ORDER)
    assert response.status_code == 200
    assert response.content == b""  # Criteo documents no body
    assert emulator_state.event_documents() == [ORDER]
    assert emulator_state.events("trackTransaction") == ORDER["events"]
    (call,) = emulator_state.calls(Endpoint.EVENTS)
    assert (call.method, call.status, call.client_id, call.request) == ("POST", 200, None, ORDER)


def test_a_get_carries_the_document_in_data(http: httpx.Client, emulator_state: EmulatorState) -> None:
    response = http.get(EVENTS, params={**QUERY, "data": json.dumps(ORDER)})
    assert response.status_code == 200
    assert emulator_state.event_documents() == [ORDER]
    missing = http.get(EVENTS, params=QUERY)
    assert missing.status_code == 400
    assert only_error(missing)["code"] == "required-field"


def change(path: str, value: Any) -> dict[str, Any]:
    """ORDER with one dotted path set (None: removed)."""
    return changed(ORDER, path, value)


@pytest.mark.parametrize(
    ("document", "code"),
    [
        (change("account", None), "required-field"),
        (change("id.mapping_key", None), "required-field"),
        (change("events", []), "invalid"),
        (change("events.0.event", "buyStuff"), "invalid"),
        (change("events.0.id", None), "invalid"),
        (change("events.0.item", None), "invalid"),
    ],
    ids=["no account", "no mapping_key", "no events", "unknown event", "transaction without id", "without items"],
)
def test_invalid_documents_are_400_and_not_kept(
    http: httpx.Client, emulator_state: EmulatorState, document: dict[str, Any], code: str
) -> None:
    response = http.post(EVENTS, params=QUERY, json=document)
    assert response.status_code == 400
    assert {error["code"] for error in response.json()["errors"]} == {code}
    assert emulator_state.event_documents() == []


def test_version_and_json_are_checked(http: httpx.Client) -> None:
    assert http.post(EVENTS, json=ORDER).status_code == 400
    assert http.post(EVENTS, params={"version": "v1"}, json=ORDER).status_code == 400
    broken = http.post(EVENTS, params=QUERY, content=b"{not json")
    assert broken.status_code == 400
    assert only_error(broken)["code"] == "invalid"


def test_redirect_mode_sends_the_client_to_the_regional_endpoint(
    http: httpx.Client, emulator_state: EmulatorState, emulator_url: str
) -> None:
    emulator_state.events_redirect_hops = 1
    first = http.post(EVENTS, params=QUERY, json=ORDER)
    assert first.status_code == 307
    location = httpx.URL(first.headers["location"])
    assert (str(location.copy_with(query=None)), location.params["version"]) == (emulator_url + REGIONAL, "s2s_v0")
    assert emulator_state.event_documents() == []  # redirected before the document is read

    assert http.post(location, content=b"").status_code == 400  # a client that drops the body
    assert http.post(location, json=ORDER).status_code == 200
    assert emulator_state.event_documents() == [ORDER]


def test_several_hops_then_acceptance(http: httpx.Client, emulator_state: EmulatorState) -> None:
    emulator_state.events_redirect_hops = 3
    url: str | httpx.URL = EVENTS
    statuses = []
    for _ in range(4):
        response = http.post(url, params=QUERY if url == EVENTS else None, json=ORDER)
        statuses.append(response.status_code)
        url = httpx.URL(response.headers.get("location", ""))
    assert statuses == [307, 307, 307, 200]
    assert len(emulator_state.event_documents()) == 1


def test_the_events_host_has_its_own_rate_limit(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState, emulator_clock: FakeClock
) -> None:
    emulator_state.rate_limit_per_minute = 1  # the token call used the Marketing API's only slot
    emulator_state.events_rate_limit_per_minute = 2
    start = emulator_clock.now()
    statuses = [http.post(EVENTS, params=QUERY, json=ORDER).status_code for _ in range(2)]
    limited = http.post(EVENTS, params=QUERY, json=ORDER)
    assert statuses == [200, 200]
    assert limited.status_code == 429
    assert limited.headers["x-ratelimit-limit"] == "2"
    assert limited.headers["x-ratelimit-reset"] == str(math.ceil(start + 60))
    assert http.post(CATALOG_BATCH_PATH, headers=auth, json=insert(product("A"))).status_code == 429

    emulator_clock.advance(60)
    assert http.post(EVENTS, params=QUERY, json=ORDER).status_code == 200
    assert len(emulator_state.event_documents()) == 3


def test_the_events_limit_is_generous_by_default(emulator_state: EmulatorState) -> None:
    assert emulator_state.events_rate_limit_per_minute == 1_000


def test_faults_apply_to_the_events_api(http: httpx.Client, emulator_state: EmulatorState) -> None:
    emulator_state.set_faults("5xx_next=1,5xx_status=503")
    failed = http.post(EVENTS, params=QUERY, json=ORDER)
    assert failed.status_code == 503
    assert only_error(failed)["type"] == "availability"
    emulator_state.set_faults("429_burst=1")
    burst = http.post(EVENTS, params=QUERY, json=ORDER)
    assert burst.status_code == 429
    assert burst.headers["x-ratelimit-limit"] == "1000"
    assert http.post(EVENTS, params=QUERY, json=ORDER).status_code == 200
    assert len(emulator_state.event_documents()) == 1  # failed calls keep nothing


def test_transactions_are_counted_once_per_order(http: httpx.Client, emulator_state: EmulatorState) -> None:
    for _ in range(2):
        assert http.post(EVENTS, params=QUERY, json=ORDER).status_code == 200
    assert len(emulator_state.events("trackTransaction")) == 2
    assert list(emulator_state.transactions()) == [("6789", "O-1")]


# ================================================================================================
# Catalog
# ================================================================================================


def test_a_batch_is_accepted_and_applied(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    token = submit(http, auth, insert(product("SKU-1"), product("SKU-2", color="blue")))
    assert token
    catalog = emulator_state.catalog(MERCHANT)
    assert sorted(catalog) == ["SKU-1", "SKU-2"]
    assert catalog["SKU-2"]["color"] == "blue"  # unmodelled fields are kept
    assert emulator_state.catalog("1") == {}

    delete = {"entries": [{"merchantId": MERCHANT, "method": "delete", "productId": "SKU-1"}]}
    submit(http, auth, delete)
    assert list(emulator_state.catalog(str(MERCHANT))) == ["SKU-2"]


def test_catalog_needs_a_bearer_token(http: httpx.Client) -> None:
    response = http.post(CATALOG_BATCH_PATH, json=insert(product("A")))
    assert response.status_code == 401
    assert only_error(response)["code"] == "authorization-token-invalid"
    assert http.get(report_path("x")).status_code == 401


def test_an_empty_batch_is_400_batch_empty(http: httpx.Client, auth: dict[str, str]) -> None:
    response = http.post(CATALOG_BATCH_PATH, headers=auth, json={"entries": []})
    assert response.status_code == 400
    error = only_error(response)
    assert response.json()["warnings"] == []
    assert {k: error[k] for k in ("type", "code", "instance", "title", "detail")} == {
        "type": "validation",
        "code": "batch-empty",
        "instance": CATALOG_BATCH_PATH,
        "title": "A batch request was rejected due to one or more errors.",
        "detail": "The batch is empty.",
    }


@pytest.mark.parametrize(
    ("entry", "code", "detail"),
    [
        (
            {"merchantId": MERCHANT, "product": product("A")},
            "required-field",
            "entries.method: field is required",
        ),
        (
            {"method": "insert", "product": product("A")},
            "required-field",
            "entries.merchantId: field is required",
        ),
        ({"merchantId": MERCHANT, "method": "upsert"}, "invalid", "entries.method: "),
        ({"merchantId": MERCHANT, "method": "insert"}, "required-field", "entries.product: "),
        ({"merchantId": MERCHANT, "method": "delete"}, "required-field", "entries.productId: "),
    ],
)
def test_malformed_entries_reject_the_batch(
    http: httpx.Client,
    auth: dict[str, str],
    emulator_state: EmulatorState,
    entry: dict[str, Any],
    code: str,
    detail: str,
) -> None:
    body = {"entries": [{"merchantId": MERCHANT, "method": "insert", "product": product("OK")}, entry]}
    response = http.post(CATALOG_BATCH_PATH, headers=auth, json=body)
    assert response.status_code == 400
    error = only_error(response)
    assert (error["code"], error["detail"][: len(detail)]) == (code, detail)
    assert error["source"]["pointer"].startswith("/entries/1/")
    assert emulator_state.catalog(MERCHANT) == {}  # the good entry is refused with the batch


def test_the_same_product_twice_rejects_the_whole_batch(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    body = insert(product("A"), product("B"), product("A", title="Other title"))
    response = http.post(CATALOG_BATCH_PATH, headers=auth, json=body)
    assert response.status_code == 400
    error = only_error(response)
    assert error["code"] == "duplicate-product-in-batch"
    assert "A" in error["detail"]
    assert emulator_state.catalog(MERCHANT) == {}

    delete_too = insert(product("A"))
    delete_too["entries"].append({"merchantId": MERCHANT, "method": "delete", "productId": "A", "batchId": 9})
    assert http.post(CATALOG_BATCH_PATH, headers=auth, json=delete_too).status_code == 400
    # Ids are compared exactly: "a" is another product than "A".
    submit(http, auth, insert(product("A"), product("a")))
    assert sorted(emulator_state.catalog(MERCHANT)) == ["A", "a"]


def test_a_batch_id_twice_is_refused(http: httpx.Client, auth: dict[str, str]) -> None:
    body = insert(product("A"), product("B"))
    body["entries"][1]["batchId"] = 0
    response = http.post(CATALOG_BATCH_PATH, headers=auth, json=body)
    assert response.status_code == 400
    assert only_error(response)["detail"].startswith("entries.batchId")


def test_the_report_progresses_then_lists_products_with_errors(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    emulator_state.catalog_report_polls = 2
    good = product("Good-1", badge="not-a-url")
    bad_link = product("Bad-Link", link="ftp://shop.example.com/p")
    no_title = product("No-Title", title=None)
    no_image = product("No-Image", imageLink=None)
    token = submit(http, auth, insert(good, bad_link, no_title, no_image))

    reports = []
    for _ in range(3):
        response = http.get(report_path(token), headers=auth)
        assert response.status_code == 200
        reports.append(ReportOkResponse.model_validate(response.json()))
    assert [r.status for r in reports] == ["ACCEPTED", "IN_PROGRESS", "VALIDATED_WITH_ERRORS"]
    assert [r.done for r in reports] == [False, False, True]
    assert reports[0].counts["upserted"] is None

    final = reports[-1]
    assert final.counts == {"in_the_batch": 4, "upserted": 1, "deleted": 0, "with_errors": 3, "with_warnings": 1}
    assert {product_id: [e.type for e in errors] for product_id, errors in final.errors_by_product().items()} == {
        "bad-link": ["InvalidProductUrl"],
        "no-title": ["MissingName"],
        "no-image": ["MissingImages"],
    }
    assert [d.product_id for d in final.error_details] == ["bad-link", "no-title", "no-image"]  # lowercased
    assert [(w.product_id, w.warnings[0].type) for w in final.warning_details] == [("good-1", "InvalidBadgeUrl")]
    assert list(emulator_state.catalog(MERCHANT)) == ["Good-1"]
    # Asking again gives the same final report.
    assert http.get(report_path(token), headers=auth).json() == final.model_dump(mode="json")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"id": "Ünïcode"}, "NonAsciiId"),
        ({"id": "x" * 241}, "OverlargeID"),
        ({"link": "https://shop.example.com/" + "p" * 1000}, "OverlargeURL"),
        ({"link": None}, "MissingURL"),
        ({"imageLink": "shop.example.com/i.jpg"}, "InvalidBigImageUrl"),
        ({"additionalImageLinks": ["nope"]}, "InvalidSmallImageUrl"),
        ({"price": {"currency": "EUR", "value": 9.9}}, "JsonParsingIssue"),
    ],
)
def test_product_checks(http: httpx.Client, auth: dict[str, str], fields: dict[str, Any], error: str) -> None:
    token = submit(http, auth, insert(product("P", **fields)))
    report = ReportOkResponse.model_validate(http.get(report_path(token), headers=auth).json())
    if report.status == "ACCEPTED":  # the default: one pending poll
        report = ReportOkResponse.model_validate(http.get(report_path(token), headers=auth).json())
    assert report.status == "VALIDATED_WITH_ERRORS"
    assert [e.type for d in report.error_details for e in d.errors] == [error]


def test_a_clean_batch_validates_at_the_first_poll_when_configured(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    assert http.post("/_emulator/config", json={"catalog_report_polls": 0}).status_code == 200
    token = submit(http, auth, insert(product("A")))
    report = ReportOkResponse.model_validate(http.get(report_path(token), headers=auth).json())
    assert (report.status, report.error_details) == ("VALIDATED", [])
    assert report.counts["upserted"] == 1


def test_unknown_and_expired_reports_are_404(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState, emulator_clock: FakeClock
) -> None:
    unknown = http.get(report_path("no-such-token"), headers=auth)
    assert unknown.status_code == 404
    assert only_error(unknown)["code"] == "report-not-found"

    token = submit(http, auth, insert(product("A")))
    emulator_clock.advance(REPORT_RETENTION_SECS - 1)
    fresh = {"Authorization": auth["Authorization"]}
    # The bearer token expired long ago: fetch a new one before asking.
    form = {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET, "grant_type": "client_credentials"}
    fresh["Authorization"] = f"Bearer {http.post(TOKEN_PATH, data=form).json()['access_token']}"
    assert http.get(report_path(token), headers=fresh).status_code == 200
    emulator_clock.advance(1)
    assert http.get(report_path(token), headers=fresh).status_code == 404


def test_catalog_calls_share_the_marketing_api_limit_and_faults(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    emulator_state.set_faults("5xx_next=1")
    failed = http.post(CATALOG_BATCH_PATH, headers=auth, json=insert(product("A")))
    assert failed.status_code == 500
    assert emulator_state.catalog(MERCHANT) == {}  # nothing applied

    emulator_state.rate_limit_per_minute = 3  # token call, the failed batch, and one more
    token = submit(http, auth, insert(product("A")))
    limited = http.get(report_path(token), headers=auth)
    assert limited.status_code == 429
    assert limited.headers["x-ratelimit-limit"] == "3"
    counts = emulator_state.call_counts()
    assert (counts[Endpoint.CATALOG_BATCH], counts[Endpoint.CATALOG_REPORT]) == (2, 1)


# ================================================================================================
# Test-facing state and controls
# ================================================================================================


def test_state_config_and_reset_over_http(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    assert http.post(EVENTS, params=QUERY, json=ORDER).status_code == 200
    submit(http, auth, insert(product("A")))

    state = http.get("/_emulator/state").json()
    assert state["events"] == {
        "documents": 1,
        "byName": {"trackTransaction": 1},
        "rateLimitPerMinute": 1000,
        "redirectHops": 0,
    }
    assert state["eventDocuments"] == [ORDER]
    assert state["catalog"] == {str(MERCHANT): {"products": 1, "items": {"A": product("A")}}}
    assert state["catalogBatches"] == 1
    lean = http.get("/_emulator/state", params={"members": "0"}).json()
    assert "eventDocuments" not in lean and lean["catalog"] == {str(MERCHANT): {"products": 1}}

    settings = {"events_rate_limit_per_minute": 5, "events_redirect_hops": 2, "catalog_report_polls": 4}
    assert http.post("/_emulator/config", json=settings).status_code == 200
    assert (
        emulator_state.events_rate_limit_per_minute,
        emulator_state.events_redirect_hops,
        emulator_state.catalog_report_polls,
    ) == (5, 2, 4)
    assert http.post("/_emulator/config", json={"events_redirect_hops": -1}).status_code == 400
    assert http.post("/_emulator/config", json={"catalog_report_polls": True}).status_code == 400

    assert http.post("/_emulator/reset").status_code == 200
    assert emulator_state.event_documents() == []
    assert emulator_state.catalog(MERCHANT) == {}
