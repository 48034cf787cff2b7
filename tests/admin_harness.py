"""A live segcrit with the admin on: `create_app` served by uvicorn on loopback with its workers
and recorder running, the emulator in-process, Segment's Python library as the traffic source."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from segment.analytics.client import Client

from segcrit.admin.app import Admin
from segcrit.app import create_app
from segcrit.config import Config, DeliveryConfig
from segcrit.emulator.server import running_app
from segcrit.store.sqlite import SqliteStore
from tests.helpers import make_config

ADMIN_TOKEN = "admin-test-token-0123456789"
DEADLINE_SECS = 20.0
# Criteo down for longer than this (3.6 s) turns pending changes into dead letters.
SHORT_RETRY_WINDOW = DeliveryConfig(
    max_wait_secs=0.2, retry_window_hours=0.001, backoff_initial_secs=0.2, backoff_max_secs=0.5
)


def poll(check: Callable[[], Any], what: str, deadline_secs: float = DEADLINE_SECS) -> Any:
    """Wait until `check()` returns something true; return it (fail naming `what` at the deadline)."""
    end = time.monotonic() + deadline_secs
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class LiveAdmin:
    url: str
    store: SqliteStore
    config: Config
    admin: Admin
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, self.url + path, headers=self.bearer, **kwargs)

    def json(self, path: str, **kwargs: Any) -> Any:
        response = self.api("GET", path, **kwargs)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def flush(self) -> None:
        """What the recorder thread does every few seconds, now."""
        self.admin.recorder.flush()

    def send(self, *calls: tuple[str, dict[str, Any]]) -> None:
        """Send (method, kwargs) calls with Segment's library, as one /v1/batch request."""
        client = Client("WK", host=self.url, on_error=_raise)
        for method, kwargs in calls:
            getattr(client, method)(**kwargs)
        client.flush()
        client.join()

    def audience(self, name: str) -> dict[str, Any] | None:
        found = [a for a in self.json("/api/audiences")["audiences"] if a["name"] == name]
        return found[0] if found else None

    def delivered(self, name: str, acknowledged: int) -> bool:
        audience = self.audience(name)
        return audience is not None and audience["acknowledged"] == acknowledged and audience["pending_add"] == 0

    def login(self) -> str:
        """Log in through the form; returns the session's CSRF token (as the pages carry it)."""
        response = self.http.post(f"{self.url}/admin/login", data={"token": ADMIN_TOKEN}, follow_redirects=True)
        assert response.status_code == 200, response.text
        found = re.search(r'"x-csrf-token": "([0-9a-f]+)"', response.text)
        assert found is not None, "the page carries the CSRF token"
        return found.group(1)


def _raise(error: Exception, batch: object) -> None:
    raise AssertionError(f"segment client error: {error}")


@contextmanager
def live_admin(tmp_path: Path, emulator_url: str, **update: Any) -> Iterator[LiveAdmin]:
    """segcrit on `tmp_path`, delivering to the emulator; `update` replaces config sections."""
    extra = f"server: {{admin_token: {ADMIN_TOKEN}}}\n"
    config = make_config(str(tmp_path / "s.db"), api_url=emulator_url, max_wait=0.2, extra=extra)
    config = config.model_copy(update=update)
    store = SqliteStore(str(tmp_path / "s.db"))
    app = create_app(config, store)
    try:
        with running_app(app, lifespan="on") as url:
            live = LiveAdmin(url, store, config, app.state.admin)
            try:
                yield live
            finally:
                live.http.close()
    finally:
        store.close()
