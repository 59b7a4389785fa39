"""The admin routes (Decisions 31 and 32 of docs/design.md): named tokens (list, create,
revoke) and the audit trail's reads. Each token change writes its audit row in its own
transaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from flask import Response, request

from kala_celery.api import auth
from kala_celery.api.http import empty_response, error_response, json_response, read_body
from kala_celery.api.state import kala
from kala_celery.errors import JobError
from kala_celery.store import audit, tokens
from kala_celery.store.clock import now as db_now
from kala_celery.store.tables import ApiToken
from kala_celery.wire import format_time, limits

AUDIT_LIMIT = 1000  # rows an answer shows at most
AUDIT_DEFAULT = 100


def _token_json(token: ApiToken) -> dict[str, object]:
    return {"name": token.name, "scopes": sorted(tokens.scopes_of(token),
                                                 key=tokens.SCOPES.index),
            "created_at": format_time(token.created_at)}


def list_tokens() -> Response:
    with kala().sessions() as session:
        return json_response({"tokens": [_token_json(t) for t in tokens.all_tokens(session)]})


def create_token() -> Response:
    if auth.current().name is None:
        return error_response(
            "the API is open (no token is configured): make the first token with "
            "`kala-celery token create NAME --scopes admin`", 403
        )
    try:
        body = json.loads(read_body())
    except (ValueError, UnicodeDecodeError):
        return error_response("the body must be a JSON object with a name and scopes", 400)
    if not isinstance(body, dict) or "name" not in body or "scopes" not in body:
        return error_response("the body must be a JSON object with a name and scopes", 400)
    raw = body["scopes"]
    if not isinstance(raw, (str, list)):
        raise JobError("scopes must be a list of names: " + ", ".join(tokens.SCOPES))
    name, scopes = tokens.check_name(body["name"]), tokens.parse_scopes(raw)
    with kala().sessions.begin() as session:
        secret = tokens.create(session, name, scopes, db_now())
        audit.record(session, auth.actor(), "token create",
                     changes={"token": [None, name], "scopes": [None, tokens.scope_text(scopes)]})
    return json_response({"name": name, "scopes": sorted(scopes, key=tokens.SCOPES.index),
                          "secret": secret}, 201)


def revoke_token(name: str) -> Response:
    with kala().sessions.begin() as session:
        token = tokens.revoke(session, name)
        audit.record(session, auth.actor(), "token revoke",
                     changes={"token": [name, None], "scopes": [token.scopes, None]})
    return empty_response(204)


def _since(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw.strip().upper())  # RFC 3339 allows "t" and "z"
    except ValueError:
        raise ValueError("since must be an RFC 3339 time such as 2026-12-01T00:00:00Z") from None
    if when.tzinfo is None:
        raise ValueError("since needs a zone (Z or an offset)")
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise ValueError("since is out of range") from None


def list_audit() -> Response:
    """GET /audit/?job=&since=&limit=: the newest rows, oldest first."""
    raw_limit = request.args.get("limit")
    limit = limits.query_int("limit", raw_limit) if raw_limit is not None else 0
    since = _since(request.args.get("since"))
    job = request.args.get("job") or None
    if job is not None and not limits.path_id_possible(job):
        return json_response({"audit": []})  # no job has such an id (Decision 25)
    with kala().sessions() as session:
        rows = audit.entries(session, job_id=job, since=since,
                             limit=min(limit or AUDIT_DEFAULT, AUDIT_LIMIT))
        return json_response({"audit": [audit.as_json(r) for r in rows]})
