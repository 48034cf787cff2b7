"""The admin recorder: every few seconds, what the running process saw goes to the store.

- per-minute counters: the growth of segcrit's Prometheus counters since the last flush (events
  in and refused per source, events processed, Criteo calls by endpoint and status, dead letters
  made) added to the minute's row, so every process sharing a store adds its own share; and
  gauges read from the store (backlog, pending changes, delivery lag, open dead letters), the
  highest value of the minute kept. Kept COUNTER_RETENTION_SECS, pruned a few minutes at a time;
- the event debugger's samples (refused messages sanitised here, off the ingest path);
- recent Criteo calls (masked when they were recorded), with the audience of their segment.

It runs on a thread of its own (`start`/`stop`); tests call `flush()` directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, Final

import orjson
from prometheus_client import Counter

from segcrit.admin.activity import CriteoCall, Ingested
from segcrit.admin.masking import safe_message
from segcrit.clock import Clock
from segcrit.domain import CounterIncrement, NewCall, NewSample
from segcrit.identity.normalize import RESERVED_KEY
from segcrit.metrics import Metrics
from segcrit.store.base import AdminStore

log = logging.getLogger("segcrit.admin")

FLUSH_INTERVAL_SECS: Final = 5.0
COUNTER_RETENTION_SECS: Final = 48 * 3600  # per-minute counters kept for the overview charts
PRUNE_ROUNDS_PER_FLUSH: Final = 3
MAX_SAMPLE_BYTES: Final = 32_768
MAX_ID_CHARS: Final = 512

# Counter series of the charts: Prometheus counter -> series name.
SERIES_EVENTS_IN: Final = "events_in"
SERIES_EVENTS_REFUSED: Final = "events_refused"
SERIES_EVENTS_PROCESSED: Final = "events_processed"
SERIES_CRITEO_CALLS: Final = "criteo_calls"
SERIES_DEAD_LETTERED: Final = "dead_lettered"
# Gauge series, read from the store at each flush.
SERIES_BACKLOG: Final = "backlog"
SERIES_PENDING: Final = "pending_changes"
SERIES_LAG: Final = "delivery_lag_secs"
SERIES_DEAD_LETTERS: Final = "dead_letters"
ALL_SERIES: Final = (
    SERIES_EVENTS_IN,
    SERIES_EVENTS_REFUSED,
    SERIES_EVENTS_PROCESSED,
    SERIES_CRITEO_CALLS,
    SERIES_DEAD_LETTERED,
    SERIES_BACKLOG,
    SERIES_PENDING,
    SERIES_LAG,
    SERIES_DEAD_LETTERS,
)


def minute_of(ts: float) -> int:
    return int(ts // 60) * 60


def labels_key(labels: dict[str, str]) -> str:
    return orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode()


class Recorder:
    def __init__(
        self,
        store: AdminStore,
        metrics: Metrics,
        clock: Clock,
        *,
        phone_region: str | None = None,
        interval_secs: float = FLUSH_INTERVAL_SECS,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.phone_region = phone_region
        self.interval_secs = interval_secs
        self._counters: dict[str, Counter] = {
            SERIES_EVENTS_IN: metrics.events_received,
            SERIES_EVENTS_REFUSED: metrics.events_rejected,
            SERIES_EVENTS_PROCESSED: metrics.events_processed,
            SERIES_CRITEO_CALLS: metrics.criteo_calls,
            SERIES_DEAD_LETTERED: metrics.dead_lettered,
        }
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()  # one flush at a time (the thread, a test, shutdown)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.activity.now = clock.now
        metrics.activity.enabled = True

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="segcrit-admin-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)  # it only waits for a flush in progress (SIGTERM: out in 10 s)
            self._thread = None
        self._flush_logged()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_secs):
            self._flush_logged()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:
            # The admin's bookkeeping must never take the service down; the next flush tries again.
            log.exception("admin recorder flush failed")

    # ------------------------------------------------------------------ one flush

    def flush(self) -> None:
        with self._lock:
            now = self.clock.now()
            minute = minute_of(now)
            ingested, calls = self.metrics.activity.drain()
            counters = [*self._counter_growth(minute), *self._gauges(minute, now)]
            self.store.record_activity(counters, self._calls(calls), [self._sample(i) for i in ingested])
            before = minute_of(now - COUNTER_RETENTION_SECS)
            for _ in range(PRUNE_ROUNDS_PER_FLUSH):
                if self.store.prune_counters(before) == 0:
                    break

    def _counter_growth(self, minute: int) -> list[CounterIncrement]:
        out = []
        for series, counter in self._counters.items():
            for family in counter.collect():
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue  # `_created`: when the labelled child appeared
                    key = (series, labels_key(sample.labels))
                    grown = sample.value - self._last.get(key, 0.0)
                    self._last[key] = sample.value
                    if grown > 0:
                        out.append(CounterIncrement(minute, series, key[1], grown))
        return out

    def _gauges(self, minute: int, now: float) -> list[CounterIncrement]:
        oldest = self.store.oldest_pending_since()
        values = {
            SERIES_BACKLOG: float(self.store.backlog()),
            SERIES_PENDING: float(self.store.pending_total()),
            SERIES_LAG: 0.0 if oldest is None else max(0.0, now - oldest),
            SERIES_DEAD_LETTERS: float(self.store.dead_letter_count()),
        }
        return [CounterIncrement(minute, series, "{}", value, gauge=True) for series, value in values.items()]

    def _calls(self, calls: Iterable[CriteoCall]) -> list[NewCall]:
        calls = list(calls)
        if not calls:
            return []
        audiences = {a.segment_id: a.name for a in self.store.audiences() if a.segment_id}
        return [
            NewCall(
                c.at,
                c.endpoint,
                c.method,
                c.path,
                c.status,
                c.duration_ms,
                c.segment_id,
                audiences.get(c.segment_id) if c.segment_id else None,
                c.summary,
                c.answer,
            )
            for c in calls
        ]

    def _sample(self, item: Ingested) -> NewSample:
        # An accepted message is kept as ingest stored it (sanitised); a refused one never was.
        body: dict[str, Any]
        if item.message is None:
            body = {"note": "the request was refused before its messages were read"}
        elif item.accepted and isinstance(item.message, dict):
            body = item.message
        else:
            body = safe_message(item.message, self.phone_region)
        size = len(orjson.dumps(body))
        if size > MAX_SAMPLE_BYTES:
            body = {key: body.get(key) for key in ("type", "event", "messageId") if isinstance(body.get(key), str)}
            body["note"] = f"{size} bytes: too large to keep here"
        return NewSample(
            at=item.at,
            source=item.source,
            accepted=item.accepted,
            reason=item.reason,
            type=_text(body.get("type")),
            event=_text(body.get("event")),
            user_id=_text(body.get("userId")),
            anonymous_id=_text(body.get("anonymousId")),
            email=_first_email(body),
            body=body,
        )


def _text(value: Any) -> str | None:
    return value[:MAX_ID_CHARS] if isinstance(value, str) and value else None


def _first_email(message: dict[str, Any]) -> str | None:
    reserved = message.get(RESERVED_KEY)
    emails = reserved.get("emails") if isinstance(reserved, dict) else None
    if isinstance(emails, list) and emails and isinstance(emails[0], dict):
        return _text(emails[0].get("sha256"))
    return None
