"""Cohort expressions (`lookalike_seed.when`): who is in, with facts some people do not have."""

from __future__ import annotations

import pytest

from segcrit.domain import ProfileFacts
from segcrit.flows.lookalike_seed import DAY_SECS, Cohort, CohortError, trait_names

NOW = 1_800_000_000.0


def person(**facts: object) -> ProfileFacts:
    return ProfileFacts(profile_id=1, created_at=NOW - 100 * DAY_SECS, last_seen_at=NOW, **facts)  # type: ignore[arg-type]


NEVER_ORDERED = person()
BUYER = person(
    order_count=3, revenue_total=620.0, first_order_at=NOW - 200 * DAY_SECS, last_order_at=NOW - 95 * DAY_SECS
)


@pytest.mark.parametrize(
    ("expression", "never_ordered", "buyer"),
    [
        ("order_count >= 2 or revenue_total >= 500", False, True),
        ("days_since_last_order < 30", False, False),
        # A missing fact makes its comparison false, not the whole expression: the `or` still counts.
        ("days_since_last_order > 90 or order_count == 0", True, True),
        ("not (days_since_last_order < 30)", True, True),
        ("traits['plan'] == 'pro' or order_count > 2", False, True),
        ("trait('plan', 'free') == 'free'", True, False),
        ("'vip' in audiences and order_count > 0", False, True),
        ("in_audience('vip')", False, True),
        ("days_since(first_order_at) > 180", False, True),
        ("revenue_total / order_count > 200", False, True),  # no orders: division by zero is "not in"
    ],
)
def test_who_is_in_the_cohort(expression: str, never_ordered: bool, buyer: bool) -> None:
    cohort = Cohort(expression)
    vip_buyer = person(
        order_count=BUYER.order_count,
        revenue_total=BUYER.revenue_total,
        first_order_at=BUYER.first_order_at,
        last_order_at=BUYER.last_order_at,
        traits={"plan": "pro"},
        audiences=frozenset({"vip"}),
    )
    assert (cohort.matches(NEVER_ORDERED, NOW), cohort.matches(vip_buyer, NOW)) == (never_ordered, buyer)


def test_text_compared_with_a_number_is_not_in_rather_than_an_error() -> None:
    assert Cohort("trait('score') > 10 or order_count == 0").matches(person(traits={"score": "high"}), NOW)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "order_count.__class__",
        "(lambda: 1)()",
        "[a for a in audiences]",
        "order_count ** 999999",
        "x := 1",
        "order_count > 1; revenue_total > 1",
        "import os",
        "",
    ],
)
def test_anything_beyond_a_plain_expression_is_refused_up_front(expression: str) -> None:
    with pytest.raises(CohortError):
        Cohort(expression)


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("order_count >= 2", set()),
        ("traits['plan'] == 'pro' and trait('score', 0) > 3", {"plan", "score"}),
        ("'beta' in traits or 'alpha' not in traits", {"beta", "alpha"}),
        ("in_audience('vip') and traits['tier'] in ['gold', 'silver']", {"tier"}),
        ("not a valid expression (", set()),
        ("len(traits) > 3", None),  # reads them all: profiles keep the allowlisted ones only
    ],
)
def test_the_traits_an_expression_names_are_the_ones_profiles_keep(expression: str, names: set[str] | None) -> None:
    assert trait_names(expression) == names
