"""Shared test helpers: test people and their Segment messages, running them through the engine,
Criteo bodies, and a fake clock's rate limiting and jitter."""

from __future__ import annotations

import copy
import itertools
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from segcrit.clock import FakeClock
from segcrit.config import Config, parse_config
from segcrit.emulator.state import EmulatorState
from segcrit.identity.normalize import email_hashes, sanitize_message
from segcrit.ratelimit import SlidingWindowLimiter
from segcrit.store.sqlite import SqliteStore

_ids = itertools.count(1)

BASE_CONFIG = """
store: sqlite:///{db}
sources:
  - {{name: web, type: tracking_api, write_key: WK}}
  - {{name: engage, type: webhook, shared_secret: SECRET}}
criteo:
  client_id: demo-client
  client_secret: demo-secret
  advertiser_id: "12345"
  partner_id: "6789"
  caller_id: caller-1
  api_url: {api_url}
  events_url: {api_url}/m/event?version=s2s_v0
identity:
  send: [email, madid]
delivery:
  max_wait_secs: {max_wait}
flows:
  - type: audience_sync
"""


def make_config(
    db: str, api_url: str = "http://127.0.0.1:9", max_wait: float = 2, extra: str = "", flows: str = ""
) -> Config:
    """The test config; `flows` adds flow items (indented list entries), `extra` top-level keys."""
    text = BASE_CONFIG.format(db=db, api_url=api_url, max_wait=max_wait) + flows + extra
    return parse_config(text, env={})


# ------------------------------------------------------------------------------------- test people


def email_of(user: str) -> str:
    return f"{user}@example.com"


def email_sha(user: str) -> str:
    """The identifier Criteo holds for the person's email (sha256 of the normalised email)."""
    return email_hashes(email_of(user))[0]


def shas(*users: str) -> set[str]:
    return {email_sha(u) for u in users}


def madid_of(user: str) -> str:
    # The emulator counts only UUID-shaped mobile ids as valid, as Criteo does.
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, user))


# ------------------------------------------------------------------------------------ Segment messages


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def audience_event(
    user_id: str,
    audience: str,
    member: bool,
    ts: float,
    *,
    email: str | None = None,
    madid: str | None = None,
    consent: bool | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {"personas": {"computation_class": "audience", "computation_key": audience}}
    if email:
        context["traits"] = {"email": email}
    if madid:
        context["device"] = {"advertisingId": madid, "adTrackingEnabled": True}
    if consent is not None:
        context["consent"] = {"categoryPreferences": {"Advertising": consent}}
    return {
        "type": "track",
        "event": "Audience Entered" if member else "Audience Exited",
        "userId": user_id,
        "messageId": message_id or f"m-{next(_ids)}",
        "timestamp": iso(ts),
        "properties": {"audience_key": audience, audience: member},
        "context": context,
    }


def prepared(message: dict[str, Any], ts: float | None = None) -> dict[str, Any]:
    """What ingest stores: the sanitised message with its event time."""
    out = sanitize_message(message)
    if ts is None:
        ts = datetime.fromisoformat(str(message["timestamp"]).replace("Z", "+00:00")).timestamp()
    out["_segcrit"]["ts"] = ts
    return out


def put(store: SqliteStore, *messages: dict[str, Any], source: str = "web", received_at: float = 0.0) -> None:
    store.accept_sync(source, [prepared(m) for m in messages], received_at)


# ----------------------------------------------------------------------------------- Criteo bodies

SHA256 = "375320dd9ae7ed408002f3768e16cb5f28c861062fd50dff9a3bff62e9dce4ef"

# An Events API document: one order (trackTransaction) of a known visitor.
EVENTS_ORDER: dict[str, Any] = {
    "account": "6789",
    "site_type": "d",
    "id": {"mapping_key": "caller-abc", "email": {"sha256": SHA256}},
    "retailer_visitor_id": "u1",
    "events": [
        {
            "event": "trackTransaction",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "id": "O-1",
            "currency": "EUR",
            "item": [{"id": "P1", "price": 5.5, "quantity": 2}],
        }
    ],
}


def changed(document: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `document` with one key (dotted path, list indices as numbers) set, or removed (None)."""
    out = copy.deepcopy(dict(document))
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return out


def catalog_product(product_id: str, **fields: Any) -> dict[str, Any]:
    """A Criteo catalog Product with what the emulator requires; `fields` add or replace (None: removed)."""
    body = {
        "id": product_id,
        "title": f"Product {product_id}",
        "link": f"https://shop.example.com/p/{product_id}",
        "imageLink": f"https://shop.example.com/img/{product_id}.jpg",
        "channel": "online",
        "price": {"currency": "EUR", "value": "9.90"},
    }
    body.update(fields)
    return {key: value for key, value in body.items() if value is not None}


def members(state: EmulatorState, audience: str) -> set[str]:
    """The emails in the audience's segment; none when it was never created (nobody ever added)."""
    try:
        return state.members(audience, "email")
    except KeyError:
        return set()


# ------------------------------------------------------------------------ rate limiting and jitter


def advancing(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    """A sleep for rate limiters that moves `clock` on instead of waiting."""

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return sleep


class CountingLimiter(SlidingWindowLimiter):
    """Criteo's rate limiter on a FakeClock, counting the calls it let through and the answers it saw."""

    def __init__(self, clock: FakeClock, limit: int) -> None:
        super().__init__(limit, clock, advancing(clock))
        self.acquired = 0
        self.observed: list[tuple[int, dict[str, str]]] = []

    async def acquire(self) -> None:
        self.acquired += 1
        await super().acquire()

    async def observe(self, status: int, headers: Mapping[str, str], now: float) -> None:
        self.observed.append((status, dict(headers)))
        await super().observe(status, headers, now)


class PinnedJitter(random.Random):
    """Full jitter drawn at a fixed point of its range (0 = no wait, 1 = the cap): exact retry times."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction
