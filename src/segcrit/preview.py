"""`segcrit preview EVENT.json`: what one event would do, computed for real and rolled back.

The event runs through the same validation, sanitising, identity, consent and flows as live
traffic, inside a transaction on the configured store that is always rolled back, so the answer
reflects the profiles segcrit already knows and nothing is kept or sent.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
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


def preview_event(config: Config, text: str) -> str:
    now = time.time()
    prepared = prepare_messages(
        _messages(text), MessageRules(PREVIEW_TYPES, config.server.max_message_bytes), received_at=now
    )
    lines: list[str] = [f"rejected message {r['index']}: {r['reason']}" for r in prepared.rejected]
    store, scratch = _open_for_preview(config)
    try:
        processor = Processor(store, config, SystemClock(), Metrics())
        source = preview_source(config)
        with store.dry_run() as tx:
            for index, message in enumerate(prepared.messages):
                outcome = processor.process(tx, InboxEvent(0, source, message, now), now)
                lines.append(f"message {index}: {message.get('type')} {message.get('event') or ''}".rstrip())
                if outcome.skipped:
                    lines.append(f"  skipped: {outcome.skipped}")
                    continue
                lines.append(f"  profile: #{outcome.profile_id}")
                if not outcome.memberships and not outcome.criteo_events and not outcome.products_changed:
                    lines.append("  flows: none matched (no audience change)")
                for audience, member in outcome.memberships:
                    lines.append(f"  {_flow_of(config, audience)}: {'enter' if member else 'exit'} {audience}")
                for note in outcome.notes:
                    lines.append(f"  adjusted: {note}")
                if outcome.products_changed:
                    lines.append(f"  catalog: {outcome.products_changed} product(s) changed, queued for the next batch")
                pending = tx.pending_of_profile(outcome.profile_id) if outcome.profile_id else []
                lines.extend(_requests(config, store, pending))
                lines.extend(_events(config, tx, outcome.profile_id) if outcome.criteo_events else [])
    finally:
        store.close()
        if scratch is not None:
            scratch.cleanup()
    return "\n".join(lines)


def _requests(config: Config, store: AudienceDeliveryStore, pending: list[tuple[TargetKey, bool]]) -> list[str]:
    if not pending:
        return ["  criteo: nothing to send"]
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for key, add in pending:
        groups[(key.audience, "add" if add else "remove", key.id_type)].append(key.id_value)
    lines = []
    for (audience, operation, id_type), values in sorted(groups.items()):
        record = store.audience(audience)
        configured = config.audiences.get(audience)
        segment = (configured.segment_id if configured else None) or (record.segment_id if record else None)
        path = CONTACT_LIST_PATH.format(
            version=config.criteo.api_version, segment_id=segment or "{segment of " + audience + "}"
        )
        gum = config.criteo.gum_caller_id if id_type == "gum" else None
        body = ContactlistAmendmentRequest.build(operation, id_type, sorted(values), gum_caller_id=gum)  # type: ignore[arg-type]
        lines.append(f"  criteo: PATCH {config.criteo.api_url}{path}")
        lines.append("    " + orjson.dumps(body.to_json()).decode())
    return lines


def _flow_of(config: Config, audience: str) -> str:
    for flow in config.flows:
        if isinstance(flow, SuppressionFlow) and flow.add_to == audience:
            return "suppression"
        if isinstance(flow, LifecycleFlow) and audience in flow.stages.values():
            return "lifecycle"
    return "audience_sync"


def _events(config: Config, tx: ProcessingTx, profile_id: int | None) -> list[str]:
    """The Events API document the queued events of this person would go out in."""
    queued = [e for e in tx.queued_events(str(profile_id))] if profile_id is not None else []
    if not queued:
        return []
    document = {**queued[-1][0], "version": DOCUMENT_VERSION, "events": [body for _, body in queued]}
    return [f"  criteo: POST {config.criteo.events_url}", "    " + orjson.dumps(document).decode()]
