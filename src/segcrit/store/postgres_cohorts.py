"""PostgreSQL store, profile-flow part: cohort facts, suppression and lifecycle reads, lookalikes,
jobs (the writes of traits and suppressions are the unit of work's: segcrit.store.postgres_tx).

Cohort facts are read a page of profiles at a time (keyset pagination on the profile id), each
page in three statements, so a million profiles never sit in memory together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from segcrit.domain import JobRecord, LookalikeRecord, ProfileFacts
from segcrit.store import common as shared
from segcrit.store.postgres_base import PgBase

FACTS_PAGE = 5_000


class CohortStoreMixin(PgBase):
    # ------------------------------------------------------------------ facts

    def facts_pages(self, page: int = FACTS_PAGE) -> Iterator[list[ProfileFacts]]:
        after = 0
        while True:
            rows = self._rows(
                f"SELECT {shared.FACTS_COLUMNS} FROM profiles WHERE id > %s ORDER BY id LIMIT %s", (after, page)
            )
            if not rows:
                return
            first, last = rows[0][0], rows[-1][0]
            facts = shared.profile_facts(rows)
            self._add_orders_and_audiences(facts, first, last)
            yield list(facts.values())
            after = last

    def _add_orders_and_audiences(self, facts: dict[int, ProfileFacts], first: int, last: int) -> None:
        shared.add_orders(
            facts,
            self._rows(
                "SELECT profile_id, count(*), coalesce(sum(revenue), 0), min(ts), max(ts) FROM orders "
                "WHERE profile_id BETWEEN %s AND %s GROUP BY profile_id",
                (first, last),
            ),
        )
        shared.add_audiences(
            facts,
            self._rows(
                "SELECT profile_id, audience FROM memberships WHERE profile_id BETWEEN %s AND %s AND member = 1",
                (first, last),
            ),
        )

    def profile_facts(self, profile_id: int) -> ProfileFacts | None:
        facts = shared.profile_facts(
            self._rows(f"SELECT {shared.FACTS_COLUMNS} FROM profiles WHERE id = %s", (profile_id,))
        )
        if not facts:
            return None
        self._add_orders_and_audiences(facts, profile_id, profile_id)
        return facts[profile_id]

    # ------------------------------------------------------------------ suppression and lifecycle

    def expired_suppressions(self, now: float, limit: int) -> list[tuple[int, str, float]]:
        rows = self._rows(
            "SELECT profile_id, flow, until FROM suppressions WHERE until <= %s ORDER BY until LIMIT %s", (now, limit)
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def suppressed_count(self, flow: str, now: float) -> int:
        return int(self._value("SELECT count(*) FROM suppressions WHERE flow = %s AND until > %s", (flow, now)))

    def dormant_candidates(self, stages: Sequence[str], cutoff: float, limit: int) -> list[tuple[int, float]]:
        rows = self._rows(
            "SELECT DISTINCT m.profile_id, p.last_seen_at FROM memberships m JOIN profiles p ON p.id = m.profile_id "
            "WHERE m.audience = ANY(%s) AND m.member = 1 AND p.last_seen_at < %s LIMIT %s",
            (list(stages), cutoff, limit),
        )
        return [(r[0], r[1]) for r in rows]

    def member_count(self, audience: str) -> int:
        return int(self._value("SELECT count(*) FROM memberships WHERE audience = %s AND member = 1", (audience,)))

    # ------------------------------------------------------------------ lookalikes

    def lookalike(self, name: str) -> LookalikeRecord | None:
        row = self._row("SELECT name, seed_audience, target_size, segment_id FROM lookalikes WHERE name = %s", (name,))
        return None if row is None else LookalikeRecord(row[0], row[1], int(row[2]), row[3])

    def want_lookalike(self, name: str, seed_audience: str, target_size: int) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO lookalikes (name, seed_audience, target_size) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, seed_audience, target_size),
            )

    def lookalikes_to_create(self) -> list[LookalikeRecord]:
        rows = self._rows(
            "SELECT name, seed_audience, target_size, segment_id FROM lookalikes WHERE segment_id IS NULL"
        )
        return [LookalikeRecord(r[0], r[1], int(r[2]), r[3]) for r in rows]

    def lookalike_created(self, name: str, segment_id: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE lookalikes SET segment_id = %s, created_at = %s WHERE name = %s AND segment_id IS NULL",
                (segment_id, now, name),
            )

    # ------------------------------------------------------------------ jobs

    def job(self, name: str) -> JobRecord | None:
        row = self._row("SELECT name, last_run_at, last_result, next_run_at FROM jobs WHERE name = %s", (name,))
        return None if row is None else JobRecord(row[0], row[1], row[2], row[3])

    def jobs(self) -> list[JobRecord]:
        rows = self._rows("SELECT name, last_run_at, last_result, next_run_at FROM jobs ORDER BY name")
        return [JobRecord(r[0], r[1], r[2], r[3]) for r in rows]

    def schedule_job(self, name: str, next_run_at: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (name, next_run_at) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (name, next_run_at),
            )

    def job_ran(self, name: str, ran_at: float, result: str, next_run_at: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (name, last_run_at, last_result, next_run_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET last_run_at = excluded.last_run_at, "
                "last_result = excluded.last_result, next_run_at = excluded.next_run_at",
                (name, ran_at, result[:500], next_run_at),
            )
