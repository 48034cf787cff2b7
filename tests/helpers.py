"""Shared test helpers: building Segment messages and running them through the engine."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from segcrit.config import Config, parse_config
from segcrit.identity.normalize import sanitize_message
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
