"""Processing benchmark (SPEC §9): events/s through the Processor from a pre-filled inbox, against
the simplest durable code that stores the same rows, in the same run.

    .venv/bin/python benchmarks/processing.py [--events 100000] [--population 200000] [--warm 0]
        [--million] [--no-ceiling] [--store sqlite|postgresql://...]

In this process, on a SQLite store in a temporary folder (WAL, synchronous=FULL, as served), or
with `--store postgresql://...` on that PostgreSQL database, in a schema of its own dropped at the
end (one process; phase C's benchmark runs two):

1. fills the inbox with `--events` realistic messages (benchmarks/bench_events.py: the ingest
   benchmark's mix) the way `/v1/batch` stores them: `prepare_messages`, then `accept_sync` per
   batch of 100. With `--warm N`, N more messages of the same population are processed first,
   so that more of the measured events meet people already known (merges, attaches);
2. runs `Processor.drain_once()` (identity, consent, audience_sync flow, membership, targets;
   chunks of 500, one transaction each) until the inbox is empty, with no other thread running.

The ceiling (SQLite): a second store file, opened the same way (same migrations, pragmas and page
cache), filled with the same messages, drained by the simplest durable code that stores the rows
processing stores for them: per 500 events, one transaction that reads the chunk from the inbox,
builds the tuples (profile ids from an in-memory map, no lookups, no decisions) and writes them with
one prepared `executemany` per table (profiles, identifiers, memberships, targets, traits), then
deletes the chunk from the inbox. It is filled and drained after the processor's run (the
processor's side is exactly what the benchmark measured before it had a ceiling, so that
benchmarks/compare.py compares like with like).

Reported: events/s over the whole drain and over each tenth of it, CPU seconds per event, what the
store holds at the end; the ceiling's events/s and the ratio (PASS/MISS for >= 0.25); the first
and last tenth (PASS/MISS for "last tenth at most 20 % slower", SPEC's figure with `--million`:
1,000,000 events). `RESULT name=value` lines for benchmarks/compare.py. Bounded by
`--timeout-secs`; `--check` makes a MISS exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson

from bench_events import EventFactory, Population
from segcrit.clock import SystemClock
from segcrit.config import parse_config
from segcrit.domain import InboxEvent
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.sources.validate import TRACKING_TYPES, MessageRules, prepare_messages
from segcrit.store.base import Store
from segcrit.store.sqlite import SqliteStore

TARGET_RATIO = 0.25  # of the ceiling (SPEC §9)
MAX_SLOWDOWN = 0.20  # last tenth against the first (SPEC §9, on a 1,000,000-event run)
BATCH = 100
CHUNK = 500

CONFIG = """\
store: sqlite:///{db}
sources:
  - {{name: web, type: tracking_api, write_key: bench-write-key}}
criteo:
  client_id: demo-client
  client_secret: demo-secret
  advertiser_id: "12345"
  api_url: http://127.0.0.1:9
identity:
  send: [email, madid]
flows:
  - type: audience_sync
"""


def fill(store: Store, factory: EventFactory, count: int) -> None:
    rules = MessageRules(types=TRACKING_TYPES, max_message_bytes=32_768)
    for start in range(0, count, BATCH):
        items = [factory.message() for _ in range(min(BATCH, count - start))]
        now = time.time()
        prepared = prepare_messages(items, rules, received_at=now)
        store.accept_sync("web", prepared.messages, now)


class Counted:
    """`count(table)` on the store the benchmark runs on."""

    def __init__(self, store: Store, postgres_url: str | None) -> None:
        self.store = store
        self.postgres_url = postgres_url

    def __call__(self, table: str) -> int:
        if self.postgres_url is None:
            assert isinstance(self.store, SqliteStore)
            return int(self.store._conn().execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        import psycopg

        with psycopg.connect(self.postgres_url) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0


class Ceiling:
    """The simplest durable code that stores the rows processing stores for these events (module
    docstring): one transaction per chunk, one prepared executemany per table, no lookups."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.profiles: dict[str, int] = {}  # person (anonymousId) -> profile id, in memory

    def drain_once(self) -> int:
        # The inbox is read and emptied by the store's own chunk (whatever form ingest gives its
        # rows): the same read, transaction and delete as the processor's.
        with self.store.claim_chunk(CHUNK) as chunk:
            events = chunk.events
            if not events:
                return 0
            self.write(chunk.conn, events)
            chunk.done(events)
        return len(events)

    def write(self, conn: sqlite3.Connection, events: Sequence[InboxEvent]) -> None:
        now = time.time()
        profiles: list[tuple[Any, ...]] = []
        identifiers: list[tuple[Any, ...]] = []
        memberships: list[tuple[Any, ...]] = []
        targets: list[tuple[Any, ...]] = []
        traits: list[tuple[Any, ...]] = []
        for event in events:
            message = event.message
            ts = message["_segcrit"]["ts"]
            person = message["anonymousId"]
            pid = self.profiles.get(person)
            if pid is None:
                pid = self.profiles[person] = len(self.profiles) + 1
            profiles.append((pid, now, ts))
            ids = [("anonymous_id", person, None)]
            if "userId" in message:
                ids.append(("user_id", message["userId"], None))
            ids += [("email", e["sha256"], e["md5"]) for e in message["_segcrit"]["emails"]]
            madid = message.get("context", {}).get("device", {}).get("advertisingId")
            if madid:
                ids.append(("madid", madid, None))
            identifiers += [(kind, value, pid, extra, ts) for kind, value, extra in ids]
            if message["type"] == "identify":
                traits.append((orjson.dumps(message["traits"]), ts, pid))
            audience = message.get("properties", {}).get("audience_key")
            if audience:
                memberships.append((pid, audience, ts))
                targets += [(audience, kind, value, pid, now) for kind, value, _ in ids if kind in ("email", "madid")]
        conn.executemany(
            "INSERT INTO profiles (id, created_at, last_seen_at) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at",
            profiles,
        )
        conn.executemany(
            "INSERT OR IGNORE INTO identifiers (kind, value, profile_id, extra, active, active_ts) "
            "VALUES (?, ?, ?, ?, 1, ?)",
            identifiers,
        )
        conn.executemany("UPDATE profiles SET traits = ?, traits_ts = ? WHERE id = ?", traits)
        conn.executemany(
            "INSERT OR REPLACE INTO memberships (profile_id, audience, member, ts) VALUES (?, ?, 1, ?)", memberships
        )
        conn.executemany(
            "INSERT OR IGNORE INTO targets (audience, id_type, id_value, profile_id, desired, since) "
            "VALUES (?, ?, ?, ?, 1, ?)",
            targets,
        )


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A URL to an empty schema of its own on the server at `url`, dropped afterwards."""
    import psycopg

    schema = f"segcrit_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            separator = "&" if "?" in url else "?"
            yield f"{url}{separator}options={quote(f'-c search_path={schema}')}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@contextlib.contextmanager
def bench_store(kind: str, folder: Path) -> Iterator[tuple[Store, Counted]]:
    if kind == "sqlite":
        store = SqliteStore(str(folder / "segcrit.db"))
        try:
            yield store, Counted(store, None)
        finally:
            store.close()
        return
    from segcrit.store.postgres import PostgresStore

    with postgres_schema(kind) as url:
        pg = PostgresStore(url, owner=True)
        try:
            yield pg, Counted(pg, url)
        finally:
            pg.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events measured")
    parser.add_argument("--million", action="store_true", help="1,000,000 events (SPEC's growth figure)")
    parser.add_argument("--population", type=int, default=200_000, help="distinct people")
    parser.add_argument("--warm", type=int, default=0, help="events processed before the measured ones")
    parser.add_argument("--no-ceiling", action="store_true", help="measure the processor alone")
    parser.add_argument("--timeout-secs", type=float, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--store", default="sqlite", help="sqlite (a temporary file) or a postgresql:// URL (a schema of its own)"
    )
    args = parser.parse_args()
    if args.million:
        args.events = 1_000_000
        args.timeout_secs = max(args.timeout_secs, 3_600)
    logging.basicConfig(level=logging.WARNING)

    folder = Path(tempfile.mkdtemp(prefix="segcrit-bench-processing-"))
    try:
        with bench_store(args.store, folder) as (store, count):
            ceiling: SqliteStore | None = None
            if args.store == "sqlite" and not args.no_ceiling:
                ceiling = SqliteStore(str(folder / "ceiling.db"))
            try:
                return run(args, store, count, folder, ceiling)
            finally:
                if ceiling is not None:
                    ceiling.close()
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


class Side:
    """One drain measured chunk by chunk: events done and the time spent on them (own time only)."""

    def __init__(self, total: int, step: Callable[[], int]) -> None:
        self.step = step
        self.tenth = max(1, total // 10)
        self.done = 0
        self.elapsed = 0.0
        self.cpu = 0.0
        self.marks: list[tuple[int, float]] = [(0, 0.0)]
        self.finished = False

    def advance(self) -> None:
        cpu0, t0 = time.process_time(), time.perf_counter()
        n = self.step()
        self.elapsed += time.perf_counter() - t0
        self.cpu += time.process_time() - cpu0
        self.done += n
        self.finished = n == 0
        if self.done >= len(self.marks) * self.tenth:
            self.marks.append((self.done, self.elapsed))

    def drain(self, deadline: float) -> bool:
        """Drain the inbox; False when the deadline passed first."""
        while not self.finished:
            if time.monotonic() > deadline:
                print(f"timed out after {self.done:,} events", file=sys.stderr)
                return False
            self.advance()
        return True

    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0

    def tenths(self) -> list[float]:
        return [(b[0] - a[0]) / (b[1] - a[1]) for a, b in itertools.pairwise(self.marks) if b[1] > a[1]]


def run(args: argparse.Namespace, store: Store, count: Counted, folder: Path, ceiling_store: SqliteStore | None) -> int:
    config = parse_config(CONFIG.format(db=folder / "segcrit.db"), env={})
    processor = Processor(store, config, SystemClock(), Metrics())
    deadline = time.monotonic() + args.timeout_secs
    t = time.perf_counter()
    factory = EventFactory(Population(args.population))
    if args.warm:
        fill(store, factory, args.warm)
        while processor.drain_once() and time.monotonic() < deadline:
            pass
    fill(store, factory, args.events)
    kind = "sqlite" if args.store == "sqlite" else "postgresql"
    print(
        f"processing benchmark ({kind}): {args.events:,} events ({args.warm:,} processed before), "
        f"population {args.population:,}; inbox filled in {time.perf_counter() - t:.1f} s"
    )
    segcrit = Side(args.events, processor.drain_once)
    if not segcrit.drain(deadline):
        return 2
    top: Side | None = None
    if ceiling_store is not None:
        # Then the ceiling, the same way: the same messages (the factory is seeded) through the same
        # accept path, then drained. One after the other rather than chunk by chunk: on one disk
        # each side's fsyncs would also flush what the other had just written.
        ceiling = Ceiling(ceiling_store)
        ceiling_factory = EventFactory(Population(args.population))
        if args.warm:
            fill(ceiling_store, ceiling_factory, args.warm)
            while ceiling.drain_once():
                pass
        fill(ceiling_store, ceiling_factory, args.events)
        top = Side(args.events, ceiling.drain_once)
        if not top.drain(deadline):
            return 2

    done, rate, rates = segcrit.done, segcrit.rate(), segcrit.tenths()
    per_event = segcrit.cpu / max(1, done) * 1e6
    print(f"processed {done:,} events in {segcrit.elapsed:.1f} s: {rate:,.0f} events/s, {per_event:.0f} us CPU/event")
    print("by tenth (events/s): " + " ".join(f"{r:,.0f}" for r in rates))
    print(
        f"store: {count('profiles'):,} profiles, {count('identifiers'):,} identifiers, "
        f"{count('memberships'):,} memberships, {count('targets'):,} targets, "
        f"backlog {store.backlog():,}"
    )
    print(f"RESULT processing_events_per_sec={rate:.0f}")
    ok = True
    if top is not None:
        ratio = rate / top.rate() if top.rate() else 0.0
        print(
            f"ceiling (executemany of the same rows, one transaction per {CHUNK}): {top.done:,} events in "
            f"{top.elapsed:.1f} s: {top.rate():,.0f} events/s, {top.cpu / max(1, top.done) * 1e6:.0f} us CPU/event"
        )
        print("ceiling by tenth (events/s): " + " ".join(f"{r:,.0f}" for r in top.tenths()))
        print(f"RESULT processing_ceiling_events_per_sec={top.rate():.0f}")
        print(f"RESULT processing_ratio_to_ceiling={ratio:.3f}")
        passed = ratio >= TARGET_RATIO
        ok &= passed
        print(f"{'PASS' if passed else 'MISS'} processing / ceiling = {ratio:.2f} (target >= {TARGET_RATIO})")
    if len(rates) >= 10:
        first, last = rates[0], rates[-1]
        slower = 1 - last / first if first else 0.0
        passed = slower <= MAX_SLOWDOWN
        ok &= passed
        scope = "" if done >= 1_000_000 else f" (SPEC's figure is on 1,000,000 events: --million; this run {done:,})"
        print(
            f"{'PASS' if passed else 'MISS'} first tenth {first:,.0f} events/s, last tenth {last:,.0f}: "
            f"{slower:+.0%} slower (target <= {MAX_SLOWDOWN:.0%}){scope}"
        )
        print(f"RESULT processing_last_tenth_slowdown={slower:.3f}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
