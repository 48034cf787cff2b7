"""The Segment Tracking API, so that Segment SDKs pointed at us with `host=` work unchanged.

    POST /v1/batch, /v1/import, /v1/b                   {"batch": [...], "context"?, "integrations"?}
    POST /v1/track|identify|page|screen|group|alias      one message; the path gives its type
    POST /v1/t|i|p|s|g|a                                 the browser SDK's short paths

Auth (SPEC §3.1): `Authorization: Basic base64("KEY:")` (a missing colon is tolerated), or
`writeKey` in the body (browsers; also with `Bearer <token>`, whose token we cannot verify and so
ignore: the write key is the credential). A Basic header wins over the body. The key decides the
source. Any Content-Type is read as JSON (browsers send text/plain to avoid a CORS pre-flight).

Order of checks, cheapest first: method, Basic key, backlog (429 before reading the body), body
size and gzip, JSON depth and syntax, body key, envelope (a batch `sentAt` that is not a valid
ISO-8601 time refuses the whole batch: it would skew every message's time), then each message.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from segcrit.clock import Clock
from segcrit.config import Config
from segcrit.enrichment.memory import email_listener
from segcrit.metrics import Metrics
from segcrit.sources.accept import (
    EVERY_METHOD,
    UNKNOWN_SOURCE,
    Answer,
    Receiver,
    answered,
    backlog_response,
    error_response,
    method_not_allowed,
    reject,
    request_error_response,
)
from segcrit.sources.limits import Disconnected, RequestError, parse_json, read_body
from segcrit.sources.validate import TRACKING_TYPES, MessageRules, prepare_messages, read_timestamp
from segcrit.store.base import IngestSink

BATCH_PATHS: Final = ("batch", "import", "b")
SINGLE_PATHS: Final = {
    "track": "track",
    "identify": "identify",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}


class TrackingApi(Receiver):
    """The endpoints, holding what they need from the config, ready-made."""

    def __init__(self, config: Config, sink: IngestSink, metrics: Metrics, clock: Clock) -> None:
        rules = MessageRules(
            types=TRACKING_TYPES,
            max_message_bytes=config.server.max_message_bytes,
            phone_region=config.identity.phone_region,
            on_email=email_listener(config),
        )
        super().__init__(
            sink,
            metrics,
            clock,
            max_request_bytes=config.server.max_request_bytes,
            max_batch=config.server.max_batch_messages,
            max_backlog=config.ingest.max_backlog,
            rules=rules,
        )
        self._keys = [
            (source.write_key.get_secret_value().encode("utf-8"), source.name)
            for source in config.sources
            if source.type == "tracking_api" and source.write_key is not None
        ]

    def routes(self) -> list[Route]:
        routes = [Route(f"/v1/{path}", self.batch, methods=EVERY_METHOD, name=f"v1_{path}") for path in BATCH_PATHS]
        for path, kind in SINGLE_PATHS.items():
            endpoint = self._single_endpoint(kind)
            routes.append(Route(f"/v1/{path}", endpoint, methods=EVERY_METHOD, name=f"v1_{path}"))
        return routes

    async def batch(self, request: Request) -> Response:
        return await self._handle(request, None)

    def _single_endpoint(self, kind: str) -> Callable[[Request], Awaitable[Response]]:
        async def single(request: Request) -> Response:
            return await self._handle(request, kind)

        return single

    async def _handle(self, request: Request, kind: str | None) -> Response:
        if request.method != "POST":
            return method_not_allowed("POST")
        received_at = self._clock.now()
        source: str | None = None
        authorization = request.headers.get("authorization", "")
        if authorization[:6].lower() == "basic ":
            source = self._source_for(_basic_user(authorization[6:]))
            if source is None:
                return self._unauthorized()

        busy = backlog_response(self._sink, self._max_backlog, self._metrics, source or UNKNOWN_SOURCE)
        if busy is not None:
            return busy

        try:
            raw = await read_body(request, self._max_request_bytes)
        except RequestError as error:
            return reject(self._metrics, source or UNKNOWN_SOURCE, error.code, request_error_response(error))
        except Disconnected:
            return error_response(400, "disconnected", "client disconnected")
        # The body's objects live only inside this call: the commit is awaited without them.
        return await answered(self._take(raw, source, kind, received_at))

    def _take(self, raw: bytes, source: str | None, kind: str | None, received_at: float) -> Answer:
        """Parse, check and prepare the body, and hand its messages to the store."""
        try:
            body = parse_json(raw)
        except RequestError as error:
            return reject(self._metrics, source or UNKNOWN_SOURCE, error.code, request_error_response(error))
        if not isinstance(body, dict):
            return self._bad_body(source or UNKNOWN_SOURCE, "body must be a JSON object")

        if source is None:
            write_key = body.get("writeKey")
            source = self._source_for(write_key if isinstance(write_key, str) else None)
            if source is None:
                return self._unauthorized()

        if kind is not None:
            message = dict(body)
            # Segment infers the type from the path of a single-message call.
            message["type"] = kind
            prepared = prepare_messages([message], self._rules, received_at=received_at)
            return self._commit(source, prepared, received_at, single=True, items=[message])

        items = body.get("batch")
        context = body.get("context")
        integrations = body.get("integrations")
        if not isinstance(items, list):
            return self._bad_body(source, "batch must be a JSON array")
        if len(items) > self._max_batch:
            return self._too_many(source)
        if not isinstance(context, dict | None) or not isinstance(integrations, dict | None):
            return self._bad_body(source, "context and integrations must be objects")
        # The batch's clock, for the skew correction of messages without a `sentAt` of their own.
        sent_at = None if body.get("sentAt") is None else read_timestamp(body["sentAt"])
        if isinstance(sent_at, str):
            return self._bad_body(source, "sentAt " + sent_at)

        prepared = prepare_messages(
            items, self._rules, received_at=received_at, context=context, integrations=integrations, sent_at=sent_at
        )
        return self._commit(source, prepared, received_at, single=False, items=items)

    def _source_for(self, key: str | None) -> str | None:
        """The source whose write key this is; every key is compared, in constant time each."""
        if not key:
            return None
        candidate = key.encode("utf-8")
        found = None
        for write_key, name in self._keys:
            if hmac.compare_digest(candidate, write_key):
                found = name
        return found

    def _unauthorized(self) -> Response:
        return reject(
            self._metrics,
            UNKNOWN_SOURCE,
            "auth",
            error_response(401, "unauthorized", "unknown or missing write key"),
        )


def _basic_user(credentials: str) -> str | None:
    """The user part of Basic credentials: the write key (without a colon, all of it)."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded.partition(":")[0]


def tracking_routes(config: Config, sink: IngestSink, metrics: Metrics, clock: Clock) -> list[Route]:
    return TrackingApi(config, sink, metrics, clock).routes()
