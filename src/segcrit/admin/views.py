"""What each admin page and API route shows or does, built from the store as the answer models.

The API (admin/api.py) returns these models as JSON and the pages (admin/pages.py) render them,
so both always agree. Each function is synchronous and touches the store through the small set
of reads of `sqlite_admin` (bounded, indexed): callers run them off the event loop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from segcrit.admin import models as m
from segcrit.admin.auth import AdminAuth
from segcrit.admin.masking import mask, mask_text, mask_tree
from segcrit.admin.recorder import (
    ALL_SERIES,
    SERIES_BACKLOG,
    SERIES_CRITEO_CALLS,
    SERIES_DEAD_LETTERED,
    SERIES_DEAD_LETTERS,
    SERIES_EVENTS_IN,
    SERIES_EVENTS_PROCESSED,
    SERIES_EVENTS_REFUSED,
    SERIES_LAG,
    SERIES_PENDING,
    Recorder,
    minute_of,
)
from segcrit.clock import Clock
from segcrit.config import Config, LifecycleFlow, SuppressionFlow, config_warnings
from segcrit.domain import AudienceCounts, CallRow, DeadLetterRow, SampleRow
from segcrit.flows.lifecycle import lifecycle_audiences
from segcrit.flows.suppression import suppression_key
from segcrit.metrics import Metrics
from segcrit.preview import CriteoRequest, Preview, preview_messages, preview_prepared
from segcrit.processing.engine import Processor, person_keys
from segcrit.store.base import Store

DAY_SECS: Final = 86_400
HOUR_SECS: Final = 3_600
# Chart series: the stored series, and calls split by outcome.
CHART_CRITEO_OK: Final = "criteo_calls_ok"
CHART_CRITEO_FAILED: Final = "criteo_calls_failed"
GAUGES: Final = frozenset({SERIES_BACKLOG, SERIES_PENDING, SERIES_LAG, SERIES_DEAD_LETTERS})
CHART_SERIES: Final = (
    SERIES_EVENTS_IN,
    SERIES_EVENTS_REFUSED,
    SERIES_EVENTS_PROCESSED,
    CHART_CRITEO_OK,
    CHART_CRITEO_FAILED,
    SERIES_DEAD_LETTERED,
    SERIES_BACKLOG,
    SERIES_PENDING,
    SERIES_LAG,
    SERIES_DEAD_LETTERS,
)
MAX_LIST: Final = 200


@dataclass
class AdminContext:
    """What the admin needs from the running app."""

    config: Config
    store: Store
    metrics: Metrics
    clock: Clock
    auth: AdminAuth
    recorder: Recorder


# ------------------------------------------------------------------------------------ overview


def overview(ctx: AdminContext) -> m.Overview:
    store, now = ctx.store, ctx.clock.now()
    oldest = store.oldest_pending_since()
    charts, totals, calls = _charts(ctx, now)
    return m.Overview(
        generated_at=now,
        backlog=store.backlog(),
        pending_changes=store.pending_total(),
        delivery_lag_secs=None if oldest is None else max(0.0, now - oldest),
        dead_letters=store.dead_letter_count(),
        failed_events=store.failed_event_count(),
        events_api_pending=store.pending_event_count(),
        audiences=len(_audience_rows(ctx)),
        events_in_last_hour=int(totals[SERIES_EVENTS_IN]),
        events_refused_last_hour=int(totals[SERIES_EVENTS_REFUSED]),
        criteo_calls=calls,
        charts=charts,
    )


def _charts(ctx: AdminContext, now: float) -> tuple[m.Charts, dict[str, float], list[m.CallCount]]:
    """The last 24 h per minute, the last hour's totals, and the day's Criteo calls by endpoint."""
    last = minute_of(now)
    first = last - DAY_SECS + 60
    minutes = list(range(first, last + 60, 60))
    series: dict[str, list[float | None]] = {
        name: [None if name in GAUGES else 0.0] * len(minutes) for name in CHART_SERIES
    }
    totals: dict[str, float] = defaultdict(float)
    for minute, stored, outcome, value in ctx.store.counters_by_minute(first, ALL_SERIES):
        index = (minute - first) // 60
        name = stored
        if stored == SERIES_CRITEO_CALLS:
            name = CHART_CRITEO_OK if outcome == "ok" else CHART_CRITEO_FAILED
        if 0 <= index < len(minutes):
            series[name][index] = value
            if minute > last - HOUR_SECS:
                totals[name] += value
    calls = [
        m.CallCount(endpoint=labels.get("endpoint", ""), status=labels.get("status", ""), count=int(count))
        for labels, count in ctx.store.counter_labels(first, SERIES_CRITEO_CALLS)
    ]
    calls.sort(key=lambda c: (c.endpoint, c.status))
    return m.Charts(minutes=minutes, series=series), totals, calls


# ------------------------------------------------------------------------------------ audiences


def _audience_rows(ctx: AdminContext) -> list[AudienceCounts]:
    """Every audience: in the store, or configured but not resolved yet."""
    rows = {a.name: a for a in ctx.store.audience_counts()}
    for name, configured in ctx.config.audiences.items():
        if name not in rows:
            rows[name] = AudienceCounts(name, configured.segment_id, 0, 0, 0, 0, 0, None, configured.auto_create)
    return [rows[name] for name in sorted(rows)]


def _audience(row: AudienceCounts, open_letters: int) -> m.Audience:
    return m.Audience(
        name=row.name,
        segment_id=row.segment_id,
        desired=row.desired,
        acknowledged=row.acknowledged,
        pending_add=row.pending_add,
        pending_remove=row.pending_remove,
        dead_letters=row.dead,
        dead_letter_batches=open_letters,
        last_sync_at=row.last_sync_at,
        auto_create=row.auto_create,
        created_by_us=row.created_by_us,
    )


def audiences(ctx: AdminContext) -> m.AudienceList:
    letters = ctx.store.open_dead_letters()
    return m.AudienceList(audiences=[_audience(row, letters.get(row.name, 0)) for row in _audience_rows(ctx)])


def _known_audience(ctx: AdminContext, name: str) -> AudienceCounts | None:
    row = ctx.store.audience_counts_of(name)
    if row is None and name in ctx.config.audiences:
        configured = ctx.config.audiences[name]
        row = AudienceCounts(name, configured.segment_id, 0, 0, 0, 0, 0, None, configured.auto_create)
    return row


def audience_detail(ctx: AdminContext, name: str, calls: int = 20) -> m.AudienceDetail | None:
    row = _known_audience(ctx, name)
    if row is None:
        return None
    letters = [_dead_letter(d) for d in ctx.store.dead_letters_of(name, MAX_LIST)]
    base = _audience(row, len(letters))
    return m.AudienceDetail(
        **base.model_dump(),
        recent_calls=[_call(c) for c in ctx.store.recent_calls(calls, audience=name)],
        open_dead_letters=letters,
        resync=_resync(ctx, name),
    )


def _resync(ctx: AdminContext, name: str) -> m.Resync | None:
    row = ctx.store.resync_state(name)
    if row is None:
        return None
    if row.started_at is None:
        state = "queued"
    elif row.finished_at is None:
        state = "running"
    else:
        state = "failed" if (row.result or "").startswith("failed") else "done"
    return m.Resync(
        audience=row.audience,
        state=state,  # type: ignore[arg-type]
        requested_at=row.requested_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        result=row.result,
    )


def request_resync(ctx: AdminContext, name: str) -> m.Resync | None:
    """Queue a resync for the delivery thread; None for an unknown audience."""
    if _known_audience(ctx, name) is None:
        return None
    ctx.store.request_resync(name, ctx.clock.now())
    return _resync(ctx, name)


# ------------------------------------------------------------------------------------ deliveries


def _call(row: CallRow) -> m.CriteoCall:
    return m.CriteoCall(
        id=row.id,
        at=row.at,
        endpoint=row.endpoint,
        method=row.method,
        path=row.path,
        status=row.status,
        ok=200 <= row.status < 300,
        duration_ms=row.duration_ms,
        audience=row.audience,
        segment_id=row.segment_id,
        summary=row.summary,
        answer=row.answer,
    )


def deliveries(
    ctx: AdminContext,
    *,
    endpoint: str | None = None,
    audience: str | None = None,
    failed: bool | None = None,
    limit: int = 50,
    before: int | None = None,
) -> m.Deliveries:
    store = ctx.store
    calls = store.recent_calls(
        min(limit, MAX_LIST), endpoint=endpoint, audience=audience, failed=failed, before_id=before
    )
    batches = [
        m.CatalogBatch(
            token=mask(b.token),
            merchant_id=b.merchant_id,
            created_at=b.created_at,
            products=len(b.products),
            polls=b.polls,
        )
        for b in store.open_batches(MAX_LIST)
    ]
    return m.Deliveries(
        calls=[_call(c) for c in calls],
        endpoints=store.call_endpoints(),
        events_api_pending=store.pending_event_count(),
        open_catalog_batches=batches,
    )


def _dead_letter(row: DeadLetterRow) -> m.DeadLetter:
    return m.DeadLetter(
        id=row.id,
        kind=row.kind,
        created_at=row.created_at,
        audience=row.audience,
        operation=row.operation,
        id_type=row.id_type,
        count=row.count,
        status=row.status,
        error=mask_text(row.error),
        replayed_at=row.replayed_at,
    )


def dead_letters(ctx: AdminContext, limit: int = 100) -> m.DeadLetterList:
    rows = ctx.store.recent_dead_letters(min(limit, MAX_LIST))
    return m.DeadLetterList(dead_letters=[_dead_letter(r) for r in rows], open=ctx.store.dead_letter_count())


def replay_dead_letters(ctx: AdminContext, audience: str | None = None) -> m.Replayed:
    return m.Replayed(replayed=ctx.store.replay_dead_letters(audience, ctx.clock.now()))


def failed_events(ctx: AdminContext, limit: int = 50) -> m.FailedEventList:
    rows = ctx.store.failed_events(min(limit, MAX_LIST))
    return m.FailedEventList(
        failed_events=[
            m.FailedEvent(
                seq=r.seq,
                source=r.source,
                received_at=r.received_at,
                failed_at=r.failed_at,
                error=mask_text(r.error),
                type=_text(r.message.get("type")),
                event=_text(r.message.get("event")),
                message=mask_tree(r.message),
            )
            for r in rows
        ],
        total=ctx.store.failed_event_count(),
    )


def replay_failed_events(ctx: AdminContext) -> m.Replayed:
    return m.Replayed(replayed=ctx.store.replay_failed_events())


# ------------------------------------------------------------------------------------ events


def _sample(row: SampleRow) -> m.Sample:
    return m.Sample(
        id=row.id,
        at=row.at,
        source=row.source,
        accepted=row.accepted,
        reason=row.reason,
        type=row.type,
        event=row.event,
        message=mask_tree(row.body),
    )


def samples(
    ctx: AdminContext, *, source: str | None = None, accepted: bool | None = None, limit: int = 50
) -> m.SampleList:
    rows = ctx.store.samples(min(limit, MAX_LIST), source=source, accepted=accepted)
    return m.SampleList(samples=[_sample(r) for r in rows], sources=ctx.store.sample_sources())


# ------------------------------------------------------------------------------------ profiles


def profile_lookup(ctx: AdminContext, identifier: str) -> m.ProfileLookup | None:
    """The profiles known by this userId, anonymousId or email (hashed here first); None if none."""
    ids = ctx.store.profiles_of(person_keys(identifier))
    found = [p for p in (_profile(ctx, pid) for pid in ids) if p is not None]
    if not found:
        return None
    return m.ProfileLookup(query=mask(identifier), profiles=found)


def _profile(ctx: AdminContext, profile_id: int) -> m.Profile | None:
    record = ctx.store.profile_record(profile_id)
    if record is None:
        return None
    by_audience: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # desired, acked, pending, dead
    for audience, _, desired, acked, dead in record.targets:
        counts = by_audience[audience]
        counts[0] += desired
        counts[1] += acked
        counts[2] += desired != acked and not dead
        counts[3] += dead
    decided = {audience: (member, ts) for audience, member, ts in record.memberships}
    memberships = [
        m.Membership(
            audience=audience,
            member=decided.get(audience, (False, 0.0))[0],
            since=decided.get(audience, (False, 0.0))[1],
            desired=by_audience[audience][0],
            acknowledged=by_audience[audience][1],
            pending=by_audience[audience][2],
            dead_letters=by_audience[audience][3],
        )
        for audience in sorted(set(decided) | set(by_audience))
    ]
    members = {audience for audience, (member, _) in decided.items() if member}
    users = [v for k, v, _ in record.identifiers if k == "user_id"]
    anonymous = [v for k, v, _ in record.identifiers if k == "anonymous_id"]
    emails = [v for k, v, _ in record.identifiers if k == "email"]
    return m.Profile(
        profile_id=record.profile_id,
        created_at=record.created_at,
        last_seen_at=record.last_seen_at,
        consent=record.consent,
        consent_at=record.consent_ts,
        identifiers=[m.Identifier(kind=k, value=mask(v), active=a) for k, v, a in record.identifiers],
        memberships=memberships,
        suppressions=[
            m.Suppression(flow=_suppression_name(ctx.config, key), since=since, until=until)
            for key, since, until in record.suppressions
        ],
        lifecycle=_lifecycle(ctx.config, members),
        orders=record.orders,
        revenue=record.revenue,
        queued_events=record.queued_events,
        traits=mask_tree(record.traits),
        recent_events=[_sample(s) for s in ctx.store.samples_of(users, anonymous, emails)],
    )


def _suppression_name(config: Config, key: str) -> str:
    for index, flow in enumerate(config.flows):
        if isinstance(flow, SuppressionFlow) and suppression_key(flow) == key:
            return f"flows[{index}] suppression on {', '.join(flow.on)}"
    return key


def _lifecycle(config: Config, members: set[str]) -> list[m.LifecycleStage]:
    stages = []
    for index, flow in enumerate(config.flows):
        if isinstance(flow, LifecycleFlow):
            stages += [m.LifecycleStage(flow=index, stage=a) for a in lifecycle_audiences(flow) if a in members]
    return stages


def forget(ctx: AdminContext, identifier: str) -> m.Forgotten:
    erased = Processor(ctx.store, ctx.config, ctx.clock, ctx.metrics).forget(identifier)
    if erased == 0:
        message = "no profile matched; a tombstone was recorded so older events will not bring them back"
    else:
        message = f"erased {erased} profile(s); their removal from Criteo is queued"
    return m.Forgotten(erased=erased, message=message)


# ------------------------------------------------------------------------------------ preview


def preview(ctx: AdminContext, message: Any) -> m.PreviewResult:
    """What one Segment message would do, as `segcrit preview` shows it (nothing kept or sent)."""
    return _preview_result(preview_messages(ctx.config, ctx.store, [message], ctx.clock.now()))


def preview_sample(ctx: AdminContext, sample_id: int) -> m.PreviewResult | None:
    """Preview a recent message of the debugger as it was stored (None when it is gone)."""
    row = ctx.store.sample(sample_id)
    if row is None:
        return None
    if not row.accepted:  # never stored: run it through ingest's checks again, to show why
        return preview(ctx, row.body)
    return _preview_result(preview_prepared(ctx.config, ctx.store, [row.body], ctx.clock.now()))


def _preview_result(result: Preview) -> m.PreviewResult:
    for message in result.messages:
        message.requests = [CriteoRequest(r.method, r.url, mask_tree(r.body)) for r in message.requests]
    return m.PreviewResult(
        messages=[
            m.PreviewMessage(
                index=p.index,
                type=p.type,
                event=p.event,
                skipped=p.skipped,
                profile_id=p.profile_id,
                changes=[
                    m.PreviewChange(flow=flow, change="enter" if member else "exit", audience=audience)
                    for flow, member, audience in p.changes
                ],
                adjusted=p.notes,
                catalog_products_changed=p.products_changed,
                requests=[m.PreviewRequest(method=r.method, url=r.url, body=r.body) for r in p.requests],
            )
            for p in result.messages
        ],
        rejected=[m.PreviewRejection(index=r["index"], reason=r["reason"]) for r in result.rejected],
        text="\n".join(result.lines()),
    )


# ------------------------------------------------------------------------------------ config


def config_view(ctx: AdminContext) -> m.ConfigView:
    data = ctx.config.model_dump(mode="json")  # SecretStr values come out as "**********"
    data["store"] = _without_password(ctx.config.store)
    return m.ConfigView(config=data, warnings=config_warnings(ctx.config))


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:**********@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def source_names(config: Config) -> Sequence[str]:
    return [s.name for s in config.sources]
