"""SQLite store, profile-flow part: traits, suppressions, cohort facts, lookalikes, jobs.

Mixed into SqliteStore and SqliteTx like `sqlite_commerce`. Cohort facts are read a page of
profiles at a time (keyset pagination on the profile id), so evaluating a cohort over millions of
profiles holds one page in memory, never the whole table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from segcrit.domain import JobRecord, LookalikeRecord, ProfileFacts
from segcrit.store import common as shared

FACTS_PAGE = 5_000


def _json_text(value: dict[str, Any]) -> str:
    # json_patch drops keys whose patch value is null; a null trait means "unset" anyway.
    return orjson.dumps(value).decode()


class CohortTxMixin:
    conn: sqlite3.Connection

    def merge_traits(self, profile_id: int, traits: dict[str, Any], ts: float) -> None:
        """Newer traits overwrite older ones key by key; an older identify only fills gaps."""
        # One statement: json_patch(target, patch) lets the patch win, so the order of the two
        # documents says which identify is newer.
        self.conn.execute(
            "UPDATE profiles SET traits = CASE WHEN traits_ts IS NULL OR ? >= traits_ts "
            "THEN json_patch(coalesce(traits, '{}'), ?) ELSE json_patch(?, coalesce(traits, '{}')) END, "
            "traits_ts = max(coalesce(traits_ts, 0), ?) WHERE id = ?",
            (ts, _json_text(traits), _json_text(traits), ts, profile_id),
        )

    def set_suppression(self, profile_id: int, flow: str, since: float, until: float) -> bool:
        cursor = self.conn.execute(
            "INSERT INTO suppressions (profile_id, flow, since, until) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (profile_id, flow) DO UPDATE SET until = excluded.until, since = excluded.since "
            "WHERE excluded.until > suppressions.until",
            (profile_id, flow, since, until),
        )
        return cursor.rowcount > 0

    def active_suppressions(self, profile_id: int, now: float) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT flow FROM suppressions WHERE profile_id = ? AND until > ?", (profile_id, now)
            )
        ]

    def end_suppression(self, profile_id: int, flow: str) -> None:
        self.conn.execute("DELETE FROM suppressions WHERE profile_id = ? AND flow = ?", (profile_id, flow))

    def membership(self, profile_id: int, audience: str) -> tuple[bool, float] | None:
        row = self.conn.execute(
            "SELECT member, ts FROM memberships WHERE profile_id = ? AND audience = ?", (profile_id, audience)
        ).fetchone()
        return None if row is None else (bool(row[0]), float(row[1]))

    def merge_cohorts(self, into: int, other: int) -> None:
        self.conn.execute(
            "INSERT INTO suppressions (profile_id, flow, since, until) "
            "SELECT ?, flow, since, until FROM suppressions WHERE profile_id = ? "
            "ON CONFLICT (profile_id, flow) DO UPDATE SET until = max(suppressions.until, excluded.until)",
            (into, other),
        )
        self.conn.execute("DELETE FROM suppressions WHERE profile_id = ?", (other,))
        row = self.conn.execute("SELECT traits, traits_ts FROM profiles WHERE id = ?", (other,)).fetchone()
        if row is not None and row[0]:
            self.merge_traits(into, orjson.loads(row[0]), float(row[1] or 0))

    def forget_cohorts(self, profile_id: int) -> None:
        self.conn.execute("DELETE FROM suppressions WHERE profile_id = ?", (profile_id,))


class CohortStoreMixin:
    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError  # provided by SqliteStore

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by SqliteStore

    # ------------------------------------------------------------------ facts

    def facts_pages(self, page: int = FACTS_PAGE) -> Iterator[list[ProfileFacts]]:
        """Every profile's cohort facts, one page at a time, in profile id order."""
        after = 0
        conn = self._conn()
        while True:
            rows = conn.execute(
                f"SELECT {shared.FACTS_COLUMNS} FROM profiles WHERE id > ? ORDER BY id LIMIT ?", (after, page)
            ).fetchall()
            if not rows:
                return
            first, last = rows[0][0], rows[-1][0]
            facts = shared.profile_facts(rows)
            self._add_orders_and_audiences(facts, "profile_id BETWEEN ? AND ?", (first, last))
            yield list(facts.values())
            after = last

    def profile_facts(self, profile_id: int) -> ProfileFacts | None:
        rows = self._conn().execute(f"SELECT {shared.FACTS_COLUMNS} FROM profiles WHERE id = ?", (profile_id,))
        facts = shared.profile_facts(rows)
        if not facts:
            return None
        self._add_orders_and_audiences(facts, "profile_id = ?", (profile_id,))
        return facts[profile_id]

    def _add_orders_and_audiences(self, facts: dict[int, ProfileFacts], where: str, params: tuple[int, ...]) -> None:
        conn = self._conn()
        shared.add_orders(
            facts,
            conn.execute(
                f"SELECT profile_id, count(*), total(revenue), min(ts), max(ts) FROM orders WHERE {where} "
                "GROUP BY profile_id",
                params,
            ),
        )
        shared.add_audiences(
            facts, conn.execute(f"SELECT profile_id, audience FROM memberships WHERE {where} AND member = 1", params)
        )

    # ------------------------------------------------------------------ suppression and lifecycle

    def expired_suppressions(self, now: float, limit: int) -> list[tuple[int, str, float]]:
        rows = (
            self._conn()
            .execute(
                "SELECT profile_id, flow, until FROM suppressions WHERE until <= ? ORDER BY until LIMIT ?", (now, limit)
            )
            .fetchall()
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def suppressed_count(self, flow: str, now: float) -> int:
        row = (
            self._conn()
            .execute("SELECT count(*) FROM suppressions WHERE flow = ? AND until > ?", (flow, now))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def dormant_candidates(self, stages: Sequence[str], cutoff: float, limit: int) -> list[tuple[int, float]]:
        """Profiles in one of `stages` not seen since `cutoff`: (profile id, last seen)."""
        marks = ",".join("?" * len(stages))
        rows = (
            self._conn()
            .execute(
                "SELECT DISTINCT m.profile_id, p.last_seen_at FROM memberships m "
                f"JOIN profiles p ON p.id = m.profile_id WHERE m.audience IN ({marks}) AND m.member = 1 "
                "AND p.last_seen_at < ? LIMIT ?",
                (*stages, cutoff, limit),
            )
            .fetchall()
        )
        return [(r[0], r[1]) for r in rows]

    def member_count(self, audience: str) -> int:
        row = (
            self._conn()
            .execute("SELECT count(*) FROM memberships WHERE audience = ? AND member = 1", (audience,))
            .fetchone()
        )
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ lookalikes

    def lookalike(self, name: str) -> LookalikeRecord | None:
        row = (
            self._conn()
            .execute("SELECT name, seed_audience, target_size, segment_id FROM lookalikes WHERE name = ?", (name,))
            .fetchone()
        )
        return None if row is None else LookalikeRecord(row[0], row[1], int(row[2]), row[3])

    def want_lookalike(self, name: str, seed_audience: str, target_size: int) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO lookalikes (name, seed_audience, target_size) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, seed_audience, target_size),
            )

    def lookalikes_to_create(self) -> list[LookalikeRecord]:
        rows = (
            self._conn()
            .execute("SELECT name, seed_audience, target_size, segment_id FROM lookalikes WHERE segment_id IS NULL")
            .fetchall()
        )
        return [LookalikeRecord(r[0], r[1], int(r[2]), r[3]) for r in rows]

    def lookalike_created(self, name: str, segment_id: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE lookalikes SET segment_id = ?, created_at = ? WHERE name = ? AND segment_id IS NULL",
                (segment_id, now, name),
            )

    # ------------------------------------------------------------------ jobs

    def job(self, name: str) -> JobRecord | None:
        row = (
            self._conn()
            .execute("SELECT name, last_run_at, last_result, next_run_at FROM jobs WHERE name = ?", (name,))
            .fetchone()
        )
        return None if row is None else JobRecord(row[0], row[1], row[2], row[3])

    def jobs(self) -> list[JobRecord]:
        rows = self._conn().execute("SELECT name, last_run_at, last_result, next_run_at FROM jobs ORDER BY name")
        return [JobRecord(r[0], r[1], r[2], r[3]) for r in rows.fetchall()]

    def schedule_job(self, name: str, next_run_at: float) -> None:
        """Register a job (keeping its schedule when it is known already)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (name, next_run_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, next_run_at)
            )

    def job_ran(self, name: str, ran_at: float, result: str, next_run_at: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (name, last_run_at, last_result, next_run_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET last_run_at = excluded.last_run_at, "
                "last_result = excluded.last_result, next_run_at = excluded.next_run_at",
                (name, ran_at, result[:500], next_run_at),
            )
