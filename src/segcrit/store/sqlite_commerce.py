"""SQLite store, commerce part: orders, Events API events waiting to be sent, catalog products.

Mixed into SqliteStore (store-level reads and delivery bookkeeping) and SqliteTx (what the
processor writes inside its transaction), so `sqlite.py` keeps the audience core.

Claims (EventsQueue, CatalogQueue): one process owns the file, so the claims on Events API events,
catalog products and batch polls are kept in memory (`MemoryClaims`); a due read leaves claimed
work out, and the write that settles it ends its claim.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Hashable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

import orjson

from segcrit.domain import CatalogStats, OpenBatch, PendingEvent, PendingProduct

K = TypeVar("K", bound=Hashable)


class MemoryClaims(Generic[K]):
    """Claims kept in memory: key -> until. Enough for a store one process owns (SQLite), for work
    whose claim only keeps two senders apart (Events API events, catalog products and polls);
    what a dead process claimed is free again with the next process."""

    def __init__(self) -> None:
        self._until: dict[K, float] = {}
        self._lock = threading.Lock()

    def take(self, keys: Iterable[K], now: float, until: float) -> list[K]:
        """Claim those of `keys` that no claim holds at `now`; returns them."""
        with self._lock:
            self._until = {key: end for key, end in self._until.items() if end > now}
            taken = [key for key in dict.fromkeys(keys) if key not in self._until]
            self._until.update(dict.fromkeys(taken, until))
        return taken

    def held(self, key: K, now: float) -> bool:
        return self._until.get(key, float("-inf")) > now

    def end(self, keys: Iterable[K]) -> None:
        with self._lock:
            for key in keys:
                self._until.pop(key, None)


class CommerceTxMixin:
    conn: sqlite3.Connection

    def record_order(
        self, order_id: str, profile_id: int, ts: float, revenue: float | None, currency: str | None
    ) -> bool:
        """Remember an order once (the first delivery wins); True when it is new."""
        cursor = self.conn.execute(
            "INSERT INTO orders (order_id, profile_id, ts, revenue, currency) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (order_id) DO NOTHING",
            (order_id, profile_id, ts, revenue, currency),
        )
        return cursor.rowcount > 0

    def mark_order_sent(self, order_id: str, now: float) -> bool:
        """Claim the order's one trackTransaction; False when it was already claimed."""
        cursor = self.conn.execute(
            "UPDATE orders SET sent_at = ? WHERE order_id = ? AND sent_at IS NULL", (now, order_id)
        )
        return cursor.rowcount > 0

    def enqueue_event(
        self, person: str, profile_id: int | None, header: dict[str, Any], body: dict[str, Any], now: float
    ) -> None:
        self.conn.execute(
            "INSERT INTO criteo_events (person, profile_id, header, body, created_at) VALUES (?, ?, ?, ?, ?)",
            (person, profile_id, orjson.dumps(header), orjson.dumps(body), now),
        )

    def queued_events(self, person: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(header, body) of the person's events waiting to be sent, oldest first."""
        rows = self.conn.execute(
            "SELECT header, body FROM criteo_events WHERE person = ? AND dead_letter_id IS NULL ORDER BY id",
            (person,),
        ).fetchall()
        return [(orjson.loads(r[0]), orjson.loads(r[1])) for r in rows]

    def product_fields(self, merchant_id: str, product_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT fields FROM products WHERE merchant_id = ? AND product_id = ?", (merchant_id, product_id)
        ).fetchone()
        return None if row is None else dict(orjson.loads(row[0]))

    def save_product(
        self,
        merchant_id: str,
        product_id: str,
        fields: dict[str, Any],
        fingerprint: str,
        missing: str | None,
        now: float,
    ) -> bool:
        """Keep the product's latest data; True when it changed (and so is due to be sent)."""
        cursor = self.conn.execute(
            "INSERT INTO products (merchant_id, product_id, fields, fingerprint, missing, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (merchant_id, product_id) DO UPDATE SET "
            "fields = excluded.fields, fingerprint = excluded.fingerprint, missing = excluded.missing, "
            "updated_at = excluded.updated_at, attempts = 0, next_at = 0, first_failure = NULL "
            "WHERE products.fingerprint != excluded.fingerprint",
            (merchant_id, product_id, orjson.dumps(fields), fingerprint, missing, now),
        )
        return cursor.rowcount > 0

    def drop_events_of(self, profile_id: int) -> int:
        """The person's events not yet sent (waiting or dead-lettered) are dropped; returns how many."""
        cursor = self.conn.execute("DELETE FROM criteo_events WHERE profile_id = ?", (profile_id,))
        return cursor.rowcount

    def forget_commerce(self, profile_id: int) -> None:
        """Erasure: the person's queued events (dead-lettered ones too) and orders go with them.
        A replay of an order older than the erasure is dropped by the tombstone, so the order's
        row is not needed to keep it from being sent twice."""
        self.conn.execute("DELETE FROM criteo_events WHERE profile_id = ?", (profile_id,))
        self.conn.execute("DELETE FROM orders WHERE profile_id = ?", (profile_id,))

    def merge_commerce(self, into: int, other: int) -> None:
        self.conn.execute("UPDATE orders SET profile_id = ? WHERE profile_id = ?", (into, other))
        # One person, one document: the merged profile's waiting events join the survivor's.
        self.conn.execute(
            "UPDATE criteo_events SET profile_id = ?, person = ? WHERE profile_id = ?", (into, str(into), other)
        )


class CommerceStoreMixin:
    _event_claims: MemoryClaims[int]
    _product_claims: MemoryClaims[tuple[str, str]]
    _poll_claims: MemoryClaims[str]

    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError  # provided by SqliteStore

    def _write(self, *, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by SqliteStore

    # ------------------------------------------------------------------ Events API

    def due_events(self, now: float, limit: int) -> list[PendingEvent]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, person, header, body, created_at, attempts, first_failure FROM criteo_events "
                "WHERE dead_letter_id IS NULL AND next_at <= ? ORDER BY created_at, id LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        return [
            PendingEvent(r[0], r[1], orjson.loads(r[2]), orjson.loads(r[3]), r[4], r[5], r[6])
            for r in rows
            if not self._event_claims.held(r[0], now)
        ]

    def claim_criteo_events(self, ids: Sequence[int], now: float, until: float) -> list[int]:
        return self._event_claims.take(ids, now, until)

    def events_sent(self, ids: Sequence[int]) -> None:
        # Not fsynced, like contact-list acknowledgements: lost to a power cut, the documents are
        # sent again with the same event ids (at-least-once), and the window is a commit shorter.
        with self._write(durable=False) as conn:
            conn.executemany("DELETE FROM criteo_events WHERE id = ?", [(i,) for i in ids])
        self._event_claims.end(ids)

    def defer_events(self, ids: Sequence[int], next_at: float, now: float) -> None:
        with self._write() as conn:
            conn.executemany(
                "UPDATE criteo_events SET attempts = attempts + 1, next_at = ?, "
                "first_failure = coalesce(first_failure, ?) WHERE id = ?",
                [(next_at, now, i) for i in ids],
            )
        self._event_claims.end(ids)

    def dead_letter_events(self, ids: Sequence[int], status: int | None, error: str, now: float) -> int:
        with self._write() as conn:
            letter = _new_dead_letter(conn, "events", "events", "send", "document", len(ids), status, error, now)
            conn.executemany("UPDATE criteo_events SET dead_letter_id = ? WHERE id = ?", [(letter, i) for i in ids])
        self._event_claims.end(ids)
        return letter

    def pending_event_count(self) -> int:
        row = self._conn().execute("SELECT count(*) FROM criteo_events WHERE dead_letter_id IS NULL").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ catalog

    def due_products(self, merchant_id: str, now: float, limit: int) -> list[PendingProduct]:
        rows = (
            self._conn()
            .execute(
                "SELECT merchant_id, product_id, fields, fingerprint, updated_at, attempts, first_failure "
                "FROM products WHERE merchant_id = ? AND missing IS NULL AND batch_token IS NULL "
                "AND dead_letter_id IS NULL "
                "AND (sent_fingerprint IS NULL OR sent_fingerprint != fingerprint) AND next_at <= ? "
                "ORDER BY updated_at LIMIT ?",
                (merchant_id, now, limit),
            )
            .fetchall()
        )
        return [
            PendingProduct(r[0], r[1], orjson.loads(r[2]), r[3], r[4], r[5], r[6])
            for r in rows
            if not self._product_claims.held((r[0], r[1]), now)
        ]

    def claim_products(self, merchant_id: str, product_ids: Sequence[str], now: float, until: float) -> list[str]:
        taken = self._product_claims.take([(merchant_id, p) for p in product_ids], now, until)
        return [product_id for _, product_id in taken]

    def open_batch(
        self, token: str, merchant_id: str, products: Sequence[tuple[str, str]], now: float, poll_at: float
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO catalog_batches (token, merchant_id, created_at, products, next_poll) "
                "VALUES (?, ?, ?, ?, ?)",
                (token, merchant_id, now, orjson.dumps([list(p) for p in products]), poll_at),
            )
            conn.executemany(
                "UPDATE products SET batch_token = ?, attempts = 0, next_at = 0, first_failure = NULL "
                "WHERE merchant_id = ? AND product_id = ?",
                [(token, merchant_id, pid) for pid, _ in products],
            )
        self._product_claims.end((merchant_id, pid) for pid, _ in products)

    def batches_to_poll(self, now: float, until: float) -> list[OpenBatch]:
        rows = (
            self._conn()
            .execute(
                "SELECT token, merchant_id, created_at, products, polls FROM catalog_batches WHERE next_poll <= ? "
                "ORDER BY next_poll",
                (now,),
            )
            .fetchall()
        )
        claimed = set(self._poll_claims.take([r[0] for r in rows], now, until))
        return [
            OpenBatch(r[0], r[1], r[2], [(p[0], p[1]) for p in orjson.loads(r[3])], r[4])
            for r in rows
            if r[0] in claimed
        ]

    def open_batches(self, limit: int) -> list[OpenBatch]:
        rows = self._conn().execute(
            "SELECT token, merchant_id, created_at, products, polls FROM catalog_batches ORDER BY created_at LIMIT ?",
            (limit,),
        )
        return [_open_batch(r) for r in rows.fetchall()]

    def batch_polled(self, token: str, next_poll: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE catalog_batches SET polls = polls + 1, next_poll = ? WHERE token = ?", (next_poll, token)
            )
        self._poll_claims.end([token])

    def close_batch(self, batch: OpenBatch, errors: dict[str, str], now: float, *, failed: bool = False) -> None:
        """The report is final: record each product's outcome; a failed batch is sent again."""
        with self._write() as conn:
            for product_id, fingerprint in batch.products:
                if failed:
                    conn.execute(
                        "UPDATE products SET batch_token = NULL WHERE merchant_id = ? AND product_id = ? "
                        "AND batch_token = ?",
                        (batch.merchant_id, product_id, batch.token),
                    )
                    continue
                error = errors.get(product_id.lower()) or errors.get(product_id)
                conn.execute(
                    "UPDATE products SET batch_token = NULL, sent_fingerprint = ?, status = ?, errors = ? "
                    "WHERE merchant_id = ? AND product_id = ? AND batch_token = ?",
                    (fingerprint, "error" if error else "accepted", error, batch.merchant_id, product_id, batch.token),
                )
            conn.execute("DELETE FROM catalog_batches WHERE token = ?", (batch.token,))
        self._poll_claims.end([batch.token])

    def defer_products(self, merchant_id: str, product_ids: Sequence[str], next_at: float, now: float) -> None:
        with self._write() as conn:
            conn.executemany(
                "UPDATE products SET attempts = attempts + 1, next_at = ?, first_failure = coalesce(first_failure, ?) "
                "WHERE merchant_id = ? AND product_id = ?",
                [(next_at, now, merchant_id, pid) for pid in product_ids],
            )
        self._product_claims.end((merchant_id, pid) for pid in product_ids)

    def dead_letter_products(
        self, merchant_id: str, product_ids: Sequence[str], status: int | None, error: str, now: float
    ) -> int:
        with self._write() as conn:
            letter = _new_dead_letter(
                conn, "catalog", f"catalog:{merchant_id}", "insert", "product", len(product_ids), status, error, now
            )
            conn.executemany(
                "UPDATE products SET dead_letter_id = ? WHERE merchant_id = ? AND product_id = ?",
                [(letter, merchant_id, pid) for pid in product_ids],
            )
        self._product_claims.end((merchant_id, pid) for pid in product_ids)
        return letter

    def catalog_stats(self) -> CatalogStats:
        conn = self._conn()
        row = conn.execute(
            "SELECT count(*), sum(status = 'accepted'), sum(status = 'error'), "
            "sum(missing IS NULL AND batch_token IS NULL AND dead_letter_id IS NULL "
            "    AND (sent_fingerprint IS NULL OR sent_fingerprint != fingerprint)), "
            "sum(batch_token IS NOT NULL) FROM products"
        ).fetchone()
        reasons = dict(
            conn.execute("SELECT missing, count(*) FROM products WHERE missing IS NOT NULL GROUP BY missing").fetchall()
        )
        values = [int(v or 0) for v in row] if row else [0] * 5
        return CatalogStats(values[0], values[1], values[2], values[3], values[4], reasons)

    def product_errors(self, limit: int = 20) -> list[tuple[str, str, str]]:
        rows = (
            self._conn()
            .execute(
                "SELECT merchant_id, product_id, errors FROM products WHERE status = 'error' ORDER BY updated_at DESC "
                "LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [(r[0], r[1], r[2]) for r in rows]


def _new_dead_letter(
    conn: sqlite3.Connection,
    kind: str,
    audience: str,
    operation: str,
    id_type: str,
    count: int,
    status: int | None,
    error: str,
    now: float,
) -> int:
    cursor = conn.execute(
        "INSERT INTO dead_letters (kind, created_at, audience, operation, id_type, count, status, error) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (kind, now, audience, operation, id_type, count, status, error[:4000]),
    )
    return int(cursor.lastrowid or 0)


def _open_batch(row: Sequence[Any]) -> OpenBatch:
    return OpenBatch(row[0], row[1], row[2], [(p[0], p[1]) for p in orjson.loads(row[3])], row[4])
