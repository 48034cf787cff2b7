"""The store: the only place with SQL. `open_store(url)` picks the implementation and returns it as
the `Store` interface (segcrit.store.base); nothing outside this package names an implementation."""

from __future__ import annotations

from pathlib import Path

from segcrit.errors import StoreError
from segcrit.store.base import Store
from segcrit.store.migrations import Migration, load_migrations

__all__ = ["Store", "open_store", "pending_migrations", "store_exists"]

_SQLITE_PREFIXES = ("sqlite:///", "sqlite://")
_POSTGRESQL_PREFIXES = ("postgresql://", "postgres://")


def open_store(url: str, *, owner: bool = False, migrate: bool = True) -> Store:
    """`owner`: this process runs workers (serve, import, resync): on SQLite a second one is refused.
    `migrate`: apply the pending schema migrations first (on SQLite, that is how a new file gets
    its schema); every command does but `segcrit migrate --check`. On PostgreSQL, a database
    several processes share, only an owner migrates: other commands refuse a schema that lacks a
    migration rather than change it under the running processes."""
    if url.startswith("sqlite://"):
        # Imported here: a command that never opens a store does not load an implementation.
        from segcrit.store.sqlite import open_sqlite

        try:
            return open_sqlite(url, owner=owner, migrate=migrate)
        except StoreError:
            raise  # says what is wrong already (another process owns the file)
        except Exception as exc:  # sqlite3.Error, OSError: report the place, not a traceback
            raise StoreError(f"cannot open store {url}: {exc}") from None
    if url.startswith(_POSTGRESQL_PREFIXES):
        return _open_postgres(url, owner=owner, migrate=migrate)
    raise StoreError(f"store: unsupported URL scheme in {url.split(':', 1)[0]!r}")


def _open_postgres(url: str, *, owner: bool, migrate: bool) -> Store:
    try:
        from segcrit.store.postgres import open_postgres
    except ImportError:
        raise StoreError(
            "store: PostgreSQL needs psycopg 3 and psycopg_pool: pip install 'segcrit[postgres]'"
        ) from None
    from segcrit.store.postgres_base import safe_url

    try:
        return open_postgres(url, owner=owner, migrate=migrate)
    except StoreError:
        raise  # says what is wrong already (a schema that lacks a migration, a server that does not answer)
    except Exception as exc:  # psycopg.Error: report the place (without its password), not a traceback
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise StoreError(f"cannot open store {safe_url(url)}: {reason}") from None


def pending_migrations(url: str) -> list[Migration]:
    """The migrations the store at `url` lacks, found without changing it (`segcrit migrate
    --check`): a store that does not exist yet lacks them all, and is not created."""
    if not store_exists(url):
        return list(load_migrations(_dialect(url)))
    store = open_store(url, migrate=False)
    try:
        return store.pending_migrations()
    finally:
        store.close()


def _dialect(url: str) -> str:
    """The folder of segcrit.store.migrations that holds the store's migrations."""
    if url.startswith(_SQLITE_PREFIXES):
        return "sqlite"
    if url.startswith(_POSTGRESQL_PREFIXES):
        return "postgresql"
    raise StoreError(f"store: unsupported URL scheme in {url.split(':', 1)[0]!r}")


def store_exists(url: str) -> bool:
    """Whether the store at `url` exists already, for commands that read it but should not create
    it (preview, enrich): a SQLite file is there; a database server is taken to be."""
    if url.startswith(_SQLITE_PREFIXES):
        path = sqlite_path(url)
        return path != ":memory:" and Path(path).exists()
    return True


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///PATH` URL (":memory:" for none)."""
    for prefix in _SQLITE_PREFIXES:
        if url.startswith(prefix):
            return url.removeprefix(prefix) or ":memory:"
    raise StoreError(f"not a SQLite store URL: {url.split(':', 1)[0]!r}")
