"""Prometheus metrics, one registry per running app (tests create their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from segcrit.admin.activity import Activity


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
        self.dead_lettered = Counter(
            "segcrit_dead_lettered", "Deliveries dead-lettered, by reason", ["reason"], registry=r
        )

        # Not Prometheus: recent calls and ingest samples for the admin UI (segcrit.admin.activity).
        self.activity = Activity()

    def render(self) -> bytes:
        return generate_latest(self.registry)
