"""The delivery queues through the store seam: contact-list changes, Events API events, catalog
products and batch polls are claimed by one call at a time, then acknowledged, deferred or
dead-lettered (AudienceDeliveryStore, EventsQueue, CatalogQueue).

A claim holds its work until it is settled or expires; a claim's `until` is the caller's clock, so
an expiry is tested by claiming again at a later `now`.
"""

from __future__ import annotations

from tests.contract.conftest import T0, new_profile

from segcrit.domain import PendingChange, TargetKey
from segcrit.store.base import Store

CLAIM_SECS = 100.0
A, B, C = (TargetKey("vip", "email", value * 64) for value in "abc")
MADID = TargetKey("vip", "madid", "6d9d8c1e-0d3f-4b7a-9f3e-2b1d4c5e6f70")


def want(store: Store, user: str, keys: set[TargetKey], now: float = T0) -> None:
    """The person's targets: these keys (and no other) should be in Criteo."""
    with store.transaction() as tx:
        found = tx.find_profiles([("user_id", user)])
        profile_id = found[("user_id", user)] if found else new_profile(tx, user, now)
        for audience in {key.audience for key in keys}:
            tx.ensure_audience(audience, True)
        tx.set_targets(profile_id, keys, now)


def due(store: Store, now: float) -> list[tuple[TargetKey, bool, int]]:
    return [(c.key, c.add, c.attempts) for c in store.due_changes(now, 100)]


# ------------------------------------------------------------------------------------ contact lists


def test_due_changes_are_the_pending_targets_oldest_first(store: Store) -> None:
    want(store, "u1", {A}, T0)
    want(store, "u2", {B, MADID}, T0 + 1)

    changes = store.due_changes(T0 + 2, 100)
    assert {c.key for c in changes} == {A, B, MADID}
    assert changes[0] == PendingChange(A, add=True, since=T0, attempts=0, first_failure_at=None)
    assert [c.key for c in store.due_changes_of("vip", True, "madid", T0 + 2, 100)] == [MADID]
    assert store.pending_count() == 3


def test_a_claim_takes_due_changes_once_until_it_ends(store: Store) -> None:
    want(store, "u1", {A, B})

    assert sorted(store.claim_changes([A, B], True, T0, T0 + CLAIM_SECS), key=str) == [A, B]
    assert store.claim_changes([A, B], True, T0 + 1, T0 + 1 + CLAIM_SECS) == []  # another call
    assert due(store, T0 + 1) == []
    assert store.pending_count() == 2  # pending all the same: Criteo has not answered


def test_an_expired_claim_returns_its_changes_to_the_pool(store: Store) -> None:
    want(store, "u1", {A})
    store.claim_changes([A], True, T0, T0 + CLAIM_SECS)  # the process dies during the call

    assert due(store, T0 + CLAIM_SECS) == [(A, True, 0)]
    assert store.claim_changes([A], True, T0 + CLAIM_SECS, T0 + 2 * CLAIM_SECS) == [A]


def test_a_claim_leaves_out_changes_that_no_longer_ask_for_its_operation(store: Store) -> None:
    want(store, "u1", {A, B})
    want(store, "u1", {A}, T0 + 1)  # B is no longer wanted, and was never held: nothing to send

    assert store.claim_changes([A, B], True, T0 + 2, T0 + CLAIM_SECS) == [A]
    assert store.claim_changes([C], True, T0 + 2, T0 + CLAIM_SECS) == []  # not a pending change


def test_an_acknowledged_add_is_held_and_no_longer_pending(store: Store) -> None:
    want(store, "u1", {A, B})
    store.claim_changes([A, B], True, T0, T0 + CLAIM_SECS)
    store.ack_changes([A, B], True, T0 + 1)

    assert store.pending_count() == 0 and due(store, T0 + 2) == []
    [stats] = store.audience_stats()
    assert (stats.name, stats.desired, stats.acknowledged, stats.pending) == ("vip", 2, 2, 0)


def test_a_remove_is_sent_for_what_was_held_and_then_nothing_is_left(store: Store) -> None:
    want(store, "u1", {A})
    store.claim_changes([A], True, T0, T0 + CLAIM_SECS)
    store.ack_changes([A], True, T0 + 1)
    want(store, "u1", set(), T0 + 2)

    assert due(store, T0 + 3) == [(A, False, 0)]
    assert store.claim_changes([A], False, T0 + 3, T0 + 3 + CLAIM_SECS) == [A]
    store.ack_changes([A], False, T0 + 4)
    assert store.pending_count() == 0 and store.audience_stats()[0].desired == 0


def test_a_deferred_change_is_due_again_at_its_retry_time(store: Store) -> None:
    want(store, "u1", {A})
    store.claim_changes([A], True, T0, T0 + CLAIM_SECS)
    store.defer_changes([A], T0 + 30, T0 + 1, maybe_applied=False)  # a 429: never applied

    assert due(store, T0 + 29) == []
    [change] = store.due_changes(T0 + 30, 100)
    assert (change.key, change.add, change.attempts, change.first_failure_at) == (A, True, 1, T0 + 1)


def test_a_refused_call_restores_what_criteo_held(store: Store) -> None:
    want(store, "u1", {A})
    store.claim_changes([A], True, T0, T0 + CLAIM_SECS)
    store.defer_changes([A], T0 + 1, T0, maybe_applied=False)

    want(store, "u1", set(), T0 + 2)  # the person leaves: the add never ran, nothing to remove
    assert due(store, T0 + 3) == [] and store.pending_count() == 0


def test_a_lost_answer_leaves_criteo_unknown_so_a_leave_sends_a_remove(store: Store) -> None:
    want(store, "u1", {A})
    store.claim_changes([A], True, T0, T0 + CLAIM_SECS)
    store.defer_changes([A], T0 + 1, T0, maybe_applied=True)  # a timeout: the add may have run

    want(store, "u1", set(), T0 + 2)
    assert due(store, T0 + 3) == [(A, False, 0)]


def test_a_dead_letter_parks_its_changes_until_replayed(store: Store) -> None:
    want(store, "u1", {A, B})
    store.claim_changes([A, B], True, T0, T0 + CLAIM_SECS)
    letter = store.dead_letter([A, B], True, 400, "refused", T0 + 1)

    assert due(store, T0 + 2) == [] and store.pending_count() == 0
    assert store.dead_letter_count() == 1
    [parked] = store.dead_letters()
    assert (parked.id, parked.audience, parked.operation, parked.id_type, parked.count, parked.status) == (
        letter,
        "vip",
        "add",
        "email",
        2,
        400,
    )

    assert store.replay_dead_letters("vip", T0 + 3) == 1
    assert store.dead_letter_count() == 0
    assert {key for key, _, _ in due(store, T0 + 3)} == {A, B}


def test_a_new_segment_makes_the_whole_membership_pending_again(store: Store) -> None:
    want(store, "u1", {A})
    store.claim_changes([A], True, T0, T0 + CLAIM_SECS)
    store.ack_changes([A], True, T0 + 1)

    store.reset_audience_acks("vip", T0 + 2)
    assert due(store, T0 + 2) == [(A, True, 0)]


# ------------------------------------------------------------------------------------ Events API


def queue_events(store: Store, person: str, count: int) -> None:
    with store.transaction() as tx:
        profile_id = new_profile(tx, person)
        for n in range(count):
            tx.enqueue_event(str(profile_id), profile_id, {"account": "a"}, {"event": "viewItem", "n": n}, T0 + n)


def test_events_are_claimed_by_one_call_until_sent(store: Store) -> None:
    queue_events(store, "u1", 3)
    ids = [e.id for e in store.due_events(T0 + 10, 100)]
    assert [e.body["n"] for e in store.due_events(T0 + 10, 100)] == [0, 1, 2]

    assert store.claim_criteo_events(ids[:2], T0 + 10, T0 + 10 + CLAIM_SECS) == ids[:2]
    assert store.claim_criteo_events(ids, T0 + 11, T0 + 11 + CLAIM_SECS) == ids[2:]  # another call
    assert store.due_events(T0 + 12, 100) == []

    store.events_sent(ids)
    assert store.due_events(T0 + 10 + CLAIM_SECS, 100) == [] and store.pending_event_count() == 0


def test_an_expired_event_claim_is_sent_again(store: Store) -> None:
    queue_events(store, "u1", 1)
    [event] = store.due_events(T0, 10)
    store.claim_criteo_events([event.id], T0, T0 + CLAIM_SECS)  # the process dies during the call

    assert store.due_events(T0 + CLAIM_SECS - 1, 10) == []
    assert [e.id for e in store.due_events(T0 + CLAIM_SECS, 10)] == [event.id]
    assert store.claim_criteo_events([event.id], T0 + CLAIM_SECS, T0 + 2 * CLAIM_SECS) == [event.id]


def test_a_deferred_event_waits_and_a_dead_lettered_one_waits_for_replay(store: Store) -> None:
    queue_events(store, "u1", 2)
    first, second = store.due_events(T0, 10)
    store.claim_criteo_events([first.id, second.id], T0, T0 + CLAIM_SECS)
    store.defer_events([first.id], T0 + 30, T0 + 1)
    store.dead_letter_events([second.id], 400, "refused", T0 + 1)

    assert store.due_events(T0 + 29, 10) == []
    [retried] = store.due_events(T0 + 30, 10)
    assert (retried.id, retried.attempts, retried.first_failure_at) == (first.id, 1, T0 + 1)
    assert store.pending_event_count() == 1 and store.dead_letter_count() == 1

    store.replay_dead_letters(None, T0 + 31)
    assert {e.id for e in store.due_events(T0 + 31, 10)} == {first.id, second.id}


# ------------------------------------------------------------------------------------ catalog


def save_products(store: Store, *product_ids: str, now: float = T0) -> None:
    with store.transaction() as tx:
        for product_id in product_ids:
            fields = {"id": product_id, "title": f"Product {product_id}"}
            tx.save_product("m1", product_id, fields, f"fp-{product_id}-{now}", None, now)


def test_products_are_claimed_by_one_batch_until_it_is_sent(store: Store) -> None:
    save_products(store, "p1", "p2")
    assert [p.product_id for p in store.due_products("m1", T0 + 1, 10)] == ["p1", "p2"]

    assert store.claim_products("m1", ["p1"], T0 + 1, T0 + 1 + CLAIM_SECS) == ["p1"]
    assert store.claim_products("m1", ["p1", "p2"], T0 + 2, T0 + 2 + CLAIM_SECS) == ["p2"]
    assert store.due_products("m1", T0 + 3, 10) == []

    store.open_batch("batch-1", "m1", [("p1", f"fp-p1-{T0}")], T0 + 3, T0 + 10)
    store.defer_products("m1", ["p2"], T0 + 60, T0 + 3)
    assert [p.product_id for p in store.due_products("m1", T0 + 60, 10)] == ["p2"]  # p1 is in a batch


def test_a_batch_poll_is_claimed_by_one_worker_until_polled(store: Store) -> None:
    save_products(store, "p1")
    store.claim_products("m1", ["p1"], T0, T0 + CLAIM_SECS)
    store.open_batch("batch-1", "m1", [("p1", f"fp-p1-{T0}")], T0, T0 + 5)

    assert store.batches_to_poll(T0 + 4, T0 + 4 + CLAIM_SECS) == []
    [batch] = store.batches_to_poll(T0 + 5, T0 + 5 + CLAIM_SECS)
    assert (batch.token, batch.merchant_id, batch.products, batch.polls) == (
        "batch-1",
        "m1",
        [("p1", f"fp-p1-{T0}")],
        0,
    )
    assert store.batches_to_poll(T0 + 6, T0 + 6 + CLAIM_SECS) == []  # claimed

    store.batch_polled("batch-1", T0 + 20)
    assert store.batches_to_poll(T0 + 19, T0 + 19 + CLAIM_SECS) == []
    [again] = store.batches_to_poll(T0 + 20, T0 + 20 + CLAIM_SECS)
    assert again.polls == 1

    store.close_batch(again, {}, T0 + 21)
    assert store.batches_to_poll(T0 + 1000, T0 + 1000 + CLAIM_SECS) == []
    stats = store.catalog_stats()
    assert (stats.products, stats.accepted, stats.pending, stats.in_flight) == (1, 1, 0, 0)


def test_a_failed_batch_sends_its_products_again(store: Store) -> None:
    save_products(store, "p1")
    store.claim_products("m1", ["p1"], T0, T0 + CLAIM_SECS)
    store.open_batch("batch-1", "m1", [("p1", f"fp-p1-{T0}")], T0, T0 + 5)
    [batch] = store.batches_to_poll(T0 + 5, T0 + 5 + CLAIM_SECS)

    store.close_batch(batch, {}, T0 + 6, failed=True)
    assert [p.product_id for p in store.due_products("m1", T0 + 6, 10)] == ["p1"]


def test_a_full_batch_of_50000_changes_is_claimed_and_acknowledged_in_one_call_each(store: Store) -> None:
    """A Criteo call carries up to 50,000 identifiers: the store claims and settles that many at
    once (on PostgreSQL a filter against the whole array per row took minutes; see _KEYS_JOIN)."""
    keys = {TargetKey("vip", "email", f"{n:064x}") for n in range(50_000)}
    want(store, "u1", keys)

    assert len(store.claim_changes(sorted(keys, key=str), True, T0, T0 + CLAIM_SECS)) == 50_000
    store.ack_changes(keys, True, T0 + 1)

    assert store.pending_count() == 0
    [stats] = store.audience_stats()
    assert stats.acknowledged == 50_000
