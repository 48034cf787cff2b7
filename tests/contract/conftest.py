"""The store contract: what every store implementation promises (segcrit.store.base), tested through
the Protocols only, against each implementation in turn.

The `store` fixture is parametrised by implementation (`STORES`); a test takes a `Store` and uses
nothing else (no SQL, no implementation's own methods), so a new implementation passes the same
tests unchanged. Tests of one implementation's own behaviour (SQLite's group commit, its owner
lock, its full disk) live in tests/integration.

PostgreSQL joins here: add "postgresql" to STORES and its opener to OPENERS. The opener reads
`SEGCRIT_TEST_POSTGRES_URL`, skips with that reason when it is not set (fails in CI, like
tests/integration/test_enrichment_databases.py does), and gives each test an empty database
(a schema of its own, dropped afterwards). Concurrency cases with several connections or
processes on one database go beside these, for the stores that share one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from segcrit.domain import Identifier
from segcrit.store import open_store
from segcrit.store.base import ProcessingTx, Store

T0 = 1_800_000_000.0


def open_sqlite(tmp_path: Path) -> Store:
    return open_store(f"sqlite:///{tmp_path / 'contract.db'}", owner=True)


# Phase B: "postgresql": open_postgresql (SEGCRIT_TEST_POSTGRES_URL, a schema per test).
OPENERS: dict[str, Callable[[Path], Store]] = {"sqlite": open_sqlite}
STORES = list(OPENERS)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = OPENERS[request.param](tmp_path)
    try:
        yield opened
    finally:
        opened.close()


# ------------------------------------------------------------------------------------ helpers


def message(user: str, message_id: str | None = None, **fields: object) -> dict[str, object]:
    """A sanitised track message as ingest stores it."""
    body: dict[str, object] = {"type": "track", "event": "Viewed", "userId": user, "_segcrit": {"ts": T0}, **fields}
    if message_id is not None:
        body["messageId"] = message_id
    return body


def new_profile(tx: ProcessingTx, user: str, now: float = T0) -> int:
    profile_id = tx.create_profile(now)
    tx.attach_identifier(profile_id, Identifier("user_id", user), now)
    return profile_id
