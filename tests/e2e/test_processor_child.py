"""End to end: on SQLite, `segcrit serve` processes in a child process (segcrit.processing.child)
that does the processing, reports its counts to the parent's /metrics, is started again when it
dies (/readyz not ready meanwhile), and never outlives the parent."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import WRITE_KEY, Emulator, Server, wait_until

pytestmark = pytest.mark.e2e


def processor_child(parent: int) -> int | None:
    """The pid of the parent's processor child (multiprocessing's spawned child), or None."""
    children: list[str] = []
    for task in Path(f"/proc/{parent}/task").glob("*"):  # a child is listed under the thread that made it
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            return int(child)
    return None


def gone(pid: int) -> bool:
    """True once the process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def processed(server: Server) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("segcrit_events_processed_total "):
            return float(line.split()[1])
    return 0.0


def send(server: Server, count: int) -> None:
    batch = {"batch": [{"type": "track", "event": "Clicked", "userId": f"u{i}"} for i in range(count)]}
    answer = httpx.post(f"{server.url}/v1/batch", json=batch, auth=(WRITE_KEY, ""), timeout=10)
    assert answer.status_code == 200, answer.text


def test_the_processor_child_processes_restarts_and_ends_with_serve(server: Server, emulator: Emulator) -> None:
    server.start()
    assert server.process is not None
    parent = server.process.pid
    wait_until(lambda: processor_child(parent) is not None, 10, "the processor child")
    child = processor_child(parent)
    assert child is not None

    send(server, 5)
    wait_until(lambda: processed(server) == 5, 10, "5 events processed (parent metrics)", lambda: processed(server))
    assert server.segcrit("status").returncode == 0

    # A child that dies is started again; /readyz is not ready while it is down.
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: gone(child), 5, "the killed child gone")
    # Started again a second after it died: /readyz sees the gap.
    wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=1).status_code == 503, 2, "not ready")
    wait_until(lambda: processor_child(parent) not in (None, child), 10, "a new processor child")
    wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200, 10, "ready again")
    send(server, 3)
    wait_until(lambda: processed(server) == 8, 10, "the new child processing", lambda: processed(server))

    # kill -9 of serve: the child does not outlive it (a new serve would meet a second processor).
    second = processor_child(parent)
    assert second is not None
    server.kill()
    wait_until(lambda: gone(second), 5, "the child gone with its parent")

    # SIGTERM: both end within serve's 10 s, exit 0.
    server.start()
    assert server.process is not None
    restarted = server.process.pid
    wait_until(lambda: processor_child(restarted) is not None, 10, "the processor child")
    third = processor_child(restarted)
    assert third is not None
    assert server.terminate() == 0
    wait_until(lambda: gone(third), 2, "the child gone after SIGTERM")
