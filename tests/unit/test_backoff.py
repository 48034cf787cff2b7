"""The retry schedule: exponential caps, full jitter, Criteo's retry_at honoured."""

from __future__ import annotations

import random

import pytest

from segcrit.config import DeliveryConfig
from segcrit.criteo.errors import PermanentError, RetryableError, TokenRejectedError
from segcrit.delivery.backoff import Backoff, full_jitter, retry_delay


class MaxRandom(random.Random):
    """uniform(a, b) == b: shows the cap of each attempt."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def test_caps_double_from_one_second_to_five_minutes() -> None:
    caps = [full_jitter(attempt, rng=MaxRandom()) for attempt in range(12)]
    assert caps == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_huge_attempt_stays_at_the_cap() -> None:
    assert full_jitter(10_000, rng=MaxRandom()) == 300


def test_custom_initial_and_max() -> None:
    assert full_jitter(0, 0.5, 3.0, MaxRandom()) == 0.5
    assert full_jitter(5, 0.5, 3.0, MaxRandom()) == 3.0


def test_delays_are_spread_over_the_whole_range() -> None:
    rng = random.Random(42)
    delays = [full_jitter(4, rng=rng) for _ in range(2000)]
    assert all(0 <= d <= 16 for d in delays)
    assert min(delays) < 1.0
    assert max(delays) > 15.0
    assert 7.0 < sum(delays) / len(delays) < 9.0  # uniform on [0, 16]


def test_negative_attempt_is_a_bug() -> None:
    with pytest.raises(ValueError):
        full_jitter(-1)


def test_retry_at_is_honoured_when_later_than_the_backoff() -> None:
    error = RetryableError("429", retry_at=1_000.0 + 42, status=429)
    assert retry_delay(error, 0, 1_000.0, rng=MaxRandom()) == 42


def test_backoff_wins_when_later_than_retry_at() -> None:
    error = RetryableError("429", retry_at=1_000.0 + 3, status=429)
    assert retry_delay(error, 6, 1_000.0, rng=MaxRandom()) == 64


def test_retry_at_in_the_past_falls_back_to_backoff() -> None:
    error = RetryableError("429", retry_at=900.0, status=429)
    assert retry_delay(error, 2, 1_000.0, rng=MaxRandom()) == 4
    assert retry_delay(error, 2, 1_000.0, rng=MinRandom()) == 0


def test_retry_at_far_away_is_capped_at_max() -> None:
    error = RetryableError("429", retry_at=1_000.0 + 86_400, status=429)
    assert retry_delay(error, 0, 1_000.0, rng=MinRandom()) == 300


def test_errors_without_retry_at_use_the_backoff() -> None:
    for error in (
        RetryableError("500", status=500),
        TokenRejectedError("401"),
        PermanentError("x", status=400),
    ):
        assert retry_delay(error, 3, 0.0, rng=MaxRandom()) == 8


def test_backoff_from_config() -> None:
    backoff = Backoff.from_config(
        DeliveryConfig(backoff_initial_secs=2, backoff_max_secs=10),  # type: ignore[call-arg]
        rng=MaxRandom(),
    )
    assert [backoff.delay(RetryableError("x"), n, 0.0) for n in range(4)] == [2, 4, 8, 10]
