"""The ready-made configs (`segcrit init --template NAME`, SPEC §2): each one is written by the real
command, passes `segcrit check`, keeps its secrets in `${ENV}` references, and works: run end to end
against the emulator (its Criteo URLs and store pointed at the test's), representative Segment
events in, the expected audiences, conversions, catalog and lookalike out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from segcrit.clock import FakeClock
from segcrit.config import AudienceSyncFlow, Config, parse_config
from segcrit.config_templates import TEMPLATES, template_env, template_text
from segcrit.emulator import DEMO_ADVERTISER_ID, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, EmulatorState
from tests.flow_harness import Process, Processes, Start, identify, order, track
from tests.helpers import audience_event, email_of, madid_of, members, shas
from tests.integration.test_cli import assert_one_line_error, segcrit

DAY = 86_400.0
ENV = {
    "SEGMENT_WRITE_KEY": "template-write-key",
    "SEGMENT_WEBHOOK_SECRET": "template-webhook-secret",
    "SEGMENT_WEBHOOK_TOKEN": "template-webhook-token",
    "CRITEO_CLIENT_ID": DEMO_CLIENT_ID,
    "CRITEO_CLIENT_SECRET": DEMO_CLIENT_SECRET,
    "SEGCRIT_ADMIN_TOKEN": "template-admin-token",
}
SECRET_KEYS = {"client_secret", "write_key", "shared_secret", "bearer_token", "admin_token", "client_id"}


@pytest.fixture
def start(emulator_clock: FakeClock, emulator_url: str) -> Iterator[Start]:
    processes = Processes(emulator_clock)
    yield processes.start
    processes.close()


def template_config(name: str, tmp_path: Path, emulator_url: str) -> Config:
    """The template as a user gets it, with the emulator in place of Criteo and a store in tmp_path."""
    config = parse_config(template_text(name), env=ENV)
    criteo = config.criteo.model_copy(
        update={
            "api_url": emulator_url,
            "events_url": f"{emulator_url}/m/event?version=s2s_v0",
            "advertiser_id": DEMO_ADVERTISER_ID,
        }
    )
    return config.model_copy(update={"store": f"sqlite:///{tmp_path / 'segcrit.db'}", "criteo": criteo})


def engage(p: Process, user: str, audience: str, member: bool = True) -> None:
    """An Engage audience message through the templates' webhook source (the one audience_sync takes)."""
    message = audience_event(user, audience, member, p.now(), email=email_of(user), madid=madid_of(user))
    p.send(message, source="engage")


def product(product_id: str) -> dict[str, Any]:
    return {
        "product_id": product_id,
        "name": f"Shoe {product_id}",
        "url": f"https://shop.example/p/{product_id}",
        "image_url": f"https://shop.example/i/{product_id}.jpg",
        "price": 59.9,
        "currency": "EUR",
        "brand": "Acme",
        "category": "Shoes",
        "quantity": 1,
    }


# ------------------------------------------------------------------------------------ the files


def test_there_is_a_template_for_each_use_case_and_all(tmp_path: Path) -> None:
    assert set(TEMPLATES) == {"audience-sync", "conversions", "suppression", "lookalike", "catalog", "lifecycle", "all"}
    listed = segcrit("init", "--help", cwd=tmp_path)
    assert listed.returncode == 0 and "--template NAME" in listed.stdout and "--force" in listed.stdout


@pytest.mark.parametrize("name", TEMPLATES)
def test_init_writes_the_template_and_it_passes_check(name: str, tmp_path: Path) -> None:
    written = segcrit("init", "--template", name, "--output", "shop.yaml", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "shop.yaml").read_text() == template_text(name)
    assert "segcrit check --config shop.yaml" in written.stdout

    checked = segcrit("check", "--config", "shop.yaml", cwd=tmp_path, env=ENV)
    assert (checked.returncode, checked.stdout.strip(), checked.stderr) == (0, "config ok", "")


@pytest.mark.parametrize("name", TEMPLATES)
def test_a_template_keeps_every_secret_in_an_environment_variable(name: str) -> None:
    text = template_text(name)
    found: list[tuple[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SECRET_KEYS:
                    found.append((key, value))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.load(text, Loader=yaml.BaseLoader))  # BaseLoader: every value a string
    assert found and all(re.fullmatch(r"\$\{[A-Z_]+\}", str(value)) for _, value in found), found
    assert set(template_env(text)) <= set(ENV)  # and the header tells which ones to set
    assert all(variable in text.split("\nstore:")[0] for variable in template_env(text))


@pytest.mark.parametrize("name", TEMPLATES)
def test_a_template_lets_only_its_webhook_source_change_audiences(name: str) -> None:
    # A browser write key is public: the templates give audience_sync to Engage's webhook, and
    # authenticate that webhook's whole body with a bearer token (SPEC §3.2, §4.1).
    config = parse_config(template_text(name), env=ENV)
    webhooks = [source.name for source in config.sources if source.type == "webhook"]
    assert all(source.bearer_token is not None for source in config.sources if source.type == "webhook")
    for flow in config.flows_of(AudienceSyncFlow):
        assert webhooks and flow.sources == webhooks


def test_init_never_replaces_an_existing_file_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "segcrit.yaml").write_text("# mine\n")
    refused = segcrit("init", "--template", "lifecycle", cwd=tmp_path)
    assert assert_one_line_error(refused) == (
        "error: segcrit.yaml exists already; choose another --output, or add --force to replace it"
    )
    assert (tmp_path / "segcrit.yaml").read_text() == "# mine\n"

    forced = segcrit("init", "--template", "lifecycle", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "segcrit.yaml").read_text() == template_text("lifecycle")


def test_an_unknown_template_is_one_line_listing_the_templates(tmp_path: Path) -> None:
    result = segcrit("init", "--template", "retargeting", cwd=tmp_path)
    assert assert_one_line_error(result) == (
        "error: unknown template 'retargeting'; the templates are: audience-sync, conversions, suppression, "
        "lookalike, catalog, lifecycle, all"
    )
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ end to end


def run_audience_sync(p: Process, state: EmulatorState) -> None:
    engage(p, "u1", "cart_abandoners")
    engage(p, "u2", "cart_abandoners")
    p.deliver()
    engage(p, "u2", "cart_abandoners", member=False)
    p.deliver()
    assert members(state, "cart_abandoners") == shas("u1")
    assert state.members("cart_abandoners", "madid") == {madid_of("u1")}


def run_conversions(p: Process, state: EmulatorState) -> None:
    p.send(order("u1", "o-1", p.now(), revenue=59.9, products=[product("P1")]))
    p.send(order("u1", "o-1", p.now() + 1, revenue=59.9, products=[product("P1")]))  # delivered twice
    p.deliver()
    [(key, event)] = state.transactions().items()
    assert key == ("12345", "o-1")  # the template's partner_id is the Events API account
    assert (event["currency"], event["item"]) == ("EUR", [{"id": "P1", "price": 59.9, "quantity": 1}])
    assert len(state.events("trackTransaction")) == 1


def run_suppression(p: Process, state: EmulatorState) -> None:
    engage(p, "u1", "cart_abandoners")
    engage(p, "u1", "product_viewers")
    engage(p, "u2", "cart_abandoners")
    p.deliver()
    p.send(order("u1", "o-1", p.now(), revenue=20))
    p.deliver()
    assert (members(state, "cart_abandoners"), members(state, "product_viewers")) == (shas("u2"), set())
    assert members(state, "recent_buyers") == shas("u1")

    p.clock.advance(30 * DAY)
    p.run_jobs()
    p.deliver()
    assert (members(state, "cart_abandoners"), members(state, "product_viewers")) == (shas("u1", "u2"), shas("u1"))
    assert members(state, "recent_buyers") == set()


def run_lookalike(p: Process, state: EmulatorState) -> None:
    p.send(
        order("u1", "o-1", p.now(), revenue=30),
        order("u1", "o-2", p.now(), revenue=40),
        order("u2", "o-3", p.now(), revenue=650),
        order("u3", "o-4", p.now(), revenue=30),
        identify("u3", p.now(), plan="pro"),
    )
    assert "cohort:high_value" in p.run_jobs()
    p.deliver()
    assert members(state, "high_value") == shas("u1", "u2")
    [lookalike] = [s for s in state.segments() if s.kind == "Lookalike"]
    assert (lookalike.name, lookalike.seed_segment_id, lookalike.target_size) == (
        "High value lookalike",
        state.segment("high_value").id,
        1_000_000,
    )


def run_catalog(p: Process, state: EmulatorState) -> None:
    p.send(track("u1", "Product Viewed", p.now(), **product("P1")))
    p.send(track("u1", "Product Viewed", p.now(), **product("P1")))  # unchanged: not sent again
    p.send(track("u1", "Product Added", p.now(), **product("P2")))
    p.deliver()
    catalog = state.catalog("6789")
    assert sorted(catalog) == ["P1", "P2"]
    assert catalog["P1"]["title"] == "Shoe P1" and catalog["P1"]["link"] == "https://shop.example/p/P1"
    assert state.call_counts()["catalog-batch"] == 1
    assert [e["event"] for e in state.events()] == ["viewItem", "viewItem", "addToCart"]


def run_lifecycle(p: Process, state: EmulatorState) -> None:
    t0 = p.now()
    p.send(track("u1", "Subscription Started", t0 + 10))
    p.send(track("u1", "Trial Started", t0))  # older: arrives late and loses
    p.send(track("u2", "Trial Started", t0))
    p.deliver()
    assert (members(state, "subscribers"), members(state, "trialists")) == (shas("u1"), shas("u2"))

    p.clock.advance(60 * DAY)
    p.send(track("u2", "Subscription Lapsed", p.now()))
    p.clock.advance(31 * DAY)  # u1 unseen for 91 days, u2 for 31
    p.run_jobs()
    p.deliver()
    assert members(state, "dormant") == shas("u1")
    assert members(state, "lapsed") == shas("u2")
    assert (members(state, "subscribers"), members(state, "trialists")) == (set(), set())


def run_all(p: Process, state: EmulatorState) -> None:
    engage(p, "u1", "cart_abandoners")
    engage(p, "u2", "cart_abandoners")
    p.send(
        track("u1", "Product Viewed", p.now(), **product("P1")),
        order("u1", "o-1", p.now(), revenue=600, products=[product("P1")]),
        track("u2", "Trial Started", p.now()),
    )
    assert "cohort:high_value" in p.run_jobs()
    p.deliver()
    assert members(state, "cart_abandoners") == shas("u2")  # u1 bought: suppressed
    assert members(state, "recent_buyers") == shas("u1")
    assert members(state, "high_value") == shas("u1")
    assert members(state, "trialists") == shas("u2")
    assert [s.seed_segment_id for s in state.segments() if s.kind == "Lookalike"] == [state.segment("high_value").id]
    assert list(state.transactions()) == [("12345", "o-1")]
    assert [e["event"] for e in state.events()] == ["viewItem", "trackTransaction"]
    assert sorted(state.catalog("6789")) == ["P1"]


SCENARIOS: dict[str, Callable[[Process, EmulatorState], None]] = {
    "audience-sync": run_audience_sync,
    "conversions": run_conversions,
    "suppression": run_suppression,
    "lookalike": run_lookalike,
    "catalog": run_catalog,
    "lifecycle": run_lifecycle,
    "all": run_all,
}


def test_every_template_has_an_end_to_end_run() -> None:
    assert set(SCENARIOS) == set(TEMPLATES)


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_template_runs_end_to_end_against_the_emulator(
    name: str, start: Start, tmp_path: Path, emulator_url: str, emulator_state: EmulatorState
) -> None:
    p = start(template_config(name, tmp_path, emulator_url))
    SCENARIOS[name](p, emulator_state)
    assert p.store.dead_letters() == []
