"""The Events API (`/m/event?version=s2s_v0`): one person's events as a JSON document.

POST carries the document as the body; GET carries it URL-encoded in `?data=`. With
`events_redirect_hops = N` the endpoint first answers N times 307 with a `Location` on
`/m/event/regional` (as Criteo sends a client to a regional data centre), before the document is
even read: a client must re-send the same method and body to the new URL. The regional path accepts
the same requests.

Accepted documents are answered 200 with an empty body (Criteo documents none) and kept for tests
(`EmulatorState.event_documents()`). A document that fails the emulator's `EventsDocument` is answered 400 in the
Marketing API's error envelope: the Events API's error answers are undocumented, this is a guess.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError
from starlette.responses import Response

from segcrit.criteo.constants import CODE_INVALID, CODE_REQUIRED_FIELD, EVENTS_PATH, EVENTS_VERSION
from segcrit.emulator.gateway import Call
from segcrit.emulator.problems import error_response, invalid_body, problem, validation_error_response
from segcrit.emulator.schemas import EventsDocument, unknown_keys
from segcrit.emulator.state import EmulatorState

REGIONAL_PATH = EVENTS_PATH + "/regional"
# How many redirects a request has already followed (the emulator's own marker in the Location).
HOP_PARAM = "hop"


def event(state: EmulatorState, call: Call) -> Response:
    query = call.request.query_params
    if query.get("version") != EVENTS_VERSION:
        wrong = problem(
            "validation",
            CODE_INVALID,
            "Unsupported version",
            call.instance,
            detail=f"the query parameter version must be {EVENTS_VERSION}",
            source={"field": "version"},
        )
        return error_response(400, wrong)

    redirect = _redirect(state, call)
    if redirect is not None:
        return redirect

    raw = _document(call)
    if isinstance(raw, Response):
        return raw
    try:
        document = EventsDocument.model_validate(raw)
    except ValidationError as error:
        return validation_error_response(error, call.instance)
    state.note_unknown_keys(call.instance, unknown_keys(document))
    state.record_event_document(raw)
    return Response(status_code=200)


def _redirect(state: EmulatorState, call: Call) -> Response | None:
    """307 to the regional path while the configured hops are not used up."""
    request = call.request
    hops_done = 0
    if request.url.path == REGIONAL_PATH:
        try:
            hops_done = int(request.query_params.get(HOP_PARAM, "1"))
        except ValueError:
            hops_done = 1
    if hops_done >= state.events_redirect_hops:
        return None
    params = [(k, v) for k, v in request.query_params.multi_items() if k != HOP_PARAM]
    params.append((HOP_PARAM, str(hops_done + 1)))
    target = request.url.replace(path=REGIONAL_PATH, query=urlencode(params))
    return Response(status_code=307, headers={"location": str(target)})


def _document(call: Call) -> dict[str, Any] | Response:
    """The JSON document of a POST body or of a GET's `data` parameter."""
    if call.request.method == "GET":
        text = call.request.query_params.get("data")
        if text is None:
            missing = problem(
                "validation",
                CODE_REQUIRED_FIELD,
                "Required field is missing",
                call.instance,
                detail="a GET carries the document in the data query parameter",
                source={"field": "data"},
            )
            return error_response(400, missing)
    else:
        text = call.body.decode("utf-8", "replace")
    try:
        value = json.loads(text) if text.strip() else None
    except ValueError:
        return invalid_body(call.instance, "the document is not valid JSON")
    if not isinstance(value, dict):
        return invalid_body(call.instance, "the document must be a JSON object")
    return value
