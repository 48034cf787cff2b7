"""End-to-end fixtures: `segcrit emulator` and `segcrit serve` as real processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from segcrit.emulator.settings import DEMO_PARTNER_ID, criteo_section, sources_section

WRITE_KEY = "e2e-write-key"
SECRET = "e2e-secret"
START_DEADLINE_SECS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], deadline_secs: float, what: str, show: Callable[[], object] | None = None
) -> None:
    """Poll `check` until it holds; fail with `what` (and what `show` returns) at the deadline."""
    end = time.monotonic() + deadline_secs
    while time.monotonic() < end:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"; last seen: {show()}" if show else ""))


def segcrit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "segcrit", *args]


@dataclass
class Emulator:
    url: str
    process: subprocess.Popen[bytes]

    def state(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_emulator/state", timeout=5).json()  # type: ignore[no-any-return]

    def members(self) -> dict[str, dict[str, set[str]]]:
        return {
            s["name"]: {kind: set(values) for kind, values in (s.get("members") or {}).items()}
            for s in self.state()["segments"]
        }


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    port = free_port()
    log = (tmp_path / "emulator.log").open("wb")
    process = subprocess.Popen(segcrit_command("emulator", "--port", str(port)), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/_emulator/state", timeout=1).status_code == 200,
            START_DEADLINE_SECS,
            "the emulator",
        )
        yield Emulator(url, process)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


CONFIG = """\
store: sqlite:///{db}
server: {{host: 127.0.0.1, port: {port}}}
{sources}{criteo}identity:
  send: [email, madid]
flows:
  - type: audience_sync
{flows}delivery:
  max_wait_secs: 0.5
"""

# The shop flows (SPEC §1): Events API on the emulator, catalog batches after half a second.
SHOP_PARTNER_ID = DEMO_PARTNER_ID
SHOP_CALLER_ID = "e2e-caller"
SHOP_MERCHANT_ID = "6789"
SHOP_FLOWS = """\
  - type: conversions
  - type: product_signals
  - type: catalog
    merchant_id: "{merchant_id}"
    max_wait_secs: 0.5
"""


@dataclass
class Server:
    url: str
    config_path: Path
    log: IO[bytes]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            segcrit_command("serve", "--config", str(self.config_path)),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200,
            START_DEADLINE_SECS,
            "segcrit serve",
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)

    def segcrit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            segcrit_command(*args, "--config", str(self.config_path)),
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )


def _server(tmp_path: Path, emulator: Emulator, *, shop: bool) -> Iterator[Server]:
    """A `segcrit serve` (not started) on a config of its own; `shop` adds the commerce flows."""
    port = free_port()
    config_path = tmp_path / "segcrit.yaml"
    config_path.write_text(
        CONFIG.format(
            db="segcrit.db",
            port=port,
            sources=sources_section(WRITE_KEY, SECRET),
            criteo=criteo_section(emulator.url, caller_id=SHOP_CALLER_ID if shop else None),
            flows=SHOP_FLOWS.format(merchant_id=SHOP_MERCHANT_ID) if shop else "",
        )
    )
    srv = Server(f"http://127.0.0.1:{port}", config_path, (tmp_path / "serve.log").open("ab"))
    try:
        yield srv
    finally:
        if srv.process is not None and srv.process.poll() is None:
            srv.process.kill()
            srv.process.wait(10)
        srv.log.close()


@pytest.fixture
def server(tmp_path: Path, emulator: Emulator) -> Iterator[Server]:
    """segcrit serve with contact-list audiences only (audience_sync)."""
    yield from _server(tmp_path, emulator, shop=False)


@pytest.fixture
def shop_server(tmp_path: Path, emulator: Emulator) -> Iterator[Server]:
    """segcrit serve with audience_sync plus conversions, product_signals and catalog on the emulator."""
    yield from _server(tmp_path, emulator, shop=True)


os.environ.setdefault("PYTHONUNBUFFERED", "1")
