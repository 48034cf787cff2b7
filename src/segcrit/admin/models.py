"""The answers of the admin API, as pydantic models: they validate what the API returns, the
pages render them, and `/api/openapi.json` is generated from them (nothing written by hand).

Times are float seconds since the epoch. Identifiers are masked (segcrit.admin.masking): the
first 8 hex digits of their hash and "…". Audience counts are of *targets*, one per (audience,
identifier type, identifier value): what Criteo holds or should hold.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Answer):
    """An error: `error` and `message` say the same thing; `code` is constant, for scripts."""

    error: str
    code: str
    message: str


# ------------------------------------------------------------------------------------ audiences


class Audience(_Answer):
    name: str
    segment_id: str | None = Field(description="The Criteo contact-list segment, once resolved")
    desired: int = Field(description="Identifiers Criteo should hold")
    acknowledged: int = Field(description="Identifiers Criteo acknowledged holding")
    pending_add: int = Field(description="Identifiers waiting to be added")
    pending_remove: int = Field(description="Identifiers waiting to be removed")
    dead_letters: int = Field(description="Identifiers parked in dead letters (replay puts them back)")
    dead_letter_batches: int = Field(description="Open dead letters of this audience")
    last_sync_at: float | None = Field(description="When Criteo last acknowledged a change")
    auto_create: bool
    created_by_us: bool


class AudienceList(_Answer):
    audiences: list[Audience]


class CriteoCall(_Answer):
    id: int
    at: float
    endpoint: str
    method: str
    path: str
    status: int = Field(description="HTTP status; 0 when no answer came (timeout, connection error)")
    ok: bool
    duration_ms: float
    audience: str | None
    segment_id: str | None
    summary: dict[str, Any] = Field(description="What was sent, identifiers masked")
    answer: str | None = Field(description="Criteo's answer (JSON text, identifiers masked, cut)")


class DeadLetter(_Answer):
    id: int
    kind: str = Field(description="contact_list, events or catalog")
    created_at: float
    audience: str
    operation: str
    id_type: str
    count: int
    status: int | None
    error: str
    replayed_at: float | None


class Resync(_Answer):
    audience: str
    state: Literal["queued", "running", "done", "failed"]
    requested_at: float
    started_at: float | None
    finished_at: float | None
    result: str | None


class AudienceDetail(Audience):
    recent_calls: list[CriteoCall]
    open_dead_letters: list[DeadLetter]
    resync: Resync | None


# ------------------------------------------------------------------------------------ overview


class CallCount(_Answer):
    endpoint: str
    status: str
    count: int


class Charts(_Answer):
    """Per-minute series of the last 24 hours, aligned on `minutes` (epoch seconds)."""

    minutes: list[int]
    series: dict[str, list[float | None]]


class Overview(_Answer):
    generated_at: float
    backlog: int = Field(description="Events accepted, not yet processed")
    pending_changes: int = Field(description="Audience changes waiting for delivery")
    delivery_lag_secs: float | None = Field(description="How long the oldest pending change has waited")
    dead_letters: int = Field(description="Dead letters not yet replayed")
    failed_events: int = Field(description="Events set aside by processing")
    events_api_pending: int = Field(description="Events API events waiting to be sent")
    audiences: int
    events_in_last_hour: int
    events_refused_last_hour: int
    criteo_calls: list[CallCount] = Field(description="Criteo calls of the last 24 hours by endpoint and status")
    charts: Charts


# ------------------------------------------------------------------------------------ deliveries


class CatalogBatch(_Answer):
    token: str
    merchant_id: str
    created_at: float
    products: int
    polls: int


class Deliveries(_Answer):
    calls: list[CriteoCall]
    endpoints: list[str]
    events_api_pending: int
    open_catalog_batches: list[CatalogBatch]


class DeadLetterList(_Answer):
    dead_letters: list[DeadLetter]
    open: int


class Replayed(_Answer):
    replayed: int


class FailedEvent(_Answer):
    seq: int
    source: str
    received_at: float
    failed_at: float
    error: str
    type: str | None
    event: str | None
    message: dict[str, Any] = Field(description="The event as stored, identifiers masked")


class FailedEventList(_Answer):
    failed_events: list[FailedEvent]
    total: int


# ------------------------------------------------------------------------------------ events


class Sample(_Answer):
    id: int
    at: float
    source: str
    accepted: bool
    reason: str | None = Field(description="Why it was refused")
    type: str | None
    event: str | None
    message: dict[str, Any] = Field(description="As stored (sanitised), identifiers masked")


class SampleList(_Answer):
    samples: list[Sample]
    sources: list[str]


# ------------------------------------------------------------------------------------ profiles


class Identifier(_Answer):
    kind: str
    value: str = Field(description="Masked")
    active: bool


class Membership(_Answer):
    audience: str
    member: bool = Field(description="What the flows decided")
    since: float = Field(description="Time of the event that decided it")
    desired: int = Field(description="Of the person's identifiers, how many Criteo should hold")
    acknowledged: int
    pending: int
    dead_letters: int


class Suppression(_Answer):
    flow: str
    since: float
    until: float


class LifecycleStage(_Answer):
    flow: int = Field(description="Index of the lifecycle flow in `flows`")
    stage: str


class Profile(_Answer):
    profile_id: int
    created_at: float
    last_seen_at: float
    consent: bool | None = Field(description="None: no consent information seen yet")
    consent_at: float | None
    identifiers: list[Identifier]
    memberships: list[Membership]
    suppressions: list[Suppression]
    lifecycle: list[LifecycleStage]
    orders: int
    revenue: float
    queued_events: int = Field(description="Events API events waiting to be sent")
    traits: dict[str, Any]
    recent_events: list[Sample]


class ProfileLookup(_Answer):
    query: str = Field(description="The id looked up, masked")
    profiles: list[Profile]


class Forgotten(_Answer):
    erased: int = Field(description="Profiles erased; their removal from Criteo is queued")
    message: str


# ------------------------------------------------------------------------------------ preview


class PreviewChange(_Answer):
    flow: str
    change: Literal["enter", "exit"]
    audience: str


class PreviewRequest(_Answer):
    method: str
    url: str
    body: dict[str, Any] = Field(description="The exact body, identifiers masked")


class PreviewMessage(_Answer):
    index: int
    type: str | None
    event: str | None
    skipped: str | None
    profile_id: int | None
    changes: list[PreviewChange]
    adjusted: list[str]
    catalog_products_changed: int
    requests: list[PreviewRequest]


class PreviewRejection(_Answer):
    index: int
    reason: str


class PreviewResult(_Answer):
    messages: list[PreviewMessage]
    rejected: list[PreviewRejection]
    text: str = Field(description="What `segcrit preview` prints (identifiers masked)")


# ------------------------------------------------------------------------------------ config


class ConfigView(_Answer):
    config: dict[str, Any] = Field(description="The effective config, secrets masked")
    warnings: list[str] = Field(description="What `segcrit check` warns about")
