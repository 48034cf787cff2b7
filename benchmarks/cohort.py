"""Cohort benchmark (SPEC §9, issue "lookalike seeds"): the lookalike_seed job over 1,000,000 profiles.

    .venv/bin/python benchmarks/cohort.py [--profiles 1000000] [--churn 10000] [--check]

1. A child process generates `--profiles` profiles straight into a SQLite store in a temporary
   folder (bulk inserts through the store's own connection: generation is not what is measured):
   an email identifier each, non-PII traits for most, 0-6 orders (some with no revenue), and
   memberships in two Engage audiences. A child, so that its memory does not count below.
2. This process opens the store as `segcrit serve` does (WAL, synchronous=FULL) and runs the real
   cohort job, `flows.lookalike_seed.refresh_cohort(store, flow, refresh, now)`: every profile's
   facts read a page at a time, the `when` expression evaluated per profile, the seed audience's
   memberships and targets updated as a difference.
   - run 1, cold: the seed audience is empty, so every profile in the cohort is an add;
   - run 2, steady: after `--churn` profiles changed (new orders for some, refunds-to-zero for
     others), only they enter or leave.

Reported per run: wall time, cohort size and the changes, and for the process: peak RSS
(`ru_maxrss`) and its growth over the RSS before the first run. PASS/MISS against < 60 s per run
and <= 256 MB peak RSS. `--check` makes a MISS exit 1.
"""

from __future__ import annotations

import argparse
import functools
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import bench_config
from segcrit.clock import FakeClock
from segcrit.config import LookalikeSeedFlow
from segcrit.flows.lookalike_seed import refresh_cohort
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.store.sqlite import SqliteStore

TARGET_SECS = 60.0
TARGET_RSS_MB = 256.0
NOW = 1_800_000_000.0
DAY = 86_400.0
SEED = 7
WHEN = "(order_count >= 2 or revenue_total >= 500) and trait('plan') != 'free' and days_since_last_seen < 365"
INSERT_BATCH = 50_000


# ------------------------------------------------------------------------------------ generation


def generate(db: str, profiles: int) -> None:
    """Fill the store (runs in a child process)."""
    store = SqliteStore(db)
    conn = store._conn()
    conn.execute("PRAGMA synchronous=OFF")  # generation only: the measured part runs as served
    rng = random.Random(SEED)
    plans = ["free", "free", "pro", "team"]
    tiers = ["bronze", "silver", "gold"]
    order_id = 0
    for start in range(1, profiles + 1, INSERT_BATCH):
        ids = range(start, min(start + INSERT_BATCH, profiles + 1))
        profile_rows, ident_rows, order_rows, member_rows = [], [], [], []
        for pid in ids:
            created = NOW - rng.uniform(0, 730) * DAY
            seen = created + rng.uniform(0, NOW - created)
            traits = None
            if rng.random() < 0.8:
                traits = orjson.dumps(
                    {"plan": rng.choice(plans), "loyalty_tier": rng.choice(tiers), "visits": pid % 97}
                )
            profile_rows.append((pid, created, seen, traits, seen if traits else None))
            ident_rows.append(("email", f"{pid:064x}", pid, f"{pid:032x}"))
            for _ in range(min(6, int(rng.expovariate(0.55)))):
                order_id += 1
                revenue = None if rng.random() < 0.05 else round(rng.uniform(5, 400), 2)
                order_rows.append((f"o{order_id}", pid, rng.uniform(created, seen), revenue, "EUR"))
            if rng.random() < 0.3:
                member_rows.append((pid, "newsletter", 1, seen))
            if rng.random() < 0.1:
                member_rows.append((pid, "cart_abandoners", 1, seen))
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO profiles (id, created_at, last_seen_at, traits, traits_ts) VALUES (?, ?, ?, ?, ?)",
            profile_rows,
        )
        conn.executemany("INSERT INTO identifiers (kind, value, profile_id, extra) VALUES (?, ?, ?, ?)", ident_rows)
        conn.executemany(
            "INSERT INTO orders (order_id, profile_id, ts, revenue, currency) VALUES (?, ?, ?, ?, ?)", order_rows
        )
        conn.executemany("INSERT INTO memberships (profile_id, audience, member, ts) VALUES (?, ?, ?, ?)", member_rows)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


def churn(store: SqliteStore, profiles: int, count: int) -> None:
    """Between runs: `count` people change (half order big, half have their orders' revenue zeroed)."""
    rng = random.Random(SEED + 1)
    picked = rng.sample(range(1, profiles + 1), count)
    with store.transaction() as tx:
        for n, pid in enumerate(picked):
            if n % 2:
                tx.conn.execute(
                    "INSERT INTO orders (order_id, profile_id, ts, revenue, currency) VALUES (?, ?, ?, 900, 'EUR')",
                    (f"churn-{pid}", pid, NOW),
                )
                tx.conn.execute(
                    "UPDATE profiles SET last_seen_at = ?, traits = ? WHERE id = ?", (NOW, b'{"plan":"pro"}', pid)
                )
            else:
                tx.conn.execute("DELETE FROM orders WHERE profile_id = ?", (pid,))


# ------------------------------------------------------------------------------------ measuring


def rss_mb() -> float:
    """The current resident set size (Linux: /proc; elsewhere the peak stands in)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--churn", type=int, default=10_000)
    parser.add_argument("--check", action="store_true", help="exit 1 on a MISS")
    parser.add_argument("--generate", metavar="DB", help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.profiles)
        return 0

    folder = Path(tempfile.mkdtemp(prefix="segcrit-cohort-bench-"))
    db = str(folder / "segcrit.db")
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--generate", db, "--profiles", str(args.profiles)], check=True)
        print(f"generated {args.profiles:,} profiles in {time.perf_counter() - started:.1f} s (child process)")

        config = bench_config(
            db,
            identity={"send": ["email", "madid"]},
            audiences={"newsletter": {}, "cart_abandoners": {}},
            flows=[
                {"type": "audience_sync"},
                {
                    "type": "lookalike_seed",
                    "audience": "high_value",
                    "when": WHEN,
                    "every_minutes": 60,
                    "lookalike": {"name": "High value lookalike", "target_size": 1_000_000},
                },
            ],
        )
        [flow] = config.flows_of(LookalikeSeedFlow)
        store = SqliteStore(db)
        clock = FakeClock(NOW)
        processor = Processor(store, config, clock, Metrics())
        job = functools.partial(refresh_cohort, store, flow, processor.refresh_targets)
        counts = (
            store._conn()
            .execute(
                "SELECT (SELECT count(*) FROM profiles), (SELECT count(*) FROM orders), "
                "(SELECT count(*) FROM memberships)"
            )
            .fetchone()
        )
        print(f"store: {counts[0]:,} profiles, {counts[1]:,} orders, {counts[2]:,} memberships")
        print(f"when: {WHEN}")

        before = rss_mb()
        times = []
        for name in ("cold", "steady"):
            if name == "steady":
                churn(store, args.profiles, args.churn)
                clock.advance(3600)
            started = time.perf_counter()
            result = job(clock.now())
            elapsed = time.perf_counter() - started
            times.append(elapsed)
            print(f"run {name:6}: {elapsed:6.1f} s  {result}  (rss now {rss_mb():.0f} MB)")
        peak = peak_rss_mb()
        print(f"rss before the runs {before:.0f} MB, peak {peak:.0f} MB, growth {peak - before:.0f} MB")
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    ok = max(times) < TARGET_SECS and peak <= TARGET_RSS_MB
    print(
        f"{'PASS' if ok else 'MISS'}: slowest run {max(times):.1f} s (target < {TARGET_SECS:.0f} s), "
        f"peak RSS {peak:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB)"
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
