"""When a profile is looked up: the processor's marks, and each lookup's refresh period.

- A profile is due at once when processing creates it, attaches to it an identifier of a kind
  some lookup is keyed by (`user_id`, `anonymous_id`, `email`), or merges another profile into it
  (`LookupMarks.mark`, one small upsert inside the processing transaction; nothing waits on it).
- After a lookup it is due again `ttl_minutes` later.
- A `segment_profiles` lookup whose traits a `lookalike_seed` cohort reads is refreshed every
  `every_minutes` of that cohort instead (when that is sooner), and those refreshes are spread
  evenly over the interval: each profile gets its own phase in it (`next_due`), so N candidates
  cost N/interval requests a second, steadily, rather than a burst before each cohort run.
"""

from __future__ import annotations

import math
from typing import Final

from segcrit.config import Config, LookalikeSeedFlow, SegmentProfilesLookup, SqlLookup
from segcrit.flows.lookalike_seed import trait_names
from segcrit.identity.graph import Resolution
from segcrit.store.base import ProcessingTx

KEY_KINDS: Final = {"user_id": "user_id", "anonymous_id": "anonymous_id", "email": "email"}
_PHASE_MULTIPLIER: Final = 2_654_435_761  # Knuth's multiplicative hash: neighbouring ids far apart
_PHASE_RANGE: Final = 2**32


class LookupMarks:
    """Which lookups a change of identity makes due (the processor's side of enrichment)."""

    def __init__(self, config: Config) -> None:
        self._by_kind: dict[str, list[str]] = {}
        for lookup in config.enrichment:
            self._by_kind.setdefault(KEY_KINDS[lookup.key], []).append(lookup.name)
        self._all = [lookup.name for lookup in config.enrichment]

    def mark(self, tx: ProcessingTx, profile_id: int, resolution: Resolution, now: float) -> None:
        if not self._all or not (resolution.attach or resolution.merge):
            return
        if resolution.merge:
            # The profile gained whatever the merged ones held: every lookup may have more to say.
            names = self._all
        else:
            kinds = {ident.kind for ident in resolution.attach}
            names = [name for kind in kinds for name in self._by_kind.get(kind, ())]
        if names:
            tx.mark_lookups(profile_id, names, now)


def cohort_period_secs(lookup: SegmentProfilesLookup, config: Config) -> float | None:
    """The shortest `every_minutes` of the cohorts that read this lookup's traits, or None."""
    periods = []
    for flow in config.flows_of(LookalikeSeedFlow):
        used = trait_names(flow.when)
        if used is None or used & set(lookup.traits):
            periods.append(flow.every_minutes * 60.0)
    return min(periods) if periods else None


class RefreshSchedule:
    """When a profile is due again after a lookup (module docstring)."""

    def __init__(self, ttl_secs: float, cohort_secs: float | None = None) -> None:
        self.ttl_secs = ttl_secs
        self.spread_secs = cohort_secs if cohort_secs is not None and cohort_secs < ttl_secs else None

    @classmethod
    def of(cls, lookup: SqlLookup | SegmentProfilesLookup, config: Config) -> RefreshSchedule:
        ttl = lookup.ttl_minutes * 60.0
        if isinstance(lookup, SegmentProfilesLookup) and lookup.traits:
            return cls(ttl, cohort_period_secs(lookup, config))
        return cls(ttl)

    def next_due(self, profile_id: int, now: float) -> float:
        if self.spread_secs is None:
            return now + self.ttl_secs
        period = self.spread_secs
        phase = (profile_id * _PHASE_MULTIPLIER % _PHASE_RANGE) / _PHASE_RANGE * period
        # The profile's next phase time after now: one refresh per period, evenly spread.
        return phase + (math.floor((now - phase) / period) + 1) * period
