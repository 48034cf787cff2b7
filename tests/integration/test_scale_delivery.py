"""Many new audiences at once, delivered by two workers on one store (SPEC §7, several processes):
each audience's segment is searched for and created by one worker at a time (a lease on its name),
and the two spend one Criteo budget, so work that needs several minutes of budget meets no 429 of
our own making.

The emulator's rate limit is the config's: any call over the budget would be answered 429. The two
workers drain concurrently on one event loop (their Criteo calls are real HTTP on loopback, so
they interleave at every call); on SQLite they share the store object (one process owns the file),
on PostgreSQL each has a store of its own, as two `segcrit serve` processes do.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from segcrit.clock import FakeClock
from segcrit.emulator.state import EmulatorState
from segcrit.runtime import Workers, build_workers
from tests.flow_harness import DELIVERY_STEP_SECS, Process, Processes
from tests.helpers import advancing, audience_event, email_of, make_config, members, shas

RATE_LIMIT = 8  # calls a minute for us (the emulator allows one more)
AUDIENCES = [f"new_audience_{n}" for n in range(6)]  # each: a search, a create and a PATCH


@pytest.fixture
def processes(emulator_clock: FakeClock, harness_store: str | None) -> Iterator[Processes]:
    started = Processes(emulator_clock, harness_store)
    yield started
    started.close()


def second_workers(processes: Processes, first: Process, harness_store: str | None) -> Workers:
    """The other worker: another process on PostgreSQL; on SQLite, a second worker of the process
    that owns the file (the only way two workers meet on one SQLite store)."""
    if harness_store is not None:
        return processes.start(first.config, holder="process-b").workers
    workers = build_workers(
        first.store, first.config, first.clock, first.metrics, sleep=advancing(first.clock), rng=random.Random(1)
    )
    processes.running.append(Process(**{**first.__dict__, "workers": workers}))
    return workers


def test_two_workers_create_each_new_segment_once_without_a_429(
    processes: Processes, emulator_state: EmulatorState, emulator_url: str, tmp_path: Path, harness_store: str | None
) -> None:
    # One call of slack at Criteo's end: on PostgreSQL the budget counts on the database's clock,
    # which each process knows to within CLOCK_TOLERANCE_SECS; a call at a window's edge may land
    # in the emulator's previous minute (seen once on a loaded machine). Without the shared
    # budget the two workers would spend twice the limit, and far more than one call is refused.
    emulator_state.rate_limit_per_minute = RATE_LIMIT + 1
    config = make_config(str(tmp_path / "s.db"), emulator_url, max_wait=0)
    config = config.model_copy(
        update={"criteo": config.criteo.model_copy(update={"rate_limit_per_minute": RATE_LIMIT})}
    )
    a = processes.start(config, holder="process-a")
    b = second_workers(processes, a, harness_store)
    for n, name in enumerate(AUDIENCES):
        a.send(*(audience_event(f"u{n}-{i}", name, True, a.now(), email=email_of(f"u{n}-{i}")) for i in range(2)))

    async def both() -> int:
        made = await asyncio.gather(a.workers.drain_once(), b.drain_once())
        return sum(made)

    started = a.now()
    for _ in range(40):
        a.clock.advance(DELIVERY_STEP_SECS)
        a.loop.run_until_complete(both())
        if a.store.pending_count() == 0:
            break
    assert a.store.pending_count() == 0

    statuses = Counter(call.status for call in emulator_state.calls())
    assert statuses[429] == 0, statuses
    created = Counter(call.request["data"][0]["attributes"]["name"] for call in emulator_state.calls("create"))
    assert created == Counter(AUDIENCES)  # each segment created once, by one of the two
    assert Counter(s.name for s in emulator_state.segments()) == Counter(AUDIENCES)
    for n, name in enumerate(AUDIENCES):
        assert members(emulator_state, name) == shas(f"u{n}-0", f"u{n}-1")
    # The work needed more than a minute of budget: the workers waited for it rather than be refused.
    assert len(emulator_state.calls()) > RATE_LIMIT
    assert a.now() - started > 60
