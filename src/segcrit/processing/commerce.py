"""The commerce step of processing: conversions, product signals and catalog for one event.

Decisions come from the pure mappings in `segcrit.flows.commerce` and `segcrit.flows.catalog`;
this module applies them inside the processor's transaction: it records orders (once per order
id), queues Events API events for delivery, and keeps catalog products up to date.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from segcrit.config import CatalogFlow, CommerceMapping, Config, ConversionsFlow, ProductSignalsFlow
from segcrit.consent import consent_in_message, effective_consent
from segcrit.flows.catalog import merge_fields, missing_required, products_in
from segcrit.flows.commerce import CriteoEvent, PersonIds, conversion_event, document_header, signal_event
from segcrit.identity.normalize import sha256_md5
from segcrit.store.base import ProcessingTx

DEFAULT_ORDER_EVENTS = frozenset({"Order Completed"})


@dataclass(slots=True)
class CommerceOutcome:
    queued: list[dict[str, Any]] = field(default_factory=list)  # Events API events queued
    skipped: list[str] = field(default_factory=list)  # why a matching event was not sent
    notes: list[str] = field(default_factory=list)  # what was adjusted (bad prices, no currency...)
    products_changed: int = 0


class CommerceStep:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.conversions: list[ConversionsFlow] = config.flows_of(ConversionsFlow)
        self.signals: list[ProductSignalsFlow] = config.flows_of(ProductSignalsFlow)
        self.catalogs: list[CatalogFlow] = config.flows_of(CatalogFlow)
        self.partner_id = config.criteo.partner_id or config.criteo.advertiser_id
        self.order_events = frozenset(e for f in self.conversions for e in f.events) or DEFAULT_ORDER_EVENTS
        self.order_mapping = self.conversions[0].mapping if self.conversions else CommerceMapping()

    @property
    def active(self) -> bool:
        return True  # orders always count for profile facts

    def apply(
        self, tx: ProcessingTx, message: Mapping[str, Any], profile_id: int, ts: float, now: float
    ) -> CommerceOutcome:
        outcome = CommerceOutcome()
        if consent_in_message(message, self.config.consent.category) is False:
            self._withdraw(tx, profile_id)
        if message.get("type") not in ("track", "page", "screen"):
            return outcome
        events: list[CriteoEvent] = []
        if message.get("type") == "track" and message.get("event") in self.order_events:
            # Every order counts for profile facts (order_count, revenue_total), once per order
            # id, whether or not a conversions flow forwards it.
            order = conversion_event(message, self.order_mapping)
            assert order.order_id is not None
            tx.record_order(order.order_id, profile_id, ts, order.value, order.currency)
            if self.conversions:
                outcome.notes += order.notes
                events.append(order)
            elif "revenue_not_a_number" in order.notes:
                outcome.notes.append("revenue_not_a_number")  # profile facts skipped it
        for signal_flow in self.signals:
            signal = signal_event(message, signal_flow)
            if signal is None:
                continue
            if "no_product_id" in signal.notes:
                outcome.skipped.append("no_product_id")
                continue
            outcome.notes += signal.notes
            events.append(signal)
        for catalog in self.catalogs:
            if message.get("type") == "track" and message.get("event") in catalog.events:
                outcome.products_changed += self._catalog(tx, catalog, message, now)
        if events:
            self._queue(tx, message, profile_id, events, now, outcome)
        return outcome

    def _withdraw(self, tx: ProcessingTx, profile_id: int) -> None:
        """Consent withdrawn: what still waits for delivery is dropped, dead letters included, since
        nothing about the person may be sent until they consent again (SPEC §1). An older refusal
        that lost to a newer consent (latest timestamp wins) drops nothing."""
        profile = tx.load_profile(profile_id)
        if profile is not None and not effective_consent(profile.consent, self.config.consent):
            tx.drop_events_of(profile_id)

    def _queue(
        self,
        tx: ProcessingTx,
        message: Mapping[str, Any],
        profile_id: int,
        events: list[CriteoEvent],
        now: float,
        outcome: CommerceOutcome,
    ) -> None:
        profile = tx.load_profile(profile_id)
        if profile is None or not effective_consent(profile.consent, self.config.consent):
            outcome.skipped += ["no_consent"] * len(events)
            return
        emails = [(i.value, i.extra) for i in profile.identifiers if i.kind == "email"]
        gums = [i.value for i in profile.identifiers if i.kind == "gum"]
        user_id = message.get("userId") or next((i.value for i in profile.identifiers if i.kind == "user_id"), None)
        ids = PersonIds(
            retailer_visitor_id=str(user_id) if user_id else _text(message.get("anonymousId")),
            gum_id=gums[0] if gums else None,
            email_sha256=emails[0][0] if emails else None,
            email_md5=emails[0][1] if emails else None,
        )
        if not ids.usable:
            outcome.skipped += ["no_identifier"] * len(events)
            return
        header = document_header(
            message,
            ids,
            self.partner_id,
            self.config.criteo.caller_id,
            sha256_md5(ids.email_md5) if ids.email_md5 else None,
        )
        for event in events:
            if event.order_id is not None and not tx.mark_order_sent(event.order_id, now):
                outcome.skipped.append("duplicate_order")  # the same order delivered again
                continue
            tx.enqueue_event(str(profile_id), profile_id, header, event.body, now)
            outcome.queued.append(event.body)

    def _catalog(self, tx: ProcessingTx, flow: CatalogFlow, message: Mapping[str, Any], now: float) -> int:
        changed = 0
        for product in products_in(message):
            merged = merge_fields(tx.product_fields(flow.merchant_id, product.product_id), product)
            missing = missing_required(merged)
            changed += tx.save_product(
                flow.merchant_id,
                merged.product_id,
                merged.fields,
                merged.fingerprint,
                ",".join(missing) if missing else None,
                now,
            )
        return changed


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and str(value) else None
