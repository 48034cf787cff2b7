"""SPEC §1 Event time, through the real ingest routes, a real SQLite store and processing: the clock
skew correction, no device clock holding a membership in the future, and no stored time that
makes processing fail."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from segcrit.domain import ProfileFacts
from segcrit.sources.validate import MAX_EPOCH, MIN_EPOCH
from tests.flow_harness import order
from tests.helpers import audience_event, email_of
from tests.ingest_harness import IngestEnv, IngestServer, basic_auth, ingest_server

YEAR = 365 * 86_400.0


@pytest.fixture(scope="module")
def server() -> Iterator[IngestServer]:
    with ingest_server() as running:
        yield running


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def send(env: IngestEnv, *messages: dict[str, Any], **envelope: Any) -> None:
    response = env.http.post("/v1/batch", content=orjson.dumps({"batch": messages, **envelope}), headers=basic_auth())
    assert response.json() == {"success": True}
    env.drain()


def facts(env: IngestEnv, user: str) -> ProfileFacts:
    with env.store.transaction() as tx:
        [profile_id] = tx.find_profiles([("user_id", user)]).values()
    found = env.store.profile_facts(profile_id)
    assert found is not None
    return found


def test_a_device_clock_in_the_future_cannot_keep_someone_in_an_audience(server: IngestServer) -> None:
    with server.fresh() as env:
        now = env.clock.now()
        # The phone's clock is ten years ahead: its entry counts as received, not as of ten years on.
        send(env, audience_event("u1", "vip", True, now + 10 * YEAR, email=email_of("u1")))
        assert facts(env, "u1").audiences == {"vip"}
        env.clock.advance(60)
        send(env, audience_event("u1", "vip", False, now + 30, email=email_of("u1")))
        assert facts(env, "u1").audiences == frozenset()


def test_an_order_is_placed_at_the_time_segment_would_record(server: IngestServer) -> None:
    with server.fresh() as env:
        now = env.clock.now()
        device_now = now - 2 * 86_400  # the device's clock is two days behind
        placed = order("u1", "o-1", device_now - 30, revenue=10)
        placed["context"] = {"traits": {"email": email_of("u1")}}
        send(env, placed, sentAt=iso(device_now))
        assert facts(env, "u1").last_order_at == pytest.approx(now - 30)


@pytest.mark.parametrize("stored_ts", [1e300, -1e300, MAX_EPOCH, MIN_EPOCH - 1, "2026-01-01", None, True])
def test_no_stored_time_makes_processing_fail(server: IngestServer, stored_ts: Any) -> None:
    """A message stored by another path (an older version, a replay by hand) with a time no date can
    hold: processing uses its receipt time instead of failing."""
    with server.fresh() as env:
        received = env.clock.now()
        placed = order("u1", "o-1", received, revenue=10)
        placed["_segcrit"] = {"ts": stored_ts, "emails": [], "phones": []}
        env.store.accept_sync("web", [placed], received)
        assert env.drain() == 1
        assert env.store.failed_event_count() == 0
        assert facts(env, "u1").last_order_at == received
