"""Versioned schema migrations on SQLite and PostgreSQL (segcrit.store.migrations, SPEC §2 `segcrit migrate`).

A store opens at the latest version (applying what is pending, each migration once, in one
transaction with its `schema_migrations` row); a database made before versions existed is
adopted as version 1 with its data; a failing migration leaves nothing half done; a store newer
than this segcrit is refused; `segcrit migrate --check` lists what is pending without changing
anything, `segcrit migrate` applies it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from segcrit.errors import StoreError
from segcrit.store import open_store, pending_migrations
from segcrit.store import sqlite as sqlite_store
from segcrit.store.migrations import Migration, load_migrations, migrations_in
from segcrit.store.sqlite import SqliteStore
from tests.helpers import audience_event, put
from tests.integration.test_cli import assert_one_line_error, segcrit, write_config
from tests.postgres import fresh_schema

SQLITE = load_migrations("sqlite")
SQLITE_ALL = [m.label for m in SQLITE]
INITIAL = SQLITE[0]
ADD_NOTE = Migration(len(SQLITE) + 1, "add_audience_note", "ALTER TABLE audiences ADD COLUMN note TEXT;\n")


def rows(db: Path, query: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(query).fetchall()


def columns(db: Path, table: str) -> list[str]:
    return [str(row[1]) for row in rows(db, f"PRAGMA table_info({table})")]


@pytest.fixture
def with_note(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A release whose SQLite folder holds a second migration."""
    monkeypatch.setattr(sqlite_store, "load_migrations", lambda dialect: (*SQLITE, ADD_NOTE))
    yield


def test_a_new_store_is_created_at_the_latest_version(tmp_path: Path) -> None:
    db = tmp_path / "segcrit.db"
    store = SqliteStore(str(db))
    try:
        assert store.pending_migrations() == []
    finally:
        store.close()

    assert rows(db, "SELECT version, name FROM schema_migrations") == [(m.version, m.name) for m in SQLITE]
    assert {"inbox", "targets", "counters"} <= {str(r[0]) for r in rows(db, "SELECT name FROM sqlite_master")}


def test_a_database_made_before_versions_is_adopted_with_its_data(tmp_path: Path) -> None:
    db = tmp_path / "segcrit.db"
    with contextlib.closing(sqlite3.connect(db)) as old:  # what the startup script of earlier releases did
        old.executescript(INITIAL.sql)
        old.execute("INSERT INTO audiences (name, held_since) VALUES ('vip', 1.0)")
        old.commit()

    store = SqliteStore(str(db))
    try:
        put(store, audience_event("u1", "vip", True, 1_800_000_000.0, email="u1@example.com"))
        assert store.backlog() == 1
        assert store.held_audience_count() == 1  # counted once, by the old start, not twice
    finally:
        store.close()
    assert [row[0] for row in rows(db, "SELECT version FROM schema_migrations")] == [m.version for m in SQLITE]


def test_a_pending_migration_is_applied_once_at_open(tmp_path: Path, with_note: None) -> None:
    db = tmp_path / "segcrit.db"
    with contextlib.closing(sqlite3.connect(db)) as old:
        old.executescript(INITIAL.sql)
    SqliteStore(str(db)).close()  # adopts version 1, applies the later ones and the note

    assert "note" in columns(db, "audiences")
    assert rows(db, "SELECT version, name FROM schema_migrations") == [
        *((m.version, m.name) for m in SQLITE),
        (ADD_NOTE.version, "add_audience_note"),
    ]
    store = SqliteStore(str(db))  # nothing left to do: an ALTER run twice would fail
    try:
        assert store.pending_migrations() == [] and store.apply_migrations() == []
        assert store.apply_migration(ADD_NOTE) is False  # another process got there first
    finally:
        store.close()


def test_a_failing_migration_leaves_nothing_half_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "segcrit.db"
    SqliteStore(str(db)).close()
    broken = Migration(
        len(SQLITE) + 1, "broken", "CREATE TABLE notes (id INTEGER PRIMARY KEY);\nALTER TABLE nowhere ADD COLUMN x;\n"
    )
    monkeypatch.setattr(sqlite_store, "load_migrations", lambda dialect: (*SQLITE, broken))

    with pytest.raises(StoreError, match="no such table: nowhere"):
        open_store(f"sqlite:///{db}")

    assert rows(db, "SELECT name FROM sqlite_master WHERE name = 'notes'") == []
    assert [row[0] for row in rows(db, "SELECT version FROM schema_migrations")] == [m.version for m in SQLITE]


def test_a_store_newer_than_this_segcrit_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "segcrit.db"
    SqliteStore(str(db)).close()
    with contextlib.closing(sqlite3.connect(db)) as newer, newer:
        newer.execute("INSERT INTO schema_migrations VALUES (?, 'from_the_future', 0)", (len(SQLITE) + 1,))

    with pytest.raises(StoreError, match=f"schema is at version {len(SQLITE) + 1}, newer than this segcrit knows"):
        open_store(f"sqlite:///{db}")


def test_a_migrations_folder_must_number_its_files_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_initial.sql").write_text("CREATE TABLE a (x);\n")
    (tmp_path / "0003_later.sql").write_text("CREATE TABLE b (x);\n")
    with pytest.raises(StoreError, match="without a gap"):
        migrations_in(tmp_path)

    (tmp_path / "0002-Middle.sql").write_text("CREATE TABLE c (x);\n")
    with pytest.raises(StoreError, match=r"name it NNNN_what\.sql"):
        migrations_in(tmp_path)


# ------------------------------------------------------------------------------------ segcrit migrate


def test_migrate_check_lists_what_is_pending_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "segcrit.db"
    config = write_config(tmp_path, db)

    result = segcrit("migrate", "--check", "--config", str(config), cwd=tmp_path)

    assert result.stdout.splitlines() == [f"pending: {label}" for label in SQLITE_ALL]
    assert assert_one_line_error(result) == f"error: {len(SQLITE)} migration(s) pending: run `segcrit migrate`"
    assert not db.exists()
    assert [m.label for m in pending_migrations(f"sqlite:///{db}")] == SQLITE_ALL


def test_migrate_applies_what_is_pending_and_check_then_passes(tmp_path: Path) -> None:
    db = tmp_path / "segcrit.db"
    config = write_config(tmp_path, db)

    applied = segcrit("migrate", "--config", str(config), cwd=tmp_path)
    again = segcrit("migrate", "--config", str(config), cwd=tmp_path)
    check = segcrit("migrate", "--check", "--config", str(config), cwd=tmp_path)

    assert (applied.returncode, applied.stdout.splitlines()) == (
        0,
        [*(f"applied: {label}" for label in SQLITE_ALL), f"schema up to date ({len(SQLITE)} migration(s) applied)"],
    )
    assert (again.returncode, again.stdout) == (0, "schema up to date\n")
    assert (check.returncode, check.stdout, check.stderr) == (0, "schema up to date\n", "")


def test_migrate_waits_for_no_serve_on_the_same_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "segcrit.db"
    config = write_config(tmp_path, db)
    owner = SqliteStore(str(db), owner=True)  # a running `segcrit serve` (which migrated at start)
    try:
        result = segcrit("migrate", "--config", str(config), cwd=tmp_path)
        check = segcrit("migrate", "--check", "--config", str(config), cwd=tmp_path)
    finally:
        owner.close()

    assert assert_one_line_error(result).startswith("error: another segcrit process owns")
    assert check.returncode == 0  # reading needs no ownership


# ------------------------------------------------------------------------------------ PostgreSQL

PG_ALL = [m.label for m in load_migrations("postgresql")]
PG_NOTE = Migration(len(PG_ALL) + 1, "add_audience_note", "ALTER TABLE audiences ADD COLUMN note text;\n")


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def pg_rows(url: str, query: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def test_on_postgresql_only_an_owner_migrates_and_the_other_commands_say_so(tmp_path: Path, pg_url: str) -> None:
    """A database several processes share: `status` never changes its schema; `migrate` (or
    `serve`) does."""
    config = write_config(tmp_path, tmp_path / "unused.db")
    config.write_text(config.read_text().replace(f"store: sqlite:///{tmp_path / 'unused.db'}", f"store: {pg_url}"))

    refused = segcrit("status", "--config", str(config), cwd=tmp_path)
    check = segcrit("migrate", "--check", "--config", str(config), cwd=tmp_path)
    assert assert_one_line_error(refused) == (
        f"error: the store's schema lacks {len(PG_ALL)} migration(s) (0001_initial...): run `segcrit migrate` "
        "(or start `segcrit serve`, which applies them)"
    )
    assert check.stdout.splitlines() == [f"pending: {label}" for label in PG_ALL] and check.returncode == 1
    assert pg_rows(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()") == [(0,)]

    applied = segcrit("migrate", "--config", str(config), cwd=tmp_path)
    status = segcrit("status", "--config", str(config), cwd=tmp_path)
    assert applied.stdout.splitlines() == [
        *(f"applied: {label}" for label in PG_ALL),
        f"schema up to date ({len(PG_ALL)} migration(s) applied)",
    ]
    assert status.returncode == 0 and "backlog: 0" in status.stdout


def test_on_postgresql_processes_starting_together_apply_a_migration_once(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segcrit.store import postgres as postgres_store

    monkeypatch.setattr(postgres_store, "load_migrations", lambda dialect: (*load_migrations(dialect), PG_NOTE))
    stores: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def serve() -> None:
        start.wait()
        try:
            stores.append(open_store(pg_url, owner=True))  # an ALTER run twice would fail one of them
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in stores:
        store.close()  # type: ignore[attr-defined]

    assert errors == [] and len(stores) == 3
    assert pg_rows(pg_url, "SELECT version, name FROM schema_migrations ORDER BY version") == [
        *((m.version, m.name) for m in load_migrations("postgresql")),
        (PG_NOTE.version, "add_audience_note"),
    ]


def test_a_failing_postgresql_migration_leaves_nothing_half_done(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from segcrit.store import postgres as postgres_store

    open_store(pg_url, owner=True).close()
    broken = Migration(
        len(PG_ALL) + 1,
        "broken",
        "CREATE TABLE notes (id integer PRIMARY KEY);\nALTER TABLE nowhere ADD COLUMN x int;\n",
    )
    monkeypatch.setattr(postgres_store, "load_migrations", lambda dialect: (*load_migrations(dialect), broken))

    with pytest.raises(StoreError, match='relation "nowhere" does not exist'):
        open_store(pg_url, owner=True)

    assert pg_rows(pg_url, "SELECT to_regclass('notes')") == [(None,)]
    assert pg_rows(pg_url, "SELECT version FROM schema_migrations ORDER BY version") == [
        (m.version,) for m in load_migrations("postgresql")
    ]
