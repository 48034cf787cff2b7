"""The whole ingest path for property tests: segcrit's ingest routes served by uvicorn on a loopback
port, a real SQLite file, the real Processor, and everything logged while they run.

The server is started once (`ingest_server`); each example gets a fresh store in a fresh folder
(`IngestServer.fresh`), so that what one example left on disk cannot pass for another's. Workers
are off: a test sends requests, then steps processing with `drain()` on the same FakeClock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import tempfile
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from segcrit.clock import FakeClock
from segcrit.config import Config
from segcrit.domain import AcceptResult, InboxEvent
from segcrit.emulator.server import running_app
from segcrit.logs import KeyValueFormatter
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.sources import ingest_routes
from segcrit.store.sqlite import SqliteStore
from tests.helpers import make_config

WRITE_KEY = "WK"  # the `web` source of tests.helpers.BASE_CONFIG
WEBHOOK_SECRET = "SECRET"  # its `engage` webhook source

# Every flow, so that processing takes every path an accepted message can take.
ALL_FLOWS = """\
  - type: conversions
  - type: product_signals
  - type: catalog
    merchant_id: "6789"
  - type: suppression
    on: [Order Completed]
    remove_from: all
    add_to: recent_buyers
    for_days: 30
  - type: lifecycle
    stages: {Trial Started: trialists, Subscription Started: subscribers}
  - type: lookalike_seed
    audience: high_value
    when: "order_count >= 2 or traits['plan'] == 'pro' or trait('score', 0) > 3"
"""


class _CurrentStore:
    """The ingest sink: whichever store the running example uses."""

    def __init__(self) -> None:
        self.store: SqliteStore | None = None

    def submit(self, source: str, messages: Sequence[dict[str, Any]], received_at: float) -> Awaitable[AcceptResult]:
        assert self.store is not None
        return self.store.submit(source, messages, received_at)

    def backlog(self) -> int:
        assert self.store is not None
        return self.store.backlog()


class IngestEnv:
    """One example's store and processor, the HTTP client, and the log written meanwhile."""

    def __init__(self, folder: Path, config: Config, http: httpx.Client, clock: FakeClock) -> None:
        self.db = folder / "segcrit.db"
        self.http = http
        self.clock = clock
        self.store = SqliteStore(str(self.db))
        self.processor = Processor(self.store, config, clock, Metrics())
        self.log = io.StringIO()

    def drain(self) -> int:
        return self.processor.drain()

    def inbox(self) -> list[InboxEvent]:
        """The events waiting for processing (read, not taken)."""
        return self.store.waiting_events("inbox", 0, 1_000_000)

    def disk_and_log(self) -> bytes:
        """Every byte segcrit wrote: the database file, its WAL and the log, lowercased."""
        files = [self.db, self.db.with_name(self.db.name + "-wal")]
        written = b"".join(path.read_bytes() for path in files if path.exists())
        return (written + self.log.getvalue().encode("utf-8", "surrogatepass")).lower()


class IngestServer:
    def __init__(self, config: Config, http: httpx.Client, sink: _CurrentStore, clock: FakeClock) -> None:
        self.config = config
        self.http = http
        self._sink = sink
        self._clock = clock

    @contextmanager
    def fresh(self) -> Iterator[IngestEnv]:
        """A new store behind the server, with every log record of every logger captured as
        segcrit formats them."""
        with tempfile.TemporaryDirectory(prefix="segcrit-ingest-") as folder:
            env = IngestEnv(Path(folder), self.config, self.http, self._clock)
            self._sink.store = env.store
            handler = logging.StreamHandler(env.log)
            handler.setFormatter(KeyValueFormatter())
            root = logging.getLogger()
            level = root.level
            root.addHandler(handler)
            root.setLevel(logging.DEBUG)
            try:
                yield env
            finally:
                root.removeHandler(handler)
                root.setLevel(level)
                self._sink.store = None
                env.store.close()


@contextmanager
def ingest_server(flows: str = ALL_FLOWS, extra: str = "") -> Iterator[IngestServer]:
    """Segcrit's ingest routes (as `create_app` mounts them) on a loopback port."""
    config = make_config("unused.db", flows=flows, extra=extra)
    clock = FakeClock()
    sink = _CurrentStore()
    app = Starlette(routes=ingest_routes(config, sink, Metrics(), clock))
    with running_app(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield IngestServer(config, http, sink, clock)


def basic_auth(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def signature(signed: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), signed, hashlib.sha1).hexdigest()
