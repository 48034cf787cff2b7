"""The emulator's own models of Criteo's schemas: what it accepts, and what it answers.

Written apart from the client's models (`segcrit.criteo.models`, `catalog_models`, `event_models`)
on purpose: were the emulator to validate requests with the client's models, a mistake in those
models (a misspelt key, snake_case on the wire) would be accepted by both and no test would see it.
`tests/unit/test_emulator_schemas.py` holds these models against Criteo's OpenAPI documents, as
`tests/unit/test_criteo_models.py` does for the client's, and checks that no emulator module
imports the client's models.

Requests (`Request`) are read as Criteo has them on the wire: camelCase keys only (a snake_case
key is not the property it names). A key the schema does not have is tolerated, as Criteo
tolerates it (RudderStack sends `internalIdentifiers` in production, reference §3), but it is
noted: `unknown_keys()` lists it, the endpoints record it (`EmulatorState.unknown_keys()`), and the
test suite fails any test after which the emulator noted one, so that a misspelt optional key in
the client's models is caught instead of silently dropped. Answers (`Answer`) are built by field
name and serialised in camelCase, absent optional fields left out.

Catalog `Product`: the fields the emulator judges are modelled; any other key is one of the
schema's 83 properties (`PRODUCT_PROPERTIES`), else unknown. The Events API document has no
published schema: its model follows `shared/reference/criteo-api.md` §5.2 (snake_case on the wire;
a key outside the integration guides is unknown).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from segcrit.criteo.constants import (
    AudienceErrorType,
    CatalogMethod,
    EventName,
    IdentifierType,
    Operation,
    ProblemType,
    ProductErrorType,
    ProductWarningType,
    ReportStatus,
    SegmentType,
    SiteType,
)

INT32_MAX = 2**31 - 1
# Segment kinds the emulator never creates: whatever object is sent passes through unread.
OpaqueBlock = dict[str, Any]


class Request(BaseModel):
    """A request body as Criteo's schema has it: camelCase keys only; other keys kept as extras."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_alias=True, validate_by_name=False, extra="allow")

    criteo_schema: ClassVar[str] = ""  # `Name` or `Name#/json/pointer`, as in segcrit.criteo.models
    criteo_partial: ClassVar[bool] = False
    # Extra keys that are properties of the schema all the same (those a partial model leaves out).
    known_extras: ClassVar[frozenset[str]] = frozenset()


def unknown_keys(model: BaseModel, path: str = "") -> list[str]:
    """The keys of a validated request that its schemas do not have, as dotted paths (`[]` for
    any list item), each once."""
    known: frozenset[str] = getattr(model, "known_extras", frozenset())
    found = [_join(path, key) for key in (model.model_extra or {}) if key not in known]
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        where = _join(path, field.alias or name)
        if isinstance(value, BaseModel):
            found += unknown_keys(value, where)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    found += unknown_keys(item, where + "[]")
    return list(dict.fromkeys(found))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Answer(BaseModel):
    """An answer body: built by field name, serialised in camelCase."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True, extra="forbid")

    criteo_schema: ClassVar[str] = ""
    criteo_partial: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# ================================================================================================
# Problems
# ================================================================================================


class CommonProblem(Answer):
    criteo_schema: ClassVar[str] = "CommonProblem"

    trace_id: str | None = None
    trace_identifier: str | None = None
    type: ProblemType | None = None
    code: str | None = None
    instance: str | None = None
    title: str | None = None
    detail: str | None = None
    source: dict[str, str] | None = None
    stack_trace: str | None = None


class AudienceError(Answer):
    criteo_schema: ClassVar[str] = "AudienceError"

    type: AudienceErrorType
    code: str
    instance: str
    trace_id: str | None = None
    title: str | None = None
    detail: str | None = None
    source: dict[str, Any] | None = None
    stack_trace: list[str] | None = None


class AudienceWarning(Answer):
    criteo_schema: ClassVar[str] = "AudienceWarning"

    type: AudienceErrorType
    code: str
    instance: str
    detail: str
    trace_id: str | None = None
    title: str | None = None
    source: dict[str, Any] | None = None
    stack_trace: list[str] | None = None


# ================================================================================================
# Contact list: PATCH, DELETE, statistics
# ================================================================================================


class ContactlistAmendmentAttributes(Request):
    criteo_schema: ClassVar[str] = "ContactlistAmendment#/properties/attributes"

    operation: Operation
    identifiers: list[str]
    identifier_type: IdentifierType | None = None
    gum_caller_id: int | None = None


class ContactlistAmendment(Request):
    criteo_schema: ClassVar[str] = "ContactlistAmendment"

    type: str
    attributes: ContactlistAmendmentAttributes


class ContactlistAmendmentRequest(Request):
    """Body of `PATCH .../audience-segments/{id}/contact-list`."""

    criteo_schema: ClassVar[str] = "ContactlistAmendmentRequest"

    data: ContactlistAmendment


class ContactlistOperationAttributes(Answer):
    criteo_schema: ClassVar[str] = "ContactlistOperation#/properties/attributes"

    operation: str
    contact_list_id: int | None = None
    identifier_type: str | None = None
    nb_valid_identifiers: int | None = None
    nb_invalid_identifiers: int | None = None
    request_date: datetime | None = None
    sample_invalid_identifiers: list[str] | None = None


class ContactlistOperation(Answer):
    criteo_schema: ClassVar[str] = "ContactlistOperation"

    type: str
    attributes: ContactlistOperationAttributes


class ModifyAudienceResponse(Answer):
    criteo_schema: ClassVar[str] = "ModifyAudienceResponse"

    data: ContactlistOperation
    errors: list[AudienceError]
    warnings: list[AudienceWarning]


class AudienceNameDescription(Answer):
    criteo_schema: ClassVar[str] = "AudienceNameDescription"

    name: str | None = None
    description: str | None = None


class BasicAudienceDefinition(Answer):
    criteo_schema: ClassVar[str] = "BasicAudienceDefinition"

    id: str
    type: str
    attributes: AudienceNameDescription | None = None


class DeleteAudienceContactListResponse(Answer):
    criteo_schema: ClassVar[str] = "DeleteAudienceContactListResponse"

    data: BasicAudienceDefinition
    errors: list[AudienceError]
    warnings: list[AudienceWarning]


class ContactListStatisticsEntityV1(Answer):
    criteo_schema: ClassVar[str] = "ContactListStatisticsEntityV1"

    number_of_identifiers: int | None = None
    number_of_matches: int | None = None
    match_rate: float | None = None


class ContactListStatisticsEntityV1Resource(Answer):
    criteo_schema: ClassVar[str] = "ContactListStatisticsEntityV1Resource"

    id: str | None = None
    type: str | None = None
    attributes: ContactListStatisticsEntityV1 | None = None


class ContactListStatisticsEntityV1Response(Answer):
    criteo_schema: ClassVar[str] = "ContactListStatisticsEntityV1Response"

    data: ContactListStatisticsEntityV1Resource | None = None
    errors: list[CommonProblem] = Field(default_factory=list)
    warnings: list[CommonProblem] = Field(default_factory=list)


# ================================================================================================
# Audience segments: create, search, delete
# ================================================================================================


class ContactListCreateV1(Request):
    criteo_schema: ClassVar[str] = "ContactListCreateV1"


class LookalikeCreateV1(Request):
    criteo_schema: ClassVar[str] = "LookalikeCreateV1"

    seed_segment_id: str
    target_size: int | None = None


class AudienceSegmentCreateEntityV1(Request):
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


class AudienceSegmentCreateEntityV1Resource(Request):
    criteo_schema: ClassVar[str] = "AudienceSegmentCreateEntityV1Resource"

    type: str | None = None
    attributes: AudienceSegmentCreateEntityV1 | None = None


class AudienceSegmentBulkCreateInputV1(Request):
    """Body of `POST .../audience-segments/create`."""

    criteo_schema: ClassVar[str] = "AudienceSegmentBulkCreateInputV1"

    data: list[AudienceSegmentCreateEntityV1Resource] | None = None


class AudienceSegmentSearchEntityV1(Request):
    criteo_schema: ClassVar[str] = "AudienceSegmentSearchEntityV1"

    advertiser_ids: list[str] | None = None
    audience_segment_ids: list[str] | None = None
    audience_segment_types: list[SegmentType] | None = None


class AudienceSegmentSearchEntityV1Resource(Request):
    criteo_schema: ClassVar[str] = "AudienceSegmentSearchEntityV1Resource"

    type: str | None = None
    attributes: AudienceSegmentSearchEntityV1 | None = None


class AudienceSegmentSearchInputV1(Request):
    """Body of `POST .../audience-segments/search`."""

    criteo_schema: ClassVar[str] = "AudienceSegmentSearchInputV1"

    data: AudienceSegmentSearchEntityV1Resource | None = None


class AudienceSegmentDeleteEntityV1(Request):
    criteo_schema: ClassVar[str] = "AudienceSegmentDeleteEntityV1"


class AudienceSegmentDeleteEntityV1Resource(Request):
    criteo_schema: ClassVar[str] = "AudienceSegmentDeleteEntityV1Resource"

    id: str | None = None
    type: str | None = None
    attributes: AudienceSegmentDeleteEntityV1 | None = None


class AudienceSegmentBulkDeleteInputV1(Request):
    """Body of `POST .../audience-segments/delete`."""

    criteo_schema: ClassVar[str] = "AudienceSegmentBulkDeleteInputV1"

    data: list[AudienceSegmentDeleteEntityV1Resource] | None = None


class ContactListV1(Answer):
    criteo_schema: ClassVar[str] = "ContactListV1"

    is_read_only: bool | None = None


class LookalikeV1(Answer):
    criteo_schema: ClassVar[str] = "LookalikeV1"

    seed_segment_id: str | None = None
    target_size: int | None = None


class AudienceSegmentEntityV1(Answer):
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


class AudienceSegmentEntityV1Resource(Answer):
    criteo_schema: ClassVar[str] = "AudienceSegmentEntityV1Resource"

    id: str | None = None
    type: str | None = None
    attributes: AudienceSegmentEntityV1 | None = None


class AudienceSegmentEntityV1ListResponse(Answer):
    """Answer of create: the segments made, per-item refusals as problems."""

    criteo_schema: ClassVar[str] = "AudienceSegmentEntityV1ListResponse"

    data: list[AudienceSegmentEntityV1Resource] = Field(default_factory=list)
    errors: list[CommonProblem] = Field(default_factory=list)
    warnings: list[CommonProblem] = Field(default_factory=list)


class AudienceSegmentSearchMetadataV1(Answer):
    criteo_schema: ClassVar[str] = "AudienceSegmentSearchMetadataV1"

    total_items: int | None = None
    limit: int | None = None
    offset: int | None = None


class AudienceSegmentSearchResponse(Answer):
    """Answer of search: a page of segments and its `meta`."""

    criteo_schema: ClassVar[str] = "AudienceSegmentEntityV1AudienceSegmentSearchMetadataV1ListResponse"

    data: list[AudienceSegmentEntityV1Resource] = Field(default_factory=list)
    meta: AudienceSegmentSearchMetadataV1 | None = None
    errors: list[CommonProblem] = Field(default_factory=list)
    warnings: list[CommonProblem] = Field(default_factory=list)


class AudienceSegmentIdEntityV1(Answer):
    criteo_schema: ClassVar[str] = "AudienceSegmentIdEntityV1"


class AudienceSegmentIdEntityV1Resource(Answer):
    criteo_schema: ClassVar[str] = "AudienceSegmentIdEntityV1Resource"

    id: str | None = None
    type: str | None = None
    attributes: AudienceSegmentIdEntityV1 | None = None


class AudienceSegmentIdEntityV1ListResponse(Answer):
    """Answer of delete: the ids deleted, unknown ids as problems."""

    criteo_schema: ClassVar[str] = "AudienceSegmentIdEntityV1ListResponse"

    data: list[AudienceSegmentIdEntityV1Resource] = Field(default_factory=list)
    errors: list[CommonProblem] = Field(default_factory=list)
    warnings: list[CommonProblem] = Field(default_factory=list)


# ================================================================================================
# Catalog (Product Importer API, the preview document)
# ================================================================================================

# Every property of Criteo's `Product` schema (the test compares this set with the document).
PRODUCT_PROPERTIES: frozenset[str] = frozenset(
    {
        *("additionalImageLinks", "adsGrouping", "adsLabels", "adsRedirect", "adult", "ageGroup"),
        *("availability", "availabilityDate", "badge", "brand", "channel", "color", "condition"),
        *("contentLanguage", "costOfGoodsSold", "customAttributes", "customLabel0", "customLabel1"),
        *("customLabel2", "customLabel3", "customLabel4", "description", "displayAdsId", "displayAdsLink"),
        *("displayAdsSimilarIds", "displayAdsTitle", "displayAdsValue", "energyEfficiencyClass"),
        *("excludedDestinations", "expirationDate", "externalSellerId", "externalSellerName", "filters"),
        *("gender", "googleProductCategory", "gtin", "id", "identifierExists", "imageLink"),
        *("includedDestinations", "installment", "isBundle", "itemGroupId", "kind", "link", "loyaltyPoints"),
        *("material", "maxEnergyEfficiencyClass", "maxHandlingTime", "minEnergyEfficiencyClass"),
        *("minHandlingTime", "mobileLink", "mpn", "multipack", "numberOfReviews", "offerId", "pattern"),
        *("price", "productRating", "productTypeKeys", "productTypes", "promotionIds", "salePrice"),
        *("salePriceEffectiveDate", "sellOnGoogleQuantity", "sellerId", "shipping", "shippingHeight"),
        *("shippingLabel", "shippingLength", "shippingWeight", "shippingWidth", "sizeSystem", "sizeType"),
        *("sizes", "source", "targetCountry", "taxCategory", "taxes", "title", "transitTimeLabel"),
        *("unitPricingBaseMeasure", "unitPricingMeasure"),
    }
)


class Price(Request):
    criteo_schema: ClassVar[str] = "Price"

    currency: str | None = None
    value: str | None = None


class Product(Request):
    """A product of an `insert` entry: the fields the emulator judges; the schema's other
    properties are kept as sent."""

    criteo_schema: ClassVar[str] = "Product"
    criteo_partial: ClassVar[bool] = True
    known_extras: ClassVar[frozenset[str]] = PRODUCT_PROPERTIES

    id: str
    title: str
    link: str
    image_link: str
    channel: Literal["online"]
    description: str | None = None
    price: Price | None = None
    sale_price: Price | None = None
    brand: str | None = None
    product_types: list[str] | None = None
    additional_image_links: list[str] | None = None
    badge: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The product as the catalog keeps it: camelCase, the extra properties as sent."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ProductsCustomBatchRequestEntry(Request):
    """One entry of a batch; its `product` is judged on its own (`Product`)."""

    criteo_schema: ClassVar[str] = "ProductsCustomBatchRequestEntry"

    merchant_id: Annotated[int, Field(ge=0, le=INT32_MAX)]
    method: CatalogMethod
    batch_id: int | None = None
    product: Product | None = None
    product_id: str | None = None
    feed_id: str | None = None
    item_group_id: str | None = None


class BatchAcceptedResponse(Answer):
    criteo_schema: ClassVar[str] = "BatchAcceptedResponse"

    operation_token: str


class ReportDetailError(Answer):
    criteo_schema: ClassVar[str] = "ReportDetailError"

    type: ProductErrorType
    message: str
    is_server_related: bool


class ReportDetailErrors(Answer):
    criteo_schema: ClassVar[str] = "ReportDetailErrors"

    product_id: str
    errors: list[ReportDetailError]


class ReportDetailWarning(Answer):
    criteo_schema: ClassVar[str] = "ReportDetailWarning"

    type: ProductWarningType
    message: str
    is_server_related: bool


class ReportDetailWarnings(Answer):
    criteo_schema: ClassVar[str] = "ReportDetailWarnings"

    product_id: str
    warnings: list[ReportDetailWarning]


class ReportOkResponse(Answer):
    """A batch's report; every property is required (the counts nullable) and always sent."""

    criteo_schema: ClassVar[str] = "ReportOkResponse"

    status: ReportStatus
    import_request_timestamp: str | None
    number_of_products_in_the_batch: str | None
    number_of_products_upserted: str | None
    number_of_products_deleted: str | None
    number_of_products_with_errors: str | None
    number_of_products_with_warnings: str | None
    error_details: list[ReportDetailErrors]
    warning_details: list[ReportDetailWarnings]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")  # nulls included: the properties are required


# ================================================================================================
# OAuth (RFC 6749; not in the OpenAPI documents)
# ================================================================================================


class TokenResponse(BaseModel):
    """Answer of `POST /oauth2/token`, snake_case as OAuth 2 has it."""

    model_config = ConfigDict(extra="forbid")

    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    refresh_token: str | None = None  # always null; Criteo's SDK reads the key all the same

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class OAuthError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str
    error_description: str | None = None
    error_uri: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# ================================================================================================
# Events API document (no published schema: reference §5.2, rules from §9 item 24)
# ================================================================================================


def _number_as_text(value: object) -> object:
    # `account` is "12345" in the guides, an integer in the offline-sales variant.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_number_as_text), Field(min_length=1)]
_MD5 = r"^[0-9a-f]{32}$"
_SHA256 = r"^[0-9a-f]{64}$"


class EventsSchema(BaseModel):
    """Snake_case on the wire, as Criteo's guides write it; other keys kept as extras."""

    model_config = ConfigDict(extra="allow")


class EventEmail(EventsSchema):
    raw: str | None = None
    md5: Annotated[str, Field(pattern=_MD5)] | None = None
    sha256: Annotated[str, Field(pattern=_SHA256)] | None = None
    sha256_md5: Annotated[str, Field(pattern=_SHA256)] | None = None


class EventUserIds(EventsSchema):
    mapping_key: Text
    mapped_user_id: str | None = None
    email: EventEmail | None = None


class EventItem(EventsSchema):
    id: Text
    price: float | None = None
    quantity: Annotated[int, Field(ge=0)] | None = None


class Event(EventsSchema):
    event: EventName
    timestamp: str | None = None
    id: Annotated[str, BeforeValidator(_number_as_text)] | None = None
    currency: str | None = None
    item: list[EventItem] | None = None
    keywords: str | None = None

    @model_validator(mode="after")
    def _transaction_needs_id_and_items(self) -> Self:
        if self.event == "trackTransaction":
            if not self.id:
                raise ValueError("trackTransaction needs an id (the order id)")
            if self.item is None:
                raise ValueError("trackTransaction needs an item list")
        return self


class EventsDocument(EventsSchema):
    """One person's events, the body of `POST {events_url}`."""

    account: Text
    id: EventUserIds
    events: Annotated[list[Event], Field(min_length=1)]
    site_type: SiteType | None = None
    version: str | None = None
    retailer_visitor_id: str | None = None
    ip: str | None = None
    useragent: str | None = None
    full_url: str | None = None
    previous_url: str | None = None
    country: str | None = None
    language: str | None = None
