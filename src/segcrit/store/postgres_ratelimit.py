"""PostgreSQL store, the Criteo call budget every process shares (RateBudget.rate_limiter).

`SharedRateLimiter` is `segcrit.ratelimit.SlidingWindowLimiter` with its window in the database:
each `acquire()` calls `segcrit_take_call` (migrations/postgresql/0001_initial.sql), which, under
the row lock of the budget, counts the calls of every process per second of the database's clock
and takes one only while fewer than the limit fall in the seconds overlapping the last window
(60 s plus a margin): so no 60-second window, wherever it starts, holds more calls than the budget
across all processes. When the budget is spent it answers how long to wait; the limiter sleeps
that long (with the caller's `sleep`: a test's FakeClock) and asks again.

`observe()` records a hold in the same row: `x-ratelimit-reset` after a 429 (or with no calls
left), which every process honours before its next call; a 429 without the header holds 1 s,
2 s, 4 s... as on SQLite. Waiters of one process queue on an asyncio lock (arrival order), so a
process asks the database once per call, not once per waiter. The database is reached from a
worker thread: the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from segcrit.clock import Clock
from segcrit.criteo.constants import RATE_LIMIT_WINDOW_SECS
from segcrit.ratelimit import DEFAULT_MARGIN_SECS, HOLD_INITIAL_SECS, Sleep, remaining_calls, reset_at
from segcrit.store.postgres_base import PgBase

log = logging.getLogger("segcrit.ratelimit")


class SharedRateLimiter:
    def __init__(
        self,
        store: PgBase,
        name: str,
        limit_per_minute: int,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        *,
        window_secs: float = RATE_LIMIT_WINDOW_SECS,
        margin_secs: float = DEFAULT_MARGIN_SECS,
    ) -> None:
        if limit_per_minute < 1:
            raise ValueError("limit_per_minute must be >= 1")
        self.limit = limit_per_minute
        self.name = name
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._window_secs = window_secs
        self._span = window_secs + margin_secs
        self._unexplained_429s = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                wait = await asyncio.to_thread(self._take, self._clock.now())
                if wait <= 0:
                    return
                await self._sleep(wait)

    def _take(self, now: float) -> float:
        """One call taken (0), or the seconds to wait before asking again."""
        with self._store._write() as conn:
            row = conn.execute(
                "SELECT segcrit_take_call(%s, %s, %s, %s)",
                (self.name, self._store.db_time(now), self.limit, self._span),
            ).fetchone()
        return float(row[0]) if row is not None else 0.0

    async def observe(self, status: int, headers: Mapping[str, str], now: float) -> None:
        reset = reset_at(headers, now)
        if reset is not None:
            reset = min(reset, now + self._window_secs)  # never trust a reset further than a window away
        if status == 429:
            if reset is not None and reset > now:
                hold = reset - now
            else:
                hold = min(HOLD_INITIAL_SECS * 2.0**self._unexplained_429s, self._window_secs)
                self._unexplained_429s = min(self._unexplained_429s + 1, 16)
            await asyncio.to_thread(self._hold, now, hold)
            log.warning("criteo rate limited", extra={"budget": self.name, "hold_secs": round(hold, 3)})
            return
        self._unexplained_429s = 0
        if remaining_calls(headers) == 0 and reset is not None and reset > now:
            await asyncio.to_thread(self._hold, now, reset - now)

    def _hold(self, now: float, secs: float) -> None:
        """No process calls before `now + secs` (on the database's clock)."""
        with self._store._write() as conn:
            conn.execute(
                "INSERT INTO rate_budgets (name, hold_until) VALUES (%(name)s, %(until)s) ON CONFLICT (name) "
                "DO UPDATE SET hold_until = greatest(rate_budgets.hold_until, excluded.hold_until)",
                {"name": self.name, "until": self._store.db_time(now) + secs},
            )
