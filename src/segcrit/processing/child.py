"""Processing on its own core: on SQLite, `segcrit serve` runs the processor in a child process.

Python runs one thread at a time, so a processor thread shares one core with ingest (parsing,
validating, acknowledging) and delivery. In a child process it has a core of its own. The parent
stays the one owner of the file (it holds `<db>.lock`; the child opens the store without claiming
it, applies no migration, and never outlives the parent): the child is the parent's processor,
nothing else, and SQLite's own locks order its transactions with the parent's.

What crosses between the two:
- ingest first: the parent's ingest writer publishes "a group waits for its commit" in a flag in
  shared memory (`SqliteStore.share_ingest_flag`); the child's chunk commits early and waits
  while it is set, as the processor thread does;
- but turns: while ingest waits, the child asks for a turn in another value in shared memory
  (`SqliteStore.share_turn_flag`) and the ingest writer gives it between two groups, so that a
  load that never lets up cannot keep processing from the lock (and its core idle) for good;
- wake-ups: the parent writes a byte down a pipe after each ingest commit (`wake`), so the child
  starts at once instead of at its next look;
- counts: each drain's counts (`Counts`) go up a pipe to the parent's metrics;
- stop: the parent writes a byte down another pipe; the child finishes its chunk and exits. The
  child watches the parent (multiprocessing's sentinel) and exits at once when it is gone (kill -9
  included): what it had not committed is rolled back by SQLite and done again by the next processor.
Pipes, not multiprocessing's Event: an Event is a lock in shared memory, and a child killed while
it held that lock (in `wait`) would leave the parent's next `set` blocked for good, ingest with it.
The parent's ends never block (a full wake pipe already says "wake up").

A child that dies is started again (`RESTART_PAUSE_SECS`); /readyz reports the workers not ready
while it is down. Tests step `Processor.drain_once()` directly, as before.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Protocol

from segcrit.clock import SystemClock
from segcrit.config import Config
from segcrit.errors import StoreUnavailable
from segcrit.metrics import Metrics
from segcrit.processing.engine import Counts, Processor
from segcrit.store.base import ProcessingStore
from segcrit.store.sqlite import IngestFlag, SqliteStore, TurnFlag

log = logging.getLogger("segcrit.processing.child")

IDLE_WAIT_SECS = 0.05  # nothing to do: how long to wait for a wake-up before looking again
STORE_RETRY_SECS = (0.1, 5.0)  # first and longest pause between tries while the store cannot write
RESTART_PAUSE_SECS = 1.0  # a child that died is started again after this pause
STOP_GRACE_SECS = 3.0  # stop: how long the child may take to finish its chunk before SIGTERM


class Waitable(Protocol):
    """threading.Event and multiprocessing's Event alike."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def clear(self) -> None: ...


class ProbingStore(ProcessingStore, Protocol):
    def write_failure(self) -> str | None: ...
    def probe_write(self) -> None: ...


def process_loop(processor: Processor, store: ProbingStore, stop: Waitable, wake: Waitable) -> None:
    """Drain the inbox until `stop` is set: the processor thread's loop and the child's.

    While the store cannot write (StoreUnavailable: disk full, locked), retry with a growing pause,
    and with an empty inbox probe the store, so that /readyz turns ready as soon as a write succeeds.
    """
    pause = STORE_RETRY_SECS[0]
    while not stop.is_set():
        try:
            processed = processor.drain_once()
            if processed == 0 and store.write_failure() is not None:
                store.probe_write()  # nothing to retry with: is the store back?
            pause = STORE_RETRY_SECS[0]
        except StoreUnavailable:
            # The events stay in the inbox; the store logged the error when the episode began.
            stop.wait(pause)
            pause = min(pause * 2, STORE_RETRY_SECS[1])
            continue
        except Exception:
            # One bad chunk must not stop the service; it stays in the inbox for the next round.
            log.exception("processing failed")
            processed = 0
            stop.wait(1.0)
        if processed == 0:
            wake.wait(IDLE_WAIT_SECS)
            wake.clear()


class ProcessorChild:
    """The parent's side: starts the child, restarts it when it dies, stops it, relays its counts."""

    def __init__(self, store: SqliteStore, config: Config, metrics: Metrics) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._ctx = multiprocessing.get_context("spawn")  # the parent runs threads: never fork
        self._stop: multiprocessing.connection.Connection | None = None  # our ends of the pipes
        self._wake: multiprocessing.connection.Connection | None = None
        self._process: BaseProcess | None = None
        self._counts: multiprocessing.connection.Connection | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="segcrit-processor-child", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        stop_r, stop_w = self._ctx.Pipe(duplex=False)
        wake_r, wake_w = self._ctx.Pipe(duplex=False)
        for end in (stop_w, wake_w):
            os.set_blocking(end.fileno(), False)
        process = self._ctx.Process(
            target=child_main,
            args=(
                self._store.path,
                self._config,
                self._store.share_ingest_flag(),
                self._store.share_turn_flag(),
                stop_r,
                wake_r,
                send,
            ),
            name="segcrit-processor",
            daemon=True,  # multiprocessing ends it when the parent exits normally
        )
        process.start()
        for end in (send, stop_r, wake_r):
            end.close()  # the child's ends: EOF on `receive` means it is gone
        for old in (self._stop, self._wake, self._counts):
            if old is not None:
                old.close()
        self._process, self._counts, self._stop, self._wake = process, receive, stop_w, wake_w
        log.info("processor started in a child process", extra={"pid": process.pid})

    def _watch(self) -> None:
        """Relay the child's counts; start it again when it dies unexpectedly."""
        while not self._stopping.is_set():
            counts, process = self._counts, self._process
            assert counts is not None and process is not None
            try:
                ready = counts.poll(0.5)
                if ready:
                    report: Counts = counts.recv()
                    report.record(self._metrics)
                    continue
            except (EOFError, OSError):
                process.join(timeout=1.0)
            if process.is_alive() or self._stopping.is_set():
                continue
            log.error("processor child exited, starting it again", extra={"exitcode": process.exitcode})
            if self._stopping.wait(RESTART_PAUSE_SECS):
                return
            self._spawn()

    def wake(self) -> None:
        _signal(self._wake)

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        """The child's process id (benchmarks read its CPU time); None before it started."""
        return None if self._process is None else self._process.pid

    def stop(self, timeout: float) -> None:
        """Ask the child to finish its chunk and exit; SIGTERM, then SIGKILL, if it takes too long
        (what it had not committed is rolled back and done again later)."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        _signal(self._stop)
        _signal(self._wake)  # an idle child looks at once
        process = self._process
        if process is not None:
            process.join(max(0.0, min(STOP_GRACE_SECS, deadline - time.monotonic())))
            if process.is_alive():
                process.terminate()
                process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
        if self._watcher is not None:
            self._watcher.join(max(0.0, deadline - time.monotonic()))


def _signal(end: multiprocessing.connection.Connection | None) -> None:
    """One byte down a pipe, never blocking: when it is full, the child has signals to read already."""
    if end is None:
        return
    with contextlib.suppress(BlockingIOError, OSError):  # full, or the child is gone (its watcher sees)
        os.write(end.fileno(), b"!")


class PipeEvent:
    """The child's end of a signal pipe, as the Event `process_loop` waits on: set once a byte (or
    EOF: the parent is gone) has arrived, until cleared."""

    def __init__(self, end: multiprocessing.connection.Connection) -> None:
        self._end = end  # kept open for as long as we read its descriptor
        self._fd = end.fileno()
        os.set_blocking(self._fd, False)
        self._set = False

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            data = os.read(self._fd, 4096)
            self._set = True  # bytes, or b"" at EOF
            del data

    def is_set(self) -> bool:
        if not self._set:
            self._read()
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if not self._set and select.select([self._fd], [], [], timeout)[0]:
            self._read()
        return self._set

    def clear(self) -> None:
        self._set = False


def child_main(
    path: str,
    config: Config,
    ingest_flag: IngestFlag,
    turn_flag: TurnFlag,
    stop: multiprocessing.connection.Connection,
    wake: multiprocessing.connection.Connection,
    counts: multiprocessing.connection.Connection,
) -> None:
    """The child: the processor loop on its own connection to the parent's file."""
    from segcrit.logs import setup_logging

    setup_logging()
    # Ctrl-C reaches the whole process group: the parent decides when the child stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    store = SqliteStore(path, migrate=False, ingest_flag=ingest_flag, turn_flag=turn_flag)
    try:
        processor = Processor(store, config, SystemClock(), Metrics())
        processor.report = _sender(counts)
        from segcrit.cli import tune_runtime

        tune_runtime()  # as in the parent: a chunk parses thousands of objects
        process_loop(processor, store, PipeEvent(stop), PipeEvent(wake))
    finally:
        store.close()


def _sender(counts: multiprocessing.connection.Connection) -> Callable[[Counts], None]:
    def send(report: Counts) -> None:
        if report.processed:
            counts.send(report)

    return send


def _exit_with_parent() -> None:
    """Exit at once when the parent is gone, however it ended: the parent is the file's owner,
    and a processor without it could meet the processor of the next `segcrit serve`."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)  # no cleanup: SQLite rolls back what was not committed

    threading.Thread(target=watch, name="segcrit-parent-watch", daemon=True).start()
