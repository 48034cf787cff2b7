"""Criteo's rate limit as the emulator enforces it: a sliding 60-second window per application.

Only admitted calls enter the window: a call refused with 429 is "not executed" (Criteo's words),
so a client that retries too eagerly is refused but not punished further.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from segcrit.criteo.constants import (
    HEADER_RATELIMIT_LIMIT,
    HEADER_RATELIMIT_REMAINING,
    HEADER_RATELIMIT_RESET,
    RATE_LIMIT_WINDOW_SECS,
)


@dataclass(frozen=True)
class RateDecision:
    """Whether a call may run, and the three `x-ratelimit-*` header values that go with it."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # unix seconds when the oldest call in the window leaves it (a slot frees up)

    def headers(self) -> dict[str, str]:
        return {
            HEADER_RATELIMIT_LIMIT: str(self.limit),
            HEADER_RATELIMIT_REMAINING: str(self.remaining),
            HEADER_RATELIMIT_RESET: str(self.reset_at),
        }


class SlidingWindowLimiter:
    """At most `limit` admitted calls per key in any `window_secs`. Guarded by the caller's lock."""

    def __init__(self, limit: int, window_secs: float = RATE_LIMIT_WINDOW_SECS) -> None:
        self.limit = limit
        self.window_secs = window_secs
        self._calls: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float) -> RateDecision:
        """Count a call for `key` if the window has room."""
        window = self._window(key, now)
        allowed = len(window) < self.limit
        if allowed:
            window.append(now)
        return self._decision(window, now, allowed)

    def peek(self, key: str | None, now: float) -> RateDecision:
        """The headers for a call that is not counted (unknown caller, control routes)."""
        window = self._window(key, now) if key is not None else deque()
        return self._decision(window, now, allowed=True)

    def reset(self) -> None:
        self._calls.clear()

    def _window(self, key: str, now: float) -> deque[float]:
        window = self._calls.setdefault(key, deque())
        while window and window[0] <= now - self.window_secs:
            window.popleft()
        return window

    def _decision(self, window: deque[float], now: float, allowed: bool) -> RateDecision:
        oldest = window[0] if window else now
        return RateDecision(
            allowed=allowed,
            limit=self.limit,
            remaining=max(self.limit - len(window), 0),
            reset_at=math.ceil(oldest + self.window_secs) if window else math.ceil(now),
        )
