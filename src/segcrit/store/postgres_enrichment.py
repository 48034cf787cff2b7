"""PostgreSQL store, enrichment part: which profiles are due for which lookup, and how each source
fares. As on SQLite: the processor marks profiles due inside its unit of work; the enrichment
worker reads due profiles without a transaction, calls the source with none open, then writes the
answers (inbox messages) and the rows' next due time in one short transaction.

With several processes each running an enrichment worker, two may look up the same profile at
once: both answers go to the inbox and are applied like any event (latest wins, the same answer is
not applied twice), so this only costs a lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from segcrit.domain import DueLookup, LookupDone, LookupStats
from segcrit.store import common as shared
from segcrit.store.postgres_base import PgBase

SEED_PAGE = 5_000


class EnrichmentStoreMixin(PgBase):
    def due_lookups(self, lookup: str, key_kind: str, now: float, limit: int) -> list[DueLookup]:
        rows = self._rows(
            "SELECT l.profile_id, l.version, l.answer, i.value FROM "
            "(SELECT profile_id, version, answer, due_at FROM lookups WHERE lookup = %s AND due_at <= %s "
            "ORDER BY due_at LIMIT %s) l "
            "LEFT JOIN identifiers i ON i.profile_id = l.profile_id AND i.kind = %s ORDER BY l.due_at, l.profile_id",
            (lookup, now, limit, key_kind),
        )
        keys: dict[tuple[int, int, str | None], list[str]] = {}
        for profile_id, version, answer, value in rows:
            found = keys.setdefault((int(profile_id), int(version), answer), [])
            if value is not None:
                found.append(str(value))
        return [DueLookup(pid, version, tuple(values), answer) for (pid, version, answer), values in keys.items()]

    def next_lookup_at(self, lookup: str) -> float | None:
        value = self._value("SELECT min(due_at) FROM lookups WHERE lookup = %s", (lookup,))
        return None if value is None else float(value)

    def lookups_answered(
        self,
        lookup: str,
        done: Sequence[LookupDone],
        messages: Sequence[dict[str, Any]],
        source: str,
        now: float,
        requests: int,
    ) -> None:
        """Queue the answers for the processor and reschedule the profiles, in one transaction (a
        row whose version moved on since it was read stays due)."""
        rows = sorted(done, key=lambda d: d.profile_id)

        def record(conn: psycopg.Connection[Any]) -> None:
            if messages:
                conn.execute(
                    "INSERT INTO inbox (source, received_at, body) SELECT s, r, b FROM "
                    "unnest(%s::text[], %s::float8[], %s::bytea[]) WITH ORDINALITY AS u(s, r, b, n) ORDER BY n",
                    ([source] * len(messages), [now] * len(messages), [orjson.dumps(m) for m in messages]),
                )
            if rows:
                conn.execute(
                    "UPDATE lookups l SET looked_up_at = %s, outcome = u.outcome, answer = u.answer, "
                    "due_at = CASE WHEN l.version = u.version THEN u.next_due ELSE l.due_at END "
                    "FROM unnest(%s::int8[], %s::text[], %s::text[], %s::int4[], %s::float8[]) "
                    "AS u(profile_id, outcome, answer, version, next_due) "
                    "WHERE l.lookup = %s AND l.profile_id = u.profile_id",
                    (
                        now,
                        [d.profile_id for d in rows],
                        [d.outcome for d in rows],
                        [d.answer for d in rows],
                        [d.version for d in rows],
                        [d.next_due_at for d in rows],
                        lookup,
                    ),
                )
            conn.execute(
                "INSERT INTO lookup_sources (lookup, failing_since, last_error, next_try_at, last_success_at, "
                "lookups, requests) VALUES (%s, NULL, NULL, NULL, %s, %s, %s) ON CONFLICT (lookup) DO UPDATE SET "
                "failing_since = NULL, last_error = NULL, next_try_at = NULL, "
                "last_success_at = excluded.last_success_at, lookups = lookup_sources.lookups + excluded.lookups, "
                "requests = lookup_sources.requests + excluded.requests",
                (lookup, now, len(done), requests),
            )

        self._retrying(record)
        self.inbox_changed(len(messages))

    def lookup_failed(self, lookup: str, error: str, now: float, next_try_at: float) -> None:
        self._retrying(
            lambda conn: conn.execute(
                "INSERT INTO lookup_sources (lookup, failing_since, last_error, next_try_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (lookup) DO UPDATE SET "
                "failing_since = coalesce(lookup_sources.failing_since, excluded.failing_since), "
                "last_error = excluded.last_error, next_try_at = excluded.next_try_at",
                (lookup, now, error[:500], next_try_at),
            )
        )

    def lookup_failing_since(self, lookup: str) -> float | None:
        value = self._value("SELECT failing_since FROM lookup_sources WHERE lookup = %s", (lookup,))
        return None if value is None else float(value)

    def forget_other_lookups(self, lookups: Sequence[str]) -> int:
        kept = list(lookups)
        with self._write() as conn:
            dropped = conn.execute("DELETE FROM lookups WHERE lookup != ALL(%s::text[])", (kept,)).rowcount
            conn.execute("DELETE FROM lookup_sources WHERE lookup != ALL(%s::text[])", (kept,))
        return int(dropped)

    def seed_lookups(self, lookup: str, key_kind: str, now: float) -> int:
        """Queue every profile holding a `key_kind` identifier for `lookup`, once per key, a page of
        identifiers per transaction."""
        if self._value("SELECT seeded_key FROM lookup_sources WHERE lookup = %s", (lookup,)) == key_kind:
            return 0
        with self._write() as conn:
            conn.execute("DELETE FROM lookups WHERE lookup = %s", (lookup,))
        queued, after = 0, ""
        while True:
            page = self._rows(
                "SELECT value, profile_id FROM identifiers WHERE kind = %s AND value > %s ORDER BY value LIMIT %s",
                (key_kind, after, SEED_PAGE),
            )
            if not page:
                break
            profiles = sorted({int(pid) for _, pid in page})
            with self._write() as conn:
                queued += conn.execute(
                    "INSERT INTO lookups (lookup, profile_id, due_at) SELECT %s, p, %s FROM unnest(%s::int8[]) AS p "
                    "ORDER BY p ON CONFLICT (lookup, profile_id) DO NOTHING",
                    (lookup, now, profiles),
                ).rowcount
            after = page[-1][0]
        with self._write() as conn:
            conn.execute(
                "INSERT INTO lookup_sources (lookup, seeded_key) VALUES (%s, %s) "
                "ON CONFLICT (lookup) DO UPDATE SET seeded_key = excluded.seeded_key",
                (lookup, key_kind),
            )
        return queued

    def due_lookup_count(self, lookup: str, now: float) -> int:
        return int(self._value("SELECT count(*) FROM lookups WHERE lookup = %s AND due_at <= %s", (lookup, now)))

    def unanswered_lookup_count(self, lookup: str) -> int:
        return int(self._value("SELECT count(*) FROM lookups WHERE lookup = %s AND looked_up_at IS NULL", (lookup,)))

    def lookup_stats(self, lookups: Sequence[str], now: float) -> list[LookupStats]:
        return shared.lookup_stats(
            lookups,
            self._rows("SELECT lookup, coalesce(outcome, 'waiting'), count(*) FROM lookups GROUP BY 1, 2"),
            self._rows(f"SELECT {shared.LOOKUP_SOURCE_COLUMNS} FROM lookup_sources"),
            {name: self.due_lookup_count(name, now) for name in lookups},
        )
