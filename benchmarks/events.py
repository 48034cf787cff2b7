"""Events API benchmark: shop traffic through the Processor and the EventsWorker into the emulator.

    .venv/bin/python benchmarks/events.py [--backlog-people 3000] [--stream-rate 500] [--stream-secs 20]
        [--people 1000] [--latency-ms 0] [--timeout-secs 300] [--check]

Everything runs in this process on the real clock: the Criteo emulator on a free loopback port
(`running_emulator`), a SQLite store in a temporary folder (WAL, synchronous=FULL, as served), and
segcrit's own path from ingest on: `prepare_messages` (what `/v1/batch` does to a batch), then
`store.accept_sync` (the durable commit ingest acknowledges after), the Processor (flows
`conversions` and `product_signals`) and one EventsWorker with `delivery.max_wait_secs: 2`.

Rate limits raised for the run: Criteo's Events API limit is not published; segcrit's default
`criteo.events_rate_limit_per_minute` (1,000) would be the bottleneck, so this run sets it to
1,000,000 (the config's maximum) and the emulator's Events API limit to 10,000,000 per minute. The
figures are then what segcrit itself can do. `--latency-ms` adds that much to every emulator answer
(the emulator's `latency_ms` fault) to see how a real network round trip changes them.

The traffic: shop sessions as analytics.js sends them. Each person (85% logged in with an email, the
rest anonymous, whose events Criteo cannot match and segcrit skips) visits: Home page, a search, a
product list, one to four product pages, and then perhaps adds to cart, views the cart, checks out
and orders; 5% of orders arrive twice with a new messageId (Segment retries). Every message carries
analytics.js's context (ip, userAgent, page, library, locale).

Phase 1, backlog (throughput). `--backlog-people` whole sessions are ingested and processed first;
once every waiting event is past its batch window, the EventsWorker drains the queue (polling every
0.25 s, as `segcrit serve` does) until nothing waits. Reported: Events API documents sent per
second, events per document.

Phase 2, stream (latency). A feeder thread ingests `--stream-rate` events/s in batches of 100 for
`--stream-secs`, interleaving `--people` sessions at a time (at the defaults a person's next event
comes about 2 s after the last, so a visit of 8 messages lasts about 16 s); a processor thread
processes as `segcrit serve` does; the EventsWorker polls every 0.25 s. Latency runs from the
ingest acknowledgement of an event (its commit returned) to the emulator receiving the document
that carried it (the emulator's own record of the call, same process, same clock). SPEC §9: ack ->
Criteo call p50 <= 3 s, p99 <= 10 s.

Checked as well: exactly one trackTransaction per order, no 429, no dead letter. Bounded: every wait
has a deadline inside `--timeout-secs`; threads and the emulator are stopped and the temporary
folder removed on the way out (Ctrl-C included). `--check` makes a MISS exit 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    INGEST_BATCH,
    MAX_WAIT_SECS,
    Results,
    bench_config,
    drain_processor,
    feed_paced,
    ingest,
    latency_figures,
    latency_target,
    poll_worker,
    run_in_temp_folder,
    run_until,
    tracking_rules,
)
from segcrit.clock import SystemClock
from segcrit.config import Config
from segcrit.criteo.events_client import EventsClient
from segcrit.delivery.commerce_workers import EventsWorker
from segcrit.emulator.server import running_emulator
from segcrit.emulator.state import EmulatorState
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.ratelimit import SlidingWindowLimiter
from segcrit.sources.validate import MessageRules, format_timestamp
from segcrit.store.sqlite import SqliteStore

SEGCRIT_EVENTS_LIMIT = 1_000_000  # criteo.events_rate_limit_per_minute for the run (the config's maximum)
EMULATOR_EVENTS_LIMIT = 10_000_000
SHOP = "https://shop.example"

AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
]
CATEGORIES = ["shoes", "outerwear", "accessories", "kids", "sportswear"]
SEARCHES = ["trail shoes", "rain jacket", "wool socks", "running shorts", "kids boots"]


# ----------------------------------------------------------------------------------- the traffic


def product(rng: random.Random, category: str) -> dict[str, Any]:
    number = rng.randrange(1, 2_000)
    pid = f"{category[:2].upper()}-{number:04d}"
    return {
        "product_id": pid,
        "sku": f"SKU-{pid}",
        "name": f"{category.title()} model {number}",
        "brand": rng.choice(["Northwind", "Contoso", "Fabrikam"]),
        "category": category,
        "price": round(10 + (number % 190) + 0.9, 2),
        "url": f"{SHOP}/p/{pid.lower()}",
        "image_url": f"{SHOP}/img/{pid.lower()}.jpg",
    }


def session(person: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """One person's visit: (kind, message without timestamp/messageId) in the order they happen."""
    rng = random.Random(seed * 1_000_003 + person)
    user_id = f"usr_{person:08d}"
    logged_in = rng.random() < 0.85
    agent = rng.choice(AGENTS)
    ip = f"198.51.{person % 250}.{(person // 250) % 250 + 1}"
    category = rng.choice(CATEGORIES)
    listed = [product(rng, category) for _ in range(rng.randint(4, 24))]
    steps: list[tuple[str, dict[str, Any]]] = []

    def message(kind: str, path: str, **fields: Any) -> None:
        context = {
            "ip": ip,
            "userAgent": agent,
            "locale": "en-GB",
            "library": {"name": "analytics.js", "version": "2.11.1"},
            "page": {"path": path, "url": SHOP + path, "referrer": SHOP + "/"},
        }
        ids = {"userId": user_id} if logged_in else {"anonymousId": f"anon-{person:08d}"}
        steps.append((kind, {"type": kind, **ids, "context": context, **fields}))

    if logged_in:
        message("identify", "/login", traits={"email": f"shopper{person}@example.com", "plan": "member"})
    if rng.random() < 0.7:
        message("page", "/", name="Home", properties={"path": "/", "url": SHOP + "/"})
    if rng.random() < 0.4:
        message("track", "/search", event="Products Searched", properties={"query": rng.choice(SEARCHES)})
    message(
        "track",
        f"/c/{category}",
        event="Product List Viewed",
        properties={"list_id": category, "category": category, "products": listed},
    )
    viewed = rng.sample(listed, rng.randint(1, 4))
    for item in viewed:
        message(
            "track", f"/p/{item['product_id'].lower()}", event="Product Viewed", properties={**item, "currency": "EUR"}
        )
    if rng.random() < 0.35:
        bought = viewed[-1]
        quantity = rng.randint(1, 3)
        cart = [{**bought, "quantity": quantity}]
        message("track", f"/p/{bought['product_id'].lower()}", event="Product Added", properties=cart[0])
        message("track", "/cart", event="Cart Viewed", properties={"cart_id": f"cart-{person}", "products": cart})
        if rng.random() < 0.6:
            value = round(bought["price"] * quantity, 2)
            order_id = f"ORD-{seed}-{person:08d}"
            message(
                "track",
                "/checkout",
                event="Checkout Started",
                properties={"order_id": order_id, "value": value, "currency": "EUR", "products": cart},
            )
            if rng.random() < 0.8:
                order = {"order_id": order_id, "revenue": value, "currency": "EUR", "products": cart}
                message("track", "/checkout/complete", event="Order Completed", properties=order)
                if rng.random() < 0.05:  # Segment delivers it again, with a new messageId
                    message("track", "/checkout/complete", event="Order Completed", properties=order)
    return steps


class Traffic:
    """Interleaved sessions: keeps `active` people mid-visit, hands out their next messages."""

    def __init__(self, seed: int, active: int) -> None:
        self.seed = seed
        self.active = active
        self.next_person = 0
        self.sessions: list[Iterator[tuple[str, dict[str, Any]]]] = []
        self.message_ids = 0
        self.orders: set[str] = set()

    def _stamp(self, message: dict[str, Any], now: float) -> dict[str, Any]:
        self.message_ids += 1
        if message.get("event") == "Order Completed" and "userId" in message:
            self.orders.add(message["properties"]["order_id"])
        return {**message, "messageId": f"bench-{self.seed}-{self.message_ids}", "timestamp": format_timestamp(now)}

    def _new_session(self) -> Iterator[tuple[str, dict[str, Any]]]:
        person = self.next_person
        self.next_person += 1
        return iter(session(person, self.seed))

    def whole_sessions(self, people: int, now: float) -> list[dict[str, Any]]:
        """`people` complete visits, one after the other."""
        out = []
        for _ in range(people):
            out += [self._stamp(m, now) for _, m in self._new_session()]
        return out

    def next_batch(self, size: int, now: float, rng: random.Random) -> list[dict[str, Any]]:
        """The next `size` messages of `active` people browsing at once."""
        out: list[dict[str, Any]] = []
        while len(out) < size:
            while len(self.sessions) < self.active:
                self.sessions.append(self._new_session())
            index = rng.randrange(len(self.sessions))
            step = next(self.sessions[index], None)
            if step is None:
                self.sessions[index] = self.sessions[-1]
                self.sessions.pop()
                continue
            out.append(self._stamp(step[1], now))
        return out


# ------------------------------------------------------------------------------------ the parts


@dataclass
class Received:
    """The Events API documents the emulator accepted in a phase, with when it received each."""

    documents: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    @classmethod
    def since(cls, state: EmulatorState, skip: int) -> Received:
        out = cls()
        for call in state.calls("events")[skip:]:
            out.statuses[call.status] += 1
            if call.status == 200:
                out.documents.append((call.at, orjson.loads(call.body)))
        return out

    @property
    def events(self) -> int:
        return sum(len(d["events"]) for _, d in self.documents)

    def transactions(self) -> Counter[str]:
        return Counter(e["id"] for _, d in self.documents for e in d["events"] if e["event"] == "trackTransaction")


@dataclass
class Bench:
    args: argparse.Namespace
    config: Config
    store: SqliteStore
    state: EmulatorState
    deadline: float  # time.monotonic() value
    rules: MessageRules


@dataclass
class Phase:
    name: str
    messages: int = 0
    seconds: float = 0.0
    received: Received = field(default_factory=Received)
    latencies: list[float] = field(default_factory=list)
    orders: int = 0


async def deliver(bench: Bench, until_done: threading.Event) -> None:
    """One EventsWorker, polling as `segcrit serve` does, until `until_done` and nothing waits."""
    clock = SystemClock()
    metrics = Metrics()
    limiter = SlidingWindowLimiter(bench.config.criteo.events_rate_limit_per_minute, clock)
    async with httpx.AsyncClient(timeout=bench.config.criteo.timeout_secs) as http:
        client = EventsClient(bench.config.criteo.events_url, http, limiter, clock, metrics)
        worker = EventsWorker(bench.store, bench.config, client, clock, metrics)
        store = bench.store
        await poll_worker(
            worker,
            lambda: until_done.is_set() and store.backlog() == 0 and store.pending_event_count() == 0,
            bench.deadline,
            "delivering",
        )


def run_delivery(bench: Bench, until_done: threading.Event) -> None:
    run_until(deliver(bench, until_done), bench.deadline, "delivering")


# ------------------------------------------------------------------------------------ phase 1


def backlog(bench: Bench) -> Phase:
    args, store, state = bench.args, bench.store, bench.state
    phase = Phase("backlog")
    traffic = Traffic(seed=1, active=1)
    messages = traffic.whole_sessions(args.backlog_people, time.time())
    for start in range(0, len(messages), INGEST_BATCH):
        ingest(store, messages[start : start + INGEST_BATCH], bench.rules)
    processor = Processor(store, bench.config, SystemClock(), Metrics())
    started = time.monotonic()
    drain_processor(processor, bench.deadline, "processing the backlog")
    processed = time.monotonic() - started
    waiting = store.pending_event_count()
    print(
        f"  {len(messages):,} messages from {args.backlog_people:,} sessions ingested; processed in {processed:.1f} s; "
        f"{waiting:,} Events API events waiting"
    )
    # Throughput, not the batch window: start once every waiting event is due.
    time.sleep(MAX_WAIT_SECS)
    skip = len(state.calls("events"))
    done = threading.Event()
    done.set()
    started = time.monotonic()
    run_delivery(bench, done)
    phase.seconds = time.monotonic() - started
    phase.messages = len(messages)
    phase.received = Received.since(state, skip)
    phase.orders = len(traffic.orders)
    return phase


# ------------------------------------------------------------------------------------ phase 2


def stream(bench: Bench) -> Phase:
    args, store, state = bench.args, bench.store, bench.state
    phase = Phase("stream")
    traffic = Traffic(seed=2, active=args.people)
    rng = random.Random(2)
    # (visitor, timestamp) -> ingest ack; the Events API event carries the message's timestamp as is.
    acked_at: dict[tuple[str, str], float] = {}
    failures: list[BaseException] = []
    fed = threading.Event()
    stop = threading.Event()
    wake = threading.Event()

    def send_batch() -> None:
        messages = traffic.next_batch(INGEST_BATCH, time.time(), rng)
        ack = ingest(store, messages, bench.rules)
        wake.set()
        for m in messages:
            acked_at[(str(m.get("userId") or m.get("anonymousId")), m["timestamp"])] = ack
        phase.messages += len(messages)

    def feed() -> None:
        try:
            feed_paced(args.stream_rate, args.stream_secs, stop, send_batch, failures)
        finally:
            fed.set()

    def process() -> None:
        processor = Processor(store, bench.config, SystemClock(), Metrics())
        try:
            while not stop.is_set():
                if processor.drain_once() == 0:
                    wake.wait(0.05)
                    wake.clear()
        except BaseException as exc:
            failures.append(exc)

    skip = len(state.calls("events"))
    threads = [
        threading.Thread(target=feed, name="bench-feeder", daemon=True),
        threading.Thread(target=process, name="bench-processor", daemon=True),
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        run_delivery(bench, fed)
        phase.seconds = time.monotonic() - started
    finally:
        stop.set()
        wake.set()
        for thread in threads:
            thread.join(10)
    if failures:
        raise failures[0]

    phase.received = Received.since(state, skip)
    phase.orders = len(traffic.orders)
    for received_at, document in phase.received.documents:
        visitor = str(document.get("retailer_visitor_id"))
        for event in document["events"]:
            phase.latencies.append(received_at - acked_at[(visitor, str(event["timestamp"]))])
    return phase


# --------------------------------------------------------------------------------------- report


def print_phase(phase: Phase) -> None:
    received = phase.received
    documents = len(received.documents)
    per_sec = documents / phase.seconds if phase.seconds else math.nan
    per_doc = received.events / documents if documents else math.nan
    print(
        f"  Events API documents sent: {documents:,} in {phase.seconds:.1f} s = {per_sec:,.0f} documents/s; "
        f"{received.events:,} events, {per_doc:.2f} events per document"
    )
    calls = ", ".join(f"{status}: {n:,}" for status, n in sorted(received.statuses.items()))
    print(f"  Events API answers: {calls or 'none'}")
    if phase.latencies:
        print(f"  ack -> document received: {latency_figures(phase.latencies)} ({len(phase.latencies):,} events)")


def checks(bench: Bench, phases: list[Phase]) -> Results:
    out = []
    for phase in phases:
        transactions = phase.received.transactions()
        twice = sum(1 for n in transactions.values() if n > 1)
        out.append(
            (
                len(transactions) == phase.orders and twice == 0,
                f"{phase.name}: {len(transactions):,} trackTransaction for {phase.orders:,} orders "
                f"(of logged-in shoppers), {twice} sent twice",
            )
        )
        refused = sum(n for status, n in phase.received.statuses.items() if status != 200)
        out.append((refused == 0, f"{phase.name}: {refused} Events API calls refused (429, 5xx, 4xx)"))
    stream_phase = next((p for p in phases if p.name == "stream"), None)
    if stream_phase is not None:
        out.append(latency_target("Events API call", stream_phase.latencies))
    letters = bench.store.dead_letter_count()
    out.append((letters == 0, f"dead letters: {letters}"))
    return out


def run(args: argparse.Namespace, folder: Path) -> Results:
    state = EmulatorState(events_rate_limit_per_minute=EMULATOR_EVENTS_LIMIT, call_log_size=2_000_000)
    if args.latency_ms:
        state.set_faults(f"latency_ms={args.latency_ms}")
    db = folder / "segcrit.db"
    with running_emulator(state) as url, closing(SqliteStore(str(db))) as store:
        config = bench_config(
            db,
            api_url=url,
            criteo={
                "partner_id": "6789",
                "caller_id": "bench-caller",
                "events_url": f"{url}/m/event?version=s2s_v0",
                "events_rate_limit_per_minute": SEGCRIT_EVENTS_LIMIT,
            },
            identity={"send": ["email"]},
            flows=[{"type": "conversions"}, {"type": "product_signals"}],
            delivery={"max_wait_secs": MAX_WAIT_SECS},
        )
        bench = Bench(args, config, store, state, time.monotonic() + args.timeout_secs, tracking_rules(config))
        phases: list[Phase] = []
        if args.backlog_people > 0:
            print(f"phase 1, backlog: {args.backlog_people:,} sessions processed first, then one EventsWorker drains")
            phases.append(backlog(bench))
            print_phase(phases[-1])
        if args.stream_rate > 0:
            print(
                f"phase 2, stream: {args.stream_rate:,.0f} events/s for {args.stream_secs:g} s, "
                f"{args.people:,} sessions at a time; processor thread + EventsWorker"
            )
            phases.append(stream(bench))
            print_phase(phases[-1])
        return checks(bench, phases)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backlog-people", type=int, default=3_000, help="sessions in phase 1 (0: skip it)")
    parser.add_argument("--stream-rate", type=float, default=500, help="events/s in phase 2 (0: skip it)")
    parser.add_argument("--stream-secs", type=float, default=20, help="how long phase 2 feeds events")
    parser.add_argument("--people", type=int, default=1_000, help="sessions under way at once in phase 2")
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every emulator answer")
    parser.add_argument("--timeout-secs", type=float, default=300, help="the whole run stops after this")
    parser.add_argument("--check", action="store_true", help="exit 1 when a check is missed")
    args = parser.parse_args()
    if args.backlog_people < 0 or args.stream_rate < 0 or args.stream_secs <= 0 or args.people < 1:
        parser.error("--backlog-people and --stream-rate must be >= 0, --stream-secs > 0, --people >= 1")
    logging.basicConfig(level=logging.ERROR)  # keep the figures plain: no per-call log lines
    print(
        f"events benchmark: conversions + product_signals, max_wait_secs {MAX_WAIT_SECS:g}, emulator on loopback "
        f"(+{args.latency_ms} ms per answer); Events API limits raised for the run: segcrit "
        f"{SEGCRIT_EVENTS_LIMIT:,}/min, emulator {EMULATOR_EVENTS_LIMIT:,}/min"
    )
    return run_in_temp_folder(
        "events", lambda folder: run(args, folder), args.timeout_secs, "checks:", check=args.check
    )


if __name__ == "__main__":
    sys.exit(main())
