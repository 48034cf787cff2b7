"""The flows (SPEC §1), one module each: what an event (or the store, on a schedule) means for
audiences and Criteo.

Each module holds its flow's pure decisions; a flow with a scheduled part (suppression,
lifecycle, lookalike_seed) holds that job too, which reads its work from the store and applies it
in the store's units of work (segcrit.store.base), with `RefreshTargets` recomputing each changed
person's targets as processing does. Processing applies the per-event decisions
(segcrit.processing); the scheduler runs the jobs (segcrit.scheduler).
"""

from __future__ import annotations

from collections.abc import Callable

from segcrit.store.base import ProcessingTx

# Processor.refresh_targets: recompute what Criteo should hold of one profile, in a unit of work.
RefreshTargets = Callable[[ProcessingTx, int, float], int]
