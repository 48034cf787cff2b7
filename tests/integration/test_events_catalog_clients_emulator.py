"""The Events API and catalog clients against the real emulator over loopback.

The clients' rate limiters "sleep" by advancing the emulator's FakeClock, as in
test_criteo_client_emulator.py: nothing here waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from segcrit.clock import FakeClock
from segcrit.config import CriteoConfig
from segcrit.criteo.catalog_client import CatalogClient
from segcrit.criteo.catalog_models import ReportOkResponse
from segcrit.criteo.client import CriteoClient
from segcrit.criteo.constants import EVENTS_RATE_LIMIT_PER_MINUTE_DEFAULT
from segcrit.criteo.errors import PermanentError, RetryableError
from segcrit.criteo.events_client import EventsClient
from segcrit.emulator.state import (
    DEMO_ADVERTISER_ID,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    EmulatorState,
    Endpoint,
)
from segcrit.metrics import Metrics
from segcrit.ratelimit import SlidingWindowLimiter
from tests.helpers import EVENTS_ORDER, advancing, changed
from tests.helpers import catalog_product as product

DOCUMENT = changed(EVENTS_ORDER, "id.mapped_user_id", "gum-1")


@dataclass
class Clients:
    state: EmulatorState
    clock: FakeClock
    events: EventsClient
    audiences: CriteoClient
    catalog: CatalogClient
    metrics: Metrics
    http: httpx.AsyncClient


@pytest.fixture
def clients(emulator_state: EmulatorState, emulator_url: str, emulator_clock: FakeClock) -> Clients:
    config = CriteoConfig.model_validate(
        {
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET,
            "advertiser_id": DEMO_ADVERTISER_ID,
            "api_url": emulator_url,
            "events_url": f"{emulator_url}/m/event?version=s2s_v0",
        }
    )
    metrics = Metrics()
    http = httpx.AsyncClient()
    events_limiter = _limiter(emulator_clock)  # the Events API host has its own
    marketing_limiter = SlidingWindowLimiter(config.rate_limit_per_minute, emulator_clock, advancing(emulator_clock))
    audiences = CriteoClient(config, http, marketing_limiter, emulator_clock, metrics)
    return Clients(
        state=emulator_state,
        clock=emulator_clock,
        events=EventsClient(config.events_url, http, events_limiter, emulator_clock, metrics),
        audiences=audiences,
        catalog=CatalogClient(audiences.api),
        metrics=metrics,
        http=http,
    )


def run(clients: Clients, body: Callable[[Clients], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with clients.http:
            return await body(clients)

    return asyncio.run(go())


def statuses(state: EmulatorState, endpoint: str) -> list[int]:
    return [call.status for call in state.calls(endpoint)]


# --- Events API -----------------------------------------------------------------------------------


def test_a_document_reaches_the_emulator(clients: Clients) -> None:
    run(clients, lambda c: c.events.send(DOCUMENT))
    assert clients.state.event_documents() == [DOCUMENT]
    assert list(clients.state.transactions()) == [("6789", "O-1")]
    assert "token" not in clients.state.call_counts()  # no OAuth on the Events API


def test_a_redirect_is_followed_with_the_body_re_posted(clients: Clients) -> None:
    clients.state.events_redirect_hops = 2
    run(clients, lambda c: c.events.send(DOCUMENT))
    hops = clients.state.calls(Endpoint.EVENTS)
    assert [call.status for call in hops] == [307, 307, 200]
    assert [call.path for call in hops] == ["/m/event", "/m/event/regional", "/m/event/regional"]
    assert all(call.method == "POST" and call.request == DOCUMENT for call in hops)
    assert clients.state.event_documents() == [DOCUMENT]


def test_too_many_redirects_end_in_a_permanent_error(clients: Clients) -> None:
    clients.state.events_redirect_hops = 6
    with pytest.raises(PermanentError, match="redirected more than 5 times"):
        run(clients, lambda c: c.events.send(DOCUMENT))
    assert clients.state.event_documents() == []


def test_a_5xx_then_success_when_the_caller_retries(clients: Clients) -> None:
    clients.state.set_faults("5xx_next=1,5xx_status=503")

    async def body(c: Clients) -> None:
        with pytest.raises(RetryableError) as caught:
            await c.events.send(DOCUMENT)
        assert caught.value.status == 503
        await c.events.send(DOCUMENT)  # the caller's retry

    run(clients, body)
    assert statuses(clients.state, Endpoint.EVENTS) == [503, 200]
    assert clients.state.event_documents() == [DOCUMENT]


def test_429_is_retryable_at_the_emulators_reset(clients: Clients) -> None:
    clients.state.set_faults("429_burst=1")
    now = clients.clock.now()

    async def body(c: Clients) -> None:
        with pytest.raises(RetryableError) as caught:
            await c.events.send(DOCUMENT)
        assert caught.value.status == 429
        assert caught.value.retry_at == math.ceil(now) + 1  # the burst's announced reset
        await c.events.send(DOCUMENT)  # the caller's retry

    run(clients, body)
    assert statuses(clients.state, Endpoint.EVENTS) == [429, 200]


def test_the_events_limiter_waits_for_the_window_the_emulator_announces(clients: Clients) -> None:
    clients.state.events_rate_limit_per_minute = 1
    start = clients.clock.now()

    async def body(c: Clients) -> None:
        await c.events.send(DOCUMENT)
        await c.events.send(DOCUMENT)  # x-ratelimit-remaining: 0 made the limiter hold, not fail

    run(clients, body)
    assert statuses(clients.state, Endpoint.EVENTS) == [200, 200]
    assert clients.clock.now() >= math.ceil(start + 60)
    assert clients.state.rate_limit_per_minute == 250  # the Marketing API's limit is another one


def test_a_refusal_by_the_emulator_is_permanent_with_its_problem(clients: Clients, emulator_url: str) -> None:
    async def body(c: Clients) -> None:
        unversioned = EventsClient(f"{emulator_url}/m/event", c.http, _limiter(c.clock), c.clock, c.metrics)
        with pytest.raises(PermanentError) as caught:
            await unversioned.send(DOCUMENT)
        assert (caught.value.status, caught.value.code) == (400, "invalid")

    run(clients, body)
    assert clients.state.event_documents() == []


def test_an_invalid_document_never_leaves(clients: Clients) -> None:
    broken = {**DOCUMENT, "events": []}
    with pytest.raises(PermanentError) as caught:
        run(clients, lambda c: c.events.send(broken))
    assert caught.value.status is None  # refused by the client's own check, before sending
    assert clients.state.calls(Endpoint.EVENTS) == []


def _limiter(clock: FakeClock) -> SlidingWindowLimiter:
    return SlidingWindowLimiter(EVENTS_RATE_LIMIT_PER_MINUTE_DEFAULT, clock, advancing(clock))


# --- Catalog --------------------------------------------------------------------------------------


def test_a_batch_is_polled_to_its_final_report(clients: Clients) -> None:
    clients.state.catalog_report_polls = 2
    entries = [
        {"method": "insert", "product": product("Good-1", brand="Acme")},
        {"method": "insert", "product": product("Bad-1", link="javascript:alert(1)")},
    ]

    async def body(c: Clients) -> list[ReportOkResponse]:
        token = await c.catalog.send_batch("6789", entries)
        reports = [await c.catalog.report(token)]
        while not reports[-1].done and len(reports) < 10:
            reports.append(await c.catalog.report(token))
        return reports

    reports = run(clients, body)
    assert [r.status for r in reports] == ["ACCEPTED", "IN_PROGRESS", "VALIDATED_WITH_ERRORS"]
    final = reports[-1]
    assert final.counts["upserted"] == 1
    assert {pid: [e.type for e in errors] for pid, errors in final.errors_by_product().items()} == {
        "bad-1": ["InvalidProductUrl"]
    }
    assert clients.state.catalog("6789")["Good-1"]["brand"] == "Acme"
    assert clients.state.call_counts()["token"] == 1


def test_catalog_calls_retry_after_a_fault_and_share_the_token(clients: Clients) -> None:
    clients.state.set_faults("5xx_next=1")  # the token call draws it

    async def body(c: Clients) -> None:
        with pytest.raises(RetryableError):
            await c.catalog.send_batch("6789", [{"method": "insert", "product": product("A")}])
        await c.catalog.send_batch("6789", [{"method": "insert", "product": product("A")}])
        await c.audiences.find_segment("anything")

    run(clients, body)
    assert statuses(clients.state, Endpoint.TOKEN) == [500, 200]
    assert statuses(clients.state, Endpoint.CATALOG_BATCH) == [202]
    assert list(clients.state.catalog("6789")) == ["A"]
    assert (
        clients.metrics.registry.get_sample_value(
            "segcrit_criteo_calls_total", {"endpoint": "catalog_batch", "status": "202"}
        )
        == 1
    )
