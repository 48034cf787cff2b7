"""The store: the only place with SQL. `open_store(url)` picks the implementation and returns it as
the `Store` interface (segcrit.store.base); nothing outside this package names an implementation."""

from __future__ import annotations

from pathlib import Path

from segcrit.errors import StoreError
from segcrit.store.base import Store

__all__ = ["Store", "open_store", "store_exists"]

_SQLITE_PREFIXES = ("sqlite:///", "sqlite://")
_POSTGRESQL_PREFIXES = ("postgresql://", "postgres://")


def open_store(url: str, *, owner: bool = False) -> Store:
    """`owner`: this process runs workers (serve, import, resync): on SQLite a second one is refused."""
    if url.startswith("sqlite://"):
        # Imported here: a command that never opens a store does not load an implementation.
        from segcrit.store.sqlite import open_sqlite

        try:
            return open_sqlite(url, owner=owner)
        except StoreError:
            raise  # says what is wrong already (another process owns the file)
        except Exception as exc:  # sqlite3.Error, OSError: report the place, not a traceback
            raise StoreError(f"cannot open store {url}: {exc}") from None
    if url.startswith(_POSTGRESQL_PREFIXES):
        raise StoreError("store: PostgreSQL is not available in this version yet; use sqlite:///PATH")
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
