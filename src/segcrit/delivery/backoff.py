"""The retry schedule: exponential backoff with full jitter, honouring Criteo's `retry_at`.

Whether to retry is decided elsewhere (segcrit.criteo.errors.classify); this module only says
*when*. Defaults are 1 s doubling up to 5 min (SPEC §7), taken from `delivery.backoff_*_secs`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from segcrit.config import DeliveryConfig
from segcrit.criteo.errors import RetryableError

DEFAULT_INITIAL_SECS = 1.0
DEFAULT_MAX_SECS = 300.0
# 2**64 s is far past any cap; bounding the exponent keeps the float arithmetic finite.
_MAX_EXPONENT = 64

_default_rng = random.Random()


def full_jitter(
    attempt: int,
    initial_secs: float = DEFAULT_INITIAL_SECS,
    max_secs: float = DEFAULT_MAX_SECS,
    rng: random.Random | None = None,
) -> float:
    """A delay drawn uniformly from [0, min(max_secs, initial_secs * 2**attempt)].

    `attempt` counts failures so far, from 0. Full jitter (AWS architecture blog) spreads the
    retries of many deliveries that failed together, so they do not hit Criteo in one burst.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    cap = min(max_secs, initial_secs * 2.0 ** min(attempt, _MAX_EXPONENT))
    return (rng or _default_rng).uniform(0.0, cap)


def retry_delay(
    error: BaseException,
    attempt: int,
    now: float,
    *,
    initial_secs: float = DEFAULT_INITIAL_SECS,
    max_secs: float = DEFAULT_MAX_SECS,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt `attempt + 1` after `error`.

    Not before the error's `retry_at` (Criteo's `x-ratelimit-reset`), and not before the jittered
    backoff either: repeated 429s mean someone else is spending the budget, so keep backing off.
    A `retry_at` further away than `max_secs` is capped there (a skewed clock must not stall
    delivery).
    """
    delay = full_jitter(attempt, initial_secs, max_secs, rng)
    retry_at = error.retry_at if isinstance(error, RetryableError) else None
    if retry_at is not None:
        delay = max(delay, min(retry_at - now, max_secs))
    return delay


@dataclass(frozen=True)
class Backoff:
    """The schedule from config, bundled so a worker passes one object around."""

    initial_secs: float = DEFAULT_INITIAL_SECS
    max_secs: float = DEFAULT_MAX_SECS
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_config(cls, config: DeliveryConfig, rng: random.Random | None = None) -> Backoff:
        return cls(config.backoff_initial_secs, config.backoff_max_secs, rng or random.Random())

    def delay(self, error: BaseException, attempt: int, now: float) -> float:
        return retry_delay(error, attempt, now, initial_secs=self.initial_secs, max_secs=self.max_secs, rng=self.rng)
