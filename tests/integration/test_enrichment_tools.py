"""The enrichment tools people use by hand: `segcrit enrich ID` (real subprocesses, a real CRM file,
the emulator's Profile API) and the emulator's Profile API itself, as a plain HTTP client sees it."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import orjson
import pytest

from segcrit.emulator import EmulatorState, running_emulator
from segcrit.emulator.profiles import ProfileApiState
from tests.helpers import BASE_CONFIG
from tests.integration.test_cli import assert_one_line_error, segcrit

SPACE, TOKEN = "spa_tools", "tools-token"
PROFILES = f"/v1/spaces/{SPACE}/collections/users/profiles"
LOOKUPS = """\
enrichment:
  - name: crm
    type: sql
    url: sqlite:///crm.db
    query: SELECT customer_id AS user_id, email, phone, ad_consent, tier FROM customers WHERE customer_id IN :keys
    columns: {{email: email, phone: phone, consent: ad_consent}}
  - name: crm_by_email
    type: sql
    url: sqlite:///crm.db
    key: email
    query: SELECT lower(email) AS email, tier FROM customers WHERE lower(email) IN :keys
  - name: segment
    type: segment_profiles
    space_id: {space}
    access_token: {token}
    url: {url}
    traits: [lifetime_value]
"""


@pytest.fixture
def profiles() -> ProfileApiState:
    seed = {
        "spaces": {
            SPACE: {
                "access_token": TOKEN,
                "profiles": [
                    {
                        "external_ids": [
                            {"type": "user_id", "id": "u1"},
                            {"type": "email", "id": "jane.doe@example.com"},
                            *({"type": "anonymous_id", "id": f"a{i}"} for i in range(5)),
                        ],
                        "traits": {"lifetime_value": 1500, "vip_tier": "gold"},
                    }
                ],
            }
        }
    }
    return ProfileApiState(seed)


@pytest.fixture
def url(profiles: ProfileApiState) -> Iterator[str]:
    with running_emulator(EmulatorState(), profiles=profiles, stop_timeout_secs=0) as base:
        yield base


@pytest.fixture
def config_file(tmp_path: Path, url: str) -> Path:
    with closing(sqlite3.connect(tmp_path / "crm.db")) as db, db:
        db.execute("CREATE TABLE customers (customer_id TEXT, email TEXT, phone TEXT, ad_consent INTEGER, tier TEXT)")
        db.execute("INSERT INTO customers VALUES ('u1', 'Jane.Doe@example.com', '+33 6 12 34 56 78', 0, 'gold')")
    path = tmp_path / "segcrit.yaml"
    text = BASE_CONFIG.format(db="segcrit.db", api_url="http://127.0.0.1:9", max_wait=2)
    path.write_text(text + LOOKUPS.format(space=SPACE, token=TOKEN, url=url))
    return path


# ---------------------------------------------------------------------------------- segcrit enrich


def test_enrich_prints_what_each_lookup_returned_masked(tmp_path: Path, config_file: Path) -> None:
    result = segcrit("enrich", "u1", "--config", str(config_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "crm (sql, key user_id u1): found",
        "  emails: j***@e***.com",
        "  phones: +33*******78",
        "  consent: false",
        "  traits: tier='gold'",
        "crm_by_email (sql, key email): nothing looked up: no email to look up by: give the email itself as ID "
        "(segcrit keeps only its hash)",
        "segment (segment_profiles, key user_id u1): found",
        "  emails: j***@e***.com",
        "  ids: user_id u1***, anonymous_id a0***, anonymous_id a1***, anonymous_id a2***, anonymous_id a3***, "
        "anonymous_id a4***",
        "  consent: no value",
        "  traits: lifetime_value=1500",
    ]
    assert "jane" not in (result.stdout + result.stderr).lower() and "5678" not in result.stdout
    assert not (tmp_path / "segcrit.db").exists()  # it stores nothing, not even an empty store


def test_enrich_by_email_and_for_an_unknown_person(tmp_path: Path, config_file: Path) -> None:
    result = segcrit("enrich", " JANE.doe@Example.com", "--config", str(config_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "crm_by_email (sql, key email j***@e***.com): found" in result.stdout
    unknown = segcrit("enrich", "nobody", "--config", str(config_file), cwd=tmp_path)
    assert [line for line in unknown.stdout.splitlines() if line.endswith("not found")] == [
        "crm (sql, key user_id nobody): not found",
        "segment (segment_profiles, key user_id nobody): not found",
    ]


def test_enrich_shows_a_failing_source_and_exits_non_zero(tmp_path: Path, config_file: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "crm.db")) as db, db:
        db.execute("ALTER TABLE customers RENAME TO gone")
    result = segcrit("enrich", "u1", "--config", str(config_file), cwd=tmp_path)
    assert "crm (sql, key user_id u1): error: OperationalError: no such table: customers" in result.stdout
    assert "segment (segment_profiles, key user_id u1): found" in result.stdout  # the others still ran
    assert assert_one_line_error(result) == "error: lookup(s) failed: crm"


def test_enrich_without_lookups_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "segcrit.yaml"
    path.write_text(BASE_CONFIG.format(db="segcrit.db", api_url="http://127.0.0.1:9", max_wait=2))
    line = assert_one_line_error(segcrit("enrich", "u1", "--config", str(path), cwd=tmp_path))
    assert line == "error: no lookups to run: the config has no `enrichment:` section"


# ------------------------------------------------------------------------ the emulated Profile API


def test_the_profile_api_answers_in_segments_shapes(url: str) -> None:
    auth = (TOKEN, "")
    traits = httpx.get(f"{url}{PROFILES}/user_id:u1/traits", params={"include": "lifetime_value"}, auth=auth)
    assert traits.status_code == 200 and traits.headers["request-id"]
    assert traits.json()["traits"] == {"lifetime_value": 1500}
    assert traits.json()["cursor"]["has_more"] is False

    first = httpx.get(f"{url}{PROFILES}/user_id:u1/external_ids", params={"limit": 4}, auth=auth).json()
    assert [i["type"] for i in first["data"]] == ["user_id", "email", "anonymous_id", "anonymous_id"]
    assert first["data"][0] == {
        "source_id": "emulator",
        "collection": "users",
        "id": "u1",
        "type": "user_id",
        "created_at": "2024-01-01T00:00:00Z",
        "encoding": "none",
    }
    assert first["cursor"]["has_more"] is True
    rest = httpx.get(
        f"{url}{PROFILES}/email:jane.doe%40example.com/external_ids",
        params={"limit": 4, "next": first["cursor"]["next"]},
        auth=auth,
    ).json()
    assert [i["id"] for i in rest["data"]] == ["a2", "a3", "a4"] and rest["cursor"]["has_more"] is False


@pytest.mark.parametrize(
    ("path", "auth", "status", "code"),
    [
        ("/user_id:u1/traits", ("wrong", ""), 401, "authentication_error"),
        ("/user_id:u1/traits", None, 401, "authentication_error"),
        ("/user_id:nobody/traits", (TOKEN, ""), 404, "not_found"),
        ("/user_id:U1/traits", (TOKEN, ""), 404, "not_found"),  # Segment wants ids in lower case
        ("/u1/traits", (TOKEN, ""), 400, "validation_error"),
        ("/user_id:u1/external_ids?limit=101", (TOKEN, ""), 400, "validation_error"),
    ],
)
def test_the_profile_api_refuses_as_segment_does(
    url: str, path: str, auth: tuple[str, str] | None, status: int, code: str
) -> None:
    response = httpx.get(f"{url}{PROFILES}{path}", auth=auth)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_the_profile_api_allows_100_requests_a_second_per_space(url: str, profiles: ProfileApiState) -> None:
    from segcrit.clock import FakeClock

    profiles.clock = FakeClock()  # every request in the same second
    with httpx.Client(auth=(TOKEN, "")) as client:
        statuses = [client.get(f"{url}{PROFILES}/user_id:u1/traits").status_code for _ in range(101)]
    assert statuses.count(200) == 100 and statuses[-1] == 429
    assert (
        httpx.get(f"{url}{PROFILES}/user_id:u1/traits", auth=(TOKEN, "")).json()["error"]["code"] == "rate_limit_error"
    )


# ------------------------------------------------------------------------ emails held in memory


def test_ingest_remembers_emails_in_memory_for_lookups_keyed_by_email(tmp_path: Path) -> None:
    """Both receivers hand the emails they accept to the process's memory, and only then."""
    from segcrit.app import create_app
    from segcrit.config import parse_config
    from segcrit.emulator.server import running_app
    from segcrit.enrichment.memory import EMAILS
    from segcrit.identity.normalize import email_hashes
    from segcrit.store.sqlite import SqliteStore

    def config(lookup: str) -> str:
        text = BASE_CONFIG.format(db=tmp_path / "segcrit.db", api_url="http://127.0.0.1:9", max_wait=2)
        return text + f"enrichment:\n  - {lookup}\n"

    by_email = (
        "{name: c, type: sql, url: 'sqlite:///c.db', key: email, query: 'SELECT email FROM t WHERE email IN :keys'}"
    )
    by_user = "{name: c, type: sql, url: 'sqlite:///c.db', query: 'SELECT user_id FROM t WHERE user_id IN :keys'}"
    web = {"type": "identify", "userId": "u1", "traits": {"email": " Web.Person@Example.com"}}
    engage = orjson.dumps({"type": "identify", "userId": "u2", "traits": {"email": "engage.person@example.com"}})
    signature = hmac.new(b"SECRET", engage, hashlib.sha1).hexdigest()
    shas = [email_hashes(email)[0] for email in ("web.person@example.com", "engage.person@example.com")]
    EMAILS.clear()
    store = SqliteStore(str(tmp_path / "segcrit.db"))
    try:
        for lookup, remembered in (
            (by_user, [None, None]),
            (by_email, ["web.person@example.com", "engage.person@example.com"]),
        ):
            app = create_app(parse_config(config(lookup), env={}), store, run_workers=False)
            with running_app(app) as base:
                assert httpx.post(f"{base}/v1/identify", json=web, auth=("WK", "")).status_code == 200
                hook = httpx.post(f"{base}/webhooks/engage", content=engage, headers={"X-Signature": signature})
                assert hook.status_code == 200
            assert [EMAILS.email_of(sha) for sha in shas] == remembered
    finally:
        EMAILS.clear()
        store.close()
