"""The scheduler: jobs that run on time, from the store.

Each job has a row in `jobs` (last run, next run) and a lease of the same name. `run_due(now)`
runs every job whose time has come and whose lease this process gets, so with several processes
on one database only one runs a job, and never twice at once. A job's next run is counted from
when it actually ran: after downtime, a late job runs once at start, not once per missed
interval. Jobs compute their work from the store (expired suppressions, people not seen since a
cutoff, the whole cohort), so a run that was missed loses nothing.

Jobs: `housekeeping` (the dedupe window, `retention:`, erasure of deleted people's waiting
events; the store works in small transactions that never hold up ingest), and the scheduled part
of the flows that have one, which lives with its flow: `suppression_expiry`
(segcrit.flows.suppression), `lifecycle_dormancy:<i>` (segcrit.flows.lifecycle),
`cohort:<audience>` (segcrit.flows.lookalike_seed; first at start, then every `every_minutes`).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from segcrit.clock import DAY_SECS, Clock
from segcrit.config import Config, LifecycleFlow, LookalikeSeedFlow, SuppressionFlow
from segcrit.errors import StoreUnavailable
from segcrit.flows.lifecycle import dormancy_every_secs, move_dormant
from segcrit.flows.lookalike_seed import refresh_cohort
from segcrit.flows.suppression import EXPIRY_EVERY_SECS, expire_suppressions
from segcrit.processing.engine import Processor
from segcrit.store.base import ScheduledStore

log = logging.getLogger("segcrit.scheduler")

HOUSEKEEPING_EVERY_SECS = 600.0
# A job's lease lasts this long and is renewed every RENEW_EVERY_SECS while the job runs: a long
# job (a cohort over millions of profiles) keeps it, and when the process running a job dies,
# another takes the job over within LEASE_SECS.
LEASE_SECS = 120.0
RENEW_EVERY_SECS = LEASE_SECS / 3


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    every_secs: float
    run: Callable[[float], str]


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Scheduler:
    def __init__(
        self,
        store: ScheduledStore,
        config: Config,
        processor: Processor,
        clock: Clock,
        holder: str | None = None,
        *,
        renew_every_secs: float = RENEW_EVERY_SECS,
    ) -> None:
        self.store = store
        self.config = config
        self.processor = processor
        self.clock = clock
        self.holder = holder or default_holder()
        self.renew_every_secs = renew_every_secs
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
            lease = f"job:{job.name}"
            if not self.store.try_lease(lease, self.holder, now, LEASE_SECS):
                continue  # another process runs it
            # Read again under the lease: another process may have run the job (and released the
            # lease) between the read above and our taking it; without this it would run twice.
            record = self.store.job(job.name)
            if record is not None and record.next_run_at > now:
                self.store.try_lease(lease, self.holder, now, 0)  # release
                continue
            try:
                with self._keeping(lease):
                    result = job.run(now)
            except StoreUnavailable:
                raise  # not the job's fault: it stays due and runs again once the store writes
            except Exception as error:
                log.exception("job failed", extra={"job": job.name})
                result = f"failed: {error.__class__.__name__}"
            finished = self.clock.now()
            self.store.job_ran(job.name, finished, result, finished + job.every_secs)
            self.store.try_lease(lease, self.holder, finished, 0)  # release
            log.info("job ran", extra={"job": job.name, "holder": self.holder, "result": result[:200]})
            ran.append(job.name)
        return ran

    @contextmanager
    def _keeping(self, lease: str) -> Iterator[None]:
        """Renew the lease every `renew_every_secs` while the block runs (on a thread: the job
        runs on this one)."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.renew_every_secs):
                try:
                    if not self.store.try_lease(lease, self.holder, self.clock.now(), LEASE_SECS):
                        log.warning("job lease lost to another process", extra={"lease": lease})
                except StoreUnavailable:
                    pass  # logged by the store; renewed at the next turn if it writes again
                except Exception:
                    log.exception("job lease renewal failed", extra={"lease": lease})

        keeper = threading.Thread(target=renew, name="segcrit-lease-keeper", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join()

    def _jobs(self) -> list[Job]:
        """Housekeeping, and the scheduled part of each flow that has one (segcrit.flows)."""
        store, refresh = self.store, self.processor.refresh_targets
        jobs = [Job("housekeeping", HOUSEKEEPING_EVERY_SECS, self.housekeeping)]
        suppressions = self.config.flows_of(SuppressionFlow)
        if suppressions:
            expire = functools.partial(expire_suppressions, store, suppressions, refresh)
            jobs.append(Job("suppression_expiry", EXPIRY_EVERY_SECS, expire))
        for index, flow in enumerate(self.config.flows):
            if isinstance(flow, LifecycleFlow) and flow.dormant_after_days and flow.dormant:
                dormancy = functools.partial(move_dormant, store, flow, refresh)
                jobs.append(Job(f"lifecycle_dormancy:{index}", dormancy_every_secs(flow), dormancy))
            if isinstance(flow, LookalikeSeedFlow):
                cohort = functools.partial(refresh_cohort, store, flow, refresh)
                jobs.append(Job(f"cohort:{flow.audience}", flow.every_minutes * 60, cohort))
        return jobs

    # ------------------------------------------------------------------ housekeeping

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
