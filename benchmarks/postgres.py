"""PostgreSQL benchmark (SPEC §9, PostgreSQL row): SQLite and PostgreSQL with 1 and 2 processes, side by side.

    .venv/bin/python benchmarks/postgres.py [--ingest-secs 10] [--events 50000] [--changes 100000]
        [--postgres-url postgresql://...] [--check]

One run measures, on this machine and under the same conditions, three setups:

    sqlite   one process on a SQLite file (what the other benchmarks measure);
    pg x1    one process on a PostgreSQL database;
    pg x2    two processes on one PostgreSQL database.

1. Ingest (benchmarks/ingest.py's load generator and servers): `segcrit serve` subprocesses (one,
   or two on different ports), Criteo's URL a closed port (delivery backs off; the processor
   thread runs and competes for the CPU as in production). `--clients` load processes (2 by
   default, in every setup, so that the load costs the same CPU everywhere) keep `--concurrency`
   requests of 100 events in flight; with two servers, each client sends to one of them, so each
   server gets half the load. Reported: acknowledged events/s, p99 ack, and the events the
   servers processed meanwhile.
2. Processing (benchmarks/processing.py's inbox fill, store and config): `--events` messages of the
   ingest mix are stored in the inbox, then one or two worker processes, each with its own store
   and `Processor`, drain it together from a common start (on PostgreSQL they claim chunks from
   one inbox). Reported: events/s from the start to the last worker's end.
3. Criteo calls, 2 processes: `segcrit emulator` and two `segcrit serve` on one PostgreSQL
   database; `--changes` new people enter one Engage audience (benchmarks/delivery.py's events),
   half through each server. `delivery.max_wait_secs` is long here (`--calls-max-wait-secs`), so
   that the changes are one burst, all pending before the oldest has waited (delivery.py gets the
   same by processing before delivering). Reported: the emulator's count of calls per endpoint once
   it holds every identifier, against SPEC §9's ⌈N / 50,000⌉ + 1 per process.

PostgreSQL runs use schemas of their own (`segcrit_bench_<random>`) on `--postgres-url` (default
$SEGCRIT_TEST_POSTGRES_URL, else postgresql://postgres@127.0.0.1:5432/test), dropped at the end.
When that server cannot be reached, one line says so and only the SQLite figures are measured.

SPEC §9 states the PostgreSQL targets in events/s, which move with the machine, so pg x2 is also
given as a share of sqlite in the same run, beside what SPEC's figures are of its SQLite ones.
The figures end with `RESULT name=value` lines (benchmarks/compare.py reads them) and PASS/MISS
lines for the SPEC §9 PostgreSQL targets (ingest >= 15,000 events/s, processing >= 10,000 events/s
with 2 processes; calls). Bounded: every wait has a deadline, subprocesses are terminated (then
killed) on the way out, Ctrl-C and SIGTERM included. `--check` makes a MISS exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench
import processing as processing_bench
from bench_common import WRITE_KEY, BenchTimeout, free_port
from bench_events import EventFactory, Population
from delivery import Population as AudiencePeople
from segcrit.criteo.constants import MAX_IDENTIFIERS_PER_CALL
from segcrit.store.base import Store

TARGET_INGEST_EVENTS_PER_SEC = 15_000  # SPEC §9, PostgreSQL, 2 serve processes
TARGET_PROCESSING_EVENTS_PER_SEC = 10_000
# What SPEC §9's SQLite targets mean on a typical 2-core machine (its figures in brackets).
SQLITE_TYPICAL_INGEST = 20_000
SQLITE_TYPICAL_PROCESSING = 10_000
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
CALLS_AUDIENCE = "bench_pg_audience"
CALLS_REQUEST_EVENTS = 500  # events per /v1/batch in the calls run (about 150 KB: under 500 KB)
SETUPS = ("sqlite", "pg x1", "pg x2")


@dataclass
class Figures:
    """One setup's measurements (NaN: not measured)."""

    ingest_events_per_sec: float = math.nan
    ingest_p99_ms: float = math.nan
    processed_during_ingest: float = math.nan
    processing_events_per_sec: float = math.nan
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ PostgreSQL


def postgres_reachable(url: str) -> str | None:
    """None when a connection to `url` works, else why not (one line, no password)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'segcrit[postgres]')"
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def store_url(setup: str, folder: Path, postgres: str | None) -> str:
    return f"sqlite:///{folder / 'segcrit.db'}" if setup == "sqlite" else str(postgres)


@contextlib.contextmanager
def setup_store(setup: str, postgres_url: str) -> Iterator[str | None]:
    """For a PostgreSQL setup, a URL to a fresh schema (dropped afterwards); for SQLite, None."""
    if setup == "sqlite":
        yield None
        return
    with processing_bench.postgres_schema(postgres_url) as url:
        yield url


# ------------------------------------------------------------------------------------- servers


@contextlib.contextmanager
def servers(
    count: int, store: str, folder: Path, api_url: str, extra_yaml: str = ""
) -> Iterator[list[tuple[ingest_bench.Proc, str]]]:
    """`count` `segcrit serve` subprocesses on `store` (ready), each as (process, base URL); stopped after.

    On PostgreSQL the schema is migrated first with `segcrit migrate`, as docs/deploy.md advises;
    `serve` would apply the migrations itself, under an advisory lock.
    """
    procs: list[tuple[ingest_bench.Proc, str]] = []
    try:
        for index in range(count):
            port = free_port()
            config = folder / f"segcrit-{index}.yaml"
            text = ingest_bench.CONFIG.format(store=store, port=port, write_key=WRITE_KEY, api_url=api_url)
            config.write_text(text + extra_yaml)
            if index == 0 and not store.startswith("sqlite"):
                migrate = subprocess.run(
                    ingest_bench.segcrit_command("migrate", "--config", str(config)),
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                if migrate.returncode != 0:
                    raise RuntimeError(f"segcrit migrate failed: {migrate.stderr.strip()}")
            command = ingest_bench.segcrit_command("serve", "--config", str(config))
            procs.append((ingest_bench.start_process(f"segcrit-{index}", command, folder), f"http://127.0.0.1:{port}"))
        for proc, base in procs:
            ingest_bench.wait_ready(proc, f"{base}/readyz")
        yield procs
    finally:
        for proc, _ in reversed(procs):
            proc.stop()
        if not store.startswith("sqlite"):
            end_backends(store, [proc.process.pid for proc, _ in procs])


def end_backends(url: str, pids: list[int]) -> None:
    """End the server sessions of these (stopped) processes: a statement still running after its
    process was killed would otherwise hold its locks, and dropping the schema would wait for it.
    The store names each connection `segcrit HOST:PID:...`."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        for pid in pids:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (f"segcrit %:{pid}:%",),
            )


# -------------------------------------------------------------------------------------- ingest


def measure_ingest(args: argparse.Namespace, setup: str, store: str, folder: Path) -> Figures:
    count = 2 if setup == "pg x2" else 1
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: delivery fails and backs off
    with servers(count, store, folder, closed) as procs:
        load = argparse.Namespace(
            seconds=args.ingest_secs,
            warmup=args.warmup,
            concurrency=args.concurrency,
            clients=args.clients,
            events_per_batch=100,
            rate=0,
            population=args.population,
        )
        result = ingest_bench.run_load(
            [f"{base}/v1/batch" for _, base in procs],
            load,
            [proc for proc, _ in procs],
            [f"{base}/metrics" for _, base in procs],
        )
    figures = Figures(
        ingest_events_per_sec=result["events_per_sec"],
        ingest_p99_ms=result["p99"],
        processed_during_ingest=result["processed_per_sec"] or math.nan,
    )
    refused = {status: n for status, n in result["statuses"].items() if status != 200}
    if refused or result["errors"]:
        figures.notes.append(f"ingest: answers other than 200 {refused}, errors {result['errors']}")
    cpu = ", ".join(f"{name} {share * 100:.0f}%" for name, share in result["cpu"].items())
    # PostgreSQL's own processes are among the "others" (with whatever else runs on the machine).
    others = result["machine_busy"] - sum(result["cpu"].values()) - result["client_cpu"]
    print(
        f"  {setup:7} ingest {result['events_per_sec']:>8,.0f} events/s, p99 ack {result['p99']:.1f} ms; "
        f"CPU (of one core): {cpu}, load clients {result['client_cpu'] * 100:.0f}%, "
        f"others {max(0.0, others) * 100:.0f}% (of {os.cpu_count() or 0}00%)"
    )
    return figures


# ---------------------------------------------------------------------------------- processing


def open_store(kind: str, path: str) -> Store:
    """The store as processing.py opens it: a SQLite file, or a PostgreSQL schema as a process owning workers."""
    if kind == "sqlite":
        from segcrit.store.sqlite import SqliteStore

        return SqliteStore(path)
    from segcrit.store.postgres import PostgresStore

    return PostgresStore(path, owner=True)


def processing_worker(kind: str, store_path: str, start: Any, out: Any, timeout_secs: float) -> None:
    """One processing process: its own store and Processor, draining the inbox from `start`."""
    from segcrit.clock import SystemClock
    from segcrit.config import parse_config
    from segcrit.metrics import Metrics
    from segcrit.processing.engine import Processor

    logging.basicConfig(level=logging.WARNING)
    store = open_store(kind, store_path)
    try:
        config = parse_config(processing_bench.CONFIG.format(db=store_path), env={})
        processor = Processor(store, config, SystemClock(), Metrics())
        start.wait(timeout_secs)
        began, cpu0 = time.monotonic(), time.process_time()
        deadline = began + timeout_secs
        done = 0
        # A round that finds nothing may only mean the other process holds the last chunks.
        while time.monotonic() < deadline:
            n = processor.drain_once()
            done += n
            if n == 0 and store.backlog() == 0:
                break
        out.put((done, began, time.monotonic(), time.process_time() - cpu0, None))
    except Exception as exc:  # reported by the parent
        out.put((0, 0.0, 0.0, 0.0, repr(exc)))
    finally:
        store.close()


def measure_processing(args: argparse.Namespace, setup: str, postgres: str | None, folder: Path) -> float:
    kind = "sqlite" if setup == "sqlite" else "postgresql"
    workers = 2 if setup == "pg x2" else 1
    path = str(folder / "processing.db") if postgres is None else postgres
    filled = time.perf_counter()
    with contextlib.closing(open_store(kind, path)) as store:
        processing_bench.fill(store, EventFactory(Population(args.population)), args.events)
    filled = time.perf_counter() - filled
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=processing_worker, args=(kind, path, start, out, args.timeout_secs), daemon=True)
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        start.set()
        reports = [out.get(timeout=args.timeout_secs + 60) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    failed = [r[4] for r in reports if r[4]]
    if failed:
        raise RuntimeError(f"a processing worker failed: {failed[0]}")
    done = sum(r[0] for r in reports)
    elapsed = max(r[2] for r in reports) - min(r[1] for r in reports)
    if done < args.events:
        raise BenchTimeout(f"processing: {done:,} of {args.events:,} events in {args.timeout_secs:g} s")
    rate = done / elapsed
    cpu = sum(r[3] for r in reports) / done * 1e6
    shares = " + ".join(f"{r[0]:,}" for r in reports)
    print(
        f"  {setup:7} processing {rate:>8,.0f} events/s ({shares} events in {elapsed:.1f} s, "
        f"{cpu:.0f} us CPU/event; inbox filled in {filled:.1f} s)"
    )
    return rate


# ---------------------------------------------------------------------------------------- calls


@dataclass
class Calls:
    changes: int
    processes: int
    counts: dict[str, int]
    delivered: int
    seconds: float
    finished: bool = True  # False: Criteo did not hold every identifier within --calls-timeout-secs

    @property
    def patches(self) -> int:
        return self.counts.get("contact-list-patch", 0)

    @property
    def allowed(self) -> int:
        return math.ceil(self.changes / MAX_IDENTIFIERS_PER_CALL) + self.processes


def emulator_state(base: str) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/_emulator/state", params={"members": 0}, timeout=10).json())


def measure_calls(args: argparse.Namespace, postgres: str, folder: Path) -> Calls:
    port = free_port()
    emulator = ingest_bench.start_process(
        "emulator", ingest_bench.segcrit_command("emulator", "--port", str(port)), folder
    )
    api = f"http://127.0.0.1:{port}"
    try:
        ingest_bench.wait_ready(emulator, f"{api}/_emulator/state")
        extra = f"delivery:\n  max_wait_secs: {args.calls_max_wait_secs:g}\n"
        with servers(2, postgres, folder, api, extra) as procs:
            messages, _ = AudiencePeople([CALLS_AUDIENCE]).events(args.changes, time.time())
            started = time.monotonic()
            halves = [messages[i :: len(procs)] for i in range(len(procs))]
            with ThreadPoolExecutor(len(procs)) as pool:
                list(pool.map(send_all, [base for _, base in procs], halves))
            took = time.monotonic() - started
            print(f"  ingested {args.changes:,} events, half through each server, in {took:.1f} s")
            # Bounded by a deadline of its own: what was seen by then is reported (a MISS), and the
            # figures measured before still are.
            deadline = started + args.calls_timeout_secs
            while True:
                state = emulator_state(api)
                delivered = sum(s["size"] for s in state["segments"] if s["name"] == CALLS_AUDIENCE)
                finished = delivered >= args.changes
                if finished or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            seconds = time.monotonic() - started
            return Calls(args.changes, len(procs), dict(state["calls"]), delivered, seconds, finished)
    finally:
        emulator.stop()


def send_all(base: str, messages: list[dict[str, Any]]) -> None:
    with httpx.Client(auth=(WRITE_KEY, ""), timeout=30) as client:
        for start in range(0, len(messages), CALLS_REQUEST_EVENTS):
            response = client.post(f"{base}/v1/batch", json={"batch": messages[start : start + CALLS_REQUEST_EVENTS]})
            if response.status_code != 200 or response.json().get("rejected"):
                raise RuntimeError(f"{base}/v1/batch answered {response.status_code}: {response.text[:200]}")


# --------------------------------------------------------------------------------------- report


def fmt(value: float, spec: str = ",.0f") -> str:
    return "-" if math.isnan(value) else format(value, spec)


def ratios_to_sqlite(figures: dict[str, Figures]) -> dict[str, float]:
    """PostgreSQL with 2 processes against SQLite, same run and load: SPEC §9 states the PostgreSQL
    targets in events/s, which move with the machine; this ratio does not."""
    two, one = figures.get("pg x2"), figures.get("sqlite")
    if two is None or one is None:
        return {}
    pairs = {
        "ingest": (two.ingest_events_per_sec, one.ingest_events_per_sec),
        "processing": (two.processing_events_per_sec, one.processing_events_per_sec),
    }
    return {name: pg / lite for name, (pg, lite) in pairs.items() if lite and not math.isnan(pg / lite)}


def report(figures: dict[str, Figures], calls: Calls | None, args: argparse.Namespace) -> list[tuple[bool, str]]:
    print()
    print(f"{'':32}" + "".join(f"{setup:>12}" for setup in SETUPS))
    rows = [
        ("ingest events/s", "ingest_events_per_sec", ",.0f"),
        ("ingest p99 ack ms", "ingest_p99_ms", ".1f"),
        ("processed during ingest, ev/s", "processed_during_ingest", ",.0f"),
        ("processing events/s", "processing_events_per_sec", ",.0f"),
    ]
    for label, name, spec in rows:
        print(f"{label:32}" + "".join(f"{fmt(getattr(figures[s], name), spec):>12}" for s in SETUPS))
    for setup in SETUPS:
        for note in figures[setup].notes:
            print(f"  {setup}: {note}")
    ratios = ratios_to_sqlite(figures)
    if ratios:
        print(
            "pg x2 / sqlite in this run: "
            + ", ".join(f"{name} {value:.2f}" for name, value in ratios.items())
            + f" (SPEC's {TARGET_INGEST_EVENTS_PER_SEC:,} and {TARGET_PROCESSING_EVENTS_PER_SEC:,} are "
            f"{TARGET_INGEST_EVENTS_PER_SEC / SQLITE_TYPICAL_INGEST:.2f} and "
            f"{TARGET_PROCESSING_EVENTS_PER_SEC / SQLITE_TYPICAL_PROCESSING:.2f} of the SQLite figures it gives for "
            f"a typical machine, {SQLITE_TYPICAL_INGEST:,} and {SQLITE_TYPICAL_PROCESSING:,})"
        )
    if calls is not None:
        others = ", ".join(f"{k} {v}" for k, v in sorted(calls.counts.items()) if k != "contact-list-patch")
        print(
            f"Criteo calls for {calls.changes:,} changes, {calls.processes} processes: {calls.patches} PATCH "
            f"({others}); Criteo holds {calls.delivered:,} identifiers after {calls.seconds:.1f} s"
            + ("" if calls.finished else f" (stopped waiting: --calls-timeout-secs {args.calls_timeout_secs:g})")
        )

    print()
    for setup in SETUPS:
        key = setup.replace(" ", "")
        f = figures[setup]
        for name, value in (
            ("ingest_events_per_s", f.ingest_events_per_sec),
            ("ingest_p99_ack_ms", f.ingest_p99_ms),
            ("processing_events_per_s", f.processing_events_per_sec),
        ):
            if not math.isnan(value):
                print(f"RESULT {key}_{name}={value:.1f}")
    for name, value in ratios.items():
        print(f"RESULT pgx2_{name}_ratio_to_sqlite={value:.3f}")
    if calls is not None:
        print(f"RESULT pgx2_criteo_patch_calls={calls.patches}")

    two = figures["pg x2"]
    if math.isnan(two.ingest_events_per_sec):
        return []
    ingest_ok = two.ingest_events_per_sec >= TARGET_INGEST_EVENTS_PER_SEC
    processing_ok = two.processing_events_per_sec >= TARGET_PROCESSING_EVENTS_PER_SEC
    results = [
        (
            ingest_ok,
            f"ingest, 2 PostgreSQL processes: {two.ingest_events_per_sec:,.0f} events/s "
            f"(target >= {TARGET_INGEST_EVENTS_PER_SEC:,}; "
            f"{two.ingest_events_per_sec / TARGET_INGEST_EVENTS_PER_SEC:.2f} of it)",
        ),
        (
            processing_ok,
            f"processing, 2 PostgreSQL processes: {two.processing_events_per_sec:,.0f} events/s "
            f"(target >= {TARGET_PROCESSING_EVENTS_PER_SEC:,}; "
            f"{two.processing_events_per_sec / TARGET_PROCESSING_EVENTS_PER_SEC:.2f} of it)",
        ),
    ]
    if calls is not None:
        tokens = calls.counts.get("token", 0)
        results.append(
            (
                calls.patches <= calls.allowed and calls.delivered == calls.changes,
                f"calls: {calls.patches} PATCH for {calls.changes:,} changes to one (segment, add, email) "
                f"with {calls.processes} processes (target <= ceil(N / {MAX_IDENTIFIERS_PER_CALL:,}) + 1 per "
                f"process = {calls.allowed}); Criteo holds {calls.delivered:,} of {calls.changes:,} after "
                f"{calls.seconds:.0f} s",
            )
        )
        results.append(
            (
                tokens <= calls.processes,
                f"token calls: {tokens} in {calls.seconds:.0f} s with {calls.processes} processes "
                "(one per token lifetime per process)",
            )
        )
    return results


# ----------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace, folder: Path) -> int:
    postgres_url = args.postgres_url
    unreachable = postgres_reachable(postgres_url)
    if unreachable:
        print(f"PostgreSQL at {postgres_url} is not reachable ({unreachable}): only SQLite is measured")
    setups = ["sqlite"] if unreachable else list(SETUPS)
    figures = {setup: Figures() for setup in SETUPS}
    calls: Calls | None = None
    try:
        print("ingest (segcrit serve, Criteo closed):")
        for setup in setups:
            with setup_store(setup, postgres_url) as pg:
                sub = folder / f"ingest-{setup.replace(' ', '')}"
                sub.mkdir()
                got = measure_ingest(args, setup, store_url(setup, sub, pg), sub)
                figures[setup].ingest_events_per_sec = got.ingest_events_per_sec
                figures[setup].ingest_p99_ms = got.ingest_p99_ms
                figures[setup].processed_during_ingest = got.processed_during_ingest
                figures[setup].notes += got.notes
        print(f"processing ({args.events:,} events from a filled inbox):")
        for setup in setups:
            with setup_store(setup, postgres_url) as pg:
                sub = folder / f"processing-{setup.replace(' ', '')}"
                sub.mkdir()
                figures[setup].processing_events_per_sec = measure_processing(args, setup, pg, sub)
        if not unreachable and args.changes:
            print(f"Criteo calls ({args.changes:,} changes, 2 processes, emulator):")
            with setup_store("pg x2", postgres_url) as pg:
                sub = folder / "calls"
                sub.mkdir()
                calls = measure_calls(args, str(pg), sub)
    except BenchTimeout as timeout:
        print(f"MISS did not finish within {args.timeout_secs:g} s ({timeout})")
        return 1 if args.check else 0

    results = report(figures, calls, args)
    if results:
        print("SPEC §9 targets (PostgreSQL, 2 processes on this machine's cores):")
    for ok, line in results:
        print(f"{'PASS' if ok else 'MISS'} {line}")
    return 1 if args.check and not all(ok for ok, _ in results) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--ingest-secs", type=float, default=10, help="measured ingest seconds per setup")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured ingest seconds before the window")
    parser.add_argument("--concurrency", type=int, default=8, help="ingest requests in flight, all clients together")
    parser.add_argument("--clients", type=int, default=2, help="ingest load processes (>= 2: one per server)")
    parser.add_argument("--population", type=int, default=200_000, help="distinct people in the events")
    parser.add_argument("--events", type=int, default=50_000, help="events processed per setup")
    parser.add_argument("--changes", type=int, default=100_000, help="changes in the calls run (0: skip it)")
    parser.add_argument("--calls-max-wait-secs", type=float, default=120, help="delivery.max_wait_secs there")
    parser.add_argument(
        "--calls-timeout-secs", type=float, default=150, help="how long Criteo may take to hold every change"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SEGCRIT_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL,
        help="server and database for the schemas of the PostgreSQL runs",
    )
    parser.add_argument("--timeout-secs", type=float, default=300, help="bound of each wait")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.clients < 2 or args.concurrency < args.clients or args.events < 1 or args.changes < 0:
        parser.error("--clients must be >= 2, --concurrency >= --clients, --events >= 1, --changes >= 0")
    logging.basicConfig(level=logging.WARNING)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    print(
        f"PostgreSQL benchmark: ingest {args.ingest_secs:g} s per setup (concurrency {args.concurrency}, "
        f"{args.clients} clients), processing {args.events:,} events, calls for {args.changes:,} changes; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    folder = Path(tempfile.mkdtemp(prefix="segcrit-bench-postgres-"))
    try:
        return run(args, folder)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
