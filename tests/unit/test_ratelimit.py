"""The sliding-window limiter on a fake clock: a fake sleep advances time instead of waiting."""

from __future__ import annotations

import asyncio

import pytest

from segcrit.clock import FakeClock
from segcrit.ratelimit import SlidingWindowLimiter, remaining_calls, reset_at

START = 1_800_000_000.0


def make(limit: int = 250, **kwargs: float) -> tuple[SlidingWindowLimiter, FakeClock, list[float]]:
    clock = FakeClock(START)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        assert seconds > 0
        slept.append(seconds)
        clock.advance(seconds)

    return SlidingWindowLimiter(limit, clock, sleep, **kwargs), clock, slept


def max_in_any_window(stamps: list[float], window: float = 60.0) -> int:
    """The most calls inside any closed interval [t, t + window]."""
    best = 0
    start = 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_600_acquires_never_exceed_250_in_any_60s_window() -> None:
    limiter, clock, _ = make(250)
    stamps: list[float] = []

    async def run() -> None:
        for i in range(600):
            await limiter.acquire()
            stamps.append(clock.now())
            if i % 7 == 0:
                clock.advance(0.05)  # some work between calls

    asyncio.run(run())
    assert len(stamps) == 600
    assert max_in_any_window(stamps) == 250
    # ... and it does not wait more than it must: 600 calls fit in three windows.
    assert stamps[-1] - stamps[0] < 3 * 61.1


def test_concurrent_acquirers_share_the_window() -> None:
    limiter, clock, _ = make(10)
    stamps: list[float] = []

    async def caller() -> None:
        for _ in range(5):
            await limiter.acquire()
            stamps.append(clock.now())

    async def run() -> None:
        await asyncio.gather(*(caller() for _ in range(8)))

    asyncio.run(run())
    stamps.sort()
    assert len(stamps) == 40
    assert max_in_any_window(stamps) == 10


def test_the_helper_counts_windows_correctly() -> None:
    # So that the test above could fail: 3 calls within 60 s are seen as 3.
    assert max_in_any_window([0.0, 30.0, 60.0, 120.1]) == 3
    assert max_in_any_window([0.0, 60.1, 120.2]) == 1


def test_remaining_zero_with_reset_holds_until_reset() -> None:
    limiter, clock, slept = make(250)

    async def run() -> None:
        await limiter.acquire()
        await limiter.observe(
            200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(START + 20))}, clock.now()
        )
        await limiter.acquire()

    asyncio.run(run())
    assert clock.now() == START + 20
    assert slept == [20]


def test_remaining_above_zero_does_not_hold() -> None:
    limiter, clock, slept = make(250)

    async def run() -> None:
        await limiter.observe(
            200, {"x-ratelimit-remaining": "3", "x-ratelimit-reset": str(int(START + 20))}, clock.now()
        )
        await limiter.acquire()

    asyncio.run(run())
    assert slept == []


def test_429_with_reset_holds_until_reset() -> None:
    limiter, clock, slept = make(250)

    async def run() -> None:
        await limiter.observe(429, {"x-ratelimit-reset": str(int(START + 45))}, clock.now())
        await limiter.acquire()

    asyncio.run(run())
    assert clock.now() == START + 45
    assert slept == [45]


def test_429_without_header_backs_off_and_grows() -> None:
    limiter, clock, slept = make(250)

    async def run() -> None:
        for _ in range(8):
            await limiter.observe(429, {}, clock.now())
            await limiter.acquire()

    asyncio.run(run())
    assert slept == [1, 2, 4, 8, 16, 32, 60, 60]  # never longer than one window


def test_a_success_resets_the_429_backoff() -> None:
    limiter, clock, slept = make(250)

    async def run() -> None:
        await limiter.observe(429, {}, clock.now())
        await limiter.acquire()
        await limiter.observe(429, {}, clock.now())
        await limiter.acquire()
        await limiter.observe(200, {}, clock.now())
        await limiter.observe(429, {}, clock.now())
        await limiter.acquire()

    asyncio.run(run())
    assert slept == [1, 2, 1]


def test_reset_far_in_the_future_is_capped_at_one_window() -> None:
    limiter, clock, slept = make(250)

    async def run() -> None:
        await limiter.observe(429, {"x-ratelimit-reset": str(int(START + 7200))}, clock.now())
        await limiter.acquire()

    asyncio.run(run())
    assert slept == [60]


def test_hold_and_window_combine() -> None:
    limiter, clock, _ = make(2)

    async def run() -> None:
        await limiter.acquire()
        await limiter.acquire()
        # The window is full until START + 61; a hold to START + 10 changes nothing.
        await limiter.observe(200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(START + 10)}, START)
        await limiter.acquire()

    asyncio.run(run())
    assert clock.now() == pytest.approx(START + 61)


def test_reset_header_parsing() -> None:
    assert reset_at({"x-ratelimit-reset": "1800000030"}, START) == 1_800_000_030
    assert reset_at({"x-ratelimit-reset": "12"}, START) == START + 12  # a delta, not a timestamp
    assert reset_at({}, START) is None
    assert reset_at({"x-ratelimit-reset": "soon"}, START) is None
    assert reset_at({"x-ratelimit-reset": "nan"}, START) is None
    assert reset_at({"x-ratelimit-reset": "-5"}, START) is None
    assert remaining_calls({"x-ratelimit-remaining": "7"}) == 7
    assert remaining_calls({"x-ratelimit-remaining": "x"}) is None
    assert remaining_calls({}) is None


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        make(0)
