"""Normalise and hash emails and phone numbers, and strip raw ones out of a Segment message.

Raw emails and phone numbers never reach disk or logs (SPEC §8). `sanitize_message` takes them
out of the whole message tree before it is stored:

- Identifiers (SPEC §5): `email` and every phone-named key (`is_phone_key`) at the top of
  `traits`, `context.traits` and `properties` are removed, and valid ones are hashed under the
  reserved key `_segcrit` (unique, in the order found):

      message["_segcrit"] = {"emails": [{"sha256": ..., "md5": ...}, ...],
                             "phones": [{"sha256": ..., "md5": ...}, ...]}

  A `group` call's `traits` describe the group, not the person: its email and phones are removed
  without being hashed.
- Ids: a `userId`, `anonymousId` or `previousId` that is an email becomes `email-sha256:<sha256>`
  and counts as the person's email. An id that merely contains an email or a phone number (and a
  `groupId` or `messageId` holding one) becomes `sha256:<sha256 of the id>`: stable and distinct,
  so that no two people, groups or messages collapse into one "[redacted]" value.
- Everywhere else, at any depth (custom top-level keys, `event`, `integrations`, `context.page`,
  free text, list items, object keys): every email inside a string, also URL-encoded (`%40`,
  doubly `%2540`), is replaced by "[redacted]" where it stands, so a URL keeps its shape
  (`/cart?email=[redacted]&utm_source=mail`); so is an international number (`+` and a country
  code) that is a valid phone number. The value of a phone-named key is "[redacted]" whatever
  it holds: a national number (`06 12 34 56 78`) cannot be told from other digits without the
  key that names it, which is also why free text is searched for international numbers only.

Emails are trimmed and lowercased before hashing (Criteo's rule); phones are E.164. Both are
hashed as sha256 and md5 hex, enough for every form Criteo takes (`sha256_md5` derives the third).
Everything here is pure and runs on the ingest hot path: the serialised message, which ingest has
anyway, says which searches cannot find anything (no "@" or "%40", no phone-named key, no
`+<digit>`), so most messages are never walked, and nothing unchanged is copied.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import orjson
import phonenumbers

RESERVED_KEY: Final = "_segcrit"
REDACTED: Final = "[redacted]"

# Permissive on purpose: Criteo matches on whatever the advertiser hashed, so anything shaped like
# local@domain.tld counts; the point is to reject junk such as "n/a", not to implement RFC 5322.
_EMAIL = re.compile(r"[^\s@]+@[^\s@.]+(?:\.[^\s@.]+)+")
# An email *inside* any other string: free text, "Name <a@b.com>", a URL's query string, raw or
# URL-encoded. The local part is RFC 5322's characters less the URL delimiters # & / = ? (so
# `?email=a@b.com&x=1` loses only the email), and may be empty: what precedes "@" is removed as
# far as it could belong to the address. The lookbehind starts a match only at the beginning of
# such a run (linear time on hostile input). The last label starts with a letter, so that version
# strings such as "pkg@1.2.3" survive.
_LOCAL_CHAR: Final = r"[\w.!$%'*+\-^`{|}~]"
_EMAIL_INSIDE = re.compile(rf"(?<!{_LOCAL_CHAR}){_LOCAL_CHAR}*(?:@|%40|%2540)[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_][\w\-]*")
# An international number inside text: "+", a country code, up to 15 digits with the usual
# separators. Candidates are kept unless phonenumbers says they are a valid number.
_INTERNATIONAL_PHONE = re.compile(r"\+[1-9](?:[\s().\-]{0,2}[0-9]){6,14}")
# Its hint in the JSON text, looser so that it finds whatever the above finds once serialised
# (separators may be JSON escapes or multi-byte spaces); it cannot cross a string's end quote,
# so the "+01:00" of timestamps does not set it off.
_INTERNATIONAL_PHONE_HINT = re.compile(rb'\+[1-9](?:[^0-9"]{0,12}[0-9]){6,14}')
# The end of a phone-named key in JSON text made "key text" (`_key_text`: ASCII lowercased, digits
# and the separators ` _.-` deleted, so that `Phone_Number_2` reads `phonenumber`): a phone word,
# then a plural or a "number" suffix, then the `":` that orjson writes after every key. One search
# per word, each finding its word at C speed (a single pattern that starts with any of six words
# would try every p, m, c, t and f of the text); text only holds the ends of keys before `":`.
_PHONE_KEY_ENDS: Final = tuple(
    re.compile(re.escape(word) + rb'(?:s|(?:number|num|no|nr)s?)?":')
    for word in (b"phone", b"mobile", b"cell", b"tel", b"fax", b"msisdn")
)
_KEY_TEXT_TABLE: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_KEY_TEXT_DELETE: Final = b"0123456789 _.-"
PHONE_CHECKS: Final = 32  # numbers in free text checked with phonenumbers per message (_PhoneFinder)
# A phone-named key (`is_phone_key`) ends with one of these words, or is written as one word that
# ends with one of the endings, or ends with "<phone word> number".
_PHONE_WORDS: Final = frozenset({"phone", "telephone", "mobile", "cell", "tel", "fax", "msisdn"})
_PHONE_ENDINGS: Final = (
    "phone",
    "phonenumber",
    "phoneno",
    "phonenum",
    "mobilenumber",
    "mobileno",
    "cellnumber",
    "telnumber",
    "telno",
    "faxnumber",
    "msisdn",
)
_NUMBER_WORDS: Final = frozenset({"number", "no", "num", "nr"})
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_KEY_SEPARATORS = re.compile(r"[ _\-.]+")  # ASCII only, as `_key_text` deletes them
_MAX_EMAIL_CHARS: Final = 254
_MAX_RAW_EMAIL_CHARS: Final = 1024  # with the spaces around it: anything longer is not an email
EMAIL_CACHE_SIZE: Final = 4096
_MAX_PHONE_CHARS: Final = 64
# Deeper than any real payload; ingest already rejects bodies nested beyond 32 levels, this only
# keeps the recursion safe for callers that skip that check (imports, tests).
_MAX_REDACT_DEPTH: Final = 64


def normalize_email(raw: object) -> str | None:
    """Trim and lowercase; None when the value is not shaped like an email."""
    if not isinstance(raw, str) or len(raw) > _MAX_RAW_EMAIL_CHARS:
        return None
    return _normalized_email(raw)


# A person's email comes back with every event they send (`context.traits`): the last ones seen are
# remembered, in memory only, with their hashes (a few MB at most: emails are short).
@functools.lru_cache(maxsize=EMAIL_CACHE_SIZE)
def _normalized_email(raw: str) -> str | None:
    email = raw.strip().lower()
    if len(email) > _MAX_EMAIL_CHARS or not _EMAIL.fullmatch(email):
        return None
    return email


@functools.lru_cache(maxsize=EMAIL_CACHE_SIZE)
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


@functools.lru_cache(maxsize=1024)
def is_phone_key(key: str) -> bool:
    """True for a key that names a phone number: `phone`, `phone_number`, `phoneNumber`, `Mobile`,
    `mobile_phone`, `cell`, `tel`, `telephone`, `billing_phone`, `work_tel`, `phone2`, `phones`…

    Case, separators (`_`, `-`, `.`, space, camelCase), a trailing number and a plural do not
    matter; a phone word inside another word (`hotel`, `cellular`, `automobile`) does not count.
    `_PHONE_KEY_ENDS` find every such key in JSON text: the two must agree.
    """
    spaced = _CAMEL_BOUNDARY.sub(" ", key).lower().rstrip("0123456789 _-.")
    words = _KEY_SEPARATORS.split(spaced)
    last = words[-1]
    singular = last[:-1]
    if last.endswith("s") and (
        singular in _PHONE_WORDS or singular in _NUMBER_WORDS or singular.endswith(_PHONE_ENDINGS)
    ):
        last = singular
    return (
        last in _PHONE_WORDS
        or "".join([*words[:-1], last]).endswith(_PHONE_ENDINGS)
        or (len(words) > 1 and last in _NUMBER_WORDS and words[-2] in _PHONE_WORDS)
    )


def redact_text(text: str) -> str:
    """`text` with every email (raw or URL-encoded) and valid international phone number inside it
    replaced by "[redacted]"; the same object when it holds none."""
    if "@" in text or "%40" in text or "%2540" in text:
        text = _without_emails(text)
    if "+" in text:
        text = _PhoneFinder().redact(text)
    return text


_PERSON_ID_FIELDS: Final = ("userId", "anonymousId", "previousId")
_OTHER_ID_FIELDS: Final = ("groupId", "messageId")
_ID_FIELDS: Final = (*_PERSON_ID_FIELDS, *_OTHER_ID_FIELDS)
_PERSON_CONTAINERS: Final = ("traits", "properties")
EMAIL_ID_PREFIX: Final = "email-sha256:"
ID_PREFIX: Final = "sha256:"


def pseudonymous_id(email: str) -> str:
    """What a userId/anonymousId that is an email becomes: its sha256, marked as such."""
    return EMAIL_ID_PREFIX + email_hashes(email)[0]


# Told of every valid email a message carries, as (normalised email, its sha256), in memory only.
EmailListener = Callable[[str, str], None]


def sanitize_message(
    message: dict[str, Any],
    *,
    phone_region: str | None = None,
    serialised: bytes | None = None,
    on_email: EmailListener | None = None,
    phone_keys: bool | None = None,
) -> dict[str, Any]:
    """A copy of `message` without raw emails and phones (module docstring).

    `serialised` is the message's orjson serialisation when the caller has it (ingest measures
    it): its bytes tell which searches cannot find anything, and those are skipped. `phone_keys`:
    whether `serialised` may hold a phone-named key, when the caller already knows
    (`phone_key_hints` answers for a whole batch in one search). The input is never modified;
    parts that hold nothing to remove are shared, not copied. A client-sent `_segcrit` is
    discarded. `on_email` hears of each email found (enrichment lookups keyed by email keep them
    in memory).
    """
    out = dict(message)
    out.pop(RESERVED_KEY, None)
    hints = _hints_of(serialised, phone_keys)
    searching = hints is not _NO_SEARCH
    if not searching and not _holds_email_key(out):
        # The usual page or track call: no "@", no number, no phone-named key, no `email` key.
        out[RESERVED_KEY] = {"emails": [], "phones": []}
        return out
    found = _Identifiers(phone_region, on_email=on_email)
    if hints.emails or hints.phones_in_text:
        for key in _ID_FIELDS:
            value = out.get(key)
            # Most ids (uuids, database keys) hold none of the three characters.
            if isinstance(value, str) and ("@" in value or "%" in value or "+" in value):
                out[key] = _id_without_pii(value, found if key in _PERSON_ID_FIELDS else None)
                found.removed(value, out[key])
    for key in _PERSON_CONTAINERS:
        container = out.get(key)
        if isinstance(container, dict):
            # A group call's traits describe the group: taken out, but not the person's identifiers.
            hash_them = key != "traits" or out.get("type") != "group"
            out[key] = found.take(container, hash_them=hash_them, phone_keys=hints.phone_keys)
    context = out.get("context")
    if isinstance(context, dict) and isinstance(context.get("traits"), dict):
        context_traits = found.take(context["traits"], phone_keys=hints.phone_keys)
        if context_traits is not context["traits"]:
            out["context"] = {**context, "traits": context_traits}
    if searching and not _only_identifiers(hints, serialised, found):
        # What is left once the identifiers are out decides whether the whole tree is walked.
        left = _hints_of(_serialised(out))
        if left is not _NO_SEARCH:
            out = _Scrubber(left).walk(out, 0)
    out[RESERVED_KEY] = {"emails": found.emails, "phones": found.phones}
    return out


def _holds_email_key(message: dict[str, Any]) -> bool:
    """Whether an `email` key is at the top of `traits`, `properties` or `context.traits` (taken
    out whatever its value, even one that is not an email)."""
    for key in _PERSON_CONTAINERS:
        container = message.get(key)
        if isinstance(container, dict) and "email" in container:
            return True
    context = message.get("context")
    traits = context.get("traits") if isinstance(context, dict) else None
    return isinstance(traits, dict) and "email" in traits


def _only_identifiers(hints: _Hints, serialised: bytes | None, found: _Identifiers) -> bool:
    """True when every "@" of the message was in what was taken out as identifiers (the usual
    identify or Engage call: `traits.email` and nothing else), so nothing is left to search."""
    return (
        serialised is not None
        and not hints.phone_keys
        and not hints.phones_in_text
        and found.at_signs_removed == serialised.count(b"@")
        and b"%40" not in serialised
        and b"%2540" not in serialised
    )


class _Hints(NamedTuple):
    """Which searches can find something in a message (`_hints_of`)."""

    emails: bool
    phone_keys: bool
    phones_in_text: bool


_EVERY_SEARCH: Final = _Hints(emails=True, phone_keys=True, phones_in_text=True)
_NO_SEARCH: Final = _Hints(emails=False, phone_keys=False, phones_in_text=False)


def _hints_of(serialised: bytes | None, phone_keys: bool | None = None) -> _Hints:
    """The searches that can find something in a message, from its orjson serialisation (all of
    them without one; `phone_keys` when already known). C-speed byte scans: this runs for every
    message ingest takes."""
    if serialised is None:
        return _EVERY_SEARCH
    emails = b"@" in serialised or (b"%" in serialised and (b"%40" in serialised or b"%2540" in serialised))
    phones = b"+" in serialised and _INTERNATIONAL_PHONE_HINT.search(serialised) is not None
    keys = _may_hold_phone_key(serialised) if phone_keys is None else phone_keys
    if not (emails or phones or keys):
        return _NO_SEARCH  # the usual message: one shared answer, nothing built
    return _Hints(emails, keys, phones)


def _may_hold_phone_key(serialised: bytes) -> bool:
    """False when no object key can be phone-named (a hint for `is_phone_key`, never narrower)."""
    key_text = _key_text(serialised)
    return any(pattern.search(key_text) for pattern in _PHONE_KEY_ENDS)


def _key_text(text: bytes) -> bytes:
    return text.translate(_KEY_TEXT_TABLE, _KEY_TEXT_DELETE)


def _phone_key_ends(key_text: bytes) -> list[int]:
    """Where phone-named keys end in `key_text`, in no order."""
    return [match.end() for pattern in _PHONE_KEY_ENDS for match in pattern.finditer(key_text)]


def phone_key_hints(serialised: Sequence[bytes]) -> list[bool]:
    """`_may_hold_phone_key` of each serialisation, in one search of them all: the search's cost
    is mostly per call, and most batches hold no phone-named key at all. A newline separates the
    texts: orjson escapes it inside strings and the patterns match none, so no match spans two
    messages."""
    if not serialised:
        return []
    key_text = _key_text(b"\n".join(serialised))
    hints = [False] * len(serialised)
    found = _phone_key_ends(key_text)
    if found:
        starts = list(itertools.accumulate(len(text) + 1 for text in key_text.split(b"\n")))
        for end in found:
            hints[bisect.bisect_right(starts, end - 1)] = True
    return hints


def _serialised(value: Any) -> bytes | None:
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return None  # not JSON (a caller outside ingest): every search runs


def _id_without_pii(value: str, found: _Identifiers | None) -> str:
    """The id itself, its email pseudonym (a person's email is then collected in `found`), or,
    when an email or phone is only part of it, `sha256:` of the whole id."""
    email = normalize_email(value) if "@" in value else None
    if email is not None:
        # Shops that use the email as userId: keep the id stable but never raw (SPEC §8).
        if found is not None:
            found.add_email(email)
        return pseudonymous_id(email)
    if redact_text(value) is value:
        return value
    return ID_PREFIX + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _without_emails(text: str) -> str:
    redacted, count = _EMAIL_INSIDE.subn(REDACTED, text)
    return redacted if count else text


class _PhoneFinder:
    """Redacts valid international numbers in text. phonenumbers takes ~0.1 ms per candidate, so
    one message gets PHONE_CHECKS of them; past that, every candidate counts as a number (hostile
    input is redacted rather than allowed to cost seconds)."""

    __slots__ = ("_checks_left",)

    def __init__(self) -> None:
        self._checks_left = PHONE_CHECKS

    def redact(self, text: str) -> str:
        redacted, count = _INTERNATIONAL_PHONE.subn(self._replacement, text)
        return redacted if count and redacted != text else text

    def _replacement(self, match: re.Match[str]) -> str:
        if self._checks_left <= 0:
            return REDACTED
        self._checks_left -= 1
        return REDACTED if normalize_phone(match.group()) is not None else match.group()


class _Identifiers:
    """Collects the hashed emails and phones of one message, each once, in the order found."""

    __slots__ = ("_on_email", "_phone_region", "_seen", "at_signs_removed", "emails", "phones")

    def __init__(self, phone_region: str | None, *, on_email: EmailListener | None = None) -> None:
        self._phone_region = phone_region
        self._on_email = on_email
        self._seen: set[str] = set()
        self.emails: list[dict[str, str]] = []
        self.phones: list[dict[str, str]] = []
        # "@"s in the values taken out; -1 once something not counted (not a string) was taken.
        self.at_signs_removed = 0

    def removed(self, value: Any, replacement: Any = None) -> None:
        """Count the "@"s of a value replaced by `replacement` (or taken out)."""
        if value is replacement:
            return
        if isinstance(value, str) and self.at_signs_removed >= 0:
            self.at_signs_removed += value.count("@")
        else:
            self.at_signs_removed = -1

    def take(self, container: dict[str, Any], *, hash_them: bool = True, phone_keys: bool = True) -> dict[str, Any]:
        """`container` without `email` and phone-named keys (their values hashed when `hash_them`);
        the same object when it has none."""
        if phone_keys:
            names = [k for k in container if k == "email" or (isinstance(k, str) and is_phone_key(k))]
        else:
            names = ["email"] if "email" in container else []
        if not names:
            return container
        container = dict(container)
        for name in names:
            raw = container.pop(name)
            self.removed(raw)
            if not hash_them:
                continue
            if name == "email":
                self.add_email(normalize_email(raw))
                continue
            for value in raw if isinstance(raw, list) else [raw]:
                self._add_phone(normalize_phone(value, self._phone_region))
        return container

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


class _Scrubber:
    """Walks a message tree, copying only what changes (module docstring, "Everywhere else")."""

    __slots__ = ("_hints", "_phones")

    def __init__(self, hints: _Hints) -> None:
        self._hints = hints
        self._phones = _PhoneFinder()

    def walk(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, dict | list) and depth >= _MAX_REDACT_DEPTH:
            return REDACTED
        if isinstance(value, dict):
            return self._object(value, depth)
        if isinstance(value, list):
            items: list[Any] | None = None
            for index, item in enumerate(value):
                new = self.walk(item, depth + 1)
                if new is not item:
                    if items is None:
                        items = list(value)
                    items[index] = new
            return value if items is None else items
        return value

    def _object(self, value: dict[Any, Any], depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] | None = None
        for index, (key, item) in enumerate(value.items()):
            if self._hints.phone_keys and isinstance(key, str) and is_phone_key(key):
                new = _phone_value(item)
            else:
                new = self.walk(item, depth + 1)
            new_key = self._text(key) if isinstance(key, str) else key
            if out is None and (new is not item or new_key is not key):
                out = dict(itertools.islice(value.items(), index))
            if out is not None:
                out[new_key] = new
        return value if out is None else out

    def _text(self, text: str) -> str:
        if self._hints.emails and ("@" in text or "%40" in text or "%2540" in text):
            text = _without_emails(text)
        if self._hints.phones_in_text and "+" in text:
            text = self._phones.redact(text)
        return text


def _phone_value(value: Any) -> Any:
    """What a phone-named key keeps: nothing that could be a number (flags and nulls stay)."""
    if value is None or isinstance(value, bool) or value == "":
        return value
    return REDACTED
