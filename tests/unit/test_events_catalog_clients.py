"""The Events API and catalog clients over httpx.MockTransport: exact requests and what answers mean."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from segcrit.clock import FakeClock
from segcrit.config import CriteoConfig
from segcrit.criteo.catalog_client import CatalogClient, DuplicateProductError
from segcrit.criteo.client import CriteoClient
from segcrit.criteo.errors import Decision, PermanentError, RetryableError
from segcrit.criteo.events_client import EventsClient
from segcrit.metrics import Metrics
from tests.helpers import SHA256, CountingLimiter

START = 1_800_000_000.0
EVENTS_URL = "https://widget.criteo.test/m/event?version=s2s_v0"
API = "https://api.criteo.test"
LIMIT = 1_000  # calls per minute the limiters allow
DOCUMENT: dict[str, Any] = {
    "account": "6789",
    "id": {"mapping_key": "caller-abc", "email": {"sha256": SHA256}},
    "events": [{"event": "viewItem", "timestamp": "2026-01-01T00:00:00.000Z", "item": [{"id": "P1"}]}],
}
PRODUCT = {
    "id": "SKU-1",
    "title": "Blue mug",
    "link": "https://shop.example.com/p/1",
    "imageLink": "https://shop.example.com/i/1.jpg",
    "channel": "online",
    "price": {"value": "9.90", "currency": "EUR"},
    "brand": "Acme",
    "productTypes": ["Kitchen"],
    "mpn": "MUG-1",
}

Answer = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler: answers from a function, remembers every request."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def calls(metrics: Metrics, endpoint: str, status: str) -> float:
    value = metrics.registry.get_sample_value("segcrit_criteo_calls_total", {"endpoint": endpoint, "status": status})
    return value or 0.0


# ================================================================================================
# Events API
# ================================================================================================


class EventsSetup:
    def __init__(self, answer: Answer | Callable[[httpx.Request], Any]) -> None:
        self.recorder = Recorder(answer)
        self.clock = FakeClock(START)
        self.limiter = CountingLimiter(self.clock, LIMIT)
        self.metrics = Metrics()
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self.recorder))
        self.client = EventsClient(EVENTS_URL, self.http, self.limiter, self.clock, self.metrics)

    def send(self, document: Mapping[str, Any] = DOCUMENT) -> None:
        async def go() -> None:
            async with self.http:
                await self.client.send(document)

        asyncio.run(go())

    @property
    def urls(self) -> list[str]:
        return [str(request.url) for request in self.recorder.requests]


def test_posts_the_document_as_json_to_events_url() -> None:
    setup = EventsSetup(lambda request: httpx.Response(200))
    setup.send()
    (request,) = setup.recorder.requests
    assert (request.method, str(request.url)) == ("POST", EVENTS_URL)
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers  # the Events API is not behind OAuth
    assert json.loads(request.content) == DOCUMENT
    assert setup.limiter.acquired == 1
    assert calls(setup.metrics, "events", "200") == 1


def test_a_307_is_followed_with_the_same_body() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/m/event":
            return httpx.Response(307, headers={"location": "/m/event/regional?version=s2s_v0&dc=eu"})
        return httpx.Response(200)

    setup = EventsSetup(answer)
    setup.send()
    first, second = setup.recorder.requests
    assert setup.urls == [EVENTS_URL, "https://widget.criteo.test/m/event/regional?version=s2s_v0&dc=eu"]
    assert second.method == "POST"
    assert second.content == first.content and json.loads(second.content) == DOCUMENT
    assert setup.limiter.acquired == 2  # every hop is a call
    assert (calls(setup.metrics, "events", "307"), calls(setup.metrics, "events", "200")) == (1, 1)


def test_a_308_to_another_https_host_is_followed() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "widget.criteo.test":
            return httpx.Response(308, headers={"location": "https://eu.criteo.test/m/event?version=s2s_v0"})
        return httpx.Response(204)

    setup = EventsSetup(answer)
    setup.send()
    assert setup.urls[-1] == "https://eu.criteo.test/m/event?version=s2s_v0"


def test_redirects_are_bounded() -> None:
    setup = EventsSetup(lambda request: httpx.Response(307, headers={"location": "/m/event/again"}))
    with pytest.raises(PermanentError, match="more than 5 times") as caught:
        setup.send()
    assert len(setup.recorder.requests) == 6  # the first request and five hops
    assert caught.value.status == 307


@pytest.mark.parametrize(
    ("headers", "complaint"),
    [({}, "without a Location"), ({"location": "http://widget.criteo.test/m/event"}, "http URL")],
    ids=["no location", "https to http"],
)
def test_a_redirect_that_cannot_be_followed_is_permanent(headers: dict[str, str], complaint: str) -> None:
    setup = EventsSetup(lambda request: httpx.Response(307, headers=headers))
    with pytest.raises(PermanentError, match=complaint):
        setup.send()
    assert len(setup.recorder.requests) == 1


def test_429_is_retryable_at_the_announced_reset() -> None:
    reset = int(START) + 42
    setup = EventsSetup(lambda request: httpx.Response(429, headers={"x-ratelimit-reset": str(reset)}))
    with pytest.raises(RetryableError) as caught:
        setup.send()
    assert caught.value.decision is Decision.RETRY
    assert (caught.value.status, caught.value.retry_at) == (429, reset)
    assert setup.limiter.hold_until == reset  # the events limiter holds back further calls too


@pytest.mark.parametrize(
    "retry_after",
    ["30", format_datetime(datetime.fromtimestamp(START + 30, UTC), usegmt=True)],
    ids=["seconds", "http date"],
)
def test_429_honours_retry_after(retry_after: str) -> None:
    setup = EventsSetup(lambda request: httpx.Response(429, headers={"retry-after": retry_after}))
    with pytest.raises(RetryableError) as caught:
        setup.send()
    assert caught.value.retry_at == START + 30


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_retryable(status: int) -> None:
    setup = EventsSetup(lambda request: httpx.Response(status, text="<html>bad gateway</html>"))
    with pytest.raises(RetryableError) as caught:
        setup.send()
    assert (caught.value.status, caught.value.retry_at) == (status, None)
    assert calls(setup.metrics, "events", str(status)) == 1


def test_a_timeout_is_retryable() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    setup = EventsSetup(answer)
    with pytest.raises(RetryableError) as caught:
        setup.send()
    assert caught.value.status == 0
    assert calls(setup.metrics, "events", "0") == 1


def test_a_4xx_is_permanent_and_keeps_criteos_problem() -> None:
    problem = {"type": "validation", "code": "required-field", "detail": "account: Field required"}
    setup = EventsSetup(lambda request: httpx.Response(400, json={"errors": [problem], "warnings": []}))
    with pytest.raises(PermanentError) as caught:
        setup.send()
    assert caught.value.decision is Decision.DEAD_LETTER
    assert (caught.value.status, caught.value.code, caught.value.problem) == (400, "required-field", problem)


def test_a_4xx_in_no_known_shape_keeps_the_body_text() -> None:
    setup = EventsSetup(lambda request: httpx.Response(403, text="partner disabled"))
    with pytest.raises(PermanentError) as caught:
        setup.send()
    assert caught.value.problem == {"body": "partner disabled"}


def test_a_401_is_permanent_there_is_no_token_to_refresh() -> None:
    setup = EventsSetup(lambda request: httpx.Response(401, json={}))
    with pytest.raises(PermanentError):
        setup.send()
    assert len(setup.recorder.requests) == 1


def test_an_invalid_document_is_refused_before_sending() -> None:
    setup = EventsSetup(lambda request: httpx.Response(200))
    with pytest.raises(PermanentError, match="mapping_key") as caught:
        setup.send({**DOCUMENT, "id": {"email": {"sha256": SHA256}}})  # caller_id not configured
    assert caught.value.status is None
    assert caught.value.code == "invalid-document"
    assert setup.recorder.requests == []


def test_events_url_must_be_http() -> None:
    clock = FakeClock(START)
    with pytest.raises(ValueError, match="http"):
        EventsClient("widget.criteo.com/m/event", httpx.AsyncClient(), CountingLimiter(clock, LIMIT), clock)


# ================================================================================================
# Catalog
# ================================================================================================


class CatalogSetup:
    def __init__(self, answer: Answer) -> None:
        def with_tokens(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/oauth2/token":
                self.tokens += 1
                body = {"access_token": f"t{self.tokens}", "token_type": "Bearer", "expires_in": 900}
                return httpx.Response(200, json={**body, "refresh_token": None})
            return answer(request)

        self.tokens = 0
        self.recorder = Recorder(with_tokens)
        self.clock = FakeClock(START)
        self.limiter = CountingLimiter(self.clock, 250)
        self.metrics = Metrics()
        config = CriteoConfig.model_validate(
            {"client_id": "cid", "client_secret": SecretStr("s"), "advertiser_id": "12345", "api_url": API}
        )
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self.recorder))
        self.audiences = CriteoClient(config, self.http, self.limiter, self.clock, self.metrics)
        self.catalog = CatalogClient(self.audiences.api)

    def run(self, body: Callable[[CatalogClient], Awaitable[Any]]) -> Any:
        async def go() -> Any:
            async with self.http:
                return await body(self.catalog)

        return asyncio.run(go())

    @property
    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.recorder.requests if r.url.path != "/oauth2/token"]


def accepted(request: httpx.Request) -> httpx.Response:
    return httpx.Response(202, json={"operationToken": "op.tok/en+1"})


def test_send_batch_posts_the_exact_body_and_returns_the_token() -> None:
    setup = CatalogSetup(accepted)
    entries: list[dict[str, Any]] = [
        {"method": "insert", "product": PRODUCT},
        {"method": "delete", "productId": "SKU-2"},
    ]
    token = setup.run(lambda catalog: catalog.send_batch("6789", entries))
    assert token == "op.tok/en+1"
    (request,) = setup.api_requests
    assert (request.method, str(request.url)) == ("POST", f"{API}/preview/catalog/products/batch")
    assert request.headers["authorization"] == "Bearer t1"
    assert json.loads(request.content) == {
        "entries": [
            {"merchantId": 6789, "method": "insert", "batchId": 0, "product": PRODUCT},
            {"merchantId": 6789, "method": "delete", "batchId": 1, "productId": "SKU-2"},
        ]
    }
    assert calls(setup.metrics, "catalog_batch", "202") == 1
    assert setup.limiter.acquired == 2  # the token call and the batch share the Marketing API limiter


@pytest.mark.parametrize(
    "entries",
    [
        [{"method": "insert", "product": PRODUCT}, {"method": "insert", "product": {**PRODUCT, "title": "New"}}],
        [{"method": "insert", "product": PRODUCT}, {"method": "delete", "productId": "SKU-1"}],
    ],
    ids=["inserted twice", "inserted and deleted"],
)
def test_a_product_twice_is_refused_before_sending(entries: list[dict[str, Any]]) -> None:
    setup = CatalogSetup(accepted)
    with pytest.raises(DuplicateProductError) as caught:
        setup.run(lambda catalog: catalog.send_batch("6789", entries))
    assert caught.value.product_ids == ["SKU-1"]
    assert setup.recorder.requests == []  # not even a token


@pytest.mark.parametrize(
    ("merchant", "entries", "complaint"),
    [
        ("6789", [], "at least one entry"),
        ("shop-1", [{"method": "insert", "product": PRODUCT}], "merchant id"),
        ("6789", [{"method": "insert", "product": {**PRODUCT, "title": None}}], "schema"),
        ("6789", [{"method": "insert"}], "insert needs a product"),
        ("6789", [{"method": "delete"}], "delete needs a productId"),
        ("6789", [{"method": "insert", "product": PRODUCT, "merchantId": 1}], "names merchant 1"),
    ],
)
def test_bad_batches_are_refused_before_sending(merchant: str, entries: list[dict[str, Any]], complaint: str) -> None:
    setup = CatalogSetup(accepted)
    with pytest.raises(ValueError, match=complaint):
        setup.run(lambda catalog: catalog.send_batch(merchant, entries))
    assert setup.recorder.requests == []


def test_report_is_read_from_the_quoted_token_path() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "status": "VALIDATED_WITH_ERRORS",
                "importRequestTimestamp": "1800000000000",
                "numberOfProductsInTheBatch": "2",
                "numberOfProductsUpserted": "1",
                "numberOfProductsDeleted": "0",
                "numberOfProductsWithErrors": "1",
                "numberOfProductsWithWarnings": "0",
                "errorDetails": [
                    {
                        "productId": "sku-2",
                        "errors": [{"type": "InvalidProductUrl", "message": "bad", "isServerRelated": False}],
                    }
                ],
                "warningDetails": [],
            },
        )

    setup = CatalogSetup(answer)
    report = setup.run(lambda catalog: catalog.report("op.tok/en+1"))
    (request,) = setup.api_requests
    assert request.method == "GET"
    assert request.url.raw_path == b"/preview/catalog/products/batch/report/op.tok%2Fen%2B1"
    assert report.done and report.counts["with_errors"] == 1
    assert [e.type for e in report.errors_by_product()["sku-2"]] == ["InvalidProductUrl"]
    assert calls(setup.metrics, "catalog_report", "200") == 1


def test_catalog_and_audiences_share_one_token() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/contact-list"):
            return httpx.Response(200, json={})
        return accepted(request)

    setup = CatalogSetup(answer)

    async def body(catalog: CatalogClient) -> None:
        await setup.audiences.wipe_contact_list("5678")
        await catalog.send_batch("6789", [{"method": "insert", "product": PRODUCT}])

    setup.run(body)
    assert setup.tokens == 1
    assert {r.headers["authorization"] for r in setup.api_requests} == {"Bearer t1"}


def test_a_rejected_token_is_refreshed_once_for_catalog_calls_too() -> None:
    answers = iter([httpx.Response(401, json={"errors": [{"code": "authorization-token-expired"}]})])

    def answer(request: httpx.Request) -> httpx.Response:
        return next(answers, None) or accepted(request)

    setup = CatalogSetup(answer)
    assert setup.run(lambda catalog: catalog.send_batch("6789", [{"method": "delete", "productId": "X"}]))
    assert setup.tokens == 2
    assert [r.headers["authorization"] for r in setup.api_requests] == ["Bearer t1", "Bearer t2"]


@pytest.mark.parametrize(
    ("response", "error", "decision"),
    [
        (httpx.Response(429, headers={"x-ratelimit-reset": str(int(START) + 9)}), RetryableError, Decision.RETRY),
        (httpx.Response(503), RetryableError, Decision.RETRY),
        (
            httpx.Response(400, json={"errors": [{"code": "batch-empty"}]}),
            PermanentError,
            Decision.DEAD_LETTER,
        ),
        (httpx.Response(202, json={"unexpected": True}), RetryableError, Decision.RETRY),
    ],
    ids=["429", "503", "400", "unreadable 202"],
)
def test_catalog_failures_follow_the_one_table(
    response: httpx.Response, error: type[Exception], decision: Decision
) -> None:
    setup = CatalogSetup(lambda request: response)
    with pytest.raises(error) as caught:
        setup.run(lambda catalog: catalog.send_batch("6789", [{"method": "delete", "productId": "X"}]))
    assert isinstance(caught.value, RetryableError | PermanentError)
    assert caught.value.decision is decision
    if response.status_code == 429:
        assert isinstance(caught.value, RetryableError) and caught.value.retry_at == START + 9


def test_report_needs_a_token() -> None:
    setup = CatalogSetup(accepted)
    with pytest.raises(ValueError, match="operation token"):
        setup.run(lambda catalog: catalog.report(""))
