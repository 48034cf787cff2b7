"""`segcrit import` and `segcrit resync`: the two bulk operations, with progress bars.

import: Segment archive files (newline-delimited JSON, `.gz` accepted) go through the same
validation, sanitising and dedupe as live events into the inbox; `segcrit serve` processes them
like any other traffic. A line that is not a valid message is counted and reported, never fatal.

resync: Criteo cannot list a contact list's members, so a full reconciliation empties the list
(`DELETE .../contact-list`), forgets what was acknowledged, and sends the whole desired
membership again in calls of at most 50,000 identifiers.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from segcrit.clock import SystemClock
from segcrit.config import Config
from segcrit.errors import SegcritError, UserError
from segcrit.metrics import Metrics
from segcrit.sources.validate import WEBHOOK_TYPES, MessageRules, prepare_messages
from segcrit.store.base import DeliveryStore, IngestStore

if TYPE_CHECKING:
    from segcrit.delivery.worker import DeliveryWorker

log = logging.getLogger("segcrit.backfill")

IMPORT_BATCH_LINES = 1_000


@dataclass
class ImportReport:
    lines: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@contextmanager
def _open(path: Path) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
    """(lines, raw file): read lines from the first, progress from the second's position."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    with raw:
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=raw) as unzipped:
                yield unzipped, raw  # type: ignore[misc]
        else:
            yield raw, raw


def _batches(handle: IO[bytes], report: ImportReport) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for raw in handle:
        line = raw.strip()
        if not line:
            continue
        report.lines += 1
        try:
            batch.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            batch.append(None)  # rejected by prepare_messages with its line's index
        if len(batch) >= IMPORT_BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch


def import_files(
    config: Config, store: IngestStore, paths: list[Path], source: str, progress: bool = True
) -> ImportReport:
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
    rules = MessageRules(WEBHOOK_TYPES, config.server.max_message_bytes, keep_received_at=True)
    report = ImportReport()
    total = sum(p.stat().st_size for p in paths)
    with _progress(progress) as bar:
        task = bar.add_task("importing", total=total)
        done = 0
        for path in paths:
            with _open(path) as (handle, raw):
                for batch in _batches(handle, report):
                    prepared = prepare_messages(batch, rules, received_at=time.time())
                    for rejection in prepared.rejected:
                        report.rejected += 1
                        reason = str(rejection["reason"]) if batch[rejection["index"]] is not None else "invalid JSON"
                        report.reasons[reason] = report.reasons.get(reason, 0) + 1
                    result = store.accept_sync(source, prepared.messages, time.time())
                    report.stored += result.stored
                    report.duplicates += result.duplicates
                    bar.update(task, completed=done + raw.tell())
            done += path.stat().st_size
    return report


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
    )


async def resync_audience(config: Config, store: DeliveryStore, audience: str, progress: bool = True) -> int:
    """Empty the audience's contact list in Criteo and send its whole desired membership."""
    from segcrit.delivery.worker import DeliveryWorker
    from segcrit.runtime import build_criteo_client

    clock = SystemClock()
    metrics = Metrics()
    client, http = build_criteo_client(config, clock, metrics, budget=store)
    try:
        worker = DeliveryWorker(store, config, client, clock, metrics)
        with _progress(progress) as bar:
            task = bar.add_task(f"resync {audience}", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return await resync_with(worker, audience, advance)
    finally:
        await http.aclose()


async def resync_with(
    worker: DeliveryWorker, audience: str, on_progress: Callable[[int, int], object] | None = None
) -> int:
    """A resync through `worker` (the CLI's own, or the delivery thread's for the admin UI's
    Resync button); returns the identifiers Criteo acknowledged. Raises UserError for an unknown
    audience or one that did not finish."""
    store = worker.store
    if store.audience_counts_of(audience) is None:
        known = [a.name for a in store.audience_counts()]
        raise UserError(f"unknown audience {audience!r} (known: {', '.join(known) or 'none'})")
    from segcrit.delivery.worker import SegmentBusy  # imported here, as resync_audience imports the worker

    try:
        segment_id = await worker.segment_for(audience)
    except SegmentBusy:
        raise UserError(f"another process is finding or creating the segment of {audience!r}: try again") from None
    # Should the wipe's answer be lost, Criteo may hold nothing: every change is then sent again.
    store.mark_audience_unknown(audience, worker.clock.now())
    await worker.client.wipe_contact_list(segment_id)
    store.reset_audience_acks(audience, worker.clock.now())
    while True:
        made = await worker.drain_once(force=True, audience=audience)
        current = store.audience_counts_of(audience)
        assert current is not None  # it had targets or a record a moment ago, and neither goes away
        if on_progress is not None:
            on_progress(current.acknowledged, current.desired)
        if current.pending_add + current.pending_remove == 0 or made == 0:
            break
    pending = current.pending_add + current.pending_remove
    if pending:
        raise UserError(f"resync of {audience} incomplete: {pending} change(s) still pending (see `segcrit status`)")
    return current.acknowledged


async def run_requested_resyncs(worker: DeliveryWorker) -> int:
    """Run the resyncs asked for in the admin UI (`segcrit serve`'s delivery thread calls this:
    the one place that calls Criteo); returns how many ran."""
    store = worker.store
    if not store.resyncs_waiting():
        return 0
    ran = 0
    while (audience := store.claim_resync(worker.clock.now())) is not None:
        try:
            sent = await resync_with(worker, audience)
            result = f"done: Criteo emptied and refilled with {sent} identifier(s)"
        except SegcritError as exc:
            result = f"failed: {exc}"
        except Exception:
            log.exception("resync failed", extra={"audience": audience})
            result = "failed: internal error (see the logs)"
        store.resync_finished(audience, result, worker.clock.now())
        log.info("resync finished", extra={"audience": audience, "result": result})
        ran += 1
    return ran
