"""What a Criteo response means: one table (`classify`) and the exceptions it leads to.

    CriteoError  (segcrit.errors)
    +-- RetryableError          RETRY: 408, 429, 5xx, timeouts, network errors; `retry_at` when known,
    |                           `maybe_applied` when Criteo may have carried the call out (lost answer)
    |   +-- TokenRejectedError  REFRESH_TOKEN: still 401 after one fresh token; back off, then retry
    +-- AudienceInvalidError    RE_RESOLVE: the contact-list segment is gone (`audience-invalid`)
    +-- PermanentError          DEAD_LETTER: any other 4xx; carries the status and Criteo's problem
    |   +-- SegmentNameTakenError   `name-must-be-unique` on create (200 warning or 400 error)
    |   +-- SegmentNotFoundError    no segment of that name and auto-create is off
    +-- CredentialsError        the token endpoint refused client_id/client_secret: a config problem

Every exception has a `decision`, so a worker can `match error.decision` instead of testing types.
`may_have_applied(error)` says whether a failed call may still have changed Criteo (SPEC §1,
Uncertain calls): a 5xx or a request that got no answer may have; a refusal (4xx, 429, a
rejected token) or a request that never left has not. The backoff schedule is not here: see
segcrit.delivery.backoff.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import httpx

from segcrit.criteo.constants import CODE_AUDIENCE_INVALID, CODE_TOKEN_EXPIRED, CODE_TOKEN_INVALID
from segcrit.errors import CriteoError

# The status the client reports when no response came back at all (timeout, connection error).
NO_RESPONSE = 0

TOKEN_CODES = frozenset({CODE_TOKEN_EXPIRED, CODE_TOKEN_INVALID})

# Transport errors raised before any byte of the request left: Criteo cannot have seen the call.
_NOT_SENT: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
)


class Decision(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    REFRESH_TOKEN = "refresh_token"
    RE_RESOLVE = "re_resolve"
    DEAD_LETTER = "dead_letter"


def classify(status: int, error_codes: Iterable[str]) -> Decision:
    """The one table that decides what a Criteo answer means.

    | status                      | codes                         | decision      |
    |-----------------------------|-------------------------------|---------------|
    | 0 (no response)             | -                             | RETRY         |
    | 2xx                         | -                             | OK            |
    | 401                         | any                           | REFRESH_TOKEN |
    | 403, 404                    | contains `audience-invalid`   | RE_RESOLVE    |
    | 408, 429                    | -                             | RETRY         |
    | 500-599 except 501          | -                             | RETRY         |
    | anything else (4xx, 501, ..)| -                             | DEAD_LETTER   |
    """
    codes = set(error_codes)
    if status == NO_RESPONSE:
        return Decision.RETRY
    if 200 <= status < 300:
        return Decision.OK
    if status == 401:
        # Criteo's 401s are all about the bearer token (expired, invalid, revoked); a fresh
        # token is the only cure, whatever code (if any) the body carries.
        return Decision.REFRESH_TOKEN
    if status in (403, 404) and CODE_AUDIENCE_INVALID in codes:
        # Current specs answer 404; the 2023 docs answered 403 for the same unknown segment.
        return Decision.RE_RESOLVE
    if status in (408, 429):
        return Decision.RETRY
    if 500 <= status < 600 and status != 501:
        # 501 Not Implemented will not change by retrying (Segment's actions-core agrees).
        return Decision.RETRY
    return Decision.DEAD_LETTER


# --------------------------------------------------------------------------------- the exceptions


class RetryableError(CriteoError):
    """Try again later: not before `retry_at` (unix seconds) when Criteo said when.

    `maybe_applied`: Criteo may have carried the call out although it did not say so (its answer
    was lost). By default it follows from `status`: true for no response, a 5xx, or a 2xx we could
    not read; false for 408, 429 and 401, which refuse the call before it runs.
    """

    decision: ClassVar[Decision] = Decision.RETRY

    def __init__(
        self,
        message: str,
        *,
        retry_at: float | None = None,
        status: int = NO_RESPONSE,
        problem: Mapping[str, Any] | None = None,
        maybe_applied: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_at = retry_at
        self.status = status
        self.problem = dict(problem) if problem else None
        self.maybe_applied = _status_may_have_applied(status) if maybe_applied is None else maybe_applied


class TokenRejectedError(RetryableError):
    """Criteo refused the bearer token even after a fresh one was fetched."""

    decision: ClassVar[Decision] = Decision.REFRESH_TOKEN


class AudienceInvalidError(CriteoError):
    """The segment no longer exists in Criteo: re-resolve it by name, then resend everything."""

    decision: ClassVar[Decision] = Decision.RE_RESOLVE

    def __init__(self, segment_id: str, status: int, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"Criteo segment {segment_id} is invalid ({status} {CODE_AUDIENCE_INVALID})")
        self.segment_id = segment_id
        self.status = status
        self.problem = dict(problem) if problem else None


class PermanentError(CriteoError):
    """Criteo rejected the call for good; `problem` is Criteo's first error object, kept for the
    dead letter."""

    decision: ClassVar[Decision] = Decision.DEAD_LETTER

    def __init__(self, message: str, *, status: int | None, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = dict(problem) if problem else None

    @property
    def code(self) -> str | None:
        code = (self.problem or {}).get("code")
        return code if isinstance(code, str) else None


class SegmentNameTakenError(PermanentError):
    """Create refused: another segment of this advertiser already has the name."""

    def __init__(self, name: str, *, status: int, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"a Criteo segment named {name!r} already exists", status=status, problem=problem)
        self.name = name


class SegmentNotFoundError(PermanentError):
    """No segment of that name, and we may not create it."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no Criteo segment named {name!r} and auto_create is off", status=None)
        self.name = name


class CredentialsError(CriteoError):
    """The token endpoint refused our client credentials: fix criteo.client_id/client_secret.

    Its decision is RETRY, not DEAD_LETTER: the changes are fine, the config is not; they wait
    (within the retry window) for the operator to fix it.
    """

    decision: ClassVar[Decision] = Decision.RETRY

    def __init__(self, status: int, oauth_error: str | None) -> None:
        # Only Criteo's OAuth `error` code: never the request (it holds the secret).
        super().__init__(f"Criteo refused the client credentials ({status} {oauth_error or 'no error code'})")
        self.status = status
        self.oauth_error = oauth_error


# ------------------------------------------------------------------------------------- helpers


def may_have_applied(error: BaseException) -> bool:
    """Whether Criteo may have carried out a call that ended in `error` (SPEC §1, Uncertain calls).

    An error we cannot place counts as "may have": assuming a change that did not happen costs one
    corrective call, assuming none when one happened leaves Criteo wrong for good.
    """
    if isinstance(error, RetryableError):
        return error.maybe_applied
    return not isinstance(error, PermanentError | AudienceInvalidError | CredentialsError)


def no_answer(what: str, exc: httpx.TransportError) -> RetryableError:
    """The error for a call that got no answer (`what` failed): a timeout, a reset, no connection."""
    return RetryableError(f"{what} failed: {type(exc).__name__}", maybe_applied=not isinstance(exc, _NOT_SENT))


def _status_may_have_applied(status: int) -> bool:
    return status == NO_RESPONSE or status >= 500 or 200 <= status < 300


def problems(body: Any, key: str = "errors") -> list[dict[str, Any]]:
    """The `errors` (or `warnings`) objects of a Criteo body, tolerating any shape."""
    if not isinstance(body, Mapping):
        return []
    items = body.get(key)
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict)]


def error_codes(body: Any, *, include_warnings: bool = False) -> list[str]:
    """Every `code` in `errors[]` (and `warnings[]` when asked) of a Criteo body."""
    items = problems(body, "errors") + (problems(body, "warnings") if include_warnings else [])
    return [item["code"] for item in items if isinstance(item.get("code"), str)]


def error_for(
    decision: Decision,
    *,
    status: int,
    body: Any,
    endpoint: str,
    retry_at: float | None = None,
    segment_id: str | None = None,
) -> CriteoError:
    """The exception that carries `decision` for a failed call (never called with OK)."""
    found = problems(body)
    problem = found[0] if found else None
    code = problem.get("code") if problem else None
    what = f"Criteo {endpoint} answered {status}" + (f" {code}" if code else "")
    if decision is Decision.RETRY:
        return RetryableError(what, retry_at=retry_at, status=status, problem=problem)
    if decision is Decision.REFRESH_TOKEN:
        return TokenRejectedError(what, retry_at=retry_at, status=status, problem=problem)
    if decision is Decision.RE_RESOLVE and segment_id is not None:
        return AudienceInvalidError(segment_id, status, problem)
    if decision is Decision.OK:
        raise ValueError("error_for() needs a failed decision")
    return PermanentError(what, status=status, problem=problem)
