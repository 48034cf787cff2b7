"""What the delivery workers share: their parts, the retry window, a dead letter's reason."""

from __future__ import annotations

from typing import Generic, TypeVar

import orjson

from segcrit.clock import Clock
from segcrit.config import Config
from segcrit.criteo.constants import RATE_LIMIT_WINDOW_SECS
from segcrit.criteo.errors import PermanentError
from segcrit.delivery.backoff import Backoff
from segcrit.metrics import Metrics

StoreT = TypeVar("StoreT")
ClientT = TypeVar("ClientT")

# Requests of one call at most: the token call, then two tries (a 401 is retried at once with a new token).
REQUESTS_PER_CALL = 3


class Worker(Generic[StoreT, ClientT]):
    """A delivery worker: claims what is due in `store` (its queue's role of the store seam), sends
    it with `client`, records the outcome.

    `backoff` defaults to the one `config.delivery` describes.
    """

    def __init__(
        self,
        store: StoreT,
        config: Config,
        client: ClientT,
        clock: Clock,
        metrics: Metrics,
        backoff: Backoff | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.client = client
        self.clock = clock
        self.metrics = metrics
        self.backoff = backoff or Backoff.from_config(config.delivery)

    @property
    def claim_secs(self) -> float:
        """How long a call's claim on its work lasts: longer than the call can take (a wait of up to
        a rate-limit window, then the token call and two tries within criteo.timeout_secs each), so
        that only the claim of a process that died expires."""
        return RATE_LIMIT_WINDOW_SECS + REQUESTS_PER_CALL * self.config.criteo.timeout_secs

    def window_over(self, first_failure_at: float | None, now: float) -> bool:
        """Whether something failing since `first_failure_at` has used up `delivery.retry_window_hours`."""
        return first_failure_at is not None and now - first_failure_at >= self.config.delivery.retry_window_hours * 3600


def describe(error: PermanentError) -> str:
    """The dead letter's reason: our message plus Criteo's own error object."""
    if error.problem:
        return f"{error} {orjson.dumps(error.problem).decode()}"
    return str(error)
