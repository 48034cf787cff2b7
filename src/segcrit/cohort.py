"""Cohort expressions (`lookalike_seed.when`), pure: parsed once, evaluated per profile.

Evaluated by simpleeval (a well-kept safe evaluator: no attribute access, no imports, no
builtins), never `eval`. What an expression can use:

    order_count, revenue_total                 numbers (distinct orders; their revenue, else total)
    first_order_at, last_order_at               epoch seconds, or None without orders
    last_seen_at, created_at                    epoch seconds
    days_since_last_order, days_since_first_order, days_since_last_seen   float days, or None
    traits                                      non-PII traits from identify: traits['plan']
    audiences                                   the audiences the person is a member of
    trait(name, default=None), in_audience(name), days_since(epoch)
    and / or / not, comparisons, in, arithmetic, literals

A comparison with a missing value (None) is false rather than an error, so
`days_since_last_order < 30` simply excludes people who never ordered.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression

DAY_SECS = 86_400.0
FACT_NAMES = frozenset(
    {
        "order_count",
        "revenue_total",
        "first_order_at",
        "last_order_at",
        "last_seen_at",
        "created_at",
        "days_since_last_order",
        "days_since_first_order",
        "days_since_last_seen",
        "traits",
        "audiences",
        "now",
    }
)
FUNCTION_NAMES = frozenset({"trait", "in_audience", "days_since", "min", "max", "abs", "len"})
MAX_EXPRESSION_CHARS = 2_000


@dataclass(slots=True)
class ProfileFacts:
    """What a cohort expression sees of one profile."""

    profile_id: int
    created_at: float
    last_seen_at: float
    order_count: int = 0
    revenue_total: float = 0.0
    first_order_at: float | None = None
    last_order_at: float | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    audiences: frozenset[str] = frozenset()


class CohortError(ValueError):
    """The expression cannot be used (syntax, unknown name, forbidden construct)."""


def _days_since(now: float) -> Callable[[Any], float | None]:
    def days_since(epoch: Any) -> float | None:
        if isinstance(epoch, int | float) and not isinstance(epoch, bool):
            return (now - float(epoch)) / DAY_SECS
        return None

    return days_since


class Cohort:
    """A compiled `when` expression."""

    def __init__(self, expression: str) -> None:
        if len(expression) > MAX_EXPRESSION_CHARS:
            raise CohortError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
        self.expression = expression
        self._evaluator = EvalWithCompoundTypes()
        try:
            self._parsed = self._evaluator.parse(expression)
        except SyntaxError as exc:
            raise CohortError(f"not a valid expression ({exc.msg})") from None
        unknown = sorted(
            {n.id for n in ast.walk(self._parsed) if isinstance(n, ast.Name)}
            - FACT_NAMES
            - FUNCTION_NAMES
            - {"True", "False", "None"}
        )
        if unknown:
            raise CohortError(
                f"unknown name(s) {', '.join(unknown)}; use: {', '.join(sorted(FACT_NAMES | FUNCTION_NAMES))}"
            )
        if any(isinstance(n, ast.Attribute) for n in ast.walk(self._parsed)):
            raise CohortError("attribute access (a.b) is not allowed; use traits['name'] or trait('name')")

    def matches(self, facts: ProfileFacts, now: float) -> bool:
        """True when the profile is in the cohort; an evaluation error counts as not in it."""
        evaluator = self._evaluator
        evaluator.names = names_for(facts, now)
        evaluator.functions = {
            "trait": lambda name, default=None: facts.traits.get(name, default),
            "in_audience": lambda name: name in facts.audiences,
            "days_since": _days_since(now),
            "min": min,
            "max": max,
            "abs": abs,
            "len": len,
        }
        try:
            return bool(evaluator.eval(self.expression, previously_parsed=self._parsed))
        except (TypeError, ValueError, KeyError, ZeroDivisionError, InvalidExpression):
            return False


def names_for(facts: ProfileFacts, now: float) -> Mapping[str, Any]:
    days = _days_since(now)
    return {
        "order_count": facts.order_count,
        "revenue_total": facts.revenue_total,
        "first_order_at": facts.first_order_at,
        "last_order_at": facts.last_order_at,
        "last_seen_at": facts.last_seen_at,
        "created_at": facts.created_at,
        "days_since_last_order": days(facts.last_order_at),
        "days_since_first_order": days(facts.first_order_at),
        "days_since_last_seen": days(facts.last_seen_at),
        "traits": facts.traits,
        "audiences": facts.audiences,
        "now": now,
        "True": True,
        "False": False,
        "None": None,
    }


def validate_expression(expression: str) -> str | None:
    """The problem with an expression, or None (for `segcrit check`)."""
    try:
        Cohort(expression)
    except CohortError as exc:
        return str(exc)
    return None
