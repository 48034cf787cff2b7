"""The admin's part of the store, on a real SQLite file, fed by real processing and delivery
against the emulator: counts kept by triggers, capped tables, replays, resyncs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from segcrit.backfill import run_requested_resyncs
from segcrit.clock import FakeClock
from segcrit.config import DeliveryConfig
from segcrit.domain import CounterIncrement, InboxEvent, NewCall, NewSample, TargetKey
from segcrit.emulator.state import EmulatorState
from segcrit.store import sqlite as sqlite_store
from segcrit.store.common import CALLS_KEPT_PER_ENDPOINT, SAMPLES_KEPT_PER_SOURCE
from segcrit.store.sqlite import SqliteStore
from tests.flow_harness import Process, Processes
from tests.helpers import audience_event, email_of, email_sha, make_config, members

# A retry window of 3.6 s: with Criteo down, the second delivery step (5 s later) dead-letters.
SHORT_WINDOW = DeliveryConfig(max_wait_secs=0, retry_window_hours=0.001, backoff_initial_secs=0.5)


@pytest.fixture
def processes(emulator_clock: FakeClock) -> Iterator[Processes]:
    started = Processes(emulator_clock)
    yield started
    started.close()


@pytest.fixture
def segcrit(tmp_path: Path, emulator_url: str, processes: Processes) -> Process:
    config = make_config(str(tmp_path / "s.db"), api_url=emulator_url, max_wait=0)
    config = config.model_copy(update={"delivery": SHORT_WINDOW})
    return processes.start(config)


def assert_counts_match_a_full_count(store: SqliteStore) -> None:
    """What the triggers kept equals what summing `targets` gives (the old, scanning way)."""
    kept = {a.name: a for a in store.audience_counts()}
    for full in store.audience_stats():
        row = kept[full.name]
        assert (row.desired, row.acknowledged, row.pending_add + row.pending_remove, row.dead) == (
            full.desired,
            full.acknowledged,
            full.pending,
            full.dead,
        ), full.name
    assert store.pending_total() == store.pending_count()


def enter(segcrit: Process, user: str, audience: str, member: bool = True) -> None:
    segcrit.send(audience_event(user, audience, member, segcrit.now(), email=email_of(user)))


def test_audience_counts_follow_every_change_of_targets(segcrit: Process, emulator_state: EmulatorState) -> None:
    for user in ("u1", "u2", "u3"):
        enter(segcrit, user, "vip")
    enter(segcrit, "u1", "buyers")
    [vip] = [a for a in segcrit.store.audience_counts() if a.name == "vip"]
    assert (vip.desired, vip.acknowledged, vip.pending_add, vip.pending_remove, vip.last_sync_at) == (3, 0, 3, 0, None)
    assert_counts_match_a_full_count(segcrit.store)

    segcrit.deliver()
    vip = segcrit.store.audience_counts_of("vip")
    assert vip is not None and (vip.desired, vip.acknowledged, vip.pending_add) == (3, 3, 0)
    assert vip.last_sync_at is not None and vip.segment_id == emulator_state.segment("vip").id
    assert_counts_match_a_full_count(segcrit.store)

    enter(segcrit, "u2", "vip", member=False)  # a remove waits
    vip = segcrit.store.audience_counts_of("vip")
    assert vip is not None and (vip.desired, vip.acknowledged, vip.pending_remove) == (2, 3, 1)
    assert_counts_match_a_full_count(segcrit.store)

    emulator_state.set_faults("5xx=1")  # Criteo down past the retry window: dead letters
    enter(segcrit, "u4", "vip")
    segcrit.clock.advance(5)
    segcrit.loop.run_until_complete(segcrit.workers.drain_once())
    segcrit.clock.advance(5)
    segcrit.loop.run_until_complete(segcrit.workers.drain_once())
    vip = segcrit.store.audience_counts_of("vip")
    assert vip is not None and vip.dead == 2 and vip.pending_add + vip.pending_remove == 0
    assert segcrit.store.open_dead_letters() == {"vip": 2}
    assert_counts_match_a_full_count(segcrit.store)

    emulator_state.set_faults("none")
    assert segcrit.store.replay_dead_letters("vip", segcrit.now()) == 2
    segcrit.deliver()
    assert members(emulator_state, "vip") == {email_sha("u1"), email_sha("u3"), email_sha("u4")}
    vip = segcrit.store.audience_counts_of("vip")
    assert vip is not None and (vip.desired, vip.acknowledged, vip.dead) == (3, 3, 0)
    assert_counts_match_a_full_count(segcrit.store)

    assert segcrit.processor.forget("u1") == 1
    segcrit.store.reset_audience_acks("buyers", segcrit.now())
    assert_counts_match_a_full_count(segcrit.store)
    segcrit.deliver()
    assert members(emulator_state, "vip") == {email_sha("u3"), email_sha("u4")}
    assert_counts_match_a_full_count(segcrit.store)


def test_a_store_with_targets_from_before_the_counts_is_counted_once_at_start(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    conn = store._conn()
    conn.execute("DELETE FROM meta WHERE key = 'audience_counts'")  # as before the admin existed
    conn.execute("DROP TABLE schema_migrations")  # and before versioned migrations: adopted at start
    conn.execute("DROP TABLE audience_counts")
    for trigger in ("insert", "update", "delete"):
        conn.execute(f"DROP TRIGGER targets_count_{trigger}")
    conn.execute(
        "INSERT INTO targets (audience, id_type, id_value, desired, acked, since) VALUES "
        "('vip', 'email', 'a', 1, 1, 0), ('vip', 'email', 'b', 1, 0, 0), ('vip', 'email', 'c', 0, 1, 0)"
    )
    store.close()

    for _ in range(2):  # the second start must not count them again
        store = SqliteStore(path)
        vip = store.audience_counts_of("vip")
        assert vip is not None and (vip.desired, vip.acknowledged, vip.pending_add, vip.pending_remove) == (2, 2, 1, 1)
        store.close()


def test_replaying_set_aside_events_puts_them_back_on_the_inbox_in_order(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    with store.transaction() as tx:
        for seq in (7, 3, 5):
            tx.quarantine_event(InboxEvent(seq, "web", {"type": "track", "n": seq}, 1.0), "ValueError: boom", 2.0)
    assert [e.seq for e in store.failed_events()] == [7, 5, 3]
    assert store.replay_failed_events() == 3
    assert store.failed_event_count() == 0
    assert [e.message["n"] for e in store.waiting_events("inbox", 0, 10)] == [3, 5, 7]
    assert store.replay_failed_events() == 0
    store.close()


def test_a_big_replay_goes_back_a_batch_per_transaction_and_resumes_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "REPLAY_BATCH", 4)
    store = SqliteStore(str(tmp_path / "s.db"))
    letters = []
    for audience, size in (("vip", 10), ("buyers", 3)):
        keys = [TargetKey(audience, "email", f"{audience}-{n}") for n in range(size)]
        with store.transaction() as tx:
            for key in keys:
                tx.conn.execute(
                    "INSERT INTO targets (audience, id_type, id_value, desired, since) VALUES (?, ?, ?, 1, 0)",
                    (key.audience, key.id_type, key.id_value),
                )
        letters.append(store.dead_letter(keys, True, 400, "refused", 1.0))
    assert store.open_dead_letters() == {"vip": 1, "buyers": 1}

    left = store._release_dead_letters(letters, 2.0)  # one batch, then the process dies
    assert left == letters and store.open_dead_letters() == {"vip": 1, "buyers": 1}
    assert store.audience_counts_of("vip").dead == 6  # type: ignore[union-attr]

    assert store.replay_dead_letters(None, 3.0) == 2
    assert store.open_dead_letters() == {} and store.pending_count() == 13
    assert_counts_match_a_full_count(store)
    store.close()


def _sample(source: str, accepted: bool, user: str, n: int) -> NewSample:
    body = {"type": "track", "event": f"E{n}", "userId": user}
    return NewSample(float(n), source, accepted, None, "track", f"E{n}", user, None, None, body)


def _call(endpoint: str, n: int) -> NewCall:
    return NewCall(float(n), endpoint, "PATCH", "/x", 200, 1.0, None, None, {}, None)


def test_calls_and_samples_keep_only_the_latest_per_endpoint_and_source(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    for batch in range(3):
        start = batch * CALLS_KEPT_PER_ENDPOINT
        calls = [_call("contact_list_patch", n) for n in range(start, start + CALLS_KEPT_PER_ENDPOINT)]
        samples = [_sample("web", True, "u", n) for n in range(start, start + SAMPLES_KEPT_PER_SOURCE)]
        store.record_activity([], [*calls, _call("events", start)], [*samples, _sample("web", False, "u", start)])
    kept = store.recent_calls(10_000, endpoint="contact_list_patch")
    assert len(kept) == CALLS_KEPT_PER_ENDPOINT and kept[0].at == 3 * CALLS_KEPT_PER_ENDPOINT - 1
    assert len(store.recent_calls(10_000, endpoint="events")) == 3
    accepted = store.samples(10_000, source="web", accepted=True)
    assert len(accepted) == SAMPLES_KEPT_PER_SOURCE and accepted[0].event == f"E{2 * CALLS_KEPT_PER_ENDPOINT + 99}"
    assert len(store.samples(10_000, accepted=False)) == 3
    store.close()


def test_forgetting_a_person_deletes_their_samples(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    store.record_activity(
        [], [], [_sample("web", True, "u1", 1), _sample("web", False, "u1", 2), _sample("web", True, "u2", 3)]
    )
    with store.transaction() as tx:
        tx.add_tombstone("user_id", "u1", 10.0)
    assert [s.body["userId"] for s in store.samples()] == ["u2"]
    assert store.samples_of(["u2"], [], []) != [] and store.samples_of(["u1"], [], []) == []
    store.close()


def test_counters_add_up_gauges_keep_the_highest_and_old_minutes_go(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    store.record_activity([CounterIncrement(60, "events_in", '{"source":"web"}', 2)], [], [])
    store.record_activity(
        [
            CounterIncrement(60, "events_in", '{"source":"web"}', 3),
            CounterIncrement(60, "backlog", "{}", 5, gauge=True),
        ],
        [],
        [],
    )
    store.record_activity([CounterIncrement(60, "backlog", "{}", 4, gauge=True)], [], [])
    store.record_activity([CounterIncrement(m, "events_in", "{}", 1) for m in range(120, 60 * 40, 60)], [], [])
    points = {(m, series): v for m, series, _, v in store.counters_by_minute(0, ["events_in", "backlog"])}
    assert points[(60, "events_in")] == 5 and points[(60, "backlog")] == 5
    removed = 0
    while (pruned := store.prune_counters(1800)) > 0:  # a few minutes per call
        removed += pruned
    assert removed == 2 + 28  # minute 60 (two series) and the minutes 120 .. 1740
    assert min(m for m, _, _, _ in store.counters_by_minute(0, ["events_in", "backlog"])) == 1800
    store.close()


def test_a_requested_resync_runs_on_the_delivery_worker_and_refills_criteo(
    segcrit: Process, emulator_state: EmulatorState
) -> None:
    for user in ("u1", "u2"):
        enter(segcrit, user, "vip")
    segcrit.deliver()
    emulator_state.amend(emulator_state.segment("vip"), "add", "email", {"f" * 64})  # edited by hand in Criteo

    segcrit.store.request_resync("vip", segcrit.now())
    assert segcrit.store.resync_state("vip") is not None
    assert segcrit.loop.run_until_complete(run_requested_resyncs(segcrit.workers.contacts)) == 1

    assert members(emulator_state, "vip") == {email_sha("u1"), email_sha("u2")}
    state = segcrit.store.resync_state("vip")
    assert state is not None and state.finished_at is not None and state.result is not None
    assert state.result.startswith("done") and "2 identifier" in state.result
    assert segcrit.loop.run_until_complete(run_requested_resyncs(segcrit.workers.contacts)) == 0


def test_a_resync_of_an_unknown_audience_ends_failed_not_stuck(segcrit: Process) -> None:
    segcrit.store.request_resync("nobody", segcrit.now())
    assert segcrit.loop.run_until_complete(run_requested_resyncs(segcrit.workers.contacts)) == 1
    state = segcrit.store.resync_state("nobody")
    assert state is not None and state.result is not None and state.result.startswith("failed: unknown audience")
