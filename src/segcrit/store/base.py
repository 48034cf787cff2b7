"""The store seam: the interfaces between segcrit and its database, one Protocol per role.

No SQL lives outside `segcrit.store`, and nothing outside it imports an implementation:
`segcrit.store.open_store(url)` returns a `Store`, and each part of segcrit is typed against the
role it uses (the records they exchange are in `segcrit.domain`):

    IngestSink / IngestStore       sources, `segcrit import`: accept with dedupe, the backlog
    ProcessingStore                the processor: claim a chunk of the inbox in the transaction
      ChunkTx / ProcessingTx         that applies it; identity, memberships, targets, commerce,
                                     cohorts, tombstones, lookup marks (the unit of work)
    AudienceDeliveryStore          contact lists: claim due changes, ack, defer, dead letter;
                                     audiences, held audiences, lookalikes; ResyncQueue (the
                                     resyncs asked for in the admin UI)
    EventsQueue / CatalogQueue     Events API documents, catalog products and batch polls
    RateBudget                     the Criteo call budget every process shares
    SchedulerStore                 jobs and their leases
    ScheduledFlowStore             the scheduled part of suppression, lifecycle, lookalike_seed
    HousekeepingStore              retention
    EnrichmentStore                the lookups queue
    StatusReads / Replays          `segcrit status`, /metrics; `segcrit replay`
    AdminStore                     the admin UI and API: bounded reads, its activity record
    StoreHealth                    close, ping, write failures
    SchemaStore                    versioned migrations (segcrit.store.migrations)

`SqliteStore` (one process, WAL) implements them all; a PostgreSQL store for several processes
implements the same (docs/architecture.md, "The store seam").

What every implementation promises:
- A method returns after its writes are committed (a unit of work: when its block ends).
- Work that several processes could take (inbox events, contact-list changes, Events API
  events, catalog products, catalog batch polls) is *claimed*: a claim names what one worker
  sends or applies, and no other claim gets it until it ends or expires (`until`). Settling a
  claim (ack, defer, dead letter, sent) ends it; a claim that expires returns its work to the pool.
  A settle speaks for the claims of its own store instance: on a shared store, a row that another
  process claimed meanwhile keeps that claim (SQLite: one process owns the file, so all are its own).
- Time is the caller's `now` (a FakeClock in tests): the store compares it with stored times.
- `StoreUnavailable` (segcrit.errors) when the store cannot write now (disk full, locked,
  unreachable): the caller retries later; no other error means that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from segcrit.clock import Clock
from segcrit.domain import (
    AcceptResult,
    AudienceCounts,
    AudienceRecord,
    AudienceStats,
    CallRow,
    CatalogStats,
    CounterIncrement,
    DeadLetter,
    DeadLetterRow,
    DueLookup,
    FailedEvent,
    Identifier,
    InboxEvent,
    JobRecord,
    LookalikeRecord,
    LookupDone,
    LookupStats,
    NewCall,
    NewSample,
    OpenBatch,
    PendingChange,
    PendingEvent,
    PendingProduct,
    ProfileFacts,
    ProfileRecord,
    ProfileState,
    ResyncRow,
    SampleRow,
    TargetKey,
    WaitingPlace,
)
from segcrit.ratelimit import RateLimiter, Sleep
from segcrit.store.migrations import Migration

# profiles.last_seen_at is kept to within this many seconds (`touch_profile`): it serves retention
# and cohorts, counted in days, and writing it at every event of a returning visitor would rewrite
# their profile row (and its place in the last-seen index) each time.
LAST_SEEN_SLACK_SECS = 60.0

# ---------------------------------------------------------------------------------------- ingest


class IngestSink(Protocol):
    """Where the HTTP sources hand validated, sanitised messages."""

    def submit(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> Awaitable[AcceptResult]:
        """Store the messages whose (source, messageId) was not seen within the dedupe window (a
        message without messageId always), in order: what it returns resolves after the durable
        commit. The messages are serialised before it returns, so that the caller can let go of
        them (and of the request they came from) while the commit is awaited: a request's objects
        freed right after their last use cost a fraction of the same freed once the other requests
        in flight have taken their place in the CPU's caches."""
        ...

    def backlog(self) -> int:
        """Events accepted but not yet processed (cheap: no table scan)."""
        ...


class IngestStore(IngestSink, Protocol):
    async def accept(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> AcceptResult:
        """`submit`, awaited."""
        ...

    def accept_sync(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> AcceptResult:
        """`accept` for callers without an event loop (`segcrit import`)."""
        ...


# ---------------------------------------------------------------------------------------- processing


class ProcessingTx(Protocol):
    """The processor's unit of work: everything one transaction may read and change of profiles.

    Decisions are made by the pure domain; these methods only read and write. Every "set" is
    latest-timestamp-wins, so applying the same event twice, or two events in either order,
    ends in the same state.
    """

    # ---- identity
    def hold_identifiers(self, idents: Iterable[tuple[str, str]]) -> None:
        """Before events are applied: the (kind, value) identifiers they carry. A store several
        processes share locks their profiles (and the identifiers nobody holds yet) here, all at
        once and in one order, so that two processes never create one person twice nor change one
        profile at the same time, and reads them ahead. An identifier not named here is locked
        when first used; a store with one writer (SQLite) need do nothing."""
        ...

    def find_profiles(self, idents: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The profile of each (kind, value) that belongs to one."""
        ...

    def identifier_counts(self, profile_id: int) -> dict[str, int]: ...
    def create_profile(self, now: float) -> int: ...
    def touch_profile(self, profile_id: int, seen_at: float) -> None:
        """Note that the person was seen (written at the latest when the unit of work commits), when
        it moves last_seen_at forward by more than LAST_SEEN_SLACK_SECS."""
        ...

    def attach_identifier(self, profile_id: int, ident: Identifier, ts: float) -> None: ...
    def set_identifier_active(self, kind: str, value: str, active: bool, ts: float) -> bool:
        """Ad tracking on/off for an identifier; the latest timestamp wins. True if it changed."""
        ...

    def merge_profiles(self, into: int, other: int) -> None:
        """Move everything of `other` to `into` (memberships, consent, traits: the latest ts wins)."""
        ...

    def set_consent(self, profile_id: int, consent: bool, ts: float) -> bool: ...
    def load_profile(self, profile_id: int) -> ProfileState | None: ...

    # ---- memberships, targets, audiences
    def set_membership(self, profile_id: int, audience: str, member: bool, ts: float) -> bool:
        """Upsert when newer (ties: the later arrival wins). True if the row changed."""
        ...

    def set_targets(self, profile_id: int, desired: set[TargetKey], now: float) -> int:
        """Make the profile's targets equal `desired`; returns how many rows changed desire.
        A target Criteo holds or may hold is never dropped: it becomes a pending removal."""
        ...

    def pending_of_profile(self, profile_id: int) -> list[tuple[TargetKey, bool]]:
        """The profile's changes waiting for delivery: (target, add?)."""
        ...

    def ensure_audience(self, name: str, auto_create: bool) -> None: ...
    def ensure_new_audience(self, name: str, auto_create: bool, now: float, day: int, allowance: int) -> bool:
        """Record an audience that traffic names the first time it is seen: admitted while `day`
        has used fewer than `allowance` admissions, else held. True when it was new."""
        ...

    def add_to_counter(self, name: str, amount: int = 1) -> None: ...

    # ---- deletion
    def tombstoned_since(self, idents: Iterable[tuple[str, str]], ts: float) -> bool:
        """True if any identifier belongs to a person deleted at or after `ts`."""
        ...

    def erase_profile(self, profile_id: int, deleted_at: float, tombstone_kinds: set[str]) -> None: ...
    def add_tombstone(self, kind: str, value: str, deleted_at: float) -> None: ...

    # ---- commerce
    def record_order(
        self, order_id: str, profile_id: int, ts: float, revenue: float | None, currency: str | None
    ) -> bool:
        """Remember an order once (the first delivery wins). True when this transaction has not
        seen it before; whether an earlier one has is settled when the row is written (PostgreSQL
        writes a chunk's orders together at its end), so callers must not count on it."""
        ...

    def mark_order_sent(self, order_id: str, now: float) -> bool:
        """Claim the order's one trackTransaction; False when it was already claimed."""
        ...

    def enqueue_event(
        self, person: str, profile_id: int | None, header: dict[str, Any], body: dict[str, Any], now: float
    ) -> None: ...
    def queued_events(self, person: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(header, body) of the person's Events API events waiting to be sent, oldest first."""
        ...

    def drop_events_of(self, profile_id: int) -> int: ...
    def product_fields(self, merchant_id: str, product_id: str) -> dict[str, Any] | None: ...
    def save_product(
        self,
        merchant_id: str,
        product_id: str,
        fields: dict[str, Any],
        fingerprint: str,
        missing: str | None,
        now: float,
    ) -> bool:
        """Keep the product's latest data; True when it changed (and so is due to be sent)."""
        ...

    # ---- profile flows
    def merge_traits(self, profile_id: int, traits: dict[str, Any], ts: float) -> None: ...
    def set_suppression(self, profile_id: int, flow: str, since: float, until: float) -> bool: ...
    def active_suppressions(self, profile_id: int, now: float) -> list[str]: ...
    def end_suppression(self, profile_id: int, flow: str) -> None: ...

    # ---- enrichment
    def mark_lookups(self, profile_id: int, lookups: Iterable[str], now: float) -> None:
        """The profile is due for these lookups now (it is new, or holds a key it did not hold)."""
        ...


class ChunkTx(ProcessingTx, Protocol):
    """A unit of work that holds a claim on some inbox events (`ProcessingStore.claim_chunk`)."""

    @property
    def events(self) -> Sequence[InboxEvent]:
        """The events claimed, the oldest first; no other claim gets them while this one lasts."""
        ...

    def should_commit_early(self) -> bool:
        """True when the transaction should end after the current event (the store knows why:
        SQLite, an ingest commit waits for the one write lock). The events not marked `done`
        return to the inbox and a new chunk takes them."""
        ...

    def done(self, events: Sequence[InboxEvent]) -> None:
        """These events' effects are in this transaction: they leave the inbox with its commit."""
        ...

    def set_aside(self, event: InboxEvent, error: str, now: float) -> None:
        """Move an event whose processing fails out of the inbox, with the reason (failed_events)."""
        ...


class ProcessingStore(Protocol):
    def claim_chunk(self, limit: int, *, only: Sequence[int] | None = None) -> AbstractContextManager[ChunkTx]:
        """A unit of work and, in it, a claim on up to `limit` waiting events (the oldest first;
        with `only`, those of these seqs that still wait and no other claim holds).

        Its block commits on a normal exit (its `done` events leave the inbox) and rolls back on an
        exception (every event stays); either way the claim ends with it. On PostgreSQL the claim
        is taken inside the transaction (`FOR UPDATE SKIP LOCKED`), so two processes never apply
        the same event, and a process that dies releases its claim with its connection.
        """
        ...

    def transaction(self) -> AbstractContextManager[ProcessingTx]:
        """A unit of work without events (scheduled jobs, `forget`)."""
        ...

    def dry_run(self) -> AbstractContextManager[ProcessingTx]:
        """A unit of work that is always rolled back (preview: decide everything, keep nothing)."""
        ...

    # ---- erasure of deleted people's waiting events (segcrit.processing.engine.Processor.erase_waiting_events)
    def pending_erasures(self, limit: int) -> dict[tuple[str, str], float]:
        """Deleted identifiers whose waiting events are still to be erased: (kind, value) -> deleted at."""
        ...

    def waiting_events(self, place: WaitingPlace, after_seq: int, limit: int) -> list[InboxEvent]:
        """One page of the events waiting in `place`, in seq order after `after_seq`."""
        ...

    def delete_waiting_events(self, place: WaitingPlace, seqs: Sequence[int]) -> None: ...
    def erasures_done(self, erasures: Mapping[tuple[str, str], float]) -> None:
        """The waiting events of these deletions are erased (a newer deletion of one stays pending)."""
        ...


# ---------------------------------------------------------------------------------------- delivery


class Leases(Protocol):
    """Named leases: one holder at a time across every process on the store (scheduled jobs, the
    finding or creating of an audience's segment)."""

    def try_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Take or renew a named lease; True when `holder` holds it until now + ttl (ttl 0 releases it)."""
        ...

    def lease_holder(self, name: str, now: float) -> str | None:
        """Who holds the named lease at `now` (None: nobody, or it expired)."""
        ...


class ResyncQueue(Protocol):
    """Resyncs asked for in the admin UI, run by the delivery thread (the one place calling Criteo)."""

    def resyncs_waiting(self) -> bool: ...
    def claim_resync(self, now: float) -> str | None:
        """The audience of the oldest resync nobody started yet, now marked started (claimed)."""
        ...

    def resync_finished(self, audience: str, result: str, now: float) -> None: ...


class AudienceDeliveryStore(ResyncQueue, Leases, Protocol):
    """Contact-list delivery: pending changes per (audience, operation, identifier type), the
    audiences' Criteo segments and lookalikes (see docs/architecture.md, "Lost answers")."""

    def due_changes(self, now: float, limit: int) -> list[PendingChange]:
        """Due changes (retry time passed, not claimed), the oldest first, held audiences left out."""
        ...

    def due_changes_of(self, audience: str, add: bool, id_type: str, now: float, limit: int) -> list[PendingChange]:
        """The due changes of one (audience, operation, identifier type), the oldest first."""
        ...

    def claim_changes(self, keys: Sequence[TargetKey], add: bool, now: float, until: float) -> list[TargetKey]:
        """Before a call: claim those of `keys` that are still due for operation `add` and that no
        other claim holds, until `until`; returns them (the call carries those only).

        Committed before the call: what Criteo holds of them is unknown until it answers, so a
        crash during the call leaves them uncertain rather than settled (an expired claim is a
        lost answer)."""
        ...

    def ack_changes(self, keys: Iterable[TargetKey], add: bool, now: float) -> None:
        """Criteo answered: it holds (add) or no longer holds (remove) these identifiers."""
        ...

    def defer_changes(self, keys: Iterable[TargetKey], next_at: float, now: float, *, maybe_applied: bool) -> None:
        """The call failed: try again at `next_at`. Its claim ends; unless the call `maybe_applied`
        (its answer was lost), Criteo holds what it held before."""
        ...

    def dead_letter(
        self,
        keys: Sequence[TargetKey],
        add: bool,
        status: int | None,
        error: str,
        now: float,
        *,
        maybe_applied: bool = False,
    ) -> int:
        """Park these changes under a new dead letter (their claim ends as in `defer_changes`)."""
        ...

    def audience(self, name: str) -> AudienceRecord | None: ...
    def save_audience(self, record: AudienceRecord) -> None: ...
    def reset_audience_acks(self, name: str, now: float) -> None:
        """The segment was replaced: nothing counts as acknowledged; resend the whole membership."""
        ...

    def mark_audience_unknown(self, name: str, now: float) -> None:
        """Before a call that may empty the audience's list: nothing of it counts as known."""
        ...

    def audience_stats(self) -> list[AudienceStats]: ...
    def audience_counts(self) -> list[AudienceCounts]:
        """Every audience's targets by state (running totals: one row per audience)."""
        ...

    def audience_counts_of(self, name: str) -> AudienceCounts | None: ...
    def held_audience_count(self) -> int: ...
    def admit_held_audiences(self, day: int, allowance: int) -> list[str]:
        """Admit the longest-held audiences that `day`'s allowance still has room for; returns them."""
        ...

    def release_audiences(self, names: Iterable[str]) -> list[str]:
        """Admit these held audiences without using any allowance; returns those that were held."""
        ...

    def lookalikes_to_create(self) -> list[LookalikeRecord]: ...
    def lookalike_created(self, name: str, segment_id: str, now: float) -> None: ...


class EventsQueue(Protocol):
    """Events API events waiting to be sent (one document per person and call)."""

    def due_events(self, now: float, limit: int) -> list[PendingEvent]:
        """Events due (retry time passed, not claimed, not dead-lettered), the oldest first."""
        ...

    def claim_criteo_events(self, ids: Sequence[int], now: float, until: float) -> list[int]:
        """Claim those of these events that no other claim holds, until `until`; returns their ids."""
        ...

    def events_sent(self, ids: Sequence[int]) -> None:
        """Criteo accepted them: they leave the queue."""
        ...

    def defer_events(self, ids: Sequence[int], next_at: float, now: float) -> None: ...
    def dead_letter_events(self, ids: Sequence[int], status: int | None, error: str, now: float) -> int: ...


class CatalogQueue(Protocol):
    """Catalog products to send in batches, and the batches whose report is not final yet."""

    def due_products(self, merchant_id: str, now: float, limit: int) -> list[PendingProduct]:
        """Changed products not in a batch, not claimed, not dead-lettered, the oldest first."""
        ...

    def claim_products(self, merchant_id: str, product_ids: Sequence[str], now: float, until: float) -> list[str]:
        """Claim those of these products that no other claim holds, until `until`; returns them."""
        ...

    def open_batch(
        self, token: str, merchant_id: str, products: Sequence[tuple[str, str]], now: float, poll_at: float
    ) -> None:
        """Criteo accepted a batch of these (product_id, fingerprint): they are in it (claim ended)."""
        ...

    def defer_products(self, merchant_id: str, product_ids: Sequence[str], next_at: float, now: float) -> None: ...
    def dead_letter_products(
        self, merchant_id: str, product_ids: Sequence[str], status: int | None, error: str, now: float
    ) -> int: ...
    def batches_to_poll(self, now: float, until: float) -> list[OpenBatch]:
        """The open batches whose next poll is due, each claimed until `until` (or until polled)."""
        ...

    def batch_polled(self, token: str, next_poll: float) -> None:
        """The report is not final yet: poll again at `next_poll` (the claim ends)."""
        ...

    def close_batch(self, batch: OpenBatch, errors: dict[str, str], now: float, *, failed: bool = False) -> None:
        """The report is final: record each product's outcome; a failed batch is sent again."""
        ...


class RateBudget(Protocol):
    def rate_limiter(self, name: str, limit_per_minute: int, clock: Clock, sleep: Sleep) -> RateLimiter:
        """The limiter of one call budget (`criteo_api`: every call to criteo.api_url; `events_api`):
        at most `limit_per_minute` calls in any 60 s, shared by every process using this store."""
        ...


class DeliveryStore(AudienceDeliveryStore, EventsQueue, CatalogQueue, RateBudget, Protocol):
    """What the delivery thread uses (segcrit.runtime.build_workers, `segcrit resync`)."""


# ---------------------------------------------------------------------------------------- scheduled work


class SchedulerStore(Leases, Protocol):
    def schedule_job(self, name: str, next_run_at: float) -> None:
        """Register a job (keeping its schedule when it is known already)."""
        ...

    def job(self, name: str) -> JobRecord | None: ...
    def job_ran(self, name: str, ran_at: float, result: str, next_run_at: float) -> None: ...


class ScheduledFlowStore(ProcessingStore, Protocol):
    """The scheduled part of suppression, lifecycle and lookalike_seed: reads that find the work,
    then units of work that apply it."""

    def expired_suppressions(self, now: float, limit: int) -> list[tuple[int, str, float]]:
        """(profile id, suppression key, until) of suppressions that ended at or before `now`."""
        ...

    def dormant_candidates(self, stages: Sequence[str], cutoff: float, limit: int) -> list[tuple[int, float]]:
        """Profiles in one of `stages` not seen since `cutoff`: (profile id, last seen)."""
        ...

    def facts_pages(self) -> Iterator[list[ProfileFacts]]:
        """Every profile's cohort facts, one page at a time, in profile id order."""
        ...

    def want_lookalike(self, name: str, seed_audience: str, target_size: int) -> None: ...


class HousekeepingStore(Protocol):
    """Retention (SPEC §8): each call works in small transactions that never hold up ingest."""

    def prune_seen(self, older_than: float) -> int: ...
    def prune_failed_events(self, failed_before: float) -> int: ...
    def drop_dead_letters(self, created_before: float) -> int: ...
    def erase_anonymous_profiles(self, unseen_since: float, now: float) -> int: ...


class ScheduledStore(SchedulerStore, ScheduledFlowStore, HousekeepingStore, Protocol):
    """What the scheduler's jobs use (segcrit.scheduler)."""


# ---------------------------------------------------------------------------------------- enrichment


class EnrichmentStore(Protocol):
    """The lookups queue: which profiles are due for which lookup, and how each source fares."""

    def due_lookups(self, lookup: str, key_kind: str, now: float, limit: int) -> list[DueLookup]: ...
    def lookups_answered(
        self,
        lookup: str,
        done: Sequence[LookupDone],
        messages: Sequence[dict[str, Any]],
        source: str,
        now: float,
        requests: int,
    ) -> None:
        """Queue the answers (inbox messages) and reschedule the profiles, in one unit of work."""
        ...

    def lookup_failed(self, lookup: str, error: str, now: float, next_try_at: float) -> None: ...
    def seed_lookups(self, lookup: str, key_kind: str, now: float) -> int:
        """Queue every profile holding a `key_kind` identifier for `lookup`, once per key."""
        ...

    def forget_other_lookups(self, lookups: Sequence[str]) -> int: ...
    def due_lookup_count(self, lookup: str, now: float) -> int: ...


# ---------------------------------------------------------------------------------------- operations


class StoreHealth(Protocol):
    def close(self) -> None: ...
    def ping(self) -> bool: ...
    def write_failure(self) -> str | None:
        """Why the last write failed, while none has succeeded since (else None)."""
        ...

    def probe_write(self) -> None:
        """A write that needs free space: StoreUnavailable while the store still cannot write."""
        ...


class StatusReads(StoreHealth, Protocol):
    """Reads for `segcrit status`, /metrics and the admin; each is cheap or bounded."""

    def backlog(self) -> int: ...
    def pending_count(self) -> int:
        """Changes waiting for delivery, held audiences' included (a running total: no scan)."""
        ...

    def oldest_pending_since(self) -> float | None: ...
    def audience_stats(self) -> list[AudienceStats]: ...
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...
    def dead_letter_count(self) -> int: ...
    def failed_event_count(self) -> int: ...
    def failed_events(self, limit: int = 10) -> list[FailedEvent]: ...
    def dropped_counts(self) -> dict[str, int]:
        """What retention dropped, ever, by segcrit.domain.DROPPED_* key."""
        ...

    def pending_event_count(self) -> int: ...
    def catalog_stats(self) -> CatalogStats: ...
    def product_errors(self, limit: int = 20) -> list[tuple[str, str, str]]: ...
    def jobs(self) -> list[JobRecord]: ...
    def job(self, name: str) -> JobRecord | None: ...
    def held_audience_count(self) -> int: ...
    def held_audiences(self, limit: int) -> list[tuple[str, float]]: ...
    def counters(self, prefix: str) -> dict[str, int]: ...
    def suppressed_count(self, flow: str, now: float) -> int: ...
    def member_count(self, audience: str) -> int: ...
    def lookalike(self, name: str) -> LookalikeRecord | None: ...
    def lookalikes_to_create(self) -> list[LookalikeRecord]: ...
    def profile_facts(self, profile_id: int) -> ProfileFacts | None: ...
    def lookup_stats(self, lookups: Sequence[str], now: float) -> list[LookupStats]: ...
    def unanswered_lookup_count(self, lookup: str) -> int: ...


class SchemaStore(Protocol):
    """Versioned schema migrations (segcrit.store.migrations has the rule for writing one)."""

    def pending_migrations(self) -> list[Migration]:
        """The migrations this store lacks, in order (read only)."""
        ...

    def apply_migrations(self) -> list[Migration]:
        """Apply the pending migrations under the store's migration lock; returns those applied."""
        ...


class AdminStore(StatusReads, Protocol):
    """What the admin UI and API read (each read bounded: a key, an index range, a capped table),
    and what the admin writes: its activity record (recent Criteo calls, ingest samples, per-minute
    counters, written by the recorder of every process) and resync requests."""

    def audiences(self) -> list[AudienceRecord]: ...
    def audience_counts(self) -> list[AudienceCounts]: ...
    def audience_counts_of(self, name: str) -> AudienceCounts | None: ...
    def pending_total(self) -> int: ...
    def open_dead_letters(self) -> dict[str, int]:
        """Audience (or `events`, `catalog:<merchant>`) -> dead letters not yet replayed."""
        ...

    def dead_letters_of(self, audience: str, limit: int = 50) -> list[DeadLetterRow]: ...
    def recent_dead_letters(self, limit: int = 100, include_replayed: bool = False) -> list[DeadLetterRow]: ...
    def open_batches(self, limit: int) -> list[OpenBatch]:
        """Catalog batches whose report is not final yet, the oldest first (claims nothing)."""
        ...

    def request_resync(self, audience: str, now: float) -> None: ...
    def resync_state(self, audience: str) -> ResyncRow | None: ...
    def profiles_of(self, keys: Iterable[tuple[str, str]]) -> list[int]: ...
    def profile_record(self, profile_id: int) -> ProfileRecord | None: ...
    def record_activity(
        self, counters: Sequence[CounterIncrement], calls: Sequence[NewCall], samples: Sequence[NewSample]
    ) -> None: ...
    def prune_counters(self, before_minute: int) -> int: ...
    def counters_by_minute(self, minute: int, series: Sequence[str]) -> list[tuple[int, str, str, float]]: ...
    def counter_labels(self, minute: int, series: str) -> list[tuple[dict[str, str], float]]: ...
    def recent_calls(
        self,
        limit: int = 50,
        *,
        endpoint: str | None = None,
        audience: str | None = None,
        failed: bool | None = None,
        before_id: int | None = None,
    ) -> list[CallRow]: ...
    def call_endpoints(self) -> list[str]: ...
    def samples(
        self, limit: int = 50, *, source: str | None = None, accepted: bool | None = None
    ) -> list[SampleRow]: ...
    def sample(self, sample_id: int) -> SampleRow | None: ...
    def sample_sources(self) -> list[str]: ...
    def samples_of(
        self, user_ids: Sequence[str], anonymous_ids: Sequence[str], emails: Sequence[str], limit: int = 20
    ) -> list[SampleRow]: ...


class Replays(Protocol):
    def replay_dead_letters(self, audience: str | None, now: float) -> int:
        """Put open dead letters (of one audience) back on their queues; returns how many."""
        ...

    def replay_failed_events(self) -> int:
        """Put every set-aside event back at the end of the inbox; returns how many."""
        ...


# ---------------------------------------------------------------------------------------- the whole


class Store(
    IngestStore,
    ScheduledStore,
    DeliveryStore,
    EnrichmentStore,
    AdminStore,
    Replays,
    SchemaStore,
    Protocol,
):
    """Every role: what `open_store` returns and `segcrit serve` hands out."""
