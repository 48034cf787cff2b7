"""The records that cross the store seam: what the domain reads from and hands to a store.

Plain data, no behaviour and no I/O, so that the pure domain (identity, consent, flows,
membership), the workers and every store implementation share them without depending on one
another. The store's interfaces are in `segcrit.store.base`.

Vocabulary: an *event* is a sanitised Segment message waiting in the inbox; a *profile* is one
person; an *identifier* is (kind, value) with hashed values for email/phone; a *membership* is the
desired state of one (audience, profile) as decided by the flows; a *target* is one
(audience, identifier type, identifier value) as Criteo should hold it, with what Criteo has
acknowledged (held, not held, or unknown after a call whose answer was lost); a *claim* marks what
a call carries while it is in flight; a *dead letter* is a delivery that failed for good.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

# ---------------------------------------------------------------------------------------- ingest


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """What happened to the messages handed to `accept` (all durably committed on return)."""

    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class InboxEvent:
    seq: int
    source: str
    message: dict[str, Any]
    received_at: float


# Where events wait: the inbox (to be processed) and the events processing set aside.
WaitingPlace = Literal["inbox", "failed_events"]
WAITING_PLACES: Final[tuple[WaitingPlace, ...]] = ("inbox", "failed_events")


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """An event processing set aside, and why."""

    seq: int
    source: str
    received_at: float
    failed_at: float
    error: str
    message: dict[str, Any]  # as stored: sanitised at ingest


# The keys of `dropped_counts()`: what retention dropped, ever (segcrit status shows them).
DROPPED_DEAD_LETTERS: Final = "dropped.dead_letters"
DROPPED_FAILED_EVENTS: Final = "dropped.failed_events"

# ---------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True, slots=True)
class Identifier:
    """One identifier of a profile. `kind` is one of the kinds of segcrit.identity.graph."""

    kind: str
    value: str
    # For emails: the md5 hex, kept next to the sha256 value so every Criteo form can be derived.
    extra: str | None = None
    # False for a mobile advertising id whose device said adTrackingEnabled: false.
    active: bool = True


@dataclass(slots=True)
class ProfileState:
    """Everything the domain needs to know about one profile to decide its targets."""

    profile_id: int
    identifiers: list[Identifier]
    consent: bool | None  # None: no consent information seen yet
    consent_ts: float | None
    memberships: dict[str, tuple[bool, float]] = field(default_factory=dict)  # audience -> (member, ts)


@dataclass(slots=True)
class ProfileFacts:
    """What a cohort expression (segcrit.flows.lookalike_seed) sees of one profile."""

    profile_id: int
    created_at: float
    last_seen_at: float
    order_count: int = 0
    revenue_total: float = 0.0
    first_order_at: float | None = None
    last_order_at: float | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    audiences: frozenset[str] = frozenset()


# ---------------------------------------------------------------------------------------- audiences


@dataclass(frozen=True, slots=True)
class TargetKey:
    audience: str
    id_type: str  # Criteo identifierType: email, madid, gum, identityLink, phoneNumber
    id_value: str


@dataclass(frozen=True, slots=True)
class PendingChange:
    """A target whose desired state differs from what Criteo acknowledged."""

    key: TargetKey
    add: bool  # True: operation add; False: remove
    since: float
    attempts: int
    first_failure_at: float | None


@dataclass(frozen=True, slots=True)
class AudienceRecord:
    name: str
    segment_id: str | None
    auto_create: bool
    created_by_us: bool
    # Set while over audience_sync's max_new_audiences_per_day: nothing is delivered to it.
    held_since: float | None = None


@dataclass(frozen=True, slots=True)
class AudienceStats:
    name: str
    segment_id: str | None
    desired: int
    acknowledged: int
    pending: int
    dead: int
    audience_held: bool = False  # over max_new_audiences_per_day: no Criteo segment, nothing delivered


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    created_at: float
    audience: str
    operation: str
    id_type: str
    count: int
    status: int | None
    error: str
    replayed_at: float | None


@dataclass(frozen=True, slots=True)
class LookalikeRecord:
    name: str
    seed_audience: str
    target_size: int
    segment_id: str | None


# ---------------------------------------------------------------------------------------- commerce


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An Events API event waiting to be sent, in the document of its `person`."""

    id: int
    person: str
    header: dict[str, Any]
    body: dict[str, Any]
    created_at: float
    attempts: int
    first_failure_at: float | None


@dataclass(frozen=True, slots=True)
class PendingProduct:
    merchant_id: str
    product_id: str
    fields: dict[str, Any]
    fingerprint: str
    updated_at: float
    attempts: int
    first_failure_at: float | None


@dataclass(frozen=True, slots=True)
class OpenBatch:
    """A catalog batch Criteo accepted and whose report is not final yet."""

    token: str
    merchant_id: str
    created_at: float
    products: list[tuple[str, str]]  # (product_id, fingerprint)
    polls: int


@dataclass(frozen=True, slots=True)
class CatalogStats:
    products: int
    accepted: int
    with_errors: int
    pending: int
    in_flight: int
    not_sent: dict[str, int]  # reason -> products


# ---------------------------------------------------------------------------------------- scheduler


@dataclass(frozen=True, slots=True)
class JobRecord:
    name: str
    last_run_at: float | None
    last_result: str | None
    next_run_at: float


# ---------------------------------------------------------------------------------------- enrichment


@dataclass(frozen=True, slots=True)
class DueLookup:
    """A profile due for one lookup: its keys (raw ids, or sha256 of emails), the row's version and
    the fingerprint of the last answer applied (None: none yet)."""

    profile_id: int
    version: int
    keys: tuple[str, ...]
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class LookupDone:
    profile_id: int
    version: int  # as read by `due_lookups`: a newer one means processing asked again meanwhile
    outcome: str  # found | unknown | no_key
    next_due_at: float
    answer: str | None = None  # fingerprint of the answer now applied (None: nothing found)


@dataclass(frozen=True, slots=True)
class LookupStats:
    name: str
    profiles: int  # profiles that hold the lookup's key
    due: int  # due now
    outcomes: dict[str, int]  # found / unknown / no_key -> profiles, as of their last lookup
    failing_since: float | None
    last_error: str | None
    next_try_at: float | None
    last_success_at: float | None
    lookups: int
    requests: int


# ---------------------------------------------------------------------------------------- admin


@dataclass(frozen=True, slots=True)
class AudienceCounts:
    """One audience's targets (identifiers) by state; the store keeps them by triggers on targets."""

    name: str
    segment_id: str | None
    desired: int
    acknowledged: int
    pending_add: int
    pending_remove: int
    dead: int
    last_sync_at: float | None
    auto_create: bool = True
    created_by_us: bool = False


@dataclass(frozen=True, slots=True)
class CounterIncrement:
    """Add `value` to a counter, or (gauge) keep the highest value seen in the minute."""

    minute: int
    series: str
    labels: str  # JSON object, keys sorted
    value: float
    gauge: bool = False


@dataclass(frozen=True, slots=True)
class CallRow:
    id: int
    at: float
    endpoint: str
    method: str
    path: str
    status: int
    duration_ms: float
    segment_id: str | None
    audience: str | None
    summary: dict[str, Any]
    answer: str | None


@dataclass(frozen=True, slots=True)
class NewCall:
    at: float
    endpoint: str
    method: str
    path: str
    status: int
    duration_ms: float
    segment_id: str | None
    audience: str | None
    summary: dict[str, Any]
    answer: str | None


@dataclass(frozen=True, slots=True)
class SampleRow:
    id: int
    at: float
    source: str
    accepted: bool
    reason: str | None
    type: str | None
    event: str | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewSample:
    at: float
    source: str
    accepted: bool
    reason: str | None
    type: str | None
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    email: str | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    id: int
    kind: str  # contact_list | events | catalog
    created_at: float
    audience: str
    operation: str
    id_type: str
    count: int
    status: int | None
    error: str
    replayed_at: float | None


@dataclass(frozen=True, slots=True)
class ResyncRow:
    audience: str
    requested_at: float
    started_at: float | None
    finished_at: float | None
    result: str | None


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """Everything the profile page shows of one profile, read by its primary key and indexes."""

    profile_id: int
    created_at: float
    last_seen_at: float
    consent: bool | None
    consent_ts: float | None
    traits: dict[str, Any]
    identifiers: list[tuple[str, str, bool]]  # (kind, value, active)
    memberships: list[tuple[str, bool, float]]  # (audience, member, ts)
    targets: list[tuple[str, str, bool, bool, bool]]  # (audience, id_type, desired, acked, dead-lettered)
    suppressions: list[tuple[str, float, float]]  # (flow key, since, until)
    orders: int
    revenue: float
    queued_events: int
