"""Per-message validation and normalisation, envelope merging, and the pure body checks
(JSON depth, which bytes a webhook signature covers)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from segcrit.sources.limits import json_depth_ok
from segcrit.sources.validate import (
    TRACKING_TYPES,
    WEBHOOK_TYPES,
    MessageRules,
    format_timestamp,
    merge_envelope,
    parse_timestamp,
    prepare_messages,
)
from segcrit.sources.webhook import signature_ok, signed_part

RECEIVED = 1_800_000_000.5
TRACKING = MessageRules(TRACKING_TYPES, 32_768)
WEBHOOK = MessageRules(WEBHOOK_TYPES, 32_768, keep_received_at=True)


def epoch(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def track(**fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1"}
    message.update(fields)
    return {k: v for k, v in message.items() if v is not ...}


def prepare_one(message: Any, rules: MessageRules = TRACKING) -> tuple[dict[str, Any] | None, str | None]:
    prepared = prepare_messages([message], rules, received_at=RECEIVED, new_id=lambda: "generated")
    if prepared.rejected:
        assert prepared.rejected[0]["index"] == 0
        return None, prepared.rejected[0]["reason"]
    return prepared.messages[0], None


# ----------------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T13:03:09.359+00:00", epoch(2026, 11, 28, 13, 3, 9) + 0.359),
        ("2026-11-28T13:03:09.359Z", epoch(2026, 11, 28, 13, 3, 9) + 0.359),
        ("2026-11-28T13:03:09Z", epoch(2026, 11, 28, 13, 3, 9)),
        ("2026-11-28T13:03:09.123456Z", epoch(2026, 11, 28, 13, 3, 9) + 0.123456),
        ("2026-11-28T13:03:09.123456789Z", epoch(2026, 11, 28, 13, 3, 9) + 0.123456),
        ("2026-11-28T15:03:09+02:00", epoch(2026, 11, 28, 13, 3, 9)),
        ("2026-11-28T08:03:09-0500", epoch(2026, 11, 28, 13, 3, 9)),
        ("2026-11-28T13:03:09", epoch(2026, 11, 28, 13, 3, 9)),  # no offset: UTC
        ("2026-11-28 13:03:09.5Z", epoch(2026, 11, 28, 13, 3, 9) + 0.5),
    ],
)
def test_timestamps_parsed(text: str, expected: float) -> None:
    assert parse_timestamp(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "",
        "2026-11-28",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-28T25:00:00Z",
        "2026-11-28T13:03:09.1234567890Z",
        "2026-11-28T13:03:09+02:00:00",
        1_800_000_000,
        None,
        ["2026"],
    ],
)
def test_timestamps_rejected(value: Any) -> None:
    assert parse_timestamp(value) is None


def test_format_timestamp_round_trips() -> None:
    assert format_timestamp(RECEIVED) == "2027-01-15T08:00:00.500Z"
    assert parse_timestamp(format_timestamp(RECEIVED)) == RECEIVED


# ------------------------------------------------------------------------------------ messages


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (track(userId=None), "neither userId nor anonymousId"),
        (track(userId=""), "neither userId nor anonymousId"),
        (track(userId=True), "userId and anonymousId must be strings"),
        (track(userId={"id": 1}), "userId and anonymousId must be strings"),
        (track(event=...), "track needs event"),
        (track(event=""), "track needs event"),
        (track(event=7), "track needs event"),
        (track(type="explode"), "type must be one of alias, group, identify, page, screen, track"),
        (track(type=None), "type must be one of alias, group, identify, page, screen, track"),
        (track(type="delete"), "type must be one of alias, group, identify, page, screen, track"),
        ({"type": "alias", "userId": "u1"}, "alias needs previousId and userId"),
        ({"type": "alias", "previousId": "a1", "anonymousId": "x"}, "alias needs previousId and userId"),
        ({"type": "group", "userId": "u1"}, "group needs groupId"),
        ({"type": "group", "userId": "u1", "groupId": {}}, "group needs groupId"),
        (track(messageId="m" * 101), "messageId longer than 100 characters"),
        (track(messageId=["m"]), "messageId must be a string"),
        (track(timestamp="last tuesday"), "timestamp is not ISO-8601"),
        (track(timestamp=1_800_000_000), "timestamp is not ISO-8601"),
        (track(properties=[1]), "properties must be an object"),
        (track(context="web"), "context must be an object"),
        (track(integrations=True), "integrations must be an object"),
        ({"type": "identify", "userId": "u", "traits": "x"}, "traits must be an object"),
        ("not an object", "message is not a JSON object"),
        (None, "message is not a JSON object"),
    ],
)
def test_invalid_messages(message: Any, reason: str) -> None:
    assert prepare_one(message) == (None, reason)


@pytest.mark.parametrize(
    "message",
    [
        track(userId=None, anonymousId="a1"),
        track(),
        {"type": "identify", "anonymousId": "a1", "traits": {"plan": "pro"}},
        {"type": "page", "userId": "u1", "name": "Home"},
        {"type": "screen", "userId": "u1"},
        {"type": "group", "userId": "u1", "groupId": 42},
        {"type": "alias", "userId": "u1", "previousId": "a1"},
        track(messageId="m" * 100),
    ],
)
def test_valid_messages(message: dict[str, Any]) -> None:
    out, reason = prepare_one(message)
    assert reason is None and out is not None


def test_delete_only_from_webhooks() -> None:
    delete = {"type": "delete", "userId": "u1"}
    assert prepare_one(delete)[1] is not None
    out, reason = prepare_one(delete, WEBHOOK)
    assert reason is None and out is not None and out["type"] == "delete"


def test_ids_are_normalised() -> None:
    out, _ = prepare_one(track(userId=42, anonymousId=7.0, messageId=12345))
    assert out is not None
    assert (out["userId"], out["anonymousId"], out["messageId"]) == ("42", "7", "12345")
    out, _ = prepare_one(track(userId=1.5))
    assert out is not None and out["userId"] == "1.5"
    out, _ = prepare_one({"type": "group", "userId": "u", "groupId": 9})
    assert out is not None and out["groupId"] == "9"


def test_missing_message_id_is_generated() -> None:
    for missing in (..., None, ""):
        out, _ = prepare_one(track(messageId=missing))
        assert out is not None and out["messageId"] == "generated"


def test_times_are_recorded() -> None:
    out, _ = prepare_one(track(timestamp="2026-11-28T13:03:09.359Z"))
    assert out is not None
    assert out["_segcrit"]["ts"] == pytest.approx(epoch(2026, 11, 28, 13, 3, 9) + 0.359)
    assert out["_segcrit"]["received_at"] == RECEIVED
    assert out["receivedAt"] == "2027-01-15T08:00:00.500Z"
    assert out["timestamp"] == "2026-11-28T13:03:09.359Z"


def test_missing_timestamp_is_the_receive_time() -> None:
    out, _ = prepare_one(track(timestamp=None))
    assert out is not None
    assert out["_segcrit"]["ts"] == RECEIVED
    assert out["timestamp"] == "2027-01-15T08:00:00.500Z"


def test_received_at_from_a_client_is_replaced_but_segment_webhooks_keep_theirs() -> None:
    sent = "2026-01-01T00:00:00.000Z"
    out, _ = prepare_one(track(receivedAt=sent))
    assert out is not None and out["receivedAt"] == "2027-01-15T08:00:00.500Z"
    out, _ = prepare_one(track(receivedAt=sent), WEBHOOK)
    assert out is not None and out["receivedAt"] == sent
    assert out["_segcrit"]["received_at"] == RECEIVED


def test_null_objects_are_dropped() -> None:
    out, _ = prepare_one(track(properties=None, context=None, integrations=None))
    assert out is not None
    assert not {"properties", "context", "integrations"} & out.keys()


def test_forged_reserved_key_and_write_key_are_not_kept() -> None:
    out, _ = prepare_one(track(writeKey="WK_secret", _segcrit={"ts": 1, "emails": [{"sha256": "x"}]}))
    assert out is not None
    assert "writeKey" not in out
    assert out["_segcrit"]["emails"] == []
    assert out["_segcrit"]["ts"] == RECEIVED


def test_messages_are_sanitised() -> None:
    out, _ = prepare_one(track(context={"traits": {"email": "A@B.com"}}))
    assert out is not None
    assert out["context"]["traits"] == {}
    assert out["_segcrit"]["emails"] == [
        {"sha256": hashlib.sha256(b"a@b.com").hexdigest(), "md5": hashlib.md5(b"a@b.com").hexdigest()}
    ]


def test_message_size_limit() -> None:
    rules = MessageRules(TRACKING_TYPES, 1_000)
    base = track()
    fits = track(properties={"pad": "x" * (1_000 - len(orjson.dumps(track(properties={"pad": ""}))))})
    assert len(orjson.dumps(fits)) == 1_000
    too_big = track(properties={"pad": "x" * 1_000})
    prepared = prepare_messages([base, too_big, fits], rules, received_at=RECEIVED)
    assert prepared.rejected == [{"index": 1, "reason": "message exceeds 1000 bytes"}]
    assert [m["messageId"] for m in prepared.messages] == ["m1", "m1"]


def test_batch_keeps_valid_messages_and_reports_the_rest_by_index() -> None:
    items = [track(messageId="a"), track(event=...), 5, track(messageId="b"), {"type": "track"}]
    prepared = prepare_messages(items, TRACKING, received_at=RECEIVED)
    assert [m["messageId"] for m in prepared.messages] == ["a", "b"]
    assert prepared.rejected == [
        {"index": 1, "reason": "track needs event"},
        {"index": 2, "reason": "message is not a JSON object"},
        {"index": 4, "reason": "neither userId nor anonymousId"},
    ]


# ------------------------------------------------------------------------------------ envelope


def test_envelope_is_merged_under_the_message_own_keys() -> None:
    context = {"ip": "1.1.1.1", "library": {"name": "batch"}}
    integrations = {"All": False}
    own = track(context={"ip": "2.2.2.2"}, integrations={"Webhooks": True})
    merged = merge_envelope(own, context, integrations)
    assert merged["context"] == {"ip": "2.2.2.2", "library": {"name": "batch"}}
    assert merged["integrations"] == {"All": False, "Webhooks": True}
    assert own["context"] == {"ip": "2.2.2.2"}  # the input is not modified
    bare = merge_envelope(track(), context, None)
    assert bare["context"] == context and bare["context"] is not context
    assert "integrations" not in bare


def test_envelope_counts_towards_the_message_size() -> None:
    rules = MessageRules(TRACKING_TYPES, 1_000)
    prepared = prepare_messages([track()], rules, received_at=RECEIVED, context={"pad": "x" * 1_000})
    assert prepared.rejected == [{"index": 0, "reason": "message exceeds 1000 bytes"}]


# ---------------------------------------------------------------------------------- json depth


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        (nested(32), True),
        (nested(33), False),
        (b'{"a":' * 32 + b"1" + b"}" * 32, True),
        (b'{"a":' * 33 + b"1" + b"}" * 33, False),
        (b'{"a":[{"b":[' + b"]}]}", True),
        # Brackets inside strings do not nest, escaped quotes do not end a string.
        (b'{"s":"' + b"[" * 100 + b'"}', True),
        (b'{"s":"\\"' + b"[" * 100 + b'\\"","t":"\\\\"}', True),
        (b'["\\\\"' + b",[" * 40 + b"]" * 40 + b"]", False),
        (orjson.dumps({"batch": [{"context": {"traits": {"a": [1, {"b": [2]}]}}}] * 100}), True),
    ],
)
def test_json_depth(body: bytes, ok: bool) -> None:
    assert json_depth_ok(body, 32) is ok


# ----------------------------------------------------------------------------- webhook signing


def test_object_body_is_signed_whole() -> None:
    body = b'{"type":"track","event":"E"}'
    assert signed_part(body) == body


def test_array_body_signs_the_raw_bytes_of_element_zero() -> None:
    first = '{"n":1e-7,"big":123456789012345680000,"s":"Zoë \u2028 /\\""}'.encode()
    body = b"[ " + first + b',{"other":1}]'
    assert signed_part(body) == first
    good = hmac.new(b"secret", first, hashlib.sha1).hexdigest()
    assert signature_ok(b"secret", body, good)
    assert signature_ok(b"secret", body, good.upper())
    assert not signature_ok(b"secret", body, hmac.new(b"secret", body, hashlib.sha1).hexdigest())
    assert not signature_ok(b"other", body, good)


@pytest.mark.parametrize("body", [b"[]", b"[", b"[\xff]", b"[{]"])
def test_array_without_a_readable_element_zero_cannot_be_verified(body: bytes) -> None:
    assert signed_part(body) is None
    assert not signature_ok(b"secret", body, "00")
