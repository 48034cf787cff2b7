"""Processing benchmark (SPEC §9): events/s through the Processor from a pre-filled inbox.

    .venv/bin/python benchmarks/processing.py [--events 100000] [--population 200000] [--warm 0]

In this process, on a SQLite store in a temporary folder (WAL, synchronous=FULL, as served):

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
import itertools
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_events import EventFactory, Population
from segcrit.clock import SystemClock
from segcrit.config import parse_config
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.sources.validate import TRACKING_TYPES, MessageRules, prepare_messages
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


def fill(store: SqliteStore, factory: EventFactory, count: int) -> None:
    rules = MessageRules(types=TRACKING_TYPES, max_message_bytes=32_768)
    for start in range(0, count, BATCH):
        items = [factory.message() for _ in range(min(BATCH, count - start))]
        now = time.time()
        prepared = prepare_messages(items, rules, received_at=now)
        store.accept_sync("web", prepared.messages, now)


def count(store: SqliteStore, table: str) -> int:
    row = store._conn().execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events measured")
    parser.add_argument("--population", type=int, default=200_000, help="distinct people")
    parser.add_argument("--warm", type=int, default=0, help="events processed before the measured ones")
    parser.add_argument("--timeout-secs", type=float, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = Path(tempfile.mkdtemp(prefix="segcrit-bench-processing-"))
    store = SqliteStore(str(folder / "segcrit.db"))
    try:
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
        print(
            f"processing benchmark: {args.events:,} events ({args.warm:,} processed before), "
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
            f"store: {count(store, 'profiles'):,} profiles, {count(store, 'identifiers'):,} identifiers, "
            f"{count(store, 'memberships'):,} memberships, {count(store, 'targets'):,} targets, "
            f"backlog {store.backlog():,}"
        )
        sustained = min(rates) if rates else 0.0
        ok = rate >= TARGET_EVENTS_PER_SEC and sustained >= TARGET_EVENTS_PER_SEC
        print(
            f"{'PASS' if ok else 'MISS'} processing {rate:,.0f} events/s, slowest tenth {sustained:,.0f} "
            f"(target >= {TARGET_EVENTS_PER_SEC:,})"
        )
        return 1 if args.check and not ok else 0
    finally:
        store.close()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
