"""Tier-2 delivery: store + Processor + DeliveryWorker + CriteoClient against the emulator on loopback.

segcrit and the emulator share one FakeClock; the client's rate limiter "sleeps" by advancing it, and
the tests step the processor and the worker (`drain_once()`), so retries, rate-limit resets and token
lifetimes pass without waiting. Every test ends on what a user of segcrit cares about: the exact
members of each Criteo segment (`EmulatorState.members`) and the exact calls Criteo received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import httpx
import pytest

from segcrit.clock import FakeClock
from segcrit.config import Config
from segcrit.criteo.client import CriteoClient
from segcrit.criteo.constants import MAX_IDENTIFIERS_PER_CALL
from segcrit.delivery.backoff import Backoff
from segcrit.delivery.worker import DeliveryWorker
from segcrit.domain import TargetKey
from segcrit.emulator.state import (
    DEMO_ADVERTISER_ID,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    EmulatorState,
)
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.ratelimit import SlidingWindowLimiter
from segcrit.store.sqlite import SqliteStore
from tests.helpers import PinnedJitter, advancing, audience_event, email_of, email_sha, madid_of, make_config, put
from tests.helpers import shas as emails

MAX_WAIT_SECS = 2.0
TOKEN_REFRESH_AT_SECS = 840.0  # a 900 s token is replaced 60 s before it expires
OTHER_ADVERTISER_ID = "67890"


# ----------------------------------------------------------------------------------- identities


def madids(*users: str) -> set[str]:
    return {madid_of(u) for u in users}


# ------------------------------------------------------------------------------ the call log


class Patch(NamedTuple):
    """One contact-list PATCH as the emulator received it."""

    segment_id: str
    operation: str
    id_type: str
    identifiers: frozenset[str]
    status: int
    at: float


def patches(state: EmulatorState) -> list[Patch]:
    out = []
    for call in state.calls("contact-list-patch"):
        attributes = call.request["data"]["attributes"]
        segment_id = call.path.rstrip("/").split("/")[-2]  # .../audience-segments/{id}/contact-list
        out.append(
            Patch(
                segment_id,
                attributes["operation"],
                attributes["identifierType"],
                frozenset(attributes["identifiers"]),
                call.status,
                call.at,
            )
        )
    return out


def sent(state: EmulatorState) -> set[tuple[str, str, str, frozenset[str]]]:
    """The PATCH calls Criteo accepted: (segment, operation, type, identifiers)."""
    return {(p.segment_id, p.operation, p.id_type, p.identifiers) for p in patches(state) if p.status == 200}


def count(state: EmulatorState, endpoint: str) -> int:
    return state.call_counts().get(endpoint, 0)


# ---------------------------------------------------------------------------------- the harness


class Crash(Exception):
    """Stands for the process dying (kill -9) at the worst moment."""


class CrashingStore(SqliteStore):
    """A store whose next `ack_changes` dies before committing, once, when armed."""

    armed = False

    def ack_changes(self, keys: Iterable[TargetKey], add: bool, now: float) -> None:
        if self.armed:
            self.armed = False
            raise Crash("killed between the Criteo call and the commit of its acknowledgement")
        super().ack_changes(keys, add, now)


@dataclass
class Segcrit:
    """One segcrit process (store, processor, worker, Criteo client), stepped by the test."""

    store: SqliteStore
    config: Config
    clock: FakeClock
    loop: asyncio.AbstractEventLoop
    http: httpx.AsyncClient
    metrics: Metrics
    processor: Processor
    worker: DeliveryWorker

    def enter(self, user: str, *audiences: str, email: bool = True, madid: bool = True) -> None:
        self._events(user, audiences, True, email, madid)

    def exit(self, user: str, *audiences: str, email: bool = True, madid: bool = True) -> None:
        self._events(user, audiences, False, email, madid)

    def _events(self, user: str, audiences: Sequence[str], member: bool, email: bool, madid: bool) -> None:
        now = self.clock.now()
        messages = [
            audience_event(
                user,
                audience,
                member,
                now,
                email=email_of(user) if email else None,
                madid=madid_of(user) if madid else None,
            )
            for audience in audiences
        ]
        put(self.store, *messages, received_at=now)
        self.processor.drain()

    def drain(self, *, force: bool = False) -> int:
        return self.loop.run_until_complete(self.worker.drain_once(force=force))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def deliver(self) -> None:
        """Let the batch window pass, then drain."""
        self.advance(MAX_WAIT_SECS)
        self.drain()

    def settle(self, max_rounds: int = 10) -> None:
        """Drain, jumping the clock to the next moment something is due, until nothing is pending."""
        for _ in range(max_rounds):
            self.drain()
            if self.store.pending_count() == 0:
                return
            oldest = self.store.oldest_pending_since() or self.clock.now()
            due = max(self.store.next_change_at() or 0.0, oldest + MAX_WAIT_SECS)
            self.advance(max(0.0, due - self.clock.now()))
        raise AssertionError(f"changes still pending after {max_rounds} rounds")

    def pending(self) -> list[tuple[str, bool, int]]:
        """The pending changes as (identifier, add?, attempts), whenever they are due."""
        far = self.clock.now() + 10**9
        return sorted((c.key.id_value, c.add, c.attempts) for c in self.store.due_changes(far, 10**6))


class Start(Protocol):
    def __call__(
        self, extra: str = "", *, jitter: float = 1.0, store_class: type[SqliteStore] = SqliteStore
    ) -> Segcrit: ...


@pytest.fixture
def start(
    tmp_path: Path, emulator_url: str, emulator_state: EmulatorState, emulator_clock: FakeClock
) -> Iterator[Start]:
    """Start a segcrit "process" on tmp_path/segcrit.db; call again to restart one on the same file."""
    loop = asyncio.new_event_loop()
    running: list[Segcrit] = []
    db = str(tmp_path / "segcrit.db")

    def start_(extra: str = "", *, jitter: float = 1.0, store_class: type[SqliteStore] = SqliteStore) -> Segcrit:
        config = make_config(db, api_url=emulator_url, max_wait=MAX_WAIT_SECS, extra=extra)
        clock = emulator_clock
        metrics = Metrics()
        store = store_class(db)
        http = httpx.AsyncClient()
        limiter = SlidingWindowLimiter(config.criteo.rate_limit_per_minute, clock, advancing(clock))
        client = CriteoClient(config.criteo, http, limiter, clock, metrics)
        backoff = Backoff(config.delivery.backoff_initial_secs, config.delivery.backoff_max_secs, PinnedJitter(jitter))
        segcrit = Segcrit(
            store=store,
            config=config,
            clock=clock,
            loop=loop,
            http=http,
            metrics=metrics,
            processor=Processor(store, config, clock, metrics),
            worker=DeliveryWorker(store, config, client, clock, metrics, backoff),
        )
        running.append(segcrit)
        return segcrit

    yield start_
    for segcrit in running:
        loop.run_until_complete(segcrit.http.aclose())
        segcrit.store.close()
    loop.close()


# ---------------------------------------------------------------------------------------- tests


def test_enters_make_one_patch_per_segment_operation_and_type_and_segments_are_resolved_once(
    start: Start, emulator_state: EmulatorState
) -> None:
    segcrit = start()
    segcrit.enter("u1", "vip", "cart")
    segcrit.enter("u2", "vip")
    segcrit.enter("u3", "cart", madid=False)
    segcrit.deliver()

    vip, cart = emulator_state.segment("vip").id, emulator_state.segment("cart").id
    assert sent(emulator_state) == {
        (vip, "add", "email", frozenset(emails("u1", "u2"))),
        (vip, "add", "madid", frozenset(madids("u1", "u2"))),
        (cart, "add", "email", frozenset(emails("u1", "u3"))),
        (cart, "add", "madid", frozenset(madids("u1"))),
    }
    assert len(patches(emulator_state)) == 4
    # The exact request body Criteo receives (identifier order aside).
    [body] = [
        c.request
        for c in emulator_state.calls("contact-list-patch")
        if c.path.endswith(f"/{vip}/contact-list") and c.request["data"]["attributes"]["identifierType"] == "email"
    ]
    body["data"]["attributes"]["identifiers"].sort()
    assert body == {
        "data": {
            "type": "ContactlistAmendment",
            "attributes": {
                "operation": "add",
                "identifierType": "email",
                "identifiers": sorted(emails("u1", "u2")),
            },
        }
    }
    assert sorted((s.name, s.kind) for s in emulator_state.segments()) == [
        ("cart", "ContactList"),
        ("vip", "ContactList"),
    ]
    assert {k: count(emulator_state, k) for k in ("token", "search", "create")} == {
        "token": 1,
        "search": 2,
        "create": 2,
    }

    # Later rounds: removes and adds go to the known segments; nothing is searched or created again.
    for _ in range(3):
        segcrit.exit("u2", "vip")
        segcrit.enter("u4", "cart")
        segcrit.deliver()
        segcrit.enter("u2", "vip")
        segcrit.exit("u4", "cart")
        segcrit.deliver()
    segcrit.exit("u2", "vip")
    segcrit.enter("u4", "cart")
    segcrit.deliver()

    assert emulator_state.members("vip", "email") == emails("u1")
    assert emulator_state.members("vip", "madid") == madids("u1")
    assert emulator_state.members("cart", "email") == emails("u1", "u3", "u4")
    assert emulator_state.members("cart", "madid") == madids("u1", "u4")
    assert {k: count(emulator_state, k) for k in ("token", "search", "create")} == {
        "token": 1,
        "search": 2,
        "create": 2,
    }
    # 4 first + 7 rounds x 4 (vip email/madid, cart email/madid), every one accepted.
    assert [p.status for p in patches(emulator_state)] == [200] * (4 + 7 * 4)
    assert segcrit.store.acknowledged_members("vip") == {"email": emails("u1"), "madid": madids("u1")}
    assert segcrit.store.pending_count() == 0


def test_nothing_is_sent_before_max_wait_then_the_whole_batch(start: Start, emulator_state: EmulatorState) -> None:
    segcrit = start()
    segcrit.enter("u1", "vip", madid=False)
    segcrit.advance(MAX_WAIT_SECS - 0.25)
    segcrit.enter("u2", "vip", madid=False)

    assert segcrit.drain() == 0
    assert emulator_state.calls() == []  # not even a token call
    segcrit.advance(0.25)  # u1 has now waited max_wait: the batch goes, u2 with it
    segcrit.drain()

    assert sent(emulator_state) == {(emulator_state.segment("vip").id, "add", "email", frozenset(emails("u1", "u2")))}
    assert len(patches(emulator_state)) == 1
    assert emulator_state.members("vip", "email") == emails("u1", "u2")


def test_a_change_undone_inside_the_window_sends_nothing(start: Start, emulator_state: EmulatorState) -> None:
    segcrit = start()
    segcrit.enter("u1", "vip")
    segcrit.deliver()
    before = emulator_state.call_counts()

    segcrit.enter("u2", "vip")  # a new member who leaves again at once
    segcrit.exit("u1", "vip")  # a member who leaves and comes back
    segcrit.advance(1)
    segcrit.exit("u2", "vip")
    segcrit.enter("u1", "vip")
    for _ in range(5):
        segcrit.deliver()

    assert emulator_state.call_counts() == before
    assert emulator_state.members("vip", "email") == emails("u1")
    assert emulator_state.members("vip", "madid") == madids("u1")
    assert segcrit.store.pending_count() == 0


def test_60001_changes_to_one_audience_and_type_take_two_calls(start: Start, emulator_state: EmulatorState) -> None:
    total = MAX_IDENTIFIERS_PER_CALL + 10_001
    segcrit = start()
    values = [f"{i:064x}" for i in range(1, total + 1)]  # sha256-shaped, as segcrit sends emails
    with segcrit.store.transaction() as tx:
        for profile_id, value in enumerate(values, start=1):
            tx.set_targets(profile_id, {TargetKey("vip", "email", value)}, segcrit.clock.now())
    segcrit.deliver()

    sizes = sorted(len(p.identifiers) for p in patches(emulator_state))
    assert sizes == [10_001, MAX_IDENTIFIERS_PER_CALL]  # ceil(60,001 / 50,000) calls, none split further
    assert {p.status for p in patches(emulator_state)} == {200}
    assert emulator_state.members("vip", "email") == set(values)
    assert {k: count(emulator_state, k) for k in ("token", "search", "create")} == {
        "token": 1,
        "search": 1,
        "create": 1,
    }
    assert segcrit.store.pending_count() == 0


def test_server_errors_are_retried_after_backoff_and_counted_as_attempts(
    start: Start, emulator_state: EmulatorState
) -> None:
    segcrit = start(jitter=1.0)  # backoff at its cap: 1 s, then 2 s
    segcrit.enter("u1", "vip", madid=False)
    segcrit.deliver()
    emulator_state.set_faults("5xx_next=2,5xx_status=503")

    segcrit.enter("u2", "vip", madid=False)
    segcrit.deliver()
    failed_at = segcrit.clock.now()
    assert segcrit.pending() == [(email_sha("u2"), True, 1)]
    segcrit.advance(0.75)  # binary fractions: exact sums on a clock near 1.8e9
    segcrit.drain()  # not yet: the backoff is 1 s
    assert len(patches(emulator_state)) == 2

    segcrit.advance(0.25)
    segcrit.drain()
    assert segcrit.pending() == [(email_sha("u2"), True, 2)]
    segcrit.advance(1.75)
    segcrit.drain()  # the second backoff is 2 s
    assert len(patches(emulator_state)) == 3
    segcrit.advance(0.25)
    segcrit.drain()

    vip = emulator_state.segment("vip").id
    assert [(p.status, p.at - failed_at) for p in patches(emulator_state)[1:]] == [
        (503, 0.0),
        (503, pytest.approx(1.0)),
        (200, pytest.approx(3.0)),
    ]
    assert sent(emulator_state) >= {(vip, "add", "email", frozenset(emails("u2")))}
    assert emulator_state.members("vip", "email") == emails("u1", "u2")
    assert segcrit.pending() == []
    assert segcrit.store.dead_letters() == []
    assert segcrit.metrics.criteo_calls.labels(endpoint="contact_list_patch", status="503")._value.get() == 2


def test_a_429_burst_defers_delivery_until_the_announced_reset(start: Start, emulator_state: EmulatorState) -> None:
    segcrit = start(jitter=0.0)  # no backoff of our own: only Criteo's x-ratelimit-reset decides
    segcrit.enter("u1", "vip", madid=False)
    segcrit.deliver()
    emulator_state.set_faults("429_burst=2")  # each answered with x-ratelimit-reset = now + 1 s

    segcrit.enter("u2", "vip", madid=False)
    segcrit.deliver()
    first_429 = segcrit.clock.now()
    for _ in range(3):
        segcrit.advance(0.25)  # binary fractions: exact sums on a clock near 1.8e9
        segcrit.drain()  # before the reset: nothing leaves
    assert len(patches(emulator_state)) == 2
    segcrit.advance(0.25)
    segcrit.drain()  # at the reset: tried again, 429 again
    segcrit.advance(0.5)
    segcrit.drain()
    segcrit.advance(0.5)
    segcrit.drain()

    assert [(p.status, p.at - first_429) for p in patches(emulator_state)[1:]] == [
        (429, 0.0),
        (429, pytest.approx(1.0)),
        (200, pytest.approx(2.0)),
    ]
    assert emulator_state.members("vip", "email") == emails("u1", "u2")
    assert segcrit.store.dead_letters() == []
    assert segcrit.pending() == []


def test_a_429_from_a_shared_quota_waits_for_the_window_to_reset(start: Start, emulator_state: EmulatorState) -> None:
    segcrit = start(jitter=0.0)
    segcrit.enter("u1", "vip", madid=False)
    segcrit.deliver()  # token, search, create, PATCH: 4 calls in this minute
    window_start = emulator_state.calls()[0].at
    emulator_state.rate_limit_per_minute = 4  # the rest of the budget went to another process

    segcrit.enter("u2", "vip", madid=False)
    segcrit.deliver()
    assert [p.status for p in patches(emulator_state)] == [200, 429]
    segcrit.advance(30)
    segcrit.drain()
    assert len(patches(emulator_state)) == 2  # deferred to the reset, not to a 1 s backoff
    segcrit.settle()

    last = patches(emulator_state)[-1]
    assert last.status == 200 and last.at == pytest.approx(window_start + 60)
    assert emulator_state.members("vip", "email") == emails("u1", "u2")
    assert count(emulator_state, "token") == 1
    assert segcrit.store.dead_letters() == []


@pytest.mark.parametrize("failure", ["revoked", "expired early"])
def test_a_rejected_token_is_replaced_once_and_the_change_delivered(
    start: Start, emulator_state: EmulatorState, failure: str
) -> None:
    if failure == "expired early":
        # Tokens announce 900 s but stop working after 300 s (a Criteo hiccup).
        emulator_state.set_faults("token_ttl=300")
    segcrit = start()
    segcrit.enter("u1", "vip", madid=False)
    segcrit.deliver()
    if failure == "revoked":
        emulator_state.revoke_tokens()
    else:
        segcrit.advance(400)

    segcrit.enter("u2", "vip", madid=False)
    segcrit.deliver()

    assert [p.status for p in patches(emulator_state)] == [200, 401, 200]  # retried at once
    assert count(emulator_state, "token") == 2
    assert emulator_state.members("vip", "email") == emails("u1", "u2")
    assert segcrit.store.dead_letters() == []
    assert segcrit.pending() == []


@pytest.mark.parametrize("replacement", ["recreated by segcrit", "made again by hand in Criteo"])
def test_a_deleted_segment_is_re_resolved_and_gets_the_whole_membership(
    start: Start, emulator_state: EmulatorState, replacement: str
) -> None:
    segcrit = start()
    for user in ("u1", "u2", "u3"):
        segcrit.enter(user, "vip")
    segcrit.deliver()
    segcrit.exit("u3", "vip")
    segcrit.deliver()
    old = emulator_state.segment("vip").id
    assert emulator_state.members(old) == emails("u1", "u2") | madids("u1", "u2")

    emulator_state.delete_segment(old)
    if replacement == "made again by hand in Criteo":
        emulator_state.create_segment("vip")
    segcrit.enter("u4", "vip")
    segcrit.settle()

    new = emulator_state.segment("vip").id
    assert new != old
    assert emulator_state.members(new, "email") == emails("u1", "u2", "u4")
    assert emulator_state.members(new, "madid") == madids("u1", "u2", "u4")
    # Not only u4's change: the whole membership, in one call per identifier type.
    assert {(op, kind, ids) for s, op, kind, ids in sent(emulator_state) if s == new} == {
        ("add", "email", frozenset(emails("u1", "u2", "u4"))),
        ("add", "madid", frozenset(madids("u1", "u2", "u4"))),
    }
    assert len([p for p in patches(emulator_state) if p.segment_id == new]) == 2
    assert [p.status for p in patches(emulator_state) if p.segment_id == old][-1] == 404
    assert count(emulator_state, "search") == 2  # the first resolution and the re-resolution
    assert count(emulator_state, "create") == (2 if replacement == "recreated by segcrit" else 1)
    assert segcrit.store.acknowledged_members("vip") == {
        "email": emails("u1", "u2", "u4"),
        "madid": madids("u1", "u2", "u4"),
    }
    assert segcrit.store.dead_letters() == []


@dataclass(frozen=True)
class Rejection:
    """A segment the user configured that Criteo refuses, and how the user then fixes it."""

    name: str
    status: int
    code: str
    detail: str


FORBIDDEN = Rejection("another advertiser's segment", 403, "forbidden", "belongs to another advertiser")
OUT_OF_RANGE = Rejection("a segment id that cannot exist", 400, "invalid", "is not an int32")


@pytest.mark.parametrize("rejection", [FORBIDDEN, OUT_OF_RANGE], ids=lambda r: r.name)
def test_a_rejected_batch_is_dead_lettered_with_criteos_error_and_replayed_once_fixed(
    start: Start, emulator_state: EmulatorState, rejection: Rejection
) -> None:
    owner = OTHER_ADVERTISER_ID if rejection is FORBIDDEN else DEMO_ADVERTISER_ID
    partner = emulator_state.create_segment("partner list", advertiser_id=owner)
    configured = partner if rejection is FORBIDDEN else "9999999999"  # else: a mistyped id
    segcrit = start(f"audiences:\n  partners: {{segment_id: '{configured}'}}\n")
    segcrit.enter("u1", "partners", "vip", madid=False)
    segcrit.enter("u2", "vip", madid=False)
    segcrit.deliver()

    [letter] = segcrit.store.dead_letters()
    assert (letter.audience, letter.operation, letter.id_type, letter.count, letter.status) == (
        "partners",
        "add",
        "email",
        1,
        rejection.status,
    )
    assert f'"code":"{rejection.code}"' in letter.error and rejection.detail in letter.error
    assert segcrit.metrics.dead_lettered.labels("criteo_rejected")._value.get() == 1
    assert emulator_state.members("vip", "email") == emails("u1", "u2")

    segcrit.enter("u3", "vip", madid=False)  # other audiences keep flowing
    segcrit.deliver()
    assert emulator_state.members("vip", "email") == emails("u1", "u2", "u3")
    assert [p.status for p in patches(emulator_state)].count(rejection.status) == 1  # never retried

    if rejection is FORBIDDEN:  # the other advertiser grants segcrit's Criteo app access
        emulator_state.add_client(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, [DEMO_ADVERTISER_ID, OTHER_ADVERTISER_ID])
    else:  # the user corrects the id and restarts segcrit
        segcrit.store.close()
        segcrit = start(f"audiences:\n  partners: {{segment_id: '{partner}'}}\n")
    assert segcrit.store.replay_dead_letters(None, segcrit.clock.now()) == 1
    segcrit.settle()

    assert emulator_state.members(partner, "email") == emails("u1")
    assert emulator_state.members("vip", "email") == emails("u1", "u2", "u3")
    assert segcrit.store.dead_letters() == []
    [replayed] = segcrit.store.dead_letters(include_replayed=True)
    assert replayed.replayed_at is not None
    assert segcrit.store.acknowledged_members("partners") == {"email": emails("u1")}


def test_a_configured_segment_deleted_in_criteo_is_dead_lettered_not_recreated(
    start: Start, emulator_state: EmulatorState
) -> None:
    ours = emulator_state.create_segment("partner list")
    segcrit = start(f"audiences:\n  partners: {{segment_id: '{ours}'}}\n")
    segcrit.enter("u1", "partners")
    segcrit.enter("u2", "partners")
    segcrit.deliver()
    emulator_state.delete_segment(ours)

    segcrit.exit("u2", "partners")
    segcrit.enter("u3", "partners")
    segcrit.deliver()

    # The user named the segment by id: segcrit cannot make one with that id, so it neither searches
    # nor creates; every pending change waits in a dead letter that names the setting to fix.
    assert (count(emulator_state, "search"), count(emulator_state, "create")) == (0, 0)
    letters = segcrit.store.dead_letters()
    assert sorted((d.operation, d.id_type, d.count, d.status) for d in letters) == [
        ("add", "email", 1, 404),
        ("add", "madid", 1, 404),
        ("remove", "email", 1, 404),
        ("remove", "madid", 1, 404),
    ]
    assert all(d.error.startswith("audiences.partners.segment_id: ") for d in letters)
    assert [p.status for p in patches(emulator_state)].count(404) == 1
    assert segcrit.pending() == []


def test_a_day_of_failures_ends_in_a_dead_letter_that_replay_delivers(
    start: Start, emulator_state: EmulatorState
) -> None:
    segcrit = start()
    segcrit.enter("u1", "vip", madid=False)
    segcrit.deliver()
    emulator_state.set_faults("5xx=1")  # Criteo down

    segcrit.enter("u2", "vip", madid=False)
    segcrit.deliver()
    segcrit.advance(23.9 * 3600)
    segcrit.enter("u3", "vip", madid=False)  # late in the outage, it joins u2's failing batch
    segcrit.drain()
    assert segcrit.store.dead_letters() == []  # still inside the 24 h retry window
    assert segcrit.pending() == sorted([(email_sha("u2"), True, 2), (email_sha("u3"), True, 1)])
    segcrit.advance(0.2 * 3600)
    segcrit.drain()

    [letter] = segcrit.store.dead_letters()
    assert (letter.audience, letter.operation, letter.id_type, letter.count, letter.status) == (
        "vip",
        "add",
        "email",
        1,
        500,
    )
    assert letter.error.startswith("retry window exhausted")
    assert segcrit.metrics.dead_lettered.labels("retry_window")._value.get() == 1
    assert segcrit.pending() == [(email_sha("u3"), True, 2)]  # u3's own window has barely begun
    [stats] = segcrit.store.audience_stats()
    assert (stats.desired, stats.acknowledged, stats.pending, stats.dead) == (3, 1, 1, 1)  # kept, not dropped
    assert emulator_state.members("vip", "email") == emails("u1")

    emulator_state.set_faults(None)  # Criteo is back: u3 goes by itself, u2 when the operator replays
    segcrit.settle()
    assert emulator_state.members("vip", "email") == emails("u1", "u3")
    assert segcrit.store.replay_dead_letters("vip", segcrit.clock.now()) == 1
    segcrit.settle()
    assert emulator_state.members("vip", "email") == emails("u1", "u2", "u3")
    assert segcrit.store.dead_letters() == []


def test_a_crash_between_the_call_and_its_commit_resends_and_converges(
    start: Start, emulator_state: EmulatorState
) -> None:
    first = start(store_class=CrashingStore)
    assert isinstance(first.store, CrashingStore)
    first.enter("u1", "vip", madid=False)
    first.enter("u2", "vip", madid=False)
    first.deliver()
    first.exit("u2", "vip", madid=False)
    first.enter("u3", "vip", madid=False)

    first.store.armed = True
    with pytest.raises(Crash):
        first.deliver()
    reached_criteo = patches(emulator_state)[-1]
    assert reached_criteo.status == 200  # Criteo applied it; segcrit never recorded that
    first.store.close()

    second = start()  # a new process on the same database file
    second.settle()

    vip = emulator_state.segment("vip").id
    assert emulator_state.members("vip", "email") == emails("u1", "u3")
    assert emulator_state.segments() == [emulator_state.segment(vip)]
    resent = [p for p in patches(emulator_state) if p.identifiers == reached_criteo.identifiers]
    assert len(resent) == 2 and {p.operation for p in resent} == {reached_criteo.operation}
    assert second.store.acknowledged_members("vip") == {"email": emails("u1", "u3")}
    assert second.store.dead_letters() == []
    assert count(emulator_state, "search") == 1  # the segment id survived the crash in the store


def test_one_token_call_per_token_lifetime(start: Start, emulator_state: EmulatorState) -> None:
    segcrit = start()
    segcrit.enter("u0", "vip", madid=False)
    segcrit.deliver()
    fetched_at = emulator_state.calls("token")[0].at
    users = ["u0"]
    while segcrit.clock.now() + 40 < fetched_at + TOKEN_REFRESH_AT_SECS:  # ~20 rounds inside one life
        users.append(f"u{len(users)}")
        segcrit.enter(users[-1], "vip", madid=False)
        segcrit.advance(40 - MAX_WAIT_SECS)
        segcrit.deliver()
    assert len(patches(emulator_state)) == len(users) >= 20
    assert count(emulator_state, "token") == 1

    segcrit.advance(fetched_at + TOKEN_REFRESH_AT_SECS - segcrit.clock.now())
    users.append("late")
    segcrit.enter("late", "vip", madid=False)
    segcrit.deliver()

    assert count(emulator_state, "token") == 2  # renewed 60 s ahead of expiry ...
    assert 401 not in {c.status for c in emulator_state.calls()}  # ... so Criteo never refused one
    assert emulator_state.members("vip", "email") == emails(*users)
