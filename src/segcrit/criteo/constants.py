"""The Criteo facts segcrit depends on, pinned in one place.

Paths, limits, enums and error codes come from Criteo's OpenAPI document (2026-07) and the notes in
`shared/reference/criteo-api.md`; the client and the emulator both import them from here so that the
two can never disagree about the outside world.
"""

from __future__ import annotations

from typing import Final, Literal

# --- Versions and hosts -------------------------------------------------------------------------

API_URL_DEFAULT: Final = "https://api.criteo.com"
API_VERSION_DEFAULT: Final = "2026-07"
# Criteo names versions YYYY-MM (January and July releases) plus "preview"; the emulator accepts any.
API_VERSION_PATTERN: Final = r"\d{4}-\d{2}|preview"

# --- Paths (append to the API URL; `{version}` is the API version, `{segment_id}` a numeric id) -------

TOKEN_PATH: Final = "/oauth2/token"  # unversioned, unlike every business path
AUDIENCE_SEGMENTS_PATH: Final = "/{version}/marketing-solutions/audience-segments"
SEARCH_SEGMENTS_PATH: Final = AUDIENCE_SEGMENTS_PATH + "/search"
CREATE_SEGMENTS_PATH: Final = AUDIENCE_SEGMENTS_PATH + "/create"
DELETE_SEGMENTS_PATH: Final = AUDIENCE_SEGMENTS_PATH + "/delete"
CONTACT_LIST_PATH: Final = AUDIENCE_SEGMENTS_PATH + "/{segment_id}/contact-list"
CONTACT_LIST_STATISTICS_PATH: Final = CONTACT_LIST_PATH + "/statistics"
# The Product Importer API exists only under "preview" (and "experimental"): never the pinned version.
CATALOG_BATCH_PATH: Final = "/preview/catalog/products/batch"
CATALOG_REPORT_PATH: Final = CATALOG_BATCH_PATH + "/report/{operation_token}"

# --- Events API (server-to-server OneTag, `s2s_v0`): not in the OpenAPI, not behind OAuth ------------

EVENTS_URL_DEFAULT: Final = "https://widget.criteo.com/m/event?version=s2s_v0"
EVENTS_PATH: Final = "/m/event"
EVENTS_VERSION: Final = "s2s_v0"  # the `version` query parameter of the endpoint
# Criteo's own server-side tag follows at most 5 redirects (reference §5.1).
EVENTS_MAX_REDIRECTS: Final = 5
# Criteo publishes no limit for the Events API host; segcrit's guess, kept apart from the 250/min.
EVENTS_RATE_LIMIT_PER_MINUTE_DEFAULT: Final = 1_000

# --- Authentication -----------------------------------------------------------------------------

TOKEN_LIFETIME_SECS: Final = 900  # "expires_in": 900 on every client_credentials token
GRANT_TYPE_CLIENT_CREDENTIALS: Final = "client_credentials"

# --- Limits -------------------------------------------------------------------------------------

MAX_IDENTIFIERS_PER_CALL: Final = 50_000  # per contact-list PATCH (RudderStack + Criteo docs)
RATE_LIMIT_PER_MINUTE_DEFAULT: Final = 250  # client-credentials apps, token calls included
RATE_LIMIT_WINDOW_SECS: Final = 60
SEARCH_LIMIT_DEFAULT: Final = 50
SEARCH_LIMIT_MAX: Final = 100

# --- Enums --------------------------------------------------------------------------------------

IdentifierType = Literal["email", "madid", "identityLink", "gum", "phoneNumber"]
IDENTIFIER_TYPES: Final[tuple[IdentifierType, ...]] = ("email", "madid", "identityLink", "gum", "phoneNumber")

Operation = Literal["add", "remove"]
OPERATIONS: Final[tuple[Operation, ...]] = ("add", "remove")

SegmentType = Literal[
    "Unknown", "InMarket", "Prospecting", "ContactList", "Location", "Behavioral", "Retargeting", "Lookalike"
]
SEGMENT_TYPES: Final[tuple[SegmentType, ...]] = (
    "Unknown",
    "InMarket",
    "Prospecting",
    "ContactList",
    "Location",
    "Behavioral",
    "Retargeting",
    "Lookalike",
)

# The browsing events segcrit maps Segment events to (the product_signals flow).
SignalEvent = Literal["viewHome", "viewItem", "viewList", "addToCart", "viewBasket", "beginCheckout"]

# OneTag event names (reference §5.2), web and app flavours; segcrit sends the six signals and
# trackTransaction.
EventName = Literal[
    "viewHome",
    "viewPage",
    "viewItem",
    "viewList",
    "addToCart",
    "viewBasket",
    "beginCheckout",
    "addPaymentInfo",
    "trackTransaction",
    "login",
    "viewListing",
    "viewProduct",
]
# `site_type`: desktop, mobile web, tablet.
SiteType = Literal["d", "m", "t"]

# Catalog batch entries and the states of their report (done once VALIDATED*, or FAILED).
CatalogMethod = Literal["insert", "delete"]
ReportStatus = Literal["ACCEPTED", "IN_PROGRESS", "VALIDATED", "VALIDATED_WITH_ERRORS", "FAILED"]
REPORT_FINAL_STATUSES: Final[frozenset[ReportStatus]] = frozenset({"VALIDATED", "VALIDATED_WITH_ERRORS", "FAILED"})
ProductErrorType = Literal[
    "UnknownError",
    "InvalidBigImageUrl",
    "InvalidProductId",
    "InvalidProductUrl",
    "InvalidSmallImageUrl",
    "JsonParsingIssue",
    "MissingID",
    "MissingImages",
    "MissingName",
    "MissingURL",
    "NonAsciiId",
    "OverlargeBigImage",
    "OverlargeID",
    "OverlargeSmallImage",
    "OverlargeURL",
    "ConfigurationError",
]
ProductWarningType = Literal["OverlargeBadgeUrl", "InvalidBadgeUrl"]
# Product field limits in UTF-8 characters (reference §6.1).
PRODUCT_MAX_CHARS: Final = {
    "title": 500,
    "link": 1000,
    "imageLink": 2000,
    "description": 5000,
    "itemGroupId": 50,
}

# `type` of an AudienceError (contact-list endpoints) and of a CommonProblem (segment endpoints,
# which add "unknown").
AudienceErrorType = Literal[
    "access-control", "authentication", "authorization", "availability", "deprecation", "quota", "validation"
]
ProblemType = Literal[
    "unknown",
    "access-control",
    "authentication",
    "authorization",
    "availability",
    "deprecation",
    "quota",
    "validation",
]

# --- Entity type names used in request/response envelopes -----------------------------------------

CONTACTLIST_AMENDMENT_TYPE: Final = "ContactlistAmendment"
AUDIENCE_SEGMENT_TYPE: Final = "AudienceSegment"
AUDIENCE_CONTACTLIST_TYPE: Final = "AudienceContactlist"
CONTACT_LIST_STATISTICS_TYPE: Final = "ContactListStatistics"

# --- Error codes (errors[].code) ----------------------------------------------------------------

CODE_TOKEN_INVALID: Final = "authorization-token-invalid"
CODE_TOKEN_EXPIRED: Final = "authorization-token-expired"
CODE_AUDIENCE_INVALID: Final = "audience-invalid"  # 404 on contact-list calls for an unknown segment
CODE_NAME_MUST_BE_UNIQUE: Final = "name-must-be-unique"
CODE_NAME_MUST_NOT_BE_EMPTY: Final = "name-must-not-be-empty"
CODE_SEGMENT_NOT_FOUND: Final = "segment-not-found"
CODE_REQUIRED_FIELD: Final = "required-field"
CODE_INVALID: Final = "invalid"
CODE_INVALID_RANGED: Final = "invalid-ranged"
CODE_BATCH_EMPTY: Final = "batch-empty"  # catalog batch without entries (Criteo's docs, D10)
# Criteo documents that the same product twice in one batch rejects the whole batch, but not the
# answer: the emulator's choice is a 400 with this code, in the shape of `batch-empty`.
CODE_DUPLICATE_PRODUCT: Final = "duplicate-product-in-batch"
# Criteo documents no code for these answers; the emulator's choice. Decide on the status, not on them.
CODE_FORBIDDEN: Final = "forbidden"  # 403: an advertiser the application has no consent for
CODE_RATE_LIMITED: Final = "rate-limited"  # 429 (Criteo's 429 body is undocumented, maybe empty)
CODE_INTERNAL_ERROR: Final = "internal-error"  # 5xx
CODE_REPORT_NOT_FOUND: Final = "report-not-found"  # 404: unknown or expired catalog operation token

# --- Rate-limit response headers ----------------------------------------------------------------

HEADER_RATELIMIT_LIMIT: Final = "x-ratelimit-limit"
HEADER_RATELIMIT_REMAINING: Final = "x-ratelimit-remaining"
HEADER_RATELIMIT_RESET: Final = "x-ratelimit-reset"  # unix seconds when a call may be made again
