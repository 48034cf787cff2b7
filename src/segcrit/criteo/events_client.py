"""The Events API client: one person's events, as one JSON document, POSTed to `criteo.events_url`.

    client = EventsClient(config.criteo.events_url, http, SlidingWindowLimiter(1_000, clock), clock, metrics)
    await client.send(document)     # returns once Criteo answered 2xx, else raises (see below)

The Events API is another host than the Marketing API: no OAuth (the document names its `account`),
and its own rate limiter, so conversions never eat into the 250 calls/min of the audiences (SPEC §7).

Criteo may answer 307 (or 308) to send the client to a regional data centre: the client then POSTs
the very same body to the `Location`, at most `max_redirects` times (Criteo's own server-side tag
follows 5), never from https down to http. Every hop is a call: it waits for the limiter and is
counted in `criteo_calls{endpoint="events",status}`.

What an answer means comes from the one table, `segcrit.criteo.errors.classify`: 429, 5xx, timeouts
and network errors raise RetryableError (`retry_at` from `x-ratelimit-reset` or `Retry-After`);
other answers raise PermanentError carrying Criteo's first error object, or the body text when the
answer is not in Criteo's error shape (the Events API documents none). A 401 means DEAD_LETTER here,
not "refresh the token": there is no token to refresh. A document that fails `EventsDocument` is
not sent at all: PermanentError with status None, for the dead letter.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from segcrit.clock import Clock
from segcrit.criteo.constants import EVENTS_MAX_REDIRECTS
from segcrit.criteo.errors import (
    NO_RESPONSE,
    Decision,
    PermanentError,
    RetryableError,
    classify,
    error_codes,
    no_answer,
    problems,
)
from segcrit.criteo.event_models import EventsDocument
from segcrit.criteo.marketing_api import json_body
from segcrit.metrics import Metrics
from segcrit.ratelimit import RateLimiter, reset_at

log = logging.getLogger(__name__)

EP_EVENTS = "events"  # the `endpoint` label of criteo_calls
# Criteo's server-side tag waits 3 s per hop; a little more for a server far from Criteo.
EVENTS_TIMEOUT_SECS = 10.0
REDIRECT_STATUSES = frozenset({307, 308})  # the ones that keep the method and the body
MAX_BODY_CHARS_KEPT = 1_000  # of a non-Criteo error body, for the dead letter
CODE_INVALID_DOCUMENT = "invalid-document"  # segcrit's own: refused before sending


class EventsClient:
    def __init__(
        self,
        events_url: str,
        http: httpx.AsyncClient,
        limiter: RateLimiter,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        timeout_secs: float = EVENTS_TIMEOUT_SECS,
        max_redirects: int = EVENTS_MAX_REDIRECTS,
    ) -> None:
        if not events_url.startswith(("http://", "https://")):
            raise ValueError("events_url must start with http:// or https://")
        self.events_url = events_url
        self._http = http
        self._limiter = limiter
        self._clock = clock
        self._metrics = metrics
        self._timeout_secs = timeout_secs
        self._max_redirects = max_redirects

    async def send(self, document: Mapping[str, Any]) -> None:
        """POST one Events API document; returning means Criteo accepted it (2xx)."""
        _check(document)
        body = orjson.dumps(dict(document))  # encoded once: every hop re-sends exactly these bytes
        url = httpx.URL(self.events_url)
        for hop in range(self._max_redirects + 1):
            response = await self._post(url, body)
            if response.status_code not in REDIRECT_STATUSES:
                self._raise_unless_accepted(response)
                return
            url = self._redirect_target(response, url, hop)
        raise AssertionError("unreachable")  # pragma: no cover - _redirect_target raises on the last hop

    async def _post(self, url: httpx.URL, body: bytes) -> httpx.Response:
        await self._limiter.acquire()
        started = time.perf_counter()
        try:
            response = await self._http.post(
                url,
                content=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self._timeout_secs,
                follow_redirects=False,  # followed here, body and all, hop by hop
            )
        except httpx.TransportError as exc:
            self._count(NO_RESPONSE)
            self._record(url, NO_RESPONSE, started, body, None)
            log.warning("criteo events call failed", extra={"endpoint": EP_EVENTS, "error": type(exc).__name__})
            raise no_answer(f"Criteo {EP_EVENTS}", exc) from None
        await self._limiter.observe(response.status_code, response.headers, self._clock.now())
        self._count(response.status_code)
        self._record(url, response.status_code, started, body, json_body(response))
        return response

    def _redirect_target(self, response: httpx.Response, url: httpx.URL, hop: int) -> httpx.URL:
        location = response.headers.get("location")
        status = response.status_code
        if not location:
            raise _permanent(status, "redirected without a Location")
        if hop >= self._max_redirects:
            raise _permanent(status, f"redirected more than {self._max_redirects} times")
        target = url.join(location)
        if target.scheme not in ("http", "https") or (url.scheme == "https" and target.scheme != "https"):
            # Hashed emails must not leave over plain http, nor anywhere but the web.
            raise _permanent(status, f"redirected to a {target.scheme} URL")
        log.info("criteo events redirected", extra={"endpoint": EP_EVENTS, "status": status, "host": target.host})
        return target

    def _raise_unless_accepted(self, response: httpx.Response) -> None:
        status = response.status_code
        body = json_body(response)
        decision = classify(status, error_codes(body))
        if decision is Decision.OK:
            return
        found = problems(body)
        problem = found[0] if found else {"body": response.text[:MAX_BODY_CHARS_KEPT]}
        code = problem.get("code")
        message = f"Criteo {EP_EVENTS} answered {status}" + (f" {code}" if isinstance(code, str) else "")
        if decision is Decision.RETRY:
            # x-ratelimit-reset comes with every answer; it says "not before" only on a 429.
            retry_at = _retry_at(response, self._clock.now()) if status == 429 else None
            raise RetryableError(message, retry_at=retry_at, status=status, problem=problem)
        # REFRESH_TOKEN (a 401) and RE_RESOLVE cannot be cured here: no token, no segment.
        raise PermanentError(message, status=status, problem=problem)

    def _count(self, status: int) -> None:
        if self._metrics is not None:
            self._metrics.criteo_calls.labels(endpoint=EP_EVENTS, status=str(status)).inc()

    def _record(self, url: httpx.URL, status: int, started: float, body: bytes, answer: Any) -> None:
        """Keep the call for the admin UI's recent calls (masked there; nothing when it is off)."""
        if self._metrics is not None and self._metrics.activity.enabled:
            self._metrics.activity.call(
                EP_EVENTS,
                "POST",
                str(url),
                status,
                time.perf_counter() - started,
                request=orjson.loads(body),
                answer=answer,
            )


def _check(document: Mapping[str, Any]) -> None:
    try:
        EventsDocument.model_validate(document)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        detail = f"{where}: {first['msg']}"
        raise PermanentError(
            f"Events API document refused before sending: {detail}",
            status=None,
            problem={"code": CODE_INVALID_DOCUMENT, "detail": detail},
        ) from None


def _permanent(status: int, what: str) -> PermanentError:
    return PermanentError(f"Criteo {EP_EVENTS} {what}", status=status, problem={"detail": what})


def _retry_at(response: httpx.Response, now: float) -> float | None:
    """When Criteo said to come back: `x-ratelimit-reset` (Marketing API style), else `Retry-After`."""
    found = reset_at(response.headers, now)
    if found is not None:
        return found
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            return email.utils.parsedate_to_datetime(raw).timestamp()
        except (TypeError, ValueError):
            return None
    return now + seconds if math.isfinite(seconds) and seconds >= 0 else None
