"""What the SQLite and PostgreSQL stores share: the caps of the capped tables, the columns they
read and how rows become records. Only the SQL differs between dialects; `mark` is the dialect's
placeholder (`?` or `%s`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from segcrit.domain import (
    AudienceCounts,
    CallRow,
    LookupStats,
    NewCall,
    NewSample,
    ProfileFacts,
    ProfileRecord,
    SampleRow,
)

CALLS_KEPT_PER_ENDPOINT = 500
SAMPLES_KEPT_PER_SOURCE = 100  # accepted, and as many refused, per source
PRUNE_BATCH_MINUTES = 10  # minutes of counters deleted per statement (a few hundred rows)

DEAD_LETTER_COLUMNS = "id, kind, created_at, audience, operation, id_type, count, status, error, replayed_at"
AUDIENCE_COLUMNS = (
    "c.desired, c.acknowledged, c.pending_add, c.pending_remove, c.dead, c.last_sync_at, "
    "a.segment_id, a.auto_create, a.created_by_us"
)
CALL_COLUMNS = "id, at, endpoint, method, path, status, duration_ms, segment_id, audience, summary, answer"
SAMPLE_COLUMNS = "id, at, source, accepted, reason, type, event, body"
INSERT_CALL_COLUMNS = "at, endpoint, method, path, status, duration_ms, segment_id, audience, summary, answer"
INSERT_SAMPLE_COLUMNS = "at, source, accepted, reason, type, event, user_id, anonymous_id, email, body"
PROFILE_COLUMNS = "created_at, last_seen_at, consent, consent_ts, traits"


def audience_counts(name: str, row: Sequence[Any] | None) -> AudienceCounts:
    """A row of AUDIENCE_COLUMNS (None: an audience known by name only)."""
    if row is None:
        return AudienceCounts(name, None, 0, 0, 0, 0, 0, None)
    return AudienceCounts(
        name,
        row[6],
        int(row[0] or 0),
        int(row[1] or 0),
        int(row[2] or 0),
        int(row[3] or 0),
        int(row[4] or 0),
        row[5],
        bool(row[7]) if row[7] is not None else True,
        bool(row[8]),
    )


def call_row(r: Sequence[Any]) -> CallRow:
    """A row of CALL_COLUMNS."""
    return CallRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], orjson.loads(r[9]), r[10])


def sample_row(r: Sequence[Any]) -> SampleRow:
    """A row of SAMPLE_COLUMNS."""
    return SampleRow(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], orjson.loads(r[7]))


def call_values(c: NewCall) -> tuple[Any, ...]:
    """INSERT_CALL_COLUMNS of a new call."""
    summary = orjson.dumps(c.summary).decode()
    return (c.at, c.endpoint, c.method, c.path, c.status, c.duration_ms, c.segment_id, c.audience, summary, c.answer)


def sample_values(s: NewSample) -> tuple[Any, ...]:
    """INSERT_SAMPLE_COLUMNS of a new sample."""
    return (
        s.at,
        s.source,
        int(s.accepted),
        s.reason,
        s.type,
        s.event,
        s.user_id,
        s.anonymous_id,
        s.email,
        orjson.dumps(s.body),
    )


def call_filters(
    mark: str, *, endpoint: str | None, audience: str | None, failed: bool | None, before_id: int | None
) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and its parameters for `recent_calls`; `failed`: no answer or not 2xx."""
    where: list[str] = []
    params: list[Any] = []
    for condition, value in (
        ("endpoint = {}", endpoint),
        ("audience = {}", audience),
        ("(status BETWEEN 200 AND 299) = {}", None if failed is None else not failed),
        ("id < {}", before_id),
    ):
        if value is not None:
            where.append(condition.format(mark))
            params.append(value)
    return (f"WHERE {' AND '.join(where)}" if where else ""), params


def sample_filters(mark: str, *, source: str | None, accepted: bool | None) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and its parameters for `samples`."""
    where: list[str] = []
    params: list[Any] = []
    if source is not None:
        where.append(f"source = {mark}")
        params.append(source)
    if accepted is not None:
        where.append(f"accepted = {mark}")
        params.append(int(accepted))
    return (f"WHERE {' AND '.join(where)}" if where else ""), params


def profile_record(
    profile_id: int,
    profile: Sequence[Any],
    identifiers: Sequence[Sequence[Any]],
    memberships: Sequence[Sequence[Any]],
    targets: Sequence[Sequence[Any]],
    suppressions: Sequence[Sequence[Any]],
    orders: Sequence[Any] | None,
    queued: Sequence[Any] | None,
) -> ProfileRecord:
    """One person as the admin pages show them, from the rows of each table (profile: PROFILE_COLUMNS;
    orders: count and revenue; queued: count of Events API documents not dead-lettered)."""
    return ProfileRecord(
        profile_id=profile_id,
        created_at=float(profile[0]),
        last_seen_at=float(profile[1]),
        consent=None if profile[2] is None else bool(profile[2]),
        consent_ts=profile[3],
        traits=orjson.loads(profile[4]) if profile[4] else {},
        identifiers=[(r[0], r[1], bool(r[2])) for r in identifiers],
        memberships=[(r[0], bool(r[1]), float(r[2])) for r in memberships],
        targets=[(r[0], r[1], bool(r[2]), bool(r[3]), r[4] is not None) for r in targets],
        suppressions=[(r[0], float(r[1]), float(r[2])) for r in suppressions],
        orders=int(orders[0]) if orders else 0,
        revenue=float(orders[1] or 0) if orders else 0.0,
        queued_events=int(queued[0]) if queued else 0,
    )


# ---------------------------------------------------------------------------------------- cohorts

FACTS_COLUMNS = "id, created_at, last_seen_at, traits"


def profile_facts(rows: Iterable[Sequence[Any]]) -> dict[int, ProfileFacts]:
    """Profile id -> its facts, from rows of FACTS_COLUMNS; orders and audiences added by `add_orders`
    and `add_audiences`."""
    return {r[0]: ProfileFacts(r[0], r[1], r[2], traits=orjson.loads(r[3]) if r[3] else {}) for r in rows}


def add_orders(facts: dict[int, ProfileFacts], rows: Iterable[Sequence[Any]]) -> None:
    """Rows of (profile id, order count, revenue, first order time, last order time)."""
    for pid, count, revenue, first_at, last_at in rows:
        fact = facts.get(pid)
        if fact is not None:
            fact.order_count, fact.revenue_total = int(count), float(revenue or 0)
            fact.first_order_at, fact.last_order_at = first_at, last_at


def add_audiences(facts: dict[int, ProfileFacts], rows: Iterable[Sequence[Any]]) -> None:
    """Rows of (profile id, audience it is a member of)."""
    members: dict[int, set[str]] = {}
    for pid, audience in rows:
        members.setdefault(pid, set()).add(audience)
    for pid, audiences in members.items():
        if pid in facts:
            facts[pid].audiences = frozenset(audiences)


# ---------------------------------------------------------------------------------------- enrichment

LOOKUP_SOURCE_COLUMNS = "lookup, failing_since, last_error, next_try_at, last_success_at, lookups, requests"


def lookup_stats(
    lookups: Sequence[str],
    outcome_rows: Iterable[Sequence[Any]],
    source_rows: Iterable[Sequence[Any]],
    due: dict[str, int],
) -> list[LookupStats]:
    """Each lookup's figures, from rows of (lookup, outcome or 'waiting', profiles), rows of
    LOOKUP_SOURCE_COLUMNS and the profiles due now per lookup."""
    outcomes: dict[str, dict[str, int]] = {name: {} for name in lookups}
    for name, outcome, count in outcome_rows:
        if name in outcomes:
            outcomes[name][outcome] = int(count)
    sources = {r[0]: r[1:] for r in source_rows}
    stats = []
    for name in lookups:
        failing, error, next_try, success, looked, requests = sources.get(name, (None, None, None, None, 0, 0))
        stats.append(
            LookupStats(
                name,
                sum(outcomes[name].values()),
                due.get(name, 0),
                outcomes[name],
                failing,
                error,
                next_try,
                success,
                int(looked or 0),
                int(requests or 0),
            )
        )
    return stats
