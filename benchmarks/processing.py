"""Processing benchmark (SPEC §9): events/s through the Processor from a pre-filled inbox.

    .venv/bin/python benchmarks/processing.py [--events 100000] [--population 200000] [--warm 0]
        [--store sqlite|postgresql://...]

In this process, on a SQLite store in a temporary folder (WAL, synchronous=FULL, as served), or
with `--store postgresql://...` on that PostgreSQL database, in a schema of its own dropped at the
end (one process; phase C's benchmark runs two):

1. fills the inbox with `--events` realistic messages (benchmarks/bench_events.py: the ingest
   benchmark's mix) the way `/v1/batch` stores them: `prepare_messages`, then `accept_sync` per
   batch of 100. With `--warm N`, N more messages of the same population are processed first,
   so that more of the measured events meet people already known (merges, attaches);
2. runs `Processor.drain_once()` (identity, consent, audience_sync flow, membership, targets;
   chunks of 500, one transaction each) until the inbox is empty, with no other thread running.

Reported: events/s over the whole drain and over each tenth of it (the slowest tenth is the
"sustained" figure), CPU seconds per event, and what the store holds at the end. PASS/MISS
against >= 10,000 events/s. Bounded by `--timeout-secs`; `--check` makes a MISS exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_events import EventFactory, Population
from segcrit.clock import SystemClock
from segcrit.config import parse_config
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.sources.validate import TRACKING_TYPES, MessageRules, prepare_messages
from segcrit.store.base import Store
from segcrit.store.sqlite import SqliteStore

TARGET_EVENTS_PER_SEC = 10_000
BATCH = 100

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
    parser.add_argument("--population", type=int, default=200_000, help="distinct people")
    parser.add_argument("--warm", type=int, default=0, help="events processed before the measured ones")
    parser.add_argument("--timeout-secs", type=float, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument(
        "--store", default="sqlite", help="sqlite (a temporary file) or a postgresql:// URL (a schema of its own)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = Path(tempfile.mkdtemp(prefix="segcrit-bench-processing-"))
    try:
        with bench_store(args.store, folder) as (store, count):
            return run(args, store, count, folder)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, store: Store, count: Counted, folder: Path) -> int:
    config = parse_config(CONFIG.format(db=folder / "segcrit.db"), env={})
    processor = Processor(store, config, SystemClock(), Metrics())
    factory = EventFactory(Population(args.population))
    deadline = time.monotonic() + args.timeout_secs
    if args.warm:
        fill(store, factory, args.warm)
        while processor.drain_once() and time.monotonic() < deadline:
            pass
    t = time.perf_counter()
    fill(store, factory, args.events)
    kind = "sqlite" if args.store == "sqlite" else "postgresql"
    print(
        f"processing benchmark ({kind}): {args.events:,} events ({args.warm:,} processed before), "
        f"population {args.population:,}; inbox filled in {time.perf_counter() - t:.1f} s"
    )

    tenth = max(1, args.events // 10)
    marks: list[tuple[int, float]] = []
    done = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    marks.append((0, t0))
    while done < args.events:
        if time.monotonic() > deadline:
            print(f"timed out after {done:,} events", file=sys.stderr)
            return 2
        n = processor.drain_once()
        if n == 0:
            break
        done += n
        if done >= len(marks) * tenth:
            marks.append((done, time.perf_counter()))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rates = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in itertools.pairwise(marks)]
    rate = done / elapsed
    per_event = cpu / max(1, done) * 1e6
    print(f"processed {done:,} events in {elapsed:.1f} s: {rate:,.0f} events/s, {per_event:.0f} us CPU/event")
    print("by tenth (events/s): " + " ".join(f"{r:,.0f}" for r in rates))
    print(
        f"store: {count('profiles'):,} profiles, {count('identifiers'):,} identifiers, "
        f"{count('memberships'):,} memberships, {count('targets'):,} targets, "
        f"backlog {store.backlog():,}"
    )
    sustained = min(rates) if rates else 0.0
    ok = rate >= TARGET_EVENTS_PER_SEC and sustained >= TARGET_EVENTS_PER_SEC
    print(
        f"{'PASS' if ok else 'MISS'} processing {rate:,.0f} events/s, slowest tenth {sustained:,.0f} "
        f"(target >= {TARGET_EVENTS_PER_SEC:,})"
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
