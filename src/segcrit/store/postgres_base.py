"""PostgreSQL store, connections: the pool, transactions, errors, time and lock keys.

Every part of the PostgreSQL store (`postgres*.py`) reaches the database through `PgBase`:

- `_rows`/`_row`/`_value` read outside any transaction (autocommit: each statement its own
  snapshot); `_write()` is one transaction; `_retrying(fn)` runs a transaction of its own and runs
  it again when PostgreSQL aborted it for a conflict with another transaction (a deadlock, a
  serialization failure): such a transaction is short and has no effect outside the database.
- A failure of the database itself (unreachable, shutting down, out of space, a lock that would
  not come) raises `StoreUnavailable`, as SQLite's store does: the caller retries later. It is
  logged once per episode and reported by `write_failure()` until a write succeeds again, except
  for conflicts between transactions, which are routine when several processes share the work.
- Times that several processes compare (claims, leases, the call budget) are on the database's
  clock: `db_time(now)` moves the caller's time by the offset between this machine's clock and
  the database's, measured at open and again every minute (ignored under CLOCK_TOLERANCE_SECS).
  A test's FakeClock keeps working (the offset is that of the real clocks), and two machines
  whose clocks disagree still agree on when a lease ends.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Buffer, Dumper, PyFormat, RecursiveDumper
from psycopg.types.array import ListDumper
from psycopg_pool import ConnectionPool, PoolTimeout

from segcrit.errors import StoreError, StoreUnavailable

log = logging.getLogger("segcrit.store")

T = TypeVar("T")

POOL_MAX = 12  # connections per process: ingest, processor, delivery, scheduler, enrichment, reads
POOL_TIMEOUT_SECS = 10.0  # waiting for a connection (the database down) before StoreUnavailable
CONFLICT_RETRIES = 5
# Session settings: a transaction left idle (its process hung or gone without closing the socket)
# gives its locks back; a lock that does not come in time fails the transaction (retried later)
# rather than waiting for ever.
SESSION_SETTINGS: Final = (
    "SET idle_in_transaction_session_timeout = '60s'",
    "SET lock_timeout = '30s'",
    # Short statements only: compiling one (its cost estimate may pass jit_above_cost on a table
    # filled since its last ANALYZE) costs more than running it.
    "SET jit = off",
)
# SQLSTATEs of a transaction aborted because of another one: run it again.
_CONFLICTS: Final = frozenset({"40001", "40P01", "55P03"})
BACKLOG_FRESH_SECS = 0.1
CLOCK_TOLERANCE_SECS = 0.25  # clocks closer than this to the database's count as the database's

# Each audience's running totals: its row plus the deltas not folded in yet.
AUDIENCE_TOTALS = (
    "SELECT audience, sum(desired) AS desired, sum(acknowledged) AS acknowledged, sum(pending_add) AS pending_add, "
    "sum(pending_remove) AS pending_remove, sum(dead) AS dead, max(last_sync_at) AS last_sync_at FROM ("
    "SELECT audience, desired, acknowledged, pending_add, pending_remove, dead, last_sync_at FROM audience_counts "
    "UNION ALL SELECT audience, desired, acknowledged, pending_add, pending_remove, dead, last_sync_at "
    "FROM audience_count_deltas) u GROUP BY audience"
)


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def is_conflict(error: BaseException) -> bool:
    return isinstance(error, psycopg.Error) and error.sqlstate in _CONFLICTS


def is_unavailable(error: BaseException) -> bool:
    """True when `error` says the database cannot do the work now rather than that the statement
    is wrong: the connection (class 08), resources (53), an operator (57), the system (58), a
    conflict (40, 55P03), a read-only server, no connection in the pool."""
    if isinstance(error, PoolTimeout | pg_errors.ReadOnlySqlTransaction):
        return True
    if isinstance(error, psycopg.OperationalError):
        return True
    return isinstance(error, psycopg.InterfaceError) and "closed" in str(error)


def lock_keys(namespace: str, names: Sequence[str]) -> list[int]:
    """The advisory lock keys of `names` (64-bit, the same in every process), sorted: taken in
    this order by everyone, they never deadlock. `namespace` (the schema) keeps two segcrit
    databases sharing one server from waiting on each other's keys."""
    keys = {
        int.from_bytes(hashlib.blake2b(f"{namespace}\x1f{name}".encode(), digest_size=8).digest(), "big", signed=True)
        for name in names
    }
    return sorted(keys)


class PgBase:
    """The pool and the helpers every part of the PostgreSQL store uses (see the module docstring)."""

    url: str
    namespace: str  # the schema segcrit's tables are in (advisory lock keys include it)
    _pool: ConnectionPool
    _write_failure: str | None
    _offset: float  # the database's clock minus this machine's

    def _open_pool(self, url: str, max_size: int, name: str) -> None:
        """`name`: the connections' application_name (pg_stat_activity tells the processes apart)."""
        self.url = url
        self._backlog: tuple[float, int] | None = None  # (when read, value): see `inbox_changed`
        self._write_failure = None
        self._offset = 0.0
        self._failure_lock = threading.Lock()
        # One connection first, so that a server that refuses us says why at once (the pool
        # would retry quietly until its timeout); psycopg's error names the host, not the password.
        psycopg.connect(url, connect_timeout=int(POOL_TIMEOUT_SECS)).close()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True},
            configure=functools.partial(_configure, application_name=name[:63]),
            timeout=POOL_TIMEOUT_SECS,
            open=False,
            name="segcrit",
        )
        try:
            self._pool.open(wait=True, timeout=POOL_TIMEOUT_SECS)
        except PoolTimeout:
            self._pool.close()
            raise StoreError(
                f"cannot connect to the store {safe_url(url)}: no answer in {POOL_TIMEOUT_SECS:.0f} s"
            ) from None
        try:
            self.namespace = str(self._value("SELECT current_schema()"))
            self.measure_offset()
        except BaseException:
            self._pool.close()
            raise

    def _close_pool(self) -> None:
        self._pool.close(timeout=5)

    # ------------------------------------------------------------------ time

    def db_time(self, now: float) -> float:
        """The caller's `now` on the database's clock."""
        return now + self._offset

    def measure_offset(self) -> float:
        """Measure how far the database's clock is from ours. Within CLOCK_TOLERANCE_SECS the
        clocks count as one (the offset stays 0, so that processes on one machine compare equal
        times equal, and a lease or a call budget is off by at most that much, well inside the
        budget's 1 s margin); beyond it, the measured offset is applied, and replaced when a new
        measure moves by more than the tolerance (a clock that was set)."""
        with self._connection() as conn:
            sent = time.time()
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            received = time.time()
        assert row is not None
        measured = float(row[0]) - (sent + received) / 2
        offset = measured if abs(measured) > CLOCK_TOLERANCE_SECS else 0.0
        if abs(offset - self._offset) > CLOCK_TOLERANCE_SECS or (offset == 0.0) != (self._offset == 0.0):
            if offset:
                log.warning("this machine's clock differs from the database's", extra={"offset_secs": round(offset, 3)})
            self._offset = offset
        return self._offset

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool (autocommit); the database's failures raise StoreUnavailable."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except StoreError:
            raise
        except Exception as error:
            if is_unavailable(error):
                raise self._unavailable(error) from error
            raise

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _row(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> tuple[Any, ...] | None:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchone()

    def _value(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        row = self._row(sql, params)
        return None if row is None else row[0]

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction: committed when the block ends, rolled back on an exception."""
        with self._connection() as conn, conn.transaction():
            yield conn
        self._wrote()

    def _retrying(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`work` in a transaction of its own, run again (up to CONFLICT_RETRIES times) when
        PostgreSQL aborts it for a conflict with another transaction."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                with self._write() as conn:
                    return work(conn)
            except StoreUnavailable as error:
                if attempt + 1 == CONFLICT_RETRIES or not is_conflict(error.__cause__ or error):
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the backlog

    def backlog(self) -> int:
        """Events accepted and not processed: the `inbox` running total, read again when the last
        read is BACKLOG_FRESH_SECS old and kept up to date meanwhile with this process's own inbox
        writes. Ingest asks on every request (its 429), on the event loop: a database round trip
        each time would hold the loop; other processes' writes show within BACKLOG_FRESH_SECS."""
        cached = self._backlog
        if cached is not None and time.monotonic() - cached[0] < BACKLOG_FRESH_SECS:
            return cached[1]
        value = int(
            self._value(
                "SELECT coalesce((SELECT value FROM counters WHERE name = 'inbox'), 0) "
                "+ coalesce((SELECT sum(delta) FROM counter_deltas WHERE name = 'inbox'), 0)"
            )
        )
        self._backlog = (time.monotonic(), value)
        return value

    def inbox_changed(self, delta: int) -> None:
        """This process committed a change of `delta` events to the inbox."""
        cached = self._backlog
        if cached is not None and delta:
            self._backlog = (cached[0], max(0, cached[1] + delta))

    # ------------------------------------------------------------------ failures

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        """The database cannot do the work now; its error is logged once per episode (a conflict
        between transactions is routine and only logged at debug level)."""
        text = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        if is_conflict(error):
            log.debug("store conflict", extra={"error": text})
            return StoreUnavailable(f"store conflict: {text}")
        with self._failure_lock:
            if self._write_failure is None:
                log.error("store cannot write", extra={"error": text, "code": getattr(error, "sqlstate", None)})
            self._write_failure = text
        return StoreUnavailable(f"store cannot write: {text}")

    def _wrote(self) -> None:
        if self._write_failure is not None:
            with self._failure_lock:
                self._write_failure = None
            log.warning("store writes again")

    def write_failure(self) -> str | None:
        return self._write_failure

    def probe_write(self) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('write_probe', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(time.time()),),
            )

    def ping(self) -> bool:
        try:
            self._value("SELECT 1")
        except (StoreError, psycopg.Error):
            return False
        return True


def new_dead_letter(
    conn: psycopg.Connection[Any],
    kind: str,
    audience: str,
    operation: str,
    id_type: str,
    count: int,
    status: int | None,
    error: str,
    now: float,
) -> int:
    """A new dead letter (in the caller's transaction); its id."""
    row = conn.execute(
        "INSERT INTO dead_letters (kind, created_at, audience, operation, id_type, count, status, error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (kind, now, audience, operation, id_type, count, status, error[:4000]),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _configure(conn: psycopg.Connection[Any], *, application_name: str) -> None:
    for statement in SESSION_SETTINGS:
        conn.execute(statement)
    conn.execute("SELECT set_config('application_name', %s, false)", (application_name,))
    conn.adapters.register_dumper(list, FastListDumper)


def _kind(values: list[Any]) -> type | None:
    """The one type of the list's values (str, int or float; None ignored), else None."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if kinds == {str}:
        return str
    if kinds and kinds <= {int, float}:
        return float if float in kinds else int
    return None


class FastListDumper(RecursiveDumper):
    """Lists of text or numbers (the keys, ids and times the store sends by the thousand) as one
    array literal built with a few string operations: psycopg's own list dumper works element by
    element in Python, which cost a processing chunk more time than its SQL. The literal goes as
    "unknown", so the statement's cast (`%s::text[]`) or context (`= ANY(%s)`) types it. Any other
    list (bytes, nested, empty) goes to psycopg's dumper."""

    def get_key(self, obj: list[Any], format: PyFormat) -> Any:
        kind = _kind(obj)
        return (list, kind) if kind is not None else ListDumper(list, self._tx).get_key(obj, format)

    def upgrade(self, obj: list[Any], format: PyFormat) -> Dumper:
        if _kind(obj) is None:
            return ListDumper(list, self._tx).upgrade(obj, format)
        return self

    def dump(self, obj: list[Any]) -> Buffer:
        if _kind(obj) is str:
            items = ["NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in obj]
        else:
            items = ["NULL" if v is None else repr(v) for v in obj]
        return ("{" + ",".join(items) + "}").encode()
