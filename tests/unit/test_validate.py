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
    MAX_EPOCH,
    MIN_EPOCH,
    TRACKING_TYPES,
    WEBHOOK_TYPES,
    MessageRules,
    format_timestamp,
    in_time_range,
    merge_envelope,
    parse_timestamp,
    prepare_messages,
    read_timestamp,
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


def prepare_one(
    message: Any, rules: MessageRules = TRACKING, sent_at: float | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    prepared = prepare_messages([message], rules, received_at=RECEIVED, sent_at=sent_at, new_id=lambda: "generated")
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


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (1_800_000_000, "must be an ISO-8601 string"),
        (1.5, "must be an ISO-8601 string"),
        (None, "must be an ISO-8601 string"),
        (True, "must be an ISO-8601 string"),
        ({"$date": "2026-11-28"}, "must be an ISO-8601 string"),
        ("yesterday", "is not ISO-8601"),
        ("2026-11-28T13:03:09.359+00:00:00", "is not ISO-8601"),
        ("2026-13-01T00:00:00Z", "is not a real date and time"),
        ("2026-02-30T00:00:00Z", "is not a real date and time"),
        ("2026-02-29T00:00:00Z", "is not a real date and time"),  # not a leap year
        ("2026-11-28T24:00:00Z", "is not a real date and time"),
        ("2026-11-28T13:60:00Z", "is not a real date and time"),
        ("2026-11-28T13:03:60Z", "is not a real date and time"),
        ("0000-01-01T00:00:00Z", "is not a real date and time"),
        ("2026-11-28T13:03:09+25:00", "has an impossible UTC offset"),
        ("2026-11-28T13:03:09-24:00", "has an impossible UTC offset"),
        ("2026-11-28T13:03:09+02:60", "has an impossible UTC offset"),
        ("2026-11-28T13:03:09+9959", "has an impossible UTC offset"),
        # Valid dates whose offset takes them out of the years a datetime can hold.
        ("0001-01-01T00:00:00+00:01", "is out of range (years 0001 to 9999)"),
        ("0001-01-01T05:00:00+06:00", "is out of range (years 0001 to 9999)"),
        ("9999-12-31T23:30:00-01:00", "is out of range (years 0001 to 9999)"),
    ],
)
def test_why_a_timestamp_is_refused(value: Any, why: str) -> None:
    assert read_timestamp(value) == why
    assert parse_timestamp(value) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0001-01-01T00:00:00Z", MIN_EPOCH),
        ("0001-01-01T00:00:00-23:59", MIN_EPOCH + 86_340),
        ("9999-12-31T23:59:59Z", MAX_EPOCH - 1),
        ("2024-02-29T00:00:00Z", epoch(2024, 2, 29, 0, 0, 0)),
        ("2026-11-28T13:03:09+23:59", epoch(2026, 11, 28, 13, 3, 9) - 86_340),
    ],
)
def test_timestamps_at_the_edges_are_accepted(text: str, expected: float) -> None:
    assert read_timestamp(text) == expected
    assert in_time_range(read_timestamp(text))
    datetime.fromtimestamp(expected, UTC)  # formats, does not raise


@pytest.mark.parametrize("value", [MIN_EPOCH - 1, MAX_EPOCH, float("inf"), float("nan"), "1", None, True])
def test_out_of_range_times_are_not_in_range(value: Any) -> None:
    assert not in_time_range(value)


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
        (track(timestamp=1_800_000_000), "timestamp must be an ISO-8601 string"),
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


# ---------------------------------------------------------------------------------- event time

BEFORE_RECEIPT = "2027-01-15T07:59:00.500Z"  # 60 s before RECEIVED


def test_sent_at_corrects_the_device_clock() -> None:
    # The device's clock is a day behind: the event happened 10 s before its batch was sent.
    out, _ = prepare_one(track(timestamp="2027-01-14T08:00:00.000Z", sentAt="2027-01-14T08:00:10.000Z"))
    assert out is not None
    assert out["_segcrit"]["ts"] == pytest.approx(RECEIVED - 10)
    assert out["timestamp"] == "2027-01-14T08:00:00.000Z"  # stored as sent; the event time is _segcrit.ts


def test_the_message_sent_at_wins_over_the_batch_one() -> None:
    batch_sent = RECEIVED + 3_600  # that client's clock is an hour ahead
    out, _ = prepare_one(track(timestamp=format_timestamp(RECEIVED + 3_590)), sent_at=batch_sent)
    assert out is not None and out["_segcrit"]["ts"] == pytest.approx(RECEIVED - 10)
    own = track(timestamp=format_timestamp(RECEIVED + 3_590), sentAt=format_timestamp(RECEIVED + 3_595))
    out, _ = prepare_one(own, sent_at=batch_sent)
    assert out is not None and out["_segcrit"]["ts"] == pytest.approx(RECEIVED - 5)


@pytest.mark.parametrize(
    "fields",
    [
        {"timestamp": "2099-01-01T00:00:00Z"},
        {"timestamp": "9999-12-31T23:59:59.999999Z"},
        {"timestamp": "2027-01-15T08:00:00.000Z", "sentAt": "2027-01-15T07:00:00.000Z"},  # after its own sending
        {"timestamp": None, "sentAt": "2020-01-01T00:00:00Z"},
    ],
)
def test_no_event_time_is_later_than_its_receipt(fields: dict[str, Any]) -> None:
    out, reason = prepare_one(track(**fields))
    assert reason is None and out is not None
    assert out["_segcrit"]["ts"] == RECEIVED


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"timestamp": "2026-02-30T10:00:00Z"}, "timestamp is not a real date and time"),
        ({"timestamp": "2026-11-28T10:00:00+25:00"}, "timestamp has an impossible UTC offset"),
        ({"timestamp": "0001-01-01T00:30:00+01:00"}, "timestamp is out of range (years 0001 to 9999)"),
        ({"timestamp": 1_800_000_000_000}, "timestamp must be an ISO-8601 string"),
        ({"sentAt": "now"}, "sentAt is not ISO-8601"),
        ({"sentAt": 1_800_000_000}, "sentAt must be an ISO-8601 string"),
        ({"sentAt": "2026-13-01T00:00:00Z"}, "sentAt is not a real date and time"),
        (
            {"timestamp": "0001-01-02T00:00:00Z", "sentAt": "9999-01-01T00:00:00Z"},
            "timestamp is out of range once corrected with sentAt",
        ),
    ],
)
def test_bad_times_are_rejected_at_ingest(fields: dict[str, Any], reason: str) -> None:
    assert prepare_one(track(**fields)) == (None, reason)


def test_a_batch_keeps_the_messages_whose_time_is_good() -> None:
    items = [track(messageId="a"), track(messageId="b", timestamp="2026-11-31T00:00:00Z"), track(messageId="c")]
    prepared = prepare_messages(items, TRACKING, received_at=RECEIVED)
    assert [m["messageId"] for m in prepared.messages] == ["a", "c"]
    assert prepared.rejected == [{"index": 1, "reason": "timestamp is not a real date and time"}]


@pytest.mark.parametrize("timestamp", ["whenever", 17, "2026-11-28T10:00:00+25:00", "0001-01-01T00:00:00+05:00"])
def test_a_deletion_with_a_bad_time_takes_the_receipt_time(timestamp: Any) -> None:
    out, reason = prepare_one({"type": "delete", "userId": "u1", "timestamp": timestamp}, WEBHOOK)
    assert reason is None and out is not None
    assert out["_segcrit"]["ts"] == RECEIVED
    assert out["timestamp"] == format_timestamp(RECEIVED)


def test_segment_s_own_messages_are_already_corrected() -> None:
    # Webhooks and archives: Segment applied sentAt already (its `timestamp` is the corrected one),
    # so the device's sentAt is neither applied again nor checked.
    fields = {"timestamp": BEFORE_RECEIPT, "sentAt": "garbage", "originalTimestamp": "2020-01-01T00:00:00Z"}
    out, reason = prepare_one(track(**fields), WEBHOOK)
    assert reason is None and out is not None
    assert out["_segcrit"]["ts"] == pytest.approx(RECEIVED - 60)


def test_segment_s_receipt_caps_its_messages_times() -> None:
    segment_receipt = "2027-01-15T07:58:00.500Z"  # 120 s before ours
    out, _ = prepare_one(track(timestamp=BEFORE_RECEIPT, receivedAt=segment_receipt), WEBHOOK)
    assert out is not None
    assert out["_segcrit"]["ts"] == pytest.approx(RECEIVED - 120)
    assert out["receivedAt"] == segment_receipt
    out, _ = prepare_one(track(timestamp=None, receivedAt=segment_receipt), WEBHOOK)
    assert out is not None and out["_segcrit"]["ts"] == pytest.approx(RECEIVED - 120)
    assert out["timestamp"] == segment_receipt
    # A receivedAt that is no time is replaced by ours, and ours caps the event time.
    out, _ = prepare_one(track(timestamp="2099-01-01T00:00:00Z", receivedAt="soon"), WEBHOOK)
    assert out is not None
    assert (out["_segcrit"]["ts"], out["receivedAt"]) == (RECEIVED, format_timestamp(RECEIVED))


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
