"""Admin benchmark (issue 9): every admin page and API route over a store of 1,000,000 profiles.

    .venv/bin/python benchmarks/admin.py [--profiles 1000000] [--audiences 100] [--requests 7] [--check]

1. Builds a store in a temporary folder with bulk inserts (not what is measured): `--profiles`
   profiles with a userId and an email each, in one or two of `--audiences` audiences (a
   membership and an email target each, most acknowledged, some pending, some dead-lettered),
   24 hours of per-minute counters, the capped recent calls and debugger samples, dead letters
   and events set aside: what a shop of that size shows after a day.
2. Serves segcrit's app (workers off: nothing else competes) with uvicorn on loopback and loads
   each page (with a session cookie) and each API route (with the Bearer token) `--requests`
   times after one warm-up, over HTTP, as a browser or a script would.

Prints p50 and max per page and route; PASS/MISS against p50 < 300 ms (the issue's target),
`--check` makes a MISS exit 1.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import bench_config, percentile, run_in_temp_folder
from segcrit.admin.recorder import labels_key, minute_of
from segcrit.app import create_app
from segcrit.domain import CounterIncrement, NewCall, NewSample
from segcrit.emulator.server import running_app
from segcrit.identity.normalize import email_hashes
from segcrit.store.common import CALLS_KEPT_PER_ENDPOINT, SAMPLES_KEPT_PER_SOURCE
from segcrit.store.sqlite import SqliteStore

TARGET_MS = 300.0
ACTIONS: list[str] = []  # the replays' times, printed after the PASS/MISS lines
TOKEN = "bench-admin-token"
NOW = time.time()
SEED = 9
INSERT_BATCH = 50_000
ENDPOINTS = ("contact_list_patch", "events", "catalog_batch", "catalog_report", "token")


def email_of(pid: int) -> str:
    return f"person{pid}@shop.example"


# ------------------------------------------------------------------------------------ the store


def build(store: SqliteStore, profiles: int, audiences: int) -> None:
    rng = random.Random(SEED)
    conn = store._conn()
    conn.execute("PRAGMA synchronous=OFF")  # building only: the measured part reads as served
    names = [f"audience-{n:03d}" for n in range(audiences)]
    conn.executemany(
        "INSERT INTO audiences (name, segment_id, auto_create, created_by_us) VALUES (?, ?, 1, 1)",
        [(name, str(5000 + n)) for n, name in enumerate(names)],
    )
    letters: list[list[Any]] = []  # [audience, identifiers] per dead letter (id = index + 1)
    open_letter: dict[str, int] = {}  # audience -> its dead letter being filled
    for start in range(1, profiles + 1, INSERT_BATCH):
        profile_rows, ident_rows, member_rows, target_rows = [], [], [], []
        for pid in range(start, min(start + INSERT_BATCH, profiles + 1)):
            seen = NOW - rng.uniform(0, 30 * 86_400)
            profile_rows.append((pid, seen - 86_400, seen, 1 if rng.random() < 0.9 else 0, seen))
            sha256, md5 = email_hashes(email_of(pid))
            ident_rows += [("user_id", f"u{pid}", pid, None), ("email", sha256, pid, md5)]
            for name in rng.sample(names, 1 if rng.random() < 0.6 else 2):
                member_rows.append((pid, name, 1, seen))
                state = rng.random()
                acked, dead = (1, None) if state < 0.97 else (0, None) if state < 0.995 else (0, 0)
                if dead is not None:  # dead letters of up to 100 identifiers, one audience each
                    dead = open_letter.get(name, 0)
                    if not dead or letters[dead - 1][1] >= 100:
                        letters.append([name, 0])
                        dead = open_letter[name] = len(letters)
                    letters[dead - 1][1] += 1
                target_rows.append((name, "email", sha256, pid, 1, acked, seen, dead))
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO profiles (id, created_at, last_seen_at, consent, consent_ts) VALUES (?, ?, ?, ?, ?)",
            profile_rows,
        )
        conn.executemany("INSERT INTO identifiers (kind, value, profile_id, extra) VALUES (?, ?, ?, ?)", ident_rows)
        conn.executemany("INSERT INTO memberships (profile_id, audience, member, ts) VALUES (?, ?, ?, ?)", member_rows)
        # The triggers keep audience_counts as the rows go in, as they do in `segcrit serve`.
        conn.executemany(
            "INSERT INTO targets (audience, id_type, id_value, profile_id, desired, acked, since, dead_letter_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            target_rows,
        )
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO dead_letters (id, created_at, audience, operation, id_type, count, status, error) "
        "VALUES (?, ?, ?, 'add', 'email', ?, 400, ?)",
        [
            (n, NOW - n, audience, size, f"Criteo contact_list_patch answered 400 #{n}")
            for n, (audience, size) in enumerate(letters, start=1)
        ],
    )
    conn.executemany(
        "INSERT INTO failed_events (seq, source, received_at, body, error, failed_at) VALUES (?, 'web', ?, ?, ?, ?)",
        [
            (n, NOW, orjson.dumps({"type": "track", "userId": f"u{n}", "event": "x"}), "ValueError: x", NOW)
            for n in range(100)
        ],
    )
    conn.execute("COMMIT")
    store.record_activity(counters(), calls(names), samples())
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA synchronous=FULL")


def counters() -> list[CounterIncrement]:
    """24 hours of the series the recorder writes, every minute."""
    rows = []
    last = minute_of(NOW)
    for minute in range(last - 86_400 + 60, last + 60, 60):
        for source in ("web", "engage"):
            rows.append(CounterIncrement(minute, "events_in", labels_key({"source": source}), 600.0))
            rows.append(CounterIncrement(minute, "events_refused", labels_key({"source": source, "reason": "auth"}), 2))
        rows.append(CounterIncrement(minute, "events_processed", "{}", 1200.0))
        for endpoint in ENDPOINTS:
            rows.append(
                CounterIncrement(minute, "criteo_calls", labels_key({"endpoint": endpoint, "status": "200"}), 3)
            )
        rows += [CounterIncrement(minute, s, "{}", 10.0, gauge=True) for s in ("backlog", "pending_changes")]
        rows += [CounterIncrement(minute, s, "{}", 1.0, gauge=True) for s in ("delivery_lag_secs", "dead_letters")]
    return rows


def calls(names: list[str]) -> list[NewCall]:
    summary = {"operation": "add", "identifier_type": "email", "count": 50_000, "identifiers": ["0123abcd…"] * 3}
    return [
        NewCall(
            NOW - n,
            endpoint,
            "PATCH",
            "/x",
            200 if n % 10 else 500,
            120.0,
            "5001",
            names[n % len(names)],
            summary,
            "{}",
        )
        for endpoint in ENDPOINTS
        for n in range(CALLS_KEPT_PER_ENDPOINT)
    ]


def samples() -> list[NewSample]:
    out = []
    for source in ("web", "engage"):
        for n in range(SAMPLES_KEPT_PER_SOURCE):
            body = {"type": "track", "event": "Product Viewed", "userId": f"u{n + 1}", "properties": {"sku": n}}
            out.append(NewSample(NOW - n, source, True, None, "track", "Product Viewed", f"u{n + 1}", None, None, body))
            out.append(NewSample(NOW - n, source, False, "auth", None, None, None, None, None, {"note": "refused"}))
    return out


# ------------------------------------------------------------------------------------ measuring


def timed(call: Callable[[], httpx.Response], requests: int, *, warm_up: bool = True) -> list[float]:
    if warm_up:
        response = call()  # (and a check that the route works)
        if response.status_code >= 400:
            raise RuntimeError(f"{response.request.method} {response.request.url} answered {response.status_code}")
    out = []
    for _ in range(requests):
        started = time.perf_counter()
        response = call()
        out.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return out


def measure(url: str, profiles: int, requests: int) -> list[tuple[str, list[float]]]:
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    browser = httpx.Client(base_url=url, timeout=60)
    browser.post("/admin/login", data={"token": TOKEN})
    middle = profiles // 2
    preview = {
        "type": "track",
        "userId": f"u{middle}",
        "event": "Audience Entered",
        "properties": {"audience_key": "audience-007", "audience-007": True},
        "context": {"personas": {"computation_class": "audience", "computation_key": "audience-007"}},
    }
    forgotten = iter(range(1, profiles))
    pages: list[tuple[str, Callable[[], httpx.Response]]] = [
        (f"page {path}", lambda path=path: browser.get(path))  # type: ignore[misc]
        for path in (
            "/admin",
            "/admin/audiences",
            "/admin/audiences/audience-042",
            "/admin/deliveries",
            "/admin/deliveries?failed=1&endpoint=contact_list_patch",
            "/admin/events",
            f"/admin/profiles?id={email_of(middle)}",
            "/admin/preview",
            "/admin/config",
        )
    ]
    routes: list[tuple[str, Callable[[], httpx.Response]]] = [
        (f"GET {path}", lambda path=path: api.get(path))  # type: ignore[misc]
        for path in (
            "/api/overview",
            "/api/audiences",
            "/api/audiences/audience-042",
            "/api/deliveries",
            "/api/deliveries?failed=true&audience=audience-042",
            "/api/dead-letters",
            "/api/failed-events",
            "/api/events",
            f"/api/profiles/u{middle}",
            f"/api/profiles/{email_of(middle)}",
            "/api/config",
        )
    ]
    routes += [
        ("POST /api/preview", lambda: api.post("/api/preview", json=preview)),
        ("POST /api/audiences/{name}/resync", lambda: api.post("/api/audiences/audience-042/resync")),
        ("DELETE /api/profiles/{id}", lambda: api.delete(f"/api/profiles/u{next(forgotten)}")),
    ]
    # A replay changes what the next one finds: each is timed once, replaying everything. Its time
    # grows with what it puts back (not a page load: not held to the target).
    once: list[tuple[str, Callable[[], httpx.Response]]] = [
        ("POST /api/dead-letters/replay (all of them)", lambda: api.post("/api/dead-letters/replay")),
        ("POST /api/failed-events/replay (all of them)", lambda: api.post("/api/failed-events/replay")),
    ]
    results = [(name, timed(call, requests)) for name, call in [*pages, *routes]]
    for name, call in once:
        ACTIONS.append(f"{name:52} {timed(call, 1, warm_up=False)[0]:7.1f} ms")
    api.close()
    browser.close()
    return results


def run(folder: Path, args: argparse.Namespace) -> list[tuple[bool, str]]:
    db = str(folder / "segcrit.db")
    store = SqliteStore(db)
    started = time.perf_counter()
    build(store, args.profiles, args.audiences)
    counts = (
        store._conn()
        .execute(
            "SELECT (SELECT count(*) FROM profiles), (SELECT count(*) FROM targets), (SELECT count(*) FROM audiences)"
        )
        .fetchone()
    )
    letters = store._conn().execute("SELECT count(*), total(count) FROM dead_letters").fetchone()
    print(
        f"built {counts[0]:,} profiles, {counts[1]:,} targets, {counts[2]} audiences, {letters[0]:,} dead letters "
        f"holding {int(letters[1]):,} identifiers, in {time.perf_counter() - started:.0f} s"
    )
    config = bench_config(db, server={"admin_token": TOKEN})
    results = []
    try:
        with running_app(create_app(config, store, run_workers=False)) as url:
            for name, times in measure(url, args.profiles, args.requests):
                p50 = percentile(times, 50)
                results.append((p50 < TARGET_MS, f"{name:52} p50 {p50:7.1f} ms  max {max(times):7.1f} ms"))
    finally:
        store.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--audiences", type=int, default=100)
    parser.add_argument("--requests", type=int, default=7, help="timed loads per page or route, after one warm-up")
    parser.add_argument("--timeout-secs", type=float, default=3600)
    parser.add_argument("--check", action="store_true", help="exit 1 on a MISS")
    args = parser.parse_args()
    heading = (
        f"admin pages and API routes, {args.profiles:,} profiles, {args.audiences} audiences "
        f"(target p50 < {TARGET_MS:.0f} ms)"
    )
    status = run_in_temp_folder("admin", lambda folder: run(folder, args), args.timeout_secs, heading, check=args.check)
    if ACTIONS:
        print("replays of everything at once (their time grows with what they put back; no target):")
        for line in ACTIONS:
            print(f"TIME {line}")
    return status


if __name__ == "__main__":
    sys.exit(main())
