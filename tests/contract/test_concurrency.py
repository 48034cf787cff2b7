"""Several processes on one PostgreSQL database (SPEC §7, "Several processes"): each event is
applied by one process, one new person is one profile, each change, document, product and batch
poll is sent by one process and taken over when that process dies, one call budget, one holder
of a lease, totals that stay exact.

Each store here is a `PostgresStore` of its own (its own pool, its own claim holder), as a
`segcrit serve` process has, on one schema; concurrency is real: threads on separate connections,
and child processes (tests/contract/pg_claimer.py) killed with SIGKILL. Nothing sleeps to
synchronise: a step waits for what it needs (a lock another connection waits on, a claim that
came back) with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from tests.contract.conftest import T0, message, new_profile
from tests.e2e.conftest import wait_until
from tests.helpers import advancing, audience_event, make_config, prepared
from tests.postgres import fresh_schema

from segcrit.clock import FakeClock
from segcrit.criteo.constants import HEADER_RATELIMIT_RESET
from segcrit.domain import TargetKey
from segcrit.errors import StoreUnavailable
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.ratelimit import CRITEO_API_BUDGET
from segcrit.store.postgres import PostgresStore
from segcrit.store.postgres_base import lock_keys

REPO = Path(__file__).resolve().parents[2]
CLAIM_SECS = 100.0
TAKEOVER_DEADLINE_SECS = 30.0  # SPEC §7: a killed process's work is taken over within 30 s
KEYS = [TargetKey("vip", "email", f"{n:064x}") for n in range(6)]


class Database:
    """One schema, any number of stores on it, and SQL for what the test checks."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stores: list[PostgresStore] = []

    def open(self, **options: Any) -> PostgresStore:
        store = PostgresStore(self.url, owner=True, **options)
        self.stores.append(store)
        return store

    def open_two(self) -> tuple[PostgresStore, PostgresStore]:
        return self.open(), self.open()

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def database() -> Iterator[Database]:
    with fresh_schema() as url:
        db = Database(url)
        try:
            yield db
        finally:
            db.close()


@contextmanager
def claimer(url: str, what: str) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """A child process that claims `what` and waits (tests/contract/pg_claimer.py); killed after."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.contract.pg_claimer", url, what],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, "the claimer exited before claiming"
        yield child, orjson.loads(line)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()


def kill(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)


def together(*work: Callable[[], object]) -> list[object]:
    """Run each callable on a thread of its own, released at the same moment; their results."""
    start = threading.Barrier(len(work))
    results: list[object] = [None] * len(work)
    errors: list[BaseException] = []

    def run(index: int, job: Callable[[], object]) -> None:
        start.wait()
        try:
            results[index] = job()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(work)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    return results


def waiting_for_lock(db: Database, key: int) -> bool:
    """Whether some connection waits for the advisory lock `key`."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    rows = db.sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = %s AND objid = %s "
        "AND objsubid = 1",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    )
    return int(rows[0][0]) > 0


# ------------------------------------------------------------------------------------ processing


def test_two_processes_never_apply_the_same_event(database: Database) -> None:
    a, b = database.open(), database.open()
    a.accept_sync("web", [message(f"u{i}") for i in range(600)], T0)

    def drain(store: PostgresStore) -> list[int]:
        taken: list[int] = []
        while True:
            with store.claim_chunk(20) as chunk:
                if not chunk.events:
                    return taken
                taken += [event.seq for event in chunk.events]
                chunk.done(chunk.events)

    first, second = together(lambda: drain(a), lambda: drain(b))
    assert isinstance(first, list) and isinstance(second, list)
    assert not set(first) & set(second)
    assert len(first) + len(second) == 600
    assert a.backlog() == 0 and b.backlog() == 0


def test_the_chunk_of_a_killed_process_returns_to_the_inbox(database: Database) -> None:
    store = database.open()
    store.accept_sync("web", [message(f"u{i}") for i in range(5)], T0)

    with claimer(database.url, "chunk") as (child, claimed):
        assert len(claimed) == 3
        with store.claim_chunk(10) as chunk:  # the others only: the child's transaction holds its three
            assert not {event.seq for event in chunk.events} & set(claimed)
            assert len(chunk.events) == 2
        kill(child)

    def all_five_back() -> bool:
        with store.claim_chunk(10) as chunk:
            return len(chunk.events) == 5

    wait_until(all_five_back, TAKEOVER_DEADLINE_SECS, "the killed process's events back in the inbox")
    assert store.backlog() == 5


def test_the_backlog_stays_exact_when_chunks_finish_out_of_order(database: Database) -> None:
    a, b = database.open(), database.open()
    a.accept_sync("web", [message(f"u{i}") for i in range(30)], T0)

    with a.claim_chunk(10) as older:
        with b.claim_chunk(10) as newer:
            assert older.events[-1].seq < newer.events[0].seq
            newer.done(newer.events)
        assert a.backlog() == 20  # the newer chunk committed first
        older.done(older.events)
    assert a.backlog() == 10 and b.backlog() == 10


def test_one_new_person_seen_by_two_processes_at_once_is_one_profile(database: Database) -> None:
    a, b = database.open(), database.open()
    key = ("user_id", "newcomer")
    lock = lock_keys(a.namespace, ["identifier\x1fuser_id\x1fnewcomer"])[0]
    seen_by_b: dict[tuple[str, str], int] = {}

    def second_process() -> None:
        with b.transaction() as tx:
            tx.hold_identifiers([key])  # waits for the first process's commit
            seen_by_b.update(tx.find_profiles([key]))
            if not seen_by_b:
                new_profile(tx, "newcomer")

    with a.transaction() as tx:
        tx.hold_identifiers([key])
        assert tx.find_profiles([key]) == {}
        profile_id = new_profile(tx, "newcomer")
        thread = threading.Thread(target=second_process)
        thread.start()
        wait_until(lambda: waiting_for_lock(database, lock), 10, "the second process waiting for the identifier")
    thread.join(timeout=30)

    assert seen_by_b == {key: profile_id}
    assert a.profiles_of([key]) == [profile_id]
    assert database.sql("SELECT count(*) FROM profiles") == [(1,)]


def test_processors_sharing_people_make_one_profile_each_and_lose_no_identifier(database: Database) -> None:
    """Each person first appears as an anonymous visitor and as a user (two profiles); then an
    identify that links them (a merge) and an audience message carrying their email race each
    other in two processes. In the end: one profile per person, with every identifier and the
    membership, and no process gave up (conflicts, if any, were retried)."""
    config = make_config("unused.db")
    a, b = database.open(), database.open()
    people = 40
    a.accept_sync(
        "web",
        [
            prepared(m, T0)
            for i in range(people)
            for m in (anonymous_visit(i), audience_event(f"user{i}", "vip", True, T0))
        ],
        T0,
    )
    Processor(a, config, FakeClock(T0), Metrics()).drain()
    assert database.sql("SELECT count(*) FROM profiles") == [(2 * people,)]
    a.accept_sync(
        "web",
        [
            prepared(m, T0 + 1)
            for i in range(people)
            for m in (identify_link(i), audience_event(f"user{i}", "lapsed", True, T0 + 1, email=f"p{i}@example.com"))
        ],
        T0 + 1,
    )

    def process(store: PostgresStore) -> int:
        processor = Processor(store, config, FakeClock(T0 + 2), Metrics())
        return sum(iter(lambda: processor.drain_once(limit=3), 0))

    done = together(lambda: process(a), lambda: process(b))
    assert sum(int(str(n)) for n in done) == 2 * people

    assert database.sql("SELECT count(*) FROM profiles") == [(people,)]
    for i in range(people):
        owners = a.profiles_of([("user_id", f"user{i}"), ("anonymous_id", f"anon{i}")])
        assert len(owners) == 1, (i, owners)
        record = a.profile_record(owners[0])
        assert record is not None
        assert {kind for kind, _, _ in record.identifiers} == {"user_id", "anonymous_id", "email"}
        assert {audience for audience, member, _ in record.memberships if member} == {"vip", "lapsed"}


def anonymous_visit(i: int) -> dict[str, Any]:
    return {"type": "page", "anonymousId": f"anon{i}", "messageId": f"visit-{i}", "timestamp": "2027-01-15T08:00:00Z"}


def identify_link(i: int) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": f"user{i}",
        "anonymousId": f"anon{i}",
        "messageId": f"link-{i}",
        "timestamp": "2027-01-15T08:00:01Z",
    }


# ------------------------------------------------------------------------------------ targets


def wanted(store: PostgresStore, user: str, keys: set[TargetKey], now: float = T0) -> int:
    with store.transaction() as tx:
        tx.hold_identifiers([("user_id", user)])
        found = tx.find_profiles([("user_id", user)])
        profile_id = found[("user_id", user)] if found else new_profile(tx, user, now)
        for audience in {key.audience for key in keys}:
            tx.ensure_audience(audience, True)
        tx.set_targets(profile_id, keys, now)
        return profile_id


def test_a_claim_made_while_processing_drops_a_target_turns_the_drop_into_a_removal(database: Database) -> None:
    """Processing read a pending add (never held) and decides the person left; delivery claims the
    add before processing commits. The row is not forgotten: the add may reach Criteo, so a
    removal follows."""
    processing, delivery = database.open(), database.open()
    wanted(processing, "u1", {KEYS[0]})

    with processing.transaction() as tx:
        [profile_id] = tx.find_profiles([("user_id", "u1")]).values()
        tx.load_profile(profile_id)  # read: a pending add, never held
        assert delivery.claim_changes([KEYS[0]], True, T0 + 1, T0 + 1 + CLAIM_SECS) == [KEYS[0]]
        tx.set_targets(profile_id, set(), T0 + 2)

    delivery.ack_changes([KEYS[0]], True, T0 + 3)  # Criteo holds it now
    [change] = delivery.due_changes(T0 + 4, 10)
    assert (change.key, change.add) == (KEYS[0], False)


def test_each_change_is_claimed_by_one_process(database: Database) -> None:
    a, b = database.open(), database.open()
    wanted(a, "u1", set(KEYS))

    first, second = together(
        lambda: a.claim_changes(KEYS, True, T0, T0 + CLAIM_SECS),
        lambda: b.claim_changes(KEYS, True, T0, T0 + CLAIM_SECS),
    )
    assert isinstance(first, list) and isinstance(second, list)
    assert sorted(first + second, key=str) == sorted(KEYS, key=str)
    assert not set(first) & set(second)


def test_the_changes_of_a_killed_process_return_as_unknown(database: Database) -> None:
    store = database.open()
    wanted(store, "u1", set(KEYS[:3]), now=time.time() - 10)

    with claimer(database.url, "changes") as (child, claimed):
        assert len(claimed) == 3
        assert store.due_changes(time.time(), 10) == []  # claimed by a live process
        kill(child)
        wait_until(
            lambda: len(store.due_changes(time.time(), 10)) == 3,
            TAKEOVER_DEADLINE_SECS,
            "the killed process's changes due again",
        )

    # Returned as unknown: had the person left meanwhile, a removal would go out (see "Lost answers").
    states = database.sql("SELECT acked, claim_holder IS NOT NULL FROM targets ORDER BY id_value")
    assert states == [(2, True)] * 3
    now = time.time()
    assert sorted(store.claim_changes(KEYS[:3], True, now, now + CLAIM_SECS), key=str) == KEYS[:3]


def test_a_late_answer_never_settles_over_a_newer_claim(database: Database) -> None:
    old, new = database.open(), database.open()
    wanted(old, "u1", {KEYS[0]})
    assert old.claim_changes([KEYS[0]], True, T0, T0 + 10) == [KEYS[0]]  # its call hangs past its claim
    assert new.claim_changes([KEYS[0]], True, T0 + 10, T0 + 10 + CLAIM_SECS) == [KEYS[0]]

    old.ack_changes([KEYS[0]], True, T0 + 11)  # the first call's answer, late
    assert new.claim_changes([KEYS[0]], True, T0 + 12, T0 + 12 + CLAIM_SECS) == []  # still the new call's

    # The new call is refused (a 400): what Criteo holds stays unknown (the old call may have added it).
    new.defer_changes([KEYS[0]], T0 + 13, T0 + 12, maybe_applied=False)
    wanted(new, "u1", set(), T0 + 14)  # the person leaves
    [change] = new.due_changes(T0 + 15, 10)
    assert (change.key, change.add) == (KEYS[0], False)


def test_a_late_answer_to_a_claim_nobody_took_over_counts_as_unknown(database: Database) -> None:
    a, b = database.open(), database.open()
    wanted(a, "u1", {KEYS[0]})
    a.claim_changes([KEYS[0]], True, T0, T0 + 10)
    b.claim_changes([KEYS[0]], True, T0 + 10, T0 + 10 + CLAIM_SECS)
    b.ack_changes([KEYS[0]], True, T0 + 11)  # the newer call's answer: held

    a.ack_changes([KEYS[0]], True, T0 + 12)  # the older call's answer arrives after it
    [change] = a.due_changes(T0 + 13, 10)
    assert (change.key, change.add) == (KEYS[0], True)  # unknown: sent again (a harmless add)


# ------------------------------------------------------------------------------------ Events API and catalog


def queue_documents(store: PostgresStore, count: int, now: float) -> None:
    with store.transaction() as tx:
        profile_id = new_profile(tx, "buyer", now)
        for n in range(count):
            tx.enqueue_event(str(profile_id), profile_id, {"account": "a"}, {"event": "viewItem", "n": n}, now)


def test_each_document_is_sent_by_one_process_and_a_killed_one_s_are_taken_over(database: Database) -> None:
    store = database.open()
    queue_documents(store, 3, time.time() - 10)
    other = database.open()
    ids = [e.id for e in store.due_events(time.time(), 10)]
    first, second = together(
        lambda: store.claim_criteo_events(ids, time.time(), time.time() + CLAIM_SECS),
        lambda: other.claim_criteo_events(ids, time.time(), time.time() + CLAIM_SECS),
    )
    assert isinstance(first, list) and isinstance(second, list)
    assert sorted(first + second) == sorted(ids)
    store.defer_events(first, 0, time.time())
    other.defer_events(second, 0, time.time())

    with claimer(database.url, "events") as (child, claimed):
        assert sorted(claimed) == sorted(ids)
        assert store.due_events(time.time(), 10) == []
        kill(child)
        wait_until(lambda: len(store.due_events(time.time(), 10)) == 3, TAKEOVER_DEADLINE_SECS, "documents due again")


def test_products_and_batch_polls_of_a_killed_process_are_taken_over(database: Database) -> None:
    store = database.open()
    with store.transaction() as tx:
        for product_id in ("p1", "p2"):
            tx.save_product("m1", product_id, {"id": product_id}, f"fp-{product_id}", None, time.time() - 10)
    with claimer(database.url, "products") as (child, claimed):
        assert sorted(claimed) == ["p1", "p2"]
        assert store.due_products("m1", time.time(), 10) == []
        kill(child)
        wait_until(lambda: len(store.due_products("m1", time.time(), 10)) == 2, TAKEOVER_DEADLINE_SECS, "products due")

    now = time.time()
    store.claim_products("m1", ["p1"], now, now + CLAIM_SECS)
    store.open_batch("batch-1", "m1", [("p1", "fp-p1")], now, now - 1)
    with claimer(database.url, "polls") as (child, claimed):
        assert claimed == ["batch-1"]
        assert store.batches_to_poll(time.time(), time.time() + CLAIM_SECS) == []
        kill(child)
        wait_until(
            lambda: [b.token for b in store.batches_to_poll(time.time(), time.time() + CLAIM_SECS)] == ["batch-1"],
            TAKEOVER_DEADLINE_SECS,
            "the batch poll taken over",
        )


# ------------------------------------------------------------------------------------ budget, leases, ingest


def test_every_process_spends_one_call_budget(database: Database) -> None:
    """Two processes, six calls each, a budget of four a minute: all twelve calls together keep to
    four in any 61 seconds (a minute and the margin)."""
    clock = FakeClock(T0)
    one, two = (store.rate_limiter(CRITEO_API_BUDGET, 4, clock, advancing(clock)) for store in database.open_two())
    granted: list[float] = []

    async def calls() -> None:
        for _ in range(6):
            for limiter in (one, two):
                await limiter.acquire()
                granted.append(clock.now())

    asyncio.run(calls())
    assert len(granted) == 12
    assert granted[:4] == [T0] * 4
    assert all(later - earlier >= 61 for earlier, later in zip(granted, granted[4:], strict=False))


class WouldWait(Exception):
    pass


async def refuse(seconds: float) -> None:
    raise WouldWait(seconds)


def test_processes_asking_at_once_get_the_budget_once(database: Database) -> None:
    """Twenty calls asked at the same moment from two processes (on threads of their own), with a
    budget of seven: seven are let through, the thirteen others are told to wait."""
    clock = FakeClock(T0)
    stores = database.open_two()
    limiters = [stores[n % 2].rate_limiter(CRITEO_API_BUDGET, 7, clock, refuse) for n in range(20)]

    async def ask(limiter: Any) -> bool:
        try:
            await limiter.acquire()
        except WouldWait:
            return False
        return True

    async def everyone() -> list[bool]:
        return list(await asyncio.gather(*(ask(limiter) for limiter in limiters)))

    assert sorted(asyncio.run(everyone())) == [False] * 13 + [True] * 7


def test_a_rate_limit_reset_seen_by_one_process_holds_every_process(database: Database) -> None:
    clock = FakeClock(T0)
    one, two = (
        store.rate_limiter(CRITEO_API_BUDGET, 100, clock, advancing(clock))
        for store in (database.open(), database.open())
    )

    async def after_a_429() -> float:
        await one.acquire()
        await one.observe(429, {HEADER_RATELIMIT_RESET: str(T0 + 30)}, T0)
        await two.acquire()
        return clock.now()

    assert asyncio.run(after_a_429()) >= T0 + 30


def test_a_lease_has_one_holder_whoever_asks_at_once(database: Database) -> None:
    stores = [database.open() for _ in range(4)]
    now = time.time()
    results = together(
        *(lambda s=s, i=i: s.try_lease("job:housekeeping", f"host-{i}", now, 900) for i, s in enumerate(stores))
    )
    assert sorted(bool(r) for r in results) == [False, False, False, True]


def test_two_processes_store_a_message_id_once(database: Database) -> None:
    a, b = database.open(), database.open()
    batch = [message(f"u{i}", f"m{i}") for i in range(200)]

    def accept(store: PostgresStore) -> int:
        return sum(store.accept_sync("web", batch[i : i + 20], T0).stored for i in range(0, 200, 20))

    stored = together(lambda: accept(a), lambda: accept(b))
    assert sum(int(str(n)) for n in stored) == 200
    assert a.backlog() == 200


def test_audience_counts_stay_exact_under_concurrent_writers(database: Database) -> None:
    """Four processes change targets of their own people, claim and acknowledge them at once: the
    running totals equal what the rows say."""
    stores = [database.open() for _ in range(4)]

    def work(store: PostgresStore, index: int) -> None:
        for n in range(15):
            keys = {
                TargetKey("vip", "email", f"{index:02d}{n:062x}"),
                TargetKey("all", "email", f"{index:02d}{n:062x}"),
            }
            wanted(store, f"u{index}-{n}", keys)
            if n % 3 == 0:
                claimed = store.claim_changes(sorted(keys, key=str), True, T0, T0 + CLAIM_SECS)
                store.ack_changes(claimed, True, T0 + 1)
            if n % 5 == 0:
                wanted(store, f"u{index}-{n}", set(), T0 + 2)

    together(*(lambda s=s, i=i: work(s, i) for i, s in enumerate(stores)))

    counted = {
        c.name: (c.desired, c.acknowledged, c.pending_add, c.pending_remove) for c in stores[0].audience_counts()
    }
    rows = database.sql(
        "SELECT audience, sum(desired), count(*) FILTER (WHERE acked = 1), "
        "count(*) FILTER (WHERE desired = 1 AND acked != 1), count(*) FILTER (WHERE desired = 0 AND acked != 0) "
        "FROM targets GROUP BY audience"
    )
    assert counted == {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}
    assert stores[1].pending_count() == sum(r[3] + r[4] for r in rows)


def test_connections_the_server_ends_fail_as_unavailable_and_the_store_carries_on(database: Database) -> None:
    """The server ends the store's connections (a restart, a failover, an operator): the calls that
    meet one fail with StoreUnavailable (ingest answers 503, processing retries), reported by
    `write_failure` until a write succeeds on a new connection; nothing is half-stored."""
    store = database.open()
    store.accept_sync("web", [message("u1")], T0)
    [(ended,)] = database.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (f"segcrit {store.holder}"[:63],),
    )
    assert ended >= 1

    failures = 0
    while True:
        try:
            store.accept_sync("web", [message("u2")], T0)
            break
        except StoreUnavailable:
            failures += 1
            assert store.write_failure() is not None
            assert failures <= 20, "the store never got a working connection back"
    assert failures >= 1 and store.write_failure() is None
    assert store.backlog() == 2
