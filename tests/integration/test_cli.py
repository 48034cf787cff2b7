"""The `segcrit` console script as users run it (SPEC §2): real subprocesses, real config files.

What each command prints and its exit status are promises: scripts check `segcrit check`'s exit
code, a user mistake is one line on stderr and never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from segcrit.clock import FakeClock
from segcrit.domain import AudienceRecord, TargetKey
from segcrit.emulator import EmulatorState
from segcrit.identity.normalize import email_hashes
from segcrit.metrics import Metrics
from segcrit.processing.engine import Processor
from segcrit.store.sqlite import SqliteStore
from tests.helpers import BASE_CONFIG, audience_event, make_config, put

T0 = 1_800_000_000.0
LATER = T0 + 10**7  # "now" far enough ahead that every change is due
UNREACHABLE = "http://127.0.0.1:9"  # commands that must not call Criteo get a dead address
RUN_TIMEOUT_SECS = 60
JANE_SHA = email_hashes("jane.doe@example.com")[0]
JANE_IDS = (("email", JANE_SHA), ("madid", "AD-1"))
COMMANDS = {"serve", "check", "demo", "emulator", "status", "replay", "forget", "preview", "import", "resync", "init"}
COMMANDS |= {"enrich", "migrate"}


def segcrit(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (the `segcrit` next to this Python), as a user would."""
    script = Path(sys.executable).parent / "segcrit"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "segcrit"]
    base = {k: v for k, v in os.environ.items() if k != "SEGCRIT_CONFIG"}
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env={**base, "COLUMNS": "160", **(env or {})},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECS,
        check=False,
    )


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.splitlines()


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    [line] = stderr_lines(result)
    return line


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "segcrit.db"


def write_config(tmp_path: Path, db: Path, api_url: str = UNREACHABLE, extra: str = "", *, quiet: bool = False) -> Path:
    """The test config as a file; `quiet`: with what `check` would warn about put right (a bearer
    token for the webhook source, audience_sync limited to it)."""
    text = BASE_CONFIG.format(db=db, api_url=api_url, max_wait=2) + extra
    if quiet:
        text = text.replace("shared_secret: SECRET}", "shared_secret: SECRET, bearer_token: TOKEN}")
        text = text.replace("  - type: audience_sync\n", "  - type: audience_sync\n    sources: [engage]\n")
    path = tmp_path / "segcrit.yaml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def open_store(db: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(str(db))
    try:
        yield store
    finally:
        store.close()


def fill(db: Path, *messages: dict[str, object]) -> None:
    """Ingest and process messages as `segcrit serve` would, minus delivery."""
    with open_store(db) as store:
        put(store, *messages)
        Processor(store, make_config(str(db)), FakeClock(T0), Metrics()).drain()


def row_counts(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}


def table_row(output: str, audience: str) -> list[str]:
    """The cells of `audience`'s row in the rich table that `segcrit status` prints."""
    [line] = [line for line in output.splitlines() if line.startswith("│") and line.split("│")[1].strip() == audience]
    return [cell.strip() for cell in line.split("│")[1:-1]]


# ------------------------------------------------------------------------------------ --help


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = segcrit("--help", cwd=tmp_path)
    assert result.returncode == 0
    listed = result.stdout.split("Commands:", 1)[1]
    names = {line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line.split()}
    assert names >= COMMANDS


# ------------------------------------------------------------------------------------ check


def test_check_accepts_a_good_config(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db, quiet=True)
    result = segcrit("check", "--config", str(config), cwd=tmp_path)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "config ok", "")


def test_check_warns_without_refusing(tmp_path: Path, db: Path) -> None:
    # A webhook source without a bearer token, audience_sync open to a public write key, and a
    # suppression naming an audience nothing fills: each a warning line, and the config is fine.
    config = write_config(tmp_path, db, extra="  - {type: suppression, remove_from: [cart_abandoners]}\n")
    config.write_text(config.read_text().replace("  - type: audience_sync\n", ""))
    result = segcrit("check", "--config", str(config), cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, "config ok")
    assert [line.split(": ", 2)[:2] for line in stderr_lines(result)] == [
        ["warning", "sources[1].bearer_token"],
        ["warning", "flows[0].remove_from"],
    ]

    with_sync = write_config(tmp_path, db)
    result = segcrit("check", "--config", str(with_sync), cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, "config ok")
    assert stderr_lines(result) == [
        "warning: sources[1].bearer_token: not set, so only what Segment's signature covers (a single message, "
        "or element 0 of a batch) is authenticated, and a delete past element 0 is refused; set bearer_token "
        "and send it from the Webhooks (Actions) destination as the header `Authorization: Bearer <token>`",
        "warning: flows[0].sources: not set, so messages through the tracking_api source(s) 'web' can change "
        "audiences, and a browser write key is public; list the sources Engage sends through (e.g. "
        "`sources: [engage]`)",
    ]


def test_check_finds_the_config_through_segcrit_config(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = segcrit("check", cwd=elsewhere, env={"SEGCRIT_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr


def test_check_lists_every_problem_one_per_line_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "segcrit.yaml"
    config.write_text(
        """\
store: sqlite:///segcrit.db
sources:
  - {name: web, type: tracking_api}
criteo:
  clientid: demo-client
  client_secret: ${CRITEO_SECRET_THAT_IS_NOT_SET}
  advertiser_id: "12345"
flows:
  - type: audience_sync
  - type: retargeting
  - {type: conversions, bogus: 1}
"""
    )
    result = segcrit("check", "--config", str(config), cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert stderr_lines(result) == [
        "config error: criteo.client_secret: environment variable CRITEO_SECRET_THAT_IS_NOT_SET is not set",
        "config error: sources[0].write_key: required for a tracking_api source",
        "config error: criteo.client_id: required, but missing",
        "config error: criteo.clientid: unknown key",
        "config error: flows[1].type: unknown flow type 'retargeting'; expected one of: audience_sync, "
        "conversions, suppression, product_signals, catalog, lookalike_seed, lifecycle",
        "config error: flows[2].bogus: unknown key",
    ]


def test_check_of_a_missing_file_is_one_line_naming_it(tmp_path: Path) -> None:
    line = assert_one_line_error(segcrit("check", "--config", "nowhere.yaml", cwd=tmp_path))
    assert "nowhere.yaml" in line and "not found" in line


def test_check_without_any_config_names_the_default_file(tmp_path: Path) -> None:
    line = assert_one_line_error(segcrit("check", cwd=tmp_path))
    assert "segcrit.yaml: not found" in line


def test_check_of_bad_yaml_is_one_line_with_file_and_line_number(tmp_path: Path) -> None:
    config = tmp_path / "segcrit.yaml"
    config.write_text("sources:\n  - name: web\n   type: tracking_api\n")
    line = assert_one_line_error(segcrit("check", "--config", str(config), cwd=tmp_path))
    assert line.startswith(f"config error: {config}: not valid YAML at line 3")


def test_check_online_gets_a_token_and_resolves_audiences(
    tmp_path: Path, db: Path, emulator_url: str, emulator_state: EmulatorState
) -> None:
    emulator_state.create_segment("recent_buyers")
    config = write_config(tmp_path, db, emulator_url, extra="audiences: {recent_buyers: {auto_create: false}}\n")

    result = segcrit("check", "--online", "--config", str(config), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "Criteo reachable" in result.stdout
    assert emulator_state.calls()[0].endpoint == "token"
    assert "search" in {call.endpoint for call in emulator_state.calls()}


def test_check_online_reports_a_listed_audience_missing_in_criteo(tmp_path: Path, db: Path, emulator_url: str) -> None:
    config = write_config(tmp_path, db, emulator_url, extra="audiences: {ghosts: {auto_create: false}}\n", quiet=True)
    line = assert_one_line_error(segcrit("check", "--online", "--config", str(config), cwd=tmp_path))
    assert line == "config error: audiences.ghosts: no Criteo segment of that name and auto_create is false"


def test_check_online_with_a_wrong_secret_is_one_line_without_the_secret(
    tmp_path: Path, db: Path, emulator_url: str
) -> None:
    config = write_config(tmp_path, db, emulator_url, quiet=True)
    config.write_text(config.read_text().replace("client_secret: demo-secret", "client_secret: s3cr3t-wrong-value"))

    result = segcrit("check", "--online", "--config", str(config), cwd=tmp_path)

    line = assert_one_line_error(result)
    assert line.startswith("config error: criteo.client_id: ")
    assert "credentials" in line
    assert "s3cr3t-wrong-value" not in result.stdout + result.stderr


def test_check_online_with_criteo_unreachable_is_one_line(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db, UNREACHABLE, quiet=True)
    line = assert_one_line_error(segcrit("check", "--online", "--config", str(config), cwd=tmp_path))
    assert line.startswith("error: could not check against Criteo: ")


# ------------------------------------------------------------------------------------ status


def test_status_shows_audiences_with_desired_and_acknowledged_counts(tmp_path: Path, db: Path) -> None:
    fill(
        db,
        audience_event("u1", "vip", True, T0, email="jane.doe@example.com", madid="AD-1"),
        audience_event("u2", "vip", True, T0, email="max@example.com"),
        audience_event("u3", "churn", True, T0, email="ann@example.com"),
    )
    with open_store(db) as store:
        store.save_audience(AudienceRecord("vip", "4242", auto_create=True, created_by_us=True))
        store.ack_changes([TargetKey("vip", "email", JANE_SHA), TargetKey("vip", "madid", "AD-1")], True, T0)
        [churn] = [c.key for c in store.due_changes(LATER, 100) if c.key.audience == "churn"]
        store.dead_letter([churn], True, 400, "audience-invalid", T0)
    config = write_config(tmp_path, db)

    result = segcrit("status", "--config", str(config), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    # audience, criteo segment, desired, acknowledged, pending, dead
    assert table_row(result.stdout, "vip") == ["vip", "4242", "3", "2", "1", "0"]
    assert table_row(result.stdout, "churn") == ["churn", "-", "1", "0", "0", "1"]
    assert "pending changes: 1" in result.stdout
    assert "dead letters: 1" in result.stdout
    assert "audience-invalid" in result.stdout


# ------------------------------------------------------------------------------------ replay


def test_replay_puts_dead_letters_back_on_the_queue(tmp_path: Path, db: Path) -> None:
    fill(db, audience_event("u1", "vip", True, T0, email="jane.doe@example.com", madid="AD-1"))
    with open_store(db) as store:
        keys = [c.key for c in store.due_changes(LATER, 100)]
        store.dead_letter(keys, True, 400, "invalid identifiers", T0)
        assert store.due_changes(LATER, 100) == []
    config = write_config(tmp_path, db)

    result = segcrit("replay", "--config", str(config), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 dead letter(s) put back on the delivery queue"
    with open_store(db) as store:
        assert {c.key for c in store.due_changes(LATER, 100) if c.add} == set(keys)
        assert store.dead_letter_count() == 0


def test_replay_of_one_audience_leaves_the_others(tmp_path: Path, db: Path) -> None:
    fill(
        db,
        audience_event("u1", "vip", True, T0, email="jane.doe@example.com"),
        audience_event("u2", "churn", True, T0, email="max@example.com"),
    )
    with open_store(db) as store:
        for change in store.due_changes(LATER, 100):
            store.dead_letter([change.key], True, 500, "gave up", T0)
    config = write_config(tmp_path, db)

    result = segcrit("replay", "--audience", "vip", "--config", str(config), cwd=tmp_path)

    assert result.stdout.strip() == "1 dead letter(s) put back on the delivery queue"
    with open_store(db) as store:
        assert [c.key.audience for c in store.due_changes(LATER, 100)] == ["vip"]
        assert [letter.audience for letter in store.dead_letters()] == ["churn"]


def test_replay_failed_puts_set_aside_events_back_and_status_counts_them(
    tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(db) as store:
        put(store, audience_event("u1", "vip", True, T0, email="jane.doe@example.com"))
        processor = Processor(store, make_config(str(db)), FakeClock(T0), Metrics())

        def buggy(tx: object, event: object, now: float) -> None:
            raise RuntimeError("a bug in processing")

        monkeypatch.setattr(processor, "process", buggy)
        processor.drain()
    config = write_config(tmp_path, db)

    status = segcrit("status", "--config", str(config), cwd=tmp_path)
    assert "set-aside events: 1 " in status.stdout
    assert "from web: RuntimeError: a bug in processing" in status.stdout
    result = segcrit("replay", "--failed", "--config", str(config), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 set-aside event(s) put back on the inbox"
    with open_store(db) as store:
        assert (store.backlog(), store.failed_event_count()) == (1, 0)
        Processor(store, make_config(str(db)), FakeClock(T0), Metrics()).drain()  # the bug is fixed
        assert {c.key for c in store.due_changes(LATER, 100)} == {TargetKey("vip", "email", JANE_SHA)}
    assert "set-aside events: 0 " in segcrit("status", "--config", str(config), cwd=tmp_path).stdout


def test_replay_failed_with_an_audience_is_one_line(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db)
    line = assert_one_line_error(
        segcrit("replay", "--failed", "--audience", "vip", "--config", str(config), cwd=tmp_path)
    )
    assert line.startswith("error: --failed puts back set-aside events")


# ------------------------------------------------------------------------------------ forget


def test_forget_erases_the_person_and_queues_their_removal_everywhere(tmp_path: Path, db: Path) -> None:
    fill(
        db,
        audience_event("u1", "vip", True, T0, email="Jane.Doe@Example.com", madid="AD-1"),
        audience_event("u1", "churn", True, T0 + 1, email="Jane.Doe@Example.com"),
        audience_event("u2", "vip", True, T0, email="max@example.com"),
    )
    held = {TargetKey(audience, kind, value) for audience in ("vip", "churn") for kind, value in JANE_IDS}
    with open_store(db) as store:
        store.ack_changes(list(held), True, T0)  # Criteo holds Jane in both audiences, by both identifiers
        others_pending = {c.key for c in store.due_changes(LATER, 100)}
    assert others_pending == {TargetKey("vip", "email", email_hashes("max@example.com")[0])}
    config = write_config(tmp_path, db)

    result = segcrit("forget", " jane.doe@EXAMPLE.com", "--config", str(config), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "erased 1 profile(s); their removal from Criteo is queued"
    with open_store(db) as store:
        removals = {c.key for c in store.due_changes(LATER, 100) if not c.add}
        additions = {c.key for c in store.due_changes(LATER, 100) if c.add}
    assert removals == held
    assert additions == others_pending  # the others are untouched


def test_forget_of_an_unknown_person_says_so_and_succeeds(tmp_path: Path, db: Path) -> None:
    fill(db, audience_event("u1", "vip", True, T0, email="jane.doe@example.com"))
    config = write_config(tmp_path, db)
    result = segcrit("forget", "nobody@example.com", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no profile matched")


# ------------------------------------------------------------------------------------ preview


def test_preview_shows_flow_profile_change_and_exact_request_and_changes_nothing(
    tmp_path: Path, db: Path, emulator_url: str, emulator_state: EmulatorState
) -> None:
    fill(db, audience_event("u1", "vip", True, T0, email="max@example.com"))
    with open_store(db) as store:
        store.save_audience(AudienceRecord("vip", "4242", auto_create=True, created_by_us=True))
    config = write_config(tmp_path, db, emulator_url)
    event = tmp_path / "event.json"
    event.write_text(json.dumps(audience_event("u2", "vip", True, T0 + 5, email=" Jane.Doe@Example.com")))
    before = row_counts(db)

    result = segcrit("preview", str(event), "--config", str(config), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "message 0: track Audience Entered"
    assert lines[1].startswith("  profile: #")
    assert "  audience_sync: enter vip" in lines
    patch = f"  criteo: PATCH {emulator_url}/2026-07/marketing-solutions/audience-segments/4242/contact-list"
    assert lines.count(patch) == 1
    body = json.loads(lines[lines.index(patch) + 1])
    assert body == {
        "data": {
            "type": "ContactlistAmendment",
            "attributes": {"operation": "add", "identifierType": "email", "identifiers": [JANE_SHA]},
        }
    }
    assert "jane.doe@example.com" not in result.stdout.lower()  # only the hash is shown
    assert emulator_state.calls() == []  # nothing sent: no token, no PATCH
    assert row_counts(db) == before  # nothing kept


def test_preview_of_an_event_that_matches_no_flow_says_so(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db)
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"type": "track", "event": "Clicked", "userId": "u9", "messageId": "m9"}))
    result = segcrit("preview", str(event), "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "  flows: none matched (no audience change)" in result.stdout.splitlines()
    assert "  criteo: nothing to send" in result.stdout.splitlines()


def test_preview_of_invalid_json_is_one_line(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db)
    event = tmp_path / "event.json"
    event.write_text('{"type": "track", ')
    line = assert_one_line_error(segcrit("preview", str(event), "--config", str(config), cwd=tmp_path))
    assert line == "error: the event file is not valid JSON"


def test_preview_of_a_missing_event_file_is_one_line(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db)
    line = assert_one_line_error(segcrit("preview", "missing.json", "--config", str(config), cwd=tmp_path))
    assert "missing.json" in line


# ------------------------------------------------------------------------------------ serve --workers / --roles


def test_serve_with_several_workers_on_sqlite_is_one_line_and_check_reports_the_key(tmp_path: Path, db: Path) -> None:
    """SPEC §2: on SQLite `--workers` > 1 is a config error, as the flag or as server.workers."""
    path = write_config(tmp_path, db)
    line = assert_one_line_error(segcrit("serve", "--config", str(path), "--workers", "2", cwd=tmp_path))
    assert "--workers 2" in line and "PostgreSQL" in line
    assert not db.exists()  # refused before anything was opened

    keyed = write_config(tmp_path, db, extra="server: {workers: 3}\n")
    for command in ("serve", "check"):
        result = segcrit(command, "--config", str(keyed), cwd=tmp_path)
        line = assert_one_line_error(result)
        assert result.returncode == 2
        assert line.startswith("config error: server.workers:") and "PostgreSQL" in line


def test_serve_with_an_unknown_role_is_one_line_naming_the_roles(tmp_path: Path, db: Path) -> None:
    path = write_config(tmp_path, db)
    line = assert_one_line_error(segcrit("serve", "--config", str(path), "--roles", "ingest,delivery", cwd=tmp_path))
    assert "'delivery'" in line and "ingest, process, deliver, schedule" in line
    assert "no role" in assert_one_line_error(segcrit("serve", "--config", str(path), "--roles", ",", cwd=tmp_path))
