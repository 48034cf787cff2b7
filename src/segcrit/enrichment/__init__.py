"""Enrichment: identifiers, traits and consent from a CRM or warehouse table (`type: sql`) or from
Segment's Profile API (`type: segment_profiles`), added to profiles to raise Criteo match rates.

The path of a lookup (docs/enrichment.md has the whole story):

    processing ──(new profile, or a key it did not hold)──> lookups table: due now
    EnrichmentWorker (own thread) ──> due profiles, a batch per lookup ──> source (no transaction open)
        ──> answers, normalised and hashed in memory ──> inbox, as sanitised `identify` messages
    processing ──> identity (merge limits), consent (latest wins, at the lookup time), traits
        ──> desired targets ──> delivery, as for any event

Modules: `answers` (an answer and its inbox message, pure), `sql` (SQLAlchemy Core lookups),
`profiles` (the Profile API client), `schedule` (when a profile is due, pure, and the processor's
marks), `memory` (the emails seen at ingest, for lookups keyed by email), `worker` (the loop that
ties them), `inspect` (`segcrit enrich ID`).

Exceptions: `LookupUnavailable` (a SegcritError): the source did not answer (down, refused the
credentials, a query that fails); the worker backs off and retries, nothing else waits for it.
"""

from segcrit.enrichment.answers import Answer, LookupResult, LookupUnavailable

__all__ = ["Answer", "LookupResult", "LookupUnavailable"]
