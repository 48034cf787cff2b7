"""The emails this process has seen at ingest, in memory only, for lookups keyed by email.

segcrit stores an email only as its hashes (SPEC §8), yet a lookup with `key: email` must query
the CRM by the normalised email itself. So ingest tells `EMAILS` of every email it accepts
(`email_listener`), and the enrichment worker turns a profile's stored email hash back into the
email through it. Nothing here ever reaches disk or a log.

What that means for an operator, stated in docs/enrichment.md:
- an email-keyed lookup runs for emails this process ingested since it started, while they are
  among the latest `CAPACITY` it saw (least recently seen go first);
- after a restart, or for an email seen long ago, the lookup waits until an event carries that
  email again (the profile is marked `no_key` meanwhile, and counted);
- with several processes (PostgreSQL), each remembers what it ingested itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from segcrit.config import Config
    from segcrit.identity.normalize import EmailListener

# ~300 bytes an entry: about 15 MB at most, well inside the memory budget of SPEC §9.
CAPACITY: Final = 50_000


class EmailMemory:
    """sha256 of a normalised email -> the email, the `capacity` most recently seen. Thread-safe:
    ingest writes on the event loop thread, the enrichment worker reads on its own."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._emails: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, email: str, sha256: str) -> None:
        with self._lock:
            self._emails[sha256] = email
            self._emails.move_to_end(sha256)
            while len(self._emails) > self.capacity:
                self._emails.popitem(last=False)

    def email_of(self, sha256: str) -> str | None:
        with self._lock:
            return self._emails.get(sha256)

    def __len__(self) -> int:
        with self._lock:
            return len(self._emails)

    def clear(self) -> None:
        with self._lock:
            self._emails.clear()


# One per process: ingest and the enrichment worker of `segcrit serve` share it.
EMAILS: Final = EmailMemory()


def email_listener(config: Config) -> EmailListener | None:
    """What ingest calls with each email when some lookup is keyed by email; None otherwise (then
    no email is kept at all)."""
    if any(lookup.key == "email" for lookup in config.enrichment):
        return EMAILS.remember
    return None
