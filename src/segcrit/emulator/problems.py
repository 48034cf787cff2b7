"""Criteo's error shapes, as the emulator answers them.

API errors use Criteo's envelope `{"errors": [{traceId, type, code, instance, title, detail}],
"warnings": []}`, each problem with a fresh traceId and `instance` = the request path. The token
endpoint answers OAuth 2 errors instead (`{"error", "error_description"}`).
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from segcrit.criteo.constants import CODE_INVALID, CODE_REQUIRED_FIELD, ProblemType
from segcrit.emulator.schemas import CommonProblem, OAuthError


def problem(
    kind: ProblemType,
    code: str,
    title: str,
    instance: str,
    *,
    detail: str | None = None,
    source: dict[str, str] | None = None,
) -> CommonProblem:
    return CommonProblem(
        trace_id=str(uuid.uuid4()),
        type=kind,
        code=code,
        instance=instance,
        title=title,
        detail=detail,
        source=source,
    )


def json_response(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def error_response(status: int, *problems: CommonProblem) -> JSONResponse:
    return json_response({"errors": [p.to_json() for p in problems], "warnings": []}, status)


def invalid_body(instance: str, detail: str) -> JSONResponse:
    invalid = problem("validation", CODE_INVALID, "Invalid request body", instance, detail=detail)
    return error_response(400, invalid)


def validation_error_response(error: ValidationError, instance: str) -> JSONResponse:
    """One problem per field pydantic refused: `required-field` when missing, else `invalid`."""
    problems = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "body"
        missing = item["type"] == "missing"
        problems.append(
            problem(
                "validation",
                CODE_REQUIRED_FIELD if missing else CODE_INVALID,
                "Required field is missing" if missing else "Invalid field value",
                instance,
                detail=f"{field}: {item['msg']}",
                source={"field": field},
            )
        )
    return error_response(400, *problems)


def oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return json_response(OAuthError(error=error, error_description=description).to_json(), status)
