"""`type: sql` lookups against real databases: PostgreSQL, MariaDB and SQLite.

PostgreSQL and MariaDB come from `SEGCRIT_TEST_POSTGRES_URL` and `SEGCRIT_TEST_MARIADB_URL`
(`.ci/run` sets both); without one, its tests are skipped with the reason shown, and when `CI` is
set they fail instead (tests/required.py), so that a CI run cannot pass without them. Each test makes a table of its
own (other tests may share the servers) and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from segcrit.clock import SystemClock
from segcrit.config import SqlLookup
from segcrit.enrichment.answers import LookupUnavailable
from segcrit.enrichment.sql import SqlSource, engine_url
from segcrit.metrics import Metrics
from tests.required import in_ci, missing

SERVERS = {"postgresql": "SEGCRIT_TEST_POSTGRES_URL", "mariadb": "SEGCRIT_TEST_MARIADB_URL"}
PEOPLE = 150  # one batch of more than 100 keys


def unavailable(reason: str) -> None:
    """Skip, naming what is missing; fail in CI (tests/required.py)."""
    if in_ci():
        pytest.fail(missing(reason))
    pytest.skip(reason)


@dataclass
class Database:
    kind: str
    url: str
    engine: sa.Engine
    table: str

    def run(self, statement: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(statement))

    def source(self, query: str, **fields: object) -> SqlSource:
        lookup = SqlLookup.model_validate(
            {
                "name": "crm",
                "type": "sql",
                "url": self.url,
                "query": query.format(table=self.table),
                "columns": {"email": "email", "phone": "phone", "gum": "gum_id", "consent": "ad_consent"},
                **fields,
            }
        )
        return SqlSource(lookup, SystemClock(), Metrics())


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    kind: str = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'crm.db'}"
    else:
        url = os.environ.get(SERVERS[kind], "")
        if not url:
            unavailable(f"{SERVERS[kind]} is not set")
    engine = sa.create_engine(engine_url(url))
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        engine.dispose()
        unavailable(f"{kind} at {SERVERS.get(kind)} is not reachable ({error.__class__.__name__})")
    db = Database(kind, url, engine, f"crm_{uuid.uuid4().hex[:12]}")
    consent = "INTEGER" if kind == "sqlite" else "BOOLEAN"  # MariaDB's BOOLEAN is TINYINT(1)
    db.run(
        f"CREATE TABLE {db.table} (customer_id VARCHAR(64) PRIMARY KEY, email VARCHAR(254), phone VARCHAR(64), "
        f"gum_id VARCHAR(64), ad_consent {consent}, lifetime_value NUMERIC(10, 2), signed_up DATE, tier VARCHAR(16))"
    )
    rows = [
        {
            "id": f"c{i}",
            "email": f" Person{i}@Example.com",
            "phone": f"+1 415 555 {i:04d}",
            "gum": f"gum-{i}" if i % 2 else None,
            "consent": i % 3 != 0,
            "value": i + 0.5,
            "day": dt.date(2024, 1, 1 + i % 28),
            "tier": "gold" if i < 10 else None,
        }
        for i in range(PEOPLE)
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"INSERT INTO {db.table} VALUES (:id, :email, :phone, :gum, :consent, :value, :day, :tier)"),
            rows,
        )
    try:
        yield db
    finally:
        with engine.begin() as conn:
            for table in (db.table, f"{db.table}_old"):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


QUERY = (
    "SELECT customer_id AS user_id, email, phone, gum_id, ad_consent, lifetime_value, signed_up, tier "
    "FROM {table} WHERE customer_id IN :keys"
)


def test_a_batch_of_keys_is_one_query_and_every_column_reads_as_meant(database: Database) -> None:
    source = database.source(QUERY)
    keys = [f"c{i}" for i in range(PEOPLE)] + [f"nobody-{i}" for i in range(10)]
    try:
        result = asyncio.run(source.lookup_keys(keys))
    finally:
        asyncio.run(source.aclose())
    assert (len(result.answers), len(result.unknown), result.requests) == (PEOPLE, 10, 1)
    three, seven = result.answers["c3"], result.answers["c7"]
    assert (three.emails, three.phones, three.ids, three.consent) == (
        [" Person3@Example.com"],
        ["+1 415 555 0003"],
        [("gum", "gum-3")],
        False,
    )
    assert seven.consent is True and result.answers["c4"].ids == []
    assert three.traits == {"lifetime_value": 3.5, "signed_up": "2024-01-04", "tier": "gold"}
    assert result.answers["c42"].traits["tier"] is None  # a NULL unsets the trait


def test_a_lookup_keyed_by_email_queries_by_the_normalised_email(database: Database) -> None:
    query = "SELECT lower(trim(email)) AS email, phone, ad_consent FROM {table} WHERE lower(trim(email)) IN :keys"
    source = database.source(query, key="email", columns={"phone": "phone", "consent": "ad_consent"})
    try:
        result = asyncio.run(source.lookup_keys(["person5@example.com", "nobody@example.com"]))
    finally:
        asyncio.run(source.aclose())
    assert set(result.answers) == {"person5@example.com"} and result.unknown == {"nobody@example.com"}
    assert result.answers["person5@example.com"].phones == ["+1 415 555 0005"]


def test_a_renamed_table_fails_the_batch_without_naming_the_keys_and_heals(database: Database) -> None:
    source = database.source(QUERY)

    async def scenario() -> None:
        assert len((await source.lookup_keys(["c1"])).answers) == 1
        database.run(f"ALTER TABLE {database.table} RENAME TO {database.table}_old")
        with pytest.raises(LookupUnavailable) as failed:
            await source.lookup_keys(["c1", "secret-key-7"])
        assert database.table in str(failed.value) and "secret-key-7" not in str(failed.value)
        database.run(f"ALTER TABLE {database.table}_old RENAME TO {database.table}")
        assert len((await source.lookup_keys(["c1"])).answers) == 1  # the same pool goes on

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(source.aclose())
