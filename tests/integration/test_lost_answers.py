"""Tier 2: calls whose answer is lost (SPEC §1, Uncertain calls; §7), against the emulator.

The emulator's `apply_then_500` fault carries a call out and then answers it with a 500, as when
Criteo applies a change and its gateway fails afterwards. segcrit cannot tell that from a call that
failed before doing anything, so what the call may have changed counts as unknown until an
answered call settles it; when the person's desired state moves meanwhile, the corrective
operation is sent. Every test flips membership (leave, return, consent, deletion) while the retry
waits, and ends on the exact members Criteo holds and the exact calls that put them there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import pytest

from segcrit.clock import FakeClock
from segcrit.config import Config
from segcrit.domain import TargetKey
from segcrit.emulator import EmulatorState
from tests.flow_harness import DELIVERY_STEP_SECS, Process, Processes, Start, order, track
from tests.helpers import audience_event, email_of, email_sha, iso, make_config, members, shas

AUDIENCE = "vip"


class Crash(Exception):
    """Stands for the process dying (kill -9) at the worst moment."""


@pytest.fixture
def start(emulator_clock: FakeClock, emulator_url: str, harness_store: str | None) -> Iterator[Start]:
    processes = Processes(emulator_clock, harness_store)
    yield processes.start
    processes.close()


class ConfigWith(Protocol):
    def __call__(self, flows: str = "") -> Config: ...


@pytest.fixture
def config_with(tmp_path: Path, emulator_url: str) -> ConfigWith:
    def make(flows: str = "") -> Config:
        return make_config(str(tmp_path / "segcrit.db"), api_url=emulator_url, flows=flows)

    return make


class Patch(NamedTuple):
    operation: str
    identifiers: frozenset[str]
    status: int


def patches(state: EmulatorState) -> list[Patch]:
    """Every contact-list PATCH Criteo received, answered or not, in order."""
    out = []
    for call in state.calls("contact-list-patch"):
        attributes = call.request["data"]["attributes"]
        out.append(Patch(attributes["operation"], frozenset(attributes["identifiers"]), call.status))
    return out


def enter(p: Process, user: str, member: bool = True, **context: Any) -> None:
    p.send(audience_event(user, AUDIENCE, member, p.now(), email=email_of(user), **context))


def leave(p: Process, user: str) -> None:
    enter(p, user, member=False)


def one_round(p: Process) -> int:
    """One delivery round after the batch window: the first call goes, a retry waits its backoff."""
    p.clock.advance(DELIVERY_STEP_SECS)
    return p.loop.run_until_complete(p.workers.drain_once())


def with_members(p: Process, emulator_state: EmulatorState, *users: str) -> list[Patch]:
    """u0 (and `users`) in the audience and its segment made, before any fault: the calls so far."""
    for user in ("u0", *users):
        enter(p, user)
    p.deliver()
    assert members(emulator_state, AUDIENCE) == shas("u0", *users)
    return patches(emulator_state)


def add_lost(p: Process, emulator_state: EmulatorState, user: str = "u1") -> None:
    """The user enters; Criteo adds them but the answer is a 500."""
    emulator_state.set_faults("apply_then_500=1")
    enter(p, user)
    assert one_round(p) == 1
    assert patches(emulator_state)[-1] == Patch("add", frozenset(shas(user)), 500)
    assert email_sha(user) in members(emulator_state, AUDIENCE)  # Criteo did it all the same
    assert p.store.pending_count() == 1  # not settled: segcrit cannot know that


# ------------------------------------------------------------------------------- contact lists


def test_a_lost_add_then_a_leave_sends_the_remove(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with())
    before = with_members(p, emulator_state)
    add_lost(p, emulator_state)

    leave(p, "u1")  # while the retry waits
    p.deliver()

    assert members(emulator_state, AUDIENCE) == shas("u0")
    assert patches(emulator_state)[len(before) :] == [
        Patch("add", frozenset(shas("u1")), 500),
        Patch("remove", frozenset(shas("u1")), 200),
    ]
    assert p.store.acknowledged_members(AUDIENCE) == {"email": shas("u0")}
    assert p.store.pending_count() == 0


def test_a_lost_remove_then_a_return_sends_the_add(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with())
    before = with_members(p, emulator_state, "u1")
    emulator_state.set_faults("apply_then_500=1")
    leave(p, "u1")
    one_round(p)
    assert members(emulator_state, AUDIENCE) == shas("u0")  # removed, though the answer was lost

    enter(p, "u1")  # back before the retry: desired and acknowledged agree again, yet Criteo lacks u1
    p.deliver()

    assert members(emulator_state, AUDIENCE) == shas("u0", "u1")
    assert patches(emulator_state)[len(before) :] == [
        Patch("remove", frozenset(shas("u1")), 500),
        Patch("add", frozenset(shas("u1")), 200),
    ]
    assert p.store.acknowledged_members(AUDIENCE) == {"email": shas("u0", "u1")}


def test_a_lost_add_then_consent_withdrawn_removes_the_person(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with())
    before = with_members(p, emulator_state)
    add_lost(p, emulator_state)

    enter(p, "u1", consent=False)  # still a member, but no consent: nothing may stay at Criteo
    p.deliver()

    assert members(emulator_state, AUDIENCE) == shas("u0")
    assert patches(emulator_state)[len(before) :][-1] == Patch("remove", frozenset(shas("u1")), 200)
    assert p.store.pending_count() == 0


@pytest.mark.parametrize("how", ["delete message", "segcrit forget"])
def test_a_lost_add_then_the_person_erased_removes_them(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState, how: str
) -> None:
    p = start(config_with())
    before = with_members(p, emulator_state)
    add_lost(p, emulator_state)

    if how == "delete message":
        p.send({"type": "delete", "userId": "u1", "messageId": "del-u1", "timestamp": iso(p.now())})
    else:
        assert p.processor.forget("u1") == 1
    p.deliver()

    assert members(emulator_state, AUDIENCE) == shas("u0")
    assert patches(emulator_state)[len(before) :][-1] == Patch("remove", frozenset(shas("u1")), 200)
    assert p.store.pending_count() == 0
    assert p.store.audience_stats()[0].desired == 1  # only u0 is left, the erased person's row is gone


def test_a_lost_add_with_nothing_changed_is_resent_once(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with())
    before = with_members(p, emulator_state)
    add_lost(p, emulator_state)

    p.deliver()

    assert members(emulator_state, AUDIENCE) == shas("u0", "u1")
    assert patches(emulator_state)[len(before) :] == [
        Patch("add", frozenset(shas("u1")), 500),
        Patch("add", frozenset(shas("u1")), 200),
    ]
    assert p.store.acknowledged_members(AUDIENCE) == {"email": shas("u0", "u1")}
    p.clock.advance(3600)
    assert p.deliver() == 0  # settled: nothing more, ever


@pytest.mark.parametrize(
    ("fault", "corrective_calls"),
    [
        ("429_burst=1", 0),  # refused before it ran: Criteo surely lacks u1, nothing to correct
        ("5xx_next=1", 1),  # a 500 that did nothing looks like a lost answer: one remove, to be safe
    ],
)
def test_a_refused_add_is_not_taken_for_a_lost_one(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState, fault: str, corrective_calls: int
) -> None:
    p = start(config_with())
    before = with_members(p, emulator_state)
    emulator_state.set_faults(fault)
    enter(p, "u1")
    one_round(p)
    assert members(emulator_state, AUDIENCE) == shas("u0")

    leave(p, "u1")
    p.deliver()

    assert members(emulator_state, AUDIENCE) == shas("u0")
    later = patches(emulator_state)[len(before) + 1 :]
    assert later == [Patch("remove", frozenset(shas("u1")), 200)] * corrective_calls
    assert p.store.pending_count() == 0


@pytest.mark.parametrize("moment", ["after the call, before its acknowledgement", "after the claim, before the call"])
def test_a_crash_while_a_call_is_in_flight_converges_after_restart(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState, moment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_with()
    p = start(config)
    before = with_members(p, emulator_state)
    enter(p, "u1")

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash(moment)

    if moment.startswith("after the call"):
        monkeypatch.setattr(p.store, "ack_changes", crash)
    else:
        monkeypatch.setattr(p.workers.contacts.client, "patch_contact_list", crash)
    with pytest.raises(Crash):
        one_round(p)
    sent = patches(emulator_state)[len(before) :]
    assert sent == ([Patch("add", frozenset(shas("u1")), 200)] if moment.startswith("after the call") else [])
    p.store.close()  # the process is gone: its worker and its connection with it

    p = start(config)  # a new process on the same file
    leave(p, "u1")  # and the person leaves before anything was settled
    p.deliver()

    assert members(emulator_state, AUDIENCE) == shas("u0")
    assert patches(emulator_state)[len(before) + len(sent) :] == [Patch("remove", frozenset(shas("u1")), 200)]
    assert p.store.acknowledged_members(AUDIENCE) == {"email": shas("u0")}
    assert p.store.pending_count() == 0


def test_a_crash_in_flight_then_nothing_changed_resends_the_same_add(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_with()
    p = start(config)
    before = with_members(p, emulator_state)
    enter(p, "u1")

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash("after the call, before its acknowledgement")

    monkeypatch.setattr(p.store, "ack_changes", crash)
    with pytest.raises(Crash):
        one_round(p)
    p.store.close()

    p = start(config)
    p.deliver()

    assert members(emulator_state, AUDIENCE) == shas("u0", "u1")
    assert patches(emulator_state)[len(before) :] == [Patch("add", frozenset(shas("u1")), 200)] * 2
    assert p.store.acknowledged_members(AUDIENCE) == {"email": shas("u0", "u1")}


def test_an_unknown_change_is_not_lost_when_its_segment_is_re_resolved(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with())
    with_members(p, emulator_state)
    add_lost(p, emulator_state)
    old = emulator_state.segment(AUDIENCE).id
    emulator_state.delete_segment(old)  # the retry meets a 404: the new segment gets everyone

    leave(p, "u0")
    p.deliver()

    assert emulator_state.segment(AUDIENCE).id != old
    assert members(emulator_state, AUDIENCE) == shas("u1")
    assert p.store.acknowledged_members(AUDIENCE) == {"email": shas("u1")}
    assert p.store.pending_count() == 0


# ------------------------------------------------------------------------------------ segments

SEED = """\
  - type: lookalike_seed
    audience: high_value
    when: "order_count >= 1"
    every_minutes: 60
    lookalike: {name: High value lookalike, target_size: 50000}
"""


def test_a_segment_create_whose_answer_is_lost_is_found_not_made_twice(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with())
    emulator_state.set_faults("apply_then_500=1")
    enter(p, "u1")
    p.deliver()

    [segment] = emulator_state.segments()
    assert (segment.name, segment.kind) == (AUDIENCE, "ContactList")
    assert [c.status for c in emulator_state.calls("create")] == [500]  # made, answered 500, never again
    assert emulator_state.call_counts()["search"] == 2  # before the create, and before trying again
    assert members(emulator_state, AUDIENCE) == shas("u1")
    record = p.store.audience(AUDIENCE)
    assert record is not None and record.segment_id == segment.id


def test_a_lookalike_create_whose_answer_is_lost_is_found_not_made_twice(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    seed = emulator_state.create_segment("high_value")  # so that the first change Criteo makes is the lookalike
    p = start(config_with(SEED))
    p.send(order("u1", "o-1", p.now()))
    p.run_jobs()
    emulator_state.set_faults("apply_then_500=1")
    p.deliver()

    [lookalike] = [s for s in emulator_state.segments() if s.kind == "Lookalike"]
    assert (lookalike.name, lookalike.seed_segment_id) == ("High value lookalike", seed)
    assert [c.status for c in emulator_state.calls("create")] == [500]
    record = p.store.lookalike("High value lookalike")
    assert record is not None and record.segment_id == lookalike.id
    assert members(emulator_state, "high_value") == shas("u1")


# ------------------------------------------------------------------------------ Events API, catalog

CATALOG = """\
  - type: catalog
    merchant_id: "6789"
    max_wait_secs: 2
"""
COMMERCE = "  - type: conversions\n  - type: product_signals\n" + CATALOG


def test_an_events_document_whose_answer_is_lost_is_resent_with_the_same_event_ids(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    p = start(config_with(COMMERCE))
    t = p.now()
    viewed = track("u1", "Product Viewed", t, product_id="P1", name="Shoe", price=40, currency="EUR")
    bought = order("u1", "o-1", t + 1, revenue=40, products=[{"product_id": "P1", "price": 40, "quantity": 1}])
    p.send({**viewed, "messageId": "m-view"}, {**bought, "messageId": "m-order"})
    emulator_state.set_faults("apply_then_500=1")
    p.deliver()

    first, second = emulator_state.event_documents()  # Criteo kept the first though it answered 500
    assert [c.status for c in emulator_state.calls("events")] == [500, 200]
    assert first == second
    assert [(e["event"], e["id"]) for e in first["events"]] == [("viewItem", "m-view"), ("trackTransaction", "o-1")]
    # At least once: Criteo received the order twice, and counts it once by its id.
    assert len(emulator_state.events("trackTransaction")) == 2
    assert list(emulator_state.transactions()) == [("6789", "o-1")]
    assert p.store.pending_event_count() == 0


def test_a_catalog_batch_whose_answer_is_lost_is_sent_again_and_the_catalog_is_exact(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    emulator_state.catalog_report_polls = 0
    p = start(config_with(CATALOG))  # no Events API: the one call that changes something is the batch
    viewed = track(
        "u1",
        "Product Viewed",
        p.now(),
        product_id="P1",
        name="Trail shoe",
        price=40,
        currency="EUR",
        url="https://shop.example/p/1",
        image_url="https://shop.example/p/1.jpg",
    )
    p.send(viewed)
    p.deliver()
    emulator_state.set_faults("apply_then_500=1")
    p.send({**viewed, "properties": {**viewed["properties"], "price": 35}})
    p.deliver()

    assert [c.status for c in emulator_state.calls("catalog-batch")][-2:] == [500, 202]
    assert emulator_state.catalog("6789")["P1"]["price"] == {"currency": "EUR", "value": "35.00"}
    assert p.store.catalog_stats().pending == 0


def test_status_counts_an_unknown_change_as_pending(
    start: Start, config_with: ConfigWith, emulator_state: EmulatorState
) -> None:
    """What `segcrit status` and /metrics see while an answer is lost: the change is pending."""
    p = start(config_with())
    with_members(p, emulator_state)
    add_lost(p, emulator_state)
    leave(p, "u1")

    [stats] = p.store.audience_stats()
    assert (stats.desired, stats.acknowledged, stats.pending, stats.dead) == (1, 1, 1, 0)
    profile_id = p.profile_id("u1")
    with p.store.transaction() as tx:
        assert tx.pending_of_profile(profile_id) == [(TargetKey(AUDIENCE, "email", email_sha("u1")), False)]
