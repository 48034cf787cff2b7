"""Criteo's official Python SDK drives the emulator, as an independent client of the real API would.

If the SDK can authenticate, create, search, amend, read statistics and delete against the emulator,
and deserialise every answer into its own generated models, the emulator speaks Criteo's dialect.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from segcrit.emulator import DEMO_ADVERTISER_ID, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, EmulatorState
from tests.required import import_or_skip

sdk = import_or_skip(
    "criteo_api_marketingsolutions_v2027_01",
    "Criteo's SDK (criteo-api-marketingsolutions-sdk, a dev extra of pyproject.toml) is not installed",
)
from criteo_api_marketingsolutions_v2027_01.api.audience_api import AudienceApi  # noqa: E402
from criteo_api_marketingsolutions_v2027_01.exceptions import ApiException  # noqa: E402
from criteo_api_marketingsolutions_v2027_01.model.audience_segment_bulk_create_input_v1 import (  # noqa: E402
    AudienceSegmentBulkCreateInputV1,
)
from criteo_api_marketingsolutions_v2027_01.model.audience_segment_bulk_delete_input_v1 import (  # noqa: E402
    AudienceSegmentBulkDeleteInputV1,
)
from criteo_api_marketingsolutions_v2027_01.model.audience_segment_create_entity_v1 import (  # noqa: E402
    AudienceSegmentCreateEntityV1,
)
from criteo_api_marketingsolutions_v2027_01.model.audience_segment_create_entity_v1_resource import (  # noqa: E402
    AudienceSegmentCreateEntityV1Resource,
)
from criteo_api_marketingsolutions_v2027_01.model.audience_segment_delete_entity_v1_resource import (  # noqa: E402
    AudienceSegmentDeleteEntityV1Resource,
)
from criteo_api_marketingsolutions_v2027_01.model.audience_segment_search_entity_v1 import (  # noqa: E402
    AudienceSegmentSearchEntityV1,
)
from criteo_api_marketingsolutions_v2027_01.model.audience_segment_search_entity_v1_resource import (  # noqa: E402
    AudienceSegmentSearchEntityV1Resource,
)
from criteo_api_marketingsolutions_v2027_01.model.audience_segment_search_input_v1 import (  # noqa: E402
    AudienceSegmentSearchInputV1,
)
from criteo_api_marketingsolutions_v2027_01.model.contactlist_amendment import ContactlistAmendment  # noqa: E402
from criteo_api_marketingsolutions_v2027_01.model.contactlist_amendment_attributes import (  # noqa: E402
    ContactlistAmendmentAttributes,
)
from criteo_api_marketingsolutions_v2027_01.model.contactlist_amendment_request import (  # noqa: E402
    ContactlistAmendmentRequest,
)

EMAILS = ["ann@example.com", "bob@example.com"]


@pytest.fixture
def audience_api(emulator_url: str) -> Iterator[Any]:
    client = sdk.ApiClientBuilder.WithClientCredentials(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, host=emulator_url)
    with client:
        yield AudienceApi(client)


def amendment(operation: str, identifiers: list[str]) -> Any:
    attributes = ContactlistAmendmentAttributes(identifiers=identifiers, operation=operation, identifier_type="email")
    return ContactlistAmendmentRequest(data=ContactlistAmendment(type="ContactlistAmendment", attributes=attributes))


def body_text(error: Any) -> str:
    # The SDK leaves API error bodies as str but re-encodes token errors to bytes.
    body = error.body
    return body.decode() if isinstance(body, bytes) else str(body)


def test_sdk_round_trip(audience_api: Any, emulator_state: EmulatorState) -> None:
    created = audience_api.create_audience_segments(
        AudienceSegmentBulkCreateInputV1(
            data=[
                AudienceSegmentCreateEntityV1Resource(
                    type="AudienceSegment",
                    attributes=AudienceSegmentCreateEntityV1(
                        advertiser_id=DEMO_ADVERTISER_ID,
                        name="sdk_buyers",
                        description="via SDK",
                        contact_list={},
                    ),
                )
            ]
        )
    )
    assert created.errors == [] and created.warnings == []
    segment_id = created.data[0].id
    assert created.data[0].attributes.type == "ContactList"

    found = audience_api.search_audience_segments(
        AudienceSegmentSearchInputV1(
            data=AudienceSegmentSearchEntityV1Resource(
                type="AudienceSegment",
                attributes=AudienceSegmentSearchEntityV1(
                    advertiser_ids=[DEMO_ADVERTISER_ID], audience_segment_types=["ContactList"]
                ),
            )
        ),
        limit=100,
        offset=0,
    )
    assert [(s.id, s.attributes.name) for s in found.data] == [(segment_id, "sdk_buyers")]
    assert (found.meta.total_items, found.meta.limit, found.meta.offset) == (1, 100, 0)

    added = audience_api.update_contact_list_by_audience_segment(
        segment_id, amendment("add", [*EMAILS, "not-an-email"])
    )
    assert added.data.attributes.nb_valid_identifiers == 2
    assert added.data.attributes.nb_invalid_identifiers == 1
    assert added.data.attributes.contact_list_id == int(segment_id)
    assert emulator_state.members("sdk_buyers") == set(EMAILS)

    audience_api.update_contact_list_by_audience_segment(segment_id, amendment("remove", EMAILS[:1]))
    stats = audience_api.get_audience_segment_contact_list_statistics(segment_id)
    assert stats.data.attributes.number_of_identifiers == 1

    wiped = audience_api.delete_contact_list_by_audience_segment(segment_id)
    assert wiped.data.id == segment_id
    assert emulator_state.members("sdk_buyers") == set()

    deleted = audience_api.delete_audience_segments(
        AudienceSegmentBulkDeleteInputV1(
            data=[AudienceSegmentDeleteEntityV1Resource(id=segment_id, type="AudienceSegment", attributes={})]
        )
    )
    assert [d.id for d in deleted.data] == [segment_id]
    assert emulator_state.segments() == []
    assert emulator_state.call_counts()["token"] >= 1  # the SDK fetched its token from the emulator


def test_sdk_sees_criteo_errors(audience_api: Any) -> None:
    with pytest.raises(ApiException) as raised:
        audience_api.update_contact_list_by_audience_segment("424242", amendment("add", EMAILS))
    assert raised.value.status == 404
    assert "audience-invalid" in body_text(raised.value)


def test_sdk_with_wrong_credentials_is_refused(emulator_url: str) -> None:
    client = sdk.ApiClientBuilder.WithClientCredentials(DEMO_CLIENT_ID, "wrong", host=emulator_url)
    with client, pytest.raises(ApiException) as raised:
        AudienceApi(client).get_audience_segment_contact_list_statistics("1")
    assert raised.value.status == 401
    assert "invalid_client" in body_text(raised.value)
