"""Tier 2: enrichment end to end against real sources and the emulator, on one FakeClock.

A "process" (tests/flow_harness.py: store, Processor, Scheduler, delivery workers) plus the
enrichment worker, stepped by hand: `lookup()` runs one round of lookups, `settle()` runs
lookups, processing and delivery until nothing moves. The CRM is a real SQLite database file;
Segment's Profile API is the emulator's, over HTTP on loopback. Assertions are about what a user
sees: the identifiers Criteo holds, `segcrit status`, `/metrics`, the requests the sources got.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from segcrit.clock import FakeClock
from segcrit.config import Config, parse_config
from segcrit.emulator import EmulatorState, running_emulator
from segcrit.emulator.profiles import ProfileApiState
from segcrit.enrichment.answers import LookupResult
from segcrit.enrichment.memory import EmailMemory
from segcrit.enrichment.worker import EnrichmentWorker, Source, build_enrichment
from segcrit.identity.normalize import email_hashes, phone_hashes
from segcrit.sources.validate import TRACKING_TYPES, MessageRules, prepare_messages
from segcrit.status import collect_status
from tests.flow_harness import Process, Processes, identify
from tests.helpers import BASE_CONFIG, advancing, audience_event, email_of, email_sha, iso

HOUR = 3_600.0
SPACE, TOKEN = "spa_test", "profiles-token"
JANE, JANE_PHONE, JANE_E164 = "jane.crm@example.com", "+33 6 12 34 56 78", "+33612345678"
MADID = "6D92078A-8246-4BA4-AE5B-76104861E7DC"

CRM_LOOKUP = """\
  - name: crm
    type: sql
    url: sqlite:///{crm}
    query: >-
      SELECT customer_id AS user_id, email, phone, gum_id, ad_consent, tier
      FROM customers WHERE customer_id IN :keys
    columns: {{email: email, phone: phone, gum: gum_id, consent: ad_consent}}
    ttl_minutes: 60
"""
PROFILES_LOOKUP = """\
  - name: segment
    type: segment_profiles
    space_id: {space}
    access_token: {token}
    url: {url}
    traits: [lifetime_value]
    ttl_minutes: 60
"""


def write_crm(path: Path, rows: Sequence[tuple[Any, ...]] = ()) -> None:
    """The CRM table: (customer_id, email, phone, gum_id, ad_consent, tier)."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS customers (customer_id TEXT PRIMARY KEY, email TEXT, phone TEXT, "
            "gum_id TEXT, ad_consent INTEGER, tier TEXT)"
        )
        db.executemany("INSERT OR REPLACE INTO customers VALUES (?, ?, ?, ?, ?, ?)", rows)


def crm_sql(path: Path, statement: str) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(statement)


@dataclass
class Enriched:
    """A process with its enrichment worker, the CRM file and the Profile API's state."""

    p: Process
    worker: EnrichmentWorker
    crm: Path
    profiles: ProfileApiState
    state: EmulatorState

    def lookup(self) -> int:
        return self.p.loop.run_until_complete(self.worker.drain_once())

    def settle(self) -> None:
        for _ in range(20):
            looked_up = self.lookup()
            processed = self.p.processor.drain()
            if looked_up == 0 and processed == 0:
                break
        self.p.deliver()

    def hold(self, audience: str, id_type: str = "email") -> set[str]:
        """What Criteo holds in the audience's contact list, of one identifier type."""
        try:
            return self.state.members(audience, id_type)  # type: ignore[arg-type]
        except KeyError:
            return set()

    def status(self) -> list[str]:
        return collect_status(self.p.store, self.p.config, self.p.now()).enrichment

    def metric(self, name: str, **labels: str) -> float:
        return self.p.metrics.registry.get_sample_value(name, labels) or 0.0


class Start(Protocol):
    def __call__(
        self, lookups: str = ..., *, flows: str = "", memory: EmailMemory | None = None, wrap: Any = None
    ) -> Enriched: ...


@pytest.fixture
def profiles(emulator_clock: FakeClock) -> ProfileApiState:
    return ProfileApiState({"spaces": {SPACE: {"access_token": TOKEN, "profiles": []}}}, clock=emulator_clock)


@pytest.fixture
def api_url(emulator_state: EmulatorState, profiles: ProfileApiState) -> Iterator[str]:
    with running_emulator(emulator_state, profiles=profiles, stop_timeout_secs=0) as url:
        yield url


@pytest.fixture
def start(
    tmp_path: Path,
    emulator_clock: FakeClock,
    emulator_state: EmulatorState,
    profiles: ProfileApiState,
    api_url: str,
    harness_store: str | None,
) -> Iterator[Start]:
    processes = Processes(emulator_clock, harness_store)
    workers: list[EnrichmentWorker] = []
    crm = tmp_path / "crm.db"
    write_crm(crm)

    def make(
        lookups: str = CRM_LOOKUP, *, flows: str = "", memory: EmailMemory | None = None, wrap: Any = None
    ) -> Enriched:
        config = enrichment_config(
            tmp_path, api_url, lookups.format(crm=crm, space=SPACE, token=TOKEN, url=api_url), flows
        )
        p = processes.start(config)
        worker = processes.loop.run_until_complete(_build(p, config, emulator_clock, memory))
        if wrap is not None:
            worker.sources = [wrap(source, p) for source in worker.sources]
        workers.append(worker)
        return Enriched(p, worker, crm, profiles, emulator_state)

    yield make
    for worker in workers:
        processes.loop.run_until_complete(worker.aclose())
    processes.close()


async def _build(p: Process, config: Config, clock: FakeClock, memory: EmailMemory | None) -> EnrichmentWorker:
    return build_enrichment(
        p.store,
        config,
        clock,
        p.metrics,
        sleep=advancing(clock),
        rng=random.Random(0),
        memory=memory if memory is not None else EmailMemory(),
    )


def enrichment_config(tmp_path: Path, api_url: str, lookups: str, flows: str = "") -> Config:
    text = BASE_CONFIG.format(db=tmp_path / "segcrit.db", api_url=api_url, max_wait=2)
    text = text.replace("send: [email, madid]", "send: [email, madid, phoneNumber]")
    return parse_config(text + flows + "enrichment:\n" + lookups, env={})


def enter(e: Enriched, user: str, audience: str = "vip", **extra: Any) -> None:
    """Engage puts `user` in `audience`, knowing nothing of them but their userId."""
    e.p.send(audience_event(user, audience, True, e.p.now(), **extra))


# -------------------------------------------------------------------------------------- sql lookups


def test_a_person_known_by_user_id_only_reaches_criteo_with_the_crm_email_and_phone(start: Start) -> None:
    e = start()
    write_crm(e.crm, [("u1", f" {JANE.upper()}", JANE_PHONE, "gum-1", 1, "gold")])
    enter(e, "u1")
    e.settle()
    assert e.hold("vip") == {email_hashes(JANE)[0]}
    assert e.hold("vip", "phoneNumber") == {phone_hashes(JANE_E164)[0]}
    facts = e.p.store.profile_facts(e.p.profile_id("u1"))
    assert facts is not None and facts.traits == {"tier": "gold"}  # other columns are traits


def test_a_crm_consent_false_removes_the_person_from_every_audience_and_latest_wins(start: Start) -> None:
    e = start()
    write_crm(e.crm, [("u1", JANE, None, None, 1, None)])
    enter(e, "u1", "vip")
    enter(e, "u1", "newsletter")
    e.settle()
    assert e.hold("vip") == e.hold("newsletter") == {email_hashes(JANE)[0]}

    crm_sql(e.crm, "UPDATE customers SET ad_consent = 0")
    e.p.clock.advance(HOUR + 1)  # ttl_minutes: 60
    e.settle()
    assert e.hold("vip") == e.hold("newsletter") == set()

    # A consent given later on the website is newer than the CRM's: it wins, also after the next
    # lookup finds the same answer (not applied again), until the CRM's value changes.
    e.p.clock.advance(1)
    e.p.send(audience_event("u1", "vip", True, e.p.now(), consent=True))
    e.settle()
    assert e.hold("vip") == {email_hashes(JANE)[0]}
    e.p.clock.advance(HOUR + 1)
    e.settle()
    assert e.hold("vip") == {email_hashes(JANE)[0]}
    crm_sql(e.crm, "UPDATE customers SET ad_consent = 1")
    e.p.clock.advance(HOUR + 1)
    e.settle()
    crm_sql(e.crm, "UPDATE customers SET ad_consent = 0")
    e.p.clock.advance(HOUR + 1)
    e.settle()
    assert e.hold("vip") == e.hold("newsletter") == set()


def test_a_source_that_is_down_delays_only_enrichment_and_catches_up(start: Start) -> None:
    e = start()
    write_crm(e.crm, [("u1", JANE, None, None, 1, None)])
    crm_sql(e.crm, "ALTER TABLE customers RENAME TO customers_old")
    enter(e, "u1")
    enter(e, "u2", email=email_of("u2"))  # known by an email of their own: delivered regardless
    e.settle()
    assert e.hold("vip") == {email_sha("u2")}
    assert e.p.store.backlog() == 0 and e.p.store.pending_count() == 0
    status = e.status()[0]
    assert "NOT ANSWERING" in status and "no such table: customers" in status
    assert e.metric("segcrit_lookup_source_up", lookup="crm") == 0
    assert e.metric("segcrit_lookup_failures_total", lookup="crm") >= 1

    # Backing off: tried again at the retry time, and not before, however often the worker runs.
    e.p.clock.advance(max(0.0, e.worker.retry_at("crm") - e.p.now()))
    failures = e.metric("segcrit_lookup_failures_total", lookup="crm")
    assert e.lookup() == 0 and e.metric("segcrit_lookup_failures_total", lookup="crm") == failures + 1
    assert e.worker.retry_at("crm") > e.p.now()
    assert e.lookup() == 0 and e.metric("segcrit_lookup_failures_total", lookup="crm") == failures + 1

    crm_sql(e.crm, "ALTER TABLE customers_old RENAME TO customers")
    e.p.clock.advance(e.worker.retry_at("crm") - e.p.now() + 1)
    e.settle()
    assert e.hold("vip") == {email_sha("u2"), email_hashes(JANE)[0]}
    assert "NOT ANSWERING" not in e.status()[0] and e.metric("segcrit_lookup_source_up", lookup="crm") == 1


def test_a_refresh_that_finds_nothing_new_costs_processing_nothing(start: Start) -> None:
    e = start()
    write_crm(e.crm, [("u1", JANE, None, None, 1, "gold")])
    enter(e, "u1")
    e.settle()
    processed = e.metric("segcrit_events_processed_total")
    e.p.clock.advance(HOUR + 1)
    e.settle()
    (stats,) = e.p.store.lookup_stats(["crm"], e.p.now())
    assert (stats.lookups, e.metric("segcrit_events_processed_total")) == (2, processed)
    crm_sql(e.crm, "UPDATE customers SET tier = 'platinum'")
    e.p.clock.advance(HOUR + 1)
    e.settle()
    assert e.metric("segcrit_events_processed_total") == processed + 1  # a changed answer is applied
    facts = e.p.store.profile_facts(e.p.profile_id("u1"))
    assert facts is not None and facts.traits == {"tier": "platinum"}


def test_lookups_are_batched_in_queries_of_many_keys(start: Start) -> None:
    e = start()
    write_crm(e.crm, [(f"u{i}", f"p{i}@example.com", None, None, 1, None) for i in range(250)])
    put_many = [audience_event(f"u{i}", "vip", True, e.p.now()) for i in range(250)]
    e.p.send(*put_many)
    e.settle()
    (stats,) = e.p.store.lookup_stats(["crm"], e.p.now())
    assert (stats.lookups, stats.requests) == (250, 1)  # one query for all 250 keys
    assert len(e.hold("vip")) == 250


def test_answers_obey_the_merge_limits(start: Start) -> None:
    e = start()
    # The CRM gives u1 an email that another person, with a userId of their own, already holds.
    write_crm(e.crm, [("u1", email_of("u2"), None, None, 1, None)])
    e.p.send(identify("u2", e.p.now()))
    enter(e, "u1")
    e.settle()
    assert e.p.profile_id("u1") != e.p.profile_id("u2")  # two userIds never merge
    assert e.hold("vip") == set()


def test_a_deletion_during_a_lookup_is_not_undone_by_its_answer(start: Start) -> None:
    class DeletedMeanwhile:
        """The person is deleted while the CRM answers (fault injection around the real source)."""

        def __init__(self, inner: Source, p: Process) -> None:
            self.inner, self.p = inner, p
            self.lookup = inner.lookup

        async def lookup_keys(self, keys: Sequence[str]) -> LookupResult:
            result = await self.inner.lookup_keys(keys)
            self.p.clock.advance(1)
            self.p.send({"type": "delete", "userId": "u1", "timestamp": iso(self.p.now())})
            return result

        async def aclose(self) -> None:
            await self.inner.aclose()

    e = start(wrap=DeletedMeanwhile)
    write_crm(e.crm, [("u1", JANE, None, None, 1, None)])
    enter(e, "u1")
    e.settle()
    with e.p.store.transaction() as tx:
        assert tx.find_profiles([("user_id", "u1"), ("email", email_hashes(JANE)[0])]) == {}
    assert e.hold("vip") == set()


def test_a_new_key_asks_for_a_lookup_even_while_one_is_in_flight(start: Start) -> None:
    e = start()
    enter(e, "u1")
    due = e.p.store.due_lookups("crm", "user_id", e.p.now(), 10)
    with e.p.store.transaction() as tx:  # processing marks the profile again meanwhile (a new key)
        tx.mark_lookups(due[0].profile_id, ["crm"], e.p.now())
    from segcrit.domain import LookupDone

    done = [LookupDone(due[0].profile_id, due[0].version, "unknown", e.p.now() + HOUR)]
    e.p.store.lookups_answered("crm", done, [], "lookup:crm", e.p.now(), 1)
    assert e.p.store.due_lookup_count("crm", e.p.now()) == 1


def test_profiles_known_before_the_lookup_existed_are_looked_up(start: Start, tmp_path: Path) -> None:
    e = start()
    write_crm(e.crm, [("u7", JANE, None, None, 1, None)])
    # Another lookup's name: its rows were never seeded, as for a store older than the lookup.
    e.p.send(audience_event("u7", "vip", True, e.p.now()))
    second = start(CRM_LOOKUP.replace("name: crm", "name: crm2"))
    second.settle()
    assert second.hold("vip") == {email_hashes(JANE)[0]}
    # The lookup the config no longer names has lost its rows (it would never be read again).
    assert [s.profiles for s in second.p.store.lookup_stats(["crm", "crm2"], second.p.now())] == [0, 1]


def test_lookups_keyed_by_email_use_the_email_seen_at_ingest_and_keep_none(start: Start, tmp_path: Path) -> None:
    by_email = """\
  - name: crm
    type: sql
    url: sqlite:///{crm}
    key: email
    query: SELECT lower(trim(email)) AS email, phone, ad_consent FROM customers WHERE lower(trim(email)) IN :keys
    columns: {{phone: phone, consent: ad_consent}}
    ttl_minutes: 60
"""
    memory = EmailMemory()
    e = start(by_email, memory=memory)
    write_crm(e.crm, [("c1", JANE, JANE_PHONE, None, 1, None)])
    rules = MessageRules(TRACKING_TYPES, 32_768, on_email=memory.remember)
    message = audience_event("anon-visitor", "vip", True, e.p.now(), email=" Jane.CRM@example.com")
    message.pop("userId")
    message["anonymousId"] = "anon-1"
    prepared = prepare_messages([message], rules, received_at=e.p.now())
    e.p.store.accept_sync("web", prepared.messages, e.p.now())
    e.p.processor.drain()
    e.settle()
    assert e.hold("vip", "phoneNumber") == {phone_hashes(JANE_E164)[0]}  # found by the email
    database = b"".join(path.read_bytes() for path in tmp_path.glob("segcrit.db*"))
    assert JANE.encode() not in database.lower() and b"612345678" not in database

    # A process that has not seen the email since it started cannot look it up by it.
    e.p.clock.advance(HOUR + 1)
    memory.clear()
    e.settle()
    (stats,) = e.p.store.lookup_stats(["crm"], e.p.now())
    assert stats.outcomes == {"no_key": 1}


# ------------------------------------------------------------------------------------ Profile API


def test_profile_api_ids_and_traits_feed_identity_and_cohorts(start: Start, profiles: ProfileApiState) -> None:
    cohort = (
        "  - {type: lookalike_seed, audience: high_value, every_minutes: 10, "
        "when: \"trait('lifetime_value') >= 1000\"}\n"
    )
    e = start(PROFILES_LOOKUP, flows=cohort)
    ids = [{"type": "user_id", "id": "U1"}, {"type": "email", "id": JANE}, {"type": "ios.idfa", "id": MADID}]
    profiles.set_profile(SPACE, ids, {"lifetime_value": 1500, "secret_score": 3})
    enter(e, "U1")  # Segment matches ids in lower case: the lookup asks for user_id:u1
    e.settle()
    e.p.run_jobs()
    e.p.deliver()
    assert e.hold("vip") == {email_hashes(JANE)[0]} and e.hold("vip", "madid") == {MADID}
    assert e.hold("high_value") == {email_hashes(JANE)[0]}
    facts = e.p.store.profile_facts(e.p.profile_id("U1"))
    assert facts is not None and facts.traits == {"lifetime_value": 1500}  # only the traits asked for

    # The cohort reads the trait every 10 minutes: the Profile API refreshes it within that, not
    # after the lookup's ttl_minutes (60), and the next cohort run sees the new value.
    profiles.set_profile(SPACE, ids, {"lifetime_value": 20})
    e.p.clock.advance(600)
    e.settle()
    e.p.run_jobs()
    e.p.deliver()
    assert e.hold("high_value") == set()


def test_a_person_the_profile_api_does_not_know_is_cached_until_the_ttl(
    start: Start, profiles: ProfileApiState
) -> None:
    e = start(PROFILES_LOOKUP)
    enter(e, "nobody")
    e.settle()
    asked = len(profiles.request_times())
    assert profiles.request_statuses() == [404] * asked and asked == 1  # external_ids said 404: done
    e.p.clock.advance(HOUR / 2)
    e.settle()
    assert len(profiles.request_times()) == asked
    e.p.clock.advance(HOUR)
    e.settle()
    assert len(profiles.request_times()) == asked + 1


def test_profile_api_requests_stay_under_max_per_second(start: Start, profiles: ProfileApiState) -> None:
    e = start(PROFILES_LOOKUP)
    for i in range(150):
        profiles.set_profile(SPACE, [{"type": "user_id", "id": f"p{i}"}], {"lifetime_value": i})
    e.p.send(*(audience_event(f"p{i}", "vip", True, e.p.now()) for i in range(150)))
    e.settle()
    times = profiles.request_times(SPACE)
    assert len(times) == 300  # external_ids and traits, for each person
    busiest = max(sum(1 for t in times if start_at <= t < start_at + 1) for start_at in times)
    assert busiest <= 100 and 429 not in profiles.request_statuses()


def test_profile_api_pages_are_followed_and_merge_limits_still_apply(start: Start, profiles: ProfileApiState) -> None:
    e = start(PROFILES_LOOKUP)
    ids = [{"type": "user_id", "id": "u1"}] + [{"type": "anonymous_id", "id": f"anon-{i}"} for i in range(149)]
    profiles.set_profile(SPACE, ids, {})
    enter(e, "u1")
    e.settle()
    profile_id = e.p.profile_id("u1")
    with e.p.store.transaction() as tx:
        counts = tx.identifier_counts(profile_id)
    assert counts["anonymous_id"] == 100  # 149 over two pages, held to identity.max_per_profile
    assert len(profiles.request_times()) == 3  # two pages of external ids, one of traits


def test_a_profile_api_that_fails_is_retried_and_a_refused_token_stops_at_once(
    start: Start, profiles: ProfileApiState
) -> None:
    e = start(PROFILES_LOOKUP)
    profiles.set_profile(SPACE, [{"type": "user_id", "id": "u1"}, {"type": "email", "id": JANE}], {})
    with profiles.lock:
        profiles.error_rate = 1.0
    enter(e, "u1")
    e.settle()
    assert "NOT ANSWERING" in e.status()[0] and "503" in e.status()[0]
    assert 4 <= len(profiles.request_times()) <= 8  # a few retries, not a storm

    with profiles.lock:
        profiles.error_rate = 0.0
    e.p.clock.advance(e.worker.retry_at("segment") - e.p.now() + 1)
    e.settle()
    assert e.hold("vip") == {email_hashes(JANE)[0]}

    bad_token = start(PROFILES_LOOKUP.replace("{token}", "wrong").replace("name: segment", "name: seg2"))
    before = len(profiles.request_times())
    enter(bad_token, "u1", "other")
    bad_token.lookup()
    assert len(profiles.request_times()) == before + 1
    assert "refused the access token (401)" in bad_token.status()[0]
