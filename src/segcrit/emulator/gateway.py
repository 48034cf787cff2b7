"""What Criteo's gateway does to every call before and after the endpoint itself.

In order: injected latency; API version check (404 unknown, 410 decommissioned); an injected 429
burst; authentication (bearer token, or the token call's own client_id); the per-application rate
limit; an injected server error; then the endpoint; then, for a call that changed something, an
injected lost answer (`apply_then_500`: the change stays, the answer becomes a server error).
Every answer carries the `x-ratelimit-*` headers and lands in the call log.

The Events API (`auth="none"`) is another host: no OAuth (the document names its account), and its
own rate limit for the host as a whole instead of the per-application 250/min. Latency, 429 bursts
and server errors are injected there too.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import Response

from segcrit.criteo.constants import (
    API_VERSION_PATTERN,
    CODE_INTERNAL_ERROR,
    CODE_RATE_LIMITED,
    CODE_TOKEN_EXPIRED,
    CODE_TOKEN_INVALID,
    HEADER_RATELIMIT_LIMIT,
    HEADER_RATELIMIT_REMAINING,
    HEADER_RATELIMIT_RESET,
)
from segcrit.emulator.problems import error_response, problem
from segcrit.emulator.ratelimit import RateDecision
from segcrit.emulator.state import CallRecord, ClientApp, EmulatorState, Endpoint

_VERSION = re.compile(API_VERSION_PATTERN)
_BEARER = re.compile(r"Bearer\s+(\S+)", re.IGNORECASE)


@dataclass(frozen=True)
class Call:
    """One call as an endpoint sees it: the request, its raw body, and who made it."""

    request: Request
    body: bytes
    client: ClientApp | None  # None on the token call of an unknown client and on the Events API

    @property
    def instance(self) -> str:
        return self.request.url.path

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not (an empty body is an empty object)."""
        return json.loads(self.body) if self.body.strip() else {}


Handler = Callable[[EmulatorState, Call], Response]
Auth = Literal["bearer", "form", "none"]


def criteo_endpoint(
    state: EmulatorState, endpoint: Endpoint, handler: Handler, auth: Auth = "bearer"
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running `handler` behind the gateway."""

    async def run(request: Request) -> Response:
        latency = state.latency_secs()
        if latency:
            await asyncio.sleep(latency)
        body = await request.body()
        client_id, response = _pass_gateway(state, handler, request, body=body, auth=auth)
        if endpoint.changes_state:
            response = _maybe_lose_answer(state, request, response)
        state.record_call(
            CallRecord(
                at=state.clock.now(),
                method=request.method,
                path=request.url.path,
                endpoint=endpoint,
                status=response.status_code,
                client_id=client_id,
                body=_masked(body) if auth == "form" else body,
            )
        )
        return response

    return run


def _pass_gateway(
    state: EmulatorState, handler: Handler, request: Request, *, body: bytes, auth: Auth
) -> tuple[str | None, Response]:
    """The answer to one call, and the client it was counted against (if any)."""
    instance = request.url.path
    version = request.path_params.get("version")
    if version is not None and not _VERSION.fullmatch(version):
        return None, _with_rate(state.rate_headers(None), _not_found(instance))
    if version in state.decommissioned_versions:
        gone = problem("deprecation", "version-decommissioned", "API version decommissioned", instance)
        return None, _with_rate(state.rate_headers(None), error_response(410, gone))

    if state.take_burst_429():
        limit = state.events_rate_limit_per_minute if auth == "none" else state.rate_limit_per_minute
        return None, _rate_limited(state.clock.now(), limit, instance)

    if auth == "none":
        return None, _pass_unauthenticated(state, handler, request, body)
    if auth == "bearer":
        client, refusal = _authenticate(state, request)
        if refusal is not None:
            return None, _with_rate(state.rate_headers(None), refusal)
    else:
        client = state.client(_form_client_id(body) or "")
    if client is None:  # the token call of an unknown client: the endpoint answers invalid_client
        return None, _with_rate(state.rate_headers(None), handler(state, Call(request, body, None)))

    decision = state.admit_call(client.client_id)
    if not decision.allowed:
        return client.client_id, _with_rate(decision, _rate_problem(instance))

    status = state.take_server_error()
    if status is not None:
        failure = problem("availability", CODE_INTERNAL_ERROR, "Internal error (injected fault)", instance)
        return client.client_id, _with_rate(decision, error_response(status, failure))

    return client.client_id, _with_rate(decision, handler(state, Call(request, body, client)))


def _maybe_lose_answer(state: EmulatorState, request: Request, response: Response) -> Response:
    """The endpoint's answer, or a server error in its place when a lost answer is due: only a
    success can be lost (a refused call changed nothing)."""
    if not 200 <= response.status_code < 300:
        return response
    status = state.take_lost_answer()
    if status is None:
        return response
    failure = problem(
        "availability", CODE_INTERNAL_ERROR, "Internal error after the change (injected fault)", request.url.path
    )
    lost = error_response(status, failure)
    for name in (HEADER_RATELIMIT_LIMIT, HEADER_RATELIMIT_REMAINING, HEADER_RATELIMIT_RESET):
        if name in response.headers:
            lost.headers[name] = response.headers[name]
    return lost


def _pass_unauthenticated(state: EmulatorState, handler: Handler, request: Request, body: bytes) -> Response:
    """The Events API: its host's rate limit and injected errors, then the endpoint."""
    instance = request.url.path
    decision = state.admit_event_call()
    if not decision.allowed:
        return _with_rate(decision, _rate_problem(instance))
    status = state.take_server_error()
    if status is not None:
        failure = problem("availability", CODE_INTERNAL_ERROR, "Internal error (injected fault)", instance)
        return _with_rate(decision, error_response(status, failure))
    return _with_rate(decision, handler(state, Call(request, body, None)))


def _authenticate(state: EmulatorState, request: Request) -> tuple[ClientApp | None, Response | None]:
    instance = request.url.path
    match = _BEARER.fullmatch(request.headers.get("authorization", "").strip())
    status, client = state.check_token(match.group(1)) if match else ("invalid", None)
    if status == "valid":
        return client, None
    if status == "expired":
        expired = problem("authorization", CODE_TOKEN_EXPIRED, "The authorization token has expired", instance)
        return None, error_response(401, expired)
    invalid = problem("authorization", CODE_TOKEN_INVALID, "The authorization header is invalid", instance)
    return None, error_response(401, invalid)


def _rate_limited(now: float, limit: int, instance: str) -> Response:
    # An injected burst: as if the window were full, with a slot freeing up in a second.
    return _with_rate(RateDecision(False, limit, 0, math.ceil(now) + 1), _rate_problem(instance))


def _rate_problem(instance: str) -> Response:
    return error_response(429, problem("quota", CODE_RATE_LIMITED, "Too many requests", instance))


def _not_found(instance: str) -> Response:
    return error_response(404, problem("validation", "not-found", "Resource not found", instance))


def _with_rate(decision: RateDecision, response: Response) -> Response:
    response.headers.update(decision.headers())
    return response


def _form_client_id(body: bytes) -> str | None:
    values = parse_qs(body.decode("utf-8", "replace")).get("client_id")
    return values[0] if values else None


def _masked(form_body: bytes) -> bytes:
    """The token form without its client secret, fit for the call log."""
    pairs = parse_qsl(form_body.decode("utf-8", "replace"))
    return urlencode([(k, "***" if k == "client_secret" else v) for k, v in pairs]).encode()
