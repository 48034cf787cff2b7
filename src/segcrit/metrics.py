"""Prometheus metrics, one registry per running app (tests create their own).

A scrape does constant work: the gauges read running totals the store keeps (no table counts),
and `HeldAudiences` reads at most HELD_AUDIENCES_SHOWN rows of an index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from segcrit.admin.activity import Activity

# Held audiences listed by key in /metrics, the longest held first (the total is a gauge of its own):
# keys come from traffic, so their number is bounded here rather than by whoever sends them.
HELD_AUDIENCES_SHOWN = 20


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_received = Counter("segcrit_events_received", "Messages accepted at ingest", ["source"], registry=r)
        self.events_rejected = Counter(
            "segcrit_events_rejected",
            "Messages or requests rejected at ingest, by reason",
            ["source", "reason"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "segcrit_events_duplicate", "Messages ignored as duplicates", ["source"], registry=r
        )
        self.events_processed = Counter(
            "segcrit_events_processed", "Events run through identity, consent and flows", registry=r
        )
        self.events_skipped = Counter(
            "segcrit_events_skipped", "Events processed but skipped, by reason", ["reason"], registry=r
        )
        self.events_adjusted = Counter(
            "segcrit_events_adjusted",
            "Commerce events sent with a correction (price read from text, no currency, bad product...)",
            ["reason"],
            registry=r,
        )
        self.backlog = Gauge("segcrit_backlog_events", "Accepted events not yet processed", registry=r)
        self.changes_pending = Gauge("segcrit_changes_pending", "Audience changes waiting for delivery", registry=r)
        self.criteo_calls = Counter(
            "segcrit_criteo_calls",
            "Calls to Criteo by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "segcrit_delivery_latency_seconds",
            "From a change becoming pending to Criteo acknowledging it",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        self.dead_letters = Gauge("segcrit_dead_letters", "Dead letters not yet replayed", registry=r)
        self.audience_messages_ignored = Counter(
            "segcrit_audience_messages_ignored",
            "Audience messages from a source that audience_sync does not accept (`sources`), by source",
            ["source"],
            registry=r,
        )
        self.audiences_held = Gauge(
            "segcrit_audiences_held",
            "Audiences over max_new_audiences_per_day: no Criteo segment, nothing delivered",
            registry=r,
        )
        self.dead_lettered = Counter(
            "segcrit_dead_lettered", "Deliveries dead-lettered, by reason", ["reason"], registry=r
        )
        self.store_write_failing = Gauge(
            "segcrit_store_write_failing", "1 while the store cannot write (disk full, locked, I/O error)", registry=r
        )
        self.retention_dropped = Counter(
            "segcrit_retention_dropped",
            "Rows dropped by retention: dead letters, set-aside events, anonymous profiles, dedupe entries",
            ["what"],
            registry=r,
        )
        # Enrichment (segcrit.enrichment), per configured lookup.
        self.lookups = Counter(
            "segcrit_lookups",
            "Profiles looked up, by outcome (found, unknown, no_key)",
            ["lookup", "outcome"],
            registry=r,
        )
        self.lookup_requests = Counter(
            "segcrit_lookup_requests",
            "Queries and HTTP requests made to lookup sources, by status (ok, error, HTTP status, network)",
            ["lookup", "status"],
            registry=r,
        )
        self.lookup_failures = Counter(
            "segcrit_lookup_failures", "Lookup batches the source failed (then backed off)", ["lookup"], registry=r
        )
        self.lookup_source_up = Gauge(
            "segcrit_lookup_source_up", "1 while the lookup's source answers, 0 while it fails", ["lookup"], registry=r
        )
        self.lookups_due = Gauge("segcrit_lookups_due", "Profiles due for a lookup", ["lookup"], registry=r)

        # Not Prometheus: recent calls and ingest samples for the admin UI (segcrit.admin.activity).
        self.activity = Activity()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HeldAudiences(Collector):
    """`segcrit_audience_held_since_seconds{audience}`: when each held audience (over
    max_new_audiences_per_day) was held, for the HELD_AUDIENCES_SHOWN held longest."""

    NAME = "segcrit_audience_held_since_seconds"
    HELP = "Audiences held over max_new_audiences_per_day (the longest held), by key: since when"

    def __init__(self, held: Callable[[int], list[tuple[str, float]]]) -> None:
        self._held = held

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["audience"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["audience"])
        for audience, since in self._held(HELD_AUDIENCES_SHOWN):
            family.add_metric([audience], since)
        yield family
