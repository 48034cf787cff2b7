"""The Events API document model (no Criteo schema exists: shapes from the reference, §5.2)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from segcrit.config import CommerceMapping, ProductSignalsFlow
from segcrit.criteo.event_models import EventsDocument
from segcrit.flows.commerce import conversion_event, document_header, person_ids, signal_event
from tests.helpers import SHA256, changed

MD5 = "e13743a7f1db7f4246badd6fd6ff54ff"
SHA256_MD5 = "000e3171a5110c35c69d060112bd0ba55d9631c7c2ec93f1840e4570095b263a"

# The example of the reference (§5.2), trimmed of nothing: every key segcrit may send, and some it
# does not (previous_url, country, raw email, deduplication_page_view_id) that must be tolerated.
REFERENCE_DOCUMENT: dict[str, Any] = {
    "version": "segment_sync_1.0.0",
    "account": "12345",
    "site_type": "d",
    "ip": "203.0.113.7",
    "useragent": "Mozilla/5.0",
    "full_url": "https://shop.example.com/checkout/complete",
    "previous_url": "https://shop.example.com/cart",
    "retailer_visitor_id": "user-123",
    "country": "FR",
    "language": "fr",
    "id": {
        "mapping_key": "caller-abc",
        "mapped_user_id": "gum-1",
        "email": {"raw": "john.doe@gmail.com", "md5": MD5, "sha256": SHA256, "sha256_md5": SHA256_MD5},
    },
    "events": [
        {
            "event": "trackTransaction",
            "timestamp": "2023-11-14T22:28:20.000Z",
            "id": "ORD-300",
            "currency": "EUR",
            "item": [{"id": "SKU-A1", "price": 124.99, "quantity": 2}],
            "deduplication_page_view_id": "pv-1",
        }
    ],
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """The reference document with one key (dotted path, list indices as numbers) set or removed."""
    return changed(REFERENCE_DOCUMENT, path, value)


def test_the_reference_document_is_valid() -> None:
    document = EventsDocument.model_validate(REFERENCE_DOCUMENT)
    assert document.account == "12345"
    assert document.id.email is not None and document.id.email.sha256_md5 == SHA256_MD5
    assert document.events[0].item is not None and document.events[0].item[0].quantity == 2


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        ("account", None, "account"),
        ("account", "", "account"),
        ("id.mapping_key", None, "mapping_key"),
        ("events", [], "events"),
        ("events", None, "events"),
        ("events.0.event", "purchase", "event"),
        ("events.0.event", None, "event"),
        ("events.0.id", None, "trackTransaction needs an id"),
        ("events.0.item", None, "trackTransaction needs an item"),
        ("events.0.item.0.id", None, "id"),
        ("id.email.sha256", "NOT-A-HASH", "sha256"),
        ("id.email.md5", SHA256, "md5"),
        ("site_type", "desktop", "site_type"),
    ],
)
def test_what_the_emulator_refuses(path: str, value: Any, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        EventsDocument.model_validate(with_change(path, value))


def test_lenient_where_the_variants_differ() -> None:
    # The offline-sales variant sends account as an integer; a transaction may lack products.
    document = EventsDocument.model_validate({**with_change("events.0.item", []), "account": 12345})
    assert document.account == "12345"
    signal = EventsDocument.model_validate(with_change("events", [{"event": "viewHome"}]))
    assert signal.events[0].event == "viewHome"


def test_documents_built_by_the_commerce_flow_are_valid() -> None:
    message: dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "userId": "u1",
        "messageId": "m1",
        "timestamp": "2026-01-01T00:00:00Z",
        "context": {"ip": "203.0.113.7", "userAgent": "Mozilla/5.0 (iPhone)", "page": {"url": "https://s.example/"}},
        "properties": {"order_id": "O-1", "currency": "eur", "products": [{"product_id": "P1", "price": "5.5"}]},
    }
    ids = person_ids(message, [(SHA256, MD5)], ["gum-1"])
    header = document_header(message, ids, "6789", "caller-abc", SHA256_MD5)
    viewed = signal_event({**message, "event": "Product Viewed"}, ProductSignalsFlow(type="product_signals"))
    assert viewed is not None
    document = {**header, "events": [conversion_event(message, CommerceMapping()).body, viewed.body]}
    parsed = EventsDocument.model_validate(document)
    assert parsed.site_type == "m"
    assert [event.event for event in parsed.events] == ["trackTransaction", "viewItem"]


def test_what_is_queued_for_the_events_api_never_holds_a_raw_email_or_phone() -> None:
    # A message that did not come through ingest's sanitiser (an old inbox row, a hand-made replay).
    message: dict[str, Any] = {
        "type": "track",
        "event": "Products Searched",
        "userId": "u1",
        "_segcrit": {"ts": 1e300},  # no date: the event's own timestamp text stands in, nothing raises
        "timestamp": "2026-01-01T00:00:00Z",
        "context": {
            "ip": "jane@example.com",
            "userAgent": "ShopApp/2.1 (account jane.roe@example.com)",
            "page": {"url": "https://s.example/search?q=x&email=jane.roe%40example.com&utm=1"},
        },
        "properties": {"query": "order for jane.roe@example.com +33 6 12 34 56 78"},
    }
    header = document_header(message, person_ids(message, [(SHA256, MD5)], []), "6789", None, None)
    searched = signal_event(message, ProductSignalsFlow(type="product_signals"))
    assert searched is not None
    assert header["full_url"] == "https://s.example/search?q=x&email=[redacted]&utm=1"
    assert header["useragent"] == "ShopApp/2.1 (account [redacted])"
    assert header["ip"] == "[redacted]"
    assert searched.body["timestamp"] == "2026-01-01T00:00:00Z"
    assert searched.body["keywords"] == "order for [redacted] [redacted]"
