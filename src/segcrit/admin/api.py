"""The admin JSON API, `/api/*` (SPEC §3.3), a FastAPI application inside segcrit's Starlette app.

FastAPI validates every answer against the models of `segcrit.admin.models` and generates
`GET /api/openapi.json` (OpenAPI 3.1, served without a token) from the same models and routes.
`ApiGate` stands in front of it: it checks the token or session (401), the CSRF token of a
session's POST or DELETE (403) and bounds the body (413) before FastAPI reads anything, so a
caller without a token learns nothing, not even whether their body was valid.

Routes are plain `def`s: FastAPI runs them on its thread pool, so the store reads never hold up
the event loop that acknowledges ingest requests.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Body, FastAPI, Path, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie, HTTPBearer
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from segcrit import __version__
from segcrit.admin import models as m
from segcrit.admin import views
from segcrit.admin.auth import COOKIE_NAME, CSRF_HEADER, AdminAuth
from segcrit.admin.views import AdminContext

OPENAPI_PATH: Final = "/api/openapi.json"
MAX_BODY_BYTES: Final = 1_000_000
SECURITY_HEADERS: Final = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class AnyText(Convertor[str]):
    """A path parameter of any characters: `/` and a (percent-encoded) newline too, where Starlette's
    `path` stops at a newline. A userId or an audience name may hold anything; each still gets
    its route's JSON answer."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segcrit_text", AnyText())


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def problem(status: int, code: str, message: str) -> JSONResponse:
    body = m.Problem(error=message, code=code, message=message).model_dump()
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})


PROBLEMS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": m.Problem, "description": "No valid admin token or session"},
}
CHANGES: Final[dict[int | str, dict[str, Any]]] = {
    403: {"model": m.Problem, "description": "A session's request without its CSRF token"},
    413: {"model": m.Problem, "description": "Body over 1 MB"},
}
NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {404: {"model": m.Problem, "description": "Not found"}}


def build_api(ctx: AdminContext) -> FastAPI:
    api = FastAPI(
        title="segcrit admin API",
        version=__version__,
        description="Operate segcrit: overview, audiences, deliveries, dead letters, profiles, preview, config. "
        "Authenticate with `Authorization: Bearer <server.admin_token>`, or the session cookie that "
        "/admin/login sets (then POST and DELETE need its CSRF token in `X-CSRF-Token`). "
        "Identifiers in answers are masked: the first 8 hex digits of their hash.",
        openapi_url=OPENAPI_PATH,
        docs_url=None,  # Swagger UI would load from a CDN: segcrit must work offline
        redoc_url=None,
        redirect_slashes=False,
    )

    @api.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return problem(error.status, error.code, error.message)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and wrong methods answer in the same shape as every other error.
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        answer = problem(error.status_code, code, str(error.detail))
        answer.headers.update(error.headers or {})
        return answer

    # Declared for the OpenAPI document (either one will do); ApiGate does the checking.
    bearer = HTTPBearer(auto_error=False, description="server.admin_token")
    cookie = APIKeyCookie(name=COOKIE_NAME, auto_error=False, description="The session /admin/login sets")
    router = APIRouter(prefix="/api", dependencies=[Security(bearer), Security(cookie)], responses=PROBLEMS)
    _routes(router, ctx)
    api.include_router(router)
    return api


def _routes(router: APIRouter, ctx: AdminContext) -> None:
    @router.get("/overview", response_model=m.Overview, summary="Backlog, lag, dead letters and 24 h of counters")
    def overview() -> m.Overview:
        return views.overview(ctx)

    @router.get("/audiences", response_model=m.AudienceList, summary="Every audience: desired vs acknowledged")
    def audiences() -> m.AudienceList:
        return views.audiences(ctx)

    @router.get(
        "/audiences/{name:segcrit_text}",
        response_model=m.AudienceDetail,
        responses=NOT_FOUND,
        summary="One audience, recent calls",
    )
    def audience(name: Annotated[str, Path(max_length=256)]) -> m.AudienceDetail:
        found = views.audience_detail(ctx, name)
        if found is None:
            raise ApiError(404, "unknown_audience", "no audience of that name")
        return found

    @router.post(
        "/audiences/{name:segcrit_text}/resync",
        response_model=m.Resync,
        status_code=202,
        responses={**NOT_FOUND, **CHANGES},
        summary="Empty the Criteo list and send the whole membership again (run by the delivery thread)",
    )
    def resync(name: Annotated[str, Path(max_length=256)]) -> m.Resync:
        queued = views.request_resync(ctx, name)
        if queued is None:
            raise ApiError(404, "unknown_audience", "no audience of that name")
        return queued

    @router.get("/deliveries", response_model=m.Deliveries, summary="Recent Criteo calls, newest first")
    def deliveries(
        endpoint: Annotated[str | None, Query(max_length=64)] = None,
        audience: Annotated[str | None, Query(max_length=256)] = None,
        failed: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=views.MAX_LIST)] = 50,
        before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> m.Deliveries:
        return views.deliveries(ctx, endpoint=endpoint, audience=audience, failed=failed, limit=limit, before=before)

    @router.get("/dead-letters", response_model=m.DeadLetterList, summary="Dead letters not yet replayed")
    def dead_letters(limit: Annotated[int, Query(ge=1, le=views.MAX_LIST)] = 100) -> m.DeadLetterList:
        return views.dead_letters(ctx, limit)

    @router.post(
        "/dead-letters/replay",
        response_model=m.Replayed,
        responses=CHANGES,
        summary="Put dead letters back in the delivery queue (of one audience if given)",
    )
    def replay_dead_letters(audience: Annotated[str | None, Query(max_length=256)] = None) -> m.Replayed:
        return views.replay_dead_letters(ctx, audience)

    @router.get("/failed-events", response_model=m.FailedEventList, summary="Events processing set aside")
    def failed_events(limit: Annotated[int, Query(ge=1, le=views.MAX_LIST)] = 50) -> m.FailedEventList:
        return views.failed_events(ctx, limit)

    @router.post(
        "/failed-events/replay", response_model=m.Replayed, responses=CHANGES, summary="Put them back on the inbox"
    )
    def replay_failed_events() -> m.Replayed:
        return views.replay_failed_events(ctx)

    @router.get("/events", response_model=m.SampleList, summary="The latest accepted and refused messages")
    def events(
        source: Annotated[str | None, Query(max_length=64)] = None,
        accepted: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=views.MAX_LIST)] = 50,
    ) -> m.SampleList:
        return views.samples(ctx, source=source, accepted=accepted, limit=limit)

    @router.get(
        "/profiles/{id:segcrit_text}",
        response_model=m.ProfileLookup,
        responses=NOT_FOUND,
        summary="A person by userId, anonymousId or email (hashed on the server first)",
    )
    def profile(id: Annotated[str, Path(max_length=512)]) -> m.ProfileLookup:
        found = views.profile_lookup(ctx, id)
        if found is None:
            raise ApiError(404, "unknown_profile", "no profile has that userId, anonymousId or email")
        return found

    @router.delete(
        "/profiles/{id:segcrit_text}",
        response_model=m.Forgotten,
        responses=CHANGES,
        summary="Forget the person (= `segcrit forget`): erased, removed from every audience",
    )
    def forget(id: Annotated[str, Path(max_length=512)]) -> m.Forgotten:
        return views.forget(ctx, id)

    @router.post(
        "/preview",
        response_model=m.PreviewResult,
        responses=CHANGES,
        summary="What one Segment message would do (= `segcrit preview`); nothing is kept or sent",
    )
    def preview(message: Annotated[dict[str, Any], Body(description="One Segment message")]) -> m.PreviewResult:
        return views.preview(ctx, message)

    @router.get("/config", response_model=m.ConfigView, summary="The effective config, secrets masked")
    def config() -> m.ConfigView:
        return views.config_view(ctx)


class ApiGate:
    """The ASGI app mounted at `/api/...`: authentication, CSRF and body size, then FastAPI."""

    def __init__(self, api: FastAPI, ctx: AdminContext) -> None:
        self.api = api
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        request = Request(scope)
        if scope["path"] != OPENAPI_PATH:
            refused = self._refusal(request)
            if refused is not None:
                await refused(scope, receive, send)
                return
        body = await _bounded_body(receive)
        if body is None:
            await problem(413, "body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")(scope, receive, send)
            return
        await self.api(scope, _replay(body), _with_headers(send))

    def _refusal(self, request: Request) -> JSONResponse | None:
        caller = self.ctx.auth.caller(request.headers, request.cookies, self.ctx.clock.now())
        if caller is None:
            return problem(401, "unauthorized", "a valid admin token (Bearer) or admin session is required")
        if not AdminAuth.csrf_ok(caller, request.method, request.headers.get(CSRF_HEADER)):
            return problem(403, "csrf", f"a session's changes need its CSRF token in {CSRF_HEADER}")
        return None


async def _bounded_body(receive: Receive) -> bytes | None:
    """The whole request body, or None once it passes MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)

    return wrapped


def openapi_document(ctx: AdminContext) -> dict[str, Any]:
    """The document `/api/openapi.json` serves (for tests and docs)."""
    document: dict[str, Any] = orjson.loads(orjson.dumps(build_api(ctx).openapi()))
    return document
