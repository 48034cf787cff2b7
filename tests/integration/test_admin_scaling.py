"""No admin page or API route reads more when the store holds more profiles.

Each view runs on a store of N profiles and again after 3N more were added, while SQLite counts
the virtual-machine instructions it executes (a progress handler): a query that scans a table of
profiles, identifiers, memberships or targets costs four times as much the second time. Timings
at 1M profiles are benchmarks/admin.py's business; this is the property behind them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from segcrit.admin import views
from segcrit.admin.app import build_admin
from segcrit.admin.views import AdminContext
from segcrit.clock import FakeClock
from segcrit.identity.normalize import email_hashes
from segcrit.metrics import Metrics
from segcrit.store.sqlite import SqliteStore
from tests.helpers import make_config

AUDIENCES = [f"a{n}" for n in range(20)]
INSTRUCTIONS_PER_TICK = 10
GROWTH = 4


def email_of(pid: int) -> str:
    return f"p{pid}@shop.example"


def fill(store: SqliteStore, first: int, count: int) -> None:
    """`count` profiles with a userId and an email, each in one audience with an acknowledged target."""
    rows = range(first, first + count)
    with store.transaction() as tx:
        tx.conn.executemany(
            "INSERT INTO profiles (id, created_at, last_seen_at) VALUES (?, 1.0, 2.0)", [(pid,) for pid in rows]
        )
        tx.conn.executemany(
            "INSERT INTO identifiers (kind, value, profile_id) VALUES (?, ?, ?)",
            [
                row
                for pid in rows
                for row in (("user_id", f"u{pid}", pid), ("email", email_hashes(email_of(pid))[0], pid))
            ],
        )
        tx.conn.executemany(
            "INSERT INTO memberships (profile_id, audience, member, ts) VALUES (?, ?, 1, 1.0)",
            [(pid, AUDIENCES[pid % len(AUDIENCES)]) for pid in rows],
        )
        tx.conn.executemany(
            "INSERT INTO targets (audience, id_type, id_value, profile_id, desired, acked, since) "
            "VALUES (?, 'email', ?, ?, 1, 1, 1.0)",
            [(AUDIENCES[pid % len(AUDIENCES)], email_hashes(email_of(pid))[0], pid) for pid in rows],
        )


def instructions(store: SqliteStore, view: Callable[[], Any]) -> int:
    ticks = 0

    def tick() -> int:
        nonlocal ticks
        ticks += 1
        return 0  # go on

    conn = store._conn()
    conn.set_progress_handler(tick, INSTRUCTIONS_PER_TICK)
    try:
        view()
    finally:
        conn.set_progress_handler(None, 0)
    return ticks * INSTRUCTIONS_PER_TICK


def reads(ctx: AdminContext) -> dict[str, Callable[[], Any]]:
    message = {"type": "track", "userId": "u7", "event": "Audience Entered", "properties": {"audience_key": "a3"}}
    return {
        "overview": lambda: views.overview(ctx),
        "audiences": lambda: views.audiences(ctx),
        "audience": lambda: views.audience_detail(ctx, "a3"),
        "deliveries": lambda: views.deliveries(ctx, failed=True, audience="a3"),
        "dead letters": lambda: views.dead_letters(ctx),
        "failed events": lambda: views.failed_events(ctx),
        "events": lambda: views.samples(ctx),
        "profile by userId": lambda: views.profile_lookup(ctx, "u7"),
        "profile by email": lambda: views.profile_lookup(ctx, email_of(7)),
        "preview": lambda: views.preview(ctx, message),
    }


def test_no_view_reads_more_with_four_times_the_profiles(tmp_path: Path) -> None:
    config = make_config(str(tmp_path / "s.db"), extra="server: {admin_token: t}\n")
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        admin = build_admin(config, store, Metrics(), FakeClock())
        assert admin is not None
        small = 2_000
        fill(store, 1, small)
        before = {view: instructions(store, read) for view, read in reads(admin.context).items()}
        fill(store, small + 1, (GROWTH - 1) * small)
        after = {view: instructions(store, read) for view, read in reads(admin.context).items()}
    finally:
        store.close()
    grown = {view: (before[view], after[view]) for view in before if after[view] > before[view] * 1.3 + 2_000}
    assert grown == {}, f"instructions (N profiles, {GROWTH}N profiles): {grown}"
    assert all(before.values())  # every view ran queries
