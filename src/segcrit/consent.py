"""Advertising consent, pure (SPEC §1 Consent).

An event with `context.consent.categoryPreferences` says yes or no for the configured category;
an object that lacks the category (or `{}`) says no. Without that object an event says nothing,
and a profile that never said anything follows `consent.when_missing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segcrit.config import ConsentConfig


def consent_in_message(message: Mapping[str, Any], category: str) -> bool | None:
    """True/False when the event carries a consent decision, None when it carries none."""
    context = message.get("context")
    if not isinstance(context, dict):
        return None
    consent = context.get("consent")
    if not isinstance(consent, dict):
        return None
    preferences = consent.get("categoryPreferences")
    if not isinstance(preferences, dict):
        return None
    value = preferences.get(category)
    # String booleans appear in hand-made payloads; anything else is not a yes.
    return value is True or value == "true"


def effective_consent(stored: bool | None, config: ConsentConfig) -> bool:
    if stored is None:
        return config.when_missing == "allow"
    return stored
