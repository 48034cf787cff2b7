"""The profile-flow step of processing: traits, suppression and lifecycle for one event, applied in
the processor's unit of work.

- traits: the traits of `identify` calls that cohort expressions (segcrit.flows.lookalike_seed)
  can use are kept per profile (`cohort_traits`: an allowlist, so free text with personal data
  never lands on the profile);
- suppression (segcrit.flows.suppression): a configured event starts a suppression, and puts the
  person in `add_to`; `held_back` says which audiences the active ones keep them out of;
- lifecycle (segcrit.flows.lifecycle): a stage event moves the person to that stage's audience.

Their scheduled parts (ending suppressions, dormancy, cohorts) are in their flow modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from segcrit.config import Config, LifecycleFlow, LookalikeSeedFlow, SuppressionFlow
from segcrit.domain import ProfileState
from segcrit.flows.lifecycle import stage_memberships
from segcrit.flows.lookalike_seed import trait_names
from segcrit.flows.suppression import held_back, suppression_key, suppression_until
from segcrit.identity.normalize import REDACTED
from segcrit.store.base import ProcessingTx

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
            until = suppression_until(flow, event, ts, now)
            if until is None:
                continue
            changed |= tx.set_suppression(profile_id, key, ts, until)
            if flow.add_to:
                tx.ensure_audience(flow.add_to, True)
                changed |= tx.set_membership(profile_id, flow.add_to, True, ts)
                memberships.append((flow.add_to, True))
        for lifecycle in self.lifecycles:
            stage = lifecycle.stages.get(event)
            if stage is None:
                continue
            for audience, member in stage_memberships(lifecycle, stage):
                tx.ensure_audience(audience, True)
                changed |= tx.set_membership(profile_id, audience, member, ts)
            memberships.append((stage, True))
        return StepResult(changed, tuple(memberships))

    def held_back(self, tx: ProcessingTx, profile: ProfileState, now: float) -> frozenset[str]:
        """Audiences the profile's active suppressions keep it out of."""
        if not self.suppressions:
            return frozenset()
        active = set(tx.active_suppressions(profile.profile_id, now))
        return held_back(self.suppressions, active, profile.memberships)
