"""Pacing requests so that the *server* never counts more than `limit` of them in any window.

A server counts a request when it arrives, somewhere between our sending it and our getting its
answer. Stamping requests as they leave (delivery.ratelimit) is exact only when they arrive at
once; with many in flight, some late, a server can see more than the limit in one of its windows.
So here a request holds its slot from when it is sent until `window_secs` after its answer: every
request that arrives in one server window then held its slot at one same instant (the window's
end), and at most `limit` slots are ever held. The price is a little throughput: a slot is busy
for one window plus the request's latency.

`sleep` is injected like the delivery limiters', so tests run it on a FakeClock.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from segcrit.clock import Clock
from segcrit.delivery.ratelimit import Sleep


class ArrivalWindowLimiter:
    """At most `limit` requests per `window_secs`, as the server that receives them counts."""

    def __init__(self, limit: int, clock: Clock, sleep: Sleep = asyncio.sleep, *, window_secs: float = 1.0) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._clock = clock
        self._sleep = sleep
        self._window = window_secs
        self._in_flight = 0
        self._frees: list[float] = []  # when each answered request's slot frees (a heap)
        self._queue = asyncio.Lock()  # waiters are served in arrival order
        self._released = asyncio.Event()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for one request: `async with limiter.slot(): await send()`."""
        await self._acquire()
        try:
            yield
        finally:
            self._in_flight -= 1
            heapq.heappush(self._frees, self._clock.now() + self._window)
            self._released.set()

    async def _acquire(self) -> None:
        async with self._queue:
            while True:
                now = self._clock.now()
                while self._frees and self._frees[0] <= now:
                    heapq.heappop(self._frees)
                if self._in_flight + len(self._frees) < self.limit:
                    self._in_flight += 1
                    return
                if self._frees:
                    await self._sleep(self._frees[0] - now)
                else:  # every slot is held by a request still in flight
                    self._released.clear()
                    await self._released.wait()
