"""When processing or the store fails (SPEC §7): only an event that itself cannot be processed is
set aside, found by halves; a full disk or a locked database sets nothing aside, answers 503 at
ingest, turns /readyz 503 with the real SQLite error, and everything flows once the store writes.

The full disk is real as far as SQLite can tell: the store's connections get a `max_page_count`
and another connection fills the file up to it; dropping the filler frees the space.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from segcrit.app import create_app
from segcrit.clock import FakeClock
from segcrit.domain import InboxEvent
from segcrit.emulator.server import running_app
from segcrit.errors import StoreUnavailable
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.store.base import ChunkTx, ProcessingTx
from segcrit.store.sqlite import SqliteStore
from tests.e2e.conftest import wait_until
from tests.helpers import audience_event, email_sha, make_config, put

T0 = 1_800_000_000.0
PAGE_LIMIT = 400  # the store's "disk": 1.6 MB of 4 KB pages
DEADLINE_SECS = 20.0


def people(count: int, start: int = 0) -> list[dict[str, object]]:
    return [audience_event(f"u{i}", "vip", True, T0, email=f"u{i}@example.com") for i in range(start, start + count)]


def wanted(store: SqliteStore) -> set[str]:
    """The email hashes waiting to be added to Criteo."""
    return {c.key.id_value for c in store.due_changes(T0 + 10**6, 10**6) if c.add}


class Filler:
    """Another connection on the store's file that takes up every page the store may use."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("PRAGMA synchronous=OFF")  # filler only

    def fill(self, pages: int = PAGE_LIMIT) -> None:
        self.conn.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
        self.conn.execute("BEGIN")
        while self.conn.execute("PRAGMA page_count").fetchone()[0] < pages:
            self.conn.execute("INSERT INTO filler VALUES (zeroblob(3000))")
        self.conn.execute("COMMIT")

    def free(self) -> None:
        self.conn.execute("DROP TABLE filler")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(db), pragmas={"max_page_count": PAGE_LIMIT}, busy_timeout_ms=50)
    yield s
    s.close()


@pytest.fixture
def filler(db: Path, store: SqliteStore) -> Iterator[Filler]:
    f = Filler(db)
    yield f
    f.close()


@pytest.fixture
def processor(store: SqliteStore, db: Path) -> Processor:
    return Processor(store, make_config(str(db)), FakeClock(T0), Metrics())


def store_failure_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "segcrit.store" and r.getMessage() == "store cannot write"]


# ------------------------------------------------------------------------------ set-aside events


class Transactions:
    """Counts the processor's transactions (each chunk of events is one, and one fsync)."""

    def __init__(self, store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = store.claim_chunk

        def counted(limit: int, *, only: Sequence[int] | None = None) -> contextlib.AbstractContextManager[ChunkTx]:
            self.count += 1
            return real(limit, only=only)

        monkeypatch.setattr(store, "claim_chunk", counted)


def test_a_poison_event_among_good_ones_is_found_by_halves_and_set_aside_alone(
    store: SqliteStore, processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_process = processor.process

    def fragile(tx: ProcessingTx, event: InboxEvent, now: float) -> object:
        if event.message.get("userId") == "poison":  # fault injection: this one cannot be processed
            raise ValueError("cannot process this one")
        return real_process(tx, event, now)

    monkeypatch.setattr(processor, "process", fragile)
    transactions = Transactions(store, monkeypatch)
    messages = people(499)
    messages.insert(317, audience_event("poison", "vip", True, T0))
    put(store, *messages)

    assert processor.drain_once(500) == 500

    # The chunk, then two halves per level down to the poison, then setting it aside.
    assert transactions.count <= 2 + 2 * math.ceil(math.log2(500))
    assert wanted(store) == {email_sha(f"u{i}") for i in range(499)}
    assert store.backlog() == 0
    [failed] = store.failed_events()
    assert failed.error == "ValueError: cannot process this one"
    assert failed.seq == 318  # the poison's place in the inbox


def test_set_aside_events_go_back_on_the_inbox_and_through_processing(
    store: SqliteStore, processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_process = processor.process

    def buggy(tx: ProcessingTx, event: InboxEvent, now: float) -> object:
        raise KeyError("a bug in processing")

    monkeypatch.setattr(processor, "process", buggy)
    put(store, *people(3))
    processor.drain()
    assert store.failed_event_count() == 3 and wanted(store) == set()

    monkeypatch.setattr(processor, "process", real_process)  # the bug is fixed
    assert store.replay_failed_events() == 3
    assert store.failed_event_count() == 0 and store.backlog() == 3
    processor.drain()
    assert wanted(store) == {email_sha(f"u{i}") for i in range(3)}


# ------------------------------------------------------------------------------ locked database


def test_a_locked_database_sets_nothing_aside_and_the_events_flow_once_the_lock_goes(
    db: Path, store: SqliteStore, processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(store, *people(20))
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    transactions = Transactions(store, monkeypatch)

    with pytest.raises(StoreUnavailable, match="database is locked"):
        processor.drain_once()

    assert transactions.count == 1  # not bisected: no event is at fault
    assert store.write_failure() == "database is locked"
    assert store.failed_event_count() == 0 and store.backlog() == 20
    locker.execute("ROLLBACK")
    locker.close()
    assert processor.drain() == 20
    assert store.write_failure() is None
    assert store.failed_event_count() == 0
    assert wanted(store) == {email_sha(f"u{i}") for i in range(20)}


# ------------------------------------------------------------------------------ disk full


def test_a_full_disk_during_processing_sets_nothing_aside_and_raises_the_real_error(
    store: SqliteStore, processor: Processor, filler: Filler, caplog: pytest.LogCaptureFixture
) -> None:
    put(store, *people(200))
    filler.fill()

    for _ in range(3):  # retried: one log line for the episode, never "cannot rollback"
        with pytest.raises(StoreUnavailable) as failure:
            processor.drain_once()
        cause = failure.value.__cause__
        assert isinstance(cause, sqlite3.OperationalError)
        assert cause.sqlite_errorcode == sqlite3.SQLITE_FULL

    assert store.failed_event_count() == 0 and store.backlog() == 200
    # A write that needs no new page still succeeds; it must not pass for a recovery.
    assert store.try_lease("job:x", "me", T0, 60)
    assert store.write_failure() == "database or disk is full"
    [logged] = store_failure_logs(caplog)
    assert logged.error == "database or disk is full"  # type: ignore[attr-defined]
    filler.free()
    assert processor.drain() == 200
    assert len(wanted(store)) == 200 and store.failed_event_count() == 0


def test_a_full_disk_answers_503_at_ingest_turns_readyz_503_and_both_recover(
    db: Path, store: SqliteStore, filler: Filler, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(str(db))
    auth = {"Authorization": "Basic " + base64.b64encode(b"WK:").decode()}
    batch = {"batch": people(100)}
    with running_app(create_app(config, store), lifespan="on") as url:
        assert httpx.get(f"{url}/readyz").status_code == 200
        filler.fill()

        refused = httpx.post(f"{url}/v1/batch", json=batch, headers=auth)
        assert refused.status_code == 503
        assert refused.json()["code"] == "store_unavailable"
        assert int(refused.headers["Retry-After"]) > 0
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["store"] is False
        assert ready.json()["store_error"] == "database or disk is full"
        assert "segcrit_store_write_failing 1.0" in httpx.get(f"{url}/metrics").text
        # Nothing of the refused request is stored, not even its messageIds: the retry is accepted.
        assert store.backlog() == 0
        assert httpx.post(f"{url}/v1/batch", json=batch, headers=auth).status_code == 503

        filler.free()
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, DEADLINE_SECS, "readyz to turn 200 again")
        accepted = httpx.post(f"{url}/v1/batch", json=batch, headers=auth)
        assert accepted.status_code == 200 and accepted.json() == {"success": True}
        wait_until(lambda: len(wanted(store)) == 100, DEADLINE_SECS, "the accepted batch to be processed")

    assert store.failed_event_count() == 0
    [logged] = store_failure_logs(caplog)
    assert logged.error == "database or disk is full"  # type: ignore[attr-defined]
