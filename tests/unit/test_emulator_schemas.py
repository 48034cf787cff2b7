"""The emulator's own models of Criteo's schemas, held against Criteo's OpenAPI documents.

The emulator must not lean on the client's models (a mistake in them would then pass both sides):
its models are written apart (`segcrit.emulator.schemas`), checked here property by
property against the documents, and no emulator module imports the client's models.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

import segcrit.emulator as emulator_package
from segcrit.criteo import constants
from segcrit.emulator import schemas
from tests.criteo_openapi import OpenApiDocument, criteo_models, document_path, schema_of

AUDIENCES = OpenApiDocument(document_path("marketingsolutions_2026-07.json"))
PREVIEW = OpenApiDocument(document_path("marketingsolutions_preview.json"))
SPEC_VERSION = "2026-07"

MODELS = criteo_models(schemas)
CATALOG = {
    schemas.Price,
    schemas.Product,
    schemas.ProductsCustomBatchRequestEntry,
    schemas.BatchAcceptedResponse,
    schemas.ReportDetailError,
    schemas.ReportDetailErrors,
    schemas.ReportDetailWarning,
    schemas.ReportDetailWarnings,
    schemas.ReportOkResponse,
}
CLIENT_MODEL_MODULES = {"segcrit.criteo.models", "segcrit.criteo.catalog_models", "segcrit.criteo.event_models"}


def document_of(model: type[BaseModel]) -> OpenApiDocument:
    return PREVIEW if model in CATALOG else AUDIENCES


def test_the_emulator_imports_none_of_the_clients_models() -> None:
    imported: set[tuple[str, str]] = set()
    for path in Path(emulator_package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {(path.name, node.module)} | {(path.name, f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {(path.name, alias.name) for alias in node.names}
    assert {(name, module) for name, module in imported if module in CLIENT_MODEL_MODULES} == set()


def test_every_schema_the_emulator_reads_or_writes_has_a_model() -> None:
    modelled = {schema_of(model) for model in MODELS}
    assert len(MODELS) >= 40
    assert set(MODELS) >= CATALOG
    assert {"ContactlistAmendmentRequest", "AudienceSegmentBulkCreateInputV1", "ProductsCustomBatchRequestEntry"} <= (
        modelled
    )


@AUDIENCES.needed
@PREVIEW.needed
@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_an_emulator_model_matches_its_openapi_schema(model: type[BaseModel]) -> None:
    # Property names (a subset for the partial Product), required ones, enums, nested schemas.
    assert document_of(model).mismatches(model) == []


ENDPOINTS = [
    # (path template, method, what the emulator reads, what it answers)
    (constants.CONTACT_LIST_PATH, "patch", schemas.ContactlistAmendmentRequest, schemas.ModifyAudienceResponse),
    (constants.CONTACT_LIST_PATH, "delete", None, schemas.DeleteAudienceContactListResponse),
    (constants.CONTACT_LIST_STATISTICS_PATH, "get", None, schemas.ContactListStatisticsEntityV1Response),
    (
        constants.CREATE_SEGMENTS_PATH,
        "post",
        schemas.AudienceSegmentBulkCreateInputV1,
        schemas.AudienceSegmentEntityV1ListResponse,
    ),
    (
        constants.SEARCH_SEGMENTS_PATH,
        "post",
        schemas.AudienceSegmentSearchInputV1,
        schemas.AudienceSegmentSearchResponse,
    ),
    (
        constants.DELETE_SEGMENTS_PATH,
        "post",
        schemas.AudienceSegmentBulkDeleteInputV1,
        schemas.AudienceSegmentIdEntityV1ListResponse,
    ),
]


@AUDIENCES.needed
@pytest.mark.parametrize(("template", "method", "request_model", "answer_model"), ENDPOINTS)
def test_each_endpoint_reads_and_answers_the_schemas_of_its_path(
    template: str, method: str, request_model: type[BaseModel] | None, answer_model: type[BaseModel]
) -> None:
    operation = AUDIENCES.body["paths"][template.format(version=SPEC_VERSION, segment_id="{audience-segment-id}")]
    operation = operation[method]
    body = operation.get("requestBody")
    assert (AUDIENCES.json_schema_of(body) if body else None) == (schema_of(request_model) if request_model else None)
    assert AUDIENCES.json_schema_of(operation["responses"]["200"]) == schema_of(answer_model)


@PREVIEW.needed
def test_the_catalog_endpoints_read_and_answer_their_schemas() -> None:
    batch = PREVIEW.body["paths"][constants.CATALOG_BATCH_PATH]["post"]
    entries = PREVIEW.schema_at(PREVIEW.json_schema_of(batch["requestBody"]) or "")["properties"]["entries"]
    assert entries["items"]["$ref"].endswith("/" + schema_of(schemas.ProductsCustomBatchRequestEntry))
    assert PREVIEW.json_schema_of(batch["responses"]["202"]) == schema_of(schemas.BatchAcceptedResponse)
    report = PREVIEW.body["paths"][constants.CATALOG_REPORT_PATH.format(operation_token="{operation-token}")]["get"]
    assert PREVIEW.json_schema_of(report["responses"]["200"]) == schema_of(schemas.ReportOkResponse)


@PREVIEW.needed
def test_the_product_properties_are_those_of_criteos_product_schema() -> None:
    assert set(PREVIEW.schema_at("Product")["properties"]) == schemas.PRODUCT_PROPERTIES


# --- how requests are read -----------------------------------------------------------------------

AMENDMENT = {"data": {"type": "ContactlistAmendment", "attributes": {"operation": "add", "identifiers": ["x"]}}}


def test_a_request_is_read_in_camel_case_only() -> None:
    attributes = {"operation": "add", "identifiers": ["x"], "identifier_type": "madid", "gum_caller_id": 7}
    parsed = schemas.ContactlistAmendmentRequest.model_validate({"data": {"type": "T", "attributes": attributes}})
    # snake_case keys are not the properties they name: unknown, and the properties stay unset.
    assert (parsed.data.attributes.identifier_type, parsed.data.attributes.gum_caller_id) == (None, None)
    assert schemas.unknown_keys(parsed) == ["data.attributes.identifier_type", "data.attributes.gum_caller_id"]
    with pytest.raises(ValidationError, match="advertiserId"):
        schemas.AudienceSegmentCreateEntityV1.model_validate({"advertiser_id": "1", "name": "n"})


def test_unknown_keys_are_found_at_any_depth_and_named_by_their_wire_path() -> None:
    create = {
        "data": [
            {"type": "AudienceSegment", "attributes": {"advertiserId": "1", "name": "a", "contactList": {"x": 1}}},
            {"type": "AudienceSegment", "attributes": {"advertiserId": "1", "name": "b"}, "extra": True},
        ]
    }
    parsed = schemas.AudienceSegmentBulkCreateInputV1.model_validate(create)
    assert schemas.unknown_keys(parsed) == ["data[].attributes.contactList.x", "data[].extra"]
    assert schemas.unknown_keys(schemas.ContactlistAmendmentRequest.model_validate(AMENDMENT)) == []


def test_a_product_may_carry_any_property_of_the_schema_and_nothing_else() -> None:
    product = {"id": "P1", "title": "t", "link": "l", "imageLink": "i", "channel": "online"}
    parsed = schemas.Product.model_validate({**product, "color": "blue", "gtin": "1", "colour": "blue"})
    assert schemas.unknown_keys(parsed) == ["colour"]
    assert parsed.to_json()["color"] == "blue"


def test_an_events_document_notes_keys_outside_the_guides() -> None:
    document = {
        "account": 1,
        "id": {"mapping_key": "k", "mapped_user_id": "g", "mappedUserId": "g"},
        "events": [{"event": "viewHome", "eventt": "x"}],
        "previous_url": "https://shop.example/",
    }
    parsed = schemas.EventsDocument.model_validate(document)
    assert schemas.unknown_keys(parsed) == ["id.mappedUserId", "events[].eventt"]
