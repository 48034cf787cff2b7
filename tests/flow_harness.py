"""A segcrit "process" that a tier-2 test steps by hand: store, Processor, Scheduler and the delivery
workers (contact lists, Events API, catalog) on one FakeClock shared with the emulator.

Nothing runs on its own: `send()` ingests and processes, `run_jobs()` runs the scheduler's due
jobs, `deliver()` lets batch windows pass and drains the workers. Starting a second Process on the
same database file stands for a restart (or for another process on the same store).

The store is the config's SQLite file, or, when `Processes` is given a PostgreSQL URL (the
`harness_store` fixture of tests/conftest.py: a schema of its own per test), that database: the
same scenarios then run on the store several processes share.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from segcrit.clock import FakeClock
from segcrit.config import Config
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.runtime import Workers, build_workers
from segcrit.scheduler import Scheduler
from segcrit.store.sqlite import SqliteStore
from tests.helpers import advancing, email_of, iso, put

if TYPE_CHECKING:
    from segcrit.store.postgres import PostgresStore

DELIVERY_STEP_SECS = 5.0  # longer than max_wait and the first catalog report poll


def track(user: str, event: str, ts: float, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "userId": user,
        "timestamp": iso(ts),
        "properties": properties,
        "context": {"traits": {"email": email_of(user)}},
    }


def order(user: str, order_id: str, ts: float, **properties: Any) -> dict[str, Any]:
    return track(user, "Order Completed", ts, order_id=order_id, currency="EUR", **properties)


def identify(user: str, ts: float, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "timestamp": iso(ts), "traits": {"email": email_of(user), **traits}}


@dataclass
class Process:
    store: SqliteStore | PostgresStore
    config: Config
    clock: FakeClock
    loop: asyncio.AbstractEventLoop
    metrics: Metrics
    processor: Processor
    scheduler: Scheduler
    workers: Workers

    def now(self) -> float:
        return self.clock.now()

    def send(self, *messages: dict[str, Any], source: str = "web") -> None:
        """Ingest (as the Tracking API or a webhook does, through `source`) and process."""
        put(self.store, *messages, source=source, received_at=self.clock.now())
        self.processor.drain()

    def run_jobs(self) -> list[str]:
        return self.scheduler.run_due(self.clock.now())

    def deliver(self, max_rounds: int = 40) -> int:
        """Let batch windows pass and drain every worker until nothing waits; returns the calls made."""
        calls = 0
        for _ in range(max_rounds):
            self.clock.advance(DELIVERY_STEP_SECS)
            made = self.loop.run_until_complete(self.workers.drain_once())
            calls += made
            if made == 0 and self.idle():
                return calls
        raise AssertionError(f"deliveries still waiting after {max_rounds} rounds")

    def idle(self) -> bool:
        catalog = self.store.catalog_stats()
        return (
            self.store.pending_count() == 0
            and self.store.pending_event_count() == 0
            and catalog.pending == 0
            and catalog.in_flight == 0
            and not self.store.lookalikes_to_create()
        )

    def profile_id(self, user: str) -> int:
        with self.store.transaction() as tx:
            return tx.find_profiles([("user_id", user)])[("user_id", user)]


class Start(Protocol):
    def __call__(self, config: Config, *, holder: str = "test-process") -> Process: ...


class Processes:
    """Starts Processes on the emulator's clock; `close()` stops them all (a test module's fixture)."""

    def __init__(self, clock: FakeClock, store_url: str | None = None) -> None:
        self.clock = clock
        self.store_url = store_url
        self.loop = asyncio.new_event_loop()
        self.running: list[Process] = []

    def start(self, config: Config, *, holder: str = "test-process") -> Process:
        """A process on the config's store (or the PostgreSQL one); call again for a restart."""
        store: SqliteStore | PostgresStore
        if self.store_url is not None:
            from segcrit.store.postgres import PostgresStore  # only with SEGCRIT_TEST_POSTGRES_URL

            store = PostgresStore(self.store_url, owner=True)
        else:
            store = SqliteStore(config.store.removeprefix("sqlite:///"))
            store.release_claims()  # the takeover an owner's open does (`segcrit serve`), of a file not owned here
        metrics = Metrics()
        processor = Processor(store, config, self.clock, metrics)
        scheduler = Scheduler(store, config, processor, self.clock, holder=holder)
        scheduler.start(self.clock.now())
        workers = build_workers(store, config, self.clock, metrics, sleep=advancing(self.clock), rng=random.Random(0))
        process = Process(store, config, self.clock, self.loop, metrics, processor, scheduler, workers)
        self.running.append(process)
        return process

    def close(self) -> None:
        for process in self.running:
            self.loop.run_until_complete(process.workers.aclose())
            process.store.close()
        self.loop.close()
