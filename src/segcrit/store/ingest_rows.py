"""What both stores do with an ingest group before and after their dedupe statement.

    inbox_rows(messages)              (messageId or "", serialised body) per prepared message
    first_seen(requests)              {(source, messageId): received_at} for the dedupe insert
    split_fresh(requests, fresh)      per request its AcceptResult, and the inbox rows to insert

A request is `(source, rows, received_at)`. A message whose (source, messageId) the dedupe insert
did not return as new (seen before, or earlier in the same group) is a duplicate; a message
without messageId is always stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from segcrit.domain import AcceptResult

IngestRequest = tuple[str, Sequence[tuple[str, bytes]], float]
InboxRow = tuple[str, float, bytes]


def inbox_rows(messages: Iterable[dict[str, Any]]) -> list[tuple[str, bytes]]:
    return [(str(message.get("messageId") or ""), orjson.dumps(message)) for message in messages]


def first_seen(requests: Sequence[IngestRequest]) -> dict[tuple[str, str], float]:
    seen: dict[tuple[str, str], float] = {}
    for source, rows, received_at in requests:
        for message_id, _ in rows:
            if message_id:
                seen.setdefault((source, message_id), received_at)
    return seen


def split_fresh(
    requests: Sequence[IngestRequest], fresh: set[tuple[str, str]]
) -> tuple[list[AcceptResult], list[InboxRow]]:
    """Each request's result and the rows to store, in order (`fresh` is used up)."""
    results: list[AcceptResult] = []
    inbox: list[InboxRow] = []
    for source, rows, received_at in requests:
        stored = duplicates = 0
        for message_id, body in rows:
            if message_id:
                key = (source, message_id)
                if key not in fresh:  # seen before, or earlier in this group
                    duplicates += 1
                    continue
                fresh.discard(key)
            inbox.append((source, received_at, body))
            stored += 1
        results.append(AcceptResult(stored=stored, duplicates=duplicates))
    return results, inbox
