"""Shared fixtures: a Criteo emulator on a free loopback port, with a fake clock to steer time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from segcrit.clock import FakeClock
from segcrit.emulator import EmulatorState, running_emulator
from tests.postgres import fresh_schema


@pytest.fixture
def emulator_clock() -> FakeClock:
    """The emulator's clock: `advance()` it to expire tokens or slide the rate-limit window."""
    return FakeClock()


@pytest.fixture
def emulator_state(emulator_clock: FakeClock) -> Iterator[EmulatorState]:
    """A fresh emulator state (demo client, no segments, no faults); adjust it before or during a test.

    After the test, no request may have carried a key that Criteo's schemas lack: Criteo ignores
    such a key without a word, so it is a mistake in a client model (a misspelt or snake_case
    key). A test that sends one on purpose reads them with `unknown_keys(clear=True)`.
    """
    state = EmulatorState(clock=emulator_clock)
    yield state
    unknown = state.unknown_keys()
    assert unknown == [], f"requests carried keys that Criteo's schemas do not have: {unknown}"


@pytest.fixture
def emulator_url(emulator_state: EmulatorState) -> Iterator[str]:
    """Base URL of an emulator serving `emulator_state` over real HTTP on loopback.

    One server per test, on its own port: a client a previous test left running cannot reach this
    test's state. The server is not waited for on the way out (uvicorn needs ~0.2 s to stop).
    """
    with running_emulator(emulator_state, stop_timeout_secs=0) as base_url:
        yield base_url


@pytest.fixture(params=["sqlite", "postgresql"])
def harness_store(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The store of tests/flow_harness.py's processes: None for the config's SQLite file, else the
    URL of an empty PostgreSQL schema (skipped without SEGCRIT_TEST_POSTGRES_URL, failed in CI)."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_schema() as url:
        yield url
