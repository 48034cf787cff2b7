"""The exception tree of segcrit.

    SegcritError                 root: anything segcrit raises on purpose
    +-- ConfigError              the config file is wrong; carries every problem with its key path
    +-- UserError                a command was used wrongly (bad argument, missing file)
    +-- StoreError               the store cannot be reached or is in a bad state
    |   +-- StoreUnavailable     it cannot write now (disk full, locked, I/O error): retry later
    +-- CriteoError              a Criteo call failed; see segcrit.criteo.errors for its branches

A user mistake ends as one clear line on stderr (cli.main catches SegcritError), never a traceback.
"""

from __future__ import annotations


class SegcritError(Exception):
    """Root of every exception segcrit raises on purpose."""


class ConfigError(SegcritError):
    """The configuration is invalid; `problems` lists each one as 'key.path: message'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class UserError(SegcritError):
    """A command was called with something that cannot work."""


class StoreError(SegcritError):
    """The store is unreachable or inconsistent."""


class StoreUnavailable(StoreError):
    """The store cannot write now (disk full, database locked, I/O error).

    Nothing about the data is wrong: the work is retried later, and no event is set aside for it.
    """


class CriteoError(SegcritError):
    """A call to Criteo failed (see segcrit.criteo.errors)."""
