"""`segcrit serve --workers N`: N serve processes on this machine sharing one listening port.

The supervisor (the `serve` process itself) binds and listens on server.host:port once, then
starts N children (`segcrit serve --workers 1 --fd F`), each serving HTTP on that inherited socket
with workers of its own roles. The kernel queues connections on the one socket and whichever child
accepts first serves it, so a child that dies loses no queued connection (with SO_REUSEPORT each
child would have its own queue, dropped with it). The children share the work through the
PostgreSQL store, as processes on several machines do; on SQLite a second process is refused.

A child that dies is started again after a pause that doubles while children keep dying soon after
their start (a crash loop does not spin), and the supervisor gives up, with one line on stderr,
when children keep failing at start. SIGTERM or SIGINT is passed on to the children; the supervisor
exits 0 once they are gone, within 10 s (SPEC §2): a child still running after CHILD_STOP_SECS is
killed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from segcrit.errors import SegcritError, UserError

log = logging.getLogger("segcrit.supervisor")

POLL_SECS = 0.2
CHILD_STOP_SECS = 9.0  # children stop within it (3 s for requests, 6 s for workers); then SIGKILL
RESTART_PAUSE_SECS = (0.5, 30.0)  # the first pause before a restart, and the longest
HEALTHY_AFTER_SECS = 30.0  # a child that ran this long resets the pause
GIVE_UP_AFTER_FAILED_STARTS = 5  # children failing within FAILED_START_SECS in a row: a setup problem
FAILED_START_SECS = 10.0
LISTEN_BACKLOG = 2048  # uvicorn's default


def listen(host: str, port: int) -> socket.socket:
    """The listening socket every child serves (inheritable: passed by its descriptor)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        raise UserError(f"could not listen on {host}:{port}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock


@dataclass
class Child:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    pause: float = RESTART_PAUSE_SECS[0]


@dataclass
class Supervisor:
    """Runs `workers` children of `command` (the child's `segcrit serve` arguments but --fd)."""

    command: Sequence[str]
    workers: int
    sock: socket.socket
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    failed_starts: int = 0

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.children = [Child(n) for n in range(self.workers)]
        host, port = self.sock.getsockname()[:2]
        log.info("serving with several processes", extra={"workers": self.workers, "host": host, "port": port})
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                for child in self.children:
                    self._tend(child, now)
                self.stopping.wait(POLL_SECS)
        finally:
            self._stop_children()
            self.sock.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping.set()

    def _tend(self, child: Child, now: float) -> None:
        process = child.process
        if process is not None:
            code = process.poll()
            if code is None:
                if now - child.started_at >= HEALTHY_AFTER_SECS:
                    child.pause = RESTART_PAUSE_SECS[0]
                    self.failed_starts = 0
                return
            lived = now - child.started_at
            if lived < FAILED_START_SECS and code != 0:
                self.failed_starts += 1
                if self.failed_starts >= GIVE_UP_AFTER_FAILED_STARTS:
                    raise SegcritError(
                        f"serve processes keep failing at start (last exit code {code}); see their errors above"
                    )
            child.process = None
            child.restart_at = now + child.pause
            log.warning(
                "serve process ended; starting another",
                extra={"worker": child.index, "exit_code": code, "after_secs": round(child.pause, 1)},
            )
            crashed_soon = lived < HEALTHY_AFTER_SECS
            child.pause = min(child.pause * 2, RESTART_PAUSE_SECS[1]) if crashed_soon else RESTART_PAUSE_SECS[0]
            return
        if now >= child.restart_at:
            child.process = subprocess.Popen(
                [*self.command, "--fd", str(self.sock.fileno())],
                pass_fds=(self.sock.fileno(),),
                env={**os.environ, "SEGCRIT_WORKER_INDEX": str(child.index)},
            )
            child.started_at = now

    def _stop_children(self) -> None:
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_SECS
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("serve process did not stop in time; killed", extra={"pid": process.pid})
                process.kill()
                process.wait()


def child_command(config_file: str | None, roles: Sequence[str]) -> list[str]:
    """`segcrit serve` for one child: this interpreter, the same config and roles, one worker."""
    command = [sys.executable, "-m", "segcrit", "serve", "--workers", "1", "--roles", ",".join(roles)]
    if config_file is not None:
        command += ["--config", config_file]
    return command
