"""`segcrit demo`: the embedded default, end to end on this machine.

Starts the Criteo emulator (which also plays Segment's Profile API) and a segcrit server on SQLite
in a temporary folder (both on loopback), with a small CRM table beside it for enrichment, sends a
small shop's traffic through the real HTTP path — Segment's own Python library for the Tracking
API, signed JSON arrays for the Engage webhook — waits until Criteo acknowledged every change, and
prints what the emulator holds. Needs no account and no network.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from segcrit.app import create_app
from segcrit.config import Config, LookalikeSeedFlow, parse_config
from segcrit.emulator import EmulatorState
from segcrit.emulator.profiles import ProfileApiState
from segcrit.emulator.server import running_app, running_emulator
from segcrit.emulator.settings import criteo_section, sources_section
from segcrit.errors import SegcritError
from segcrit.identity.normalize import email_hashes, phone_hashes
from segcrit.status import enrichment_lines, flow_lines
from segcrit.store import open_store
from segcrit.store.base import Store

WRITE_KEY = "demo-write-key"
WEBHOOK_SECRET = "demo-webhook-secret"
PROFILES_SPACE = "spa_demo"
PROFILES_TOKEN = "demo-profiles-token"
SETTLE_TIMEOUT_SECS = 60.0

CONFIG = """\
store: sqlite:///{db}
server: {{host: 127.0.0.1, port: 0}}
{sources}{criteo}identity:
  send: [email, madid, phoneNumber]
audiences:
  cart_abandoners: {{}}
flows:
  - type: audience_sync
  - type: conversions
    events: [Order Completed]
  - type: product_signals
  - type: catalog
    merchant_id: "6789"
    max_wait_secs: 1
  - type: suppression
    on: [Order Completed]
    remove_from: [cart_abandoners]
    add_to: recent_buyers
    for_days: 30
  - type: lifecycle
    stages:
      Trial Started: trialists
      Subscription Started: subscribers
      Subscription Lapsed: lapsed
  - type: lookalike_seed
    audience: high_value
    when: "order_count >= 2 or revenue_total >= 500 or trait('lifetime_value') >= 1000"
    every_minutes: 0.05
    lookalike: {{name: High value lookalike, target_size: 1000000}}
delivery:
  max_wait_secs: 1
enrichment:
  - name: crm                     # the shop's customer table (SQLite here; any SQLAlchemy URL)
    type: sql
    url: sqlite:///{crm}
    query: SELECT customer_id AS user_id, email, phone, ad_consent FROM customers WHERE customer_id IN :keys
    columns: {{email: email, phone: phone, consent: ad_consent}}
  - name: segment                 # Segment's Profile API (the emulator plays it)
    type: segment_profiles
    space_id: {space}
    access_token: {token}
    url: {api_url}
    traits: [lifetime_value]
"""

# The CRM: two people Engage sends with a userId only, and a phone for a shopper segcrit knows.
CRM_ROWS = [
    ("user-101", "maria.crm@example.com", "+33 6 12 34 56 78", 1),
    ("user-102", "tom.crm@example.com", "+44 7911 123456", 0),  # said no to advertising in the CRM
    ("user-003", "shopper3@example.com", "+1 415 555 2671", 1),
]
# Segment's Profile API: a lifetime value Engage computed, which puts user-020 in the cohort.
PROFILES_SEED = {
    "spaces": {
        PROFILES_SPACE: {
            "access_token": PROFILES_TOKEN,
            "profiles": [
                {
                    "external_ids": [
                        {"type": "user_id", "id": "user-020"},
                        {"type": "email", "id": "shopper20@example.com"},
                    ],
                    "traits": {"lifetime_value": 1500},
                },
                {"external_ids": [{"type": "user_id", "id": "user-101"}], "traits": {"lifetime_value": 80}},
            ],
        }
    }
}
USER_ID_ONLY = ("user-101", "user-102")  # enter an audience with nothing but their userId"""


@dataclass(frozen=True)
class Shopper:
    user_id: str
    email: str
    device: str | None = None  # a mobile advertising id, for people also seen in the app


SHOPPERS = [
    Shopper(
        f"user-{i:03d}",
        f"shopper{i}@example.com",
        f"6D92078A-8246-4BA4-AE5B-76104861E7{i:02d}" if i % 4 == 0 else None,
    )
    for i in range(1, 25)
]


def run_demo(*, keep: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    folder = Path(tempfile.mkdtemp(prefix="segcrit-demo-"))
    try:
        state = EmulatorState()
        profiles = ProfileApiState(PROFILES_SEED)
        _write_crm(folder / "crm.db")
        with running_emulator(state, profiles=profiles) as api_url:
            names = {
                "sources": sources_section(WRITE_KEY, WEBHOOK_SECRET),
                "criteo": criteo_section(api_url, caller_id="demo-caller"),
                "api_url": api_url,
            }
            names |= {"space": PROFILES_SPACE, "token": PROFILES_TOKEN}
            config = parse_config(CONFIG.format(db=folder / "segcrit.db", crm=folder / "crm.db", **names), env={})
            (folder / "segcrit.yaml").write_text(CONFIG.format(db="segcrit.db", crm="crm.db", **names))
            store = open_store(config.store)
            try:
                with _serving(config, store) as base_url:
                    console.print(f"segcrit on {base_url}, Criteo emulator on {api_url}, data in {folder}")
                    sent = send_traffic(base_url)
                    console.print(f"sent {sent} messages; waiting for delivery to Criteo ...")
                    _settle(store, config, time.time())
                summary = state.snapshot(include_members=True)
                render_summary(summary, store, config, console)
                render_enrichment(summary, store, config, profiles, console)
            finally:
                store.close()
        return summary
    finally:
        if keep:
            console.print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _serving(config: Config, store: Store) -> Iterator[str]:
    with running_app(create_app(config, store), lifespan="on") as url:
        yield url


def _write_crm(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as crm, crm:
        crm.execute("CREATE TABLE customers (customer_id TEXT PRIMARY KEY, email TEXT, phone TEXT, ad_consent INTEGER)")
        crm.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", CRM_ROWS)


def _lookups_idle(store: Store, config: Config) -> bool:
    """Everyone looked up once (refreshes go on: the cohort reads a Profile API trait every 3 s)."""
    return not any(store.unanswered_lookup_count(lookup.name) for lookup in config.enrichment)


def _settled(store: Store, config: Config, traffic_done: float) -> bool:
    """Everything sent and acknowledged, and the cohort recomputed after the traffic (and after
    the lookups' answers were processed)."""
    if store.backlog() or store.pending_count() or store.pending_event_count() or not _lookups_idle(store, config):
        return False
    catalog = store.catalog_stats()
    if catalog.pending or catalog.in_flight:
        return False
    for flow in config.flows_of(LookalikeSeedFlow):
        job = store.job(f"cohort:{flow.audience}")
        if job is None or job.last_run_at is None or job.last_run_at < traffic_done:
            return False
    return not store.lookalikes_to_create()


def _settle(store: Store, config: Config, traffic_done: float) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECS
    enriched: float | None = None  # when every answer had been processed: the cohort must run after
    while time.monotonic() < deadline:
        if enriched is None and store.backlog() == 0 and _lookups_idle(store, config):
            enriched = max(traffic_done, time.time())
        if enriched is not None and _settled(store, config, enriched):
            return
        time.sleep(0.1)  # a wait for a real server in real time, not test synchronisation
    raise SegcritError(f"delivery did not settle within {SETTLE_TIMEOUT_SECS:.0f} s")


# ---------------------------------------------------------------------------------------- traffic


def send_traffic(base_url: str) -> int:
    """A shop's afternoon: browsing and sign-ins over the Tracking API, audiences from Engage."""
    from segment.analytics.client import Client

    errors: list[Any] = []
    client = Client(WRITE_KEY, host=base_url, gzip=True, on_error=lambda e, _b: errors.append(e), max_retries=2)
    count = 0
    for shopper in SHOPPERS:
        client.identify(shopper.user_id, {"email": shopper.email, "plan": "free"})
        client.page(shopper.user_id, name="Home", properties={"path": "/"})
        count += 2
        if shopper.device:  # the same person in the mobile app: a second device, same account
            client.identify(
                shopper.user_id,
                {"email": shopper.email},
                context={"device": {"advertisingId": shopper.device, "adTrackingEnabled": True}},
            )
            count += 1
    # Engage audiences sent as track events through the Tracking API (a Segment "Send Track").
    for shopper in SHOPPERS[:12]:
        client.track(
            shopper.user_id,
            "Audience Entered",
            _audience_props("cart_abandoners", True),
            context=_personas("cart_abandoners"),
        )
        count += 1
    client.track(
        SHOPPERS[0].user_id,
        "Audience Exited",
        _audience_props("cart_abandoners", False),
        context=_personas("cart_abandoners"),
    )
    # Engage puts two people in the audience that segcrit knows by nothing but their userId; the
    # CRM lookup supplies the rest.
    for user_id in USER_ID_ONLY:
        client.track(
            user_id, "Audience Entered", _audience_props("cart_abandoners", True), context=_personas("cart_abandoners")
        )
        count += 1
    # One shopper withdraws advertising consent in the cookie banner.
    client.track(
        SHOPPERS[1].user_id,
        "Segment Consent Preference Updated",
        context={"consent": {"categoryPreferences": {"Advertising": False, "Analytics": True}}},
    )
    count += 2
    count += _shop(client)
    count += _lifecycle(client)
    client.flush()
    client.shutdown()
    if errors:
        raise SegcritError(f"the demo traffic was refused: {errors[0]}")

    # Engage "Send Identify" through the Webhooks (Actions) destination: signed JSON arrays.
    high_value = [_engage_identify(s, "high_value_customers", True) for s in SHOPPERS[8:20]]
    high_value.append(_engage_identify(SHOPPERS[19], "high_value_customers", False))
    _post_webhook(base_url, high_value)
    _post_webhook(base_url, [{"type": "delete", "userId": SHOPPERS[9].user_id, "messageId": "demo-delete-1"}])
    return count + len(high_value) + 1


CATALOG = [
    {
        "product_id": f"SKU-{n}",
        "sku": f"SKU-{n}",
        "name": name,
        "price": price,
        "currency": "EUR",
        "brand": "Acme",
        "category": "Shoes",
        "url": f"https://shop.example/p/{n}",
        "image_url": f"https://shop.example/img/{n}.jpg",
    }
    for n, (name, price) in enumerate(
        [
            ("Trail runner", 120.0),
            ("City sneaker", 89.9),
            ("Rain boot", 65.0),
            ("Sandal", 39.5),
            ("Hiking boot", 210.0),
        ],
        start=1,
    )
]


def _shop(client: Any) -> int:
    """Browsing to buying for shoppers 3-8; shopper 3 orders twice and 5 spends 600 (high value)."""
    count = 0
    for index, shopper in enumerate(SHOPPERS[2:8]):
        product = CATALOG[index % len(CATALOG)]
        context = {
            "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
            "ip": f"203.0.113.{index + 10}",
            "page": {"url": f"https://shop.example/p/{index}"},
        }
        client.track(shopper.user_id, "Products Searched", {"query": "boots", "products": CATALOG[:4]}, context=context)
        client.track(shopper.user_id, "Product Viewed", product, context=context)
        client.track(shopper.user_id, "Product Added", {**product, "quantity": 1}, context=context)
        client.track(shopper.user_id, "Cart Viewed", {"products": [product]}, context=context)
        count += 4
        if index in (0, 2, 4):
            orders = [(f"ORD-{index}-1", product["price"])]
            if index == 0:
                orders.append((f"ORD-{index}-2", product["price"]))
            if index == 2:
                orders = [(f"ORD-{index}-1", 600.0)]
            for order_id, revenue in orders:
                client.track(shopper.user_id, "Checkout Started", {"products": [product]}, context=context)
                properties = {
                    "order_id": order_id,
                    "revenue": revenue,
                    "currency": "EUR",
                    "products": [{**product, "quantity": 1}],
                }
                client.track(shopper.user_id, "Order Completed", properties, context=context)
                count += 2
            # Segment delivered one order twice (a retry with a new messageId): one conversion all the same.
            client.track(shopper.user_id, "Order Completed", properties, context=context)
            count += 1
    return count


def _lifecycle(client: Any) -> int:
    """Subscriptions: a trial, a conversion, and a lapse that arrives before an older start."""
    now = time.time()

    def ago(minutes: float) -> datetime:
        return datetime.fromtimestamp(now - minutes * 60, UTC)

    trial, subscriber, lapsed = SHOPPERS[12:15]
    client.track(trial.user_id, "Trial Started", timestamp=ago(30))
    client.track(subscriber.user_id, "Trial Started", timestamp=ago(30))
    client.track(subscriber.user_id, "Subscription Started", timestamp=ago(10))
    client.track(lapsed.user_id, "Subscription Lapsed", timestamp=ago(5))  # the latest, arriving first
    client.track(lapsed.user_id, "Subscription Started", timestamp=ago(20))
    return 5


def _audience_props(key: str, member: bool) -> dict[str, Any]:
    return {"audience_key": key, key: member}


def _personas(key: str) -> dict[str, Any]:
    return {"personas": {"computation_class": "audience", "computation_key": key, "space_id": "spa_demo"}}


def _engage_identify(shopper: Shopper, key: str, member: bool) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": shopper.user_id,
        "messageId": f"personas_{key}_{shopper.user_id}_{member}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "traits": {"email": shopper.email, key: member},
        "context": _personas(key),
    }


def _post_webhook(base_url: str, messages: list[dict[str, Any]]) -> None:
    """Sign like Segment: HMAC-SHA1 of the first element's JSON text for an array."""
    elements = [orjson.dumps(m) for m in messages]
    body = b"[" + b",".join(elements) + b"]"
    signature = hmac.new(WEBHOOK_SECRET.encode(), elements[0], hashlib.sha1).hexdigest()
    response = httpx.post(
        f"{base_url}/webhooks/engage",
        content=body,
        headers={"Content-Type": "application/json", "X-Signature": signature},
        timeout=10,
    )
    if response.status_code != 200:
        raise SegcritError(f"the demo webhook was refused: {response.status_code} {response.text[:200]}")


# ---------------------------------------------------------------------------------------- summary


def render_summary(snapshot: dict[str, Any], store: Store, config: Config, console: Console) -> None:
    table = Table(title="What Criteo received: audience segments", title_justify="left")
    for column in ("segment", "id", "type", "identifiers", "emails", "phones", "mobile ids"):
        table.add_column(column, justify="left" if column in ("segment", "id", "type") else "right")
    for segment in snapshot.get("segments", []):
        members = segment.get("members") or {}
        total = sum(len(v) for v in members.values())
        lookalike = segment.get("lookalike") or {}
        kind = segment.get("type", "?")
        if kind == "Lookalike":
            kind = f"Lookalike of {lookalike.get('seedSegmentId')}"
        table.add_row(
            segment.get("name", "?"),
            str(segment.get("id")),
            kind,
            str(total),
            str(len(members.get("email", []))),
            str(len(members.get("phoneNumber", []))),
            str(len(members.get("madid", []))),
        )
    console.print(table)

    events = snapshot.get("eventDocuments") or []
    by_name: dict[str, int] = {}
    orders: list[str] = []
    for document in events:
        for event in document.get("events", []):
            by_name[event["event"]] = by_name.get(event["event"], 0) + 1
            if event["event"] == "trackTransaction":
                orders.append(str(event.get("id")))
    per_doc = sum(len(d.get("events", [])) for d in events) / len(events) if events else 0.0
    console.print(
        f"Events API: {len(events)} document(s), {per_doc:.1f} event(s) per document; "
        + ", ".join(f"{name} {n}" for name, n in sorted(by_name.items()))
    )
    console.print(f"conversions (trackTransaction, once per order): {', '.join(sorted(orders)) or 'none'}")
    merchants = snapshot.get("catalog") or {}
    for merchant, info in sorted(merchants.items()):
        products = info.get("items") or info.get("products") or {}
        names = sorted(products) if isinstance(products, dict) else products
        console.print(f"catalog {merchant}: {len(names) if isinstance(names, list) else names} product(s)")
    for line in flow_lines(store, config, time.time()):
        console.print(line, markup=False)
    calls = snapshot.get("calls") or {}
    console.print("Criteo calls by endpoint: " + ", ".join(f"{k}={v}" for k, v in sorted(calls.items())))
    console.print(f"dead letters: {store.dead_letter_count()}; pending changes: {store.pending_count()}")
    console.print(
        "Notes: user-001 entered and left cart_abandoners; user-002 withdrew consent; user-010 was deleted; "
        "user-004/008/.. were also seen in the app, so their mobile ids joined their audiences; buyers "
        "left cart_abandoners for recent_buyers (suppression); user-003 and user-005 form the high-value "
        "seed of the lookalike; user-015's lapse arrived before an older start and still wins."
    )


def render_enrichment(
    snapshot: dict[str, Any], store: Store, config: Config, profiles: ProfileApiState, console: Console
) -> None:
    """What the lookups added, told through the people they concern."""
    for line in enrichment_lines(store, config, time.time()):
        console.print(line, markup=False)
    times = profiles.request_times(PROFILES_SPACE)
    busiest = max((sum(1 for t in times if start <= t < start + 1) for start in times), default=0)
    console.print(
        f"Profile API: {len(times)} request(s), at most {busiest} in any second (limit 100/s); the cohort reads "
        "lifetime_value, so its candidates are refreshed every every_minutes (3 s here), spread over the interval"
    )
    segments = {s["name"]: s.get("members") or {} for s in snapshot.get("segments", [])}
    abandoners = segments.get("cart_abandoners", {})
    maria_email, _ = email_hashes("maria.crm@example.com")
    maria_phone, _ = phone_hashes("+33612345678")
    held = maria_email in abandoners.get("email", []) and maria_phone in abandoners.get("phoneNumber", [])
    tom_email, _ = email_hashes("tom.crm@example.com")
    console.print(
        f"Enrichment: user-101 arrived with a userId only and is in cart_abandoners by the CRM's email hash "
        f"{maria_email[:12]}… and phone hash {maria_phone[:12]}…: {'yes' if held else 'NO'}; user-102's CRM "
        f"consent is false, so Criteo holds nothing of theirs: "
        f"{'yes' if tom_email not in abandoners.get('email', []) else 'NO'}; user-020 is in the high_value "
        f"cohort by lifetime_value 1500 from the Profile API: "
        f"{'yes' if 'high_value' in _audiences_of(store, 'user-020') else 'NO'}"
    )


def _audiences_of(store: Store, user_id: str) -> frozenset[str]:
    with store.dry_run() as tx:
        profile_id = tx.find_profiles([("user_id", user_id)]).get(("user_id", user_id))
    facts = store.profile_facts(profile_id) if profile_id is not None else None
    return facts.audiences if facts is not None else frozenset()
