"""Assembling the admin: its routes for segcrit's app, and the recorder its lifespan runs.

    admin = build_admin(config, store, metrics, clock)   # None without server.admin_token
    routes += admin.routes                               # /admin/..., /api/...
    admin.recorder.start() ... admin.recorder.stop()

Without `server.admin_token` nothing is mounted, so `/admin` and `/api` answer 404 (SPEC §3.3),
and nothing is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import URLPath
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import ASGIApp, Receive, Scope, Send

from segcrit.admin.api import ApiGate, build_api
from segcrit.admin.auth import AdminAuth
from segcrit.admin.pages import page_routes
from segcrit.admin.recorder import Recorder
from segcrit.admin.views import AdminContext
from segcrit.clock import Clock
from segcrit.config import Config
from segcrit.metrics import Metrics
from segcrit.store.base import Store


@dataclass
class Admin:
    context: AdminContext
    routes: list[BaseRoute]

    @property
    def recorder(self) -> Recorder:
        return self.context.recorder


def build_admin(config: Config, store: Store, metrics: Metrics, clock: Clock) -> Admin | None:
    if config.server.admin_token is None:
        return None
    token = config.server.admin_token.get_secret_value()
    recorder = Recorder(store, metrics, clock, phone_region=config.identity.phone_region)
    ctx = AdminContext(config, store, metrics, clock, AdminAuth(token), recorder)
    routes: list[BaseRoute] = [PrefixRoute("/api/", ApiGate(build_api(ctx), ctx)), *page_routes(ctx)]
    return Admin(ctx, routes)


class PrefixRoute(BaseRoute):
    """Every path under `prefix`, whole, to one ASGI app. Not a Mount: FastAPI sees the full path,
    so its document lists `/api/...` paths; and not a `{rest:path}` Route, whose pattern stops at
    a newline (an encoded one in an audience name must still get the API's JSON answer)."""

    def __init__(self, prefix: str, app: ASGIApp) -> None:
        self.prefix = prefix
        self.app = app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
