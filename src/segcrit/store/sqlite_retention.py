"""SQLite store, retention part: pruning, set-aside events, erasure of waiting events.

Nothing grows without bound (SPEC §8): every table is drained by the work that reads it or has a
retention rule applied here, from the scheduler's housekeeping (docs/architecture.md lists each
table with its rule). Pruning runs in small transactions (`RETENTION_BATCH` rows), each after
`give_way_to_ingest`, so that it never holds the write lock long enough to delay an ingest ack;
its commits skip the fsync (a prune lost to a power cut is done again).

Mixed into SqliteStore like `sqlite_commerce` and `sqlite_cohorts`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final

import orjson

from segcrit.domain import (
    DROPPED_DEAD_LETTERS,
    DROPPED_FAILED_EVENTS,
    WAITING_PLACES,
    FailedEvent,
    InboxEvent,
    WaitingPlace,
)

if TYPE_CHECKING:
    from segcrit.store.sqlite import SqliteTx

RETENTION_BATCH: Final = 1_000  # rows per pruning transaction
PROFILE_BATCH: Final = 200  # profiles per erasure transaction (each is a dozen statements)

# Counters kept in `meta` (so that `segcrit status` shows them across restarts): DROPPED_*.
_ANONYMOUS_CURSOR: Final = "retention.anonymous_cursor"  # "last_seen_at id" scanned up to


class RetentionStoreMixin:
    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError  # provided by SqliteStore

    def _write(self, *, durable: bool = True, proves_space: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by SqliteStore

    def transaction(self, *, proves_space: bool = True) -> AbstractContextManager[SqliteTx]:
        raise NotImplementedError  # provided by SqliteStore

    def give_way_to_ingest(self) -> None:
        raise NotImplementedError  # provided by SqliteStore

    # ------------------------------------------------------------------ dedupe window

    def prune_seen(self, older_than: float, batch: int = RETENTION_BATCH) -> int:
        """Forget (source, messageId) pairs seen before `older_than`, about `batch` per transaction;
        returns how many. The cut of each transaction is a `seen_at` read through the index, so a
        batch may run over by the messages of one request (they share their receipt time)."""
        pruned = 0
        while True:
            self.give_way_to_ingest()
            with self._write(durable=False) as conn:
                row = conn.execute(
                    "SELECT seen_at FROM seen WHERE seen_at < ? ORDER BY seen_at LIMIT 1 OFFSET ?",
                    (older_than, batch - 1),
                ).fetchone()
                if row is None:  # the last (partial) batch
                    return pruned + conn.execute("DELETE FROM seen WHERE seen_at < ?", (older_than,)).rowcount
                pruned += conn.execute("DELETE FROM seen WHERE seen_at <= ?", (row[0],)).rowcount

    # ------------------------------------------------------------------ set-aside events

    def prune_failed_events(self, failed_before: float, batch: int = RETENTION_BATCH) -> int:
        """Drop events set aside before `failed_before` (retention.failed_events_days), counted."""
        dropped = 0
        while True:
            self.give_way_to_ingest()
            with self._write(durable=False) as conn:
                count = conn.execute(
                    "DELETE FROM failed_events WHERE seq IN "
                    "(SELECT seq FROM failed_events WHERE failed_at < ? ORDER BY failed_at LIMIT ?)",
                    (failed_before, batch),
                ).rowcount
                _add_count(conn, DROPPED_FAILED_EVENTS, count)
            dropped += count
            if count < batch:
                return dropped

    def failed_events(self, limit: int = 10) -> list[FailedEvent]:
        """The events set aside most recently, newest first."""
        rows = (
            self._conn()
            .execute(
                "SELECT seq, source, received_at, failed_at, error, body FROM failed_events "
                "ORDER BY failed_at DESC, seq DESC LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [FailedEvent(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5])) for r in rows]

    def replay_failed_events(self, batch: int = RETENTION_BATCH) -> int:
        """Put every set-aside event back at the end of the inbox, in its original order."""
        moved = 0
        while True:
            self.give_way_to_ingest()
            with self._write() as conn:
                rows = conn.execute(
                    "SELECT seq, source, received_at, body FROM failed_events ORDER BY seq LIMIT ?", (batch,)
                ).fetchall()
                conn.executemany(
                    "INSERT INTO inbox (source, received_at, body) VALUES (?, ?, ?)", [r[1:] for r in rows]
                )
                conn.executemany("DELETE FROM failed_events WHERE seq = ?", [(r[0],) for r in rows])
            moved += len(rows)
            if len(rows) < batch:
                return moved

    # ------------------------------------------------------------------ dead letters

    def drop_dead_letters(self, created_before: float, batch: int = RETENTION_BATCH) -> int:
        """Drop dead letters created before `created_before` (retention.dead_letters_days), with
        the work they parked; returns how many had never been replayed (those are counted).

        What a dropped dead letter parked is given up, except what Criteo must still receive: an
        audience addition is forgotten (the person's next event asks for it again), an audience
        removal goes back on the queue, an Events API document is deleted, a product is sent
        again only when its data changes.
        """
        dropped = 0
        while True:
            self.give_way_to_ingest()
            with self._write(durable=False) as conn:
                # Ids grow with time: the oldest dead letter is the first, and when it is recent
                # enough, all the others are too.
                row = conn.execute(
                    "SELECT id, created_at, replayed_at FROM dead_letters ORDER BY id LIMIT 1"
                ).fetchone()
                if row is None or row[1] >= created_before:
                    return dropped
                letter, _, replayed_at = row
                if _release_parked(conn, letter, batch) < batch:  # nothing of it is left
                    conn.execute("DELETE FROM dead_letters WHERE id = ?", (letter,))
                    if replayed_at is None:
                        _add_count(conn, DROPPED_DEAD_LETTERS, 1)
                        dropped += 1

    def dropped_counts(self) -> dict[str, int]:
        """How many dead letters and set-aside events retention has dropped, ever."""
        rows = self._conn().execute(
            "SELECT key, value FROM meta WHERE key IN (?, ?)", (DROPPED_DEAD_LETTERS, DROPPED_FAILED_EVENTS)
        )
        counts = {DROPPED_DEAD_LETTERS: 0, DROPPED_FAILED_EVENTS: 0}
        counts.update({key: int(value) for key, value in rows})
        return counts

    # ------------------------------------------------------------------ anonymous profiles

    def erase_anonymous_profiles(self, unseen_since: float, now: float, batch: int = PROFILE_BATCH) -> int:
        """Erase profiles known only by anonymousIds and not seen since `unseen_since`
        (retention.anonymous_profiles_days), with their rows; returns how many.

        No tombstone: a visitor who comes back starts a fresh profile. The scan resumes from a
        cursor on (last_seen_at, id) kept in `meta`: a profile's last_seen_at only grows, so what
        lies behind the cursor was looked at already, and identified profiles are not read again
        on every run.
        """
        erased = 0
        while True:
            self.give_way_to_ingest()
            with self.transaction(proves_space=False) as tx:  # mostly deletes
                cursor = _read_cursor(tx.conn)
                # Read inside the write transaction: a profile seen meanwhile is not erased.
                rows = tx.conn.execute(
                    "SELECT id, last_seen_at, NOT EXISTS (SELECT 1 FROM identifiers i "
                    "WHERE i.profile_id = p.id AND i.kind != 'anonymous_id') FROM profiles p "
                    "WHERE (last_seen_at, id) > (?, ?) AND last_seen_at < ? ORDER BY last_seen_at, id LIMIT ?",
                    (*cursor, unseen_since, batch),
                ).fetchall()
                for profile_id, _, anonymous in rows:
                    if anonymous:
                        tx.erase_profile(profile_id, now, set())
                        erased += 1
                if rows:
                    _write_cursor(tx.conn, rows[-1][1], rows[-1][0])
            if len(rows) < batch:
                return erased

    # ------------------------------------------------------------------ erasure of waiting events

    def pending_erasures(self, limit: int) -> dict[tuple[str, str], float]:
        """Deleted identifiers whose waiting events are still to be erased: (kind, value) -> deleted at."""
        rows = self._conn().execute("SELECT kind, value, deleted_at FROM erasures LIMIT ?", (limit,)).fetchall()
        return {(r[0], r[1]): float(r[2]) for r in rows}

    def erasures_done(self, erasures: Mapping[tuple[str, str], float]) -> None:
        """The waiting events of these deletions are erased (a newer deletion of one stays pending)."""
        with self._write() as conn:
            conn.executemany(
                "DELETE FROM erasures WHERE kind = ? AND value = ? AND deleted_at <= ?",
                [(kind, value, at) for (kind, value), at in erasures.items()],
            )

    def waiting_events(self, place: WaitingPlace, after_seq: int, limit: int) -> list[InboxEvent]:
        """One page of the events waiting in `place`, in seq order after `after_seq`."""
        rows = (
            self._conn()
            .execute(
                f"SELECT seq, source, received_at, body FROM {_waiting(place)} WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
            .fetchall()
        )
        return [InboxEvent(seq=r[0], source=r[1], received_at=r[2], message=orjson.loads(r[3])) for r in rows]

    def delete_waiting_events(self, place: WaitingPlace, seqs: Sequence[int]) -> None:
        self.give_way_to_ingest()
        with self._write() as conn:
            conn.executemany(f"DELETE FROM {_waiting(place)} WHERE seq = ?", [(s,) for s in seqs])


def _waiting(place: WaitingPlace) -> str:
    """The table of a waiting place (one of two names, which go into SQL)."""
    if place not in WAITING_PLACES:
        raise ValueError(f"not a place where events wait: {place!r}")
    return place


def _add_count(conn: sqlite3.Connection, key: str, count: int) -> None:
    if count:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(meta.value AS INTEGER) + CAST(excluded.value AS INTEGER)",
            (key, str(count)),
        )


def _read_cursor(conn: sqlite3.Connection) -> tuple[float, int]:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_ANONYMOUS_CURSOR,)).fetchone()
    if row is None:
        return (float("-inf"), 0)
    seen, profile_id = row[0].split()
    return (float(seen), int(profile_id))


def _write_cursor(conn: sqlite3.Connection, last_seen_at: float, profile_id: int) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (_ANONYMOUS_CURSOR, f"{last_seen_at!r} {profile_id}"),
    )


def _release_parked(conn: sqlite3.Connection, letter: int, limit: int) -> int:
    """Release up to `limit` rows the dead letter parked (see `drop_dead_letters`); returns how many."""
    targets = conn.execute(
        "SELECT audience, id_type, id_value, acked FROM targets WHERE dead_letter_id = ? LIMIT ?", (letter, limit)
    ).fetchall()
    conn.executemany(
        "DELETE FROM targets WHERE audience = ? AND id_type = ? AND id_value = ?", [t[:3] for t in targets if not t[3]]
    )
    conn.executemany(
        "UPDATE targets SET dead_letter_id = NULL, attempts = 0, next_at = 0, first_failure = NULL "
        "WHERE audience = ? AND id_type = ? AND id_value = ?",
        [t[:3] for t in targets if t[3]],
    )
    released = len(targets)
    released += conn.execute(
        "DELETE FROM criteo_events WHERE id IN (SELECT id FROM criteo_events WHERE dead_letter_id = ? LIMIT ?)",
        (letter, limit - released),
    ).rowcount
    products = conn.execute(
        "SELECT merchant_id, product_id FROM products WHERE dead_letter_id = ? LIMIT ?", (letter, limit - released)
    ).fetchall()
    conn.executemany(
        "UPDATE products SET dead_letter_id = NULL, sent_fingerprint = fingerprint, attempts = 0, next_at = 0, "
        "first_failure = NULL WHERE merchant_id = ? AND product_id = ?",
        products,
    )
    return released + len(products)
