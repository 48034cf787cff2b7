"""The Criteo emulator over real HTTP on loopback: auth, segments, contact lists, limits, faults."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from segcrit.clock import FakeClock
from segcrit.criteo.constants import (
    CONTACT_LIST_PATH,
    CONTACT_LIST_STATISTICS_PATH,
    CREATE_SEGMENTS_PATH,
    DELETE_SEGMENTS_PATH,
    MAX_IDENTIFIERS_PER_CALL,
    SEARCH_SEGMENTS_PATH,
    TOKEN_PATH,
)
from segcrit.criteo.models import (
    AudienceSegmentBulkCreateInputV1,
    AudienceSegmentBulkDeleteInputV1,
    AudienceSegmentCreateEntityV1,
    AudienceSegmentEntityV1ListResponse,
    AudienceSegmentSearchInputV1,
    AudienceSegmentSearchResponse,
    ContactlistAmendmentRequest,
    ContactListStatisticsEntityV1Response,
    DeleteAudienceContactListResponse,
    ModifyAudienceResponse,
)
from segcrit.emulator import (
    DEMO_ADVERTISER_ID,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    EmulatorState,
    Endpoint,
    FaultSpecError,
    parse_faults,
)

VERSION = "2026-07"
SEARCH = SEARCH_SEGMENTS_PATH.format(version=VERSION)
CREATE = CREATE_SEGMENTS_PATH.format(version=VERSION)
DELETE = DELETE_SEGMENTS_PATH.format(version=VERSION)
TOKEN_FORM = {
    "client_id": DEMO_CLIENT_ID,
    "client_secret": DEMO_CLIENT_SECRET,
    "grant_type": "client_credentials",
}
EMAILS = ["ann@example.com", "bob@example.com", "e13743a7f1db7f4246badd6fd6ff54ff"]


def contact_list(segment_id: str) -> str:
    return CONTACT_LIST_PATH.format(version=VERSION, segment_id=segment_id)


def statistics(segment_id: str) -> str:
    return CONTACT_LIST_STATISTICS_PATH.format(version=VERSION, segment_id=segment_id)


@pytest.fixture
def http(emulator_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator_url, timeout=10) as client:
        yield client


def fetch_token(http: httpx.Client, **form: str) -> str:
    response = http.post(TOKEN_PATH, data={**TOKEN_FORM, **form})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture
def auth(http: httpx.Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {fetch_token(http)}"}


def create(
    http: httpx.Client, auth: dict[str, str], *names: str, advertiser_id: str = DEMO_ADVERTISER_ID
) -> httpx.Response:
    body = AudienceSegmentBulkCreateInputV1.of(
        *(AudienceSegmentCreateEntityV1.contact_list_segment(advertiser_id, name) for name in names)
    )
    return http.post(CREATE, headers=auth, json=body.to_json())


def create_one(http: httpx.Client, auth: dict[str, str], name: str) -> str:
    response = create(http, auth, name)
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["id"])


def amend(
    http: httpx.Client,
    auth: dict[str, str],
    segment_id: str,
    operation: Any,
    identifiers: list[str],
    identifier_type: Any = "email",
) -> httpx.Response:
    body = ContactlistAmendmentRequest.build(operation, identifier_type, identifiers)
    return http.patch(contact_list(segment_id), headers=auth, json=body.to_json())


def search(http: httpx.Client, auth: dict[str, str], body: dict[str, Any], **params: int) -> httpx.Response:
    return http.post(SEARCH, headers=auth, params=params, json=body)


def only_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["warnings"] == []
    assert len(body["errors"]) == 1, body
    error: dict[str, Any] = body["errors"][0]
    return error


# --- OAuth token --------------------------------------------------------------------------------


def test_token_is_issued_for_client_credentials(http: httpx.Client) -> None:
    response = http.post(TOKEN_PATH, data=TOKEN_FORM, headers={"Accept": "text/plain"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert "refresh_token" in body and body["refresh_token"] is None
    assert len(body["access_token"]) >= 20
    assert response.headers["x-ratelimit-limit"] == "250"
    assert response.headers["x-ratelimit-remaining"] == "249"


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "nobody"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"grant_type": ""}, 400, "invalid_request"),
    ],
)
def test_token_refusals_are_oauth_errors(http: httpx.Client, form: dict[str, str], status: int, error: str) -> None:
    response = http.post(TOKEN_PATH, data={**TOKEN_FORM, **form})
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["error_description"]


def test_token_call_needs_a_form_body(http: httpx.Client) -> None:
    response = http.post(TOKEN_PATH, json=TOKEN_FORM)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# --- Bearer auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer not-a-token", "Basic abc", "Bearer"])
def test_missing_or_unknown_token_is_invalid(http: httpx.Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = http.post(SEARCH, headers=headers, json={})
    assert response.status_code == 401
    error = only_error(response)
    assert error["code"] == "authorization-token-invalid"
    assert error["type"] == "authorization"
    assert error["instance"] == SEARCH
    assert error["title"] == "The authorization header is invalid"
    uuid.UUID(error["traceId"])
    assert "x-ratelimit-reset" in response.headers


def test_token_expires_after_900_seconds(http: httpx.Client, auth: dict[str, str], emulator_clock: FakeClock) -> None:
    emulator_clock.advance(899)
    assert search(http, auth, {}).status_code == 200
    emulator_clock.advance(1)
    response = search(http, auth, {})
    assert response.status_code == 401
    assert only_error(response)["code"] == "authorization-token-expired"
    fresh = {"Authorization": f"Bearer {fetch_token(http)}"}
    assert search(http, fresh, {}).status_code == 200


def test_every_error_carries_a_fresh_trace_id(http: httpx.Client) -> None:
    first = only_error(http.post(SEARCH, json={}))["traceId"]
    second = only_error(http.post(SEARCH, json={}))["traceId"]
    assert first != second


# --- Versions and unknown routes ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["2026-07", "2027-01", "2025-10", "preview"])
def test_any_dated_version_or_preview_is_served(http: httpx.Client, auth: dict[str, str], version: str) -> None:
    response = http.post(SEARCH_SEGMENTS_PATH.format(version=version), headers=auth, json={})
    assert response.status_code == 200


def test_unknown_version_and_route_are_404_in_criteo_shape(http: httpx.Client, auth: dict[str, str]) -> None:
    assert http.post(SEARCH_SEGMENTS_PATH.format(version="v1"), headers=auth, json={}).status_code == 404
    response = http.get("/2026-07/marketing-solutions/nothing-here", headers=auth)
    assert response.status_code == 404
    assert only_error(response)["code"] == "not-found"
    assert response.headers["x-ratelimit-limit"] == "250"


def test_decommissioned_version_is_gone(emulator_state: EmulatorState, http: httpx.Client) -> None:
    emulator_state.decommissioned_versions = frozenset({"2024-10"})
    token = fetch_token(http)
    response = http.post(
        SEARCH_SEGMENTS_PATH.format(version="2024-10"), headers={"Authorization": f"Bearer {token}"}, json={}
    )
    assert response.status_code == 410


# --- Create and search ----------------------------------------------------------------------------


def test_created_contact_list_is_described_like_criteo_does(
    http: httpx.Client, auth: dict[str, str], emulator_clock: FakeClock
) -> None:
    response = create(http, auth, "cart_abandoners")
    assert response.status_code == 200
    parsed = AudienceSegmentEntityV1ListResponse.model_validate(response.json())
    assert parsed.errors == [] and parsed.warnings == []
    (segment,) = parsed.data
    assert segment.id is not None and segment.id.isdigit()
    assert segment.type == "AudienceSegment"
    assert segment.attributes is not None
    assert segment.attributes.type == "ContactList"
    assert segment.attributes.advertiser_id == DEMO_ADVERTISER_ID
    assert segment.attributes.contact_list is not None
    assert segment.attributes.contact_list.is_read_only is False
    assert segment.attributes.created_at is not None
    assert segment.attributes.created_at.timestamp() == emulator_clock.now()


def test_search_pages_in_id_order_with_meta(http: httpx.Client, auth: dict[str, str]) -> None:
    names = [f"audience_{i}" for i in range(7)]
    assert create(http, auth, *names).status_code == 200
    body = AudienceSegmentSearchInputV1.build(advertiser_ids=[DEMO_ADVERTISER_ID]).to_json()
    seen: list[str] = []
    ids: list[str] = []
    offset = 0
    while True:
        page = AudienceSegmentSearchResponse.model_validate(search(http, auth, body, limit=3, offset=offset).json())
        assert page.meta is not None
        assert (page.meta.total_items, page.meta.limit, page.meta.offset) == (7, 3, offset)
        seen += [s.attributes.name for s in page.data if s.attributes and s.attributes.name]
        ids += [s.id for s in page.data if s.id]
        offset += 3
        if offset >= (page.meta.total_items or 0):
            break
    assert seen == names
    assert ids == sorted(ids, key=int)


def test_search_defaults_to_50_and_filters_are_anded(http: httpx.Client, auth: dict[str, str]) -> None:
    first, second = (create_one(http, auth, name) for name in ("one", "two"))
    meta = search(http, auth, {}).json()["meta"]
    assert meta == {"totalItems": 2, "limit": 50, "offset": 0}

    by_id = AudienceSegmentSearchInputV1.build(audience_segment_ids=[second]).to_json()
    assert [s["id"] for s in search(http, auth, by_id).json()["data"]] == [second]
    lookalikes = AudienceSegmentSearchInputV1.build(audience_segment_types=["Lookalike"]).to_json()
    assert search(http, auth, lookalikes).json()["data"] == []
    both = AudienceSegmentSearchInputV1.build(
        audience_segment_ids=[first], audience_segment_types=["ContactList"]
    ).to_json()
    assert [s["id"] for s in search(http, auth, both).json()["data"]] == [first]


@pytest.mark.parametrize("params", [{"limit": 101}, {"limit": -1}, {"offset": -1}])
def test_search_paging_out_of_range_is_400(http: httpx.Client, auth: dict[str, str], params: dict[str, int]) -> None:
    response = search(http, auth, {}, **params)
    assert response.status_code == 400
    assert only_error(response)["type"] == "validation"


def test_search_limit_100_is_allowed(http: httpx.Client, auth: dict[str, str]) -> None:
    assert search(http, auth, {}, limit=100).status_code == 200
    assert search(http, auth, {}, limit=0).json()["data"] == []


def test_duplicate_name_in_warning_mode_is_200_with_a_warning(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    create_one(http, auth, "buyers")
    response = create(http, auth, "buyers", "browsers", "browsers")
    assert response.status_code == 200
    body = response.json()
    assert [s["attributes"]["name"] for s in body["data"]] == ["browsers"]
    assert [w["code"] for w in body["warnings"]] == ["name-must-be-unique", "name-must-be-unique"]
    assert body["warnings"][0]["detail"] == "Another Segment exists with the name: buyers"
    assert body["errors"] == []
    assert sorted(s.name for s in emulator_state.segments()) == ["browsers", "buyers"]


def test_duplicate_name_in_error_mode_rejects_the_request(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    emulator_state.duplicate_name_mode = "error"
    create_one(http, auth, "buyers")
    response = create(http, auth, "newcomers", "buyers")
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "name-must-be-unique"
    assert response.json()["errors"][0]["type"] == "validation"
    assert [s.name for s in emulator_state.segments()] == ["buyers"]


def test_same_name_under_another_advertiser_is_fine(http: httpx.Client, emulator_state: EmulatorState) -> None:
    emulator_state.add_client("agency", "agency-secret", ["12345", "777"])
    auth = {"Authorization": f"Bearer {fetch_token(http, client_id='agency', client_secret='agency-secret')}"}
    create_one(http, auth, "buyers")
    response = create(http, auth, "buyers", advertiser_id="777")
    assert response.status_code == 200 and response.json()["warnings"] == []


def test_empty_name_is_refused_per_item(http: httpx.Client, auth: dict[str, str]) -> None:
    response = create(http, auth, " ", "ok")
    assert [w["code"] for w in response.json()["warnings"]] == ["name-must-not-be-empty"]
    assert [s["attributes"]["name"] for s in response.json()["data"]] == ["ok"]


def test_lookalike_needs_a_seed_of_the_same_advertiser(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    seed = create_one(http, auth, "high_value")
    foreign_seed = emulator_state.create_segment("theirs", advertiser_id="999")
    body = AudienceSegmentBulkCreateInputV1.of(
        AudienceSegmentCreateEntityV1.lookalike_segment(DEMO_ADVERTISER_ID, "LAL", seed, 1_000_000),
        AudienceSegmentCreateEntityV1.lookalike_segment(DEMO_ADVERTISER_ID, "LAL missing", "424242"),
        AudienceSegmentCreateEntityV1.lookalike_segment(DEMO_ADVERTISER_ID, "LAL foreign", foreign_seed),
    )
    response = http.post(CREATE, headers=auth, json=body.to_json())
    assert response.status_code == 200
    (created,) = response.json()["data"]
    assert created["attributes"]["type"] == "Lookalike"
    assert created["attributes"]["lookalike"] == {"seedSegmentId": seed, "targetSize": 1_000_000}
    assert [w["code"] for w in response.json()["warnings"]] == ["segment-not-found", "segment-not-found"]
    assert emulator_state.segment("LAL").seed_segment_id == seed


def test_create_needs_exactly_one_supported_kind(http: httpx.Client, auth: dict[str, str]) -> None:
    items = [
        {"attributes": {"advertiserId": DEMO_ADVERTISER_ID, "name": "none"}},
        {"attributes": {"advertiserId": DEMO_ADVERTISER_ID, "name": "geo", "location": {"radiusInKm": 5}}},
    ]
    response = http.post(CREATE, headers=auth, json={"data": items})
    assert response.status_code == 200
    assert response.json()["data"] == []
    assert [w["code"] for w in response.json()["warnings"]] == ["invalid", "invalid"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"data": [{"attributes": {"name": "no advertiser", "contactList": {}}}]}, "required-field"),
        ({"data": [{"attributes": {"advertiserId": DEMO_ADVERTISER_ID, "name": 5}}]}, "invalid"),
        ({}, "required-field"),
    ],
)
def test_malformed_create_is_400(http: httpx.Client, auth: dict[str, str], body: dict[str, Any], code: str) -> None:
    response = http.post(CREATE, headers=auth, json=body)
    assert response.status_code == 400
    assert only_error(response)["code"] == code


def test_invalid_json_is_400_in_criteo_shape(http: httpx.Client, auth: dict[str, str]) -> None:
    response = http.post(CREATE, headers={**auth, "Content-Type": "application/json"}, content=b"{not json")
    assert response.status_code == 400
    error = only_error(response)
    assert (error["type"], error["code"]) == ("validation", "invalid")


# --- Advertiser scoping -------------------------------------------------------------------------


def test_other_advertisers_are_forbidden(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    theirs = emulator_state.create_segment("theirs", advertiser_id="999")
    create_one(http, auth, "ours")

    assert create(http, auth, "x", advertiser_id="999").status_code == 403
    filtered = AudienceSegmentSearchInputV1.build(advertiser_ids=["999"]).to_json()
    assert search(http, auth, filtered).status_code == 403
    assert [s["attributes"]["name"] for s in search(http, auth, {}).json()["data"]] == ["ours"]
    response = amend(http, auth, theirs, "add", EMAILS)
    assert response.status_code == 403
    assert only_error(response)["type"] == "access-control"
    assert http.post(DELETE, headers=auth, json={"data": [{"id": theirs}]}).status_code == 403
    assert emulator_state.members("theirs") == set()


# --- Contact list PATCH / DELETE / statistics ---------------------------------------------------


def test_add_is_a_union_and_remove_a_difference(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    segment_id = create_one(http, auth, "buyers")
    assert amend(http, auth, segment_id, "add", EMAILS[:2]).status_code == 200
    assert amend(http, auth, segment_id, "add", EMAILS[1:]).status_code == 200
    assert emulator_state.members("buyers") == set(EMAILS)
    assert emulator_state.members(segment_id, "email") == set(EMAILS)

    response = amend(http, auth, segment_id, "remove", [EMAILS[0], "never@example.com"])
    assert response.status_code == 200
    assert emulator_state.members("buyers") == set(EMAILS[1:])


def test_patch_answer_counts_valid_and_invalid_identifiers(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState, emulator_clock: FakeClock
) -> None:
    segment_id = create_one(http, auth, "buyers")
    response = amend(http, auth, segment_id, "add", [*EMAILS, "jkl@gmail", "not an email"])
    assert response.status_code == 200
    parsed = ModifyAudienceResponse.model_validate(response.json())
    summary = parsed.data.attributes
    assert parsed.data.type == "ContactlistAmendment"
    assert summary.contact_list_id == int(segment_id)
    assert (summary.operation, summary.identifier_type) == ("add", "email")
    assert (summary.nb_valid_identifiers, summary.nb_invalid_identifiers) == (3, 2)
    assert summary.sample_invalid_identifiers == ["jkl@gmail", "not an email"]
    assert summary.request_date is not None and summary.request_date.timestamp() == emulator_clock.now()
    assert emulator_state.members("buyers") == set(EMAILS)


@pytest.mark.parametrize(
    ("identifier_type", "valid", "invalid"),
    [
        ("madid", "3f097372-f01e-4b64-984c-395ae5828EE6", "not-a-uuid"),
        ("phoneNumber", "+14155552671", "0123"),
        ("identityLink", "XY1005wXyWPB", ""),
    ],
)
def test_each_identifier_type_has_its_validity_rule(
    http: httpx.Client,
    auth: dict[str, str],
    emulator_state: EmulatorState,
    identifier_type: str,
    valid: str,
    invalid: str,
) -> None:
    segment_id = create_one(http, auth, "mobile")
    response = amend(http, auth, segment_id, "add", [valid, invalid], identifier_type)
    attributes = response.json()["data"]["attributes"]
    assert (attributes["nbValidIdentifiers"], attributes["nbInvalidIdentifiers"]) == (1, 1)
    assert emulator_state.members("mobile", identifier_type) == {valid}  # type: ignore[arg-type]


def test_gum_needs_a_caller_id(http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState) -> None:
    segment_id = create_one(http, auth, "gum")
    response = amend(http, auth, segment_id, "add", ["gum-1"], "gum")
    assert response.status_code == 400
    assert only_error(response)["code"] == "required-field"
    body = ContactlistAmendmentRequest.build("add", "gum", ["gum-1"], gum_caller_id=329739).to_json()
    assert http.patch(contact_list(segment_id), headers=auth, json=body).status_code == 200
    assert emulator_state.members("gum", "gum") == {"gum-1"}


def test_at_most_50000_identifiers_per_call(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    segment_id = create_one(http, auth, "big")
    identifiers = [f"{i:064x}" for i in range(MAX_IDENTIFIERS_PER_CALL + 1)]
    response = amend(http, auth, segment_id, "add", identifiers)
    assert response.status_code == 400
    assert only_error(response)["code"] == "invalid-ranged"
    assert emulator_state.members("big") == set()

    response = amend(http, auth, segment_id, "add", identifiers[:MAX_IDENTIFIERS_PER_CALL])
    assert response.status_code == 200
    assert len(emulator_state.members("big")) == MAX_IDENTIFIERS_PER_CALL


def test_unknown_or_non_contact_list_segment_is_404_audience_invalid(http: httpx.Client, auth: dict[str, str]) -> None:
    seed = create_one(http, auth, "seed")
    body = AudienceSegmentBulkCreateInputV1.of(
        AudienceSegmentCreateEntityV1.lookalike_segment(DEMO_ADVERTISER_ID, "LAL", seed)
    ).to_json()
    lookalike = http.post(CREATE, headers=auth, json=body).json()["data"][0]["id"]
    for segment_id in ("424242", lookalike):
        response = amend(http, auth, segment_id, "add", EMAILS)
        assert response.status_code == 404
        error = only_error(response)
        assert (error["type"], error["code"]) == ("validation", "audience-invalid")
        assert error["instance"] == contact_list(segment_id)
        assert http.get(statistics(segment_id), headers=auth).status_code == 404
        assert http.delete(contact_list(segment_id), headers=auth).status_code == 404


def test_non_numeric_segment_id_is_400(http: httpx.Client, auth: dict[str, str]) -> None:
    assert amend(http, auth, "abc", "add", EMAILS).status_code == 400
    assert amend(http, auth, "99999999999", "add", EMAILS).status_code == 400


@pytest.mark.parametrize(
    ("attributes", "code"),
    [
        ({"identifierType": "email", "identifiers": ["a@b.co"]}, "required-field"),
        ({"operation": "replace", "identifierType": "email", "identifiers": []}, "invalid"),
        ({"operation": "add", "identifierType": "customerid", "identifiers": []}, "invalid"),
        ({"operation": "add", "identifierType": "email", "identifiers": [1, 2]}, "invalid"),
        ({"operation": "add", "identifierType": "email"}, "required-field"),
    ],
)
def test_malformed_amendment_is_400(
    http: httpx.Client, auth: dict[str, str], attributes: dict[str, Any], code: str
) -> None:
    segment_id = create_one(http, auth, "buyers")
    body = {"data": {"type": "ContactlistAmendment", "attributes": attributes}}
    response = http.patch(contact_list(segment_id), headers=auth, json=body)
    assert response.status_code == 400
    assert {e["code"] for e in response.json()["errors"]} == {code}


def test_unknown_attribute_keys_are_tolerated_and_noted(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    # Criteo takes `internalIdentifiers` (RudderStack sends it); the emulator notes the key, so that
    # a client model sending a key Criteo does not know fails its test (tests/conftest.py).
    segment_id = create_one(http, auth, "buyers")
    attributes = {
        "operation": "add",
        "identifierType": "email",
        "identifiers": EMAILS,
        "internalIdentifiers": False,
    }
    body = {"data": {"type": "ContactlistAmendment", "attributes": attributes}}
    assert http.patch(contact_list(segment_id), headers=auth, json=body).status_code == 200
    assert emulator_state.unknown_keys(clear=True) == [
        (contact_list(segment_id), "data.attributes.internalIdentifiers")
    ]


def test_empty_amendment_is_fine(http: httpx.Client, auth: dict[str, str]) -> None:
    segment_id = create_one(http, auth, "buyers")
    response = amend(http, auth, segment_id, "remove", [])
    assert response.status_code == 200
    assert response.json()["data"]["attributes"]["nbValidIdentifiers"] == 0


def test_delete_contact_list_wipes_members_and_keeps_the_segment(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    segment_id = create_one(http, auth, "buyers")
    amend(http, auth, segment_id, "add", EMAILS)
    response = http.delete(contact_list(segment_id), headers=auth)
    assert response.status_code == 200
    parsed = DeleteAudienceContactListResponse.model_validate(response.json())
    assert (parsed.data.id, parsed.data.type) == (segment_id, "AudienceContactlist")
    assert emulator_state.members("buyers") == set()
    assert emulator_state.segment("buyers").id == segment_id


def test_statistics_count_members_and_matches(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    segment_id = create_one(http, auth, "buyers")
    empty = http.get(statistics(segment_id), headers=auth).json()["data"]["attributes"]
    assert empty == {"numberOfIdentifiers": 0, "numberOfMatches": 0, "matchRate": 0.0}

    amend(http, auth, segment_id, "add", EMAILS)
    amend(http, auth, segment_id, "add", ["3f097372-f01e-4b64-984c-395ae5828ee6"], "madid")
    emulator_state.match_rate = 0.5
    response = http.get(statistics(segment_id), headers=auth)
    parsed = ContactListStatisticsEntityV1Response.model_validate(response.json())
    assert parsed.data is not None and parsed.data.attributes is not None
    assert (parsed.data.id, parsed.data.type) == (segment_id, "ContactListStatistics")
    stats = parsed.data.attributes
    assert (stats.number_of_identifiers, stats.number_of_matches, stats.match_rate) == (4, 2, 0.5)


# --- Delete segments ------------------------------------------------------------------------------


def test_delete_segments_reports_unknown_ids_as_warnings(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    segment_id = create_one(http, auth, "buyers")
    amend(http, auth, segment_id, "add", EMAILS)
    body = AudienceSegmentBulkDeleteInputV1.of_ids(segment_id, "424242", segment_id).to_json()
    response = http.post(DELETE, headers=auth, json=body)
    assert response.status_code == 200
    assert [d["id"] for d in response.json()["data"]] == [segment_id]
    assert [w["code"] for w in response.json()["warnings"]] == ["segment-not-found", "segment-not-found"]
    assert emulator_state.segments() == []
    assert amend(http, auth, segment_id, "add", EMAILS).status_code == 404


# --- Rate limit -----------------------------------------------------------------------------------


def test_rate_limit_is_a_sliding_window_per_client(
    http: httpx.Client, emulator_state: EmulatorState, emulator_clock: FakeClock
) -> None:
    emulator_state.rate_limit_per_minute = 4
    start = emulator_clock.now()
    auth = {"Authorization": f"Bearer {fetch_token(http)}"}  # token calls count too
    remaining = []
    for _ in range(3):
        emulator_clock.advance(10)
        response = search(http, auth, {})
        assert response.status_code == 200
        remaining.append(response.headers["x-ratelimit-remaining"])
        assert response.headers["x-ratelimit-reset"] == str(math.ceil(start + 60))
    assert remaining == ["2", "1", "0"]

    limited = search(http, auth, {})
    assert limited.status_code == 429
    assert limited.headers["x-ratelimit-limit"] == "4"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert limited.headers["x-ratelimit-reset"] == str(math.ceil(start + 60))
    assert only_error(limited)["type"] == "quota"

    emulator_clock.advance(30)  # the token call (at start) leaves the window: one slot
    assert search(http, auth, {}).status_code == 200
    assert search(http, auth, {}).status_code == 429
    assert emulator_state.call_counts()[Endpoint.SEARCH] == 6


def test_rate_limit_is_250_per_minute_by_default(http: httpx.Client, auth: dict[str, str]) -> None:
    statuses = [search(http, auth, {}).status_code for _ in range(250)]
    assert statuses == [200] * 249 + [429]  # the token call took the first slot


# --- Faults ---------------------------------------------------------------------------------------


def test_fail_the_next_calls_with_5xx(http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState) -> None:
    emulator_state.set_faults("5xx_next=2,5xx_status=503")
    statuses = [search(http, auth, {}).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_5xx_rate_is_repeatable_with_a_seed(emulator_clock: FakeClock) -> None:
    from segcrit.emulator import running_emulator

    def run() -> list[int]:
        state = EmulatorState(clock=emulator_clock, faults="5xx=0.5,seed=7")
        with running_emulator(state) as url, httpx.Client(base_url=url) as client:
            token_response = client.post(TOKEN_PATH, data=TOKEN_FORM)
            while token_response.status_code != 200:  # the token call can draw a 5xx too
                token_response = client.post(TOKEN_PATH, data=TOKEN_FORM)
            auth = {"Authorization": f"Bearer {token_response.json()['access_token']}"}
            return [client.post(SEARCH, headers=auth, json={}).status_code for _ in range(20)]

    first = run()
    assert first == run()
    assert set(first) == {200, 500}


def test_every_call_fails_at_rate_1(http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState) -> None:
    emulator_state.set_faults("5xx=1")
    response = search(http, auth, {})
    assert response.status_code == 500
    assert only_error(response)["type"] == "availability"
    assert response.headers["x-ratelimit-limit"] == "250"


def test_429_burst(http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState) -> None:
    emulator_state.set_faults("429_burst=2")
    responses = [search(http, auth, {}) for _ in range(3)]
    assert [r.status_code for r in responses] == [429, 429, 200]
    now = emulator_state.clock.now()
    assert responses[0].headers["x-ratelimit-remaining"] == "0"
    assert int(responses[0].headers["x-ratelimit-reset"]) > now


def test_added_latency(http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState) -> None:
    emulator_state.set_faults("latency_ms=150")
    started = time.monotonic()
    assert search(http, auth, {}).status_code == 200
    assert time.monotonic() - started >= 0.15


def test_short_token_ttl_expires_tokens_early(
    http: httpx.Client, emulator_state: EmulatorState, emulator_clock: FakeClock
) -> None:
    emulator_state.set_faults("token_ttl=60")
    response = http.post(TOKEN_PATH, data=TOKEN_FORM)
    assert response.json()["expires_in"] == 900  # the surprise: Criteo still announces 900 s
    auth = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert search(http, auth, {}).status_code == 200
    emulator_clock.advance(60)
    assert only_error(search(http, auth, {}))["code"] == "authorization-token-expired"


def test_revoked_tokens_are_invalid_and_new_ones_work(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    emulator_state.set_faults("revoke_tokens=1")
    assert only_error(search(http, auth, {}))["code"] == "authorization-token-invalid"
    fresh = {"Authorization": f"Bearer {fetch_token(http)}"}
    assert search(http, fresh, {}).status_code == 200
    assert emulator_state.faults.revoke_tokens is False  # one-shot


def test_apply_then_500_carries_out_the_change_and_loses_the_answer(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    segment_id = create_one(http, auth, "buyers")
    emulator_state.set_faults("apply_then_500=2")

    assert search(http, auth, {}).status_code == 200  # a read changes nothing: it is not counted
    refused = amend(http, auth, segment_id, "add", ["g1"], identifier_type="gum")  # no gumCallerId
    assert refused.status_code == 400  # a refusal changed nothing either: its answer stays
    lost = amend(http, auth, segment_id, "add", EMAILS[:2])
    assert lost.status_code == 500
    assert only_error(lost)["type"] == "availability"
    assert lost.headers["x-ratelimit-limit"] == "250"
    assert emulator_state.members(segment_id) == set(EMAILS[:2])  # applied all the same

    made = create(http, auth, "lost buyers")
    assert made.status_code == 500
    assert [s.name for s in emulator_state.segments()] == ["buyers", "lost buyers"]
    assert emulator_state.faults.lost_next == 0
    assert amend(http, auth, segment_id, "remove", EMAILS[:1]).status_code == 200  # the faults are used up
    assert [c.status for c in emulator_state.calls(Endpoint.CONTACT_LIST_PATCH)] == [400, 500, 200]


def test_apply_then_500_at_a_rate_is_repeatable_with_a_seed(
    http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState
) -> None:
    segment_id = create_one(http, auth, "buyers")

    def run() -> list[int]:
        emulator_state.set_faults("apply_then_500_rate=0.5,seed=3")
        return [amend(http, auth, segment_id, "add", [f"{i}@example.com"]).status_code for i in range(12)]

    first = run()
    assert first == run()
    assert set(first) == {200, 500}
    assert emulator_state.members(segment_id) == {f"{i}@example.com" for i in range(12)}


def test_faults_are_set_at_runtime_over_http(http: httpx.Client, auth: dict[str, str]) -> None:
    response = http.post("/_emulator/faults", json={"spec": "5xx_next=1,latency_ms=5"})
    assert response.status_code == 200
    assert response.json()["faults"]["error_next"] == 1
    assert search(http, auth, {}).status_code == 500
    assert http.post("/_emulator/faults", json={"429_burst": 1}).status_code == 200
    assert search(http, auth, {}).status_code == 429
    assert search(http, auth, {}).status_code == 200

    assert http.post("/_emulator/faults", json={"apply_then_500": 1}).json()["faults"]["lost_next"] == 1

    bad = http.post("/_emulator/faults", json={"spec": "explode=1"})
    assert bad.status_code == 400
    assert "explode" in bad.json()["error"]


def test_faults_given_at_construction(emulator_clock: FakeClock) -> None:
    state = EmulatorState(clock=emulator_clock, faults="429_burst=1")
    assert state.faults.burst_429 == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("5xx=0.2,429_burst=3,latency_ms=100,token_ttl=60,revoke_tokens=1,seed=7", None),
        ("", {}),
        ("none", {}),
        ("5xx_next=4, 5xx_status=502", {"error_next": 4, "error_status": 502}),
        ("apply_then_500=2,apply_then_500_rate=0.25", {"lost_next": 2, "lost_rate": 0.25}),
    ],
)
def test_fault_spec_parsing(spec: str, expected: dict[str, Any] | None) -> None:
    faults = parse_faults(spec)
    if expected is None:
        assert (faults.error_rate, faults.burst_429, faults.latency_ms) == (0.2, 3, 100)
        assert (faults.token_ttl_secs, faults.revoke_tokens, faults.seed) == (60.0, True, 7)
    else:
        assert {k: v for k, v in faults.to_json().items() if v != parse_faults(None).to_json()[k]} == expected


@pytest.mark.parametrize(
    "spec",
    [
        "5xx=2",
        "5xx",
        "bogus=1",
        "5xx_status=404",
        "latency_ms=-5",
        "seed=x",
        "apply_then_500=-1",
        "apply_then_500_rate=2",
    ],
)
def test_bad_fault_specs_are_user_errors(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse_faults(spec)


# --- Test-facing state ----------------------------------------------------------------------------


def test_state_over_http_and_in_python(http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState) -> None:
    segment_id = create_one(http, auth, "buyers")
    amend(http, auth, segment_id, "add", EMAILS)

    state = http.get("/_emulator/state").json()
    (segment,) = state["segments"]
    assert (segment["id"], segment["name"], segment["size"]) == (segment_id, "buyers", 3)
    assert segment["members"] == {"email": sorted(EMAILS)}
    assert state["calls"] == {"token": 1, "create": 1, "contact-list-patch": 1}
    assert "members" not in http.get("/_emulator/state", params={"members": "0"}).json()["segments"][0]

    (patch,) = emulator_state.calls(endpoint=Endpoint.CONTACT_LIST_PATCH)
    assert (patch.method, patch.path, patch.status) == ("PATCH", contact_list(segment_id), 200)
    assert patch.client_id == DEMO_CLIENT_ID
    assert patch.request["data"]["attributes"]["identifiers"] == EMAILS
    (token,) = emulator_state.calls(endpoint="token")
    assert token.request["client_secret"] == "***"


def test_reset_and_config_over_http(http: httpx.Client, auth: dict[str, str], emulator_state: EmulatorState) -> None:
    create_one(http, auth, "buyers")
    config = http.post("/_emulator/config", json={"duplicate_name_mode": "error", "rate_limit_per_minute": 10})
    assert config.status_code == 200
    assert emulator_state.duplicate_name_mode == "error"
    assert emulator_state.rate_limit_per_minute == 10
    assert http.post("/_emulator/config", json={"duplicate_name_mode": "loud"}).status_code == 400

    assert http.post("/_emulator/reset").status_code == 200
    assert emulator_state.segments() == []
    assert emulator_state.call_counts() == {}
    assert search(http, auth, {}).status_code == 401  # tokens are forgotten too


def test_state_lookup_errors_are_clear(emulator_state: EmulatorState) -> None:
    emulator_state.create_segment("twin", advertiser_id="1")
    emulator_state.create_segment("twin", advertiser_id="2")
    with pytest.raises(KeyError, match="2 segments"):
        emulator_state.members("twin")
    with pytest.raises(KeyError, match="no segment"):
        emulator_state.members("ghost")
