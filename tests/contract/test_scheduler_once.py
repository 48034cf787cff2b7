"""Scheduled jobs run once across processes (SPEC §7): a job due at T runs once in total, whichever
processes tick at T and however their ticks interleave, and once after the process holding its
lease was killed (when the lease expires).

The Schedulers here are real (segcrit.scheduler) with one counting job in place of the configured
ones; each stands for a process (a holder of its own, on its own store object for PostgreSQL).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.contract.conftest import T0
from tests.contract.test_concurrency import Database, together
from tests.helpers import make_config
from tests.postgres import fresh_schema

from segcrit.clock import FakeClock
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.scheduler import LEASE_SECS, Job, Scheduler
from segcrit.store.base import Store

EVERY_SECS = 600.0


class Runs:
    """How often the probe job ran, whoever ran it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by: list[str] = []

    def job(self, holder: str) -> Job:
        def run(now: float) -> str:
            with self.lock:
                self.by.append(holder)
            return "probed"

        return Job("probe", EVERY_SECS, run)


def scheduler(store: Store, holder: str, runs: Runs, tmp_path: Path, clock: FakeClock) -> Scheduler:
    """A process's scheduler; `clock` is every process's (a job's next run is counted from it)."""
    config = make_config(str(tmp_path / "unused.db"))
    made = Scheduler(store, config, Processor(store, config, clock, Metrics()), clock, holder=holder)
    made.jobs = [runs.job(holder)]
    made.start(T0)
    return made


class ReadsLate:
    """The store as process B sees it when process A runs the whole job between B's read of the
    job's schedule and B's attempt at the lease: the first `job()` read returns what it read
    before A ran."""

    def __init__(self, store: Store, before_lease: Any) -> None:
        self._store = store
        self._before_lease = before_lease
        self._done = False

    def job(self, name: str) -> Any:
        record = self._store.job(name)
        if not self._done:
            self._done = True
            self._before_lease()  # A runs the job now; B goes on with the stale record
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_job_another_process_ran_meanwhile_is_not_run_again(store: Store, tmp_path: Path) -> None:
    runs, clock = Runs(), FakeClock(T0)
    a = scheduler(store, "host-a:1", runs, tmp_path, clock)
    late = ReadsLate(store, a.run_due)
    b = scheduler(late, "host-b:2", runs, tmp_path, clock)  # type: ignore[arg-type]

    clock.advance(1)
    assert b.run_due() == []
    assert runs.by == ["host-a:1"]
    clock.advance(1)
    assert a.run_due() == [] and b.run_due() == []

    clock.advance(EVERY_SECS)
    assert b.run_due() == ["probe"]  # next time round, whoever ticks first
    assert a.run_due() == []
    assert runs.by == ["host-a:1", "host-b:2"]


@pytest.fixture
def database() -> Iterator[Database]:
    with fresh_schema() as url:
        db = Database(url)
        try:
            yield db
        finally:
            db.close()


def test_a_due_job_runs_once_when_three_processes_tick_at_once(database: Database, tmp_path: Path) -> None:
    runs, clock = Runs(), FakeClock(T0)
    schedulers = [scheduler(database.open(), f"host-{n}:1", runs, tmp_path, clock) for n in range(3)]

    def ticks(s: Scheduler) -> list[str]:
        ran: list[str] = []
        for _ in range(20):
            ran += s.run_due()
        return ran

    results = together(*(lambda s=s: ticks(s) for s in schedulers))
    assert sum(len(r) for r in results) == 1  # type: ignore[arg-type]
    assert len(runs.by) == 1


def test_a_job_whose_holder_was_killed_runs_once_when_its_lease_expires(database: Database, tmp_path: Path) -> None:
    """The holder took the lease and died mid-run (it never records the run nor releases)."""
    runs, clock = Runs(), FakeClock(T0)
    dead = database.open()
    assert dead.try_lease("job:probe", "host-dead:9", T0, LEASE_SECS)
    schedulers = [scheduler(database.open(), f"host-{n}:1", runs, tmp_path, clock) for n in range(3)]

    clock.advance(LEASE_SECS - 1)
    before = together(*(lambda s=s: s.run_due() for s in schedulers))
    assert before == [[], [], []] and runs.by == []

    clock.advance(2)
    after = together(*(lambda s=s: s.run_due() for s in schedulers))
    assert sorted(len(r) for r in after) == [0, 0, 1]  # type: ignore[arg-type]
    clock.advance(1)
    again = together(*(lambda s=s: s.run_due() for s in schedulers))
    assert again == [[], [], []]
    assert len(runs.by) == 1
