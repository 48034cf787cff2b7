"""The catalog client: Criteo's Product Importer API (preview), on the Marketing API's machinery.

    catalog = CatalogClient(criteo_client.api)          # same token, same 250/min limiter
    token = await catalog.send_batch("6789", [{"method": "insert", "product": {...}}, ...])
    report = await catalog.report(token)                # poll until report.done

A batch is processed asynchronously: `send_batch` returns the operation token of the accepted batch
(202), and `report` reads how far Criteo got (ACCEPTED, IN_PROGRESS, then VALIDATED,
VALIDATED_WITH_ERRORS with per-product errors, or FAILED). Polling is the caller's: keep the token,
ask again later; each report call counts against the shared rate limit.

Criteo rejects a whole batch in which one product appears twice, so `send_batch` refuses such a
batch before sending (DuplicateProductError, a ValueError: the batcher must keep one entry per
product, the latest). Failures of the calls themselves are those of every Marketing API call
(`segcrit.criteo.errors`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from segcrit.criteo.catalog_models import (
    INT32_MAX,
    BatchAcceptedResponse,
    ProductsCustomBatchRequest,
    ProductsCustomBatchRequestEntry,
    ReportOkResponse,
)
from segcrit.criteo.constants import CATALOG_BATCH_PATH, CATALOG_REPORT_PATH
from segcrit.criteo.marketing_api import MarketingApi, parse_answer

# `endpoint` labels of criteo_calls.
EP_CATALOG_BATCH = "catalog_batch"
EP_CATALOG_REPORT = "catalog_report"

_MERCHANT_ID = re.compile(r"^[0-9]{1,10}$")


class DuplicateProductError(ValueError):
    """The batch names one product more than once: Criteo would reject all of it."""

    def __init__(self, product_ids: Iterable[str]) -> None:
        self.product_ids = sorted(product_ids)
        super().__init__(f"products appear more than once in the batch: {', '.join(self.product_ids)}")


class CatalogClient:
    def __init__(self, api: MarketingApi) -> None:
        self.api = api

    async def send_batch(self, merchant_id: str, entries: list[dict[str, Any]]) -> str:
        """Send catalog operations; the operation token of the accepted batch.

        Each entry is Criteo's `{"method": "insert", "product": {...}}` or
        `{"method": "delete", "productId": ...}`; `merchantId` and `batchId` (the entry's index) are
        filled in when absent. Raises ValueError, before sending, for an empty batch, an entry that
        does not fit Criteo's schema, or a product named twice (DuplicateProductError).
        """
        body = build_batch(merchant_id, entries)
        answer = await self.api.call(EP_CATALOG_BATCH, "POST", self.api.url(CATALOG_BATCH_PATH), json=body.to_json())
        return parse_answer(BatchAcceptedResponse, answer, EP_CATALOG_BATCH).operation_token

    async def report(self, token: str) -> ReportOkResponse:
        """The report of a batch (`report.done` once Criteo has finished with it)."""
        if not token:
            raise ValueError("an operation token is required")
        # The token goes into the path: quoted whole, so it cannot reach another route.
        path = CATALOG_REPORT_PATH.format(operation_token=quote(token, safe=""))
        answer = await self.api.call(EP_CATALOG_REPORT, "GET", self.api.url(path))
        return parse_answer(ReportOkResponse, answer, EP_CATALOG_REPORT)


def build_batch(merchant_id: str, entries: list[dict[str, Any]]) -> ProductsCustomBatchRequest:
    """The request body for `entries` of one merchant, checked as `send_batch` describes."""
    if not _MERCHANT_ID.match(merchant_id) or int(merchant_id) > INT32_MAX:
        raise ValueError(f"a Criteo merchant id is a 32-bit number, got {merchant_id!r}")
    if not entries:
        raise ValueError("a catalog batch needs at least one entry")
    merchant = int(merchant_id)
    parsed = [_entry(merchant, index, entry) for index, entry in enumerate(entries)]
    repeated = Counter(entry.target_id for entry in parsed)
    duplicates = {product_id for product_id, times in repeated.items() if product_id is not None and times > 1}
    if duplicates:
        raise DuplicateProductError(duplicates)
    return ProductsCustomBatchRequest(entries=parsed)


def _entry(merchant: int, index: int, entry: Mapping[str, Any]) -> ProductsCustomBatchRequestEntry:
    filled = {"merchantId": merchant, "batchId": index, **entry}
    if filled["merchantId"] != merchant:
        raise ValueError(f"entry {index} names merchant {filled['merchantId']}, the batch is for {merchant}")
    try:
        parsed = ProductsCustomBatchRequestEntry.model_validate(filled)
    except ValidationError as error:
        raise ValueError(f"catalog entry {index} does not fit Criteo's schema: {error}") from None
    if parsed.method == "insert" and parsed.product is None:
        raise ValueError(f"catalog entry {index}: insert needs a product")
    if parsed.method == "delete" and not parsed.product_id:
        raise ValueError(f"catalog entry {index}: delete needs a productId")
    return parsed
