"""The store: the only place with SQL. `open_store(url)` picks the implementation."""

from __future__ import annotations

from segcrit.errors import StoreError
from segcrit.store.sqlite import SqliteStore, open_sqlite

__all__ = ["SqliteStore", "open_store"]


def open_store(url: str, *, owner: bool = False) -> SqliteStore:
    """`owner`: this process runs workers (serve, import, resync): a second one is refused."""
    if url.startswith("sqlite://"):
        try:
            return open_sqlite(url, owner=owner)
        except StoreError:
            raise  # says what is wrong already (another process owns the file)
        except Exception as exc:  # sqlite3.Error, OSError: report the place, not a traceback
            raise StoreError(f"cannot open store {url}: {exc}") from None
    if url.startswith(("postgresql://", "postgres://")):
        raise StoreError("store: PostgreSQL is not available in this version yet; use sqlite:///PATH")
    raise StoreError(f"store: unsupported URL scheme in {url.split(':', 1)[0]!r}")
