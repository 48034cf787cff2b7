"""Several `segcrit serve` processes on one PostgreSQL database behave as one segcrit (SPEC §2, §7).

Three real `segcrit serve` processes on loopback share one PostgreSQL schema and the emulator (a
real `segcrit emulator` process). Traffic is spread over them: per process, Tracking API batches
through Segment's own library and signed Engage webhook arrays (crash_traffic: every acknowledged
request leaves a mark in Criteo's end state). One process is killed with SIGKILL mid-traffic and
started again later. Then the same orders reach two processes at once (the same messageId, or the
same order id under two messageIds). Checked: Criteo's exact final membership per audience, one
trackTransaction per order, each segment created once, no 429 (one shared budget), the scheduled
housekeeping ran once in all, and every process exits 0 on SIGTERM.

Also `serve --workers 2` on PostgreSQL (two children on one port, a dead one replaced, SIGTERM
exits 0 within 10 s) and its refusal on SQLite.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from segment.analytics.client import Client

from segcrit.emulator.settings import criteo_section, sources_section
from tests.e2e.conftest import (
    CONFIG,
    SECRET,
    SHOP_CALLER_ID,
    SHOP_FLOWS,
    SHOP_MERCHANT_ID,
    WRITE_KEY,
    Emulator,
    Server,
    free_port,
    segcrit_command,
    wait_until,
)
from tests.e2e.crash_traffic import (
    EngageTraffic,
    Expected,
    Request,
    Tally,
    TrackingSender,
    TrackingTraffic,
    WebhookSender,
    differences,
    email,
    flatten,
    iso,
    personas,
    run_stream,
    sha256,
    transactions,
)
from tests.postgres import fresh_schema

pytestmark = pytest.mark.e2e

PROCESSES = 3
REQUESTS = 10  # per stream; two streams per process
START_DEADLINE_SECS = 120.0
SEND_DEADLINE_SECS = 120.0
DELIVERY_DEADLINE_SECS = 240.0  # the budget alone spaces the calls over two minutes or so
STOP_SECS = 10.0  # SPEC §2: out within 10 s of SIGTERM
CRITEO_TIMEOUT_SECS = 5  # a killed process's claims and leases last a window plus three of these
# Criteo's budget, ours and the emulator's: the new audiences (a search, a create and a PATCH each)
# and the traffic's PATCH calls need more than a minute of it, so the processes must share it.
RATE_LIMIT = 45
NEW_AUDIENCES = 10


def shop_config(url: str, port: int, emulator: Emulator) -> str:
    """The e2e shop config (tests/e2e/conftest.py) on the PostgreSQL store at `url`."""
    extra = f"  timeout_secs: {CRITEO_TIMEOUT_SECS}\n  rate_limit_per_minute: {RATE_LIMIT}\n"
    text = CONFIG.format(
        db="unused.db",
        port=port,
        sources=sources_section(WRITE_KEY, SECRET),
        criteo=criteo_section(emulator.url, caller_id=SHOP_CALLER_ID, extra=extra),
        flows=SHOP_FLOWS.format(merchant_id=SHOP_MERCHANT_ID),
    )
    return text.replace("store: sqlite:///unused.db", f'store: "{url}"')


@pytest.fixture
def store_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture
def servers(tmp_path: Path, emulator: Emulator, store_url: str) -> Iterator[list[Server]]:
    """PROCESSES `segcrit serve` (not started), each with a config and log of its own, one store."""
    made = []
    for n in range(PROCESSES):
        folder = tmp_path / f"serve-{n}"
        folder.mkdir()
        port = free_port()
        path = folder / "segcrit.yaml"
        path.write_text(shop_config(store_url, port, emulator))
        made.append(Server(f"http://127.0.0.1:{port}", path, (folder / "serve.log").open("ab")))
    try:
        yield made
    finally:
        for server in made:
            if server.process is not None and server.process.poll() is None:
                server.process.kill()
                server.process.wait(10)
            server.log.close()


def launch(server: Server) -> None:
    server.process = subprocess.Popen(
        segcrit_command("serve", "--config", str(server.config_path)), stdout=server.log, stderr=subprocess.STDOUT
    )


def ready(server: Server) -> bool:
    return httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200


def start_all(servers: list[Server]) -> None:
    """Start them together (their schedulers tick at once), then wait for each to be ready."""
    for server in servers:
        launch(server)
    for server in servers:
        wait_until(lambda s=server: ready(s), START_DEADLINE_SECS, f"segcrit serve at {server.url}")


def log_text(server: Server) -> str:
    server.log.flush()
    return Path(server.log.name).read_text(errors="replace")


def order_messages(client: Client, user: str, order_id: str, message_id: str) -> None:
    """An identified buyer's order through Segment's library (sync_mode: sent at once)."""
    client.identify(user, {"email": email(user)}, message_id=f"{message_id}-i")
    product = {"product_id": "SOCK-1", "sku": "SKU-SOCK-1", "name": "Socks", "price": 12.5, "quantity": 2}
    properties = {"order_id": order_id, "revenue": 25.0, "currency": "EUR", "products": [product]}
    client.track(user, "Order Completed", properties, message_id=message_id)


def new_audiences(t0: float) -> Request:
    """Engage entering one person into each of NEW_AUDIENCES audiences Criteo does not have yet."""
    out = Request()
    for n in range(NEW_AUDIENCES):
        person, name = f"burst-{n}", f"burst_audience_{n}"
        out.identifiers.append((person, "email", sha256(email(person))))
        out.memberships.append((person, name, t0, True))
        out.messages.append(
            {
                "type": "track",
                "event": "Audience Entered",
                "userId": person,
                "messageId": f"{person}-{name}-in",
                "timestamp": iso(t0),
                "properties": {"audience_key": name, name: True},
                "context": {"traits": {"email": email(person)}, **personas(name)},
            }
        )
    return out


def test_three_processes_on_one_database_behave_as_one_segcrit(servers: list[Server], emulator: Emulator) -> None:
    seed = int(os.environ.get("SEGCRIT_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    about = f"(SEGCRIT_CRASH_SEED={seed})"
    expected, tally, failures = Expected(), Tally(), []
    deadline = time.monotonic() + SEND_DEADLINE_SECS
    t0 = time.time() - 3600
    streams: list[tuple[TrackingTraffic | EngageTraffic, TrackingSender | WebhookSender]] = []
    for n, server in enumerate(servers):
        streams.append(
            (TrackingTraffic(f"t{n}", t0), TrackingSender(server.url, WRITE_KEY, tally, deadline, max_retries=3))
        )
        webhook = WebhookSender(f"{server.url}/webhooks/engage", SECRET, tally, deadline, rng)
        streams.append((EngageTraffic(f"w{n}", t0), webhook))
    httpx.post(f"{emulator.url}/_emulator/config", json={"rate_limit_per_minute": RATE_LIMIT}).raise_for_status()
    start_all(servers)
    burst = new_audiences(t0)
    burst_sender = WebhookSender(f"{servers[2].url}/webhooks/engage", SECRET, tally, deadline, rng)
    burst_sender.send(burst.messages)
    burst_sender.close()
    expected.add(burst)

    stop = threading.Event()
    threads = [
        threading.Thread(
            target=run_stream,
            args=(traffic, sender, expected),
            kwargs={"stop": stop, "requests": REQUESTS, "failures": failures, "pace_secs": 0.1},
        )
        for traffic, sender in streams
    ]
    for thread in threads:
        thread.start()
    victim = servers[1]
    try:
        kill_at = rng.randrange(len(streams) * 2, len(streams) * 4)
        wait_until(lambda: expected.requests >= kill_at or bool(failures), SEND_DEADLINE_SECS, f"{kill_at} acks")
        victim.kill()
        # Later: once the others have acknowledged more (the victim's senders retry meanwhile).
        wait_until(lambda: expected.requests >= kill_at + 8 or bool(failures), SEND_DEADLINE_SECS, "acks while down")
        launch(victim)
        wait_until(lambda: ready(victim), START_DEADLINE_SECS, "the killed process, started again")
    except BaseException:
        stop.set()
        raise
    finally:
        for thread in threads:
            thread.join(SEND_DEADLINE_SECS)
        for _, sender in streams:
            sender.close()
    assert not failures, f"{failures} {about}"
    assert expected.requests == len(streams) * REQUESTS + 1
    assert tally.retries > 0, "the kill never met a request"

    # The same orders reaching two processes at once: one messageId twice, one order id under two.
    clients = [Client(WRITE_KEY, host=server.url, sync_mode=True, max_retries=3) for server in servers]
    twice = [
        (clients[0], "dup-buyer-1", "dup-order-1", "dup-msg-1"),
        (clients[1], "dup-buyer-1", "dup-order-1", "dup-msg-1"),
        (clients[1], "dup-buyer-2", "dup-order-2", "dup-msg-2a"),
        (clients[2], "dup-buyer-2", "dup-order-2", "dup-msg-2b"),
    ]
    senders = [threading.Thread(target=order_messages, args=args) for args in twice]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(SEND_DEADLINE_SECS)
    orders = expected.orders | {"dup-order-1", "dup-order-2"}

    def settled() -> bool:
        state = emulator.state()
        members = {s["name"]: {k: set(v) for k, v in s["members"].items()} for s in state["segments"]}
        return flatten(members) == flatten(expected.members()) and set(transactions(state)) >= orders

    wait_until(
        settled,
        DELIVERY_DEADLINE_SECS,
        f"Criteo to converge {about}",
        lambda: differences(expected, emulator.members()),
    )
    for server in servers:
        started = time.monotonic()
        assert server.terminate() == 0
        assert time.monotonic() - started < STOP_SECS

    state = emulator.state()
    assert differences(expected, emulator.members()) == [], about
    sent = transactions(state)
    assert set(sent) == orders, about
    assert len(sent["dup-order-1"]) == 1 and len(sent["dup-order-2"]) == 1, sent
    # A document whose answer the kill lost may be sent again (at-least-once), as the same event.
    resent = {order: [e for _, e in copies] for order, copies in sent.items() if len(copies) > 1}
    assert all(all(e == events[0] for e in events) for events in resent.values()), resent
    names = Counter(segment["name"] for segment in state["segments"])
    assert len(names) == 3 + NEW_AUDIENCES and set(names.values()) == {1}, names  # each created once
    marketing_calls = sum(count for endpoint, count in state["calls"].items() if endpoint != "events")
    assert marketing_calls > RATE_LIMIT, state["calls"]  # more than a minute of budget...
    assert state["statuses"].get("429", 0) == 0, state["statuses"]  # ...shared: never over it
    runs = [line for server in servers for line in log_text(server).splitlines() if "job ran job=housekeeping" in line]
    assert len(runs) == 1, runs
    print(f"{about}: {tally}, answers {state['statuses']}, calls {state['calls']}, resent {len(resent)}")
    status = servers[0].segcrit("status")
    assert status.returncode == 0, status.stderr
    assert "dead letters: 0" in status.stdout and "set-aside events: 0" in status.stdout, status.stdout


def pids_alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.add(pid)
    return alive


def test_serve_workers_runs_children_on_one_port_and_stops_on_sigterm(
    tmp_path: Path, emulator: Emulator, store_url: str
) -> None:
    port = free_port()
    path = tmp_path / "segcrit.yaml"
    path.write_text(shop_config(store_url, port, emulator))
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("wb") as log:
        supervisor = subprocess.Popen(
            segcrit_command("serve", "--config", str(path), "--workers", "2"), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            seen: set[int] = set()

            def answered_by_two() -> bool:
                body = httpx.get(f"{url}/readyz", timeout=2).json()  # a new connection each time
                if body["ready"]:
                    assert body["store"] == "postgresql" and body["roles"] == [
                        "ingest",
                        "process",
                        "deliver",
                        "schedule",
                    ]
                    seen.add(int(body["pid"]))
                return len(seen) >= 2

            wait_until(answered_by_two, START_DEADLINE_SECS, "both children to answer", lambda: seen)
            children = set(seen)
            dead = min(children)
            os.kill(dead, signal.SIGKILL)
            # The supervisor starts another in its place (after a short pause).
            wait_until(lambda: bool(_new_pid(url, children, seen)), START_DEADLINE_SECS, "a new child", lambda: seen)
            started = time.monotonic()
            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(STOP_SECS + 5) == 0
            assert time.monotonic() - started < STOP_SECS
            assert pids_alive(seen) == set()
        finally:
            if supervisor.poll() is None:
                supervisor.kill()
                supervisor.wait(10)
    text = (tmp_path / "serve.log").read_text(errors="replace")
    assert re.search(r"serve process ended; starting another .*exit_code=-9", text), text[-2000:]


def _new_pid(url: str, before: set[int], seen: set[int]) -> set[int]:
    body = httpx.get(f"{url}/readyz", timeout=2).json()
    if body["ready"]:
        seen.add(int(body["pid"]))
    return seen - before


def test_serve_workers_on_sqlite_is_refused(server: Server) -> None:
    result = server.segcrit("serve", "--workers", "2")
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert "PostgreSQL" in line
