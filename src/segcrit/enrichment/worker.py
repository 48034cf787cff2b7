"""The enrichment worker: due profiles -> their lookup's source -> answers on the inbox.

One round (`drain_once`) takes, for each lookup whose source is not backing off, a batch of due
profiles (read without a transaction), asks the source for all their keys at once (no transaction
is open while it waits), and then, in one short transaction, puts the answers on the inbox as
sanitised messages and reschedules the profiles. Processing does the rest, as for any event.

An answer that is the same as the last one applied to the profile is not applied again (a
fingerprint per profile and lookup): a refresh that finds nothing new costs the processor nothing,
and a value counts from the lookup that first saw it, so a consent given on the website after that
lookup wins until the CRM's value changes.

A source that fails (down, credentials refused, a query that no longer works) makes only its own
lookups wait: the worker backs off (full jitter, `delivery.backoff_*`), records why in
`lookup_sources` (`segcrit status`) and in `/metrics`, and tries again; the profiles stay due, so
enrichment catches up once the source answers. Ingest, processing and delivery never wait for it.
Tests build the worker with `build_enrichment` and step it with `drain_once()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from segcrit.clock import Clock
from segcrit.config import Config, SegmentProfilesLookup, SqlLookup
from segcrit.delivery.backoff import Backoff
from segcrit.domain import DueLookup, LookupDone
from segcrit.enrichment.answers import LookupResult, LookupUnavailable, answer_message, looked_up_key
from segcrit.enrichment.memory import EMAILS, EmailMemory, email_listener
from segcrit.enrichment.schedule import KEY_KINDS, RefreshSchedule
from segcrit.identity.normalize import RESERVED_KEY
from segcrit.metrics import Metrics
from segcrit.ratelimit import Sleep
from segcrit.store.base import EnrichmentStore

log = logging.getLogger(__name__)

SOURCE_PREFIX: Final = "lookup:"  # the inbox source of a lookup's answers: lookup:<name>
DUE_GAUGE_EVERY_SECS: Final = 5.0  # counting due profiles reads an index range: not every round
PROFILES_BATCH_MAX: Final = 500
# Keys looked up per profile at most: a person may hold up to 100 anonymousIds (merge limits), and a
# Profile API lookup costs a request or two per key.
MAX_KEYS_PER_PROFILE: Final = 10


class Source(Protocol):
    """A lookup's source: `lookup_keys` answers a batch, raising LookupUnavailable when it cannot."""

    @property
    def lookup(self) -> SqlLookup | SegmentProfilesLookup: ...

    async def lookup_keys(self, keys: Sequence[str]) -> LookupResult: ...

    async def aclose(self) -> None: ...


def build_source(
    lookup: SqlLookup | SegmentProfilesLookup,
    clock: Clock,
    metrics: Metrics,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
) -> Source:
    if isinstance(lookup, SqlLookup):
        from segcrit.enrichment.sql import SqlSource

        return SqlSource(lookup, clock, metrics, sleep)
    from segcrit.enrichment.profiles import ProfilesSource

    return ProfilesSource(lookup, clock, metrics, sleep=sleep, rng=rng)


def batch_size(lookup: SqlLookup | SegmentProfilesLookup) -> int:
    """Profiles per round: a query's worth for SQL; for the Profile API about a second's worth of
    requests, so that answers reach the inbox steadily rather than after minutes."""
    if isinstance(lookup, SqlLookup):
        return lookup.batch_size
    return min(PROFILES_BATCH_MAX, max(10, lookup.max_per_second))


@dataclass(slots=True)
class _SourceState:
    seeded: bool = False
    failures: int = 0  # in a row
    retry_at: float = 0.0
    due_counted_at: float = float("-inf")


class EnrichmentWorker:
    def __init__(
        self,
        store: EnrichmentStore,
        config: Config,
        clock: Clock,
        metrics: Metrics,
        sources: Sequence[Source],
        *,
        backoff: Backoff,
        memory: EmailMemory = EMAILS,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.sources = list(sources)
        self.backoff = backoff
        self.memory = memory
        self._wake = wake
        self._on_email = email_listener(config)
        self._schedules = {s.lookup.name: RefreshSchedule.of(s.lookup, config) for s in self.sources}
        self._state = {s.lookup.name: _SourceState() for s in self.sources}
        self._tidied = False

    async def drain_once(self) -> int:
        """One batch for each lookup that may run now, side by side (a slow source does not hold up
        the others); returns how many profiles were looked up."""
        if not self._tidied:
            # A lookup renamed or removed from the config leaves rows nobody reads: they go.
            self.store.forget_other_lookups([source.lookup.name for source in self.sources])
            self._tidied = True
        return sum(await asyncio.gather(*(self._round(source) for source in self.sources)))

    async def aclose(self) -> None:
        for source in self.sources:
            await source.aclose()

    def retry_at(self, lookup: str) -> float:
        """When a failing source is tried again (0: it is not backing off)."""
        return self._state[lookup].retry_at

    # ------------------------------------------------------------------ one lookup

    async def _round(self, source: Source) -> int:
        lookup = source.lookup
        state = self._state[lookup.name]
        now = self.clock.now()
        if not state.seeded:
            queued = self.store.seed_lookups(lookup.name, KEY_KINDS[lookup.key], now)
            if queued:
                log.info("profiles queued for a new lookup", extra={"lookup": lookup.name, "profiles": queued})
            state.seeded = True
        self._count_due(lookup.name, state, now)
        if now < state.retry_at:
            return 0
        due = self.store.due_lookups(lookup.name, KEY_KINDS[lookup.key], now, batch_size(lookup))
        if not due:
            return 0
        keys_of = {d.profile_id: self._keys(lookup, d) for d in due}
        wanted = list(dict.fromkeys(key for keys in keys_of.values() for key in keys))
        started = self.clock.now()
        result = LookupResult()
        if wanted:
            try:
                result = await source.lookup_keys(wanted)
            except LookupUnavailable as error:
                self._failed(lookup.name, str(error), self.clock.now())
                return 0
        finished = self.clock.now()
        messages, done = self._answers(lookup, due, keys_of, result, started, finished)
        self.store.lookups_answered(lookup.name, done, messages, SOURCE_PREFIX + lookup.name, finished, result.requests)
        if messages and self._wake is not None:
            self._wake()
        if result.failed:
            self._failed(lookup.name, result.error or "no answer", finished)
        else:
            state.failures, state.retry_at = 0, 0.0
            self.metrics.lookup_source_up.labels(lookup.name).set(1)
        return len(done)

    def _keys(self, lookup: SqlLookup | SegmentProfilesLookup, due: DueLookup) -> list[str]:
        """The profile's keys as the source knows them. An email key is the email itself, which
        only this process's memory holds (segcrit.enrichment.memory)."""
        if lookup.key == "email":
            keys = [email for email in map(self.memory.email_of, due.keys) if email is not None]
        else:
            keys = [key for key in (looked_up_key(lookup.key, value) for value in due.keys) if key is not None]
        return keys[:MAX_KEYS_PER_PROFILE]

    def _answers(
        self,
        lookup: SqlLookup | SegmentProfilesLookup,
        due: Sequence[DueLookup],
        keys_of: dict[int, list[str]],
        result: LookupResult,
        started: float,
        finished: float,
    ) -> tuple[list[dict[str, Any]], list[LookupDone]]:
        """The answers' messages, and each profile's outcome and next due time. A profile with a
        key the source failed on is left due (it is retried with the source)."""
        schedule = self._schedules[lookup.name]
        messages: list[dict[str, Any]] = []
        done: list[LookupDone] = []
        for item in due:
            keys = keys_of[item.profile_id]
            if any(key in result.failed for key in keys):
                continue
            answered = [key for key in keys if key in result.answers]
            # Timed at the start of the lookup: a deletion that happened meanwhile still wins.
            found = [
                answer_message(
                    lookup.name,
                    lookup.key,
                    key,
                    result.answers[key],
                    ts=started,
                    consent_category=self.config.consent.category,
                    phone_region=self.config.identity.phone_region,
                    on_email=self._on_email,
                )
                for key in answered
            ]
            applied = fingerprint(found) if found else None
            if applied != item.answer:
                messages += found
            outcome = "found" if answered else "unknown" if keys else "no_key"
            self.metrics.lookups.labels(lookup.name, outcome).inc()
            next_due = schedule.next_due(item.profile_id, finished)
            done.append(LookupDone(item.profile_id, item.version, outcome, next_due, applied))
        return messages, done

    def _failed(self, lookup: str, error: str, now: float) -> None:
        state = self._state[lookup]
        delay = self.backoff.delay(LookupUnavailable(error), state.failures, now)
        state.failures += 1
        state.retry_at = now + delay
        self.store.lookup_failed(lookup, error, now, state.retry_at)
        self.metrics.lookup_failures.labels(lookup).inc()
        self.metrics.lookup_source_up.labels(lookup).set(0)
        log.warning("lookup source unavailable", extra={"lookup": lookup, "error": error, "retry_in": round(delay, 1)})

    def _count_due(self, lookup: str, state: _SourceState, now: float) -> None:
        if time.monotonic() - state.due_counted_at >= DUE_GAUGE_EVERY_SECS:
            state.due_counted_at = time.monotonic()
            self.metrics.lookups_due.labels(lookup).set(self.store.due_lookup_count(lookup, now))


def fingerprint(messages: Sequence[dict[str, Any]]) -> str:
    """What a profile's answers say (identifiers, consent, traits) without when they were looked
    up, hashed: tells a changed answer from the same one again."""
    said = []
    for message in messages:
        body = {key: value for key, value in message.items() if key not in ("timestamp", RESERVED_KEY)}
        reserved = {key: value for key, value in message[RESERVED_KEY].items() if key not in ("ts", "received_at")}
        said.append(orjson.dumps([body, reserved], option=orjson.OPT_SORT_KEYS))
    return hashlib.sha256(b"\n".join(sorted(said))).hexdigest()[:32]


def build_enrichment(
    store: EnrichmentStore,
    config: Config,
    clock: Clock,
    metrics: Metrics,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    memory: EmailMemory = EMAILS,
    wake: Callable[[], None] | None = None,
) -> EnrichmentWorker:
    """The worker with a source per configured lookup (call inside the event loop that runs it)."""
    rng = rng or random.Random()
    sources = [build_source(lookup, clock, metrics, sleep=sleep, rng=rng) for lookup in config.enrichment]
    backoff = Backoff.from_config(config.delivery, rng)
    return EnrichmentWorker(store, config, clock, metrics, sources, backoff=backoff, memory=memory, wake=wake)
