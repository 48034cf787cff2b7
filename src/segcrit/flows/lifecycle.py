"""lifecycle: lifecycle events move a person into exactly one stage audience (SPEC §1).

A stage event makes the person a member of that stage's audience and of no other stage of the
flow, at the event's timestamp, so the latest event wins whatever the arrival order; processing
applies it (segcrit.processing.profile_flows). The scheduled part (`move_dormant`, the
`lifecycle_dormancy:<i>` job) moves people not seen for `dormant_after_days` to the `dormant`
stage, as of the moment they became dormant, so a later stage event still wins.
"""

from __future__ import annotations

from segcrit.clock import DAY_SECS
from segcrit.config import LifecycleFlow, lifecycle_stage_audiences
from segcrit.flows import RefreshTargets
from segcrit.store.base import ScheduledFlowStore

DORMANCY_EVERY_SECS = 3_600.0
DORMANCY_BATCH = 5_000  # people moved per unit of work


def lifecycle_audiences(flow: LifecycleFlow) -> list[str]:
    """The flow's stage audiences, dormant last (the config checks use the same list)."""
    return lifecycle_stage_audiences(flow)


def stage_memberships(flow: LifecycleFlow, stage: str) -> list[tuple[str, bool]]:
    """Member of `stage`'s audience, of no other stage's."""
    return [(audience, audience == stage) for audience in lifecycle_audiences(flow)]


def dormancy_every_secs(flow: LifecycleFlow) -> float:
    """How often the dormancy job runs: hourly, or four times per dormancy period when shorter."""
    assert flow.dormant_after_days is not None
    return min(DORMANCY_EVERY_SECS, flow.dormant_after_days * DAY_SECS / 4)


def move_dormant(store: ScheduledFlowStore, flow: LifecycleFlow, refresh: RefreshTargets, now: float) -> str:
    """The `lifecycle_dormancy:<i>` job: move the people of the flow's stages not seen for
    `dormant_after_days` to its `dormant` stage; returns its result."""
    assert flow.dormant_after_days is not None and flow.dormant is not None
    dormant, after = flow.dormant, flow.dormant_after_days * DAY_SECS
    stages = [a for a in lifecycle_audiences(flow) if a != dormant]
    moved = 0
    while candidates := store.dormant_candidates(stages, now - after, DORMANCY_BATCH):
        with store.transaction() as tx:
            for profile_id, last_seen in candidates:
                # The move happens when they became dormant, so a later stage event wins.
                at = last_seen + after
                tx.ensure_audience(dormant, True)
                for audience, member in stage_memberships(flow, dormant):
                    tx.set_membership(profile_id, audience, member, at)
                refresh(tx, profile_id, now)
        moved += len(candidates)
        if len(candidates) < DORMANCY_BATCH:
            break
    return f"{moved} moved to {dormant}"
