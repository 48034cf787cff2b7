"""Enrichment, the pure parts: the `enrichment:` config, how a source's rows become answers, the
message that carries an answer to the processor (hashed, never raw), when a profile is due again,
and the masks `segcrit enrich` shows."""

from __future__ import annotations

import orjson
import pytest

from segcrit.config import Config, SegmentProfilesLookup, SqlLookup, config_warnings, parse_config
from segcrit.enrichment.answers import Answer, LookupUnavailable, answer_message, consent_value, describe, mask
from segcrit.enrichment.memory import EmailMemory, email_listener
from segcrit.enrichment.profiles import profile_path, read_external_ids
from segcrit.enrichment.schedule import RefreshSchedule, cohort_period_secs
from segcrit.enrichment.sql import engine_url, read_rows, safe_error, url_problem
from segcrit.errors import ConfigError
from segcrit.identity.graph import extract_identifiers
from segcrit.identity.normalize import email_hashes, phone_hashes, sanitize_message

BASE = """\
sources: [{name: web, type: tracking_api, write_key: WK}]
criteo: {client_id: c, client_secret: s, advertiser_id: "1"}
"""

# SPEC §4.1, the `enrichment:` block as users copy it.
SPEC_ENRICHMENT = """\
enrichment:
  - name: crm
    type: sql                   # any SQLAlchemy URL: postgresql://, mysql+pymysql://, sqlite:///
    url: mysql+pymysql://reader:${CRM_PASSWORD}@crm.internal/shop
    key: user_id                # user_id | anonymous_id | email (looked up by normalised email)
    query: >-
      SELECT customer_id AS user_id, email, phone, gum_id, ad_consent
      FROM customers WHERE customer_id IN :keys
    columns: {email: email, phone: phone, gum: gum_id, consent: ad_consent}  # others -> traits
    ttl_minutes: 1440           # a person is looked up again after this
    max_per_second: 50
  - name: segment
    type: segment_profiles      # Segment Profile API (reference/segment.md section 9.1)
    space_id: spa_123
    access_token: ${SEGMENT_PROFILE_TOKEN}
    url: https://profiles.segment.com
    external_ids: true          # email, ios.idfa, android.idfa ... -> identifiers
    traits: [lifetime_value, vip_tier]          # -> profile traits (cohorts can use them)
    ttl_minutes: 1440
    max_per_second: 100         # the Profile API's limit per space
"""
SECRETS = {"CRM_PASSWORD": "crm-pa55", "SEGMENT_PROFILE_TOKEN": "tok-s3cret"}


def config(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(BASE + text, env=env or {})


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config(text, env)
    return caught.value.problems


def sql(**overrides: object) -> SqlLookup:
    fields: dict[str, object] = {
        "name": "crm",
        "type": "sql",
        "url": "sqlite:///crm.db",
        "query": "SELECT customer_id AS user_id, email, phone, gum_id, ad_consent, tier FROM c WHERE id IN :keys",
        "columns": {"email": "email", "phone": "phone", "gum": "gum_id", "consent": "ad_consent"},
    }
    fields.update(overrides)
    return SqlLookup.model_validate(fields)


# ------------------------------------------------------------------------------------------ config


def test_the_spec_example_parses_with_its_keys_and_keeps_secrets_secret() -> None:
    parsed = config(SPEC_ENRICHMENT, SECRETS)
    crm, segment = parsed.enrichment
    assert isinstance(crm, SqlLookup) and isinstance(segment, SegmentProfilesLookup)
    assert (crm.key, crm.ttl_minutes, crm.max_per_second, crm.columns["gum"]) == ("user_id", 1440, 50, "gum_id")
    assert (segment.space_id, segment.traits, segment.external_ids) == ("spa_123", ["lifetime_value", "vip_tier"], True)
    shown = repr(parsed) + str(parsed.model_dump())
    assert "crm-pa55" not in shown and "tok-s3cret" not in shown


@pytest.mark.parametrize(
    ("lookup", "expected"),
    [
        (
            "{name: crm, type: sql, url: 'sqlite:///c.db', query: SELECT 1 AS user_id}",
            "enrichment[0].query: must use the parameter :keys",
        ),
        (
            "{name: crm, type: sql, url: 'nonsense', query: 'SELECT x FROM t WHERE id IN :keys'}",
            "enrichment[0].url: not a database URL",
        ),
        (
            "{name: crm, type: sql, url: 'oracle+nodriver://u:pw@h/db', query: 'SELECT x FROM t WHERE id IN :keys'}",
            "enrichment[0].url: SQLAlchemy knows no database type",
        ),
        (
            "{name: crm, type: sql, url: 'sqlite:///c.db', query: 'SELECT x FROM t WHERE id IN :keys', "
            "columns: {mail: email}}",
            "enrichment[0].columns",
        ),
        ("{name: crm, type: warehouse}", "enrichment[0].type: unknown lookup type 'warehouse'; expected one of: sql"),
        (
            "{name: s, type: segment_profiles, space_id: spa, access_token: t, key: email}",
            "enrichment[0].key: email is not offered for segment_profiles",
        ),
        (
            "{name: s, type: segment_profiles, space_id: spa, access_token: t, external_ids: false}",
            "enrichment[0].traits: nothing to read",
        ),
    ],
)
def test_a_wrong_lookup_is_reported_with_its_key_path(lookup: str, expected: str) -> None:
    found = problems(f"enrichment:\n  - {lookup}\n")
    assert any(p.startswith(expected) for p in found), found


def test_a_missing_driver_says_which_extra_to_install_without_repeating_the_url() -> None:
    problem = url_problem("mysql+mysqldb://reader:hunter2@crm/shop")
    assert problem is not None and "mysqldb" in problem and "hunter2" not in problem
    assert url_problem("sqlite:///crm.db") is None


def test_postgresql_and_mysql_urls_without_a_driver_use_the_extras_drivers() -> None:
    assert engine_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert engine_url("mysql://u@h/db").drivername == "mysql+pymysql"
    assert engine_url("mysql+mysqldb://u@h/db").drivername == "mysql+mysqldb"


def test_two_lookups_with_one_name_are_refused() -> None:
    lookup = "{name: crm, type: sql, url: 'sqlite:///c.db', query: 'SELECT x FROM t WHERE id IN :keys'}"
    assert "enrichment: the lookup name 'crm' is used twice" in problems(f"enrichment: [{lookup}, {lookup}]\n")


def test_a_relative_sqlite_lookup_file_is_found_next_to_the_config(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    lookup = "{name: crm, type: sql, url: 'sqlite:///crm.db', query: 'SELECT x FROM t WHERE id IN :keys'}"
    parsed = parse_config(BASE + f"enrichment: [{lookup}]\n", env={}, base_dir=folder)
    url = parsed.enrichment[0].url.get_secret_value()  # type: ignore[union-attr]
    assert url == f"sqlite:///{folder.resolve() / 'crm.db'}"


# --------------------------------------------------------------------------------------- sql rows


def test_rows_become_answers_by_key_with_mapped_columns_and_traits() -> None:
    rows = [
        {
            "USER_ID": 42,
            "email": "Jane@Example.com ",
            "phone": "+33 6 12 34 56 78",
            "gum_id": "g-1",
            "ad_consent": 1,
            "tier": "gold",
        },
        {"user_id": "u-2", "email": None, "phone": None, "gum_id": None, "ad_consent": "no", "tier": None},
    ]
    answers = read_rows(rows, sql())
    assert set(answers) == {"42", "u-2"}  # a numeric id reads as the text segcrit stores
    jane = answers["42"]
    assert (jane.emails, jane.phones, jane.ids, jane.consent) == (
        ["Jane@Example.com "],
        ["+33 6 12 34 56 78"],
        [("gum", "g-1")],
        True,
    )
    assert jane.traits == {"tier": "gold"}
    assert (answers["u-2"].consent, answers["u-2"].traits) == (False, {"tier": None})  # null unsets the trait


def test_several_rows_for_one_key_add_up_and_a_false_consent_wins() -> None:
    rows = [
        {"user_id": "u1", "email": "a@example.com", "phone": None, "gum_id": None, "ad_consent": True, "tier": "gold"},
        {"user_id": "u1", "email": "b@example.com", "phone": None, "gum_id": None, "ad_consent": False, "tier": "x"},
    ]
    answer = read_rows(rows, sql())["u1"]
    assert (answer.emails, answer.consent, answer.traits) == (
        ["a@example.com", "b@example.com"],
        False,
        {"tier": "gold"},
    )


def test_a_query_without_the_key_column_is_a_source_problem_named_for_the_user() -> None:
    with pytest.raises(LookupUnavailable, match="no column named user_id"):
        read_rows([{"customer_id": "u1"}], sql())


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (0, False), (1, True), ("Y", True), ("false", False), ("t", True), (None, None), ("maybe", None)],
)
def test_consent_values_as_databases_write_them(value: object, expected: bool | None) -> None:
    assert consent_value(value) is expected


def test_a_driver_error_keeps_its_message_but_not_an_email_it_quotes() -> None:
    error = RuntimeError('invalid input syntax for type integer: "jane@example.com"')
    text = safe_error(error)
    assert text == 'RuntimeError: invalid input syntax for type integer: "[redacted]"'


# ------------------------------------------------------------------------------ the answer message


def test_an_answer_reaches_the_inbox_hashed_at_the_lookup_time_and_anchored_on_its_key() -> None:
    answer = Answer(
        emails=[" Jane@Example.COM"],
        phones=["+33 6 12 34 56 78"],
        ids=[("gum", "g-1"), ("madid", "6D92078A-8246-4BA4-AE5B-76104861E7DC")],
        consent=False,
        traits={"tier": "gold", "note": "call +33 6 12 34 56 78 or mail jane@example.com"},
    )
    message = answer_message("crm", "user_id", "u1", answer, ts=1_800_000_000.0, consent_category="Advertising")
    text = orjson.dumps(message).decode()
    assert "jane@example.com" not in text.lower() and "12 34 56" not in text  # never raw (SPEC §8)
    ids = extract_identifiers(message)
    assert ids.pairs() == [
        ("user_id", "u1"),
        ("email", email_hashes("jane@example.com")[0]),
        ("phone", phone_hashes("+33612345678")[0]),
        ("gum", "g-1"),
        ("madid", "6D92078A-8246-4BA4-AE5B-76104861E7DC"),  # letter case kept, as for ingested ids
    ]
    assert message["context"]["consent"]["categoryPreferences"] == {"Advertising": False}
    assert (message["type"], message["_segcrit"]["ts"], message["traits"]["tier"]) == (
        "identify",
        1_800_000_000.0,
        "gold",
    )


def test_an_email_or_a_phone_in_an_id_column_never_becomes_a_stored_id() -> None:
    answer = Answer(ids=[("gum", "jane@example.com"), ("identity_link", "+33612345678"), ("gum", "g-1")])
    message = answer_message("crm", "user_id", "u1", answer, ts=1.0, consent_category="Advertising")
    assert message["_segcrit"]["ids"] == [["gum", "g-1"]]


def test_an_email_key_anchors_the_answer_on_its_hash() -> None:
    message = answer_message("crm", "email", "jane@example.com", Answer(), ts=1.0, consent_category="Advertising")
    assert extract_identifiers(message).pairs() == [("email", email_hashes("jane@example.com")[0])]
    assert "userId" not in message and "jane@" not in orjson.dumps(message).decode()


def test_a_client_cannot_forge_answer_identifiers() -> None:
    forged = {"type": "identify", "userId": "u1", "_segcrit": {"ids": [["user_id", "admin"]]}}
    assert extract_identifiers(sanitize_message(forged)).pairs() == [("user_id", "u1")]


def test_emails_answered_are_remembered_for_lookups_keyed_by_email() -> None:
    heard: list[tuple[str, str]] = []
    answer = Answer(emails=["Jane@Example.com"])
    answer_message(
        "crm", "user_id", "u1", answer, ts=1.0, consent_category="A", on_email=lambda e, h: heard.append((e, h))
    )
    assert heard == [("jane@example.com", email_hashes("jane@example.com")[0])]


# ------------------------------------------------------------------------------- Profile API bits


def test_external_ids_become_identifiers_by_type() -> None:
    answer = Answer()
    read_external_ids(
        [
            {"type": "email", "id": "jane@example.com"},
            {"type": "ios.idfa", "id": "AAAA-1"},
            {"type": "android.idfa", "id": "BBBB-2"},
            {"type": "anonymous_id", "id": "anon-1"},
            {"type": "cross_domain_id", "id": "ignored"},
            {"type": "phone", "id": "+14155552671"},
        ],
        answer,
    )
    assert answer.emails == ["jane@example.com"] and answer.phones == ["+14155552671"]
    assert answer.ids == [("madid", "AAAA-1"), ("madid", "BBBB-2"), ("anonymous_id", "anon-1")]


def test_profile_ids_are_lower_cased_and_encoded_as_segment_asks() -> None:
    assert profile_path("user_id", "User+1/Ä") == "user_id:user%2B1%2F%C3%A4"


# -------------------------------------------------------------------------------------- schedule


def test_a_profile_is_due_again_after_the_ttl() -> None:
    assert RefreshSchedule(3600).next_due(7, 1000.0) == 4600.0


def test_cohort_refreshes_are_spread_evenly_over_the_interval() -> None:
    schedule = RefreshSchedule(86_400, cohort_secs=600)
    now = 1_800_000_000.0
    dues = [schedule.next_due(pid, now) for pid in range(1, 601)]
    assert all(now < due <= now + 600 for due in dues)
    per_minute = [sum(1 for due in dues if now + m * 60 < due <= now + (m + 1) * 60) for m in range(10)]
    assert min(per_minute) >= 40 and max(per_minute) <= 80  # ~60 a minute, never a burst
    # And each profile keeps its place: the next refresh is one interval later.
    assert schedule.next_due(5, dues[4]) == pytest.approx(dues[4] + 600)


def test_only_cohorts_reading_the_lookups_traits_shorten_its_refresh() -> None:
    def with_cohort(when: str) -> float | None:
        parsed = config(
            'flows:\n  - {type: lookalike_seed, audience: hv, every_minutes: 10, when: "' + when + '"}\n'
            "enrichment:\n  - {name: s, type: segment_profiles, space_id: spa, access_token: t, traits: [ltv]}\n"
        )
        lookup = parsed.enrichment[0]
        assert isinstance(lookup, SegmentProfilesLookup)
        return cohort_period_secs(lookup, parsed)

    assert with_cohort("trait('ltv') >= 1000") == 600.0
    assert with_cohort("traits['ltv'] > 1") == 600.0
    assert with_cohort("order_count >= 2") is None


# -------------------------------------------------------------------------------- memory and masks


def test_the_email_memory_keeps_the_latest_emails_only() -> None:
    memory = EmailMemory(capacity=2)
    for email in ("a@x.io", "b@x.io", "c@x.io"):
        memory.remember(email, email_hashes(email)[0])
    memory.remember("b@x.io", email_hashes("b@x.io")[0])
    assert memory.email_of(email_hashes("a@x.io")[0]) is None
    assert memory.email_of(email_hashes("c@x.io")[0]) == "c@x.io" and len(memory) == 2


def test_ingest_keeps_emails_in_memory_only_when_a_lookup_is_keyed_by_email() -> None:
    keyed_by_id = config("enrichment: [{name: s, type: segment_profiles, space_id: spa, access_token: t}]\n")
    assert email_listener(keyed_by_id) is None and config_warnings(keyed_by_id) == []
    by_email = (
        "{name: c, type: sql, url: 'sqlite:///c.db', key: email, query: 'SELECT email FROM t WHERE email IN :keys'}"
    )
    keyed_by_email = config(f"enrichment: [{by_email}]\n")
    assert email_listener(keyed_by_email) is not None
    [warning] = config_warnings(keyed_by_email)
    assert warning.startswith("enrichment[0].key: email: segcrit keeps emails only as hashes")


def test_masks_show_enough_to_recognise_and_nothing_to_copy() -> None:
    assert mask("email", "jane.doe@example.com") == "j***@e***.com"
    assert mask("phone", "+33612345678") == "+33*******78"
    shown = describe(Answer(emails=["jane.doe@example.com", "n/a"], phones=["0612345678"], traits={"t": "x"}))
    assert shown["emails"] == ["j***@e***.com", "n/*** (not an email: not used)"]
    assert shown["phones"] == ["061*****78 (not a valid number: not used)"]
