"""Ingest and processing through the store seam: dedupe at accept, the backlog, and the claim of
inbox chunks in the unit of work that applies them (IngestStore, ProcessingStore, ChunkTx)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tests.contract.conftest import T0, message, new_profile

from segcrit.domain import InboxEvent
from segcrit.store.base import LAST_SEEN_SLACK_SECS, Store


def users(events: list[InboxEvent] | tuple[InboxEvent, ...]) -> list[object]:
    return [event.message["userId"] for event in events]


def fill(store: Store, count: int, source: str = "web") -> None:
    store.accept_sync(source, [message(f"u{i}") for i in range(count)], T0)


def process(store: Store, limit: int) -> list[object]:
    """Claim up to `limit` events and mark them all done; returns their users."""
    with store.claim_chunk(limit) as chunk:
        chunk.done(chunk.events)
        return users(list(chunk.events))


# ------------------------------------------------------------------------------------ accept


def test_accept_stores_each_source_and_message_id_once(store: Store) -> None:
    first = store.accept_sync("web", [message("u1", "m1"), message("u2", "m2")], T0)
    again = store.accept_sync("web", [message("u1", "m1"), message("u3", "m3")], T0 + 1)
    other_source = store.accept_sync("app", [message("u1", "m1")], T0 + 2)

    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (1, 1)
    assert (other_source.stored, other_source.duplicates) == (1, 0)
    assert process(store, 10) == ["u1", "u2", "u3", "u1"]


def test_accept_drops_a_duplicate_within_one_request_and_keeps_messages_without_id(store: Store) -> None:
    result = asyncio.run(
        store.accept("web", [message("u1", "m1"), message("u1", "m1"), message("u2"), message("u2")], T0)
    )

    assert (result.stored, result.duplicates) == (3, 1)
    assert store.backlog() == 3


def test_accepted_events_keep_their_source_order_and_receipt_time(store: Store) -> None:
    store.accept_sync("web", [message("u1"), message("u2")], T0)
    store.accept_sync("engage", [message("u3")], T0 + 5)

    with store.claim_chunk(10) as chunk:
        events = list(chunk.events)
    assert [(e.source, e.message["userId"], e.received_at) for e in events] == [
        ("web", "u1", T0),
        ("web", "u2", T0),
        ("engage", "u3", T0 + 5),
    ]
    assert [e.seq for e in events] == sorted({e.seq for e in events})


def test_the_backlog_counts_events_accepted_and_not_yet_processed(store: Store) -> None:
    assert store.backlog() == 0
    fill(store, 5)
    assert store.backlog() == 5

    process(store, 2)
    assert store.backlog() == 3
    process(store, 10)
    assert store.backlog() == 0


# ------------------------------------------------------------------------------------ chunks


def test_a_chunk_claims_the_oldest_waiting_events_up_to_its_limit(store: Store) -> None:
    fill(store, 5)

    assert process(store, 3) == ["u0", "u1", "u2"]
    assert process(store, 3) == ["u3", "u4"]
    assert process(store, 3) == []


def test_events_not_marked_done_stay_in_the_inbox(store: Store) -> None:
    fill(store, 4)

    with store.claim_chunk(4) as chunk:
        chunk.done(chunk.events[:1])  # the rest: the store asked for an early commit

    assert store.backlog() == 3
    assert process(store, 10) == ["u1", "u2", "u3"]


def test_a_chunk_that_raises_keeps_its_events_and_none_of_its_effects(store: Store) -> None:
    fill(store, 2)

    with pytest.raises(RuntimeError), store.claim_chunk(10) as chunk:
        new_profile(chunk, "someone")
        chunk.done(chunk.events)
        raise RuntimeError("processing failed")

    assert store.backlog() == 2
    with store.transaction() as tx:
        assert tx.find_profiles([("user_id", "someone")]) == {}


def test_the_effects_of_a_chunk_commit_with_it(store: Store) -> None:
    fill(store, 1)

    with store.claim_chunk(10) as chunk:
        profile_id = new_profile(chunk, "u0")
        chunk.set_membership(profile_id, "vip", True, T0)
        chunk.touch_profile(profile_id, T0 + 10)  # within the slack: not written
        chunk.touch_profile(profile_id, T0 + LAST_SEEN_SLACK_SECS + 10)
        chunk.done(chunk.events)

    with store.transaction() as tx:
        assert tx.find_profiles([("user_id", "u0")]) == {("user_id", "u0"): profile_id}
        profile = tx.load_profile(profile_id)
    assert profile is not None and profile.memberships == {"vip": (True, T0)}
    facts = store.profile_facts(profile_id)
    assert facts is not None and facts.last_seen_at == T0 + LAST_SEEN_SLACK_SECS + 10


def test_a_chunk_of_only_some_events_claims_those_still_waiting(store: Store) -> None:
    fill(store, 4)
    with store.claim_chunk(4) as chunk:
        seqs = [e.seq for e in chunk.events]
    process(store, 1)  # u0 is gone

    with store.claim_chunk(10, only=[seqs[3], seqs[0], seqs[2]]) as chunk:
        assert users(list(chunk.events)) == ["u2", "u3"]
        chunk.done(chunk.events)
    assert process(store, 10) == ["u1"]


def test_a_second_chunk_never_gets_the_events_of_the_first(store: Store) -> None:
    fill(store, 5)
    second: list[object] = []
    claiming = threading.Event()

    def claim_the_rest() -> None:
        claiming.set()
        second.extend(process(store, 10))

    with store.claim_chunk(2) as first:
        thread = threading.Thread(target=claim_the_rest)
        thread.start()  # claims while the first chunk holds its events (or waits for it to end)
        assert claiming.wait(timeout=30)
        first.done(first.events)
        taken = users(list(first.events))
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert taken == ["u0", "u1"]
    assert second == ["u2", "u3", "u4"]


def test_an_event_set_aside_leaves_the_inbox_with_its_reason_until_replayed(store: Store) -> None:
    fill(store, 2)

    with store.claim_chunk(10) as chunk:
        poison, good = chunk.events
        chunk.done([good])
        chunk.set_aside(poison, "ValueError: cannot process this one", T0 + 1)

    assert store.backlog() == 0
    assert store.failed_event_count() == 1
    [failed] = store.failed_events()
    assert (failed.seq, failed.source, failed.error) == (poison.seq, "web", "ValueError: cannot process this one")

    assert store.replay_failed_events() == 1
    assert store.failed_event_count() == 0
    assert process(store, 10) == ["u0"]


def test_a_dry_run_keeps_nothing(store: Store) -> None:
    with store.dry_run() as tx:
        profile_id = new_profile(tx, "u1")
        assert tx.find_profiles([("user_id", "u1")]) != {}
        assert tx.ensure_new_audience("seen-in-a-preview", True, T0, 0, 50)
        tx.ensure_audience("named-in-a-preview", True)
        tx.set_membership(profile_id, "seen-in-a-preview", True, T0)

    with store.transaction() as tx:
        assert tx.find_profiles([("user_id", "u1")]) == {}
    assert store.audience("seen-in-a-preview") is None and store.audience("named-in-a-preview") is None
