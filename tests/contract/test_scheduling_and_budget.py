"""Leases, scheduled jobs and the Criteo call budget through the store seam (SchedulerStore,
RateBudget): one holder of a lease at a time, a job's schedule kept across restarts, and at most
the budget's calls in any 60 seconds."""

from __future__ import annotations

import asyncio

from tests.contract.conftest import T0
from tests.helpers import advancing

from segcrit.clock import FakeClock
from segcrit.criteo.constants import HEADER_RATELIMIT_RESET
from segcrit.ratelimit import CRITEO_API_BUDGET
from segcrit.store.base import Store

TTL = 900.0


def test_a_lease_has_one_holder_until_it_expires(store: Store) -> None:
    assert store.try_lease("job:cohort", "host-a:1", T0, TTL)
    assert not store.try_lease("job:cohort", "host-b:2", T0 + 1, TTL)
    assert store.try_lease("job:cohort", "host-a:1", T0 + 2, TTL)  # renewed by its holder
    assert not store.try_lease("job:cohort", "host-b:2", T0 + 2 + TTL - 1, TTL)

    assert store.try_lease("job:cohort", "host-b:2", T0 + 2 + TTL, TTL)  # expired: taken over
    assert not store.try_lease("job:cohort", "host-a:1", T0 + 3 + TTL, TTL)


def test_a_released_lease_is_free_at_once_and_leases_are_independent(store: Store) -> None:
    assert store.try_lease("job:housekeeping", "host-a:1", T0, TTL)
    assert store.try_lease("job:suppression_expiry", "host-b:2", T0, TTL)

    assert store.try_lease("job:housekeeping", "host-a:1", T0 + 5, 0)  # released
    assert store.try_lease("job:housekeeping", "host-b:2", T0 + 5, TTL)


def test_a_job_keeps_its_schedule_when_registered_again(store: Store) -> None:
    store.schedule_job("housekeeping", T0)
    store.job_ran("housekeeping", T0 + 10, "dropped nothing", T0 + 610)
    store.schedule_job("housekeeping", T0 + 20)  # a restart registers it again

    job = store.job("housekeeping")
    assert job is not None
    assert (job.last_run_at, job.last_result, job.next_run_at) == (T0 + 10, "dropped nothing", T0 + 610)
    assert store.job("never") is None
    assert [j.name for j in store.jobs()] == ["housekeeping"]


def test_a_rate_budget_spaces_calls_to_its_limit_per_minute(store: Store) -> None:
    clock = FakeClock(T0)
    limiter = store.rate_limiter(CRITEO_API_BUDGET, 3, clock, advancing(clock))

    async def calls(count: int) -> list[float]:
        times = []
        for _ in range(count):
            await limiter.acquire()
            times.append(clock.now())
        return times

    times = asyncio.run(calls(7))

    assert times[:3] == [T0] * 3
    assert all(later - earlier >= 60 for earlier, later in zip(times, times[3:], strict=False))


def test_a_rate_budget_holds_every_call_until_criteo_s_reset(store: Store) -> None:
    clock = FakeClock(T0)
    limiter = store.rate_limiter(CRITEO_API_BUDGET, 100, clock, advancing(clock))

    async def after_a_429() -> float:
        await limiter.acquire()
        await limiter.observe(429, {HEADER_RATELIMIT_RESET: str(T0 + 30)}, T0)
        await limiter.acquire()
        return clock.now()

    assert asyncio.run(after_a_429()) >= T0 + 30


def test_every_limiter_of_one_budget_spends_it(store: Store) -> None:
    """Two delivery workers of one process (or a resync beside the delivery thread) each get a
    limiter of the `criteo_api` budget: together they keep to its limit, not twice it."""
    clock = FakeClock(T0)
    one, two = (store.rate_limiter(CRITEO_API_BUDGET, 3, clock, advancing(clock)) for _ in range(2))

    async def calls() -> list[float]:
        times = []
        for _ in range(4):
            for limiter in (one, two):
                await limiter.acquire()
                times.append(clock.now())
        return times

    times = asyncio.run(calls())

    assert times[:3] == [T0] * 3
    assert all(later - earlier >= 60 for earlier, later in zip(times, times[3:], strict=False))
