"""The identity graph's decisions, pure: which identifiers an event carries and how they join.

Kinds (internal names): user_id, anonymous_id, email, phone, madid, gum, identity_link. Emails and
phones arrive already hashed by `segcrit.identity.normalize.sanitize_message` (under `_segcrit`).

Resolution of one event: the profiles its identifiers already belong to are merged into one
(the profile of the userId first, else the oldest), unless a merge would break a per-kind limit —
two different userIds never merge, and one shared value cannot glue thousands of people together.
Identifiers not yet known are attached to that profile while its limit for that kind allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from segcrit.domain import Identifier

# Strongest first: the profile holding the strongest identifier becomes the primary.
KIND_PRIORITY = ("user_id", "email", "phone", "identity_link", "gum", "madid", "anonymous_id")

# Internal kind -> Criteo contact-list identifierType.
CRITEO_TYPE = {
    "email": "email",
    "madid": "madid",
    "gum": "gum",
    "identity_link": "identityLink",
    "phone": "phoneNumber",
}
KIND_OF_CRITEO_TYPE = {v: k for k, v in CRITEO_TYPE.items()}

# Identifiers whose deletion must stop older replays from resurrecting the person.
TOMBSTONE_KINDS = frozenset({"user_id", "anonymous_id", "email", "phone"})

# Kinds a lookup answer may carry under `_segcrit.ids` (emails and phones come hashed, as always).
ANSWER_KINDS = frozenset({"user_id", "anonymous_id", "madid", "gum", "identity_link"})

MAX_ID_LENGTH = 512  # longer values are not identifiers anyone can match; skip them


@dataclass(slots=True)
class EventIdentifiers:
    """The identifiers one event carries, plus ad-tracking switches for mobile ids."""

    identifiers: list[Identifier] = field(default_factory=list)
    # madid -> adTrackingEnabled as sent (only when the event said so explicitly)
    ad_tracking: dict[str, bool] = field(default_factory=dict)
    # alias: previousId may be a userId or an anonymousId; it links if it is known as either.
    alias_previous: str | None = None

    def pairs(self) -> list[tuple[str, str]]:
        return [(i.kind, i.value) for i in self.identifiers]


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | str):
        text = str(value).strip()
        return text if 0 < len(text) <= MAX_ID_LENGTH else None
    return None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def extract_identifiers(message: Mapping[str, Any]) -> EventIdentifiers:
    """Every identifier of a sanitised message, strongest first, without duplicates."""
    out = EventIdentifiers()
    seen: set[tuple[str, str]] = set()

    def add(kind: str, value: str | None, extra: str | None = None, active: bool = True) -> None:
        if value and (kind, value) not in seen:
            seen.add((kind, value))
            out.identifiers.append(Identifier(kind, value, extra, active))

    add("user_id", _text(message.get("userId")))
    hashed = _dict(message.get("_segcrit"))
    for email in hashed.get("emails") or []:
        if isinstance(email, dict):
            add("email", _text(email.get("sha256")), _text(email.get("md5")))
    for phone in hashed.get("phones") or []:
        if isinstance(phone, dict):
            add("phone", _text(phone.get("sha256")), _text(phone.get("md5")))
    # Identifiers a lookup answered (segcrit.enrichment), as [kind, value] pairs. `_segcrit` is
    # segcrit's own (ingest discards one a client sends), so they count like the hashes above.
    for pair in hashed.get("ids") or []:
        if isinstance(pair, list) and len(pair) == 2 and pair[0] in ANSWER_KINDS:
            add(pair[0], _text(pair[1]))
    traits = _dict(message.get("traits"))
    context = _dict(message.get("context"))
    context_traits = _dict(context.get("traits"))
    properties = _dict(message.get("properties"))
    for source in (traits, context_traits, properties):
        add("identity_link", _text(source.get("identity_link")))
        add("gum", _text(source.get("criteo_gum_id")))
    device = _dict(context.get("device"))
    madid = _text(device.get("advertisingId"))
    if madid:
        enabled = device.get("adTrackingEnabled")
        tracking = enabled is not False and enabled != "false"
        add("madid", madid, active=tracking)
        if isinstance(enabled, bool) or enabled in ("true", "false"):
            out.ad_tracking[madid] = tracking
    add("anonymous_id", _text(message.get("anonymousId")))
    if message.get("type") == "alias":
        out.alias_previous = _text(message.get("previousId"))
    return out


@dataclass(frozen=True, slots=True)
class Resolution:
    """What to do with an event's identifiers: which profile, which merges, which attachments."""

    primary: int | None  # None: create a new profile
    merge: tuple[int, ...]  # profiles to fold into the primary
    attach: tuple[Identifier, ...]  # identifiers to add to the primary
    refused: tuple[Identifier, ...]  # identifiers left out because of a merge limit


_PRIORITY = {kind: rank for rank, kind in enumerate(KIND_PRIORITY)}


def _priority(kind: str) -> int:
    return _PRIORITY.get(kind, len(KIND_PRIORITY))


def plan_resolution(
    identifiers: list[Identifier],
    owners: Mapping[tuple[str, str], int],
    counts: Mapping[int, Mapping[str, int]],
    limits: Mapping[str, int],
) -> Resolution:
    """Decide the profile for an event.

    `owners` maps the event's known identifiers to their profile; `counts` gives, for each of those
    profiles, how many identifiers of each kind it holds; `limits` the most a profile may hold.
    """
    known = {owners.get((i.kind, i.value)) for i in identifiers}
    if len(known) == 1 and None not in known:
        # A returning visitor (every identifier already theirs): nothing to merge or attach.
        return Resolution(known.pop(), (), (), ())
    ordered = sorted(identifiers, key=lambda i: _priority(i.kind))
    candidates: list[int] = []
    for ident in ordered:
        owner = owners.get((ident.kind, ident.value))
        if owner is not None and owner not in candidates:
            candidates.append(owner)
    unknown = [i for i in ordered if (i.kind, i.value) not in owners]
    if any(i.kind == "user_id" for i in unknown):
        # A new userId cannot join a profile that already has its own: that is another person.
        user_limit = limits.get("user_id", 1)
        candidates = [p for p in candidates if counts.get(p, {}).get("user_id", 0) < user_limit]
    if not candidates:
        return _attach_new(None, unknown, {}, limits, ())
    primary = candidates[0]
    totals = dict(counts.get(primary, {}))
    merged: list[int] = []
    for other in candidates[1:]:
        other_counts = counts.get(other, {})
        if all(totals.get(k, 0) + n <= limits.get(k, 1_000_000) for k, n in other_counts.items()):
            merged.append(other)
            for k, n in other_counts.items():
                totals[k] = totals.get(k, 0) + n
    return _attach_new(primary, unknown, totals, limits, tuple(merged))


def _attach_new(
    primary: int | None,
    unknown: list[Identifier],
    totals: Mapping[str, int],
    limits: Mapping[str, int],
    merged: tuple[int, ...],
) -> Resolution:
    room = dict(totals)
    attach: list[Identifier] = []
    refused: list[Identifier] = []
    for ident in unknown:
        if room.get(ident.kind, 0) < limits.get(ident.kind, 1_000_000):
            attach.append(ident)
            room[ident.kind] = room.get(ident.kind, 0) + 1
        else:
            refused.append(ident)
    return Resolution(primary, merged, tuple(attach), tuple(refused))
