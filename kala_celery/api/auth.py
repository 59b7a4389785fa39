"""Who is asking, and may they (Decision 31 of docs/design.md): the bearer token of a request
as a Principal (KALA_API_TOKEN: every scope; a named token: its scopes; no token configured
at all: open, every scope), the scope an operation needs (its `x-kala-scope` in the OpenAPI
document), and the audit Actor of a change (Decision 32).

401 = who are you (no token, or one that is not ours); 403 = known, but without the scope.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from flask import Response, g, request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from kala_celery.api.http import error_response
from kala_celery.config import Settings
from kala_celery.store import tokens
from kala_celery.store.audit import Actor

MAIN_TOKEN = "KALA_API_TOKEN"  # the name the environment's token goes by in the audit trail


@dataclass(frozen=True)
class Principal:
    """A caller: the token's name (None: the API is open) and its scopes."""

    name: str | None
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in ("any", "none") or scope in self.scopes


OPEN = Principal(None, tokens.ALL_SCOPES)


def bearer() -> str:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def main_token(settings: Settings, given: str) -> bool:
    return bool(settings.api_token) and hmac.compare_digest(
        given.encode(), (settings.api_token or "").encode()
    )


def identify_fast(settings: Settings, given: str) -> Principal | None:
    """KALA_API_TOKEN, which needs no database; None: ask identify."""
    return Principal(MAIN_TOKEN, tokens.ALL_SCOPES) if main_token(settings, given) else None


def identify(settings: Settings, session: Session, given: str) -> Principal | None:
    """The caller with this secret (None: a token is configured and this is not one)."""
    if main_token(settings, given):
        return Principal(MAIN_TOKEN, tokens.ALL_SCOPES)
    token = tokens.find(session, given) if given else None
    if token is not None:
        return Principal(token.name, tokens.scopes_of(token))
    if not settings.api_token and not tokens.any_token(session):
        return OPEN  # no token configured at all: as before tokens existed
    return None


# An API with no token at all (no KALA_API_TOKEN, no named token) is open; asking the store
# whether a named token exists was a second transaction on every request (13 % of a create).
# The answer "none" is trusted for OPEN_RECHECK seconds: a first token made by another
# process (`kala-celery token create`; an open API makes none itself) closes the API within
# that time.
OPEN_RECHECK = 1.0
_seen_open: dict[str, float] = {}


def known_open(settings: Settings, engine: Engine) -> bool:
    """No token existed in this store less than OPEN_RECHECK seconds ago."""
    if settings.api_token:
        return False
    seen = _seen_open.get(str(engine.url))
    return seen is not None and time.monotonic() - seen < OPEN_RECHECK


def seen_open(engine: Engine) -> None:
    _seen_open[str(engine.url)] = time.monotonic()


def unauthorized() -> Response:
    response = error_response("missing or wrong bearer token", 401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="kala"'
    return response


def forbidden(principal: Principal, scope: str, what: str) -> Response:
    return error_response(
        f"the token {principal.name!r} has not got the {scope!r} scope, which {what} needs "
        f"(it has: {tokens.scope_text(principal.scopes) or 'none'})", 403
    )


def remember(principal: Principal) -> None:
    g.kala_principal = principal


def current() -> Principal:
    return g.get("kala_principal", OPEN)


def actor(via: str = "api") -> Actor:
    """The audit trail's who and where of this request (the peer's address: a proxy in front
    shows as itself)."""
    return Actor(token=current().name, address=request.remote_addr, via=via)
