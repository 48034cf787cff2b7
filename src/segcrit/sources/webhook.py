"""Segment webhooks (Webhooks classic and Actions, Engage audiences): `/webhooks/{source_name}`.

`POST`, `PUT` or `PATCH`; the body is one Segment message or a JSON array of them (Actions
batching). `X-Signature` is the hex HMAC-SHA1 of the body keyed with the source's shared_secret.
For an array Segment signs only `JSON.stringify(payload[0])`, so we hash the raw bytes of element
0 as sent (re-serialising parsed JSON does not reproduce JavaScript's number and string forms).
The other elements of an array are therefore *not* authenticated: that is Segment's design.

A source may also set `bearer_token` (SPEC §3.2): then `Authorization: Bearer <token>` (a custom
header of the Webhooks (Actions) destination) is required as well, and it authenticates the whole
body. Without one, a `delete` is honoured only where the signature covers it (a single message, or
element 0): a delete at a later position is rejected with its index and reason `unsigned delete`
(counted as `unsigned_delete`), the rest of the batch kept, since an unauthenticated element could
otherwise erase anyone.

A missing or wrong signature or bearer token, or a source name that is not a configured webhook
source, is the same `401` (so the answer does not reveal which sources exist or which check
failed), stores nothing and is counted with reason `signature` or `bearer_token`. Limits, dedupe
and backpressure are those of the Tracking API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Final

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
    bearer_ok,
    error_response,
    method_not_allowed,
    reject,
    request_error_response,
)
from segcrit.sources.limits import Disconnected, RequestError, parse_json, read_body
from segcrit.sources.validate import WEBHOOK_TYPES, MessageRules, Prepared, prepare_messages
from segcrit.store.base import IngestSink

METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_JSON_WHITESPACE: Final = " \t\r\n"
_JSON_WHITESPACE_BYTES: Final = _JSON_WHITESPACE.encode("ascii")
_DECODER: Final = json.JSONDecoder()
UNSIGNED_DELETE: Final = (
    "unsigned delete: only element 0 of a batch is covered by the signature; "
    "set the source's bearer_token to accept deletes at any position"
)


def signed_part(body: bytes) -> bytes | None:
    """The bytes Segment signs: the whole body, or element 0 of an array (None if it has none)."""
    stripped = body.lstrip(_JSON_WHITESPACE_BYTES)
    if not stripped.startswith(b"["):
        return body
    try:
        text = stripped.decode("utf-8")
    except UnicodeDecodeError:
        return None
    start = len(text) - len(text[1:].lstrip(_JSON_WHITESPACE))
    try:
        _, end = _DECODER.raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError):
        return None
    # Strict UTF-8 decoding round-trips exactly, so these are the bytes that were sent.
    return text[start:end].encode("utf-8")


def signature_ok(secret: bytes, body: bytes, signature: str) -> bool:
    """Constant-time check of `X-Signature` against the body (see `signed_part`)."""
    signed = signed_part(body)
    if signed is None:
        return False
    expected = hmac.new(secret, signed, hashlib.sha1).hexdigest().encode("ascii")
    # Header values arrive latin-1 decoded, so this encoding never fails.
    return hmac.compare_digest(expected, signature.strip().lower().encode("latin-1"))


class WebhookReceiver(Receiver):
    """The endpoint, holding what it needs from the config, ready-made."""

    def __init__(self, config: Config, sink: IngestSink, metrics: Metrics, clock: Clock) -> None:
        rules = MessageRules(
            types=WEBHOOK_TYPES,
            max_message_bytes=config.server.max_message_bytes,
            keep_received_at=True,
            phone_region=config.identity.phone_region,
            on_email=email_listener(config),
        )
        super().__init__(
            sink,
            metrics,
            clock,
            max_request_bytes=config.server.webhook_max_request_bytes,
            max_batch=config.server.webhook_max_batch_messages,
            max_backlog=config.ingest.max_backlog,
            rules=rules,
        )
        self._secrets = {
            source.name: source.shared_secret.get_secret_value().encode("utf-8")
            for source in config.sources
            if source.type == "webhook" and source.shared_secret is not None
        }
        self._tokens = {
            source.name: source.bearer_token.get_secret_value()
            for source in config.sources
            if source.type == "webhook" and source.bearer_token is not None
        }

    def routes(self) -> list[Route]:
        return [Route("/webhooks/{source_name}", self.receive, methods=EVERY_METHOD, name="webhook")]

    async def receive(self, request: Request) -> Response:
        if request.method not in METHODS:
            return method_not_allowed(", ".join(sorted(METHODS)))
        received_at = self._clock.now()
        name = request.path_params["source_name"]
        secret = self._secrets.get(name)
        signature = request.headers.get("x-signature")
        if secret is None or not signature:
            return self._unauthorized(name if secret is not None else UNKNOWN_SOURCE)
        token = self._tokens.get(name)
        if token is not None and not bearer_ok(request, token):
            return self._unauthorized(name, "bearer_token")

        busy = backlog_response(self._sink, self._max_backlog, self._metrics, name)
        if busy is not None:
            return busy

        try:
            raw = await read_body(request, self._max_request_bytes)
        except RequestError as error:
            return reject(self._metrics, name, error.code, request_error_response(error))
        except Disconnected:
            return error_response(400, "disconnected", "client disconnected")
        if not signature_ok(secret, raw, signature):
            return self._unauthorized(name)
        # The body's objects live only inside this call: the commit is awaited without them.
        return await answered(self._take(raw, name, token is not None, received_at))

    def _take(self, raw: bytes, name: str, bearer: bool, received_at: float) -> Answer:
        """Parse, check and prepare the signed body, and hand its messages to the store."""
        try:
            body = parse_json(raw)
        except RequestError as error:
            return reject(self._metrics, name, error.code, request_error_response(error))
        if isinstance(body, dict):
            prepared = prepare_messages([body], self._rules, received_at=received_at)
            return self._commit(name, prepared, received_at, single=True, items=[body])
        if not isinstance(body, list):
            return self._bad_body(name, "body must be a JSON object or array")
        if len(body) > self._max_batch:
            return self._too_many(name)
        if bearer:
            prepared = prepare_messages(body, self._rules, received_at=received_at)
        else:
            prepared = self._prepare_signed_deletes_only(body, received_at)
        return self._commit(name, prepared, received_at, single=False, items=body)

    def _prepare_signed_deletes_only(self, items: list[Any], received_at: float) -> Prepared:
        """prepare_messages, with every `delete` past element 0 rejected instead (SPEC §3.2)."""
        kept = [i for i, item in enumerate(items) if i == 0 or not _is_delete(item)]
        prepared = prepare_messages([items[i] for i in kept], self._rules, received_at=received_at)
        # Rejections name positions in the list prepared: give them back their place in the batch.
        rejected = [{**item, "index": kept[item["index"]]} for item in prepared.rejected]
        rejected += [{"index": i, "reason": UNSIGNED_DELETE} for i in sorted(set(range(len(items))) - set(kept))]
        prepared.rejected = sorted(rejected, key=lambda item: int(item["index"]))
        return prepared

    def _unauthorized(self, source: str, reason: str = "signature") -> Response:
        return reject(
            self._metrics,
            source,
            reason,
            error_response(401, "unauthorized", "missing or invalid signature"),
        )


def _is_delete(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "delete"


def webhook_routes(config: Config, sink: IngestSink, metrics: Metrics, clock: Clock) -> list[Route]:
    return WebhookReceiver(config, sink, metrics, clock).routes()
