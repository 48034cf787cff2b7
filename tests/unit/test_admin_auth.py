"""The admin's token, session cookie and CSRF token."""

from __future__ import annotations

from segcrit.admin.auth import COOKIE_NAME, SESSION_SECS, AdminAuth

NOW = 1_800_000_000.0


def test_a_bearer_token_is_a_caller_without_csrf_and_a_wrong_one_is_nobody() -> None:
    auth = AdminAuth("s3cret")
    caller = auth.caller({"authorization": "Bearer s3cret"}, {}, NOW)
    assert caller is not None and caller.via == "token" and auth.csrf_ok(caller, "DELETE", None)
    assert auth.caller({"authorization": "Bearer s3cre"}, {}, NOW) is None
    assert auth.caller({"authorization": "Basic s3cret"}, {}, NOW) is None
    assert auth.caller({}, {}, NOW) is None


def test_a_session_lives_12_hours_and_its_changes_need_its_csrf_token() -> None:
    auth = AdminAuth("s3cret")
    cookie = {COOKIE_NAME: auth.new_session(NOW)}
    caller = auth.caller({}, cookie, NOW + SESSION_SECS - 1)
    assert caller is not None and caller.via == "cookie" and caller.csrf_token
    assert auth.csrf_ok(caller, "GET", None)
    assert not auth.csrf_ok(caller, "POST", None)
    assert not auth.csrf_ok(caller, "POST", "0" * 64)
    assert auth.csrf_ok(caller, "POST", caller.csrf_token)
    assert auth.caller({}, cookie, NOW + SESSION_SECS) is None


def test_a_session_is_bound_to_the_token_and_cannot_be_forged() -> None:
    auth = AdminAuth("s3cret")
    cookie = auth.new_session(NOW)
    assert AdminAuth("other").caller({}, {COOKIE_NAME: cookie}, NOW) is None  # the token changed
    expiry, nonce, signature = cookie.split(".")
    longer = f"{int(expiry) + 10 * SESSION_SECS}.{nonce}.{signature}"
    assert auth.caller({}, {COOKIE_NAME: longer}, NOW) is None
    assert auth.caller({}, {COOKIE_NAME: "garbage"}, NOW) is None
    # Another session's CSRF token does not do.
    first = auth.caller({}, {COOKIE_NAME: cookie}, NOW)
    second = auth.caller({}, {COOKIE_NAME: auth.new_session(NOW)}, NOW)
    assert first is not None and second is not None and not auth.csrf_ok(second, "POST", first.csrf_token)


def test_a_wrong_bearer_header_is_refused_even_with_a_good_cookie() -> None:
    auth = AdminAuth("s3cret")
    cookie = {COOKIE_NAME: auth.new_session(NOW)}
    assert auth.caller({"authorization": "Bearer nope"}, cookie, NOW) is None
