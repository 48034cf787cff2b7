"""`segcrit demo`: the embedded default, end to end on this machine.

Starts the Criteo emulator and a segcrit server on SQLite in a temporary folder (both on loopback),
sends a small shop's traffic through the real HTTP path — Segment's own Python library for the
Tracking API, signed JSON arrays for the Engage webhook — waits until Criteo acknowledged every
change, and prints what the emulator holds. Needs no account and no network.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from segcrit.app import create_app
from segcrit.config import Config, parse_config
from segcrit.criteo.emulator import EmulatorState
from segcrit.criteo.emulator.server import running_app, running_emulator
from segcrit.errors import SegcritError
from segcrit.store.sqlite import SqliteStore

WRITE_KEY = "demo-write-key"
WEBHOOK_SECRET = "demo-webhook-secret"
SETTLE_TIMEOUT_SECS = 60.0

CONFIG = """\
store: sqlite:///{db}
server: {{host: 127.0.0.1, port: 0}}
sources:
  - {{name: web, type: tracking_api, write_key: {write_key}}}
  - {{name: engage, type: webhook, shared_secret: {secret}}}
criteo:
  client_id: demo-client
  client_secret: demo-secret
  advertiser_id: "12345"
  api_url: {api_url}
identity:
  send: [email, madid]
flows:
  - type: audience_sync
delivery:
  max_wait_secs: 1
"""


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
        with running_emulator(state) as api_url:
            config = parse_config(
                CONFIG.format(db=folder / "segcrit.db", write_key=WRITE_KEY, secret=WEBHOOK_SECRET, api_url=api_url),
                env={},
            )
            (folder / "segcrit.yaml").write_text(
                CONFIG.format(db="segcrit.db", write_key=WRITE_KEY, secret=WEBHOOK_SECRET, api_url=api_url)
            )
            store = SqliteStore(config.store.removeprefix("sqlite:///"))
            try:
                with _serving(config, store) as base_url:
                    console.print(f"segcrit on {base_url}, Criteo emulator on {api_url}, data in {folder}")
                    sent = send_traffic(base_url)
                    console.print(f"sent {sent} messages; waiting for delivery to Criteo ...")
                    _settle(store)
                summary = state.snapshot(include_members=True)
                render_summary(summary, store, console)
            finally:
                store.close()
        return summary
    finally:
        if keep:
            console.print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _serving(config: Config, store: SqliteStore) -> Iterator[str]:
    with running_app(create_app(config, store), lifespan="on") as url:
        yield url


def _settle(store: SqliteStore) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECS
    while time.monotonic() < deadline:
        if store.backlog() == 0 and store.pending_count() == 0:
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
    # One shopper withdraws advertising consent in the cookie banner.
    client.track(
        SHOPPERS[1].user_id,
        "Segment Consent Preference Updated",
        context={"consent": {"categoryPreferences": {"Advertising": False, "Analytics": True}}},
    )
    count += 2
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


def render_summary(snapshot: dict[str, Any], store: SqliteStore, console: Console) -> None:
    table = Table(title="What Criteo received: contact-list audiences", title_justify="left")
    for column in ("segment", "id", "identifiers", "emails", "mobile ids"):
        table.add_column(column, justify="left" if column in ("segment", "id") else "right")
    for segment in snapshot.get("segments", []):
        members = segment.get("members") or {}
        total = sum(len(v) for v in members.values()) if isinstance(members, dict) else len(members)
        emails = len(members.get("email", [])) if isinstance(members, dict) else "-"
        madids = len(members.get("madid", [])) if isinstance(members, dict) else "-"
        table.add_row(segment.get("name", "?"), str(segment.get("id")), str(total), str(emails), str(madids))
    console.print(table)
    calls = snapshot.get("call_counts") or snapshot.get("calls") or {}
    console.print("Criteo calls by endpoint: " + ", ".join(f"{k}={v}" for k, v in sorted(calls.items())))
    letters = store.dead_letter_count()
    console.print(f"dead letters: {letters}; pending changes: {store.pending_count()}")
    console.print(
        "Notes: user-001 entered and left cart_abandoners; user-002 withdrew consent; user-010 was "
        "deleted; user-004/008/.. were also seen in the app, so their mobile ids joined their audiences."
    )
