"""A model of the Events API document (server-to-server OneTag, `s2s_v0`).

Criteo publishes no schema for it: not in any OpenAPI document, only integration guides. The shapes
here come from `shared/reference/criteo-api.md` §5.2 (Criteo's guides plus three production
integrations), and the rules the emulator enforces from §9 item 24, which are themselves inferred:
`account` and `id.mapping_key` required, a non-empty `events[]`, each with a known `event` name, and a
`trackTransaction` with an `id` and an `item` list.

Keys are snake_case on the wire, as Criteo's guides write them (unlike the Marketing API's camelCase).
Unknown keys (`previous_url`, `deduplication_page_view_id`, travel fields, ...) are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from segcrit.criteo.constants import EventName, SiteType


def _number_as_text(value: object) -> object:
    # `account` is "12345" in the guides but an integer in the offline-sales variant.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_number_as_text), Field(min_length=1)]
_MD5 = r"^[0-9a-f]{32}$"
_SHA256 = r"^[0-9a-f]{64}$"


class EventsModel(BaseModel):
    """Base of the Events API models: snake_case as on the wire, unknown keys ignored."""

    model_config = ConfigDict(extra="ignore")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class EventEmail(EventsModel):
    """Any subset of the forms of one email, hashes as lowercase hex of the trimmed, lowercased email."""

    raw: str | None = None
    md5: Annotated[str, Field(pattern=_MD5)] | None = None
    sha256: Annotated[str, Field(pattern=_SHA256)] | None = None
    sha256_md5: Annotated[str, Field(pattern=_SHA256)] | None = None


class EventUserIds(EventsModel):
    """Who the person is: the advertiser's caller id, plus a GUM id and/or an email."""

    mapping_key: Text  # the caller id Criteo issued for user mapping
    mapped_user_id: str | None = None  # the GUM id
    email: EventEmail | None = None


class EventItem(EventsModel):
    """A product; `id` must be the catalog's product id."""

    id: Text
    price: float | None = None
    quantity: Annotated[int, Field(ge=0)] | None = None


class Event(EventsModel):
    event: EventName
    timestamp: str | None = None  # ISO-8601
    id: Annotated[str, BeforeValidator(_number_as_text)] | None = None  # the order id of a trackTransaction
    currency: str | None = None  # ISO-4217, OneTag style (an inference: reference §5.2)
    item: list[EventItem] | None = None
    keywords: str | None = None  # a search's terms (viewList)

    @model_validator(mode="after")
    def _transaction_needs_id_and_items(self) -> Self:
        if self.event == "trackTransaction":
            if not self.id:
                raise ValueError("trackTransaction needs an id (the order id)")
            # An empty list passes: segcrit reports an order without products rather than dropping it.
            if self.item is None:
                raise ValueError("trackTransaction needs an item list")
        return self


class EventsDocument(EventsModel):
    """One person's events: `POST {events_url}` with this as the JSON body."""

    account: Text  # the partner id
    id: EventUserIds
    events: Annotated[list[Event], Field(min_length=1)]
    site_type: SiteType | None = None  # d (default), m, t
    version: str | None = None  # a free integration identifier
    retailer_visitor_id: str | None = None
    ip: str | None = None
    useragent: str | None = None
    full_url: str | None = None
    previous_url: str | None = None
    country: str | None = None
    language: str | None = None
