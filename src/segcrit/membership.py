"""Desired state, pure: which identifiers of a profile Criteo should hold in which audience.

desired(audience, identifier) = the flows say member AND consent AND the identifier is one the
config sends (identity.send) AND, for a mobile id, ad tracking is not off. Delivery compares this
with what Criteo acknowledged and sends only the difference.
"""

from __future__ import annotations

import hashlib

from segcrit.config import ConsentConfig, IdentityConfig
from segcrit.consent import effective_consent
from segcrit.domain import Identifier, ProfileState, TargetKey
from segcrit.identity.graph import CRITEO_TYPE


def criteo_value(ident: Identifier, email_hash: str) -> str | None:
    """The value Criteo receives for an identifier, or None when it cannot be formed."""
    if ident.kind != "email":
        return ident.value
    if email_hash == "md5":
        return ident.extra
    if email_hash == "sha256_md5":
        return hashlib.sha256(ident.extra.encode()).hexdigest() if ident.extra else None
    # sha256, and `none`: raw emails never reach disk (SPEC §8), so sha256 is the closest form
    # Criteo accepts; `segcrit check` says so.
    return ident.value


def sendable(profile: ProfileState, identity: IdentityConfig) -> list[tuple[str, str]]:
    """(Criteo identifierType, value) of every identifier of the profile that may be sent."""
    out: list[tuple[str, str]] = []
    for ident in profile.identifiers:
        id_type = CRITEO_TYPE.get(ident.kind)
        if id_type is None or id_type not in identity.send or not ident.active:
            continue
        value = criteo_value(ident, identity.email_hash)
        if value:
            out.append((id_type, value))
    return out


def desired_targets(
    profile: ProfileState,
    identity: IdentityConfig,
    consent: ConsentConfig,
    held_back: frozenset[str] = frozenset(),
) -> set[TargetKey]:
    """Every (audience, identifier) Criteo should hold for this profile."""
    if not effective_consent(profile.consent, consent):
        return set()
    audiences = [a for a, (member, _) in profile.memberships.items() if member and a not in held_back]
    ids = sendable(profile, identity)
    return {TargetKey(a, t, v) for a in audiences for t, v in ids}
