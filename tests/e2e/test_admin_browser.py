"""The admin UI in real headless Chromium (Debian's `chromium`, driven by Playwright) against real
`segcrit serve` and `segcrit emulator` processes, with Segment's Python library sending traffic.

A person logs in, sees an audience filled by that traffic, opens it, replays a dead letter and
sees it delivered, looks a person up and forgets them, previews a message; no page logs a console
error; a wrong token sees and does nothing. Screenshots go to the test's folder, and to
$SEGCRIT_SCREENSHOT_DIR when set (the README's come from there).

Without Chromium the tests are skipped, saying why; with the CI variable set they fail instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics.client import Client

from segcrit.emulator.settings import criteo_section, sources_section
from tests.e2e.conftest import WRITE_KEY, Emulator, Server, free_port, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "e2e-admin-token-5f0c2a"
DEADLINE_SECS = 25.0
# A retry window of 3.6 s: while the emulator fails every call, a change becomes a dead letter fast.
CONFIG = """\
store: sqlite:///segcrit.db
server: {{host: 127.0.0.1, port: {port}, admin_token: {token}}}
{sources}{criteo}identity:
  send: [email]
flows:
  - type: audience_sync
delivery:
  max_wait_secs: 0.3
  retry_window_hours: 0.001
  backoff_initial_secs: 0.2
  backoff_max_secs: 0.5
"""
EMAILS = {f"u{i}": f"Shopper{i}@Example.com" for i in range(1, 6)}


def sha(user: str) -> str:
    return hashlib.sha256(EMAILS[user].lower().encode()).hexdigest()


def _unavailable() -> str | None:
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _unavailable()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def admin_server(tmp_path: Path, emulator: Emulator) -> Iterator[Server]:
    port = free_port()
    config = tmp_path / "segcrit.yaml"
    config.write_text(
        CONFIG.format(port=port, token=TOKEN, sources=sources_section(WRITE_KEY), criteo=criteo_section(emulator.url))
    )
    server = Server(f"http://127.0.0.1:{port}", config, (tmp_path / "serve.log").open("ab"))
    try:
        server.start()
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.terminate()
        server.log.close()


class Browsing:
    """One browser page, with every console error and uncaught exception of every page kept."""

    def __init__(self, browser: Any, base_url: str, shots: Path) -> None:
        self.context = browser.new_context(base_url=base_url, viewport={"width": 1360, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        # Which request a "Failed to load resource" error was about (the console does not say).
        self.failed: list[str] = []
        self.page.on(
            "response",
            lambda r: self.failed.append(f"{r.status} {r.request.method} {r.url}") if r.status >= 400 else None,
        )
        self.page.on("dialog", lambda dialog: dialog.accept())  # "Forget this person for good?" -> yes
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> Any:
        self.page.goto(path)
        self.page.wait_for_load_state("networkidle")
        return self.page

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        keep = os.environ.get("SEGCRIT_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)

    def reload_until(self, path: str, text: str, what: str) -> None:
        """Reload `path` until `text` shows (the recorder writes calls every few seconds)."""

        def shows() -> bool:
            self.open(path)
            return text in self.page.content()

        wait_until(shows, DEADLINE_SECS, what)

    def close(self) -> None:
        self.context.close()


def send(server: Server, *messages: tuple[str, str, dict[str, Any]]) -> None:
    errors: list[Any] = []
    client = Client(WRITE_KEY, host=server.url, on_error=lambda e, _b: errors.append(e))
    for user, event, properties in messages:
        context = {
            "personas": {"computation_class": "audience", "computation_key": "vip"},
            "traits": {"email": EMAILS[user]},
        }
        client.track(user, event, properties, context=context)
    client.flush()
    client.join()
    assert errors == []


def enter_vip(server: Server, *users: str) -> None:
    send(server, *[(u, "Audience Entered", {"audience_key": "vip", "vip": True}) for u in users])


def set_faults(emulator: Emulator, spec: str) -> None:
    assert httpx.post(f"{emulator.url}/_emulator/faults", json={"spec": spec}, timeout=5).status_code == 200


def api(server: Server, path: str) -> Any:
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()


def test_an_operator_runs_segcrit_from_the_browser(
    browser: Any, admin_server: Server, emulator: Emulator, tmp_path: Path
) -> None:
    enter_vip(admin_server, "u1", "u2", "u3")
    wait_until(
        lambda: emulator.members().get("vip", {}).get("email") == {sha(u) for u in ("u1", "u2", "u3")}, 20, "vip"
    )
    refused = httpx.post(
        admin_server.url + "/v1/batch", auth=(WRITE_KEY, ""), json={"batch": [{"type": "track", "event": "Oops"}]}
    )
    assert refused.json()["rejected"]

    b = Browsing(browser, admin_server.url, tmp_path / "screens")
    try:
        page = b.open("/admin")
        assert page.url.endswith("/admin/login?next=%2Fadmin")
        page.fill("#token", TOKEN)
        b.shot("admin-login")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/admin$"))

        # Overview: the numbers and charts come from the per-minute counters the recorder writes.
        b.reload_until("/admin", "contact_list_patch", "the overview to show the Criteo calls")
        assert page.inner_text("[data-testid=events-in]") == "3"
        assert page.locator("figure.chart canvas").count() == 4
        b.shot("admin-overview")

        # Audiences: the one the traffic filled, then its page.
        b.open("/admin/audiences")
        row = page.locator("tr", has_text="vip")
        assert re.search(r"vip\s+\d+\s+3\s+3\s+0\s+0\s+0", row.inner_text())
        b.shot("admin-audiences")
        row.locator("a", has_text="vip").click()
        page.wait_for_url(re.compile(r"/admin/audiences/vip$"))
        b.reload_until("/admin/audiences/vip", "contact_list_patch", "the audience's calls")
        assert page.inner_text("[data-testid=acknowledged]") == "3"

        # Criteo fails for longer than the retry window: a dead letter, replayed once it is back.
        set_faults(emulator, "5xx=1")
        enter_vip(admin_server, "u4")
        wait_until(lambda: api(admin_server, "/api/dead-letters")["open"] == 1, DEADLINE_SECS, "a dead letter")
        set_faults(emulator, "none")
        b.open("/admin/audiences/vip")
        assert page.inner_text("[data-testid=dead]") == "1"
        page.click("button:has-text('Replay dead letters')")
        page.wait_for_selector("#action-result .notice.good")
        assert "1 dead letter(s) of vip put back" in page.inner_text("#action-result")
        wait_until(lambda: sha("u4") in emulator.members()["vip"]["email"], DEADLINE_SECS, "u4 delivered")
        b.reload_until("/admin/audiences/vip", 'data-testid="acknowledged">4<', "4 acknowledged")
        assert page.inner_text("[data-testid=dead]") == "0"
        wait_until(  # the recorder writes calls every few seconds: the replayed one shows up
            lambda: b.open("/admin/audiences/vip").locator("table.calls tr.ok").count() == 2, DEADLINE_SECS, "the call"
        )
        b.shot("admin-audience")

        # Deliveries: the failed calls are there, with their status.
        b.open("/admin/deliveries?failed=1")
        assert page.locator("table.calls tr.bad").count() >= 1
        b.open("/admin/deliveries")
        b.shot("admin-deliveries")

        # Events: the latest accepted and refused messages, identifiers masked.
        b.open("/admin/events")
        assert "neither userId nor anonymousId" in page.inner_text("#event-rows")
        assert sha("u1") not in page.content() and "Shopper1" not in page.content()
        page.locator("#event-rows details summary").first.click()  # reading one holds the live refresh
        b.shot("admin-events")

        # Profiles: look a person up by email, then forget them.
        b.open("/admin/profiles")
        page.fill("input[name=id]", EMAILS["u1"])
        page.click("button:has-text('Look up')")
        page.wait_for_selector("section.profile")
        text = page.inner_text("section.profile")
        assert sha("u1")[:8] + "…" in text and sha("u1") not in page.content()
        assert "vip" in text and "not stated" in text  # no consent object came: when_missing allows
        b.shot("admin-profile")
        page.click("button:has-text('Forget')")
        page.wait_for_selector("#forget-result .notice.good")
        assert "erased 1 profile(s)" in page.inner_text("#forget-result")
        wait_until(lambda: sha("u1") not in emulator.members()["vip"]["email"], DEADLINE_SECS, "u1 removed from Criteo")
        b.open("/admin/profiles?id=" + EMAILS["u1"].replace("@", "%40"))
        assert "No profile has that" in page.inner_text("main")

        # Preview: paste a message, then pick a recent one.
        b.open("/admin/preview")
        page.fill(
            "#message",
            '{"type": "track", "userId": "u5", "event": "Audience Entered", "properties": {"audience_key": "vip",'
            ' "vip": true}, "context": {"personas": {"computation_class": "audience", "computation_key": "vip"},'
            ' "traits": {"email": "shopper5@example.com"}}}',
        )
        page.click("form button:has-text('Preview')")
        page.wait_for_selector("section.preview-result")
        result = page.inner_text("section.preview-result")
        assert "audience_sync: enter vip" in result and "PATCH" in result and sha("u5")[:8] + "…" in result
        b.shot("admin-preview")
        page.locator("ul.recent button").first.click()
        page.wait_for_function("document.querySelector('#preview-result').innerText.includes('Profile #')")
        assert api(admin_server, "/api/profiles/u5") == {
            "error": "no profile has that userId, anonymousId or email",
            "code": "unknown_profile",
            "message": "no profile has that userId, anonymousId or email",
        }  # a preview keeps nothing

        # Config: secrets masked.
        b.open("/admin/config")
        assert "**********" in page.inner_text("pre.config")
        assert TOKEN not in page.content() and "demo-secret" not in page.content()
        b.shot("admin-config")

        # Log out: the session is over.
        page.click("button:has-text('Log out')")
        page.wait_for_url(re.compile(r"/admin/login$"))
        b.open("/admin/audiences")
        assert "/admin/login" in page.url
    finally:
        b.close()
    assert b.errors == [], (b.errors, b.failed)


def test_a_wrong_token_sees_and_does_nothing(
    browser: Any, admin_server: Server, emulator: Emulator, tmp_path: Path
) -> None:
    enter_vip(admin_server, "u1")
    wait_until(lambda: emulator.members().get("vip", {}).get("email") == {sha("u1")}, 20, "vip")
    b = Browsing(browser, admin_server.url, tmp_path / "screens")
    try:
        page = b.open("/admin/login")
        page.fill("#token", "not-the-token")
        page.click("button[type=submit]")
        page.wait_for_selector(".notice.bad")
        assert "not valid" in page.inner_text(".notice.bad")
        assert [c for c in b.context.cookies() if c["name"] == "segcrit_admin"] == []

        # A forged cookie does not open anything either.
        b.context.add_cookies([{"name": "segcrit_admin", "value": "9999999999.abc.def", "url": admin_server.url}])
        for path in ("/admin", "/admin/audiences/vip", "/admin/profiles?id=u1", "/admin/config"):
            b.open(path)
            assert "/admin/login" in page.url and "vip" not in page.inner_text("main"), path
        for method, path in (
            ("GET", "/api/audiences"),
            ("DELETE", "/api/profiles/u1"),
            ("POST", "/api/dead-letters/replay"),
        ):
            status = page.evaluate(
                "([m, p]) => fetch(p, {method: m, headers: {Authorization: 'Bearer wrong'}}).then(r => r.status)",
                [method, path],
            )
            assert status == 401, (method, path)
        forged = page.evaluate(
            "() => fetch('/admin/profiles/forget', {method: 'POST', body: 'id=u1',"
            " headers: {'Content-Type': 'application/x-www-form-urlencoded'}, redirect: 'manual'}).then(r => r.type)"
        )
        assert forged == "opaqueredirect"  # sent to the login page, nothing done
    finally:
        b.close()
    assert api(admin_server, "/api/profiles/u1")["profiles"]  # still there
    assert emulator.members()["vip"]["email"] == {sha("u1")}
