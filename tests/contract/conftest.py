"""The store contract: what every store implementation promises (segcrit.store.base), tested through
the Protocols only, against each implementation in turn.

The `store` fixture is parametrised by implementation (`STORES`); a test takes a `Store` and uses
nothing else (no SQL, no implementation's own methods), so a new implementation passes the same
tests unchanged. Tests of one implementation's own behaviour (SQLite's group commit, its owner
lock, its full disk) live in tests/integration.

The PostgreSQL store runs on the server `SEGCRIT_TEST_POSTGRES_URL` names, each test in an empty
schema of its own (tests/postgres.py); without it its tests are skipped with that reason (and fail
where CI is set). Concurrency cases with several connections or processes on one database are in
test_concurrency.py, for the store that several processes share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from tests.postgres import fresh_schema

from segcrit.domain import Identifier
from segcrit.store import open_store
from segcrit.store.base import ProcessingTx, Store

T0 = 1_800_000_000.0


@contextmanager
def open_sqlite(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'contract.db'}", owner=True)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def open_postgresql(tmp_path: Path) -> Iterator[Store]:
    with fresh_schema() as url:
        store = open_store(url, owner=True)
        try:
            yield store
        finally:
            store.close()


OPENERS: dict[str, Callable[[Path], AbstractContextManager[Store]]] = {
    "sqlite": open_sqlite,
    "postgresql": open_postgresql,
}
STORES = list(OPENERS)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with OPENERS[request.param](tmp_path) as opened:
        yield opened


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
