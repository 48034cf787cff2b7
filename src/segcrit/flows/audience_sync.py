"""audience_sync: Segment Engage audience messages -> membership changes, pure (SPEC §5).

Two forms count, whichever source they arrive through (unless the flow's `sources` limits that):
- `track` "Audience Entered" / "Audience Exited" with `properties.audience_key`;
- `identify` / `track` whose `context.personas.computation_class` is `audience` or `journey_step`
  and whose `traits` / `properties` hold `computation_key: true|false` (or "true"/"false").

Abuse limits (SPEC §4.1): `accepts_source` says whether a source's messages may change audiences,
and `new_audience_allowance` how many new audience keys may get a Criteo segment per UTC day
(`utc_day`); the store counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segcrit.config import AudienceSyncFlow

AUDIENCE_CLASSES = frozenset({"audience", "journey_step"})
MAX_AUDIENCE_KEY = 200
DAY_SECS = 86_400
# The allowance without any audience_sync flow (only flows that name their audiences run then).
DEFAULT_NEW_AUDIENCES_PER_DAY = 50


@dataclass(frozen=True, slots=True)
class MembershipChange:
    audience: str
    member: bool


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return bool(value)
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def _key(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value.strip()) <= MAX_AUDIENCE_KEY:
        return value.strip()
    return None


def membership_changes(message: Mapping[str, Any], flow: AudienceSyncFlow) -> list[MembershipChange]:
    kind = message.get("type")
    properties = _object(message.get("properties"))
    traits = _object(message.get("traits"))
    personas = _object(_object(message.get("context")).get("personas"))

    found: dict[str, bool] = {}
    if kind == "track" and message.get("event") in (flow.entered_event, flow.exited_event):
        key = _key(properties.get("audience_key")) or _key(personas.get("computation_key"))
        if key:
            explicit = _boolean(properties.get(key))
            found[key] = explicit if explicit is not None else message.get("event") == flow.entered_event
    if kind in ("identify", "track") and personas.get("computation_class") in AUDIENCE_CLASSES:
        key = _key(personas.get("computation_key"))
        holder = traits if kind == "identify" else properties
        value = _boolean(holder.get(key)) if key else None
        if key and value is not None:
            found[key] = value
    return [MembershipChange(flow.audiences.get(k, k), v) for k, v in found.items()]


def accepts_source(flow: AudienceSyncFlow, source: str) -> bool:
    """Whether messages from `source` may change audience membership through this flow."""
    return flow.sources is None or source in flow.sources


def new_audience_allowance(flows: Sequence[AudienceSyncFlow]) -> int:
    """New audience keys admitted per UTC day: one allowance shared by every audience_sync flow,
    the smallest they set (a new key is new whichever flow brought it)."""
    return min((flow.max_new_audiences_per_day for flow in flows), default=DEFAULT_NEW_AUDIENCES_PER_DAY)


def utc_day(ts: float) -> int:
    """The UTC day of `ts`, as days since 1970-01-01 (the unit of max_new_audiences_per_day)."""
    return int(ts // DAY_SECS)
