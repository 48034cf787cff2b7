"""suppression: a conversion holds the buyer back from retargeting audiences for a while (SPEC §1).

A configured event (`on`) holds the person back from `remove_from` audiences (and puts them in
`add_to`) for `for_days` from the event's time: desired state = member AND consented AND not held
back. Processing records the suppression with the event (segcrit.processing.profile_flows); the
scheduled part (`expire_suppressions`, the `suppression_expiry` job) ends those whose time has
passed and takes the person out of `add_to` again, unless another suppression still holds them there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping

import orjson

from segcrit.clock import DAY_SECS
from segcrit.config import SuppressionFlow
from segcrit.flows import RefreshTargets
from segcrit.store.base import ScheduledFlowStore

EXPIRY_EVERY_SECS = 60.0
EXPIRY_BATCH = 5_000  # suppressions ended per unit of work


def suppression_key(flow: SuppressionFlow) -> str:
    """A suppression's stable name in the store: what it does, not where it stands in the config,
    so reordering flows (or changing for_days) keeps the people it holds."""
    what = orjson.dumps([sorted(flow.on), flow.remove_from, flow.add_to], option=orjson.OPT_SORT_KEYS)
    return "suppression:" + hashlib.sha256(what).hexdigest()[:16]


def suppression_until(flow: SuppressionFlow, event: str, ts: float, now: float) -> float | None:
    """When the suppression that `event` (at `ts`) starts ends; None when it starts none, or when
    it would be over already (an old event)."""
    if event not in flow.on:
        return None
    until = ts + flow.for_days * DAY_SECS
    return until if until > now else None


def held_back(
    suppressions: Iterable[tuple[str, SuppressionFlow]], active: Collection[str], memberships: Mapping[str, object]
) -> frozenset[str]:
    """The audiences the `active` suppressions (by key) keep a person with these memberships out of."""
    held: set[str] = set()
    for key, flow in suppressions:
        if key not in active:
            continue
        if flow.remove_from == "all":
            held |= {audience for audience in memberships if audience != flow.add_to}
        else:
            held |= set(flow.remove_from) - {flow.add_to}
    return frozenset(held)


def expire_suppressions(
    store: ScheduledFlowStore, flows: Iterable[SuppressionFlow], refresh: RefreshTargets, now: float
) -> str:
    """The `suppression_expiry` job: end every suppression whose time has passed; returns its result."""
    by_key = {suppression_key(flow): flow for flow in flows}
    ended = 0
    while expired := store.expired_suppressions(now, EXPIRY_BATCH):
        with store.transaction() as tx:
            for profile_id, key, until in expired:
                tx.end_suppression(profile_id, key)
                flow = by_key.get(key)
                # Another suppression that is still on may hold the person in the same add_to.
                still_held = {by_key[k].add_to for k in tx.active_suppressions(profile_id, now) if k in by_key}
                if flow is not None and flow.add_to and flow.add_to not in still_held:
                    tx.set_membership(profile_id, flow.add_to, False, until)
                refresh(tx, profile_id, now)
        ended += len(expired)
    return f"{ended} suppression(s) ended"
