"""The running service's moving parts: the processor thread, the delivery thread, housekeeping.

Ingest runs on the HTTP server's event loop; processing and delivery each run on a thread of
their own (delivery with its own event loop), so a slow Criteo call or a large processing chunk
never delays an ingest acknowledgement. `segcrit serve` on SQLite runs processing in a child
process instead (`processor_child`, segcrit.processing.child): a core of its own. Tests do not
start these threads: they build a Processor and a DeliveryWorker and step them with `drain_once()`.

A process runs only the threads of its roles (`segcrit serve --roles`, SPEC §2): `process` the
processor (and the enrichment lookups, which exist to feed it), `deliver` the delivery thread
(Criteo calls, admin-requested resyncs), `schedule` the scheduler; `ingest` is the HTTP ingest
routes (segcrit.app). With several processes on one PostgreSQL store any mix of roles works:
the work is claimed in the store, whoever runs it.

While the store cannot write (StoreUnavailable: disk full, locked), the processor retries with
a growing pause (`segcrit.processing.child.process_loop`), and with an empty inbox probes the
store, so that /readyz turns ready again as soon as a write succeeds. The store logs the episode;
the loops here stay quiet about it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import httpx

from segcrit.backfill import run_requested_resyncs
from segcrit.clock import Clock, SystemClock
from segcrit.config import Config
from segcrit.criteo.catalog_client import CatalogClient
from segcrit.criteo.client import CriteoClient
from segcrit.criteo.events_client import EventsClient
from segcrit.delivery.backoff import Backoff
from segcrit.delivery.commerce_workers import CatalogWorker, EventsWorker
from segcrit.delivery.worker import DeliveryWorker
from segcrit.enrichment.worker import build_enrichment
from segcrit.errors import StoreUnavailable
from segcrit.metrics import Metrics
from segcrit.processing.child import ProcessorChild, process_loop
from segcrit.processing.engine import Processor
from segcrit.ratelimit import CRITEO_API_BUDGET, EVENTS_API_BUDGET, SlidingWindowLimiter
from segcrit.scheduler import Scheduler
from segcrit.store.base import DeliveryStore, RateBudget, Store
from segcrit.store.sqlite import SqliteStore

log = logging.getLogger("segcrit.runtime")

ROLES: tuple[str, ...] = ("ingest", "process", "deliver", "schedule")

SCHEDULER_TICK_SECS = 1.0
SHUTDOWN_FLUSH_SECS = 5.0
ENRICHMENT_IDLE_SECS = 0.5  # nothing due: how long before looking again (answers batch up meanwhile)


def build_criteo_client(
    config: Config,
    clock: Clock,
    metrics: Metrics,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    *,
    budget: RateBudget | None = None,
) -> tuple[CriteoClient, httpx.AsyncClient]:
    """The audience client. Its calls spend the store's `criteo_api` budget, which every process
    on the store shares; without a store (`segcrit check --online`, a handful of calls), a
    budget of its own."""
    http = httpx.AsyncClient(timeout=config.criteo.timeout_secs, transport=transport, follow_redirects=False)
    limit = config.criteo.rate_limit_per_minute
    limiter = (
        budget.rate_limiter(CRITEO_API_BUDGET, limit, clock, sleep)
        if budget is not None
        else SlidingWindowLimiter(limit, clock, sleep)
    )
    return CriteoClient(config.criteo, http, limiter, clock, metrics), http


@dataclass
class Workers:
    """Everything that calls Criteo, driven by one thread: one Marketing API rate limiter."""

    contacts: DeliveryWorker
    events: EventsWorker
    catalog: CatalogWorker
    http: list[httpx.AsyncClient]

    async def drain_once(self, *, force: bool = False) -> int:
        calls = await self.contacts.create_lookalikes()
        calls += await self.contacts.drain_once(force=force)
        calls += await self.events.drain_once(force=force)
        calls += await self.catalog.drain_once(force=force)
        return calls

    async def aclose(self) -> None:
        for http in self.http:
            await http.aclose()


def build_workers(
    store: DeliveryStore,
    config: Config,
    clock: Clock,
    metrics: Metrics,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> Workers:
    """The delivery workers with their Criteo clients (call inside the event loop that runs them);
    their calls spend the store's budgets."""
    client, http = build_criteo_client(config, clock, metrics, transport, sleep, budget=store)
    events_http = httpx.AsyncClient(timeout=config.criteo.timeout_secs, transport=transport, follow_redirects=False)
    events_limit = config.criteo.events_rate_limit_per_minute
    events_limiter = store.rate_limiter(EVENTS_API_BUDGET, events_limit, clock, sleep)
    events_client = EventsClient(config.criteo.events_url, events_http, events_limiter, clock, metrics)
    backoff = Backoff.from_config(config.delivery, rng or random.Random())
    return Workers(
        DeliveryWorker(store, config, client, clock, metrics, backoff),
        EventsWorker(store, config, events_client, clock, metrics, backoff),
        CatalogWorker(store, config, CatalogClient(client.api), clock, metrics, backoff),
        [http, events_http],
    )


@dataclass
class _Thread:
    thread: threading.Thread
    stop: threading.Event


class Runtime:
    """Starts and stops the background workers of `segcrit serve`."""

    def __init__(
        self,
        store: Store,
        config: Config,
        metrics: Metrics,
        clock: Clock | None = None,
        *,
        roles: Collection[str] = ROLES,
        processor_child: bool = False,
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.roles = frozenset(roles)
        self._started = False
        self.processor = Processor(store, config, self.clock, metrics)
        self.scheduler = Scheduler(store, config, self.processor, self.clock)
        self._wake = threading.Event()
        self._threads: list[_Thread] = []
        self.failed: str | None = None
        # On a SQLite file, `segcrit serve` processes in a child process (segcrit.processing.child).
        self._child: ProcessorChild | None = None
        if processor_child and isinstance(store, SqliteStore) and store.path != ":memory:" and "process" in self.roles:
            self._child = ProcessorChild(store, config, metrics)
        metrics.store_write_failing.set_function(lambda: store.write_failure() is not None)

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Start the threads of this process's roles (none for an ingest-only process)."""
        if "process" in self.roles:
            if self._child is not None:
                self._child.start()
            else:
                self._spawn("segcrit-processor", self._process_loop)
            if self.config.enrichment:
                self._spawn("segcrit-enrichment", self._enrichment_thread)
        if "deliver" in self.roles:
            self._spawn("segcrit-delivery", self._delivery_thread)
        if "schedule" in self.roles:
            self._spawn("segcrit-scheduler", self._scheduler_loop)
        self._started = True

    def stop(self, timeout: float = SHUTDOWN_FLUSH_SECS + 1) -> None:
        """Ask every worker to stop and wait for them, `timeout` seconds in all (not per thread):
        `segcrit serve` must exit within 10 s of SIGTERM. A worker still busy then (a cohort
        mid-run, a slow Criteo call) is abandoned; everything it did not commit is redone later."""
        for t in self._threads:
            t.stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        if self._child is not None:
            self._child.stop(timeout)
        for t in self._threads:
            t.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self._started = False

    def wake(self) -> None:
        """Ingest calls this after a commit so the processor starts at once."""
        self._wake.set()
        if self._child is not None:
            self._child.wake()

    def alive(self) -> bool:
        child_alive = self._child is None or self._child.alive()
        threads_alive = self._started and all(t.thread.is_alive() for t in self._threads)
        return child_alive and threads_alive and self.failed is None

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=self._guard(name, target), args=(stop,), name=name, daemon=True)
        self._threads.append(_Thread(thread, stop))
        thread.start()

    def _guard(self, name: str, target: Callable[[threading.Event], None]) -> Callable[[threading.Event], None]:
        def run(stop: threading.Event) -> None:
            try:
                target(stop)
            except Exception:
                self.failed = name
                log.exception("worker stopped", extra={"worker": name})

        return run

    # ------------------------------------------------------------------ processor

    def _process_loop(self, stop: threading.Event) -> None:
        process_loop(self.processor, self.store, stop, self._wake)

    # ------------------------------------------------------------------ delivery

    def _delivery_thread(self, stop: threading.Event) -> None:
        asyncio.run(self._delivery_loop(stop))

    async def _delivery_loop(self, stop: threading.Event) -> None:
        workers = build_workers(self.store, self.config, self.clock, self.metrics)
        poll = max(0.02, min(0.25, self.config.delivery.max_wait_secs / 4))
        try:
            while not stop.is_set():
                try:
                    await run_requested_resyncs(workers.contacts)
                    await workers.drain_once()
                except StoreUnavailable:
                    await asyncio.sleep(1.0)  # logged by the store; what was sent is sent again
                except Exception:
                    log.exception("delivery round failed")
                    await asyncio.sleep(1.0)
                await asyncio.sleep(poll)
            # Shutting down: send what is pending now rather than after max_wait, within a bound.
            try:
                await asyncio.wait_for(workers.drain_once(force=True), SHUTDOWN_FLUSH_SECS)
            except (TimeoutError, Exception):
                log.warning("shutdown flush incomplete")
        finally:
            await workers.aclose()

    # ------------------------------------------------------------------ enrichment

    def _enrichment_thread(self, stop: threading.Event) -> None:
        asyncio.run(self._enrichment_loop(stop))

    async def _enrichment_loop(self, stop: threading.Event) -> None:
        """Lookups on a thread and event loop of their own: a slow or dead source delays only them."""
        worker = build_enrichment(self.store, self.config, self.clock, self.metrics, wake=self.wake)
        try:
            while not stop.is_set():
                try:
                    done = await worker.drain_once()
                except StoreUnavailable:
                    done = 0  # logged by the store; the people stay due and are looked up again
                    await asyncio.sleep(1.0)
                except Exception:
                    log.exception("enrichment round failed")
                    done = 0
                    await asyncio.sleep(1.0)
                if done == 0:
                    await asyncio.sleep(ENRICHMENT_IDLE_SECS)
        finally:
            await worker.aclose()

    # ------------------------------------------------------------------ scheduler

    def _scheduler_loop(self, stop: threading.Event) -> None:
        self.scheduler.start(self.clock.now())
        while not stop.is_set():
            try:
                self.scheduler.run_due()
            except StoreUnavailable:
                pass  # logged by the store; the jobs run again on a later tick
            except Exception:
                log.exception("scheduler round failed")
            stop.wait(SCHEDULER_TICK_SECS)
