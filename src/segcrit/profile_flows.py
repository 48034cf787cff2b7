"""The profile-flow step of processing: traits, suppression and lifecycle for one event.

- traits: the traits of `identify` calls that cohort expressions can use are kept per profile
  (`cohort_traits`: an allowlist, so free text with personal data never lands on the profile);
- suppression: a configured event holds the person back from `remove_from` audiences (and puts
  them in `add_to`) for `for_days`; desired state = member AND consented AND not held back;
- lifecycle: a stage event makes the person a member of that stage's audience and of no other
  stage of the flow, at the event's timestamp, so the latest event wins whatever the arrival order.

The scheduler (segcrit.scheduler) ends suppressions and moves people to a dormant stage; the
lookalike_seed flow is entirely scheduled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from segcrit.cohort import trait_names
from segcrit.config import Config, LifecycleFlow, LookalikeSeedFlow, SuppressionFlow, lifecycle_stage_audiences
from segcrit.domain import ProfileState
from segcrit.identity.normalize import REDACTED
from segcrit.store.base import ProcessingTx

DAY_SECS = 86_400.0
# Traits kept for cohorts without a `when` naming them, so that a seed flow added later finds them
# on people identified before; every other trait is kept only when some `when` names it.
COHORT_TRAITS = frozenset(
    {"plan", "tier", "loyalty_tier", "vip_tier", "lifetime_value", "customer_type", "subscription_status"}
)
MAX_TRAITS = 100
MAX_TRAIT_CHARS = 256


def cohort_trait_names(config: Config) -> frozenset[str]:
    """The allowlist: COHORT_TRAITS and every trait a lookalike_seed `when` names. An expression
    that reads `traits` as a whole gets no more: keeping every trait is what the list prevents."""
    named = (trait_names(flow.when) for flow in config.flows_of(LookalikeSeedFlow))
    return COHORT_TRAITS.union(*(names for names in named if names is not None))


def cohort_traits(traits: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """The traits worth keeping for cohorts: allowed, scalar, bounded in size, never redacted text."""
    kept: dict[str, Any] = {}
    for key, value in traits.items():
        if len(kept) >= MAX_TRAITS or key not in allowed:
            continue
        scalar = isinstance(value, bool | int | float) or value is None
        short_text = isinstance(value, str) and len(value) <= MAX_TRAIT_CHARS and REDACTED not in value
        if scalar or short_text:
            kept[key] = value
    return kept


def suppression_key(flow: SuppressionFlow) -> str:
    """A suppression's stable name in the store: what it does, not where it stands in the config,
    so reordering flows (or changing for_days) keeps the people it holds."""
    what = orjson.dumps([sorted(flow.on), flow.remove_from, flow.add_to], option=orjson.OPT_SORT_KEYS)
    return "suppression:" + hashlib.sha256(what).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class StepResult:
    changed: bool
    memberships: tuple[tuple[str, bool], ...]


class ProfileFlowsStep:
    def __init__(self, config: Config) -> None:
        self.suppressions: list[tuple[str, SuppressionFlow]] = [
            (suppression_key(f), f) for f in config.flows if isinstance(f, SuppressionFlow)
        ]
        self.lifecycles: list[LifecycleFlow] = config.flows_of(LifecycleFlow)
        self.trait_names = cohort_trait_names(config)

    def apply(self, tx: ProcessingTx, message: Mapping[str, Any], profile_id: int, ts: float, now: float) -> StepResult:
        changed = False
        memberships: list[tuple[str, bool]] = []
        kind = message.get("type")
        traits = message.get("traits")
        if kind == "identify" and isinstance(traits, dict):
            kept = cohort_traits(traits, self.trait_names)
            if kept:
                tx.merge_traits(profile_id, kept, ts)
        event = message.get("event") if kind == "track" else None
        if not isinstance(event, str):
            return StepResult(changed, ())
        for key, flow in self.suppressions:
            if event not in flow.on:
                continue
            until = ts + flow.for_days * DAY_SECS
            if until <= now:
                continue  # an old event whose suppression is already over
            changed |= tx.set_suppression(profile_id, key, ts, until)
            if flow.add_to:
                tx.ensure_audience(flow.add_to, True)
                changed |= tx.set_membership(profile_id, flow.add_to, True, ts)
                memberships.append((flow.add_to, True))
        for lifecycle in self.lifecycles:
            stage = lifecycle.stages.get(event)
            if stage is None:
                continue
            for audience in lifecycle_audiences(lifecycle):
                tx.ensure_audience(audience, True)
                changed |= tx.set_membership(profile_id, audience, audience == stage, ts)
            memberships.append((stage, True))
        return StepResult(changed, tuple(memberships))

    def held_back(self, tx: ProcessingTx, profile: ProfileState, now: float) -> frozenset[str]:
        """Audiences the profile's active suppressions keep it out of."""
        if not self.suppressions:
            return frozenset()
        active = set(tx.active_suppressions(profile.profile_id, now))
        held: set[str] = set()
        for key, flow in self.suppressions:
            if key not in active:
                continue
            if flow.remove_from == "all":
                held |= {a for a in profile.memberships if a != flow.add_to}
            else:
                held |= set(flow.remove_from) - {flow.add_to}
        return frozenset(held)


def lifecycle_audiences(flow: LifecycleFlow) -> list[str]:
    """The flow's stage audiences, dormant last (the config checks use the same list)."""
    return lifecycle_stage_audiences(flow)
