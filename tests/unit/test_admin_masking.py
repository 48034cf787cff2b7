"""Masked identifiers: what the admin UI and API show instead of the values."""

from __future__ import annotations

import hashlib

import orjson

from segcrit.admin.masking import mask, mask_text, mask_tree, safe_message, summarize_request
from segcrit.criteo.models import ContactlistAmendmentRequest
from segcrit.identity.normalize import email_hashes
from tests.helpers import EVENTS_ORDER, SHA256, audience_event, prepared


def test_a_hash_keeps_its_first_8_digits_anything_else_shows_a_prefix_of_its_sha256() -> None:
    assert mask(SHA256) == SHA256[:8] + "…"
    assert mask("user-42") == hashlib.sha256(b"user-42").hexdigest()[:8] + "…"
    assert mask("email-sha256:" + SHA256) == "email-sha256:" + SHA256[:8] + "…"


def test_a_stored_message_shows_no_identifier_value() -> None:
    message = prepared(audience_event("user-42", "vip", True, 1.8e9, email="Jo@Example.com", madid="6D92078A-8246"))
    message["context"]["ip"] = "203.0.113.9"
    message["context"]["device"]["id"] = "device-7"
    masked = orjson.dumps(mask_tree(message)).decode()
    sha256, md5 = email_hashes("jo@example.com")
    for value in ("user-42", sha256, md5, "6D92078A-8246", "203.0.113.9", "device-7"):
        assert value not in masked
    assert sha256[:8] + "…" in masked
    assert '"event":"Audience Entered"' in masked  # what is not an identifier stays readable


def test_free_text_loses_hashes_and_emails() -> None:
    text = f'Criteo answered 400 {{"sampleInvalidIdentifiers": ["{SHA256}"]}} for jo@example.com'
    assert mask_text(text) == 'Criteo answered 400 {"sampleInvalidIdentifiers": ["' + SHA256[:8] + '…"]} for [redacted]'


def test_a_refused_message_is_sanitised_as_ingest_would_before_it_is_kept() -> None:
    raw = {
        "type": "track",
        "event": "x",
        "traits": {"email": "Jo@Example.com"},
        "properties": {"note": "write to jo@example.com", "phone": "+33 6 12 34 56 78"},
    }
    kept = orjson.dumps(safe_message(raw)).decode()
    assert "example.com" not in kept.lower() and "12 34" not in kept
    assert safe_message(["not", "an", "object"]) == {"note": "not a JSON object (list)"}


def test_a_contact_list_call_is_summed_up_with_a_few_masked_identifiers() -> None:
    body = ContactlistAmendmentRequest.build("add", "email", [f"{i:064x}" for i in range(50_000)]).to_json()
    summary = summarize_request(body)
    assert summary == {
        "operation": "add",
        "identifier_type": "email",
        "count": 50_000,
        "identifiers": [f"{i:064x}"[:8] + "…" for i in range(3)],
    }


def test_an_events_api_document_is_summed_up_by_its_events() -> None:
    summary = summarize_request(EVENTS_ORDER)
    assert summary["events"] == ["trackTransaction"] and summary["count"] == 1
    assert SHA256 not in orjson.dumps(summary).decode() and "u1" not in summary["retailer_visitor_id"]
