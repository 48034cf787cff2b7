"""The states of one target in the store (SQLite): settled, claimed by a call in flight, unknown.

A call claims its targets before it leaves (`claim_changes`): from then on what Criteo holds of
them is unknown. An answer settles them (`ack_changes`), a refusal puts them back as they were
(`defer_changes`/`dead_letter` with maybe_applied=False), a lost answer or an expired claim leaves
them unknown. An unknown target is pending whatever it desires, and is never dropped as "neither
wanted nor held". These tests drive the transitions directly; tests/integration/test_lost_answers.py
drives them through the worker against the emulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from segcrit.store.base import PendingChange, TargetKey
from segcrit.store.sqlite import SqliteStore

T0 = 1_800_000_000.0
KEY = TargetKey("vip", "email", "a" * 64)
PROFILE = 1
CLAIM_SECS = 100.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "segcrit.db"))
    yield s
    s.close()


def want(store: SqliteStore, member: bool, now: float = T0) -> None:
    with store.transaction() as tx:
        tx.set_targets(PROFILE, {KEY} if member else set(), now)


def due(store: SqliteStore, now: float = T0 + 10 * CLAIM_SECS) -> list[tuple[bool, int]]:
    """The due changes of KEY as (add?, attempts)."""
    return [(c.add, c.attempts) for c in store.due_changes(now, 100) if c.key == KEY]


def held(store: SqliteStore) -> bool:
    return KEY.id_value in store.acknowledged_members("vip").get("email", set())


def settled_member(store: SqliteStore) -> None:
    want(store, True)
    store.claim_changes([KEY], T0 + CLAIM_SECS)
    store.ack_changes([KEY], True, T0)


def test_a_claimed_change_is_pending_but_not_due_until_its_claim_expires(store: SqliteStore) -> None:
    want(store, True)
    store.claim_changes([KEY], T0 + CLAIM_SECS)

    assert store.due_changes(T0 + CLAIM_SECS - 1, 100) == []
    assert store.pending_count() == 1
    assert store.next_change_at() == T0 + CLAIM_SECS
    [change] = store.due_changes(T0 + CLAIM_SECS, 100)  # expired: the call's process is gone
    assert change == PendingChange(KEY, add=True, since=T0, attempts=0, first_failure_at=None)


def test_an_answer_settles_the_change(store: SqliteStore) -> None:
    settled_member(store)

    assert held(store)
    assert store.pending_count() == 0 and due(store) == []
    assert [(s.desired, s.acknowledged, s.pending) for s in store.audience_stats()] == [(1, 1, 0)]


def test_a_refused_call_leaves_the_change_as_it_was(store: SqliteStore) -> None:
    want(store, True)
    store.claim_changes([KEY], T0 + CLAIM_SECS)
    store.defer_changes([KEY], T0 + 1, T0, maybe_applied=False)  # a 429: it never ran
    assert due(store) == [(True, 1)]

    want(store, False)  # the person leaves: neither wanted nor held, nothing to send
    assert store.pending_count() == 0
    assert store.audience_stats() == []  # the row is gone


def test_a_lost_answer_makes_a_leave_send_a_remove(store: SqliteStore) -> None:
    want(store, True)
    store.claim_changes([KEY], T0 + CLAIM_SECS)
    store.defer_changes([KEY], T0 + 1, T0, maybe_applied=True)  # a 500: it may have run

    want(store, False, T0 + 2)
    assert due(store) == [(False, 0)]
    assert [(s.desired, s.acknowledged, s.pending) for s in store.audience_stats()] == [(0, 0, 1)]


def test_a_lost_remove_then_a_return_sends_the_add(store: SqliteStore) -> None:
    settled_member(store)
    want(store, False)
    store.claim_changes([KEY], T0 + CLAIM_SECS)
    store.defer_changes([KEY], T0 + 1, T0, maybe_applied=True)

    want(store, True, T0 + 2)  # desired equals what was acknowledged, but the remove may have run
    assert due(store) == [(True, 0)]
    assert not held(store)


def test_an_unknown_change_survives_erasure_as_a_remove(store: SqliteStore) -> None:
    want(store, True)
    store.claim_changes([KEY], T0 + CLAIM_SECS)
    store.defer_changes([KEY], T0 + 1, T0, maybe_applied=True)

    with store.transaction() as tx:
        tx.erase_profile(PROFILE, T0 + 2, set())
    assert due(store) == [(False, 0)]
    store.claim_changes([KEY], T0 + 3 + CLAIM_SECS)
    store.ack_changes([KEY], False, T0 + 3)
    assert store.audience_stats() == []  # removed and acknowledged: nothing left of the person


@pytest.mark.parametrize(("maybe_applied", "after_replay"), [(False, []), (True, [(False, 0)])])
def test_a_dead_letter_ends_the_claim_as_its_call_ended(
    store: SqliteStore, maybe_applied: bool, after_replay: list[tuple[bool, int]]
) -> None:
    want(store, True)
    store.claim_changes([KEY], T0 + CLAIM_SECS)
    store.dead_letter([KEY], True, 500, "retry window exhausted", T0, maybe_applied=maybe_applied)
    assert due(store) == [] and store.pending_count() == 0

    want(store, False, T0 + 1)  # parked changes keep their row; their desire follows the person
    assert store.replay_dead_letters(None, T0 + 2) == 1
    assert due(store) == after_replay  # a refused add needs no remove; a lost one does
    assert len(store.audience_stats()) == len(after_replay)  # the row goes once it means nothing


def test_an_expired_claim_stays_unknown_when_the_next_call_is_refused(store: SqliteStore) -> None:
    want(store, True)
    store.claim_changes([KEY], T0 + CLAIM_SECS)  # the process dies during this call
    store.claim_changes([KEY], T0 + 3 * CLAIM_SECS)  # the next one takes the change over ...
    store.defer_changes([KEY], T0 + 1, T0, maybe_applied=False)  # ... and its own call is refused

    want(store, False, T0 + 2)
    assert due(store) == [(False, 0)]  # the first call may still have added it


def test_release_claims_makes_claimed_changes_due_at_once_and_unknown(store: SqliteStore) -> None:
    settled_member(store)
    want(store, False)
    store.claim_changes([KEY], T0 + CLAIM_SECS)

    assert store.release_claims() == 1
    assert store.release_claims() == 0
    want(store, True, T0 + 1)
    assert due(store, T0 + 1) == [(True, 0)]  # no wait for the expiry; and the add goes again


def test_a_re_resolved_audience_forgets_what_was_unknown(store: SqliteStore) -> None:
    want(store, True)
    store.claim_changes([KEY], T0 + CLAIM_SECS)
    store.defer_changes([KEY], T0 + 1, T0, maybe_applied=True)

    store.reset_audience_acks("vip", T0 + 2)  # a new segment: it holds nothing of ours
    want(store, False, T0 + 3)
    assert store.pending_count() == 0 and store.audience_stats() == []
