"""Pydantic models of Criteo's Product Importer API (catalog), from the *preview* OpenAPI document.

    POST /preview/catalog/products/batch                       ProductsCustomBatchRequest -> 202 BatchAcceptedResponse
    GET  /preview/catalog/products/batch/report/{token}        -> 200 ReportOkResponse

Same conventions as `segcrit.criteo.models` (camelCase on the wire, `criteo_schema` names the schema,
`tests/unit/test_criteo_catalog_models.py` holds them against `marketingsolutions_preview.json`).
`Product` models the fields segcrit sends and a few it reads (`criteo_partial`); Criteo's other ~80
Google-Merchant fields pass through untouched as extra keys.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from segcrit.criteo.constants import (
    REPORT_FINAL_STATUSES,
    CatalogMethod,
    ProductErrorType,
    ProductWarningType,
    ReportStatus,
)
from segcrit.criteo.models import CriteoModel

INT32_MAX = 2**31 - 1


def _number_as_text(value: object) -> object:
    # The schema says string (format int32/int64); a number in its place means the same.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


NumberText = Annotated[str | None, BeforeValidator(_number_as_text)]


# ================================================================================================
# The batch request
# ================================================================================================


class Price(CriteoModel):
    """`{currency, value}`, the value a decimal number written as a string ("49.99")."""

    criteo_schema: ClassVar[str] = "Price"

    currency: str | None = None
    value: str | None = None


class Product(CriteoModel):
    """One product of an `insert` entry: the fields segcrit sends, any other field kept as is."""

    criteo_schema: ClassVar[str] = "Product"
    criteo_partial: ClassVar[bool] = True
    model_config = ConfigDict(extra="allow")

    id: str
    title: str
    link: str
    image_link: str
    # The only value Criteo's schema allows; required there although its docs say it defaults to it.
    channel: Literal["online"]
    description: str | None = None
    price: Price | None = None
    sale_price: Price | None = None
    brand: str | None = None
    product_types: list[str] | None = None
    mpn: str | None = None
    gtin: str | None = None
    item_group_id: str | None = None
    availability: str | None = None
    condition: str | None = None
    additional_image_links: list[str] | None = None
    badge: str | None = None


class ProductsCustomBatchRequestEntry(CriteoModel):
    """One operation of a batch: `insert` (create or replace) a product, or `delete` one."""

    criteo_schema: ClassVar[str] = "ProductsCustomBatchRequestEntry"

    merchant_id: Annotated[int, Field(ge=0, le=INT32_MAX)]  # "Criteo: the partnerId"
    method: CatalogMethod
    batch_id: int | None = None  # unique within the batch
    product: Product | None = None  # for insert
    product_id: str | None = None  # for delete
    feed_id: str | None = None  # "Not used by Criteo"
    item_group_id: str | None = None  # deprecated, delete of a variant only

    @property
    def target_id(self) -> str | None:
        """The product this entry is about: the inserted product's id, or the one to delete."""
        if self.method == "insert":
            return self.product.id if self.product is not None else None
        return self.product_id

    @classmethod
    def insert(cls, merchant_id: int, product: Product, batch_id: int | None = None) -> ProductsCustomBatchRequestEntry:
        return cls(merchant_id=merchant_id, method="insert", batch_id=batch_id, product=product)

    @classmethod
    def delete(cls, merchant_id: int, product_id: str, batch_id: int | None = None) -> ProductsCustomBatchRequestEntry:
        return cls(merchant_id=merchant_id, method="delete", batch_id=batch_id, product_id=product_id)


class ProductsCustomBatchRequest(CriteoModel):
    """Body of `POST /preview/catalog/products/batch`."""

    criteo_schema: ClassVar[str] = "ProductsCustomBatchRequest"

    entries: list[ProductsCustomBatchRequestEntry]


# ================================================================================================
# The answers
# ================================================================================================


class BatchAcceptedResponse(CriteoModel):
    """202 to a batch: the token to ask for its report with."""

    criteo_schema: ClassVar[str] = "BatchAcceptedResponse"

    operation_token: str


class ReportDetailError(CriteoModel):
    criteo_schema: ClassVar[str] = "ReportDetailError"

    type: ProductErrorType
    message: str
    is_server_related: bool


class ReportDetailErrors(CriteoModel):
    """The errors of one product; `product_id` is lowercased by Criteo."""

    criteo_schema: ClassVar[str] = "ReportDetailErrors"

    product_id: str
    errors: list[ReportDetailError]


class ReportDetailWarning(CriteoModel):
    criteo_schema: ClassVar[str] = "ReportDetailWarning"

    type: ProductWarningType
    message: str
    is_server_related: bool


class ReportDetailWarnings(CriteoModel):
    criteo_schema: ClassVar[str] = "ReportDetailWarnings"

    product_id: str
    warnings: list[ReportDetailWarning]


_REPORT_LISTS = ("errorDetails", "warningDetails")
_REPORT_COUNTS = (
    "importRequestTimestamp",
    "numberOfProductsDeleted",
    "numberOfProductsInTheBatch",
    "numberOfProductsUpserted",
    "numberOfProductsWithErrors",
    "numberOfProductsWithWarnings",
)


class ReportOkResponse(CriteoModel):
    """The report of a batch: its status and, once done, the count and detail of failed products.

    Every property is required by Criteo's schema (the counts nullable), and the emulator always sends
    them all. Reading, an absent list counts as empty and an absent count as null, so a leaner answer
    from Criteo cannot leave a batch unreadable for ever.
    """

    criteo_schema: ClassVar[str] = "ReportOkResponse"

    status: ReportStatus
    import_request_timestamp: NumberText  # unix milliseconds (a guess: the schema says "int64")
    number_of_products_in_the_batch: NumberText
    number_of_products_upserted: NumberText
    number_of_products_deleted: NumberText
    number_of_products_with_errors: NumberText
    number_of_products_with_warnings: NumberText
    error_details: list[ReportDetailErrors]
    warning_details: list[ReportDetailWarnings]

    @model_validator(mode="before")
    @classmethod
    def _tolerate_absent(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        filled = dict(value)
        for key in _REPORT_LISTS:
            if filled.get(key) is None and _snake(key) not in filled:
                filled[key] = []
        for key in _REPORT_COUNTS:
            if key not in filled and _snake(key) not in filled:
                filled[key] = None
        return filled

    @property
    def done(self) -> bool:
        """Criteo has finished with the batch (VALIDATED, VALIDATED_WITH_ERRORS or FAILED)."""
        return self.status in REPORT_FINAL_STATUSES

    def errors_by_product(self) -> dict[str, list[ReportDetailError]]:
        """Errors per product id, lowercased (compare with `product_id.lower()`)."""
        found: dict[str, list[ReportDetailError]] = {}
        for detail in self.error_details:
            found.setdefault(detail.product_id.lower(), []).extend(detail.errors)
        return found

    @property
    def counts(self) -> dict[str, int | None]:
        """The string counts as ints (None when null or not a number), by short name."""
        return {
            "in_the_batch": _as_int(self.number_of_products_in_the_batch),
            "upserted": _as_int(self.number_of_products_upserted),
            "deleted": _as_int(self.number_of_products_deleted),
            "with_errors": _as_int(self.number_of_products_with_errors),
            "with_warnings": _as_int(self.number_of_products_with_warnings),
        }


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
