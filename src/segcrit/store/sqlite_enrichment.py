"""SQLite store, enrichment part: which profiles are due for which lookup, and how each source fares.

Mixed into SqliteStore and SqliteTx like `sqlite_cohorts`. The processor marks a profile due inside
its own transaction (one small upsert); the enrichment worker reads due profiles without a
transaction, calls the source with none open, then writes the answers (as inbox messages, for the
processor) and the rows' next due time together, in one short transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from segcrit.domain import DueLookup, LookupDone, LookupStats
from segcrit.store import common as shared

SEED_PAGE = 5_000  # identifiers read per transaction when queueing the profiles known before


class EnrichmentTxMixin:
    conn: sqlite3.Connection

    def mark_lookups(self, profile_id: int, lookups: Iterable[str], now: float) -> None:
        """The profile is due for these lookups now (it is new, or holds a key it did not hold)."""
        self.conn.executemany(
            "INSERT INTO lookups (lookup, profile_id, due_at) VALUES (?, ?, ?) "
            "ON CONFLICT (lookup, profile_id) DO UPDATE SET due_at = min(due_at, excluded.due_at), "
            "version = version + 1",
            [(lookup, profile_id, now) for lookup in lookups],
        )

    def merge_lookups(self, into: int, other: int) -> None:
        self.conn.execute(
            "INSERT INTO lookups (lookup, profile_id, due_at, version, looked_up_at, outcome, answer) "
            "SELECT lookup, ?, due_at, version, looked_up_at, outcome, answer FROM lookups WHERE profile_id = ? "
            "ON CONFLICT (lookup, profile_id) DO UPDATE SET due_at = min(lookups.due_at, excluded.due_at), "
            "version = lookups.version + 1",
            (into, other),
        )
        self.conn.execute("DELETE FROM lookups WHERE profile_id = ?", (other,))

    def forget_lookups(self, profile_id: int) -> None:
        self.conn.execute("DELETE FROM lookups WHERE profile_id = ?", (profile_id,))


class EnrichmentStoreMixin:
    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError  # provided by SqliteStore

    def _write(self, *, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by SqliteStore

    # ------------------------------------------------------------------ the worker

    def due_lookups(self, lookup: str, key_kind: str, now: float, limit: int) -> list[DueLookup]:
        """Up to `limit` profiles due for `lookup`, most overdue first, with their keys of `key_kind`."""
        rows = (
            self._conn()
            .execute(
                "SELECT l.profile_id, l.version, l.answer, i.value FROM "
                "(SELECT profile_id, version, answer, due_at FROM lookups WHERE lookup = ? AND due_at <= ? "
                "ORDER BY due_at LIMIT ?) l "
                "LEFT JOIN identifiers i ON i.profile_id = l.profile_id AND i.kind = ? ORDER BY l.due_at",
                (lookup, now, limit, key_kind),
            )
            .fetchall()
        )
        keys: dict[tuple[int, int, str | None], list[str]] = {}
        for profile_id, version, answer, value in rows:
            found = keys.setdefault((int(profile_id), int(version), answer), [])
            if value is not None:
                found.append(str(value))
        return [DueLookup(pid, version, tuple(values), answer) for (pid, version, answer), values in keys.items()]

    def next_lookup_at(self, lookup: str) -> float | None:
        row = self._conn().execute("SELECT min(due_at) FROM lookups WHERE lookup = ?", (lookup,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def lookups_answered(
        self,
        lookup: str,
        done: Sequence[LookupDone],
        messages: Sequence[dict[str, Any]],
        source: str,
        now: float,
        requests: int,
    ) -> None:
        """Queue the answers for the processor and reschedule the profiles, in one transaction.

        A row whose version moved on since it was read stays due: processing asked for a lookup
        (a new key) while this one was in flight. Not fsynced (it shares the write lock with
        ingest): answers lost to a power cut leave their profiles due, and they are looked up again.
        """
        with self._write(durable=False) as conn:
            if messages:
                conn.executemany(
                    "INSERT INTO inbox (source, received_at, body) VALUES (?, ?, ?)",
                    [(source, now, orjson.dumps(message)) for message in messages],
                )
            conn.executemany(
                "UPDATE lookups SET looked_up_at = ?, outcome = ?, answer = ?, "
                "due_at = CASE WHEN version = ? THEN ? ELSE due_at END WHERE lookup = ? AND profile_id = ?",
                [(now, d.outcome, d.answer, d.version, d.next_due_at, lookup, d.profile_id) for d in done],
            )
            conn.execute(
                "INSERT INTO lookup_sources (lookup, failing_since, last_error, next_try_at, last_success_at, "
                "lookups, requests) VALUES (?, NULL, NULL, NULL, ?, ?, ?) ON CONFLICT (lookup) DO UPDATE SET "
                "failing_since = NULL, last_error = NULL, next_try_at = NULL, "
                "last_success_at = excluded.last_success_at, lookups = lookups + excluded.lookups, "
                "requests = requests + excluded.requests",
                (lookup, now, len(done), requests),
            )

    def lookup_failed(self, lookup: str, error: str, now: float, next_try_at: float) -> None:
        """The source did not answer: its profiles stay due; status says since when and why."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO lookup_sources (lookup, failing_since, last_error, next_try_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (lookup) DO UPDATE SET failing_since = coalesce(failing_since, excluded.failing_since), "
                "last_error = excluded.last_error, next_try_at = excluded.next_try_at",
                (lookup, now, error[:500], next_try_at),
            )

    def lookup_failing_since(self, lookup: str) -> float | None:
        row = self._conn().execute("SELECT failing_since FROM lookup_sources WHERE lookup = ?", (lookup,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def forget_other_lookups(self, lookups: Sequence[str]) -> int:
        """Drop the rows of lookups no longer configured (renamed or removed); returns how many."""
        marks = ", ".join("?" * len(lookups)) or "NULL"
        with self._write() as conn:
            dropped = conn.execute(f"DELETE FROM lookups WHERE lookup NOT IN ({marks})", tuple(lookups)).rowcount
            conn.execute(f"DELETE FROM lookup_sources WHERE lookup NOT IN ({marks})", tuple(lookups))
        return int(dropped)

    # ------------------------------------------------------------------ profiles known before

    def seed_lookups(self, lookup: str, key_kind: str, now: float) -> int:
        """Queue every profile holding a `key_kind` identifier for `lookup`, once per key (profiles
        known before the lookup was configured, or before its key changed); returns how many.

        A page of identifiers per transaction, so ingest is never held up for long.
        """
        row = self._conn().execute("SELECT seeded_key FROM lookup_sources WHERE lookup = ?", (lookup,)).fetchone()
        if row is not None and row[0] == key_kind:
            return 0
        with self._write() as conn:
            conn.execute("DELETE FROM lookups WHERE lookup = ?", (lookup,))  # queued by another key
        queued, after = 0, ""
        while True:
            page = (
                self._conn()
                .execute(
                    "SELECT value, profile_id FROM identifiers WHERE kind = ? AND value > ? ORDER BY value LIMIT ?",
                    (key_kind, after, SEED_PAGE),
                )
                .fetchall()
            )
            if not page:
                break
            with self._write() as conn:
                queued += conn.executemany(
                    "INSERT INTO lookups (lookup, profile_id, due_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (lookup, profile_id) DO NOTHING",
                    [(lookup, profile_id, now) for _, profile_id in page],
                ).rowcount
            after = page[-1][0]
        with self._write() as conn:
            conn.execute(
                "INSERT INTO lookup_sources (lookup, seeded_key) VALUES (?, ?) "
                "ON CONFLICT (lookup) DO UPDATE SET seeded_key = excluded.seeded_key",
                (lookup, key_kind),
            )
        return queued

    # ------------------------------------------------------------------ status

    def due_lookup_count(self, lookup: str, now: float) -> int:
        row = (
            self._conn()
            .execute("SELECT count(*) FROM lookups WHERE lookup = ? AND due_at <= ?", (lookup, now))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def unanswered_lookup_count(self, lookup: str) -> int:
        """Profiles never looked up yet by `lookup` (new ones, or all of them while it is down)."""
        row = (
            self._conn()
            .execute("SELECT count(*) FROM lookups WHERE lookup = ? AND looked_up_at IS NULL", (lookup,))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def lookup_stats(self, lookups: Sequence[str], now: float) -> list[LookupStats]:
        conn = self._conn()
        return shared.lookup_stats(
            lookups,
            conn.execute("SELECT lookup, coalesce(outcome, 'waiting'), count(*) FROM lookups GROUP BY lookup, outcome"),
            conn.execute(f"SELECT {shared.LOOKUP_SOURCE_COLUMNS} FROM lookup_sources"),
            {name: self.due_lookup_count(name, now) for name in lookups},
        )
