"""`segcrit status`: backlog, delivery lag, audiences (desired vs acknowledged), dead letters."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from segcrit.store.base import AudienceStats, DeadLetter
from segcrit.store.sqlite import SqliteStore


@dataclass(frozen=True, slots=True)
class Status:
    backlog: int
    pending_changes: int
    delivery_lag_secs: float | None
    audiences: list[AudienceStats]
    dead_letters: list[DeadLetter]
    dead_letter_count: int
    failed_events: int


def collect_status(store: SqliteStore, now: float | None = None) -> Status:
    now = time.time() if now is None else now
    oldest = store.oldest_pending_since()
    return Status(
        backlog=store.backlog(),
        pending_changes=store.pending_count(),
        delivery_lag_secs=None if oldest is None else max(0.0, now - oldest),
        audiences=store.audience_stats(),
        dead_letters=store.dead_letters(limit=10),
        dead_letter_count=store.dead_letter_count(),
        failed_events=store.failed_event_count(),
    )


def render_status(status: Status, console: Console | None = None) -> None:
    console = console or Console()
    lag = "none" if status.delivery_lag_secs is None else f"{status.delivery_lag_secs:.1f} s"
    console.print(f"backlog: {status.backlog} event(s) waiting to be processed")
    console.print(f"pending changes: {status.pending_changes} (oldest waiting {lag})")
    table = Table(title="audiences", title_justify="left")
    for column in ("audience", "criteo segment", "desired", "acknowledged", "pending", "dead"):
        table.add_column(column, justify="left" if column in ("audience", "criteo segment") else "right")
    for a in status.audiences:
        table.add_row(a.name, a.segment_id or "-", str(a.desired), str(a.acknowledged), str(a.pending), str(a.dead))
    console.print(table)
    console.print(f"dead letters: {status.dead_letter_count} (replay with `segcrit replay`)")
    if status.failed_events:
        console.print(f"events set aside after a processing error: {status.failed_events} (see the logs)")
    for letter in status.dead_letters:
        console.print(
            f"  #{letter.id} {letter.audience} {letter.operation} {letter.count} {letter.id_type}: "
            f"{letter.status or '-'} {letter.error[:200]}",
            markup=False,
        )
