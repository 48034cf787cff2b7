"""PostgreSQL implementation of the store (every role of segcrit.store.base): any number of
processes, on any number of machines, sharing one database (SPEC §7, "Several processes").

What changes from SQLite (docs/architecture.md, "Several processes on PostgreSQL"):

- Ingest: one writer thread per process folds the requests that arrive together into one
  transaction (group commit), as on SQLite; dedupe is `INSERT INTO seen ... ON CONFLICT DO
  NOTHING RETURNING`, so two processes receiving one message store it once. Acknowledged only
  after the commit (synchronous_commit as the server sets it: `on` by default).
- Processing claims inbox chunks with `FOR UPDATE SKIP LOCKED` in the transaction that applies
  them (`claim_chunk`); the unit of work locks the profiles it changes (segcrit.store.postgres_tx).
- Delivery claims rows (contact-list targets, Events API events, catalog products, batch polls)
  with a deadline (`claim_until`, the caller's `until`) and a holder (`claim_holder`, this store
  instance). A claim lasts while its deadline has not passed *and* its holder is alive: every
  store that claims renews its row of `claim_holders` every few seconds, so a process that dies
  (kill -9, a lost machine) frees its claims within `holder_lease_secs` (20 s by default, under
  SPEC §7's 30 s), however long its calls could have taken. A settle (ack, defer, dead letter)
  speaks for this instance's claims only: a late answer to a claim another process has taken
  over records "unknown" and never settles over it (docs/architecture.md, "Lost answers").
- Running totals are deltas folded in every second (no hot row for concurrent transactions to
  queue on); leases and the call budget are on the database's clock (`PgBase.db_time`).
- Schema: migrations from `migrations/postgresql/`, applied by an owner (`segcrit serve`,
  `import`, `resync`, `migrate`) under an advisory lock; other commands never change a shared
  database's schema and refuse one that lacks a migration.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import orjson
import psycopg

from segcrit.clock import Clock
from segcrit.domain import (
    AcceptResult,
    AudienceRecord,
    AudienceStats,
    DeadLetter,
    InboxEvent,
    PendingChange,
    TargetKey,
)
from segcrit.errors import StoreError, StoreUnavailable
from segcrit.ratelimit import RateLimiter, Sleep
from segcrit.store.ingest_rows import IngestRequest, first_seen, inbox_rows, split_fresh
from segcrit.store.migrations import Migration, load_migrations, pending, run_migrations
from segcrit.store.postgres_admin import AdminStoreMixin
from segcrit.store.postgres_base import AUDIENCE_TOTALS, POOL_MAX, lock_keys, new_dead_letter, safe_url
from segcrit.store.postgres_cohorts import CohortStoreMixin
from segcrit.store.postgres_commerce import CommerceStoreMixin
from segcrit.store.postgres_enrichment import EnrichmentStoreMixin
from segcrit.store.postgres_ratelimit import SharedRateLimiter
from segcrit.store.postgres_retention import RetentionStoreMixin
from segcrit.store.postgres_tx import UNKNOWN, PgChunk, PgTx

log = logging.getLogger("segcrit.store")

GROUP_COMMIT_MAX = 256  # ingest requests folded into one transaction at most
REPLAY_BATCH = 5_000  # dead-lettered rows put back per transaction
HOLDER_LEASE_SECS: Final = 20.0  # a holder that has not renewed its row for this long is dead
OUTSTANDING_MAX: Final = 1_000_000  # claimed changes remembered, at most (a few calls' worth)
MAINTENANCE_TICK_SECS: Final = 1.0  # folds of the running totals; heartbeats every lease / 4
OFFSET_EVERY_SECS: Final = 60.0

# A claim that another live holder has on row `t` (its deadline not passed, its holder renewing).
# Parameters: %(me)s (this holder), %(dbnow)s (now on the database's clock).
CLAIMED_BY_OTHER = (
    "coalesce({t}.claim_holder != %(me)s AND {t}.claim_until > %(dbnow)s AND EXISTS (SELECT 1 FROM claim_holders h "
    "WHERE h.id = {t}.claim_holder AND h.alive_until > extract(epoch FROM statement_timestamp())), false)"
)
# Row `t` claimed by nobody alive: free to claim.
UNCLAIMED = (
    "({t}.claim_until IS NULL OR {t}.claim_until <= %(dbnow)s OR NOT EXISTS (SELECT 1 FROM claim_holders h "
    "WHERE h.id = {t}.claim_holder AND h.alive_until > extract(epoch FROM statement_timestamp())))"
)
# How a failed call settles `acked` (see `_settle` for `l.how`): this store's claim goes back to
# what Criteo held before it unless the call may have been applied; any other row becomes unknown
# if the call may have been applied (it may have landed after another process's call), else stays.
_SETTLED_ACKED = (
    "acked = CASE WHEN l.how = 'mine' AND NOT %(applied)s THEN coalesce(t.acked_before, t.acked) "
    "WHEN l.how IN ('late', 'direct') AND %(applied)s THEN 2 ELSE t.acked END"
)
_SETTLED_ACKED_BEFORE = (
    "acked_before = CASE WHEN l.how = 'other' THEN (CASE WHEN %(applied)s THEN 2 ELSE t.acked_before END) "
    "WHEN l.how = 'late' THEN t.acked_before ELSE NULL END"
)
# Lock the rows of one (audience, identifier type) with these values (a batch holds up to 50,000),
# each found by a primary-key probe of its own: the correlated subquery (LIMIT 1: the key is unique)
# is neither flattened into a join nor given the conditions of `where`, so no plan (a table filled
# since its last ANALYZE, a generic plan) can scan a whole audience for each value or compare every
# row with the whole array; either took minutes for one batch. `where` filters the locked rows
# (`r`); statements then reach them by their address (ctid), which the lock keeps until the
# transaction ends. Rows are locked in the order of `values` (sorted).
_LOCK_ROWS = (
    "SELECT r.rid::text, r.id_value{columns} FROM unnest(%(values)s::text[]) AS v(id_value) CROSS JOIN LATERAL "
    "(SELECT x.ctid AS rid, x.* FROM targets x WHERE x.audience = %(audience)s AND x.id_type = %(id_type)s "
    "AND x.id_value = v.id_value LIMIT 1 FOR UPDATE{skip}) r WHERE true {where}"
)
_BY_ADDRESS = "ctid = ANY(%(rids)s::text[]::tid[])"
# Before statements that use _BY_ADDRESS: a table filled since its last ANALYZE looks a few pages
# long, and a sequential scan comparing every row with the whole array then looks cheaper than
# fetching each row by its address (it took minutes for 50,000 rows).
_BY_ADDRESS_ONLY = "SET LOCAL enable_seqscan = off"
_ENDS_CLAIM = (
    "claim_until = CASE WHEN l.how IN ('mine', 'direct') THEN NULL ELSE t.claim_until END, "
    "claim_holder = CASE WHEN l.how IN ('mine', 'direct') THEN NULL ELSE t.claim_holder END"
)
_WITHOUT_HELD_AUDIENCES = (
    "AND NOT EXISTS (SELECT 1 FROM audiences a WHERE a.name = t.audience AND a.held_since IS NOT NULL) "
)
_SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version integer PRIMARY KEY, name text NOT NULL, applied_at double precision NOT NULL)"
)


@dataclass(slots=True)
class _AcceptRequest:
    source: str
    rows: list[tuple[str, bytes]]  # (messageId or "", body)
    received_at: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[AcceptResult]


class PostgresStore(CommerceStoreMixin, CohortStoreMixin, RetentionStoreMixin, EnrichmentStoreMixin, AdminStoreMixin):
    """The store on one PostgreSQL database, shared by any number of processes.

    `owner`: this process runs workers (serve, import, resync, migrate): it applies the pending
    migrations (with `migrate`) and keeps the running totals folded. Other opens refuse a database
    whose schema lacks a migration. `holder_lease_secs`: how soon the claims of a process that
    stopped renewing are free (tests shorten it).
    """

    def __init__(
        self,
        url: str,
        *,
        owner: bool = False,
        migrate: bool = True,
        holder_lease_secs: float = HOLDER_LEASE_SECS,
        pool_max: int = POOL_MAX,
    ) -> None:
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.holder_lease_secs = holder_lease_secs
        self.known_audiences: set[str] = set()
        # Contact-list changes this store claimed and has not settled: a settle of one whose
        # claim another process took over since is a late answer (see `_settle`).
        self._outstanding: set[TargetKey] = set()
        self._claims_lock = threading.Lock()
        self._holder_registered = False
        self._closed = False
        self._writer_queue: queue.SimpleQueue[_AcceptRequest | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._open_pool(url, pool_max, f"segcrit {self.holder}")  # closes what it opened when it fails
        try:
            if owner and migrate:
                self.apply_migrations()
            elif migrate:
                self._refuse_pending()
            if owner:
                self._start_maintenance()
        except BaseException:
            self.close()
            raise

    def _refuse_pending(self) -> None:
        waiting = self.pending_migrations()
        if waiting:
            raise StoreError(
                f"the store's schema lacks {len(waiting)} migration(s) ({waiting[0].label}...): run "
                "`segcrit migrate` (or start `segcrit serve`, which applies them)"
            )

    # ------------------------------------------------------------------ schema

    def pending_migrations(self) -> list[Migration]:
        return pending(load_migrations("postgresql"), self.applied_versions())

    def apply_migrations(self) -> list[Migration]:
        applied = run_migrations(self, load_migrations("postgresql"))
        for migration in applied:
            log.info("schema migrated", extra={"migration": migration.label, "store": safe_url(self.url)})
        return applied

    @contextmanager
    def migration_lock(self) -> Iterator[object]:
        """A session advisory lock, held on a connection of its own while migrating: processes
        starting together migrate one after the other (the later ones find nothing to do)."""
        key = self.lock_key("schema migrations")
        with self._connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield conn
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def applied_versions(self) -> set[int]:
        if self._value("SELECT to_regclass('schema_migrations') IS NOT NULL") is not True:
            return set()
        return {int(row[0]) for row in self._rows("SELECT version FROM schema_migrations")}

    def apply_migration(self, migration: Migration) -> bool:
        with self._write() as conn:
            conn.execute(_SCHEMA_MIGRATIONS)
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)).fetchone():
                return False
            conn.execute(migration.sql.encode())  # no parameters: one script, several statements
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                (migration.version, migration.name, time.time()),
            )
        return True

    # ------------------------------------------------------------------ life

    def lock_key(self, name: str) -> int:
        return lock_keys(self.namespace, [name])[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer_queue.put(None)
            self._writer.join(timeout=10)
        self._stop.set()
        if self._maintenance is not None:
            self._maintenance.join(timeout=10)
        if self._holder_registered:
            # Our claims are calls that will never be answered now: free them at once.
            with contextlib.suppress(Exception), self._write() as conn:
                conn.execute("DELETE FROM claim_holders WHERE id = %s", (self.holder,))
        self._close_pool()

    def _start_maintenance(self) -> None:
        if self._maintenance is None:
            self._maintenance = threading.Thread(target=self._maintain, name="segcrit-store-upkeep", daemon=True)
            self._maintenance.start()

    def _maintain(self) -> None:
        """Heartbeats of this holder, folds of the running totals, the clock offset."""
        beat = max(MAINTENANCE_TICK_SECS, self.holder_lease_secs / 4)
        last_beat = last_offset = time.monotonic()
        while not self._stop.wait(min(MAINTENANCE_TICK_SECS, beat)):
            now = time.monotonic()
            try:
                if self._holder_registered and now - last_beat >= beat:
                    self._renew_holder()
                    last_beat = now
                self.fold_counts()
                if now - last_offset >= OFFSET_EVERY_SECS:
                    self.measure_offset()
                    last_offset = now
            except StoreUnavailable:
                pass  # logged once by the store; tried again at the next tick
            except Exception:
                log.exception("store upkeep failed")

    def _ensure_holder(self) -> None:
        if not self._holder_registered:
            self._renew_holder()
            self._holder_registered = True
            self._start_maintenance()

    def _renew_holder(self) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO claim_holders (id, alive_until, started_at, host) "
                "VALUES (%s, extract(epoch FROM clock_timestamp()) + %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until",
                (self.holder, self.holder_lease_secs, time.time(), socket.gethostname()),
            )
            # Holders dead for a day hold nothing that matters any more.
            conn.execute("DELETE FROM claim_holders WHERE alive_until < extract(epoch FROM clock_timestamp()) - 86400")

    def fold_counts(self) -> None:
        """Move the running totals' deltas into their totals (one process at a time does it)."""
        with self._write() as conn:
            taken = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (self.lock_key("fold counts"),)).fetchone()
            if taken is None or not taken[0]:
                return
            conn.execute(
                "WITH moved AS (DELETE FROM counter_deltas RETURNING name, delta) "
                "INSERT INTO counters (name, value) SELECT name, sum(delta) FROM moved GROUP BY name ORDER BY name "
                "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
            )
            conn.execute(
                "WITH moved AS (DELETE FROM audience_count_deltas RETURNING *) "
                "INSERT INTO audience_counts (audience, desired, acknowledged, pending_add, pending_remove, dead, "
                "last_sync_at) SELECT audience, sum(desired), sum(acknowledged), sum(pending_add), "
                "sum(pending_remove), sum(dead), max(last_sync_at) FROM moved GROUP BY audience ORDER BY audience "
                "ON CONFLICT (audience) DO UPDATE SET desired = audience_counts.desired + excluded.desired, "
                "acknowledged = audience_counts.acknowledged + excluded.acknowledged, "
                "pending_add = audience_counts.pending_add + excluded.pending_add, "
                "pending_remove = audience_counts.pending_remove + excluded.pending_remove, "
                "dead = audience_counts.dead + excluded.dead, "
                "last_sync_at = greatest(audience_counts.last_sync_at, excluded.last_sync_at)"
            )

    # ------------------------------------------------------------------ ingest

    async def accept(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> AcceptResult:
        return await self.submit(source, messages, received_at)

    def submit(
        self, source: str, messages: Sequence[dict[str, Any]], received_at: float
    ) -> asyncio.Future[AcceptResult]:
        if self._closed:
            raise StoreError("store is closed")
        if self._writer is None:
            self._start_writer()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AcceptResult] = loop.create_future()
        self._writer_queue.put(_AcceptRequest(source, inbox_rows(messages), received_at, loop, future))
        return future

    def accept_sync(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> AcceptResult:
        rows = inbox_rows(messages)
        with self._write() as conn:
            result = _insert_messages(conn, [(source, rows, received_at)])[0]
        self.inbox_changed(result.stored)
        return result

    def _start_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._writer_loop, name="segcrit-ingest-writer", daemon=True)
                self._writer.start()

    def _writer_loop(self) -> None:
        while True:
            first = self._writer_queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < GROUP_COMMIT_MAX:
                try:
                    item = self._writer_queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit_group(batch)
            if stop:
                return

    def _commit_group(self, batch: list[_AcceptRequest]) -> None:
        try:
            with self._write() as conn:
                results = _insert_messages(conn, [(r.source, r.rows, r.received_at) for r in batch])
        except Exception as exc:  # the whole group failed: every request gets the error, none is acked
            error = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc}")
            if not isinstance(exc, StoreUnavailable):
                log.error("ingest commit failed", exc_info=exc)
            for request in batch:
                request.loop.call_soon_threadsafe(_set_exception, request.future, error)
            return
        self.inbox_changed(sum(result.stored for result in results))
        for request, result in zip(batch, results, strict=True):
            request.loop.call_soon_threadsafe(_set_result, request.future, result)

    # ------------------------------------------------------------------ processing

    @contextmanager
    def claim_chunk(self, limit: int, *, only: Sequence[int] | None = None) -> Iterator[PgChunk]:
        with self._write() as conn, conn.cursor(binary=True) as cursor:
            # Binary results: the bodies come as they are stored, not as hex text that the server
            # encodes and we decode again (about a kilobyte an event).
            if only is None:
                rows = cursor.execute(
                    "SELECT seq, source, received_at, body FROM inbox ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED",
                    (limit,),
                ).fetchall()
            else:
                rows = cursor.execute(
                    "SELECT seq, source, received_at, body FROM inbox WHERE seq = ANY(%s) ORDER BY seq LIMIT %s "
                    "FOR UPDATE SKIP LOCKED",
                    (list(only), limit),
                ).fetchall()
            chunk = PgChunk(self, conn, [_inbox_event(row) for row in rows])
            yield chunk
            chunk.finish()
        self.inbox_changed(-chunk.left_inbox)

    @contextmanager
    def transaction(self) -> Iterator[PgTx]:
        with self._write() as conn:
            tx = PgTx(self, conn)
            yield tx
            tx.flush()

    @contextmanager
    def dry_run(self) -> Iterator[PgTx]:
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                yield PgTx(self, conn, dry=True)
            finally:
                conn.execute("ROLLBACK")

    # ------------------------------------------------------------------ delivery: reads

    def _pending_rows(self, where: str, params: dict[str, Any]) -> list[PendingChange]:
        rows = self._rows(
            "SELECT audience, id_type, id_value, desired, since, attempts, first_failure FROM targets t "
            f"WHERE t.desired != t.acked AND t.dead_letter_id IS NULL AND t.next_at <= %(now)s AND {where} "
            f"AND {UNCLAIMED.format(t='t')} ORDER BY t.since LIMIT %(limit)s",
            params,
        )
        return [
            PendingChange(TargetKey(r[0], r[1], r[2]), add=bool(r[3]), since=r[4], attempts=r[5], first_failure_at=r[6])
            for r in rows
        ]

    def due_changes(self, now: float, limit: int) -> list[PendingChange]:
        where = "TRUE " + (_WITHOUT_HELD_AUDIENCES if self.held_audience_count() else "")
        return self._pending_rows(where, {"now": now, "dbnow": self.db_time(now), "limit": limit})

    def due_changes_of(self, audience: str, add: bool, id_type: str, now: float, limit: int) -> list[PendingChange]:
        return self._pending_rows(
            "t.audience = %(audience)s AND t.id_type = %(id_type)s AND t.desired = %(add)s",
            {
                "now": now,
                "dbnow": self.db_time(now),
                "limit": limit,
                "audience": audience,
                "id_type": id_type,
                "add": int(add),
            },
        )

    def next_change_at(self) -> float | None:
        value = self._value(
            "SELECT min(greatest(next_at, coalesce(claim_until, 0))) FROM targets "
            "WHERE desired != acked AND dead_letter_id IS NULL"
        )
        return None if value is None else float(value)

    def oldest_pending_since(self) -> float | None:
        extra = _WITHOUT_HELD_AUDIENCES if self.held_audience_count() else ""
        value = self._value(
            f"SELECT min(since) FROM targets t WHERE desired != acked AND dead_letter_id IS NULL {extra}"
        )
        return None if value is None else float(value)

    def pending_count(self) -> int:
        """Changes waiting for delivery, held audiences' included (running totals: no scan)."""
        return int(self._value(f"SELECT coalesce(sum(pending_add + pending_remove), 0) FROM ({AUDIENCE_TOTALS}) c"))

    # ------------------------------------------------------------------ delivery: claims and settles

    def claim_changes(self, keys: Sequence[TargetKey], add: bool, now: float, until: float) -> list[TargetKey]:
        """Claim, in one transaction, the rows still due for this operation that nobody alive
        holds (rows another transaction has locked are skipped, never waited for)."""
        self._ensure_holder()
        groups = _group(keys)

        def claim(conn: psycopg.Connection[Any]) -> list[TargetKey]:
            conn.execute(_BY_ADDRESS_ONLY)
            claimed: list[TargetKey] = []
            for (audience, id_type), values in groups.items():
                params = {
                    "until": self.db_time(until),
                    "me": self.holder,
                    "audience": audience,
                    "id_type": id_type,
                    "values": values,
                    "add": int(add),
                    "now": now,
                    "dbnow": self.db_time(now),
                }
                due = (
                    "AND r.desired = %(add)s AND r.desired != r.acked AND r.dead_letter_id IS NULL "
                    f"AND r.next_at <= %(now)s AND {UNCLAIMED.format(t='r')}"
                )
                locked = conn.execute(
                    _LOCK_ROWS.format(columns="", where=due, skip=" SKIP LOCKED"), params, prepare=False
                ).fetchall()
                if not locked:
                    continue
                rows = conn.execute(
                    f"UPDATE targets SET acked_before = acked, acked = {UNKNOWN}, claim_until = %(until)s, "
                    f"claim_holder = %(me)s WHERE {_BY_ADDRESS} RETURNING id_value",
                    {**params, "rids": [r[0] for r in locked]},
                    prepare=False,
                ).fetchall()
                claimed += [TargetKey(audience, id_type, row[0]) for row in rows]
            return claimed

        taken = self._retrying(claim)
        with self._claims_lock:
            if len(self._outstanding) > OUTSTANDING_MAX:  # calls that never settled (crashed rounds)
                self._outstanding.clear()
            self._outstanding.update(taken)
        return taken

    def _settle(
        self,
        keys: Iterable[TargetKey],
        assignments: str,
        params: dict[str, Any],
        prepare: Callable[[psycopg.Connection[Any]], dict[str, Any]] | None = None,
    ) -> dict[TargetKey, str]:
        """Lock the rows of these keys in key order, then one UPDATE per (audience, identifier type,
        case) over them, all in one transaction (after `prepare`, whose result adds parameters). `assignments`
        decide by what each row is to this store (`l.how`):

        - `mine`: this holder's claim (live or expired, as long as nobody took it over);
        - `late`: this holder claimed it, and another process has taken the claim over since
          (and may have settled it): our answer may land before or after theirs at Criteo;
        - `other`: another process's live claim, which this store never had;
        - `direct`: nobody alive claims it and this store did not: a settle without a claim.

        Returns each row updated with its case."""
        keys = list(keys)
        groups = _group(keys)
        now = params["now"]
        with self._claims_lock:
            outstanding = {key for key in keys if key in self._outstanding}
            self._outstanding.difference_update(keys)

        def settle(conn: psycopg.Connection[Any]) -> dict[TargetKey, str]:
            conn.execute(_BY_ADDRESS_ONLY)
            extra = prepare(conn) if prepare is not None else {}
            done: dict[TargetKey, str] = {}
            for (audience, id_type), values in groups.items():
                group = {
                    **params,
                    **extra,
                    "me": self.holder,
                    "dbnow": self.db_time(now),
                    "audience": audience,
                    "id_type": id_type,
                    "values": values,
                }
                columns = f", coalesce(r.claim_holder = %(me)s, false), {CLAIMED_BY_OTHER.format(t='r')}"
                locked = conn.execute(
                    _LOCK_ROWS.format(columns=columns, where="", skip=""), group, prepare=False
                ).fetchall()
                by_case: dict[str, list[str]] = {}
                for rid, value, mine, other in locked:
                    ours = TargetKey(audience, id_type, value) in outstanding
                    how = "mine" if mine else "other" if other else "late" if ours else "direct"
                    by_case.setdefault(how, []).append(rid)
                rows = [
                    (value, how)
                    for how, rids in sorted(by_case.items())
                    for (value,) in conn.execute(
                        f"UPDATE targets t SET {assignments} FROM (SELECT %(how)s::text AS how) l "
                        f"WHERE t.{_BY_ADDRESS} RETURNING t.id_value",
                        {**group, "how": how, "rids": rids},
                        prepare=False,
                    ).fetchall()
                ]
                done.update((TargetKey(audience, id_type, str(r[0])), str(r[1])) for r in rows)
            return done

        return self._retrying(settle)

    def ack_changes(self, keys: Iterable[TargetKey], add: bool, now: float) -> None:
        """Criteo answered. Rows this holder claimed are settled (as are rows nobody claims); a row
        whose claim another process took over (ours expired) learns that what Criteo holds is
        unknown: our answer may have been applied before or after that process's call."""
        keys = list(keys)
        settled = self._settle(
            keys,
            "acked = CASE WHEN l.how IN ('mine', 'direct') THEN %(acked)s WHEN l.how = 'late' THEN 2 "
            "ELSE t.acked END, "
            "acked_before = CASE WHEN l.how IN ('mine', 'direct') THEN NULL WHEN l.how = 'other' THEN 2 "
            "ELSE t.acked_before END, "
            f"{_ENDS_CLAIM}, "
            "attempts = CASE WHEN l.how IN ('mine', 'direct') THEN 0 ELSE t.attempts END, "
            "next_at = CASE WHEN l.how IN ('mine', 'direct') THEN 0 ELSE t.next_at END, "
            "first_failure = CASE WHEN l.how IN ('mine', 'direct') THEN NULL ELSE t.first_failure END, "
            "since = CASE WHEN l.how IN ('mine', 'direct') AND t.desired != %(acked)s THEN %(now)s ELSE t.since END",
            {"acked": int(add), "now": now},
        )
        late = sum(1 for how in settled.values() if how in ("late", "other"))
        if late:
            log.info("answers to claims taken over by another process: counted as unknown", extra={"changes": late})
        acked = [key for key, how in settled.items() if how in ("mine", "direct")]
        gone = [key for key in keys if key not in settled]
        if (add and not gone) or (not add and not acked):
            return
        with self._write() as conn:
            if add and gone:
                # The row went while the call was in flight (the audience was re-resolved); Criteo
                # holds the identifier all the same, so a new row makes it a pending removal.
                for (audience, id_type), values in _group(gone).items():
                    conn.execute(
                        "INSERT INTO targets (audience, id_type, id_value, desired, acked, since) "
                        "SELECT %s, %s, v, 0, 1, %s FROM unnest(%s::text[]) AS v ORDER BY v ON CONFLICT DO NOTHING",
                        (audience, id_type, now, values),
                    )
            if not add:
                # Neither wanted nor held: the rows carry no information any more.
                for (audience, id_type), values in _group(acked).items():
                    empty = "AND r.desired = 0 AND r.acked = 0 AND r.claim_until IS NULL"
                    params = {"audience": audience, "id_type": id_type, "values": values}
                    locked = conn.execute(
                        _LOCK_ROWS.format(columns="", where=empty, skip=""), params, prepare=False
                    ).fetchall()
                    if locked:
                        conn.execute(_BY_ADDRESS_ONLY)
                        conn.execute(
                            f"DELETE FROM targets WHERE {_BY_ADDRESS}", {"rids": [r[0] for r in locked]}, prepare=False
                        )

    def defer_changes(self, keys: Iterable[TargetKey], next_at: float, now: float, *, maybe_applied: bool) -> None:
        """The call failed: this store's rows are due again at `next_at`, their claim ended, and
        Criteo holds what it held before (unless the call `maybe_applied`: then it is unknown).
        Rows another process claims meanwhile are theirs; a call that may have been applied only
        makes what Criteo holds of them unknown."""
        self._settle(
            keys,
            "attempts = CASE WHEN l.how IN ('mine', 'direct') THEN t.attempts + 1 ELSE t.attempts END, "
            "next_at = CASE WHEN l.how IN ('mine', 'direct') THEN %(next_at)s ELSE t.next_at END, "
            "first_failure = CASE WHEN l.how IN ('mine', 'direct') THEN coalesce(t.first_failure, %(now)s) "
            "ELSE t.first_failure END, "
            f"{_SETTLED_ACKED}, {_SETTLED_ACKED_BEFORE}, {_ENDS_CLAIM}",
            {"next_at": next_at, "now": now, "applied": maybe_applied},
        )

    def dead_letter(
        self,
        keys: Sequence[TargetKey],
        add: bool,
        status: int | None,
        error: str,
        now: float,
        *,
        maybe_applied: bool = False,
    ) -> int:
        """Park these changes under a new dead letter: this store's claimed rows and rows nobody
        alive claims (their claim ends as in `defer_changes`); another process's claims stay."""
        if not keys:
            raise ValueError("a dead letter needs at least one change")
        first = keys[0]
        letters: list[int] = []

        def new_letter(conn: psycopg.Connection[Any]) -> dict[str, Any]:
            operation = "add" if add else "remove"
            letter = new_dead_letter(
                conn, "contact_list", first.audience, operation, first.id_type, len(keys), status, error, now
            )
            letters.append(letter)
            return {"letter": letter}

        self._settle(
            keys,
            "dead_letter_id = CASE WHEN l.how IN ('mine', 'direct') THEN %(letter)s ELSE t.dead_letter_id END, "
            f"{_SETTLED_ACKED}, {_SETTLED_ACKED_BEFORE}, {_ENDS_CLAIM}",
            {"applied": maybe_applied, "now": now},
            new_letter,
        )
        return letters[-1]

    # ------------------------------------------------------------------ dead letters

    def replay_dead_letters(self, audience: str | None, now: float) -> int:
        """Put the open dead letters (of one audience) back on their queues, REPLAY_BATCH rows per
        transaction; returns how many letters."""
        where, params = ("AND audience = %s", (audience,)) if audience else ("", ())
        ids = [
            int(r[0])
            for r in self._rows(f"SELECT id FROM dead_letters WHERE replayed_at IS NULL {where} ORDER BY id", params)
        ]
        left = ids
        while left:
            left = self._retrying(functools.partial(_release_dead_letters, ids=left, now=now))
        return len(ids)

    def dead_letters(self, limit: int = 100, include_replayed: bool = False) -> list[DeadLetter]:
        where = "" if include_replayed else "WHERE replayed_at IS NULL"
        rows = self._rows(
            "SELECT id, created_at, audience, operation, id_type, count, status, error, replayed_at "
            f"FROM dead_letters {where} ORDER BY id DESC LIMIT %s",
            (limit,),
        )
        return [DeadLetter(*r) for r in rows]

    def failed_event_count(self) -> int:
        return int(self._value("SELECT count(*) FROM failed_events"))

    def dead_letter_count(self) -> int:
        return self.counter("dead_letters")

    # ------------------------------------------------------------------ counters

    def counter(self, name: str) -> int:
        """A running total: its row plus the deltas not folded in yet (one snapshot)."""
        return int(
            self._value(
                "SELECT coalesce((SELECT value FROM counters WHERE name = %s), 0) "
                "+ coalesce((SELECT sum(delta) FROM counter_deltas WHERE name = %s), 0)",
                (name, name),
            )
        )

    def counters(self, prefix: str) -> dict[str, int]:
        rows = self._rows(
            "SELECT name, sum(value) FROM (SELECT name, value FROM counters WHERE starts_with(name, %s) "
            "UNION ALL SELECT name, delta FROM counter_deltas WHERE starts_with(name, %s)) c "
            "GROUP BY name ORDER BY name",
            (prefix, prefix),
        )
        return {str(name)[len(prefix) :]: int(value) for name, value in rows}

    # ------------------------------------------------------------------ audiences

    def audience(self, name: str) -> AudienceRecord | None:
        row = self._row(
            "SELECT name, segment_id, auto_create, created_by_us, held_since FROM audiences WHERE name = %s", (name,)
        )
        return None if row is None else AudienceRecord(row[0], row[1], bool(row[2]), bool(row[3]), row[4])

    def audiences(self) -> list[AudienceRecord]:
        rows = self._rows(
            "SELECT name, segment_id, auto_create, created_by_us, held_since FROM audiences ORDER BY name"
        )
        return [AudienceRecord(r[0], r[1], bool(r[2]), bool(r[3]), r[4]) for r in rows]

    def held_audience_count(self) -> int:
        return self.counter("audiences_held")

    def held_audiences(self, limit: int) -> list[tuple[str, float]]:
        rows = self._rows(
            "SELECT name, held_since FROM audiences WHERE held_since IS NOT NULL ORDER BY held_since, name LIMIT %s",
            (limit,),
        )
        return [(str(name), float(since)) for name, since in rows]

    def admit_held_audiences(self, day: int, allowance: int) -> list[str]:
        """Admit the longest-held audiences that `day`'s allowance still has room for (counted
        under the lock `ensure_new_audience` takes, so that no process admits past it)."""

        def admit(conn: psycopg.Connection[Any]) -> list[str]:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key("audience admissions"),))
            used = conn.execute("SELECT count(*) FROM audiences WHERE admitted_day = %s", (day,)).fetchone()
            room = max(0, allowance - int(used[0] if used else 0))
            rows = conn.execute(
                "UPDATE audiences SET held_since = NULL, admitted_day = %s WHERE name IN (SELECT name FROM audiences "
                "WHERE held_since IS NOT NULL ORDER BY held_since, name LIMIT %s FOR UPDATE) RETURNING name",
                (day, room),
            ).fetchall()
            return sorted(str(r[0]) for r in rows)

        return self._retrying(admit)

    def release_audiences(self, names: Iterable[str]) -> list[str]:
        wanted = sorted(set(names))
        if not wanted:
            return []
        rows = self._retrying(
            lambda conn: conn.execute(
                "UPDATE audiences SET held_since = NULL WHERE held_since IS NOT NULL AND name = ANY(%s) RETURNING name",
                (wanted,),
            ).fetchall()
        )
        return [str(r[0]) for r in rows]

    def record_audience(
        self,
        name: str,
        auto_create: bool,
        *,
        now: float | None = None,
        day: int = 0,
        allowance: int = 0,
        conn: psycopg.Connection[Any] | None = None,
    ) -> bool:
        """Record an audience (for the unit of work's `ensure_audience` and `ensure_new_audience`)
        in a short transaction of its own, committed at once: a processing chunk never holds the
        row of a new audience while it waits for something else, which could make two chunks
        that name two new audiences in turn wait for each other. With `now` it is one that only
        traffic names: admitted while `day` has used fewer than `allowance` admissions (counted
        under a lock, so two processes never both take the last one), else held. True when new;
        a chunk that then rolls back leaves the audience recorded, as its retry would. With
        `conn`, in that connection's transaction instead (a dry run, rolled back)."""

        def record(conn: psycopg.Connection[Any]) -> bool:
            if now is None:
                inserted = conn.execute(
                    "INSERT INTO audiences (name, auto_create) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                    (name, int(auto_create)),
                ).rowcount
                return inserted > 0
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key("audience admissions"),))
            inserted = conn.execute(
                "INSERT INTO audiences (name, auto_create, first_seen_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, int(auto_create), now),
            ).rowcount
            if not inserted:
                return False
            used = conn.execute("SELECT count(*) FROM audiences WHERE admitted_day = %s", (day,)).fetchone()
            if used is not None and int(used[0]) < allowance:
                conn.execute("UPDATE audiences SET admitted_day = %s WHERE name = %s", (day, name))
            else:
                conn.execute("UPDATE audiences SET held_since = %s WHERE name = %s", (now, name))
            return True

        if conn is not None:
            return record(conn)
        new = self._retrying(record)
        self.known_audiences.add(name)
        return new

    def save_audience(self, record: AudienceRecord) -> None:
        self._retrying(
            lambda conn: conn.execute(
                "INSERT INTO audiences (name, segment_id, auto_create, created_by_us) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET segment_id = excluded.segment_id, "
                "auto_create = excluded.auto_create, created_by_us = excluded.created_by_us",
                (record.name, record.segment_id, int(record.auto_create), int(record.created_by_us)),
            )
        )

    def reset_audience_acks(self, name: str, now: float) -> None:
        """The segment was replaced: nothing counts as acknowledged (nor as possibly held: that was
        the old segment); resend the whole membership. Claims on its rows end (an answer to them
        is about the old segment: it comes back as late, and counts as unknown)."""

        def reset(conn: psycopg.Connection[Any]) -> None:
            locked = (
                "FROM (SELECT id_type, id_value FROM targets WHERE audience = %(a)s ORDER BY 1, 2 FOR UPDATE) l "
                "WHERE t.audience = %(a)s AND t.id_type = l.id_type AND t.id_value = l.id_value"
            )
            conn.execute(f"DELETE FROM targets t USING {locked.removeprefix('FROM ')} AND t.desired = 0", {"a": name})
            conn.execute(
                "UPDATE targets t SET acked = 0, since = %(now)s, attempts = 0, next_at = 0, first_failure = NULL, "
                f"claim_until = NULL, acked_before = NULL, claim_holder = NULL {locked}",
                {"a": name, "now": now},
            )

        self._retrying(reset)

    def mark_audience_unknown(self, name: str, now: float) -> None:
        self._retrying(
            lambda conn: conn.execute(
                f"UPDATE targets t SET acked = {UNKNOWN}, since = %(now)s, attempts = 0, next_at = 0, "
                "first_failure = NULL FROM (SELECT id_type, id_value FROM targets WHERE audience = %(a)s "
                "ORDER BY 1, 2 FOR UPDATE) l "
                "WHERE t.audience = %(a)s AND t.id_type = l.id_type AND t.id_value = l.id_value",
                {"a": name, "now": now},
            )
        )

    def audience_stats(self) -> list[AudienceStats]:
        """From the running totals (the same figures SQLite sums from `targets`, without a scan)."""
        rows = self._rows(
            "SELECT n.name, a.segment_id, coalesce(c.desired, 0), coalesce(c.acknowledged, 0), "
            "coalesce(c.pending_add + c.pending_remove, 0), coalesce(c.dead, 0), a.held_since IS NOT NULL "
            f"FROM (SELECT name FROM audiences UNION SELECT audience FROM ({AUDIENCE_TOTALS}) x "
            "WHERE desired != 0 OR acknowledged != 0 OR pending_add != 0 OR pending_remove != 0 OR dead != 0) n "
            f"LEFT JOIN ({AUDIENCE_TOTALS}) c ON c.audience = n.name LEFT JOIN audiences a ON a.name = n.name"
        )
        stats = [AudienceStats(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), bool(r[6])) for r in rows]
        return sorted(stats, key=lambda s: s.name)

    def acknowledged_members(self, audience: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for id_type, id_value in self._rows(
            "SELECT id_type, id_value FROM targets WHERE audience = %s AND acked = 1", (audience,)
        ):
            out.setdefault(id_type, set()).add(id_value)
        return out

    # ------------------------------------------------------------------ rate budget

    def rate_limiter(self, name: str, limit_per_minute: int, clock: Clock, sleep: Sleep) -> RateLimiter:
        """The budget every process on this database shares (segcrit.store.postgres_ratelimit)."""
        return SharedRateLimiter(self, name, limit_per_minute, clock, sleep)

    # ------------------------------------------------------------------ leases

    def lease_holder(self, name: str, now: float) -> str | None:
        value = self._value("SELECT holder FROM leases WHERE name = %s AND expires_at > %s", (name, self.db_time(now)))
        return None if value is None else str(value)

    def try_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Take or renew a named lease in one conditional upsert, on the database's clock; ttl 0
        releases it (only its holder can)."""
        dbnow = self.db_time(now)
        row = self._retrying(
            lambda conn: conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (%(name)s, %(holder)s, %(until)s) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at <= %(now)s RETURNING holder",
                {"name": name, "holder": holder, "until": dbnow + ttl if ttl > 0 else 0.0, "now": dbnow},
            ).fetchone()
        )
        return row is not None


# A dead letter's rows back on the queue, `LIMIT` of them: ([now,] letter id, limit).
_RELEASE_STATEMENTS = (
    # Neither wanted nor held any more (the person left while it was parked): nothing to send.
    (
        "DELETE FROM targets WHERE (audience, id_type, id_value) IN (SELECT audience, id_type, id_value "
        "FROM targets WHERE dead_letter_id = %s AND desired = 0 AND acked = 0 ORDER BY 1, 2, 3 LIMIT %s FOR UPDATE)",
        False,
    ),
    (
        "UPDATE targets SET dead_letter_id = NULL, attempts = 0, next_at = 0, first_failure = NULL, since = %s "
        "WHERE (audience, id_type, id_value) IN (SELECT audience, id_type, id_value FROM targets "
        "WHERE dead_letter_id = %s ORDER BY 1, 2, 3 LIMIT %s FOR UPDATE)",
        True,
    ),
    (
        "UPDATE criteo_events SET dead_letter_id = NULL, attempts = 0, next_at = 0, first_failure = NULL "
        "WHERE id IN (SELECT id FROM criteo_events WHERE dead_letter_id = %s ORDER BY id LIMIT %s FOR UPDATE)",
        False,
    ),
    (
        "UPDATE products SET dead_letter_id = NULL, attempts = 0, next_at = 0, first_failure = NULL "
        "WHERE (merchant_id, product_id) IN (SELECT merchant_id, product_id FROM products "
        "WHERE dead_letter_id = %s ORDER BY 1, 2 LIMIT %s FOR UPDATE)",
        False,
    ),
)


def _release_dead_letters(conn: psycopg.Connection[Any], *, ids: list[int], now: float) -> list[int]:
    """Release up to REPLAY_BATCH rows of these letters, in order, marking the letters emptied as
    replayed; returns the letters that may still hold rows."""
    budget = REPLAY_BATCH
    for index, letter_id in enumerate(ids):
        for statement, resets_since in _RELEASE_STATEMENTS:
            params = (now, letter_id, budget) if resets_since else (letter_id, budget)
            budget -= conn.execute(statement, params).rowcount
            if budget == 0:
                return ids[index:]
        conn.execute("UPDATE dead_letters SET replayed_at = %s WHERE id = %s", (now, letter_id))
    return []


def _insert_messages(conn: psycopg.Connection[Any], requests: Sequence[IngestRequest]) -> list[AcceptResult]:
    """Store the messages of these requests whose (source, messageId) is new, in order; count the
    others. Three statements for the whole group: the dedupe insert, the inbox COPY, the commit."""
    seen_rows = first_seen(requests)
    fresh: set[tuple[str, str]] = set()
    if seen_rows:
        # In key order: two groups with messageIds in common (a batch retried through another
        # process) wait for each other's commit, never in a cycle.
        keys = sorted(seen_rows)
        fresh = {
            (r[0], r[1])
            for r in conn.execute(
                "INSERT INTO seen (source, message_id, seen_at) SELECT s, m, t FROM unnest(%s::text[], %s::text[], "
                "%s::float8[]) WITH ORDINALITY AS u(s, m, t, n) ORDER BY n ON CONFLICT DO NOTHING "
                "RETURNING source, message_id",
                ([k[0] for k in keys], [k[1] for k in keys], [seen_rows[k] for k in keys]),
            ).fetchall()
        }
    results, inbox = split_fresh(requests, fresh)
    if inbox:
        with (
            conn.cursor() as cursor,
            cursor.copy("COPY inbox (source, received_at, body) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["text", "float8", "bytea"])
            for row in inbox:
                copy.write_row(row)
    return results


def _group(keys: Iterable[TargetKey]) -> dict[tuple[str, str], list[str]]:
    """Keys by (audience, identifier type), each group's values sorted (the order rows are locked in)."""
    groups: dict[tuple[str, str], set[str]] = {}
    for key in keys:
        groups.setdefault((key.audience, key.id_type), set()).add(key.id_value)
    return {group: sorted(values) for group, values in sorted(groups.items())}


def _inbox_event(row: Sequence[Any]) -> InboxEvent:
    return InboxEvent(seq=row[0], source=row[1], received_at=row[2], message=orjson.loads(row[3]))


def _set_result(future: asyncio.Future[AcceptResult], result: AcceptResult) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[AcceptResult], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def open_postgres(url: str, *, owner: bool = False, migrate: bool = True) -> PostgresStore:
    return PostgresStore(url, owner=owner, migrate=migrate)


__all__ = ["PostgresStore", "open_postgres"]
