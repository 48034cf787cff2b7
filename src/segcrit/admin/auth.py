"""Who may use the admin UI and API: the holder of `server.admin_token`.

Two ways in (SPEC §3.3):
- `Authorization: Bearer <admin_token>`, for scripts: no cookie, so no CSRF token needed;
- the login form, which takes the token once and sets a session cookie (HttpOnly,
  SameSite=Strict). The cookie holds an expiry and a random nonce signed with a key derived from
  the token, so every process that knows the token accepts it and none keeps sessions; changing
  the token ends every session. A request that changes something (POST, DELETE) from a cookie
  session must also carry the session's CSRF token (an HMAC of its nonce) in `X-CSRF-Token` or
  the form field `csrf_token`.

A wrong Bearer header is refused even when a valid cookie comes with it: whatever a request
claims must hold. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

COOKIE_NAME: Final = "segcrit_admin"
CSRF_HEADER: Final = "x-csrf-token"
CSRF_FIELD: Final = "csrf_token"
SESSION_SECS: Final = 12 * 3600
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Caller:
    via: Literal["token", "cookie"]
    csrf_token: str | None  # the cookie session's; None for a Bearer caller


class AdminAuth:
    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")
        self._key = hashlib.sha256(b"segcrit admin session\0" + self._token).digest()

    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode("utf-8"), self._token)

    def new_session(self, now: float) -> str:
        """A cookie value: `expiry.nonce.signature`."""
        payload = f"{int(now) + SESSION_SECS}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._sign(payload)}"

    def caller(self, headers: Mapping[str, str], cookies: Mapping[str, str], now: float) -> Caller | None:
        """Who is calling, or None when neither a good Bearer token nor a live session comes with it."""
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.token_ok(credentials.strip()):
                return Caller("token", None)
            return None
        nonce = self._session_nonce(cookies.get(COOKIE_NAME), now)
        if nonce is None:
            return None
        return Caller("cookie", self._sign("csrf:" + nonce))

    @staticmethod
    def csrf_ok(caller: Caller, method: str, supplied: str | None) -> bool:
        """Whether a request may go ahead: reads always, changes from a session with its CSRF token."""
        if method.upper() in _SAFE_METHODS or caller.csrf_token is None:
            return True
        return supplied is not None and hmac.compare_digest(supplied.encode("utf-8"), caller.csrf_token.encode())

    def _session_nonce(self, cookie: str | None, now: float) -> str | None:
        if not cookie or len(cookie) > 200:
            return None
        payload, _, signature = cookie.rpartition(".")
        expiry, _, nonce = payload.partition(".")
        if not nonce or not hmac.compare_digest(signature.encode("utf-8"), self._sign(payload).encode()):
            return None
        try:
            alive = int(expiry) > now
        except ValueError:
            return None
        return nonce if alive else None

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()
