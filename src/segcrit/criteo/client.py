"""The Criteo Marketing Solutions client: one async method per audience endpoint segcrit uses.

Every call goes through `segcrit.criteo.marketing_api.MarketingApi` (`self.api`): it waits for the
rate limiter, carries a bearer token from `TokenProvider`, reports the response to the limiter and
to `criteo_calls{endpoint,status}`, and on a 401 fetches a new token and retries once at once. Any
other failure raises what `segcrit.criteo.errors.classify` decides. Request bodies are built with
`segcrit.criteo.models`, so they follow Criteo's schemas. The catalog client shares `self.api`.

The HTTP transport is the seam: tests hand in an `httpx.AsyncClient` over a MockTransport or
pointed at the emulator.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from segcrit.clock import Clock
from segcrit.config import CriteoConfig
from segcrit.criteo.auth import TokenProvider
from segcrit.criteo.constants import (
    CODE_NAME_MUST_BE_UNIQUE,
    CONTACT_LIST_PATH,
    CONTACT_LIST_STATISTICS_PATH,
    CREATE_SEGMENTS_PATH,
    DELETE_SEGMENTS_PATH,
    IDENTIFIER_TYPES,
    MAX_IDENTIFIERS_PER_CALL,
    OPERATIONS,
    SEARCH_LIMIT_MAX,
    SEARCH_SEGMENTS_PATH,
    SegmentType,
)
from segcrit.criteo.errors import (
    Decision,
    RetryableError,
    SegmentNameTakenError,
    SegmentNotFoundError,
    error_codes,
    error_for,
    problems,
)
from segcrit.criteo.marketing_api import MarketingApi, parse_answer
from segcrit.criteo.models import (
    AudienceSegmentBulkCreateInputV1,
    AudienceSegmentBulkDeleteInputV1,
    AudienceSegmentCreateEntityV1,
    AudienceSegmentEntityV1ListResponse,
    AudienceSegmentIdEntityV1ListResponse,
    AudienceSegmentSearchInputV1,
    AudienceSegmentSearchResponse,
    ContactlistAmendmentRequest,
    ContactListStatisticsEntityV1Response,
    DeleteAudienceContactListResponse,
    ModifyAudienceResponse,
)
from segcrit.metrics import Metrics
from segcrit.ratelimit import RateLimiter

log = logging.getLogger(__name__)

# `endpoint` labels of criteo_calls (the token call is labelled by auth.TOKEN_ENDPOINT).
EP_SEARCH = "segments_search"
EP_CREATE = "segments_create"
EP_DELETE = "segments_delete"
EP_PATCH = "contact_list_patch"
EP_WIPE = "contact_list_wipe"
EP_STATISTICS = "contact_list_statistics"

# Segment ids go into URL paths: only digits, so no id can reach another route.
_SEGMENT_ID = re.compile(r"^[0-9]+$")

M = TypeVar("M", bound=BaseModel)


class CriteoClient:
    def __init__(
        self,
        config: CriteoConfig,
        http: httpx.AsyncClient,
        limiter: RateLimiter,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        tokens: TokenProvider | None = None,
    ) -> None:
        self.config = config
        self.api = MarketingApi(config, http, limiter, clock, metrics, tokens=tokens)
        self.tokens = self.api.tokens

    async def token(self) -> str:
        """A bearer token (cached or fetched): `segcrit check --online` uses it to test credentials."""
        return await self.tokens.token()

    # --------------------------------------------------------------------- segments

    async def search_segments(
        self,
        offset: int = 0,
        limit: int = SEARCH_LIMIT_MAX,
        *,
        segment_types: Sequence[SegmentType] | None = ("ContactList",),
        segment_ids: Sequence[str] | None = None,
    ) -> AudienceSegmentSearchResponse:
        """One page of this advertiser's segments (ContactList ones unless told otherwise)."""
        if not 0 <= limit <= SEARCH_LIMIT_MAX or offset < 0:
            raise ValueError(f"search needs 0 <= limit <= {SEARCH_LIMIT_MAX} and offset >= 0")
        body = AudienceSegmentSearchInputV1.build(
            advertiser_ids=[self.config.advertiser_id],
            audience_segment_ids=list(segment_ids) if segment_ids is not None else None,
            audience_segment_types=list(segment_types) if segment_types is not None else None,
        )
        answer = await self.api.call(
            EP_SEARCH,
            "POST",
            self._url(SEARCH_SEGMENTS_PATH),
            json=body.to_json(),
            params={"limit": limit, "offset": offset},
        )
        return parse_answer(AudienceSegmentSearchResponse, answer, EP_SEARCH)

    async def find_segment(self, name: str, segment_type: SegmentType = "ContactList") -> str | None:
        """The id of this advertiser's segment named exactly `name`, by paging through search.

        Criteo's search has no name filter, so this costs ceil(segments / 100) calls: resolve once
        and keep the id, never on the hot path.
        """
        offset = 0
        while True:
            page = await self.search_segments(offset, SEARCH_LIMIT_MAX, segment_types=[segment_type])
            for resource in page.data:
                if resource.attributes is not None and resource.attributes.name == name and resource.id:
                    return resource.id
            total = page.meta.total_items if page.meta is not None else None
            offset += SEARCH_LIMIT_MAX
            # Without a total, a short page is the last one.
            if (total is None and len(page.data) < SEARCH_LIMIT_MAX) or (total is not None and offset >= total):
                return None
            if not page.data:
                return None  # the total promised more, but an empty page would loop forever

    async def create_contact_list(self, name: str, description: str | None = None) -> str:
        """Create a ContactList segment; raises SegmentNameTakenError if the name is in use."""
        segment = AudienceSegmentCreateEntityV1.contact_list_segment(
            self.config.advertiser_id, name, description if description is not None else name
        )
        return await self._create(segment)

    async def create_lookalike(self, name: str, seed_segment_id: str, target_size: int | None = None) -> str:
        """Create a Lookalike segment built on `seed_segment_id`."""
        _check_segment_id(seed_segment_id)
        segment = AudienceSegmentCreateEntityV1.lookalike_segment(
            self.config.advertiser_id, name, seed_segment_id, target_size
        )
        return await self._create(segment)

    async def find_or_create_segment(
        self, name: str, auto_create: bool, *, before_create: Callable[[], object] | None = None
    ) -> str:
        """The ContactList segment named `name`, created when missing and `auto_create` allows.

        A concurrent creator (another process, or a create whose answer was lost) makes Criteo
        answer `name-must-be-unique`: then the existing segment is the one to use. `before_create`
        runs just before the create call (the delivery worker renews its lease on the name there;
        an exception from it stops the create).
        """
        found = await self.find_segment(name)
        if found is not None:
            return found
        if not auto_create:
            raise SegmentNotFoundError(name)
        if before_create is not None:
            before_create()
        try:
            created = await self.create_contact_list(name)
        except SegmentNameTakenError:
            log.info("criteo segment name taken, searching again", extra={"segment_name": name})
            found = await self.find_segment(name)
            if found is None:
                # Taken, yet not visible to search (yet): Criteo will agree with itself later.
                raise RetryableError(
                    f"Criteo says {name!r} exists but search does not find it", maybe_applied=False
                ) from None
            return found
        log.info("criteo segment created", extra={"segment_name": name, "segment_id": created})
        return created

    async def delete_segments(self, segment_ids: Sequence[str]) -> AudienceSegmentIdEntityV1ListResponse:
        """Delete segments; unknown ids come back as `segment-not-found` problems, not errors."""
        for segment_id in segment_ids:
            _check_segment_id(segment_id)
        body = AudienceSegmentBulkDeleteInputV1.of_ids(*segment_ids)
        answer = await self.api.call(EP_DELETE, "POST", self._url(DELETE_SEGMENTS_PATH), json=body.to_json())
        return parse_answer(AudienceSegmentIdEntityV1ListResponse, answer, EP_DELETE)

    # ------------------------------------------------------------------ contact lists

    async def patch_contact_list(
        self, segment_id: str, operation: str, identifier_type: str, identifiers: Sequence[str]
    ) -> ModifyAudienceResponse | None:
        """Add or remove up to 50,000 identifiers of one type; 404 -> AudienceInvalidError.

        Returning at all means Criteo accepted the call; the summary is None when its 2xx body
        could not be read.
        """
        _check_segment_id(segment_id)
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}")
        if identifier_type not in IDENTIFIER_TYPES:
            raise ValueError(f"identifier_type must be one of {IDENTIFIER_TYPES}")
        if len(identifiers) > MAX_IDENTIFIERS_PER_CALL:
            raise ValueError(f"at most {MAX_IDENTIFIERS_PER_CALL} identifiers per call, got {len(identifiers)}")
        gum_caller_id = None
        if identifier_type == "gum":
            if self.config.gum_caller_id is None:
                raise ValueError("criteo.gum_caller_id is required to send gum identifiers")
            gum_caller_id = self.config.gum_caller_id
        body = ContactlistAmendmentRequest.build(
            operation,
            identifier_type,
            list(identifiers),
            gum_caller_id=gum_caller_id,
        )
        answer = await self.api.call(
            EP_PATCH,
            "PATCH",
            self._url(CONTACT_LIST_PATH, segment_id),
            json=body.to_json(),
            segment_id=segment_id,
        )
        return _parse_receipt(ModifyAudienceResponse, answer, EP_PATCH)

    async def wipe_contact_list(self, segment_id: str) -> DeleteAudienceContactListResponse | None:
        """Remove every identifier from the list (the segment itself stays); None as for PATCH."""
        _check_segment_id(segment_id)
        answer = await self.api.call(EP_WIPE, "DELETE", self._url(CONTACT_LIST_PATH, segment_id), segment_id=segment_id)
        return _parse_receipt(DeleteAudienceContactListResponse, answer, EP_WIPE)

    async def contact_list_statistics(self, segment_id: str) -> ContactListStatisticsEntityV1Response:
        _check_segment_id(segment_id)
        answer = await self.api.call(
            EP_STATISTICS, "GET", self._url(CONTACT_LIST_STATISTICS_PATH, segment_id), segment_id=segment_id
        )
        return parse_answer(ContactListStatisticsEntityV1Response, answer, EP_STATISTICS)

    # ---------------------------------------------------------------------- plumbing

    async def _create(self, segment: AudienceSegmentCreateEntityV1) -> str:
        body = AudienceSegmentBulkCreateInputV1.of(segment)
        reply = await self.api.exchange(EP_CREATE, "POST", self._url(CREATE_SEGMENTS_PATH), json=body.to_json())
        # Criteo answers a duplicate name with a 200 that creates nothing and lists the problem
        # in errors or warnings (its bulk docs), or with a 400 and errors[0] (Segment's experience).
        taken = CODE_NAME_MUST_BE_UNIQUE in error_codes(reply.body, include_warnings=True)
        if reply.decision is Decision.OK:
            parsed = parse_answer(AudienceSegmentEntityV1ListResponse, reply.body, EP_CREATE)
            created = next((item.id for item in parsed.data if item.id), None)
            if created is not None:
                return created
        if taken and reply.decision in (Decision.OK, Decision.DEAD_LETTER):
            raise SegmentNameTakenError(segment.name, status=reply.status, problem=_problem(reply.body))
        if reply.decision is Decision.OK:
            # A 200 that created nothing for another reason (`name-must-not-be-empty`, ...).
            raise error_for(Decision.DEAD_LETTER, status=reply.status, body=_as_errors(reply.body), endpoint=EP_CREATE)
        raise reply.error()

    def _url(self, template: str, segment_id: str | None = None) -> str:
        path = template.format(version=self.config.api_version, segment_id=segment_id)
        return self.config.api_url + path


def _check_segment_id(segment_id: str) -> None:
    if not _SEGMENT_ID.match(segment_id):
        raise ValueError(f"a Criteo segment id is numeric, got {segment_id!r}")


def _problem(body: Any) -> dict[str, Any] | None:
    """The `name-must-be-unique` problem of a create answer (errors or warnings)."""
    items = problems(body, "errors") + problems(body, "warnings")
    named = [item for item in items if item.get("code") == CODE_NAME_MUST_BE_UNIQUE]
    first = named or items
    return first[0] if first else None


def _as_errors(body: Any) -> dict[str, Any]:
    """A 200 create answer whose per-item failures sit in warnings, reshaped for `error_for`."""
    return {"errors": problems(body, "errors") + problems(body, "warnings")}


def _parse_receipt(model: type[M], body: Any, endpoint: str) -> M | None:
    """The body of a 2xx to a change: the status already says Criteo took it, so an answer we
    cannot read (a new warning shape, say) must not make us resend it for a day."""
    try:
        return model.model_validate(body)
    except ValidationError:
        log.warning("criteo answer unreadable", extra={"endpoint": endpoint})
        return None
