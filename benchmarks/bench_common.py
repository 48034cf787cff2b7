"""What the benchmarks share: segcrit's config and ingest path, pacing, deadlines, percentiles, PASS/MISS.

The benchmarks run as scripts (`.venv/bin/python benchmarks/X.py`); they import this module after
putting their own folder on `sys.path`, as they do for `bench_events`.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from segcrit.config import Config, parse_config

if TYPE_CHECKING:
    # Not imported at run time: cohort.py measures its own RSS, and would count them (~1.5 MB).
    from segcrit.processing.engine import Processor
    from segcrit.sources.validate import MessageRules
    from segcrit.store.sqlite import SqliteStore

MAX_WAIT_SECS = 2.0  # delivery.max_wait_secs of the delivery benchmarks
POLL_SECS = 0.25  # the delivery loop's poll in `segcrit serve` for max_wait_secs 2
INGEST_BATCH = 100  # events per /v1/batch request, as Segment's libraries send them
TARGET_P50_SECS = 3.0  # SPEC §9: ingest ack -> Criteo call
TARGET_P99_SECS = 10.0
SOURCE = "web"
WRITE_KEY = "bench-write-key"
CLOSED_API_URL = "http://127.0.0.1:9"  # nothing listens there: for runs that never reach Criteo
# The emulator's demo credentials (segcrit.emulator.state.DEMO_*), written out: importing the
# emulator's state would add ~6 MB to the RSS cohort.py measures.
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"
DEMO_ADVERTISER_ID = "12345"

Results = list[tuple[bool, str]]  # (met?, the line to print after PASS or MISS)


class BenchTimeout(Exception):
    """The run did not finish inside --timeout-secs."""


class Drainable(Protocol):
    async def drain_once(self) -> Any: ...


# ------------------------------------------------------------------------------------ segcrit


def bench_config(
    db: Path | str, *, api_url: str = CLOSED_API_URL, criteo: dict[str, Any] | None = None, **sections: Any
) -> Config:
    """segcrit's config: a SQLite store at `db`, one tracking_api source, the emulator's demo credentials.

    `criteo` adds keys to the criteo section; `sections` are the other top-level ones (identity,
    flows, audiences, delivery...), as they are written in YAML.
    """
    raw = {
        "store": f"sqlite:///{db}",
        "sources": [{"name": SOURCE, "type": "tracking_api", "write_key": WRITE_KEY}],
        "criteo": {
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET,
            "advertiser_id": DEMO_ADVERTISER_ID,
            "api_url": api_url,
            **(criteo or {}),
        },
        **sections,
    }
    return parse_config(yaml.safe_dump(raw, sort_keys=False), env={})


def tracking_rules(config: Config) -> MessageRules:
    """What the tracking_api source checks each message against."""
    from segcrit.sources.validate import TRACKING_TYPES, MessageRules

    return MessageRules(types=TRACKING_TYPES, max_message_bytes=config.server.max_message_bytes)


def ingest(store: SqliteStore, messages: list[dict[str, Any]], rules: MessageRules) -> float:
    """What `/v1/batch` does after authentication; returns the time of the acknowledgement."""
    from segcrit.sources.validate import prepare_messages

    now = time.time()
    prepared = prepare_messages(messages, rules, received_at=now)
    if prepared.rejected:
        raise RuntimeError(f"events rejected at ingest: {prepared.rejected[:3]}")
    store.accept_sync(SOURCE, prepared.messages, now)
    return time.time()


def free_port() -> int:
    """A loopback port nothing listens on (for a server started as a subprocess)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- pacing, deadlines


def feed_paced(
    rate: float, secs: float, stop: threading.Event, send_batch: Callable[[], None], failures: list[BaseException]
) -> None:
    """Call `send_batch` (INGEST_BATCH events each) so as to feed `rate` events/s for `secs`, until `stop`.

    Meant as a thread's target: an exception is kept in `failures` for the main thread to raise.
    """
    interval = INGEST_BATCH / rate
    batches = max(1, round(rate * secs / INGEST_BATCH))
    due = time.monotonic()
    try:
        for _ in range(batches):
            if stop.is_set():
                return
            send_batch()
            due += interval
            pause = due - time.monotonic()
            if pause > 0:
                stop.wait(pause)  # pacing the load, not synchronising
    except BaseException as exc:  # reported by the main thread
        failures.append(exc)


def wait_until(condition: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll `condition` until it holds; BenchTimeout(what) past `deadline` (a time.monotonic() value)."""
    while not condition():
        if time.monotonic() > deadline:
            raise BenchTimeout(what)
        time.sleep(0.05)


def drain_processor(processor: Processor, deadline: float, what: str) -> None:
    """Process until the inbox is empty; BenchTimeout(what) past `deadline`."""
    while processor.drain_once():
        if time.monotonic() > deadline:
            raise BenchTimeout(what)


async def poll_worker(worker: Drainable, done: Callable[[], bool], deadline: float, what: str) -> None:
    """Drain `worker` every POLL_SECS, as `segcrit serve` does, until `done()`; BenchTimeout past `deadline`."""
    while not done():
        if time.monotonic() > deadline:
            raise BenchTimeout(what)
        await worker.drain_once()
        await asyncio.sleep(POLL_SECS)


def run_until(coroutine: Coroutine[Any, Any, None], deadline: float, what: str) -> None:
    """Run `coroutine`; past `deadline` it is cancelled (this also bounds a call that hangs): BenchTimeout(what)."""
    try:
        asyncio.run(asyncio.wait_for(coroutine, max(0.0, deadline - time.monotonic())))
    except TimeoutError:
        raise BenchTimeout(what) from None


# ------------------------------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_figures(values: list[float]) -> str:
    """ "p50 …, p99 …, max …" of latencies in seconds."""
    return (
        f"p50 {percentile(values, 50):.2f} s, p99 {percentile(values, 99):.2f} s, "
        f"max {max(values, default=math.nan):.2f} s"
    )


def latency_target(what: str, values: list[float]) -> tuple[bool, str]:
    """SPEC §9's ack -> Criteo call target (p50, p99) checked on `values`; `what` names the call."""
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return (
        p50 <= TARGET_P50_SECS and p99 <= TARGET_P99_SECS,
        f"ack -> {what} p50 {p50:.2f} s (target <= {TARGET_P50_SECS:g}), "
        f"p99 {p99:.2f} s (target <= {TARGET_P99_SECS:g})",
    )


# --------------------------------------------------------------------------------------- running


def run_in_temp_folder(
    name: str, run: Callable[[Path], Results], timeout_secs: float, heading: str, *, check: bool
) -> int:
    """`run` in a new temporary folder (removed after, Ctrl-C included), then its PASS/MISS lines.

    Returns the exit status: 130 when interrupted, 1 when `check` and a line is a MISS, else 0.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"segcrit-bench-{name}-"))
    try:
        results = run(folder)
    except BenchTimeout as timeout:
        results = [(False, f"did not finish within {timeout_secs:g} s ({timeout})")]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(heading)
    for ok, line in results:
        print(f"{'PASS' if ok else 'MISS'} {line}")
    missed = not all(ok for ok, _ in results)
    return 1 if check and missed else 0
