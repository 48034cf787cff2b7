"""Forget and retention (SPEC §8, §4.1 `retention`): a forgotten person leaves every table and
every Criteo audience, dead letters included; nothing grows without bound; the database stays
private to its owner and to one owning process.

Tier 2: segcrit "processes" from tests/flow_harness.py on the emulator's FakeClock; days pass with
`clock.advance`. A table is searched for a person's traces in every column (`tables_holding`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from segcrit.clock import FakeClock
from segcrit.domain import DROPPED_DEAD_LETTERS, DROPPED_FAILED_EVENTS, InboxEvent
from segcrit.emulator import EmulatorState
from segcrit.errors import StoreError
from segcrit.store.base import ProcessingTx
from segcrit.store.sqlite import SqliteStore
from tests.flow_harness import Process, Processes, identify, order, track
from tests.helpers import audience_event, email_of, email_sha, iso, make_config, members, put

DAY = 86_400.0
ROOT = Path(__file__).resolve().parents[2]
FLOWS = """\
  - type: conversions
  - type: suppression
    on: [Order Completed]
    remove_from: [cart]
    add_to: buyers
    for_days: 30
  - type: lifecycle
    stages: {Trial Started: trialists}
"""
# The person who asks to be forgotten, and one who stays; ids that appear nowhere else.
JANE, MAX = "jane-7c1f", "max-52aa"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "segcrit.db"


@pytest.fixture
def process(emulator_clock: FakeClock, emulator_url: str, db: Path) -> Iterator[Process]:
    processes = Processes(emulator_clock)
    config = make_config(str(db), api_url=emulator_url, flows=FLOWS, extra="audiences: {cart: {}}\n")
    yield processes.start(config)
    processes.close()


def tables_holding(db: Path, *needles: str) -> set[str]:
    """The tables with a row that holds one of `needles` in any column (text or JSON blob)."""
    found = set()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            for needle in needles:
                test = " OR ".join(f'instr(CAST("{c}" AS TEXT), ?) > 0' for c in columns)
                if conn.execute(f'SELECT 1 FROM "{table}" WHERE {test} LIMIT 1', [needle] * len(columns)).fetchone():
                    found.add(table)
    return found


def set_aside(p: Process, *messages: dict[str, object]) -> None:
    """Ingest messages that processing fails on (fault injection), so that they are set aside."""
    put(p.store, *messages, received_at=p.now())
    doomed = {m["messageId"] for m in messages}  # each made by `broken`
    real = p.processor.process

    def fragile(tx: ProcessingTx, event: InboxEvent, now: float) -> object:
        if event.message.get("messageId") in doomed:
            raise ValueError("cannot process")
        return real(tx, event, now)

    p.processor.process = fragile  # type: ignore[method-assign]
    try:
        p.processor.drain()
    finally:
        del p.processor.process


def shopper(user: str, ts: float) -> list[dict[str, object]]:
    return [
        identify(user, ts),
        audience_event(user, "cart", True, ts, email=email_of(user)),
        track(user, "Trial Started", ts),
        order(user, f"order-{user}", ts + 1, revenue=80),
    ]


def broken(user: str, ts: float, note: str) -> dict[str, object]:
    """An event that processing fails on (see `set_aside`), traced by `note`."""
    return {**track(user, "Broken", ts, note=note), "messageId": str(uuid.uuid4())}


def row_count(db: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


# ------------------------------------------------------------------------------------ forget


def test_forget_erases_the_person_from_every_table_waiting_and_set_aside_events_included(
    process: Process, db: Path, emulator_state: EmulatorState
) -> None:
    p, t0 = process, process.now()
    p.send(*shopper(JANE, t0), *shopper(MAX, t0))
    p.deliver()
    assert members(emulator_state, "buyers") == {email_sha(JANE), email_sha(MAX)}
    p.send(order(JANE, "order-2-jane", p.now()))  # an Events API document queued, not sent yet
    set_aside(p, broken(JANE, p.now(), "jane-set-aside"), broken(MAX, p.now(), "max-set-aside"))
    put(p.store, track(JANE, "Cart Viewed", p.now()), track(MAX, "Cart Viewed", p.now()), received_at=p.now())
    jane = (JANE, email_sha(JANE), "order-2-jane", "jane-set-aside")
    assert {"inbox", "failed_events", "orders", "criteo_events", "identifiers", "targets"} <= tables_holding(db, *jane)
    per_person = {table: row_count(db, table) for table in ("profiles", "memberships", "suppressions")}
    assert per_person == {"profiles": 2, "memberships": 6, "suppressions": 2}

    assert p.processor.forget(email_of(JANE)) == 1

    # Only the tombstones remember Jane (so that older replays stay out), and her removals wait
    # in `targets` (hashed) until Criteo acknowledges them.
    assert tables_holding(db, *jane) == {"tombstones", "targets"}
    assert {table: row_count(db, table) for table in per_person} == {"profiles": 1, "memberships": 3, "suppressions": 1}
    removals = p.store.due_changes(p.now() + DAY, 100)
    assert {(c.key.audience, c.key.id_value, c.add) for c in removals} == {
        ("buyers", email_sha(JANE), False),
        ("trialists", email_sha(JANE), False),
    }
    assert {"inbox", "failed_events", "orders", "identifiers"} <= tables_holding(db, MAX, "max-set-aside")
    p.processor.drain()
    p.deliver()
    assert members(emulator_state, "buyers") == {email_sha(MAX)}
    assert members(emulator_state, "trialists") == {email_sha(MAX)}
    assert tables_holding(db, *jane) == {"tombstones"}
    assert sorted(e["id"] for e in emulator_state.events("trackTransaction")) == ["order-jane-7c1f", "order-max-52aa"]


def test_forget_sends_a_removal_that_a_dead_letter_had_parked(process: Process, emulator_state: EmulatorState) -> None:
    p = process
    p.send(audience_event(JANE, "cart", True, p.now(), email=email_of(JANE)))
    p.deliver()
    assert members(emulator_state, "cart") == {email_sha(JANE)}
    p.send(audience_event(JANE, "cart", False, p.now(), email=email_of(JANE)))
    [removal] = p.store.due_changes(p.now() + DAY, 10)
    p.store.dead_letter([removal.key], False, 400, "refused", p.now())  # Criteo refused the removal
    p.deliver()
    assert members(emulator_state, "cart") == {email_sha(JANE)}  # parked: Jane is still in Criteo

    p.processor.forget(JANE)
    p.deliver()

    assert members(emulator_state, "cart") == set()
    assert p.store.audience_stats()[0].dead == 0


def test_a_delete_message_erases_the_persons_set_aside_events_at_housekeeping(process: Process, db: Path) -> None:
    p, t0 = process, process.now()
    set_aside(p, broken(JANE, t0, "jane-before"), broken(MAX, t0, "max-before"))
    p.clock.advance(60)
    p.send({"type": "delete", "userId": JANE, "messageId": "del", "timestamp": iso(p.now())})
    # Jane's events newer than the deletion belong to a fresh profile: kept.
    set_aside(p, broken(JANE, p.now() + 1, "jane-after"))
    assert "failed_events" in tables_holding(db, "jane-before")

    p.scheduler.housekeeping(p.now())

    assert tables_holding(db, "jane-before") == set()
    assert "failed_events" in tables_holding(db, "jane-after") & tables_holding(db, "max-before")
    assert p.store.failed_event_count() == 2


# ------------------------------------------------------------------------------------ retention


def test_set_aside_events_are_dropped_after_failed_events_days_and_counted(process: Process) -> None:
    p = process
    set_aside(p, broken(JANE, p.now(), "old"))
    p.clock.advance(20 * DAY)
    set_aside(p, broken(MAX, p.now(), "recent"))
    p.clock.advance(11 * DAY)  # the first is 31 days old, the second 11

    p.scheduler.housekeeping(p.now())

    assert p.store.failed_event_count() == 1
    assert p.store.dropped_counts()[DROPPED_FAILED_EVENTS] == 1
    dropped = p.metrics.registry.get_sample_value("segcrit_retention_dropped_total", {"what": "failed_events"})
    assert dropped == 1


def test_dead_letters_are_dropped_after_dead_letters_days_counted_and_owed_removals_still_sent(
    process: Process, emulator_state: EmulatorState
) -> None:
    p = process
    p.send(*(audience_event(u, "cart", True, p.now(), email=email_of(u)) for u in (JANE, MAX)))
    p.deliver()
    p.send(audience_event(JANE, "cart", False, p.now(), email=email_of(JANE)))
    p.send(audience_event("ann-9d0b", "cart", True, p.now(), email=email_of("ann-9d0b")))
    removal, addition = sorted(p.store.due_changes(p.now() + DAY, 10), key=lambda c: c.add)
    p.store.dead_letter([removal.key], False, 400, "refused", p.now())
    p.store.dead_letter([addition.key], True, 400, "refused", p.now())
    p.clock.advance(60 * DAY)
    p.send(audience_event(MAX, "cart", False, p.now(), email=email_of(MAX)))
    [recent] = p.store.due_changes(p.now() + DAY, 10)
    p.store.dead_letter([recent.key], False, 400, "refused", p.now())
    p.clock.advance(31 * DAY)  # the first two are 91 days old, the last one 31

    p.scheduler.housekeeping(p.now())
    p.deliver()

    assert p.store.dead_letter_count() == 1  # the recent one
    assert p.store.dropped_counts()[DROPPED_DEAD_LETTERS] == 2
    dropped = p.metrics.registry.get_sample_value("segcrit_retention_dropped_total", {"what": "dead_letters"})
    assert dropped == 2
    # Jane's removal is owed to Criteo: sent. Ann's addition is given up until she shows up again.
    assert members(emulator_state, "cart") == {email_sha(MAX)}
    assert p.store.audience_stats()[0].desired == 0
    p.send(audience_event("ann-9d0b", "cart", True, p.now(), email=email_of("ann-9d0b")))
    p.deliver()
    assert members(emulator_state, "cart") == {email_sha(MAX), email_sha("ann-9d0b")}


def test_anonymous_profiles_unseen_for_anonymous_profiles_days_are_erased_with_their_rows(
    process: Process, db: Path
) -> None:
    p = process

    def visit(anonymous_id: str, **extra: object) -> dict[str, object]:
        return {"type": "page", "anonymousId": anonymous_id, "timestamp": iso(p.now()), **extra}

    p.send(visit("anon-old"), visit("anon-identified", userId=JANE))
    p.clock.advance(100 * DAY)
    p.send(visit("anon-later"))
    p.clock.advance(296 * DAY)  # t0 + 396 days
    p.scheduler.housekeeping(p.now())
    assert tables_holding(db, "anon-old") == set()
    assert "identifiers" in tables_holding(db, "anon-later")
    assert "identifiers" in tables_holding(db, "anon-identified")  # known by a userId: kept

    p.clock.advance(50 * DAY)
    p.send(visit("anon-later"))  # came back: seen again
    p.clock.advance(350 * DAY)
    p.scheduler.housekeeping(p.now())
    assert "identifiers" in tables_holding(db, "anon-later")  # seen 350 days ago: kept
    p.clock.advance(46 * DAY)
    p.scheduler.housekeeping(p.now())
    assert tables_holding(db, "anon-later") == set()
    dropped = p.metrics.registry.get_sample_value("segcrit_retention_dropped_total", {"what": "anonymous_profiles"})
    assert dropped == 2


def test_the_dedupe_window_is_pruned_in_small_batches_and_stays_correct(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        for second in range(30):  # 30 requests of 100 messages, one second apart
            messages = [{"messageId": f"m-{second}-{i}", "type": "track"} for i in range(100)]
            store.accept_sync("web", messages, received_at=1_000.0 + second)

        assert store.prune_seen(older_than=1_020.0, batch=250) == 2_000

        old, recent = {"messageId": "m-3-7", "type": "track"}, {"messageId": "m-25-7", "type": "track"}
        assert store.accept_sync("web", [old, recent], received_at=1_030.0).duplicates == 1
        assert store.prune_seen(older_than=1_020.0, batch=250) == 0
    finally:
        store.close()


# ------------------------------------------------------------------------------------ the file


def test_the_database_and_its_wal_and_shm_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    older = tmp_path / "older.db"
    older.touch(mode=0o644)  # a file an earlier version created
    for path in (tmp_path / "new.db", older):
        store = SqliteStore(str(path), owner=True)
        try:
            put(store, audience_event("u1", "vip", True, 1_800_000_000.0, email="a@example.com"))
            files = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm", ".lock")]
            assert {f.name: stat.S_IMODE(os.stat(f).st_mode) for f in files} == {f.name: 0o600 for f in files}
        finally:
            store.close()


def test_one_owner_per_database_file(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    owner = SqliteStore(path, owner=True)
    try:
        with pytest.raises(StoreError) as refused:
            SqliteStore(path, owner=True)
        assert str(refused.value) == f"another segcrit process owns {path} (pid {os.getpid()})"
        SqliteStore(path).close()  # `status`, `forget`, `replay`: no ownership needed
    finally:
        owner.close()
    SqliteStore(path, owner=True).close()  # the owner has gone: free again


def test_every_table_has_a_retention_rule_in_the_architecture_doc(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        with store.dry_run() as tx:
            tables = {r[0] for r in tx.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        store.close()
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## Retention", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert listed == tables - {"sqlite_sequence"}
