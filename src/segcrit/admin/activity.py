"""What the admin UI shows of live traffic, held in memory until the recorder writes it.

    metrics.activity.accepted(source, messages)          ingest, after the durable commit
    metrics.activity.refused(source, reason, message)    ingest, a refused message or request
    metrics.activity.call(endpoint, method, url, ...)    every answered (or failed) Criteo call

Each is one append to a bounded deque (a few of a batch's messages, not all), so the ingest path
pays O(1); nothing is kept while `enabled` is False (no admin token: nobody would read it). The
recorder (segcrit.admin.recorder) drains the deques every few seconds on its own thread; there
refused messages are sanitised and identifiers masked, before anything reaches the store.

It lives on `Metrics` (one per running app) because every part that records already holds one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

MESSAGES_PER_REQUEST: Final = 5  # of one request's accepted messages, the last ones are kept
ACCEPTED_KEPT: Final = 400  # requests (each up to MESSAGES_PER_REQUEST) between two flushes
REFUSED_KEPT: Final = 400
CALLS_KEPT: Final = 1_000


@dataclass(frozen=True, slots=True)
class Ingested:
    at: float
    source: str
    accepted: bool
    reason: str | None
    message: Any  # accepted: the stored (sanitised) message; refused: as sent, or None


@dataclass(frozen=True, slots=True)
class CriteoCall:
    at: float
    endpoint: str
    method: str
    path: str
    status: int  # 0: no answer
    duration_ms: float
    segment_id: str | None
    summary: dict[str, Any]  # masked (segcrit.admin.masking.summarize_request)
    answer: str | None  # masked, cut


class Activity:
    def __init__(self) -> None:
        self.enabled = False
        self.now = time.time  # the recorder sets its clock's `now`
        self._accepted: deque[tuple[float, str, Sequence[Any]]] = deque(maxlen=ACCEPTED_KEPT)
        self._refused: deque[Ingested] = deque(maxlen=REFUSED_KEPT)
        self._calls: deque[CriteoCall] = deque(maxlen=CALLS_KEPT)

    # ------------------------------------------------------------------ recording

    def accepted(self, source: str, messages: Sequence[Any]) -> None:
        if self.enabled and messages:
            # The slice (at most 5 references) is the only copy made on the ingest path.
            self._accepted.append((self.now(), source, messages[-MESSAGES_PER_REQUEST:]))

    def refused(self, source: str, reason: str, message: Any = None) -> None:
        if self.enabled:
            self._refused.append(Ingested(self.now(), source, False, reason, message))

    def call(
        self,
        endpoint: str,
        method: str,
        url: str,
        status: int,
        duration_secs: float,
        *,
        request: Any = None,
        answer: Any = None,
        segment_id: str | None = None,
    ) -> None:
        """One Criteo call (a delivery thread records it: never the ingest path)."""
        if not self.enabled:
            return
        from segcrit.admin.masking import answer_text, summarize_request

        parts = urlsplit(url)
        self._calls.append(
            CriteoCall(
                at=self.now(),
                endpoint=endpoint,
                method=method,
                path=parts.path + (f"?{parts.query}" if parts.query else ""),
                status=status,
                duration_ms=round(duration_secs * 1000, 1),
                segment_id=segment_id,
                summary=summarize_request(request),
                answer=answer_text(answer),
            )
        )

    # ------------------------------------------------------------------ draining

    def drain(self) -> tuple[list[Ingested], list[CriteoCall]]:
        """Everything recorded since the last drain: (ingest samples, Criteo calls)."""
        ingested: list[Ingested] = []
        while self._accepted:
            at, source, messages = self._accepted.popleft()
            ingested.extend(Ingested(at, source, True, None, message) for message in messages)
        while self._refused:
            ingested.append(self._refused.popleft())
        calls: list[CriteoCall] = []
        while self._calls:
            calls.append(self._calls.popleft())
        return ingested, calls
