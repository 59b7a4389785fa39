"""The dashboard's session: a token asked for once, its scopes, the sign-in page slowed down
per address, and a CSRF token for the forms.

Once a token is configured (KALA_API_TOKEN, or a named token: Decision 31 of
docs/design.md), every dashboard page needs one: the sign-in page checks it and the Flask
session keeps a digest of it, looked up again on every request, so a revoked token signs its
sessions out. The session is signed with a key derived from the settings (KALA_API_TOKEN when
there is one), so every API process on every machine accepts the same session. After FAILURES
wrong tokens from one address within WINDOW, that address is refused (429) until the oldest
of them is WINDOW old: the failures are rows in SQL (store/sign_in.py), so the limit holds
across processes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from datetime import timedelta

from flask import Flask, abort, request, session
from sqlalchemy.orm import Session

from kala_celery.api.auth import MAIN_TOKEN, OPEN, Principal
from kala_celery.config import Settings
from kala_celery.store import sign_in as failures
from kala_celery.store import tokens
from kala_celery.store.clock import now as db_now

SESSION_KEY = "kala_webui"
CSRF_KEY = "kala_csrf"
NAMED = "named:"  # a session of a named token holds NAMED + its stored digest
FAILURES = 5  # wrong tokens from one address ...
WINDOW = timedelta(minutes=10)  # ... within this long, and the address waits


def secret_key(settings: Settings) -> bytes:
    """The session signing key: from the token when set, else from the job store's URL."""
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


def token_required(settings: Settings, db: Session) -> bool:
    return bool(settings.api_token) or tokens.any_token(db)


def signed_in(settings: Settings, db: Session) -> Principal | None:
    """Who this browser session is (OPEN when no token is configured), or None."""
    held = session.get(SESSION_KEY, "")
    if not isinstance(held, str):
        return None
    if settings.api_token and hmac.compare_digest(held, _digest(settings.api_token)):
        return Principal(MAIN_TOKEN, tokens.ALL_SCOPES)
    if held.startswith(NAMED):
        token = tokens.find_by_digest(db, held[len(NAMED):])
        if token is not None:
            return Principal(token.name, tokens.scopes_of(token))
    return None if token_required(settings, db) else OPEN


def wait_seconds(db: Session) -> int:
    """0, or how long this address must wait before its next try."""
    now = db_now()
    count, oldest = failures.failures(db, _address(), now - WINDOW)
    if count < FAILURES or oldest is None:
        return 0
    return max(math.ceil((oldest + WINDOW - now).total_seconds()), 1)


def sign_in(settings: Settings, db: Session, given: str) -> bool:
    """Check a token given to the sign-in page; a wrong one is counted (in db's transaction,
    which the caller commits either way)."""
    given = given.strip()
    held = None
    if settings.api_token and hmac.compare_digest(given.encode(), settings.api_token.encode()):
        held = _digest(settings.api_token)
    elif given:
        token = tokens.find(db, given)
        held = NAMED + token.digest if token is not None else None
    if held is None:
        now = db_now()
        failures.record_failure(db, _address(), now, now - WINDOW)
        return False
    failures.forget(db, _address())
    session.clear()
    session[SESSION_KEY] = held  # a browser-session cookie: gone when it closes
    return True


def _address() -> str:
    return request.remote_addr or "unknown"


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
