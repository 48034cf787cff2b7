"""Tests needing Criteo's OpenAPI documents or SDK: skipped on a laptop without them, failed in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.criteo_openapi import OpenApiDocument
from tests.required import import_or_skip, needs

MISSING = OpenApiDocument(Path("/nowhere/criteo-openapi/marketingsolutions_2026-07.json"))


def a_test(value: int) -> int:
    return value


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_in_ci_a_test_without_its_document_fails_naming_the_path(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    decorated = MISSING.needed(a_test)
    with pytest.raises(pytest.fail.Exception, match=r"not found at /nowhere/criteo-openapi/.*CI is set"):
        decorated(1)


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_a_test_without_its_document_is_skipped(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)

    def fresh_test(value: int) -> int:
        return value

    decorated = MISSING.needed(fresh_test)
    [mark] = decorated.pytestmark  # type: ignore[attr-defined]
    assert (mark.name, mark.kwargs["reason"]) == ("skip", f"Criteo's OpenAPI document not found at {MISSING.path}")


def test_a_test_whose_needs_are_there_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert needs(True, "anything")(a_test) is a_test


def test_a_missing_module_fails_in_ci_and_is_skipped_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no SDK here; CI is set"):
        import_or_skip("segcrit_no_such_module", "no SDK here")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no SDK here"):
        import_or_skip("segcrit_no_such_module", "no SDK here")
    assert import_or_skip("json", "the standard library").dumps([]) == "[]"


def test_ci_runs_export_ci() -> None:
    # The CI machine runs `bash .ci/run`; without CI set there, the checks above would only skip.
    script = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert 'export CI="${CI:-true}"' in script
    assert script.index("export CI=") < script.index("make test")
