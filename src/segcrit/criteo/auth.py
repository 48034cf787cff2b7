"""Criteo OAuth client-credentials tokens: fetched once per lifetime, shared by every caller.

The token is refreshed `refresh_margin_secs` (60 s) before it expires, or at once after Criteo
rejects it (`invalidate`). Concurrent callers wait for one in-flight fetch instead of each
fetching their own, so a process makes one token call per token lifetime (SPEC §9). The client
secret only ever leaves in the form body of the token call: never in logs or exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from pydantic import ValidationError

from segcrit.clock import Clock
from segcrit.config import CriteoConfig
from segcrit.criteo.constants import GRANT_TYPE_CLIENT_CREDENTIALS, TOKEN_PATH
from segcrit.criteo.errors import NO_RESPONSE, CredentialsError, Decision, RetryableError, classify
from segcrit.criteo.models import TokenResponse
from segcrit.metrics import Metrics
from segcrit.ratelimit import RateLimiter, reset_at

log = logging.getLogger(__name__)

TOKEN_ENDPOINT = "token"  # the `endpoint` label of criteo_calls
REFRESH_MARGIN_SECS = 60.0


class TokenProvider:
    def __init__(
        self,
        config: CriteoConfig,
        http: httpx.AsyncClient,
        limiter: RateLimiter,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        refresh_margin_secs: float = REFRESH_MARGIN_SECS,
    ) -> None:
        self._config = config
        self._http = http
        self._limiter = limiter
        self._clock = clock
        self._metrics = metrics
        self._margin = refresh_margin_secs
        self._token: str | None = None
        self._refresh_at = 0.0  # clock.monotonic() after which the cached token is not used
        self._lock = asyncio.Lock()
        self.fetches = 0  # token calls made (answered or not), for tests and `status`

    def __repr__(self) -> str:
        return f"TokenProvider(client_id={self._config.client_id!r}, cached={self._token is not None})"

    async def token(self) -> str:
        """A valid bearer token, fetching one only when the cached one is missing or near expiry."""
        cached = self._valid()
        if cached is not None:
            return cached
        async with self._lock:
            # Whoever held the lock before us may have fetched one already.
            cached = self._valid()
            if cached is not None:
                return cached
            return await self._fetch()

    def invalidate(self, rejected: str | None = None) -> None:
        """Drop the cached token after Criteo refused it.

        With `rejected`, only if it is still the cached one: when several calls fail with the same
        old token, the first fetches a new one and the others must not throw that away.
        """
        if rejected is None or rejected == self._token:
            self._token = None
            self._refresh_at = 0.0

    def _valid(self) -> str | None:
        if self._token is not None and self._clock.monotonic() < self._refresh_at:
            return self._token
        return None

    async def _fetch(self) -> str:
        url = self._config.api_url + TOKEN_PATH
        form = {
            "client_id": self._config.client_id,
            "client_secret": self._config.client_secret.get_secret_value(),
            "grant_type": GRANT_TYPE_CLIENT_CREDENTIALS,
        }
        await self._limiter.acquire()
        self.fetches += 1
        started = time.perf_counter()
        try:
            response = await self._http.post(
                url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._config.timeout_secs,
            )
        except httpx.TransportError as exc:
            # `exc` names the URL only; the form (with the secret) is not in its message.
            self._count(NO_RESPONSE, url, started)
            log.warning("criteo token call failed", extra={"error": type(exc).__name__})
            # A token call changes nothing that matters: whatever its fate, no call it stood for was sent.
            raise RetryableError(f"Criteo token call failed: {type(exc).__name__}", maybe_applied=False) from None
        now = self._clock.now()
        await self._limiter.observe(response.status_code, response.headers, now)
        self._count(response.status_code, url, started)
        body = _json(response)
        decision = classify(response.status_code, [])
        if decision is Decision.OK:
            return self._store(body)
        if decision is Decision.RETRY:
            retry_at = reset_at(response.headers, now) if response.status_code == 429 else None
            raise RetryableError(
                f"Criteo token call answered {response.status_code}",
                retry_at=retry_at,
                status=response.status_code,
                maybe_applied=False,
            )
        oauth_error = body.get("error") if isinstance(body, dict) else None
        log.error(
            "criteo refused the client credentials",
            extra={"status": response.status_code, "oauth_error": oauth_error},
        )
        raise CredentialsError(response.status_code, oauth_error if isinstance(oauth_error, str) else None)

    def _store(self, body: Any) -> str:
        try:
            parsed = TokenResponse.model_validate(body)
        except ValidationError:
            # A 200 we cannot read is Criteo's fault, not ours: retry later.
            raise RetryableError("Criteo token response is not a token", status=200, maybe_applied=False) from None
        lifetime = float(parsed.expires_in)
        # A short-lived token (an emulator setting) must not be refreshed on every call.
        margin = min(self._margin, lifetime / 2)
        self._token = parsed.access_token
        self._refresh_at = self._clock.monotonic() + lifetime - margin
        log.info("criteo token fetched", extra={"expires_in": lifetime})
        return parsed.access_token

    def _count(self, status: int, url: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.criteo_calls.labels(endpoint=TOKEN_ENDPOINT, status=str(status)).inc()
            # For the admin's recent calls: status and time only, never the form or the answer
            # (they hold the client secret and the token).
            self._metrics.activity.call(TOKEN_ENDPOINT, "POST", url, status, time.perf_counter() - started)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
