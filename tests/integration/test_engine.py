"""Processor + a real store (SQLite, and PostgreSQL with SEGCRIT_TEST_POSTGRES_URL): identity,
consent, deletion and membership end in the right targets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from segcrit.clock import FakeClock
from segcrit.domain import TargetKey
from segcrit.identity.normalize import email_hashes
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.store import open_store
from segcrit.store.base import Store
from segcrit.store.sqlite import SqliteStore
from tests.helpers import audience_event, iso, make_config, put

T0 = 1_800_000_000.0
EMAIL = "Jane.Doe@Example.com "
EMAIL_SHA = email_hashes("jane.doe@example.com")[0]


@pytest.fixture
def store(tmp_path: Path, harness_store: str | None) -> Iterator[Store]:
    s = SqliteStore(str(tmp_path / "t.db")) if harness_store is None else open_store(harness_store, owner=True)
    yield s
    s.close()


@pytest.fixture
def processor(store: SqliteStore, tmp_path: Path) -> Processor:
    return Processor(store, make_config(str(tmp_path / "t.db")), FakeClock(T0), Metrics())


def desired(store: SqliteStore) -> set[TargetKey]:
    return {c.key for c in store.due_changes(T0 + 10**6, 10**6) if c.add}


def run(store: SqliteStore, processor: Processor, *messages: dict) -> None:
    put(store, *messages)
    processor.drain()


def test_entered_audience_targets_every_identifier(store: SqliteStore, processor: Processor) -> None:
    run(store, processor, audience_event("u1", "vip", True, T0, email=EMAIL, madid="AD-1"))
    assert desired(store) == {TargetKey("vip", "email", EMAIL_SHA), TargetKey("vip", "madid", "AD-1")}
    assert store.backlog() == 0


def test_raw_email_never_reaches_the_database(
    store: SqliteStore, processor: Processor, tmp_path: Path, harness_store: str | None
) -> None:
    run(store, processor, audience_event("u1", "vip", True, T0, email=EMAIL))
    store.close()
    if harness_store is None:
        for path in tmp_path.iterdir():
            assert b"jane.doe" not in path.read_bytes().lower()
        return
    import psycopg

    with psycopg.connect(harness_store) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):
                for value in row:
                    text = value.lower() if isinstance(value, bytes) else str(value).lower().encode()
                    assert b"jane.doe" not in text, table


def test_add_then_remove_before_delivery_cancels(store: SqliteStore, processor: Processor) -> None:
    run(
        store,
        processor,
        audience_event("u1", "vip", True, T0, email=EMAIL),
        audience_event("u1", "vip", False, T0 + 1, email=EMAIL),
    )
    assert store.due_changes(T0 + 10**6, 100) == []


def test_latest_timestamp_wins_whatever_the_arrival_order(store: SqliteStore, processor: Processor) -> None:
    run(store, processor, audience_event("u1", "vip", False, T0 + 5, email=EMAIL))
    run(store, processor, audience_event("u1", "vip", True, T0, email=EMAIL))
    assert desired(store) == set()


def test_acknowledged_member_who_exits_becomes_a_pending_remove(store: SqliteStore, processor: Processor) -> None:
    run(store, processor, audience_event("u1", "vip", True, T0, email=EMAIL))
    store.ack_changes(list(desired(store)), True, T0)
    run(store, processor, audience_event("u1", "vip", False, T0 + 1, email=EMAIL))
    [change] = store.due_changes(T0 + 10, 10)
    assert change.key == TargetKey("vip", "email", EMAIL_SHA) and change.add is False


def test_cross_device_identity_adds_the_mobile_id(store: SqliteStore, processor: Processor) -> None:
    run(store, processor, audience_event("u1", "vip", True, T0, email=EMAIL))
    mobile = {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "dev-1",
        "messageId": "mob",
        "timestamp": iso(T0 + 60),
        "context": {"device": {"advertisingId": "IDFA-9", "adTrackingEnabled": True}},
    }
    run(store, processor, mobile)
    assert desired(store) == {TargetKey("vip", "email", EMAIL_SHA), TargetKey("vip", "madid", "IDFA-9")}


def test_anonymous_activity_joins_on_identify(store: SqliteStore, processor: Processor) -> None:
    anon = audience_event("ignored", "vip", True, T0, madid="AD-7")
    anon.pop("userId")
    anon["anonymousId"] = "anon-7"
    run(store, processor, anon)
    run(
        store,
        processor,
        {
            "type": "identify",
            "userId": "u7",
            "anonymousId": "anon-7",
            "messageId": "i7",
            "timestamp": iso(T0 + 1),
            "traits": {"email": EMAIL},
        },
    )
    assert desired(store) == {TargetKey("vip", "madid", "AD-7"), TargetKey("vip", "email", EMAIL_SHA)}


def test_ad_tracking_off_removes_the_madid_only(store: SqliteStore, processor: Processor) -> None:
    run(store, processor, audience_event("u1", "vip", True, T0, email=EMAIL, madid="AD-1"))
    store.ack_changes(list(desired(store)), True, T0)
    off = {
        "type": "track",
        "event": "App Opened",
        "userId": "u1",
        "messageId": "off",
        "timestamp": iso(T0 + 5),
        "context": {"device": {"advertisingId": "AD-1", "adTrackingEnabled": False}},
    }
    run(store, processor, off)
    [change] = store.due_changes(T0 + 10, 10)
    assert change.key == TargetKey("vip", "madid", "AD-1") and change.add is False


def test_consent_revoked_then_given_again(store: SqliteStore, processor: Processor) -> None:
    run(
        store,
        processor,
        audience_event("u1", "vip", True, T0, email=EMAIL),
        audience_event("u1", "other", True, T0, email=EMAIL),
    )
    store.ack_changes(list(desired(store)), True, T0)
    revoke = {
        "type": "track",
        "event": "Segment Consent Preference Updated",
        "userId": "u1",
        "messageId": "c1",
        "timestamp": iso(T0 + 10),
        "context": {"consent": {"categoryPreferences": {"Advertising": False}}},
    }
    run(store, processor, revoke)
    removes = store.due_changes(T0 + 20, 10)
    assert {c.key.audience for c in removes} == {"vip", "other"} and not any(c.add for c in removes)
    store.ack_changes([c.key for c in removes], False, T0 + 20)
    # An older event with consent granted does not override the newer revocation.
    stale = audience_event("u1", "vip", True, T0 + 5, email=EMAIL, consent=True)
    run(store, processor, stale)
    assert store.due_changes(T0 + 30, 10) == []
    regrant = {
        "type": "identify",
        "userId": "u1",
        "messageId": "c2",
        "timestamp": iso(T0 + 30),
        "context": {"consent": {"categoryPreferences": {"Advertising": True}}},
    }
    run(store, processor, regrant)
    assert {c.key.audience for c in store.due_changes(T0 + 40, 10) if c.add} == {"vip", "other"}


def test_delete_removes_everywhere_and_old_replays_stay_out(store: SqliteStore, processor: Processor) -> None:
    run(store, processor, audience_event("u1", "vip", True, T0, email=EMAIL))
    store.ack_changes(list(desired(store)), True, T0)
    run(store, processor, {"type": "delete", "userId": "u1", "messageId": "del", "timestamp": iso(T0 + 100)})
    [change] = store.due_changes(T0 + 200, 10)
    assert change.add is False
    store.ack_changes([change.key], False, T0 + 200)
    run(store, processor, audience_event("u1", "vip", True, T0 + 50, email=EMAIL))  # an old replay
    assert store.due_changes(T0 + 300, 10) == []
    run(store, processor, audience_event("u1", "vip", True, T0 + 500, email=EMAIL))  # newer: a fresh profile
    assert desired(store) == {TargetKey("vip", "email", EMAIL_SHA)}


def test_forget_by_email(store: SqliteStore, processor: Processor) -> None:
    run(store, processor, audience_event("u1", "vip", True, T0, email=EMAIL))
    store.ack_changes(list(desired(store)), True, T0)
    assert processor.forget("jane.doe@example.com") == 1
    [change] = store.due_changes(T0 + 10**6, 10)
    assert change.add is False


def test_duplicate_message_ids_are_ignored(store: SqliteStore) -> None:
    event = audience_event("u1", "vip", True, T0, email=EMAIL, message_id="same")
    put(store, event)
    put(store, event)
    assert store.backlog() == 1


def test_an_event_that_breaks_processing_is_set_aside_and_the_rest_flow(
    store: SqliteStore, processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = processor.process

    def fragile(tx, event, now):  # type: ignore[no-untyped-def]
        if event.message.get("userId") == "poison":
            raise ValueError("cannot process")
        return original(tx, event, now)

    monkeypatch.setattr(processor, "process", fragile)
    put(store, audience_event("u1", "vip", True, T0, email=EMAIL), audience_event("poison", "vip", True, T0))
    processor.drain()
    assert desired(store) == {TargetKey("vip", "email", EMAIL_SHA)}
    assert store.backlog() == 0 and store.failed_event_count() == 1
