"""Fault injection for the Criteo emulator: what to break, parsed from `--faults`, and the dice.

A spec is comma-separated `key=value` pairs, e.g. `5xx=0.2,429_burst=3,latency_ms=100,seed=7`:

    5xx=RATE          answer RATE (0..1) of the calls with a server error, drawn from a seeded RNG
    5xx_next=N        answer the next N calls with a server error
    5xx_status=CODE   the status of those errors (500 by default; 502, 503 and 504 too)
    apply_then_500=N  carry out the next N calls that change something (segment create and delete,
                      contact-list PATCH and DELETE, Events API documents, catalog batches), then
                      answer them with a server error (5xx_status) instead of their success: a
                      lost answer, as when Criteo applies a call and its gateway then fails
    apply_then_500_rate=RATE  the same for RATE (0..1) of those calls, from the seeded RNG
    429_burst=N       answer the next N calls with 429 and rate-limit headers
    latency_ms=MS     add MS milliseconds before every answer
    token_ttl=SECS    new tokens stop working after SECS, while still announcing expires_in=900
                      (so a client meets 401 authorization-token-expired, as after a Criteo hiccup)
    revoke_tokens=1   once, when applied: every token issued so far becomes invalid
    seed=N            seed of the RNG behind the rates (a run is then repeatable)

An empty spec, or `none`, means no faults.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from segcrit.errors import UserError

SERVER_ERROR_STATUSES = (500, 502, 503, 504)


class FaultSpecError(UserError):
    """A fault spec that cannot be understood; the message names the culprit."""


@dataclass
class Faults:
    """The faults in force. Counters (`error_next`, `lost_next`, `burst_429`) go down as calls
    consume them."""

    error_rate: float = 0.0
    error_next: int = 0
    error_status: int = 500
    burst_429: int = 0
    latency_ms: int = 0
    lost_next: int = 0
    lost_rate: float = 0.0
    token_ttl_secs: float | None = None
    revoke_tokens: bool = False
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# spec key -> Faults field; the spec keys are the user-facing names (`--faults`, /_emulator/faults).
_KEYS = {
    "5xx": "error_rate",
    "5xx_next": "error_next",
    "5xx_status": "error_status",
    "apply_then_500": "lost_next",
    "apply_then_500_rate": "lost_rate",
    "429_burst": "burst_429",
    "latency_ms": "latency_ms",
    "token_ttl": "token_ttl_secs",
    "revoke_tokens": "revoke_tokens",
    "seed": "seed",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_faults(spec: str | None) -> Faults:
    """`"5xx=0.2,429_burst=3"` -> Faults; raises FaultSpecError naming the bad pair."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return Faults()
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise FaultSpecError(f"fault {item!r} is not key=value")
        pairs[key.strip()] = value.strip()
    return faults_from_mapping(pairs)


def faults_from_mapping(values: Mapping[str, object]) -> Faults:
    """Faults from spec keys (as in `parse_faults`) or Faults field names, values as str or JSON."""
    fields: dict[str, Any] = {}
    for key, raw in values.items():
        name = _KEYS.get(key, key if key in _KEYS.values() else None)
        if name is None:
            raise FaultSpecError(f"unknown fault {key!r} (known: {', '.join(_KEYS)})")
        try:
            fields[name] = _convert(name, raw)
        except (TypeError, ValueError) as exc:
            raise FaultSpecError(f"fault {key}={raw!r}: {exc}") from None
    return Faults(**fields)


def _convert(name: str, raw: object) -> object:
    text = str(raw).strip().lower()
    if name == "revoke_tokens":
        if isinstance(raw, bool) or text in _TRUE | _FALSE:
            return raw if isinstance(raw, bool) else text in _TRUE
        raise ValueError("expected 1 or 0")
    if name in ("error_rate", "lost_rate"):
        rate = float(text)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("a rate is between 0 and 1")
        return rate
    if name == "token_ttl_secs":
        ttl = float(text)
        if ttl < 0:
            raise ValueError("must not be negative")
        return ttl
    number = int(text)
    if name == "error_status" and number not in SERVER_ERROR_STATUSES:
        raise ValueError(f"one of {SERVER_ERROR_STATUSES}")
    if number < 0:
        raise ValueError("must not be negative")
    return number


class FaultInjector:
    """Draws the faults for each call. Not thread-safe on its own: EmulatorState's lock guards it."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = Faults()
        self._rng = random.Random()
        self.apply(faults or Faults())

    def apply(self, faults: Faults) -> bool:
        """Put `faults` in force; True when the caller must revoke every token now (one-shot)."""
        revoke = faults.revoke_tokens
        # Kept as a copy with the one-shot cleared, so applying it twice revokes only when asked twice.
        self.faults = Faults(**{**faults.to_json(), "revoke_tokens": False})
        if faults.seed is not None:
            self._rng = random.Random(faults.seed)
        return revoke

    def take_burst_429(self) -> bool:
        if self.faults.burst_429 > 0:
            self.faults.burst_429 -= 1
            return True
        return False

    def take_server_error(self) -> int | None:
        """The status to fail this call with, or None to let it through."""
        if self.faults.error_next > 0:
            self.faults.error_next -= 1
            return self.faults.error_status
        if self.faults.error_rate > 0 and self._rng.random() < self.faults.error_rate:
            return self.faults.error_status
        return None

    def take_lost_answer(self) -> int | None:
        """For a call that changed something and succeeded: the status to answer it with instead,
        or None to let its answer through."""
        if self.faults.lost_next > 0:
            self.faults.lost_next -= 1
            return self.faults.error_status
        if self.faults.lost_rate > 0 and self._rng.random() < self.faults.lost_rate:
            return self.faults.error_status
        return None
