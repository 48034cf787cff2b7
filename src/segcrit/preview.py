"""`segcrit preview EVENT.json`: what one event would do, computed for real and rolled back.

The event runs through the same validation, sanitising, identity, consent and flows as live
traffic, inside a transaction on the configured store that is always rolled back, so the answer
reflects the profiles segcrit already knows and nothing is kept or sent.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from segcrit.clock import SystemClock
from segcrit.config import AudienceSyncFlow, Config, LifecycleFlow, SuppressionFlow
from segcrit.criteo.constants import CONTACT_LIST_PATH
from segcrit.criteo.models import ContactlistAmendmentRequest
from segcrit.delivery.commerce_workers import DOCUMENT_VERSION
from segcrit.domain import InboxEvent, TargetKey
from segcrit.errors import UserError
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.sources.validate import MessageRules, prepare_messages
from segcrit.store import open_store, store_exists
from segcrit.store.base import AudienceDeliveryStore, ProcessingTx, Store

PREVIEW_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias", "delete"})


def _messages(text: str) -> list[Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise UserError("the event file is not valid JSON") from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("batch"), list):
        return list(data["batch"])
    return [data]


def _open_for_preview(config: Config) -> tuple[Store, tempfile.TemporaryDirectory[str] | None]:
    """The configured store, or, before it exists, a scratch one (preview creates nothing)."""
    if store_exists(config.store):
        return open_store(config.store), None
    scratch = tempfile.TemporaryDirectory(prefix="segcrit-preview-")
    return open_store(f"sqlite:///{Path(scratch.name) / 'preview.db'}"), scratch


def preview_source(config: Config) -> str:
    """The source a previewed message stands for: one that audience_sync accepts (SPEC §4.1
    `sources`), so that an Engage audience message shows what it would do when it comes from Engage."""
    flows: list[AudienceSyncFlow] = config.flows_of(AudienceSyncFlow)
    for flow in flows:
        if flow.sources:
            return flow.sources[0]
    return "preview"


@dataclass(frozen=True, slots=True)
class CriteoRequest:
    """A request the event would cause: what `segcrit preview` prints as `criteo: METHOD URL` + body."""

    method: str
    url: str
    body: dict[str, Any]


@dataclass(slots=True)
class MessagePreview:
    index: int
    type: str | None
    event: str | None
    skipped: str | None = None
    profile_id: int | None = None
    changes: list[tuple[str, bool, str]] = field(default_factory=list)  # (flow, enter?, audience)
    notes: list[str] = field(default_factory=list)
    products_changed: int = 0
    events_queued: int = 0  # Events API events
    requests: list[CriteoRequest] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"message {self.index}: {self.type} {self.event or ''}".rstrip()]
        if self.skipped:
            return [*lines, f"  skipped: {self.skipped}"]
        lines.append(f"  profile: #{self.profile_id}")
        if not self.changes and not self.events_queued and not self.products_changed:
            lines.append("  flows: none matched (no audience change)")
        lines += [f"  {flow}: {'enter' if member else 'exit'} {audience}" for flow, member, audience in self.changes]
        lines += [f"  adjusted: {note}" for note in self.notes]
        if self.products_changed:
            lines.append(f"  catalog: {self.products_changed} product(s) changed, queued for the next batch")
        if not any(r.method == "PATCH" for r in self.requests):
            lines.append("  criteo: nothing to send")
        for request in self.requests:
            lines += [f"  criteo: {request.method} {request.url}", "    " + orjson.dumps(request.body).decode()]
        return lines


@dataclass(slots=True)
class Preview:
    """What the messages would do; `lines()` is what `segcrit preview` prints."""

    messages: list[MessagePreview] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"index", "reason"}

    def lines(self) -> list[str]:
        out = [f"rejected message {r['index']}: {r['reason']}" for r in self.rejected]
        for message in self.messages:
            out += message.lines()
        return out


def preview_event(config: Config, text: str) -> str:
    store, scratch = _open_for_preview(config)
    try:
        return "\n".join(preview_messages(config, store, _messages(text)).lines())
    finally:
        store.close()
        if scratch is not None:
            scratch.cleanup()


def preview_messages(config: Config, store: Store, items: list[Any], now: float | None = None) -> Preview:
    """Validate and sanitise `items` as ingest would, then preview the ones it would accept."""
    now = time.time() if now is None else now
    rules = MessageRules(PREVIEW_TYPES, config.server.max_message_bytes, phone_region=config.identity.phone_region)
    prepared = prepare_messages(items, rules, received_at=now)
    preview = preview_prepared(config, store, prepared.messages, now)
    preview.rejected = prepared.rejected
    return preview


def preview_prepared(config: Config, store: Store, messages: list[dict[str, Any]], now: float) -> Preview:
    """Preview messages as ingest stored them, in one transaction that is rolled back."""
    preview = Preview()
    processor = Processor(store, config, SystemClock(), Metrics())
    source = preview_source(config)
    with store.dry_run() as tx:
        for index, message in enumerate(messages):
            outcome = processor.process(tx, InboxEvent(0, source, message, now), now)
            event = message.get("event")
            entry = MessagePreview(index, message.get("type"), event if isinstance(event, str) else None)
            preview.messages.append(entry)
            if outcome.skipped:
                entry.skipped = outcome.skipped
                continue
            entry.profile_id = outcome.profile_id
            entry.changes = [(_flow_of(config, a), member, a) for a, member in outcome.memberships]
            entry.notes = list(outcome.notes)
            entry.products_changed = outcome.products_changed
            entry.events_queued = len(outcome.criteo_events)
            pending = tx.pending_of_profile(outcome.profile_id) if outcome.profile_id else []
            entry.requests = _requests(config, store, pending)
            if outcome.criteo_events:
                entry.requests += _events(config, tx, outcome.profile_id)
    return preview


def _requests(
    config: Config, store: AudienceDeliveryStore, pending: list[tuple[TargetKey, bool]]
) -> list[CriteoRequest]:
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for key, add in pending:
        groups[(key.audience, "add" if add else "remove", key.id_type)].append(key.id_value)
    requests = []
    for (audience, operation, id_type), values in sorted(groups.items()):
        record = store.audience(audience)
        configured = config.audiences.get(audience)
        segment = (configured.segment_id if configured else None) or (record.segment_id if record else None)
        path = CONTACT_LIST_PATH.format(
            version=config.criteo.api_version, segment_id=segment or "{segment of " + audience + "}"
        )
        gum = config.criteo.gum_caller_id if id_type == "gum" else None
        body = ContactlistAmendmentRequest.build(operation, id_type, sorted(values), gum_caller_id=gum)  # type: ignore[arg-type]
        requests.append(CriteoRequest("PATCH", f"{config.criteo.api_url}{path}", body.to_json()))
    return requests


def _flow_of(config: Config, audience: str) -> str:
    for flow in config.flows:
        if isinstance(flow, SuppressionFlow) and flow.add_to == audience:
            return "suppression"
        if isinstance(flow, LifecycleFlow) and audience in flow.stages.values():
            return "lifecycle"
    return "audience_sync"


def _events(config: Config, tx: ProcessingTx, profile_id: int | None) -> list[CriteoRequest]:
    """The Events API document the queued events of this person would go out in."""
    queued = [e for e in tx.queued_events(str(profile_id))] if profile_id is not None else []
    if not queued:
        return []
    document = {**queued[-1][0], "version": DOCUMENT_VERSION, "events": [body for _, body in queued]}
    return [CriteoRequest("POST", config.criteo.events_url, document)]
