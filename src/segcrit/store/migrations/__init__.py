"""Versioned schema migrations: how a store's schema gets to the version this segcrit needs.

Each store dialect has a folder of SQL files here, `NNNN_what.sql`, applied in version order:
`sqlite/0001_initial.sql`, `sqlite/0002_...`; PostgreSQL's go in `postgresql/`, numbered on
their own. A store records what it applied in `schema_migrations (version, name, applied_at)`.
Every command that opens a store applies the pending ones first (`segcrit serve` at start),
except `segcrit migrate --check`, which only lists them; `segcrit migrate` applies them alone.

`run_migrations` applies them through a store's `MigrationTarget`: under its lock (SQLite: the
owner's file lock when there is one, and the database write lock of each migration's transaction;
PostgreSQL: an advisory lock, taken by `migration_lock`), each pending migration runs in one
transaction with its `schema_migrations` row, and is skipped if another process applied it first.
A store whose schema has a version this segcrit does not know is refused (a newer segcrit
migrated it): it is never changed by an older one.

The rule for a new migration:
- a new file with the next version; never edit, rename or renumber one that was released (some
  database has applied it already);
- plain statements (CREATE TABLE, ALTER TABLE ... ADD COLUMN, CREATE INDEX), one change per
  version: a version runs once, so no IF NOT EXISTS is needed (0001 alone is idempotent, to adopt
  the databases made before versions existed);
- additive while processes of the previous release may still run on the database (a rolling
  restart of several processes on PostgreSQL): new columns get a default, and a column or table
  is dropped only in a release after the one that stopped using it;
- triggers and running totals (the `counters` table) are part of the schema: a migration that
  changes what a total counts updates its trigger and recounts in the same version.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Protocol

from segcrit.errors import StoreError

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@functools.cache
def load_migrations(dialect: str) -> tuple[Migration, ...]:
    """The migrations of a dialect (`sqlite`, `postgresql`), in version order."""
    return migrations_in(resources.files(__name__).joinpath(dialect))


def migrations_in(folder: Traversable) -> tuple[Migration, ...]:
    """The migrations of a folder, in version order; their versions must run 1, 2, 3... exactly."""
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise StoreError(f"migration {folder.name}/{entry.name}: name it NNNN_what.sql (lowercase)")
        found.append(Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"migrations in {folder.name}: versions must run 1, 2, 3... without a gap or a repeat")
    return tuple(found)


def pending(migrations: Collection[Migration], applied: Collection[int]) -> list[Migration]:
    """The migrations not applied yet, in order; StoreError when the store has a version this
    segcrit does not know."""
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        raise StoreError(
            f"the store's schema is at version {unknown[-1]}, newer than this segcrit knows "
            f"({len(migrations)}): run the segcrit release that migrated it, or a newer one"
        )
    return [m for m in sorted(migrations, key=lambda m: m.version) if m.version not in applied]


class MigrationTarget(Protocol):
    """What a store implementation gives `run_migrations`."""

    def migration_lock(self) -> AbstractContextManager[object]:
        """Held while migrating: no other process migrates meanwhile."""
        ...

    def applied_versions(self) -> set[int]:
        """The versions in `schema_migrations` (none when the table does not exist yet)."""
        ...

    def apply_migration(self, migration: Migration) -> bool:
        """Run the migration and record it in one transaction; False (and no change) when it was
        applied meanwhile."""
        ...


def run_migrations(target: MigrationTarget, migrations: Collection[Migration]) -> list[Migration]:
    """Apply the pending migrations in order; returns those applied now."""
    with target.migration_lock():
        return [m for m in pending(migrations, target.applied_versions()) if target.apply_migration(m)]
