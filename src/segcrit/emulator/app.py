"""The emulator as a Starlette app: Criteo's routes behind the gateway, plus `/_emulator/` controls.

Control routes (no auth, not counted, not rate limited: a local tool for tests and the demo):

    GET  /_emulator/state[?members=0]   segments with members, event documents, catalogs, call
                                        counts by endpoint and by status, faults (members=0:
                                        counts only)
    POST /_emulator/faults              {"spec": "5xx=0.2,..."} or {"5xx": 0.2, ...}: replace the faults
    POST /_emulator/config              {"duplicate_name_mode", "rate_limit_per_minute", "match_rate",
                                         "events_rate_limit_per_minute", "events_redirect_hops",
                                         "catalog_report_polls"}
    POST /_emulator/reset               forget segments, documents, catalogs, tokens, calls; faults
                                        back to the start ones
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from segcrit.criteo.constants import (
    CATALOG_BATCH_PATH,
    CATALOG_REPORT_PATH,
    CONTACT_LIST_PATH,
    CONTACT_LIST_STATISTICS_PATH,
    CREATE_SEGMENTS_PATH,
    DELETE_SEGMENTS_PATH,
    EVENTS_PATH,
    SEARCH_SEGMENTS_PATH,
    TOKEN_PATH,
)
from segcrit.emulator import audience_segments, catalog, events, oauth
from segcrit.emulator.faults import FaultSpecError, faults_from_mapping, parse_faults
from segcrit.emulator.gateway import Auth, Handler, criteo_endpoint
from segcrit.emulator.problems import error_response, problem
from segcrit.emulator.profiles import ProfileApiState, profile_routes
from segcrit.emulator.state import DUPLICATE_NAME_MODES, EmulatorState, Endpoint


def _route_path(template: str) -> str:
    # The shared templates name their parameters `{version}`, `{segment_id}`, `{operation_token}`:
    # Starlette's syntax.
    return template.format(version="{version}", segment_id="{segment_id}", operation_token="{operation_token}")


def create_emulator_app(state: EmulatorState, profiles: ProfileApiState | None = None) -> Starlette:
    """A Criteo emulator serving `state` (read it from the test while the app runs), and Segment's
    Profile API serving `profiles` (none seeded by default; segcrit.emulator.profiles)."""

    def criteo(
        template: str, endpoint: Endpoint, handler: Handler, method: str | list[str], auth: Auth = "bearer"
    ) -> Route:
        return Route(
            _route_path(template),
            criteo_endpoint(state, endpoint, handler, auth),
            methods=[method] if isinstance(method, str) else method,
            name=endpoint.value,
        )

    routes = [
        criteo(TOKEN_PATH, Endpoint.TOKEN, oauth.token, "POST", auth="form"),
        criteo(SEARCH_SEGMENTS_PATH, Endpoint.SEARCH, audience_segments.search_segments, "POST"),
        criteo(CREATE_SEGMENTS_PATH, Endpoint.CREATE, audience_segments.create_segments, "POST"),
        criteo(DELETE_SEGMENTS_PATH, Endpoint.DELETE, audience_segments.delete_segments, "POST"),
        criteo(CONTACT_LIST_PATH, Endpoint.CONTACT_LIST_PATCH, audience_segments.patch_contact_list, "PATCH"),
        criteo(CONTACT_LIST_PATH, Endpoint.CONTACT_LIST_DELETE, audience_segments.delete_contact_list, "DELETE"),
        criteo(
            CONTACT_LIST_STATISTICS_PATH,
            Endpoint.STATISTICS,
            audience_segments.contact_list_statistics,
            "GET",
        ),
        criteo(CATALOG_BATCH_PATH, Endpoint.CATALOG_BATCH, catalog.submit_batch, "POST"),
        criteo(CATALOG_REPORT_PATH, Endpoint.CATALOG_REPORT, catalog.batch_report, "GET"),
        # The Events API lives on another host at Criteo; here it shares the port, without OAuth.
        criteo(EVENTS_PATH, Endpoint.EVENTS, events.event, ["POST", "GET"], auth="none"),
        criteo(events.REGIONAL_PATH, Endpoint.EVENTS, events.event, ["POST", "GET"], auth="none"),
        *_control_routes(state),
        *profile_routes(profiles if profiles is not None else ProfileApiState()),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        """Unknown paths and methods, answered in Criteo's shape rather than Starlette's plain text."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code, title = ("not-found", "Resource not found") if status == 404 else ("not-supported", "Not supported")
        response = error_response(status, problem("validation", code, title, request.url.path))
        response.headers.update(state.rate_headers(None).headers())
        return response

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def _control_routes(state: EmulatorState) -> list[Route]:
    async def get_state(request: Request) -> Response:
        include_members = request.query_params.get("members", "1") not in ("0", "false")
        return JSONResponse(state.snapshot(include_members))

    async def set_faults(request: Request) -> Response:
        try:
            body = await _json_object(request)
            spec = body.get("spec")
            state.set_faults(parse_faults(spec) if isinstance(spec, str) else faults_from_mapping(body))
        except (ValueError, FaultSpecError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"faults": state.faults.to_json()})

    async def set_config(request: Request) -> Response:
        try:
            body = await _json_object(request)
            _apply_config(state, body)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({key: v for key, v in state.snapshot(False).items() if key != "segments"})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    return [
        Route("/_emulator/state", get_state, methods=["GET"]),
        Route("/_emulator/faults", set_faults, methods=["POST"]),
        Route("/_emulator/config", set_config, methods=["POST"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
    ]


async def _json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    value = await request.json() if body.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value


_COUNT_SETTINGS = (
    "rate_limit_per_minute",
    "events_rate_limit_per_minute",
    "events_redirect_hops",
    "catalog_report_polls",
)


def _apply_config(state: EmulatorState, body: dict[str, Any]) -> None:
    known = {"duplicate_name_mode", "match_rate", *_COUNT_SETTINGS}
    if unknown := set(body) - known:
        raise ValueError(f"unknown settings {sorted(unknown)} (known: {sorted(known)})")
    mode = body.get("duplicate_name_mode", state.duplicate_name_mode)
    if mode not in DUPLICATE_NAME_MODES:
        raise ValueError(f"duplicate_name_mode must be one of {DUPLICATE_NAME_MODES}")
    counts = {name: body.get(name, getattr(state, name)) for name in _COUNT_SETTINGS}
    rate = body.get("match_rate", state.match_rate)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in counts.values()):
        raise ValueError(f"{', '.join(_COUNT_SETTINGS)} are integers >= 0")
    if not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ValueError("match_rate is a number in 0..1")
    with state.lock:
        state.duplicate_name_mode = mode
        state.match_rate = float(rate)
        for name, value in counts.items():
            setattr(state, name, value)
