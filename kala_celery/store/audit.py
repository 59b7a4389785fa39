"""The audit trail (Decision 32 of docs/design.md): one row per change, written in the
caller's session, so it commits with the change or not at all (a refused change leaves no
row), or in the change's own statement (`with_row`: an API create on PostgreSQL); reads for
the API and the dashboard; the beat's pruning past KALA_AUDIT_RETENTION.

A row says when, which token (its name, never its secret; NULL when no token is configured),
from which address, through what (`via`), the action, the job's id and name, and the fields
that changed as {field: [before, after]}. The values of a remote job's headers and body are
not copied (they may carry credentials): a change of them reads "(changed)".
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, delete, select
from sqlalchemy.orm import Session

from kala_celery import wire
from kala_celery.store.clock import now as db_now
from kala_celery.store.driver import driven, insert_of
from kala_celery.store.tables import AuditEntry, Job

# What a row's `action` may be: the job changes, then the token changes.
ACTIONS = ("create", "replace", "delete", "enable", "disable", "start", "params", "status",
           "import", "apply", "token create", "token revoke")
# The job columns a row compares: what a client sets (not the counters the runs keep).
FIELDS = ("name", "command", "owner", "disabled", "schedule", "cron", "timezone", "epsilon",
          "retries", "retry_delay", "retry_backoff", "run_timeout", "on_failure_job",
          "template_delimiters", "resume_at_next_scheduled_time", "job_type", "remote_url",
          "remote_method", "remote_body", "remote_headers", "remote_timeout",
          "remote_expected_codes", "overlap", "queue", "celery_task", "parents_mode", "source")
HIDDEN = frozenset({"remote_headers", "remote_body"})
CHANGED = "(changed)"
PRUNE_BATCH = 1000
_INSERT = insert_of(AuditEntry.__table__, (  # run by the driver (store/driver.py)
    "at", "token", "address", "via", "action", "job_id", "job_name", "changes"))


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a token's name (None: no token configured), an address, and
    `via`: "api", "webui", or the command (`kala-celery import`)."""

    token: str | None
    address: str | None
    via: str


def command_actor(command: str) -> Actor:
    """A change made by a command (`import`, `apply`, `token`): no token, and the user and
    host that ran it for the address."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = f"uid {os.getuid()}"
    return Actor(token=None, address=f"{user}@{socket.gethostname()}",
                 via=f"kala-celery {command}")


def snapshot(job: Job | None) -> dict[str, Any]:
    """The audited fields of a job, as JSON values ({} for no job)."""
    if job is None:
        return {}
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(job, name, None)
        if isinstance(value, datetime):
            value = wire.format_time(value)
        out[name] = value
    return out


def _empty(value: Any) -> bool:
    return value in (None, "", False, 0, [], {})


def differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{field: [before, after]} for each field that differs (a field absent on one side, as
    for a create or a delete, counts only when the other side holds something)."""
    out: dict[str, list[Any]] = {}
    for name in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(name), after.get(name)
        if old == new or (_empty(old) and _empty(new)):
            continue
        out[name] = [CHANGED, CHANGED] if name in HIDDEN else [old, new]
    return out


def _values(actor: Actor, action: str, *, job_id: str | None, job_name: str | None,
            changes: Mapping[str, Any] | None, now: datetime | None) -> dict[str, Any]:
    """A row's values, as the parameters of its INSERT."""
    assert action in ACTIONS, action
    return {
        "p_at": now or db_now(), "p_token": actor.token, "p_address": actor.address,
        "p_via": actor.via, "p_action": action, "p_job_id": job_id, "p_job_name": job_name,
        "p_changes": dict(changes or {}),
    }


def record(session: Session, actor: Actor, action: str, *, job_id: str | None = None,
           job_name: str | None = None, changes: Mapping[str, Any] | None = None,
           now: datetime | None = None) -> None:
    """Add one row to the caller's transaction (a Core INSERT: the ORM's unit of work for
    one new object cost a create more than the row's own write)."""
    conn = session.connection()
    driven(_INSERT, conn.dialect).execute(conn, _values(
        actor, action, job_id=job_id, job_name=job_name, changes=changes, now=now))


def job_changed(session: Session, actor: Actor, action: str, before: Mapping[str, Any],
                job: Job, **extra: list[Any]) -> None:
    """A row for `job` changed from `before` (a snapshot; {} for a new job); `extra` adds
    entries such as run=[None, run_id]."""
    record(session, actor, action, job_id=job.id, job_name=job.name,
           changes={**differences(before, snapshot(job)), **extra})


def with_row(statement: Insert) -> Insert:
    """`statement` (an INSERT) and a row of this log in one statement, for PostgreSQL: the
    first runs as a common table expression of the row's INSERT. Its parameters are both
    statements' (the row's from `created`)."""
    return _INSERT.add_cte(statement.cte("changed"))


def created(actor: Actor, action: str, job: Job) -> dict[str, Any]:
    """The values of the row `job_changed(session, actor, action, {}, job)` adds, as the
    parameters of `with_row`'s statement."""
    return _values(actor, action, job_id=job.id, job_name=job.name,
                   changes=differences({}, snapshot(job)), now=None)


def deleted(session: Session, actor: Actor, names: Mapping[str, str], asked: str | None
            ) -> None:
    """A row per deleted job (`names`: id -> name), `asked` first; a job the cascade took
    with it says so."""
    for job_id, name in sorted(names.items(), key=lambda item: item[0] != asked):
        changes = {} if asked in (None, job_id) else {"deleted with": [None, asked]}
        record(session, actor, "delete", job_id=job_id, job_name=name, changes=changes)


def entries(session: Session, *, job_id: str | None = None, since: datetime | None = None,
            limit: int = 100) -> list[AuditEntry]:
    """The newest `limit` rows (of one job, since a time), oldest first."""
    query = select(AuditEntry)
    if job_id is not None:
        query = query.where(AuditEntry.job_id == job_id)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    rows = list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))
    return rows[::-1]


def as_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id, "at": wire.format_time(entry.at), "token": entry.token,
        "address": entry.address, "via": entry.via, "action": entry.action,
        "job_id": entry.job_id, "job_name": entry.job_name, "changes": entry.changes,
    }


def prune(session: Session, before: datetime) -> int:
    """Delete a batch of rows older than `before` (KALA_AUDIT_RETENTION); returns how many."""
    old = select(AuditEntry.id).where(AuditEntry.at < before).limit(PRUNE_BATCH)
    return session.execute(
        delete(AuditEntry).where(AuditEntry.id.in_(old.scalar_subquery()))
    ).rowcount
