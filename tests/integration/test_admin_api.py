"""The admin API (`/api/*`, SPEC §3.3) of a live segcrit: real traffic from Segment's Python
library, deliveries to the emulator over loopback, the answers as a script would read them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from segcrit.app import create_app
from segcrit.config import IdentityConfig
from segcrit.domain import InboxEvent
from segcrit.emulator.server import running_app
from segcrit.emulator.state import EmulatorState
from segcrit.identity.normalize import email_hashes
from segcrit.store.sqlite import SqliteStore
from tests.admin_harness import ADMIN_TOKEN, SHORT_RETRY_WINDOW, LiveAdmin, live_admin, poll
from tests.helpers import make_config

EMAILS = {f"u{i}": f"Person{i}@Shop.example" for i in range(1, 4)}


def sha(user: str) -> str:
    return email_hashes(EMAILS[user].lower())[0]


def personas(key: str) -> dict[str, Any]:
    return {"personas": {"computation_class": "audience", "computation_key": key}}


def enter_vip(live: LiveAdmin, *users: str) -> None:
    properties = {"audience_key": "vip", "vip": True}
    live.send(
        *[
            ("track", {"user_id": u, "event": "Audience Entered", "properties": properties, "context": context(u)})
            for u in users
        ]
    )


def context(user: str) -> dict[str, Any]:
    return {**personas("vip"), "traits": {"email": EMAILS[user]}}


@pytest.fixture
def live(tmp_path: Path, emulator_url: str) -> Any:
    with live_admin(tmp_path, emulator_url) as running:
        yield running


def test_without_an_admin_token_admin_and_api_are_off(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        with running_app(create_app(make_config(str(tmp_path / "s.db")), store, run_workers=False)) as url:
            for path in ("/admin", "/admin/login", "/api/overview", "/api/openapi.json", "/admin/static/htmx.min.js"):
                assert httpx.get(url + path).status_code == 404, path
    finally:
        store.close()


def _operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item]


def test_the_document_is_openapi_3_1_with_every_route_of_the_spec(live: LiveAdmin) -> None:
    response = httpx.get(live.url + "/api/openapi.json")  # no token needed
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    spec_routes = {
        ("GET", "/api/overview"),
        ("GET", "/api/audiences"),
        ("GET", "/api/audiences/{name}"),
        ("POST", "/api/audiences/{name}/resync"),
        ("GET", "/api/deliveries"),
        ("GET", "/api/dead-letters"),
        ("POST", "/api/dead-letters/replay"),
        ("GET", "/api/failed-events"),
        ("POST", "/api/failed-events/replay"),
        ("GET", "/api/profiles/{id}"),
        ("DELETE", "/api/profiles/{id}"),
        ("POST", "/api/preview"),
        ("GET", "/api/config"),
    }
    assert spec_routes <= set(_operations(document))
    audience = document["components"]["schemas"]["Audience"]["properties"]
    for name in ("name", "segment_id", "desired", "acknowledged", "pending_add", "pending_remove"):
        assert name in audience
    assert {"dead_letters", "last_sync_at"} <= set(audience)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + base64.b64encode(b"admin:x").decode()}],
    ids=["none", "wrong-bearer", "basic"],
)
def test_without_a_valid_token_every_route_answers_401_json_and_changes_nothing(
    live: LiveAdmin, headers: dict[str, str]
) -> None:
    enter_vip(live, "u1")
    poll(lambda: live.delivered("vip", 1), "delivery")
    document = httpx.get(live.url + "/api/openapi.json").json()
    for method, path in _operations(document):
        url = live.url + path.replace("{name}", "vip").replace("{id}", "u1")
        response = httpx.request(method, url, headers=headers, json={"type": "track"} if method == "POST" else None)
        assert response.status_code == 401, (method, path)
        assert response.json()["code"] == "unauthorized"
    assert live.json("/api/profiles/u1")["profiles"]  # DELETE did not forget anyone
    assert live.store.resync_state("vip") is None
    page = httpx.get(live.url + "/admin/audiences", headers=headers, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/admin/login")


def test_a_session_needs_its_csrf_token_for_changes(live: LiveAdmin) -> None:
    csrf = live.login()  # the cookie is now in live.http
    cookie_only = httpx.Client(cookies=live.http.cookies, timeout=10)
    try:
        assert cookie_only.get(live.url + "/api/overview").status_code == 200
        refused = cookie_only.post(live.url + "/api/dead-letters/replay")
        assert refused.status_code == 403 and refused.json()["code"] == "csrf"
        assert (
            cookie_only.post(live.url + "/api/dead-letters/replay", headers={"x-csrf-token": "0" * 64}).status_code
            == 403
        )
        done = cookie_only.post(live.url + "/api/dead-letters/replay", headers={"x-csrf-token": csrf})
        assert done.status_code == 200 and done.json() == {"replayed": 0}
        assert cookie_only.delete(live.url + "/api/profiles/u1").status_code == 403
    finally:
        cookie_only.close()
    set_cookie = httpx.post(live.url + "/admin/login", data={"token": ADMIN_TOKEN}).headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie


def test_audiences_deliveries_events_and_overview_show_real_traffic(
    live: LiveAdmin, emulator_state: EmulatorState
) -> None:
    enter_vip(live, "u1", "u2", "u3")
    refused = httpx.post(
        live.url + "/v1/batch",
        auth=("WK", ""),
        json={"batch": [{"type": "track", "event": "Signed Up", "properties": {"email": "Leak@Shop.example"}}]},
    )
    assert refused.status_code == 200 and refused.json()["rejected"][0]["reason"] == "neither userId nor anonymousId"
    poll(lambda: live.delivered("vip", 3), "vip delivered")
    live.flush()

    vip = live.audience("vip")
    assert vip is not None
    assert vip["segment_id"] == emulator_state.segment("vip").id
    assert (vip["desired"], vip["acknowledged"], vip["pending_add"], vip["pending_remove"], vip["dead_letters"]) == (
        3,
        3,
        0,
        0,
        0,
    )
    assert vip["last_sync_at"] is not None

    detail = live.json("/api/audiences/vip")
    [patch] = [c for c in detail["recent_calls"] if c["endpoint"] == "contact_list_patch"]
    assert (patch["status"], patch["ok"], patch["summary"]["operation"], patch["summary"]["count"]) == (
        200,
        True,
        "add",
        3,
    )
    assert all(v.endswith("…") and len(v) == 9 for v in patch["summary"]["identifiers"])

    calls = live.json("/api/deliveries", params={"endpoint": "contact_list_patch", "failed": "false"})["calls"]
    assert [c["audience"] for c in calls] == ["vip"]
    assert live.json("/api/deliveries", params={"failed": "true"})["calls"] == []

    overview = live.json("/api/overview")
    assert overview["events_in_last_hour"] == 3 and overview["events_refused_last_hour"] == 1
    assert {"endpoint": "contact_list_patch", "status": "200", "count": 1} in overview["criteo_calls"]
    assert sum(v or 0 for v in overview["charts"]["series"]["events_in"]) == 3
    assert (overview["backlog"], overview["pending_changes"], overview["dead_letters"]) == (0, 0, 0)

    events = live.json("/api/events")["samples"]
    [refusal] = [s for s in events if not s["accepted"]]
    assert refusal["reason"] == "neither userId nor anonymousId" and refusal["event"] == "Signed Up"
    accepted = [s for s in events if s["accepted"]]
    assert len(accepted) == 3 and all(s["message"]["userId"].endswith("…") for s in accepted)

    everything = orjson.dumps([vip, detail, calls, overview, events]).decode()
    for user in EMAILS:
        assert sha(user) not in everything
    for path in Path(live.store.path).parent.glob("s.db*"):  # the refused email never reached disk
        assert b"shop.example" not in path.read_bytes().lower()


def test_profile_lookup_by_email_and_forget(live: LiveAdmin, emulator_state: EmulatorState) -> None:
    enter_vip(live, "u1", "u2")
    poll(lambda: live.delivered("vip", 2), "vip delivered")
    live.flush()

    for wanted in ("u1", " PERSON1@shop.example "):
        lookup = live.json(f"/api/profiles/{wanted}")
        [profile] = lookup["profiles"]
        kinds = {i["kind"]: i["value"] for i in profile["identifiers"]}
        assert kinds["email"] == sha("u1")[:8] + "…" and kinds["user_id"] != "u1"
        [vip] = profile["memberships"]
        assert (vip["audience"], vip["member"], vip["desired"], vip["acknowledged"]) == ("vip", True, 1, 1)
        assert [e["event"] for e in profile["recent_events"]] == ["Audience Entered"]
        assert "u1" not in orjson.dumps(lookup).decode()

    forgotten = live.api("DELETE", "/api/profiles/Person1@Shop.example")
    assert forgotten.status_code == 200 and forgotten.json()["erased"] == 1
    assert live.api("GET", "/api/profiles/u1").status_code == 404
    poll(lambda: emulator_state.members("vip", "email") == {sha("u2")}, "u1 removed from Criteo")
    assert live.store.samples_of(["u1"], [], []) == []  # their debugger samples went with them


def test_preview_shows_what_a_message_would_do_and_keeps_nothing(live: LiveAdmin) -> None:
    message = {
        "type": "track",
        "userId": "u9",
        "event": "Audience Entered",
        "properties": {"audience_key": "vip", "vip": True},
        "context": {**personas("vip"), "traits": {"email": "nine@shop.example"}},
    }
    answer = live.api("POST", "/api/preview", json=message)
    assert answer.status_code == 200
    result = answer.json()
    [entry] = result["messages"]
    assert entry["changes"] == [{"flow": "audience_sync", "change": "enter", "audience": "vip"}]
    [request] = entry["requests"]
    assert request["method"] == "PATCH" and request["url"].endswith("/contact-list")
    assert request["body"]["data"]["attributes"]["identifiers"] == [email_hashes("nine@shop.example")[0][:8] + "…"]
    assert "audience_sync: enter vip" in result["text"]
    assert live.api("GET", "/api/profiles/u9").status_code == 404  # nothing kept

    bad = live.api("POST", "/api/preview", json={"type": "track", "event": "x"})
    assert bad.status_code == 200 and bad.json()["rejected"] == [
        {"index": 0, "reason": "neither userId nor anonymousId"}
    ]
    assert live.api("POST", "/api/preview", json=["not", "an", "object"]).status_code == 422
    huge = live.api("POST", "/api/preview", content=b"{" + b" " * 1_100_000 + b"}")
    assert huge.status_code == 413


def test_dead_letters_replay_through_the_api(tmp_path: Path, emulator_url: str, emulator_state: EmulatorState) -> None:
    with live_admin(tmp_path, emulator_url, delivery=SHORT_RETRY_WINDOW) as live:
        emulator_state.set_faults("5xx=1")  # Criteo down for longer than the retry window
        enter_vip(live, "u1")
        letters = poll(lambda: live.json("/api/dead-letters")["dead_letters"], "a dead letter")
        assert (letters[0]["audience"], letters[0]["kind"], letters[0]["operation"]) == ("vip", "contact_list", "add")
        assert "retry window exhausted" in letters[0]["error"]
        vip = live.audience("vip")
        assert vip is not None and (vip["dead_letters"], vip["dead_letter_batches"], vip["pending_add"]) == (1, 1, 0)

        emulator_state.set_faults("none")
        replayed = live.api("POST", "/api/dead-letters/replay", params={"audience": "vip"})
        assert replayed.status_code == 200 and replayed.json() == {"replayed": 1}
        poll(lambda: live.delivered("vip", 1), "the replayed change delivered")
        assert emulator_state.members("vip", "email") == {sha("u1")}
        assert live.json("/api/dead-letters") == {"dead_letters": [], "open": 0}
        live.flush()
        failed = live.json("/api/deliveries", params={"failed": "true"})["calls"]
        assert failed and all(c["status"] >= 500 or c["status"] == 0 for c in failed)


def test_set_aside_events_are_listed_masked_and_replayed(live: LiveAdmin) -> None:
    message = {
        "type": "identify",
        "userId": "u7",
        "messageId": "m-7",
        "traits": {"plan": "gold"},
        "_segcrit": {"emails": [{"sha256": sha("u1"), "md5": "0" * 32}], "phones": []},
    }
    with live.store.transaction() as tx:  # processing failed on it (fault injection: not reproducible by traffic)
        tx.quarantine_event(InboxEvent(10_001, "web", message, 1.0), "RuntimeError: disk hiccup", 2.0)
    listed = live.json("/api/failed-events")
    assert listed["total"] == 1
    [event] = listed["failed_events"]
    assert (event["seq"], event["type"], event["error"]) == (10_001, "identify", "RuntimeError: disk hiccup")
    assert event["message"]["userId"] != "u7" and sha("u1") not in orjson.dumps(event).decode()

    replayed = live.api("POST", "/api/failed-events/replay")
    assert replayed.status_code == 200 and replayed.json() == {"replayed": 1}
    poll(lambda: live.api("GET", "/api/profiles/u7").status_code == 200, "the replayed event processed")
    assert live.json("/api/failed-events") == {"failed_events": [], "total": 0}


def test_resync_is_run_by_the_delivery_thread(live: LiveAdmin, emulator_state: EmulatorState) -> None:
    enter_vip(live, "u1", "u2")
    poll(lambda: live.delivered("vip", 2), "vip delivered")
    emulator_state.amend(emulator_state.segment("vip"), "add", "email", {"f" * 64})  # edited by hand in Criteo

    queued = live.api("POST", "/api/audiences/vip/resync")
    assert queued.status_code == 202 and queued.json()["audience"] == "vip"
    done = poll(
        lambda: (r := live.json("/api/audiences/vip")["resync"]) and r["state"] == "done" and r, "the resync done"
    )
    assert "2 identifier" in done["result"]
    assert emulator_state.members("vip", "email") == {sha("u1"), sha("u2")}
    assert live.api("POST", "/api/audiences/nobody/resync").status_code == 404
    assert live.api("GET", "/api/audiences/nobody").status_code == 404


def test_config_is_shown_with_secrets_masked_and_check_warnings(tmp_path: Path, emulator_url: str) -> None:
    with live_admin(tmp_path, emulator_url, identity=IdentityConfig(send=["email"], email_hash="none")) as live:
        view = live.json("/api/config")
        text = orjson.dumps(view).decode()
        for secret in (ADMIN_TOKEN, "demo-secret", '"WK"', 'SECRET"'):
            assert secret not in text
        assert view["config"]["criteo"]["client_secret"] == "**********"
        assert view["config"]["sources"][0]["write_key"] == "**********"
        assert any(w.startswith("identity.email_hash") for w in view["warnings"])
