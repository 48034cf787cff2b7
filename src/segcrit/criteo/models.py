"""Pydantic models of the Criteo schemas segcrit sends and receives (audience part).

Each model mirrors one schema of Criteo's OpenAPI document and names it in `criteo_schema`
(`Name` or `Name#/json/pointer` for an inline object); `tests/unit/test_criteo_models.py` holds every
model against that document: same property names, same required ones, same enum values.

Python attribute names are snake_case; on the wire they are Criteo's camelCase (aliases), and both
spellings are accepted when validating. `to_json()` gives the body to send: camelCase keys, absent
optional fields left out. Criteo adds fields over time, so unknown keys are ignored, never an error.

Requests are built with the classmethods (`ContactlistAmendmentRequest.build(...)`,
`AudienceSegmentBulkCreateInputV1.of(...)`, ...). The catalog (Product Importer API, preview OpenAPI
document) is modelled in `segcrit.criteo.catalog_models`, the Events API document (no schema
published) in `segcrit.criteo.event_models`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from segcrit.criteo.constants import (
    AUDIENCE_SEGMENT_TYPE,
    CONTACTLIST_AMENDMENT_TYPE,
    AudienceErrorType,
    IdentifierType,
    Operation,
    ProblemType,
    SegmentType,
)


class CriteoModel(BaseModel):
    """Base of every Criteo model: camelCase on the wire, unknown keys ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
    )

    # The OpenAPI schema this model mirrors; "" for models outside the OpenAPI document.
    criteo_schema: ClassVar[str] = ""
    # True when the model names only some of the schema's properties (the rest pass through as
    # extra keys); the OpenAPI test then checks a subset instead of the same set.
    criteo_partial: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        """The JSON body: camelCase keys, optional fields that are None left out."""
        return self.model_dump(mode="json", exclude_none=True)


def _none_as_empty(value: object) -> object:
    # Criteo declares errors/warnings "nullable": a null list means "no problems".
    return [] if value is None else value


# ================================================================================================
# Problems (errors and warnings)
# ================================================================================================


class AudienceError(CriteoModel):
    """An error of the contact-list endpoints (`type`, `code` and `instance` required)."""

    criteo_schema: ClassVar[str] = "AudienceError"

    type: AudienceErrorType
    code: str
    instance: str
    trace_id: str | None = None
    title: str | None = None
    detail: str | None = None
    source: dict[str, Any] | None = None
    stack_trace: list[str] | None = None


class AudienceWarning(CriteoModel):
    """A warning of the contact-list endpoints (like AudienceError, `detail` required too)."""

    criteo_schema: ClassVar[str] = "AudienceWarning"

    type: AudienceErrorType
    code: str
    instance: str
    detail: str
    trace_id: str | None = None
    title: str | None = None
    source: dict[str, Any] | None = None
    stack_trace: list[str] | None = None


class CommonProblem(CriteoModel):
    """An error or warning of the audience-segment endpoints; every field is optional."""

    criteo_schema: ClassVar[str] = "CommonProblem"

    trace_id: str | None = None
    trace_identifier: str | None = None  # deprecated by Criteo in favour of traceId
    type: ProblemType | None = None
    code: str | None = None
    instance: str | None = None
    title: str | None = None
    detail: str | None = None
    source: dict[str, str] | None = None
    stack_trace: str | None = None


ProblemList = Annotated[list[CommonProblem], BeforeValidator(_none_as_empty)]


class _ProblemsMixin(CriteoModel):
    """`errors` and `warnings` of a segment-endpoint response, with a way to look for a code."""

    errors: ProblemList = Field(default_factory=list)
    warnings: ProblemList = Field(default_factory=list)

    def problems(self) -> list[CommonProblem]:
        """Errors then warnings: Criteo reports per-item failures in either list (both seen)."""
        return [*self.errors, *self.warnings]

    def has_problem(self, code: str) -> bool:
        return any(problem.code == code for problem in self.problems())


# ================================================================================================
# Contact list: PATCH (add/remove identifiers), DELETE (wipe), statistics
# ================================================================================================


class ContactlistAmendmentAttributes(CriteoModel):
    """What to do to the list: add or remove `identifiers`, all of one `identifier_type`."""

    criteo_schema: ClassVar[str] = "ContactlistAmendment#/properties/attributes"

    operation: Operation
    identifiers: list[str]
    # Optional in Criteo's schema; segcrit always sends it.
    identifier_type: IdentifierType | None = None
    # Required by Criteo when identifier_type is "gum": the advertiser's GUM caller id.
    gum_caller_id: int | None = None


class ContactlistAmendment(CriteoModel):
    criteo_schema: ClassVar[str] = "ContactlistAmendment"

    type: str
    attributes: ContactlistAmendmentAttributes


class ContactlistAmendmentRequest(CriteoModel):
    """Body of `PATCH .../audience-segments/{id}/contact-list`."""

    criteo_schema: ClassVar[str] = "ContactlistAmendmentRequest"

    data: ContactlistAmendment

    @classmethod
    def build(
        cls,
        operation: Operation,
        identifier_type: IdentifierType,
        identifiers: list[str],
        *,
        gum_caller_id: int | None = None,
    ) -> ContactlistAmendmentRequest:
        """One amendment: `operation` on `identifiers` (at most MAX_IDENTIFIERS_PER_CALL)."""
        attributes = ContactlistAmendmentAttributes(
            operation=operation,
            identifier_type=identifier_type,
            identifiers=identifiers,
            gum_caller_id=gum_caller_id,
        )
        return cls(data=ContactlistAmendment(type=CONTACTLIST_AMENDMENT_TYPE, attributes=attributes))


class ContactlistOperationAttributes(CriteoModel):
    """Criteo's summary of one amendment; invalid identifiers are counted, not rejected."""

    criteo_schema: ClassVar[str] = "ContactlistOperation#/properties/attributes"

    operation: str
    contact_list_id: int | None = None  # Criteo's docs also show it as a string: lax parsing takes both
    identifier_type: str | None = None
    nb_valid_identifiers: int | None = None
    nb_invalid_identifiers: int | None = None
    request_date: datetime | None = None
    sample_invalid_identifiers: list[str] | None = None


class ContactlistOperation(CriteoModel):
    criteo_schema: ClassVar[str] = "ContactlistOperation"

    type: str
    attributes: ContactlistOperationAttributes


class ModifyAudienceResponse(CriteoModel):
    """Response of the contact-list PATCH."""

    criteo_schema: ClassVar[str] = "ModifyAudienceResponse"

    data: ContactlistOperation
    errors: list[AudienceError]
    warnings: list[AudienceWarning]


class AudienceNameDescription(CriteoModel):
    criteo_schema: ClassVar[str] = "AudienceNameDescription"

    name: str | None = None
    description: str | None = None


class BasicAudienceDefinition(CriteoModel):
    criteo_schema: ClassVar[str] = "BasicAudienceDefinition"

    id: str
    type: str
    attributes: AudienceNameDescription | None = None


class DeleteAudienceContactListResponse(CriteoModel):
    """Response of the contact-list DELETE (the list is emptied, the segment stays)."""

    criteo_schema: ClassVar[str] = "DeleteAudienceContactListResponse"

    data: BasicAudienceDefinition
    errors: list[AudienceError]
    warnings: list[AudienceWarning]


class ContactListStatisticsEntityV1(CriteoModel):
    criteo_schema: ClassVar[str] = "ContactListStatisticsEntityV1"

    number_of_identifiers: int | None = None
    number_of_matches: int | None = None
    match_rate: float | None = None


class ContactListStatisticsEntityV1Resource(CriteoModel):
    criteo_schema: ClassVar[str] = "ContactListStatisticsEntityV1Resource"

    id: str | None = None
    type: str | None = None
    attributes: ContactListStatisticsEntityV1 | None = None


class ContactListStatisticsEntityV1Response(_ProblemsMixin):
    """Response of `GET .../audience-segments/{id}/contact-list/statistics`."""

    criteo_schema: ClassVar[str] = "ContactListStatisticsEntityV1Response"

    data: ContactListStatisticsEntityV1Resource | None = None


# ================================================================================================
# Audience segments: create, search, delete
# ================================================================================================

# Segment kinds segcrit never creates: kept opaque so that parsing Criteo's answers loses nothing.
OpaqueBlock = dict[str, Any]


class ContactListCreateV1(CriteoModel):
    """The `contactList: {}` block that makes a new segment a contact list (no settings)."""

    criteo_schema: ClassVar[str] = "ContactListCreateV1"


class LookalikeCreateV1(CriteoModel):
    criteo_schema: ClassVar[str] = "LookalikeCreateV1"

    seed_segment_id: str
    target_size: int | None = None


class AudienceSegmentCreateEntityV1(CriteoModel):
    """One segment to create; exactly one kind block (segcrit uses contact_list or lookalike)."""

    criteo_schema: ClassVar[str] = "AudienceSegmentCreateEntityV1"

    advertiser_id: str
    name: str
    description: str | None = None
    contact_list: ContactListCreateV1 | None = None
    lookalike: LookalikeCreateV1 | None = None
    in_market: OpaqueBlock | None = None
    location: OpaqueBlock | None = None
    prospecting: OpaqueBlock | None = None
    retargeting: OpaqueBlock | None = None

    @classmethod
    def contact_list_segment(
        cls, advertiser_id: str, name: str, description: str | None = None
    ) -> AudienceSegmentCreateEntityV1:
        return cls(
            advertiser_id=advertiser_id,
            name=name,
            description=description,
            contact_list=ContactListCreateV1(),
        )

    @classmethod
    def lookalike_segment(
        cls,
        advertiser_id: str,
        name: str,
        seed_segment_id: str,
        target_size: int | None = None,
        description: str | None = None,
    ) -> AudienceSegmentCreateEntityV1:
        return cls(
            advertiser_id=advertiser_id,
            name=name,
            description=description,
            lookalike=LookalikeCreateV1(seed_segment_id=seed_segment_id, target_size=target_size),
        )


class AudienceSegmentCreateEntityV1Resource(CriteoModel):
    criteo_schema: ClassVar[str] = "AudienceSegmentCreateEntityV1Resource"

    type: str | None = None
    attributes: AudienceSegmentCreateEntityV1 | None = None


class AudienceSegmentBulkCreateInputV1(CriteoModel):
    """Body of `POST .../audience-segments/create`."""

    criteo_schema: ClassVar[str] = "AudienceSegmentBulkCreateInputV1"

    data: list[AudienceSegmentCreateEntityV1Resource] | None = None

    @classmethod
    def of(cls, *segments: AudienceSegmentCreateEntityV1) -> AudienceSegmentBulkCreateInputV1:
        return cls(
            data=[
                AudienceSegmentCreateEntityV1Resource(type=AUDIENCE_SEGMENT_TYPE, attributes=segment)
                for segment in segments
            ]
        )


class ContactListV1(CriteoModel):
    criteo_schema: ClassVar[str] = "ContactListV1"

    is_read_only: bool | None = None


class LookalikeV1(CriteoModel):
    criteo_schema: ClassVar[str] = "LookalikeV1"

    seed_segment_id: str | None = None
    target_size: int | None = None


class AudienceSegmentEntityV1(CriteoModel):
    """A segment as Criteo describes it (in create and search responses)."""

    criteo_schema: ClassVar[str] = "AudienceSegmentEntityV1"

    advertiser_id: str | None = None
    name: str | None = None
    description: str | None = None
    type: SegmentType | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    contact_list: ContactListV1 | None = None
    lookalike: LookalikeV1 | None = None
    behavioral: OpaqueBlock | None = None
    in_market: OpaqueBlock | None = None
    location: OpaqueBlock | None = None
    prospecting: OpaqueBlock | None = None
    retargeting: OpaqueBlock | None = None


class AudienceSegmentEntityV1Resource(CriteoModel):
    criteo_schema: ClassVar[str] = "AudienceSegmentEntityV1Resource"

    id: str | None = None
    type: str | None = None
    attributes: AudienceSegmentEntityV1 | None = None


class AudienceSegmentEntityV1ListResponse(_ProblemsMixin):
    """Response of create (and update): the segments made, per-item failures in errors/warnings."""

    criteo_schema: ClassVar[str] = "AudienceSegmentEntityV1ListResponse"

    data: Annotated[list[AudienceSegmentEntityV1Resource], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list
    )


class AudienceSegmentSearchEntityV1(CriteoModel):
    """Search filters, AND-ed; there is no name filter (find by name = page and compare)."""

    criteo_schema: ClassVar[str] = "AudienceSegmentSearchEntityV1"

    advertiser_ids: list[str] | None = None
    audience_segment_ids: list[str] | None = None
    audience_segment_types: list[SegmentType] | None = None


class AudienceSegmentSearchEntityV1Resource(CriteoModel):
    criteo_schema: ClassVar[str] = "AudienceSegmentSearchEntityV1Resource"

    type: str | None = None
    attributes: AudienceSegmentSearchEntityV1 | None = None


class AudienceSegmentSearchInputV1(CriteoModel):
    """Body of `POST .../audience-segments/search?limit=&offset=`."""

    criteo_schema: ClassVar[str] = "AudienceSegmentSearchInputV1"

    data: AudienceSegmentSearchEntityV1Resource | None = None

    @classmethod
    def build(
        cls,
        advertiser_ids: list[str] | None = None,
        audience_segment_ids: list[str] | None = None,
        audience_segment_types: list[SegmentType] | None = None,
    ) -> AudienceSegmentSearchInputV1:
        filters = AudienceSegmentSearchEntityV1(
            advertiser_ids=advertiser_ids,
            audience_segment_ids=audience_segment_ids,
            audience_segment_types=audience_segment_types,
        )
        return cls(data=AudienceSegmentSearchEntityV1Resource(type=AUDIENCE_SEGMENT_TYPE, attributes=filters))


class AudienceSegmentSearchMetadataV1(CriteoModel):
    """Paging of a search: page while `offset + limit < total_items`."""

    criteo_schema: ClassVar[str] = "AudienceSegmentSearchMetadataV1"

    total_items: int | None = None
    limit: int | None = None
    offset: int | None = None


class AudienceSegmentSearchResponse(AudienceSegmentEntityV1ListResponse):
    """Response of search: segments plus paging `meta` (Criteo's long name is in criteo_schema)."""

    criteo_schema: ClassVar[str] = "AudienceSegmentEntityV1AudienceSegmentSearchMetadataV1ListResponse"

    meta: AudienceSegmentSearchMetadataV1 | None = None


class AudienceSegmentDeleteEntityV1(CriteoModel):
    """Empty attributes of a segment to delete (the id is on the resource)."""

    criteo_schema: ClassVar[str] = "AudienceSegmentDeleteEntityV1"


class AudienceSegmentDeleteEntityV1Resource(CriteoModel):
    criteo_schema: ClassVar[str] = "AudienceSegmentDeleteEntityV1Resource"

    id: str | None = None
    type: str | None = None
    attributes: AudienceSegmentDeleteEntityV1 | None = None


class AudienceSegmentBulkDeleteInputV1(CriteoModel):
    """Body of `POST .../audience-segments/delete`."""

    criteo_schema: ClassVar[str] = "AudienceSegmentBulkDeleteInputV1"

    data: list[AudienceSegmentDeleteEntityV1Resource] | None = None

    @classmethod
    def of_ids(cls, *segment_ids: str) -> AudienceSegmentBulkDeleteInputV1:
        return cls(
            data=[
                AudienceSegmentDeleteEntityV1Resource(
                    id=segment_id, type=AUDIENCE_SEGMENT_TYPE, attributes=AudienceSegmentDeleteEntityV1()
                )
                for segment_id in segment_ids
            ]
        )


class AudienceSegmentIdEntityV1(CriteoModel):
    criteo_schema: ClassVar[str] = "AudienceSegmentIdEntityV1"


class AudienceSegmentIdEntityV1Resource(CriteoModel):
    criteo_schema: ClassVar[str] = "AudienceSegmentIdEntityV1Resource"

    id: str | None = None
    type: str | None = None
    attributes: AudienceSegmentIdEntityV1 | None = None


class AudienceSegmentIdEntityV1ListResponse(_ProblemsMixin):
    """Response of delete: the ids deleted, unknown ids as `segment-not-found` problems."""

    criteo_schema: ClassVar[str] = "AudienceSegmentIdEntityV1ListResponse"

    data: Annotated[list[AudienceSegmentIdEntityV1Resource], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list
    )


# ================================================================================================
# OAuth (not in the OpenAPI document: shapes from the SDK's `criteo_auth.py` and Criteo's docs)
# ================================================================================================


class TokenResponse(BaseModel):
    """Answer of `POST /oauth2/token` (snake_case on the wire, as OAuth 2 has it)."""

    model_config = ConfigDict(extra="ignore")

    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    # Always null for client credentials, but Criteo's SDK reads the key unconditionally.
    refresh_token: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class OAuthError(BaseModel):
    """Error answer of `POST /oauth2/token` (RFC 6749 section 5.2)."""

    model_config = ConfigDict(extra="ignore")

    error: str
    error_description: str | None = None
    error_uri: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
