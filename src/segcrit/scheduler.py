"""The scheduler: jobs that run on time, from the store.

Each job has a row in `jobs` (last run, next run) and a lease of the same name. `run_due(now)`
runs every job whose time has come and whose lease this process gets, so with several processes
on one database only one runs a job, and never twice at once. A job's next run is counted from
when it actually ran: after downtime, a late job runs once at start, not once per missed
interval. Jobs compute their work from the store (expired suppressions, people not seen since a
cutoff, the whole cohort), so a run that was missed loses nothing.

Jobs: `housekeeping` (the dedupe window, `retention:`, erasure of deleted people's waiting
events), `suppression_expiry`, `lifecycle_dormancy:<i>`, `cohort:<audience>` (lookalike_seed;
first at start, then every `every_minutes`). Housekeeping works in small transactions that give
way to ingest (see `segcrit.store.sqlite_retention`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from segcrit.clock import Clock
from segcrit.cohort import Cohort
from segcrit.config import Config, LifecycleFlow, LookalikeSeedFlow, SuppressionFlow
from segcrit.engine import Processor
from segcrit.errors import StoreUnavailable
from segcrit.profile_flows import DAY_SECS, lifecycle_audiences, suppression_key
from segcrit.store.sqlite import SqliteStore

log = logging.getLogger("segcrit.scheduler")

EXPIRY_EVERY_SECS = 60.0
DORMANCY_EVERY_SECS = 3_600.0
HOUSEKEEPING_EVERY_SECS = 600.0
LEASE_SECS = 900.0  # longer than any job; renewed when a job finishes
BATCH = 5_000


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    every_secs: float
    run: Callable[[float], str]


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Scheduler:
    def __init__(
        self, store: SqliteStore, config: Config, processor: Processor, clock: Clock, holder: str | None = None
    ) -> None:
        self.store = store
        self.config = config
        self.processor = processor
        self.clock = clock
        self.holder = holder or default_holder()
        self.jobs = self._jobs()

    # ------------------------------------------------------------------ control

    def start(self, now: float) -> None:
        """Register the jobs; ones never run before are due now (a cohort is computed at start)."""
        for job in self.jobs:
            self.store.schedule_job(job.name, now)

    def run_due(self, now: float | None = None) -> list[str]:
        """Run every due job this process may run; returns the names of those it ran."""
        ran = []
        for job in self.jobs:
            now = self.clock.now() if now is None else now
            record = self.store.job(job.name)
            if record is not None and record.next_run_at > now:
                continue
            if not self.store.try_lease(f"job:{job.name}", self.holder, now, LEASE_SECS):
                continue  # another process runs it
            try:
                result = job.run(now)
            except StoreUnavailable:
                raise  # not the job's fault: it stays due and runs again once the store writes
            except Exception as error:
                log.exception("job failed", extra={"job": job.name})
                result = f"failed: {error.__class__.__name__}"
            finished = self.clock.now()
            self.store.job_ran(job.name, finished, result, finished + job.every_secs)
            self.store.try_lease(f"job:{job.name}", self.holder, finished, 0)  # release
            ran.append(job.name)
        return ran

    def _jobs(self) -> list[Job]:
        jobs = [Job("housekeeping", HOUSEKEEPING_EVERY_SECS, self.housekeeping)]
        if any(isinstance(f, SuppressionFlow) for f in self.config.flows):
            jobs.append(Job("suppression_expiry", EXPIRY_EVERY_SECS, self.expire_suppressions))
        for index, flow in enumerate(self.config.flows):
            if isinstance(flow, LifecycleFlow) and flow.dormant_after_days and flow.dormant:
                every = min(DORMANCY_EVERY_SECS, flow.dormant_after_days * DAY_SECS / 4)
                jobs.append(Job(f"lifecycle_dormancy:{index}", every, self._dormancy(flow)))
            if isinstance(flow, LookalikeSeedFlow):
                jobs.append(Job(f"cohort:{flow.audience}", flow.every_minutes * 60, self._cohort(flow)))
        return jobs

    # ------------------------------------------------------------------ jobs

    def housekeeping(self, now: float) -> str:
        """Apply the dedupe window and `retention:`, erase deleted people's waiting events."""
        retention = self.config.retention
        dropped = {
            "dedupe_entries": self.store.prune_seen(now - self.config.ingest.dedupe_hours * 3600),
            "failed_events": self.store.prune_failed_events(now - retention.failed_events_days * DAY_SECS),
            "dead_letters": self.store.drop_dead_letters(now - retention.dead_letters_days * DAY_SECS),
            "anonymous_profiles": self.store.erase_anonymous_profiles(
                now - retention.anonymous_profiles_days * DAY_SECS, now
            ),
        }
        for what, count in dropped.items():
            self.processor.metrics.retention_dropped.labels(what).inc(count)
        erased = self.processor.erase_waiting_events()
        counts = ", ".join(f"{what} {count}" for what, count in dropped.items())
        return f"dropped {counts}; erased {erased} waiting event(s) of deleted people"

    def expire_suppressions(self, now: float) -> str:
        flows = {suppression_key(f): f for f in self.config.flows if isinstance(f, SuppressionFlow)}
        ended = 0
        while True:
            expired = self.store.expired_suppressions(now, BATCH)
            if not expired:
                break
            with self.store.transaction() as tx:
                for profile_id, key, until in expired:
                    tx.end_suppression(profile_id, key)
                    flow = flows.get(key)
                    # Another suppression that is still on may hold the person in the same add_to.
                    still_held = {flows[k].add_to for k in tx.active_suppressions(profile_id, now) if k in flows}
                    if flow is not None and flow.add_to and flow.add_to not in still_held:
                        tx.set_membership(profile_id, flow.add_to, False, until)
                    self.processor.refresh_targets(tx, profile_id, now)
            ended += len(expired)
        return f"{ended} suppression(s) ended"

    def _dormancy(self, flow: LifecycleFlow) -> Callable[[float], str]:
        assert flow.dormant_after_days is not None and flow.dormant is not None
        dormant, after = flow.dormant, flow.dormant_after_days * DAY_SECS
        stages = [a for a in lifecycle_audiences(flow) if a != dormant]

        def run(now: float) -> str:
            moved = 0
            while True:
                candidates = self.store.dormant_candidates(stages, now - after, BATCH)
                if not candidates:
                    break
                with self.store.transaction() as tx:
                    for profile_id, last_seen in candidates:
                        # The move happens when they became dormant, so a later stage event wins.
                        at = last_seen + after
                        tx.ensure_audience(dormant, True)
                        for audience in lifecycle_audiences(flow):
                            tx.set_membership(profile_id, audience, audience == dormant, at)
                        self.processor.refresh_targets(tx, profile_id, now)
                moved += len(candidates)
                if len(candidates) < BATCH:
                    break
            return f"{moved} moved to {dormant}"

        return run

    def _cohort(self, flow: LookalikeSeedFlow) -> Callable[[float], str]:
        cohort = Cohort(flow.when)

        def run(now: float) -> str:
            size = added = removed = 0
            for page in self.store.facts_pages():
                changes = []
                for facts in page:
                    member = cohort.matches(facts, now)
                    size += member
                    if member != (flow.audience in facts.audiences):
                        changes.append((facts.profile_id, member))
                if not changes:
                    continue
                with self.store.transaction() as tx:
                    tx.ensure_audience(flow.audience, True)
                    for profile_id, member in changes:
                        tx.set_membership(profile_id, flow.audience, member, now)
                        self.processor.refresh_targets(tx, profile_id, now)
                added += sum(1 for _, m in changes if m)
                removed += sum(1 for _, m in changes if not m)
            if flow.lookalike is not None:
                self.store.want_lookalike(flow.lookalike.name, flow.audience, flow.lookalike.target_size)
            return f"cohort {size} (+{added} -{removed})"

        return run
