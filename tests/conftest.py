"""Shared fixtures: a Criteo emulator on a free loopback port, with a fake clock to steer time.

One uvicorn server serves the whole session (starting and stopping one per test costs ~0.2 s);
each test still gets a fresh EmulatorState and app, swapped in behind the server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from segcrit.clock import FakeClock
from segcrit.criteo.emulator import EmulatorState, create_emulator_app
from segcrit.criteo.emulator.server import running_app


class _SwappableApp:
    """An ASGI app that forwards to whichever app the current test installed."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "no emulator installed for this test"
        await self.app(scope, receive, send)


@pytest.fixture(scope="session")
def _emulator_server() -> Iterator[tuple[str, _SwappableApp]]:
    swappable = _SwappableApp()
    with running_app(swappable) as base_url:
        yield base_url, swappable


@pytest.fixture
def emulator_clock() -> FakeClock:
    """The emulator's clock: `advance()` it to expire tokens or slide the rate-limit window."""
    return FakeClock()


@pytest.fixture
def emulator_state(emulator_clock: FakeClock) -> EmulatorState:
    """A fresh emulator state (demo client, no segments, no faults); adjust it before or during a test."""
    return EmulatorState(clock=emulator_clock)


@pytest.fixture
def emulator_url(_emulator_server: tuple[str, _SwappableApp], emulator_state: EmulatorState) -> Iterator[str]:
    """Base URL of an emulator serving `emulator_state` over real HTTP on loopback."""
    base_url, swappable = _emulator_server
    swappable.app = create_emulator_app(emulator_state)
    yield base_url
    swappable.app = None
