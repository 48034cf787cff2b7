"""Tier 2: suppression, lifecycle, cohorts and lookalikes, end to end against the emulator.

Each test steps one or more segcrit "processes" (tests/flow_harness.py: store, Processor, Scheduler,
delivery workers) on the FakeClock the emulator also runs on: days pass with `clock.advance`, never
with a sleep. Assertions are about what a user sees in Criteo: the members of each segment, the
PATCH calls that put them there, and the lookalike segments.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from segcrit.clock import FakeClock
from segcrit.config import Config
from segcrit.emulator import EmulatorState
from segcrit.flows.lookalike_seed import Cohort
from segcrit.flows.suppression import suppression_key
from segcrit.scheduler import LEASE_SECS
from tests.e2e.conftest import wait_until
from tests.flow_harness import Process, Processes, Start, identify, order, track
from tests.helpers import audience_event, email_of, make_config, members, shas

DAY = 86_400.0


@pytest.fixture
def start(emulator_clock: FakeClock, emulator_url: str, harness_store: str | None) -> Iterator[Start]:
    processes = Processes(emulator_clock, harness_store)
    yield processes.start
    processes.close()


class ConfigWith(Protocol):
    def __call__(self, flows: str, extra: str = "") -> Config: ...


@pytest.fixture
def config_with(tmp_path: Path, emulator_url: str) -> ConfigWith:
    """The test config (tests/helpers.py: audience_sync, web and engage sources) plus `flows`."""

    def make(flows: str, extra: str = "") -> Config:
        return make_config(str(tmp_path / "segcrit.db"), api_url=emulator_url, flows=flows, extra=extra)

    return make


def enter(p: Process, user: str, *audiences: str, member: bool = True) -> None:
    p.send(*(audience_event(user, a, member, p.now(), email=email_of(user)) for a in audiences))


def patches(state: EmulatorState) -> list[tuple[str, str, frozenset[str]]]:
    """Every accepted contact-list PATCH as (segment name, operation, identifiers), in order."""
    names = {s.id: s.name for s in state.segments()}
    out = []
    for call in state.calls("contact-list-patch"):
        if call.status != 200:
            continue
        attributes = call.request["data"]["attributes"]
        segment_id = call.path.rstrip("/").split("/")[-2]
        out.append((names[segment_id], attributes["operation"], frozenset(attributes["identifiers"])))
    return out


def adjusted(p: Process, reason: str) -> float:
    return p.metrics.registry.get_sample_value("segcrit_events_adjusted_total", {"reason": reason}) or 0.0


# ------------------------------------------------------------------------------------ profile facts


SEED_ON_SCORE = """\
  - type: lookalike_seed
    audience: engaged
    when: "trait('engagement_score', 0) > 50 or 'beta' in traits"
"""


def test_profile_facts_count_each_order_once_and_keep_only_the_traits_cohorts_use(
    start: Start, config_with: ConfigWith
) -> None:
    p = start(config_with("  - type: conversions\n" + SEED_ON_SCORE))
    t0 = p.now()
    p.send(
        order("u1", "o-1", t0, revenue=100),
        order("u1", "o-1", t0 + 5, revenue=100),  # Segment delivered the same order again
        order("u1", "o-2", t0 + 60, total=50),  # no revenue: its total counts
        order("u1", "o-3", t0 + 120, revenue="12.50"),  # text: read as a number
        order("u1", "o-4", t0 + 180, revenue="a lot"),  # junk: the order counts, its revenue does not
        identify(
            "u1",
            t0 + 240,
            plan="pro",
            loyalty_tier="gold",
            name="Jane Doe",
            firstName="Jane",
            phone="+33 6 12 34 56 78",
            address={"city": "Paris"},
            age=41,
            engagement_score=72,  # named by the seed's `when`
            beta=True,
            nickname="JD",  # free text no cohort names: not kept
            mobile_phone="+33 6 99 88 77 66",
            notes="prefers calls on +33 6 12 34 56 78",
        ),
    )

    facts = p.store.profile_facts(p.profile_id("u1"))
    assert facts is not None
    assert (facts.order_count, facts.revenue_total) == (4, 162.5)
    assert (facts.first_order_at, facts.last_order_at) == (t0, t0 + 180)
    assert facts.traits == {"plan": "pro", "loyalty_tier": "gold", "engagement_score": 72, "beta": True}
    assert adjusted(p, "revenue_not_a_number") == 1  # the skipped revenue is counted, not silent
    # The cohort job reads the same facts, a page at a time.
    [paged] = [f for page in p.store.facts_pages() for f in page if f.profile_id == facts.profile_id]
    assert paged == facts
    assert Cohort("order_count == 4 and revenue_total == 162.5 and traits['plan'] == 'pro'").matches(paged, p.now())


def test_a_newer_identify_overwrites_a_trait_and_an_older_one_only_fills_gaps(
    start: Start, config_with: ConfigWith
) -> None:
    p = start(config_with(""))
    t0 = p.now()
    p.send(identify("u1", t0 + 10, plan="pro"))
    p.send(identify("u1", t0, plan="free", loyalty_tier="gold"))  # arrives late
    facts = p.store.profile_facts(p.profile_id("u1"))
    assert facts is not None and facts.traits == {"plan": "pro", "loyalty_tier": "gold"}


# ------------------------------------------------------------------------------------ suppression

SUPPRESSION = """\
  - type: suppression
    on: [Order Completed]
    remove_from: [cart, browse]
    add_to: buyers
    for_days: 30
"""


def test_an_order_suppresses_the_buyer_and_expiry_returns_them_where_they_still_belong(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with(SUPPRESSION, "audiences: {cart: {}, browse: {}}\n"))
    enter(p, "u1", "cart", "browse")
    enter(p, "u2", "cart")
    p.deliver()
    assert (members(emulator_state, "cart"), members(emulator_state, "browse")) == (shas("u1", "u2"), shas("u1"))

    ordered_at = p.now()
    p.send(order("u1", "o-1", ordered_at, revenue=20))
    p.deliver()
    assert members(emulator_state, "cart") == shas("u2")
    assert members(emulator_state, "browse") == set()
    assert members(emulator_state, "buyers") == shas("u1")
    assert p.store.suppressed_count(suppression_key(p.config.flows[1]), p.now()) == 1

    # While suppressed, Engage says u1 is back in cart (held back) and has left browse.
    sent_before = len(patches(emulator_state))
    p.clock.advance(DAY)
    enter(p, "u1", "cart", member=False)
    p.clock.advance(60)
    enter(p, "u1", "cart")
    enter(p, "u1", "browse", member=False)
    p.run_jobs()
    p.deliver()
    assert len(patches(emulator_state)) == sent_before  # nothing to send: u1 is held back
    assert members(emulator_state, "cart") == shas("u2")

    p.clock.advance(ordered_at + 30 * DAY + 60 - p.now())
    assert "suppression_expiry" in p.run_jobs()
    p.deliver()
    assert members(emulator_state, "cart") == shas("u1", "u2")  # still a member: back in
    assert members(emulator_state, "browse") == set()  # left meanwhile: stays out
    assert members(emulator_state, "buyers") == set()
    assert sorted(patches(emulator_state)[sent_before:]) == [
        ("buyers", "remove", frozenset(shas("u1"))),
        ("cart", "add", frozenset(shas("u1"))),
    ]
    assert p.store.suppressed_count(suppression_key(p.config.flows[1]), p.now()) == 0


def test_a_replayed_old_order_whose_suppression_is_over_suppresses_nothing(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with(SUPPRESSION, "audiences: {cart: {}, browse: {}}\n"))
    enter(p, "u1", "cart")
    p.deliver()
    p.send(order("u1", "o-old", p.now() - 31 * DAY, revenue=20))
    p.deliver()
    assert members(emulator_state, "cart") == shas("u1")
    assert members(emulator_state, "buyers") == set()


def test_remove_from_all_covers_every_audience_but_add_to(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    flows = "  - {type: suppression, on: [Order Completed], remove_from: all, add_to: buyers, for_days: 7}\n"
    p = start(config_with(flows))
    enter(p, "u1", "cart", "vip")
    enter(p, "u2", "vip")
    p.deliver()

    p.send(order("u1", "o-1", p.now(), revenue=20))
    p.deliver()
    assert members(emulator_state, "cart") == set()
    assert members(emulator_state, "vip") == shas("u2")
    assert members(emulator_state, "buyers") == shas("u1")  # add_to is not held back

    p.clock.advance(7 * DAY + 60)
    p.run_jobs()
    p.deliver()
    assert (members(emulator_state, "cart"), members(emulator_state, "vip")) == (shas("u1"), shas("u1", "u2"))
    assert members(emulator_state, "buyers") == set()


def test_two_suppressions_sharing_add_to_keep_the_person_in_it_until_both_are_over(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    flows = (
        "  - {type: suppression, on: [Order Completed], remove_from: [cart], add_to: buyers, for_days: 7}\n"
        "  - {type: suppression, on: [Subscription Started], remove_from: [cart], add_to: buyers, for_days: 30}\n"
    )
    p = start(config_with(flows, "audiences: {cart: {}}\n"))
    enter(p, "u1", "cart")
    p.send(order("u1", "o-1", p.now(), revenue=20), track("u1", "Subscription Started", p.now()))
    p.deliver()
    assert (members(emulator_state, "cart"), members(emulator_state, "buyers")) == (set(), shas("u1"))

    p.clock.advance(8 * DAY)  # the order's suppression is over, the subscription's is not
    p.run_jobs()
    p.deliver()
    assert (members(emulator_state, "cart"), members(emulator_state, "buyers")) == (set(), shas("u1"))

    p.clock.advance(23 * DAY)
    p.run_jobs()
    p.deliver()
    assert (members(emulator_state, "cart"), members(emulator_state, "buyers")) == (shas("u1"), set())


# ------------------------------------------------------------------------------------ lifecycle

LIFECYCLE = """\
  - type: lifecycle
    stages:
      Trial Started: trialists
      Subscription Started: subscribers
      Subscription Lapsed: lapsed
    dormant_after_days: 30
    dormant: dormant
"""


def test_lifecycle_stage_is_the_latest_event_by_timestamp_whatever_the_arrival_order(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with(LIFECYCLE))
    t0 = p.now()
    p.send(track("u1", "Subscription Lapsed", t0 + 20))  # arrives first, happened last
    p.send(track("u1", "Trial Started", t0), track("u1", "Subscription Started", t0 + 10))
    p.deliver()
    assert [s.name for s in emulator_state.segments()] == ["lapsed"]  # no other stage ever held u1
    assert members(emulator_state, "lapsed") == shas("u1")

    p.send(track("u2", "Trial Started", p.now()))
    p.deliver()
    p.send(track("u2", "Subscription Started", p.now()))
    p.deliver()
    assert members(emulator_state, "trialists") == set()
    assert members(emulator_state, "subscribers") == shas("u2")
    assert members(emulator_state, "lapsed") == shas("u1")


def test_people_unseen_for_dormant_after_days_move_to_dormant_and_come_back_with_a_new_stage(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with(LIFECYCLE))
    p.send(track("u1", "Subscription Started", p.now()))
    p.clock.advance(10 * DAY)
    p.send(track("u2", "Trial Started", p.now()))
    p.run_jobs()
    p.deliver()

    p.clock.advance(21 * DAY)  # u1 unseen for 31 days, u2 for 21
    assert "lifecycle_dormancy:1" in p.run_jobs()
    p.deliver()
    assert members(emulator_state, "dormant") == shas("u1")
    assert members(emulator_state, "subscribers") == set()
    assert members(emulator_state, "trialists") == shas("u2")

    p.send(track("u1", "Subscription Started", p.now()))
    p.deliver()
    assert (members(emulator_state, "dormant"), members(emulator_state, "subscribers")) == (set(), shas("u1"))


# ------------------------------------------------------------------------------------ cohorts and lookalikes

SEED = """\
  - type: lookalike_seed
    audience: high_value
    when: "(order_count >= 2 or revenue_total >= 500) and trait('plan') != 'churned'"
    every_minutes: 60
"""
LOOKALIKE = "    lookalike: {name: High value lookalike, target_size: 50000}\n"


def test_the_cohort_is_recomputed_every_interval_and_synced_as_a_difference(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with(SEED))
    t0 = p.now()
    p.send(
        order("u1", "o-1", t0, revenue=10),
        order("u1", "o-2", t0, revenue=20),
        order("u2", "o-3", t0, revenue=600),
        order("u3", "o-4", t0, revenue=10),
        identify("u2", t0, plan="pro"),
    )
    assert "cohort:high_value" in p.run_jobs()  # first at start
    p.deliver()
    assert members(emulator_state, "high_value") == shas("u1", "u2")
    assert patches(emulator_state) == [("high_value", "add", frozenset(shas("u1", "u2")))]

    p.send(order("u3", "o-5", p.now(), revenue=10), identify("u2", p.now(), plan="churned"))
    assert "cohort:high_value" not in p.run_jobs()  # not yet: every 60 minutes
    p.deliver()
    assert members(emulator_state, "high_value") == shas("u1", "u2")

    p.clock.advance(t0 + 3600 - p.now())
    assert "cohort:high_value" in p.run_jobs()
    p.deliver()
    assert members(emulator_state, "high_value") == shas("u1", "u3")
    # u3 in, u2 out, u1 untouched: two PATCH calls, no wipe and no resend of the whole cohort.
    assert sorted(patches(emulator_state)[1:]) == [
        ("high_value", "add", frozenset(shas("u3"))),
        ("high_value", "remove", frozenset(shas("u2"))),
    ]
    assert emulator_state.call_counts().get("contact-list-delete", 0) == 0
    job = p.store.job("cohort:high_value")
    assert job is not None and job.last_result == "cohort 2 (+1 -1)"


def test_the_lookalike_is_created_once_on_the_seed_and_never_again_across_restarts(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    config = config_with(SEED + LOOKALIKE)
    p = start(config)
    p.send(order("u1", "o-1", p.now(), revenue=10), order("u1", "o-2", p.now(), revenue=20))
    p.run_jobs()
    p.deliver()

    seed = emulator_state.segment("high_value")
    [lookalike] = [s for s in emulator_state.segments() if s.kind == "Lookalike"]
    assert (lookalike.name, lookalike.seed_segment_id, lookalike.target_size) == (
        "High value lookalike",
        seed.id,
        50000,
    )
    assert members(emulator_state, "high_value") == shas("u1")
    creates = emulator_state.call_counts()["create"]  # the seed list and the lookalike

    for restart in range(2):
        p.store.close()
        p = start(config)  # a new store, processor, scheduler and workers on the same file
        p.send(order(f"n{restart}", f"o-n{restart}", p.now(), revenue=900))
        p.clock.advance(3601)
        assert "cohort:high_value" in p.run_jobs()
        p.deliver()

    assert [s.id for s in emulator_state.segments() if s.kind == "Lookalike"] == [lookalike.id]
    assert emulator_state.call_counts()["create"] == creates
    record = p.store.lookalike("High value lookalike")
    assert record is not None and record.segment_id == lookalike.id
    assert members(emulator_state, "high_value") == shas("u1", "n0", "n1")


# ------------------------------------------------------------------------------------ the scheduler

JOBS = SUPPRESSION.replace("for_days: 30", "for_days: 0.1") + LIFECYCLE + SEED


def test_after_downtime_each_due_job_runs_once_and_catches_up_from_the_store(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with(JOBS, "audiences: {cart: {}, browse: {}}\n"))
    names = ["housekeeping", "suppression_expiry", "lifecycle_dormancy:2", "cohort:high_value"]
    assert sorted(p.run_jobs()) == sorted(names)
    enter(p, "u1", "cart")
    p.deliver()
    p.send(order("u1", "o-1", p.now(), revenue=20))  # suppressed for 0.1 day = 2.4 h
    p.deliver()
    assert members(emulator_state, "cart") == set()

    p.clock.advance(5 * 3600)  # the service was down for five hours
    now = p.now()
    assert sorted(p.run_jobs()) == sorted(names)  # each once, not once per missed interval
    assert p.run_jobs() == []
    for name in names:
        job = p.store.job(name)
        assert job is not None and job.last_run_at == now
        assert job.next_run_at == now + next(j.every_secs for j in p.scheduler.jobs if j.name == name)
    p.deliver()
    assert members(emulator_state, "cart") == shas("u1")  # the suppression that ended meanwhile


def test_a_job_whose_lease_another_process_holds_does_not_run_until_the_lease_expires(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    config = config_with(SEED)
    p = start(config, holder="host-a:1")
    p.send(order("u1", "o-1", p.now(), revenue=10), order("u1", "o-2", p.now(), revenue=20))
    # Another process is running the cohort job right now.
    assert p.store.try_lease("job:cohort:high_value", "host-b:2", p.now(), LEASE_SECS)

    ran = p.run_jobs()
    assert "cohort:high_value" not in ran and "housekeeping" in ran
    assert p.store.member_count("high_value") == 0
    job = p.store.job("cohort:high_value")
    assert job is not None and job.last_run_at is None

    p.clock.advance(LEASE_SECS + 1)  # that process died: its lease runs out and the job is taken over
    assert "cohort:high_value" in p.run_jobs()
    p.deliver()
    assert members(emulator_state, "high_value") == shas("u1")


def test_two_processes_on_one_store_run_each_job_once(start: Start, config_with: ConfigWith) -> None:
    config = config_with(SEED + SUPPRESSION, "audiences: {cart: {}, browse: {}}\n")
    a = start(config, holder="host-a:1")
    b = start(config, holder="host-b:2")
    assert sorted(a.run_jobs()) == ["cohort:high_value", "housekeeping", "suppression_expiry"]
    assert b.run_jobs() == []
    a.clock.advance(3600)
    assert sorted(b.run_jobs()) == ["cohort:high_value", "housekeeping", "suppression_expiry"]
    assert a.run_jobs() == []


def test_a_job_that_runs_longer_than_its_lease_keeps_it_renewed(start: Start, config_with: ConfigWith) -> None:
    config = config_with(SEED)
    a = start(config, holder="host-a:1")
    b = start(config, holder="host-b:2")
    running, finish = threading.Event(), threading.Event()

    def slow_cohort(now: float) -> str:
        running.set()
        assert finish.wait(30)
        return "done"

    a.scheduler.renew_every_secs = 0.01
    a.scheduler.jobs = [
        dataclasses.replace(j, run=slow_cohort) for j in a.scheduler.jobs if j.name.startswith("cohort")
    ]
    job = threading.Thread(target=a.scheduler.run_due, args=(a.now(),))
    job.start()
    try:
        assert running.wait(30)
        a.clock.advance(2 * LEASE_SECS)  # the cohort is still being computed two leases later
        wait_until(
            lambda: a.store.lease_holder("job:cohort:high_value", a.now()) == "host-a:1", 30, "the lease renewed"
        )
        assert "cohort:high_value" not in b.run_jobs()
    finally:
        finish.set()
        job.join(timeout=30)
    assert a.store.lease_holder("job:cohort:high_value", a.now()) is None  # released when the job ended
