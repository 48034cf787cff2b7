"""The admin web UI, `/admin`: server-rendered pages (Jinja2) with htmx for the live parts.

    /admin/login                      the token, once: sets the session cookie
    /admin                            overview: backlog, lag, dead letters, 24 h charts (live numbers)
    /admin/audiences[/{name}]         audiences; one audience with its calls, Resync, Replay
    /admin/deliveries                 recent Criteo calls (filterable), dead letters, set-aside events
    /admin/events                     the live debugger: latest accepted and refused messages
    /admin/profiles?id=...            a person by userId, anonymousId or email; Forget
    /admin/preview                    what a message would do (paste one or pick a recent one)
    /admin/config                     the effective config, secrets masked, with `check` warnings
    /admin/static/...                 htmx, uPlot, our CSS and JS: everything served from here

Every page needs the session (or a Bearer token); without one, a page redirects to the login
form, an htmx request is told to go there (`HX-Redirect`). Actions (POST) need the session's CSRF
token, which the pages send in `X-CSRF-Token` (htmx `hx-headers`) or as a form field. Pages are
built on the thread pool (`views` reads the store) and sent with a strict Content-Security-Policy:
scripts and styles only from /admin/static.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs, quote, urlencode

import jinja2
import orjson
import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from segcrit import __version__
from segcrit.admin import views
from segcrit.admin.auth import COOKIE_NAME, CSRF_FIELD, CSRF_HEADER, SESSION_SECS, AdminAuth, Caller
from segcrit.admin.views import AdminContext
from segcrit.sources.limits import Disconnected, RequestError, read_body

MAX_FORM_BYTES: Final = 200_000
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
PAGE_HEADERS: Final = {
    "content-security-policy": CSP,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
NAV: Final = (
    ("overview", "/admin", "Overview"),
    ("audiences", "/admin/audiences", "Audiences"),
    ("deliveries", "/admin/deliveries", "Deliveries"),
    ("events", "/admin/events", "Events"),
    ("profiles", "/admin/profiles", "Profiles"),
    ("preview", "/admin/preview", "Preview"),
    ("config", "/admin/config", "Config"),
)


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(0.0, time.time() - ts)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("segcrit.admin", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=_when, ago=_ago, pretty=_pretty, number=_number, urlquote=lambda s: quote(str(s), safe=""))
    return env


class Pages:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self.env = _environment()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin", self.overview, methods=["GET"]),
            Route("/admin/", self.overview, methods=["GET"]),
            Route("/admin/login", self.login_form, methods=["GET"]),
            Route("/admin/login", self.login, methods=["POST"]),
            Route("/admin/logout", self.logout, methods=["POST"]),
            Route("/admin/overview/numbers", self.overview_numbers, methods=["GET"]),
            Route("/admin/audiences", self.audiences, methods=["GET"]),
            Route("/admin/audiences/{name:path}/resync", self.resync, methods=["POST"]),
            Route("/admin/audiences/{name:path}", self.audience, methods=["GET"]),
            Route("/admin/deliveries", self.deliveries, methods=["GET"]),
            Route("/admin/dead-letters/replay", self.replay_dead_letters, methods=["POST"]),
            Route("/admin/failed-events/replay", self.replay_failed_events, methods=["POST"]),
            Route("/admin/events", self.events, methods=["GET"]),
            Route("/admin/events/rows", self.event_rows, methods=["GET"]),
            Route("/admin/profiles", self.profiles, methods=["GET"]),
            Route("/admin/profiles/forget", self.forget, methods=["POST"]),
            Route("/admin/preview", self.preview_form, methods=["GET"]),
            Route("/admin/preview", self.preview, methods=["POST"]),
            Route("/admin/config", self.config, methods=["GET"]),
            Mount("/admin/static", StaticFiles(packages=[("segcrit.admin", "static")]), name="admin_static"),
        ]

    # ------------------------------------------------------------------ plumbing

    def _caller(self, request: Request) -> Caller | None:
        return self.ctx.auth.caller(request.headers, request.cookies, self.ctx.clock.now())

    def _render(self, template: str, caller: Caller | None, status: int = 200, **data: Any) -> HTMLResponse:
        body = self.env.get_template(template).render(
            csrf_token=caller.csrf_token if caller else None,
            csrf_header=CSRF_HEADER,
            csrf_field=CSRF_FIELD,
            nav=NAV,
            version=__version__,
            **data,
        )
        return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)

    @staticmethod
    def _to_login(request: Request) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": "/admin/login"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/admin/login?" + urlencode({"next": target}), status_code=303)

    async def _page(self, request: Request, template: str, build: Callable[[], dict[str, Any]]) -> Response:
        caller = self._caller(request)
        if caller is None:
            return self._to_login(request)
        data = await run_in_threadpool(build)
        if data.get("not_found"):
            return self._render("not_found.html", caller, status=404, page="", what=data["not_found"])
        return self._render(template, caller, **data)

    async def _checked(self, request: Request) -> tuple[Caller, dict[str, str]] | Response:
        """A POST from a page: (caller, form) once the session (or token) and CSRF token are good."""
        caller = self._caller(request)
        if caller is None:
            return self._to_login(request)
        try:
            form = {k: v[-1] for k, v in parse_qs((await read_body(request, MAX_FORM_BYTES)).decode()).items()}
        except (RequestError, Disconnected, UnicodeDecodeError):
            return self._render("_notice.html", caller, status=400, ok=False, message="the form could not be read")
        supplied = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
        if not AdminAuth.csrf_ok(caller, "POST", supplied):
            return self._render("_notice.html", caller, status=403, ok=False, message="missing or stale CSRF token")
        return caller, form

    async def _action(
        self, request: Request, build: Callable[[dict[str, str]], dict[str, Any]], template: str = "_notice.html"
    ) -> Response:
        """A checked POST: `build(form)` runs on the thread pool, its answer is rendered."""
        checked = await self._checked(request)
        if isinstance(checked, Response):
            return checked
        caller, form = checked
        data = await run_in_threadpool(build, form)
        return self._render(template, caller, status=data.pop("status", 200), **data)

    # ------------------------------------------------------------------ login

    async def login_form(self, request: Request) -> Response:
        if self._caller(request) is not None:
            return RedirectResponse(_next(request.query_params.get("next")), status_code=303)
        target = _next(request.query_params.get("next"))
        return self._render("login.html", None, page="login", failed=False, next=target)

    async def login(self, request: Request) -> Response:
        try:
            form = {k: v[-1] for k, v in parse_qs((await read_body(request, MAX_FORM_BYTES)).decode()).items()}
        except (RequestError, Disconnected, UnicodeDecodeError):
            form = {}
        token = form.get("token", "")
        target = _next(form.get("next"))
        if not token or not self.ctx.auth.token_ok(token):
            return self._render("login.html", None, status=401, page="login", failed=True, next=target)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            self.ctx.auth.new_session(self.ctx.clock.now()),
            max_age=SESSION_SECS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        checked = await self._checked(request)
        if isinstance(checked, Response):
            return checked
        response = RedirectResponse("/admin/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
        return response

    # ------------------------------------------------------------------ pages

    async def overview(self, request: Request) -> Response:
        def build() -> dict[str, Any]:
            summary = views.overview(self.ctx)
            return {
                "page": "overview",
                "o": summary,
                "audiences": views.audiences(self.ctx).audiences,
                "letters": views.dead_letters(self.ctx, 5).dead_letters,
            }

        return await self._page(request, "overview.html", build)

    async def overview_numbers(self, request: Request) -> Response:
        return await self._page(request, "_overview_numbers.html", lambda: {"o": views.overview(self.ctx)})

    async def audiences(self, request: Request) -> Response:
        return await self._page(
            request, "audiences.html", lambda: {"page": "audiences", "audiences": views.audiences(self.ctx).audiences}
        )

    async def audience(self, request: Request) -> Response:
        name = request.path_params["name"]

        def build() -> dict[str, Any]:
            found = views.audience_detail(self.ctx, name, calls=50)
            if found is None:
                return {"not_found": f"audience {name!r}"}
            return {"page": "audiences", "a": found}

        return await self._page(request, "audience.html", build)

    async def resync(self, request: Request) -> Response:
        name = request.path_params["name"]

        def build(form: dict[str, str]) -> dict[str, Any]:
            queued = views.request_resync(self.ctx, name)
            if queued is None:
                return {"status": 404, "ok": False, "message": f"unknown audience {name!r}"}
            return {"ok": True, "message": f"resync of {name} queued: the delivery thread runs it next"}

        return await self._action(request, build)

    async def deliveries(self, request: Request) -> Response:
        params = request.query_params
        endpoint = params.get("endpoint") or None
        audience = params.get("audience") or None
        failed = {"1": True, "0": False}.get(params.get("failed", ""))
        before = _int(params.get("before"))

        def build() -> dict[str, Any]:
            found = views.deliveries(self.ctx, endpoint=endpoint, audience=audience, failed=failed, before=before)
            return {
                "page": "deliveries",
                "d": found,
                "letters": views.dead_letters(self.ctx, 50),
                "failed_events": views.failed_events(self.ctx, 20),
                "filters": {"endpoint": endpoint or "", "audience": audience or "", "failed": params.get("failed", "")},
                "older": found.calls[-1].id if len(found.calls) == 50 else None,
            }

        return await self._page(request, "deliveries.html", build)

    async def replay_dead_letters(self, request: Request) -> Response:
        def build(form: dict[str, str]) -> dict[str, Any]:
            audience = form.get("audience") or None
            replayed = views.replay_dead_letters(self.ctx, audience).replayed
            what = f" of {audience}" if audience else ""
            return {"ok": True, "message": f"{replayed} dead letter(s){what} put back on the delivery queue"}

        return await self._action(request, build)

    async def replay_failed_events(self, request: Request) -> Response:
        def build(form: dict[str, str]) -> dict[str, Any]:
            replayed = views.replay_failed_events(self.ctx).replayed
            return {"ok": True, "message": f"{replayed} set-aside event(s) put back on the inbox"}

        return await self._action(request, build)

    def _samples(self, request: Request) -> dict[str, Any]:
        source = request.query_params.get("source") or None
        accepted = {"1": True, "0": False}.get(request.query_params.get("accepted", ""))
        found = views.samples(self.ctx, source=source, accepted=accepted, limit=50)
        return {
            "page": "events",
            "samples": found.samples,
            "sources": sorted(set(found.sources) | set(views.source_names(self.ctx.config))),
            "filters": {"source": source or "", "accepted": request.query_params.get("accepted", "")},
        }

    async def events(self, request: Request) -> Response:
        return await self._page(request, "events.html", lambda: self._samples(request))

    async def event_rows(self, request: Request) -> Response:
        return await self._page(request, "_event_rows.html", lambda: self._samples(request))

    async def profiles(self, request: Request) -> Response:
        wanted = (request.query_params.get("id") or "").strip()[:512]

        def build() -> dict[str, Any]:
            found = views.profile_lookup(self.ctx, wanted) if wanted else None
            return {"page": "profiles", "wanted": wanted, "lookup": found}

        return await self._page(request, "profiles.html", build)

    async def forget(self, request: Request) -> Response:
        def build(form: dict[str, str]) -> dict[str, Any]:
            wanted = (form.get("id") or "").strip()[:512]
            if not wanted:
                return {"status": 400, "ok": False, "message": "which person? give a userId, anonymousId or email"}
            return {"ok": True, "message": views.forget(self.ctx, wanted).message}

        return await self._action(request, build)

    async def preview_form(self, request: Request) -> Response:
        def build() -> dict[str, Any]:
            recent = views.samples(self.ctx, accepted=True, limit=20).samples
            return {"page": "preview", "recent": recent}

        return await self._page(request, "preview.html", build)

    async def preview(self, request: Request) -> Response:
        def build(form: dict[str, str]) -> dict[str, Any]:
            sample = _int(form.get("sample"))
            if sample is not None:
                result = views.preview_sample(self.ctx, sample)
                if result is None:
                    return {"status": 404, "result": None, "error": "that message is no longer kept"}
                return {"result": result, "error": None}
            try:
                message = orjson.loads(form.get("message") or "")
            except orjson.JSONDecodeError:
                return {"status": 400, "result": None, "error": "the message is not valid JSON"}
            return {"result": views.preview(self.ctx, message), "error": None}

        return await self._action(request, build, "_preview_result.html")

    async def config(self, request: Request) -> Response:
        def build() -> dict[str, Any]:
            view = views.config_view(self.ctx)
            text = yaml.safe_dump(view.config, sort_keys=False, allow_unicode=True)
            return {"page": "config", "yaml": text, "warnings": view.warnings}

        return await self._page(request, "config.html", build)


def _next(target: str | None) -> str:
    """Where to go after logging in: an /admin page only (never another site)."""
    if target and target.startswith("/admin") and not target.startswith("//") and "\\" not in target:
        return target
    return "/admin"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def page_routes(ctx: AdminContext) -> list[BaseRoute]:
    return Pages(ctx).routes()
