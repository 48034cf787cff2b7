"""PostgreSQL store, commerce part: the Events API and catalog queues (EventsQueue, CatalogQueue).

On SQLite these claims live in memory (one process owns the file); here they are columns of the
rows (`claim_until`, `claim_holder`), taken with `UPDATE ... WHERE` over rows locked with `SKIP
LOCKED`, so each document and each batch is sent by one process, and the claims of a process that
dies are free once its holder row stops being renewed (segcrit.store.postgres). A due read leaves
out rows another live holder claims; a settle ends this holder's claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from segcrit.domain import CatalogStats, OpenBatch, PendingEvent, PendingProduct
from segcrit.store.postgres_base import PgBase, new_dead_letter

_UNCLAIMED = (
    "(claim_until IS NULL OR claim_until <= %(dbnow)s OR NOT EXISTS (SELECT 1 FROM "
    "claim_holders h WHERE h.id = claim_holder AND h.alive_until > extract(epoch FROM statement_timestamp())))"
)
# Settles touch this holder's claims and rows nobody alive claims, never another's live claim.
_NOT_OTHERS = (
    "(claim_holder IS NULL OR claim_holder = %(me)s OR claim_until <= %(dbnow)s OR NOT EXISTS (SELECT 1 FROM "
    "claim_holders h WHERE h.id = claim_holder AND h.alive_until > extract(epoch FROM statement_timestamp())))"
)


class CommerceStoreMixin(PgBase):
    holder: str

    def _ensure_holder(self) -> None:
        raise NotImplementedError  # provided by PostgresStore

    def _claim_params(self, now: float) -> dict[str, Any]:
        return {"me": self.holder, "dbnow": self.db_time(now)}

    # ------------------------------------------------------------------ Events API

    def due_events(self, now: float, limit: int) -> list[PendingEvent]:
        rows = self._rows(
            "SELECT id, person, header, body, created_at, attempts, first_failure FROM criteo_events "
            f"WHERE dead_letter_id IS NULL AND next_at <= %(now)s AND {_UNCLAIMED} "
            "ORDER BY created_at, id LIMIT %(limit)s",
            {**self._claim_params(now), "now": now, "limit": limit},
        )
        return [PendingEvent(r[0], r[1], orjson.loads(r[2]), orjson.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    def claim_criteo_events(self, ids: Sequence[int], now: float, until: float) -> list[int]:
        self._ensure_holder()
        rows = self._retrying(
            lambda conn: conn.execute(
                "UPDATE criteo_events SET claim_until = %(until)s, claim_holder = %(me)s WHERE id IN (SELECT id "
                "FROM criteo_events WHERE id = ANY(%(ids)s) AND dead_letter_id IS NULL AND "
                f"{_UNCLAIMED} ORDER BY id FOR UPDATE SKIP LOCKED) "
                "RETURNING id",
                {**self._claim_params(now), "ids": list(ids), "until": self.db_time(until)},
            ).fetchall()
        )
        claimed = {int(r[0]) for r in rows}
        return [i for i in dict.fromkeys(ids) if i in claimed]

    def events_sent(self, ids: Sequence[int]) -> None:
        """Criteo accepted them: they leave the queue (whoever claims them now: they were sent)."""
        self._retrying(lambda conn: conn.execute("DELETE FROM criteo_events WHERE id = ANY(%s)", (sorted(ids),)))

    def defer_events(self, ids: Sequence[int], next_at: float, now: float) -> None:
        self._retrying(
            lambda conn: conn.execute(
                "UPDATE criteo_events SET attempts = attempts + 1, next_at = %(next_at)s, "
                "first_failure = coalesce(first_failure, %(now)s), claim_until = NULL, claim_holder = NULL "
                f"WHERE id = ANY(%(ids)s) AND {_NOT_OTHERS}",
                {**self._claim_params(now), "ids": sorted(ids), "next_at": next_at, "now": now},
            )
        )

    def dead_letter_events(self, ids: Sequence[int], status: int | None, error: str, now: float) -> int:
        def park(conn: psycopg.Connection[Any]) -> int:
            letter = new_dead_letter(conn, "events", "events", "send", "document", len(ids), status, error, now)
            conn.execute(
                "UPDATE criteo_events SET dead_letter_id = %(letter)s, claim_until = NULL, claim_holder = NULL "
                f"WHERE id = ANY(%(ids)s) AND {_NOT_OTHERS}",
                {**self._claim_params(now), "ids": sorted(ids), "letter": letter},
            )
            return letter

        return self._retrying(park)

    def pending_event_count(self) -> int:
        return int(self._value("SELECT count(*) FROM criteo_events WHERE dead_letter_id IS NULL"))

    # ------------------------------------------------------------------ catalog

    def due_products(self, merchant_id: str, now: float, limit: int) -> list[PendingProduct]:
        rows = self._rows(
            "SELECT merchant_id, product_id, fields, fingerprint, updated_at, attempts, first_failure "
            "FROM products WHERE merchant_id = %(merchant)s AND missing IS NULL AND batch_token IS NULL "
            "AND dead_letter_id IS NULL AND (sent_fingerprint IS NULL OR sent_fingerprint != fingerprint) "
            f"AND next_at <= %(now)s AND {_UNCLAIMED} "
            "ORDER BY updated_at LIMIT %(limit)s",
            {**self._claim_params(now), "merchant": merchant_id, "now": now, "limit": limit},
        )
        return [PendingProduct(r[0], r[1], orjson.loads(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def claim_products(self, merchant_id: str, product_ids: Sequence[str], now: float, until: float) -> list[str]:
        self._ensure_holder()
        rows = self._retrying(
            lambda conn: conn.execute(
                "UPDATE products SET claim_until = %(until)s, claim_holder = %(me)s WHERE (merchant_id, product_id) "
                "IN (SELECT merchant_id, product_id FROM products WHERE merchant_id = %(merchant)s "
                f"AND product_id = ANY(%(ids)s) AND {_UNCLAIMED} "
                "ORDER BY product_id FOR UPDATE SKIP LOCKED) RETURNING product_id",
                {
                    **self._claim_params(now),
                    "merchant": merchant_id,
                    "ids": list(product_ids),
                    "until": self.db_time(until),
                },
            ).fetchall()
        )
        claimed = {str(r[0]) for r in rows}
        return [p for p in dict.fromkeys(product_ids) if p in claimed]

    def open_batch(
        self, token: str, merchant_id: str, products: Sequence[tuple[str, str]], now: float, poll_at: float
    ) -> None:
        """Criteo accepted the batch: its products are in it (whoever claims them now)."""

        def record(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "INSERT INTO catalog_batches (token, merchant_id, created_at, products, next_poll) "
                "VALUES (%s, %s, %s, %s, %s)",
                (token, merchant_id, now, orjson.dumps([list(p) for p in products]), poll_at),
            )
            conn.execute(
                "UPDATE products SET batch_token = %s, attempts = 0, next_at = 0, first_failure = NULL, "
                "claim_until = NULL, claim_holder = NULL WHERE merchant_id = %s AND product_id = ANY(%s)",
                (token, merchant_id, sorted(pid for pid, _ in products)),
            )

        self._retrying(record)

    def batches_to_poll(self, now: float, until: float) -> list[OpenBatch]:
        self._ensure_holder()
        rows = self._retrying(
            lambda conn: conn.execute(
                "UPDATE catalog_batches SET claim_until = %(until)s, claim_holder = %(me)s WHERE token IN (SELECT "
                f"token FROM catalog_batches WHERE next_poll <= %(now)s AND "
                f"{_UNCLAIMED} ORDER BY token FOR UPDATE SKIP LOCKED) "
                "RETURNING token, merchant_id, created_at, products, polls, next_poll",
                {**self._claim_params(now), "now": now, "until": self.db_time(until)},
            ).fetchall()
        )
        return [_open_batch(r) for r in sorted(rows, key=lambda r: (r[5], r[0]))]

    def open_batches(self, limit: int) -> list[OpenBatch]:
        rows = self._rows(
            "SELECT token, merchant_id, created_at, products, polls FROM catalog_batches ORDER BY created_at LIMIT %s",
            (limit,),
        )
        return [_open_batch(r) for r in rows]

    def batch_polled(self, token: str, next_poll: float) -> None:
        self._retrying(
            lambda conn: conn.execute(
                "UPDATE catalog_batches SET polls = polls + 1, next_poll = %s, claim_until = NULL, claim_holder = NULL "
                "WHERE token = %s",
                (next_poll, token),
            )
        )

    def close_batch(self, batch: OpenBatch, errors: dict[str, str], now: float, *, failed: bool = False) -> None:
        """The report is final: record each product's outcome; a failed batch is sent again."""
        ids = sorted(product_id for product_id, _ in batch.products)

        def close(conn: psycopg.Connection[Any]) -> None:
            if failed:
                conn.execute(
                    "UPDATE products SET batch_token = NULL WHERE merchant_id = %s AND product_id = ANY(%s) "
                    "AND batch_token = %s",
                    (batch.merchant_id, ids, batch.token),
                )
            else:
                fingerprints = dict(batch.products)
                outcome = {pid: errors.get(pid.lower()) or errors.get(pid) for pid in ids}
                conn.execute(
                    "UPDATE products p SET batch_token = NULL, sent_fingerprint = u.fingerprint, "
                    "status = CASE WHEN u.error IS NULL THEN 'accepted' ELSE 'error' END, errors = u.error "
                    "FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(product_id, fingerprint, error) "
                    "WHERE p.merchant_id = %s AND p.product_id = u.product_id AND p.batch_token = %s",
                    (
                        ids,
                        [fingerprints[pid] for pid in ids],
                        [outcome[pid] for pid in ids],
                        batch.merchant_id,
                        batch.token,
                    ),
                )
            conn.execute("DELETE FROM catalog_batches WHERE token = %s", (batch.token,))

        self._retrying(close)

    def defer_products(self, merchant_id: str, product_ids: Sequence[str], next_at: float, now: float) -> None:
        self._retrying(
            lambda conn: conn.execute(
                "UPDATE products SET attempts = attempts + 1, next_at = %(next_at)s, "
                "first_failure = coalesce(first_failure, %(now)s), claim_until = NULL, claim_holder = NULL "
                f"WHERE merchant_id = %(merchant)s AND product_id = ANY(%(ids)s) AND {_NOT_OTHERS}",
                {
                    **self._claim_params(now),
                    "merchant": merchant_id,
                    "ids": sorted(product_ids),
                    "next_at": next_at,
                    "now": now,
                },
            )
        )

    def dead_letter_products(
        self, merchant_id: str, product_ids: Sequence[str], status: int | None, error: str, now: float
    ) -> int:
        def park(conn: psycopg.Connection[Any]) -> int:
            letter = new_dead_letter(
                conn, "catalog", f"catalog:{merchant_id}", "insert", "product", len(product_ids), status, error, now
            )
            conn.execute(
                "UPDATE products SET dead_letter_id = %(letter)s, claim_until = NULL, claim_holder = NULL "
                f"WHERE merchant_id = %(merchant)s AND product_id = ANY(%(ids)s) AND {_NOT_OTHERS}",
                {**self._claim_params(now), "merchant": merchant_id, "ids": sorted(product_ids), "letter": letter},
            )
            return letter

        return self._retrying(park)

    def catalog_stats(self) -> CatalogStats:
        row = self._row(
            "SELECT count(*), count(*) FILTER (WHERE status = 'accepted'), count(*) FILTER (WHERE status = 'error'), "
            "count(*) FILTER (WHERE missing IS NULL AND batch_token IS NULL AND dead_letter_id IS NULL "
            "AND (sent_fingerprint IS NULL OR sent_fingerprint != fingerprint)), "
            "count(*) FILTER (WHERE batch_token IS NOT NULL) FROM products"
        )
        reasons = dict(self._rows("SELECT missing, count(*) FROM products WHERE missing IS NOT NULL GROUP BY missing"))
        values = [int(v or 0) for v in row] if row else [0] * 5
        return CatalogStats(
            values[0], values[1], values[2], values[3], values[4], {k: int(v) for k, v in reasons.items()}
        )

    def product_errors(self, limit: int = 20) -> list[tuple[str, str, str]]:
        rows = self._rows(
            "SELECT merchant_id, product_id, errors FROM products WHERE status = 'error' "
            "ORDER BY updated_at DESC LIMIT %s",
            (limit,),
        )
        return [(r[0], r[1], r[2]) for r in rows]


def _open_batch(row: Sequence[Any]) -> OpenBatch:
    return OpenBatch(row[0], row[1], row[2], [(p[0], p[1]) for p in orjson.loads(row[3])], row[4])
