"""The config file (SPEC §4): the documented example parses, `${NAME}` is resolved, and every mistake
is reported at once as one `key.path: message` line that a user can act on, never leaking a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from segcrit.config import (
    AudienceSyncFlow,
    CatalogFlow,
    Config,
    LifecycleFlow,
    LookalikeSeedFlow,
    SuppressionFlow,
    config_warnings,
    load_config,
    parse_config,
)
from segcrit.errors import ConfigError

# Copied verbatim from SPEC.md §4: what users copy into their own segcrit.yaml.
SPEC_EXAMPLE = """\
store: sqlite:///segcrit.db            # or postgresql://user:pass@host:5432/db
server:
  host: 127.0.0.1
  port: 8088
  admin_token: ${SEGCRIT_ADMIN_TOKEN}
sources:
  - name: web
    type: tracking_api
    write_key: ${SEGMENT_WRITE_KEY}
  - name: engage
    type: webhook
    shared_secret: ${SEGMENT_WEBHOOK_SECRET}
criteo:
  client_id: ${CRITEO_CLIENT_ID}
  client_secret: ${CRITEO_CLIENT_SECRET}
  advertiser_id: "12345"
  api_url: https://api.criteo.com                      # the emulator's URL in tests
  api_version: "2026-07"
  events_url: https://widget.criteo.com/m/event?version=s2s_v0
  partner_id: "6789"          # Events API `account`
  caller_id: "abc"            # Events API `id.mapping_key`
  gum_caller_id: 329739       # needed for identifierType gum
  rate_limit_per_minute: 250
identity:
  send: [email, madid]        # of: email, madid, gum, identityLink, phoneNumber
  email_hash: sha256          # sha256 | md5 | sha256_md5 | none (trim + lowercase first)
consent:
  category: Advertising
  when_missing: allow         # allow | deny
audiences:                    # our name -> Criteo contact-list segment
  cart_abandoners: {}                   # found by name in Criteo, created if missing
  recent_buyers: {segment_id: "5678"}   # an existing segment
flows:
  - type: audience_sync       # Engage audience key K -> audience K (auto-created: `auto_create: true` default)
  - type: conversions
    events: [Order Completed, Lead Submitted, Subscription Started]
  - type: suppression
    on: [Order Completed]
    remove_from: [cart_abandoners]
    add_to: recent_buyers
    for_days: 30
  - type: product_signals
  - type: catalog
    merchant_id: "6789"
  - type: lookalike_seed
    audience: high_value
    when: "order_count >= 2 or revenue_total >= 500"
    every_minutes: 60
    lookalike: {name: "High value lookalike", target_size: 1000000}
  - type: lifecycle
    stages:
      Trial Started: trialists
      Subscription Started: subscribers
      Subscription Lapsed: lapsed
ingest:
  dedupe_hours: 24
  max_backlog: 1000000
delivery:
  max_wait_secs: 2            # how long a change may wait for its batch
  retry_window_hours: 24      # then dead letter, never a silent drop
"""

SPEC_ENV = {
    "SEGCRIT_ADMIN_TOKEN": "admin-token-value",
    "SEGMENT_WRITE_KEY": "write-key-value",
    "SEGMENT_WEBHOOK_SECRET": "webhook-secret-value",
    "CRITEO_CLIENT_ID": "criteo-client-id",
    "CRITEO_CLIENT_SECRET": "criteo-client-secret-value",
}
SECRETS = ("admin-token-value", "write-key-value", "webhook-secret-value", "criteo-client-secret-value")

MINIMAL = """\
sources:
  - {name: web, type: tracking_api, write_key: WK}
criteo: {client_id: cid, client_secret: CS, advertiser_id: "12345"}
"""


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env or {})
    return caught.value.problems


# ----------------------------------------------------------------------------------- the example


def test_the_spec_example_parses_with_every_value_where_the_spec_puts_it() -> None:
    config = parse_config(SPEC_EXAMPLE, env=SPEC_ENV)

    assert config.server.admin_token is not None
    assert config.server.admin_token.get_secret_value() == "admin-token-value"
    web, engage = config.sources
    assert (web.name, web.type, engage.name, engage.type) == ("web", "tracking_api", "engage", "webhook")
    assert web.write_key is not None and web.write_key.get_secret_value() == "write-key-value"
    assert engage.shared_secret is not None and engage.shared_secret.get_secret_value() == "webhook-secret-value"
    assert config.criteo.client_id == "criteo-client-id"
    assert config.criteo.client_secret.get_secret_value() == "criteo-client-secret-value"
    assert (config.criteo.advertiser_id, config.criteo.partner_id, config.criteo.gum_caller_id) == (
        "12345",
        "6789",
        329739,
    )
    assert config.criteo.events_url == "https://widget.criteo.com/m/event?version=s2s_v0"
    assert config.identity.send == ["email", "madid"]
    assert config.audiences["recent_buyers"].segment_id == "5678"
    assert config.audiences["cart_abandoners"].segment_id is None
    assert [flow.type for flow in config.flows] == [
        "audience_sync",
        "conversions",
        "suppression",
        "product_signals",
        "catalog",
        "lookalike_seed",
        "lifecycle",
    ]
    [suppression] = config.flows_of(SuppressionFlow)
    assert (suppression.on, suppression.remove_from, suppression.add_to, suppression.for_days) == (
        ["Order Completed"],
        ["cart_abandoners"],
        "recent_buyers",
        30,
    )
    [catalog] = config.flows_of(CatalogFlow)
    assert catalog.merchant_id == "6789"
    [seed] = config.flows_of(LookalikeSeedFlow)
    assert seed.lookalike is not None and seed.lookalike.target_size == 1_000_000
    [lifecycle] = config.flows_of(LifecycleFlow)
    assert lifecycle.stages == {
        "Trial Started": "trialists",
        "Subscription Started": "subscribers",
        "Subscription Lapsed": "lapsed",
    }
    assert (config.delivery.max_wait_secs, config.delivery.retry_window_hours) == (2, 24)


def test_yes_no_on_off_stay_words() -> None:
    # YAML 1.1 would read `on:` (a suppression key) and an audience called `no` as booleans.
    config = parse_config(
        MINIMAL + "audiences: {no: {}, yes: {}}\nflows:\n  - {type: suppression, on: [Off], remove_from: [no]}\n",
        env={},
    )
    assert set(config.audiences) == {"no", "yes"}
    [suppression] = config.flows_of(SuppressionFlow)
    assert (suppression.on, suppression.remove_from) == (["Off"], ["no"])


def test_true_and_false_are_still_booleans() -> None:
    config = parse_config(MINIMAL + "audiences: {vip: {auto_create: false}}\n", env={})
    assert config.audiences["vip"].auto_create is False


# ----------------------------------------------------------------------------------- ${NAME}


def test_env_substitution_works_anywhere_in_any_value() -> None:
    text = """\
store: sqlite:///${DATA_DIR}/segcrit-${STAGE}.db
server: {port: "${PORT}"}
sources:
  - {name: "${STAGE}-web", type: tracking_api, write_key: "key-${STAGE}"}
criteo:
  client_id: cid
  client_secret: CS
  advertiser_id: "${ADVERTISER}"
  api_url: http://${HOST}:8099
flows:
  - type: conversions
    events: ["${STAGE} Order", Lead Submitted]
"""
    env = {"DATA_DIR": "/var/lib/segcrit", "STAGE": "prod", "PORT": "9000", "ADVERTISER": "42", "HOST": "emu"}
    config = parse_config(text, env=env)
    assert config.store == "sqlite:////var/lib/segcrit/segcrit-prod.db"
    assert config.server.port == 9000
    assert config.sources[0].name == "prod-web"
    assert config.sources[0].write_key is not None
    assert config.sources[0].write_key.get_secret_value() == "key-prod"
    assert config.criteo.advertiser_id == "42"
    assert config.criteo.api_url == "http://emu:8099"
    assert config.flows[0].events == ["prod Order", "Lead Submitted"]  # type: ignore[union-attr]


def test_a_missing_variable_is_one_problem_naming_key_path_and_variable() -> None:
    text = MINIMAL.replace("write_key: WK", 'write_key: "${SEGMENT_WRITE_KEY}"') + 'server: {port: "${PORT}"}\n'
    # One mistake each: no follow-on "write_key required" or "port is not a number" lines.
    assert problems_of(text) == [
        "sources[0].write_key: environment variable SEGMENT_WRITE_KEY is not set",
        "server.port: environment variable PORT is not set",
    ]


def test_the_real_environment_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGCRIT_TEST_CLIENT_ID", "from-the-environment")
    config = parse_config(MINIMAL.replace("client_id: cid", 'client_id: "${SEGCRIT_TEST_CLIENT_ID}"'))
    assert config.criteo.client_id == "from-the-environment"


# ----------------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("bogus: 1\n", "bogus: unknown key"),
        ("server: {hostname: x}\n", "server.hostname: unknown key"),
        ("identity: {hash: md5}\n", "identity.hash: unknown key"),
        ("consent: {categories: [Ads]}\n", "consent.categories: unknown key"),
        ("audiences: {vip: {segmentId: '1'}}\n", "audiences.vip.segmentId: unknown key"),
        ("ingest: {dedupe_days: 1}\n", "ingest.dedupe_days: unknown key"),
        ("delivery: {max_wait: 1}\n", "delivery.max_wait: unknown key"),
        ("flows:\n  - type: audience_sync\n  - {type: conversions, bogus: 1}\n", "flows[1].bogus: unknown key"),
        (
            "flows:\n  - {type: lookalike_seed, audience: a, when: x, lookalike: {name: n, target_size: 1, size: 2}}\n",
            "flows[0].lookalike.size: unknown key",
        ),
    ],
)
def test_unknown_keys_are_errors_with_their_key_path(extra: str, problem: str) -> None:
    assert problems_of(MINIMAL + extra) == [problem]


def test_unknown_keys_in_criteo_and_sources_name_the_key() -> None:
    text = """\
sources:
  - {name: web, type: tracking_api, write_key: WK, writekey: WK}
criteo: {client_id: cid, clientid: cid, client_secret: CS, advertiser_id: "12345"}
"""
    assert problems_of(text) == ["sources[0].writekey: unknown key", "criteo.clientid: unknown key"]


# ----------------------------------------------------------------------------------- every problem at once


def test_every_problem_is_listed_at_once_in_file_order() -> None:
    text = """\
store: mysql://db
server: {port: 99999}
sources:
  - {name: web, type: tracking_api}
  - {name: engage, type: webhooks, shared_secret: S}
criteo:
  client_id: cid
  client_secret: ${CRITEO_CLIENT_SECRET}
  advertiser_id: 12345
  clientid: oops
identity: {send: [email, idfa]}
consent: {when_missing: maybe}
audiences:
  vip: {segment_id: abc}
flows:
  - type: audience-sync
  - type: catalog
  - {type: suppression, for_days: 0}
  - {events: [Order Completed]}
"""
    assert problems_of(text) == [
        "criteo.client_secret: environment variable CRITEO_CLIENT_SECRET is not set",
        "store: must be sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB",
        "server.port: should be less than or equal to 65535",
        "sources[0].write_key: required for a tracking_api source",
        "sources[1].type: should be 'tracking_api' or 'webhook'",
        'criteo.advertiser_id: should be text: quote it, e.g. "12345"',
        "criteo.clientid: unknown key",
        "identity.send[1]: should be 'email', 'madid', 'gum', 'identityLink' or 'phoneNumber'",
        "consent.when_missing: should be 'allow' or 'deny'",
        "audiences.vip.segment_id: should contain digits only",
        "flows[0].type: unknown flow type 'audience-sync'; expected one of: audience_sync, conversions, "
        "suppression, product_signals, catalog, lookalike_seed, lifecycle",
        "flows[1].merchant_id: required, but missing",
        "flows[2].for_days: should be greater than 0",
        "flows[3].type: required, one of: audience_sync, conversions, suppression, product_signals, catalog, "
        "lookalike_seed, lifecycle",
    ]


def test_missing_sections_are_named() -> None:
    assert problems_of("store: sqlite:///x.db\n") == ["sources: required, but missing", "criteo: required, but missing"]


def test_cross_checks_name_their_key_path() -> None:
    text = """\
sources:
  - {name: web, type: tracking_api, write_key: WK}
  - {name: web, type: webhook, shared_secret: S}
criteo: {client_id: cid, client_secret: CS, advertiser_id: "12345"}
identity: {send: [email, gum]}
"""
    assert problems_of(text) == [
        "sources: the name 'web' is used twice",
        "criteo.gum_caller_id: required when identity.send includes gum",
    ]


def test_a_section_of_the_wrong_shape_says_what_is_expected() -> None:
    text = MINIMAL.replace('criteo: {client_id: cid, client_secret: CS, advertiser_id: "12345"}', "criteo: [cid]")
    assert problems_of(text + "flows: [catalog]\n") == [
        "criteo: should be a mapping of keys (key: value)",
        "flows[0]: should be a mapping of keys (key: value)",
    ]


def test_a_flow_with_an_unknown_type_names_flows_i_type_and_the_valid_types() -> None:
    [problem] = problems_of(MINIMAL + "flows:\n  - type: audience_sync\n  - type: retargeting\n")
    assert problem.startswith("flows[1].type: unknown flow type 'retargeting'; expected one of: ")
    assert "audience_sync" in problem and "lifecycle" in problem
    assert "discriminator" not in problem and "tag" not in problem  # pydantic's words, not the user's


def test_the_fields_of_a_flow_are_reported_at_their_list_position() -> None:
    text = MINIMAL + "flows:\n  - type: audience_sync\n  - {type: audience_sync, auto_create: maybe}\n"
    assert problems_of(text) == ["flows[1].auto_create: should be a valid boolean, unable to interpret input"]


# ----------------------------------------------------------------------------------- YAML


def test_bad_yaml_is_one_line_with_the_line_number() -> None:
    text = MINIMAL + "flows:\n  - type: [audience_sync\n"
    [problem] = problems_of(text)
    assert problem.startswith("<file>: not valid YAML at line ")
    assert "line 6" in problem or "line 7" in problem  # the flow line, or the end just after it
    assert "\n" not in problem


def test_bad_yaml_mid_file_points_at_its_line() -> None:
    [problem] = problems_of("sources:\n  - name: web\n   type: tracking_api\ncriteo: {}\n")
    assert problem.startswith("<file>: not valid YAML at line 3")


def test_a_config_that_is_not_a_mapping_is_one_problem() -> None:
    assert problems_of("- just\n- a list\n") == ["<root>: the config must be a mapping of keys"]


# ----------------------------------------------------------------------------------- files and paths


def test_a_relative_sqlite_path_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc" / "segcrit"
    folder.mkdir(parents=True)
    (folder / "segcrit.yaml").write_text("store: sqlite:///data/segcrit.db\n" + MINIMAL)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter

    config = load_config("etc/segcrit/segcrit.yaml")

    assert config.store == f"sqlite:///{(folder / 'data' / 'segcrit.db').resolve()}"


def test_an_absolute_sqlite_path_is_kept(tmp_path: Path) -> None:
    (tmp_path / "segcrit.yaml").write_text("store: sqlite:////var/lib/segcrit/s.db\n" + MINIMAL)
    assert load_config(str(tmp_path / "segcrit.yaml")).store == "sqlite:////var/lib/segcrit/s.db"


def test_segcrit_config_names_the_file_when_config_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "from-env.yaml").write_text(MINIMAL.replace("client_id: cid", "client_id: from-env"))
    (tmp_path / "segcrit.yaml").write_text(MINIMAL.replace("client_id: cid", "client_id: from-cwd"))
    (tmp_path / "explicit.yaml").write_text(MINIMAL.replace("client_id: cid", "client_id: explicit"))
    monkeypatch.chdir(tmp_path)

    monkeypatch.delenv("SEGCRIT_CONFIG", raising=False)
    assert load_config(None).criteo.client_id == "from-cwd"
    monkeypatch.setenv("SEGCRIT_CONFIG", str(tmp_path / "from-env.yaml"))
    assert load_config(None).criteo.client_id == "from-env"
    assert load_config("explicit.yaml").criteo.client_id == "explicit"


def test_a_missing_file_is_one_problem_naming_it_and_how_to_point_elsewhere(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(missing))
    assert caught.value.problems == [f"{missing}: not found (name the file with --config or SEGCRIT_CONFIG)"]


def test_problems_from_a_file_name_that_file(tmp_path: Path) -> None:
    path = tmp_path / "segcrit.yaml"
    path.write_text("sources: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}: not valid YAML at line ")


# ----------------------------------------------------------------------------------- secrets


def test_secrets_never_appear_in_repr_or_str_of_the_config() -> None:
    config = parse_config(SPEC_EXAMPLE, env=SPEC_ENV)
    shown = repr(config) + str(config) + config.model_dump_json() + repr(config.criteo) + repr(config.sources)
    for secret in SECRETS:
        assert secret not in shown
    assert "**********" in repr(config.criteo)


def test_secrets_never_appear_in_error_messages() -> None:
    broken = SPEC_EXAMPLE.replace('advertiser_id: "12345"', "advertiser_id: twelve").replace(
        "port: 8088", "port: ${SEGMENT_WRITE_KEY}"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(broken + "bogus: ${CRITEO_CLIENT_SECRET}\n", env=SPEC_ENV)
    assert caught.value.problems == [
        "server.port: should be a valid integer, unable to parse string as an integer",
        "criteo.advertiser_id: should contain digits only",
        "bogus: unknown key",
    ]
    for secret in SECRETS:
        assert secret not in str(caught.value)


def test_a_config_is_immutable() -> None:
    config = parse_config(MINIMAL, env={})
    with pytest.raises(ValueError, match="frozen"):
        config.store = "sqlite:///other.db"


def test_defaults_match_the_spec() -> None:
    config: Config = parse_config(MINIMAL, env={})
    assert config.store == "sqlite:///segcrit.db"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8088)
    assert config.criteo.api_url == "https://api.criteo.com"
    assert config.criteo.rate_limit_per_minute == 250
    assert (config.consent.category, config.consent.when_missing) == ("Advertising", "allow")
    assert (config.ingest.dedupe_hours, config.delivery.retry_window_hours) == (24, 24)
    assert config.flows == []
    sync = AudienceSyncFlow(type="audience_sync")
    assert (sync.auto_create, sync.sources, sync.max_new_audiences_per_day) == (True, None, 50)
    assert config.server.metrics_token is None and config.sources[0].bearer_token is None


# ----------------------------------------------------------------------------------- abuse limits and tokens

WEBHOOK = '  - {name: engage, type: webhook, shared_secret: S, bearer_token: "${TOKEN}"}\n'


def with_source(text: str, source: str = WEBHOOK) -> str:
    """MINIMAL-based text with one more item under `sources:`."""
    web = "  - {name: web, type: tracking_api, write_key: WK}\n"
    return text.replace(web, web + source)


def test_the_abuse_limits_and_tokens_of_spec_4_1_parse() -> None:
    text = (
        with_source(MINIMAL)
        + 'server: {metrics_token: "${METRICS}"}\n'
        + "flows:\n  - {type: audience_sync, sources: [engage], max_new_audiences_per_day: 5}\n"
    )
    config = parse_config(text, env={"TOKEN": "bearer-value", "METRICS": "metrics-value"})
    engage = config.source("engage")
    assert engage is not None and engage.bearer_token is not None
    assert engage.bearer_token.get_secret_value() == "bearer-value"
    assert config.server.metrics_token is not None and config.server.metrics_token.get_secret_value() == "metrics-value"
    [sync] = config.flows_of(AudienceSyncFlow)
    assert (sync.sources, sync.max_new_audiences_per_day) == (["engage"], 5)
    shown = repr(config) + config.model_dump_json()
    assert "bearer-value" not in shown and "metrics-value" not in shown
    assert config_warnings(config) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            MINIMAL.replace("write_key: WK}", "write_key: WK, bearer_token: T}"),
            "sources[0].bearer_token: only a webhook source takes one (a tracking_api source has its write_key)",
        ),
        (
            with_source(MINIMAL, WEBHOOK.replace('"${TOKEN}"', '""')),
            "sources[1].bearer_token: must not be empty (leave the key out to go without one)",
        ),
        (
            MINIMAL + 'server: {metrics_token: ""}\n',
            "server.metrics_token: must not be empty (leave the key out to serve /metrics without a token)",
        ),
        (
            MINIMAL + "flows:\n  - {type: audience_sync, sources: [web, engage]}\n",
            "flows[0].sources: unknown source 'engage'; the sources are: web",
        ),
        (
            MINIMAL + "flows:\n  - {type: audience_sync, sources: []}\n",
            "flows[0].sources: an empty list lets no message change audiences; name a source, or leave the key out",
        ),
        (
            MINIMAL + "flows:\n  - {type: audience_sync, max_new_audiences_per_day: -1}\n",
            "flows[0].max_new_audiences_per_day: should be greater than or equal to 0",
        ),
    ],
)
def test_a_wrong_abuse_limit_or_token_is_named_at_its_key_path(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]


def test_check_warns_about_a_webhook_without_bearer_token_and_public_sources_driving_audiences() -> None:
    text = with_source(MINIMAL, "  - {name: engage, type: webhook, shared_secret: S}\n")
    text += "flows:\n  - {type: audience_sync}\n"
    warnings = config_warnings(parse_config(text, env={}))
    assert [w.split(":", 1)[0] for w in warnings] == ["sources[1].bearer_token", "flows[0].sources"]
    assert "'web'" in warnings[1] and "`sources: [engage]`" in warnings[1]
    # Listing sources (even a tracking_api one, deliberately) settles the second.
    chosen = parse_config(text.replace("{type: audience_sync}", "{type: audience_sync, sources: [web]}"), env={})
    assert [w.split(":", 1)[0] for w in config_warnings(chosen)] == ["sources[1].bearer_token"]


# ----------------------------------------------------------------------------------- flows that cannot work

SEED_FLOW = "  - {type: lookalike_seed, audience: high_value, when: 'order_count >= 2'}\n"


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ("order_count >=", "flows[0].when: not a valid expression (invalid syntax at column 15)"),
        ("orders >= 2", "flows[0].when: unknown name(s) orders; use: "),
        ("traits.plan == 'pro'", "flows[0].when: attribute access (a.b) is not allowed; use traits['name']"),
        ("(lambda: 1)()", "flows[0].when: not allowed in a cohort expression: Lambda"),
        ("order_count > 1; revenue_total > 9", "flows[0].when: should be one expression"),
        ("traits['score']() > 1", "flows[0].when: only these functions can be called: "),
        ("open('x')", "flows[0].when: unknown name(s) open; use: "),
    ],
)
def test_an_invalid_when_expression_is_named_at_its_key_path(when: str, problem: str) -> None:
    text = MINIMAL + f'flows:\n  - {{type: lookalike_seed, audience: hv, when: "{when}"}}\n'
    [found] = problems_of(text)
    assert found.startswith(problem), found


def test_an_audience_a_flow_names_without_audiences_listing_it_is_found_or_created_never_refused() -> None:
    # SPEC §4: `check` may warn about such a name, never refuse it.
    text = MINIMAL + "audiences: {cart: {}}\nflows:\n  - {type: suppression, remove_from: [cart, crat]}\n"
    config = parse_config(text, env={})
    assert config_warnings(config) == [
        "flows[0].remove_from: no flow fills 'crat' and `audiences:` does not list it; it is found in Criteo by "
        "that name (or created empty)"
    ]
    # With audience_sync, any name may be an Engage audience key, known only at run time.
    synced = parse_config(text + "  - {type: audience_sync, sources: [web]}\n", env={})
    assert config_warnings(synced) == []


def test_remove_from_may_name_any_audience_a_flow_fills_or_all() -> None:
    text = (
        MINIMAL
        + "audiences: {cart: {}}\nflows:\n"
        + "  - {type: audience_sync, audiences: {cart_7d: browsers}}\n"
        + "  - {type: lifecycle, stages: {Trial Started: trialists}, dormant: sleeping, dormant_after_days: 9}\n"
        + SEED_FLOW
        + "  - {type: suppression, on: [Lead Submitted], add_to: leads}\n"
        + "  - {type: suppression, remove_from: [cart, browsers, trialists, sleeping, high_value, leads]}\n"
        + "  - {type: suppression, on: [Subscription Started], remove_from: all}\n"
    )
    config = parse_config(text, env={})
    assert [f.type for f in config.flows].count("suppression") == 3


def test_a_stage_mapped_twice_is_an_error_in_one_flow_and_across_flows() -> None:
    text = MINIMAL + (
        "flows:\n"
        "  - type: lifecycle\n"
        "    stages: {Trial Started: trialists, Trial Extended: trialists, Subscription Started: subscribers}\n"
        "  - type: lifecycle\n"
        "    stages: {Trial Started: b2b_trialists, Subscription Lapsed: subscribers}\n"
    )
    assert problems_of(text) == [
        "flows[0].stages: the stage 'trialists' is mapped twice ('Trial Started', 'Trial Extended'); give each "
        "event its own stage audience, or keep one of the events",
        "flows[1].stages: the event 'Trial Started' is mapped twice, here and in flows[0].stages; keep it in one "
        "lifecycle flow",
        "flows[1].stages: the stage 'subscribers' is mapped twice, here and in flows[0]; give each lifecycle flow "
        "stage audiences of its own",
    ]


def test_an_event_given_twice_in_yaml_is_reported_rather_than_silently_dropped() -> None:
    text = MINIMAL + (
        "flows:\n"
        "  - type: lifecycle\n"
        "    stages:\n"
        "      Trial Started: trialists\n"
        "      Subscription Started: subscribers\n"
        "      Trial Started: subscribers\n"
    )
    # Only the first mistake: "subscribers is mapped twice" would follow from YAML's choice.
    assert problems_of(text) == [
        "flows[0].stages: the key 'Trial Started' appears twice (lines 7 and 9); YAML would keep only the last "
        "one, so remove or merge one of them",
    ]


def test_duplicate_keys_are_found_anywhere_with_their_key_path() -> None:
    text = MINIMAL + "audiences: {vip: {}, vip: {segment_id: '1'}}\nflows: []\nflows: []\n"
    assert problems_of(text) == [
        "audiences: the key 'vip' appears twice (line 4); YAML would keep only the last one, so remove or merge "
        "one of them",
        "<root>: the key 'flows' appears twice (lines 5 and 6); YAML would keep only the last one, so remove or "
        "merge one of them",
    ]


def test_the_dormant_stage_needs_both_keys_and_an_audience_of_its_own() -> None:
    text = MINIMAL + (
        "flows:\n"
        "  - {type: lifecycle, stages: {Trial Started: trialists}, dormant: trialists, dormant_after_days: 30}\n"
        "  - {type: lifecycle, stages: {Subscription Started: subscribers}, dormant: sleeping}\n"
        "  - {type: lifecycle, stages: {Lead Submitted: leads}, dormant_after_days: 30}\n"
    )
    assert problems_of(text) == [
        "flows[0].dormant: 'trialists' is also the stage of 'Trial Started'; the dormant stage needs an audience "
        "of its own",
        "flows[1].dormant_after_days: required with dormant (after how many days unseen someone moves)",
        "flows[2].dormant: required with dormant_after_days (the stage audience of dormant people)",
    ]


def test_a_lookalike_seed_that_another_flow_also_fills_is_an_error() -> None:
    lookalike = "lookalike: {name: Best lookalike, target_size: 100000}"
    text = MINIMAL + (
        "flows:\n"
        "  - {type: lifecycle, stages: {Subscription Started: subscribers}}\n"
        "  - {type: suppression, add_to: buyers}\n"
        f"  - {{type: lookalike_seed, audience: subscribers, when: 'order_count > 0', {lookalike}}}\n"
        f"  - {{type: lookalike_seed, audience: buyers, when: 'order_count > 0', {lookalike}}}\n"
        "  - {type: lookalike_seed, audience: buyers, when: 'order_count > 5'}\n"
    )
    assert problems_of(text) == [
        "flows[2].audience: the seed audience 'subscribers' is also filled by flows[0]; a lookalike needs a seed "
        "that only its cohort fills: give this flow an audience of its own",
        "flows[3].audience: the seed audience 'buyers' is also filled by flows[1], flows[4]; a lookalike needs a "
        "seed that only its cohort fills: give this flow an audience of its own",
        "flows[3].lookalike.name: 'Best lookalike' is already the lookalike of flows[2]; a lookalike is created "
        "once, on one seed: give it a name of its own",
        "flows[4].audience: the seed audience 'buyers' is also filled by flows[1], flows[3]; a lookalike needs a "
        "seed that only its cohort fills: give this flow an audience of its own",
    ]


def test_flow_problems_are_listed_together_with_problems_elsewhere() -> None:
    text = MINIMAL + (
        "server: {port: 99999}\n"
        "flows:\n"
        "  - {type: audience_sync, sources: [wbe]}\n"
        "  - {type: lookalike_seed, audience: hv, when: 'order_count >'}\n"
        "  - {type: lifecycle, stages: {A: x, B: x}}\n"
    )
    assert [p.split(":", 1)[0] for p in problems_of(text)] == [
        "server.port",
        "flows[0].sources",
        "flows[1].when",
        "flows[2].stages",
    ]


def test_a_catalog_merchant_id_beyond_32_bits_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL + 'flows:\n  - {type: catalog, merchant_id: "99999999999"}\n', env={})
    assert any(p.startswith("flows[0].merchant_id:") and "32-bit" in p for p in caught.value.problems)


def test_retention_has_the_documented_defaults_and_checks_its_keys() -> None:
    retention = parse_config(MINIMAL, env={}).retention
    assert (retention.failed_events_days, retention.dead_letters_days, retention.anonymous_profiles_days) == (
        30,
        90,
        395,
    )
    kept = parse_config(MINIMAL + "retention: {failed_events_days: 7, anonymous_profiles_days: 30}\n", env={})
    assert (kept.retention.failed_events_days, kept.retention.anonymous_profiles_days) == (7, 30)
    assert [p.split(":")[0] for p in problems_of(MINIMAL + "retention: {dead_letters_days: 0, forever: 1}\n")] == [
        "retention.dead_letters_days",
        "retention.forever",
    ]
