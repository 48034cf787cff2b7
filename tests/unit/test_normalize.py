"""Identifier normalisation and hashing, and the removal of raw emails/phones from messages."""

from __future__ import annotations

import copy
import hashlib
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segcrit.identity.normalize import (
    REDACTED,
    _may_hold_phone_key,
    email_hashes,
    is_phone_key,
    normalize_email,
    normalize_phone,
    phone_hashes,
    phone_key_hints,
    pseudonymous_id,
    redact_text,
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
    assert out["properties"]["products"][0] == {"id": "p1", "note": f"gift for {REDACTED}"}
    assert out["context"]["page"]["title"] == f"Write to {REDACTED}"
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


def test_non_object_containers_are_left_for_validation_but_never_raw() -> None:
    message = {"type": "track", "event": "E", "userId": "u", "properties": "x@y.com", "context": 3}
    out = sanitize_message(message)
    assert out["properties"] == REDACTED  # validation rejects this message, but nothing raw stays
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
    out = sanitize_message({"type": "track", "userId": " Jane@Example.com", "anonymousId": "a-1"})
    assert out["userId"] == pseudonymous_id("jane@example.com")
    assert out["anonymousId"] == "a-1"
    assert out["_segcrit"]["emails"][0]["sha256"] == email_hashes("jane@example.com")[0]
    assert "jane" not in str(out).lower()


# ---------------------------------------------------------------------- the whole message tree


def sanitized_bytes(message: dict[str, Any], **options: Any) -> tuple[dict[str, Any], bytes]:
    """What ingest does: sanitise with the serialisation as hint; also the stored bytes, lowercased."""
    out = sanitize_message(message, serialised=orjson.dumps(message), **options)
    return out, orjson.dumps(out).lower()


def test_emails_are_redacted_in_every_place_of_the_message() -> None:
    message = {
        "type": "track",
        "event": "Invited friend@example.com",
        "userId": "u1",
        "channel": "ops: jane.roe@example.com",  # a custom top-level key
        "integrations": {"Webhooks": {"note": "cc boss@example.com"}},
        "context": {"campaign": {"content": ["a", {"deep": ["x", "to: Deep@Example.com"]}]}},
        "properties": {"jane.doe@example.com": 1, "comment": "Mail me: <ops+eu@sub.example.co.uk>."},
    }
    out, stored = sanitized_bytes(message)
    for raw in (b"friend@", b"jane.roe@", b"boss@", b"deep@", b"jane.doe@", b"ops+eu@"):
        assert raw not in stored
    assert out["event"] == f"Invited {REDACTED}"
    assert out["channel"] == f"ops: {REDACTED}"
    assert out["integrations"] == {"Webhooks": {"note": f"cc {REDACTED}"}}
    assert out["context"]["campaign"]["content"] == ["a", {"deep": ["x", f"to: {REDACTED}"]}]
    assert out["properties"] == {REDACTED: 1, "comment": f"Mail me: <{REDACTED}>."}
    # Only the identifier sources of SPEC §5 make identifiers: none of these does.
    assert out["_segcrit"] == {"emails": [], "phones": []}


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        (
            "https://shop.example/cart?email=jane%40example.com&utm=mail",
            "https://shop.example/cart?email=[redacted]&utm=mail",
        ),
        ("https://shop.example/cart?email=JANE%40EXAMPLE.COM", "https://shop.example/cart?email=[redacted]"),
        ("https://shop.example/?e=jane%2Btag%40example.com#top", "https://shop.example/?e=[redacted]#top"),
        ("https://shop.example/?e=jane+tag%40example.com", "https://shop.example/?e=[redacted]"),
        # Doubly encoded: the encoded delimiters before the address go with it.
        ("https://shop.example/?next=%2Fp%3Fe%3Djane%2540example.com", "https://shop.example/?next=[redacted]"),
        ("https://shop.example/u/jane@example.com/orders", "https://shop.example/u/[redacted]/orders"),
        ("?email=jane%40example.com", "?email=[redacted]"),
    ],
)
def test_emails_in_urls_are_redacted_raw_and_url_encoded_and_the_url_keeps_its_shape(url: str, kept: str) -> None:
    page = {"url": url, "referrer": url, "search": url[url.index("?") :] if "?" in url else "", "path": url}
    message = {"type": "page", "userId": "u1", "context": {"page": page}, "properties": {"url": url}}
    out, stored = sanitized_bytes(message)
    assert out["context"]["page"]["url"] == kept
    assert out["context"]["page"]["referrer"] == kept
    assert out["properties"]["url"] == kept
    assert b"jane" not in stored


@pytest.mark.parametrize(
    "text",
    [
        "pkg@1.2.3",
        "@shopfan",
        "user@localhost",
        "50% off, 40 left",
        "https://shop.example/p?q=a%20b",
        "2026-11-28T13:03:09.359+10:00",
        "order +1234",
    ],
)
def test_look_alikes_are_kept(text: str) -> None:
    message = {"type": "track", "event": "E", "userId": "u", "properties": {"text": text}}
    assert sanitize_message(message, serialised=orjson.dumps(message))["properties"]["text"] == text


@pytest.mark.parametrize(
    ("key", "phone"),
    [
        ("phone", True),
        ("Phone", True),
        ("phone_number", True),
        ("phoneNumber", True),
        ("PhoneNumber", True),
        ("phone-number", True),
        ("mobile", True),
        ("mobile_phone", True),
        ("mobilePhone", True),
        ("cell", True),
        ("cellPhone", True),
        ("tel", True),
        ("telephone", True),
        ("billing_phone", True),
        ("home phone", True),
        ("phone2", True),
        ("phones", True),
        ("msisdn", True),
        ("fax", True),
        ("Téléphone", True),
        ("custom_cell", True),
        ("work_tel", True),
        ("Mobile Number", True),
        ("phoneNumbers", True),
        ("tel_no", True),
        ("phone_verified", False),
        ("hotel", False),
        ("automobile", False),
        ("cellular", False),
        ("telemetry", False),
        ("order_number", False),
        ("name", False),
    ],
)
def test_phone_named_keys(key: str, phone: bool) -> None:
    assert is_phone_key(key) is phone


def test_phones_under_phone_named_keys_are_identifiers_in_the_person_s_objects_and_redacted_elsewhere() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "mobile": "+44 7911 123456",  # top level: not an identifier source, never raw
        "traits": {"phone_number": "06 12 34 56 78", "mobilePhone": "+1 (415) 555-2671", "plan": "pro"},
        "context": {
            "traits": {"Cell": 33698765432},
            "device": {"phone": "+33 6 11 11 11 11", "type": "ios"},
            "network": {"cellular": True},
        },
        "properties": {"shipping": {"tel": "0611223344", "city": "Paris"}, "phones": ["+33622334455"]},
    }
    out, stored = sanitized_bytes(message, phone_region="FR")
    assert out["_segcrit"]["phones"] == [
        hashes_of("+33612345678"),
        hashes_of("+14155552671"),
        hashes_of("+33622334455"),
        hashes_of("+33698765432"),
    ]
    assert out["traits"] == {"plan": "pro"}
    assert out["context"]["traits"] == {}
    assert out["properties"] == {"shipping": {"tel": REDACTED, "city": "Paris"}}
    assert out["mobile"] == REDACTED
    assert out["context"]["device"] == {"phone": REDACTED, "type": "ios"}
    assert out["context"]["network"] == {"cellular": True}
    for raw in (
        b"612345678",
        b"06 12 34",
        b"4155552671",
        b"415) 555",
        b"7911",
        b"611111111",
        b"0611223344",
        b"98765432",
    ):
        assert raw not in stored


def test_international_numbers_in_free_text_are_redacted() -> None:
    message = {
        "type": "track",
        "event": "Callback Requested",
        "userId": "u1",
        "properties": {"note": "call +33 6 12 34 56 78 after 6pm", "ref": "PO +1234-56", "score": "+12.5"},
    }
    out, stored = sanitized_bytes(message)
    assert out["properties"] == {"note": f"call {REDACTED} after 6pm", "ref": "PO +1234-56", "score": "+12.5"}
    assert b"12 34 56 78" not in stored


def test_ids_never_keep_an_email_or_phone_but_stay_distinct() -> None:
    message = {
        "type": "group",
        "userId": "Jane Roe <jane@example.com>",
        "anonymousId": "+33612345678",
        "groupId": "Billing@Acme.com",
        "messageId": "<1234@mail.example.com>",
        "traits": {"name": "Acme"},
    }
    out, stored = sanitized_bytes(message)
    assert out["groupId"] == pseudonymous_id("billing@acme.com")
    assert out["messageId"] == pseudonymous_id("<1234@mail.example.com>")  # shaped like one: hashed alike
    for key in ("userId", "anonymousId"):
        assert out[key] == "sha256:" + hashlib.sha256(message[key].encode()).hexdigest()
    assert out["_segcrit"] == {"emails": [], "phones": []}  # a group id is not the person's email
    assert b"jane" not in stored and b"acme.com" not in stored and b"612345678" not in stored
    other = sanitize_message({**message, "userId": "Joe Bloggs <joe@example.com>"})
    assert other["userId"] != out["userId"]


def test_without_hints_nothing_is_walked_or_copied() -> None:
    message = {
        "type": "track",
        "event": "Product Viewed",
        "userId": "u1",
        "timestamp": "2026-11-28T13:03:09.359+00:00",
        "properties": {"product_id": "p1", "price": 10, "url": "https://shop.example/p/1?a=%20"},
        "context": {"userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Mobile/15E148", "traits": {"plan": "x"}},
    }
    out = sanitize_message(message, serialised=orjson.dumps(message))
    assert out["properties"] is message["properties"]
    assert out["context"] is message["context"]
    assert out == {**message, "_segcrit": {"emails": [], "phones": []}}


def test_hints_read_keys_not_values() -> None:
    # "phone" only inside a value: nothing to take; under a key in any case: found.
    message = {"type": "track", "event": "E", "userId": "u", "properties": {"device": "iPhone", "PHONE": "x"}}
    out = sanitize_message(message, serialised=orjson.dumps(message))
    assert out["properties"] == {"device": "iPhone"}


def test_redact_text() -> None:
    assert redact_text("no pii here") == "no pii here"
    text = "plain"
    assert redact_text(text) is text
    assert redact_text("mail a.b@example.com or +33 6 12 34 56 78") == f"mail {REDACTED} or {REDACTED}"


# ------------------------------------------------------------------ the fast paths never skip work

key_texts = st.one_of(
    st.text(max_size=12),
    st.builds(
        "{}{}{}{}".format,
        st.sampled_from(["", "home_", "billing", "Custom ", "x."]),
        st.sampled_from(["phone", "Phone", "PHONE", "mobile", "Mobile", "cell", "tel", "fax", "msisdn", "telephone"]),
        st.sampled_from(["", "s", "_number", "Number", "numbers", " no", "-num", "Nr", "No"]),
        st.sampled_from(["", "2", "_3", " ", "-", "\t", "é"]),
    ),
)


@settings(max_examples=500, deadline=None, database=None)
@given(key=key_texts, depth=st.integers(0, 3))
def test_the_phone_key_hint_finds_every_phone_named_key(key: str, depth: int) -> None:
    tree: Any = {key: "06 12 34 56 78"}  # national: only its key says it is a number
    for _ in range(depth):
        tree = {"k": [tree]}
    message = {"type": "track", "event": "E", "userId": "u", "properties": tree}
    with_hints = sanitize_message(message, serialised=orjson.dumps(message))
    assert with_hints == sanitize_message(message)  # the same as with every search run


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(max_size=40), email=st.emails(), phone=st.sampled_from(["+33 6 12 34 56 78", "+14155552671"]))
def test_the_text_hints_find_every_email_and_number(text: str, email: str, phone: str) -> None:
    for value in (text, f"{text}{email}", f"{text} {phone}", f"{text}{quote(email, safe='')}"):
        message = {"type": "track", "event": "E", "userId": "u", "properties": {"note": value}}
        assert sanitize_message(message, serialised=orjson.dumps(message)) == sanitize_message(message)


@settings(max_examples=300, deadline=None, database=None)
@given(keys=st.lists(st.one_of(key_texts, st.just("name")), min_size=1, max_size=6))
def test_the_batch_phone_key_hint_is_each_messages_own(keys: list[str]) -> None:
    # One search over the whole batch (prepare_messages) must say what a search of each would.
    texts = [orjson.dumps({"type": "track", "properties": {key: "06 12 34 56 78"}}) for key in keys]
    assert phone_key_hints(texts) == [_may_hold_phone_key(text) for text in texts]
    assert phone_key_hints([]) == []
