"""`segcrit status`: backlog, delivery lag, audiences (desired vs acknowledged), dead letters,
set-aside events, audiences held over max_new_audiences_per_day, audience messages ignored by
source, and per flow: Events API queue, catalog products (and why some are not sent), suppressed people,
lifecycle stage sizes, cohort size and last run, scheduled jobs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from segcrit.config import Config, LifecycleFlow, LookalikeSeedFlow, SuppressionFlow
from segcrit.domain import (
    DROPPED_DEAD_LETTERS,
    DROPPED_FAILED_EVENTS,
    AudienceStats,
    CatalogStats,
    DeadLetter,
    FailedEvent,
    JobRecord,
)
from segcrit.flows.lifecycle import lifecycle_audiences
from segcrit.flows.suppression import suppression_key
from segcrit.processing.engine import IGNORED_AUDIENCE_COUNTER
from segcrit.store.base import StatusReads

HELD_AUDIENCES_LISTED = 50


@dataclass(frozen=True, slots=True)
class Status:
    backlog: int
    pending_changes: int
    delivery_lag_secs: float | None
    audiences: list[AudienceStats]
    dead_letters: list[DeadLetter]
    dead_letter_count: int
    failed_events: int
    pending_events: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # by retention, ever: dead letters, set-aside events
    latest_failed: list[FailedEvent] = field(default_factory=list)
    catalog: CatalogStats | None = None
    product_errors: list[tuple[str, str, str]] = field(default_factory=list)
    flows: list[str] = field(default_factory=list)  # one line per suppression/lifecycle/cohort flow
    jobs: list[JobRecord] = field(default_factory=list)
    held_audiences: list[tuple[str, float]] = field(default_factory=list)  # (key, held since), longest first
    held_audience_count: int = 0
    ignored_audience_messages: dict[str, int] = field(default_factory=dict)  # by source
    enrichment: list[str] = field(default_factory=list)  # one line or two per lookup


def collect_status(store: StatusReads, config: Config | None = None, now: float | None = None) -> Status:
    now = time.time() if now is None else now
    oldest = store.oldest_pending_since()
    catalog = store.catalog_stats()
    return Status(
        backlog=store.backlog(),
        pending_changes=store.pending_count(),
        delivery_lag_secs=None if oldest is None else max(0.0, now - oldest),
        audiences=store.audience_stats(),
        dead_letters=store.dead_letters(limit=10),
        dead_letter_count=store.dead_letter_count(),
        failed_events=store.failed_event_count(),
        dropped=store.dropped_counts(),
        latest_failed=store.failed_events(5),
        pending_events=store.pending_event_count(),
        catalog=catalog if catalog.products else None,
        product_errors=store.product_errors(10) if catalog.with_errors else [],
        flows=flow_lines(store, config, now) if config is not None else [],
        jobs=store.jobs(),
        held_audiences=store.held_audiences(HELD_AUDIENCES_LISTED),
        held_audience_count=store.held_audience_count(),
        ignored_audience_messages=store.counters(IGNORED_AUDIENCE_COUNTER),
        enrichment=enrichment_lines(store, config, now) if config is not None else [],
    )


def enrichment_lines(store: StatusReads, config: Config, now: float) -> list[str]:
    """Per lookup: how many profiles it covers and what it found, and whether its source answers."""
    lines = []
    for lookup, stats in zip(
        config.enrichment, store.lookup_stats([x.name for x in config.enrichment], now), strict=True
    ):
        found = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in sorted(stats.outcomes.items()))
        line = (
            f"lookup {lookup.name} ({lookup.type}, key {lookup.key}): {stats.profiles} profile(s), {stats.due} due now"
            + (f"; {found}" if found else "")
            + f"; {stats.lookups} lookup(s) in {stats.requests} request(s)"
        )
        if stats.failing_since is not None:
            retry = "" if stats.next_try_at is None else f"; next try in {max(0.0, stats.next_try_at - now):.0f} s"
            line += f"\n  NOT ANSWERING (failing since {_ago(now - stats.failing_since)}): {stats.last_error}{retry}"
        elif stats.last_success_at is not None:
            line += f"; answering (last answer {_ago(now - stats.last_success_at)})"
        lines.append(line)
    return lines


def flow_lines(store: StatusReads, config: Config, now: float) -> list[str]:
    lines = []
    for index, flow in enumerate(config.flows):
        if isinstance(flow, SuppressionFlow):
            count = store.suppressed_count(suppression_key(flow), now)
            lines.append(f"suppression flows[{index}] ({', '.join(flow.on)}): {count} suppressed now")
        elif isinstance(flow, LifecycleFlow):
            sizes = ", ".join(f"{a} {store.member_count(a)}" for a in lifecycle_audiences(flow))
            lines.append(f"lifecycle flows[{index}]: {sizes}")
        elif isinstance(flow, LookalikeSeedFlow):
            job = store.job(f"cohort:{flow.audience}")
            last = "never" if job is None or job.last_run_at is None else _ago(now - job.last_run_at)
            line = f"lookalike_seed {flow.audience}: {store.member_count(flow.audience)} in the cohort, last run {last}"
            if flow.lookalike is not None:
                record = store.lookalike(flow.lookalike.name)
                made = record.segment_id if record is not None and record.segment_id else "not created yet"
                line += f"; lookalike {flow.lookalike.name!r}: {made}"
            lines.append(line)
    return lines


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render_failures(status: Status, console: Console) -> None:
    """Dead letters and set-aside events, with the latest of each and what retention dropped."""
    dropped_letters = status.dropped.get(DROPPED_DEAD_LETTERS, 0)
    dropped = f"; {dropped_letters} dropped unreplayed by retention" if dropped_letters else ""
    console.print(f"dead letters: {status.dead_letter_count} (replay with `segcrit replay`){dropped}", markup=False)
    for letter in status.dead_letters:
        console.print(
            f"  #{letter.id} {letter.audience} {letter.operation} {letter.count} {letter.id_type}: "
            f"{letter.status or '-'} {letter.error[:200]}",
            markup=False,
        )
    dropped_events = status.dropped.get(DROPPED_FAILED_EVENTS, 0)
    dropped = f"; {dropped_events} dropped by retention" if dropped_events else ""
    console.print(
        f"set-aside events: {status.failed_events} (processing failed on them; "
        f"put back with `segcrit replay --failed`){dropped}",
        markup=False,
    )
    for event in status.latest_failed:
        console.print(f"  #{event.seq} from {event.source}: {event.error[:200]}", markup=False)


def render_status(status: Status, console: Console | None = None) -> None:
    console = console or Console()
    lag = "none" if status.delivery_lag_secs is None else f"{status.delivery_lag_secs:.1f} s"
    console.print(f"backlog: {status.backlog} event(s) waiting to be processed")
    console.print(f"pending changes: {status.pending_changes} (oldest waiting {lag})")
    table = Table(title="audiences", title_justify="left")
    for column in ("audience", "criteo segment", "desired", "acknowledged", "pending", "dead"):
        table.add_column(column, justify="left" if column in ("audience", "criteo segment") else "right")
    for a in status.audiences:
        segment = a.segment_id or ("held" if a.audience_held else "-")
        table.add_row(a.name, segment, str(a.desired), str(a.acknowledged), str(a.pending), str(a.dead))
    console.print(table)
    _render_audience_limits(status, console)
    render_failures(status, console)
    if status.pending_events:
        console.print(f"Events API: {status.pending_events} event(s) waiting to be sent")
    if status.catalog is not None:
        c = status.catalog
        console.print(
            f"catalog: {c.products} product(s): {c.accepted} accepted, {c.with_errors} with errors, "
            f"{c.pending} to send, {c.in_flight} in a batch being processed"
        )
        for reason, count in sorted(c.not_sent.items()):
            console.print(f"  not sent, {count} product(s) lack Criteo's required {reason}", markup=False)
        for merchant, product_id, errors in status.product_errors:
            console.print(f"  {merchant}/{product_id}: {errors[:200]}", markup=False)
    for line in status.flows:
        console.print(line, markup=False)
    for line in status.enrichment:
        console.print(line, markup=False)
    for job in status.jobs:
        result = f" ({job.last_result})" if job.last_result else ""
        console.print(
            f"job {job.name}: next run in {max(0.0, job.next_run_at - time.time()):.0f} s{result}", markup=False
        )


def _render_audience_limits(status: Status, console: Console) -> None:
    """Held audiences by key, and audience messages ignored by source (SPEC §4.1)."""
    if status.held_audience_count:
        console.print(
            f"held audiences: {status.held_audience_count} over max_new_audiences_per_day: memberships kept, "
            "no Criteo segment, nothing delivered until listed under `audiences:` or admitted on a later day",
            markup=False,
        )
        for key, since in status.held_audiences:
            console.print(f"  held: {key} (since {_utc(since)})", markup=False)
        if status.held_audience_count > len(status.held_audiences):
            console.print(f"  ... and {status.held_audience_count - len(status.held_audiences)} more", markup=False)
    for source, count in sorted(status.ignored_audience_messages.items()):
        console.print(
            f"audience messages ignored from source {source}: {count} (not in audience_sync sources)", markup=False
        )


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
