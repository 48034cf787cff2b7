"""The classification table, row by row, and the exceptions it leads to."""

from __future__ import annotations

import httpx
import pytest

from segcrit.criteo.errors import (
    NO_RESPONSE,
    AudienceInvalidError,
    CredentialsError,
    Decision,
    PermanentError,
    RetryableError,
    SegmentNameTakenError,
    SegmentNotFoundError,
    TokenRejectedError,
    classify,
    error_codes,
    error_for,
    may_have_applied,
    no_answer,
)
from segcrit.errors import CriteoError

EXPIRED = "authorization-token-expired"
INVALID = "authorization-token-invalid"
AUDIENCE_INVALID = "audience-invalid"


@pytest.mark.parametrize(
    ("status", "codes", "expected"),
    [
        # no response at all: timeout, connection refused, reset
        (NO_RESPONSE, [], Decision.RETRY),
        # 2xx, even with problems listed (bulk partial success is handled by the caller)
        (200, [], Decision.OK),
        (200, ["name-must-be-unique"], Decision.OK),
        (202, [], Decision.OK),
        (204, [], Decision.OK),
        # 401: a new token, whatever the code
        (401, [EXPIRED], Decision.REFRESH_TOKEN),
        (401, [INVALID], Decision.REFRESH_TOKEN),
        (401, [], Decision.REFRESH_TOKEN),
        # the segment is gone: re-resolve (404 today, 403 in the 2023 docs)
        (404, [AUDIENCE_INVALID], Decision.RE_RESOLVE),
        (403, [AUDIENCE_INVALID], Decision.RE_RESOLVE),
        (404, ["other", AUDIENCE_INVALID], Decision.RE_RESOLVE),
        # transient
        (408, [], Decision.RETRY),
        (429, [], Decision.RETRY),
        (429, ["rate-limited"], Decision.RETRY),
        (500, [], Decision.RETRY),
        (500, ["internal-error"], Decision.RETRY),
        (502, [], Decision.RETRY),
        (503, [], Decision.RETRY),
        (504, [], Decision.RETRY),
        (599, [], Decision.RETRY),
        # everything else is for good
        (400, ["required-field"], Decision.DEAD_LETTER),
        (400, ["name-must-be-unique"], Decision.DEAD_LETTER),
        (400, [AUDIENCE_INVALID], Decision.DEAD_LETTER),
        (403, [], Decision.DEAD_LETTER),
        (403, ["forbidden"], Decision.DEAD_LETTER),
        (404, [], Decision.DEAD_LETTER),
        (409, [], Decision.DEAD_LETTER),
        (410, [], Decision.DEAD_LETTER),
        (422, [], Decision.DEAD_LETTER),
        (501, [], Decision.DEAD_LETTER),
        (302, [], Decision.DEAD_LETTER),
    ],
)
def test_classify_table(status: int, codes: list[str], expected: Decision) -> None:
    assert classify(status, codes) is expected


def test_error_codes_reads_errors_and_optionally_warnings() -> None:
    body = {
        "errors": [{"code": "a"}, {"title": "no code"}, "not an object"],
        "warnings": [{"code": "b"}],
    }
    assert error_codes(body) == ["a"]
    assert error_codes(body, include_warnings=True) == ["a", "b"]
    assert error_codes(None) == []
    assert error_codes({"errors": None}) == []
    assert error_codes([1, 2]) == []


def test_error_for_builds_the_exception_of_each_decision() -> None:
    problem = {"type": "validation", "code": "required-field", "title": "x"}
    body = {"errors": [problem]}

    retry = error_for(Decision.RETRY, status=429, body={}, endpoint="e", retry_at=123.0)
    assert type(retry) is RetryableError
    assert (retry.retry_at, retry.status, retry.problem) == (123.0, 429, None)

    token = error_for(Decision.REFRESH_TOKEN, status=401, body={"errors": [{"code": EXPIRED}]}, endpoint="e")
    assert isinstance(token, TokenRejectedError)
    assert isinstance(token, RetryableError)  # a worker backs off, it does not dead-letter
    assert token.problem == {"code": EXPIRED}

    gone = error_for(
        Decision.RE_RESOLVE,
        status=404,
        body={"errors": [{"code": AUDIENCE_INVALID}]},
        endpoint="e",
        segment_id="7",
    )
    assert isinstance(gone, AudienceInvalidError)
    assert gone.segment_id == "7"

    dead = error_for(Decision.DEAD_LETTER, status=400, body=body, endpoint="patch")
    assert isinstance(dead, PermanentError)
    assert dead.status == 400
    assert dead.problem == problem
    assert dead.code == "required-field"
    assert "400 required-field" in str(dead)

    with pytest.raises(ValueError):
        error_for(Decision.OK, status=200, body={}, endpoint="e")


def test_re_resolve_without_a_segment_is_permanent() -> None:
    error = error_for(Decision.RE_RESOLVE, status=404, body={}, endpoint="search")
    assert type(error) is PermanentError


def test_every_branch_is_a_criteo_error_with_its_decision() -> None:
    branches: list[tuple[CriteoError, Decision]] = [
        (RetryableError("x"), Decision.RETRY),
        (TokenRejectedError("x"), Decision.REFRESH_TOKEN),
        (AudienceInvalidError("1", 404), Decision.RE_RESOLVE),
        (PermanentError("x", status=400), Decision.DEAD_LETTER),
        (SegmentNameTakenError("n", status=400), Decision.DEAD_LETTER),
        (SegmentNotFoundError("n"), Decision.DEAD_LETTER),
        (CredentialsError(401, "invalid_client"), Decision.RETRY),
    ]
    for error, decision in branches:
        assert isinstance(error, CriteoError)
        assert error.decision is decision  # type: ignore[attr-defined]


def test_credentials_error_names_criteo_code_only() -> None:
    error = CredentialsError(401, "invalid_client")
    assert str(error) == "Criteo refused the client credentials (401 invalid_client)"


# --- lost answers (SPEC §1, Uncertain calls): may the failed call have changed Criteo? -----------


@pytest.mark.parametrize(
    ("status", "maybe"),
    [
        (500, True),  # Criteo may have applied the change before failing
        (502, True),
        (503, True),
        (504, True),  # a gateway timeout: the backend may have finished
        (200, True),  # a 2xx whose body we could not read
        (NO_RESPONSE, True),
        (429, False),  # refused before it ran
        (408, False),
        (401, False),
    ],
)
def test_a_retryable_answer_says_whether_the_call_may_have_been_applied(status: int, maybe: bool) -> None:
    error = error_for(Decision.RETRY, status=status, body=None, endpoint="contact_list_patch")
    assert may_have_applied(error) is maybe


@pytest.mark.parametrize(
    ("exc", "maybe"),
    [
        (httpx.ReadTimeout("read"), True),  # sent, no answer in time
        (httpx.RemoteProtocolError("reset"), True),  # the connection dropped after sending
        (httpx.ReadError("reset"), True),
        (httpx.WriteTimeout("write"), True),  # part of it may have left
        (httpx.ConnectError("refused"), False),  # nothing left
        (httpx.ConnectTimeout("connect"), False),
        (httpx.PoolTimeout("pool"), False),
    ],
)
def test_a_call_without_an_answer_may_have_been_applied_unless_it_never_left(
    exc: httpx.TransportError, maybe: bool
) -> None:
    error = no_answer("Criteo contact_list_patch", exc)
    assert error.decision is Decision.RETRY and error.status == NO_RESPONSE
    assert may_have_applied(error) is maybe
    assert str(error) == f"Criteo contact_list_patch failed: {type(exc).__name__}"


def test_refusals_were_not_applied_and_unknown_errors_count_as_possibly_applied() -> None:
    assert not may_have_applied(PermanentError("bad request", status=400))
    assert not may_have_applied(AudienceInvalidError("1", 404))
    assert not may_have_applied(CredentialsError(401, "invalid_client"))
    assert not may_have_applied(TokenRejectedError("still 401", status=401))
    assert may_have_applied(CriteoError("something else"))
