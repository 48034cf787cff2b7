"""What a lookup answered for one key, and the message that carries it to the processor. Pure.

An answer holds raw emails and phones, in memory only, for as long as it takes to build its
message: `answer_message` normalises and hashes them exactly as ingest does (emails trimmed and
lowercased, phones E.164 with `identity.phone_region`), runs the traits through ingest's own
`sanitize_message` (emails and phones inside them redacted), and puts the identifiers under the
reserved `_segcrit` key, where ingest puts hashes and where no client can write. So the stored
message is as safe as any ingested event, and the processor treats it like one: merge limits,
tombstones, consent (latest wins, at the lookup time) and traits apply unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from segcrit.errors import SegcritError
from segcrit.identity.graph import ANSWER_KINDS
from segcrit.identity.normalize import (
    RESERVED_KEY,
    EmailListener,
    email_hashes,
    normalize_email,
    normalize_phone,
    phone_hashes,
    sanitize_message,
)

# Ids segcrit made up from an email (sanitize_message): they are no customer id a source knows.
DERIVED_ID_PREFIXES: Final = ("email-sha256:", "sha256:")
MAX_TEXT_ID: Final = 512


class LookupUnavailable(SegcritError):
    """The source did not answer (down, credentials refused, a failing query): retry later.

    The message names what went wrong without the keys looked up, emails redacted."""


@dataclass(slots=True)
class Answer:
    """What a source holds for one key. `emails`/`phones` are raw: memory only, never stored."""

    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    ids: list[tuple[str, str]] = field(default_factory=list)  # (kind, value), kind in ANSWER_KINDS
    consent: bool | None = None
    traits: dict[str, Any] = field(default_factory=dict)

    def add(self, other: Answer) -> None:
        """Fold another row for the same key in: every identifier counts, a `false` consent wins
        over a `true` (the cautious reading of a CRM that disagrees with itself), the first row's
        traits win."""
        self.emails += [e for e in other.emails if e not in self.emails]
        self.phones += [p for p in other.phones if p not in self.phones]
        self.ids += [i for i in other.ids if i not in self.ids]
        if other.consent is False or self.consent is None:
            self.consent = self.consent if other.consent is None else other.consent
        for name, value in other.traits.items():
            self.traits.setdefault(name, value)


@dataclass(slots=True)
class LookupResult:
    """A batch's outcome: answers by key, keys the source does not know, keys it failed on."""

    answers: dict[str, Answer] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    error: str | None = None  # why the failed keys failed
    requests: int = 0  # queries or HTTP requests made


def text_id(value: Any) -> str | None:
    """An identifier value as text (a number from a database becomes its digits), or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text if 0 < len(text) <= MAX_TEXT_ID else None


def consent_value(value: Any) -> bool | None:
    """A database's idea of yes/no (true, 1, 'yes', 'Y', 't' ...) as a bool; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return None if value not in (0, 1) else bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in {"true", "t", "yes", "y", "1", "on"}:
            return True
        if word in {"false", "f", "no", "n", "0", "off"}:
            return False
    return None


def looked_up_key(key_kind: str, value: str) -> str | None:
    """A key as a source can know it: not an id segcrit derived from an email."""
    if key_kind == "email":
        return normalize_email(value)
    return None if value.startswith(DERIVED_ID_PREFIXES) else value


def answer_message(
    lookup: str,
    key_kind: str,
    key: str,
    answer: Answer,
    *,
    ts: float,
    consent_category: str,
    phone_region: str | None = None,
    on_email: EmailListener | None = None,
) -> dict[str, Any]:
    """The sanitised `identify` message that hands `answer` to the processor (module docstring).

    Anchored on the key: `userId` / `anonymousId`, or for an email key its hashes first in
    `_segcrit.emails`. `ts` is the lookup time: consent and traits count from then.
    """
    raw: dict[str, Any] = {"type": "identify", "traits": dict(answer.traits)}
    if key_kind == "user_id":
        raw["userId"] = key
    elif key_kind == "anonymous_id":
        raw["anonymousId"] = key
    if answer.consent is not None:
        raw["context"] = {"consent": {"categoryPreferences": {consent_category: answer.consent}}}
    message = sanitize_message(raw, phone_region=phone_region, on_email=on_email)
    reserved = message[RESERVED_KEY]
    emails = [key] if key_kind == "email" else []
    emails += [e for e in (normalize_email(value) for value in answer.emails) if e is not None]
    reserved["emails"] = _hashed(reserved["emails"], emails, email_hashes, on_email)
    phones = (normalize_phone(value, phone_region) for value in answer.phones)
    reserved["phones"] = _hashed(reserved["phones"], [p for p in phones if p is not None], phone_hashes, None)
    reserved["ids"] = [[kind, value] for kind, value in answer.ids if kind in ANSWER_KINDS and _plain_id(value)]
    reserved["ts"] = ts
    reserved["received_at"] = ts
    reserved["lookup"] = lookup
    message["timestamp"] = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return message


def _plain_id(value: str) -> bool:
    """False for an "id" that is an email or a phone number (a CRM column holding the wrong thing):
    ids are stored as they are, so such a value must not become one (SPEC §8)."""
    if "@" in value or "%40" in value.lower():
        return False
    return not (value.startswith("+") and normalize_phone(value) is not None)


def _hashed(
    known: list[dict[str, str]],
    values: Iterable[str],
    hashes: Any,
    on_email: EmailListener | None,
) -> list[dict[str, str]]:
    """`known` hash pairs plus those of `values`, each once, the values' first."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for value in values:
        sha256, md5 = hashes(value)
        if sha256 not in seen:
            seen.add(sha256)
            out.append({"sha256": sha256, "md5": md5})
            if on_email is not None:
                on_email(value, sha256)
    return out + [pair for pair in known if pair.get("sha256") not in seen]


# ------------------------------------------------------------------------------ masked, for people


def mask(kind: str, value: str) -> str:
    """An identifier shown to a person setting up a lookup: enough to recognise, not to copy."""
    if kind == "email" and "@" in value:
        local, domain = value.rsplit("@", 1)
        name, _, tld = domain.rpartition(".")
        return f"{local[:1]}***@{name[:1]}***.{tld}" if name else f"{local[:1]}***@***"
    if kind == "phone":
        return value[:3] + "*" * max(0, len(value) - 5) + value[-2:] if len(value) > 5 else "***"
    if len(value) <= 8:
        return value[:2] + "***"
    return value[:4] + "…" + value[-2:]


def describe(answer: Answer, phone_region: str | None = None) -> Mapping[str, Any]:
    """An answer with its identifiers masked and its traits as they would be stored (emails and
    phones inside them redacted), for `segcrit enrich`. Values that normalisation refuses (not an
    email, a phone without country and no `identity.phone_region`) are marked as not used."""
    emails = [_masked("email", e, normalize_email(e), "not an email") for e in answer.emails]
    phones = [_masked("phone", p, normalize_phone(p, phone_region), "not a valid number") for p in answer.phones]
    traits = sanitize_message({"type": "identify", "traits": dict(answer.traits)}, phone_region=phone_region)
    return {
        "emails": emails,
        "phones": phones,
        "ids": [f"{kind} {mask(kind, value)}" for kind, value in answer.ids],
        "consent": answer.consent,
        "traits": traits.get("traits", {}),
    }


def _masked(kind: str, raw: str, normalised: str | None, refusal: str) -> str:
    return mask(kind, normalised) if normalised is not None else f"{mask(kind, raw)} ({refusal}: not used)"
