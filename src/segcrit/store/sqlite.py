"""SQLite implementation of the store (every role of segcrit.store.base): one process, WAL,
durable commits.

Threads: ingest hands messages to one writer thread that commits many requests in one
transaction (group commit) and wakes each request after the fsync; the processor and the delivery
worker each use their own connection. Every write transaction starts with BEGIN IMMEDIATE so two
writers queue on the lock instead of failing on an upgrade, and ingest goes first: a processing
chunk (`claim_chunk`) starts when no ingest commit waits and ends early when one does
(`SqliteChunk.should_commit_early`), so the processor never has to know.

One process owns the file, so a claim is simple here: the inbox claim is the chunk lock, the
contact-list claims are rows (`claim_until`, which an owner's open releases), and the claims on
Events API events, catalog products and batch polls live in memory. The schema comes from the
versioned migrations in `migrations/sqlite/`, applied at open.

A write that fails because of the store itself (disk full, database locked, I/O error) raises
`StoreUnavailable`: the store logs the real SQLite error once per episode and reports it through
`write_failure()` (for /readyz) until a write that adds data succeeds again (`proves_space`).
Any other error is the caller's.

The database file and its -wal and -shm files are readable by their owner only, and one process
at a time may run workers on the file (`owner=True`, see `_claim_ownership`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import logging
import multiprocessing
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import orjson

from segcrit.clock import Clock
from segcrit.criteo.constants import RATE_LIMIT_WINDOW_SECS
from segcrit.domain import (
    AcceptResult,
    AudienceRecord,
    AudienceStats,
    DeadLetter,
    Identifier,
    InboxEvent,
    PendingChange,
    ProfileState,
    TargetKey,
)
from segcrit.errors import StoreError, StoreUnavailable
from segcrit.ratelimit import DEFAULT_MARGIN_SECS, CallWindow, RateLimiter, Sleep, SlidingWindowLimiter
from segcrit.store import sqlite_path
from segcrit.store.base import LAST_SEEN_SLACK_SECS
from segcrit.store.ingest_rows import IngestRequest, first_seen, inbox_rows, split_fresh
from segcrit.store.migrations import Migration, load_migrations, pending, run_migrations
from segcrit.store.sqlite_admin import AdminStoreMixin
from segcrit.store.sqlite_cohorts import CohortStoreMixin, CohortTxMixin
from segcrit.store.sqlite_commerce import CommerceStoreMixin, CommerceTxMixin, MemoryClaims
from segcrit.store.sqlite_enrichment import EnrichmentStoreMixin, EnrichmentTxMixin
from segcrit.store.sqlite_retention import RetentionStoreMixin

log = logging.getLogger("segcrit.store")

BUSY_TIMEOUT_MS = 30_000
PROCESSOR_CACHE_KIB = 64 * 1024
PROCESSOR_CHECKPOINT_PAGES = 10_000  # WAL pages (40 MB) before a processor's commit checkpoints
GROUP_COMMIT_MAX = 256  # requests folded into one transaction at most
# How long a read of the backlog serves ingest's 429 check (kept up to date meanwhile with this
# process's own ingest commits; any other write of this process reads it again).
BACKLOG_FRESH_SECS = 0.1
REPLAY_BATCH = 5_000  # dead-lettered rows put back per transaction
# The longest the processor waits for ingest to have nothing to commit before it writes anyway.
INGEST_FIRST_MAX_WAIT_SECS = 0.05
# A processing transaction that ingest waits for commits and gives way once it has run this long
# (less would spend the processor's time on commits, more would delay acks).
GIVE_WAY_AFTER_SECS = 0.005
REMOTE_INGEST_POLL_SECS = 0.0005  # how often each side of a turn (`share_turn_flag`) looks at the other
# How often the processor child looks whether ingest still waits while it lets ingest go first
# (up to TURN_AFTER_SECS): each wake-up costs CPU on the core the event loop shares the machine with.
GIVE_WAY_POLL_SECS = 0.002
# The longest either side of a turn waits for the other (`share_turn_flag`): the ingest writer for
# the child's turn to end (it commits after TURN_SECS), the child for the writer to finish its group
# (on a slow disk a group of 256 requests takes a good part of a second). Only a child that died
# during its turn makes the writer wait that long.
TURN_MAX_WAIT_SECS = 1.0
# How long a turn lasts: the child's transaction commits once it has run this long, or when its
# TURN_EVENTS are done (a turn shorter than the transaction's fixed costs would process nothing on
# a slow machine).
TURN_SECS = 0.025
TURN_EVENTS = 200  # events a processor child claims for a turn taken while ingest waits
# How long ingest must keep the processor child waiting before it asks for a turn: rare turns keep
# what they cost ingest small (one pause of the writer of up to TURN_SECS per interval).
TURN_AFTER_SECS = 0.25
# After a chunk gave way to ingest, the next claims this many times what it applied (at least
# CHUNK_EVENTS_MIN): every event claimed is decoded and its identifiers read before the first is
# applied, so what a chunk leaves for the next was prepared for nothing (a claim of 200 that
# applies 100 costs 15-20 % more CPU per event applied). After a chunk that applied all it claimed,
# twice as many, until CHUNK_EVENTS_MAX, where the processor's own limit takes over again.
CHUNK_AFTER_GIVE_WAY = 1.25
CHUNK_EVENTS_MIN = 20
CHUNK_EVENTS_MAX = 1024
# targets.acked: what Criteo holds of an identifier as far as we know. UNKNOWN while a call that
# may change it is in flight or after its answer was lost (SPEC §1, Uncertain calls): such a row is
# pending whatever it desires, and neither wanted nor held only once an answered call settles it.
NOT_HELD, HELD, UNKNOWN = 0, 1, 2

# A write that needs free pages, to learn whether a store that failed writes again.
PROBE_BYTES = 3 * 4096
# SQLite's primary result codes that say the store, not the data, is at fault: the same write
# succeeds later (lock released, space freed, disk back). Any other error is the statement's own.
_UNAVAILABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)
_PRIVATE_MODE: Final = 0o600

_T = TypeVar("_T")


class IngestFlag(Protocol):
    """A boolean in shared memory (multiprocessing's RawValue of a c_bool)."""

    value: bool


class TurnFlag(Protocol):
    """An integer in shared memory (multiprocessing's RawValue of a c_int): NO_TURN, TURN_WANTED
    or TURN_GIVEN (`SqliteStore.share_turn_flag`)."""

    value: int


NO_TURN, TURN_WANTED, TURN_GIVEN = 0, 1, 2


def _connect(path: str, busy_timeout_ms: int, pragmas: Mapping[str, int | str]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so an acknowledged event survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=OFF")
    for name, value in pragmas.items():
        conn.execute(f"PRAGMA {name}={value}")
    return conn


def _is_unavailable(error: BaseException) -> bool:
    """True when `error` says the store cannot write now rather than that the statement is wrong."""
    code = getattr(error, "sqlite_errorcode", None) if isinstance(error, sqlite3.Error) else None
    # None: not from SQLite, or raised by the sqlite3 module itself (a value it cannot bind...).
    return code is not None and code & 0xFF in _UNAVAILABLE_CODES


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open, never hiding the error that led here: after SQLITE_FULL, IOERR or
    BUSY, SQLite may have rolled the transaction back already ("no transaction is active")."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as error:
        log.warning("rollback failed", extra={"error": str(error)})


def _make_private(path: str) -> None:
    """Create the database file readable by its owner only before SQLite opens it. SQLite gives
    the -wal and -shm files it creates the database file's mode, so all three stay private
    (SPEC §8); files an older version created are narrowed too."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, _PRIVATE_MODE))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError, PermissionError):  # not ours to change: leave it
            os.chmod(path + suffix, _PRIVATE_MODE)


@dataclass(slots=True)
class _AcceptRequest:
    source: str
    rows: list[tuple[str, bytes]]  # (messageId or "", body) per message, from `inbox_rows`
    received_at: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[AcceptResult]


def _claim_ownership(path: str) -> int:
    """Lock `<path>.lock` for the life of this process (the kernel releases it when the process
    ends, even by kill -9) and write our pid in it; StoreError when another process holds it.

    One owner per file (SPEC §7): two processes running workers on one SQLite file would both
    send its Events API documents and each spend a whole Criteo rate budget. A file lock beside
    the database rather than on it: SQLite's own locks on the database file must stay its own.
    """
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, _PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise StoreError(f"another segcrit process owns {os.path.abspath(path)}{pid}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    return fd


class SqliteStore(CommerceStoreMixin, CohortStoreMixin, RetentionStoreMixin, EnrichmentStoreMixin, AdminStoreMixin):
    """The store on one SQLite file (see the module docstring for threads and transactions).

    `owner`: this process runs workers on the file; a second owner is refused (StoreError), and
    the claims of calls a dead owner left in flight are released. `migrate`: apply the pending
    schema migrations first (every open but `segcrit migrate --check`).
    `pragmas`: set on every connection after segcrit's own (tests use `max_page_count` to fill
    the "disk"); `busy_timeout_ms`: how long a write waits for another process's lock.
    """

    def __init__(
        self,
        path: str,
        *,
        owner: bool = False,
        migrate: bool = True,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        pragmas: Mapping[str, int | str] | None = None,
        ingest_flag: IngestFlag | None = None,
        turn_flag: TurnFlag | None = None,
    ) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._pragmas = dict(pragmas or {})
        # The SQLite error of the last write, while no write has succeeded since (see `_write`).
        self._write_failure: str | None = None
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._chunk_lock = threading.Lock()  # one processing chunk at a time: the inbox claim
        self._chunk_events: int | None = None  # the next chunk's claim, when a chunk gave way (see above)
        # Ingest goes first on the write lock: while requests wait for their commit, the processor
        # commits what it has done and waits (`ingest_waiting`, `give_way_to_ingest`).
        # `ingest_flag`: this store is the processor child's (segcrit.processing.child), and the
        # flag says whether the parent's ingest waits for the write lock (`ingest_waiting`).
        self._remote_ingest = ingest_flag
        self._shared_busy: IngestFlag | None = ingest_flag
        # How the processor child and the ingest writer take turns on the lock (`share_turn_flag`).
        self._turn = turn_flag
        self._busy = False  # the writer holds a group it has not committed yet (`_ingest_busy`)
        self._ingest_idle = threading.Condition()
        self._writer_queue: queue.SimpleQueue[_AcceptRequest | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        # (monotonic time of the read, events): see `backlog`. None: read it again.
        self._backlog: tuple[float, int] | None = None
        self._closed = False
        self._owner_fd: int | None = None
        # Claims on work without an "unknown" state: one process owns the file, so they live here.
        self._event_claims = MemoryClaims[int]()
        self._product_claims = MemoryClaims[tuple[str, str]]()
        self._poll_claims = MemoryClaims[str]()
        # The call budgets, by name: every limiter this store hands out for one budget spends it.
        self._budgets: dict[str, CallWindow] = {}
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if owner:
                self._owner_fd = _claim_ownership(path)
        try:
            if path != ":memory:":
                _make_private(path)
            if migrate:
                self.apply_migrations()
                if owner:
                    self._take_over()
        except BaseException:
            self.close()
            raise

    def _take_over(self) -> None:
        released = self.release_claims()
        if released:
            log.warning("unanswered changes of an earlier run will be sent again", extra={"changes": released})
        # The owner before us is gone (we hold the file's lock): its leases (a job it was running,
        # a segment it was creating) are free now, not when they expire.
        with self._write() as conn:
            conn.execute("DELETE FROM leases")

    # ------------------------------------------------------------------ schema

    def pending_migrations(self) -> list[Migration]:
        return pending(load_migrations("sqlite"), self.applied_versions())

    def apply_migrations(self) -> list[Migration]:
        applied = run_migrations(self, load_migrations("sqlite"))
        for migration in applied:
            log.info("schema migrated", extra={"migration": migration.label, "path": self.path})
        return applied

    def migration_lock(self) -> AbstractContextManager[object]:
        """Nothing more than each migration's write transaction, in which its version is read
        again (`apply_migration`): SQLite's lock orders two processes migrating one file, and the
        owner of the file holds its file lock besides."""
        return contextlib.nullcontext()

    def applied_versions(self) -> set[int]:
        conn = self._conn()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone():
            return {int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations")}
        return set()

    def apply_migration(self, migration: Migration) -> bool:
        with self._write() as conn:
            conn.execute(_SCHEMA_MIGRATIONS)
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)).fetchone():
                return False  # another process applied it since we looked
            # Statement by statement: executescript would commit the transaction first.
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
        return True

    # ------------------------------------------------------------------ connections

    def _use_large_cache(self) -> None:
        """A bigger page cache for this thread's connection (the processor's, from `claim_chunk`: it
        touches random identifier and profile pages all the time; ~10% faster at 64 MB). One thread
        only, so the process stays well inside its memory budget.

        And a later checkpoint from its commits: a chunk writes a thousand or more random pages to
        the WAL, so at SQLite's default (1,000 pages) nearly every chunk's commit also copied them to
        the database and synced it; at PROCESSOR_CHECKPOINT_PAGES it does so every ten or so chunks,
        copying a page the chunks in between all touched once (5-20% more events/s). The other
        connections keep the default, so the WAL stays short wherever the processor is idle."""
        if not getattr(self._local, "large_cache", False):
            conn = self._conn()
            conn.execute(f"PRAGMA cache_size=-{PROCESSOR_CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint={PROCESSOR_CHECKPOINT_PAGES}")
            self._local.large_cache = True

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self._busy_timeout_ms, self._pragmas)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _write(
        self, *, durable: bool = True, proves_space: bool = False, counts_inbox: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction. A failure of the store itself raises StoreUnavailable (the
        SQLite error chained); any other error propagates as it is, after the rollback.

        `durable=False` skips the fsync at commit (housekeeping: a prune lost to a power cut is
        simply done again); the next durable commit on the WAL makes it durable anyway.
        `proves_space`: the transaction adds data the way ingest does (ingest, processing, the
        probe), so its success ends a failure episode. A delete or an in-place update (a lease,
        a prune) may succeed on a full disk: it would turn /readyz ready while ingest still fails.
        `counts_inbox`: the caller keeps the cached backlog up to date itself (the ingest writer);
        after any other write the next `backlog()` reads it again.
        """
        conn = self._conn()
        # Threads of this process queue here rather than on SQLite's lock: a writer that finds the
        # database locked sleeps in SQLite's busy handler (1, 2, 5, 10, 15... ms) however soon the
        # lock is free, which costs an ingest ack tens of milliseconds behind a processor chunk. The
        # busy timeout still covers other processes (the CLI).
        with self._write_lock:
            if not durable:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as error:
                    raise self._unavailable(error) from error
                try:
                    yield conn
                    conn.execute("COMMIT")
                    if not counts_inbox:
                        self._backlog = None
                except BaseException as error:
                    _rollback(conn)
                    if isinstance(error, sqlite3.Error) and _is_unavailable(error):
                        raise self._unavailable(error) from error
                    raise
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous=FULL")
        if proves_space and self._write_failure is not None:
            self._write_failure = None
            log.warning("store writes again")

    def _unavailable(self, error: sqlite3.Error) -> StoreUnavailable:
        """Note that the store cannot write; the real SQLite error is logged once per episode."""
        text = str(error)
        if self._write_failure is None:
            name = getattr(error, "sqlite_errorname", error.__class__.__name__)
            log.error("store cannot write", extra={"error": text, "code": name, "path": self.path})
        self._write_failure = text
        return StoreUnavailable(f"store cannot write: {text}")

    def write_failure(self) -> str | None:
        """The SQLite error that made the last write fail, while none has succeeded since."""
        return self._write_failure

    def probe_write(self) -> None:
        """A write that needs free pages, as an ingest commit does: raises StoreUnavailable while
        the store still cannot write, clears `write_failure` once it can."""
        with self._write(proves_space=True) as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('write_probe', ?)", ("0" * PROBE_BYTES,))
            conn.execute("DELETE FROM meta WHERE key = 'write_probe'")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer_queue.put(None)
            self._writer.join(timeout=10)
        with self._conns_lock:
            for conn in self._conns:
                with contextlib.suppress(sqlite3.ProgrammingError):  # closed from another thread already
                    conn.close()
            self._conns.clear()
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # the lock goes with it
            self._owner_fd = None

    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

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
        # Serialised here, so that the writer thread holds the write lock for SQL only.
        self._writer_queue.put(_AcceptRequest(source, inbox_rows(messages), received_at, loop, future))
        return future

    def accept_sync(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> AcceptResult:
        """The same as `accept` for callers without an event loop (import, tests)."""
        rows = inbox_rows(messages)
        with self._write(proves_space=True) as conn:
            return self._insert_messages(conn, [(source, rows, received_at)])[0]

    def _start_writer(self) -> None:
        with self._conns_lock:
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
            self._ingest_busy = True
            try:
                self._give_turn()
                self._commit_group(batch)
            finally:
                if self._writer_queue.empty():
                    with self._ingest_idle:
                        self._ingest_busy = False
                        self._ingest_idle.notify_all()
            if stop:
                return

    def _commit_group(self, batch: list[_AcceptRequest]) -> None:
        try:
            with self._write(proves_space=True, counts_inbox=True) as conn:
                results = self._insert_messages(conn, [(r.source, r.rows, r.received_at) for r in batch])
        except Exception as exc:  # the whole group failed: every request gets the error, none is acked
            error = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc}")
            if not isinstance(exc, StoreUnavailable):  # that one is logged by `_unavailable`
                log.error("ingest commit failed", exc_info=exc)
            for request in batch:
                request.loop.call_soon_threadsafe(_set_exception, request.future, error)
            return
        cached = self._backlog
        if cached is not None:
            # Seqs are consecutive within a transaction: max(seq) moved by exactly what was stored.
            self._backlog = (cached[0], cached[1] + sum(result.stored for result in results))
        for request, result in zip(batch, results, strict=True):
            request.loop.call_soon_threadsafe(_set_result, request.future, result)

    @property
    def _ingest_busy(self) -> bool:
        return self._busy if self._shared_busy is None else bool(self._shared_busy.value)

    @_ingest_busy.setter
    def _ingest_busy(self, busy: bool) -> None:
        self._busy = busy
        if self._shared_busy is not None:
            self._shared_busy.value = busy

    def share_ingest_flag(self) -> IngestFlag:
        """A flag in shared memory that mirrors whether this process's ingest waits for its commit,
        for a processor in a child process to give way to it as the processor thread does."""
        if self._shared_busy is None:
            flag = multiprocessing.get_context("spawn").RawValue(ctypes.c_bool, self._busy)
            self._shared_busy = flag
        return self._shared_busy

    def share_turn_flag(self) -> TurnFlag:
        """An integer in shared memory by which the processor child and the ingest writer take
        turns on the write lock.

        SQLite's lock is not fair: a writer waiting in another process sleeps in SQLite's busy
        handler and looks again later, and an ingest writer that commits group after group under a
        load that never lets up finds the lock free first every time. The child would never get a
        turn (the backlog only growing until ingest refuses with 429), and its core would stay idle
        while ingest uses the other. So when ingest has not let up for TURN_AFTER_SECS, the child
        asks for a turn (TURN_WANTED) and waits for it; the writer, between two groups, gives it
        (TURN_GIVEN) and waits until the child's transaction ends (NO_TURN), which commits after
        TURN_SECS. Under such a load, ingest then commits group after group with a short chunk
        (TURN_EVENTS at most) between two of them about every TURN_AFTER_SECS: processing
        progresses, most groups wait for nothing, and the event loop goes on preparing requests
        meanwhile. Either side waits TURN_MAX_WAIT_SECS at most for the other (a group on a slow
        disk; a child that died during its turn)."""
        if self._turn is None:
            self._turn = multiprocessing.get_context("spawn").RawValue(ctypes.c_int, NO_TURN)
        return self._turn

    def _give_turn(self) -> None:
        """The ingest writer, before a group: the processor child's turn first, when it asked."""
        turn = self._turn
        if turn is None or self._remote_ingest is not None or turn.value != TURN_WANTED:
            return
        turn.value = TURN_GIVEN
        _wait_while(lambda: turn.value == TURN_GIVEN, TURN_MAX_WAIT_SECS, REMOTE_INGEST_POLL_SECS)

    def _take_turn(self) -> bool:
        """The processor child, before its transaction: let ingest go first, and when it still
        waits after TURN_AFTER_SECS, ask for a turn and wait until the writer gives it (or ingest
        no longer waits). Returns whether a turn was asked for (`_end_turn` ends it)."""
        turn = self._turn
        # Ingest first, as long as it lets up within that (without turns, as a processor thread does).
        self.give_way_to_ingest(INGEST_FIRST_MAX_WAIT_SECS if turn is None else TURN_AFTER_SECS)
        if turn is None or not self.ingest_waiting():
            return False
        turn.value = TURN_WANTED
        _wait_while(
            lambda: turn.value == TURN_WANTED and self.ingest_waiting(), TURN_MAX_WAIT_SECS, REMOTE_INGEST_POLL_SECS
        )
        return True

    def _end_turn(self) -> None:
        if self._turn is not None:
            self._turn.value = NO_TURN

    def ingest_waiting(self) -> bool:
        """True while ingest requests wait for their commit: a long write transaction should commit
        what it has and call `give_way_to_ingest` before starting another."""
        return self._ingest_busy or not self._writer_queue.empty()

    def give_way_to_ingest(self, timeout: float = INGEST_FIRST_MAX_WAIT_SECS) -> None:
        """Wait until no ingest request waits for its commit, or `timeout` seconds (so that
        processing goes on, more slowly, under a load that never lets up)."""
        if not self.ingest_waiting():
            return
        if self._remote_ingest is not None:
            # Ingest is another process's: no condition to wait on, so look at its flag often (a
            # group commit takes a few milliseconds).
            _wait_while(self.ingest_waiting, timeout, GIVE_WAY_POLL_SECS)
            return
        with self._ingest_idle:
            self._ingest_idle.wait_for(lambda: not self.ingest_waiting(), timeout)

    @staticmethod
    def _insert_messages(conn: sqlite3.Connection, requests: Sequence[IngestRequest]) -> list[AcceptResult]:
        """Store the messages of these requests whose (source, messageId) is new, in order; count
        the others.

        Three multi-row statements per INGEST_PIECE_MAX messages of the whole group (often three
        for all of it), rather than a few per request or per message: every statement hands the
        GIL over and back, and under load the writer waits for the event loop's thread at each
        handover (up to the switch interval, `segcrit.cli.tune_runtime`). For the same reason the
        dedupe reads which messageIds were seen before (usually none: a row returned is a
        handover) and inserts the others, rather than `INSERT ... RETURNING` the new ones (a
        handover for every message). Nothing else writes `seen` meanwhile: the transaction holds
        the write lock.
        """
        seen_rows = first_seen(requests)
        by_source: dict[str, list[str]] = {}
        for source, message_id in seen_rows:
            by_source.setdefault(source, []).append(message_id)
        known: set[tuple[str, str]] = set()
        for source, ids in by_source.items():
            for id_piece in _pieces(ids, INGEST_PIECE_MAX):
                rows = conn.execute(_seen_select_sql(len(id_piece)), [source, *id_piece])
                known.update((source, row[0]) for row in rows)
        fresh = [key for key in seen_rows if key not in known]
        for piece in _pieces(fresh, INGEST_PIECE_MAX):
            params = [v for key in piece for v in (key[0], key[1], seen_rows[key])]
            conn.execute(_insert_sql(_SEEN_INSERT, len(piece)), params)
        results, inbox = split_fresh(requests, set(fresh))
        for inbox_piece in _pieces(inbox, INGEST_PIECE_MAX):
            conn.execute(_insert_sql(_INBOX_INSERT, len(inbox_piece)), [v for row in inbox_piece for v in row])
        return results

    def backlog(self) -> int:
        """Events accepted and not processed. Ingest asks on every request (its 429), on the event
        loop: a read is kept for BACKLOG_FRESH_SECS and followed meanwhile by the ingest commits;
        any other write of this process has the next call read it again."""
        cached = self._backlog
        if cached is not None and time.monotonic() - cached[0] < BACKLOG_FRESH_SECS:
            return cached[1]
        # Two subqueries: each reads one end of the primary key, where `min(seq), max(seq)` in one
        # SELECT makes SQLite scan the whole table.
        row = self._conn().execute("SELECT (SELECT min(seq) FROM inbox), (SELECT max(seq) FROM inbox)").fetchone()
        value = 0 if row is None or row[0] is None else int(row[1]) - int(row[0]) + 1
        self._backlog = (time.monotonic(), value)
        return value

    # ------------------------------------------------------------------ processing

    @contextmanager
    def claim_chunk(self, limit: int, *, only: Sequence[int] | None = None) -> Iterator[SqliteChunk]:
        """The processor's unit of work with the events it applies (see ProcessingStore).

        One chunk at a time (`_chunk_lock`): that is the claim, since one process owns the file. The
        events are read before the write transaction starts, so that ingest never waits for the
        read; then ingest goes first (`give_way_to_ingest`; the processor child takes turns with it
        instead, `share_turn_flag`), and the chunk ends early when ingest starts waiting for the
        write lock (`SqliteChunk.should_commit_early`).
        """
        with self._chunk_lock:
            self._use_large_cache()
            if self._turn is not None and self._remote_ingest is not None and self.ingest_waiting():
                limit = min(limit, TURN_EVENTS)  # a turn between two ingest groups (`share_turn_flag`)
            if only is None and self._chunk_events is not None:
                limit = min(limit, self._chunk_events)
            events = self._waiting_inbox(limit, only)
            if not events:
                # Nothing to apply: a read transaction, so an idle processor never takes the write lock.
                conn = self._conn()
                conn.execute("BEGIN")
                try:
                    yield SqliteChunk(conn, [], self.ingest_waiting)
                finally:
                    _rollback(conn)
                return
            # The processor child takes turns with the ingest writer; a processor thread lets it go first.
            turn = False
            if self._remote_ingest is not None:
                turn = self._take_turn()
            else:
                self.give_way_to_ingest()
            try:
                # Not fsynced: the inbox rows stay durable until this commit reaches the disk with the
                # next fsync of the log; lost to a power cut before, they are processed again
                # (docs/architecture.md, Durability).
                with self._write(proves_space=True, durable=False) as conn:
                    give_way_after = TURN_SECS if turn else GIVE_WAY_AFTER_SECS
                    chunk = SqliteChunk(conn, events, self.ingest_waiting, give_way_after)
                    yield chunk
                    chunk.flush_seen()
                self._chunk_events = _next_chunk_events(self._chunk_events, chunk.applied, len(events))
            finally:
                if turn:
                    self._end_turn()

    def _waiting_inbox(self, limit: int, only: Sequence[int] | None) -> list[InboxEvent]:
        conn = self._conn()
        if only is None:
            rows = conn.execute("SELECT seq, source, received_at, body FROM inbox ORDER BY seq LIMIT ?", (limit,))
            return [_inbox_event(row) for row in rows]
        events: list[InboxEvent] = []
        for piece in _pieces(sorted(only)):
            marks = ", ".join("?" * len(piece))
            query = f"SELECT seq, source, received_at, body FROM inbox WHERE seq IN ({marks}) ORDER BY seq"
            events += [_inbox_event(row) for row in conn.execute(query, list(piece))]
        return events[:limit]

    @contextmanager
    def transaction(self, *, proves_space: bool = True) -> Iterator[SqliteTx]:
        """A unit of work without events (`proves_space`: see `_write`)."""
        with self._write(proves_space=proves_space) as conn:
            tx = SqliteTx(conn)
            yield tx
            tx.flush_seen()

    @contextmanager
    def dry_run(self) -> Iterator[SqliteTx]:
        """A transaction that is always rolled back (preview: decide everything, keep nothing).

        It writes before rolling back, so it queues for the write lock like any writer: inside
        `segcrit serve` (the admin's preview) it must not meet the other threads' transactions."""
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTx(conn)
            finally:
                conn.execute("ROLLBACK")

    # ------------------------------------------------------------------ delivery

    def due_changes(self, now: float, limit: int) -> list[PendingChange]:
        """Due changes, the oldest first, leaving out those of held audiences (they would fill every
        scan and starve the others)."""
        rows = (
            self._conn()
            .execute(
                "SELECT audience, id_type, id_value, desired, since, attempts, first_failure FROM targets "
                "WHERE desired != acked AND dead_letter_id IS NULL AND next_at <= ? "
                f"AND (claim_until IS NULL OR claim_until <= ?) {self._without_held_audiences()}ORDER BY since LIMIT ?",
                (now, now, limit),
            )
            .fetchall()
        )
        return [
            PendingChange(TargetKey(r[0], r[1], r[2]), add=bool(r[3]), since=r[4], attempts=r[5], first_failure_at=r[6])
            for r in rows
        ]

    def due_changes_of(self, audience: str, add: bool, id_type: str, now: float, limit: int) -> list[PendingChange]:
        """The due changes of one (audience, operation, identifier type), oldest first."""
        rows = (
            self._conn()
            .execute(
                "SELECT audience, id_type, id_value, desired, since, attempts, first_failure FROM targets "
                "WHERE audience = ? AND id_type = ? AND desired = ? AND acked != ? AND dead_letter_id IS NULL "
                "AND next_at <= ? AND (claim_until IS NULL OR claim_until <= ?) ORDER BY since LIMIT ?",
                (audience, id_type, int(add), int(add), now, now, limit),
            )
            .fetchall()
        )
        return [
            PendingChange(TargetKey(r[0], r[1], r[2]), add=bool(r[3]), since=r[4], attempts=r[5], first_failure_at=r[6])
            for r in rows
        ]

    def next_change_at(self) -> float | None:
        """When the earliest pending change becomes due (its retry time, or its claim's end), or None."""
        row = (
            self._conn()
            .execute(
                "SELECT min(max(next_at, coalesce(claim_until, 0))) FROM targets "
                "WHERE desired != acked AND dead_letter_id IS NULL"
            )
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def oldest_pending_since(self) -> float | None:
        """When the oldest change that delivery may send became pending (held audiences left out)."""
        row = (
            self._conn()
            .execute(
                "SELECT min(since) FROM targets WHERE desired != acked AND dead_letter_id IS NULL "
                + self._without_held_audiences()
            )
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def _without_held_audiences(self) -> str:
        """A condition on `targets` rows leaving out held audiences; none while no audience is held,
        so that the usual scan pays nothing for it."""
        if not self.held_audience_count():
            return ""
        return _WITHOUT_HELD_AUDIENCES

    def pending_count(self) -> int:
        """Changes waiting for delivery, held audiences' included (a running total: no scan)."""
        return self.counter("changes_pending")

    def claim_changes(self, keys: Sequence[TargetKey], add: bool, now: float, until: float) -> list[TargetKey]:
        """Before a call: claim the rows still due for this operation (see AudienceDeliveryStore);
        from then on what Criteo holds of them is unknown until it answers. Committed before the
        call, so that a crash during it leaves them uncertain rather than settled.

        One process owns the file, so every claim is this process's own: the answer that settles a
        row (ack, defer, dead letter) needs no check of who holds it."""
        groups: dict[tuple[str, str], list[str]] = {}
        for key in keys:
            groups.setdefault((key.audience, key.id_type), []).append(key.id_value)
        claimed: list[TargetKey] = []
        with self._write() as conn:
            for (audience, id_type), values in groups.items():
                for piece in _pieces(values):
                    marks = ", ".join("?" * len(piece))
                    rows = conn.execute(
                        f"UPDATE targets SET acked_before = acked, acked = {UNKNOWN}, claim_until = ? "
                        f"WHERE audience = ? AND id_type = ? AND id_value IN ({marks}) AND desired = ? "
                        "AND desired != acked AND dead_letter_id IS NULL AND next_at <= ? "
                        "AND (claim_until IS NULL OR claim_until <= ?) RETURNING id_value",
                        (until, audience, id_type, *piece, int(add), now, now),
                    ).fetchall()
                    claimed += [TargetKey(audience, id_type, row[0]) for row in rows]
        return claimed

    def release_claims(self) -> int:
        """End every claim as a lost answer (the rows stay unknown and are due); returns how many.

        At takeover (`owner=True`): one process owns the file, so a claim found in it was left by a
        process that died during the call, and need not wait for its expiry. The claims on Events
        API events and catalog products live in memory (`MemoryClaims`): they went with that process."""
        with self._write() as conn:
            return conn.execute(
                "UPDATE targets INDEXED BY targets_claimed SET claim_until = NULL, acked_before = NULL "
                "WHERE claim_until IS NOT NULL AND desired != acked AND dead_letter_id IS NULL"
            ).rowcount

    def ack_changes(self, keys: Iterable[TargetKey], add: bool, now: float) -> None:
        """Criteo answered: it holds (add) or no longer holds (remove) these identifiers."""
        acked = int(add)
        # Not fsynced (durable against a crash of the process, not of the machine): an
        # acknowledgement lost to a power cut leaves the claim to expire, and the change is sent
        # again, which Criteo takes as a no-op. The shorter the commit, the narrower the window in
        # which a crash resends what Criteo already applied.
        with self._write(durable=False) as conn:
            # An upsert: the row may have gone while the call was in flight (the audience was
            # re-resolved); Criteo holds the identifier all the same, so a new row makes it pending removal.
            conn.executemany(
                "INSERT INTO targets (audience, id_type, id_value, desired, acked, since) VALUES (?, ?, ?, 0, ?, ?) "
                "ON CONFLICT (audience, id_type, id_value) DO UPDATE SET acked = excluded.acked, attempts = 0, "
                "next_at = 0, first_failure = NULL, claim_until = NULL, acked_before = NULL, "
                "since = CASE WHEN targets.desired != excluded.acked THEN excluded.since ELSE targets.since END",
                [(k.audience, k.id_type, k.id_value, acked, now) for k in keys],
            )
            # Rows that are neither wanted nor held carry no information any more.
            if not add:
                conn.executemany(
                    "DELETE FROM targets WHERE audience = ? AND id_type = ? AND id_value = ? "
                    "AND desired = 0 AND acked = 0",
                    [(k.audience, k.id_type, k.id_value) for k in keys],
                )

    def defer_changes(self, keys: Iterable[TargetKey], next_at: float, now: float, *, maybe_applied: bool) -> None:
        """The call failed: try again at `next_at`. Its claim ends; unless the call `maybe_applied`
        (its answer was lost), Criteo holds what it held before."""
        with self._write() as conn:
            conn.executemany(
                f"UPDATE targets SET attempts = attempts + 1, next_at = ?, "
                f"first_failure = coalesce(first_failure, ?), {_END_CLAIM} "
                "WHERE audience = ? AND id_type = ? AND id_value = ?",
                [(next_at, now, maybe_applied, k.audience, k.id_type, k.id_value) for k in keys],
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
        """Park these changes under a new dead letter (their claim ends as in `defer_changes`)."""
        if not keys:
            raise ValueError("a dead letter needs at least one change")
        first = keys[0]
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO dead_letters (created_at, audience, operation, id_type, count, status, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    now,
                    first.audience,
                    "add" if add else "remove",
                    first.id_type,
                    len(keys),
                    status,
                    error[:4000],
                ),
            )
            letter_id = int(cursor.lastrowid or 0)
            conn.executemany(
                f"UPDATE targets SET dead_letter_id = ?, {_END_CLAIM} "
                "WHERE audience = ? AND id_type = ? AND id_value = ?",
                [(letter_id, maybe_applied, k.audience, k.id_type, k.id_value) for k in keys],
            )
        return letter_id

    def replay_dead_letters(self, audience: str | None, now: float) -> int:
        """Put the open dead letters (of one audience) back on the delivery queue; returns how many.

        At most REPLAY_BATCH rows go back per transaction, ingest going first in between: the admin
        UI's Replay button runs inside `segcrit serve`, where a letter of 50,000 identifiers must
        not hold the write lock while acknowledgements wait. A crash part-way leaves a letter open
        with fewer rows; replaying again releases the rest.
        """
        where, params = ("AND audience = ?", (audience,)) if audience else ("", ())
        ids = [
            r[0] for r in self._conn().execute(f"SELECT id FROM dead_letters WHERE replayed_at IS NULL {where}", params)
        ]
        left = ids
        while left:
            left = self._release_dead_letters(left, now)
            if left:
                self.give_way_to_ingest()
        return len(ids)

    def _release_dead_letters(self, ids: list[int], now: float) -> list[int]:
        """Release up to REPLAY_BATCH rows of these letters, in order, in one transaction, marking the
        letters emptied as replayed; returns the letters that may still hold rows."""
        budget = REPLAY_BATCH
        with self._write() as conn:
            for index, letter_id in enumerate(ids):
                for statement, resets_since in _RELEASE_STATEMENTS:
                    params = (now, letter_id, budget) if resets_since else (letter_id, budget)
                    budget -= conn.execute(statement, params).rowcount
                    if budget == 0:
                        return ids[index:]
                conn.execute("UPDATE dead_letters SET replayed_at = ? WHERE id = ?", (now, letter_id))
        return []

    def dead_letters(self, limit: int = 100, include_replayed: bool = False) -> list[DeadLetter]:
        where = "" if include_replayed else "WHERE replayed_at IS NULL"
        rows = (
            self._conn()
            .execute(
                "SELECT id, created_at, audience, operation, id_type, count, status, error, replayed_at "
                f"FROM dead_letters {where} ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [DeadLetter(*r) for r in rows]

    def failed_event_count(self) -> int:
        row = self._conn().execute("SELECT count(*) FROM failed_events").fetchone()
        return int(row[0]) if row else 0

    def dead_letter_count(self) -> int:
        """Dead letters not replayed (a running total: no scan)."""
        return self.counter("dead_letters")

    # ------------------------------------------------------------------ counters

    def counter(self, name: str) -> int:
        """A running total of the `counters` table (0 when it was never counted)."""
        row = self._conn().execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def counters(self, prefix: str) -> dict[str, int]:
        """The running totals whose names start with `prefix`, by the rest of their name."""
        rows = self._conn().execute(
            "SELECT name, value FROM counters WHERE name >= ? AND name < ? ORDER BY name",
            (prefix, prefix + "\U0010ffff"),
        )
        return {str(name)[len(prefix) :]: int(value) for name, value in rows}

    # ------------------------------------------------------------------ audiences

    def audience(self, name: str) -> AudienceRecord | None:
        row = (
            self._conn()
            .execute(
                "SELECT name, segment_id, auto_create, created_by_us, held_since FROM audiences WHERE name = ?",
                (name,),
            )
            .fetchone()
        )
        return None if row is None else AudienceRecord(row[0], row[1], bool(row[2]), bool(row[3]), row[4])

    def audiences(self) -> list[AudienceRecord]:
        rows = (
            self._conn()
            .execute("SELECT name, segment_id, auto_create, created_by_us, held_since FROM audiences ORDER BY name")
            .fetchall()
        )
        return [AudienceRecord(r[0], r[1], bool(r[2]), bool(r[3]), r[4]) for r in rows]

    def held_audience_count(self) -> int:
        """Audiences over max_new_audiences_per_day (a running total: no scan)."""
        return self.counter("audiences_held")

    def held_audiences(self, limit: int) -> list[tuple[str, float]]:
        """Audiences over max_new_audiences_per_day, the longest held first: (name, held since)."""
        rows = self._conn().execute(
            "SELECT name, held_since FROM audiences WHERE held_since IS NOT NULL ORDER BY held_since, name LIMIT ?",
            (limit,),
        )
        return [(str(name), float(since)) for name, since in rows]

    def admit_held_audiences(self, day: int, allowance: int) -> list[str]:
        """Admit the longest-held audiences that `day`'s allowance still has room for; returns them."""
        with self._write() as conn:
            used = conn.execute("SELECT count(*) FROM audiences WHERE admitted_day = ?", (day,)).fetchone()[0]
            names = [
                str(row[0])
                for row in conn.execute(
                    "SELECT name FROM audiences WHERE held_since IS NOT NULL ORDER BY held_since, name LIMIT ?",
                    (max(0, allowance - int(used)),),
                )
            ]
            conn.executemany(
                "UPDATE audiences SET held_since = NULL, admitted_day = ? WHERE name = ?", [(day, n) for n in names]
            )
        return names

    def release_audiences(self, names: Iterable[str]) -> list[str]:
        """Admit these held audiences without using any allowance (the config names them); returns
        those that were held."""
        wanted = list(names)
        released: list[str] = []
        with self._write() as conn:
            for piece in _pieces(wanted):
                marks = ", ".join("?" * len(piece))
                released += [
                    str(row[0])
                    for row in conn.execute(
                        f"UPDATE audiences SET held_since = NULL WHERE held_since IS NOT NULL AND name IN ({marks}) "
                        "RETURNING name",
                        list(piece),
                    )
                ]
        return released

    def save_audience(self, record: AudienceRecord) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO audiences (name, segment_id, auto_create, created_by_us) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET segment_id = excluded.segment_id, "
                "auto_create = excluded.auto_create, created_by_us = excluded.created_by_us",
                (record.name, record.segment_id, int(record.auto_create), int(record.created_by_us)),
            )

    def reset_audience_acks(self, name: str, now: float) -> None:
        """The segment was replaced: nothing counts as acknowledged (nor as possibly held: that was
        the old segment); resend the whole membership."""
        with self._write() as conn:
            conn.execute("DELETE FROM targets WHERE audience = ? AND desired = 0", (name,))
            conn.execute(
                "UPDATE targets SET acked = 0, since = ?, attempts = 0, next_at = 0, first_failure = NULL, "
                "claim_until = NULL, acked_before = NULL WHERE audience = ?",
                (now, name),
            )

    def mark_audience_unknown(self, name: str, now: float) -> None:
        """A call that may empty the audience's list (a wipe) is about to leave: until it is answered,
        nothing of the audience counts as known, so that if its answer is lost every identifier is
        sent again as its desired state says."""
        with self._write() as conn:
            conn.execute(
                f"UPDATE targets SET acked = {UNKNOWN}, since = ?, attempts = 0, next_at = 0, first_failure = NULL "
                "WHERE audience = ?",
                (now, name),
            )

    def audience_stats(self) -> list[AudienceStats]:
        rows = (
            self._conn()
            .execute(
                f"SELECT t.audience, a.segment_id, sum(t.desired), sum(t.acked = {HELD}), "
                "sum(t.desired != t.acked AND t.dead_letter_id IS NULL), sum(t.dead_letter_id IS NOT NULL), "
                "a.held_since IS NOT NULL "
                "FROM targets t LEFT JOIN audiences a ON a.name = t.audience GROUP BY t.audience ORDER BY t.audience"
            )
            .fetchall()
        )
        seen = {r[0] for r in rows}
        stats = [AudienceStats(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), bool(r[6])) for r in rows]
        stats += [
            AudienceStats(a.name, a.segment_id, 0, 0, 0, 0, a.held_since is not None)
            for a in self.audiences()
            if a.name not in seen
        ]
        return sorted(stats, key=lambda s: s.name)

    def acknowledged_members(self, audience: str) -> dict[str, set[str]]:
        """What Criteo acknowledged for one audience: identifier type -> values."""
        out: dict[str, set[str]] = {}
        for id_type, id_value in self._conn().execute(
            "SELECT id_type, id_value FROM targets WHERE audience = ? AND acked = 1", (audience,)
        ):
            out.setdefault(id_type, set()).add(id_value)
        return out

    # ------------------------------------------------------------------ rate budget

    def rate_limiter(self, name: str, limit_per_minute: int, clock: Clock, sleep: Sleep) -> RateLimiter:
        """One process owns the file: the window it keeps in memory is the whole budget, shared by
        every limiter of that budget (several delivery workers, a resync) through one CallWindow."""
        with self._conns_lock:
            window = self._budgets.setdefault(name, CallWindow(RATE_LIMIT_WINDOW_SECS + DEFAULT_MARGIN_SECS))
        return SlidingWindowLimiter(limit_per_minute, clock, sleep, window=window)

    # ------------------------------------------------------------------ leases

    def lease_holder(self, name: str, now: float) -> str | None:
        row = (
            self._conn().execute("SELECT holder FROM leases WHERE name = ? AND expires_at > ?", (name, now)).fetchone()
        )
        return None if row is None else str(row[0])

    def try_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Take or renew a named lease; True when `holder` holds it until now + ttl."""
        with self._write() as conn:
            row = conn.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                (name, holder, now + ttl),
            )
        return True


_SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
)
_PIECE_MAX = 256


def _wait_while(condition: Callable[[], bool], timeout: float, every: float) -> None:
    """Look at `condition` every `every` seconds until it is false or `timeout` has passed (a value
    another process changes in shared memory has nothing to wait on)."""
    deadline = time.monotonic() + timeout
    while condition() and time.monotonic() < deadline:
        time.sleep(every)


def _max_rows_per_insert(columns: int, wanted: int) -> int:
    """`wanted`, or fewer where this SQLite allows fewer parameters a statement (999 before 3.32)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        return min(wanted, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // columns)


INGEST_PIECE_MAX = _max_rows_per_insert(3, 2_048)  # rows an ingest statement inserts at most
# Ends a call's claim on a row; its parameter says whether the call may have been applied: if not,
# acked goes back to what it was before the call (a row not claimed keeps its acked).
_END_CLAIM = (
    "acked = CASE WHEN ? THEN acked ELSE coalesce(acked_before, acked) END, claim_until = NULL, acked_before = NULL"
)
# Leaves out the targets of audiences held over max_new_audiences_per_day (not the HELD of `acked`).
_WITHOUT_HELD_AUDIENCES = (
    "AND NOT EXISTS (SELECT 1 FROM audiences a WHERE a.name = targets.audience AND a.held_since IS NOT NULL) "
)
# A dead letter's rows back on the queue, `LIMIT ?` of them: ([now,] letter id, limit).
_RELEASE_STATEMENTS = (
    # Neither wanted nor held any more (the person left while it was parked): nothing to send.
    (
        f"DELETE FROM targets WHERE (audience, id_type, id_value) IN (SELECT audience, id_type, id_value "
        f"FROM targets WHERE dead_letter_id = ? AND desired = 0 AND acked = {NOT_HELD} LIMIT ?)",
        False,
    ),
    (
        "UPDATE targets SET dead_letter_id = NULL, attempts = 0, next_at = 0, first_failure = NULL, since = ? "
        "WHERE (audience, id_type, id_value) IN (SELECT audience, id_type, id_value FROM targets "
        "WHERE dead_letter_id = ? LIMIT ?)",
        True,
    ),
    (
        "UPDATE criteo_events SET dead_letter_id = NULL, attempts = 0, next_at = 0, first_failure = NULL "
        "WHERE id IN (SELECT id FROM criteo_events WHERE dead_letter_id = ? LIMIT ?)",
        False,
    ),
    (
        "UPDATE products SET dead_letter_id = NULL, attempts = 0, next_at = 0, first_failure = NULL "
        "WHERE (merchant_id, product_id) IN (SELECT merchant_id, product_id FROM products "
        "WHERE dead_letter_id = ? LIMIT ?)",
        False,
    ),
)
_SEEN_INSERT = "INSERT OR IGNORE INTO seen (source, message_id, seen_at) VALUES "
_INBOX_INSERT = "INSERT INTO inbox (source, received_at, body) VALUES "


def _statements(script: str) -> Iterator[str]:
    """The statements of a SQL script, each whole (a trigger's body with its inner semicolons)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    leftover = [line for line in statement.splitlines() if line.strip() and not line.strip().startswith("--")]
    if leftover:
        raise StoreError(f"a migration ends in an incomplete statement: {leftover[0][:80]!r}")


def _pieces(items: Sequence[_T], size: int = _PIECE_MAX) -> Iterator[Sequence[_T]]:
    """`items` in runs of at most `size`, one multi-row statement each (batches mostly have the
    same size, so their statements stay in the connection's statement cache)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@functools.cache
def _insert_sql(prefix: str, rows: int) -> str:
    return prefix + ", ".join(["(?, ?, ?)"] * rows)


@functools.cache
def _seen_select_sql(ids: int) -> str:
    """The messageIds of one source, among `ids` of them, that were seen before."""
    return "SELECT message_id FROM seen WHERE source = ? AND message_id IN (" + ", ".join(["?"] * ids) + ")"


def _set_result(future: asyncio.Future[AcceptResult], result: AcceptResult) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[AcceptResult], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class SqliteTx(CommerceTxMixin, CohortTxMixin, EnrichmentTxMixin):
    """The unit of work of the processor and the scheduled jobs (all inside one transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._tombstones_seen: bool | None = None  # any tombstone at all? (read once per transaction)
        self._seen: dict[int, float] = {}  # profile -> latest event time, until flush_seen
        # The owners of the identifiers read at `hold_identifiers` (None: not known), kept current
        # by this transaction's own writes, so that each event's lookup costs no statement.
        self._owners: dict[tuple[str, str], int | None] = {}

    # ---- identity

    def hold_identifiers(self, idents: Iterable[tuple[str, str]]) -> None:
        """Nothing to lock (one writer at a time: the write transaction holds the database); the
        owners of all these identifiers are read now, a statement per kind and 256 values, rather
        than a statement per event (`find_profiles` answers from them)."""
        by_kind: dict[str, set[str]] = {}
        for kind, value in idents:
            if (kind, value) not in self._owners:
                by_kind.setdefault(kind, set()).add(value)
        for kind, values in by_kind.items():
            ordered = sorted(values)  # the primary key's order: each statement walks it forward
            for piece in _pieces(ordered):
                self._owners.update(((kind, value), None) for value in piece)
                rows = self.conn.execute(_owners_sql(len(piece)), (kind, *piece))
                self._owners.update(((kind, value), int(pid)) for value, pid in rows)

    def quarantine_event(self, event: InboxEvent, error: str, now: float) -> None:
        """Move an event out of the inbox into `failed_events` with the reason (`ChunkTx.set_aside`;
        tests put events there directly)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO failed_events (seq, source, received_at, body, error, failed_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (event.seq, event.source, event.received_at, orjson.dumps(event.message), error[:2000], now),
        )
        self.conn.execute("DELETE FROM inbox WHERE seq = ?", (event.seq,))

    def find_profiles(self, idents: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        pairs = list(idents)
        if not pairs:
            return {}
        owners = self._owners
        if all(pair in owners for pair in pairs):
            return {pair: pid for pair in pairs if (pid := owners[pair]) is not None}
        # One statement for all of an event's identifiers. OR-ed equalities, not a row-value IN:
        # SQLite searches the primary key once per pair for the former, scans the table for the latter.
        rows = self.conn.execute(
            f"SELECT kind, value, profile_id FROM identifiers WHERE {_pairs_clause(len(pairs))}",
            [part for pair in pairs for part in pair],
        ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def _forget_owner(self, profile_id: int, successor: int | None) -> None:
        """The profile's identifiers now belong to `successor` (a merge) or to no one (erased)."""
        for key, owner in self._owners.items():
            if owner == profile_id:
                self._owners[key] = successor

    def identifier_counts(self, profile_id: int) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT kind, count(*) FROM identifiers WHERE profile_id = ? GROUP BY kind", (profile_id,)
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def create_profile(self, now: float) -> int:
        cursor = self.conn.execute("INSERT INTO profiles (created_at, last_seen_at) VALUES (?, ?)", (now, now))
        return int(cursor.lastrowid or 0)

    def touch_profile(self, profile_id: int, seen_at: float) -> None:
        """Note that the person was seen; written by `flush_seen` (before the commit), once per
        profile per transaction."""
        if seen_at > self._seen.get(profile_id, float("-inf")):
            self._seen[profile_id] = seen_at

    def flush_seen(self) -> None:
        """Write the times people were seen, each only when it moves `last_seen_at` forward by more
        than LAST_SEEN_SLACK_SECS: a returning visitor's every page view would otherwise rewrite
        their profile row and move its `profiles_by_last_seen` entry (two random pages per event)."""
        if self._seen:
            self.conn.executemany(
                "UPDATE profiles SET last_seen_at = ? WHERE id = ? AND last_seen_at < ?",
                [(ts, pid, ts - LAST_SEEN_SLACK_SECS) for pid, ts in self._seen.items()],
            )
            self._seen.clear()

    def attach_identifier(self, profile_id: int, ident: Identifier, ts: float) -> None:
        inserted = self.conn.execute(
            "INSERT INTO identifiers (kind, value, profile_id, extra, active, active_ts) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, value) DO NOTHING",
            (ident.kind, ident.value, profile_id, ident.extra, int(ident.active), ts),
        ).rowcount
        key = (ident.kind, ident.value)
        if inserted:
            self._owners[key] = profile_id
        else:
            self._owners.pop(key, None)  # someone's already: read it again when asked

    def set_identifier_active(self, kind: str, value: str, active: bool, ts: float) -> bool:
        """Record ad tracking on/off for an identifier; the latest timestamp wins. True if changed."""
        cursor = self.conn.execute(
            "UPDATE identifiers SET active = ?, active_ts = ? WHERE kind = ? AND value = ? "
            "AND active_ts <= ? AND active != ?",
            (int(active), ts, kind, value, ts, int(active)),
        )
        if cursor.rowcount == 0:
            self.conn.execute(
                "UPDATE identifiers SET active_ts = ? WHERE kind = ? AND value = ? AND active_ts < ?",
                (ts, kind, value, ts),
            )
        return cursor.rowcount > 0

    def merge_profiles(self, into: int, other: int) -> None:
        """Move everything of `other` to `into`; per audience and for consent the latest ts wins."""
        if other in self._seen:
            self.touch_profile(into, self._seen.pop(other))
        self._forget_owner(other, into)
        self.conn.execute("UPDATE identifiers SET profile_id = ? WHERE profile_id = ?", (into, other))
        self.conn.execute(
            "INSERT INTO memberships (profile_id, audience, member, ts) "
            "SELECT ?, audience, member, ts FROM memberships WHERE profile_id = ? "
            "ON CONFLICT (profile_id, audience) DO UPDATE SET member = excluded.member, ts = excluded.ts "
            "WHERE excluded.ts > memberships.ts",
            (into, other),
        )
        self.conn.execute("DELETE FROM memberships WHERE profile_id = ?", (other,))
        row = self.conn.execute(
            "SELECT consent, consent_ts, created_at, last_seen_at FROM profiles WHERE id = ?", (other,)
        ).fetchone()
        if row is not None and row[1] is not None:
            self.set_consent(into, bool(row[0]), float(row[1]))
        if row is not None:
            self.conn.execute(
                "UPDATE profiles SET created_at = min(created_at, ?), last_seen_at = max(last_seen_at, ?) WHERE id = ?",
                (row[2], row[3], into),
            )
        self.conn.execute("UPDATE targets SET profile_id = ? WHERE profile_id = ?", (into, other))
        self.merge_commerce(into, other)
        self.merge_cohorts(into, other)
        self.merge_lookups(into, other)
        self.conn.execute("DELETE FROM profiles WHERE id = ?", (other,))

    def set_consent(self, profile_id: int, consent: bool, ts: float) -> bool:
        cursor = self.conn.execute(
            "UPDATE profiles SET consent = ?, consent_ts = ? WHERE id = ? AND (consent_ts IS NULL OR consent_ts <= ?)",
            (int(consent), ts, profile_id, ts),
        )
        return cursor.rowcount > 0

    def set_membership(self, profile_id: int, audience: str, member: bool, ts: float) -> bool:
        """Upsert when newer (ties: the later arrival wins). True if the row changed."""
        cursor = self.conn.execute(
            "INSERT INTO memberships (profile_id, audience, member, ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (profile_id, audience) DO UPDATE SET member = excluded.member, ts = excluded.ts "
            "WHERE excluded.ts >= memberships.ts",
            (profile_id, audience, int(member), ts),
        )
        return cursor.rowcount > 0

    def load_profile(self, profile_id: int) -> ProfileState | None:
        row = self.conn.execute("SELECT consent, consent_ts FROM profiles WHERE id = ?", (profile_id,)).fetchone()
        if row is None:
            return None
        idents = [
            Identifier(kind=r[0], value=r[1], extra=r[2], active=bool(r[3]))
            for r in self.conn.execute(
                "SELECT kind, value, extra, active FROM identifiers WHERE profile_id = ?", (profile_id,)
            )
        ]
        memberships = {
            r[0]: (bool(r[1]), float(r[2]))
            for r in self.conn.execute(
                "SELECT audience, member, ts FROM memberships WHERE profile_id = ?", (profile_id,)
            )
        }
        consent = None if row[0] is None else bool(row[0])
        return ProfileState(profile_id, idents, consent, row[1], memberships)

    def set_targets(self, profile_id: int, desired: set[TargetKey], now: float) -> int:
        """Make the profile's targets equal `desired`; returns how many rows changed desire."""
        current = {
            TargetKey(r[0], r[1], r[2]): (bool(r[3]), int(r[4]), r[5] is not None)
            for r in self.conn.execute(
                "SELECT audience, id_type, id_value, desired, acked, dead_letter_id FROM targets WHERE profile_id = ?",
                (profile_id,),
            )
        }
        changed = 0
        for key, (was, acked, dead) in current.items():
            if key in desired:
                continue
            if acked == NOT_HELD and not dead:
                # Neither wanted nor (possibly) held: the row carries no information any more.
                self.conn.execute(
                    "DELETE FROM targets WHERE audience = ? AND id_type = ? AND id_value = ?",
                    (key.audience, key.id_type, key.id_value),
                )
                changed += was
            elif was:
                changed += 1
                self.conn.execute(
                    "UPDATE targets SET desired = 0, since = ?, attempts = 0, next_at = 0, first_failure = NULL "
                    "WHERE audience = ? AND id_type = ? AND id_value = ?",
                    (now, key.audience, key.id_type, key.id_value),
                )
        for key in desired:
            if current.get(key, (False,))[0]:
                continue
            changed += 1
            # A row may exist without this profile (an erased person's identifier seen again).
            self.conn.execute(
                "INSERT INTO targets (audience, id_type, id_value, profile_id, desired, since) "
                "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (audience, id_type, id_value) DO UPDATE SET desired = 1, "
                "profile_id = excluded.profile_id, since = excluded.since, attempts = 0, next_at = 0, "
                "first_failure = NULL",
                (key.audience, key.id_type, key.id_value, profile_id, now),
            )
        return changed

    def pending_of_profile(self, profile_id: int) -> list[tuple[TargetKey, bool]]:
        """The profile's changes waiting for delivery: (target, add?)."""
        rows = self.conn.execute(
            "SELECT audience, id_type, id_value, desired FROM targets WHERE profile_id = ? "
            "AND desired != acked AND dead_letter_id IS NULL ORDER BY audience, id_type",
            (profile_id,),
        ).fetchall()
        return [(TargetKey(r[0], r[1], r[2]), bool(r[3])) for r in rows]

    def ensure_audience(self, name: str, auto_create: bool) -> None:
        self.conn.execute(
            "INSERT INTO audiences (name, auto_create) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, int(auto_create)),
        )

    def ensure_new_audience(self, name: str, auto_create: bool, now: float, day: int, allowance: int) -> bool:
        """Record an audience that traffic names (an Engage key) the first time it is seen: admitted
        while `day` has used fewer than `allowance` admissions, else held. True when it was new."""
        inserted = self.conn.execute(
            "INSERT INTO audiences (name, auto_create, first_seen_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (name, int(auto_create), now),
        ).rowcount
        if not inserted:
            return False
        used = self.conn.execute("SELECT count(*) FROM audiences WHERE admitted_day = ?", (day,)).fetchone()[0]
        if int(used) < allowance:
            self.conn.execute("UPDATE audiences SET admitted_day = ? WHERE name = ?", (day, name))
        else:
            self.conn.execute("UPDATE audiences SET held_since = ? WHERE name = ?", (now, name))
        return True

    def add_to_counter(self, name: str, amount: int = 1) -> None:
        self.conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
            (name, amount, amount),
        )

    # ---- deletion

    def tombstoned_since(self, idents: Iterable[tuple[str, str]], ts: float) -> bool:
        """True if any identifier belongs to a person deleted at or after `ts`."""
        pairs = list(idents)
        if not pairs or not self._any_tombstone():
            return False
        row = self.conn.execute(
            f"SELECT 1 FROM tombstones WHERE ({_pairs_clause(len(pairs))}) AND deleted_at >= ? LIMIT 1",
            [*[part for pair in pairs for part in pair], ts],
        ).fetchone()
        return row is not None

    def _any_tombstone(self) -> bool:
        # Most shops delete rarely: one look per transaction spares every event a query.
        if self._tombstones_seen is None:
            self._tombstones_seen = self.conn.execute("SELECT 1 FROM tombstones LIMIT 1").fetchone() is not None
        return self._tombstones_seen

    def erase_profile(self, profile_id: int, deleted_at: float, tombstone_kinds: set[str]) -> None:
        """Forget the person: tombstone their ids of `tombstone_kinds`, drop identity, memberships,
        suppressions, orders and queued Events API events, keep targets (as desired = 0, without
        a profile) that Criteo holds or may hold, until it acknowledges their removal."""
        self._forget_owner(profile_id, None)
        for kind, value in self.conn.execute(
            "SELECT kind, value FROM identifiers WHERE profile_id = ?", (profile_id,)
        ).fetchall():
            if kind in tombstone_kinds:
                self.add_tombstone(kind, value, deleted_at)
        self.conn.execute(
            "DELETE FROM targets WHERE profile_id = ? AND acked = 0 AND dead_letter_id IS NULL", (profile_id,)
        )
        # A dead-lettered add may have reached Criteo (an answer lost before it was given up): it
        # counts as unknown, so that the removal goes out with the others; a dead-lettered removal
        # is owed all the more.
        self.conn.execute(
            "UPDATE targets SET desired = 0, acked = CASE WHEN acked = ? THEN ? ELSE acked END, profile_id = NULL, "
            "since = ?, attempts = 0, next_at = 0, first_failure = NULL, dead_letter_id = NULL "
            "WHERE profile_id = ? AND dead_letter_id IS NOT NULL",
            (NOT_HELD, UNKNOWN, deleted_at, profile_id),
        )
        self.conn.execute(
            "UPDATE targets SET desired = 0, profile_id = NULL, since = ?, attempts = 0, next_at = 0 "
            "WHERE profile_id = ?",
            (deleted_at, profile_id),
        )
        self.conn.execute("DELETE FROM identifiers WHERE profile_id = ?", (profile_id,))
        self.conn.execute("DELETE FROM memberships WHERE profile_id = ?", (profile_id,))
        self.forget_commerce(profile_id)
        self.forget_cohorts(profile_id)
        self.forget_lookups(profile_id)
        self.conn.execute("DELETE FROM profiles WHERE id = ?", (profile_id,))

    def add_tombstone(self, kind: str, value: str, deleted_at: float) -> None:
        """Record the deletion, and queue the erasure of the person's events still waiting in the
        inbox or set aside (`Processor.erase_waiting_events`: a scan too long for this transaction)."""
        self._tombstones_seen = True
        for table in ("tombstones", "erasures"):
            self.conn.execute(
                f"INSERT INTO {table} (kind, value, deleted_at) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, value) DO UPDATE SET deleted_at = max(deleted_at, excluded.deleted_at)",
                (kind, value, deleted_at),
            )


class SqliteChunk(SqliteTx):
    """A unit of work with the inbox events it claimed (`SqliteStore.claim_chunk`)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        events: list[InboxEvent],
        ingest_waiting: Callable[[], bool],
        give_way_after: float = GIVE_WAY_AFTER_SECS,
    ) -> None:
        super().__init__(conn)
        self._events = events
        self._ingest_waiting = ingest_waiting
        self._give_way_after = give_way_after
        self._started = time.monotonic()
        self.applied = 0  # events marked done (`done`)

    @property
    def events(self) -> list[InboxEvent]:
        return self._events

    def should_commit_early(self) -> bool:
        """Ingest waits for the write lock and this transaction has run for GIVE_WAY_AFTER_SECS (for
        TURN_SECS in a turn the processor child asked for)."""
        return self._ingest_waiting() and time.monotonic() - self._started >= self._give_way_after

    def done(self, events: Sequence[InboxEvent]) -> None:
        self.applied = len(events)
        seqs = [event.seq for event in events]
        if not seqs:
            return
        if len(seqs) == seqs[-1] - seqs[0] + 1:
            # Claimed in order without gaps: one range delete instead of one per event.
            self.conn.execute("DELETE FROM inbox WHERE seq BETWEEN ? AND ?", (seqs[0], seqs[-1]))
            return
        self.conn.executemany("DELETE FROM inbox WHERE seq = ?", [(s,) for s in seqs])

    def set_aside(self, event: InboxEvent, error: str, now: float) -> None:
        self.quarantine_event(event, error, now)


def _next_chunk_events(current: int | None, applied: int, claimed: int) -> int | None:
    """What the next chunk claims at most (None: what the processor asks) after one that claimed
    `claimed` events and applied `applied` (CHUNK_AFTER_GIVE_WAY)."""
    if applied < claimed:
        return max(CHUNK_EVENTS_MIN, int(applied * CHUNK_AFTER_GIVE_WAY))
    if current is None or 2 * current >= CHUNK_EVENTS_MAX:
        return None
    return 2 * current


def _inbox_event(row: Sequence[Any]) -> InboxEvent:
    return InboxEvent(seq=row[0], source=row[1], received_at=row[2], message=orjson.loads(row[3]))


@functools.cache
def _owners_sql(values: int) -> str:
    return f"SELECT value, profile_id FROM identifiers WHERE kind = ? AND value IN ({', '.join(['?'] * values)})"


def _pairs_clause(count: int) -> str:
    return " OR ".join(["(kind = ? AND value = ?)"] * count)


def open_sqlite(url: str, *, owner: bool = False, migrate: bool = True) -> SqliteStore:
    return SqliteStore(sqlite_path(url), owner=owner, migrate=migrate)
