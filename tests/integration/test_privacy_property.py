"""Property (SPEC §8): emails and phone numbers hidden anywhere in a message never reach the database
file, its WAL or the log, raw or URL-encoded.

Hypothesis builds valid Segment messages and hides emails (any valid address, in every case, raw,
inside free text, in object keys, URL-encoded once or twice in URLs and query strings, as ids) and
phone numbers (E.164, international and national formats, numbers; under phone-named keys at any
depth, and international ones inside free text) at random places. Each goes through the real app
into a real SQLite file, processing runs (profiles, cohort traits, Events API documents), and then
the raw bytes on disk and in the log must hold none of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ingest_harness import IngestServer, basic_auth, ingest_server, signature

_ids = itertools.count(1)
REGIONS = ["FR", "US", "GB", "DE", "ES", "BR", "IN", "JP", "AU", "NL"]
PHONE_KEYS = [
    "phone",
    "Phone",
    "PHONE",
    "phone_number",
    "phoneNumber",
    "PhoneNumber",
    "mobile",
    "Mobile",
    "mobile_phone",
    "mobilePhone",
    "cell",
    "tel",
    "telephone",
    "home_phone",
    "billingPhone",
    "phone2",
]
SEGMENT_EVENTS = ["Order Completed", "Product Viewed", "Products Searched", "Cart Viewed", "Trial Started"]

keys = st.text(st.characters(codec="utf-8", categories=["L", "N", "Pc", "Pd"]), min_size=1, max_size=12)
noise = st.text(max_size=20)
emails = st.emails().filter(lambda e: len(e) <= 200)


@st.composite
def phone_numbers(draw: st.DrawFn) -> phonenumbers.PhoneNumber:
    """A valid mobile number of a random region (its example number with new last digits)."""
    region = draw(st.sampled_from(REGIONS))
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    significant = str(example.national_number)
    digits = draw(st.text("0123456789", min_size=4, max_size=4))
    number = phonenumbers.parse("+" + str(example.country_code) + significant[:-4] + digits)
    if not phonenumbers.is_valid_number(number):
        number = example  # the region's own example is valid
    return number


class Secrets:
    """What was hidden, and every form of it that must not be found (lowercased)."""

    def __init__(self) -> None:
        self.forms: set[str] = set()

    def email(self, email: str) -> None:
        once = quote(email, safe="")
        self.forms |= {email, once, quote(email), quote_plus(email), quote(once, safe="")}

    def phone(self, number: phonenumbers.PhoneNumber, sent: str) -> None:
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        self.forms |= {e164[1:], sent}

    def found_in(self, data: bytes) -> list[str]:
        return sorted(form for form in self.forms if form.lower().encode() in data)


Planter = Callable[[st.DrawFn, dict[str, Any], Secrets], None]


def place(draw: st.DrawFn, message: dict[str, Any], key: str, value: Any) -> None:
    """Put `value` under `key` somewhere in `message`: at the top, or in one of its objects, up to
    three random objects (or lists) deep."""
    root = draw(st.sampled_from(["", "properties", "context", "context.page", "context.traits", "integrations"]))
    if message["type"] in {"identify", "group"}:
        root = draw(st.sampled_from([root, "traits"]))
    node = message
    for part in filter(None, root.split(".")):
        node = node.setdefault(part, {})
    if node is message:
        key = "custom_" + key  # a custom top-level key, not one Segment defines
    for _ in range(draw(st.integers(0, 3))):
        node = node.setdefault(draw(keys), {})
        if not isinstance(node, dict):
            return  # the path ran into a value planted before: this one is skipped
    node[key] = [draw(noise), value] if draw(st.booleans()) else value


def email_in_text(draw: st.DrawFn, message: dict[str, Any], secrets: Secrets) -> None:
    email = draw(emails)
    secrets.email(email)
    shapes = [
        email,
        email.upper(),
        f" {email} ",
        f"{draw(noise)} <{email}>",
        f"Write to {email}, thanks",
        f"mailto:{email}",
    ]
    place(draw, message, draw(keys), draw(st.sampled_from(shapes)))


def email_in_url(draw: st.DrawFn, message: dict[str, Any], secrets: Secrets) -> None:
    email = draw(emails)
    secrets.email(email)
    once = quote(email, safe="")
    query = draw(st.sampled_from([f"email={once}", f"e={quote_plus(email)}", f"next=%2Fp%3Fe%3D{quote(once)}"]))
    url = f"https://shop.example/{draw(st.sampled_from(['cart', 'p/1', 'u/' + quote(email)]))}?{query}&utm_source=mail"
    page = message.setdefault("context", {}).setdefault("page", {})
    field = draw(st.sampled_from(["url", "referrer", "search", "path", "title"]))
    page[field] = url if field != "search" else "?" + query
    if draw(st.booleans()):
        message.setdefault("properties", {})["url"] = url


def email_as_key(draw: st.DrawFn, message: dict[str, Any], secrets: Secrets) -> None:
    email = draw(emails)
    secrets.email(email)
    place(draw, message, email, draw(noise))


def email_as_id(draw: st.DrawFn, message: dict[str, Any], secrets: Secrets) -> None:
    email = draw(emails)
    secrets.email(email)
    key = draw(st.sampled_from(["userId", "anonymousId", "groupId", "event"]))
    if key == "event" and message["type"] != "track":
        key = "userId"
    message[key] = draw(st.sampled_from([email, f"Jane <{email}>", email.upper()]))


def email_as_identifier(draw: st.DrawFn, message: dict[str, Any], secrets: Secrets) -> None:
    email = draw(emails)
    secrets.email(email)
    where = draw(st.sampled_from(["traits", "context.traits", "properties"]))
    node = message
    for part in where.split("."):
        node = node.setdefault(part, {})
    node["email"] = email


def phone_under_its_key(draw: st.DrawFn, message: dict[str, Any], secrets: Secrets) -> None:
    number = draw(phone_numbers())
    formats = [
        phonenumbers.PhoneNumberFormat.E164,
        phonenumbers.PhoneNumberFormat.INTERNATIONAL,
        phonenumbers.PhoneNumberFormat.NATIONAL,
    ]
    sent = phonenumbers.format_number(number, draw(st.sampled_from(formats)))
    secrets.phone(number, sent)
    value: Any = int(sent[1:]) if draw(st.booleans()) and sent.startswith("+") and sent[1:].isdigit() else sent
    place(draw, message, draw(st.sampled_from(PHONE_KEYS)), value)


def phone_in_text(draw: st.DrawFn, message: dict[str, Any], secrets: Secrets) -> None:
    number = draw(phone_numbers())
    formats = [phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL]
    sent = phonenumbers.format_number(number, draw(st.sampled_from(formats)))
    secrets.phone(number, sent)
    place(draw, message, draw(keys), f"call me on {sent} after 6pm")


PLANTERS: list[Planter] = [
    email_in_text,
    email_in_url,
    email_as_key,
    email_as_id,
    email_as_identifier,
    phone_under_its_key,
    phone_in_text,
]


@st.composite
def messages_with_secrets(draw: st.DrawFn) -> tuple[dict[str, Any], Secrets]:
    kind = draw(st.sampled_from(["track", "identify", "page", "screen", "group"]))
    message: dict[str, Any] = {"type": kind, "userId": f"u{next(_ids)}", "messageId": f"m{next(_ids)}"}
    if kind == "track":
        message["event"] = draw(st.sampled_from(SEGMENT_EVENTS))
        product = {"product_id": "P1", "price": 10, "quantity": 1}
        message["properties"] = {"order_id": f"o{next(_ids)}", "currency": "EUR", "products": [product], **product}
    if kind == "group":
        message["groupId"] = f"g{next(_ids)}"
    # An email on the person so that Events API documents get queued (their full_url included).
    message["context"] = {"traits": {"email": f"buyer{next(_ids)}@example.com"}, "page": {}}
    secrets = Secrets()
    for planter in draw(st.lists(st.sampled_from(PLANTERS), min_size=1, max_size=5)):
        planter(draw, message, secrets)
    return message, secrets


@pytest.fixture(scope="module")
def server() -> Iterator[IngestServer]:
    with ingest_server() as running:
        yield running


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(messages_with_secrets(), min_size=1, max_size=3), webhook=st.booleans())
def test_no_email_or_phone_reaches_the_disk_or_the_log(
    server: IngestServer, batch: list[tuple[dict[str, Any], Secrets]], webhook: bool
) -> None:
    messages = [message for message, _ in batch]
    with server.fresh() as env:
        if webhook:
            first = orjson.dumps(messages[0])
            body = b"[" + b",".join([first, *(orjson.dumps(m) for m in messages[1:])]) + b"]"
            response = env.http.post("/webhooks/engage", content=body, headers={"X-Signature": signature(first)})
        else:
            body = orjson.dumps({"batch": messages})
            response = env.http.post("/v1/batch", content=body, headers=basic_auth())
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True}  # every message stored: the test is not vacuous
        assert env.drain() == len(messages)
        assert env.store.failed_event_count() == 0
        written = env.disk_and_log()
    assert [form for _, secrets in batch for form in secrets.found_in(written)] == []
