"""Who may change audiences, and how many Criteo segments traffic can create (SPEC §4.1, issue 12).

`audience_sync.sources`: an Engage-style message from another source (a browser's public write key)
changes no audience and is counted as ignored, by source. `max_new_audiences_per_day`: past it a new
audience key is held (memberships kept, no Criteo segment, nothing delivered) until the config lists
it or a later UTC day admits it. Both are visible in `segcrit status` and `/metrics`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from segcrit.app import create_app
from segcrit.clock import FakeClock
from segcrit.config import Config, parse_config
from segcrit.emulator import EmulatorState
from segcrit.emulator.server import running_app
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.store.sqlite import SqliteStore
from tests.flow_harness import DELIVERY_STEP_SECS, Process, Processes, Start
from tests.helpers import BASE_CONFIG, audience_event, email_of, members, put, shas
from tests.integration.test_cli import segcrit, table_row

DAY = 86_400.0
# Tests start a minute after a UTC midnight (after FakeClock's default start), so that "the next
# day" is one DAY later.
MIDNIGHT = (1_800_000_000 // 86_400 + 1) * 86_400 + 60.0
TOKEN = "engage-bearer-token"


def config_text(db: Path, api_url: str, sync: str = "sources: [engage]", extra: str = "") -> str:
    """The test config with its webhook source behind a bearer token and audience_sync set by `sync`."""
    text = BASE_CONFIG.format(db=db, api_url=api_url, max_wait=0)
    text = text.replace("shared_secret: SECRET}", f"shared_secret: SECRET, bearer_token: {TOKEN}}}")
    return text.replace("  - type: audience_sync\n", f"  - type: audience_sync\n    {sync}\n") + extra


def write(tmp_path: Path, text: str) -> tuple[Config, Path]:
    path = tmp_path / "segcrit.yaml"
    path.write_text(text)
    return parse_config(text, env={}), path


@pytest.fixture
def start(emulator_clock: FakeClock, emulator_url: str, harness_store: str | None) -> Iterator[Start]:
    emulator_clock.advance(MIDNIGHT - emulator_clock.now())
    processes = Processes(emulator_clock, harness_store)
    yield processes.start
    processes.close()


def engage(p: Process, user: str, audience: str, member: bool = True) -> None:
    p.send(audience_event(user, audience, member, p.now(), email=email_of(user)), source="engage")


def deliver(p: Process, rounds: int = 4) -> None:
    """Let batch windows pass and run the workers (held changes stay pending, so never 'idle')."""
    for _ in range(rounds):
        p.clock.advance(DELIVERY_STEP_SECS)
        p.loop.run_until_complete(p.workers.drain_once())


def status_of(path: Path, cwd: Path) -> str:
    result = segcrit("status", "--config", str(path), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def metrics_text(config: Config, store: SqliteStore, metrics: Metrics | None = None) -> str:
    with running_app(create_app(config, store, metrics=metrics, run_workers=False)) as url:
        return httpx.get(f"{url}/metrics").text


# ------------------------------------------------------------------------------------ sources


def test_a_browser_audience_message_changes_nothing_when_audience_sync_takes_only_the_webhook(
    tmp_path: Path,
) -> None:
    config, path = write(tmp_path, config_text(tmp_path / "s.db", "http://127.0.0.1:9"))
    store = SqliteStore(str(tmp_path / "s.db"))
    metrics = Metrics()
    processor = Processor(store, config, FakeClock(MIDNIGHT), metrics)
    entered = audience_event("u1", "vip", True, MIDNIGHT, email=email_of("u1"))
    try:
        with running_app(create_app(config, store, metrics=metrics, run_workers=False)) as url:
            # What analytics.js sends: text/plain, the (public) write key in the body.
            browser = httpx.post(
                f"{url}/v1/t",
                content=orjson.dumps({**entered, "writeKey": "WK"}),
                headers={"Content-Type": "text/plain"},
            )
            assert browser.status_code == 200, browser.text
            processor.drain()

            with store.dry_run() as tx:
                profile = tx.find_profiles([("user_id", "u1")])[("user_id", "u1")]
                state = tx.load_profile(profile)
            assert state is not None and state.memberships == {}  # processed (a profile), no audience
            assert store.audiences() == [] and store.pending_count() == 0
            scraped = httpx.get(f"{url}/metrics").text
            assert 'segcrit_audience_messages_ignored_total{source="web"} 1.0' in scraped
            assert "ignored from source web: 1" in status_of(path, tmp_path)

            # The same message from Engage, through the webhook, does change the audience.
            body = orjson.dumps({**entered, "messageId": "from-engage"})
            headers = {
                "X-Signature": hmac.new(b"SECRET", body, hashlib.sha1).hexdigest(),
                "Authorization": f"Bearer {TOKEN}",
            }
            assert httpx.post(f"{url}/webhooks/engage", content=body, headers=headers).status_code == 200
            processor.drain()
            assert [a.name for a in store.audiences()] == ["vip"]
            assert table_row(status_of(path, tmp_path), "vip")[2] == "1"  # desired
    finally:
        store.close()


def test_without_sources_every_source_still_changes_audiences(tmp_path: Path) -> None:
    config, _ = write(tmp_path, config_text(tmp_path / "s.db", "http://127.0.0.1:9", sync="auto_create: true"))
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        put(store, audience_event("u1", "vip", True, MIDNIGHT, email=email_of("u1")), source="web")
        Processor(store, config, FakeClock(MIDNIGHT), Metrics()).drain()
        assert [a.name for a in store.audiences()] == ["vip"] and store.counters("audience_messages_ignored:") == {}
    finally:
        store.close()


# ------------------------------------------------------------------------------------ max_new_audiences_per_day


def test_the_51st_new_audience_key_of_a_day_gets_no_segment_until_the_next_day(
    start: Start, tmp_path: Path, emulator_url: str, emulator_state: EmulatorState, harness_store: str | None
) -> None:
    text = config_text(tmp_path / "s.db", emulator_url)
    if harness_store is not None:  # `segcrit status` reads the PostgreSQL store the processes share
        text = text.replace(f"store: sqlite:///{tmp_path / 's.db'}", f"store: {harness_store}")
    config, path = write(tmp_path, text)
    assert config.flows[0].max_new_audiences_per_day == 50  # the default
    p = start(config)
    keys = [f"engage_key_{n:02}" for n in range(1, 52)]
    for key in keys:
        engage(p, "u1", key)
    deliver(p)

    assert sorted(s.name for s in emulator_state.segments()) == keys[:50]
    held = keys[50]
    assert members(emulator_state, held) == set()
    assert p.store.acknowledged_members(held) == {}
    u1 = p.profile_id("u1")
    with p.store.dry_run() as tx:  # the membership is kept, and what Criteo should hold
        profile = tx.load_profile(u1)
    assert profile is not None and profile.memberships[held][0] is True
    [stats] = [s for s in p.store.audience_stats() if s.name == held]
    assert (stats.audience_held, stats.desired, stats.acknowledged, stats.pending) == (True, 1, 0, 1)

    shown = status_of(path, tmp_path)
    assert table_row(shown, held)[1] == "held"
    assert f"held: {held}" in shown and "1 over max_new_audiences_per_day" in shown
    scraped = metrics_text(config, p.store)
    assert "segcrit_audiences_held 1.0" in scraped
    assert f'segcrit_audience_held_since_seconds{{audience="{held}"}}' in scraped

    # Another new key the same day is held too; the next UTC day admits both, longest held first.
    engage(p, "u2", "engage_key_52")
    deliver(p)
    assert "engage_key_52" not in {s.name for s in emulator_state.segments()}
    p.clock.advance(MIDNIGHT + DAY - p.clock.now())
    deliver(p)
    assert members(emulator_state, held) == shas("u1")
    assert members(emulator_state, "engage_key_52") == shas("u2")
    assert p.store.held_audience_count() == 0 and "held:" not in status_of(path, tmp_path)


def test_a_held_audience_listed_under_audiences_is_delivered_and_listed_ones_never_count(
    start: Start, tmp_path: Path, emulator_url: str, emulator_state: EmulatorState
) -> None:
    text = config_text(tmp_path / "s.db", emulator_url, sync="max_new_audiences_per_day: 1")
    config, _ = write(tmp_path, text + "audiences: {listed: {}}\n")
    p = start(config)
    for key in ("listed", "first_new", "second_new"):
        engage(p, "u1", key)
    deliver(p)
    # `listed` used no allowance: the day's one new key still got its segment.
    assert {s.name for s in emulator_state.segments()} == {"listed", "first_new"}
    assert [name for name, _ in p.store.held_audiences(10)] == ["second_new"]

    # The operator lists it and restarts: delivered at once, the same day, still within allowance.
    relisted, _ = write(tmp_path, text + "audiences: {listed: {}, second_new: {}}\n")
    restarted = start(relisted)
    deliver(restarted)
    assert members(emulator_state, "second_new") == shas("u1")
    assert restarted.store.held_audience_count() == 0
    engage(restarted, "u2", "third_new")  # the day's allowance is still used up
    deliver(restarted)
    assert [name for name, _ in restarted.store.held_audiences(10)] == ["third_new"]


def test_a_held_audience_does_not_hold_up_the_others(
    start: Start, tmp_path: Path, emulator_url: str, emulator_state: EmulatorState
) -> None:
    text = config_text(tmp_path / "s.db", emulator_url, sync="max_new_audiences_per_day: 0")
    config, _ = write(tmp_path, text + "audiences: {vip: {}}\n")
    p = start(config)
    engage(p, "u1", "flood")  # held, and its changes are older than vip's
    engage(p, "u2", "vip")
    deliver(p)
    assert members(emulator_state, "vip") == shas("u2")
    assert "flood" not in {s.name for s in emulator_state.segments()}
    assert p.store.dead_letters() == []
