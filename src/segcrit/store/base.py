"""The store seam: the one interface between segcrit and its database.

No SQL lives outside `segcrit.store`. `SqliteStore` (one process, WAL) implements it now; a
PostgreSQL implementation for several processes implements the same methods (see
docs/architecture.md: claims with `FOR UPDATE SKIP LOCKED`, a shared rate-limit row, leases for
the scheduler leader).

Vocabulary: an *event* is a sanitised Segment message waiting in the inbox; a *profile* is one
person; an *identifier* is (kind, value) with hashed values for email/phone; a *membership* is the
desired state of one (audience, profile) as decided by the flows; a *target* is one
(audience, identifier type, identifier value) as Criteo should hold it, with what Criteo has
acknowledged (held, not held, or unknown after a call whose answer was lost); a *claim* marks the
targets a call carries while it is in flight; a *dead letter* is a delivery that failed for good.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


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


@dataclass(frozen=True, slots=True)
class Identifier:
    """One identifier of a profile. `kind` is one of IDENTIFIER_KINDS (segcrit.identity.kinds)."""

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
class AudienceStats:
    name: str
    segment_id: str | None
    desired: int
    acknowledged: int
    pending: int
    dead: int
    audience_held: bool = False  # over max_new_audiences_per_day: no Criteo segment, nothing delivered


class IngestSink(Protocol):
    """Where the HTTP sources hand validated, sanitised messages."""

    async def accept(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> AcceptResult:
        """Dedupe by (source, messageId) and commit durably; return only after the commit."""
        ...

    def backlog(self) -> int:
        """Events accepted but not yet processed (cheap: no table scan)."""
        ...


class Store(IngestSink, Protocol):
    """The whole persistence interface (see the module docstring)."""

    # ---- lifecycle
    def close(self) -> None: ...
    def ping(self) -> bool: ...

    # ---- ingest / processing
    def claim_events(self, limit: int) -> list[InboxEvent]: ...
    def prune_seen(self, older_than: float) -> int: ...

    # ---- identity (inside `transaction()`; see SqliteStore for the unit of work)
    def transaction(self) -> Any: ...

    # ---- delivery
    def due_changes(self, now: float, limit: int) -> list[PendingChange]: ...
    def oldest_pending_since(self) -> float | None: ...
    def claim_changes(self, keys: Iterable[TargetKey], until: float) -> None: ...
    def release_claims(self) -> int: ...
    def ack_changes(self, keys: Iterable[TargetKey], add: bool, now: float) -> None: ...
    def defer_changes(self, keys: Iterable[TargetKey], next_at: float, now: float, *, maybe_applied: bool) -> None: ...
    def dead_letter(
        self,
        keys: Sequence[TargetKey],
        add: bool,
        status: int | None,
        error: str,
        now: float,
        *,
        maybe_applied: bool = False,
    ) -> int: ...
    def replay_dead_letters(self, audience: str | None, now: float) -> int: ...
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...

    # ---- failures and retention (StoreUnavailable: the store cannot write now, retry later)
    def write_failure(self) -> str | None: ...
    def probe_write(self) -> None: ...
    def replay_failed_events(self) -> int: ...
    def prune_failed_events(self, failed_before: float) -> int: ...
    def drop_dead_letters(self, created_before: float) -> int: ...
    def erase_anonymous_profiles(self, unseen_since: float, now: float) -> int: ...

    # ---- audiences
    def audience(self, name: str) -> AudienceRecord | None: ...
    def save_audience(self, record: AudienceRecord) -> None: ...
    def reset_audience_acks(self, name: str, now: float) -> None: ...
    def mark_audience_unknown(self, name: str, now: float) -> None: ...
    def audience_stats(self) -> list[AudienceStats]: ...
