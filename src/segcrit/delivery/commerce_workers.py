"""Delivery of the commerce flows: Events API documents and catalog batches.

EventsWorker: the events of one person that wait together (within `delivery.max_wait_secs`) go in
one Events API document, several people's documents in flight at once; a document that fails is
retried with backoff, then dead-lettered with Criteo's answer after `delivery.retry_window_hours`,
like contact-list changes.

CatalogWorker: changed products go to Criteo in batches (never the same product twice in one
batch), each batch's report is polled until it is final, and each product's outcome (accepted, or
Criteo's errors) is kept for `segcrit status`. A product is sent again only when its data changes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import cached_property

from segcrit.config import CatalogFlow
from segcrit.criteo.catalog_client import CatalogClient
from segcrit.criteo.errors import CredentialsError, PermanentError, RetryableError
from segcrit.criteo.events_client import EventsClient
from segcrit.delivery.base import Worker, describe
from segcrit.domain import OpenBatch, PendingEvent, PendingProduct
from segcrit.errors import CriteoError
from segcrit.flows.catalog import ProductData, criteo_product
from segcrit.store.base import CatalogQueue, EventsQueue

log = logging.getLogger("segcrit.delivery")

EVENTS_SCAN = 10_000
MAX_EVENTS_PER_DOCUMENT = 100
MAX_DOCUMENTS_IN_FLIGHT = 16  # Events API calls under way at once (the rate limiter still applies)
DOCUMENT_VERSION = "segcrit_1.0"
REPORT_POLL_SECS = (5.0, 15.0, 60.0, 300.0)  # then every 5 min until final


class AckCommitter:
    """Commits the answered documents of a round together, off the event loop (group commit).

    Between Criteo's answer and the commit that records it, a crash makes segcrit send the document
    again (at-least-once, same event ids: SPEC §7). Committing each answer on the event loop, one
    after the other, held every other answered document in that window for as many commits; here
    the answers that arrive while one commit runs are recorded together by the next.
    """

    def __init__(self, commit: Callable[[list[int]], None]) -> None:
        self._commit = commit
        self._ids: list[int] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def record(self, ids: Sequence[int]) -> None:
        """Return once `ids` are committed (raise what the commit raised)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ids += ids
        self._waiters.append(waiter)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        while self._ids:
            ids, waiters = self._ids, self._waiters
            self._ids, self._waiters = [], []
            try:
                await asyncio.to_thread(self._commit, ids)
            except Exception as error:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


class EventsWorker(Worker[EventsQueue, EventsClient]):
    @cached_property
    def _acks(self) -> AckCommitter:
        return AckCommitter(self.store.events_sent)

    async def drain_once(self, *, force: bool = False) -> int:
        """Send one document per person whose oldest event has waited long enough; returns calls."""
        now = self.clock.now()
        people: dict[str, list[PendingEvent]] = defaultdict(list)
        for event in self.store.due_events(now, EVENTS_SCAN):
            people[event.person].append(event)
        due = [
            events
            for events in people.values()
            if force
            or any(e.attempts for e in events)
            or now - min(e.created_at for e in events) >= self.config.delivery.max_wait_secs
        ]
        # Each document is a round trip of its own: sent one after the other, a 50 ms Criteo would
        # cap delivery at 20 documents/s. People go in parallel, one person's documents in order.
        in_flight = asyncio.Semaphore(MAX_DOCUMENTS_IN_FLIGHT)

        async def send_person(events: list[PendingEvent]) -> None:
            for start in range(0, len(events), MAX_EVENTS_PER_DOCUMENT):
                async with in_flight:
                    await self._send(events[start : start + MAX_EVENTS_PER_DOCUMENT])

        # A TaskGroup cancels the rest if one fails, so no send outlives this round.
        async with asyncio.TaskGroup() as group:
            for events in due:
                group.create_task(send_person(events))
        return sum(math.ceil(len(events) / MAX_EVENTS_PER_DOCUMENT) for events in due)

    async def _send(self, pending: Sequence[PendingEvent]) -> None:
        # Claimed when its turn comes, not for the whole round: another process takes the rest meanwhile.
        now = self.clock.now()
        claimed = set(self.store.claim_criteo_events([e.id for e in pending], now, now + self.claim_secs))
        events = [e for e in pending if e.id in claimed]
        if not events:
            return
        # The latest event's context (ip, user agent, url) speaks for the document.
        document = {**events[-1].header, "version": DOCUMENT_VERSION, "events": [e.body for e in events]}
        ids = [e.id for e in events]
        try:
            await self.client.send(document)
        except PermanentError as error:
            self.store.dead_letter_events(ids, error.status, describe(error), self.clock.now())
            self.metrics.dead_lettered.labels("events_rejected").inc()
            return
        except (RetryableError, CredentialsError, CriteoError) as error:
            now = self.clock.now()
            if self.window_over(min((e.first_failure_at or now) for e in events), now):
                self.store.dead_letter_events(
                    ids, getattr(error, "status", None), f"retry window exhausted: {error}", now
                )
                self.metrics.dead_lettered.labels("retry_window").inc()
                return
            delay = self.backoff.delay(error, max(e.attempts for e in events), now)
            self.store.defer_events(ids, now + delay, now)
            return
        await self._acks.record(ids)
        now = self.clock.now()
        for event in events:
            self.metrics.delivery_latency.observe(max(0.0, now - event.created_at))


class CatalogWorker(Worker[CatalogQueue, CatalogClient]):
    @cached_property
    def flows(self) -> list[CatalogFlow]:
        return self.config.flows_of(CatalogFlow)

    async def drain_once(self, *, force: bool = False) -> int:
        """Poll open batches, then send what changed; returns the calls made."""
        if not self.flows:
            return 0
        calls = 0
        now = self.clock.now()
        for batch in self.store.batches_to_poll(now, now + self.claim_secs):
            calls += 1
            await self._poll(batch)
        for flow in self.flows:
            products = self.store.due_products(flow.merchant_id, self.clock.now(), flow.max_batch_products)
            if not products:
                continue
            full = len(products) >= flow.max_batch_products
            waited = self.clock.now() - min(p.updated_at for p in products) >= flow.max_wait_secs
            if not (force or full or waited or any(p.attempts for p in products)):
                continue
            products = self._claim(flow, products)
            if products:
                calls += 1
                await self._send(flow, products)
        return calls

    def _claim(self, flow: CatalogFlow, products: Sequence[PendingProduct]) -> list[PendingProduct]:
        """The products this batch may carry: those no other batch being sent holds."""
        now = self.clock.now()
        ids = [p.product_id for p in products]
        claimed = set(self.store.claim_products(flow.merchant_id, ids, now, now + self.claim_secs))
        return [p for p in products if p.product_id in claimed]

    async def _send(self, flow: CatalogFlow, products: Sequence[PendingProduct]) -> None:
        # due_products reads one row per (merchant, product): no product twice in a batch.
        entries = [
            {"method": "insert", "product": criteo_product(ProductData(p.product_id, p.fields))} for p in products
        ]
        ids = [p.product_id for p in products]
        try:
            token = await self.client.send_batch(flow.merchant_id, entries)
        except PermanentError as error:
            self.store.dead_letter_products(flow.merchant_id, ids, error.status, describe(error), self.clock.now())
            self.metrics.dead_lettered.labels("catalog_rejected").inc()
            return
        except ValueError as error:
            # Refused before sending (a merchant id or entry Criteo's schema cannot take): raising
            # would fail every delivery round on the same products, so they wait as a dead letter.
            self.store.dead_letter_products(flow.merchant_id, ids, None, f"not sent: {error}", self.clock.now())
            self.metrics.dead_lettered.labels("catalog_invalid").inc()
            return
        except (RetryableError, CredentialsError, CriteoError) as error:
            now = self.clock.now()
            if self.window_over(min((p.first_failure_at or now) for p in products), now):
                self.store.dead_letter_products(flow.merchant_id, ids, None, f"retry window exhausted: {error}", now)
                self.metrics.dead_lettered.labels("retry_window").inc()
                return
            delay = self.backoff.delay(error, max(p.attempts for p in products), now)
            self.store.defer_products(flow.merchant_id, ids, now + delay, now)
            return
        now = self.clock.now()
        self.store.open_batch(
            token, flow.merchant_id, [(p.product_id, p.fingerprint) for p in products], now, now + REPORT_POLL_SECS[0]
        )
        log.info("catalog batch sent", extra={"merchant_id": flow.merchant_id, "products": len(products)})

    async def _poll(self, batch: OpenBatch) -> None:
        try:
            report = await self.client.report(batch.token)
        except (CriteoError, ValueError) as error:
            log.warning("catalog report unavailable", extra={"token_age_secs": self.clock.now() - batch.created_at})
            if isinstance(error, PermanentError):
                # The report is gone (expired, unknown): send the batch's products again.
                self.store.close_batch(batch, {}, self.clock.now(), failed=True)
            else:
                self._poll_later(batch)
            return
        if not report.done:
            self._poll_later(batch)
            return
        if report.status == "FAILED":
            self.store.close_batch(batch, {}, self.clock.now(), failed=True)
            return
        errors = {
            product_id: "; ".join(f"{e.type}: {e.message}" for e in problems)
            for product_id, problems in report.errors_by_product().items()
        }
        self.store.close_batch(batch, errors, self.clock.now())

    def _poll_later(self, batch: OpenBatch) -> None:
        wait = REPORT_POLL_SECS[min(batch.polls + 1, len(REPORT_POLL_SECS) - 1)]
        self.store.batch_polled(batch.token, self.clock.now() + wait)
