"""End to end, a shop: real `segcrit serve` and `segcrit emulator` processes, Segment's Python library
sending two people's shopping sessions, and exactly what Criteo's Events API and catalog received as
the verdict."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from segment.analytics.client import Client

from tests.e2e.conftest import (
    SHOP_CALLER_ID,
    SHOP_MERCHANT_ID,
    SHOP_PARTNER_ID,
    WRITE_KEY,
    Emulator,
    Server,
    wait_until,
)

pytestmark = pytest.mark.e2e

DELIVERY_DEADLINE_SECS = 30.0
# Segment's clock-skew correction (SPEC §1) moves each event by the time its batch took from the
# library's `sentAt` to the server's receipt: a few milliseconds on loopback.
CLOCK_CORRECTION_MAX_SECS = 2.0
SHOP = "https://shop.example"
CDN = "https://cdn.shop.example"
DESKTOP_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)

# The shop's products as its product events describe them (Segment's e-commerce spec v2).
PRODUCTS: dict[str, dict[str, Any]] = {
    pid: {
        "product_id": pid,
        "sku": sku,
        "name": name,
        "brand": brand,
        "category": category,
        "price": price,
        "url": f"{SHOP}/p/{pid.lower()}",
        "image_url": f"{CDN}/{pid.lower()}.jpg",
    }
    for pid, sku, name, brand, category, price in [
        ("TS-100", "NW-TS100-42", "Trail Runner 100", "Northwind", "Shoes", 89.9),
        ("TS-200", "NW-TS200-42", "Trail Runner 200 GTX", "Northwind", "Shoes", 119.0),
        ("TS-300", "CT-TS300-43", "Fell Racer", "Contoso", "Shoes", 99.5),
        ("SK-010", "NW-SK010-M", "Merino running socks", "Northwind", "Accessories", 14.0),
    ]
}
LISTED = ["TS-100", "TS-200", "TS-300", "SK-010"]  # the "Trail shoes" list, in display order


def iso_ms(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Person:
    user_id: str
    email: str
    ip: str
    user_agent: str
    site_type: str
    viewed: tuple[str, str]  # the two products they look at
    bought: str  # the one they add, check out and buy
    quantity: int
    order_id: str

    def email_ids(self) -> dict[str, str]:
        normalized = self.email.strip().lower()
        md5 = hashlib.md5(normalized.encode()).hexdigest()
        return {
            "sha256": hashlib.sha256(normalized.encode()).hexdigest(),
            "md5": md5,
            "sha256_md5": hashlib.sha256(md5.encode()).hexdigest(),
        }


ADA = Person(
    "u-ada", " Ada.Lovelace@Example.com", "203.0.113.7", DESKTOP_UA, "d", ("TS-100", "TS-200"), "TS-200", 1, "ORD-5001"
)
BOB = Person("u-bob", "bob@example.org", "198.51.100.23", PHONE_UA, "m", ("TS-300", "SK-010"), "SK-010", 3, "ORD-5002")


class Session:
    """What analytics.js sends for one visit, through Segment's Python library; remembers, per event
    time, the page it happened on and the Criteo event segcrit should make of it."""

    def __init__(self, client: Client, person: Person, start: datetime) -> None:
        self.client = client
        self.person = person
        self.moment = start
        self.expected: list[dict[str, Any]] = []
        self.url_at: dict[str, str] = {}  # event timestamp -> context.page.url
        self.message_id = ""  # of the latest message: a signal's Criteo event id

    def _next(self, path: str) -> tuple[datetime, dict[str, Any]]:
        self.moment += timedelta(seconds=7, milliseconds=250)
        self.message_id = f"{self.person.user_id}-{len(self.url_at)}"
        url = SHOP + path
        self.url_at[iso_ms(self.moment)] = url
        context = {
            "ip": self.person.ip,
            "userAgent": self.person.user_agent,
            "page": {"path": path, "url": url, "title": "Trail shop"},
            "locale": "en-GB",
        }
        return self.moment, context

    def _expect(self, event: str, moment: datetime, **fields: Any) -> None:
        self.expected.append({"event": event, "timestamp": iso_ms(moment), "id": self.message_id, **fields})

    def _item(self, pid: str) -> dict[str, Any]:
        return {"id": pid, "price": PRODUCTS[pid]["price"], "quantity": self.person.quantity}

    def _cart(self) -> list[dict[str, Any]]:
        return [{**PRODUCTS[self.person.bought], "quantity": self.person.quantity}]

    def run(self) -> None:
        person, client = self.person, self.client
        moment, context = self._next("/login")
        client.identify(person.user_id, {"email": person.email, "first_name": "Test"}, context, moment)

        moment, context = self._next("/")
        home = {"path": "/", "url": SHOP + "/"}
        client.page(person.user_id, None, "Home", home, context, moment, message_id=self.message_id)
        self._expect("viewHome", moment)

        moment, context = self._next("/search?q=trail+shoes")
        searched = {"query": "trail shoes"}
        client.track(person.user_id, "Products Searched", searched, context, moment, message_id=self.message_id)
        self._expect("viewList", moment, item=[], keywords="trail shoes")

        moment, context = self._next("/c/trail-shoes")
        listed = [{**PRODUCTS[pid], "position": n} for n, pid in enumerate(LISTED, 1)]
        properties = {"list_id": "trail-shoes", "category": "Shoes", "products": listed}
        client.track(person.user_id, "Product List Viewed", properties, context, moment, message_id=self.message_id)
        self._expect("viewList", moment, item=[{"id": pid} for pid in LISTED[:3]])

        for pid in person.viewed:
            moment, context = self._next(f"/p/{pid.lower()}")
            viewed = {**PRODUCTS[pid], "currency": "EUR"}
            client.track(person.user_id, "Product Viewed", viewed, context, moment, message_id=self.message_id)
            self._expect("viewItem", moment, item=[{"id": pid}])

        moment, context = self._next(f"/p/{person.bought.lower()}")
        added = {**PRODUCTS[person.bought], "cart_id": f"cart-{person.user_id}", "quantity": person.quantity}
        client.track(person.user_id, "Product Added", added, context, moment, message_id=self.message_id)
        self._expect("addToCart", moment, item=[self._item(person.bought)])

        moment, context = self._next("/cart")
        cart = {"cart_id": f"cart-{person.user_id}", "products": self._cart()}
        client.track(person.user_id, "Cart Viewed", cart, context, moment, message_id=self.message_id)
        self._expect("viewBasket", moment, item=[self._item(person.bought)])

        moment, context = self._next("/checkout")
        value = PRODUCTS[person.bought]["price"] * person.quantity
        checkout = {"order_id": person.order_id, "value": value, "currency": "EUR", "products": self._cart()}
        client.track(person.user_id, "Checkout Started", checkout, context, moment, message_id=self.message_id)
        self._expect("beginCheckout", moment, item=[self._item(person.bought)])

        moment, context = self._next("/checkout/complete")
        order = {
            "order_id": person.order_id,
            "total": value + 4.9,
            "revenue": value,
            "shipping": 4.9,
            "currency": "EUR",
            "products": self._cart(),
        }
        client.track(person.user_id, "Order Completed", order, context, moment, message_id=f"{person.order_id}-a")
        self._expect("trackTransaction", moment, id=person.order_id, currency="EUR", item=[self._item(person.bought)])
        # The shop's backend sends the same order again (a retry), with a new messageId.
        client.track(person.user_id, "Order Completed", order, context, moment, message_id=f"{person.order_id}-b")


def documents_of(state: dict[str, Any], user_id: str) -> list[dict[str, Any]]:
    return [d for d in state.get("eventDocuments", []) if d.get("retailer_visitor_id") == user_id]


def events_of(state: dict[str, Any], user_id: str) -> list[dict[str, Any]]:
    return [event for document in documents_of(state, user_id) for event in document["events"]]


def as_sent(events: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`events` with each timestamp put back to the one sent, when the clock-skew correction moved
    it forward by less than CLOCK_CORRECTION_MAX_SECS (anything else stays, and fails the test)."""
    out = []
    for event, sent in zip(events, expected, strict=False):
        moved = datetime.fromisoformat(event["timestamp"]) - datetime.fromisoformat(sent["timestamp"])
        corrected = timedelta(0) <= moved < timedelta(seconds=CLOCK_CORRECTION_MAX_SECS)
        out.append({**event, "timestamp": sent["timestamp"]} if corrected else event)
    return out + events[len(expected) :]


def catalog_item(pid: str, *, priced: bool) -> dict[str, Any]:
    """What Criteo's catalog should hold for a product (Google-Merchant-like names)."""
    product = PRODUCTS[pid]
    item: dict[str, Any] = {
        "id": pid,
        "title": product["name"],
        "link": product["url"],
        "imageLink": product["image_url"],
        "channel": "online",
        "brand": product["brand"],
        "productTypes": [product["category"]],
        "mpn": product["sku"],
    }
    if priced:  # only events that name a currency give the product a price
        item["price"] = {"value": f"{product['price']:.2f}", "currency": "EUR"}
    return item


def test_two_shopping_sessions_end_in_exact_events_one_transaction_per_order_and_the_catalog(
    shop_server: Server, emulator: Emulator
) -> None:
    shop_server.start()
    errors: list[Any] = []
    client = Client(WRITE_KEY, host=shop_server.url, gzip=True, on_error=lambda e, _b: errors.append(e))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    sessions = [Session(client, ADA, start), Session(client, BOB, start + timedelta(seconds=3))]
    for session in sessions:
        session.run()
    client.flush()
    client.shutdown()
    assert errors == []

    priced = set(ADA.viewed) | set(BOB.viewed)  # viewed with a currency: the rest never got a price
    expected_catalog = {pid: catalog_item(pid, priced=pid in priced) for pid in PRODUCTS}

    def delivered() -> bool:
        state = emulator.state()
        items = state["catalog"].get(SHOP_MERCHANT_ID, {}).get("items")
        return items == expected_catalog and all(
            len(events_of(state, s.person.user_id)) >= len(s.expected) for s in sessions
        )

    wait_until(delivered, DELIVERY_DEADLINE_SECS, "every event and product at Criteo", emulator.state)
    assert shop_server.terminate() == 0  # flushes anything still waiting: nothing more may arrive
    state = emulator.state()

    for session in sessions:
        person = session.person
        # Every event, in the order the person did things; the re-sent order is not among them.
        events = events_of(state, person.user_id)
        assert as_sent(events, session.expected) == session.expected
        sent_time = {e["timestamp"]: s["timestamp"] for e, s in zip(events, session.expected, strict=True)}
        for document in documents_of(state, person.user_id):
            assert document == {
                "account": SHOP_PARTNER_ID,
                "site_type": person.site_type,
                "id": {"mapping_key": SHOP_CALLER_ID, "email": person.email_ids()},
                "retailer_visitor_id": person.user_id,
                "ip": person.ip,
                "useragent": person.user_agent,
                "full_url": session.url_at[sent_time[document["events"][-1]["timestamp"]]],
                "version": "segcrit_1.0",
                "events": document["events"],
            }
    transactions = [
        (d["account"], e["id"])
        for d in state["eventDocuments"]
        for e in d["events"]
        if e["event"] == "trackTransaction"
    ]
    assert sorted(transactions) == [(SHOP_PARTNER_ID, ADA.order_id), (SHOP_PARTNER_ID, BOB.order_id)]
    assert state["events"]["byName"] == {
        "viewHome": 2,
        "viewList": 4,
        "viewItem": 4,
        "addToCart": 2,
        "viewBasket": 2,
        "beginCheckout": 2,
        "trackTransaction": 2,
    }
    assert state["catalog"][SHOP_MERCHANT_ID]["items"] == expected_catalog
    assert set(state["catalog"]) == {SHOP_MERCHANT_ID}
