"""Sources: the HTTP receivers that take Segment messages in (Tracking API and signed webhooks).

    ingest_routes(config, sink, metrics, clock) -> list[Route]

mounts `/v1/...` (segcrit.sources.tracking) and `/webhooks/{source_name}`
(segcrit.sources.webhook). Both bound what they read (limits), sanitise and validate each message
(validate) and answer only after the sink committed (accept).
"""

from __future__ import annotations

from starlette.routing import Route

from segcrit.clock import Clock
from segcrit.config import Config
from segcrit.metrics import Metrics
from segcrit.sources.tracking import tracking_routes
from segcrit.sources.webhook import webhook_routes
from segcrit.store.base import IngestSink

__all__ = ["ingest_routes"]


def ingest_routes(config: Config, sink: IngestSink, metrics: Metrics, clock: Clock) -> list[Route]:
    """Every ingest endpoint, ready to mount in the app."""
    return [*tracking_routes(config, sink, metrics, clock), *webhook_routes(config, sink, metrics, clock)]
