"""Schemathesis against the admin API's own document (`/api/openapi.json`) on a live segcrit:
with the token, no 5xx and every answer as the document says; without it, 401 everywhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from segcrit.emulator import EmulatorState, running_emulator
from tests.admin_harness import ADMIN_TOKEN, LiveAdmin, live_admin, poll

EXAMPLES_PER_ROUTE = 50
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAdmin]:
    """One live segcrit for the module, with an audience, calls and samples to show."""
    folder = Path(tmp_path_factory.mktemp("admin"))
    with (
        running_emulator(EmulatorState(), stop_timeout_secs=0) as emulator_url,
        live_admin(folder, emulator_url) as live,
    ):
        context = {"personas": {"computation_class": "audience", "computation_key": "vip"}}
        live.send(
            *[
                (
                    "track",
                    {
                        "user_id": f"u{i}",
                        "event": "Audience Entered",
                        "properties": {"audience_key": "vip", "vip": True},
                        "context": {**context, "traits": {"email": f"u{i}@shop.example"}},
                    },
                )
                for i in range(3)
            ]
        )
        poll(lambda: live.delivered("vip", 3), "vip delivered")
        live.flush()
        yield live


@pytest.fixture(scope="module")
def api_schema(admin_server: LiveAdmin) -> Any:
    return schemathesis.openapi.from_url(admin_server.url + "/api/openapi.json")


def run_every_operation(api_schema: Any, examples: int, check: Callable[[Any], None]) -> list[str]:
    """`check` on generated cases of every operation of the document; returns the operations run.

    (schemathesis's own pytest integration does not run on pytest 9: each operation gets its
    hypothesis run here instead.)"""
    ran = []
    for found in api_schema.get_all_operations():
        operation = found.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            check(case)

        run()
        ran.append(f"{operation.method.upper()} {operation.path}")
    return ran


def test_with_the_token_no_server_error_and_every_answer_as_documented(api_schema: Any) -> None:
    ran = run_every_operation(api_schema, EXAMPLES_PER_ROUTE, lambda case: case.call_and_validate(headers=BEARER))
    assert "DELETE /api/profiles/{id}" in ran and "POST /api/preview" in ran and len(ran) >= 13


def test_without_the_token_every_route_answers_401(api_schema: Any) -> None:
    def check(case: Any) -> None:
        response = case.call()
        assert response.status_code == 401, (case.method, case.path, response.status_code)
        assert response.json()["code"] == "unauthorized"

    assert len(run_every_operation(api_schema, 5, check)) >= 13


def test_the_document_itself_needs_no_token(admin_server: LiveAdmin) -> None:
    response = httpx.get(admin_server.url + "/api/openapi.json")
    assert response.status_code == 200 and response.json()["info"]["title"] == "segcrit admin API"
