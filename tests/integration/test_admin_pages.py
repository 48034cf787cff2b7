"""The admin pages as HTML over loopback (no browser: tests/e2e/test_admin_browser.py drives one):
each renders with every kind of record a live segcrit makes, under its CSP, without a raw id."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from segcrit.domain import InboxEvent
from segcrit.emulator.state import EmulatorState
from tests.admin_harness import ADMIN_TOKEN, SHORT_RETRY_WINDOW, LiveAdmin, live_admin, poll

PAGES = (
    "/admin",
    "/admin/overview/numbers",
    "/admin/audiences",
    "/admin/audiences/vip",
    "/admin/deliveries",
    "/admin/deliveries?failed=1&endpoint=contact_list_patch&audience=vip",
    "/admin/events",
    "/admin/events/rows?accepted=0",
    "/admin/profiles",
    "/admin/profiles?id=u1",
    "/admin/profiles?id=nobody",
    "/admin/preview",
    "/admin/config",
)
STATIC = {
    "htmx.min.js": "javascript",
    "uPlot.iife.min.js": "javascript",
    "admin.js": "javascript",
    "admin.css": "text/css",
    "uPlot.min.css": "text/css",
}


def traffic(live: LiveAdmin, emulator_state: EmulatorState) -> None:
    """Deliveries, failures (token and PATCH), a dead letter, a refusal and a set-aside event."""
    context = {
        "personas": {"computation_class": "audience", "computation_key": "vip"},
        "traits": {"email": "one@shop.example"},
    }
    properties = {"audience_key": "vip", "vip": True}
    live.send(("track", {"user_id": "u1", "event": "Audience Entered", "properties": properties, "context": context}))
    poll(lambda: live.delivered("vip", 1), "vip delivered")
    emulator_state.set_faults("5xx=1")
    context["traits"] = {"email": "two@shop.example"}
    live.send(("track", {"user_id": "u2", "event": "Audience Entered", "properties": properties, "context": context}))
    poll(lambda: live.json("/api/dead-letters")["open"], "a dead letter")
    emulator_state.set_faults("none")
    httpx.post(live.url + "/v1/batch", auth=("WK", ""), json={"batch": [{"type": "track", "event": "x"}]})
    with live.store.transaction() as tx:
        tx.quarantine_event(InboxEvent(9_999, "web", {"type": "track", "userId": "u3", "event": "y"}, 1.0), "boom", 2.0)
    live.flush()


@pytest.fixture
def live(tmp_path: Path, emulator_url: str, emulator_state: EmulatorState) -> object:
    with live_admin(tmp_path, emulator_url, delivery=SHORT_RETRY_WINDOW) as running:
        traffic(running, emulator_state)
        yield running


def test_every_page_renders_under_its_csp_without_a_raw_identifier(live: LiveAdmin) -> None:
    csrf = live.login()
    for path in PAGES:
        page = live.http.get(live.url + path)
        text = page.text.replace(csrf, "")  # the session's CSRF token is an HMAC: 64 hex digits too
        assert page.status_code == 200, (path, page.text[-500:])
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"], path
        assert page.headers["cache-control"] == "no-store"
        assert "u1<" not in text and ">u1" not in text and "shop.example" not in text, path
        assert not re.search(r"[0-9a-f]{32}", text), path  # no whole hash anywhere
    deliveries = live.http.get(live.url + "/admin/deliveries").text
    assert "token" in deliveries and "retry window exhausted" in deliveries and "boom" in deliveries
    assert "No profile has that" in live.http.get(live.url + "/admin/profiles?id=nobody").text
    assert live.http.get(live.url + "/admin/audiences/nobody").status_code == 404


def test_static_assets_are_served_by_segcrit_and_pages_load_nothing_from_elsewhere(live: LiveAdmin) -> None:
    for name, kind in STATIC.items():
        asset = httpx.get(f"{live.url}/admin/static/{name}")  # no session needed for assets
        assert asset.status_code == 200 and kind in asset.headers["content-type"], name
    live.login()
    for path in PAGES:
        text = live.http.get(live.url + path).text
        for found in re.findall(r'(?:src|href)="([^"]+)"', text):
            assert found.startswith(("/admin", "data:", "#")), (path, found)


def test_login_never_sends_anyone_off_site_and_logout_ends_the_session(live: LiveAdmin) -> None:
    for target in ("https://evil.example/", "//evil.example/admin", "/admin\\@evil.example", "/api/overview"):
        answer = httpx.post(
            live.url + "/admin/login", data={"token": ADMIN_TOKEN, "next": target}, follow_redirects=False
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/admin", target
    kept = httpx.post(live.url + "/admin/login", data={"token": ADMIN_TOKEN, "next": "/admin/events?source=web"})
    assert kept.status_code == 303 and kept.headers["location"] == "/admin/events?source=web"

    csrf = live.login()
    assert live.http.post(live.url + "/admin/logout").status_code == 403  # a logout needs the CSRF token too
    out = live.http.post(live.url + "/admin/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and "segcrit_admin=" in out.headers["set-cookie"]
    assert "max-age=0" in out.headers["set-cookie"].lower() or "expires=" in out.headers["set-cookie"].lower()


def test_page_actions_need_the_session_csrf_token(live: LiveAdmin) -> None:
    csrf = live.login()
    refused = live.http.post(live.url + "/admin/dead-letters/replay")
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert live.json("/api/dead-letters")["open"] == 1
    done = live.http.post(live.url + "/admin/dead-letters/replay", headers={"x-csrf-token": csrf})
    assert done.status_code == 200 and "1 dead letter(s) put back" in done.text
    htmx_without_session = httpx.post(
        live.url + "/admin/profiles/forget", data={"id": "u1"}, headers={"HX-Request": "true"}
    )
    assert htmx_without_session.status_code == 204 and htmx_without_session.headers["hx-redirect"] == "/admin/login"
    assert live.json("/api/profiles/u1")["profiles"]
