"""Keeping every call to Criteo's API under `criteo.rate_limit_per_minute` in any 60 s window.

`RateLimiter` is the seam: `acquire()` before each call (token calls included), `observe()` after
it with what Criteo said. The Criteo clients (segcrit.criteo) use it; the store hands out the
limiter of each budget (`segcrit.store.base.RateBudget.rate_limiter`): `SlidingWindowLimiter` keeps
the window in memory, which is the whole budget when one process owns the store (SQLite); a
PostgreSQL store shares one budget between processes through the database with the same two
methods (both async so that one may do I/O).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol

from segcrit.clock import Clock
from segcrit.criteo.constants import (
    HEADER_RATELIMIT_REMAINING,
    HEADER_RATELIMIT_RESET,
    RATE_LIMIT_WINDOW_SECS,
)

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# The call budgets (`RateBudget.rate_limiter` names): every call to criteo.api_url (token calls
# included) shares one; the Events API host, another.
CRITEO_API_BUDGET: Final = "criteo_api"
EVENTS_API_BUDGET: Final = "events_api"

# Our stamp is taken before the request leaves; Criteo counts on arrival. Calls spaced exactly
# one window apart could arrive closer together, so we keep a little more than a window.
DEFAULT_MARGIN_SECS = 1.0
# A 429 without `x-ratelimit-reset`: hold 1 s, 2 s, 4 s ... never longer than one window.
HOLD_INITIAL_SECS = 1.0
# `x-ratelimit-reset` is documented as unix seconds; a small number can only be a delta.
_EPOCH_THRESHOLD = 1_000_000_000.0


class RateLimiter(Protocol):
    async def acquire(self) -> None:
        """Return when one more call may be made; counts that call."""
        ...

    async def observe(self, status: int, headers: Mapping[str, str], now: float) -> None:
        """Learn from a response: its status and `x-ratelimit-*` headers, received at `now`."""
        ...


def reset_at(headers: Mapping[str, str], now: float) -> float | None:
    """`x-ratelimit-reset` as unix seconds, or None when absent or unreadable."""
    raw = headers.get(HEADER_RATELIMIT_RESET)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value if value >= _EPOCH_THRESHOLD else now + value


def remaining_calls(headers: Mapping[str, str]) -> int | None:
    raw = headers.get(HEADER_RATELIMIT_REMAINING)
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


class CallWindow:
    """The calls made in the last window and the hold Criteo asked for: the state of one budget.

    Every limiter of one budget in a process shares it (`SqliteStore.rate_limiter` hands out one
    per budget name), so two workers on one SQLite store spend one budget, not one each. Limiters
    may live on different threads and event loops: the state has a thread lock of its own.
    """

    def __init__(self, span_secs: float) -> None:
        self.span = span_secs
        self.calls: collections.deque[float] = collections.deque()
        self.hold_until = 0.0
        self.unexplained_429s = 0
        self.lock = threading.Lock()

    def take(self, now: float, limit: int) -> float:
        """Count one call at `now` and return `now`, or return when one may be made."""
        with self.lock:
            while self.calls and self.calls[0] <= now - self.span:
                self.calls.popleft()
            free_at = self.hold_until
            if len(self.calls) >= limit:
                # The oldest call in the window must leave it first (strictly: a call exactly
                # `span` later would share a closed window with it).
                free_at = max(free_at, self.calls[len(self.calls) - limit] + self.span)
            if free_at <= now:
                self.calls.append(now)
                return now
            return free_at

    def hold(self, until: float) -> None:
        with self.lock:
            self.hold_until = max(self.hold_until, until)


class SlidingWindowLimiter:
    """At most `limit_per_minute` calls in any window of `window_secs` (+ margin), per process.

    Waiters queue on one lock, so they are served in arrival order. `sleep` is injected: tests
    pass one that advances a FakeClock instead of waiting. `window`: the state of a budget shared
    with other limiters (by default one of its own).
    """

    def __init__(
        self,
        limit_per_minute: int,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        *,
        window_secs: float = RATE_LIMIT_WINDOW_SECS,
        margin_secs: float = DEFAULT_MARGIN_SECS,
        window: CallWindow | None = None,
    ) -> None:
        if limit_per_minute < 1:
            raise ValueError("limit_per_minute must be >= 1")
        self.limit = limit_per_minute
        self._clock = clock
        self._sleep = sleep
        self._window_secs = window_secs
        self._window = window if window is not None else CallWindow(window_secs + margin_secs)
        self._lock = asyncio.Lock()

    @property
    def hold_until(self) -> float:
        """Unix seconds before which no call is made (0 when not holding)."""
        return self._window.hold_until

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock.now()
                wait_until = self._window.take(now, self.limit)
                if wait_until <= now:
                    return
                await self._sleep(wait_until - now)

    async def observe(self, status: int, headers: Mapping[str, str], now: float) -> None:
        window = self._window
        reset = reset_at(headers, now)
        if reset is not None:
            # Never trust a reset further than one window away (clock skew, a bad header).
            reset = min(reset, now + self._window_secs)
        if status == 429:
            if reset is not None and reset > now:
                window.hold(reset)
            else:
                hold = min(HOLD_INITIAL_SECS * 2.0**window.unexplained_429s, self._window_secs)
                window.unexplained_429s = min(window.unexplained_429s + 1, 16)
                window.hold(now + hold)
            log.warning("criteo rate limited", extra={"hold_until": window.hold_until})
            return
        window.unexplained_429s = 0
        if remaining_calls(headers) == 0 and reset is not None and reset > now:
            window.hold(reset)
