"""`segcrit enrich ID`: run every lookup for one person and show what each returned, masked.

For setting up `enrichment:`: it queries the sources exactly as the worker does, but stores
nothing and sends nothing. ID is a userId, an anonymousId or an email, as `segcrit forget` takes
it. The keys come from the person's profile when the store knows them (their userId for a lookup
keyed by user_id, ...), else from ID itself; a lookup keyed by email needs the email as ID, since
segcrit keeps only its hash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from segcrit.clock import SystemClock
from segcrit.config import Config, SegmentProfilesLookup, SqlLookup
from segcrit.enrichment.answers import LookupUnavailable, describe, looked_up_key, mask
from segcrit.enrichment.worker import build_source
from segcrit.identity.normalize import email_hashes, normalize_email, pseudonymous_id
from segcrit.metrics import Metrics
from segcrit.store.sqlite import SqliteStore


@dataclass(slots=True)
class LookupReport:
    """What one lookup returned for the person."""

    name: str
    kind: str
    key: str
    keys: list[str] = field(default_factory=list)  # as shown: emails masked
    answers: list[Any] = field(default_factory=list)  # describe()d answers
    unknown: int = 0
    error: str | None = None
    note: str | None = None  # why nothing was looked up


def profile_keys(store: SqliteStore | None, identifier: str) -> dict[str, list[str]]:
    """The person's stored userIds and anonymousIds (by kind), found by any of them or their email."""
    if store is None:
        return {}
    keys = [("user_id", identifier), ("anonymous_id", identifier)]
    email = normalize_email(identifier)
    if email is not None:
        keys += [("email", email_hashes(email)[0]), ("user_id", pseudonymous_id(email))]
    with store.dry_run() as tx:
        owners = set(tx.find_profiles(keys).values())
        found: dict[str, list[str]] = {}
        for profile_id in sorted(owners):
            profile = tx.load_profile(profile_id)
            for ident in profile.identifiers if profile is not None else []:
                if ident.kind in ("user_id", "anonymous_id"):
                    found.setdefault(ident.kind, []).append(ident.value)
    return found


def keys_for(lookup: SqlLookup | SegmentProfilesLookup, identifier: str, known: dict[str, list[str]]) -> list[str]:
    email = normalize_email(identifier)
    if lookup.key == "email":
        return [email] if email is not None else []
    if lookup.key in known:
        return [k for k in (looked_up_key(lookup.key, value) for value in known[lookup.key]) if k is not None]
    return [] if email is not None else [identifier]


async def inspect_person(config: Config, store: SqliteStore | None, identifier: str) -> list[LookupReport]:
    known = profile_keys(store, identifier)
    reports = []
    for lookup in config.enrichment:
        keys = keys_for(lookup, identifier, known)
        shown = [mask("email", k) if lookup.key == "email" else k for k in keys]
        report = LookupReport(lookup.name, lookup.type, lookup.key, shown)
        reports.append(report)
        if not keys:
            report.note = (
                "no email to look up by: give the email itself as ID (segcrit keeps only its hash)"
                if lookup.key == "email"
                else f"the person has no {lookup.key} segcrit can look up by"
            )
            continue
        source = build_source(lookup, SystemClock(), Metrics())
        try:
            result = await source.lookup_keys(keys)
        except LookupUnavailable as error:
            report.error = str(error)
            continue
        finally:
            await source.aclose()
        report.answers = [describe(answer, config.identity.phone_region) for answer in result.answers.values()]
        report.unknown = len(result.unknown)
        if result.failed:
            report.error = result.error
    return reports


def run_inspection(config: Config, store: SqliteStore | None, identifier: str) -> list[LookupReport]:
    return asyncio.run(inspect_person(config, store, identifier))


def report_lines(reports: Sequence[LookupReport]) -> list[str]:
    lines: list[str] = []
    for report in reports:
        head = f"{report.name} ({report.kind}, key {report.key}"
        head += f" {', '.join(report.keys)})" if report.keys else ")"
        if report.note is not None:
            lines.append(f"{head}: nothing looked up: {report.note}")
            continue
        if report.error is not None:
            lines.append(f"{head}: error: {report.error}")
        if not report.answers and report.error is None:
            lines.append(f"{head}: not found")
        for answer in report.answers:
            lines.append(f"{head}: found")
            for name in ("emails", "phones", "ids"):
                if answer[name]:
                    lines.append(f"  {name}: {', '.join(answer[name])}")
            consent = answer["consent"]
            lines.append(f"  consent: {'no value' if consent is None else str(consent).lower()}")
            if answer["traits"]:
                traits = ", ".join(f"{k}={v!r}" for k, v in sorted(answer["traits"].items()))
                lines.append(f"  traits: {traits}")
    return lines
