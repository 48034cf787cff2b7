"""Identifier normalisation and hashing, and the removal of raw emails/phones from messages."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import orjson
import pytest

from segcrit.identity.normalize import (
    REDACTED,
    email_hashes,
    normalize_email,
    normalize_phone,
    phone_hashes,
    sanitize_message,
    sha256_md5,
)

# Criteo's published test vector.
CRITEO_EMAIL = "john.doe@gmail.com"
CRITEO_SHA256 = "375320dd9ae7ed408002f3768e16cb5f28c861062fd50dff9a3bff62e9dce4ef"
CRITEO_MD5 = "e13743a7f1db7f4246badd6fd6ff54ff"
CRITEO_SHA256_MD5 = "000e3171a5110c35c69d060112bd0ba55d9631c7c2ec93f1840e4570095b263a"


def hashes_of(value: str) -> dict[str, str]:
    data = value.encode()
    return {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}


# ------------------------------------------------------------------------------------- emails


def test_criteo_vector() -> None:
    normalized = normalize_email("  John.Doe@GMAIL.com\t")
    assert normalized == CRITEO_EMAIL
    sha256, md5 = email_hashes(normalized)
    assert (sha256, md5) == (CRITEO_SHA256, CRITEO_MD5)
    assert sha256_md5(md5) == CRITEO_SHA256_MD5


@pytest.mark.parametrize(
    "raw",
    [
        None,
        42,
        True,
        ["a@b.com"],
        "",
        "   ",
        "n/a",
        "john",
        "john@",
        "@gmail.com",
        "john@localhost",
        "john doe@gmail.com",
        "john@@gmail.com",
        "john@gmail.",
        "a" * 250 + "@b.com",
    ],
)
def test_not_an_email(raw: Any) -> None:
    assert normalize_email(raw) is None


@pytest.mark.parametrize("raw", ["a@b.co", "first.last+tag@sub.example.org", "Zoë@exämple.de"])
def test_emails_accepted(raw: str) -> None:
    assert normalize_email(raw) == raw.lower()


# ------------------------------------------------------------------------------------- phones


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+33 6 12 34 56 78", None, "+33612345678"),
        ("+1 (415) 555-2671", None, "+14155552671"),
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("(415) 555-2671", "US", "+14155552671"),
        (33612345678, "FR", "+33612345678"),
    ],
)
def test_phones_to_e164(raw: Any, region: str | None, expected: str) -> None:
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("06 12 34 56 78", None),  # no country and no default region: ambiguous
        ("4155552671", None),
        ("+33 1", None),  # too short to be valid
        ("not a phone", None),
        ("", None),
        (None, "FR"),
        (True, "FR"),
        ("+1" + "5" * 80, None),
    ],
)
def test_phones_rejected(raw: Any, region: str | None) -> None:
    assert normalize_phone(raw, region) is None


def test_phone_hashes() -> None:
    sha256, md5 = phone_hashes("+33612345678")
    assert {"sha256": sha256, "md5": md5} == hashes_of("+33612345678")


# ---------------------------------------------------------------------------- sanitize_message


def full_message() -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": "u1",
        "traits": {"email": " John.Doe@Gmail.com ", "phone": "+33 6 12 34 56 78", "plan": "pro"},
        "context": {
            "traits": {"email": "other@example.com", "phone": "+1 415 555 2671"},
            "page": {"url": "https://shop.example/p?ref=mail", "title": "Write to boss@example.com"},
            "ip": "1.2.3.4",
        },
        "properties": {
            "email": "JOHN.DOE@gmail.com",
            "products": [{"id": "p1", "note": "gift for jane@example.org"}, {"id": "p2"}],
            "version": "pkg@1.2.3",
            "handle": "@shopfan",
        },
        "_segcrit": {"emails": [{"sha256": "forged", "md5": "forged"}], "ts": 0},
    }


def test_raw_identifiers_are_replaced_by_hashes_in_priority_order() -> None:
    out = sanitize_message(full_message())
    assert out["_segcrit"] == {
        # traits first, then context.traits; properties repeats the traits email (case differs).
        "emails": [hashes_of(CRITEO_EMAIL), hashes_of("other@example.com")],
        "phones": [hashes_of("+33612345678"), hashes_of("+14155552671")],
    }
    assert "email" not in out["traits"] and "phone" not in out["traits"]
    assert out["traits"]["plan"] == "pro"
    assert out["context"]["traits"] == {}
    assert "email" not in out["properties"]


def test_no_raw_email_or_phone_survives_anywhere() -> None:
    text = orjson.dumps(sanitize_message(full_message())).lower()
    for raw in (b"john.doe", b"other@", b"boss@", b"jane@", b"612345678", b"555 2671", b"forged"):
        assert raw not in text


def test_other_strings_holding_an_email_are_redacted() -> None:
    out = sanitize_message(full_message())
    assert out["properties"]["products"][0] == {"id": "p1", "note": REDACTED}
    assert out["context"]["page"]["title"] == REDACTED
    # Look-alikes that are not emails survive.
    assert out["properties"]["version"] == "pkg@1.2.3"
    assert out["properties"]["handle"] == "@shopfan"
    assert out["context"]["page"]["url"] == "https://shop.example/p?ref=mail"


def test_input_is_not_modified() -> None:
    message = full_message()
    before = copy.deepcopy(message)
    sanitize_message(message)
    assert message == before


def test_unchanged_parts_are_shared_not_copied() -> None:
    message = {"type": "track", "event": "E", "userId": "u", "properties": {"a": [1, {"b": "c"}]}}
    out = sanitize_message(message)
    assert out["properties"] is message["properties"]
    assert out["_segcrit"] == {"emails": [], "phones": []}


def test_invalid_values_are_dropped_without_hash() -> None:
    message = {"type": "identify", "userId": "u", "traits": {"email": "n/a", "phone": "12"}}
    out = sanitize_message(message)
    assert out["traits"] == {}
    assert out["_segcrit"] == {"emails": [], "phones": []}


def test_group_traits_describe_the_group_not_the_person() -> None:
    message = {
        "type": "group",
        "userId": "u",
        "groupId": "g",
        "traits": {"email": "billing@acme.com", "name": "Acme"},
        "context": {"traits": {"email": "person@acme.com"}},
    }
    out = sanitize_message(message)
    assert out["traits"] == {"name": "Acme"}
    assert out["_segcrit"]["emails"] == [hashes_of("person@acme.com")]


def test_phone_without_country_needs_a_region() -> None:
    message = {"type": "identify", "userId": "u", "traits": {"phone": "06 12 34 56 78"}}
    assert sanitize_message(message)["_segcrit"]["phones"] == []
    out = sanitize_message(message, phone_region="FR")
    assert out["_segcrit"]["phones"] == [hashes_of("+33612345678")]


def test_non_object_containers_are_left_for_validation() -> None:
    message = {"type": "track", "event": "E", "userId": "u", "properties": "x@y.com", "context": 3}
    out = sanitize_message(message)
    assert out["properties"] == "x@y.com"  # validation rejects this message; nothing to walk here
    assert out["context"] == 3


def test_very_deep_objects_do_not_recurse_without_bound() -> None:
    deep: Any = "deep@example.com"
    for _ in range(300):
        deep = {"k": deep}
    out = sanitize_message({"type": "track", "event": "E", "userId": "u", "properties": deep})
    node = out["properties"]
    levels = 0
    while isinstance(node, dict):
        node = node["k"]
        levels += 1
    assert node == REDACTED
    assert levels < 300


def test_an_email_used_as_user_id_is_stored_pseudonymously() -> None:
    from segcrit.identity.normalize import pseudonymous_id

    out = sanitize_message({"type": "track", "userId": " Jane@Example.com", "anonymousId": "a-1"})
    assert out["userId"] == pseudonymous_id("jane@example.com")
    assert out["anonymousId"] == "a-1"
    assert out["_segcrit"]["emails"][0]["sha256"] == email_hashes("jane@example.com")[0]
    assert "jane" not in str(out).lower()
