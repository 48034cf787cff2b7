"""create_app(...): the HTTP surface of `segcrit serve` and the lifespan that runs the workers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
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
from segcrit.metrics import Metrics
from segcrit.runtime import Runtime
from segcrit.sources import ingest_routes
from segcrit.store.base import AcceptResult
from segcrit.store.sqlite import SqliteStore


class WakingSink:
    """The store as the ingest sink, waking the processor after each commit."""

    def __init__(self, store: SqliteStore, runtime: Runtime | None) -> None:
        self.store = store
        self.runtime = runtime

    async def accept(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> AcceptResult:
        result = await self.store.accept(source, messages, received_at)
        if self.runtime is not None and result.stored:
            self.runtime.wake()
        return result

    def backlog(self) -> int:
        return self.store.backlog()


def create_app(
    config: Config,
    store: SqliteStore,
    *,
    metrics: Metrics | None = None,
    clock: Clock | None = None,
    run_workers: bool = True,
) -> Starlette:
    metrics = metrics or Metrics()
    clock = clock or SystemClock()
    runtime = Runtime(store, config, metrics, clock) if run_workers else None
    admin = build_admin(config, store, metrics, clock)  # None without server.admin_token
    metrics.backlog.set_function(store.backlog)
    metrics.changes_pending.set_function(store.pending_count)
    metrics.dead_letters.set_function(store.dead_letter_count)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = {"store": store.ping(), "workers": runtime is None or runtime.alive()}
        status = 200 if all(checks.values()) else 503
        return JSONResponse({"ready": status == 200, "checks": checks}, status_code=status)

    async def metrics_endpoint(request: Request) -> Response:
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
        *ingest_routes(config, WakingSink(store, runtime), metrics, clock),
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
