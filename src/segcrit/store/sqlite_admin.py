"""SQLite store, admin part: what the admin UI and API read and the little they write.

Mixed into SqliteStore like `sqlite_commerce`. Its tables are in `migrations/sqlite/0001_initial.sql` (the admin part):

- `audience_counts`, kept by triggers on `targets`, so audience sizes cost one row per audience;
- `admin_counters`, per-minute counters behind the overview's charts (pruned by the recorder);
- `admin_calls` and `admin_samples`, the recent Criteo calls and the event debugger's messages,
  each capped to the last few hundred per endpoint or per source;
- `admin_resyncs`, resyncs asked for in the UI and run by the delivery thread.

Every read here is a primary-key or index range of bounded size: no admin page scans a table
that grows with traffic or profiles.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from segcrit.domain import (
    AudienceCounts,
    CallRow,
    CounterIncrement,
    DeadLetterRow,
    NewCall,
    NewSample,
    ProfileRecord,
    ResyncRow,
    SampleRow,
)
from segcrit.store import common as shared


class AdminStoreMixin:
    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError  # provided by SqliteStore

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by SqliteStore

    # ------------------------------------------------------------------ audiences

    def audience_counts(self) -> list[AudienceCounts]:
        """Every audience segcrit knows (resolved, configured by a flow, or with targets), by name."""
        rows = (
            self._conn()
            .execute(
                f"SELECT n.name, {shared.AUDIENCE_COLUMNS} FROM "
                "(SELECT name FROM audiences UNION SELECT audience FROM audience_counts) n "
                "LEFT JOIN audience_counts c ON c.audience = n.name LEFT JOIN audiences a ON a.name = n.name "
                "ORDER BY n.name"
            )
            .fetchall()
        )
        return [shared.audience_counts(r[0], r[1:]) for r in rows]

    def audience_counts_of(self, name: str) -> AudienceCounts | None:
        """One audience's counts; None when segcrit has never heard of it."""
        row = (
            self._conn()
            .execute(
                f"SELECT n.name, {shared.AUDIENCE_COLUMNS} FROM "
                "(SELECT name FROM audiences WHERE name = ?1 UNION SELECT audience FROM audience_counts "
                "WHERE audience = ?1) n "
                "LEFT JOIN audience_counts c ON c.audience = n.name LEFT JOIN audiences a ON a.name = n.name",
                (name,),
            )
            .fetchone()
        )
        return None if row is None else shared.audience_counts(row[0], row[1:])

    def pending_total(self) -> int:
        """Changes waiting for delivery, from the maintained counts (no scan of `targets`)."""
        row = self._conn().execute("SELECT total(pending_add + pending_remove) FROM audience_counts").fetchone()
        return int(row[0]) if row else 0

    def open_dead_letters(self) -> dict[str, int]:
        """Audience (or `events`, `catalog:<merchant>`) -> dead letters not yet replayed."""
        rows = self._conn().execute(
            "SELECT audience, count(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY audience"
        )
        return {r[0]: int(r[1]) for r in rows.fetchall()}

    def dead_letters_of(self, audience: str, limit: int = 50) -> list[DeadLetterRow]:
        """The open dead letters of one audience, newest first."""
        rows = self._conn().execute(
            f"SELECT {shared.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE audience = ? AND replayed_at IS NULL "
            "ORDER BY id DESC LIMIT ?",
            (audience, limit),
        )
        return [DeadLetterRow(*r) for r in rows.fetchall()]

    def recent_dead_letters(self, limit: int = 100, include_replayed: bool = False) -> list[DeadLetterRow]:
        """The latest dead letters of every kind (contact lists, Events API, catalog), newest first."""
        where = "" if include_replayed else "WHERE replayed_at IS NULL"
        rows = self._conn().execute(
            f"SELECT {shared.DEAD_LETTER_COLUMNS} FROM dead_letters {where} ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [DeadLetterRow(*r) for r in rows.fetchall()]

    # ------------------------------------------------------------------ resyncs

    def request_resync(self, audience: str, now: float) -> None:
        """Ask the delivery thread for a resync (again, if one ran before)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO admin_resyncs (audience, requested_at) VALUES (?, ?) ON CONFLICT (audience) DO UPDATE "
                "SET requested_at = excluded.requested_at, started_at = NULL, finished_at = NULL, result = NULL",
                (audience, now),
            )

    def claim_resync(self, now: float) -> str | None:
        """The audience of the oldest resync nobody started yet, now marked started."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE admin_resyncs SET started_at = ? WHERE audience = (SELECT audience FROM admin_resyncs "
                "WHERE started_at IS NULL ORDER BY requested_at LIMIT 1) RETURNING audience",
                (now,),
            ).fetchone()
        return None if row is None else str(row[0])

    def resync_finished(self, audience: str, result: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE admin_resyncs SET finished_at = ?, result = ? WHERE audience = ?",
                (now, result[:500], audience),
            )

    def resync_state(self, audience: str) -> ResyncRow | None:
        row = (
            self._conn()
            .execute(
                "SELECT audience, requested_at, started_at, finished_at, result FROM admin_resyncs WHERE audience = ?",
                (audience,),
            )
            .fetchone()
        )
        return None if row is None else ResyncRow(*row)

    def resyncs_waiting(self) -> bool:
        row = self._conn().execute("SELECT 1 FROM admin_resyncs WHERE started_at IS NULL LIMIT 1").fetchone()
        return row is not None

    # ------------------------------------------------------------------ failed events

    # ------------------------------------------------------------------ profiles

    def profiles_of(self, keys: Iterable[tuple[str, str]]) -> list[int]:
        """The profiles holding any of these (kind, value) identifiers."""
        pairs = list(keys)
        if not pairs:
            return []
        clause = " OR ".join(["(kind = ? AND value = ?)"] * len(pairs))
        rows = self._conn().execute(
            f"SELECT DISTINCT profile_id FROM identifiers WHERE {clause}", [part for pair in pairs for part in pair]
        )
        return sorted(int(r[0]) for r in rows.fetchall())

    def profile_record(self, profile_id: int) -> ProfileRecord | None:
        conn = self._conn()
        profile = conn.execute(f"SELECT {shared.PROFILE_COLUMNS} FROM profiles WHERE id = ?", (profile_id,)).fetchone()
        if profile is None:
            return None

        def all_of(sql: str) -> list[Any]:
            return conn.execute(sql, (profile_id,)).fetchall()

        return shared.profile_record(
            profile_id,
            profile,
            all_of("SELECT kind, value, active FROM identifiers WHERE profile_id = ? ORDER BY kind, value"),
            all_of("SELECT audience, member, ts FROM memberships WHERE profile_id = ? ORDER BY audience"),
            all_of(
                "SELECT audience, id_type, desired, acked, dead_letter_id FROM targets WHERE profile_id = ? "
                "ORDER BY audience, id_type"
            ),
            all_of("SELECT flow, since, until FROM suppressions WHERE profile_id = ?"),
            conn.execute("SELECT count(*), total(revenue) FROM orders WHERE profile_id = ?", (profile_id,)).fetchone(),
            conn.execute(
                "SELECT count(*) FROM criteo_events WHERE profile_id = ? AND dead_letter_id IS NULL", (profile_id,)
            ).fetchone(),
        )

    # ------------------------------------------------------------------ counters, calls, samples

    def record_activity(
        self, counters: Sequence[CounterIncrement], calls: Sequence[NewCall], samples: Sequence[NewSample]
    ) -> None:
        """Write what the recorder gathered since its last flush, in one short transaction, and
        cut the capped tables back to their size."""
        if not counters and not calls and not samples:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO admin_counters (minute, series, labels, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (minute, series, labels) DO UPDATE SET value = value + excluded.value",
                [(c.minute, c.series, c.labels, c.value) for c in counters if not c.gauge],
            )
            conn.executemany(
                "INSERT INTO admin_counters (minute, series, labels, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (minute, series, labels) DO UPDATE SET value = max(value, excluded.value)",
                [(c.minute, c.series, c.labels, c.value) for c in counters if c.gauge],
            )
            conn.executemany(
                f"INSERT INTO admin_calls ({shared.INSERT_CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [shared.call_values(c) for c in calls],
            )
            conn.executemany(
                f"INSERT INTO admin_samples ({shared.INSERT_SAMPLE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [shared.sample_values(s) for s in samples],
            )
            for endpoint in {c.endpoint for c in calls}:
                conn.execute(
                    "DELETE FROM admin_calls WHERE endpoint = ?1 AND id <= (SELECT id FROM admin_calls "
                    "WHERE endpoint = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    (endpoint, shared.CALLS_KEPT_PER_ENDPOINT),
                )
            for source, accepted in {(s.source, int(s.accepted)) for s in samples}:
                conn.execute(
                    "DELETE FROM admin_samples WHERE source = ?1 AND accepted = ?2 AND id <= (SELECT id "
                    "FROM admin_samples WHERE source = ?1 AND accepted = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3)",
                    (source, accepted, shared.SAMPLES_KEPT_PER_SOURCE),
                )

    def prune_counters(self, before_minute: int) -> int:
        """Drop a few minutes of counters older than `before_minute`; call again while it returns > 0."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM admin_counters WHERE minute IN (SELECT DISTINCT minute FROM admin_counters "
                "WHERE minute < ? ORDER BY minute LIMIT ?)",
                (before_minute, shared.PRUNE_BATCH_MINUTES),
            ).rowcount

    def counters_by_minute(self, minute: int, series: Sequence[str]) -> list[tuple[int, str, str, float]]:
        """(minute, series, outcome, value) from `minute` on, summed over labels in SQL (a range of
        the primary key); outcome splits `criteo_calls` into "ok" (2xx) and "failed", else ""."""
        if not series:
            return []
        marks = ", ".join("?" * len(series))
        rows = self._conn().execute(
            "SELECT minute, series, CASE WHEN series = 'criteo_calls' THEN CASE WHEN labels ->> '$.status' LIKE '2%' "
            "THEN 'ok' ELSE 'failed' END ELSE '' END AS outcome, total(value) FROM admin_counters "
            f"WHERE minute >= ? AND series IN ({marks}) GROUP BY minute, series, outcome",
            (minute, *series),
        )
        return [(int(r[0]), r[1], r[2], float(r[3])) for r in rows.fetchall()]

    def counter_labels(self, minute: int, series: str) -> list[tuple[dict[str, str], float]]:
        """One series from `minute` on, summed per label set: (labels, total)."""
        rows = self._conn().execute(
            "SELECT labels, total(value) FROM admin_counters WHERE minute >= ? AND series = ? GROUP BY labels",
            (minute, series),
        )
        return [(orjson.loads(r[0]), float(r[1])) for r in rows.fetchall()]

    def recent_calls(
        self,
        limit: int = 50,
        *,
        endpoint: str | None = None,
        audience: str | None = None,
        failed: bool | None = None,
        before_id: int | None = None,
    ) -> list[CallRow]:
        """The latest Criteo calls, newest first, filtered; `failed`: no answer or not 2xx."""
        clause, params = shared.call_filters(
            "?", endpoint=endpoint, audience=audience, failed=failed, before_id=before_id
        )
        rows = self._conn().execute(
            f"SELECT {shared.CALL_COLUMNS} FROM admin_calls {clause} ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [shared.call_row(r) for r in rows.fetchall()]

    def call_endpoints(self) -> list[str]:
        rows = self._conn().execute("SELECT DISTINCT endpoint FROM admin_calls ORDER BY endpoint")
        return [r[0] for r in rows.fetchall()]

    def samples(self, limit: int = 50, *, source: str | None = None, accepted: bool | None = None) -> list[SampleRow]:
        """The debugger's latest messages, newest first."""
        clause, params = shared.sample_filters("?", source=source, accepted=accepted)
        rows = self._conn().execute(
            f"SELECT {shared.SAMPLE_COLUMNS} FROM admin_samples {clause} ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [shared.sample_row(r) for r in rows.fetchall()]

    def sample(self, sample_id: int) -> SampleRow | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {shared.SAMPLE_COLUMNS} FROM admin_samples WHERE id = ?",
                (sample_id,),
            )
            .fetchone()
        )
        return None if row is None else shared.sample_row(row)

    def sample_sources(self) -> list[str]:
        rows = self._conn().execute("SELECT DISTINCT source FROM admin_samples ORDER BY source")
        return [r[0] for r in rows.fetchall()]

    def samples_of(
        self, user_ids: Sequence[str], anonymous_ids: Sequence[str], emails: Sequence[str], limit: int = 20
    ) -> list[SampleRow]:
        """The debugger's latest messages of one person (by any of their ids), newest first."""
        where: list[str] = []
        params: list[str] = []
        for column, values in (("user_id", user_ids), ("anonymous_id", anonymous_ids), ("email", emails)):
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
        if not where:
            return []
        rows = self._conn().execute(
            f"SELECT {shared.SAMPLE_COLUMNS} FROM admin_samples WHERE {' OR '.join(where)} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [shared.sample_row(r) for r in rows.fetchall()]
