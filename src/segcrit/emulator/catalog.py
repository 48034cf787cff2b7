"""The Product Importer API: a batch of catalog operations in, an operation token out, a report later.

`POST /preview/catalog/products/batch` checks the request itself at once and refuses it whole with
400 when it is malformed: no entries (`batch-empty`, Criteo's documented answer), a missing or wrong
entry field (`required-field` / `invalid`, detail `entries.method: field is required` as in Criteo's
docs), an `insert` without `product` or a `delete` without `productId`, a `batchId` used twice, or
the same product id twice. Criteo documents that the last one "makes the whole batch rejected" but
not how; the emulator's guess is this same 400 with code `duplicate-product-in-batch`. Product ids
are compared exactly (case-sensitively), like the ids in the catalog.

Products are checked one by one: a product with errors is left out and listed in the report with
Criteo's error types (MissingName, InvalidProductUrl, ...); the rest are applied to the merchant's
catalog at once. The answer is 202 `{"operationToken"}`. The report says ACCEPTED, then IN_PROGRESS,
for `catalog_report_polls` polls, then VALIDATED or VALIDATED_WITH_ERRORS; an unknown token, or one
older than Criteo's 4 days, is a 404 `report-not-found` (the code is the emulator's choice).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from segcrit.criteo.constants import (
    CODE_BATCH_EMPTY,
    CODE_DUPLICATE_PRODUCT,
    CODE_INVALID,
    CODE_REPORT_NOT_FOUND,
    CODE_REQUIRED_FIELD,
    PRODUCT_MAX_CHARS,
    ProductErrorType,
    ProductWarningType,
)
from segcrit.emulator.gateway import Call
from segcrit.emulator.problems import error_response, json_response, problem
from segcrit.emulator.schemas import (
    BatchAcceptedResponse,
    CommonProblem,
    Product,
    ProductsCustomBatchRequestEntry,
    ReportDetailError,
    ReportDetailErrors,
    ReportDetailWarning,
    ReportDetailWarnings,
    ReportOkResponse,
    unknown_keys,
)
from segcrit.emulator.state import EmulatorState

BATCH_REJECTED = "A batch request was rejected due to one or more errors."  # Criteo's title (D10)
# Criteo states no limit on ids; the emulator's guess. Image and badge URLs share imageLink's limit.
PRODUCT_ID_MAX_CHARS = 240
URL_SCHEMES = ("http://", "https://")

ProductProblems = tuple[list[ReportDetailError], list[ReportDetailWarning]]


# --- the batch ------------------------------------------------------------------------------------


def submit_batch(state: EmulatorState, call: Call) -> Response:
    try:
        body = call.json()
    except ValueError:
        return _rejected(call, CODE_INVALID, "The body is not valid JSON.")
    if not isinstance(body, dict):
        return _rejected(call, CODE_INVALID, "The body must be a JSON object.")
    raw_entries = body.get("entries")
    if raw_entries is None:
        return _rejected(call, CODE_REQUIRED_FIELD, "entries: field is required", field="entries")
    if not isinstance(raw_entries, list):
        return _rejected(call, CODE_INVALID, "entries: must be an array", field="entries")
    if not raw_entries:
        return _rejected(call, CODE_BATCH_EMPTY, "The batch is empty.")

    entries: list[tuple[ProductsCustomBatchRequestEntry, Any]] = []
    refusals: list[CommonProblem] = []
    for index, raw in enumerate(raw_entries):
        parsed = _entry(call, index, raw)
        if isinstance(parsed, list):
            refusals.extend(parsed)
        else:
            entries.append((parsed, raw.get("product")))
    refusals.extend(_repeated(call, entries))
    if refusals:
        return error_response(400, *refusals)

    for entry, _ in entries:
        state.note_unknown_keys(call.instance, unknown_keys(entry, "entries[]"))
    token = _apply(state, call, entries)
    return json_response(BatchAcceptedResponse(operation_token=token).to_json(), 202)


def _entry(call: Call, index: int, raw: Any) -> ProductsCustomBatchRequestEntry | list[CommonProblem]:
    """An entry with its fields checked (its product is checked later, on its own)."""
    if not isinstance(raw, dict):
        return [_problem(call, CODE_INVALID, "entries: must be an object", f"/entries/{index}")]
    try:
        entry = ProductsCustomBatchRequestEntry.model_validate({k: v for k, v in raw.items() if k != "product"})
    except ValidationError as error:
        return [_field_problem(call, index, item) for item in error.errors(include_url=False)]
    if entry.method == "insert" and raw.get("product") is None:
        return [_missing(call, index, "product", "entries.product: field is required for insert")]
    if entry.method == "delete" and not entry.product_id:
        return [_missing(call, index, "productId", "entries.productId: field is required for delete")]
    return entry


def _repeated(call: Call, entries: list[tuple[ProductsCustomBatchRequestEntry, Any]]) -> list[CommonProblem]:
    """The same product (or batchId) twice: the whole batch is refused."""
    product_ids = Counter(_raw_id(entry, raw) for entry, raw in entries if _raw_id(entry, raw) is not None)
    batch_ids = Counter(entry.batch_id for entry, _ in entries if entry.batch_id is not None)
    found = [
        _problem(
            call,
            CODE_DUPLICATE_PRODUCT,
            f"Product {product_id} appears {times} times in the batch: the batch is rejected.",
            "/entries",
        )
        for product_id, times in product_ids.items()
        if times > 1
    ]
    found += [
        _problem(call, CODE_INVALID, f"entries.batchId: {batch_id} is used {times} times", "/entries")
        for batch_id, times in batch_ids.items()
        if times > 1
    ]
    return found


def _raw_id(entry: ProductsCustomBatchRequestEntry, raw_product: Any) -> str | None:
    if entry.method == "delete":
        return entry.product_id
    value = raw_product.get("id") if isinstance(raw_product, dict) else None
    return value if isinstance(value, str) and value else None


def _apply(state: EmulatorState, call: Call, entries: list[tuple[ProductsCustomBatchRequestEntry, Any]]) -> str:
    """Check each product, apply the good ones, keep the report; returns the operation token."""
    upserts: list[tuple[str, dict[str, Any]]] = []
    deletes: list[tuple[str, str]] = []
    error_details: list[ReportDetailErrors] = []
    warning_details: list[ReportDetailWarnings] = []
    for entry, raw_product in entries:
        merchant = str(entry.merchant_id)
        if entry.method == "delete":
            assert entry.product_id is not None  # checked by _entry
            deletes.append((merchant, entry.product_id))
            continue
        product, (errors, warnings) = check_product(raw_product)
        report_id = _report_id(raw_product)
        if errors or product is None:
            error_details.append(ReportDetailErrors(product_id=report_id, errors=errors))
            continue
        if warnings:
            warning_details.append(ReportDetailWarnings(product_id=report_id, warnings=warnings))
        state.note_unknown_keys(call.instance, unknown_keys(product, "entries[].product"))
        upserts.append((merchant, product.to_json()))

    now = state.clock.now()
    final = ReportOkResponse(
        status="VALIDATED_WITH_ERRORS" if error_details else "VALIDATED",
        import_request_timestamp=str(int(now * 1000)),
        number_of_products_in_the_batch=str(len(entries)),
        number_of_products_upserted=str(len(upserts)),
        number_of_products_deleted=str(len(deletes)),
        number_of_products_with_errors=str(len(error_details)),
        number_of_products_with_warnings=str(len(warning_details)),
        error_details=error_details,
        warning_details=warning_details,
    )
    return state.submit_catalog_batch(upserts, deletes, final.to_json(), len(entries))


# --- one product ----------------------------------------------------------------------------------


def check_product(raw: Any) -> tuple[Product | None, ProductProblems]:
    """A product as Criteo would judge it: the model, or the report's errors (and warnings)."""
    errors: list[ReportDetailError] = []
    warnings: list[ReportDetailWarning] = []
    if not isinstance(raw, dict):
        return None, ([_error("JsonParsingIssue", "the product must be a JSON object")], warnings)
    raw = {"channel": "online", **raw}  # "channel: default online" (Criteo's docs)

    product_id = raw.get("id")
    if product_id is None or product_id == "":
        errors.append(_error("MissingID", "the product has no id"))
    elif not isinstance(product_id, str):
        errors.append(_error("InvalidProductId", "the product id must be a string"))
    elif len(product_id) > PRODUCT_ID_MAX_CHARS:
        errors.append(_error("OverlargeID", f"the product id is longer than {PRODUCT_ID_MAX_CHARS} characters"))
    elif not product_id.isascii():
        errors.append(_error("NonAsciiId", "the product id has non-ASCII characters"))
    if not _present(raw.get("title")):
        errors.append(_error("MissingName", "the product has no title"))
    errors += _url_errors(raw.get("link"), "link", ("MissingURL", "InvalidProductUrl", "OverlargeURL"))
    errors += _url_errors(
        raw.get("imageLink"), "imageLink", ("MissingImages", "InvalidBigImageUrl", "OverlargeBigImage")
    )
    for extra in raw.get("additionalImageLinks") or []:
        errors += _url_errors(extra, "additionalImageLinks", (None, "InvalidSmallImageUrl", "OverlargeSmallImage"))
    badge = raw.get("badge")
    if _present(badge):
        warnings += _badge_warnings(badge)
    if errors:
        return None, (errors, warnings)

    try:
        return Product.model_validate(raw), (errors, warnings)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return None, ([_error("JsonParsingIssue", f"{where}: {first['msg']}")], warnings)


def _url_errors(
    value: Any, name: str, types: tuple[ProductErrorType | None, ProductErrorType, ProductErrorType]
) -> list[ReportDetailError]:
    missing, invalid, overlarge = types
    limit = PRODUCT_MAX_CHARS.get(name, PRODUCT_MAX_CHARS["imageLink"])
    if not _present(value):
        return [_error(missing, f"the product has no {name}")] if missing else []
    if not isinstance(value, str) or not value.lower().startswith(URL_SCHEMES):
        return [_error(invalid, f"{name} is not an http(s) URL")]
    if len(value) > limit:
        return [_error(overlarge, f"{name} is longer than {limit} characters")]
    return []


def _badge_warnings(badge: Any) -> list[ReportDetailWarning]:
    kind: ProductWarningType | None = None
    if not isinstance(badge, str) or not badge.lower().startswith(URL_SCHEMES):
        kind = "InvalidBadgeUrl"
    elif len(badge) > PRODUCT_MAX_CHARS["imageLink"]:
        kind = "OverlargeBadgeUrl"
    if kind is None:
        return []
    return [ReportDetailWarning(type=kind, message=f"badge: {kind}", is_server_related=False)]


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _error(kind: ProductErrorType, message: str) -> ReportDetailError:
    return ReportDetailError(type=kind, message=message, is_server_related=False)


def _report_id(raw: Any) -> str:
    # "The product ID in lowercase" (ReportDetailErrors.productId).
    value = raw.get("id") if isinstance(raw, dict) else None
    return str(value).lower() if value is not None else ""


# --- the report -----------------------------------------------------------------------------------


def batch_report(state: EmulatorState, call: Call) -> Response:
    token = call.request.path_params["operation_token"]
    polled = state.poll_catalog_report(token)
    if polled is None:
        gone = problem(
            "validation",
            CODE_REPORT_NOT_FOUND,
            "Report not found",
            call.instance,
            detail="no report for this operation token (reports are kept 4 days)",
        )
        return error_response(404, gone)
    batch, final = polled
    if final is not None:
        return json_response(final)
    pending = ReportOkResponse(
        # The first poll finds the batch waiting, later ones find it being processed.
        status="ACCEPTED" if batch.polls == 1 else "IN_PROGRESS",
        import_request_timestamp=str(int(batch.submitted_at * 1000)),
        number_of_products_in_the_batch=str(batch.entries),
        number_of_products_upserted=None,
        number_of_products_deleted=None,
        number_of_products_with_errors=None,
        number_of_products_with_warnings=None,
        error_details=[],
        warning_details=[],
    )
    return json_response(pending.to_json())


# --- refusals -------------------------------------------------------------------------------------


def _rejected(call: Call, code: str, detail: str, *, field: str | None = None) -> Response:
    return error_response(400, _problem(call, code, detail, field and f"/{field}"))


def _problem(call: Call, code: str, detail: str, pointer: str | None) -> CommonProblem:
    return problem(
        "validation",
        code,
        BATCH_REJECTED,
        call.instance,
        detail=detail,
        source={"pointer": pointer} if pointer else None,
    )


def _missing(call: Call, index: int, field: str, detail: str) -> CommonProblem:
    return _problem(call, CODE_REQUIRED_FIELD, detail, f"/entries/{index}/{field}")


def _field_problem(call: Call, index: int, item: Any) -> CommonProblem:
    """Criteo writes `entries.method: field is required`: the field path without the index."""
    parts = [str(part) for part in item["loc"]]
    missing = item["type"] == "missing"
    detail = f"entries.{'.'.join(parts)}: " + ("field is required" if missing else str(item["msg"]))
    return _problem(
        call, CODE_REQUIRED_FIELD if missing else CODE_INVALID, detail, f"/entries/{index}/{'/'.join(parts)}"
    )
