"""The Criteo client over httpx.MockTransport: exact requests, tokens, and what each answer means."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import SecretStr

from segcrit.clock import FakeClock
from segcrit.config import CriteoConfig
from segcrit.criteo.client import CriteoClient
from segcrit.criteo.errors import (
    AudienceInvalidError,
    CredentialsError,
    PermanentError,
    RetryableError,
    SegmentNameTakenError,
    SegmentNotFoundError,
    TokenRejectedError,
)
from segcrit.metrics import Metrics
from tests.helpers import CountingLimiter

API = "https://api.test"
BASE = f"{API}/2026-07/marketing-solutions/audience-segments"
SECRET = "s3cret-value"
START = 1_800_000_000.0

Handler = Callable[[httpx.Request], Awaitable[httpx.Response] | httpx.Response]


def token_response(token: str, expires_in: int = 900) -> httpx.Response:
    return httpx.Response(
        200,
        json={"access_token": token, "token_type": "Bearer", "expires_in": expires_in, "refresh_token": None},
    )


def problem(code: str, type_: str = "validation", **extra: str) -> dict[str, Any]:
    return {"type": type_, "code": code, "instance": "/x", "title": code, **extra}


def patch_ok(operation: str = "add", identifier_type: str = "email") -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "data": {
                "type": "ContactlistAmendment",
                "attributes": {
                    "contactListId": 5678,
                    "operation": operation,
                    "identifierType": identifier_type,
                    "nbValidIdentifiers": 2,
                    "nbInvalidIdentifiers": 0,
                    "sampleInvalidIdentifiers": [],
                },
            },
            "errors": [],
            "warnings": [],
        },
    )


def segment(segment_id: str, name: str) -> dict[str, Any]:
    return {
        "id": segment_id,
        "type": "AudienceSegment",
        "attributes": {"advertiserId": "12345", "name": name, "type": "ContactList"},
    }


def search_page(items: list[dict[str, Any]], total: int, offset: int) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "data": items,
            "meta": {"totalItems": total, "limit": 100, "offset": offset},
            "errors": [],
            "warnings": [],
        },
    )


class FakeCriteo:
    """Answers the token call itself; every other request goes to `api` (a function or a queue)."""

    def __init__(self, api: Handler | None = None, *, expires_in: int = 900) -> None:
        self.api = api
        self.queue: list[httpx.Response] = []
        self.expires_in = expires_in
        self.tokens_issued = 0
        self.requests: list[httpx.Request] = []
        self.token_status = 200
        self.token_override: httpx.Response | None = None

    @property
    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path != "/oauth2/token"]

    @property
    def token_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/oauth2/token"]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/oauth2/token":
            await asyncio.sleep(0)  # let concurrent callers pile up behind the fetch
            if self.token_override is not None:
                return self.token_override
            if self.token_status != 200:
                return httpx.Response(self.token_status, json={"error": "invalid_client"})
            self.tokens_issued += 1
            return token_response(f"token-{self.tokens_issued}", self.expires_in)
        if self.queue:
            return self.queue.pop(0)
        assert self.api is not None, f"unexpected {request.method} {request.url}"
        answer = self.api(request)
        return await answer if isinstance(answer, Awaitable) else answer


class Setup:
    def __init__(self, fake: FakeCriteo, **config: Any) -> None:
        self.fake = fake
        self.clock = FakeClock(START)
        self.limiter = CountingLimiter(self.clock, 250)
        self.metrics = Metrics()
        settings: dict[str, Any] = {
            "client_id": "cid",
            "client_secret": SecretStr(SECRET),
            "advertiser_id": "12345",
            "api_url": API,
            "gum_caller_id": 329739,
        }
        settings.update(config)
        self.config = CriteoConfig(**settings)
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
        self.client = CriteoClient(self.config, self.http, self.limiter, self.clock, self.metrics)

    def calls(self, endpoint: str, status: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "segcrit_criteo_calls_total", {"endpoint": endpoint, "status": status}
        )
        return value or 0.0


def run(setup: Setup, body: Callable[[], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with setup.http:
            return await body()

    return asyncio.run(go())


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


# ------------------------------------------------------------------------------------ tokens


def test_token_is_fetched_once_and_cached_across_calls() -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    s = Setup(fake)

    async def body() -> None:
        for _ in range(3):
            await s.client.patch_contact_list("5678", "add", "email", ["a"])

    run(s, body)
    assert len(fake.token_requests) == 1
    token_call = fake.token_requests[0]
    assert token_call.method == "POST"
    assert str(token_call.url) == f"{API}/oauth2/token"  # unversioned
    assert token_call.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(token_call.content.decode()) == {
        "client_id": ["cid"],
        "client_secret": [SECRET],
        "grant_type": ["client_credentials"],
    }
    assert [r.headers["authorization"] for r in fake.api_requests] == ["Bearer token-1"] * 3
    # Every call goes through the limiter, the token call included.
    assert s.limiter.acquired == 4
    assert len(s.limiter.observed) == 4
    assert s.calls("token", "200") == 1
    assert s.calls("contact_list_patch", "200") == 3


def test_token_is_refreshed_60_seconds_before_expiry() -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    s = Setup(fake)

    async def body() -> None:
        await s.client.patch_contact_list("5678", "add", "email", ["a"])
        s.clock.advance(900 - 60 - 1)  # 61 s left: still good
        await s.client.patch_contact_list("5678", "add", "email", ["a"])
        assert len(fake.token_requests) == 1
        s.clock.advance(2)  # 59 s left: refresh before Criteo would refuse it
        await s.client.patch_contact_list("5678", "add", "email", ["a"])

    run(s, body)
    assert len(fake.token_requests) == 2
    assert [r.headers["authorization"] for r in fake.api_requests] == [
        "Bearer token-1",
        "Bearer token-1",
        "Bearer token-2",
    ]


def test_concurrent_callers_share_one_token_fetch() -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    s = Setup(fake)

    async def body() -> None:
        await asyncio.gather(*(s.client.patch_contact_list("5678", "add", "email", ["a"]) for _ in range(10)))

    run(s, body)
    assert len(fake.token_requests) == 1
    assert len(fake.api_requests) == 10


def test_401_expired_refreshes_once_and_retries_at_once() -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    fake.queue.append(httpx.Response(401, json={"errors": [problem("authorization-token-expired", "authorization")]}))
    s = Setup(fake)

    result = run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert result is not None and result.data.attributes.nb_valid_identifiers == 2
    assert len(fake.token_requests) == 2
    assert [r.headers["authorization"] for r in fake.api_requests] == ["Bearer token-1", "Bearer token-2"]
    assert s.clock.now() == START  # no waiting
    assert s.calls("contact_list_patch", "401") == 1


def test_401_again_after_a_fresh_token_raises_token_rejected() -> None:
    def always_401(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"errors": [problem("authorization-token-invalid", "authorization")]})

    fake = FakeCriteo(always_401)
    s = Setup(fake)

    with pytest.raises(TokenRejectedError) as caught:
        run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert caught.value.status == 401
    assert len(fake.api_requests) == 2  # one retry only, no loop
    assert len(fake.token_requests) == 2


def test_bad_credentials_raise_credentials_error_without_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    fake.token_status = 401
    s = Setup(fake)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(CredentialsError) as caught:
        run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert caught.value.oauth_error == "invalid_client"
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.args)
    assert SECRET not in caplog.text
    assert SECRET not in repr(s.client.tokens)
    assert fake.api_requests == []


def test_logs_never_carry_the_token_or_secret(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    fake.queue.append(httpx.Response(401, json={"errors": [problem("authorization-token-expired", "authorization")]}))
    s = Setup(fake)
    caplog.set_level(logging.DEBUG)

    run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert caplog.records  # something was logged ...
    for record in caplog.records:  # ... and none of it (fields included) is a credential
        text = f"{record.getMessage()} {record.__dict__}"
        assert SECRET not in text
        assert "token-1" not in text and "token-2" not in text


def test_token_endpoint_429_is_retryable_with_reset() -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    fake.token_override = httpx.Response(429, headers={"x-ratelimit-reset": str(int(START + 30))})
    s = Setup(fake)

    with pytest.raises(RetryableError) as caught:
        run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert caught.value.retry_at == START + 30
    assert s.limiter.hold_until == START + 30
    assert fake.api_requests == []


# ------------------------------------------------------------------------- request bodies


def test_patch_add_body_snapshot() -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    s = Setup(fake)
    run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["aa" * 32, "bb" * 32]))
    request = fake.api_requests[0]
    assert request.method == "PATCH"
    assert str(request.url) == f"{BASE}/5678/contact-list"
    assert request.headers["content-type"] == "application/json"
    assert body_of(request) == {
        "data": {
            "type": "ContactlistAmendment",
            "attributes": {
                "operation": "add",
                "identifierType": "email",
                "identifiers": ["aa" * 32, "bb" * 32],
            },
        }
    }


def test_patch_remove_body_snapshot() -> None:
    fake = FakeCriteo(lambda request: patch_ok("remove", "madid"))
    s = Setup(fake)
    madid = "3f097372-f01e-4b64-984c-395ae5828ee6"
    run(s, lambda: s.client.patch_contact_list("5678", "remove", "madid", [madid]))
    assert body_of(fake.api_requests[0]) == {
        "data": {
            "type": "ContactlistAmendment",
            "attributes": {"operation": "remove", "identifierType": "madid", "identifiers": [madid]},
        }
    }


def test_patch_gum_body_carries_the_caller_id() -> None:
    fake = FakeCriteo(lambda request: patch_ok("remove", "gum"))
    s = Setup(fake)
    run(s, lambda: s.client.patch_contact_list("5678", "remove", "gum", ["gum-1"]))
    assert body_of(fake.api_requests[0]) == {
        "data": {
            "type": "ContactlistAmendment",
            "attributes": {
                "operation": "remove",
                "identifierType": "gum",
                "gumCallerId": 329739,
                "identifiers": ["gum-1"],
            },
        }
    }


def test_gum_without_caller_id_is_refused_before_sending() -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    s = Setup(fake, gum_caller_id=None)
    with pytest.raises(ValueError, match="gum_caller_id"):
        run(s, lambda: s.client.patch_contact_list("5678", "add", "gum", ["g"]))
    assert fake.requests == []


def test_more_than_50000_identifiers_are_refused_before_sending() -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    s = Setup(fake)
    with pytest.raises(ValueError, match="50000"):
        run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["x"] * 50_001))
    assert fake.requests == []
    # 50,000 exactly is fine.
    ok = Setup(fake)
    run(ok, lambda: ok.client.patch_contact_list("5678", "add", "email", ["x"] * 50_000))
    assert len(fake.api_requests) == 1


@pytest.mark.parametrize(
    ("segment_id", "operation", "identifier_type"),
    [("56/../78", "add", "email"), ("5678", "replace", "email"), ("5678", "add", "customerid")],
)
def test_bad_arguments_are_refused_before_sending(segment_id: str, operation: str, identifier_type: str) -> None:
    fake = FakeCriteo(lambda request: patch_ok())
    s = Setup(fake)
    with pytest.raises(ValueError):
        run(s, lambda: s.client.patch_contact_list(segment_id, operation, identifier_type, ["a"]))
    assert fake.requests == []


def test_create_lookalike_body_snapshot() -> None:
    def created(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [segment("9001", "LAL")], "errors": [], "warnings": []})

    fake = FakeCriteo(created)
    s = Setup(fake)
    assert run(s, lambda: s.client.create_lookalike("LAL of buyers", "5678", 1_000_000)) == "9001"
    request = fake.api_requests[0]
    assert str(request.url) == f"{BASE}/create"
    assert body_of(request) == {
        "data": [
            {
                "type": "AudienceSegment",
                "attributes": {
                    "advertiserId": "12345",
                    "name": "LAL of buyers",
                    "lookalike": {"seedSegmentId": "5678", "targetSize": 1_000_000},
                },
            }
        ]
    }


def test_create_contact_list_body_snapshot() -> None:
    def created(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [segment("5678", "buyers")], "errors": [], "warnings": []})

    fake = FakeCriteo(created)
    s = Setup(fake)
    assert run(s, lambda: s.client.create_contact_list("buyers")) == "5678"
    assert body_of(fake.api_requests[0]) == {
        "data": [
            {
                "type": "AudienceSegment",
                "attributes": {
                    "advertiserId": "12345",
                    "name": "buyers",
                    "description": "buyers",
                    "contactList": {},
                },
            }
        ]
    }


def test_delete_wipe_and_statistics_requests() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/delete"):
            return httpx.Response(
                200, json={"data": [{"id": "1", "type": "AudienceSegment", "attributes": {}}], "errors": []}
            )
        if request.url.path.endswith("/statistics"):
            return httpx.Response(
                200,
                json={
                    "data": {
                        "id": "1",
                        "type": "ContactListStatistics",
                        "attributes": {"numberOfIdentifiers": 10, "numberOfMatches": 6, "matchRate": 0.6},
                    }
                },
            )
        return httpx.Response(
            200, json={"data": {"id": "1", "type": "AudienceContactlist"}, "errors": [], "warnings": []}
        )

    fake = FakeCriteo(answer)
    s = Setup(fake)

    async def body() -> None:
        deleted = await s.client.delete_segments(["1"])
        assert [item.id for item in deleted.data] == ["1"]
        wiped = await s.client.wipe_contact_list("1")
        assert wiped is not None and wiped.data.id == "1"
        stats = await s.client.contact_list_statistics("1")
        assert stats.data is not None and stats.data.attributes is not None
        assert stats.data.attributes.number_of_identifiers == 10

    run(s, body)
    delete, wipe, stats = fake.api_requests
    assert (delete.method, str(delete.url)) == ("POST", f"{BASE}/delete")
    assert body_of(delete) == {"data": [{"id": "1", "type": "AudienceSegment", "attributes": {}}]}
    assert (wipe.method, str(wipe.url), wipe.content) == ("DELETE", f"{BASE}/1/contact-list", b"")
    assert (stats.method, str(stats.url)) == ("GET", f"{BASE}/1/contact-list/statistics")


# --------------------------------------------------------------------------------- search


def three_pages(target_name: str | None) -> tuple[FakeCriteo, list[tuple[int, int]]]:
    """250 ContactList segments over 3 pages; `target_name`, if given, is the very last one."""
    seen: list[tuple[int, int]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params["limit"])
        offset = int(request.url.params["offset"])
        seen.append((offset, limit))
        names = [f"seg-{i}" for i in range(250)]
        if target_name is not None:
            names[-1] = target_name
        items = [segment(str(1000 + i), names[i]) for i in range(offset, min(offset + limit, 250))]
        return search_page(items, 250, offset)

    return FakeCriteo(answer), seen


def test_search_pages_until_total_and_compares_names() -> None:
    fake, seen = three_pages("weekly_active_shoppers")
    s = Setup(fake)
    assert run(s, lambda: s.client.find_segment("weekly_active_shoppers")) == "1249"
    assert seen == [(0, 100), (100, 100), (200, 100)]
    for request in fake.api_requests:
        assert request.method == "POST"
        assert request.url.path == "/2026-07/marketing-solutions/audience-segments/search"
        assert body_of(request) == {
            "data": {
                "type": "AudienceSegment",
                "attributes": {"advertiserIds": ["12345"], "audienceSegmentTypes": ["ContactList"]},
            }
        }


def test_search_returns_none_after_the_last_page() -> None:
    fake, seen = three_pages(None)
    s = Setup(fake)
    assert run(s, lambda: s.client.find_segment("nope")) is None
    assert seen == [(0, 100), (100, 100), (200, 100)]


def test_search_stops_at_the_first_match() -> None:
    fake, seen = three_pages(None)
    s = Setup(fake)
    assert run(s, lambda: s.client.find_segment("seg-42")) == "1042"
    assert seen == [(0, 100)]


def test_name_comparison_is_exact() -> None:
    fake = FakeCriteo(lambda request: search_page([segment("1", "Buyers "), segment("2", "buyers")], 2, 0))
    s = Setup(fake)
    assert run(s, lambda: s.client.find_segment("buyers")) == "2"


def test_search_other_types_when_asked() -> None:
    fake = FakeCriteo(lambda request: search_page([], 0, 0))
    s = Setup(fake)
    run(s, lambda: s.client.search_segments(0, 10, segment_types=["Lookalike"], segment_ids=["9"]))
    request = fake.api_requests[0]
    assert dict(request.url.params) == {"limit": "10", "offset": "0"}
    assert body_of(request)["data"]["attributes"] == {
        "advertiserIds": ["12345"],
        "audienceSegmentIds": ["9"],
        "audienceSegmentTypes": ["Lookalike"],
    }


def test_search_limit_over_100_is_refused() -> None:
    s = Setup(FakeCriteo())
    with pytest.raises(ValueError):
        run(s, lambda: s.client.search_segments(0, 101))


# ------------------------------------------------------------------------- find or create


def test_find_or_create_uses_an_existing_segment_without_creating() -> None:
    fake = FakeCriteo(lambda request: search_page([segment("77", "buyers")], 1, 0))
    s = Setup(fake)
    assert run(s, lambda: s.client.find_or_create_segment("buyers", auto_create=True)) == "77"
    assert [r.url.path.rsplit("/", 1)[-1] for r in fake.api_requests] == ["search"]


def test_find_or_create_creates_when_missing() -> None:
    fake = FakeCriteo()
    fake.queue += [
        search_page([], 0, 0),
        httpx.Response(200, json={"data": [segment("88", "buyers")], "errors": [], "warnings": []}),
    ]
    s = Setup(fake)
    assert run(s, lambda: s.client.find_or_create_segment("buyers", auto_create=True)) == "88"


def test_find_without_auto_create_raises_not_found() -> None:
    fake = FakeCriteo(lambda request: search_page([], 0, 0))
    s = Setup(fake)
    with pytest.raises(SegmentNotFoundError):
        run(s, lambda: s.client.find_or_create_segment("buyers", auto_create=False))
    assert len(fake.api_requests) == 1  # no create


NAME_TAKEN = {
    "type": "validation",
    "code": "name-must-be-unique",
    "title": "Segment name must be unique",
    "detail": "Another Segment exists with the name: buyers",
}


@pytest.mark.parametrize(
    "create_answer",
    [
        pytest.param(httpx.Response(200, json={"data": [], "errors": [], "warnings": [NAME_TAKEN]}), id="200-warning"),
        pytest.param(httpx.Response(200, json={"data": [], "errors": [NAME_TAKEN], "warnings": []}), id="200-error"),
        pytest.param(httpx.Response(400, json={"errors": [NAME_TAKEN]}), id="400-error"),
    ],
)
def test_name_must_be_unique_searches_again_and_uses_the_existing_one(create_answer: httpx.Response) -> None:
    fake = FakeCriteo()
    fake.queue += [
        search_page([], 0, 0),  # not there yet ...
        create_answer,  # ... but someone else created it meanwhile
        search_page([segment("99", "buyers")], 1, 0),
    ]
    s = Setup(fake)
    assert run(s, lambda: s.client.find_or_create_segment("buyers", auto_create=True)) == "99"
    assert [r.url.path.rsplit("/", 1)[-1] for r in fake.api_requests] == ["search", "create", "search"]


def test_create_reports_name_taken_with_criteo_problem() -> None:
    fake = FakeCriteo(lambda request: httpx.Response(400, json={"errors": [NAME_TAKEN]}))
    s = Setup(fake)
    with pytest.raises(SegmentNameTakenError) as caught:
        run(s, lambda: s.client.create_contact_list("buyers"))
    assert caught.value.status == 400
    assert caught.value.problem == NAME_TAKEN


def test_name_taken_but_not_found_is_retryable() -> None:
    fake = FakeCriteo(lambda request: search_page([], 0, 0))
    fake.queue += [search_page([], 0, 0), httpx.Response(400, json={"errors": [NAME_TAKEN]})]
    s = Setup(fake)
    with pytest.raises(RetryableError):
        run(s, lambda: s.client.find_or_create_segment("buyers", auto_create=True))


def test_create_other_400_is_permanent() -> None:
    empty = problem("name-must-not-be-empty")
    fake = FakeCriteo(lambda request: httpx.Response(400, json={"errors": [empty]}))
    s = Setup(fake)
    with pytest.raises(PermanentError) as caught:
        run(s, lambda: s.client.create_contact_list(""))
    assert not isinstance(caught.value, SegmentNameTakenError)
    assert caught.value.problem == empty


def test_create_200_without_a_segment_is_permanent() -> None:
    empty = problem("name-must-not-be-empty")
    fake = FakeCriteo(lambda request: httpx.Response(200, json={"data": [], "errors": [], "warnings": [empty]}))
    s = Setup(fake)
    with pytest.raises(PermanentError) as caught:
        run(s, lambda: s.client.create_contact_list("x"))
    assert caught.value.code == "name-must-not-be-empty"


# --------------------------------------------------------------------------- failures


def test_404_audience_invalid_raises_audience_invalid() -> None:
    gone = problem("audience-invalid", instance="/audience/5678")
    fake = FakeCriteo(lambda request: httpx.Response(404, json={"errors": [gone], "warnings": []}))
    s = Setup(fake)
    with pytest.raises(AudienceInvalidError) as caught:
        run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert caught.value.segment_id == "5678"
    assert caught.value.status == 404
    assert len(fake.api_requests) == 1  # no blind retry
    assert s.calls("contact_list_patch", "404") == 1


def test_400_raises_permanent_error_carrying_criteo_error() -> None:
    invalid = problem("required-field", detail="data.attributes.identifiers is required")
    fake = FakeCriteo(lambda request: httpx.Response(400, json={"errors": [invalid], "warnings": []}))
    s = Setup(fake)
    with pytest.raises(PermanentError) as caught:
        run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert caught.value.status == 400
    assert caught.value.problem == invalid
    assert caught.value.code == "required-field"


def test_403_is_permanent() -> None:
    fake = FakeCriteo(lambda request: httpx.Response(403, json={"errors": [problem("forbidden", "authorization")]}))
    s = Setup(fake)
    with pytest.raises(PermanentError) as caught:
        run(s, lambda: s.client.wipe_contact_list("5678"))
    assert caught.value.status == 403


def test_500_raises_retryable_without_retry_at() -> None:
    fake = FakeCriteo(lambda request: httpx.Response(500, text="<html>oops</html>"))
    s = Setup(fake)
    with pytest.raises(RetryableError) as caught:
        run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert type(caught.value) is RetryableError
    assert caught.value.status == 500
    assert caught.value.retry_at is None


def test_429_with_reset_raises_retryable_with_retry_at_and_holds_the_limiter() -> None:
    reset = int(START + 37)
    fake = FakeCriteo(
        lambda request: httpx.Response(
            429,
            json={},
            headers={
                "x-ratelimit-limit": "250",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": str(reset),
            },
        )
    )
    s = Setup(fake)
    with pytest.raises(RetryableError) as caught:
        run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert caught.value.status == 429
    assert caught.value.retry_at == reset
    assert s.limiter.hold_until == reset
    assert s.calls("contact_list_patch", "429") == 1


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("reset")],
)
def test_network_errors_and_timeouts_are_retryable(failure: Exception) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    fake = FakeCriteo(fail)
    s = Setup(fake)
    with pytest.raises(RetryableError) as caught:
        run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"]))
    assert caught.value.retry_at is None
    assert caught.value.__cause__ is None  # the httpx error (and its request with the token) is dropped
    assert s.calls("contact_list_patch", "0") == 1


def test_unreadable_2xx_to_a_patch_is_still_a_success() -> None:
    fake = FakeCriteo(lambda request: httpx.Response(200, json={"surprise": True}))
    s = Setup(fake)
    assert run(s, lambda: s.client.patch_contact_list("5678", "add", "email", ["a"])) is None


def test_unreadable_2xx_to_a_search_is_retryable() -> None:
    fake = FakeCriteo(lambda request: httpx.Response(200, json={"data": "not a list"}))
    s = Setup(fake)
    with pytest.raises(RetryableError):
        run(s, s.client.search_segments)
