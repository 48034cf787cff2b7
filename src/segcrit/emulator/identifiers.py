"""Which identifiers the emulator counts as valid, per identifier type.

Criteo does not publish its rules; these are the reference notes' assumptions (criteo-api.md §9.11):
an invalid identifier is counted in `nbInvalidIdentifiers` and sampled, never a failed call.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from segcrit.criteo.constants import IdentifierType

_HEX_32_OR_64 = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}")
_HEX_64 = re.compile(r"[0-9a-fA-F]{64}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")  # needs a TLD: "jkl@gmail" is Criteo's own invalid sample
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_E164 = re.compile(r"\+[1-9]\d{6,14}")


def _email(value: str) -> bool:
    # Plain addresses, MD5 or SHA-256 hex (SHA-256 of an MD5 is 64 hex too).
    return bool(_EMAIL.fullmatch(value) or _HEX_32_OR_64.fullmatch(value))


def _madid(value: str) -> bool:
    return bool(_UUID.fullmatch(value))


def _opaque(value: str) -> bool:
    return bool(value.strip())


def _phone(value: str) -> bool:
    return bool(_E164.fullmatch(value) or _HEX_64.fullmatch(value))


_RULES: dict[IdentifierType, Callable[[str], bool]] = {
    "email": _email,
    "madid": _madid,
    "identityLink": _opaque,
    "gum": _opaque,
    "phoneNumber": _phone,
}


def is_valid_identifier(identifier_type: IdentifierType, value: str) -> bool:
    return _RULES[identifier_type](value)
