from segcrit.domain import Identifier
from segcrit.identity.graph import extract_identifiers, plan_resolution

LIMITS = {"user_id": 1, "email": 2, "anonymous_id": 3, "madid": 10}


def test_extract_identifiers_from_every_documented_place() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "anonymousId": "a1",
        "_segcrit": {"emails": [{"sha256": "s" * 64, "md5": "m" * 32}], "phones": [{"sha256": "p" * 64}]},
        "context": {
            "device": {"advertisingId": "AD-ID-1", "adTrackingEnabled": True},
            "traits": {"criteo_gum_id": "g1"},
        },
        "properties": {"identity_link": "il-1"},
    }
    ids = extract_identifiers(message)
    assert [(i.kind, i.value) for i in ids.identifiers] == [
        ("user_id", "u1"),
        ("email", "s" * 64),
        ("phone", "p" * 64),
        ("gum", "g1"),
        ("identity_link", "il-1"),
        ("madid", "AD-ID-1"),
        ("anonymous_id", "a1"),
    ]
    assert ids.identifiers[1].extra == "m" * 32
    assert ids.ad_tracking == {"AD-ID-1": True}


def test_madid_with_tracking_disabled_is_inactive_and_case_is_kept() -> None:
    ids = extract_identifiers(
        {"anonymousId": "a", "context": {"device": {"advertisingId": "AbC", "adTrackingEnabled": False}}}
    )
    madid = next(i for i in ids.identifiers if i.kind == "madid")
    assert madid.value == "AbC" and madid.active is False
    assert ids.ad_tracking == {"AbC": False}


def test_numbers_are_stringified_and_empty_ids_ignored() -> None:
    ids = extract_identifiers({"userId": 42, "anonymousId": "  "})
    assert ids.pairs() == [("user_id", "42")]


def test_new_person_gets_a_new_profile_with_all_identifiers() -> None:
    ids = [Identifier("user_id", "u1"), Identifier("anonymous_id", "a1")]
    plan = plan_resolution(ids, {}, {}, LIMITS)
    assert plan.primary is None and plan.attach == tuple(ids) and plan.merge == ()


def test_identify_links_anonymous_profile_to_user_profile() -> None:
    ids = [Identifier("user_id", "u1"), Identifier("anonymous_id", "a1")]
    owners = {("user_id", "u1"): 1, ("anonymous_id", "a1"): 2}
    counts = {1: {"user_id": 1}, 2: {"anonymous_id": 1}}
    plan = plan_resolution(ids, owners, counts, LIMITS)
    assert plan.primary == 1 and plan.merge == (2,) and plan.attach == ()


def test_two_user_ids_never_merge() -> None:
    ids = [Identifier("user_id", "u1"), Identifier("email", "e")]
    owners = {("user_id", "u1"): 1, ("email", "e"): 2}
    counts = {1: {"user_id": 1}, 2: {"user_id": 1, "email": 1}}
    plan = plan_resolution(ids, owners, counts, LIMITS)
    assert plan.primary == 1 and plan.merge == ()


def test_new_user_id_does_not_join_a_profile_with_another_user_id() -> None:
    # A shared device: anonymous id a1 belongs to u1's profile; u2 logs in on it.
    ids = [Identifier("user_id", "u2"), Identifier("anonymous_id", "a1")]
    owners = {("anonymous_id", "a1"): 1}
    counts = {1: {"user_id": 1, "anonymous_id": 1}}
    plan = plan_resolution(ids, owners, counts, LIMITS)
    assert plan.primary is None
    assert plan.attach == (Identifier("user_id", "u2"),)


def test_merge_limit_stops_a_shared_value_from_gluing_people() -> None:
    ids = [Identifier("anonymous_id", "shared"), Identifier("anonymous_id", "mine")]
    owners = {("anonymous_id", "shared"): 1, ("anonymous_id", "mine"): 2}
    counts = {1: {"anonymous_id": 3}, 2: {"anonymous_id": 1}}
    plan = plan_resolution(ids, owners, counts, LIMITS)
    assert plan.merge == ()


def test_attachment_respects_the_per_kind_limit() -> None:
    ids = [Identifier("user_id", "u1"), Identifier("email", "e3")]
    owners = {("user_id", "u1"): 1}
    counts = {1: {"user_id": 1, "email": 2}}
    plan = plan_resolution(ids, owners, counts, LIMITS)
    assert plan.attach == () and plan.refused == (Identifier("email", "e3"),)
