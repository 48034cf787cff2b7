"""Turn the messages of one request into sanitised, validated messages ready for the store.

    prepare_messages(items, rules, received_at=..., context=..., integrations=..., sent_at=...) -> Prepared

Each message is, in order: merged with the batch envelope's `context`/`integrations` (its own keys
win, as Segment does), measured (one orjson serialisation), sanitised (raw emails and phones out,
see segcrit.identity.normalize) and validated by `validate_message`, which returns a reason string
or None and normalises the message in place:

- `userId`, `anonymousId`, `previousId`, `groupId`, `messageId`: numbers become strings, an
  explicit null is the same as absent; a missing `messageId` gets a uuid4.
- `_segcrit.ts`: the event time as float epoch seconds (below); `_segcrit.received_at`: the receive
  time; `receivedAt`: its ISO form.

Event time (SPEC §1), the one Segment would record:
- Tracking API: `timestamp`, corrected for the client's clock with `sentAt` (the message's own,
  else the batch's) as `receivedAt - (sentAt - timestamp)`; without `timestamp`, the receive time.
- Messages that come from Segment itself (`keep_received_at`: webhooks, archive imports): Segment
  already made that correction, so their `timestamp` is used as it is and their `sentAt` (the
  device's clock) is ignored; their `receivedAt` (Segment's receipt) is kept when it is a valid
  time, and otherwise replaced by ours.
- Never later than the receipt (the earlier of Segment's and ours): a device clock cannot pin a
  membership, a consent or a suppression in the future.
- A `timestamp` or `sentAt` that is not a string, not ISO-8601, not a real date (month 13, Feb 30,
  offset +25:00) or outside the years 0001-9999 once its offset is applied gets the message
  rejected, so no date arithmetic can fail on a stored message later; a `delete` is never refused
  for its time and takes the receipt time instead. The stored `timestamp` stays as sent.

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
from typing import Any, Final, Literal, TypeGuard

import orjson

from segcrit.identity.normalize import RESERVED_KEY, EmailListener, phone_key_hints, sanitize_message

TRACKING_TYPES: Final = frozenset({"track", "identify", "page", "screen", "group", "alias"})
# Segment's classic Webhooks destination also forwards user-deletion requests.
WEBHOOK_TYPES: Final = TRACKING_TYPES | {"delete"}
MAX_MESSAGE_ID_CHARS: Final = 100

_ISO_8601 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?([Zz]|[+-]\d\d(?::?\d\d)?)?",
    re.ASCII,
)
# What Segment's libraries send (`2026-11-30T12:34:56.789Z`, `+02:00`): read by datetime's C parser.
_COMMON_ISO_8601 = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)", re.ASCII
)
_OBJECT_FIELDS: Final = ("context", "traits", "properties", "integrations")
# The instants a datetime can hold: 0001-01-01T00:00:00Z and 10000-01-01T00:00:00Z. Every stored
# event time lies between them, so formatting one as a date never raises.
MIN_EPOCH: Final = -62_135_596_800.0
MAX_EPOCH: Final = 253_402_300_800.0
_MAX_OFFSET_HOURS: Final = 23


@dataclass(frozen=True, slots=True)
class MessageRules:
    """What a source accepts: message types, the size limit, and where receivedAt comes from."""

    types: frozenset[str]
    max_message_bytes: int
    # Messages from Segment itself (webhooks, archives): `receivedAt` is the real first receipt and
    # `timestamp` is already corrected with `sentAt`.
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
    sent_at: float | None = None,
    new_id: Callable[[], str] = _new_message_id,
) -> Prepared:
    """Merge, measure, sanitise and validate every item (module docstring).

    `sent_at` is the batch's `sentAt` (epoch seconds, already checked by the caller).
    """
    prepared = Prepared()
    received_iso = format_timestamp(received_at)
    too_large = f"message exceeds {rules.max_message_bytes} bytes"
    # First every message is merged and measured, then sanitised and validated: the phone-key
    # search runs once for the whole batch (`phone_key_hints`).
    measured: list[tuple[int, dict[str, Any], bytes]] = []
    rejected: dict[int, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            rejected[index] = "message is not a JSON object"
            continue
        if context or integrations:
            message = merge_envelope(item, context, integrations)
            message.pop("writeKey", None)
        elif "writeKey" in item:
            message = dict(item)
            # The write key is a secret: it must not be stored with the message.
            del message["writeKey"]
        else:
            message = item  # sanitize_message copies it (the caller's items are never changed)
        try:
            serialised = orjson.dumps(message)
        except orjson.JSONEncodeError:
            rejected[index] = "message cannot be serialised"
            continue
        if len(serialised) > rules.max_message_bytes:
            rejected[index] = too_large
            continue
        measured.append((index, message, serialised))
    phone_keys = phone_key_hints([serialised for _, _, serialised in measured])
    for (index, message, serialised), may_hold_phone_key in zip(measured, phone_keys, strict=True):
        # The serialisation tells the sanitiser which searches it can skip (most messages hold no
        # email and no phone at all).
        clean = sanitize_message(
            message,
            phone_region=rules.phone_region,
            serialised=serialised,
            on_email=rules.on_email,
            phone_keys=may_hold_phone_key,
        )
        reason = validate_message(
            clean, rules, received_at=received_at, received_iso=received_iso, sent_at=sent_at, new_id=new_id
        )
        if reason is None:
            prepared.messages.append(clean)
        else:
            rejected[index] = reason
    # Rejections in the order of the batch, as the client numbered its messages.
    prepared.rejected = [{"index": index, "reason": rejected[index]} for index in sorted(rejected)]
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
    sent_at: float | None = None,
    new_id: Callable[[], str] = _new_message_id,
) -> str | None:
    """None when `message` is acceptable (and then normalised in place), else the reason.

    Expects a sanitised message: its `_segcrit` object is ours and gets `ts` and `received_at`.
    `sent_at` is the batch's `sentAt`, used when the message has none of its own.
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

    ts = _event_time(message, kind, rules, received_at, received_iso or format_timestamp(received_at), sent_at)
    if isinstance(ts, str):
        return ts
    reserved = message.get(RESERVED_KEY)
    if not isinstance(reserved, dict):
        reserved = message[RESERVED_KEY] = {}
    reserved["ts"] = ts
    reserved["received_at"] = received_at
    return None


def _event_time(
    message: dict[str, Any],
    kind: str,
    rules: MessageRules,
    received_at: float,
    received_iso: str,
    sent_at: float | None,
) -> float | str:
    """The event time (module docstring), or the reason the message's times are refused."""
    if rules.keep_received_at:
        receipt = _receipt(message, received_at, received_iso)
    else:
        receipt = received_at
        message["receivedAt"] = received_iso
    ts = _client_time(message, rules, receipt, sent_at)
    if isinstance(ts, float):
        return min(ts, receipt)
    if ts is not None and kind != "delete":
        return ts
    # No timestamp, or a deletion (honoured whatever its clock says): the receipt time.
    message["timestamp"] = received_iso if receipt == received_at else format_timestamp(receipt)
    return receipt


def _client_time(
    message: Mapping[str, Any], rules: MessageRules, receipt: float, sent_at: float | None
) -> float | str | None:
    """The message's `timestamp` corrected with `sentAt`, None without one, or why it is refused."""
    own = None if rules.keep_received_at else message.get("sentAt")
    sent = (None if rules.keep_received_at else sent_at) if own is None else read_timestamp(own)
    if isinstance(sent, str):
        return "sentAt " + sent
    timestamp = message.get("timestamp")
    if timestamp is None:
        return None
    ts = read_timestamp(timestamp)
    if isinstance(ts, str):
        return "timestamp " + ts
    if sent is None:
        return ts
    corrected = receipt - (sent - ts)
    return corrected if corrected >= MIN_EPOCH else "timestamp is out of range once corrected with sentAt"


def _receipt(message: dict[str, Any], received_at: float, received_iso: str) -> float:
    """When a message from Segment itself was first received: Segment's `receivedAt` (never later
    than our receipt, whose clock may differ), else ours, stored as `receivedAt`. (Ours is the
    receipt of every other message.)"""
    theirs = parse_timestamp(message.get("receivedAt"))
    if theirs is not None:
        return min(theirs, received_at)
    message["receivedAt"] = received_iso
    return received_at


def _normalize_id(message: dict[str, Any], key: str) -> str | Literal[False] | None:
    """The id at `key` as a string (stored back), None when absent/null/empty, False when invalid."""
    value = message.get(key)
    if isinstance(value, str):  # the usual case first
        return value or None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # JavaScript clients send numeric ids as numbers; Segment stores them as strings, "1" not "1.0".
    text = str(int(value)) if isinstance(value, int) or value.is_integer() else repr(value)
    message[key] = text
    return text


def parse_timestamp(value: object) -> float | None:
    """ISO-8601 date-time to epoch seconds, or None when it is not one (see `read_timestamp`)."""
    result = read_timestamp(value)
    return None if isinstance(result, str) else result


def read_timestamp(value: object) -> float | str:
    """ISO-8601 date-time to epoch seconds, or why it is not one (a constant phrase).

    Accepts `Z`, `±HH:MM`, `±HHMM`, `±HH` or no offset (read as UTC), and 0 to 9 fraction digits
    (Go clients send nanoseconds; anything past microseconds is dropped). The instant must fall in
    the years 0001-9999 once the offset is applied (MIN_EPOCH to MAX_EPOCH).
    """
    if not isinstance(value, str):
        return "must be an ISO-8601 string"
    if _COMMON_ISO_8601.fullmatch(value):
        # The common form, a third of the cost; anything it refuses gets the general path's reason.
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            try:
                epoch = moment.timestamp()
            except (OverflowError, ValueError):
                epoch = MAX_EPOCH + 1
            # The offset may take it out of the years 0001-9999.
            return epoch if MIN_EPOCH <= epoch <= MAX_EPOCH else "is out of range (years 0001 to 9999)"
    match = _ISO_8601.fullmatch(value)
    if match is None:
        return "is not ISO-8601"
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    offset_secs = _offset_seconds(offset)
    if offset_secs is None:
        return "has an impossible UTC offset"
    micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tzinfo=UTC)
    except ValueError:
        return "is not a real date and time"
    epoch = moment.timestamp() - offset_secs
    if not MIN_EPOCH <= epoch <= MAX_EPOCH:
        return "is out of range (years 0001 to 9999)"
    return epoch


def _offset_seconds(offset: str | None) -> int | None:
    """The UTC offset in seconds; None when it is not one a clock can show (+25:00, +02:60)."""
    if offset is None or offset in {"Z", "z"}:
        return 0
    digits = offset[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) > 2 else 0
    if hours > _MAX_OFFSET_HOURS or minutes > 59:
        return None
    seconds = hours * 3600 + minutes * 60
    return -seconds if offset[0] == "-" else seconds


def in_time_range(epoch: object) -> TypeGuard[int | float]:
    """True for an epoch seconds value that formats as a date (processing's guard on stored times)."""
    return isinstance(epoch, int | float) and not isinstance(epoch, bool) and MIN_EPOCH <= epoch < MAX_EPOCH


def format_timestamp(epoch: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds and `Z`, like Segment's own timestamps."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
