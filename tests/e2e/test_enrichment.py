"""End to end: enrichment with real processes. `segcrit emulator` (also playing Segment's Profile
API, seeded from a file) and `segcrit serve` with a CRM table in a SQLite file beside it; Segment's
Python library sends Engage audience messages that carry nothing but a userId.

The verdict is the emulator's contact lists: they hold the email and phone hashes the CRM and the
Profile API gave; a CRM consent `false` takes the person out; a CRM table that disappears mid-run
stops nothing but enrichment, which catches up once the table is back. And no raw email, phone or
token from a lookup is in the database files or the logs.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from segment.analytics.client import Client

from segcrit.emulator.settings import criteo_section, sources_section
from tests.e2e.conftest import (
    SECRET,
    START_DEADLINE_SECS,
    WRITE_KEY,
    Emulator,
    Server,
    free_port,
    segcrit_command,
    wait_until,
)

pytestmark = pytest.mark.e2e

DEADLINE_SECS = 30.0
TOKEN = "e2e-profile-token-0f3c"
SPACE = "spa_e2e"
# (customer_id, email, phone, ad_consent)
CRM = [
    ("e1", "Alice.CRM@Example.com", "+33 6 12 34 56 01", 1),
    ("e2", "bob.crm@example.com", "+44 7911 123456", 1),
    ("e3", "carol.crm@example.com", "+1 415 555 2671", 0),  # said no in the CRM
    ("e5", "eve.crm@example.com", "+33 6 12 34 56 05", 1),
]
PROFILE_EMAIL = "dave.segment@example.com"
RAW = [email.lower() for _, email, _, _ in CRM] + [PROFILE_EMAIL, "612345601", "7911123456", "4155552671", TOKEN]

CONFIG = """\
store: sqlite:///segcrit.db
server: {{host: 127.0.0.1, port: {port}}}
{sources}{criteo}identity:
  send: [email, phoneNumber]
flows:
  - type: audience_sync
delivery:
  max_wait_secs: 0.5
  backoff_max_secs: 2          # enrichment retries a source on the delivery schedule
enrichment:
  - name: crm
    type: sql
    url: sqlite:///crm.db        # next to this file
    query: SELECT customer_id AS user_id, email, phone, ad_consent FROM customers WHERE customer_id IN :keys
    columns: {{email: email, phone: phone, consent: ad_consent}}
    ttl_minutes: 0.05            # looked up again every 3 s: the CRM's changes show within seconds
  - name: segment
    type: segment_profiles
    space_id: {space}
    access_token: {token}
    url: {api_url}
    traits: [lifetime_value]
"""


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def crm_sql(path: Path, statement: str, rows: Sequence[tuple[Any, ...]] = ()) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        if rows:
            db.executemany(statement, rows)
        else:
            db.execute(statement)


@pytest.fixture
def profiles_emulator(tmp_path: Path) -> Iterator[Emulator]:
    """`segcrit emulator --profiles FILE`: Criteo, and Segment's Profile API with one person in it."""
    seed = {
        "spaces": {
            SPACE: {
                "access_token": TOKEN,
                "profiles": [
                    {
                        "external_ids": [{"type": "user_id", "id": "e4"}, {"type": "email", "id": PROFILE_EMAIL}],
                        "traits": {"lifetime_value": 900},
                    }
                ],
            }
        }
    }
    seed_file = tmp_path / "profiles.json"
    seed_file.write_bytes(orjson.dumps(seed))
    port = free_port()
    log = (tmp_path / "emulator.log").open("wb")
    command = segcrit_command("emulator", "--port", str(port), "--profiles", str(seed_file))
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/_emulator/state", timeout=1).status_code == 200, START_DEADLINE_SECS, "emulator"
        )
        yield Emulator(url, process)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def enriched_server(tmp_path: Path, profiles_emulator: Emulator) -> Iterator[Server]:
    crm_sql(
        tmp_path / "crm.db",
        "CREATE TABLE customers (customer_id TEXT PRIMARY KEY, email TEXT, phone TEXT, ad_consent INTEGER)",
    )
    crm_sql(tmp_path / "crm.db", "INSERT INTO customers VALUES (?, ?, ?, ?)", CRM)
    port = free_port()
    config_path = tmp_path / "segcrit.yaml"
    config_path.write_text(
        CONFIG.format(
            port=port,
            sources=sources_section(WRITE_KEY, SECRET),
            criteo=criteo_section(profiles_emulator.url),
            api_url=profiles_emulator.url,
            space=SPACE,
            token=TOKEN,
        )
    )
    server = Server(f"http://127.0.0.1:{port}", config_path, (tmp_path / "serve.log").open("ab"))
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)
        server.log.close()


def send(server: Server, *user_ids: str, email: str | None = None) -> None:
    """Engage puts each person in cart_abandoners, through the Tracking API (a "Send Track")."""
    errors: list[Any] = []
    client = Client(WRITE_KEY, host=server.url, on_error=lambda e, _b: errors.append(e), max_retries=1)
    for user_id in user_ids:
        client.track(
            user_id,
            "Audience Entered",
            {"audience_key": "cart_abandoners", "cart_abandoners": True},
            context={
                "personas": {"computation_class": "audience", "computation_key": "cart_abandoners"},
                **({"traits": {"email": email}} if email else {}),
            },
        )
    client.flush()
    client.shutdown()
    assert errors == []  # every message was acknowledged, whatever the lookups are doing


def held(emulator: Emulator, kind: str) -> set[str]:
    return emulator.members().get("cart_abandoners", {}).get(kind, set())


def test_enrichment_reaches_criteo_obeys_the_crm_and_survives_the_crm_going_away(
    tmp_path: Path, profiles_emulator: Emulator, enriched_server: Server
) -> None:
    server, emulator, crm = enriched_server, profiles_emulator, tmp_path / "crm.db"
    server.start()
    send(server, "e1", "e2", "e3", "e4")

    alice, bob, carol = (sha(e.lower()) for _, e, _, _ in CRM[:3])
    alice_phone, bob_phone = sha("+33612345601"), sha("+447911123456")
    wait_until(
        lambda: (
            held(emulator, "email") == {alice, bob, sha(PROFILE_EMAIL)}
            and held(emulator, "phoneNumber") == {alice_phone, bob_phone}
        ),
        DEADLINE_SECS,
        "the CRM's and the Profile API's identifiers in Criteo",
        emulator.members,
    )
    assert carol not in held(emulator, "email")  # her CRM consent is false: she never went in

    # Alice says no in the CRM: at the next lookup she leaves, email and phone alike.
    crm_sql(crm, "UPDATE customers SET ad_consent = 0 WHERE customer_id = 'e1'")
    wait_until(
        lambda: alice not in held(emulator, "email") and alice_phone not in held(emulator, "phoneNumber"),
        DEADLINE_SECS,
        "alice removed after her CRM consent became false",
        emulator.members,
    )

    # The CRM table goes away: ingest and delivery go on, status and /metrics say so.
    crm_sql(crm, "ALTER TABLE customers RENAME TO customers_gone")
    wait_until(
        lambda: "NOT ANSWERING" in server.segcrit("status").stdout,
        DEADLINE_SECS,
        "segcrit status to show the CRM lookup failing",
        lambda: server.segcrit("status").stdout,
    )
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert 'segcrit_lookup_source_up{lookup="crm"} 0.0' in metrics
    send(server, "direct", email="frank@example.com")  # known by an email of their own
    send(server, "e5")  # in the CRM, which cannot answer now
    wait_until(
        lambda: sha("frank@example.com") in held(emulator, "email"),
        DEADLINE_SECS,
        "delivery to go on while the CRM is down",
    )
    assert sha("eve.crm@example.com") not in held(emulator, "email")

    # The table is back: enrichment catches up on its own.
    crm_sql(crm, "ALTER TABLE customers_gone RENAME TO customers")
    wait_until(
        lambda: sha("eve.crm@example.com") in held(emulator, "email"),
        DEADLINE_SECS,
        "enrichment to catch up once the CRM answers again",
        lambda: server.segcrit("status").stdout,
    )
    assert "NOT ANSWERING" not in server.segcrit("status").stdout
    assert server.terminate() == 0

    # Nothing a lookup returned is on disk or in a log in the clear (SPEC §8).
    files = [*tmp_path.glob("segcrit.db*"), tmp_path / "serve.log", tmp_path / "emulator.log"]
    written = b"".join(path.read_bytes() for path in files if path.exists()).lower()
    assert [raw for raw in RAW if raw.lower().encode() in written] == []
