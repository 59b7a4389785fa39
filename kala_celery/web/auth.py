"""The dashboard's session: the API token asked for once, and a CSRF token for its forms.

With KALA_API_TOKEN set, every dashboard page needs the token: the login page checks it
(constant time) and the Flask session keeps a digest of it. The session is signed with a key
derived from the settings (the token itself when there is one), so every API process on every
machine accepts the same session, and changing the token signs everybody out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Flask, abort, request, session

from kala_celery.config import Settings

SESSION_KEY = "kala_webui"
CSRF_KEY = "kala_csrf"


def secret_key(settings: Settings) -> bytes:
    """The session signing key: from the token when set, else from the job store's URL
    (without a token the session only carries the CSRF token and one-time messages)."""
    material = settings.api_token or f"no-token:{settings.db_url}"
    return hashlib.sha256(b"kala-celery webui session\0" + material.encode()).digest()


def configure(app: Flask, settings: Settings) -> None:
    """Give the app a session key unless it has its own (a host app's key is kept)."""
    if not app.secret_key:
        app.secret_key = secret_key(settings)
        if app.config.get("SESSION_COOKIE_SAMESITE") is None:
            app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
        app.config["SESSION_COOKIE_HTTPONLY"] = True


def _digest(token: str) -> str:
    return hashlib.sha256(b"kala-celery webui token\0" + token.encode()).hexdigest()


def signed_in(token: str | None) -> bool:
    if not token:
        return True
    held = session.get(SESSION_KEY, "")
    return isinstance(held, str) and hmac.compare_digest(held, _digest(token))


def sign_in(token: str | None, given: str) -> bool:
    if not token or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return False
    session.clear()
    session[SESSION_KEY] = _digest(token)  # a browser-session cookie: gone when it closes
    return True


def sign_out() -> None:
    session.pop(SESSION_KEY, None)


def csrf_token() -> str:
    token = session.get(CSRF_KEY)
    if not token:
        token = session[CSRF_KEY] = secrets.token_urlsafe(24)
    return token


def check_csrf() -> None:
    """Refuse a form post that does not carry this session's CSRF token."""
    if request.method != "POST":
        return
    held = session.get(CSRF_KEY, "")
    given = request.form.get("csrf", "")
    if not held or not hmac.compare_digest(str(held), given):
        abort(400, "the form has expired; reload the page and try again")
