"""`POST /oauth2/token`: client credentials in a form, a bearer token out.

Errors are OAuth 2 errors (RFC 6749 §5.2), not Criteo's envelope: 400 for a malformed request or an
unsupported grant, 401 `invalid_client` for unknown credentials (the error strings are assumptions).
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from starlette.responses import Response

from segcrit.criteo.constants import GRANT_TYPE_CLIENT_CREDENTIALS, TOKEN_LIFETIME_SECS
from segcrit.emulator.gateway import Call
from segcrit.emulator.problems import json_response, oauth_error
from segcrit.emulator.schemas import TokenResponse
from segcrit.emulator.state import EmulatorState

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def token(state: EmulatorState, call: Call) -> Response:
    content_type = call.request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_CONTENT_TYPE:
        return oauth_error(400, "invalid_request", f"the body must be {FORM_CONTENT_TYPE}")
    form = {key: values[0] for key, values in parse_qs(call.body.decode("utf-8", "replace")).items()}

    grant_type = form.get("grant_type")
    if not grant_type:
        return oauth_error(400, "invalid_request", "grant_type is required")
    if grant_type != GRANT_TYPE_CLIENT_CREDENTIALS:
        return oauth_error(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

    client = call.client
    secret = form.get("client_secret", "")
    if client is None or not hmac.compare_digest(client.client_secret.encode(), secret.encode()):
        return oauth_error(401, "invalid_client", "unknown client_id or wrong client_secret")

    # expires_in always says 900: a shorter injected token_ttl is a surprise, as it would be at Criteo.
    issued = TokenResponse(access_token=state.issue_token(client.client_id), expires_in=TOKEN_LIFETIME_SECS)
    return json_response(issued.to_json())
