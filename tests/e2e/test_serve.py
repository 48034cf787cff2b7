"""End to end: real `segcrit serve` and `segcrit emulator` processes, Segment's Python library and
signed webhook arrays as clients, the emulator's exact final membership as the verdict."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
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
from tests.e2e.crash_traffic import (
    EngageTraffic,
    Expected,
    Tally,
    TrackingSender,
    TrackingTraffic,
    WebhookSender,
    differences,
    flatten,
    run_stream,
    transactions,
)

pytestmark = pytest.mark.e2e

DELIVERY_DEADLINE_SECS = 20.0
CRASH_REQUESTS = 24  # per stream
CRASH_KILLS = 3
SEND_DEADLINE_SECS = 40.0


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


def test_sigkill_mid_traffic_loses_nothing(shop_server: Server, emulator: Emulator) -> None:
    """Two streams — Tracking API batches through Segment's library, Engage webhook arrays — each
    request retried until acknowledged, while segcrit is killed with SIGKILL at random points of the
    traffic and restarted on the same store. Every request leaves a mark in the end state that no
    later one overwrites (crash_traffic), so losing any acknowledged one fails the test."""
    seed = int(os.environ.get("SEGCRIT_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    about = f"(kill points from SEGCRIT_CRASH_SEED={seed})"
    expected, tally, failures = Expected(), Tally(), []
    deadline = time.monotonic() + SEND_DEADLINE_SECS
    t0 = time.time() - 3600
    streams = [
        (TrackingTraffic("t", t0), TrackingSender(shop_server.url, WRITE_KEY, tally, deadline, max_retries=3)),
        (EngageTraffic("w", t0), WebhookSender(f"{shop_server.url}/webhooks/engage", SECRET, tally, deadline, rng)),
    ]
    shop_server.start()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=run_stream,
            args=(traffic, sender, expected),
            kwargs={"stop": stop, "requests": CRASH_REQUESTS, "failures": failures},
        )
        for traffic, sender in streams
    ]
    for thread in threads:
        thread.start()
    try:
        for point in sorted(rng.sample(range(2, len(streams) * CRASH_REQUESTS - 4), CRASH_KILLS)):
            wait_until(lambda p=point: expected.requests >= p or bool(failures), SEND_DEADLINE_SECS, f"{point} acks")
            time.sleep(rng.uniform(0, 0.05))  # picks the moment of the kill; nothing waits on it
            shop_server.kill()
            shop_server.start()
    except BaseException:
        stop.set()  # the senders need not wait for a server that will not come back
        raise
    finally:
        for thread in threads:
            thread.join(SEND_DEADLINE_SECS)
        for _, sender in streams:
            sender.close()
    assert not failures, f"{failures} {about}"
    assert expected.requests == len(streams) * CRASH_REQUESTS
    assert tally.retries > 0, "the kills never met a request"

    def converged() -> bool:
        state = emulator.state()
        members = {s["name"]: {k: set(v) for k, v in s["members"].items()} for s in state["segments"]}
        return flatten(members) == flatten(expected.members()) and set(transactions(state)) >= expected.orders

    wait_until(
        converged,
        DELIVERY_DEADLINE_SECS,
        f"Criteo to converge after {CRASH_KILLS} kills {about}",
        lambda: differences(expected, emulator.members()),
    )
    assert shop_server.terminate() == 0
    state = emulator.state()
    assert differences(expected, emulator.members()) == [], about
    sent = transactions(state)
    assert set(sent) == expected.orders, about
    # At-least-once (SPEC §7): a resend after a lost answer is the same event, never a second one.
    resent = {order: [e for _, e in copies] for order, copies in sent.items() if len(copies) > 1}
    assert all(all(e == events[0] for e in events) for events in resent.values()), resent
    status = shop_server.segcrit("status")
    assert status.returncode == 0, status.stderr
    assert "dead letters: 0" in status.stdout and "set-aside events: 0" in status.stdout, status.stdout


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
