"""Tier-2 commerce delivery: store + Processor + EventsWorker/CatalogWorker against the emulator.

segcrit and the emulator share one FakeClock; the clients' rate limiters "sleep" by advancing it and
the tests step the processor and the workers (`drain_once()`), so batch windows, retries and report
polls pass without waiting. Every test ends on what a shop relies on: the exact Events API documents
Criteo received (`EmulatorState.event_documents()`), the trackTransactions it counts, and the
catalog it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
import pytest

from segcrit.clock import FakeClock
from segcrit.config import Config
from segcrit.delivery.commerce_workers import MAX_DOCUMENTS_IN_FLIGHT
from segcrit.emulator.state import EmulatorState
from segcrit.identity.normalize import email_hashes
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.runtime import Workers, build_workers
from segcrit.store.sqlite import SqliteStore
from tests.helpers import BASE_CONFIG, PinnedJitter, advancing, iso, make_config, put

MAX_WAIT_SECS = 2.0
CATALOG_WAIT_SECS = 10.0
MERCHANT = "6789"
COMMERCE_FLOWS = f"""  - type: conversions
  - type: product_signals
  - type: catalog
    merchant_id: "{MERCHANT}"
    max_wait_secs: {CATALOG_WAIT_SECS}
"""
DESKTOP_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"
PHONE_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
SHOP = "https://shop.example"


# ------------------------------------------------------------------------------------ shoppers


@dataclass
class Shopper:
    """One person browsing the shop: the Segment messages analytics.js would send for them."""

    user_id: str
    email: str
    ip: str = "203.0.113.7"
    user_agent: str = DESKTOP_UA
    consent: bool | None = None  # carried as context.consent when set
    _ids: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**6)))

    def _context(self, path: str) -> dict[str, Any]:
        context: dict[str, Any] = {
            "traits": {"email": self.email},
            "ip": self.ip,
            "userAgent": self.user_agent,
            "page": {"path": path, "url": SHOP + path},
            "library": {"name": "analytics.js", "version": "2.11.1"},
        }
        if self.consent is not None:
            context["consent"] = {"categoryPreferences": {"Advertising": self.consent}}
        return context

    def _message_id(self) -> str:
        return f"{self.user_id}-m{next(self._ids)}"

    def home(self, ts: float) -> dict[str, Any]:
        return {
            "type": "page",
            "name": "Home",
            "userId": self.user_id,
            "messageId": self._message_id(),
            "timestamp": iso(ts),
            "properties": {"path": "/", "url": SHOP + "/"},
            "context": self._context("/"),
        }

    def track(
        self, event: str, ts: float, properties: dict[str, Any], path: str = "/", message_id: str | None = None
    ) -> dict[str, Any]:
        return {
            "type": "track",
            "event": event,
            "userId": self.user_id,
            "messageId": message_id or self._message_id(),
            "timestamp": iso(ts),
            "properties": properties,
            "context": self._context(path),
        }

    def order(self, order_id: str, ts: float, message_id: str | None = None) -> dict[str, Any]:
        properties = {
            "order_id": order_id,
            "revenue": 59.0,
            "currency": "EUR",
            "products": [
                {"product_id": "P1", "sku": "SKU-P1", "price": 19.5, "quantity": 2},
                {"product_id": "P2", "price": "20.00", "quantity": 1},
            ],
        }
        return self.track("Order Completed", ts, properties, "/checkout/done", message_id)


def product(product_id: str, **changes: Any) -> dict[str, Any]:
    """A product as the shop's product events describe it (Segment's e-commerce spec v2)."""
    number = product_id.lstrip("P")
    return {
        "product_id": product_id,
        "sku": f"SKU-{product_id}",
        "name": f"Trail shoe {number}",
        "brand": "Northwind",
        "category": "Shoes",
        "price": 40 + int(number),
        "currency": "EUR",
        "url": f"{SHOP}/p/{product_id.lower()}",
        "image_url": f"{SHOP}/img/{product_id.lower()}.jpg",
        **changes,
    }


def email_block(email: str) -> dict[str, str]:
    sha, md5 = email_hashes(email.strip().lower())
    return {"sha256": sha, "md5": md5, "sha256_md5": hashlib.sha256(md5.encode()).hexdigest()}


# ---------------------------------------------------------------------------------- the harness


class RefusingEventsApi(httpx.AsyncBaseTransport):
    """The real network, except that documents of `refused` visitors get the Events API's own 400.

    The emulator accepts every document segcrit can build, so for these people the request goes to
    it with a version it does not serve: the 400 and its error body are the emulator's.
    """

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.refused: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/m/event") and self.refused:
            visitor = orjson.loads(request.content).get("retailer_visitor_id")
            if visitor in self.refused:
                query = [(k, "s2s_v9" if k == "version" else v) for k, v in parse_qsl(request.url.query.decode())]
                request = httpx.Request(
                    request.method,
                    request.url.copy_with(query=urlencode(query).encode()),
                    headers=request.headers,
                    content=request.content,
                )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Segcrit:
    """One segcrit process (store, processor, delivery workers), stepped by the test."""

    store: SqliteStore
    config: Config
    clock: FakeClock
    loop: asyncio.AbstractEventLoop
    processor: Processor
    workers: Workers

    def send(self, *messages: dict[str, Any]) -> None:
        """Ingest (durable commit) and process, as `segcrit serve` does on arrival."""
        put(self.store, *messages, received_at=self.clock.now())
        self.processor.drain()

    def drain(self, *, force: bool = False) -> int:
        return self.loop.run_until_complete(self.workers.drain_once(force=force))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def deliver(self) -> int:
        """Let the events' batch window pass, then drain once."""
        self.advance(MAX_WAIT_SECS)
        return self.drain()


class Start(Protocol):
    def __call__(
        self, *, transport: httpx.AsyncBaseTransport | None = None, jitter: float = 1.0, flows: str = COMMERCE_FLOWS
    ) -> Segcrit: ...


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "segcrit.db")


@pytest.fixture
def start(db: str, emulator_url: str, emulator_clock: FakeClock) -> Iterator[Start]:
    """Start a segcrit "process" on one database file; call again to restart it on the same file."""
    loop = asyncio.new_event_loop()
    running: list[Segcrit] = []

    def start_(
        *, transport: httpx.AsyncBaseTransport | None = None, jitter: float = 1.0, flows: str = COMMERCE_FLOWS
    ) -> Segcrit:
        config = make_config(db, api_url=emulator_url, max_wait=MAX_WAIT_SECS, flows=flows)
        clock = emulator_clock
        store = SqliteStore(db)
        metrics = Metrics()
        workers = build_workers(
            store, config, clock, metrics, transport=transport, sleep=advancing(clock), rng=PinnedJitter(jitter)
        )
        segcrit = Segcrit(store, config, clock, loop, Processor(store, config, clock, metrics), workers)
        running.append(segcrit)
        return segcrit

    yield start_
    for segcrit in running:
        loop.run_until_complete(segcrit.workers.aclose())
        segcrit.store.close()
    loop.close()


def event_calls(state: EmulatorState) -> list[tuple[str, int]]:
    return [(call.path, call.status) for call in state.calls("events")]


def documents_of(state: EmulatorState, user_id: str) -> list[dict[str, Any]]:
    return [d for d in state.event_documents() if d.get("retailer_visitor_id") == user_id]


def event_names(state: EmulatorState, user_id: str) -> list[list[str]]:
    """Per document of this person, its events' names, in the order Criteo received them."""
    return [[e["event"] for e in d["events"]] for d in documents_of(state, user_id)]


# --------------------------------------------------------------------------- Events API documents


def test_a_persons_waiting_events_go_in_one_exact_document(start: Start, emulator_state: EmulatorState) -> None:
    segcrit = start()
    ada = Shopper("u-ada", " Ada.Lovelace@Example.com ")
    t = segcrit.clock.now()
    segcrit.send(
        ada.home(t),
        ada.track(
            "Products Searched", t + 1, {"query": "trail shoes", "products": [product(f"P{i}") for i in range(5)]}
        ),
        ada.track("Product Viewed", t + 2, product("P1"), "/p/p1"),
        ada.track("Product Added", t + 3, {**product("P1"), "quantity": 2}, "/p/p1"),
        ada.track("Cart Viewed", t + 4, {"products": [{**product("P1"), "quantity": 2}]}, "/cart"),
        ada.track("Checkout Started", t + 5, {"products": [{**product("P1"), "quantity": 2}]}, "/checkout"),
    )
    assert segcrit.drain() == 0  # the batch window (max_wait_secs) has not passed: nothing yet
    assert emulator_state.event_documents() == []

    assert segcrit.deliver() == 1
    stamp = [iso(t + s).replace("Z", ".000Z") for s in range(6)]
    assert emulator_state.event_documents() == [
        {
            "account": "6789",
            "site_type": "d",
            "id": {"mapping_key": "caller-1", "email": email_block("ada.lovelace@example.com")},
            "retailer_visitor_id": "u-ada",
            "ip": "203.0.113.7",
            "useragent": DESKTOP_UA,
            "full_url": SHOP + "/checkout",  # the latest event's page speaks for the document
            "version": "segcrit_1.0",
            # Each event's id is its Segment messageId: the same at every send (SPEC §7).
            "events": [
                {"event": "viewHome", "timestamp": stamp[0], "id": "u-ada-m1"},
                {
                    "event": "viewList",
                    "timestamp": stamp[1],
                    "id": "u-ada-m2",
                    "item": [{"id": "P0"}, {"id": "P1"}, {"id": "P2"}],
                    "keywords": "trail shoes",
                },
                {"event": "viewItem", "timestamp": stamp[2], "id": "u-ada-m3", "item": [{"id": "P1"}]},
                {
                    "event": "addToCart",
                    "timestamp": stamp[3],
                    "id": "u-ada-m4",
                    "item": [{"id": "P1", "price": 41.0, "quantity": 2}],
                },
                {
                    "event": "viewBasket",
                    "timestamp": stamp[4],
                    "id": "u-ada-m5",
                    "item": [{"id": "P1", "price": 41.0, "quantity": 2}],
                },
                {
                    "event": "beginCheckout",
                    "timestamp": stamp[5],
                    "id": "u-ada-m6",
                    "item": [{"id": "P1", "price": 41.0, "quantity": 2}],
                },
            ],
        }
    ]
    assert event_calls(emulator_state) == [("/m/event", 200)]
    assert segcrit.store.pending_event_count() == 0

    # The next window is a new document: sent events are never sent again.
    segcrit.send(ada.track("Product Viewed", segcrit.clock.now(), product("P2"), "/p/p2"))
    assert segcrit.deliver() == 1
    assert event_names(emulator_state, "u-ada") == [
        ["viewHome", "viewList", "viewItem", "addToCart", "viewBasket", "beginCheckout"],
        ["viewItem"],
    ]


def test_each_person_gets_their_own_document_with_their_own_context(
    start: Start, emulator_state: EmulatorState
) -> None:
    segcrit = start()
    ada = Shopper("u-ada", "ada@example.com")
    bob = Shopper("u-bob", "bob@example.com", ip="198.51.100.4", user_agent=PHONE_UA)
    t = segcrit.clock.now()
    segcrit.send(
        ada.track("Product Viewed", t, product("P1")),
        bob.track("Product Viewed", t, product("P2")),
        ada.track("Product Viewed", t + 1, product("P3")),
        bob.home(t + 1),
    )
    assert segcrit.deliver() == 2
    by_visitor = {d["retailer_visitor_id"]: d for d in emulator_state.event_documents()}
    assert sorted(by_visitor) == ["u-ada", "u-bob"]
    assert [e["event"] for e in by_visitor["u-ada"]["events"]] == ["viewItem", "viewItem"]
    assert [e["item"] for e in by_visitor["u-ada"]["events"]] == [[{"id": "P1"}], [{"id": "P3"}]]
    assert [e["event"] for e in by_visitor["u-bob"]["events"]] == ["viewItem", "viewHome"]
    assert (by_visitor["u-bob"]["site_type"], by_visitor["u-bob"]["ip"]) == ("m", "198.51.100.4")
    assert by_visitor["u-bob"]["id"]["email"] == email_block("bob@example.com")
    assert (by_visitor["u-ada"]["site_type"], by_visitor["u-ada"]["ip"]) == ("d", "203.0.113.7")


def test_an_order_delivered_three_times_across_a_restart_is_one_track_transaction(
    start: Start, emulator_state: EmulatorState
) -> None:
    ada = Shopper("u-ada", "ada@example.com")
    first = start()
    t = first.clock.now()
    first.send(ada.order("ORD-1001", t, message_id="order-msg-1"))
    assert first.deliver() == 1
    first.send(ada.order("ORD-1001", t, message_id="order-msg-2"))  # Segment retried with a new messageId
    assert first.deliver() == 0
    first.store.close()

    again = start()  # a restart: new store object, processor and workers on the same file
    again.send(ada.order("ORD-1001", t, message_id="order-msg-3"))
    assert again.deliver() == 0
    assert again.drain(force=True) == 0

    assert emulator_state.events("trackTransaction") == [
        {
            "event": "trackTransaction",
            "timestamp": iso(t).replace("Z", ".000Z"),
            "id": "ORD-1001",
            "currency": "EUR",
            "item": [{"id": "P1", "price": 19.5, "quantity": 2}, {"id": "P2", "price": 20.0, "quantity": 1}],
        }
    ]
    assert list(emulator_state.transactions()) == [("6789", "ORD-1001")]
    assert event_calls(emulator_state) == [("/m/event", 200)]

    # Another order of the same person is its own trackTransaction.
    again.send(ada.order("ORD-1002", again.clock.now()))
    assert again.deliver() == 1
    assert list(emulator_state.transactions()) == [("6789", "ORD-1001"), ("6789", "ORD-1002")]


def test_an_order_queued_before_a_restart_is_sent_once_after_it(start: Start, emulator_state: EmulatorState) -> None:
    ada = Shopper("u-ada", "ada@example.com")
    first = start()
    t = first.clock.now()
    first.send(ada.order("ORD-7", t, message_id="a"), ada.order("ORD-7", t, message_id="b"))
    first.store.close()  # dies before its delivery window passed

    again = start()
    again.send(ada.order("ORD-7", t, message_id="c"))
    assert again.deliver() == 1
    assert [e["id"] for e in emulator_state.events("trackTransaction")] == ["ORD-7"]


def test_a_307_redirect_is_followed_with_the_same_body(start: Start, emulator_state: EmulatorState) -> None:
    emulator_state.events_redirect_hops = 2
    segcrit = start()
    ada = Shopper("u-ada", "ada@example.com")
    segcrit.send(ada.order("ORD-1", segcrit.clock.now()))
    assert segcrit.deliver() == 1

    calls = emulator_state.calls("events")
    assert [(c.path, c.status) for c in calls] == [
        ("/m/event", 307),
        ("/m/event/regional", 307),
        ("/m/event/regional", 200),
    ]
    assert len({c.body for c in calls}) == 1 and all(c.method == "POST" for c in calls)
    [document] = emulator_state.event_documents()
    assert document == orjson.loads(calls[0].body)
    assert [e["id"] for e in document["events"]] == ["ORD-1"]
    assert segcrit.store.pending_event_count() == 0


def test_a_5xx_is_retried_then_the_same_document_is_sent_once(start: Start, emulator_state: EmulatorState) -> None:
    segcrit = start()
    ada = Shopper("u-ada", "ada@example.com")
    t = segcrit.clock.now()
    segcrit.send(ada.order("ORD-1", t), ada.track("Product Viewed", t, product("P1")))
    emulator_state.set_faults("5xx_next=1,5xx_status=503")
    assert segcrit.deliver() == 1
    assert emulator_state.event_documents() == []
    assert [e.attempts for e in segcrit.store.due_events(segcrit.clock.now() + 10**6, 100)] == [1, 1]

    for _ in range(60):  # step the clock until the retry is due (its exact time is the next test's)
        if emulator_state.event_documents():
            break
        segcrit.advance(1)
        segcrit.drain()
    assert event_calls(emulator_state) == [("/m/event", 503), ("/m/event", 200)]
    first, second = emulator_state.calls("events")
    assert first.body == second.body
    assert event_names(emulator_state, "u-ada") == [["trackTransaction", "viewItem"]]
    assert segcrit.store.pending_event_count() == 0 and segcrit.store.dead_letters() == []


def test_a_5xx_is_retried_after_the_backoff_not_the_rate_limit_window(
    start: Start, emulator_state: EmulatorState
) -> None:
    segcrit = start(jitter=1.0)  # full jitter pinned at its cap: the first retry waits exactly 1 s
    ada = Shopper("u-ada", "ada@example.com")
    segcrit.send(ada.order("ORD-1", segcrit.clock.now()))
    emulator_state.set_faults("5xx_next=1")
    assert segcrit.deliver() == 1
    segcrit.advance(0.5)
    segcrit.drain()
    assert event_calls(emulator_state) == [("/m/event", 500)]  # not before the backoff
    segcrit.advance(0.5)
    segcrit.drain()
    assert event_calls(emulator_state) == [("/m/event", 500), ("/m/event", 200)]


def test_a_400_dead_letters_that_document_others_flow_and_replay_sends_it(
    start: Start, emulator_state: EmulatorState, tmp_path: Path, db: str, emulator_url: str
) -> None:
    network = RefusingEventsApi()
    network.refused.add("u-ada")
    segcrit = start(transport=network)
    ada = Shopper("u-ada", "ada@example.com")
    bob = Shopper("u-bob", "bob@example.com")
    t = segcrit.clock.now()
    segcrit.send(ada.order("ORD-A", t), bob.order("ORD-B", t), ada.track("Product Viewed", t, product("P1")))
    assert segcrit.deliver() == 2

    assert event_names(emulator_state, "u-bob") == [["trackTransaction"]]
    assert documents_of(emulator_state, "u-ada") == []
    [letter] = segcrit.store.dead_letters()
    assert (letter.audience, letter.count, letter.status) == ("events", 2, 400)
    assert "Criteo events answered 400 invalid" in letter.error and "s2s_v0" in letter.error
    assert segcrit.store.pending_event_count() == 0

    # Nothing retries a dead letter on its own; bob's next events keep flowing.
    segcrit.send(bob.track("Product Viewed", segcrit.clock.now(), product("P2")))
    segcrit.advance(3600)
    segcrit.drain()
    assert event_names(emulator_state, "u-bob") == [["trackTransaction"], ["viewItem"]]

    # The user fixes the cause and runs `segcrit replay`: ada's document goes, once.
    network.refused.clear()
    config_file = tmp_path / "segcrit.yaml"
    config_file.write_text(BASE_CONFIG.format(db=db, api_url=emulator_url, max_wait=MAX_WAIT_SECS) + COMMERCE_FLOWS)
    script = Path(sys.executable).parent / "segcrit"
    result = subprocess.run(
        [str(script), "replay", "--config", str(config_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 dead letter(s) put back on the delivery queue"
    segcrit.drain()
    assert event_names(emulator_state, "u-ada") == [["trackTransaction", "viewItem"]]
    assert segcrit.store.dead_letters() == [] and segcrit.store.pending_event_count() == 0
    segcrit.drain(force=True)
    assert len(emulator_state.event_documents()) == 3
    assert list(emulator_state.transactions()) == [("6789", "ORD-B"), ("6789", "ORD-A")]


def test_consent_revoked_stops_events_even_those_already_waiting(start: Start, emulator_state: EmulatorState) -> None:
    segcrit = start()
    ada = Shopper("u-ada", "ada@example.com", consent=True)
    bob = Shopper("u-bob", "bob@example.com")
    t = segcrit.clock.now()
    segcrit.send(ada.track("Product Viewed", t, product("P1")))
    assert segcrit.deliver() == 1

    # Viewed, then refused in the consent banner before the batch window closed.
    t = segcrit.clock.now()
    segcrit.send(ada.track("Product Added", t, product("P1")))
    ada.consent = False
    segcrit.send(
        ada.track("Segment Consent Preference Updated", t + 1, {}),
        ada.order("ORD-1", t + 2),
        ada.track("Product Viewed", t + 3, product("P2")),
        bob.track("Product Viewed", t + 3, product("P2")),
    )
    segcrit.deliver()
    segcrit.advance(3600)
    segcrit.drain(force=True)
    assert event_names(emulator_state, "u-ada") == [["viewItem"]]
    assert event_names(emulator_state, "u-bob") == [["viewItem"]]
    assert emulator_state.transactions() == {}

    assert segcrit.store.pending_event_count() == 0

    # Consent given again: new events flow again (the order refused earlier stays unsent).
    ada.consent = True
    segcrit.send(ada.track("Product Viewed", segcrit.clock.now(), product("P3")))
    segcrit.deliver()
    assert event_names(emulator_state, "u-ada") == [["viewItem"], ["viewItem"]]
    assert documents_of(emulator_state, "u-ada")[-1]["events"][0]["item"] == [{"id": "P3"}]


# ---------------------------------------------------------------------------------------- catalog


def batch_bodies(state: EmulatorState) -> list[list[dict[str, Any]]]:
    """The products of each catalog batch Criteo received."""
    return [[entry["product"] for entry in call.request["entries"]] for call in state.calls("catalog-batch")]


def test_changed_products_go_in_one_batch_each_once_and_the_report_is_polled_to_final(
    start: Start, emulator_state: EmulatorState
) -> None:
    emulator_state.catalog_report_polls = 2  # ACCEPTED, IN_PROGRESS, then final
    segcrit = start()
    ada = Shopper("u-ada", "ada@example.com")
    t = segcrit.clock.now()
    segcrit.send(
        ada.track("Product Viewed", t, product("P1")),
        ada.track("Product Viewed", t, product("P2", name="  Trail shoe 2  ")),
        ada.track("Product Viewed", t + 1, product("P1", price=45)),  # changed twice before sending
        ada.track("Product Viewed", t + 1, product("P1", price=46, name="Trail shoe 1 (2027)")),
        # Criteo needs title, link and imageLink: this one is kept but not sent.
        ada.track("Product Viewed", t + 2, {"product_id": "P4", "name": "Gift card", "url": f"{SHOP}/p/p4"}),
        ada.track("Product Added", t + 2, {"product_id": "P5", "price": 5, "quantity": 1}),
        # segcrit cannot see that a relative link is wrong; Criteo's report says so.
        ada.track("Product Viewed", t + 2, product("P3", url="/p/p3")),
    )
    segcrit.advance(CATALOG_WAIT_SECS - 1)
    segcrit.drain()
    assert batch_bodies(emulator_state) == []  # the catalog's own batch window has not passed
    segcrit.advance(1)
    segcrit.drain()

    [batch] = batch_bodies(emulator_state)
    assert sorted(batch, key=lambda p: p["id"]) == [
        {
            "id": "P1",
            "title": "Trail shoe 1 (2027)",
            "link": f"{SHOP}/p/p1",
            "imageLink": f"{SHOP}/img/p1.jpg",
            "channel": "online",
            "price": {"value": "46.00", "currency": "EUR"},
            "brand": "Northwind",
            "productTypes": ["Shoes"],
            "mpn": "SKU-P1",
        },
        {
            "id": "P2",
            "title": "Trail shoe 2",
            "link": f"{SHOP}/p/p2",
            "imageLink": f"{SHOP}/img/p2.jpg",
            "channel": "online",
            "price": {"value": "42.00", "currency": "EUR"},
            "brand": "Northwind",
            "productTypes": ["Shoes"],
            "mpn": "SKU-P2",
        },
        {
            "id": "P3",
            "title": "Trail shoe 3",
            "link": "/p/p3",
            "imageLink": f"{SHOP}/img/p3.jpg",
            "channel": "online",
            "price": {"value": "43.00", "currency": "EUR"},
            "brand": "Northwind",
            "productTypes": ["Shoes"],
            "mpn": "SKU-P3",
        },
    ]
    stats = segcrit.store.catalog_stats()
    assert (stats.products, stats.in_flight, stats.pending, stats.accepted) == (5, 3, 0, 0)
    assert stats.not_sent == {"imageLink": 1, "title,link,imageLink": 1}

    # The report: ACCEPTED, IN_PROGRESS, then final; the products stay in flight until it is final.
    seen = []
    for _ in range(5):
        segcrit.advance(60)
        segcrit.drain()
        seen.append((len(emulator_state.calls("catalog-report")), segcrit.store.catalog_stats().in_flight))
    assert seen == [(1, 3), (2, 3), (3, 0), (3, 0), (3, 0)]
    assert [c.status for c in emulator_state.calls("catalog-report")] == [200, 200, 200]
    assert len(emulator_state.calls("catalog-batch")) == 1
    stats = segcrit.store.catalog_stats()
    assert (stats.accepted, stats.with_errors, stats.in_flight, stats.pending) == (2, 1, 0, 0)
    assert segcrit.store.product_errors() == [(MERCHANT, "P3", "InvalidProductUrl: link is not an http(s) URL")]
    assert sorted(emulator_state.catalog(MERCHANT)) == ["P1", "P2"]
    assert emulator_state.catalog(MERCHANT)["P1"]["price"] == {"value": "46.00", "currency": "EUR"}

    # The gift card's image turns up in a later event: now it is complete, and sent alone.
    segcrit.send(ada.track("Product Viewed", segcrit.clock.now(), {"product_id": "P4", "image_url": f"{SHOP}/g.png"}))
    segcrit.advance(CATALOG_WAIT_SECS)
    segcrit.drain()
    assert batch_bodies(emulator_state)[1:] == [
        [
            {
                "id": "P4",
                "title": "Gift card",
                "link": f"{SHOP}/p/p4",
                "imageLink": f"{SHOP}/g.png",
                "channel": "online",
            }
        ]
    ]
    assert segcrit.store.catalog_stats().not_sent == {"title,link,imageLink": 1}


def test_a_product_is_sent_again_only_when_its_data_changes(start: Start, emulator_state: EmulatorState) -> None:
    emulator_state.catalog_report_polls = 0
    segcrit = start()
    ada = Shopper("u-ada", "ada@example.com")

    def view(*products: dict[str, Any]) -> None:
        segcrit.send(*(ada.track("Product Viewed", segcrit.clock.now(), p) for p in products))
        for _ in range(3):
            segcrit.advance(CATALOG_WAIT_SECS)
            segcrit.drain()

    view(product("P1"), product("P2"))
    view(product("P1"), product("P2"), product("P1"))  # seen again, unchanged
    view({"product_id": "P2", "price": 42})  # a subset of the fields, same values: unchanged
    assert [sorted(p["id"] for p in b) for b in batch_bodies(emulator_state)] == [["P1", "P2"]]

    view(product("P2", price=39.9))  # a price drop
    view(product("P2", price=39.9))
    assert [sorted(p["id"] for p in b) for b in batch_bodies(emulator_state)] == [["P1", "P2"], ["P2"]]
    assert emulator_state.catalog(MERCHANT)["P2"]["price"] == {"value": "39.90", "currency": "EUR"}
    stats = segcrit.store.catalog_stats()
    assert (stats.products, stats.accepted, stats.pending, stats.in_flight) == (2, 2, 0, 0)


def test_a_product_that_changes_while_its_batch_is_in_flight_goes_in_the_next_batch(
    start: Start, emulator_state: EmulatorState
) -> None:
    emulator_state.catalog_report_polls = 1
    segcrit = start()
    ada = Shopper("u-ada", "ada@example.com")
    segcrit.send(ada.track("Product Viewed", segcrit.clock.now(), product("P1")))
    segcrit.advance(CATALOG_WAIT_SECS)
    segcrit.drain()
    assert len(batch_bodies(emulator_state)) == 1

    segcrit.send(ada.track("Product Viewed", segcrit.clock.now(), product("P1", price=99)))
    segcrit.advance(CATALOG_WAIT_SECS)
    segcrit.drain()  # polls (ACCEPTED); P1 is in a batch not yet final: not sent twice at once
    assert len(batch_bodies(emulator_state)) == 1
    for _ in range(3):
        segcrit.advance(60)
        segcrit.drain()
    bodies = batch_bodies(emulator_state)
    assert [[p["price"]["value"] for p in b] for b in bodies] == [["41.00"], ["99.00"]]
    assert emulator_state.catalog(MERCHANT)["P1"]["price"]["value"] == "99.00"


def test_a_5xx_on_the_catalog_batch_is_retried(start: Start, emulator_state: EmulatorState) -> None:
    emulator_state.catalog_report_polls = 0
    segcrit = start(jitter=1.0)
    ada = Shopper("u-ada", "ada@example.com")
    segcrit.send(ada.track("Product Viewed", segcrit.clock.now(), product("P1")))
    segcrit.loop.run_until_complete(segcrit.workers.contacts.client.token())  # a token first
    segcrit.deliver()  # the viewItem goes to the Events API
    assert len(emulator_state.event_documents()) == 1
    emulator_state.set_faults("5xx_next=1")
    segcrit.advance(CATALOG_WAIT_SECS)
    segcrit.drain()
    for _ in range(3):
        segcrit.advance(5)
        segcrit.drain()
    assert [c.status for c in emulator_state.calls("catalog-batch")] == [500, 202]
    assert sorted(emulator_state.catalog(MERCHANT)) == ["P1"]
    assert segcrit.store.catalog_stats().accepted == 1


def test_events_of_two_profiles_merged_before_sending_go_in_one_document(
    start: Start, emulator_state: EmulatorState
) -> None:
    segcrit = start()
    t = segcrit.clock.now()
    visitor = Shopper("ignored", "guest@example.com")
    browsing = visitor.track("Product Viewed", t, product("P1"))
    del browsing["userId"]
    browsing["anonymousId"] = "anon-7"  # a guest who typed their email in the newsletter box
    member = Shopper("u-ada", "ada@example.com")
    segcrit.send(browsing, member.track("Product Added", t + 1, product("P2")))
    # Ada logs in on the guest's browser: analytics.js links the two.
    segcrit.send(
        {
            "type": "identify",
            "userId": "u-ada",
            "anonymousId": "anon-7",
            "messageId": "login-1",
            "timestamp": iso(t + 2),
            "traits": {"email": "ada@example.com"},
        }
    )
    segcrit.deliver()
    assert [[e["event"] for e in d["events"]] for d in emulator_state.event_documents()] == [["viewItem", "addToCart"]]
    [document] = emulator_state.event_documents()
    assert document["retailer_visitor_id"] == "u-ada"


class Gate(httpx.AsyncBaseTransport):
    """Holds each Events API call until `width` are under way at once (or `patience_secs` passed)."""

    def __init__(self, width: int, patience_secs: float = 1.0) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.width = width
        self.patience_secs = patience_secs
        self.open = asyncio.Event()
        self.under_way = 0
        self.peak = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith("/m/event"):
            return await self.inner.handle_async_request(request)
        self.under_way += 1
        self.peak = max(self.peak, self.under_way)
        try:
            if self.under_way >= self.width:
                self.open.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.open.wait(), self.patience_secs)
            return await self.inner.handle_async_request(request)
        finally:
            self.under_way -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_many_peoples_documents_are_in_flight_at_once(start: Start, emulator_state: EmulatorState) -> None:
    # One document per round trip, one after the other, would cap delivery at 1/RTT documents/s.
    gate = Gate(MAX_DOCUMENTS_IN_FLIGHT)
    segcrit = start(transport=gate)
    people = [Shopper(f"u-{n}", f"shopper{n}@example.com") for n in range(MAX_DOCUMENTS_IN_FLIGHT + 4)]
    segcrit.send(*(p.track("Product Viewed", segcrit.clock.now(), product("P1")) for p in people))
    segcrit.deliver()
    assert gate.peak == MAX_DOCUMENTS_IN_FLIGHT
    assert sorted(d["retailer_visitor_id"] for d in emulator_state.event_documents()) == sorted(
        p.user_id for p in people
    )
