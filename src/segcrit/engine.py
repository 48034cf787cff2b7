"""The processor: accepted events -> identity -> consent -> flows -> desired targets.

It takes events from the inbox in chunks; a chunk commits in one transaction, or in several when
it gives way to ingest (see `drain_once`), each holding the effects of its events and the deletion
of their inbox rows. A crash replays what had not committed, and replay is harmless because every
decision is "latest timestamp wins" on desired state.
The decisions themselves are pure functions (identity.graph, consent, flows, membership); this
module only moves data between them and the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from segcrit.clock import Clock
from segcrit.commerce import CommerceStep
from segcrit.config import AudienceSyncFlow, Config
from segcrit.consent import consent_in_message
from segcrit.flows.audience_sync import membership_changes
from segcrit.identity.graph import TOMBSTONE_KINDS, extract_identifiers, plan_resolution
from segcrit.identity.normalize import email_hashes, normalize_email, pseudonymous_id
from segcrit.membership import desired_targets
from segcrit.metrics import Metrics
from segcrit.profile_flows import ProfileFlowsStep
from segcrit.store.base import Identifier, InboxEvent
from segcrit.store.sqlite import SqliteStore, SqliteTx

log = logging.getLogger("segcrit.engine")

CHUNK_EVENTS = 500
# A transaction that ingest waits for commits and gives way once it has run this long (less
# would spend the processor's time on commits, more would delay acks).
GIVE_WAY_AFTER_SECS = 0.005


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


def event_time(message: Mapping[str, Any], fallback: float) -> float:
    meta = message.get("_segcrit")
    if isinstance(meta, dict) and isinstance(meta.get("ts"), int | float):
        return float(meta["ts"])
    return fallback


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
    def __init__(self, store: SqliteStore, config: Config, clock: Clock, metrics: Metrics) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self._audience_flows = config.flows_of(AudienceSyncFlow)
        self.commerce = CommerceStep(config)
        self.profile_flows = ProfileFlowsStep(config)

    def drain_once(self, limit: int = CHUNK_EVENTS) -> int:
        """Process up to `limit` waiting events; returns how many.

        Ingest goes first: a transaction starts when no ingest request waits for its commit (or
        after `give_way_to_ingest`'s timeout), and when one starts waiting, the events done so far
        commit with the deletion of their inbox rows and the rest of the chunk follows in a new
        transaction. Without ingest traffic, the chunk is one transaction.
        """
        self.store.use_large_cache()
        events = self.store.claim_events(limit)
        if not events:
            return 0
        now = self.clock.now()
        outcomes: list[Outcome] = []
        while len(outcomes) < len(events):
            self.store.give_way_to_ingest()
            rest = events[len(outcomes) :]
            try:
                outcomes += self._process_until_ingest_waits(rest, now)
            except Exception:
                # One bad event must not block the queue: redo the rest one event at a time and
                # set aside only the events that fail on their own.
                log.exception("chunk failed, retrying event by event")
                outcomes += [self._process_alone(event, now) for event in rest]
        self.metrics.events_processed.inc(len(events))
        for outcome in outcomes:
            if outcome.skipped:
                self.metrics.events_skipped.labels(outcome.skipped).inc()
            for note in outcome.notes:
                self.metrics.events_adjusted.labels(note).inc()
        return len(events)

    def _process_until_ingest_waits(self, events: list[InboxEvent], now: float) -> list[Outcome]:
        """Process events in one transaction, stopping early when an ingest commit waits."""
        outcomes: list[Outcome] = []
        with self.store.transaction() as tx:
            started = time.monotonic()
            for event in events:
                outcomes.append(self.process(tx, event, now))
                if self.store.ingest_waiting() and time.monotonic() - started >= GIVE_WAY_AFTER_SECS:
                    break
            tx.flush_seen()
            tx.delete_events([e.seq for e in events[: len(outcomes)]])
        return outcomes

    def _process_alone(self, event: InboxEvent, now: float) -> Outcome:
        try:
            with self.store.transaction() as tx:
                outcome = self.process(tx, event, now)
                tx.flush_seen()
                tx.delete_events([event.seq])
            return outcome
        except Exception as error:
            log.exception("event failed, set aside", extra={"seq": event.seq, "source": event.source})
            with self.store.transaction() as tx:
                tx.quarantine_event(event, f"{error.__class__.__name__}: {error}", now)
            return Outcome(None, skipped="failed")

    def drain(self, max_rounds: int = 1_000_000) -> int:
        total = 0
        for _ in range(max_rounds):
            n = self.drain_once()
            total += n
            if n == 0:
                break
        return total

    # ------------------------------------------------------------------ one event

    def process(self, tx: SqliteTx, event: InboxEvent, now: float) -> Outcome:
        message = event.message
        ts = event_time(message, event.received_at)
        if message.get("type") == "delete":
            return self._delete(tx, message, ts, now)
        ids = extract_identifiers(message)
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

        consent = consent_in_message(message, self.config.consent.category)
        if consent is not None:
            changed |= tx.set_consent(profile_id, consent, ts)

        memberships: list[tuple[str, bool]] = []
        for flow in self._audience_flows:
            for change in membership_changes(message, flow):
                tx.ensure_audience(change.audience, self._auto_create(change.audience, flow))
                memberships.append((change.audience, change.member))
                changed |= tx.set_membership(profile_id, change.audience, change.member, ts)
        step = self.profile_flows.apply(tx, message, profile_id, ts, now)
        changed |= step.changed
        memberships += step.memberships
        tx.touch_profile(profile_id, ts)

        # A brand-new profile that joined no audience has nothing for Criteo yet.
        trivial = resolution.primary is None and not memberships and not resolution.merge
        targets_changed = self.refresh_targets(tx, profile_id, now) if changed and not trivial else 0
        commerce = self.commerce.apply(tx, message, profile_id, ts, now) if self.commerce.active else None
        if commerce is None:
            return Outcome(profile_id, None, targets_changed, tuple(memberships))
        return Outcome(
            profile_id,
            commerce.skipped[0] if commerce.skipped and not commerce.queued else None,
            targets_changed,
            tuple(memberships),
            tuple(commerce.queued),
            tuple(commerce.notes),
            commerce.products_changed,
        )

    def _auto_create(self, audience: str, flow: AudienceSyncFlow) -> bool:
        configured = self.config.audiences.get(audience)
        return configured.auto_create if configured is not None else flow.auto_create

    def refresh_targets(self, tx: SqliteTx, profile_id: int, now: float) -> int:
        """Recompute what Criteo should hold for the profile; returns the changes made."""
        profile = tx.load_profile(profile_id)
        if profile is None:
            return 0
        held_back = self.profile_flows.held_back(tx, profile, now)
        desired = desired_targets(profile, self.config.identity, self.config.consent, held_back)
        return tx.set_targets(profile_id, desired, now)

    # ------------------------------------------------------------------ deletion

    def _delete(self, tx: SqliteTx, message: Mapping[str, Any], ts: float, now: float) -> Outcome:
        keys = [k for k in extract_identifiers(message).pairs() if k[0] in TOMBSTONE_KINDS]
        if not keys:
            return Outcome(None, skipped="no_identifier")
        for profile_id in set(tx.find_profiles(keys).values()):
            tx.erase_profile(profile_id, ts, set(TOMBSTONE_KINDS))
        for kind, value in keys:
            tx.add_tombstone(kind, value, ts)
        return Outcome(None)

    def forget(self, identifier: str) -> int:
        """Erase everyone known by this userId, anonymousId or email; returns profiles erased."""
        keys = person_keys(identifier)
        now = self.clock.now()
        with self.store.transaction() as tx:
            profiles = set(tx.find_profiles(keys).values())
            for profile_id in profiles:
                tx.erase_profile(profile_id, now, set(TOMBSTONE_KINDS))
            for kind, value in keys:
                tx.add_tombstone(kind, value, now)
        return len(profiles)
