"""The contact-list delivery worker: pending changes -> batched PATCH calls -> acknowledgements.

One `drain_once()` reads the due changes (desired != acknowledged), groups them per
(audience, operation, identifier type), and sends each group whose oldest change has waited
`delivery.max_wait_secs` (or that is full) in calls of at most 50,000 identifiers. What Criteo
acknowledges is committed; what fails is retried with backoff, re-resolved, or dead-lettered as
`segcrit.criteo.errors` decides.

Lost answers (SPEC §1, Uncertain calls): before each call its changes are claimed in the store
(committed), which makes what Criteo holds of them unknown until Criteo answers. An answer settles
them (acknowledged, or back to what they were when Criteo refused the call); a lost one (a timeout,
a reset, a 5xx) or a crash leaves them unknown, and an unknown change stays pending whatever it
desires: its next call sends the operation the desired state asks for *then*. So a person who left
while their add went unanswered gets a remove, and resending is harmless (add is a set union,
remove a set difference).

Finding or creating a segment (a new audience, a lookalike) happens under a lease on its name in
the store (`segment:<audience>`, `lookalike:<name>`): with several processes, one at a time
searches and creates, the others leave that audience's changes for a later round (SegmentBusy, not
an error: nothing is deferred) and then read the id the holder saved. The lease lasts one call's
claim and is renewed just before the create; losing it then stops the create.

Held audiences (over audience_sync's max_new_audiences_per_day, SPEC §4.1) get no segment and none
of their changes is read; each round first admits those the config names and, on a new UTC day,
as many of the longest held as that day's allowance leaves room for.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from segcrit.config import AudienceSyncFlow, audience_names
from segcrit.criteo.client import CriteoClient
from segcrit.criteo.constants import MAX_IDENTIFIERS_PER_CALL
from segcrit.criteo.errors import (
    AudienceInvalidError,
    PermanentError,
    SegmentNameTakenError,
    may_have_applied,
)
from segcrit.delivery.base import Worker, describe
from segcrit.domain import AudienceRecord, PendingChange, TargetKey
from segcrit.errors import CriteoError, UserError
from segcrit.flows.audience_sync import new_audience_allowance, utc_day
from segcrit.store.base import AudienceDeliveryStore

log = logging.getLogger("segcrit.delivery")

# Changes read per round, the oldest first: one call's worth, so memory stays bounded whatever
# the backlog; a group cut off by the scan is then read and sent a call's worth at a time.
SCAN_LIMIT = MAX_IDENTIFIERS_PER_CALL
MAX_CALLS_PER_GROUP_ROUND = 20


class SegmentBusy(Exception):
    """Another process (or worker) is finding or creating this segment now: try in a later round."""


@dataclass(frozen=True, slots=True)
class GroupKey:
    audience: str
    add: bool
    id_type: str

    @property
    def operation(self) -> str:
        return "add" if self.add else "remove"


class DeliveryWorker(Worker[AudienceDeliveryStore, CriteoClient]):
    _re_resolved: set[str]  # audiences whose segment vanished during this round (set by drain_once)
    _admitted_on: int | None = None  # the UTC day held audiences were last admitted for
    _holder: str | None = None

    @property
    def holder(self) -> str:
        """This worker's name on the leases it takes: unique even with two workers in one process."""
        if self._holder is None:
            self._holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return self._holder

    async def drain_once(self, *, force: bool = False, audience: str | None = None) -> int:
        """Send every group that is due (all of them with `force`), of one `audience` if given;
        returns the calls made."""
        now = self.clock.now()
        self._admit_held_audiences(now)
        groups: dict[GroupKey, list[PendingChange]] = defaultdict(list)
        scanned = self.store.due_changes(now, SCAN_LIMIT)
        for change in scanned:
            groups[GroupKey(change.key.audience, change.add, change.key.id_type)].append(change)
        # A cut-off scan may hold only part of a group: refill each group before sending it, so
        # N changes to one (segment, operation, type) still cost ceil(N / 50,000) calls.
        truncated = len(scanned) >= SCAN_LIMIT
        calls = 0
        self._re_resolved = set()
        for key, scanned_changes in groups.items():
            changes = scanned_changes
            if audience is not None and key.audience != audience:
                continue
            if key.audience in self._re_resolved:
                continue  # read before its acks were reset: the next round sends the whole membership
            if not force and not self._due(changes, now):
                continue
            for _ in range(MAX_CALLS_PER_GROUP_ROUND):
                if truncated:
                    changes = self.store.due_changes_of(
                        key.audience, key.add, key.id_type, now, MAX_IDENTIFIERS_PER_CALL
                    )
                if not changes:
                    break
                calls += 1
                if not await self._send(key, changes[:MAX_IDENTIFIERS_PER_CALL]):
                    break  # the rest of this group would meet the same failure
                if not truncated or len(changes) < MAX_IDENTIFIERS_PER_CALL:
                    break
        return calls

    async def create_lookalikes(self) -> int:
        """Create each wanted lookalike segment once, on its seed audience's contact list."""
        created = 0
        for record in self.store.lookalikes_to_create():
            try:
                seed_id = await self.segment_for(record.seed_audience)
                with self._leased(f"lookalike:{record.name}") as renew:
                    if record.name not in {r.name for r in self.store.lookalikes_to_create()}:
                        continue  # created by the lease's previous holder meanwhile
                    segment_id = await self._find_or_create_lookalike(record.name, seed_id, record.target_size, renew)
                    self.store.lookalike_created(record.name, segment_id, self.clock.now())
            except SegmentBusy:
                continue  # another process creates it
            except CriteoError as error:
                log.warning("lookalike not created yet", extra={"lookalike": record.name, "error": str(error)[:200]})
                continue
            log.info("lookalike created", extra={"lookalike": record.name, "segment_id": segment_id})
            created += 1
        return created

    async def _find_or_create_lookalike(
        self, name: str, seed_id: str, target_size: int | None, before_create: Callable[[], object]
    ) -> str:
        # Searched first: an earlier create may have worked though its answer was lost (or another
        # process made it), and Criteo need not refuse a second segment of the same name.
        found = await self.client.find_segment(name, "Lookalike")
        if found is not None:
            return found
        before_create()
        try:
            return await self.client.create_lookalike(name, seed_id, target_size)
        except SegmentNameTakenError:
            # Made between our search and our create: use it, never make a second.
            found = await self.client.find_segment(name, "Lookalike")
            if found is None:
                raise
            return found

    def _due(self, changes: Sequence[PendingChange], now: float) -> bool:
        if len(changes) >= MAX_IDENTIFIERS_PER_CALL:
            return True
        if any(c.attempts for c in changes):
            return True  # a retry is already late
        return now - min(c.since for c in changes) >= self.config.delivery.max_wait_secs

    # ------------------------------------------------------------------ one call

    async def _send(self, key: GroupKey, changes: Sequence[PendingChange]) -> bool:
        keys = [c.key for c in changes]
        try:
            segment_id = await self.segment_for(key.audience)
            # The call carries what it claims: what another call holds, or what changed meanwhile, stays.
            now = self.clock.now()
            keys = self.store.claim_changes(keys, key.add, now, now + self.claim_secs)
            if not keys:
                return True
            claimed = set(keys)
            changes = [c for c in changes if c.key in claimed]
            await self.client.patch_contact_list(segment_id, key.operation, key.id_type, [k.id_value for k in keys])
        except SegmentBusy:
            return False  # another process resolves the segment; its changes wait for a later round
        except AudienceInvalidError as error:
            # Answered: there is no such segment, so the call changed nothing (re-resolving ends its claim).
            await self._re_resolve(key, keys, error)
            return False
        except PermanentError as error:
            self._dead_letter(key, keys, error.status, describe(error), "criteo_rejected")
            return True
        except CriteoError as error:
            self._retry(key, changes, error)
            return False
        except ValueError as error:
            # Refused before sending (a gum identifier without criteo.gum_caller_id): raising would fail
            # every round on the same changes, so they wait in a dead letter for the fix.
            self._dead_letter(key, keys, None, f"not sent: {error}", "criteo_invalid")
            return True
        now = self.clock.now()
        self.store.ack_changes(keys, key.add, now)
        for change in changes:
            self.metrics.delivery_latency.observe(max(0.0, now - change.since))
        return True

    def _admit_held_audiences(self, now: float) -> None:
        """Once per UTC day (and at the first round): deliver held audiences the config names, and
        as many of the others, longest held first, as the day's new-audience allowance admits."""
        day = utc_day(now)
        if self._admitted_on == day:
            return
        if self._admitted_on is None:
            for name in self.store.release_audiences(audience_names(self.config)):
                log.info("held audience admitted: the config names it", extra={"audience": name})
        if self.store.held_audience_count():
            allowance = new_audience_allowance(self.config.flows_of(AudienceSyncFlow))
            for name in self.store.admit_held_audiences(day, allowance):
                log.info("held audience admitted by the day's allowance", extra={"audience": name})
        self._admitted_on = day

    async def segment_for(self, audience: str) -> str:
        record = self.store.audience(audience)
        if record is not None and record.held_since is not None and audience not in audience_names(self.config):
            # Never reached by delivery, which reads no change of a held audience; resync would be.
            raise UserError(
                f"audience {audience!r} is held: it came over max_new_audiences_per_day; list it under "
                "`audiences:` to deliver it, or wait for a later day's allowance"
            )
        configured = self.config.audiences.get(audience)
        if configured is not None and configured.segment_id:
            if record is None or record.segment_id != configured.segment_id:
                self.store.save_audience(AudienceRecord(audience, configured.segment_id, False, False))
            return configured.segment_id
        if record is not None and record.segment_id:
            return record.segment_id
        auto_create = record.auto_create if record is not None else True
        if configured is not None:
            auto_create = configured.auto_create
        # Resolved once by name and kept in the store: no search on the hot path. One process at
        # a time searches and creates (the lease); SegmentBusy tells the others to come back.
        with self._leased(f"segment:{audience}") as renew:
            record = self.store.audience(audience)
            if record is not None and record.segment_id:
                return record.segment_id  # the lease's previous holder resolved it meanwhile
            segment_id = await self.client.find_or_create_segment(audience, auto_create, before_create=renew)
            created = record is not None and record.created_by_us
            self.store.save_audience(AudienceRecord(audience, segment_id, auto_create, created or auto_create))
        log.info("audience resolved", extra={"audience": audience, "segment_id": segment_id})
        return segment_id

    @contextmanager
    def _leased(self, name: str) -> Iterator[Callable[[], None]]:
        """Hold the lease `name` for the block (SegmentBusy when another holds it); the block gets
        a `renew` to call before a create, which raises SegmentBusy when the lease was lost."""
        if not self.store.try_lease(name, self.holder, self.clock.now(), self.claim_secs):
            raise SegmentBusy(name)

        def renew() -> None:
            if not self.store.try_lease(name, self.holder, self.clock.now(), self.claim_secs):
                log.warning("segment lease lost to another process", extra={"lease": name})
                raise SegmentBusy(name)

        try:
            yield renew
        finally:
            self.store.try_lease(name, self.holder, self.clock.now(), 0)  # release

    async def _re_resolve(self, key: GroupKey, sent: Sequence[TargetKey], error: AudienceInvalidError) -> None:
        """The segment is gone: find or recreate it, then resend the whole membership.

        `sent`: the changes of the call Criteo answered with the 404 (still claimed)."""
        audience = key.audience
        configured = self.config.audiences.get(audience)
        now = self.clock.now()
        self._re_resolved.add(audience)
        if configured is not None and configured.segment_id:
            # A segment the user named by id cannot be recreated under that id: that is theirs to fix.
            # One dead letter per (operation, identifier type), as a dead letter records one of each.
            pending: dict[tuple[bool, str], list[TargetKey]] = defaultdict(list)
            pending[(key.add, key.id_type)].extend(sent)
            for change in self.store.due_changes(now, SCAN_LIMIT):
                if change.key.audience == audience:
                    pending[(change.add, change.key.id_type)].append(change.key)
            for (add, _), keys in pending.items():
                self.store.dead_letter(keys, add, error.status, f"audiences.{audience}.segment_id: {error}", now)
                self.metrics.dead_lettered.labels("segment_missing").inc()
            return
        record = self.store.audience(audience)
        auto_create = record.auto_create if record is not None else True
        self.store.save_audience(AudienceRecord(audience, None, auto_create, False))
        self.store.reset_audience_acks(audience, now)
        log.warning("audience segment invalid, re-resolving", extra={"audience": audience})

    def _retry(self, key: GroupKey, changes: Sequence[PendingChange], error: BaseException) -> None:
        now = self.clock.now()
        # Each change has its own window: one that joined a failing batch late is not given up with it.
        expired: list[TargetKey] = []
        retried: list[PendingChange] = []
        for change in changes:
            if self.window_over(change.first_failure_at, now):
                expired.append(change.key)
            else:
                retried.append(change)
        applied = may_have_applied(error)
        if expired:
            status = getattr(error, "status", None)
            self._dead_letter(key, expired, status, f"retry window exhausted: {error}", "retry_window", applied)
        if not retried:
            return
        changes = retried
        attempts = max(c.attempts for c in changes)
        keys = [c.key for c in changes]
        delay = self.backoff.delay(error, attempts, now)
        self.store.defer_changes(keys, now + delay, now, maybe_applied=applied)
        log.info(
            "delivery deferred",
            extra={"audience": key.audience, "delay_secs": round(delay, 2), "maybe_applied": applied},
        )

    def _dead_letter(
        self,
        key: GroupKey,
        keys: Sequence[TargetKey],
        status: int | None,
        error: str,
        reason: str,
        maybe_applied: bool = False,
    ) -> None:
        self.store.dead_letter(keys, key.add, status, error, self.clock.now(), maybe_applied=maybe_applied)
        self.metrics.dead_lettered.labels(reason).inc()
        log.warning("delivery dead-lettered", extra={"audience": key.audience, "status": status})
