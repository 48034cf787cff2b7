"""Processor + real SQLite for commerce: conversions once per order, signals, catalog products."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segcrit.clock import FakeClock
from segcrit.config import Config
from segcrit.identity.normalize import email_hashes
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.store.sqlite import SqliteStore
from tests.helpers import iso, make_config, put

T0 = 1_800_000_000.0
COMMERCE = """  - type: conversions
  - type: product_signals
  - type: catalog
    merchant_id: "6789"
"""


def config_for(tmp_path: Path) -> Config:
    return make_config(str(tmp_path / "c.db"), flows=COMMERCE)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "c.db"))
    yield s
    s.close()


def processor(store: SqliteStore, tmp_path: Path, metrics: Metrics | None = None) -> Processor:
    return Processor(store, config_for(tmp_path), FakeClock(T0), metrics or Metrics())


def order(message_id: str, order_id: str | None = "ORD-1", **properties: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "currency": "eur",
        "revenue": 59.0,
        "products": [
            {"product_id": "SKU-1", "price": 19.5, "quantity": 2},
            {"sku": "SKU-2", "price": "20.00"},
        ],
    }
    if order_id:
        props["order_id"] = order_id
    props.update(properties)
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": "u1",
        "messageId": message_id,
        "timestamp": iso(T0),
        "properties": props,
        "context": {
            "traits": {"email": "Buyer@Shop.example"},
            "ip": "203.0.113.7",
            "userAgent": "Mozilla/5.0 (iPhone)",
            "page": {"url": "https://shop.example/checkout/done"},
        },
    }


def queued(store: SqliteStore) -> list[Any]:
    return store.due_events(T0 + 10**6, 1000)


def test_an_order_delivered_three_times_is_one_track_transaction(store: SqliteStore, tmp_path: Path) -> None:
    put(store, order("m1"), order("m2"))
    processor(store, tmp_path).drain()
    store.close()
    again = SqliteStore(str(tmp_path / "c.db"))  # a restart
    try:
        put(again, order("m3"))
        processor(again, tmp_path).drain()
        [event] = queued(again)
        assert event.body == {
            "event": "trackTransaction",
            "timestamp": "2027-01-15T08:00:00.000Z",
            "id": "ORD-1",
            "currency": "EUR",
            "item": [{"id": "SKU-1", "price": 19.5, "quantity": 2}, {"id": "SKU-2", "price": 20.0, "quantity": 1}],
        }
        sha, md5 = email_hashes("buyer@shop.example")
        assert event.header["account"] == "6789"
        assert event.header["id"]["mapping_key"] == "caller-1"
        assert event.header["id"]["email"]["sha256"] == sha and event.header["id"]["email"]["md5"] == md5
        assert event.header["retailer_visitor_id"] == "u1"
        assert event.header["site_type"] == "m"
        assert event.header["ip"] == "203.0.113.7" and event.header["full_url"].endswith("/checkout/done")
    finally:
        again.close()


def test_bad_orders_get_defined_outcomes(store: SqliteStore, tmp_path: Path) -> None:
    metrics = Metrics()
    put(
        store,
        order("a", order_id="NO-PRODUCTS", products=None),
        order("b", order_id="BAD-PRODUCTS", products=["junk", {"name": "no id"}, {"product_id": "P", "price": "abc"}]),
        order("c", order_id="NO-CURRENCY", currency=None),
        order("d", order_id=None),
    )
    processor(store, tmp_path, metrics).drain()
    bodies = {e.body["id"]: e.body for e in queued(store)}
    assert bodies["NO-PRODUCTS"]["item"] == []
    assert bodies["BAD-PRODUCTS"]["item"] == [{"id": "P", "price": 0.0, "quantity": 1}]
    assert "currency" not in bodies["NO-CURRENCY"]
    assert "d" in bodies  # no order id: the messageId stands in
    adjusted = {
        s.labels["reason"]: s.value for s in metrics.events_adjusted.collect()[0].samples if s.name.endswith("_total")
    }
    assert adjusted["order_without_items"] == 1 and adjusted["invalid_product"] == 2 and adjusted["no_currency"] == 1


def test_no_usable_identifier_or_no_consent_skips_with_a_reason(store: SqliteStore, tmp_path: Path) -> None:
    metrics = Metrics()
    anonymous = order("x", order_id="ANON")
    anonymous["userId"] = None
    anonymous["anonymousId"] = "anon-1"
    anonymous["context"] = {}
    refused = order("y", order_id="REFUSED")
    refused["context"]["consent"] = {"categoryPreferences": {"Advertising": False}}
    put(store, anonymous, refused)
    processor(store, tmp_path, metrics).drain()
    assert queued(store) == []
    skipped = {
        s.labels["reason"]: s.value for s in metrics.events_skipped.collect()[0].samples if s.name.endswith("_total")
    }
    assert skipped == {"no_identifier": 1, "no_consent": 1}


def _track(event: str, message_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "userId": "u1",
        "messageId": message_id,
        "timestamp": iso(T0),
        "properties": properties,
        "context": {"traits": {"email": "buyer@shop.example"}},
    }


def test_product_signals(store: SqliteStore, tmp_path: Path) -> None:
    products = [{"product_id": f"P{i}", "price": 10 + i} for i in range(5)]
    put(
        store,
        _track("Product Viewed", "s1", product_id="P1", name="Shoe"),
        _track("Products Searched", "s2", query=" red shoes ", products=products),
        _track("Product Added", "s3", product_id="P2", price="12.5", quantity=3),
        _track("Cart Viewed", "s4", products=products[:2]),
        _track("Checkout Started", "s5", products=products[:1]),
        {
            "type": "page",
            "name": "Home",
            "userId": "u1",
            "messageId": "s6",
            "timestamp": iso(T0),
            "context": {"traits": {"email": "buyer@shop.example"}},
        },
        _track("Product Viewed", "s7"),  # no product id: skipped with a reason
    )
    processor(store, tmp_path).drain()
    bodies = [e.body for e in queued(store)]
    assert [b["event"] for b in bodies] == [
        "viewItem",
        "viewList",
        "addToCart",
        "viewBasket",
        "beginCheckout",
        "viewHome",
    ]
    assert bodies[0]["item"] == [{"id": "P1"}]
    assert bodies[1]["item"] == [{"id": "P0"}, {"id": "P1"}, {"id": "P2"}] and bodies[1]["keywords"] == "red shoes"
    assert bodies[2]["item"] == [{"id": "P2", "price": 12.5, "quantity": 3}]
    assert len({e.person for e in queued(store)}) == 1


def test_catalog_products_change_only_when_their_data_does(store: SqliteStore, tmp_path: Path) -> None:
    full = {
        "product_id": "P1",
        "name": "Shoe",
        "url": "https://shop.example/p1",
        "image_url": "https://shop.example/p1.jpg",
        "price": 10,
        "currency": "EUR",
        "brand": "Acme",
        "category": "Shoes",
    }
    put(
        store,
        _track("Product Viewed", "c1", **full),
        _track("Product Viewed", "c2", **full),
        _track("Product Viewed", "c3", product_id="P2", name="No image", url="https://shop.example/p2"),
    )
    proc = processor(store, tmp_path)
    proc.drain()
    [pending] = store.due_products("6789", T0 + 10, 100)
    assert pending.product_id == "P1" and pending.fields["brand"] == "Acme"
    stats = store.catalog_stats()
    assert stats.products == 2 and stats.not_sent == {"imageLink": 1}
    store.open_batch("tok", "6789", [("P1", pending.fingerprint)], T0, T0)
    store.close_batch(store.batches_to_poll(T0 + 1, T0 + 60)[0], {}, T0 + 1)
    put(store, _track("Product Viewed", "c4", **full))
    proc.drain()
    assert store.due_products("6789", T0 + 10, 100) == []  # unchanged: nothing to send
    put(store, _track("Product Viewed", "c5", **{**full, "price": 12}))
    proc.drain()
    assert [p.product_id for p in store.due_products("6789", T0 + 10, 100)] == ["P1"]
