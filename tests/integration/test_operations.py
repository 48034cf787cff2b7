"""/healthz, /readyz and /metrics of a real server on loopback (workers running)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import orjson

from segcrit.app import create_app
from segcrit.criteo.emulator.server import running_app
from segcrit.store.sqlite import SqliteStore
from tests.helpers import audience_event, make_config

T0 = time.time()


def _metric(text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{prefix} not in /metrics")


def test_health_readiness_and_metrics(tmp_path: Path, emulator_url: str) -> None:
    config = make_config(str(tmp_path / "s.db"), api_url=emulator_url, max_wait=0)
    store = SqliteStore(str(tmp_path / "s.db"))
    auth = {"Authorization": "Basic " + base64.b64encode(b"WK:").decode()}
    try:
        with running_app(create_app(config, store), lifespan="on") as url:
            assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
            ready = httpx.get(f"{url}/readyz")
            assert ready.status_code == 200 and ready.json()["checks"] == {"store": True, "workers": True}
            batch = {"batch": [audience_event("u1", "vip", True, T0, email="a@b.example"), {"type": "track"}]}
            response = httpx.post(f"{url}/v1/batch", json=batch, headers=auth)
            assert response.status_code == 200 and response.json()["rejected"][0]["index"] == 1
            assert httpx.post(f"{url}/v1/batch", json=batch, headers={"Authorization": "Basic eDo="}).status_code == 401
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and store.acknowledged_members("vip") == {}:
                time.sleep(0.02)
            text = httpx.get(f"{url}/metrics").text
        assert _metric(text, "segcrit_events_received_total", 'source="web"') == 1
        assert _metric(text, "segcrit_events_rejected_total", 'reason="invalid_message",source="web"') == 1
        assert _metric(text, "segcrit_events_rejected_total", 'reason="auth",source="<unknown>"') == 1
        assert _metric(text, "segcrit_criteo_calls_total", 'endpoint="contact_list_patch",status="200"') == 1
        assert _metric(text, "segcrit_changes_pending") == 0
        assert _metric(text, "segcrit_dead_letters") == 0
        assert _metric(text, "segcrit_delivery_latency_seconds_count") == 1
        assert "segcrit_backlog_events" in text
    finally:
        store.close()


def test_browser_preflight_is_allowed_and_local_phone_numbers_use_the_configured_region(
    tmp_path: Path, emulator_url: str
) -> None:
    import hashlib

    config = make_config(str(tmp_path / "s.db"), api_url=emulator_url, extra="")
    config = config.model_copy(update={"identity": config.identity.model_copy(update={"phone_region": "FR"})})
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        with running_app(create_app(config, store), lifespan="on") as url:
            preflight = httpx.options(
                f"{url}/v1/t",
                headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "*"
            body = {"writeKey": "WK", "type": "identify", "userId": "u9", "traits": {"phone": "06 12 34 56 78"}}
            response = httpx.post(
                f"{url}/v1/i",
                content=orjson.dumps(body),
                headers={"Content-Type": "text/plain", "Origin": "https://shop.example"},
            )
            assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"
            expected = hashlib.sha256(b"+33612345678").hexdigest()
            deadline = time.monotonic() + 10
            found = None
            while time.monotonic() < deadline and found is None:
                with store.dry_run() as tx:
                    found = tx.find_profiles([("phone", expected)]).get(("phone", expected))
                time.sleep(0.02)
            assert found is not None
    finally:
        store.close()
