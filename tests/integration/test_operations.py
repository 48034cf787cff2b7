"""/healthz, /readyz and /metrics of a real server on loopback (workers running); what a scrape costs
and the running totals it reads."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import orjson

from segcrit.app import create_app
from segcrit.clock import FakeClock
from segcrit.domain import TargetKey
from segcrit.emulator.server import running_app
from segcrit.identity.normalize import email_hashes
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.store.sqlite import SqliteStore
from tests.helpers import audience_event, make_config, put

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


# ------------------------------------------------------------------------------------ /metrics


def test_metrics_token_guards_metrics_and_nothing_else(tmp_path: Path) -> None:
    config = make_config(str(tmp_path / "s.db"), extra="server: {metrics_token: mt-0123456789}\n")
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        with running_app(create_app(config, store, run_workers=False)) as url:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic bXQtMDEyMzQ1Njc4OQ=="}):
                refused = httpx.get(f"{url}/metrics", headers=headers)
                assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
                assert "segcrit_" not in refused.text
            scraped = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer mt-0123456789"})
            assert scraped.status_code == 200 and "segcrit_changes_pending" in scraped.text
            assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        store.close()


def scrape_statements(store: SqliteStore, metrics: Metrics) -> list[str]:
    """The SQL one scrape runs (on this thread's connection, where `render` reads the store)."""
    statements: list[str] = []
    conn = store._conn()
    conn.set_trace_callback(statements.append)
    try:
        metrics.render()
    finally:
        conn.set_trace_callback(None)
    return statements


def test_a_scrape_reads_running_totals_and_never_scans(tmp_path: Path) -> None:
    config = make_config(str(tmp_path / "s.db"))
    store = SqliteStore(str(tmp_path / "s.db"))
    metrics = Metrics()
    create_app(config, store, metrics=metrics, run_workers=False)
    processor = Processor(store, config, FakeClock(T0), metrics)
    try:
        put(store, audience_event("u0", "vip", True, T0, email="u0@example.com"))
        processor.drain()
        small = scrape_statements(store, metrics)
        put(store, *[audience_event(f"u{n}", "vip", True, T0, email=f"u{n}@example.com") for n in range(1, 400)])
        processor.drain()
        large = scrape_statements(store, metrics)

        assert small == large  # the same statements whatever the backlog
        conn = store._conn()
        for statement in large:
            assert "count(" not in statement.lower(), statement
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
            assert all(not step.startswith("SCAN") or step == "SCAN CONSTANT ROW" for step in plan), (statement, plan)
        assert metrics.registry.get_sample_value("segcrit_changes_pending") == 400
    finally:
        store.close()


def counted(db: Path) -> dict[str, int]:
    """What the running totals must equal, counted the slow way."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {
            "changes_pending": conn.execute(
                "SELECT count(*) FROM targets WHERE desired != acked AND dead_letter_id IS NULL"
            ).fetchone()[0],
            "dead_letters": conn.execute("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL").fetchone()[0],
            "audiences_held": conn.execute("SELECT count(*) FROM audiences WHERE held_since IS NOT NULL").fetchone()[0],
        }


def test_the_running_totals_follow_every_write(tmp_path: Path, emulator_url: str) -> None:
    db = tmp_path / "s.db"
    config = make_config(str(db), api_url=emulator_url, flows="    max_new_audiences_per_day: 1\n")
    clock = FakeClock(T0)
    store = SqliteStore(str(db))
    processor = Processor(store, config, clock, Metrics())

    def totals() -> dict[str, int]:
        return {name: store.counter(name) for name in ("changes_pending", "dead_letters", "audiences_held")}

    try:
        users = [f"u{n}" for n in range(6)]
        put(store, *[audience_event(u, "vip", True, T0, email=f"{u}@example.com", madid=f"AD-{u}") for u in users])
        put(store, audience_event("u0", "held_key", True, T0 + 1, email="u0@example.com"))
        processor.drain()
        assert totals() == counted(db) and totals()["audiences_held"] == 1
        changes = store.due_changes(T0 + 60, 100)
        store.claim_changes([c.key for c in changes[:8]], True, T0 + 2, T0 + 30)
        store.ack_changes([c.key for c in changes[:4]], True, T0 + 2)  # delivered
        store.defer_changes([c.key for c in changes[4:6]], T0 + 90, T0 + 2, maybe_applied=True)  # answer lost
        store.defer_changes([c.key for c in changes[6:8]], T0 + 90, T0 + 2, maybe_applied=False)  # refused: retry
        store.dead_letter([c.key for c in changes[8:11]], True, 400, "refused", T0 + 3)
        assert totals() == counted(db) and totals()["dead_letters"] == 1
        store.mark_audience_unknown("vip", T0 + 3)
        assert totals() == counted(db)
        store.replay_dead_letters(None, T0 + 4)
        put(store, audience_event("u1", "vip", False, T0 + 5, email="u1@example.com"))  # leaves
        processor.drain()
        store.ack_changes([TargetKey("vip", "email", email_hashes("u1@example.com")[0])], False, T0 + 6)
        processor.forget("u2")
        store.reset_audience_acks("vip", T0 + 7)
        assert totals() == counted(db)
        store.release_audiences(["held_key"])
        assert totals() == counted(db) and totals()["audiences_held"] == 0
    finally:
        store.close()


def test_a_process_runs_only_its_roles(tmp_path: Path, emulator_url: str) -> None:
    """`serve --roles process,deliver`: no ingest (its routes answer 503 JSON, which Segment
    retries), no scheduler thread; /healthz, /readyz (with roles and store) and /metrics as ever."""
    config = make_config(str(tmp_path / "s.db"), api_url=emulator_url, max_wait=0)
    store = SqliteStore(str(tmp_path / "s.db"))
    auth = {"Authorization": "Basic " + base64.b64encode(b"WK:").decode()}
    try:
        app = create_app(config, store, roles=["deliver", "process"])
        with running_app(app, lifespan="on") as url:
            assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
            ready = httpx.get(f"{url}/readyz")
            assert ready.status_code == 200
            assert ready.json()["checks"] == {"store": True, "workers": True}
            assert ready.json()["roles"] == ["process", "deliver"] and ready.json()["store"] == "sqlite"
            batch = {"batch": [audience_event("u1", "vip", True, T0, email="a@b.example")]}
            refused = httpx.post(f"{url}/v1/batch", json=batch, headers=auth)
            assert refused.status_code == 503 and refused.json()["code"] == "role_not_running"
            assert httpx.post(f"{url}/webhooks/engage", json={}).status_code == 503
            assert "segcrit_backlog_events" in httpx.get(f"{url}/metrics").text
            threads = {t.name for t in threading.enumerate()}
            assert {"segcrit-processor", "segcrit-delivery"} <= threads and "segcrit-scheduler" not in threads
        assert store.backlog() == 0
        with running_app(create_app(config, store, roles=["ingest"]), lifespan="on") as url:
            ready = httpx.get(f"{url}/readyz")
            assert ready.status_code == 200 and ready.json()["roles"] == ["ingest"]
            assert httpx.post(f"{url}/v1/batch", json=batch, headers=auth).status_code == 200
            assert not {"segcrit-processor", "segcrit-delivery", "segcrit-scheduler"} & {
                t.name for t in threading.enumerate()
            }
        assert store.backlog() == 1  # accepted, left for a process that processes
    finally:
        store.close()
