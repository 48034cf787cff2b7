from segcrit.config import AudienceSyncFlow, ConsentConfig, IdentityConfig
from segcrit.consent import consent_in_message, effective_consent
from segcrit.domain import Identifier, ProfileState, TargetKey
from segcrit.flows.audience_sync import MembershipChange, membership_changes
from segcrit.membership import criteo_value, desired_targets

FLOW = AudienceSyncFlow(type="audience_sync")


def _consent(prefs: object) -> dict[str, object]:
    return {"context": {"consent": {"categoryPreferences": prefs}}}


def test_consent_rules() -> None:
    assert consent_in_message(_consent({"Advertising": True}), "Advertising") is True
    assert consent_in_message(_consent({"Advertising": False}), "Advertising") is False
    assert consent_in_message(_consent({}), "Advertising") is False  # empty object = no
    assert consent_in_message(_consent({"Analytics": True}), "Advertising") is False  # category absent = no
    assert consent_in_message({"context": {}}, "Advertising") is None
    assert consent_in_message({}, "Advertising") is None
    assert effective_consent(None, ConsentConfig()) is True
    assert effective_consent(None, ConsentConfig(when_missing="deny")) is False
    assert effective_consent(False, ConsentConfig()) is False


def test_track_audience_entered_and_exited() -> None:
    entered = {
        "type": "track",
        "event": "Audience Entered",
        "properties": {"audience_key": "vip", "vip": True},
    }
    exited = {
        "type": "track",
        "event": "Audience Exited",
        "properties": {"audience_key": "vip", "vip": False},
    }
    assert membership_changes(entered, FLOW) == [MembershipChange("vip", True)]
    assert membership_changes(exited, FLOW) == [MembershipChange("vip", False)]


def test_identify_with_personas_and_string_booleans() -> None:
    personas = {"computation_class": "audience", "computation_key": "buyers"}
    identify = {"type": "identify", "traits": {"buyers": "true"}, "context": {"personas": personas}}
    assert membership_changes(identify, FLOW) == [MembershipChange("buyers", True)]
    journey = {
        "type": "track",
        "event": "j step",
        "properties": {"j_o_step": "false"},
        "context": {"personas": {"computation_class": "journey_step", "computation_key": "j_o_step"}},
    }
    assert membership_changes(journey, FLOW) == [MembershipChange("j_o_step", False)]


def test_computed_traits_and_ordinary_events_are_not_audiences() -> None:
    trait = {
        "type": "identify",
        "traits": {"ltv": True},
        "context": {"personas": {"computation_class": "trait", "computation_key": "ltv"}},
    }
    assert membership_changes(trait, FLOW) == []
    assert membership_changes({"type": "track", "event": "Order Completed"}, FLOW) == []


def _profile(consent: bool | None = None) -> ProfileState:
    return ProfileState(
        1,
        [
            Identifier("email", "s" * 64, "m" * 32),
            Identifier("madid", "AD1"),
            Identifier("madid", "AD2", active=False),
            Identifier("user_id", "u1"),
        ],
        consent,
        None,
        {"vip": (True, 1.0), "gone": (False, 2.0)},
    )


def test_desired_targets_cover_every_configured_identifier_type() -> None:
    targets = desired_targets(_profile(), IdentityConfig(), ConsentConfig())
    assert targets == {TargetKey("vip", "email", "s" * 64), TargetKey("vip", "madid", "AD1")}


def test_no_consent_means_no_targets() -> None:
    assert desired_targets(_profile(consent=False), IdentityConfig(), ConsentConfig()) == set()
    assert desired_targets(_profile(), IdentityConfig(), ConsentConfig(when_missing="deny")) == set()


def test_email_forms() -> None:
    md5 = "e13743a7f1db7f4246badd6fd6ff54ff"
    ident = Identifier("email", "375320dd9ae7ed408002f3768e16cb5f28c861062fd50dff9a3bff62e9dce4ef", md5)
    assert criteo_value(ident, "sha256") == ident.value
    assert criteo_value(ident, "md5") == md5
    assert criteo_value(ident, "sha256_md5") == "000e3171a5110c35c69d060112bd0ba55d9631c7c2ec93f1840e4570095b263a"


def test_a_junk_revenue_does_not_hide_a_valid_total() -> None:
    from segcrit.config import CommerceMapping
    from segcrit.flows.commerce import conversion_event

    event = conversion_event({"properties": {"order_id": "o", "revenue": "n/a", "total": "42.5"}}, CommerceMapping())
    assert event.value == 42.5 and "revenue_not_a_number" not in event.notes
    junk = conversion_event({"properties": {"order_id": "o", "revenue": "n/a"}}, CommerceMapping())
    assert junk.value is None and "revenue_not_a_number" in junk.notes
