"""Enrichment benchmark (SPEC §9): lookups/s, and ingest and processing with lookups off and on.

    .venv/bin/python benchmarks/enrichment.py [--events 50000] [--population 50000] [--check]

Each mode runs in a temporary folder of its own with what `segcrit serve` runs on a SQLite file,
as Runtime runs it: the processor in a child process, and (lookups on) the enrichment worker on a
thread and event loop of its own in this process, beside ingest. Lookups on means two lookups:

- `crm` (`type: sql`): a CRM table in a SQLite file, keyed by user_id, that knows everyone;
- `segment` (`type: segment_profiles`): `segcrit emulator --profiles` as a subprocess (so that its
  CPU is not ours), knowing a tenth of the people, at `max_per_second: 100` (Segment's limit).

Per mode: 1. warm-up: each of `--population` people identifies once (with lookups on, the CRM
answers for all of them with a phone, the ad consent and a tier; with lookups off, the identify
carries those itself, so that both modes then hold the same people with the same identifiers and
the difference is what running lookups costs; the Profile API goes on at its rate limit through
the whole run, as after a lookup is first configured); 2. processing: `--events` events (about one
in eleven from someone new, hence new lookups) put on the inbox through the ingest path while the
processor is stopped, then drained by a new processor child while the worker runs (timed from the
child's first count); 3. ingest: `--events` more as `/v1/batch` handles them after auth
(`prepare_messages`, then the ingest writer's group commit), 16 requests in flight, while the
processor and the worker run. Reported side by side: ingest and processing events/s (off, on,
on/off), the lookups/s of each lookup (keys answered per second spent waiting on the source), the
keys per SQL query, and the Profile API's requests as the emulator received them: the busiest
second against `max_per_second`, and any 429. PASS/MISS: on/off >= 0.9 for ingest and processing
("unchanged", less run-to-run noise), processing with lookups on >= 0.25 of benchmarks/processing.py's
ceiling for the same events (SPEC §9: its targets hold with lookups on), >= 100 keys per SQL query,
Profile API within max_per_second and no 429. The emulator's CPU is printed too: it shares this
machine's cores, where Segment's API would not.
Bounded by `--timeout-secs`; `--check` makes a MISS exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import SOURCE, bench_config, free_port, ingest, run_in_temp_folder, tracking_rules, wait_until
from bench_events import EventFactory, Population
from processing import Ceiling
from processing import fill as fill_ceiling
from segcrit.clock import SystemClock
from segcrit.enrichment.answers import LookupResult
from segcrit.enrichment.worker import EnrichmentWorker, Source, build_enrichment
from segcrit.metrics import Metrics
from segcrit.processing.child import ProcessorChild
from segcrit.sources.validate import prepare_messages
from segcrit.store.sqlite import SqliteStore

BATCH = 100
SPACE, TOKEN = "spa_bench", "bench-profiles-token"
MAX_PER_SECOND = 100  # Segment's limit per space, the default of max_per_second
TARGET_RATIO = 0.9
TARGET_KEYS_PER_QUERY = 100
PROFILE_SHARE = 10  # one person in this many is known to the Profile API
CONCURRENT = 16  # ingest requests in flight, as in benchmarks/ingest.py
CEILING_TARGET = 0.25  # processing / its ceiling (SPEC §9), which must hold with lookups on


# ------------------------------------------------------------------------------------ the sources


def crm_row(index: int, person: dict[str, Any]) -> tuple[str, str, str, int, str]:
    """What the CRM knows of person `index`: (customer_id, email, phone, ad_consent, tier). Its email
    is the one the person's events carry; the phone and the consent only the CRM knows (with
    lookups off, the warm-up's identify carries them instead: see `identify`)."""
    phone = f"+3361{index % 10_000_000:07d}"[:12]
    return person["user_id"], person["email"], phone, int(index % 5 != 0), "gold"


def write_crm(path: Path, population: Population) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE customers "
            "(customer_id TEXT PRIMARY KEY, email TEXT, phone TEXT, ad_consent INTEGER, tier TEXT)"
        )
        db.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, ?, ?)",
            (crm_row(i, population.person(i)) for i in range(population.size)),
        )


def profiles_seed(population: Population) -> dict[str, Any]:
    people = [
        {
            "external_ids": [
                {"type": "user_id", "id": f"usr_{i:08d}"},
                {"type": "email", "id": f"seg.{i}@example.com"},
            ],
            "traits": {"lifetime_value": i % 3000},
        }
        for i in range(0, population.size, PROFILE_SHARE)
    ]
    return {"spaces": {SPACE: {"access_token": TOKEN, "profiles": people}}}


@contextlib.contextmanager
def profile_api(folder: Path, population: Population, deadline: float) -> Iterator[tuple[str, int | None]]:
    seed = folder / "profiles.json"
    seed.write_bytes(orjson.dumps(profiles_seed(population)))
    port = free_port()
    command = [sys.executable, "-m", "segcrit", "emulator", "--port", str(port), "--profiles", str(seed)]
    with (folder / "emulator.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _answers(f"{url}/_emulator/profiles"), deadline, "the emulator to start")
            yield url, process.pid
        finally:
            process.terminate()
            process.wait(15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Timed:
    """A lookup's source, timed: the keys it answered and the seconds spent waiting on it."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.keys = 0
        self.calls = 0
        self.secs = 0.0

    @property
    def lookup(self) -> Any:
        return self.inner.lookup

    async def lookup_keys(self, keys: Sequence[str]) -> LookupResult:
        started = time.perf_counter()
        try:
            return await self.inner.lookup_keys(keys)
        finally:
            self.secs += time.perf_counter() - started
            self.keys += len(keys)
            self.calls += 1

    async def aclose(self) -> None:
        await self.inner.aclose()


# ------------------------------------------------------------------------------------ one mode


@dataclass
class Mode:
    name: str
    ingest_rate: float = 0.0
    processing_rate: float = 0.0
    ingest_cpu: float = 0.0  # CPU seconds of this process (ingest and lookups) per 1,000 events
    processing_cpu: float = 0.0  # of this process and the processor child
    answers_processed: int = 0
    emulator_cpu: float = 0.0  # CPU seconds the Profile API emulator used, through the whole mode
    wall: float = 0.0
    sources: dict[str, Timed] = field(default_factory=dict)
    request_times: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


def cpu_secs(pid: int | None) -> float:
    """CPU seconds (user and system) process `pid` has used so far; 0 when it is not there."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Workers:
    """What `segcrit serve` runs on a SQLite file, as Runtime runs it: the processor in a child
    process (segcrit.processing.child) and, with lookups on, the enrichment worker on a thread and
    event loop of its own in this process, beside ingest."""

    def __init__(self, store: SqliteStore, config: Any, metrics: Metrics, worker_factory: Any) -> None:
        self.store, self.config, self.metrics = store, config, metrics
        self.stop = threading.Event()
        self.worker: EnrichmentWorker | None = None
        self.child: ProcessorChild | None = None
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        if worker_factory is not None:
            self._threads.append(
                threading.Thread(target=asyncio.run, args=(self._enrich(worker_factory),), daemon=True)
            )
        else:
            self._ready.set()

    def __enter__(self) -> Workers:
        self.start_processor()
        for thread in self._threads:
            thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.stop_processor()
        for thread in self._threads:
            thread.join(30)

    def start_processor(self) -> None:
        self.child = ProcessorChild(self.store, self.config, self.metrics)
        self.child.start()

    def stop_processor(self) -> None:
        """The processor child finishes its chunk and exits (so that an inbox can be filled)."""
        if self.child is not None:
            self.child.stop(15)
            self.child = None

    def wake(self) -> None:
        if self.child is not None:
            self.child.wake()

    def child_cpu(self) -> float:
        """CPU seconds the processor child has used so far."""
        return cpu_secs(None if self.child is None else self.child.pid)

    async def _enrich(self, worker_factory: Any) -> None:
        self.worker = worker_factory(self.wake)
        self._ready.set()
        try:
            while not self.stop.is_set():
                if await self.worker.drain_once() == 0:
                    await asyncio.sleep(0.5)  # Runtime's idle wait
        finally:
            await self.worker.aclose()


def identify(index: int, person: dict[str, Any], *, with_crm: bool) -> dict[str, Any]:
    """The warm-up's identify of one person. `with_crm` (lookups off): it also carries what the CRM
    would add (phone, consent, tier), so that both modes measure the same people with the same
    identifiers, and the difference is what running the lookups costs, not what a richer profile
    costs to process."""
    message: dict[str, Any] = {
        "type": "identify",
        "userId": person["user_id"],
        "anonymousId": person["anonymous_id"],
        "messageId": f"warm-{person['user_id']}",
        "traits": {"email": person["email"], "plan": "free"},
    }
    if with_crm:
        _, _, phone, consent, tier = crm_row(index, person)
        message["traits"].update(phone=phone, tier=tier)
        message["context"] = {"consent": {"categoryPreferences": {"Advertising": bool(consent)}}}
    return message


def fill(store: SqliteStore, factory: EventFactory, rules: Any, count: int) -> None:
    for start in range(0, count, BATCH):
        ingest(store, [factory.message() for _ in range(min(BATCH, count - start))], rules)


def batches(factory: EventFactory, count: int) -> list[list[dict[str, Any]]]:
    return [[factory.message() for _ in range(min(BATCH, count - start))] for start in range(0, count, BATCH)]


def ingest_as_served(store: SqliteStore, to_send: list[list[dict[str, Any]]], rules: Any) -> None:
    """What `/v1/batch` does after authentication, for CONCURRENT requests at a time on one event
    loop: prepare the messages, then wait for the ingest writer's group commit (which the processor
    child gives way to)."""

    async def run() -> None:
        queue = iter(to_send)

        async def client() -> None:
            for messages in queue:
                now = time.time()
                prepared = prepare_messages(messages, rules, received_at=now)
                if prepared.rejected:
                    raise RuntimeError(f"events rejected at ingest: {prepared.rejected[:3]}")
                await store.accept(SOURCE, prepared.messages, now)

        await asyncio.gather(*(client() for _ in range(CONCURRENT)))

    asyncio.run(run())


def run_mode(folder: Path, args: argparse.Namespace, *, lookups_on: bool, deadline: float) -> Mode:
    mode = Mode("on" if lookups_on else "off")
    population = Population(args.population)
    # Everyone the measured events may bring: the known people and about a tenth more, new ones.
    everyone = Population(args.population * 11 // 10)
    folder.mkdir()
    started = time.perf_counter()
    enrichment: list[dict[str, Any]] = []
    api = profile_api(folder, everyone, deadline) if lookups_on else contextlib.nullcontext(("", None))
    with api as (api_url, api_pid):
        if lookups_on:
            write_crm(folder / "crm.db", everyone)
            lookups = [
                {
                    "name": "crm",
                    "type": "sql",
                    "url": f"sqlite:///{folder / 'crm.db'}",
                    "query": "SELECT customer_id AS user_id, email, phone, ad_consent, tier FROM customers "
                    "WHERE customer_id IN :keys",
                    "columns": {"email": "email", "phone": "phone", "consent": "ad_consent"},
                },
                {
                    "name": "segment",
                    "type": "segment_profiles",
                    "space_id": SPACE,
                    "access_token": TOKEN,
                    "url": api_url,
                    "traits": ["lifetime_value"],
                    "max_per_second": args.max_per_second,
                },
            ]
            enrichment = [lookup for lookup in lookups if args.lookups in ("both", lookup["type"])]
        sections: dict[str, Any] = {"identity": {"send": ["email", "madid", "phoneNumber"]}}
        sections["flows"] = [{"type": "audience_sync"}]
        if enrichment:
            sections["enrichment"] = enrichment
        config = bench_config(folder / "segcrit.db", **sections)
        store = SqliteStore(str(folder / "segcrit.db"))
        metrics = Metrics()
        rules = tracking_rules(config)
        # Measured events: about one in eleven from someone new (a new profile, so new lookups).
        factory = EventFactory(everyone)

        def worker(wake: Any) -> EnrichmentWorker:
            built = build_enrichment(store, config, SystemClock(), metrics, wake=wake)
            timed = [Timed(source) for source in built.sources]
            built.sources = list(timed)
            mode.sources = {source.lookup.name: source for source in timed}
            return built

        try:
            with Workers(store, config, metrics, worker if lookups_on else None) as workers:
                # Warm-up: everyone in the population identifies once; the CRM answers for them all
                # (the Profile API goes on through the run, at its rate limit).
                for start in range(0, population.size, BATCH):
                    warm_up = [
                        identify(i, population.person(i), with_crm=not lookups_on) for i in range(start, start + BATCH)
                    ]
                    ingest(store, warm_up, rules)
                wait_until(lambda: store.backlog() == 0, deadline, "the warm-up to be processed")
                if lookups_on and args.lookups != "segment_profiles":
                    wait_until(lambda: store.unanswered_lookup_count("crm") == 0, deadline, "the CRM warm-up")
                    wait_until(lambda: store.backlog() == 0, deadline, "the CRM's answers to be processed")

                # Processing: a full inbox, drained by a new processor child while the worker goes
                # on with its lookups. Timed from the child's first count (its start is not counted).
                workers.stop_processor()
                fill(store, factory, rules, args.events)
                before = processed_events(metrics)
                workers.start_processor()
                wait_until(lambda: processed_events(metrics) > before, deadline, "the processor child to start")
                t0, cpu0, child0 = time.perf_counter(), time.process_time(), workers.child_cpu()
                first = processed_events(metrics) - before
                wait_until(lambda: store.backlog() == 0, deadline, "the inbox to be processed")
                timed = processed_events(metrics) - before - first
                mode.processing_rate = timed / (time.perf_counter() - t0)
                cpu = time.process_time() - cpu0 + workers.child_cpu() - child0
                mode.processing_cpu = cpu / max(timed, 1) * 1000
                mode.answers_processed = int(processed_events(metrics) - before) - args.events

                # Ingest, with the processor and the worker running, as under `segcrit serve`.
                to_send = batches(factory, args.events)
                t1, cpu1 = time.perf_counter(), time.process_time()
                ingest_as_served(store, to_send, rules)
                mode.ingest_rate = args.events / (time.perf_counter() - t1)
                mode.ingest_cpu = (time.process_time() - cpu1) / args.events * 1000
                wait_until(lambda: store.backlog() == 0, deadline, "the last events to be processed")
            if lookups_on:
                mode.emulator_cpu = cpu_secs(api_pid)
                mode.wall = time.perf_counter() - started
                log = httpx.get(f"{api_url}/_emulator/profiles", timeout=30).json()["requests"]
                mode.request_times = [r["at"] for r in log]
                mode.statuses = [r["status"] for r in log]
        finally:
            store.close()
    return mode


def ceiling_rate(folder: Path, args: argparse.Namespace, deadline: float) -> float:
    """Events/s of the processing ceiling (benchmarks/processing.py: the simplest durable write of
    the same rows) for the processing phase's events, on a store of its own."""
    folder.mkdir()
    store = SqliteStore(str(folder / "ceiling.db"))
    try:
        fill_ceiling(store, EventFactory(Population(args.population * 11 // 10)), args.events)
        ceiling = Ceiling(store)
        started, done = time.perf_counter(), 0
        while (drained := ceiling.drain_once()) and time.monotonic() < deadline:
            done += drained
        return done / (time.perf_counter() - started)
    finally:
        store.close()


def processed_events(metrics: Metrics) -> float:
    """Events the processor handled so far, lookup answers included."""
    return metrics.registry.get_sample_value("segcrit_events_processed_total") or 0.0


# ------------------------------------------------------------------------------------ reporting


def busiest_second(times: list[float]) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def report(off: Mode, on: Mode, max_per_second: int) -> list[tuple[bool, str]]:
    print(f"{'':28}{'off':>12}{'on':>12}{'on/off':>10}")
    for label, a, b in (
        ("ingest (events/s)", off.ingest_rate, on.ingest_rate),
        ("processing (events/s)", off.processing_rate, on.processing_rate),
    ):
        print(f"{label:28}{a:>12,.0f}{b:>12,.0f}{b / a if a else 0:>10.2f}")
    for label, a, b in (
        ("  CPU s per 1,000 ingested", off.ingest_cpu, on.ingest_cpu),
        ("  CPU s per 1,000 processed", off.processing_cpu, on.processing_cpu),
    ):
        print(f"{label:28}{a:>12.3f}{b:>12.3f}{b / a if a else 0:>10.2f}")
    print(f"  (with lookups on, the processor also handled {on.answers_processed:,} lookup answers meanwhile)")
    if on.emulator_cpu:
        print(
            f"  (the Profile API emulator used {on.emulator_cpu:.1f} CPU s of this machine in {on.wall:.0f} s, "
            f"{on.emulator_cpu / on.wall:.0%} of a core, which Segment's API would not)"
        )
    # For benchmarks/compare.py, which reads `RESULT name=value` lines.
    for name, value in (
        ("ingest_off", off.ingest_rate),
        ("ingest_on", on.ingest_rate),
        ("processing_off", off.processing_rate),
        ("processing_on", on.processing_rate),
    ):
        print(f"RESULT {name}={value:.0f}")
    results: list[tuple[bool, str]] = []
    crm, segment = on.sources.get("crm"), on.sources.get("segment")
    if crm is not None:
        per_query = crm.keys / max(1, crm.calls)
        print(
            f"{'lookups/s crm (sql)':28}{'-':>12}{crm.keys / max(crm.secs, 1e-9):>12,.0f}"
            f"   {crm.calls:,} queries, {per_query:,.0f} keys per query"
        )
        results.append(
            (
                per_query >= TARGET_KEYS_PER_QUERY,
                f"sql lookups batched: {per_query:,.0f} keys per query (target >= {TARGET_KEYS_PER_QUERY})",
            )
        )
    busiest = busiest_second(on.request_times)
    if segment is not None:
        span = (max(on.request_times) - min(on.request_times)) if on.request_times else 0.0
        rate = len(on.request_times) / span if span else 0.0
        print(
            f"{'lookups/s segment (API)':28}{'-':>12}{segment.keys / max(segment.secs, 1e-9):>12,.0f}"
            f"   {len(on.request_times):,} requests, {rate:,.0f}/s, busiest second {busiest}"
        )
        too_many = on.statuses.count(429)
        results.append(
            (
                busiest <= max_per_second and too_many == 0,
                f"Profile API: busiest second {busiest} "
                f"requests (max_per_second {max_per_second}), {too_many} answered 429",
            )
        )
    for label, a, b in (
        ("ingest", off.ingest_rate, on.ingest_rate),
        ("processing", off.processing_rate, on.processing_rate),
    ):
        ratio = b / a if a else 0.0
        results.insert(
            0,
            (
                ratio >= TARGET_RATIO,
                f"{label} with lookups on at {ratio:.2f} of off "
                f"({b:,.0f} vs {a:,.0f} events/s; target >= {TARGET_RATIO})",
            ),
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per phase")
    parser.add_argument("--population", type=int, default=50_000, help="distinct people (and CRM rows)")
    parser.add_argument("--lookups", choices=["both", "sql", "segment_profiles"], default="both")
    parser.add_argument("--max-per-second", type=int, default=MAX_PER_SECOND, help="of the Profile API lookup")
    parser.add_argument("--timeout-secs", type=float, default=600)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    deadline = time.monotonic() + args.timeout_secs

    def run(folder: Path) -> list[tuple[bool, str]]:
        off = run_mode(folder / "off", args, lookups_on=False, deadline=deadline)
        on = run_mode(folder / "on", args, lookups_on=True, deadline=deadline)
        results = report(off, on, args.max_per_second)
        top = ceiling_rate(folder / "ceiling", args, deadline)
        ratio = on.processing_rate / top
        print(f"{'processing ceiling':28}{top:>12,.0f}   (benchmarks/processing.py's, for the same events)")
        print(f"RESULT processing_on_ratio_to_ceiling={ratio:.3f}")
        results.insert(
            2,
            (
                ratio >= CEILING_TARGET,
                f"processing with lookups on at {ratio:.2f} of its ceiling (SPEC §9 target >= {CEILING_TARGET})",
            ),
        )
        return results

    print(f"enrichment benchmark: {args.events:,} events per phase, population {args.population:,}")
    return run_in_temp_folder("enrichment", run, args.timeout_secs, "targets:", check=args.check)


if __name__ == "__main__":
    sys.exit(main())
