"""The end every ingest request shares: hand prepared messages to the sink, count, answer.

Answers are JSON. Success is `200 {"success": true}` (plus `"rejected": [{"index", "reason"}]`
when some messages of a batch were left out) and is only sent after `sink.accept` returned,
i.e. after the durable commit. Errors carry `error` and `message` (the same text) and `code`:
the Segment Python client reports `code`/`message` from an error body. A broken limit is named
in `limit`. No answer ever echoes a write key, a signature or message content.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from segcrit.clock import Clock
from segcrit.errors import StoreError
from segcrit.metrics import Metrics
from segcrit.sources.limits import RequestError
from segcrit.sources.validate import MessageRules, Prepared
from segcrit.store.base import IngestSink

log = logging.getLogger(__name__)

# How long a client should wait when the backlog is full or the store failed. Segment's Python
# client honours Retry-After (capped at 300 s) without spending its retry budget.
RETRY_AFTER_SECS: Final = 5
UNKNOWN_SOURCE: Final = "<unknown>"  # a metrics label no configured source name can take
# Routes take every method and answer a wrong one themselves, so that even a 405 is JSON.
EVERY_METHOD: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

_SUCCESS: Final = orjson.dumps({"success": True})


def json_response(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    limit: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"error": message, "code": code, "message": message}
    if limit is not None:
        body["limit"] = limit
    return json_response(status, body, headers)


def bearer_ok(request: Request, token: str) -> bool:
    """Whether the request carries `Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Header values arrive latin-1 decoded: encoding them back gives the bytes that were sent.
    return hmac.compare_digest(given.strip().encode("latin-1"), token.encode("utf-8"))


def request_error_response(error: RequestError) -> Response:
    return error_response(error.status, error.code, error.message, limit=error.limit)


def method_not_allowed(allowed: str) -> Response:
    return error_response(405, "method_not_allowed", "method not allowed", headers={"Allow": allowed})


def backlog_response(sink: IngestSink, max_backlog: int, metrics: Metrics, source: str) -> Response | None:
    """429 with Retry-After when the unprocessed backlog is over the limit, else None."""
    if sink.backlog() <= max_backlog:
        return None
    metrics.events_rejected.labels(source=source, reason="backlog").inc()
    retry = str(RETRY_AFTER_SECS)
    return error_response(
        429,
        "backlog_full",
        "too many unprocessed events, retry later",
        limit=f"backlog exceeds {max_backlog} events",
        # X-RateLimit-Reset is what Segment's browser SDK reads (seconds to wait).
        headers={"Retry-After": retry, "X-RateLimit-Reset": retry},
    )


def reject(metrics: Metrics, source: str, reason: str, response: Response) -> Response:
    """Count a refused request and return its answer."""
    metrics.events_rejected.labels(source=source, reason=reason).inc()
    metrics.activity.refused(source, reason)
    return response


async def commit(
    source: str,
    prepared: Prepared,
    received_at: float,
    *,
    sink: IngestSink,
    metrics: Metrics,
    single: bool,
    items: Sequence[Any] = (),
) -> Response:
    """Store the accepted messages, then answer (400 for a rejected single message). `items`: the
    messages as sent, for the admin's debugger to show the refused ones."""
    for rejection in prepared.rejected:
        metrics.events_rejected.labels(source=source, reason=_reason_label(rejection["reason"])).inc()
        index = rejection["index"]
        metrics.activity.refused(source, rejection["reason"], items[index] if index < len(items) else None)
    if single and prepared.rejected:
        return error_response(400, "invalid_message", prepared.rejected[0]["reason"])
    if prepared.messages:
        try:
            result = await sink.accept(source, prepared.messages, received_at)
        except StoreError:
            # Nothing of the request was stored; the store logged the real error. The client
            # retries a 5xx with the same messageIds; dedupe makes that harmless.
            return _store_unavailable(metrics, source)
        except Exception:
            log.exception("ingest commit failed", extra={"source": source})
            return _store_unavailable(metrics, source)
        metrics.events_received.labels(source=source).inc(len(prepared.messages))
        metrics.activity.accepted(source, prepared.messages)
        if result.duplicates:
            metrics.events_duplicate.labels(source=source).inc(result.duplicates)
    if not prepared.rejected:
        return Response(_SUCCESS, media_type="application/json")
    return json_response(200, {"success": True, "rejected": prepared.rejected})


def _store_unavailable(metrics: Metrics, source: str) -> Response:
    retry = {"Retry-After": str(RETRY_AFTER_SECS)}
    response = error_response(503, "store_unavailable", "store unavailable, retry later", headers=retry)
    return reject(metrics, source, "store_unavailable", response)


def _reason_label(reason: str) -> str:
    # Per-message reasons are readable sentences; the metric gets a few bounded codes.
    if reason.startswith("unsigned delete"):
        return "unsigned_delete"
    return "message_too_large" if reason.startswith("message exceeds") else "invalid_message"


class Receiver:
    """What the Tracking API and the webhook receiver share: their sink, counters, clock, limits
    and message rules, and the answers they give alike."""

    def __init__(
        self,
        sink: IngestSink,
        metrics: Metrics,
        clock: Clock,
        *,
        max_request_bytes: int,
        max_batch: int,
        max_backlog: int,
        rules: MessageRules,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._clock = clock
        self._max_request_bytes = max_request_bytes
        self._max_batch = max_batch
        self._max_backlog = max_backlog
        self._rules = rules

    def _too_many(self, source: str) -> Response:
        limit = f"batch exceeds {self._max_batch} messages"
        too_many = error_response(400, "too_many_messages", "too many messages", limit=limit)
        return reject(self._metrics, source, "too_many_messages", too_many)

    def _bad_body(self, source: str, message: str) -> Response:
        return reject(self._metrics, source, "invalid_body", error_response(400, "invalid_body", message))

    async def _commit(
        self, source: str, prepared: Prepared, received_at: float, *, single: bool, items: Sequence[Any] = ()
    ) -> Response:
        return await commit(
            source, prepared, received_at, sink=self._sink, metrics=self._metrics, single=single, items=items
        )
