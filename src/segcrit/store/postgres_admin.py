"""PostgreSQL store, admin part: what the admin UI and API read and the little they write (see
segcrit.store.sqlite_admin for the tables). Audience sizes are the running totals (`audience_counts`
and its deltas); the recorder of every process adds its per-minute counters to the same rows, in
key order so that two recorders never wait for each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg

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
from segcrit.store.postgres_base import AUDIENCE_TOTALS, PgBase


class AdminStoreMixin(PgBase):
    # ------------------------------------------------------------------ audiences

    def audience_counts(self) -> list[AudienceCounts]:
        rows = self._rows(
            f"SELECT n.name, {shared.AUDIENCE_COLUMNS} FROM "
            f"(SELECT name FROM audiences UNION SELECT audience FROM ({AUDIENCE_TOTALS}) t) n "
            f"LEFT JOIN ({AUDIENCE_TOTALS}) c ON c.audience = n.name LEFT JOIN audiences a ON a.name = n.name "
            "ORDER BY n.name"
        )
        return [shared.audience_counts(r[0], r[1:]) for r in rows]

    def audience_counts_of(self, name: str) -> AudienceCounts | None:
        row = self._row(
            f"SELECT n.name, {shared.AUDIENCE_COLUMNS} FROM "
            f"(SELECT name FROM audiences WHERE name = %(n)s UNION SELECT audience FROM ({AUDIENCE_TOTALS}) t "
            "WHERE audience = %(n)s) n "
            f"LEFT JOIN ({AUDIENCE_TOTALS}) c ON c.audience = n.name LEFT JOIN audiences a ON a.name = n.name",
            {"n": name},
        )
        return None if row is None else shared.audience_counts(row[0], row[1:])

    def pending_total(self) -> int:
        return int(self._value(f"SELECT coalesce(sum(pending_add + pending_remove), 0) FROM ({AUDIENCE_TOTALS}) c"))

    def open_dead_letters(self) -> dict[str, int]:
        rows = self._rows("SELECT audience, count(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY audience")
        return {r[0]: int(r[1]) for r in rows}

    def dead_letters_of(self, audience: str, limit: int = 50) -> list[DeadLetterRow]:
        rows = self._rows(
            f"SELECT {shared.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE audience = %s AND replayed_at IS NULL "
            "ORDER BY id DESC LIMIT %s",
            (audience, limit),
        )
        return [DeadLetterRow(*r) for r in rows]

    def recent_dead_letters(self, limit: int = 100, include_replayed: bool = False) -> list[DeadLetterRow]:
        where = "" if include_replayed else "WHERE replayed_at IS NULL"
        rows = self._rows(
            f"SELECT {shared.DEAD_LETTER_COLUMNS} FROM dead_letters {where} ORDER BY id DESC LIMIT %s", (limit,)
        )
        return [DeadLetterRow(*r) for r in rows]

    # ------------------------------------------------------------------ resyncs

    def request_resync(self, audience: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO admin_resyncs (audience, requested_at) VALUES (%s, %s) ON CONFLICT (audience) DO UPDATE "
                "SET requested_at = excluded.requested_at, started_at = NULL, finished_at = NULL, result = NULL",
                (audience, now),
            )

    def claim_resync(self, now: float) -> str | None:
        """The oldest resync nobody started yet, now marked started: one process takes it."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE admin_resyncs SET started_at = %s WHERE audience = (SELECT audience FROM admin_resyncs "
                "WHERE started_at IS NULL ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING audience",
                (now,),
            ).fetchone()
        return None if row is None else str(row[0])

    def resync_finished(self, audience: str, result: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE admin_resyncs SET finished_at = %s, result = %s WHERE audience = %s",
                (now, result[:500], audience),
            )

    def resync_state(self, audience: str) -> ResyncRow | None:
        row = self._row(
            "SELECT audience, requested_at, started_at, finished_at, result FROM admin_resyncs WHERE audience = %s",
            (audience,),
        )
        return None if row is None else ResyncRow(*row)

    def resyncs_waiting(self) -> bool:
        return self._row("SELECT 1 FROM admin_resyncs WHERE started_at IS NULL LIMIT 1") is not None

    # ------------------------------------------------------------------ profiles

    def profiles_of(self, keys: Iterable[tuple[str, str]]) -> list[int]:
        pairs = list(keys)
        if not pairs:
            return []
        rows = self._rows(
            "SELECT DISTINCT i.profile_id FROM identifiers i JOIN unnest(%s::text[], %s::text[]) AS k(kind, value) "
            "ON i.kind = k.kind AND i.value = k.value",
            ([p[0] for p in pairs], [p[1] for p in pairs]),
        )
        return sorted(int(r[0]) for r in rows)

    def profile_record(self, profile_id: int) -> ProfileRecord | None:
        with self._connection() as conn, conn.pipeline():
            profile, *tables, orders, queued = (
                conn.execute(sql, (profile_id,))
                for sql in (
                    f"SELECT {shared.PROFILE_COLUMNS} FROM profiles WHERE id = %s",
                    "SELECT kind, value, active FROM identifiers WHERE profile_id = %s ORDER BY kind, value",
                    "SELECT audience, member, ts FROM memberships WHERE profile_id = %s ORDER BY audience",
                    "SELECT audience, id_type, desired, acked, dead_letter_id FROM targets WHERE profile_id = %s "
                    "ORDER BY audience, id_type",
                    "SELECT flow, since, until FROM suppressions WHERE profile_id = %s",
                    "SELECT count(*), coalesce(sum(revenue), 0) FROM orders WHERE profile_id = %s",
                    "SELECT count(*) FROM criteo_events WHERE profile_id = %s AND dead_letter_id IS NULL",
                )
            )
            row = profile.fetchone()
            identifiers, memberships, targets, suppressions = (t.fetchall() for t in tables)
            order_row, queued_row = orders.fetchone(), queued.fetchone()
        if row is None:
            return None
        return shared.profile_record(
            profile_id, row, identifiers, memberships, targets, suppressions, order_row, queued_row
        )

    # ------------------------------------------------------------------ counters, calls, samples

    def record_activity(
        self, counters: Sequence[CounterIncrement], calls: Sequence[NewCall], samples: Sequence[NewSample]
    ) -> None:
        """Write what the recorder gathered since its last flush, in one short transaction, and
        cut the capped tables back to their size."""
        if not counters and not calls and not samples:
            return

        def record(conn: psycopg.Connection[Any]) -> None:
            for gauge in (False, True):
                rows = sorted({(c.minute, c.series, c.labels): c.value for c in counters if c.gauge == gauge}.items())
                if not rows:
                    continue
                combine = (
                    "greatest(admin_counters.value, excluded.value)"
                    if gauge
                    else "admin_counters.value + excluded.value"
                )
                conn.execute(
                    "INSERT INTO admin_counters (minute, series, labels, value) SELECT * FROM "
                    "unnest(%s::int8[], %s::text[], %s::text[], %s::float8[]) "
                    f"ON CONFLICT (minute, series, labels) DO UPDATE SET value = {combine}",
                    ([k[0] for k, _ in rows], [k[1] for k, _ in rows], [k[2] for k, _ in rows], [v for _, v in rows]),
                )
            if calls:
                conn.cursor().executemany(
                    f"INSERT INTO admin_calls ({shared.INSERT_CALL_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [shared.call_values(c) for c in calls],
                )
            if samples:
                conn.cursor().executemany(
                    f"INSERT INTO admin_samples ({shared.INSERT_SAMPLE_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [shared.sample_values(s) for s in samples],
                )
            for endpoint in sorted({c.endpoint for c in calls}):
                conn.execute(
                    "DELETE FROM admin_calls WHERE endpoint = %(e)s AND id <= (SELECT id FROM admin_calls "
                    "WHERE endpoint = %(e)s ORDER BY id DESC LIMIT 1 OFFSET %(keep)s)",
                    {"e": endpoint, "keep": shared.CALLS_KEPT_PER_ENDPOINT},
                )
            for source, accepted in sorted({(s.source, int(s.accepted)) for s in samples}):
                conn.execute(
                    "DELETE FROM admin_samples WHERE source = %(s)s AND accepted = %(a)s AND id <= (SELECT id "
                    "FROM admin_samples WHERE source = %(s)s AND accepted = %(a)s ORDER BY id DESC LIMIT 1 "
                    "OFFSET %(keep)s)",
                    {"s": source, "a": accepted, "keep": shared.SAMPLES_KEPT_PER_SOURCE},
                )

        self._retrying(record)

    def prune_counters(self, before_minute: int) -> int:
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM admin_counters WHERE minute IN (SELECT DISTINCT minute FROM admin_counters "
                "WHERE minute < %s ORDER BY minute LIMIT %s)",
                (before_minute, shared.PRUNE_BATCH_MINUTES),
            ).rowcount

    def counters_by_minute(self, minute: int, series: Sequence[str]) -> list[tuple[int, str, str, float]]:
        if not series:
            return []
        rows = self._rows(
            "SELECT minute, series, CASE WHEN series = 'criteo_calls' THEN CASE WHEN "
            "(labels::jsonb ->> 'status') LIKE '2%%' THEN 'ok' ELSE 'failed' END ELSE '' END AS outcome, "
            "coalesce(sum(value), 0) FROM admin_counters WHERE minute >= %s AND series = ANY(%s) "
            "GROUP BY minute, series, outcome",
            (minute, list(series)),
        )
        return [(int(r[0]), r[1], r[2], float(r[3])) for r in rows]

    def counter_labels(self, minute: int, series: str) -> list[tuple[dict[str, str], float]]:
        rows = self._rows(
            "SELECT labels, coalesce(sum(value), 0) FROM admin_counters WHERE minute >= %s AND series = %s "
            "GROUP BY labels",
            (minute, series),
        )
        return [(orjson.loads(r[0]), float(r[1])) for r in rows]

    def recent_calls(
        self,
        limit: int = 50,
        *,
        endpoint: str | None = None,
        audience: str | None = None,
        failed: bool | None = None,
        before_id: int | None = None,
    ) -> list[CallRow]:
        clause, params = shared.call_filters(
            "%s", endpoint=endpoint, audience=audience, failed=failed, before_id=before_id
        )
        rows = self._rows(
            f"SELECT {shared.CALL_COLUMNS} FROM admin_calls {clause} ORDER BY id DESC LIMIT %s", (*params, limit)
        )
        return [shared.call_row(r) for r in rows]

    def call_endpoints(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT DISTINCT endpoint FROM admin_calls ORDER BY endpoint")]

    def samples(self, limit: int = 50, *, source: str | None = None, accepted: bool | None = None) -> list[SampleRow]:
        clause, params = shared.sample_filters("%s", source=source, accepted=accepted)
        rows = self._rows(
            f"SELECT {shared.SAMPLE_COLUMNS} FROM admin_samples {clause} ORDER BY id DESC LIMIT %s", (*params, limit)
        )
        return [shared.sample_row(r) for r in rows]

    def sample(self, sample_id: int) -> SampleRow | None:
        row = self._row(f"SELECT {shared.SAMPLE_COLUMNS} FROM admin_samples WHERE id = %s", (sample_id,))
        return None if row is None else shared.sample_row(row)

    def sample_sources(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT DISTINCT source FROM admin_samples ORDER BY source")]

    def samples_of(
        self, user_ids: Sequence[str], anonymous_ids: Sequence[str], emails: Sequence[str], limit: int = 20
    ) -> list[SampleRow]:
        if not user_ids and not anonymous_ids and not emails:
            return []
        rows = self._rows(
            f"SELECT {shared.SAMPLE_COLUMNS} FROM admin_samples "
            "WHERE user_id = ANY(%s) OR anonymous_id = ANY(%s) OR email = ANY(%s) ORDER BY id DESC LIMIT %s",
            (list(user_ids), list(anonymous_ids), list(emails), limit),
        )
        return [shared.sample_row(r) for r in rows]
