"""End to end: real `segcrit serve` and `segcrit emulator` processes, Segment's Python library and
signed webhook arrays as clients, the emulator's exact final membership as the verdict."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from segment.analytics.client import Client

from tests.e2e.conftest import SECRET, WRITE_KEY, Emulator, Server, wait_until

pytestmark = pytest.mark.e2e

DELIVERY_DEADLINE_SECS = 20.0


def sha(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def signed_array(messages: list[dict[str, Any]]) -> tuple[bytes, str]:
    elements = [orjson.dumps(m) for m in messages]
    body = b"[" + b",".join(elements) + b"]"
    return body, hmac.new(SECRET.encode(), elements[0], hashlib.sha1).hexdigest()


def personas(key: str) -> dict[str, Any]:
    return {"personas": {"computation_class": "audience", "computation_key": key}}


def test_sdk_and_webhooks_end_in_exact_criteo_membership(server: Server, emulator: Emulator) -> None:
    server.start()
    errors: list[Any] = []
    client = Client(WRITE_KEY, host=server.url, gzip=True, on_error=lambda e, _b: errors.append(e))
    users = [(f"u{i}", f"Person{i}@Example.com") for i in range(1, 7)]
    for user_id, email in users:
        client.identify(user_id, {"email": email})
    client.identify(
        "u2",
        {},
        context={"device": {"advertisingId": "6D92078A-8246-4BA4-AE5B-76104861E7DC", "adTrackingEnabled": True}},
    )
    for user_id, _ in users[:4]:
        client.track(
            user_id,
            "Audience Entered",
            {"audience_key": "cart_abandoners", "cart_abandoners": True},
            context=personas("cart_abandoners"),
        )
    client.track(
        "u1",
        "Audience Exited",
        {"audience_key": "cart_abandoners", "cart_abandoners": False},
        context=personas("cart_abandoners"),
    )
    client.track(
        "u3",
        "Segment Consent Preference Updated",
        context={"consent": {"categoryPreferences": {"Advertising": False}}},
    )
    client.flush()
    client.shutdown()
    assert errors == []

    now = time.time()
    vip = [
        {
            "type": "identify",
            "userId": uid,
            "messageId": f"vip-{uid}",
            "timestamp": iso(now),
            "traits": {"email": email, "vip_buyers": True},
            "context": personas("vip_buyers"),
        }
        for uid, email in users[3:6]
    ]
    body, signature = signed_array(vip)
    response = httpx.post(
        f"{server.url}/webhooks/engage",
        content=body,
        headers={"X-Signature": signature, "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    forged = httpx.post(f"{server.url}/webhooks/engage", content=body, headers={"X-Signature": "0" * 40})
    assert forged.status_code == 401
    body, signature = signed_array(
        [{"type": "delete", "userId": "u6", "messageId": "del-u6", "timestamp": iso(now + 1)}]
    )
    assert (
        httpx.post(f"{server.url}/webhooks/engage", content=body, headers={"X-Signature": signature}).status_code == 200
    )

    expected = {
        "cart_abandoners": {
            "email": {sha(users[1][1]), sha(users[3][1])},
            "madid": {"6D92078A-8246-4BA4-AE5B-76104861E7DC"},
        },
        "vip_buyers": {"email": {sha(users[3][1]), sha(users[4][1])}},
    }
    wait_until(
        lambda: emulator.members() == expected, DELIVERY_DEADLINE_SECS, f"Criteo to hold {expected}", emulator.members
    )

    status = server.segcrit("status")
    assert status.returncode == 0, status.stderr
    assert "cart_abandoners" in status.stdout and "vip_buyers" in status.stdout

    started = time.monotonic()
    assert server.terminate() == 0
    assert time.monotonic() - started < 10
    calls = emulator.state()["calls"]
    assert calls.get("token") == 1  # one token for the whole run


def _batch(index: int, t0: float, users: int, audiences: list[str]) -> list[dict[str, Any]]:
    """Batch `index`: every user enters or leaves every audience, alternating; later wins."""
    out = []
    for u in range(users):
        for a, audience in enumerate(audiences):
            member = (index + u + a) % 3 != 0
            out.append(
                {
                    "type": "track",
                    "event": "Audience Entered" if member else "Audience Exited",
                    "userId": f"user-{u}",
                    "messageId": f"b{index}-u{u}-a{a}",
                    "timestamp": iso(t0 + index),
                    "properties": {"audience_key": audience, audience: member},
                    "context": {"traits": {"email": f"user{u}@shop.example"}, **personas(audience)},
                }
            )
    return out


def test_sigkill_mid_traffic_loses_nothing(server: Server, emulator: Emulator) -> None:
    audiences = ["a_one", "a_two", "a_three"]
    t0 = time.time() - 3600
    batches = [_batch(i, t0, users=20, audiences=audiences) for i in range(60)]
    acked: set[int] = set()
    auth = (WRITE_KEY, "")

    def send(indexes: list[int], stop: threading.Event | None = None) -> None:
        with httpx.Client(timeout=10) as http:
            for i in indexes:
                if stop is not None and stop.is_set():
                    return
                try:
                    response = http.post(f"{server.url}/v1/batch", json={"batch": batches[i]}, auth=auth)
                except httpx.HTTPError:
                    return  # the server died under us: this batch is not acknowledged
                if response.status_code == 200:
                    acked.add(i)

    server.start()
    stop = threading.Event()
    sender = threading.Thread(target=send, args=(list(range(len(batches))), stop))
    sender.start()
    wait_until(lambda: len(acked) >= 25, 30, "25 acknowledged batches")
    server.kill()
    stop.set()
    sender.join(10)
    assert 25 <= len(acked) < len(batches)

    server.start()
    # Like a Segment client: resend what was not acknowledged; resend one acknowledged batch too.
    send([i for i in range(len(batches)) if i not in acked] + [min(acked)])
    assert len(acked) == len(batches)

    expected: dict[str, dict[str, set[str]]] = {}
    for u in range(20):
        for a, audience in enumerate(audiences):
            if (len(batches) - 1 + u + a) % 3 != 0:
                expected.setdefault(audience, {"email": set()})["email"].add(sha(f"user{u}@shop.example"))
    for audience in audiences:
        expected.setdefault(audience, {})

    def converged() -> bool:
        members = emulator.members()
        return {k: {t: v for t, v in m.items() if v} for k, m in members.items()} == {
            k: {t: v for t, v in m.items() if v} for k, m in expected.items()
        }

    wait_until(converged, DELIVERY_DEADLINE_SECS, "Criteo to converge after the crash")
    status = server.segcrit("status")
    assert "dead letters: 0" in status.stdout
    assert server.terminate() == 0


def test_a_second_owner_of_the_store_exits_at_once_and_operator_commands_keep_working(
    server: Server, emulator: Emulator, tmp_path: Path
) -> None:
    archive = tmp_path / "archive.ndjson"
    archive.write_bytes(orjson.dumps({"type": "track", "event": "Clicked", "userId": "u1", "messageId": "a1"}))
    server.start()
    assert server.process is not None
    db = (server.config_path.parent / "segcrit.db").resolve()
    refusal = f"error: another segcrit process owns {db} (pid {server.process.pid})"

    # Each would run workers on the same file: double Events API documents, a second rate budget.
    for command in (("serve",), ("import", str(archive)), ("resync", "cart_abandoners")):
        result = server.segcrit(*command)
        assert (result.returncode, result.stderr.splitlines()) == (1, [refusal]), command

    # Reads and quick edits of the store are how operators use a running service.
    for command in (("status",), ("replay",), ("replay", "--failed"), ("forget", "nobody@example.com")):
        result = server.segcrit(*command)
        assert result.returncode == 0, (command, result.stderr)
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert server.terminate() == 0

    imported = server.segcrit("import", str(archive))  # the owner has gone
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("1 line(s): 1 queued")
