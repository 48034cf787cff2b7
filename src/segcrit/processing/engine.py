"""The processor: accepted events -> identity -> consent -> flows -> desired targets.

It takes events from the inbox in chunks (`ProcessingStore.claim_chunk`): a chunk is claimed in
the unit of work that applies it, and its commit holds the effects of its events and their
removal from the inbox. When the store asks (`should_commit_early`: on SQLite, ingest waits for
the write lock), the events done so far commit and the rest follows in a new chunk. A crash
replays what had not committed, and replay is harmless because every decision is "latest
timestamp wins" on desired state.

Failures (SPEC §7): when the store cannot write (StoreUnavailable: disk full, locked, I/O), the
chunk stays in the inbox and `drain_once` raises, for the caller to retry later; nothing is set
aside. When processing itself raises, the chunk is bisected until the events that fail on their
own are found; only those are set aside (`failed_events`, with the reason).

The decisions themselves are pure functions (identity.graph, consent, flows, membership); this
module only moves data between them and the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from segcrit.clock import Clock
from segcrit.config import AudienceSyncFlow, Config, audience_names
from segcrit.consent import consent_in_message
from segcrit.domain import WAITING_PLACES, Identifier, InboxEvent
from segcrit.enrichment.schedule import LookupMarks
from segcrit.errors import StoreError
from segcrit.flows.audience_sync import accepts_source, membership_changes, new_audience_allowance, utc_day
from segcrit.identity.graph import TOMBSTONE_KINDS, EventIdentifiers, extract_identifiers, plan_resolution
from segcrit.identity.normalize import email_hashes, normalize_email, pseudonymous_id
from segcrit.membership import desired_targets
from segcrit.metrics import Metrics
from segcrit.processing.commerce import CommerceStep
from segcrit.processing.profile_flows import ProfileFlowsStep
from segcrit.sources.validate import in_time_range
from segcrit.store.base import ChunkTx, ProcessingStore, ProcessingTx

log = logging.getLogger("segcrit.processing.engine")

CHUNK_EVENTS = 500
# `counters` name prefix of the audience messages ignored per source (audience_sync `sources`).
IGNORED_AUDIENCE_COUNTER = "audience_messages_ignored:"
ERASURE_SCAN_PAGE = 1_000  # waiting events read per page when erasing a deleted person's
ERASURES_PER_SCAN = 1_000  # deleted identifiers looked for in one scan of the waiting events


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing one event did (for preview and counters)."""

    profile_id: int | None
    skipped: str | None = None
    targets_changed: int = 0
    memberships: tuple[tuple[str, bool], ...] = ()
    criteo_events: tuple[dict[str, Any], ...] = ()  # Events API events queued
    notes: tuple[str, ...] = ()  # what the mapping adjusted (a price read from text, no currency...)
    products_changed: int = 0
    # The source of an audience message that no audience_sync flow accepts from it (else None).
    ignored_audience_source: str | None = None


@dataclass(slots=True)
class Counts:
    """What a drain did, for the metrics (picklable: the processor child sends it to its parent)."""

    processed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    adjusted: dict[str, int] = field(default_factory=dict)
    ignored_audience_sources: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> Counts:
        counts = cls(len(outcomes))
        for outcome in outcomes:
            if outcome.skipped:
                counts.skipped[outcome.skipped] = counts.skipped.get(outcome.skipped, 0) + 1
            for note in outcome.notes:
                counts.adjusted[note] = counts.adjusted.get(note, 0) + 1
            if outcome.ignored_audience_source is not None:
                source = outcome.ignored_audience_source
                counts.ignored_audience_sources[source] = counts.ignored_audience_sources.get(source, 0) + 1
        return counts

    def record(self, metrics: Metrics) -> None:
        metrics.events_processed.inc(self.processed)
        for reason, n in self.skipped.items():
            metrics.events_skipped.labels(reason).inc(n)
        for note, n in self.adjusted.items():
            metrics.events_adjusted.labels(note).inc(n)
        for source, n in self.ignored_audience_sources.items():
            metrics.audience_messages_ignored.labels(source).inc(n)


def event_time(message: Mapping[str, Any], fallback: float) -> float:
    """The event time ingest stored; `fallback` (the receive time) for anything else, so that no
    stored message, however it got there, makes date arithmetic fail later."""
    meta = message.get("_segcrit")
    ts = meta.get("ts") if isinstance(meta, dict) else None
    return float(ts) if in_time_range(ts) else fallback


def person_keys(identifier: str) -> list[tuple[str, str]]:
    """The identifiers a person given as userId, anonymousId or email is stored under (`forget`,
    the admin's profile lookup): the email normalised and hashed, as ingest does."""
    keys = [("user_id", identifier), ("anonymous_id", identifier)]
    email = normalize_email(identifier)
    if email:
        keys.append(("email", email_hashes(email)[0]))
        # An email used as userId/anonymousId is stored in its pseudonymous form.
        keys += [("user_id", pseudonymous_id(email)), ("anonymous_id", pseudonymous_id(email))]
    return keys


class Processor:
    def __init__(self, store: ProcessingStore, config: Config, clock: Clock, metrics: Metrics) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self._audience_flows = config.flows_of(AudienceSyncFlow)
        # Audiences the config names never count against max_new_audiences_per_day.
        self._named_audiences = audience_names(config)
        self._new_audience_allowance = new_audience_allowance(self._audience_flows)
        self.commerce = CommerceStep(config)
        self.profile_flows = ProfileFlowsStep(config)
        self.lookups = LookupMarks(config)
        self._extracted: dict[int, EventIdentifiers] = {}  # the identifiers of the chunk being applied
        # Where the counts of each drain go: this process's metrics, or (the processor child of
        # segcrit.processing.child) the parent's, through a pipe.
        self.report: Callable[[Counts], None] = lambda counts: counts.record(self.metrics)

    def drain_once(self, limit: int = CHUNK_EVENTS) -> int:
        """Process up to `limit` waiting events; returns how many.

        Without ingest traffic, the chunk is one transaction; when the store asks for an early
        commit, the events done so far commit and the rest of the `limit` follows in new chunks.

        Raises StoreUnavailable when the store cannot write: what had not committed stays in the
        inbox for the next call, and nothing is set aside.
        """
        now = self.clock.now()
        outcomes: list[Outcome] = []
        while len(outcomes) < limit:
            wanted = limit - len(outcomes)
            applied, claimed = self._apply_chunk(wanted, now)
            outcomes += applied
            if claimed < wanted and len(applied) == claimed:
                break  # the inbox held no more
        self.report(Counts.of(outcomes))
        return len(outcomes)

    def _apply_chunk(self, limit: int, now: float) -> tuple[list[Outcome], int]:
        """Claim up to `limit` events and apply them in one unit of work, stopping early when the
        store asks; when it fails because of an event, find the events at fault. Returns the
        outcomes and how many events were claimed."""
        events: Sequence[InboxEvent] = ()
        try:
            with self.store.claim_chunk(limit) as chunk:
                events = chunk.events
                return self._apply(chunk, events, now, give_way=True), len(events)
        except StoreError:
            raise  # the store's fault, not the events': retried as they are
        except Exception as error:
            if not events:
                raise  # nothing was claimed: not an event's fault either
            # One bad event must not block the queue: find the events that fail on their own.
            log.warning("chunk failed, looking for the events at fault", extra={"error": _reason(error)})
            return self._isolate(list(events), error, now), len(events)

    def _apply(self, chunk: ChunkTx, events: Sequence[InboxEvent], now: float, *, give_way: bool) -> list[Outcome]:
        """Process events in the chunk's transaction, stopping early when the store asks (unless
        `give_way` is off: then all of them), and mark those done."""
        outcomes: list[Outcome] = []
        # Read once, for the store to lock them all before the events are applied, and for `process`.
        self._extracted = {event.seq: extract_identifiers(event.message) for event in events}
        try:
            chunk.hold_identifiers(carried_identifiers(self._extracted.values()))
            for event in events:
                outcomes.append(self.process(chunk, event, now))
                if give_way and chunk.should_commit_early():
                    break
        finally:
            self._extracted = {}
        chunk.done(events[: len(outcomes)])
        return outcomes

    def _isolate(self, events: list[InboxEvent], error: Exception, now: float) -> list[Outcome]:
        """Process `events`, whose transaction failed with `error`, by halves, recursively, and set
        aside the events that fail on their own: a poison event among n good ones costs about
        2·log2(n) transactions, not n. Each half is claimed again (another process may have taken
        some of them meanwhile: those are its own)."""
        if len(events) == 1:
            return self._set_aside(events[0], error, now)
        middle = len(events) // 2
        outcomes: list[Outcome] = []
        for half in (events[:middle], events[middle:]):
            try:
                with self.store.claim_chunk(len(half), only=[e.seq for e in half]) as chunk:
                    outcomes += self._apply(chunk, chunk.events, now, give_way=False)
            except StoreError:
                raise
            except Exception as half_error:
                outcomes += self._isolate(half, half_error, now)
        return outcomes

    def _set_aside(self, event: InboxEvent, error: Exception, now: float) -> list[Outcome]:
        with self.store.claim_chunk(1, only=[event.seq]) as chunk:
            for claimed in chunk.events:
                log.error(
                    "event set aside",
                    extra={"seq": claimed.seq, "source": claimed.source, "error": _reason(error)},
                    exc_info=error,
                )
                chunk.set_aside(claimed, _reason(error), now)
            return [Outcome(None, skipped="failed") for _ in chunk.events]

    def drain(self, max_rounds: int = 1_000_000) -> int:
        total = 0
        for _ in range(max_rounds):
            n = self.drain_once()
            total += n
            if n == 0:
                break
        return total

    # ------------------------------------------------------------------ one event

    def process(self, tx: ProcessingTx, event: InboxEvent, now: float) -> Outcome:
        message = event.message
        ts = event_time(message, event.received_at)
        if message.get("type") == "delete":
            return self._delete(tx, message, ts, now)
        ids = self._extracted.pop(event.seq, None) or extract_identifiers(message)
        if ids.alias_previous:
            # previousId is a known userId, or else the anonymous id the person had before.
            previous = ("user_id", ids.alias_previous)
            kind = "user_id" if tx.find_profiles([previous]) else "anonymous_id"
            ids.identifiers.append(Identifier(kind, ids.alias_previous))
        keys = ids.pairs()
        if not keys:
            return Outcome(None, skipped="no_identifier")
        if tx.tombstoned_since([k for k in keys if k[0] in TOMBSTONE_KINDS], ts):
            return Outcome(None, skipped="deleted")

        owners = tx.find_profiles(keys)
        owner_ids = set(owners.values())
        # Counts matter only to a merge or an attachment; a returning visitor needs neither.
        settled = len(owner_ids) == 1 and len(owners) == len(keys)
        counts = {} if settled else {pid: tx.identifier_counts(pid) for pid in owner_ids}
        resolution = plan_resolution(ids.identifiers, owners, counts, self.config.identity.max_per_profile)
        profile_id = resolution.primary if resolution.primary is not None else tx.create_profile(now)
        changed = resolution.primary is None
        for other in resolution.merge:
            tx.merge_profiles(profile_id, other)
            changed = True
        for ident in resolution.attach:
            tx.attach_identifier(profile_id, ident, ts)
            changed = True
        for madid, tracking in ids.ad_tracking.items():
            if ("madid", madid) in owners:  # a new one was attached with this setting already
                changed |= tx.set_identifier_active("madid", madid, tracking, ts)
        self.lookups.mark(tx, profile_id, resolution, now)  # enrichment: new profile or new key

        consent = consent_in_message(message, self.config.consent.category)
        if consent is not None:
            changed |= tx.set_consent(profile_id, consent, ts)

        memberships, synced, ignored_source = self._sync_audiences(tx, event, profile_id, ts, now)
        changed |= synced
        step = self.profile_flows.apply(tx, message, profile_id, ts, now)
        changed |= step.changed
        memberships += step.memberships
        tx.touch_profile(profile_id, ts)

        # A brand-new profile that joined no audience has nothing for Criteo yet.
        trivial = resolution.primary is None and not memberships and not resolution.merge
        targets_changed = self.refresh_targets(tx, profile_id, now) if changed and not trivial else 0
        commerce = self.commerce.apply(tx, message, profile_id, ts, now) if self.commerce.active else None
        if commerce is None:
            return Outcome(profile_id, None, targets_changed, tuple(memberships), (), (), 0, ignored_source)
        return Outcome(
            profile_id,
            commerce.skipped[0] if commerce.skipped and not commerce.queued else None,
            targets_changed,
            tuple(memberships),
            tuple(commerce.queued),
            tuple(commerce.notes),
            commerce.products_changed,
            ignored_source,
        )

    def _sync_audiences(
        self, tx: ProcessingTx, event: InboxEvent, profile_id: int, ts: float, now: float
    ) -> tuple[list[tuple[str, bool]], bool, str | None]:
        """audience_sync: apply the message's membership changes through every flow that accepts its
        source. Returns the memberships, whether any changed, and the source when the message was
        an audience message that no flow accepted from there (then counted as ignored)."""
        memberships: list[tuple[str, bool]] = []
        changed = refused = False
        for flow in self._audience_flows:
            changes = membership_changes(event.message, flow)
            if changes and not accepts_source(flow, event.source):
                refused = True
                continue
            for change in changes:
                self._ensure_audience(tx, change.audience, flow, now)
                memberships.append((change.audience, change.member))
                changed |= tx.set_membership(profile_id, change.audience, change.member, ts)
        if not refused or memberships:
            return memberships, changed, None
        tx.add_to_counter(f"{IGNORED_AUDIENCE_COUNTER}{event.source}")
        return memberships, changed, event.source

    def _ensure_audience(self, tx: ProcessingTx, audience: str, flow: AudienceSyncFlow, now: float) -> None:
        """Record the audience; one that only traffic names uses the day's new-audience allowance."""
        configured = self.config.audiences.get(audience)
        auto_create = configured.auto_create if configured is not None else flow.auto_create
        if audience in self._named_audiences:
            tx.ensure_audience(audience, auto_create)
        else:
            tx.ensure_new_audience(audience, auto_create, now, utc_day(now), self._new_audience_allowance)

    def refresh_targets(self, tx: ProcessingTx, profile_id: int, now: float) -> int:
        """Recompute what Criteo should hold for the profile; returns the changes made."""
        profile = tx.load_profile(profile_id)
        if profile is None:
            return 0
        held_back = self.profile_flows.held_back(tx, profile, now)
        desired = desired_targets(profile, self.config.identity, self.config.consent, held_back)
        return tx.set_targets(profile_id, desired, now)

    # ------------------------------------------------------------------ deletion

    def _delete(self, tx: ProcessingTx, message: Mapping[str, Any], ts: float, now: float) -> Outcome:
        keys = [k for k in extract_identifiers(message).pairs() if k[0] in TOMBSTONE_KINDS]
        if not keys:
            return Outcome(None, skipped="no_identifier")
        for profile_id in set(tx.find_profiles(keys).values()):
            tx.erase_profile(profile_id, ts, set(TOMBSTONE_KINDS))
        for kind, value in keys:
            tx.add_tombstone(kind, value, ts)
        return Outcome(None)

    def forget(self, identifier: str) -> int:
        """Erase everyone known by this userId, anonymousId or email, their events still waiting
        in the inbox or set aside included; returns profiles erased."""
        keys = person_keys(identifier)
        now = self.clock.now()
        with self.store.transaction() as tx:
            tx.hold_identifiers(keys)
            profiles = set(tx.find_profiles(keys).values())
            for profile_id in profiles:
                tx.erase_profile(profile_id, now, set(TOMBSTONE_KINDS))
            for kind, value in keys:
                tx.add_tombstone(kind, value, now)
        self.erase_waiting_events()
        return len(profiles)

    def erase_waiting_events(self) -> int:
        """Erase the events of deleted people that still wait in the inbox or set aside (SPEC §8);
        returns how many. An event goes when it carries a deleted identifier and is not newer
        than the deletion, the rule processing applies (a newer one starts a fresh profile).

        The deletions to look for are queued with their tombstones (the `delete` message, `forget`);
        housekeeping drains them, `forget` at once. Each page of waiting events is read, and
        its matches deleted, in a transaction of its own: deletions are rare, the inbox may be long.
        """
        erased = 0
        while erasures := self.store.pending_erasures(ERASURES_PER_SCAN):
            for place in WAITING_PLACES:
                after = 0
                while page := self.store.waiting_events(place, after, ERASURE_SCAN_PAGE):
                    doomed = [event.seq for event in page if _deleted(event, erasures)]
                    if doomed:
                        self.store.delete_waiting_events(place, doomed)
                        erased += len(doomed)
                    after = page[-1].seq
            self.store.erasures_done(erasures)
        return erased


def carried_identifiers(extracted: Iterable[EventIdentifiers]) -> list[tuple[str, str]]:
    """Every (kind, value) processing events with these identifiers may look up or attach (an
    alias's previousId as either kind), for the store to lock before they are applied."""
    keys: list[tuple[str, str]] = []
    for ids in extracted:
        keys += ids.pairs()
        if ids.alias_previous:
            keys += [("user_id", ids.alias_previous), ("anonymous_id", ids.alias_previous)]
    return keys


def _deleted(event: InboxEvent, erasures: Mapping[tuple[str, str], float]) -> bool:
    """True when the event carries an identifier deleted at or after the event's time."""
    ids = extract_identifiers(event.message)
    keys = [(i.kind, i.value) for i in ids.identifiers if i.kind in TOMBSTONE_KINDS]
    if ids.alias_previous:  # a userId or an anonymousId: either deletion covers it
        keys += [("user_id", ids.alias_previous), ("anonymous_id", ids.alias_previous)]
    ts = event_time(event.message, event.received_at)
    return any(erasures.get(key, float("-inf")) >= ts for key in keys)


def _reason(error: BaseException) -> str:
    return f"{error.__class__.__name__}: {error}"
