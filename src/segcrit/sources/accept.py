"""The end every ingest request shares: hand prepared messages to the sink, count, answer.

Answers are JSON. Success is `200 {"success": true}` (plus `"rejected": [{"index", "reason"}]`
when some messages of a batch were left out) and is only sent once what `sink.submit` returned
has resolved, i.e. after the durable commit. Errors carry `error` and `message` (the same text)
and `code`: the Segment Python client reports `code`/`message` from an error body. A broken limit
is named in `limit`. No answer ever echoes a write key, a signature or message content.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from segcrit.admin.activity import MESSAGES_PER_REQUEST
from segcrit.clock import Clock
from segcrit.domain import AcceptResult
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

# What a source makes of a request's body: the answer, or (once messages went to the store) what
# resolves to it after their commit (`commit`, `answered`).
Answer = Response | Awaitable[Response]


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


def commit(
    source: str,
    prepared: Prepared,
    received_at: float,
    *,
    sink: IngestSink,
    metrics: Metrics,
    single: bool,
    items: Sequence[Any] = (),
) -> Answer:
    """Hand the accepted messages to the store, and the answer to give once they are stored (400
    for a rejected single message). `items`: the messages as sent, for the admin's debugger to
    show the refused ones. Nothing of the request outlives this call but what the answer needs
    (`IngestSink.submit`): the caller awaits the commit without holding the request either."""
    for rejection in prepared.rejected:
        metrics.events_rejected.labels(source=source, reason=_reason_label(rejection["reason"])).inc()
        index = rejection["index"]
        metrics.activity.refused(source, rejection["reason"], items[index] if index < len(items) else None)
    if single and prepared.rejected:
        return error_response(400, "invalid_message", prepared.rejected[0]["reason"])
    if not prepared.messages:
        return _success(prepared.rejected)
    try:
        pending = sink.submit(source, prepared.messages, received_at)
    except Exception as error:
        return _store_failed(metrics, source, error)
    recent = prepared.messages[-MESSAGES_PER_REQUEST:]
    return _acknowledge(pending, source, len(prepared.messages), recent, prepared.rejected, metrics)


async def answered(outcome: Answer) -> Response:
    """The answer itself, or the one awaited."""
    return outcome if isinstance(outcome, Response) else await outcome


async def _acknowledge(
    pending: Awaitable[AcceptResult],
    source: str,
    count: int,
    recent: Sequence[Any],
    rejected: list[dict[str, Any]],
    metrics: Metrics,
) -> Response:
    """The answer once the commit is done: `count` messages handed over, the last of them `recent`."""
    try:
        result = await pending
    except Exception as error:
        return _store_failed(metrics, source, error)
    metrics.events_received.labels(source=source).inc(count)
    metrics.activity.accepted(source, recent)
    if result.duplicates:
        metrics.events_duplicate.labels(source=source).inc(result.duplicates)
    return _success(rejected)


def _success(rejected: list[dict[str, Any]]) -> Response:
    if not rejected:
        return Response(_SUCCESS, media_type="application/json")
    return json_response(200, {"success": True, "rejected": rejected})


def _store_failed(metrics: Metrics, source: str, error: Exception) -> Response:
    """503: nothing of the request was stored. The client retries a 5xx with the same messageIds;
    dedupe makes that harmless."""
    if not isinstance(error, StoreError):  # the store logged the real error of a StoreError
        log.error("ingest commit failed", exc_info=error, extra={"source": source})
    return _store_unavailable(metrics, source)


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

    def _commit(
        self, source: str, prepared: Prepared, received_at: float, *, single: bool, items: Sequence[Any] = ()
    ) -> Answer:
        return commit(source, prepared, received_at, sink=self._sink, metrics=self._metrics, single=single, items=items)
