"""Named API tokens with scopes (Decision 31 of docs/design.md): create (the secret is
returned once and only its digest kept), find by secret, list, revoke.

A secret is `kala_` and 32 random bytes (256 bits, URL-safe base64). What is stored is the
SHA-256 of it under a fixed label: a slow password hash protects guessable secrets, and these
cannot be guessed, while a fast digest lets each request find its token by one indexed
lookup. Every function works in the caller's session and leaves the commit to it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kala_celery.errors import Conflict, JobError, NotFound
from kala_celery.store.tables import ApiToken

SCOPES = ("read", "run", "write", "admin")  # what each allows: docs/security.md
ALL_SCOPES = frozenset(SCOPES)
PREFIX = "kala_"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


def digest(secret: str) -> str:
    return hashlib.sha256(b"kala-celery api token\0" + secret.encode()).hexdigest()


def parse_scopes(raw: str | Iterable[str]) -> frozenset[str]:
    """`read,run` (or a list of names) as a set of scopes; JobError (400) for an unknown
    one, or none."""
    names = raw.split(",") if isinstance(raw, str) else list(raw)
    if not all(isinstance(n, str) for n in names):
        raise JobError("scopes must be names: " + ", ".join(SCOPES))
    scopes = frozenset(n.strip().lower() for n in names if n.strip())
    unknown = sorted(scopes - ALL_SCOPES)
    if unknown or not scopes:
        raise JobError(f"scopes must be one or more of {', '.join(SCOPES)}"
                         + (f", not {', '.join(map(repr, unknown))}" if unknown else ""))
    return scopes


def scope_text(scopes: Iterable[str]) -> str:
    """The scopes in their fixed order, comma-separated (what is stored and shown)."""
    held = set(scopes)
    return ",".join(s for s in SCOPES if s in held)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise JobError("a token's name is 1-100 letters, digits and ._@- starting with a "
                         "letter or digit")
    return name


def create(session: Session, name: str, scopes: frozenset[str], now: datetime) -> str:
    """A new token; returns its secret (shown once: only its digest is kept)."""
    check_name(name)
    if session.get(ApiToken, name) is not None:
        raise Conflict(f"a token named {name!r} exists; revoke it first")
    secret = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, digest=digest(secret), scopes=scope_text(scopes),
                         created_at=now))
    session.flush()
    return secret


def find(session: Session, secret: str) -> ApiToken | None:
    """The token whose secret this is (None: no such token, or revoked)."""
    if not secret.startswith(PREFIX):
        return None
    return session.scalars(select(ApiToken).where(ApiToken.digest == digest(secret))).first()


def find_by_digest(session: Session, value: str) -> ApiToken | None:
    return session.scalars(select(ApiToken).where(ApiToken.digest == value)).first()


def any_token(session: Session) -> bool:
    """Whether a named token exists (none, and no KALA_API_TOKEN: the API is open)."""
    return session.scalar(select(ApiToken.name).limit(1)) is not None


def all_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def revoke(session: Session, name: str) -> ApiToken:
    """Delete the token (NotFound if none): the next request with its secret is a 401."""
    token = session.get(ApiToken, name)
    if token is None:
        raise NotFound(name)
    session.execute(delete(ApiToken).where(ApiToken.name == name))
    return token


def scopes_of(token: ApiToken) -> frozenset[str]:
    return frozenset(s for s in token.scopes.split(",") if s)
