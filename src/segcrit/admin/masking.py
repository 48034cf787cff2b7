"""Masked identifiers for every admin answer: hash prefixes, never the values themselves.

    mask("375320dd9ae7ed40...")   -> "375320dd…"    a hash keeps its first 8 hex digits
    mask("user-42")                -> "9f86d081…"    anything else: the first 8 of its sha256
    mask_tree(message)             -> a copy with every identifier field masked (see MASKED_KEYS)
    summarize_request(body)        -> what a Criteo call sent, in a few masked lines

Emails and phones are hashed at ingest already (segcrit.identity.normalize); masking also hides
their hashes, user ids, anonymous ids, device ids and IP addresses from whoever reads the screen.
Everything here is pure and bounded: a tree deeper than MAX_DEPTH is cut, a list longer than
the sample size is summarised.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

from segcrit.identity.normalize import EMAIL_ID_PREFIX, sanitize_message

PREFIX_CHARS: Final = 8
ELLIPSIS: Final = "…"
MAX_DEPTH: Final = 40
SAMPLE_IDENTIFIERS: Final = 3  # masked identifiers shown per call
MAX_ANSWER_CHARS: Final = 4_000
# Keys whose string values identify a person or a device, wherever they appear in a message, a
# Criteo request or a Criteo answer.
MASKED_KEYS: Final = frozenset(
    {
        "userId",
        "anonymousId",
        "previousId",
        "advertisingId",
        "ip",
        "criteo_gum_id",
        "identity_link",
        "sha256",
        "md5",
        "sha256_md5",
        "mapped_user_id",
        "retailer_visitor_id",
        "email",
        "phone",
        "identifiers",
        "sampleInvalidIdentifiers",
    }
)
_DEVICE_IDS: Final = ("id", "advertisingId")
_HASH = re.compile(r"[0-9a-fA-F]{32,128}")
_HASH_INSIDE = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{32,128}(?![0-9a-fA-F])")
_EMAIL_INSIDE = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}")


def mask(value: str) -> str:
    """A value's masked form: the prefix of the hash it is, or of its sha256."""
    if value.startswith(EMAIL_ID_PREFIX):
        return EMAIL_ID_PREFIX + mask(value.removeprefix(EMAIL_ID_PREFIX))
    if _HASH.fullmatch(value):
        return value[:PREFIX_CHARS].lower() + ELLIPSIS
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:PREFIX_CHARS] + ELLIPSIS


def mask_text(text: str) -> str:
    """Free text (an error message) with every hash and email inside it masked."""
    text = _HASH_INSIDE.sub(lambda found: found[0][:PREFIX_CHARS].lower() + ELLIPSIS, text)
    return _EMAIL_INSIDE.sub("[redacted]", text) if "@" in text else text


def mask_tree(value: Any, depth: int = 0, *, masked: bool = False) -> Any:
    """A copy of a JSON value with identifier fields masked (and any hash or email anywhere)."""
    if depth > MAX_DEPTH:
        return "[…]"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for raw_key, item in value.items():
            key = str(raw_key)
            if key == "device" and isinstance(item, Mapping):
                # A device's own id identifies a person as much as its advertising id.
                out[key] = {str(k): mask_tree(v, depth + 2, masked=masked or k in _DEVICE_IDS) for k, v in item.items()}
                continue
            out[key] = mask_tree(item, depth + 1, masked=masked or key in MASKED_KEYS)
        return out
    if isinstance(value, list):
        return [mask_tree(item, depth + 1, masked=masked) for item in value]
    if isinstance(value, str):
        if masked or _HASH.fullmatch(value):
            return mask(value)
        if "@" in value and _EMAIL_INSIDE.search(value):
            return "[redacted]"
    return value


def safe_message(message: Any, phone_region: str | None = None) -> dict[str, Any]:
    """A message refused at ingest, made fit to store: it was never sanitised, so raw emails and
    phones are hashed here as ingest would have, and any email left inside a string redacted."""
    if not isinstance(message, dict):
        return {"note": f"not a JSON object ({type(message).__name__})"}
    clean = sanitize_message(message, phone_region=phone_region)
    return dict(_redact_emails(clean, 0))


def _redact_emails(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return "[…]"
    if isinstance(value, dict):
        return {str(k): _redact_emails(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_emails(v, depth + 1) for v in value]
    if isinstance(value, str) and "@" in value and _EMAIL_INSIDE.search(value):
        return "[redacted]"
    return value


def summarize_request(body: Any) -> dict[str, Any]:
    """What a call sent, small and masked: a contact-list change as its operation, identifier
    type, count and a few masked identifiers; an Events API document as its events; a catalog
    batch as its product ids; anything else as its masked body."""
    if not isinstance(body, Mapping):
        return {}
    attributes = _get(body, "data", "attributes")
    if isinstance(attributes, Mapping) and isinstance(attributes.get("identifiers"), list):
        identifiers = attributes["identifiers"]
        return {
            "operation": attributes.get("operation"),
            "identifier_type": attributes.get("identifierType"),
            "count": len(identifiers),
            "identifiers": [mask(str(v)) for v in identifiers[:SAMPLE_IDENTIFIERS]],
        }
    events = body.get("events")
    if isinstance(events, list):
        return {
            "events": [e.get("event") for e in events[:20] if isinstance(e, Mapping)],
            "count": len(events),
            "id": mask_tree(body.get("id"), masked=True) if body.get("id") is not None else None,
            "retailer_visitor_id": mask(str(body["retailer_visitor_id"])) if body.get("retailer_visitor_id") else None,
        }
    entries = body.get("entries")
    if isinstance(entries, list):
        products = [_product_id(e) for e in entries[:20]]
        return {"entries": len(entries), "products": [p for p in products if p is not None]}
    return {"body": cut(orjson.dumps(mask_tree(body)).decode(), 1_000)}


def answer_text(body: Any) -> str | None:
    """Criteo's answer as kept with the call: masked JSON, cut to MAX_ANSWER_CHARS."""
    if body is None:
        return None
    return cut(orjson.dumps(mask_tree(body)).decode(), MAX_ANSWER_CHARS)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def _get(body: Mapping[str, Any], *path: str) -> Any:
    node: Any = body
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _product_id(entry: Any) -> str | None:
    if not isinstance(entry, Mapping):
        return None
    product = entry.get("product")
    if isinstance(product, Mapping) and product.get("id") is not None:
        return str(product["id"])
    return str(entry["productId"]) if entry.get("productId") is not None else None
