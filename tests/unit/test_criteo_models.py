"""segcrit's Criteo models held against Criteo's OpenAPI document, plus their constructors."""

from __future__ import annotations

import typing

import pytest

from segcrit.criteo import constants, models
from segcrit.criteo.models import CriteoModel
from tests.criteo_openapi import OpenApiDocument, criteo_models, document_path

OPENAPI = OpenApiDocument(document_path("marketingsolutions_2026-07.json"))
SPEC_VERSION = "2026-07"

needs_openapi = OPENAPI.needed
MODELS = criteo_models(models)


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
    modelled = {model.criteo_schema for model in MODELS}
    assert modelled >= REQUIRED_SCHEMAS, REQUIRED_SCHEMAS - modelled


@needs_openapi
@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_model_matches_openapi_schema(model: type[CriteoModel]) -> None:
    # Property names, required ones, enum values and nested models (no model here is criteo_partial).
    assert OPENAPI.mismatches(model) == []


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


@needs_openapi
@pytest.mark.parametrize(("template", "method", "request_model", "response_model"), ENDPOINTS)
def test_paths_and_bodies_match_openapi(
    template: str,
    method: str,
    request_model: type[CriteoModel] | None,
    response_model: type[CriteoModel],
) -> None:
    path = template.format(version=SPEC_VERSION, segment_id="{audience-segment-id}")
    operation = OPENAPI.body["paths"][path][method]
    body = operation.get("requestBody")
    assert (OPENAPI.json_schema_of(body) if body else None) == (request_model.criteo_schema if request_model else None)
    assert OPENAPI.json_schema_of(operation["responses"]["200"]) == response_model.criteo_schema


@needs_openapi
def test_pinned_enums_and_search_limits_match_openapi() -> None:
    attributes = OPENAPI.schema_at("ContactlistAmendment#/properties/attributes")["properties"]
    assert list(constants.IDENTIFIER_TYPES) == attributes["identifierType"]["enum"]
    assert list(constants.OPERATIONS) == attributes["operation"]["enum"]
    assert set(typing.get_args(constants.IdentifierType)) == set(constants.IDENTIFIER_TYPES)
    segment_type = OPENAPI.schema_at("AudienceSegmentEntityV1")["properties"]["type"]["enum"]
    assert list(constants.SEGMENT_TYPES) == segment_type

    search = OPENAPI.body["paths"][constants.SEARCH_SEGMENTS_PATH.format(version=SPEC_VERSION)]["post"]
    limit = next(p for p in search["parameters"] if p["name"] == "limit")["schema"]
    assert limit["maximum"] == constants.SEARCH_LIMIT_MAX
    assert limit["default"] == constants.SEARCH_LIMIT_DEFAULT
    token_url = OPENAPI.body["components"]["securitySchemes"]["oauth"]["flows"]["clientCredentials"]["tokenUrl"]
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
