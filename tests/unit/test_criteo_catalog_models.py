"""The catalog models held against Criteo's *preview* OpenAPI document, and how they read and write."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from segcrit.criteo import catalog_models, constants
from segcrit.criteo.catalog_models import (
    Product,
    ProductsCustomBatchRequest,
    ProductsCustomBatchRequestEntry,
    ReportOkResponse,
)
from segcrit.criteo.models import CriteoModel
from tests.criteo_openapi import OpenApiDocument, criteo_models, document_path

PREVIEW = OpenApiDocument(document_path("marketingsolutions_preview.json"))

needs_preview = PREVIEW.needed

CATALOG_MODELS = criteo_models(catalog_models)

REQUIRED_SCHEMAS = {
    "ProductsCustomBatchRequest",
    "ProductsCustomBatchRequestEntry",
    "Product",
    "Price",
    "BatchAcceptedResponse",
    "ReportOkResponse",
    "ReportDetailErrors",
    "ReportDetailError",
    "ReportDetailWarnings",
    "ReportDetailWarning",
}

PRODUCT = {
    "id": "SKU-1",
    "title": "Blue mug",
    "link": "https://shop.example.com/p/1",
    "imageLink": "https://shop.example.com/img/1.jpg",
    "channel": "online",
}


def test_every_catalog_schema_has_a_model() -> None:
    modelled = {model.criteo_schema for model in CATALOG_MODELS}
    assert modelled >= REQUIRED_SCHEMAS, REQUIRED_SCHEMAS - modelled


@needs_preview
@pytest.mark.parametrize("model", CATALOG_MODELS, ids=lambda model: model.__name__)
def test_catalog_model_matches_the_preview_schema(model: type[CriteoModel]) -> None:
    assert PREVIEW.mismatches(model) == []


@needs_preview
def test_the_partial_product_model_still_names_every_field_segcrit_sends() -> None:
    # Product models a subset of Criteo's ~90 fields: the ones segcrit sends must be among them.
    sent = {"id", "title", "link", "imageLink", "channel", "price", "brand", "productTypes", "mpn", "description"}
    modelled = {field.alias or name for name, field in Product.model_fields.items()}
    assert sent <= modelled
    assert modelled <= set(PREVIEW.schema_at("Product")["properties"])


@needs_preview
def test_catalog_paths_and_bodies_match_the_preview_document() -> None:
    paths = PREVIEW.body["paths"]
    batch = paths[constants.CATALOG_BATCH_PATH]["post"]
    assert PREVIEW.json_schema_of(batch["requestBody"]) == ProductsCustomBatchRequest.criteo_schema
    assert list(batch["responses"]) == ["202"]
    assert PREVIEW.json_schema_of(batch["responses"]["202"]) == catalog_models.BatchAcceptedResponse.criteo_schema

    report_path = constants.CATALOG_REPORT_PATH.format(operation_token="{operation-token}")
    report = paths[report_path]["get"]
    assert PREVIEW.json_schema_of(report["responses"]["200"]) == ReportOkResponse.criteo_schema


@needs_preview
def test_pinned_catalog_enums_match_the_preview_document() -> None:
    status = PREVIEW.schema_at("ReportOkResponse")["properties"]["status"]["enum"]
    assert list(typing.get_args(constants.ReportStatus)) == status
    assert {"VALIDATED", "VALIDATED_WITH_ERRORS", "FAILED"} == constants.REPORT_FINAL_STATUSES
    errors = PREVIEW.schema_at("ReportDetailError")["properties"]["type"]["enum"]
    assert list(typing.get_args(constants.ProductErrorType)) == errors
    warnings = PREVIEW.schema_at("ReportDetailWarning")["properties"]["type"]["enum"]
    assert list(typing.get_args(constants.ProductWarningType)) == warnings
    methods = PREVIEW.schema_at("ProductsCustomBatchRequestEntry")["properties"]["method"]["enum"]
    assert set(typing.get_args(constants.CatalogMethod)) == set(methods)


# --- building and reading ---------------------------------------------------------------------------


def test_batch_body_is_camel_case_and_keeps_unmodelled_product_fields() -> None:
    product = Product.model_validate({**PRODUCT, "price": {"currency": "EUR", "value": "9.90"}, "color": "blue"})
    body = ProductsCustomBatchRequest(
        entries=[
            ProductsCustomBatchRequestEntry.insert(6789, product, batch_id=0),
            ProductsCustomBatchRequestEntry.delete(6789, "SKU-2", batch_id=1),
        ]
    )
    assert body.to_json() == {
        "entries": [
            {
                "merchantId": 6789,
                "method": "insert",
                "batchId": 0,
                "product": {**PRODUCT, "price": {"currency": "EUR", "value": "9.90"}, "color": "blue"},
            },
            {"merchantId": 6789, "method": "delete", "batchId": 1, "productId": "SKU-2"},
        ]
    }
    assert [entry.target_id for entry in body.entries] == ["SKU-1", "SKU-2"]


@pytest.mark.parametrize(
    "change",
    [{"title": None}, {"channel": "offline"}, {"price": {"currency": "EUR", "value": 9.9}}],
    ids=["no title", "channel not online", "price value not a string"],
)
def test_product_refuses_what_criteos_schema_refuses(change: dict[str, object]) -> None:
    product = {key: value for key, value in {**PRODUCT, **change}.items() if value is not None}
    with pytest.raises(ValidationError):
        Product.model_validate(product)


def test_entry_needs_merchant_and_a_known_method() -> None:
    with pytest.raises(ValidationError, match="merchantId"):
        ProductsCustomBatchRequestEntry.model_validate({"method": "insert"})
    with pytest.raises(ValidationError, match="method"):
        ProductsCustomBatchRequestEntry.model_validate({"merchantId": 1, "method": "update"})


def test_report_reads_counts_and_errors_per_product() -> None:
    report = ReportOkResponse.model_validate(
        {
            "status": "VALIDATED_WITH_ERRORS",
            "importRequestTimestamp": 1_800_000_000_000,  # a number where the schema says string
            "numberOfProductsInTheBatch": "3",
            "numberOfProductsUpserted": "2",
            "numberOfProductsDeleted": "0",
            "numberOfProductsWithErrors": "1",
            "numberOfProductsWithWarnings": None,
            "errorDetails": [
                {
                    "productId": "sku-9",
                    "errors": [{"type": "MissingName", "message": "no title", "isServerRelated": False}],
                }
            ],
            "warningDetails": [],
        }
    )
    assert report.done
    assert report.import_request_timestamp == "1800000000000"
    assert report.counts == {"in_the_batch": 3, "upserted": 2, "deleted": 0, "with_errors": 1, "with_warnings": None}
    assert [e.type for e in report.errors_by_product()["SKU-9".lower()]] == ["MissingName"]


def test_a_lean_pending_report_is_still_readable() -> None:
    # Criteo marks every property required; an answer that leaves out the empty parts must not
    # leave the batch unreadable (and so re-polled) for ever.
    report = ReportOkResponse.model_validate({"status": "IN_PROGRESS"})
    assert not report.done
    assert report.error_details == [] and report.warning_details == []
    assert report.counts["in_the_batch"] is None


def test_report_refuses_an_unknown_status_or_error_type() -> None:
    with pytest.raises(ValidationError):
        ReportOkResponse.model_validate({"status": "DONE"})
    with pytest.raises(ValidationError):
        ReportOkResponse.model_validate(
            {
                "status": "VALIDATED_WITH_ERRORS",
                "errorDetails": [{"productId": "x", "errors": [{"type": "Oops", "message": "", "isServerRelated": 0}]}],
            }
        )
