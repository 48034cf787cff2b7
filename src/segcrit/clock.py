"""Time as a dependency: domain code and workers take a Clock, tests pass a FakeClock."""

from __future__ import annotations

import time
from typing import Protocol

DAY_SECS = 86_400.0


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock, used for timestamps and schedules)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back (used for timeouts)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds
