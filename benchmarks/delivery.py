"""Delivery benchmark (SPEC §9): Criteo calls for N changes, and ack -> Criteo call latency.

    .venv/bin/python benchmarks/delivery.py [--changes 100000] [--audiences 1]
        [--stream-rate 1000] [--stream-secs 20] [--timeout-secs 300] [--check]

Everything runs in this process on the real clock: the Criteo emulator on a free loopback port
(`running_emulator`, Criteo's 250 calls/min enforced), a SQLite store in a temporary folder, and
segcrit's own code path from ingest on: `prepare_messages` (what `/v1/batch` does to a batch), then
`store.accept_sync` (the durable commit ingest acknowledges after), the Processor and the
DeliveryWorker with `delivery.max_wait_secs: 2` and `identity.send: [email]`. Every event is a new
person entering one of the audiences, so each event is exactly one change (add, email).

Phase 1, burst (calls). N people enter, round robin, `--audiences` audiences; all N events are
processed first, then one DeliveryWorker drains (polling every 0.25 s, as `segcrit serve` does)
until every change is acknowledged. Reported: Criteo calls by endpoint; PATCH calls against
sum over audiences of ceil(n / 50,000); and, for information, the latency from each change becoming
pending (`targets.since`: the processor's commit) to Criteo's answer to the PATCH that carried it.
In a burst that latency includes waiting for the rest of the burst to be processed.

Phase 2, steady stream (latency). On the same store and emulator (segments already resolved),
segcrit's Runtime runs its processor and delivery threads exactly as `segcrit serve` does, while a
feeder thread ingests `--stream-rate` events/s in batches of 100 for `--stream-secs`. Latency is
measured from the ingest acknowledgement (the commit of the event's batch returned) to Criteo's
answer to the PATCH that carried the change: SPEC §9's "ack -> Criteo call". The PATCH time is the
emulator's own record of the call (same process, same clock).

Targets checked (PASS/MISS): PATCH calls = ceil(N / 50,000) per (segment, add, email); no search
calls after each audience's first resolution (none at all in phase 2); token calls at most one per
token lifetime (840 s of use) per process; phase 2 ack -> call p50 <= 3 s and p99 <= 10 s.

Bounded: every wait has a deadline inside `--timeout-secs`; threads and the emulator are stopped and
the temporary folder removed on the way out (Ctrl-C included). `--check` makes a MISS exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from segcrit.clock import SystemClock
from segcrit.config import Config, parse_config
from segcrit.criteo.client import CriteoClient
from segcrit.criteo.constants import MAX_IDENTIFIERS_PER_CALL
from segcrit.criteo.emulator.server import running_emulator
from segcrit.criteo.emulator.state import DEMO_ADVERTISER_ID, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, EmulatorState
from segcrit.delivery.ratelimit import SlidingWindowLimiter
from segcrit.delivery.worker import DeliveryWorker
from segcrit.engine import Processor
from segcrit.identity.normalize import email_hashes
from segcrit.metrics import Metrics
from segcrit.runtime import Runtime
from segcrit.sources.validate import TRACKING_TYPES, MessageRules, format_timestamp, prepare_messages
from segcrit.store.sqlite import SqliteStore

MAX_WAIT_SECS = 2.0
POLL_SECS = 0.25  # the delivery loop's poll in `segcrit serve` for max_wait_secs 2
INGEST_BATCH = 100  # events per /v1/batch request, as Segment's libraries send them
TOKEN_USE_SECS = 840.0  # a 900 s token is replaced 60 s before it expires
TARGET_P50_SECS = 3.0
TARGET_P99_SECS = 10.0
SOURCE = "web"

CONFIG = """
store: sqlite:///{db}
sources:
  - {{name: {source}, type: tracking_api, write_key: bench-write-key}}
criteo:
  client_id: {client_id}
  client_secret: {client_secret}
  advertiser_id: "{advertiser_id}"
  api_url: {api_url}
identity:
  send: [email]
flows:
  - type: audience_sync
delivery:
  max_wait_secs: {max_wait}
"""


class BenchTimeout(Exception):
    """The run did not finish inside --timeout-secs."""


@dataclass
class Population:
    """People numbered from 0: person i has one email and enters audience i mod A."""

    audiences: list[str]
    next_index: int = 0

    def events(self, count: int, now: float) -> tuple[list[dict[str, Any]], list[str]]:
        """`count` new people's "Audience Entered" events, and the email hash each one adds."""
        messages, hashes = [], []
        for index in range(self.next_index, self.next_index + count):
            audience = self.audiences[index % len(self.audiences)]
            email = f"person{index}@example.com"
            messages.append(
                {
                    "type": "track",
                    "event": "Audience Entered",
                    "userId": f"usr_{index:09d}",
                    "messageId": f"bench-{index}",
                    "timestamp": format_timestamp(now),
                    "properties": {"audience_key": audience, audience: True},
                    "context": {
                        "personas": {"computation_class": "audience", "computation_key": audience},
                        "traits": {"email": email},
                    },
                }
            )
            hashes.append(email_hashes(email)[0])
        self.next_index += count
        return messages, hashes


def ingest(store: SqliteStore, messages: list[dict[str, Any]], rules: MessageRules) -> float:
    """What `/v1/batch` does after authentication; returns the time of the acknowledgement."""
    now = time.time()
    prepared = prepare_messages(messages, rules, received_at=now)
    if prepared.rejected:
        raise RuntimeError(f"events rejected at ingest: {prepared.rejected[:3]}")
    store.accept_sync(SOURCE, prepared.messages, now)
    return time.time()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def patch_times(state: EmulatorState) -> dict[str, float]:
    """Identifier -> when Criteo answered the first accepted add PATCH that carried it."""
    out: dict[str, float] = {}
    for call in state.calls("contact-list-patch"):
        attributes = call.request["data"]["attributes"] if isinstance(call.request, dict) else {}
        if call.status != 200 or attributes.get("operation") != "add":
            continue
        for value in attributes.get("identifiers", []):
            out.setdefault(value, call.at)
    return out


def wait_until(condition: Any, deadline: float, what: str) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise BenchTimeout(what)
        time.sleep(0.05)


@dataclass
class Bench:
    """What both phases work on: the options, segcrit's config and store, the emulator, the people."""

    args: argparse.Namespace
    config: Config
    store: SqliteStore
    state: EmulatorState
    people: Population
    deadline: float  # time.monotonic() value

    @property
    def rules(self) -> MessageRules:
        return MessageRules(types=TRACKING_TYPES, max_message_bytes=self.config.server.max_message_bytes)


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    expected: int = 0


# ------------------------------------------------------------------------------------ phase 1


def burst(bench: Bench) -> tuple[Phase, dict[str, int]]:
    """Phase 1; also returns how many changes each audience got."""
    args, store, state, people, deadline = bench.args, bench.store, bench.state, bench.people, bench.deadline
    phase = Phase("burst")
    rules = bench.rules
    processor = Processor(store, bench.config, SystemClock(), Metrics())

    started = time.monotonic()
    hashes: list[str] = []
    per_audience: Counter[str] = Counter()
    for offset in range(0, args.changes, 5_000):
        messages, batch_hashes = people.events(min(5_000, args.changes - offset), time.time())
        for message in messages:
            per_audience[message["properties"]["audience_key"]] += 1
        for start in range(0, len(messages), INGEST_BATCH):
            ingest(store, messages[start : start + INGEST_BATCH], rules)
        hashes += batch_hashes
        while processor.drain_once():
            if time.monotonic() > deadline:
                raise BenchTimeout("processing the burst")
    processed = time.monotonic() - started
    since = {c.key.id_value: c.since for c in store.due_changes(time.time() + 1e9, args.changes + 1)}
    rate = args.changes / processed
    print(f"  ingested and processed {args.changes:,} events in {processed:.1f} s ({rate:,.0f} events/s)")
    if len(since) != args.changes:
        raise RuntimeError(f"expected {args.changes} pending changes, found {len(since)}")

    before = state.call_counts()
    delivery_started = time.monotonic()
    try:
        # wait_for also bounds a call that hangs (the client's own timeout is 30 s).
        asyncio.run(asyncio.wait_for(_deliver_all(bench.config, store, deadline), deadline - time.monotonic()))
    except TimeoutError:
        raise BenchTimeout("delivering the burst") from None
    phase.seconds = time.monotonic() - delivery_started
    phase.calls = _calls_since(state, before)

    sent_at = patch_times(state)
    phase.latencies = [sent_at[h] - since[h] for h in hashes if h in sent_at]
    phase.delivered = sum(len(state.members(a, "email")) for a in people.audiences)
    phase.expected = args.changes
    return phase, dict(per_audience)


async def _deliver_all(config: Config, store: SqliteStore, deadline: float) -> None:
    clock = SystemClock()
    metrics = Metrics()
    async with httpx.AsyncClient() as http:
        limiter = SlidingWindowLimiter(config.criteo.rate_limit_per_minute, clock)
        client = CriteoClient(config.criteo, http, limiter, clock, metrics)
        worker = DeliveryWorker(store, config, client, clock, metrics)
        while store.pending_count():
            if time.monotonic() > deadline:
                raise BenchTimeout("delivering the burst")
            await worker.drain_once()
            await asyncio.sleep(POLL_SECS)


# ------------------------------------------------------------------------------------ phase 2


def stream(bench: Bench) -> Phase:
    """Phase 2."""
    args, store, state, people, deadline = bench.args, bench.store, bench.state, bench.people, bench.deadline
    phase = Phase("stream")
    rules = bench.rules
    acked_at: dict[str, float] = {}
    failure: list[BaseException] = []
    stop = threading.Event()
    runtime = Runtime(store, bench.config, Metrics())

    def feed() -> None:
        interval = INGEST_BATCH / args.stream_rate
        batches = max(1, round(args.stream_rate * args.stream_secs / INGEST_BATCH))
        due = time.monotonic()
        try:
            for _ in range(batches):
                if stop.is_set():
                    return
                messages, hashes = people.events(INGEST_BATCH, time.time())
                ack = ingest(store, messages, rules)
                runtime.wake()
                acked_at.update(dict.fromkeys(hashes, ack))
                due += interval
                pause = due - time.monotonic()
                if pause > 0:
                    stop.wait(pause)  # pacing the load, not synchronising
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    before = state.call_counts()
    feeder = threading.Thread(target=feed, name="bench-feeder", daemon=True)
    started = time.monotonic()
    runtime.start()
    try:
        feeder.start()
        feeder.join(max(0.0, deadline - time.monotonic()))
        if feeder.is_alive():
            raise BenchTimeout("feeding the stream")
        if failure:
            raise failure[0]
        wait_until(lambda: store.backlog() == 0 and store.pending_count() == 0, deadline, "draining the stream")
        phase.seconds = time.monotonic() - started
    finally:
        stop.set()
        runtime.stop()
    if runtime.failed:
        raise RuntimeError(f"the {runtime.failed} thread stopped")
    phase.calls = _calls_since(state, before)
    sent_at = patch_times(state)
    phase.latencies = [sent_at[h] - ack for h, ack in acked_at.items() if h in sent_at]
    phase.delivered = len(phase.latencies)
    phase.expected = len(acked_at)
    return phase


def _calls_since(state: EmulatorState, before: dict[str, int]) -> dict[str, int]:
    now = state.call_counts()
    return {endpoint: now.get(endpoint, 0) - before.get(endpoint, 0) for endpoint in now}


# --------------------------------------------------------------------------------------- report


def print_phase(phase: Phase, latency_from: str) -> None:
    calls = phase.calls
    print(
        f"  Criteo calls: token {calls.get('token', 0)}, search {calls.get('search', 0)}, "
        f"create {calls.get('create', 0)}, PATCH {calls.get('contact-list-patch', 0)}, "
        f"other {sum(v for k, v in calls.items() if k not in ('token', 'search', 'create', 'contact-list-patch'))}"
    )
    print(f"  delivered {phase.delivered:,} of {phase.expected:,} changes in {phase.seconds:.1f} s")
    lat = phase.latencies
    print(
        f"  latency {latency_from} -> PATCH answered: p50 {percentile(lat, 50):.2f} s, "
        f"p99 {percentile(lat, 99):.2f} s, max {max(lat, default=math.nan):.2f} s"
    )


def targets(bench: Bench, phases: list[Phase], per_audience: dict[str, int]) -> list[tuple[bool, str]]:
    """The SPEC §9 lines this benchmark measures: (met?, the line to print)."""
    args = bench.args
    burst_phase = phases[0]
    expected = sum(math.ceil(n / MAX_IDENTIFIERS_PER_CALL) for n in per_audience.values())
    actual = burst_phase.calls.get("contact-list-patch", 0)
    out = [
        (
            actual == expected and burst_phase.delivered == burst_phase.expected,
            f"calls: {actual} PATCH for {args.changes:,} changes, expected {expected} "
            f"(sum of ceil(n / {MAX_IDENTIFIERS_PER_CALL:,}) per segment)",
        )
    ]
    for phase in phases[1:]:
        p50, p99 = percentile(phase.latencies, 50), percentile(phase.latencies, 99)
        out.append(
            (
                phase.delivered == phase.expected and p50 <= TARGET_P50_SECS and p99 <= TARGET_P99_SECS,
                f"ack -> Criteo call p50 {p50:.2f} s (target <= {TARGET_P50_SECS:g}), "
                f"p99 {p99:.2f} s (target <= {TARGET_P99_SECS:g}); {phase.delivered:,}/{phase.expected:,} delivered",
            )
        )
    searches = [p.calls.get("search", 0) for p in phases]
    out.append(
        (
            searches[0] <= args.audiences and sum(searches[1:]) == 0,
            "no search on the hot path: "
            + ", ".join(f"{p.name} {n}" for p, n in zip(phases, searches, strict=True))
            + f" (at most one per audience at first resolution: {args.audiences})",
        )
    )
    tokens = [(p, p.calls.get("token", 0), math.ceil(max(p.seconds, 1) / TOKEN_USE_SECS)) for p in phases]
    out.append(
        (
            all(n <= allowed for _, n, allowed in tokens),
            "token calls: "
            + ", ".join(f"{p.name} {n} in {p.seconds:.0f} s (allowed {allowed})" for p, n, allowed in tokens)
            + "; one per token lifetime per process",
        )
    )
    return out


def run(args: argparse.Namespace, folder: Path) -> list[tuple[bool, str]]:
    state = EmulatorState()
    with running_emulator(state) as url:
        config = parse_config(
            CONFIG.format(
                db=folder / "segcrit.db",
                source=SOURCE,
                client_id=DEMO_CLIENT_ID,
                client_secret=DEMO_CLIENT_SECRET,
                advertiser_id=DEMO_ADVERTISER_ID,
                api_url=url,
                max_wait=MAX_WAIT_SECS,
            ),
            env={},
        )
        store = SqliteStore(str(folder / "segcrit.db"))
        audiences = [f"bench_audience_{i}" for i in range(args.audiences)]
        bench = Bench(args, config, store, state, Population(audiences), time.monotonic() + args.timeout_secs)
        try:
            print("phase 1, burst: ingest and process every event, then deliver")
            first, per_audience = burst(bench)
            print_phase(first, "pending")
            phases = [first]
            if args.stream_rate > 0:
                print(
                    f"phase 2, stream: {args.stream_rate:,.0f} events/s for {args.stream_secs:g} s "
                    "through the serve runtime (processor + delivery threads)"
                )
                second = stream(bench)
                print_phase(second, "ingest ack")
                phases.append(second)
        finally:
            store.close()
    return targets(bench, phases, per_audience)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--changes", type=int, default=100_000, help="changes in the burst (phase 1)")
    parser.add_argument("--audiences", type=int, default=1, help="audiences the changes are spread over")
    parser.add_argument("--stream-rate", type=float, default=1_000, help="events/s in phase 2 (0: skip it)")
    parser.add_argument("--stream-secs", type=float, default=20, help="how long phase 2 feeds events")
    parser.add_argument("--timeout-secs", type=float, default=300, help="the whole run stops after this")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.changes < 1 or args.audiences < 1 or args.stream_rate < 0 or args.stream_secs <= 0:
        parser.error("--changes and --audiences must be >= 1, --stream-rate >= 0, --stream-secs > 0")
    logging.basicConfig(level=logging.ERROR)  # keep the figures plain: no per-call log lines
    print(
        f"delivery benchmark: {args.changes:,} changes over {args.audiences} audience(s), "
        f"max_wait_secs {MAX_WAIT_SECS:g}, emulator on loopback"
    )
    folder = Path(tempfile.mkdtemp(prefix="segcrit-bench-delivery-"))
    try:
        results = run(args, folder)
    except BenchTimeout as timeout:
        results = [(False, f"did not finish within {args.timeout_secs:g} s ({timeout})")]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print("SPEC §9 targets:")
    for ok, line in results:
        print(f"{'PASS' if ok else 'MISS'} {line}")
    missed = not all(ok for ok, _ in results)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
