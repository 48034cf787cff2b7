"""The audience-segment endpoints: search, create, delete, and a contact list's PATCH/DELETE/statistics.

Bodies are validated with the emulator's own models of Criteo's schemas (`schemas`), never the
client's. Bulk calls follow Criteo's "partial approval": items that fail are reported as problems
and the rest go through, answered 200;
for create, `duplicate_name_mode = "error"` instead refuses the whole request with 400 (the shape
Segment's integration expects). Another advertiser's segment or advertiser id is a 403.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import ValidationError
from starlette.responses import Response

from segcrit.criteo.constants import (
    AUDIENCE_CONTACTLIST_TYPE,
    AUDIENCE_SEGMENT_TYPE,
    CODE_AUDIENCE_INVALID,
    CODE_FORBIDDEN,
    CODE_INVALID,
    CODE_INVALID_RANGED,
    CODE_NAME_MUST_BE_UNIQUE,
    CODE_NAME_MUST_NOT_BE_EMPTY,
    CODE_REQUIRED_FIELD,
    CODE_SEGMENT_NOT_FOUND,
    CONTACT_LIST_STATISTICS_TYPE,
    CONTACTLIST_AMENDMENT_TYPE,
    MAX_IDENTIFIERS_PER_CALL,
    SEARCH_LIMIT_DEFAULT,
    SEARCH_LIMIT_MAX,
)
from segcrit.emulator.gateway import Call
from segcrit.emulator.identifiers import is_valid_identifier
from segcrit.emulator.problems import (
    error_response,
    invalid_body,
    json_response,
    problem,
    validation_error_response,
)
from segcrit.emulator.schemas import (
    AudienceSegmentBulkCreateInputV1,
    AudienceSegmentBulkDeleteInputV1,
    AudienceSegmentCreateEntityV1,
    AudienceSegmentEntityV1,
    AudienceSegmentEntityV1ListResponse,
    AudienceSegmentEntityV1Resource,
    AudienceSegmentIdEntityV1,
    AudienceSegmentIdEntityV1ListResponse,
    AudienceSegmentIdEntityV1Resource,
    AudienceSegmentSearchInputV1,
    AudienceSegmentSearchMetadataV1,
    AudienceSegmentSearchResponse,
    BasicAudienceDefinition,
    CommonProblem,
    ContactlistAmendmentRequest,
    ContactlistOperation,
    ContactlistOperationAttributes,
    ContactListStatisticsEntityV1,
    ContactListStatisticsEntityV1Resource,
    ContactListStatisticsEntityV1Response,
    ContactListV1,
    DeleteAudienceContactListResponse,
    LookalikeV1,
    ModifyAudienceResponse,
    Request,
    unknown_keys,
)
from segcrit.emulator.state import EmulatorState, Segment, SegmentKind

SAMPLE_INVALID_IDENTIFIERS = 10
INT32_MAX = 2**31 - 1  # the path id is declared `format: int32`
_DIGITS = re.compile(r"\d{1,10}")

Model = TypeVar("Model", bound=Request)


# --- search, create, delete ------------------------------------------------------------------------


def search_segments(state: EmulatorState, call: Call) -> Response:
    paging = _paging(call)
    if isinstance(paging, Response):
        return paging
    limit, offset = paging
    request = _parse(state, call, AudienceSegmentSearchInputV1)
    if isinstance(request, Response):
        return request
    filters = request.data.attributes if request.data else None

    allowed = _allowed(call)
    wanted = set(filters.advertiser_ids or ()) if filters else set()
    if wanted - allowed:
        return _forbidden(call, f"advertisers not allowed: {', '.join(sorted(wanted - allowed))}")
    found = state.segments_of(wanted or allowed)
    if filters and filters.audience_segment_ids:
        ids = set(filters.audience_segment_ids)
        found = [s for s in found if s.id in ids]
    if filters and filters.audience_segment_types:
        kinds = set(filters.audience_segment_types)
        found = [s for s in found if s.kind in kinds]

    response = AudienceSegmentSearchResponse(
        data=[_resource(s) for s in found[offset : offset + limit]],
        meta=AudienceSegmentSearchMetadataV1(total_items=len(found), limit=limit, offset=offset),
    )
    return json_response(response.to_json())


def create_segments(state: EmulatorState, call: Call) -> Response:
    request = _parse(state, call, AudienceSegmentBulkCreateInputV1)
    if isinstance(request, Response):
        return request
    if request.data is None:
        return _missing(call, "data")
    items = [item.attributes for item in request.data]
    foreign = {a.advertiser_id for a in items if a is not None} - _allowed(call)
    if foreign:
        return _forbidden(call, f"advertisers not allowed: {', '.join(sorted(foreign))}")

    with state.lock:  # checks and creation in one step: names claimed by this request count too
        problems: list[CommonProblem] = []
        accepted: list[AudienceSegmentCreateEntityV1] = []
        for index, attributes in enumerate(items):
            refusal = _refuse_new_segment(state, call, index, attributes, accepted)
            if refusal is not None:
                problems.append(refusal)
            elif attributes is not None:
                accepted.append(attributes)
        if problems and state.duplicate_name_mode == "error":
            return error_response(400, *problems)
        created = [_create(state, attributes) for attributes in accepted]

    response = AudienceSegmentEntityV1ListResponse(data=[_resource(s) for s in created], warnings=problems)
    return json_response(response.to_json())


def delete_segments(state: EmulatorState, call: Call) -> Response:
    request = _parse(state, call, AudienceSegmentBulkDeleteInputV1)
    if isinstance(request, Response):
        return request
    if request.data is None:
        return _missing(call, "data")
    with state.lock:
        segments = [state.find_segment(item.id) if item.id else None for item in request.data]
        foreign = {s.advertiser_id for s in segments if s is not None} - _allowed(call)
        if foreign:
            return _forbidden(call, f"advertisers not allowed: {', '.join(sorted(foreign))}")
        deleted: list[AudienceSegmentIdEntityV1Resource] = []
        problems: list[CommonProblem] = []
        for index, (item, segment) in enumerate(zip(request.data, segments, strict=True)):
            if segment is None or state.find_segment(segment.id) is None:  # twice in one request
                problems.append(_item_problem(call, index, CODE_SEGMENT_NOT_FOUND, f"no segment {item.id}"))
                continue
            state.delete_segment(segment.id)
            deleted.append(
                AudienceSegmentIdEntityV1Resource(
                    id=segment.id, type=AUDIENCE_SEGMENT_TYPE, attributes=AudienceSegmentIdEntityV1()
                )
            )
    response = AudienceSegmentIdEntityV1ListResponse(data=deleted, warnings=problems)
    return json_response(response.to_json())


# --- one contact list ----------------------------------------------------------------------------


def patch_contact_list(state: EmulatorState, call: Call) -> Response:
    segment = _contact_list(state, call)
    if isinstance(segment, Response):
        return segment
    request = _parse(state, call, ContactlistAmendmentRequest)
    if isinstance(request, Response):
        return request
    attributes = request.data.attributes
    if len(attributes.identifiers) > MAX_IDENTIFIERS_PER_CALL:
        too_many = problem(
            "validation",
            CODE_INVALID_RANGED,
            "Too many identifiers",
            call.instance,
            detail=f"{len(attributes.identifiers)} identifiers; at most {MAX_IDENTIFIERS_PER_CALL} per call",
            source={"field": "data.attributes.identifiers"},
        )
        return error_response(400, too_many)
    kind = attributes.identifier_type or "email"  # optional in the schema: assume the common case
    if kind == "gum" and attributes.gum_caller_id is None:
        return _missing(call, "data.attributes.gumCallerId", "gumCallerId is required for gum identifiers")

    valid: list[str] = []
    invalid: list[str] = []
    for value in attributes.identifiers:
        (valid if is_valid_identifier(kind, value) else invalid).append(value)
    state.amend(segment, attributes.operation, kind, set(valid))
    summary = ContactlistOperationAttributes(
        operation=attributes.operation,
        contact_list_id=int(segment.id),
        identifier_type=kind,
        nb_valid_identifiers=len(valid),
        nb_invalid_identifiers=len(invalid),
        request_date=datetime.fromtimestamp(state.clock.now(), UTC),
        sample_invalid_identifiers=invalid[:SAMPLE_INVALID_IDENTIFIERS],
    )
    response = ModifyAudienceResponse(
        data=ContactlistOperation(type=CONTACTLIST_AMENDMENT_TYPE, attributes=summary), errors=[], warnings=[]
    )
    return json_response(response.to_json())


def delete_contact_list(state: EmulatorState, call: Call) -> Response:
    segment = _contact_list(state, call)
    if isinstance(segment, Response):
        return segment
    state.wipe(segment)
    response = DeleteAudienceContactListResponse(
        data=BasicAudienceDefinition(id=segment.id, type=AUDIENCE_CONTACTLIST_TYPE), errors=[], warnings=[]
    )
    return json_response(response.to_json())


def contact_list_statistics(state: EmulatorState, call: Call) -> Response:
    segment = _contact_list(state, call)
    if isinstance(segment, Response):
        return segment
    size = segment.size
    statistics = ContactListStatisticsEntityV1(
        number_of_identifiers=size,
        number_of_matches=math.floor(size * state.match_rate),
        match_rate=state.match_rate if size else 0.0,
    )
    response = ContactListStatisticsEntityV1Response(
        data=ContactListStatisticsEntityV1Resource(
            id=segment.id, type=CONTACT_LIST_STATISTICS_TYPE, attributes=statistics
        )
    )
    return json_response(response.to_json())


# --- helpers -------------------------------------------------------------------------------------


def _allowed(call: Call) -> frozenset[str]:
    # The gateway only lets authenticated calls reach these endpoints.
    assert call.client is not None
    return call.client.advertiser_ids


def _parse(state: EmulatorState, call: Call, model: type[Model]) -> Model | Response:
    try:
        body = call.json()
    except ValueError:
        return invalid_body(call.instance, "the body is not valid JSON")
    try:
        parsed = model.model_validate(body)
    except ValidationError as error:
        return validation_error_response(error, call.instance)
    state.note_unknown_keys(call.instance, unknown_keys(parsed))
    return parsed


def _paging(call: Call) -> tuple[int, int] | Response:
    query = call.request.query_params
    try:
        limit = int(query.get("limit", SEARCH_LIMIT_DEFAULT))
        offset = int(query.get("offset", 0))
    except ValueError:
        return invalid_body(call.instance, "limit and offset must be integers")
    if not 0 <= limit <= SEARCH_LIMIT_MAX or offset < 0:
        out_of_range = problem(
            "validation",
            CODE_INVALID_RANGED,
            "Paging out of range",
            call.instance,
            detail=f"limit must be 0..{SEARCH_LIMIT_MAX} and offset >= 0",
        )
        return error_response(400, out_of_range)
    return limit, offset


def _contact_list(state: EmulatorState, call: Call) -> Segment | Response:
    """The contact-list segment named by the path, or the error Criteo would answer."""
    segment_id = call.request.path_params["segment_id"]
    if not _DIGITS.fullmatch(segment_id) or int(segment_id) > INT32_MAX:
        return invalid_body(call.instance, f"audience-segment-id {segment_id!r} is not an int32")
    segment = state.find_segment(segment_id)
    if segment is None or segment.kind != "ContactList":
        not_found = problem(
            "validation",
            CODE_AUDIENCE_INVALID,
            "Audience is invalid",
            call.instance,
            detail=f"Audience {segment_id} is not found, please choose a valid audience",
        )
        return error_response(404, not_found)
    if segment.advertiser_id not in _allowed(call):
        return _forbidden(call, f"audience {segment_id} belongs to another advertiser")
    return segment


def _refuse_new_segment(
    state: EmulatorState,
    call: Call,
    index: int,
    attributes: AudienceSegmentCreateEntityV1 | None,
    accepted: list[AudienceSegmentCreateEntityV1],
) -> CommonProblem | None:
    """Why one item of a create cannot be made, or None when it can."""
    if attributes is None:
        return _item_problem(call, index, CODE_REQUIRED_FIELD, "attributes are required")
    name, advertiser = attributes.name, attributes.advertiser_id
    if not name.strip():
        return _item_problem(call, index, CODE_NAME_MUST_NOT_BE_EMPTY, "Segment name must not be empty")
    if state.name_taken(advertiser, name) or any((a.advertiser_id, a.name) == (advertiser, name) for a in accepted):
        return _item_problem(call, index, CODE_NAME_MUST_BE_UNIQUE, f"Another Segment exists with the name: {name}")
    blocks = {
        "contactList": attributes.contact_list,
        "lookalike": attributes.lookalike,
        "inMarket": attributes.in_market,
        "location": attributes.location,
        "prospecting": attributes.prospecting,
        "retargeting": attributes.retargeting,
    }
    present = [key for key, block in blocks.items() if block is not None]
    if len(present) != 1:
        return _item_problem(call, index, CODE_INVALID, "exactly one segment type block is required")
    if present[0] not in ("contactList", "lookalike"):
        return _item_problem(call, index, CODE_INVALID, f"the emulator cannot create {present[0]} segments")
    if attributes.lookalike is not None:
        seed = state.find_segment(attributes.lookalike.seed_segment_id)
        if seed is None or seed.advertiser_id != advertiser:
            detail = f"seed segment {attributes.lookalike.seed_segment_id} not found for advertiser {advertiser}"
            return _item_problem(call, index, CODE_SEGMENT_NOT_FOUND, detail)
    return None


def _create(state: EmulatorState, attributes: AudienceSegmentCreateEntityV1) -> Segment:
    kind: SegmentKind = "Lookalike" if attributes.lookalike is not None else "ContactList"
    lookalike = attributes.lookalike
    return state.add_segment(
        attributes.advertiser_id,
        attributes.name,
        kind,
        description=attributes.description,
        seed_segment_id=lookalike.seed_segment_id if lookalike else None,
        target_size=lookalike.target_size if lookalike else None,
    )


def _resource(segment: Segment) -> AudienceSegmentEntityV1Resource:
    attributes = AudienceSegmentEntityV1(
        advertiser_id=segment.advertiser_id,
        name=segment.name,
        description=segment.description,
        type=segment.kind,
        created_at=datetime.fromtimestamp(segment.created_at, UTC),
        updated_at=datetime.fromtimestamp(segment.updated_at, UTC),
    )
    if segment.kind == "ContactList":
        attributes.contact_list = ContactListV1(is_read_only=False)
    else:
        attributes.lookalike = LookalikeV1(seed_segment_id=segment.seed_segment_id, target_size=segment.target_size)
    return AudienceSegmentEntityV1Resource(id=segment.id, type=AUDIENCE_SEGMENT_TYPE, attributes=attributes)


def _item_problem(call: Call, index: int, code: str, detail: str) -> CommonProblem:
    titles = {
        CODE_NAME_MUST_BE_UNIQUE: "Segment name must be unique",
        CODE_NAME_MUST_NOT_BE_EMPTY: "Segment name must not be empty",
        CODE_SEGMENT_NOT_FOUND: "Segment not found",
        CODE_REQUIRED_FIELD: "Required field is missing",
    }
    return problem(
        "validation",
        code,
        titles.get(code, "Invalid segment"),
        call.instance,
        detail=detail,
        source={"pointer": f"/data/{index}"},
    )


def _missing(call: Call, field: str, detail: str | None = None) -> Response:
    missing = problem(
        "validation",
        CODE_REQUIRED_FIELD,
        "Required field is missing",
        call.instance,
        detail=detail or f"{field} is required",
        source={"field": field},
    )
    return error_response(400, missing)


def _forbidden(call: Call, detail: str) -> Response:
    refused = problem(
        "access-control", CODE_FORBIDDEN, "Not authorized for this advertiser", call.instance, detail=detail
    )
    return error_response(403, refused)
