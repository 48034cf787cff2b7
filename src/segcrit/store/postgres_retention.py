"""PostgreSQL store, retention part: pruning, set-aside events, erasure of waiting events.

As on SQLite (docs/architecture.md, "Retention"): every table is drained by the work that reads it
or pruned here by housekeeping, in small transactions (`RETENTION_BATCH` rows) so that no prune
holds locks long; ingest never waits for them (it only inserts). Only the process holding the
housekeeping lease runs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

import orjson
import psycopg

from segcrit.domain import (
    DROPPED_DEAD_LETTERS,
    DROPPED_FAILED_EVENTS,
    WAITING_PLACES,
    FailedEvent,
    InboxEvent,
    WaitingPlace,
)
from segcrit.store.postgres_base import PgBase
from segcrit.store.postgres_tx import PgTx

RETENTION_BATCH: Final = 1_000
PROFILE_BATCH: Final = 200
_ANONYMOUS_CURSOR: Final = "retention.anonymous_cursor"


class RetentionStoreMixin(PgBase):
    def transaction(self) -> AbstractContextManager[PgTx]:
        raise NotImplementedError  # provided by PostgresStore

    # ------------------------------------------------------------------ dedupe window

    def prune_seen(self, older_than: float, batch: int = RETENTION_BATCH) -> int:
        pruned = 0
        while True:
            with self._write() as conn:
                count = conn.execute(
                    "DELETE FROM seen WHERE (source, message_id) IN (SELECT source, message_id FROM seen "
                    "WHERE seen_at < %s ORDER BY seen_at LIMIT %s)",
                    (older_than, batch),
                ).rowcount
            pruned += count
            if count < batch:
                return pruned

    # ------------------------------------------------------------------ set-aside events

    def prune_failed_events(self, failed_before: float, batch: int = RETENTION_BATCH) -> int:
        dropped = 0
        while True:
            with self._write() as conn:
                count = conn.execute(
                    "DELETE FROM failed_events WHERE seq IN "
                    "(SELECT seq FROM failed_events WHERE failed_at < %s ORDER BY failed_at LIMIT %s)",
                    (failed_before, batch),
                ).rowcount
                _add_count(conn, DROPPED_FAILED_EVENTS, count)
            dropped += count
            if count < batch:
                return dropped

    def failed_events(self, limit: int = 10) -> list[FailedEvent]:
        rows = self._rows(
            "SELECT seq, source, received_at, failed_at, error, body FROM failed_events "
            "ORDER BY failed_at DESC, seq DESC LIMIT %s",
            (limit,),
        )
        return [FailedEvent(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5])) for r in rows]

    def replay_failed_events(self, batch: int = RETENTION_BATCH) -> int:
        """Put every set-aside event back at the end of the inbox, in its original order."""
        moved = 0
        while True:
            with self._write() as conn:
                count = conn.execute(
                    "WITH moved AS (DELETE FROM failed_events WHERE seq IN (SELECT seq FROM failed_events "
                    "ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING seq, source, received_at, body) "
                    "INSERT INTO inbox (source, received_at, body) "
                    "SELECT source, received_at, body FROM moved ORDER BY seq",
                    (batch,),
                ).rowcount
            moved += count
            self.inbox_changed(count)
            if count < batch:
                return moved

    # ------------------------------------------------------------------ dead letters

    def drop_dead_letters(self, created_before: float, batch: int = RETENTION_BATCH) -> int:
        """Drop dead letters created before `created_before`, with the work they parked (see
        SqliteStore.drop_dead_letters for what is given up); returns how many were never replayed."""
        dropped = 0
        while True:
            with self._write() as conn:
                row = conn.execute(
                    "SELECT id, created_at, replayed_at FROM dead_letters ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                ).fetchone()
                if row is None or row[1] >= created_before:
                    return dropped
                letter, _, replayed_at = row
                if _release_parked(conn, letter, batch) < batch:
                    conn.execute("DELETE FROM dead_letters WHERE id = %s", (letter,))
                    if replayed_at is None:
                        _add_count(conn, DROPPED_DEAD_LETTERS, 1)
                        dropped += 1

    def dropped_counts(self) -> dict[str, int]:
        rows = self._rows(
            "SELECT key, value FROM meta WHERE key = ANY(%s)", ([DROPPED_DEAD_LETTERS, DROPPED_FAILED_EVENTS],)
        )
        counts = {DROPPED_DEAD_LETTERS: 0, DROPPED_FAILED_EVENTS: 0}
        counts.update({key: int(value) for key, value in rows})
        return counts

    # ------------------------------------------------------------------ anonymous profiles

    def erase_anonymous_profiles(self, unseen_since: float, now: float, batch: int = PROFILE_BATCH) -> int:
        """Erase profiles known only by anonymousIds and not seen since `unseen_since`, resuming
        from a cursor on (last_seen_at, id); each profile is locked and read again before it goes
        (a profile seen meanwhile stays)."""
        erased = 0
        while True:
            with self.transaction() as tx:
                cursor = _read_cursor(tx.conn)
                rows = tx.conn.execute(
                    "SELECT id, last_seen_at FROM profiles WHERE (last_seen_at, id) > (%s, %s) AND last_seen_at < %s "
                    "ORDER BY last_seen_at, id LIMIT %s",
                    (*cursor, unseen_since, batch),
                ).fetchall()
                for profile_id in tx.anonymous_unseen([int(r[0]) for r in rows], unseen_since):
                    tx.erase_profile(profile_id, now, set())
                    erased += 1
                if rows:
                    _write_cursor(tx.conn, rows[-1][1], rows[-1][0])
            if len(rows) < batch:
                return erased

    # ------------------------------------------------------------------ erasure of waiting events

    def pending_erasures(self, limit: int) -> dict[tuple[str, str], float]:
        rows = self._rows("SELECT kind, value, deleted_at FROM erasures LIMIT %s", (limit,))
        return {(r[0], r[1]): float(r[2]) for r in rows}

    def erasures_done(self, erasures: Mapping[tuple[str, str], float]) -> None:
        items = sorted(erasures.items())
        with self._write() as conn:
            conn.execute(
                "DELETE FROM erasures e USING unnest(%s::text[], %s::text[], %s::float8[]) AS d(kind, value, at) "
                "WHERE e.kind = d.kind AND e.value = d.value AND e.deleted_at <= d.at",
                ([k[0] for k, _ in items], [k[1] for k, _ in items], [at for _, at in items]),
            )

    def waiting_events(self, place: WaitingPlace, after_seq: int, limit: int) -> list[InboxEvent]:
        rows = self._rows(
            f"SELECT seq, source, received_at, body FROM {_waiting(place)} WHERE seq > %s ORDER BY seq LIMIT %s",
            (after_seq, limit),
        )
        return [InboxEvent(seq=r[0], source=r[1], received_at=r[2], message=orjson.loads(r[3])) for r in rows]

    def delete_waiting_events(self, place: WaitingPlace, seqs: Sequence[int]) -> None:
        # An inbox event a chunk is applying right now is locked: waiting for it is fine (short).
        with self._write() as conn:
            gone = conn.execute(f"DELETE FROM {_waiting(place)} WHERE seq = ANY(%s)", (sorted(seqs),)).rowcount
        if place == "inbox":
            self.inbox_changed(-gone)


def _waiting(place: WaitingPlace) -> str:
    if place not in WAITING_PLACES:
        raise ValueError(f"not a place where events wait: {place!r}")
    return place


def _add_count(conn: psycopg.Connection[Any], key: str, count: int) -> None:
    if count:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = (meta.value::bigint + excluded.value::bigint)::text",
            (key, str(count)),
        )


def _read_cursor(conn: psycopg.Connection[Any]) -> tuple[float, int]:
    row = conn.execute("SELECT value FROM meta WHERE key = %s", (_ANONYMOUS_CURSOR,)).fetchone()
    if row is None:
        return (float("-inf"), 0)
    seen, profile_id = str(row[0]).split()
    return (float(seen), int(profile_id))


def _write_cursor(conn: psycopg.Connection[Any], last_seen_at: float, profile_id: int) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (_ANONYMOUS_CURSOR, f"{last_seen_at!r} {profile_id}"),
    )


def _release_parked(conn: psycopg.Connection[Any], letter: int, limit: int) -> int:
    """Release up to `limit` rows the dead letter parked; returns how many."""
    released = conn.execute(
        "WITH doomed AS (DELETE FROM targets WHERE (audience, id_type, id_value) IN "
        "(SELECT audience, id_type, id_value FROM targets WHERE dead_letter_id = %s AND acked = 0 "
        "ORDER BY 1, 2, 3 LIMIT %s FOR UPDATE) RETURNING 1) "
        "SELECT count(*) FROM doomed",
        (letter, limit),
    ).fetchone()
    count = int(released[0]) if released else 0
    count += conn.execute(
        "UPDATE targets SET dead_letter_id = NULL, attempts = 0, next_at = 0, first_failure = NULL "
        "WHERE (audience, id_type, id_value) IN (SELECT audience, id_type, id_value FROM targets "
        "WHERE dead_letter_id = %s ORDER BY 1, 2, 3 LIMIT %s FOR UPDATE)",
        (letter, limit - count),
    ).rowcount
    count += conn.execute(
        "DELETE FROM criteo_events WHERE id IN (SELECT id FROM criteo_events WHERE dead_letter_id = %s LIMIT %s)",
        (letter, limit - count),
    ).rowcount
    count += conn.execute(
        "UPDATE products SET dead_letter_id = NULL, sent_fingerprint = fingerprint, attempts = 0, next_at = 0, "
        "first_failure = NULL WHERE (merchant_id, product_id) IN (SELECT merchant_id, product_id FROM products "
        "WHERE dead_letter_id = %s ORDER BY 1, 2 LIMIT %s FOR UPDATE)",
        (letter, limit - count),
    ).rowcount
    return count
