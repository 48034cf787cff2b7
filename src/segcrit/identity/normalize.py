"""Normalise and hash emails and phone numbers, and strip raw ones out of a Segment message.

Raw emails and phone numbers never reach disk or logs (SPEC §8): `sanitize_message` replaces them
with their hashes under the reserved key `_segcrit` before a message is stored:

    message["_segcrit"] = {"emails": [{"sha256": ..., "md5": ...}, ...],
                           "phones": [{"sha256": ..., "md5": ...}, ...]}

Emails are trimmed and lowercased before hashing (Criteo's rule); phones are E.164. Both are
hashed as sha256 and md5 hex, enough for every form Criteo takes (`sha256_md5` derives the third).
Everything here is pure and runs on the ingest hot path, so it avoids copying what it does not
change.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any, Final

import orjson
import phonenumbers

RESERVED_KEY: Final = "_segcrit"
REDACTED: Final = "[redacted]"

# Permissive on purpose: Criteo matches on whatever the advertiser hashed, so anything shaped like
# local@domain.tld counts; the point is to reject junk such as "n/a", not to implement RFC 5322.
_EMAIL = re.compile(r"[^\s@]+@[^\s@.]+(?:\.[^\s@.]+)+")
# Used to find an email *inside* any other string (a free-text trait, a "Name <a@b.com>" field).
# The last label must be letters so that version strings such as "pkg@1.2.3" survive.
_EMAIL_INSIDE = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}")
_MAX_EMAIL_CHARS: Final = 254
_MAX_PHONE_CHARS: Final = 64
# Deeper than any real payload; ingest already rejects bodies nested beyond 32 levels, this only
# keeps the recursion safe for callers that skip that check (imports, tests).
_MAX_REDACT_DEPTH: Final = 64


def normalize_email(raw: object) -> str | None:
    """Trim and lowercase; None when the value is not shaped like an email."""
    if not isinstance(raw, str):
        return None
    email = raw.strip().lower()
    if len(email) > _MAX_EMAIL_CHARS or not _EMAIL.fullmatch(email):
        return None
    return email


def email_hashes(normalized: str) -> tuple[str, str]:
    """(sha256 hex, md5 hex) of an already normalised email."""
    data = normalized.encode("utf-8")
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


def sha256_md5(md5_hex: str) -> str:
    """Criteo's third email form: sha256 of the md5 hex string."""
    return hashlib.sha256(md5_hex.encode("ascii")).hexdigest()


def normalize_phone(raw: object, region: str | None = None) -> str | None:
    """E.164 (`+14155552671`), or None when not a valid number.

    A number written without `+` and a country code is ambiguous; it is accepted only when a
    default `region` (ISO 3166 alpha-2, e.g. "FR") is given.
    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or len(raw) > _MAX_PHONE_CHARS:
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_hashes(e164: str) -> tuple[str, str]:
    """(sha256 hex, md5 hex) of an E.164 number."""
    data = e164.encode("ascii")
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


_ID_FIELDS: Final = ("userId", "anonymousId", "previousId")
EMAIL_ID_PREFIX: Final = "email-sha256:"


def pseudonymous_id(email: str) -> str:
    """What a userId/anonymousId that is an email becomes: its sha256, marked as such."""
    return EMAIL_ID_PREFIX + email_hashes(email)[0]


# Told of every valid email a message carries, as (normalised email, its sha256), in memory only.
EmailListener = Callable[[str, str], None]


def sanitize_message(
    message: dict[str, Any],
    *,
    phone_region: str | None = None,
    may_hold_email: bool = True,
    on_email: EmailListener | None = None,
) -> dict[str, Any]:
    """A copy of `message` with raw emails and phones replaced by their hashes (module docstring).

    `email`/`phone` are removed from `traits`, `context.traits` and `properties`; valid ones are
    hashed into `_segcrit.emails` / `_segcrit.phones` (unique, in that priority order). A group
    call's `traits` describe the group, not the person, so its email/phone are removed unhashed.
    Any other string in those objects (and anywhere in `context`) that contains an email becomes
    "[redacted]". A client-sent `_segcrit` is discarded. The input is never modified.

    `may_hold_email=False` says that no string in the message contains "@" (ingest knows it from
    the serialisation it measures), which skips the search for emails inside other strings.
    `on_email` hears of each email found (enrichment lookups keyed by email keep them in memory).
    """
    out = dict(message)
    out.pop(RESERVED_KEY, None)
    found = _Identifiers(phone_region, redact=may_hold_email, on_email=on_email)
    for key in _ID_FIELDS:
        value = out.get(key)
        if isinstance(value, str) and "@" in value:
            # Shops that use the email as userId: keep the id stable but never raw (SPEC §8).
            email = normalize_email(value)
            if email is not None:
                found.add_email(email)
                out[key] = pseudonymous_id(email)
    traits = out.get("traits")
    if isinstance(traits, dict):
        out["traits"] = found.take(traits, hash_them=out.get("type") != "group")
    context = out.get("context")
    if isinstance(context, dict):
        context = dict(context)
        context_traits = context.get("traits")
        if isinstance(context_traits, dict):
            context["traits"] = found.take(context_traits)
        out["context"] = _redact_tree(context) if may_hold_email else context
    properties = out.get("properties")
    if isinstance(properties, dict):
        out["properties"] = found.take(properties)
    out[RESERVED_KEY] = {"emails": found.emails, "phones": found.phones}
    return out


class _Identifiers:
    """Collects the hashed emails and phones of one message, each once, in the order found."""

    __slots__ = ("_on_email", "_phone_region", "_redact", "_seen", "emails", "phones")

    def __init__(self, phone_region: str | None, *, redact: bool = True, on_email: EmailListener | None = None) -> None:
        self._phone_region = phone_region
        self._redact = redact
        self._on_email = on_email
        self._seen: set[str] = set()
        self.emails: list[dict[str, str]] = []
        self.phones: list[dict[str, str]] = []

    def take(self, container: dict[str, Any], *, hash_them: bool = True) -> Any:
        """`container` without email/phone (hashed here when `hash_them`), the rest redacted."""
        if "email" in container or "phone" in container:
            container = dict(container)
            raw_email = container.pop("email", None)
            raw_phone = container.pop("phone", None)
            if hash_them:
                self.add_email(normalize_email(raw_email))
                self._add_phone(normalize_phone(raw_phone, self._phone_region))
        return _redact_tree(container) if self._redact else container

    def add_email(self, email: str | None) -> None:
        if email is not None and email not in self._seen:
            self._seen.add(email)
            sha256, md5 = email_hashes(email)
            self.emails.append({"sha256": sha256, "md5": md5})
            if self._on_email is not None:
                self._on_email(email, sha256)

    def _add_phone(self, phone: str | None) -> None:
        # E.164 numbers start with "+" and emails hold an "@": one set serves both without clashes.
        if phone is not None and phone not in self._seen:
            self._seen.add(phone)
            sha256, md5 = phone_hashes(phone)
            self.phones.append({"sha256": sha256, "md5": md5})


def _redact_tree(value: Any) -> Any:
    """`_redact` behind a C-speed pre-check: most objects hold no "@" at all."""
    try:
        if b"@" not in orjson.dumps(value):
            return value
    except (orjson.JSONEncodeError, TypeError):
        pass  # not JSON-serialisable (a caller outside ingest): walk it
    return _redact(value, 0)


def _redact(value: Any, depth: int) -> Any:
    """`value` with every string that contains an email replaced; the same object if none does."""
    if isinstance(value, str):
        # The `in` test is a C-speed scan; the regex only runs on the rare string with an "@".
        if "@" in value and _EMAIL_INSIDE.search(value):
            return REDACTED
        return value
    if depth >= _MAX_REDACT_DEPTH and isinstance(value, dict | list):
        return REDACTED
    if isinstance(value, dict):
        copy: dict[str, Any] | None = None
        for key, item in value.items():
            new = _redact(item, depth + 1)
            if new is not item:
                if copy is None:
                    copy = dict(value)
                copy[key] = new
        return value if copy is None else copy
    if isinstance(value, list):
        items: list[Any] | None = None
        for index, item in enumerate(value):
            new = _redact(item, depth + 1)
            if new is not item:
                if items is None:
                    items = list(value)
                items[index] = new
        return value if items is None else items
    return value
