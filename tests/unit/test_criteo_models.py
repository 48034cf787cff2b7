"""segcrit's Criteo models held against Criteo's OpenAPI document, plus their constructors."""

from __future__ import annotations

import json
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic.fields import FieldInfo

from segcrit.criteo import constants, models
from segcrit.criteo.models import CriteoModel

OPENAPI_FILE = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "reference"
    / "criteo-openapi"
    / "marketingsolutions_2026-07.json"
)
SPEC_VERSION = "2026-07"

needs_openapi = pytest.mark.skipif(
    not OPENAPI_FILE.exists(), reason=f"Criteo's OpenAPI document not found at {OPENAPI_FILE}"
)


@cache
def openapi() -> dict[str, Any]:
    return typing.cast(dict[str, Any], json.loads(OPENAPI_FILE.read_text()))


def ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    name = ref_name(node)
    return typing.cast(dict[str, Any], openapi()["components"]["schemas"][name]) if name else node


def schema_at(location: str) -> dict[str, Any]:
    """`Name` or `Name#/a/b`: a component schema, or an inline object inside one."""
    name, _, pointer = location.partition("#")
    node = resolve({"$ref": f"#/components/schemas/{name}"})
    for part in filter(None, pointer.split("/")):
        node = resolve(node[part])
    return node


def modelled_models() -> list[type[CriteoModel]]:
    found = [
        value
        for value in vars(models).values()
        if isinstance(value, type) and issubclass(value, CriteoModel) and value.criteo_schema
    ]
    return sorted(found, key=lambda model: model.__name__)


def wire_name(name: str, field: FieldInfo) -> str:
    return field.alias or name


def flatten(annotation: Any) -> list[Any]:
    """Every type inside an annotation: unions, lists and dicts opened up."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation]
    if origin is Literal:
        return [annotation]
    inner: list[Any] = []
    for arg in typing.get_args(annotation):
        inner.extend(flatten(arg))
    return inner if origin in (typing.Union, types.UnionType) else [annotation, *inner]


def literal_values(annotation: Any) -> set[str] | None:
    literals = [t for t in flatten(annotation) if typing.get_origin(t) is Literal]
    if not literals:
        return None
    return {value for literal in literals for value in typing.get_args(literal)}


def nested_models(annotation: Any) -> list[type[CriteoModel]]:
    return [t for t in flatten(annotation) if isinstance(t, type) and issubclass(t, CriteoModel)]


def property_enum(prop: dict[str, Any]) -> set[str] | None:
    prop = resolve(prop)
    if "enum" in prop:
        return set(prop["enum"])
    items = prop.get("items")
    if isinstance(items, dict) and "enum" in resolve(items):
        return set(resolve(items)["enum"])
    return None


def property_target(owner: str, name: str, prop: dict[str, Any]) -> str | None:
    """The schema a nested model must mirror: the $ref'd schema, or the inline object's location."""
    target = ref_name(prop) or (ref_name(prop["items"]) if isinstance(prop.get("items"), dict) else None)
    if target:
        return target
    if prop.get("type") == "object" and "properties" in prop:
        base, _, pointer = owner.partition("#")
        return f"{base}#{pointer}/properties/{name}"
    return None


# The schemas segcrit must model (the brief of the emulator and the client).
REQUIRED_SCHEMAS = {
    "ContactlistAmendmentRequest",
    "ContactlistAmendment",
    "ModifyAudienceResponse",
    "ContactlistOperation",
    "DeleteAudienceContactListResponse",
    "ContactListStatisticsEntityV1Response",
    "AudienceSegmentBulkCreateInputV1",
    "LookalikeCreateV1",
    "ContactListCreateV1",
    "AudienceSegmentEntityV1ListResponse",
    "AudienceSegmentSearchInputV1",
    "AudienceSegmentEntityV1AudienceSegmentSearchMetadataV1ListResponse",
    "AudienceSegmentSearchMetadataV1",
    "AudienceSegmentBulkDeleteInputV1",
    "AudienceSegmentIdEntityV1ListResponse",
    "AudienceError",
    "CommonProblem",
}


def test_every_needed_schema_has_a_model() -> None:
    modelled = {model.criteo_schema for model in modelled_models()}
    assert modelled >= REQUIRED_SCHEMAS, REQUIRED_SCHEMAS - modelled


@needs_openapi
@pytest.mark.parametrize("model", modelled_models(), ids=lambda model: model.__name__)
def test_model_matches_openapi_schema(model: type[CriteoModel]) -> None:
    schema = schema_at(model.criteo_schema)
    properties: dict[str, Any] = schema.get("properties", {})
    fields = {wire_name(name, field): field for name, field in model.model_fields.items()}

    assert set(fields) == set(properties), "property names differ"
    required = {name for name, field in fields.items() if field.is_required()}
    assert required == set(schema.get("required", [])), "required properties differ"

    for name, prop in properties.items():
        field = fields[name]
        assert literal_values(field.annotation) == property_enum(prop), f"enum of {name} differs"
        target = property_target(model.criteo_schema, name, prop)
        nested = nested_models(field.annotation)
        if nested:
            assert [m.criteo_schema for m in nested] == [target], f"{name} nests the wrong model"


ENDPOINTS = [
    # (path template, method, request model, response model)
    (constants.CONTACT_LIST_PATH, "patch", models.ContactlistAmendmentRequest, models.ModifyAudienceResponse),
    (constants.CONTACT_LIST_PATH, "delete", None, models.DeleteAudienceContactListResponse),
    (
        constants.CONTACT_LIST_STATISTICS_PATH,
        "get",
        None,
        models.ContactListStatisticsEntityV1Response,
    ),
    (
        constants.CREATE_SEGMENTS_PATH,
        "post",
        models.AudienceSegmentBulkCreateInputV1,
        models.AudienceSegmentEntityV1ListResponse,
    ),
    (
        constants.SEARCH_SEGMENTS_PATH,
        "post",
        models.AudienceSegmentSearchInputV1,
        models.AudienceSegmentSearchResponse,
    ),
    (
        constants.DELETE_SEGMENTS_PATH,
        "post",
        models.AudienceSegmentBulkDeleteInputV1,
        models.AudienceSegmentIdEntityV1ListResponse,
    ),
]


def json_schema_of(node: dict[str, Any]) -> str | None:
    for media in ("application/json", "text/json", "application/*+json"):
        if media in node.get("content", {}):
            return ref_name(node["content"][media]["schema"])
    return None


@needs_openapi
@pytest.mark.parametrize(("template", "method", "request_model", "response_model"), ENDPOINTS)
def test_paths_and_bodies_match_openapi(
    template: str,
    method: str,
    request_model: type[CriteoModel] | None,
    response_model: type[CriteoModel],
) -> None:
    path = template.format(version=SPEC_VERSION, segment_id="{audience-segment-id}")
    operation = openapi()["paths"][path][method]
    body = operation.get("requestBody")
    assert (json_schema_of(body) if body else None) == (request_model.criteo_schema if request_model else None)
    assert json_schema_of(operation["responses"]["200"]) == response_model.criteo_schema


@needs_openapi
def test_pinned_enums_and_search_limits_match_openapi() -> None:
    attributes = schema_at("ContactlistAmendment#/properties/attributes")["properties"]
    assert list(constants.IDENTIFIER_TYPES) == attributes["identifierType"]["enum"]
    assert list(constants.OPERATIONS) == attributes["operation"]["enum"]
    assert set(typing.get_args(constants.IdentifierType)) == set(constants.IDENTIFIER_TYPES)
    segment_type = schema_at("AudienceSegmentEntityV1")["properties"]["type"]["enum"]
    assert list(constants.SEGMENT_TYPES) == segment_type

    search = openapi()["paths"][constants.SEARCH_SEGMENTS_PATH.format(version=SPEC_VERSION)]["post"]
    limit = next(p for p in search["parameters"] if p["name"] == "limit")["schema"]
    assert limit["maximum"] == constants.SEARCH_LIMIT_MAX
    assert limit["default"] == constants.SEARCH_LIMIT_DEFAULT
    token_url = openapi()["components"]["securitySchemes"]["oauth"]["flows"]["clientCredentials"]["tokenUrl"]
    assert token_url == constants.API_URL_DEFAULT + constants.TOKEN_PATH


# --- Constructors: the exact bodies segcrit sends ----------------------------------------------------


def test_contact_list_amendment_body() -> None:
    body = models.ContactlistAmendmentRequest.build("add", "email", ["a@example.com", "b@example.com"])
    assert body.to_json() == {
        "data": {
            "type": "ContactlistAmendment",
            "attributes": {
                "operation": "add",
                "identifierType": "email",
                "identifiers": ["a@example.com", "b@example.com"],
            },
        }
    }


def test_gum_amendment_carries_the_caller_id() -> None:
    body = models.ContactlistAmendmentRequest.build("remove", "gum", ["g1"], gum_caller_id=329739)
    assert body.to_json()["data"]["attributes"] == {
        "operation": "remove",
        "identifierType": "gum",
        "identifiers": ["g1"],
        "gumCallerId": 329739,
    }


def test_create_bodies_for_contact_list_and_lookalike() -> None:
    body = models.AudienceSegmentBulkCreateInputV1.of(
        models.AudienceSegmentCreateEntityV1.contact_list_segment("12345", "buyers", "buyers"),
        models.AudienceSegmentCreateEntityV1.lookalike_segment("12345", "LAL", "5678", 1_000_000),
    )
    assert body.to_json() == {
        "data": [
            {
                "type": "AudienceSegment",
                "attributes": {
                    "advertiserId": "12345",
                    "name": "buyers",
                    "description": "buyers",
                    "contactList": {},
                },
            },
            {
                "type": "AudienceSegment",
                "attributes": {
                    "advertiserId": "12345",
                    "name": "LAL",
                    "lookalike": {"seedSegmentId": "5678", "targetSize": 1_000_000},
                },
            },
        ]
    }


def test_search_and_delete_bodies() -> None:
    search = models.AudienceSegmentSearchInputV1.build(advertiser_ids=["12345"], audience_segment_types=["ContactList"])
    assert search.to_json() == {
        "data": {
            "type": "AudienceSegment",
            "attributes": {"advertiserIds": ["12345"], "audienceSegmentTypes": ["ContactList"]},
        }
    }
    delete = models.AudienceSegmentBulkDeleteInputV1.of_ids("1", "2")
    assert delete.to_json() == {
        "data": [
            {"id": "1", "type": "AudienceSegment", "attributes": {}},
            {"id": "2", "type": "AudienceSegment", "attributes": {}},
        ]
    }


def test_token_response_keeps_a_null_refresh_token() -> None:
    # Criteo's SDK reads data['refresh_token'] unconditionally.
    token = models.TokenResponse(access_token="t", expires_in=900)
    assert token.to_json() == {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 900,
        "refresh_token": None,
    }


# --- Parsing what Criteo answers: lenient where Criteo is loose ---------------------------------------


def test_parsing_tolerates_unknown_keys_string_ids_and_null_lists() -> None:
    created = models.AudienceSegmentEntityV1ListResponse.model_validate(
        {
            "data": [
                {
                    "id": "5678",
                    "type": "AudienceSegment",
                    "attributes": {
                        "name": "x",
                        "type": "ContactList",
                        "advertiserId": "12345",
                        "contactList": {"file": None, "isFromPublicApi": True},
                    },
                }
            ],
            "errors": None,
        }
    )
    assert created.data[0].id == "5678"
    assert created.errors == [] and created.warnings == []

    summary = models.ContactlistOperationAttributes.model_validate({"operation": "add", "contactListId": "12"})
    assert summary.contact_list_id == 12


def test_problem_lookup_checks_errors_and_warnings() -> None:
    response = models.AudienceSegmentEntityV1ListResponse.model_validate(
        {"data": [], "warnings": [{"type": "validation", "code": "name-must-be-unique"}]}
    )
    assert response.has_problem(constants.CODE_NAME_MUST_BE_UNIQUE)
    assert not response.has_problem(constants.CODE_SEGMENT_NOT_FOUND)


def test_amendment_rejects_unknown_identifier_type_but_ignores_unknown_keys() -> None:
    body = {
        "data": {
            "type": "ContactlistAmendment",
            "attributes": {
                "operation": "add",
                "identifierType": "email",
                "identifiers": ["a@b.co"],
                "internalIdentifiers": False,  # RudderStack sends it; Criteo tolerates it
            },
        }
    }
    assert models.ContactlistAmendmentRequest.model_validate(body).data.attributes.identifiers == ["a@b.co"]
    body["data"]["attributes"]["identifierType"] = "customerid"  # type: ignore[index]
    with pytest.raises(ValueError, match="identifierType"):
        models.ContactlistAmendmentRequest.model_validate(body)
