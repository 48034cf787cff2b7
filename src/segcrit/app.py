"""create_app(...): the HTTP surface of `segcrit serve` and the lifespan that runs the workers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Collection, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from segcrit.admin.app import build_admin
from segcrit.clock import Clock, SystemClock
from segcrit.config import Config
from segcrit.domain import AcceptResult
from segcrit.metrics import HeldAudiences, Metrics
from segcrit.runtime import ROLES, Runtime
from segcrit.sources import ingest_routes
from segcrit.sources.accept import bearer_ok, error_response
from segcrit.store.base import IngestSink, Store


class WakingSink:
    """The store as the ingest sink, waking the processor after each commit."""

    def __init__(self, store: IngestSink, runtime: Runtime | None) -> None:
        self.store = store
        self.runtime = runtime

    def submit(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> Awaitable[AcceptResult]:
        return self._waking(self.store.submit(source, messages, received_at))

    async def _waking(self, pending: Awaitable[AcceptResult]) -> AcceptResult:
        result = await pending
        if self.runtime is not None and result.stored:
            self.runtime.wake()
        return result

    def backlog(self) -> int:
        return self.store.backlog()


def create_app(
    config: Config,
    store: Store,
    *,
    metrics: Metrics | None = None,
    clock: Clock | None = None,
    run_workers: bool = True,
    roles: Collection[str] = ROLES,
    processor_child: bool = False,
) -> Starlette:
    """The app of one `segcrit serve` process running `roles` (SPEC §2, `--roles`): without
    `ingest` the ingest routes answer 503 (a misrouted request is retried by Segment, never lost)
    while /healthz, /readyz, /metrics and the admin stay; the other roles are threads (Runtime)."""
    metrics = metrics or Metrics()
    clock = clock or SystemClock()
    roles = tuple(role for role in ROLES if role in roles)
    runtime = (
        Runtime(store, config, metrics, clock, roles=roles, processor_child=processor_child) if run_workers else None
    )
    store_kind = "sqlite" if config.store.startswith("sqlite") else "postgresql"
    # Each read is constant work (running totals, one bounded index read): scrapes never scan.
    admin = build_admin(config, store, metrics, clock)  # None without server.admin_token
    metrics.backlog.set_function(store.backlog)
    metrics.changes_pending.set_function(store.pending_count)
    metrics.dead_letters.set_function(store.dead_letter_count)
    metrics.audiences_held.set_function(store.held_audience_count)
    metrics.registry.register(HeldAudiences(store.held_audiences))
    metrics_token = config.server.metrics_token

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        # The store must be reachable and able to write: a full disk turns ingest away (503).
        write_failure = store.write_failure()
        checks = {"store": write_failure is None and store.ping(), "workers": runtime is None or runtime.alive()}
        status = 200 if all(checks.values()) else 503
        body: dict[str, Any] = {
            "ready": status == 200,
            "checks": checks,
            "roles": list(roles),
            "store": store_kind,
            "pid": os.getpid(),  # which process answered (`serve --workers N` runs N on one port)
        }
        if write_failure is not None:
            body["store_error"] = write_failure
        return JSONResponse(body, status_code=status)

    async def metrics_endpoint(request: Request) -> Response:
        if metrics_token is not None and not bearer_ok(request, metrics_token.get_secret_value()):
            return error_response(401, "unauthorized", "missing or invalid bearer token")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime is not None:
            runtime.start()
        if admin is not None:
            admin.recorder.start()
        try:
            yield
        finally:
            if runtime is not None:
                runtime.stop()
            if admin is not None:
                admin.recorder.stop()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *(
            ingest_routes(config, WakingSink(store, runtime), metrics, clock)
            if "ingest" in roles
            else _not_ingesting(ingest_routes(config, WakingSink(store, runtime), metrics, clock))
        ),
        *(admin.routes if admin is not None else []),  # /admin, /api (SPEC §3.3)
    ]
    # Segment's browser SDK posts to /v1/* from the shop's pages on another origin (text/plain,
    # write key in the body); CORS lets those requests through. Nothing here uses cookies.
    middleware = [
        Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["POST", "OPTIONS"], allow_headers=["*"])
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    # Never redirect (SPEC §3.1): `requests` would turn a redirected POST into a GET or resend it.
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    app.state.store = store
    app.state.metrics = metrics
    app.state.admin = admin
    return app


def _not_ingesting(routes: Sequence[Route]) -> list[Route]:
    """The ingest routes of a process without the `ingest` role: same paths and methods, each
    answering 503 JSON. A 5xx, not a 404: Segment retries it, so a request a load balancer sent
    here by mistake is delivered later to a process that ingests, not dropped."""

    async def refuse(request: Request) -> Response:
        return error_response(
            503, "role_not_running", "this segcrit process does not run the ingest role", headers={"Retry-After": "1"}
        )

    return [Route(route.path, refuse, methods=sorted(route.methods or ()), name=route.name) for route in routes]
