"""lookalike_seed: on a schedule, a cohort of profiles -> a seed audience and a Criteo lookalike
segment built on it (SPEC §1).

The decision is the cohort expression (`when`), pure: parsed once (`Cohort`), evaluated per
profile. The scheduled part (`refresh_cohort`, the `cohort:<audience>` job) evaluates it over
every profile a page at a time, changes the seed audience's memberships by difference, and records
the wanted lookalike, which the delivery thread creates once (the one place that calls Criteo).

Evaluated by simpleeval (a well-kept safe evaluator: no attribute access, no imports, no
builtins), never `eval`. What an expression can use:

    order_count, revenue_total                 numbers (distinct orders; their revenue, else total)
    first_order_at, last_order_at               epoch seconds, or None without orders
    last_seen_at, created_at                    epoch seconds
    days_since_last_order, days_since_first_order, days_since_last_seen   float days, or None
    traits                                      traits from identify that cohorts may use (below)
    audiences                                   the audiences the person is a member of
    trait(name, default=None), in_audience(name), days_since(epoch)
    and / or / not, comparisons, in, arithmetic, literals

A missing value reads as None and an ordering comparison with it (<, <=, >, >=) is false rather
than an error, so `days_since_last_order < 30` excludes people who never ordered while
`days_since_last_order > 90 or order_count == 0` still includes them; `traits['plan']` of someone
without a plan is None.

A profile keeps only the traits that cohorts can use (SPEC §8: free text from identify calls never
lands on the profile): those that some `when` names (`traits['x']`, `trait('x')`, `'x' in traits`,
found by `trait_names`) and a few common ones (segcrit.processing.profile_flows.COHORT_TRAITS). An
expression that reads `traits` as a whole (`len(traits)`, a computed name) sees only those.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression

from segcrit.clock import DAY_SECS
from segcrit.domain import ProfileFacts
from segcrit.flows import RefreshTargets
from segcrit.store.base import ScheduledFlowStore

if TYPE_CHECKING:  # segcrit.config checks `when` with validate_expression, at import time
    from segcrit.config import LookalikeSeedFlow

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


class CohortError(ValueError):
    """The expression cannot be used (syntax, unknown name, forbidden construct)."""


# The syntax an expression may use. Anything else (lambda, comprehensions, f-strings, walrus...)
# is refused when the config is checked, rather than making every evaluation fail quietly.
ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.Expr,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
    ast.IfExp,
    ast.Call,
    ast.keyword,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Subscript,
    ast.List,
    ast.Tuple,
    ast.Set,
)


def _days_since(now: float) -> Callable[[Any], float | None]:
    def days_since(epoch: Any) -> float | None:
        if isinstance(epoch, int | float) and not isinstance(epoch, bool):
            return (now - float(epoch)) / DAY_SECS
        return None

    return days_since


def _ordered(compare: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool]:
    """An ordering comparison that is false, not an error, for values without an order between them
    (None: a fact the person does not have; text against a number). Why not an error: an error
    would end the whole expression, so `days_since_last_order > 90 or order_count == 0` would be
    false for exactly the people who never ordered."""

    def safe(left: Any, right: Any) -> bool:
        try:
            return bool(compare(left, right))
        except TypeError:
            return False

    return safe


class _Evaluator(EvalWithCompoundTypes):  # type: ignore[misc]  # simpleeval is untyped
    """simpleeval, with the two relaxations that make missing facts read as "not in the cohort"."""

    def __init__(self) -> None:
        super().__init__()
        self.operators.update(
            {
                ast.Lt: _ordered(operator.lt),
                ast.LtE: _ordered(operator.le),
                ast.Gt: _ordered(operator.gt),
                ast.GtE: _ordered(operator.ge),
            }
        )

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        # traits['plan'] of someone without a plan is None (as trait('plan') is), not an error.
        container = self._eval(node.value)
        key = self._eval(node.slice)
        try:
            return container[key]
        except (KeyError, IndexError, TypeError):
            return None


class Cohort:
    """A compiled `when` expression."""

    def __init__(self, expression: str) -> None:
        if len(expression) > MAX_EXPRESSION_CHARS:
            raise CohortError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
        self.expression = expression
        self._evaluator = _Evaluator()
        try:
            module = ast.parse(expression.strip())
        except SyntaxError as exc:
            where = f" at column {exc.offset}" if exc.offset else ""
            raise CohortError(f"not a valid expression ({exc.msg}{where})") from None
        if len(module.body) != 1 or not isinstance(module.body[0], ast.Expr):
            raise CohortError("should be one expression, such as order_count >= 2 and revenue_total > 100")
        self._parsed: ast.expr = module.body[0].value
        nodes = list(ast.walk(self._parsed))
        if any(isinstance(n, ast.Attribute) for n in nodes):
            raise CohortError("attribute access (a.b) is not allowed; use traits['name'] or trait('name')")
        unknown = sorted({n.id for n in nodes if isinstance(n, ast.Name)} - FACT_NAMES - FUNCTION_NAMES)
        if unknown:
            raise CohortError(
                f"unknown name(s) {', '.join(unknown)}; use: {', '.join(sorted(FACT_NAMES | FUNCTION_NAMES))}"
            )
        forbidden = sorted({type(n).__name__ for n in nodes if not isinstance(n, ALLOWED_NODES)})
        if forbidden:
            raise CohortError(f"not allowed in a cohort expression: {', '.join(forbidden)}")
        calls = [n.func for n in nodes if isinstance(n, ast.Call)]
        if any(not (isinstance(f, ast.Name) and f.id in FUNCTION_NAMES) for f in calls):
            raise CohortError(f"only these functions can be called: {', '.join(sorted(FUNCTION_NAMES))}")

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
    }


def validate_expression(expression: str) -> str | None:
    """The problem with an expression, or None (for `segcrit check`)."""
    try:
        Cohort(expression)
    except CohortError as exc:
        return str(exc)
    return None


def trait_names(expression: str) -> frozenset[str] | None:
    """The traits an expression reads (`traits['x']`, `trait('x')`); None when it may read any
    (a trait named by something other than a literal, or `traits` used as a whole)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return frozenset()
    names: set[str] = set()
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "traits":
            parent = parents.get(id(node))
            tested = _membership_name(parent, node)
            if tested is not None:  # `'x' in traits` reads one trait, as `traits['x']` does
                names.add(tested)
                continue
            if not (isinstance(parent, ast.Subscript) and parent.value is node):
                return None
            if not (isinstance(parent.slice, ast.Constant) and isinstance(parent.slice.value, str)):
                return None
            names.add(parent.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "trait":
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                return None
            names.add(first.value)
    return frozenset(names)


def _membership_name(node: ast.AST | None, traits: ast.Name) -> str | None:
    """'x' for `'x' in traits` / `'x' not in traits` (one literal name, traits on the right)."""
    if (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and isinstance(node.ops[0], ast.In | ast.NotIn)
        and node.comparators[0] is traits
        and isinstance(node.left, ast.Constant)
        and isinstance(node.left.value, str)
    ):
        return node.left.value
    return None


def refresh_cohort(store: ScheduledFlowStore, flow: LookalikeSeedFlow, refresh: RefreshTargets, now: float) -> str:
    """The `cohort:<audience>` job: put exactly the profiles `when` matches in the seed audience
    (memberships changed by difference, a page of profiles per unit of work) and record the
    wanted lookalike; returns its result."""
    cohort = Cohort(flow.when)
    size = added = removed = 0
    for page in store.facts_pages():
        changes = []
        for facts in page:
            member = cohort.matches(facts, now)
            size += member
            if member != (flow.audience in facts.audiences):
                changes.append((facts.profile_id, member))
        if not changes:
            continue
        with store.transaction() as tx:
            tx.ensure_audience(flow.audience, True)
            for profile_id, member in changes:
                tx.set_membership(profile_id, flow.audience, member, now)
                refresh(tx, profile_id, now)
        added += sum(1 for _, m in changes if m)
        removed += sum(1 for _, m in changes if not m)
    if flow.lookalike is not None:
        store.want_lookalike(flow.lookalike.name, flow.audience, flow.lookalike.target_size)
    return f"cohort {size} (+{added} -{removed})"
