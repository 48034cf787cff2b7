"""PostgreSQL for tests: a schema of its own per test on the server `SEGCRIT_TEST_POSTGRES_URL` names.

Without the variable (or with the server down) a test that needs PostgreSQL is skipped with the
reason; where `CI` is set it fails instead (tests/required.py), so a CI run cannot pass without it.
`.ci/run` sets it to the local server (postgresql://postgres@127.0.0.1:5432/test).

Each test gets an empty schema (`segcrit_test_<random>`), reached through a URL that puts it first
on the search_path, and dropped with everything in it afterwards: tests run side by side on one
database without meeting each other's tables (the store's advisory lock keys include the schema).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

from tests.required import in_ci, missing

ENV = "SEGCRIT_TEST_POSTGRES_URL"


def unavailable(reason: str) -> None:
    """Skip, naming what is missing; fail in CI."""
    if in_ci():
        pytest.fail(missing(reason))
    pytest.skip(reason)


def server_url() -> str:
    url = os.environ.get(ENV, "")
    if not url:
        unavailable(f"{ENV} is not set (a PostgreSQL server for the PostgreSQL store's tests)")
    return url


def with_schema(url: str, schema: str) -> str:
    """`url` with `schema` first on the search_path of every connection made with it."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-c search_path={schema}')}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL to an empty schema of its own, dropped (with all it holds) afterwards."""
    import psycopg

    url = server_url()
    schema = f"segcrit_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        unavailable(f"PostgreSQL at {ENV} is not reachable ({error.__class__.__name__})")
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield with_schema(url, schema)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
