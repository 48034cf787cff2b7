"""On SQLite, the processor child gets turns on the write lock while ingest never lets up
(`SqliteStore.share_turn_flag`): the backlog is worked off during a burst, not only after it.

The ingest writer is kept busy without a pause: requests of 200 messages each are queued faster
than it commits them, so that its queue is never empty, and another thread holds the GIL as the
event loop parsing requests does, so that every group is long (the writer waits for the GIL after
each statement). SQLite's own lock would give the child no turn at all; before turns waited for
each other, such long groups left it none either.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from segcrit.metrics import Metrics
from segcrit.processing.child import ProcessorChild
from segcrit.store.sqlite import SqliteStore
from tests.helpers import make_config

IN_FLIGHT = 48
MESSAGES_PER_REQUEST = 200
DEADLINE_SECS = 30.0
WANTED_PROCESSED = 200


def _message(request: int, index: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"u{(request * MESSAGES_PER_REQUEST + index) % 5000}",
        "messageId": f"m-{request}-{index}",
        "properties": {"product_id": f"p{index % 50}", "price": 12.5},
        "_segcrit": {"ts": 1_700_000_000.0, "received_at": 1_700_000_000.0, "emails": [], "phones": []},
    }


class Burst:
    """Keeps IN_FLIGHT ingest requests queued on the store's writer until stopped."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._stop = threading.Event()
        self.acked = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._busy = threading.Thread(target=self._parse, daemon=True)

    def __enter__(self) -> Burst:
        self._thread.start()
        self._busy.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._busy.join(30)

    def _parse(self) -> None:
        """Python work that holds the GIL, as the event loop's parsing and validation does."""
        while not self._stop.is_set():
            sum(len(str(i)) for i in range(10_000))

    def _run(self) -> None:
        try:
            asyncio.run(self._send())
        except BaseException as error:  # reported by the test
            self.error = error

    async def _send(self) -> None:
        counter = iter(range(10**9))

        async def sender() -> None:
            while not self._stop.is_set():
                request = next(counter)
                messages = [_message(request, i) for i in range(MESSAGES_PER_REQUEST)]
                result = await self._store.accept("web", messages, time.time())
                self.acked += result.stored

        await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))


def _inbox_head(path: str) -> int:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT min(seq) FROM inbox").fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def test_the_processor_child_works_off_the_backlog_while_ingest_never_lets_up(tmp_path: Path) -> None:
    path = str(tmp_path / "segcrit.db")
    config = make_config(path)
    store = SqliteStore(path)
    child = ProcessorChild(store, config, Metrics())
    try:
        with Burst(store) as burst:
            # The backlog first grows with the child not yet running, so that it has work throughout.
            deadline = time.monotonic() + DEADLINE_SECS
            while burst.acked < 10 * MESSAGES_PER_REQUEST and time.monotonic() < deadline:
                time.sleep(0.05)
            assert burst.error is None, burst.error
            first = _inbox_head(path)
            child.start()
            processed = looks = waiting = 0
            while processed < WANTED_PROCESSED and time.monotonic() < deadline:
                assert burst.error is None, burst.error
                looks += 1
                waiting += store.ingest_waiting()
                processed = _inbox_head(path) - first
                time.sleep(0.05)
            acked_meanwhile = burst.acked
        assert processed >= WANTED_PROCESSED, (
            f"processed {processed} events in {DEADLINE_SECS} s while ingest stored {acked_meanwhile}"
        )
        # Between two groups the writer's queue may be empty for a moment (the senders queue the
        # next requests once their acks are in); most of the time it must have had work waiting.
        assert waiting >= 0.8 * looks, f"ingest waited at {waiting} of {looks} looks: the burst let up"
    finally:
        child.stop(10)
        store.close()


def test_after_a_chunk_gives_way_the_next_claims_about_what_it_applied(tmp_path: Path) -> None:
    """Every event a chunk claims is decoded and its identifiers read before the first is applied:
    a chunk that gives way to ingest after a few events leaves the rest prepared for nothing. So the
    next chunk claims about what the last one applied, and the claim grows back once chunks apply
    all they claim (`_next_chunk_events`). Nothing left by a chunk is lost: the next ones take it."""
    store = SqliteStore(str(tmp_path / "segcrit.db"))
    try:
        sent = [_message(request, i) for request in range(2) for i in range(MESSAGES_PER_REQUEST)]
        store.accept_sync("web", sent, 1_700_000_000.0)
        claims: list[int] = []
        applied: list[str] = []

        def chunk(apply: int | None) -> None:
            with store.claim_chunk(500) as claimed:
                events = claimed.events[:apply]
                claims.append(len(claimed.events))
                applied.extend(event.message["messageId"] for event in events)
                claimed.done(events)

        chunk(40)  # gave way to ingest after 40 of the 400
        chunk(None)  # applied all it claimed: 50 (40 and a quarter)
        chunk(None)  # then twice as many
        chunk(10)  # twice as many again, but it gave way after 10
        chunk(None)  # at least 20

        assert claims == [400, 50, 100, 200, 20]
        assert store.backlog() == len(sent) - len(applied)
        assert applied == [message["messageId"] for message in sent[: len(applied)]]
    finally:
        store.close()
