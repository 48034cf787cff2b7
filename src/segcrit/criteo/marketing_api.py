"""One call to Criteo's Marketing API (`criteo.api_url`), as every endpoint client makes it.

`MarketingApi.exchange()` waits for the shared rate limiter, carries a bearer token from the shared
`TokenProvider`, reports the response to the limiter and to `criteo_calls{endpoint,status}`, and on
a 401 fetches a new token and tries once more at once. What the answer means is decided by
`segcrit.criteo.errors.classify`; `Reply.error()` is the exception that goes with it.

The audience client (`client.CriteoClient`) and the catalog client (`catalog_client.CatalogClient`)
sit on one `MarketingApi`, so all their calls share one token and one limiter (SPEC §7, §9).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from segcrit.clock import Clock
from segcrit.config import CriteoConfig
from segcrit.criteo.auth import TokenProvider
from segcrit.criteo.errors import (
    NO_RESPONSE,
    Decision,
    RetryableError,
    classify,
    error_codes,
    error_for,
    no_answer,
)
from segcrit.errors import CriteoError
from segcrit.metrics import Metrics
from segcrit.ratelimit import RateLimiter, reset_at

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class MarketingApi:
    def __init__(
        self,
        config: CriteoConfig,
        http: httpx.AsyncClient,
        limiter: RateLimiter,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        tokens: TokenProvider | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self._http = http
        self._limiter = limiter
        self.tokens = tokens or TokenProvider(config, http, limiter, clock, metrics)

    def url(self, path: str) -> str:
        """`criteo.api_url` + a path whose parameters are already filled in."""
        return self.config.api_url + path

    async def call(
        self,
        endpoint: str,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        segment_id: str | None = None,
    ) -> Any:
        """Send one request; its parsed JSON body, or the exception `classify` decides."""
        reply = await self.exchange(endpoint, method, url, json=json, params=params, segment_id=segment_id)
        if reply.decision is not Decision.OK:
            raise reply.error()
        return reply.body

    async def exchange(
        self,
        endpoint: str,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        segment_id: str | None = None,
    ) -> Reply:
        """Send one request, again at once with a new token if Criteo refused the first one."""
        for attempt in (1, 2):
            token = await self.tokens.token()
            await self._limiter.acquire()
            started = time.perf_counter()
            try:
                response = await self._http.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                    timeout=self.config.timeout_secs,
                )
            except httpx.TransportError as exc:
                # Timeouts included. The exception is dropped (`from None`): its request holds the token.
                self.count(endpoint, NO_RESPONSE)
                self.record(endpoint, method, url, NO_RESPONSE, started, json, None, segment_id)
                log.warning("criteo call failed", extra={"endpoint": endpoint, "error": type(exc).__name__})
                raise no_answer(f"Criteo {endpoint}", exc) from None
            now = self.clock.now()
            status = response.status_code
            await self._limiter.observe(status, response.headers, now)
            self.count(endpoint, status)
            body = json_body(response)
            self.record(endpoint, method, url, status, started, json, body, segment_id)
            decision = classify(status, error_codes(body))
            if decision is Decision.REFRESH_TOKEN:
                self.tokens.invalidate(token)
                if attempt == 1:
                    log.info("criteo token rejected, refreshing", extra={"endpoint": endpoint, "status": status})
                    continue
            return Reply(endpoint, status, body, decision, retry_at(response, now), segment_id)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def count(self, endpoint: str, status: int) -> None:
        if self.metrics is not None:
            self.metrics.criteo_calls.labels(endpoint=endpoint, status=str(status)).inc()

    def record(
        self,
        endpoint: str,
        method: str,
        url: str,
        status: int,
        started: float,
        request: Any,
        answer: Any,
        segment_id: str | None,
    ) -> None:
        """Keep the call for the admin UI's recent calls (masked there; nothing when it is off)."""
        if self.metrics is not None:
            self.metrics.activity.call(
                endpoint,
                method,
                url,
                status,
                time.perf_counter() - started,
                request=request,
                answer=answer,
                segment_id=segment_id,
            )


@dataclass(frozen=True, slots=True)
class Reply:
    """A Criteo answer with its decision; `error()` is the exception for a failed one."""

    endpoint: str
    status: int
    body: Any
    decision: Decision
    retry_at: float | None
    segment_id: str | None

    def error(self) -> CriteoError:
        return error_for(
            self.decision,
            status=self.status,
            body=self.body,
            endpoint=self.endpoint,
            retry_at=self.retry_at,
            segment_id=self.segment_id,
        )


def retry_at(response: httpx.Response, now: float) -> float | None:
    """When a 429 says a call may be made again (`x-ratelimit-reset`), else None."""
    if response.status_code == 429:
        return reset_at(response.headers, now)
    return None


def json_body(response: httpx.Response) -> Any:
    # A 429 body is undocumented (possibly empty); a 5xx may be HTML from a proxy.
    try:
        return response.json()
    except ValueError:
        return None


def parse_answer(model: type[M], body: Any, endpoint: str) -> M:
    """A 2xx body as `model`; one we cannot read is Criteo's (or a proxy's) fault: RetryableError.

    The call may have worked, and resending is harmless by design, so retry rather than dead-letter.
    """
    try:
        return model.model_validate(body)
    except ValidationError:
        log.warning("criteo answer unreadable", extra={"endpoint": endpoint})
        raise RetryableError(f"Criteo {endpoint} answered 2xx with an unexpected body", status=200) from None
