"""`type: sql` lookups: the configured query, run through SQLAlchemy Core for a batch of keys.

    SELECT customer_id AS user_id, email, phone, gum_id, ad_consent FROM customers WHERE customer_id IN :keys

`:keys` is an expanding parameter: SQLAlchemy writes one placeholder per key, so a batch of up to
`batch_size` keys (at least 100) costs one query. Keys are bound as text. A row answers the key in
its column named like `key` (`user_id`, `anonymous_id`, `email`; any letter case, since PostgreSQL
folds unquoted aliases); `columns` says which columns hold `email`, `phone`, `madid`, `gum`,
`identityLink` and `consent`; every other column is a trait. Keys that no row answers are unknown.

Any URL SQLAlchemy supports works. Without a driver, `postgresql://` means psycopg and `mysql://`
(or `mariadb://`) PyMySQL, the drivers segcrit's extras install. The engine never echoes
parameters (`hide_parameters`): an error about an email key cannot carry the email into a log.
Queries run in a worker thread (`asyncio.to_thread`) so the enrichment loop stays responsive, at
most `max_per_second` a second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from segcrit.clock import Clock
from segcrit.config import SqlLookup
from segcrit.enrichment.answers import Answer, LookupResult, LookupUnavailable, consent_value, text_id
from segcrit.identity.normalize import normalize_email, redact_text
from segcrit.metrics import Metrics
from segcrit.ratelimit import Sleep, SlidingWindowLimiter

log = logging.getLogger(__name__)

# Our column role -> the identifier kind it fills (emails and phones are hashed on their own).
ID_COLUMNS: Final = {"madid": "madid", "gum": "gum", "identityLink": "identity_link"}
DEFAULT_DRIVERS: Final = {"postgresql": "psycopg", "postgres": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}
EXTRA_OF_DRIVER: Final = {"psycopg": "postgres", "pymysql": "mysql"}
RATE_MARGIN_SECS: Final = 0.02
MAX_ERROR_CHARS: Final = 300


def engine_url(url: str) -> URL:
    """The SQLAlchemy URL, with segcrit's driver where none is named (module docstring)."""
    parsed = make_url(url)
    if "+" not in parsed.drivername and parsed.drivername in DEFAULT_DRIVERS:
        backend = "postgresql" if parsed.drivername == "postgres" else parsed.drivername
        parsed = parsed.set(drivername=f"{backend}+{DEFAULT_DRIVERS[parsed.drivername]}")
    return parsed


def url_problem(url: str) -> str | None:
    """What is wrong with a lookup URL (never repeating it: it holds a password), or None."""
    try:
        parsed = engine_url(url)
    except (ArgumentError, ValueError):
        return "not a database URL; expected e.g. postgresql://user:password@host/db or sqlite:///crm.db"
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"SQLAlchemy knows no database type {parsed.drivername!r}"
    try:
        dialect.import_dbapi()
    except ImportError:
        driver = parsed.get_driver_name()
        extra = EXTRA_OF_DRIVER.get(driver)
        hint = f"pip install 'segcrit[{extra}]'" if extra else f"install the {driver} driver"
        return f"the database driver {driver!r} is not installed ({hint})"
    return None


def _connect_args(url: URL, timeout_secs: float) -> dict[str, Any]:
    """Timeouts, in each driver's words, so that a database that hangs fails the batch instead."""
    seconds = max(1, round(timeout_secs))
    backend = url.get_backend_name()
    if backend == "postgresql" and url.get_driver_name() == "psycopg":
        return {"connect_timeout": seconds, "options": f"-c statement_timeout={seconds * 1000}"}
    if backend in ("mysql", "mariadb") and url.get_driver_name() == "pymysql":
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    if backend == "sqlite":
        return {"timeout": timeout_secs}
    return {}


def safe_error(error: BaseException) -> str:
    """An error as one line for status and logs: the driver's own message (a missing table, a
    refused login), never the parameters, with any email in it redacted."""
    cause = getattr(error, "orig", None) or error
    text = f"{cause.__class__.__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
    # The redaction ingest applies to free text (a driver may quote a value it choked on): the
    # rest of the message survives. Redacted before it is cut, so no part of an address is left.
    return redact_text(text)[:MAX_ERROR_CHARS]


def _trait_value(value: Any) -> Any:
    """A database value as JSON: numbers, text, booleans and null as they are, decimals as floats,
    dates as ISO text, UUIDs as text; anything else (bytes, arrays) is left out (None)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return None


def read_rows(rows: Sequence[Mapping[str, Any]], lookup: SqlLookup) -> dict[str, Answer]:
    """The answers in a query's rows, by key (pure; see the module docstring)."""
    answers: dict[str, Answer] = {}
    roles = {column.lower(): role for role, column in lookup.columns.items()}
    for row in rows:
        columns = {str(name).lower(): value for name, value in row.items()}
        if lookup.key not in columns:
            raise LookupUnavailable(f"the query returns no column named {lookup.key} (write `... AS {lookup.key}`)")
        raw_key = columns[lookup.key]
        key = normalize_email(raw_key) if lookup.key == "email" else text_id(raw_key)
        if key is None:
            continue
        answer = Answer()
        for name, value in columns.items():
            role = roles.get(name)
            if role == "email":
                if isinstance(value, str):
                    answer.emails.append(value)
            elif role == "phone":
                phone = text_id(value)
                if phone is not None:
                    answer.phones.append(phone)
            elif role == "consent":
                answer.consent = consent_value(value)
            elif role in ID_COLUMNS:
                ident = text_id(value)
                if ident is not None:
                    answer.ids.append((ID_COLUMNS[role], ident))
            elif role is None and name != lookup.key:
                trait = _trait_value(value)
                if trait is not None or value is None:
                    answer.traits[name] = trait
        if key in answers:
            answers[key].add(answer)
        else:
            answers[key] = answer
    return answers


class SqlSource:
    """One `type: sql` lookup: its engine (a small pool), statement and rate limit."""

    def __init__(self, lookup: SqlLookup, clock: Clock, metrics: Metrics, sleep: Sleep = asyncio.sleep) -> None:
        self.lookup = lookup
        self._metrics = metrics
        url = engine_url(lookup.url.get_secret_value())
        self._engine: Engine = sa.create_engine(
            url,
            hide_parameters=True,
            pool_pre_ping=True,  # a database that restarted is reconnected to, not failed on
            pool_size=1,
            max_overflow=1,
            connect_args=_connect_args(url, lookup.timeout_secs),
        )
        self._statement = sa.text(lookup.query).bindparams(sa.bindparam("keys", expanding=True))
        self._limiter = SlidingWindowLimiter(
            lookup.max_per_second, clock, sleep, window_secs=1.0, margin_secs=RATE_MARGIN_SECS
        )

    async def lookup_keys(self, keys: Sequence[str]) -> LookupResult:
        """One query for all `keys`; raises LookupUnavailable when it fails."""
        await self._limiter.acquire()
        try:
            rows = await asyncio.to_thread(self._query, list(keys))
        except (SQLAlchemyError, OSError) as error:
            self._metrics.lookup_requests.labels(self.lookup.name, "error").inc()
            raise LookupUnavailable(safe_error(error)) from None
        self._metrics.lookup_requests.labels(self.lookup.name, "ok").inc()
        answers = read_rows(rows, self.lookup)
        wanted = set(keys)
        found = {key: answer for key, answer in answers.items() if key in wanted}
        return LookupResult(found, wanted - set(found), requests=1)

    def _query(self, keys: list[str]) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(self._statement, {"keys": keys})]

    async def aclose(self) -> None:
        await asyncio.to_thread(self._engine.dispose)
