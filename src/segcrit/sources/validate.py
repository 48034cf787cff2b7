"""Turn the messages of one request into sanitised, validated messages ready for the store.

    prepare_messages(items, rules, received_at=..., context=..., integrations=...) -> Prepared

Each message is, in order: merged with the batch envelope's `context`/`integrations` (its own keys
win, as Segment does), measured (one orjson serialisation), sanitised (raw emails and phones out,
see segcrit.identity.normalize) and validated by `validate_message`, which returns a reason string
or None and normalises the message in place:

- `userId`, `anonymousId`, `previousId`, `groupId`, `messageId`: numbers become strings, an
  explicit null is the same as absent; a missing `messageId` gets a uuid4.
- `_segcrit.ts`: the event time as float epoch seconds (`timestamp`, else the receive time);
  `_segcrit.received_at`: the receive time; `receivedAt`: its ISO form.

A message that fails is left out and reported by its index; the others go on. Reasons are
constant strings (never the client's data), so they are safe as a metrics label and in responses.
`integrations` is kept but never acted on (SPEC §3.1).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from segcrit.identity.normalize import RESERVED_KEY, EmailListener, sanitize_message

TRACKING_TYPES: Final = frozenset({"track", "identify", "page", "screen", "group", "alias"})
# Segment's classic Webhooks destination also forwards user-deletion requests.
WEBHOOK_TYPES: Final = TRACKING_TYPES | {"delete"}
MAX_MESSAGE_ID_CHARS: Final = 100

_ISO_8601 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?([Zz]|[+-]\d\d(?::?\d\d)?)?",
    re.ASCII,
)
_OBJECT_FIELDS: Final = ("context", "traits", "properties", "integrations")


@dataclass(frozen=True, slots=True)
class MessageRules:
    """What a source accepts: message types, the size limit, and where receivedAt comes from."""

    types: frozenset[str]
    max_message_bytes: int
    # Webhook messages come from Segment, whose `receivedAt` is the real first receipt.
    keep_received_at: bool = False
    phone_region: str | None = None
    # Hears of every email accepted (kept in memory for enrichment lookups keyed by email).
    on_email: EmailListener | None = None


@dataclass(slots=True)
class Prepared:
    """The messages to hand the sink, and `{"index", "reason"}` for every one left out."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


def _new_message_id() -> str:
    return str(uuid.uuid4())


def prepare_messages(
    items: Sequence[Any],
    rules: MessageRules,
    *,
    received_at: float,
    context: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    new_id: Callable[[], str] = _new_message_id,
) -> Prepared:
    """Merge, measure, sanitise and validate every item (module docstring)."""
    prepared = Prepared()
    received_iso = format_timestamp(received_at)
    too_large = f"message exceeds {rules.max_message_bytes} bytes"
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            prepared.rejected.append({"index": index, "reason": "message is not a JSON object"})
            continue
        message = merge_envelope(item, context, integrations)
        # The write key is a secret: it must not be stored with the message.
        message.pop("writeKey", None)
        try:
            serialised = orjson.dumps(message)
        except orjson.JSONEncodeError:
            prepared.rejected.append({"index": index, "reason": "message cannot be serialised"})
            continue
        if len(serialised) > rules.max_message_bytes:
            prepared.rejected.append({"index": index, "reason": too_large})
            continue
        # No "@" anywhere (most track and page calls): no email to look for inside strings.
        clean = sanitize_message(
            message, phone_region=rules.phone_region, may_hold_email=b"@" in serialised, on_email=rules.on_email
        )
        reason = validate_message(clean, rules, received_at=received_at, received_iso=received_iso, new_id=new_id)
        if reason is None:
            prepared.messages.append(clean)
        else:
            prepared.rejected.append({"index": index, "reason": reason})
    return prepared


def merge_envelope(
    message: Mapping[str, Any],
    context: Mapping[str, Any] | None,
    integrations: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A copy of `message` with the batch-level context/integrations under its own keys."""
    out = dict(message)
    for key, shared in (("context", context), ("integrations", integrations)):
        if not shared:
            continue
        own = out.get(key)
        if own is None:
            out[key] = dict(shared)
        elif isinstance(own, dict):
            out[key] = {**shared, **own}
        # Anything else is left for validate_message to reject.
    return out


def validate_message(
    message: dict[str, Any],
    rules: MessageRules,
    *,
    received_at: float,
    received_iso: str | None = None,
    new_id: Callable[[], str] = _new_message_id,
) -> str | None:
    """None when `message` is acceptable (and then normalised in place), else the reason.

    Expects a sanitised message: its `_segcrit` object is ours and gets `ts` and `received_at`.
    """
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in rules.types:
        return f"type must be one of {', '.join(sorted(rules.types))}"

    for name in _OBJECT_FIELDS:
        value = message.get(name, ...)
        if value is None:
            del message[name]
        elif value is not ... and not isinstance(value, dict):
            return f"{name} must be an object"

    user_id = _normalize_id(message, "userId")
    anonymous_id = _normalize_id(message, "anonymousId")
    if user_id is False or anonymous_id is False:
        return "userId and anonymousId must be strings"
    if not user_id and not anonymous_id:
        return "neither userId nor anonymousId"

    if kind == "track":
        event = message.get("event")
        if not isinstance(event, str) or not event:
            return "track needs event"
    elif kind == "alias":
        if not _normalize_id(message, "previousId") or not user_id:
            return "alias needs previousId and userId"
    elif kind == "group" and not _normalize_id(message, "groupId"):
        return "group needs groupId"

    message_id = _normalize_id(message, "messageId")
    if message_id is False:
        return "messageId must be a string"
    if not message_id:
        message["messageId"] = new_id()
    elif len(message_id) > MAX_MESSAGE_ID_CHARS:
        return f"messageId longer than {MAX_MESSAGE_ID_CHARS} characters"

    timestamp = message.get("timestamp")
    if timestamp is None:
        ts = received_at
        message["timestamp"] = received_iso or format_timestamp(received_at)
    else:
        parsed = parse_timestamp(timestamp)
        if parsed is None:
            return "timestamp is not ISO-8601"
        ts = parsed

    if not rules.keep_received_at or not isinstance(message.get("receivedAt"), str):
        message["receivedAt"] = received_iso or format_timestamp(received_at)
    reserved = message.get(RESERVED_KEY)
    if not isinstance(reserved, dict):
        reserved = message[RESERVED_KEY] = {}
    reserved["ts"] = ts
    reserved["received_at"] = received_at
    return None


def _normalize_id(message: dict[str, Any], key: str) -> str | Literal[False] | None:
    """The id at `key` as a string (stored back), None when absent/null/empty, False when invalid."""
    value = message.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # JavaScript clients send numeric ids as numbers; Segment stores them as strings, "1" not "1.0".
    text = str(int(value)) if isinstance(value, int) or value.is_integer() else repr(value)
    message[key] = text
    return text


def parse_timestamp(value: object) -> float | None:
    """ISO-8601 date-time to epoch seconds, or None when it is not one.

    Accepts `Z`, `±HH:MM`, `±HHMM`, `±HH` or no offset (read as UTC), and 0 to 9 fraction digits
    (Go clients send nanoseconds; anything past microseconds is dropped).
    """
    if not isinstance(value, str):
        return None
    match = _ISO_8601.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tzinfo=UTC)
    except ValueError:
        return None
    return moment.timestamp() - _offset_seconds(offset)


def _offset_seconds(offset: str | None) -> int:
    if offset is None or offset in {"Z", "z"}:
        return 0
    digits = offset[1:].replace(":", "")
    seconds = int(digits[:2]) * 3600 + (int(digits[2:4]) * 60 if len(digits) > 2 else 0)
    return -seconds if offset[0] == "-" else seconds


def format_timestamp(epoch: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds and `Z`, like Segment's own timestamps."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
