"""deploy/ and docs/deploy.md hold together: what the compose file, the Dockerfile and the example
config say of each other is true, the config passes `segcrit check` with the compose file's
environment, and the PostgreSQL roles docs/deploy.md sets up run segcrit (on a real server).

No container is built here (a Docker engine is not assumed); the files are read as Docker would.
"""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from segcrit.config import parse_config
from segcrit.config_templates import template_env
from tests.integration.test_cli import segcrit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
CONFIG_TEXT = (DEPLOY / "segcrit.yaml").read_text(encoding="utf-8")
DOCKERFILE = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)


def segcrit_services() -> dict[str, dict[str, Any]]:
    """The services running the segcrit image with its own command (`serve`, `migrate`)."""
    return {
        name: service
        for name, service in COMPOSE["services"].items()
        if service.get("image") == "segcrit:trial" and "emulator" not in service.get("command", [])
    }


def replicas() -> dict[str, dict[str, Any]]:
    """The services running the image's CMD, `segcrit serve`."""
    return {name: s for name, s in segcrit_services().items() if "command" not in s}


def dockerfile_instruction(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(f"{name} ")]


# ------------------------------------------------------------------------------------ the files


def test_the_compose_file_runs_postgres_the_emulator_a_migration_and_two_replicas() -> None:
    services = COMPOSE["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["emulator"]["command"][:2] == ["segcrit", "emulator"]
    assert services["migrate"]["command"] == ["segcrit", "migrate"]
    assert len(replicas()) == 2
    for service in replicas().values():
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


@pytest.mark.parametrize("name", sorted(segcrit_services()))
def test_each_segcrit_service_has_every_variable_the_config_uses_and_no_other(name: str) -> None:
    env = segcrit_services()[name]["environment"]
    assert set(template_env(CONFIG_TEXT)) == set(env), name


@pytest.mark.parametrize("name", sorted(segcrit_services()))
def test_the_config_passes_check_with_each_services_environment(name: str, tmp_path: Path) -> None:
    env = {k: str(v) for k, v in segcrit_services()[name]["environment"].items()}
    result = segcrit("check", "--config", str(DEPLOY / "segcrit.yaml"), cwd=tmp_path, env=env)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "config ok", "")


def test_the_config_passes_check_with_dummy_values(tmp_path: Path) -> None:
    env = {name: f"dummy-{name.lower()}" for name in template_env(CONFIG_TEXT)}
    env |= {"SEGCRIT_STORE_URL": "postgresql://app:dummy@db:5432/segcrit", "CRITEO_ADVERTISER_ID": "12345"}
    env |= {"CRITEO_API_URL": "https://api.criteo.com", "CRITEO_EVENTS_URL": "https://widget.criteo.com/m/event"}
    result = segcrit("check", "--config", str(DEPLOY / "segcrit.yaml"), cwd=tmp_path, env=env)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "config ok", "")


def test_the_replicas_health_checks_and_ports_are_the_configs_port_and_readyz() -> None:
    for name, service in replicas().items():
        config = parse_config(CONFIG_TEXT, env={k: str(v) for k, v in service["environment"].items()})
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{config.server.port}/readyz" in check, name
        assert [p.split(":")[-1] for p in service["ports"]] == [str(config.server.port)], name
        assert config.server.host == "0.0.0.0", name  # reachable from outside the container
    published = [p.split(":")[0] for s in replicas().values() for p in s["ports"]]
    assert len(set(published)) == len(published)


def test_the_services_reach_each_other_by_the_names_and_ports_they_are_given() -> None:
    services = COMPOSE["services"]
    postgres = services["postgres"]["environment"]
    emulator_port = services["emulator"]["command"][services["emulator"]["command"].index("--port") + 1]
    for name, service in segcrit_services().items():
        env = service["environment"]
        api = urlsplit(env["CRITEO_API_URL"])
        assert (api.hostname, str(api.port)) == ("emulator", emulator_port), name
        assert env["CRITEO_EVENTS_URL"].startswith(env["CRITEO_API_URL"] + "/"), name
        store = urlsplit(env["SEGCRIT_STORE_URL"])
        assert (store.hostname, store.path) == ("postgres", f"/{postgres['POSTGRES_DB']}"), name
        if name == "migrate":  # the owner migrates
            assert (store.username, store.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
        else:  # the replicas use the application role the init script makes
            assert (store.username, store.password) == ("segcrit_app", postgres["SEGCRIT_APP_PASSWORD"]), name
    init = (DEPLOY / "postgres-init.sh").read_text(encoding="utf-8")
    assert "CREATE ROLE segcrit_app" in init and "$SEGCRIT_APP_PASSWORD" in init
    assert any(v.startswith("./postgres-init.sh:/docker-entrypoint-initdb.d/") for v in services["postgres"]["volumes"])


def test_the_dockerfile_installs_the_postgres_extra_and_serves_as_a_user_without_privileges() -> None:
    assert dockerfile_instruction("FROM") == ["python:3.11-slim"]
    assert any('pip install ".[postgres]"' in run for run in dockerfile_instruction("RUN"))
    [user] = dockerfile_instruction("USER")
    assert user not in ("root", "0")
    assert dockerfile_instruction("CMD") == ['["segcrit", "serve"]']
    # The config the image serves with is deploy/segcrit.yaml, where SEGCRIT_CONFIG points.
    config_path = re.search(r"SEGCRIT_CONFIG=(\S+)", DOCKERFILE)
    assert config_path is not None
    assert f"deploy/segcrit.yaml {config_path.group(1)}" in dockerfile_instruction("COPY")
    env = {k: str(v) for k, v in COMPOSE["services"]["segcrit-1"]["environment"].items()}
    port = parse_config(CONFIG_TEXT, env=env).server.port
    assert dockerfile_instruction("EXPOSE") == [str(port)]
    assert f"http://127.0.0.1:{port}/readyz" in DOCKERFILE


# ------------------------------------------------------------------- the roles of docs/deploy.md


def doc_statements() -> list[str]:
    """The SQL statements of docs/deploy.md's ```sql blocks, comments dropped, in order."""
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    sql = "\n".join(re.sub(r"--[^\n]*", "", block) for block in SQL_BLOCK.findall(text))
    return [" ".join(s.split()) for s in sql.split(";") if s.strip()]


def test_the_documented_roles_are_made_with_data_rights_for_the_app() -> None:
    statements = doc_statements()
    assert statements[0].startswith("CREATE ROLE segcrit_owner")
    assert any("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO segcrit_app" in s for s in statements)


@pytest.fixture
def documented_roles() -> Iterator[dict[str, str]]:
    """docs/deploy.md's statements, run as written but for the names: the roles and the schema get
    names of their own, and the statements on the database itself (creating it, who may connect)
    are left out, the tests' database being shared. Yields each role's URL and the schema."""
    import psycopg

    from tests.postgres import server_url, unavailable

    url = server_url()
    tag = uuid.uuid4().hex[:12]
    owner, app, schema = f"segcrit_test_{tag}_owner", f"segcrit_test_{tag}_app", f"segcrit_test_{tag}"
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        unavailable(f"PostgreSQL at SEGCRIT_TEST_POSTGRES_URL is not reachable ({error.__class__.__name__})")
    database = urlsplit(url).path.lstrip("/")
    with admin:
        try:
            for statement in doc_statements():
                if statement.startswith("CREATE DATABASE") or " ON DATABASE " in statement:
                    continue
                ours = statement.replace("segcrit_owner", owner).replace("segcrit_app", app)
                ours = re.sub(r"\bIN DATABASE segcrit\b", f"IN DATABASE {database}", ours)
                admin.execute(re.sub(r"\bsegcrit\b", schema, ours).encode())
            parts = urlsplit(url)
            host = f"{parts.hostname}:{parts.port or 5432}"
            yield {
                role: parts._replace(netloc=f"{name}:{password}@{host}").geturl()
                for role, name, password in (("owner", owner, "change-me-owner"), ("app", app, "change-me-app"))
            } | {"schema": schema}
        finally:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            for role in (app, owner):
                admin.execute(f"DROP OWNED BY {role}")
                admin.execute(f"DROP ROLE {role}")


def test_the_owner_migrates_and_the_app_role_serves_without_changing_the_schema(
    documented_roles: dict[str, str], tmp_path: Path
) -> None:
    import psycopg

    from segcrit.clock import SystemClock
    from segcrit.metrics import Metrics
    from segcrit.processing.engine import Processor
    from segcrit.sources.validate import TRACKING_TYPES, MessageRules, prepare_messages
    from segcrit.store import open_store

    config = tmp_path / "segcrit.yaml"
    base = (
        "sources: [{name: web, type: tracking_api, write_key: k}]\n"
        "criteo: {client_id: c, client_secret: s, advertiser_id: '1'}\n"
        "flows: [{type: audience_sync}]\n"
    )
    config.write_text(f"store: {documented_roles['owner']}\n{base}")
    migrated = segcrit("migrate", "--config", str(config), cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines()[-1].startswith("schema up to date (")

    # What `serve` does at start, as the application role: the schema is up to date, so it only reads it.
    store = open_store(documented_roles["app"], owner=True)
    try:
        message = {
            "type": "track",
            "event": "Audience Entered",
            "userId": "u1",
            "messageId": "m1",
            "properties": {"audience_key": "vip", "vip": True},
            "context": {"personas": {"computation_class": "audience", "computation_key": "vip"}},
        }
        rules = MessageRules(types=TRACKING_TYPES, max_message_bytes=32_768)
        prepared = prepare_messages([message], rules, received_at=1.0)
        store.accept_sync("web", prepared.messages, 1.0)
        processor = Processor(store, parse_config(f"store: sqlite:///x.db\n{base}", env={}), SystemClock(), Metrics())
        assert processor.drain_once() == 1
        assert store.backlog() == 0
    finally:
        store.close()
    config.write_text(f"store: {documented_roles['app']}\n{base}")
    status = segcrit("status", "--config", str(config), cwd=tmp_path)
    assert status.returncode == 0 and "backlog: 0" in status.stdout, status.stderr

    # The tables are in the documented schema, and the application role cannot change it.
    with psycopg.connect(documented_roles["app"], autocommit=True) as conn:
        assert conn.execute("SELECT current_schema()").fetchone() == (documented_roles["schema"],)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE segcrit_intruder (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE inbox")


def test_shell_commands_in_the_compose_header_name_real_files() -> None:
    header = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8").split("\n\n", 1)[0]
    for line in header.splitlines():
        if "docker compose -f" in line:
            words = shlex.split(line.lstrip("# "))
            assert (REPO / words[words.index("-f") + 1]).exists()
