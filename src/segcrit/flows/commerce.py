"""Commerce events -> Criteo Events API events, pure (SPEC §5 "Events API").

`conversion_event` maps a configured conversion (default `Order Completed`, `Lead Submitted`,
`Subscription Started`) to `trackTransaction`; `signal_event` maps browsing events to `viewHome`,
`viewItem`, `viewList`, `addToCart`, `viewBasket`, `beginCheckout`; `document_header` builds the
per-person part of the Events API document from the message and the person's identifiers.

Every event carries an `id` that stays the same whenever it is sent (SPEC §7: a document whose answer
was lost is sent again with the same event ids): the order id of a `trackTransaction`, the Segment
messageId of a signal (`event_id`).

Bad input never raises: a malformed product is left out, a price sent as a string is read as a
number, a missing currency is omitted, and each such case is reported in `notes` so it is counted.
Text copied from the message into a document (`full_url`, `useragent`, `ip`, search `keywords`)
goes through `redact_text` once more: ingest has already removed raw emails and phones, and this
keeps a message stored by any other path from sending one to Criteo.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from segcrit.config import CommerceMapping, ProductSignalsFlow
from segcrit.identity.normalize import redact_text

# Segment e-commerce spec v2 event -> Criteo OneTag event (overridable per flow).
DEFAULT_SIGNALS: Mapping[str, str] = {
    "Product Viewed": "viewItem",
    "Product List Viewed": "viewList",
    "Products Searched": "viewList",
    "Product Added": "addToCart",
    "Cart Viewed": "viewBasket",
    "Checkout Started": "beginCheckout",
}
VIEW_LIST_MAX_ITEMS = 3  # Criteo's viewList takes the first three products shown
MAX_ITEMS = 200  # an order larger than this is cut, not rejected
MAX_ID_CHARS = 256
_TABLET = re.compile(r"iPad|Tablet|PlayBook|Silk|Kindle|(Android(?!.*Mobile))", re.IGNORECASE)
_MOBILE = re.compile(r"Mobi|iPhone|iPod|Android|BlackBerry|Opera Mini|IEMobile", re.IGNORECASE)


@dataclass(slots=True)
class CriteoEvent:
    """One entry of an Events API document's `events[]`, with what processing noticed."""

    body: dict[str, Any]
    order_id: str | None = None
    value: float | None = None
    currency: str | None = None
    notes: list[str] = field(default_factory=list)


def lookup(message: Mapping[str, Any], paths: str) -> Any:
    """The first present value among `a.b|c.d` dotted paths (None when none is present)."""
    for path in paths.split("|"):
        value: Any = message
        for part in path.strip().split("."):
            if not isinstance(value, Mapping) or part not in value:
                value = None
                break
            value = value[part]
        if value is not None and value != "":
            return value
    return None


def number(value: Any) -> float | None:
    """A price or amount as a float: numbers as they are, numeric strings ("12.50", "1,5") read."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            parsed = float(value.strip().replace(",", "."))
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


def text_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | str):
        text = str(value).strip()
        return text if 0 < len(text) <= MAX_ID_CHARS else None
    return None


def event_id(message: Mapping[str, Any]) -> str:
    """The id of the Criteo event made from `message`, the same at every send and every replay:
    its messageId (ingest gives every message one and dedupes by it)."""
    message_id = text_id(message.get("messageId"))
    if message_id is not None:
        return message_id
    # A message that did not come through ingest (a test, old data): a digest of it stands in.
    return hashlib.sha256(orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _quantity(value: Any) -> int | None:
    parsed = number(value)
    if parsed is None:
        return None
    return int(parsed) if parsed >= 1 else None


def event_timestamp(message: Mapping[str, Any]) -> str:
    meta = message.get("_segcrit")
    ts = meta.get("ts") if isinstance(meta, Mapping) else None
    if isinstance(ts, int | float):
        try:
            return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        except (OverflowError, ValueError, OSError):
            pass  # ingest never stores such a time; a message from elsewhere must not stop processing
    return str(message.get("timestamp") or "")


def items_of(
    message: Mapping[str, Any], mapping: CommerceMapping, notes: list[str], *, with_price: bool
) -> list[dict[str, Any]]:
    """The event's products as Criteo items; a single-product event (flat properties) is one item."""
    raw = lookup(message, mapping.items)
    if raw is None:
        properties = message.get("properties")
        raw = [properties] if isinstance(properties, Mapping) and lookup(properties, mapping.item_id) else []
    if not isinstance(raw, list):
        notes.append("products_not_a_list")
        return []
    items: list[dict[str, Any]] = []
    for product in raw[:MAX_ITEMS]:
        item_id = text_id(lookup(product, mapping.item_id)) if isinstance(product, Mapping) else None
        if item_id is None:
            notes.append("invalid_product")
            continue
        item: dict[str, Any] = {"id": item_id}
        if with_price:
            assert isinstance(product, Mapping)
            price = number(lookup(product, mapping.price))
            if price is None:
                notes.append("product_without_price")
                price = 0.0
            item["price"] = price
            item["quantity"] = _quantity(lookup(product, mapping.quantity)) or 1
        items.append(item)
    if len(raw) > MAX_ITEMS:
        notes.append("products_truncated")
    return items


def conversion_event(message: Mapping[str, Any], mapping: CommerceMapping) -> CriteoEvent:
    """`trackTransaction` for a conversion; the order id falls back to the messageId."""
    notes: list[str] = []
    order_id = text_id(lookup(message, mapping.order_id))
    if order_id is None:
        order_id = event_id(message)
        notes.append("order_id_from_message_id")
    items = items_of(message, mapping, notes, with_price=True)
    if not items:
        notes.append("order_without_items")
    body: dict[str, Any] = {"event": "trackTransaction", "timestamp": event_timestamp(message), "id": order_id}
    currency = lookup(message, mapping.currency)
    currency_code = currency.strip().upper() if isinstance(currency, str) and currency.strip() else None
    if currency_code:
        body["currency"] = currency_code[:3]
    else:
        notes.append("no_currency")
    body["item"] = items
    # revenue, else total, else value: the first alternative that is a number (a junk revenue
    # must not hide a valid total).
    present = [lookup(message, path) for path in mapping.value.split("|")]
    value = next((v for v in map(number, present) if v is not None), None)
    if value is None and any(v is not None for v in present):
        notes.append("revenue_not_a_number")
    if value is None and items:
        value = sum(i["price"] * i["quantity"] for i in items)
    return CriteoEvent(body, order_id=order_id, value=value, currency=body.get("currency"), notes=notes)


def signal_name(message: Mapping[str, Any], flow: ProductSignalsFlow) -> str | None:
    """The Criteo event a browsing message maps to, or None."""
    kind = message.get("type")
    if kind == "track":
        names = {**DEFAULT_SIGNALS, **flow.events}
        event = message.get("event")
        return names.get(event) if isinstance(event, str) else None
    if kind == "page":
        name = message.get("name")
        properties = message.get("properties") if isinstance(message.get("properties"), Mapping) else {}
        context = message.get("context") if isinstance(message.get("context"), Mapping) else {}
        page = context.get("page") if isinstance(context, Mapping) and isinstance(context.get("page"), Mapping) else {}
        path = (properties or {}).get("path") or (page or {}).get("path")
        if (isinstance(name, str) and name.strip().lower() == "home") or path in flow.home_paths:
            return "viewHome"
    return None


def signal_event(message: Mapping[str, Any], flow: ProductSignalsFlow) -> CriteoEvent | None:
    name = signal_name(message, flow)
    if name is None:
        return None
    notes: list[str] = []
    body: dict[str, Any] = {"event": name, "timestamp": event_timestamp(message), "id": event_id(message)}
    if name == "viewItem":
        items = items_of(message, flow.mapping, notes, with_price=False)[:1]
        if not items:
            return CriteoEvent(body, notes=[*notes, "no_product_id"])
        body["item"] = items
    elif name == "viewList":
        body["item"] = items_of(message, flow.mapping, notes, with_price=False)[:VIEW_LIST_MAX_ITEMS]
        query = lookup(message, "properties.query")
        if isinstance(query, str) and query.strip():
            body["keywords"] = redact_text(query.strip())[:500]
    elif name in ("addToCart", "viewBasket", "beginCheckout"):
        body["item"] = items_of(message, flow.mapping, notes, with_price=True)
        if not body["item"]:
            return CriteoEvent(body, notes=[*notes, "no_product_id"])
    return CriteoEvent(body, notes=notes)


def site_type(user_agent: str | None, device_type: str | None = None) -> str:
    """`d` desktop, `m` mobile, `t` tablet, from the user agent (Criteo's site_type)."""
    if device_type in ("tablet", "ipad"):
        return "t"
    if device_type in ("mobile", "ios", "android", "phone"):
        return "m"
    if not user_agent:
        return "d"
    if _TABLET.search(user_agent):
        return "t"
    if _MOBILE.search(user_agent):
        return "m"
    return "d"


@dataclass(frozen=True, slots=True)
class PersonIds:
    """What identifies the person to Criteo, from the whole profile (not only this event)."""

    retailer_visitor_id: str | None
    gum_id: str | None
    email_sha256: str | None
    email_md5: str | None

    @property
    def usable(self) -> bool:
        """Criteo matches people by GUM id or email; a visitor id alone matches nobody."""
        return bool(self.gum_id or self.email_sha256)


def document_header(
    message: Mapping[str, Any], ids: PersonIds, partner_id: str, caller_id: str | None, sha256_md5: str | None
) -> dict[str, Any]:
    """The per-person part of an Events API document (everything but `events`)."""
    context = message.get("context") if isinstance(message.get("context"), Mapping) else {}
    assert isinstance(context, Mapping)
    page = context.get("page") if isinstance(context.get("page"), Mapping) else {}
    device = context.get("device") if isinstance(context.get("device"), Mapping) else {}
    user_agent = context.get("userAgent") if isinstance(context.get("userAgent"), str) else None
    id_block: dict[str, Any] = {}
    if caller_id:
        id_block["mapping_key"] = caller_id
    if ids.gum_id:
        id_block["mapped_user_id"] = ids.gum_id
    if ids.email_sha256:
        email: dict[str, str] = {"sha256": ids.email_sha256}
        if ids.email_md5:
            email["md5"] = ids.email_md5
        if sha256_md5:
            email["sha256_md5"] = sha256_md5
        id_block["email"] = email
    header: dict[str, Any] = {
        "account": partner_id,
        "site_type": site_type(user_agent, (device or {}).get("type") if isinstance(device, Mapping) else None),
        "id": id_block,
    }
    if ids.retailer_visitor_id:
        header["retailer_visitor_id"] = ids.retailer_visitor_id
    ip = context.get("ip")
    if isinstance(ip, str) and ip:
        header["ip"] = redact_text(ip)[:64]
    if user_agent:
        header["useragent"] = redact_text(user_agent)[:1000]
    url = (page or {}).get("url") if isinstance(page, Mapping) else None
    url = url or lookup(message, "properties.url")
    if isinstance(url, str) and url:
        # Redacted before it is cut, so that a cut cannot leave part of an address behind.
        header["full_url"] = redact_text(url)[:2000]
    return header


def person_ids(
    message: Mapping[str, Any], emails: Sequence[tuple[str, str | None]], gum_ids: Sequence[str]
) -> PersonIds:
    user_id = text_id(message.get("userId"))
    return PersonIds(
        retailer_visitor_id=user_id or text_id(message.get("anonymousId")),
        gum_id=gum_ids[0] if gum_ids else None,
        email_sha256=emails[0][0] if emails else None,
        email_md5=emails[0][1] if emails else None,
    )
